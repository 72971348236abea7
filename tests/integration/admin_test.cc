// The admin listener (issue 18): /healthz, /ready (503 from SIGTERM on),
// /metrics that promtool accepts and that one gRPC call moves, /config,
// 404; slow and malformed admin clients never reach the shards.
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <string>
#include <thread>
#include <vector>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

class Admin : public GatewayTest {
 protected:
  void configure(GatewayConfig& cfg) override {
    cfg.admin = true;
    cfg.drain = "delay = \"3s\"\ntimeout = \"5s\"";
  }
  void SetUp() override {
    GatewayTest::SetUp();
    port_ = gw_->admin_port();
    ASSERT_GT(port_, 0) << gw_->process().stderr_text();
  }
  std::string scrape() {
    HttpAnswer a = http_request(port_, "/metrics");
    EXPECT_EQ(a.status, 200) << a.head;
    return a.body;
  }
  int port_ = 0;
};

TEST_F(Admin, HealthReadyAndUnknownPaths) {
  EXPECT_EQ(http_request(port_, "/healthz").status, 200);
  // The listeners are bound (and logged) before the shards start: /ready
  // turns 200 once they serve.
  EXPECT_TRUE(eventually([&] { return http_request(port_, "/ready").status == 200; }, 5s));
  EXPECT_EQ(http_request(port_, "/").status, 404);
  EXPECT_EQ(http_request(port_, "/metricsx").status, 404);
  EXPECT_EQ(http_request(port_, "/metrics", "POST").status, 405);
  HttpAnswer head = http_request(port_, "/healthz", "HEAD");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.body, "");
  HttpAnswer m = http_request(port_, "/metrics?x=1");
  EXPECT_EQ(m.status, 200) << "a query string is ignored";
  EXPECT_NE(m.head.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << m.head;
}

TEST_F(Admin, OneGrpcCallMovesItsCounters) {
  const std::string before = scrape();
  auto stub = Echo::NewStub(tls_channel(gw_->target()));
  ASSERT_TRUE(unary(*stub, "counted").status.ok());
  const std::string after = scrape();
  auto moved = [&](const std::string& name, const std::vector<std::string>& labels = {}) {
    return metric(after, name, labels) - std::max(0.0, metric(before, name, labels));
  };
  EXPECT_EQ(moved("tlsgate_connections_accepted_total", {"listener=\"public\""}), 1) << after;
  EXPECT_EQ(moved("tlsgate_handshakes_total", {"listener=\"public\"", "resumed=\"false\""}), 1) << after;
  EXPECT_EQ(moved("tlsgate_streams_forwarded_total"), 1) << after;
  EXPECT_EQ(moved("tlsgate_cluster_streams_total", {"cluster=\"backend\""}), 1) << after;
  EXPECT_EQ(moved("tlsgate_endpoint_streams_total", {"cluster=\"backend\""}), 1) << after;
  EXPECT_EQ(moved("tlsgate_handshake_duration_seconds_count", {"listener=\"public\""}), 1) << after;
  EXPECT_EQ(moved("tlsgate_streams_total", {"listener=\"public\"", "cluster=\"backend\"", "grpc_status=\"0\""}), 1)
      << after;
  EXPECT_EQ(moved("tlsgate_streams_total"), 1) << "no other stream\n" << after;
  EXPECT_EQ(moved("tlsgate_stream_duration_seconds_count", {"cluster=\"backend\""}), 1) << after;
  EXPECT_EQ(moved("tlsgate_stream_duration_seconds_bucket", {"cluster=\"backend\"", "le=\"+Inf\""}), 1) << after;
  EXPECT_EQ(metric(after, "tlsgate_connections_open", {"listener=\"public\""}), 1) << "the channel is still open";
  EXPECT_GE(metric(after, "tlsgate_upstream_connections"), 1);
  EXPECT_EQ(metric(after, "tlsgate_ready"), 1);
  EXPECT_GT(metric(after, "tlsgate_process_resident_memory_bytes"), 1e6);
  EXPECT_GT(metric(after, "tlsgate_shard_cpu_seconds_total", {"shard=\"0\""}), 0);
  EXPECT_EQ(metric(after, "tlsgate_shards_unanswered"), 0);
}

