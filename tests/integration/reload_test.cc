// SIGHUP reload (issue 18): under steady gRPC load over several connections
// the certificate and the cluster's endpoints are replaced; no call fails,
// a new TLS connection gets the new certificate, calls go to the new
// backend, and a bad file or a changed listener address changes nothing.
#include <chrono>
#include <string>
#include <thread>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

// The serial number of `cert`, or of the certificate a TLS client gets from
// 127.0.0.1:port ("serial=..." as openssl prints it).
std::string serial_of_file(const std::filesystem::path& dir, const std::filesystem::path& cert) {
  RunResult r = run({"/usr/bin/openssl", "x509", "-noout", "-serial", "-in", cert.string()}, dir, 10s);
  return r.out;
}

std::string serial_served(const std::filesystem::path& dir, int port) {
  RunResult r = run({"/bin/sh", "-c",
                     "/usr/bin/openssl s_client -connect 127.0.0.1:" + std::to_string(port) +
                         " -servername localhost -alpn h2 </dev/null 2>/dev/null | /usr/bin/openssl x509 -noout -serial"},
                    dir, 20s);
  return r.out;
}

class Reload : public ::testing::Test {
 protected:
  void SetUp() override {
    if (env("TLSGATE_BIN").empty()) GTEST_FAIL() << "TLSGATE_BIN is not set (path to the tlsgate binary)";
    dir_ = std::make_unique<TempDir>();
    EchoOptions a;
    a.id = "a";
    EchoOptions b;
    b.id = "b";
    a_ = std::make_unique<EchoBackend>(dir_->path(), a);
    b_ = std::make_unique<EchoBackend>(dir_->path(), b);
    cfg_.endpoints = {a_->endpoint().address()};
    gw_ = std::make_unique<Gateway>(dir_->path(), cfg_);
    ASSERT_TRUE(gw_->started());
  }
  void TearDown() override {
    if (gw_) gw_->stop();
  }

  // Writes `next` over the running file and sends SIGHUP; waits for the
  // gateway's `reloaded` or `refused` line (the n-th of either).
  bool reload(const GatewayConfig& next, const std::string& expect) {
    write_file(gw_->config_path(), next.render());
    const size_t before = count(expect);
    gw_->process().signal(SIGHUP);
    return eventually([&] { return count(expect) > before; }, 10s);
  }
  size_t count(const std::string& text) const {
    const std::string err = gw_->process().stderr_text();
    size_t n = 0;
    for (size_t at = err.find(text); at != std::string::npos; at = err.find(text, at + 1)) ++n;
    return n;
  }

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<EchoBackend> a_, b_;
  GatewayConfig cfg_;
  std::unique_ptr<Gateway> gw_;
};

TEST_F(Reload, CertificateAndEndpointsUnderLoadWithoutAFailedCall) {
  const std::string ecdsa = serial_of_file(dir_->path(), certs().server_crt);
  const std::string rsa = serial_of_file(dir_->path(), certs().rsa_crt);
  ASSERT_NE(ecdsa, rsa);
  ASSERT_EQ(serial_served(dir_->path(), gw_->endpoint().port), ecdsa);

  const std::string target = gw_->target();
  Load load([&](int) { return tls_channel(target); }, 8, 0);  // 8 connections
  ASSERT_TRUE(eventually([&] { return load.total() >= 200; }, 20s)) << "the load did not start";

  GatewayConfig next = cfg_;
  next.certificate = certs().rsa_crt;
  next.private_key = certs().rsa_key;
  next.endpoints = {b_->endpoint().address()};
  ASSERT_TRUE(reload(next, "configuration reloaded")) << gw_->process().stderr_text();
  EXPECT_EQ(serial_served(dir_->path(), gw_->endpoint().port), rsa) << "a new connection gets the new certificate";
  EXPECT_TRUE(eventually([&] { return load.ok_from("b") >= 200; }, 20s))
      << "calls did not move to the new endpoint: " << load.ok_from("b") << " on b";

  // A bad file: refused with the start-up message, nothing changes.
  write_file(gw_->config_path(), next.render() + "\n[[listeners]\n");
  const size_t refused = count("reload refused");
  gw_->process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return count("reload refused") > refused; }, 10s));
  EXPECT_NE(gw_->process().stderr_text().find(gw_->config_path().string() + ":"), std::string::npos)
      << "the refusal names file:line:column";
  EXPECT_EQ(serial_served(dir_->path(), gw_->endpoint().port), rsa) << "the running configuration stays";
  const uint64_t on_b = load.ok_from("b");
  EXPECT_TRUE(eventually([&] { return load.ok_from("b") >= on_b + 100; }, 20s)) << "calls still go to b";

  load.stop();
  const auto failures = load.failures();
  EXPECT_EQ(failures.size(), 0u) << "of " << load.total()
                                 << " calls; first: " << (failures.empty() ? "" : status_str(failures[0]));
  const std::string err = gw_->process().stderr_text();
  gw_->stop();
  const auto counters = stopped_counters(gw_->process().stderr_text());
  ASSERT_TRUE(counters.count("config_reloads")) << err;
  EXPECT_EQ(counters.at("config_reloads"), "1");
  EXPECT_EQ(counters.at("config_reload_failures"), "1");
}

TEST_F(Reload, ChangedListenerAddressIsRefusedNamingTheKey) {
  std::string text = cfg_.render();
  const size_t at = text.find("127.0.0.1:0");
  ASSERT_NE(at, std::string::npos) << text;
  text.replace(at, 11, "127.0.0.2:0");
  write_file(gw_->config_path(), text);
  const size_t refused = count("reload refused");
  gw_->process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return count("reload refused") > refused; }, 10s));
  EXPECT_NE(gw_->process().stderr_text().find("listeners[0].listen: 127.0.0.2:0 instead of 127.0.0.1:0"),
            std::string::npos)
      << gw_->process().stderr_text();
  auto stub = Echo::NewStub(tls_channel(gw_->target()));
  EXPECT_TRUE(unary(*stub, "still serving").status.ok());
}

}  // namespace
}  // namespace tlsgate::itest
