// The access log (issue 18): one line per client stream, JSON or text, from
// a real tlsgate; read back the way an operator's tooling would (python3's
// json module parses every JSON line).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

// The lines of `text` (without their newlines).
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// Every line of the JSON log at `log`, parsed by python3 and written back as
// tab-separated fields (what the tests compare); a line that is not one JSON
// object makes python3 fail, and the result says which.
struct Parsed {
  bool ok = false;
  std::string error;
  std::vector<std::vector<std::string>> rows;
};
constexpr const char* kFields[] = {"listener", "client", "tls", "resumed", "authority", "path", "status",
                                   "grpc_status", "reset", "bytes_in", "bytes_out", "duration_ms", "cluster",
                                   "upstream", "retries", "time", "client_port"};
enum Field { kListener, kClient, kTls, kResumed, kAuthority, kPath, kStatus, kGrpcStatus, kReset, kBytesIn,
             kBytesOut, kDuration, kCluster, kUpstream, kRetries, kTime, kClientPort };

Parsed parse_json_log(const std::filesystem::path& dir, const std::filesystem::path& log) {
  std::string fields = "[";
  for (const char* f : kFields) fields += std::string("'") + f + "',";
  fields += "]";
  const std::string script =
      "import json, sys\n"
      "for n, line in enumerate(open(sys.argv[1], 'rb').read().decode('ascii').split('\\n')[:-1]):\n"
      "    try:\n"
      "        o = json.loads(line)\n"
      "    except Exception as e:\n"
      "        sys.exit('line %d is not JSON: %s: %r' % (n + 1, e, line))\n"
      "    print('\\t'.join(json.dumps(o[f]) if isinstance(o[f], (dict, bool)) or o[f] is None else str(o[f])"
      " for f in " + fields + "))\n";
  RunResult r = run({"/usr/bin/python3", "-c", script, log.string()}, dir, 30s);
  Parsed p;
  p.ok = r.status.exited && r.status.code == 0;
  p.error = r.err;
  for (const std::string& line : lines_of(r.out)) {
    std::vector<std::string> row;
    std::istringstream in(line);
    for (std::string f; std::getline(in, f, '\t');) row.push_back(f);
    p.rows.push_back(row);
  }
  return p;
}

class AccessLog : public GatewayTest {
 protected:
  void configure(GatewayConfig& cfg) override {
    cfg.workers = workers_;
    cfg.extra_top = "[access_log]\npath = \"" + log_path().string() + "\"\nformat = \"" + format_ + "\"\n";
  }
  std::filesystem::path log_path() const { return dir_->path() / log_name_; }
  // Stops the gateway: every line is written by the time it exits.
  std::map<std::string, std::string> stop_gateway() {
    gw_->stop();
    return stopped_counters(gw_->process().stderr_text());
  }
  int workers_ = 2;
  std::string format_ = "json";
  std::string log_name_ = "access.log";
};

TEST_F(AccessLog, OneJsonLinePerCallWithItsFields) {
  constexpr int kCalls = 20;
  auto s = Echo::NewStub(tls_channel_any_authority(gw_->target()));
  for (int i = 0; i < kCalls; ++i)
    ASSERT_TRUE(unary(*s, "call-" + std::to_string(i), 0, 10s, "api.example.com").status.ok());
  echo_->kill();  // the next call is answered by the gateway: 14
  EXPECT_EQ(unary(*s, "no backend", 0, 10s, "api.example.com").status.error_code(), grpc::StatusCode::UNAVAILABLE);
  const auto counters = stop_gateway();

  const Parsed p = parse_json_log(dir_->path(), log_path());
  ASSERT_TRUE(p.ok) << p.error;
  ASSERT_EQ(p.rows.size(), kCalls + 1u) << read_file(log_path());
  for (int i = 0; i < kCalls; ++i) {
    const auto& row = p.rows[static_cast<size_t>(i)];
    ASSERT_EQ(row.size(), std::size(kFields)) << read_file(log_path());
    EXPECT_EQ(row[kListener], "public");
    EXPECT_EQ(row[kClient], "127.0.0.1");
    EXPECT_NE(row[kClientPort], "0");
    EXPECT_EQ(row[kTls], "TLSv1.3");
    EXPECT_EQ(row[kPath], "/tlsgate.test.Echo/Unary");
    EXPECT_EQ(row[kAuthority], "api.example.com");
    EXPECT_EQ(row[kStatus], "200");
    EXPECT_EQ(row[kGrpcStatus], "0");
    EXPECT_EQ(row[kReset], "null");
    // An EchoRequest of "call-i" is a few bytes in a 5-byte gRPC frame; the
    // reply carries the payload and the server id.
    EXPECT_GT(std::stoul(row[kBytesIn]), 5u);
    EXPECT_GT(std::stoul(row[kBytesOut]), std::stoul(row[kBytesIn]));
    EXPECT_EQ(row[kCluster], "backend");
    EXPECT_EQ(row[kUpstream], echo_->endpoint().address());
    EXPECT_EQ(row[kRetries], "0");
    EXPECT_EQ(row[kTime].size(), std::string("2026-12-06T23:41:35.123Z").size()) << row[kTime];
  }
  const auto& last = p.rows.back();
  EXPECT_EQ(last[kGrpcStatus], "14") << "the gateway's own answer is logged with its status";
  EXPECT_EQ(last[kStatus], "200");
  EXPECT_EQ(counters.at("access_log_lines"), std::to_string(kCalls + 1));
  EXPECT_EQ(counters.at("access_log_dropped"), "0");
  EXPECT_EQ(counters.at("access_log_lost"), "0");
}