// A scrape taken while calls run over many connections is valid Prometheus
// text (promtool, from Debian's prometheus package, is the judge).
// The admin listener is one socket, without SO_REUSEPORT: a second gateway
// given the same admin address refuses to start, naming it, instead of
// sharing the port so that scrapes and probes land on either process (which
// is also what a port-0 bind with SO_REUSEPORT could hand out: CI saw a
// scrape answered by another test's gateway).
TEST_F(Admin, ASecondGatewayCannotTakeTheAdminPort) {
  GatewayConfig second;
  second.endpoints = {echo_->endpoint().address()};
  second.extra_top = "[admin]\nlisten = \"127.0.0.1:" + std::to_string(port_) + "\"\n";
  const auto path = dir_->path() / "second.toml";
  write_file(path, second.render());
  RunResult r = run({env("TLSGATE_BIN"), "--config", path.string()}, dir_->path(), 15s);
  EXPECT_TRUE(r.status.exited && r.status.code == 2) << r.status.to_string() << "\n" << r.err;
  EXPECT_NE(r.err.find("cannot listen on 127.0.0.1:" + std::to_string(port_) + ": Address already in use"),
            std::string::npos)
      << r.err;
  EXPECT_TRUE(eventually([&] { return http_request(port_, "/ready").status == 200; }, 5s))
      << "the first gateway still answers on it";
}

