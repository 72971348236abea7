// tlsgate-load (issue 20) against a real tlsgate in front of a real grpc++
// echo backend: exact counts and the JSON report, resumption (and resumption
// across two instances) counted as tlsgate's /metrics counts it, a non-zero
// grpc-status failing the run, a fixed rate kept (as a count of connections
// started), --concurrency and the closed loop, persistent mode, latency from
// the intended time, the progress line, a gateway's max_connection_age,
// refused connections and bad flags; --hold (idle connections tlsgate's
// /metrics counts open, and the ones it closed), --connections-total and the
// --marks lines around the measured part.
#include <signal.h>
#include <sys/stat.h>

#include <string>
#include <vector>

#include "fixtures.hh"
#include "load_report.hh"

namespace tlsgate::itest {
namespace {

constexpr const char* kUnary = "/tlsgate.test.Echo/Unary";

class Load : public GatewayTest {
 protected:
  void configure(GatewayConfig& cfg) override { cfg.admin = true; }

  RunResult load(std::vector<std::string> args, Ms timeout = 30s) {
    return run_load(gw_->target(), kUnary, std::move(args), dir_->path(), timeout);
  }

  static bool valid_json(const std::string& text, const std::filesystem::path& dir) {
    RunResult r =
        run({"/usr/bin/python3", "-c", "import json,sys; json.load(sys.stdin)"}, dir, 20s, {}, text);
    return r.status.exited && r.status.code == 0;
  }

  std::string scrape() { return http_request(gw_->admin_port(), "/metrics").body; }

  // tlsgate-load running beside the test (--hold), its output in the test's dir.
  std::unique_ptr<Process> start_load(std::vector<std::string> args) {
    args.insert(args.begin(),
                {env("TLSGATE_LOAD_BIN"), "--target", gw_->target(), "--path", kUnary, "--threads", "2"});
    ProcessOptions po;
    po.argv = std::move(args);
    po.output_dir = dir_->path();
    po.name = "tlsgate-load";
    return std::make_unique<Process>(std::move(po));
  }

