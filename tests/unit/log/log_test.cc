// log: one line per event on stderr, "<level> <component>: <message>", each
// written with a single write(2); lines below the process level are dropped.
#include "tlsgate/log.hh"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

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

// Counts the lines of `text` that contain `what`.
size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST_F(LogTest, RepeatedErrorsOfOneKindAreSuppressedAndSummarised) {
  StderrCapture cap;
  for (int i = 0; i < 100; ++i) LOG_ERROR("upstream", "connect to endpoint %d failed", i);
  LOG_WARN("upstream", "another kind %d", 1);  // not held back by the first kind
  for (int i = 0; i < 20; ++i) LOG_INFO("upstream", "info is never limited %d", i);
  flush_suppressed();
  flush_suppressed();  // nothing new: no second summary
  const std::string out = cap.take();
  EXPECT_EQ(count(out, "error upstream: connect to endpoint"), kMaxPerSecond) << out;
  EXPECT_EQ(count(out, "warn upstream: another kind 1\n"), 1u) << out;
  EXPECT_EQ(count(out, "info is never limited"), 20u);
  EXPECT_EQ(count(out, "error upstream: 90 more like this suppressed: connect to endpoint %d failed\n"), 1u) << out;
  EXPECT_EQ(count(out, "suppressed"), 1u) << out;
}

TEST_F(LogTest, SuppressionEndsWithTheSecond) {
  StderrCapture cap;
  for (int i = 0; i < 15; ++i) LOG_WARN("shard", "pool full %d", i);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  LOG_WARN("shard", "pool full %d", 99);
  flush_suppressed();
  const std::string out = cap.take();
  EXPECT_EQ(count(out, "warn shard: pool full"), kMaxPerSecond + 1) << out;
  EXPECT_NE(out.find("warn shard: pool full 99\n"), std::string::npos) << out;
  EXPECT_EQ(count(out, "warn shard: 5 more like this suppressed: pool full %d"), 1u) << out;
}

TEST_F(LogTest, RateLimitIsThreadSafe) {
  StderrCapture cap;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([] {
      for (int i = 0; i < 1000; ++i) LOG_ERROR("h2", "from a shard %d", i);
    });
  for (auto& t : threads) t.join();
  flush_suppressed();
  const std::string out = cap.take();
  // Within one or two seconds of windows: at most 2 * kMaxPerSecond written,
  // and written + suppressed = 4,000.
  const size_t written = count(out, "error h2: from a shard");
  EXPECT_GE(written, kMaxPerSecond);
  EXPECT_LE(written, 2 * kMaxPerSecond);
  ASSERT_NE(out.find(" more like this suppressed: from a shard %d"), std::string::npos) << out;
  uint64_t suppressed = 0;
  for (size_t p = out.find("error h2: "); p != std::string::npos; p = out.find("error h2: ", p)) {
    p += 10;
    if (out.compare(p, 4, "from") != 0) suppressed += std::stoull(out.substr(p));
  }
  EXPECT_EQ(written + suppressed, 4000u) << out;
}

}  // namespace
}  // namespace tlsgate::log