TEST_F(Admin, HandshakeFailuresAreCountedByReason) {
  const std::string before = scrape();
  // Plain HTTP at the TLS port.
  const int fd = tcp_connect("127.0.0.1", gw_->endpoint().port, 2s);
  ASSERT_GE(fd, 0);
  send_all(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  Ms elapsed{};
  EXPECT_TRUE(wait_peer_close(fd, 5s, &elapsed, nullptr));
  ::close(fd);
  // A TLS 1.2 client offering only a CBC suite with RSA key exchange, which
  // the default policy leaves out.
  TempDir dir;
  RunResult r = run({"/usr/bin/openssl", "s_client", "-connect", gw_->target(), "-tls1_2", "-cipher", "AES128-SHA"},
                    dir.path(), 10s, {}, "");
  EXPECT_TRUE(r.status.exited && r.status.code == 1) << r.status.to_string() << r.out << r.err;
  const std::string after = scrape();
  auto moved = [&](const std::string& reason) {
    const std::vector<std::string> l = {"reason=\"" + reason + "\""};
    return metric(after, "tlsgate_handshake_failures_total", l) - metric(before, "tlsgate_handshake_failures_total", l);
  };
  EXPECT_EQ(moved("not_tls"), 1) << after;
  EXPECT_EQ(moved("no_shared_cipher"), 1) << after;
  EXPECT_EQ(metric(after, "tlsgate_connections_closed_total", {"reason=\"handshake_failed\""}), 2) << after;
}

TEST_F(Admin, PromtoolAcceptsAScrapeUnderLoad) {
  const std::string target = gw_->target();
  Load load([&](int) { return tls_channel(target); }, 8, 5, 400);
  ASSERT_TRUE(eventually([&] { return load.total() >= 50; }, 20s)) << "the load did not start";
  const std::string page = scrape();
  load.stop();
  EXPECT_TRUE(load.failures().empty());
  EXPECT_EQ(metric(page, "tlsgate_shards_unanswered"), 0) << page;
  EXPECT_GT(metric(page, "tlsgate_streams_forwarded_total"), 0) << page;
  TempDir dir;
  RunResult r = run({"/usr/bin/promtool", "check", "metrics"}, dir.path(), 30s, {}, page);
  EXPECT_TRUE(r.status.exited && r.status.code == 0)
      << "promtool: " << r.status.to_string() << "\n" << r.out << r.err << "\npage:\n" << page;
  EXPECT_EQ(r.out + r.err, "") << "promtool's lint findings";
}

TEST_F(Admin, ReadyAnswers503FromSigtermWhileStillServing) {
  ASSERT_TRUE(eventually([&] { return http_request(port_, "/ready").status == 200; }, 5s));
  gw_->process().signal(SIGTERM);
  ASSERT_TRUE(eventually([&] { return http_request(port_, "/ready").status == 503; }, 2s));
  EXPECT_EQ(http_request(port_, "/healthz").status, 200) << "alive while draining";
  // [drain] delay = 3s: the listener still serves new connections.
  auto stub = Echo::NewStub(tls_channel(gw_->target()));
  EXPECT_TRUE(unary(*stub, "during the delay").status.ok());
  EXPECT_EQ(metric(scrape(), "tlsgate_ready"), 0);
  const ExitStatus st = gw_->wait_exit(20s);
  EXPECT_TRUE(st.exited && st.code == 0) << st.to_string();
}

TEST_F(Admin, ConfigShowsTheRunningConfigurationWithDefaults) {
  HttpAnswer a = http_request(port_, "/config");
  ASSERT_EQ(a.status, 200);
  EXPECT_NE(a.body.find("idle_timeout = \"5m\""), std::string::npos) << "a default written out\n" << a.body;
  EXPECT_NE(a.body.find("name = \"backend\""), std::string::npos) << a.body;
  EXPECT_EQ(a.body.find("PRIVATE KEY"), std::string::npos) << "no key material";
  // What /config shows is a configuration tlsgate accepts.
  TempDir dir;
  write_file(dir.path() / "shown.toml", a.body);
  RunResult r = run({env("TLSGATE_BIN"), "--check-config", (dir.path() / "shown.toml").string()}, dir.path(), 30s,
                    gateway_env());
  EXPECT_TRUE(r.status.exited && r.status.code == 0) << r.out << r.err << "\n" << a.body;
}

TEST_F(Admin, RefusedReloadIsCounted) {
  const std::string good = read_file(gw_->config_path());
  rewrite_in_place(gw_->config_path(), good + "\nnot toml [\n");
  gw_->process().signal(SIGHUP);
  EXPECT_TRUE(eventually(
      [&] { return metric(scrape(), "tlsgate_config_reloads_total", {"result=\"failure\""}) == 1; }, 5s));
  rewrite_in_place(gw_->config_path(), good);
  gw_->process().signal(SIGHUP);
  EXPECT_TRUE(eventually(
      [&] { return metric(scrape(), "tlsgate_config_reloads_total", {"result=\"success\""}) == 1; }, 5s));
}

// Clients that hold admin connections open without finishing a request, or
// send garbage, cost the admin thread only: gRPC calls go on, and the
// admin answers again once they time out (admin::kRequestTimeoutMs, 5 s).
TEST_F(Admin, SlowAndMalformedAdminClientsDoNotReachTheShards) {
  std::vector<int> slow;
  for (int i = 0; i < 80; ++i) {  // more than admin::kMaxConnections
    const int fd = tcp_connect("127.0.0.1", port_, 2s);
    ASSERT_GE(fd, 0);
    EXPECT_TRUE(send_all(fd, "GET /metr"));
    slow.push_back(fd);
  }
  auto stub = Echo::NewStub(tls_channel(gw_->target()));
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(unary(*stub, "while the admin is busy").status.ok());
  // Once the slow ones time out, the admin answers again, also a client
  // that had waited in the backlog.
  EXPECT_TRUE(eventually([&] { return http_request(port_, "/healthz", "GET", 2s).status == 200; }, 15s));
  for (int fd : slow) ::close(fd);

  auto raw = [&](const std::string& bytes) {
    const int fd = tcp_connect("127.0.0.1", port_, 2s);
    EXPECT_GE(fd, 0);
    std::string got;
    send_all(fd, bytes);
    Ms elapsed{};
    wait_peer_close(fd, 6s, &elapsed, &got);
    ::close(fd);
    return got.substr(0, got.find("\r\n"));
  };
  EXPECT_EQ(raw("\x16\x03\x01\x02\x03\x01\x01\xfc\x03\x03\r\n\r\n"), "HTTP/1.1 400 Bad Request");
  EXPECT_EQ(raw("GET /healthz HTTP/2.0\r\n\r\n"), "HTTP/1.1 505 HTTP Version Not Supported");
  EXPECT_EQ(raw("GET /" + std::string(9000, 'a') + " HTTP/1.1\r\n\r\n"), "HTTP/1.1 414 URI Too Long");
  EXPECT_EQ(raw("GET /healthz HTTP/1.1\r\nX: " + std::string(9000, 'b') + "\r\n\r\n"),
            "HTTP/1.1 431 Request Header Fields Too Large");
  EXPECT_EQ(raw("GET /healthz HTTP/1.1\r\nbad header\r\n\r\n"), "HTTP/1.1 400 Bad Request");
  EXPECT_TRUE(unary(*stub, "after the garbage").status.ok());
  EXPECT_EQ(http_request(port_, "/healthz").status, 200);
}

}  // namespace
}  // namespace tlsgate::itest
