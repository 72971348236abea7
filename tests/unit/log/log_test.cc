// log: one line per event on stderr, "<level> <component>: <message>", each
// written with a single write(2); lines below the process level are dropped.
#include "tlsgate/log.hh"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

namespace tlsgate::log {
namespace {

// Captures what is written to stderr while it lives.
class StderrCapture {
 public:
  StderrCapture() {
    EXPECT_EQ(::pipe2(fds_, O_NONBLOCK), 0);
    saved_ = ::dup(STDERR_FILENO);
    ::dup2(fds_[1], STDERR_FILENO);
  }
  ~StderrCapture() { restore(); }
  std::string take() {
    restore();
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fds_[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    return out;
  }

 private:
  void restore() {
    if (saved_ < 0) return;
    ::dup2(saved_, STDERR_FILENO);
    ::close(saved_);
    ::close(fds_[1]);
    saved_ = -1;
  }
  int fds_[2] = {-1, -1};
  int saved_ = -1;
};

class LogTest : public ::testing::Test {
 protected:
  void SetUp() override { before_ = level(); }
  void TearDown() override { set_level(before_); }
  Level before_ = Level::Info;
};

TEST_F(LogTest, LevelNames) {
  EXPECT_STREQ(to_string(Level::Debug), "debug");
  EXPECT_STREQ(to_string(Level::Info), "info");
  EXPECT_STREQ(to_string(Level::Warn), "warn");
  EXPECT_STREQ(to_string(Level::Error), "error");
}

TEST_F(LogTest, LevelFiltersLowerLevels) {
  set_level(Level::Warn);
  EXPECT_EQ(level(), Level::Warn);
  EXPECT_FALSE(enabled(Level::Debug));
  EXPECT_FALSE(enabled(Level::Info));
  EXPECT_TRUE(enabled(Level::Warn));
  EXPECT_TRUE(enabled(Level::Error));
  set_level(Level::Debug);
  EXPECT_TRUE(enabled(Level::Debug));
}

TEST_F(LogTest, LinesHaveLevelComponentAndMessage) {
  set_level(Level::Info);
  StderrCapture cap;
  LOG_INFO("shard", "listening on %s:%d", "127.0.0.1", 8443);
  LOG_DEBUG("h2", "dropped: below the level");
  LOG_ERROR("tls", "handshake failed: %s", "bad record");
  EXPECT_EQ(cap.take(), "info shard: listening on 127.0.0.1:8443\nerror tls: handshake failed: bad record\n");
}

TEST_F(LogTest, ArgumentsAreNotEvaluatedWhenDisabled) {
  set_level(Level::Error);
  int evaluated = 0;
  auto arg = [&] { return ++evaluated; };
  StderrCapture cap;
  LOG_INFO("x", "%d", arg());
  EXPECT_EQ(evaluated, 0);
  EXPECT_EQ(cap.take(), "");
}

TEST_F(LogTest, LongMessagesAreTruncatedToOneLine) {
  StderrCapture cap;
  const std::string big(10000, 'a');
  write(Level::Warn, "comp", "%s", big.c_str());
  std::string out = cap.take();
  ASSERT_FALSE(out.empty());
  // At most PIPE_BUF bytes: one atomic write. The shutdown counter line
  // (over 1 KiB) fits whole.
  EXPECT_EQ(out.size(), 4095u);
  EXPECT_EQ(out.rfind("warn comp: aaaa", 0), 0u);
  EXPECT_EQ(out.back(), '\n');
  EXPECT_EQ(out.find('\n'), out.size() - 1) << "exactly one line";
}

}  // namespace
}  // namespace tlsgate::log