  double open_connections() { return metric(scrape(), "tlsgate_connections_open"); }
};

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::string describe(const RunResult& r) {
  return "status " + r.status.to_string() + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

TEST_F(Load, RateModeCountsEveryConnectionAndCall) {
  const std::string before = scrape();
  RunResult r = load({"--rate", "100", "--duration", "2", "--calls", "2", "--json"});
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << describe(r);
  EXPECT_TRUE(valid_json(r.out, dir_->path())) << r.out;
  EXPECT_EQ(json_number(r.out, "\"connections\":{\"started\":"), 200) << r.out;
  EXPECT_EQ(json_number(r.out, "\"ok\":"), 200) << "connections ok\n" << r.out;
  EXPECT_EQ(json_number(r.out, "\"calls\":{\"ok\":"), 400) << r.out;
  EXPECT_EQ(json_number(r.out, "\"grpc_status\":{\"0\":"), 400) << r.out;
  EXPECT_EQ(json_number(r.out, "\"full\":"), 200) << "no --resume: every handshake full\n" << r.out;
  EXPECT_EQ(json_number(r.out, "\"count\":"), 400) << "one latency sample per call\n" << r.out;
  StatsReply s;
  ASSERT_TRUE(poll_stats([](const StatsReply& x) { return calls_of(x, "Unary") >= 400; }, 5s, &s));
  EXPECT_EQ(calls_of(s, "Unary"), 400u) << "the backend saw every call, once";
  // Each connection ended as a client that is done ends it (GOAWAY,
  // close_notify, FIN), not with a reset tlsgate counts as a socket error.
  std::string after;
  EXPECT_TRUE(eventually(
      [&] {
        after = scrape();
        return connections_closed(after, "client") - connections_closed(before, "client") >= 200;
      },
      5s))
      << after;
  EXPECT_EQ(connections_closed(after, "client") - connections_closed(before, "client"), 200) << after;
  EXPECT_EQ(connections_closed(after, "socket_error") - connections_closed(before, "socket_error"), 0) << after;
}

TEST_F(Load, ResumedHandshakesAreTheOnesTlsgateResumed) {
  const std::string before = scrape();
  RunResult r = load({"--rate", "50", "--duration", "2", "--resume", "--json"});
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << describe(r);
  const long resumed = json_number(r.out, "\"resumed\":");
  const long full = json_number(r.out, "\"full\":");
  EXPECT_EQ(resumed + full, 100) << r.out;
  // Each thread's first connection cannot resume; the rest find a ticket
  // as soon as one connection has finished.
  EXPECT_GT(resumed, 50) << r.out;
  const std::string after = scrape();
  auto moved = [&](const char* resumed_label) {
    const std::vector<std::string> labels = {std::string("resumed=\"") + resumed_label + "\""};
    return metric(after, "tlsgate_handshakes_total", labels) -
           std::max(0.0, metric(before, "tlsgate_handshakes_total", labels));
  };
  EXPECT_EQ(moved("true"), resumed) << after;
  EXPECT_EQ(moved("false"), full) << after;
}

// Two instances sharing a ticket key file, each sending one ticket per
// handshake: the warm-up's 20 full handshakes on A collect 20 tickets, and
// the first 20 of the 40 measured connections to B resume them; the other 20
// find the pool empty and make full handshakes, because B's own tickets are
// not kept (with them every measured connection would resume).
TEST_F(Load, TicketsFromAnotherInstance) {
  const std::filesystem::path keys = dir_->path() / "ticket.keys";
  RunResult key = run({"/bin/bash", "-c", "/usr/bin/head -c 80 /dev/urandom | /usr/bin/openssl base64 -A"},
                      dir_->path(), 10s);
  ASSERT_EQ(key.out.size(), 108u) << key.out << key.err;
  write_file(keys, key.out + "\n");
  ::chmod(keys.c_str(), 0600);
  GatewayConfig cfg;
  cfg.endpoints = {echo_->endpoint().address()};
  cfg.tls_extra = "  ticket_keys = \"" + keys.string() + "\"\n  session_tickets = 1\n";
  cfg.admin = true;
  Gateway a(dir_->path(), cfg);
  Gateway b(dir_->path(), cfg);
  ASSERT_TRUE(a.started() && b.started());
  const std::string bin = env("TLSGATE_LOAD_BIN");
  RunResult r = run({bin, "--target", b.target(), "--tickets-from", a.target(), "--path", kUnary, "--threads",
                     "2", "--rate", "40", "--warmup", "0.5", "--duration", "1", "--json"},
                    dir_->path(), 30s);
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << describe(r);
  EXPECT_EQ(json_number(r.out, "\"resumed\":"), 20) << r.out;
  EXPECT_EQ(json_number(r.out, "\"full\":"), 20) << r.out;
  auto handshakes = [](Gateway& g, const char* resumed) {
    const std::string page = http_request(g.admin_port(), "/metrics").body;
    return metric(page, "tlsgate_handshakes_total", {std::string("resumed=\"") + resumed + "\""});
  };
  EXPECT_EQ(handshakes(b, "true"), 20);
  EXPECT_EQ(handshakes(b, "false"), 20);
  EXPECT_EQ(handshakes(a, "false"), 20) << "the warm-up's, on A";
  EXPECT_LE(handshakes(a, "true"), 0) << "none resumed on A (-1: no sample at all)";
  a.stop();
  b.stop();
}

// --concurrency 1: one connection at a time (and one thread), so each
// connection after the first starts with the ticket of the one before: one
// full handshake in all. Without the cap two threads make at least two.
TEST_F(Load, ConcurrencyCapsConnectionsInFlight) {
  RunResult r = load({"--rate", "50", "--duration", "1", "--concurrency", "1", "--resume", "--json"});
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << describe(r);
  EXPECT_EQ(json_number(r.out, "\"threads\":"), 1) << r.out;
  EXPECT_EQ(json_number(r.out, "\"connections\":{\"started\":"), 50) << r.out;
  EXPECT_EQ(json_number(r.out, "\"full\":"), 1) << r.out;
  EXPECT_EQ(json_number(r.out, "\"resumed\":"), 49) << r.out;
}

TEST_F(Load, ClosedLoopAsFastAsPossible) {
  RunResult r = load({"--rate", "max", "--concurrency", "4", "--calls", "2", "--duration", "1", "--json"});
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << describe(r);
  EXPECT_TRUE(valid_json(r.out, dir_->path())) << r.out;
  const long started = json_number(r.out, "\"connections\":{\"started\":");
  EXPECT_GT(started, 0) << r.out;
  EXPECT_EQ(json_number(r.out, "\"ok\":"), started) << r.out;
  EXPECT_EQ(json_number(r.out, "\"calls\":{\"ok\":"), 2 * started) << r.out;
}

// The echo backend ends a call with the status its request asks for:
// EchoRequest.status_code is field 4, a varint: tag 0x20, then 13 (INTERNAL).
TEST_F(Load, AnyNonZeroGrpcStatusFailsTheRun) {
  const std::string message = std::string("\x20\x0d", 2);
  write_file(dir_->path() / "status13.bin", grpc_frame(message));
  RunResult r = load({"--rate", "20", "--duration", "1", "--data", (dir_->path() / "status13.bin").string()});
  ASSERT_TRUE(r.status.exited) << describe(r);
  EXPECT_EQ(r.status.code, 1) << describe(r);
  EXPECT_NE(r.out.find("grpc-status  13: 20"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("grpc_status: 20"), std::string::npos) << "counted as errors of that kind\n" << r.out;
}

TEST_F(Load, FixedRateStartsTheAskedNumberOfConnections) {
  RunResult r = load({"--rate", "50", "--duration", "4", "--json"});
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << describe(r);
  const long started = json_number(r.out, "\"connections\":{\"started\":");
  EXPECT_GE(started, 194) << r.out;
  EXPECT_LE(started, 206) << r.out;
  EXPECT_EQ(json_number(r.out, "\"calls\":{\"ok\":"), started) << r.out;
}

TEST_F(Load, PersistentModeAtAFixedCallRate) {
  RunResult r = load({"--connections", "2", "--streams", "4", "--calls-per-second", "200", "--duration", "2",
                      "--payload-bytes", "100", "--json"});
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << describe(r);
  EXPECT_TRUE(valid_json(r.out, dir_->path())) << r.out;
  EXPECT_EQ(json_number(r.out, "\"calls\":{\"ok\":"), 400) << r.out;
  EXPECT_EQ(json_number(r.out, "\"failed\":"), 0) << r.out;
  EXPECT_EQ(json_number(r.out, "\"connections\":{\"started\":"), 2) << r.out;
  EXPECT_EQ(json_number(r.out, "\"full\":"), 2) << "two connections, kept\n" << r.out;
  StatsReply s;
  ASSERT_TRUE(poll_stats([](const StatsReply& x) { return calls_of(x, "Unary") >= 400; }, 5s, &s));
  EXPECT_EQ(s.bytes_received(), 400u * 98) << "each request's payload field: 100 bytes minus tag and length";
}

// No coordinated omission: one stream, calls due every 20 ms, each answered
// after at least 100 ms (EchoRequest.delay_ms, field 7: tag 0x38, then 100).
// Call k (from 0) cannot end before (k + 1) x 100 ms and was due at k x 20 ms,
// so the 50th waited at least 4.02 s; measured from when it was sent it
// would look like 0.1 s.
TEST_F(Load, LatencyCountsTheWaitForABusyStream) {
  write_file(dir_->path() / "delay100.bin", grpc_frame(std::string("\x38\x64", 2)));
  RunResult r = load({"--connections", "1", "--streams", "1", "--calls-per-second", "50", "--duration", "1",
                      "--data", (dir_->path() / "delay100.bin").string(), "--json"});
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << describe(r);
  EXPECT_EQ(json_number(r.out, "\"calls\":{\"ok\":"), 50) << r.out;
  EXPECT_GE(json_number(r.out, "\"max\":"), 4'020'000) << "microseconds\n" << r.out;
  EXPECT_GE(json_number(r.out, "\"p50\":"), 2'000'000) << "the 25th call waited at least 2.02 s\n" << r.out;
}

TEST_F(Load, PersistentModeAsFastAsPossible) {
  RunResult r = load({"--connections", "2", "--streams", "8", "--duration", "1", "--json"});
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << describe(r);
  EXPECT_GT(json_number(r.out, "\"calls\":{\"ok\":"), 0) << r.out;
  EXPECT_EQ(json_number(r.out, "\"calls_failed\":"), 0) << r.out;
  // Without --warmup no call is a warm-up one (the first ones were, when a
  // thread started before the common start time).
  EXPECT_EQ(json_number(r.out, "\"warmup\":{\"connections\":0,\"calls_ok\":"), 0) << r.out;
}

TEST_F(Load, ExpectBytesChecksTheResponseLength) {
  // The echo reply is the payload field again plus server_id: not 3 bytes.
  RunResult r = load({"--rate", "10", "--duration", "1", "--payload-bytes", "10", "--expect-bytes", "3"});
  ASSERT_TRUE(r.status.exited) << describe(r);
  EXPECT_EQ(r.status.code, 1) << describe(r);
  EXPECT_NE(r.out.find("length: 10"), std::string::npos) << r.out;
}

TEST_F(Load, BadFlagsExitTwoNamingTheFlag) {
  const std::string bin = env("TLSGATE_LOAD_BIN");
  ASSERT_FALSE(bin.empty());
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--target", gw_->target(), "--path", kUnary, "--rate", "fast"}, "--rate"},
      {{"--target", "localhost:1", "--path", kUnary, "--rate", "1"}, "--target"},
      {{"--path", kUnary, "--rate", "1"}, "--target"},
      {{"--target", gw_->target(), "--rate", "1"}, "--path"},
      {{"--target", gw_->target(), "--path", kUnary, "--rate", "1", "--streams", "2"}, "--streams"},
      {{"--target", gw_->target(), "--path", kUnary, "--connections", "0"}, "--connections"},
      {{"--target", gw_->target(), "--path", kUnary, "--rate", "1", "--payload-bytes", "1"},
       "--payload-bytes"},
      {{"--target", gw_->target(), "--path", kUnary, "--rate", "1", "--data", "/nonexistent"}, "--data"},
      {{"--target", gw_->target(), "--path", kUnary, "--rate", "1", "--frobnicate"}, "--frobnicate"},
      {{"--target", gw_->target(), "--path", kUnary, "--rate", "max"}, "--rate"},
      {{"--target", gw_->target(), "--path", kUnary, "--rate", "5", "--tickets-from", gw_->target()},
       "--tickets-from"},
      {{"--target", gw_->target(), "--path", kUnary, "--connections", "1", "--concurrency", "2"},
       "--concurrency"},
      {{"--target", gw_->target(), "--path", kUnary, "--rate", "1", "--tls13-ciphers", "TLS_NO_SUCH"},
       "--tls13-ciphers"},
      {{"--target", gw_->target(), "--path", kUnary, "--hold", "0"}, "--hold"},
      {{"--target", gw_->target(), "--path", kUnary, "--hold", "5", "--calls", "2"}, "--calls"},
      {{"--target", gw_->target(), "--path", kUnary, "--hold", "5", "--rate", "2"}, "--rate"},
      {{"--target", gw_->target(), "--path", kUnary, "--hold", "5", "--warmup", "1"}, "--warmup"},
      {{"--target", gw_->target(), "--path", kUnary, "--connections", "1", "--connections-total", "5"},
       "--connections-total"},
      {{"--target", gw_->target(), "--path", kUnary, "--rate", "1", "--duration", "1", "--connections-total",
        "5"},
       "--connections-total"},
  };
  for (const auto& [args, flag] : cases) {
    std::vector<std::string> argv = {bin};
    argv.insert(argv.end(), args.begin(), args.end());
    RunResult r = run(argv, dir_->path(), 10s);
    EXPECT_TRUE(r.status.exited && r.status.code == 2) << flag << ": " << describe(r);
    EXPECT_NE(r.err.find(flag), std::string::npos) << flag << ": " << describe(r);
  }
  RunResult help = run({bin, "--help"}, dir_->path(), 10s);
  EXPECT_TRUE(help.status.exited && help.status.code == 0) << describe(help);
  for (const char* flag : {"--target",
                           "--sni",
                           "--tls13-ciphers",
                           "--path",
                           "--data",
                           "--payload-bytes",
                           "--expect-bytes",
                           "--rate",
                           "--calls",
                           "--concurrency",
                           "--resume",
                           "--tickets-from",
                           "--connections",
                           "--streams",
                           "--calls-per-second",
                           "--duration",
                           "--warmup",
                           "--timeout",
                           "--threads",
                           "--json",
                           "--hold",
                           "--connections-total",
                           "--marks"})
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag << " is not explained by --help";
}

TEST_F(Load, WarmupIsNotCounted) {
  RunResult r = load({"--rate", "40", "--warmup", "1", "--duration", "1", "--json"});
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << describe(r);
  EXPECT_EQ(json_number(r.out, "\"connections\":{\"started\":"), 40) << r.out;
  EXPECT_EQ(json_number(r.out, "\"warmup\":{\"connections\":"), 40) << r.out;
}

// A progress line every second on stderr when it is a terminal (script(1)
// gives it one), and nothing on stderr otherwise.
TEST_F(Load, ProgressLineOnlyOnATerminal) {
  RunResult plain = load({"--rate", "20", "--duration", "1.5"});
  ASSERT_TRUE(plain.status.exited && plain.status.code == 0) << describe(plain);
  EXPECT_EQ(plain.err, "");
  std::string command = env("TLSGATE_LOAD_BIN") + " --target " + gw_->target() + " --path " + kUnary +
                        " --threads 2 --rate 20 --duration 1.5";
  RunResult tty = run({"/usr/bin/script", "-qec", command, "/dev/null"}, dir_->path(), 30s);
  ASSERT_TRUE(tty.status.exited && tty.status.code == 0) << describe(tty);
  EXPECT_NE(tty.out.find("measured connections"), std::string::npos) << tty.out;
  EXPECT_NE(tty.out.find("calls        30 ok"), std::string::npos) << "and the report after it\n" << tty.out;
}

TEST_F(Load, NothingListeningIsAConnectError) {
  const std::string bin = env("TLSGATE_LOAD_BIN");
  RunResult r = run({bin, "--target", "127.0.0.1:" + std::to_string(closed_port()), "--path", kUnary,
                     "--rate", "10", "--duration", "1", "--threads", "1"},
                    dir_->path(), 30s);
  ASSERT_TRUE(r.status.exited) << describe(r);
  EXPECT_EQ(r.status.code, 1) << describe(r);
  EXPECT_NE(r.out.find("connect: 10"), std::string::npos) << r.out;
}

// --hold 50: tlsgate counts the 50 connections open while they are held
// (each had its call answered first), and none once SIGTERM released them;
// the ready line comes before, the report after.
TEST_F(Load, HoldKeepsConnectionsOpenUntilSignalled) {
  const std::string before = scrape();
  auto p = start_load({"--hold", "50", "--concurrency", "8"});
  ASSERT_TRUE(p->wait_for(
      Stream::Stdout, [](const std::string& t) { return has(t, "\n"); }, 30s))
      << p->describe();
  EXPECT_EQ(p->stdout_text(), "ready ok=50 failed=0\n") << p->describe();
  EXPECT_EQ(open_connections(), 50) << scrape();
  StatsReply s;
  ASSERT_TRUE(poll_stats([](const StatsReply& x) { return calls_of(x, "Unary") >= 50; }, 5s, &s));
  EXPECT_EQ(calls_of(s, "Unary"), 50u) << "one call on each";
  p->signal(SIGTERM);
  const ExitStatus st = p->wait(20s);
  EXPECT_TRUE(st.exited && st.code == 0) << p->describe();
  EXPECT_TRUE(has(p->stdout_text(), "held         50 with their call answered OK, 0 closed by the server"))
      << p->stdout_text();
  EXPECT_TRUE(has(p->stdout_text(), "connections  50 started, 50 ok, 0 failed")) << p->stdout_text();
  EXPECT_TRUE(eventually([&] { return open_connections() == 0; }, 5s)) << scrape();
  std::string after;
  EXPECT_TRUE(eventually(
      [&] {
        after = scrape();
        return connections_closed(after, "client") - connections_closed(before, "client") >= 50;
      },
      5s))
      << "released as a client ends them\n"
      << after;
  EXPECT_EQ(connections_closed(after, "socket_error") - connections_closed(before, "socket_error"), 0) << after;
}

// Held connections the server closes (tlsgate stopped: its drain ends idle
// connections) are counted as such, not as failed calls, and once all are
// gone tlsgate-load ends by itself. --json: the ready line is JSON too.
TEST_F(Load, HoldCountsTheConnectionsTheServerClosed) {
  auto p = start_load({"--hold", "20", "--json"});
  ASSERT_TRUE(p->wait_for(
      Stream::Stdout, [](const std::string& t) { return has(t, "\n"); }, 30s))
      << p->describe();
  EXPECT_EQ(p->stdout_text(), "{\"ready\":{\"ok\":20,\"failed\":0}}\n") << p->describe();
  gw_->stop();
  const ExitStatus st = p->wait(30s);
  EXPECT_TRUE(st.exited && st.code == 0) << p->describe();
  const std::string out = p->stdout_text();
  const std::string report = out.substr(out.find('\n') + 1);
  EXPECT_TRUE(valid_json(report, dir_->path())) << out;
  EXPECT_TRUE(has(report, "\"held\":{\"ok\":20,\"closed_by_server\":20}")) << out;
  EXPECT_EQ(json_number(report, "\"calls\":{\"ok\":"), 20) << out;
  EXPECT_EQ(json_number(report, "\"closed\":"), 0) << "not an error\n" << out;
}

// --connections-total: the measured part is a count, after a timed warm-up,
// in the closed loop and at a fixed rate; --marks put "measuring" and
// "done" around it, before the report.
TEST_F(Load, ConnectionsTotalBoundsTheMeasuredPart) {
  RunResult r = load({"--rate", "max", "--concurrency", "4", "--warmup", "0.5", "--connections-total", "120",
                      "--marks", "--json"});
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << describe(r);
  const std::string head = "{\"mark\":\"measuring\"}\n{\"mark\":\"done\"}\n";
  ASSERT_EQ(r.out.substr(0, head.size()), head) << r.out;
  const std::string report = r.out.substr(head.size());
  EXPECT_TRUE(valid_json(report, dir_->path())) << r.out;
  EXPECT_EQ(json_number(report, "\"connections\":{\"started\":"), 120) << r.out;
  EXPECT_EQ(json_number(report, "\"calls\":{\"ok\":"), 120) << r.out;
  EXPECT_GT(json_number(report, "\"warmup\":{\"connections\":"), 0) << r.out;

  RunResult fixed = load({"--rate", "50", "--connections-total", "30", "--marks"});
  ASSERT_TRUE(fixed.status.exited && fixed.status.code == 0) << describe(fixed);
  EXPECT_EQ(fixed.out.rfind("measuring\ndone\ntlsgate-load: ", 0), 0u) << fixed.out;
  EXPECT_TRUE(has(fixed.out, "connections  30 started, 30 ok")) << fixed.out;
  EXPECT_TRUE(has(fixed.out, "30 connections measured after 0s warm-up")) << fixed.out;
}

// A kept connection the gateway ends (GOAWAY at max_connection_age, 1 s
// +-10%) is not reopened: the calls made before count OK, every later one
// fails, the run ends on time and exits 1 naming what happened.
class LoadMaxAge : public Load {
 protected:
  void configure(GatewayConfig& cfg) override {
    Load::configure(cfg);
    cfg.extra_listener = "max_connection_age = \"1s\"\n";
  }
};

TEST_F(LoadMaxAge, AConnectionTheServerEndsIsNotReopened) {
  RunResult r = load({"--connections", "1", "--calls-per-second", "100", "--duration", "3", "--json"});
  ASSERT_TRUE(r.status.exited) << describe(r);
  EXPECT_EQ(r.status.code, 1) << describe(r);
  const long ok = json_number(r.out, "\"calls\":{\"ok\":");
  const long failed = json_number(r.out, "\"calls\":{\"ok\":" + std::to_string(ok) + ",\"failed\":");
  EXPECT_GT(ok, 0) << r.out;
  EXPECT_GT(failed, 0) << r.out;
  EXPECT_EQ(ok + failed, 300) << "every call due is counted once\n" << r.out;
  EXPECT_GE(json_number(r.out, "\"closed\":"), 1) << r.out;
}

// As fast as possible on 8 streams: tlsgate's two-step GOAWAY answers every
// call it accepted, and tlsgate-load starts none after the first GOAWAY, so
// no call fails; only the connection's early end is reported.
TEST_F(LoadMaxAge, TheGracefulCloseLosesNoCall) {
  RunResult r = load({"--connections", "1", "--streams", "8", "--duration", "2", "--json"});
  ASSERT_TRUE(r.status.exited) << describe(r);
  EXPECT_EQ(r.status.code, 1) << "the connection ended early\n" << describe(r);
  const long ok = json_number(r.out, "\"calls\":{\"ok\":");
  EXPECT_GT(ok, 0) << r.out;
  EXPECT_EQ(json_number(r.out, "\"calls\":{\"ok\":" + std::to_string(ok) + ",\"failed\":"), 0) << r.out;
  EXPECT_EQ(json_number(r.out, "\"closed\":"), 1) << r.out;
}

}  // namespace
}  // namespace tlsgate::itest
