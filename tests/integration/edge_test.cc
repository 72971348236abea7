// The test that ties issue 18 together: an NLB stand-in on loopback (HAProxy
// in mode tcp, send-proxy-v2, health checks on each gateway's /ready) in
// front of two tlsgate instances with proxy_protocol = "v2". Under steady
// gRPC load one instance is reloaded with a new certificate, then drained
// (SIGTERM: /ready turns 503, HAProxy stops sending it connections, the
// listeners close after [drain] delay, GOAWAY): no call fails, the client's
// address reaches the backend and the access log, and the other instance
// takes the load.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <string>
#include <thread>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

namespace fs = std::filesystem;

// A port nobody listens on now (the kernel's choice, released again).
int spare_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

GatewayConfig instance(const EchoBackend& echo, const fs::path& dir) {
  GatewayConfig cfg;
  cfg.endpoints = {echo.endpoint().address()};
  cfg.admin = true;
  cfg.extra_listener = "proxy_protocol = \"v2\"";
  cfg.extra_top = "[access_log]\npath = \"" + (dir / "access.log").string() + "\"\n";
  cfg.drain = "delay = \"2s\"\ntimeout = \"10s\"";
  return cfg;
}

std::string haproxy_config(int port, Gateway& a, Gateway& b) {
  auto server = [](const char* name, Gateway& g) {
    return std::string("  server ") + name + " 127.0.0.1:" + std::to_string(g.endpoint().port) +
           " send-proxy-v2 check port " + std::to_string(g.admin_port()) + " inter 200ms fall 1 rise 1\n";
  };
  return "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n"
         "frontend nlb\n  bind 127.0.0.1:" + std::to_string(port) + "\n  default_backend gateways\n"
         "backend gateways\n  balance roundrobin\n  option httpchk GET /ready\n  http-check expect status 200\n" +
         server("a", a) + server("b", b);
}

double streams_of(Gateway& g) {
  return std::max(0.0, metric(http_request(g.admin_port(), "/metrics").body, "tlsgate_streams_total"));
}

TEST(EdgeBehindBalancer, ReloadAndDrainOneInstanceBehindHaproxyLosesNoCall) {
  if (env("TLSGATE_BIN").empty()) GTEST_FAIL() << "TLSGATE_BIN is not set";
  TempDir dir;
  fs::create_directories(dir.path() / "a");
  fs::create_directories(dir.path() / "b");
  EchoBackend echo(dir.path());
  Gateway a(dir.path() / "a", instance(echo, dir.path() / "a"));
  Gateway b(dir.path() / "b", instance(echo, dir.path() / "b"));
  ASSERT_TRUE(a.started() && b.started());
  ASSERT_TRUE(eventually([&] { return http_request(a.admin_port(), "/ready").status == 200; }, 5s));
  ASSERT_TRUE(eventually([&] { return http_request(b.admin_port(), "/ready").status == 200; }, 5s));

  const int port = spare_port();
  write_file(dir.path() / "haproxy.cfg", haproxy_config(port, a, b));
  ProcessOptions o;
  o.argv = {"/usr/sbin/haproxy", "-db", "-f", (dir.path() / "haproxy.cfg").string()};
  o.output_dir = dir.path();
  o.name = "haproxy";
  Process haproxy(std::move(o));
  const std::string target = "127.0.0.1:" + std::to_string(port);
  ASSERT_TRUE(eventually([&] { return unary_check(target, 2s).empty(); }, 10s)) << haproxy.describe();

  // 8 connections, each a channel of its own: HAProxy spreads connections.
  Load load([&](int) { return tls_channel(target); }, 8, 20);
  ASSERT_TRUE(eventually([&] { return load.total() >= 100; }, 20s)) << "the load did not start";
  ASSERT_TRUE(eventually([&] { return streams_of(a) > 0 && streams_of(b) > 0; }, 10s))
      << "both instances serve";
  StatsReply s;
  ASSERT_TRUE(echo.stats(&s).ok());
  EXPECT_EQ(s.last_x_forwarded_for(), "127.0.0.1") << "the client's address, from HAProxy's PROXY header";

  // Reload A with another certificate: it keeps serving.
  const std::string running = read_file(a.config_path());
  std::string reloaded = running;
  const std::string crt = certs().server_crt.string(), key = certs().server_key.string();
  reloaded.replace(reloaded.find(crt), crt.size(), certs().rsa_crt.string());
  reloaded.replace(reloaded.find(key), key.size(), certs().rsa_key.string());
  rewrite_in_place(a.config_path(), reloaded);
  a.process().signal(SIGHUP);
  ASSERT_TRUE(eventually(
      [&] {
        return metric(http_request(a.admin_port(), "/metrics").body, "tlsgate_config_reloads_total",
                      {"result=\"success\""}) == 1;
      },
      5s))
      << a.process().stderr_text();
  std::this_thread::sleep_for(500ms);

  // Drain A: /ready 503 at once, HAProxy marks it down, B takes the load.
  const double b_before = streams_of(b);
  a.process().signal(SIGTERM);
  ASSERT_TRUE(eventually([&] { return http_request(a.admin_port(), "/ready").status == 503; }, 2s));
  const ExitStatus st = a.wait_exit(30s);
  EXPECT_TRUE(st.exited && st.code == 0) << st.to_string() << "\n" << a.process().stderr_text();
  const uint64_t after_exit = load.total();
  ASSERT_TRUE(eventually([&] { return load.total() >= after_exit + 100; }, 20s)) << "calls go on through B";
  load.stop();

  const auto failures = load.failures();
  EXPECT_TRUE(failures.empty()) << failures.size() << " of " << load.total()
                                << " calls failed; first: " << status_str(failures[0]);
  EXPECT_GE(streams_of(b) - b_before, 100) << "B took the load";
  const std::string log_a = read_file(dir.path() / "a" / "access.log");
  EXPECT_NE(log_a.find("\"client\":\"127.0.0.1\""), std::string::npos) << log_a.substr(0, 600);
  haproxy.stop();
  b.stop();
}

}  // namespace
}  // namespace tlsgate::itest
