// accesslog: the line formats (escaping of what clients send), a shard's
// buffer handing halves to the writer, lines dropped when it falls behind.
#include "tlsgate/access_log.hh"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace tlsgate::accesslog {
namespace {

Record sample() {
  Record r;
  r.listener = "public";
  r.client_ip = "203.0.113.7";
  r.client_port = 40000;
  r.tls_version = "TLSv1.3";
  r.tls_resumed = true;
  r.authority = "api.example.com";
  r.path = "/pkg.Svc/Call";
  r.http_status = 200;
  r.grpc_status = 0;
  r.request_bytes = 12;
  r.response_bytes = 345;
  r.duration_us = 1234567;
  r.cluster = "backend";
  r.upstream = "10.0.0.1:50051";
  r.retries = 1;
  return r;
}

std::string line(Mode m, const Record& r) {
  char buf[4096];
  const size_t n = format(m, r, "2026-12-07T00:00:00.000Z", buf, sizeof buf);
  return std::string(buf, n);
}

TEST(AccessLogFormat, JsonHasEveryField) {
  EXPECT_EQ(line(Mode::Json, sample()),
            "{\"time\":\"2026-12-07T00:00:00.000Z\",\"listener\":\"public\",\"client\":\"203.0.113.7\","
            "\"client_port\":40000,\"tls\":\"TLSv1.3\",\"resumed\":true,\"authority\":\"api.example.com\","
            "\"path\":\"/pkg.Svc/Call\",\"status\":200,\"grpc_status\":0,\"reset\":null,\"bytes_in\":12,"
            "\"bytes_out\":345,\"duration_ms\":1234.567,\"cluster\":\"backend\",\"upstream\":\"10.0.0.1:50051\","
            "\"retries\":1}\n");
}

TEST(AccessLogFormat, JsonOfAResetStreamWithoutStatusOrBackend) {
  Record r = sample();
  r.grpc_status = -1;
  r.http_status = 0;
  r.reset_by = "client";
  r.reset_code = 8;
  r.cluster = "";
  r.upstream = "";
  const std::string l = line(Mode::Json, r);
  EXPECT_NE(l.find("\"status\":0,\"grpc_status\":null,\"reset\":{\"by\":\"client\",\"code\":8}"), std::string::npos) << l;
  EXPECT_NE(l.find("\"cluster\":null,\"upstream\":null"), std::string::npos) << l;
}

TEST(AccessLogFormat, ClientBytesCannotBreakAJsonLine) {
  Record r = sample();
  const std::string path = std::string("/a\"b\\c\nd\r\x01\x7f\xff\0", 13);  // and a NUL
  r.path = path;
  r.authority = "x\"}\n{\"evil\":1";
  const std::string l = line(Mode::Json, r);
  EXPECT_NE(l.find("\"path\":\"/a\\\"b\\\\c\\u000ad\\u000d\\u0001\\u007f\\u00ff\\u0000\""), std::string::npos) << l;
  EXPECT_NE(l.find("\"authority\":\"x\\\"}\\u000a{\\\"evil\\\":1\""), std::string::npos) << l;
  EXPECT_EQ(l.find('\n'), l.size() - 1) << "one line";
  EXPECT_EQ(l.find('\r'), std::string::npos);
}

TEST(AccessLogFormat, TextIsOneLineWithTheClientFieldsQuoted) {
  Record r = sample();
  r.path = "/x\n\"y\" 200";
  const std::string l = line(Mode::Text, r);
  EXPECT_EQ(l,
            "2026-12-07T00:00:00.000Z public 203.0.113.7:40000 TLSv1.3 resumed \"api.example.com\" "
            "\"/x\\u000a\\\"y\\\" 200\" 200 grpc=0 reset=- in=12 out=345 1234.567ms backend 10.0.0.1:50051 "
            "retries=1\n");
  r.reset_by = "backend";
  r.reset_code = 2;
  r.grpc_status = -1;
  r.cluster = "";
  r.upstream = "";
  r.client_ip = "2001:db8::7";
  const std::string reset = line(Mode::Text, r);
  EXPECT_NE(reset.find(" grpc=- reset=backend/2 "), std::string::npos) << reset;
  EXPECT_NE(reset.find("ms - - retries=1\n"), std::string::npos) << reset;
  EXPECT_NE(reset.find(" public [2001:db8::7]:40000 "), std::string::npos) << reset;
}

TEST(AccessLogFormat, ALineThatDoesNotFitIsNotWritten) {
  char buf[64];
  EXPECT_EQ(format(Mode::Json, sample(), "t", buf, sizeof buf), 0u);
  EXPECT_EQ(format(Mode::Off, sample(), "t", buf, sizeof buf), 0u);
}

class AccessLogWriter : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tlsgate-accesslog-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  config::AccessLog cfg(const std::string& name, config::AccessLogFormat f = config::AccessLogFormat::Json) {
    config::AccessLog c;
    c.enabled = true;
    c.path = (dir_ / name).string();
    c.path_origin = config::Origin{"demo.toml", "access_log.path", 2, 8};
    c.format = f;
    return c;
  }
  std::string read(const std::string& name) {
    std::ifstream in(dir_ / name);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  static size_t lines(const std::string& text) {
    size_t n = 0;
    for (char c : text) n += c == '\n';
    return n;
  }
  std::filesystem::path dir_;
};

TEST_F(AccessLogWriter, LinesOfEveryShardReachTheFileInOrder) {
  Writer w(2);
  ASSERT_EQ(w.configure(cfg("a.log")), "");
  w.start();
  Record r = sample();
  for (int i = 0; i < 3; ++i) {
    const std::string path = "/shard0/" + std::to_string(i);
    r.path = path;
    ASSERT_TRUE(w.buffer(0).append(r));
  }
  r.path = "/shard1";
  ASSERT_TRUE(w.buffer(1).append(r));
  w.buffer(0).flush();
  w.stop();  // what shard 1 never handed over is written too
  const std::string text = read("a.log");
  EXPECT_EQ(lines(text), 4u) << text;
  const size_t a = text.find("/shard0/0"), b = text.find("/shard0/1"), c = text.find("/shard0/2");
  ASSERT_NE(c, std::string::npos) << text;
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
  EXPECT_NE(text.find("/shard1"), std::string::npos);
  EXPECT_EQ(w.lines_lost(), 0u);
}

TEST_F(AccessLogWriter, OffWritesNothing) {
  Writer w(1);
  config::AccessLog off;
  ASSERT_EQ(w.configure(off), "");
  EXPECT_EQ(w.buffer(0).mode(), Mode::Off);
  EXPECT_TRUE(w.buffer(0).append(sample()));
}

// No writer thread takes the halves: once both are full, lines are dropped
// (append returns at once, never waits); the first ones are kept.
TEST_F(AccessLogWriter, FullBuffersDropLinesWithoutWaiting) {
  Writer w(1);
  ASSERT_EQ(w.configure(cfg("b.log", config::AccessLogFormat::Text)), "");
  const size_t per_line = line(Mode::Text, sample()).size();
  const size_t fit = 2 * (Buffer::kHalf / per_line);
  size_t kept = 0, dropped = 0;
  for (size_t i = 0; i < fit + 100; ++i) (w.buffer(0).append(sample()) ? kept : dropped)++;
  EXPECT_GT(dropped, 90u);
  EXPECT_GE(kept, fit - 2);
  w.start();
  w.stop();
  EXPECT_EQ(lines(read("b.log")), kept);
}

TEST_F(AccessLogWriter, AFileThatCannotBeOpenedIsAnErrorNamingTheKey) {
  Writer w(1);
  config::AccessLog c = cfg("missing/dir/c.log");
  const std::string err = w.configure(c);
  EXPECT_EQ(err.rfind("demo.toml:2:8: access_log.path: cannot open \"" + c.path + "\": No such file", 0), 0u) << err;
  EXPECT_EQ(w.buffer(0).mode(), Mode::Off) << "the log stays as it was";
}

TEST_F(AccessLogWriter, ConfigureAgainReopensThePath) {
  Writer w(1);
  ASSERT_EQ(w.configure(cfg("d.log")), "");
  w.start();
  ASSERT_TRUE(w.buffer(0).append(sample()));
  w.buffer(0).flush();
  // Written within the writer's interval: wait for it (bounded).
  for (int i = 0; i < 100 && lines(read("d.log")) < 1; ++i) ::usleep(20'000);
  ASSERT_EQ(lines(read("d.log")), 1u);
  std::filesystem::rename(dir_ / "d.log", dir_ / "d.log.1");
  ASSERT_EQ(w.configure(cfg("d.log")), "");
  ASSERT_TRUE(w.buffer(0).append(sample()));
  w.stop();
  EXPECT_EQ(lines(read("d.log.1")), 1u);
  EXPECT_EQ(lines(read("d.log")), 1u);
}

// The shard appending while the writer writes: every line kept arrives whole
// and in order, and kept + dropped = appended.
TEST_F(AccessLogWriter, ConcurrentAppendAndWriteManglesNothing) {
  Writer w(1);
  ASSERT_EQ(w.configure(cfg("f.log")), "");
  w.start();
  constexpr int kLines = 100'000;
  Record r = sample();
  int kept = 0;
  for (int i = 0; i < kLines; ++i) {
    const std::string path = "/n/" + std::to_string(i);
    r.path = path;
    kept += w.buffer(0).append(r) ? 1 : 0;
    if (i % 1000 == 999) w.buffer(0).flush();  // the shard's tick
  }
  w.stop();
  const std::string text = read("f.log");
  std::istringstream in(text);
  int seen = 0, last = -1;
  for (std::string l; std::getline(in, l); ++seen) {
    ASSERT_TRUE(l.size() > 2 && l.front() == '{' && l.back() == '}') << "line " << seen << ": " << l;
    const size_t at = l.find("\"path\":\"/n/");
    ASSERT_NE(at, std::string::npos) << l;
    const int n = std::atoi(l.c_str() + at + 11);
    ASSERT_GT(n, last) << "out of order";
    last = n;
  }
  EXPECT_EQ(seen, kept);
  EXPECT_GT(kept, 0);
  EXPECT_EQ(w.lines_lost(), 0u);
}

// A reload that turns the log off: the lines handed over before it still
// reach the file.
TEST_F(AccessLogWriter, TurningTheLogOffWritesWhatWasHandedOver) {
  Writer w(1);
  ASSERT_EQ(w.configure(cfg("e.log")), "");
  w.start();
  ASSERT_TRUE(w.buffer(0).append(sample()));
  w.buffer(0).flush();
  for (int i = 0; i < 100 && lines(read("e.log")) < 1; ++i) ::usleep(20'000);  // the writer has the file
  ASSERT_EQ(lines(read("e.log")), 1u);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(w.buffer(0).append(sample()));
  w.buffer(0).flush();
  config::AccessLog off;
  ASSERT_EQ(w.configure(off), "");
  EXPECT_TRUE(w.buffer(0).append(sample())) << "off: nothing to drop";
  w.stop();
  EXPECT_EQ(lines(read("e.log")), 4u);
  EXPECT_EQ(w.lines_lost(), 0u);
}

}  // namespace
}  // namespace tlsgate::accesslog