// A client's :path cannot break a line: quotes and backslashes are escaped
// (the unit tests cover control bytes: nghttp2 already refuses CR, LF and NUL
// in a :path). An :authority nghttp2 refuses is a stream the gateway reset.
TEST_F(AccessLog, ClientBytesAreEscaped) {
  const std::string base = "https://127.0.0.1:" + std::to_string(gw_->endpoint().port);
  std::vector<std::string> argv = curl_grpc_argv(dir_->path());
  argv.push_back(base + "/a\"b\\c/%0A");
  RunResult r = run(argv, dir_->path(), 20s);
  EXPECT_NE(r.out.find("grpc-status: 12"), std::string::npos) << r.out << r.err;  // unknown method, from the backend
  argv = curl_grpc_argv(dir_->path());
  argv.push_back("-H");
  argv.push_back("host: evil\"}");
  argv.push_back(base + "/q");
  run(argv, dir_->path(), 20s);
  stop_gateway();
  const Parsed p = parse_json_log(dir_->path(), log_path());
  ASSERT_TRUE(p.ok) << p.error << read_file(log_path());
  ASSERT_EQ(p.rows.size(), 2u) << read_file(log_path());
  // Two connections, maybe two shards: the lines may come in either order.
  const bool quoted_first = p.rows[0][kPath] != "/q";
  const auto& quoted = p.rows[quoted_first ? 0 : 1];
  const auto& refused = p.rows[quoted_first ? 1 : 0];
  EXPECT_EQ(quoted[kPath], "/a\"b\\c/%0A") << read_file(log_path());
  EXPECT_EQ(quoted[kGrpcStatus], "12");
  EXPECT_EQ(refused[kPath], "/q");
  EXPECT_EQ(refused[kStatus], "0");
  EXPECT_EQ(refused[kReset], "{\"by\": \"gateway\", \"code\": 1}") << "PROTOCOL_ERROR";
}

class AccessLogText : public AccessLog {
 protected:
  void configure(GatewayConfig& cfg) override {
    format_ = "text";
    AccessLog::configure(cfg);
  }
};

TEST_F(AccessLogText, OneLinePerCall) {
  auto s = stub();
  ASSERT_TRUE(unary(*s, "text").status.ok());
  stop_gateway();
  const std::vector<std::string> lines = lines_of(read_file(log_path()));
  ASSERT_EQ(lines.size(), 1u) << read_file(log_path());
  const std::string& l = lines[0];
  EXPECT_NE(l.find(" public 127.0.0.1:"), std::string::npos) << l;
  EXPECT_NE(l.find(" TLSv1.3 full "), std::string::npos) << l;
  EXPECT_NE(l.find(" \"/tlsgate.test.Echo/Unary\" 200 grpc=0 reset=- in="), std::string::npos) << l;
  EXPECT_NE(l.find(" backend " + echo_->endpoint().address() + " retries=0"), std::string::npos) << l;
}

class AccessLogStdout : public AccessLog {
 protected:
  void configure(GatewayConfig& cfg) override { cfg.extra_top = "[access_log]\npath = \"-\"\n"; }
};

TEST_F(AccessLogStdout, LinesGoToStandardOutput) {
  auto s = stub();
  ASSERT_TRUE(unary(*s, "to stdout").status.ok());
  ASSERT_TRUE(gw_->process().wait_for(
      Stream::Stdout, [](const std::string& out) { return out.find("\"path\":\"/tlsgate.test.Echo/Unary\"") != std::string::npos; },
      10s))
      << gw_->process().stdout_text();
  stop_gateway();
  EXPECT_EQ(lines_of(gw_->process().stdout_text()).size(), 1u) << gw_->process().stdout_text();
}

// logrotate: the file is renamed, SIGHUP, and new lines go to a new file at
// the configured path; the old file keeps what was written before.
TEST_F(AccessLog, RenameAndSighupOpensANewFile) {
  auto s = stub();
  ASSERT_TRUE(unary(*s, "before").status.ok());
  // Written within the writer's interval and the shard's tick.
  ASSERT_TRUE(eventually([&] { return lines_of(read_file(log_path())).size() == 1; }, 10s));
  const std::filesystem::path rotated = dir_->path() / "access.log.1";
  std::filesystem::rename(log_path(), rotated);
  gw_->process().signal(SIGHUP);
  ASSERT_TRUE(gw_->process().wait_for(Stream::Stderr,
                                      [](const std::string& e) { return e.find("configuration reloaded") != std::string::npos; },
                                      10s));
  ASSERT_TRUE(unary(*s, "after").status.ok());
  ASSERT_TRUE(eventually([&] { return std::filesystem::exists(log_path()) && lines_of(read_file(log_path())).size() == 1; }, 10s))
      << "no new file at the path";
  stop_gateway();
  EXPECT_EQ(lines_of(read_file(rotated)).size(), 1u);
  EXPECT_EQ(lines_of(read_file(log_path())).size(), 1u);
}

// A path the new configuration cannot open refuses the reload: the old file
// keeps getting the lines.
TEST_F(AccessLog, ReloadToAFileThatCannotBeOpenedIsRefused) {
  GatewayConfig next;
  next.endpoints = {echo_->endpoint().address()};
  next.workers = workers_;
  next.extra_top = "[access_log]\npath = \"" + (dir_->path() / "missing" / "access.log").string() + "\"\n";
  write_file(gw_->config_path(), next.render());
  gw_->process().signal(SIGHUP);
  ASSERT_TRUE(gw_->process().wait_for(Stream::Stderr,
                                      [](const std::string& e) { return e.find("reload refused") != std::string::npos; },
                                      10s));
  EXPECT_NE(gw_->process().stderr_text().find("access_log.path: cannot open"), std::string::npos)
      << gw_->process().stderr_text();
  auto s = stub();
  ASSERT_TRUE(unary(*s, "still logged").status.ok());
  stop_gateway();
  EXPECT_EQ(lines_of(read_file(log_path())).size(), 1u);
}

// At start-up, a path that cannot be opened is a configuration error: exit
// 2 and one line naming the file, line and key.
TEST(AccessLogStart, AFileThatCannotBeOpenedStopsTheStart) {
  if (env("TLSGATE_BIN").empty()) GTEST_FAIL() << "TLSGATE_BIN is not set";
  TempDir dir;
  GatewayConfig cfg;
  cfg.endpoints = {"127.0.0.1:1"};
  cfg.extra_top = "[access_log]\npath = \"" + (dir / "missing" / "access.log").string() + "\"\n";
  write_file(dir / "gw.toml", cfg.render());
  RunResult r = run({env("TLSGATE_BIN"), "--config", (dir / "gw.toml").string()}, dir.path(), 20s, gateway_env());
  EXPECT_TRUE(r.status.exited && r.status.code == 2) << r.status.to_string() << r.err;
  EXPECT_NE(r.err.find("gw.toml:4:8: access_log.path: cannot open \"" + (dir / "missing" / "access.log").string() +
                       "\": No such file or directory"),
            std::string::npos)
      << r.err;
}

// A writer that cannot keep up (a FIFO nobody reads): calls still succeed,
// lines are dropped and counted.
class AccessLogStuck : public AccessLog {
 protected:
  void SetUp() override {
    workers_ = 1;
    log_name_ = "access.fifo";
    tmp_ = std::make_unique<TempDir>();
    fifo_ = tmp_->path() / "access.fifo";
    ASSERT_EQ(::mkfifo(fifo_.c_str(), 0600), 0);
    // Held open and never read: the pipe fills, then the writer waits.
    reader_ = ::open(fifo_.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    ASSERT_GE(reader_, 0);
    AccessLog::SetUp();
  }
  void TearDown() override {
    AccessLog::TearDown();
    if (reader_ >= 0) ::close(reader_);
  }
  void configure(GatewayConfig& cfg) override {
    AccessLog::configure(cfg);
    cfg.extra_top = "[access_log]\npath = \"" + fifo_.string() + "\"\n";
  }
  std::unique_ptr<TempDir> tmp_;
  std::filesystem::path fifo_;
  int reader_ = -1;
};

TEST_F(AccessLogStuck, CallsSucceedAndDroppedLinesAreCounted) {
  // A line is ~450 bytes: the pipe (64 KiB) and both halves (256 KiB) hold
  // about 700; 3,000 calls on 4 connections overflow them.
  const std::string target = gw_->target();
  Load load([&](int) { return tls_channel(target); }, 4, 0, 750);
  EXPECT_TRUE(eventually([&] { return load.total() >= 3000; }, 60s)) << load.total() << " calls in 60 s";
  load.stop();
  const auto failures = load.failures();
  EXPECT_EQ(failures.size(), 0u) << (failures.empty() ? "" : status_str(failures[0]));
  const auto t0 = Clock::now();
  const auto counters = stop_gateway();
  EXPECT_LT(Clock::now() - t0, 8s) << "stopping waits for a stuck log file ~1 s, not for ever";
  ASSERT_TRUE(counters.count("access_log_dropped")) << gw_->process().stderr_text();
  EXPECT_GT(std::stoul(counters.at("access_log_dropped")), 0u);
  EXPECT_EQ(std::stoul(counters.at("access_log_lines")) + std::stoul(counters.at("access_log_dropped")), 3000u);
}

}  // namespace
}  // namespace tlsgate::itest
