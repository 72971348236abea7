// OCSP stapling (issue 19) through the real process: responses made by
// `openssl ocsp` acting as the test CA's responder (a CA database listing the
// certificate), `ocsp_response` in the configuration, and `openssl s_client
// -status` reading what tlsgate staples, in TLS 1.3 and 1.2; a response for
// another certificate is a warning at start and in --check-config; a reload
// staples the file's new content; ECDSA and RSA certificates for one name each
// staple their own.
#include <string>
#include <vector>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

namespace fs = std::filesystem;

// "serial=1A2B...\n" as openssl prints it, without "serial=" and the newline.
std::string serial_of(const fs::path& dir, const fs::path& cert) {
  RunResult r = run({"/usr/bin/openssl", "x509", "-noout", "-serial", "-in", cert.string()}, dir, 10s);
  std::string s = r.out;
  if (s.rfind("serial=", 0) == 0) s.erase(0, 7);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

// The test CA's responder answering for `cert` from a CA database that
// lists it as valid ('V') or revoked ('R'): the DER response in dir/name.
fs::path make_response(const fs::path& dir, const fs::path& cert, char status, const std::string& name) {
  const std::string serial = serial_of(dir, cert);
  EXPECT_FALSE(serial.empty());
  std::string line(1, status);
  line += "\t361231000000Z\t";
  if (status == 'R') line += "251201000000Z,keyCompromise";
  line += "\t" + serial + "\tunknown\t/O=tlsgate test/CN=localhost\n";
  const fs::path index = dir / (name + ".index");
  write_file(index, line);
  const fs::path out = dir / name;
  const std::string ca = certs().ca.string();
  const std::string ca_key = (certs().dir / "ca.key").string();
  RunResult r = run({"/usr/bin/openssl", "ocsp", "-index", index.string(), "-rsigner", ca, "-rkey", ca_key, "-CA", ca,
                     "-issuer", ca, "-cert", cert.string(), "-CAfile", ca, "-respout", out.string(), "-ndays", "1"},
                    dir, 30s);
  EXPECT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << r.out << r.err;
  // Read back as a client would check it: signed by the CA, the status asked for.
  r = run({"/usr/bin/openssl", "ocsp", "-respin", out.string(), "-issuer", ca, "-cert", cert.string(), "-CAfile", ca,
           "-no_nonce"},
          dir, 30s);
  EXPECT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << r.out << r.err;
  EXPECT_NE(r.err.find("Response verify OK"), std::string::npos) << r.out << r.err;
  EXPECT_NE(r.out.find(": " + std::string(status == 'R' ? "revoked" : "good")), std::string::npos) << r.out;
  return out;
}

// `openssl s_client` to the gateway as "localhost" with `extra` options;
// stdout and stderr together.
std::string s_client(const std::string& target, const std::vector<std::string>& extra, const fs::path& dir) {
  std::vector<std::string> argv = {"/usr/bin/openssl", "s_client", "-connect", target, "-servername", "localhost",
                                   "-alpn", "h2"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  RunResult r = run(argv, dir, 20s, {}, "");
  EXPECT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << r.out << r.err;
  return r.out + r.err;
}

bool has(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

const std::string kNoResponse = "OCSP response: no response sent";
const std::string kSuccessful = "OCSP Response Status: successful";
const std::string kGood = "Cert Status: good";

class Ocsp : public ::testing::Test {
 protected:
  void SetUp() override {
    if (env("TLSGATE_BIN").empty()) GTEST_FAIL() << "TLSGATE_BIN is not set (path to the tlsgate binary)";
    dir_ = std::make_unique<TempDir>();
    echo_ = std::make_unique<EchoBackend>(dir_->path());
    cfg_.endpoints = {echo_->endpoint().address()};
  }
  void TearDown() override {
    if (gw_) gw_->stop();
  }
  void start() {
    gw_ = std::make_unique<Gateway>(dir_->path(), cfg_);
    ASSERT_TRUE(gw_->started());
  }
  // The single certificate pair with this response file.
  void staple(const fs::path& response) {
    cfg_.listener_tail = "  ocsp_response = \"" + response.string() + "\"\n";
  }
  std::string s_client(const std::vector<std::string>& extra) {
    return itest::s_client(gw_->target(), extra, dir_->path());
  }
  const fs::path& dir() const { return dir_->path(); }

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<EchoBackend> echo_;
  GatewayConfig cfg_;
  std::unique_ptr<Gateway> gw_;
};

TEST_F(Ocsp, StapledInTls13AndTls12WhenTheClientAsks) {
  const fs::path good = make_response(dir(), certs().server_crt, 'V', "good.der");
  staple(good);
  cfg_.admin = true;
  start();
  EXPECT_EQ(gw_->process().stderr_text().find("ocsp_response"), std::string::npos)
      << "no warning for a good response:\n" << gw_->process().stderr_text();
  for (const char* version : {"-tls1_3", "-tls1_2"}) {
    const std::string out = s_client({version, "-status"});
    EXPECT_TRUE(has(out, kSuccessful)) << version << "\n" << out;
    EXPECT_TRUE(has(out, kGood)) << version << "\n" << out;
    EXPECT_TRUE(has(out, "Serial Number: " + serial_of(dir(), certs().server_crt))) << version << "\n" << out;
  }
  // A client that does not ask: in TLS 1.2 no CertificateStatus message.
  EXPECT_TRUE(has(s_client({"-tls1_2", "-status", "-msg"}), "CertificateStatus"));
  const std::string silent = s_client({"-tls1_2", "-msg"});
  EXPECT_FALSE(has(silent, "CertificateStatus")) << silent;
  EXPECT_FALSE(has(silent, "OCSP")) << silent;
  // And gRPC through it works as before.
  EXPECT_EQ(unary_check(gw_->target()), "");
  // /config shows which file is stapled.
  const HttpAnswer config = http_request(gw_->admin_port(), "/config");
  EXPECT_TRUE(has(config.body, "ocsp_response = \"" + good.string() + "\"")) << config.body;

  gw_->stop();
  const auto counters = stopped_counters(gw_->process().stderr_text());
  ASSERT_TRUE(counters.count("tls_ocsp_stapled")) << gw_->process().stderr_text();
  EXPECT_EQ(counters.at("tls_ocsp_stapled"), "3") << "the three s_client -status handshakes";
  EXPECT_EQ(counters.at("tls_ocsp_stale"), "0");
}

TEST_F(Ocsp, ResponseForAnotherCertificateIsAWarningAndNothingIsStapled) {
  const fs::path other = make_response(dir(), certs().rsa_crt, 'V', "rsa.der");
  staple(other);
  start();
  const std::string log = gw_->process().stderr_text();
  EXPECT_TRUE(has(log, "listeners[0].tls.ocsp_response")) << log;
  EXPECT_TRUE(has(log, "for another certificate")) << log;
  EXPECT_TRUE(has(log, "not stapled")) << log;
  for (const char* version : {"-tls1_3", "-tls1_2"}) {
    const std::string out = s_client({version, "-status"});
    EXPECT_TRUE(has(out, kNoResponse)) << version << "\n" << out;
  }
  EXPECT_EQ(unary_check(gw_->target()), "") << "the certificate serves as without a response";

  // --check-config says it on stderr and passes: a warning, not an error.
  RunResult r = run({env("TLSGATE_BIN"), "--check-config", gw_->config_path().string()}, dir(), 30s, gateway_env());
  EXPECT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << r.err;
  EXPECT_TRUE(has(r.err, "tlsgate: warning: ")) << r.err;
  EXPECT_TRUE(has(r.err, "for another certificate")) << r.err;
  EXPECT_TRUE(has(r.err, other.string())) << r.err;
}

// The operator's tooling writes a new response over the file and reloads:
// the new one is stapled (here: the CA has revoked the certificate since).
TEST_F(Ocsp, ReloadStaplesTheFilesNewContent) {
  const fs::path file = make_response(dir(), certs().server_crt, 'V', "current.der");
  staple(file);
  start();
  ASSERT_TRUE(has(s_client({"-status"}), kGood));

  const fs::path revoked = make_response(dir(), certs().server_crt, 'R', "revoked.der");
  fs::copy_file(revoked, file, fs::copy_options::overwrite_existing);
  auto reloads = [&] {
    const std::string err = gw_->process().stderr_text();
    size_t n = 0;
    for (size_t at = err.find("configuration reloaded"); at != std::string::npos;
         at = err.find("configuration reloaded", at + 1))
      ++n;
    return n;
  };
  const size_t before = reloads();
  gw_->process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return reloads() > before; }, 10s)) << gw_->process().stderr_text();
  EXPECT_TRUE(has(gw_->process().stderr_text(), "REVOKED")) << "said loudly:\n" << gw_->process().stderr_text();
  // "configuration reloaded" is logged when the configuration is posted to
  // the shards; each takes it up at its next loop turn, so a connection made
  // at once may still get the old staple.
  for (const char* version : {"-tls1_3", "-tls1_2"}) {
    std::string out;
    EXPECT_TRUE(eventually(
        [&] {
          out = s_client({version, "-status"});
          return has(out, "Cert Status: revoked");
        },
        10s))
        << version << "\n" << out;
  }
}

// One name, an ECDSA and an RSA certificate (one SSL_CTX; OpenSSL picks by
// the client's signature algorithms): each client gets the response about
// the certificate it was sent.
TEST_F(Ocsp, EcdsaAndRsaCertificatesEachStapleTheirOwn) {
  const fs::path ec = make_response(dir(), certs().server_crt, 'V', "ec.der");
  const fs::path rsa = make_response(dir(), certs().rsa_crt, 'V', "rsa.der");
  auto entry = [](const fs::path& crt, const fs::path& key, const fs::path& response) {
    return "  [[listeners.tls.certificates]]\n  certificate = \"" + crt.string() + "\"\n  private_key = \"" +
           key.string() + "\"\n  ocsp_response = \"" + response.string() + "\"\n";
  };
  cfg_.certificates = entry(certs().server_crt, certs().server_key, ec) + entry(certs().rsa_crt, certs().rsa_key, rsa);
  start();
  EXPECT_EQ(gw_->process().stderr_text().find("ocsp_response"), std::string::npos) << gw_->process().stderr_text();
  const std::string ec_serial = "Serial Number: " + serial_of(dir(), certs().server_crt);
  const std::string rsa_serial = "Serial Number: " + serial_of(dir(), certs().rsa_crt);
  struct Case {
    std::vector<std::string> options;
    bool rsa;
  };
  for (const Case& c : std::vector<Case>{
           {{"-tls1_3", "-sigalgs", "RSA-PSS+SHA256:RSA+SHA256"}, true},
           {{"-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"}, true},
           {{"-tls1_3", "-sigalgs", "ECDSA+SHA256"}, false},
           {{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}, false},
       }) {
    std::vector<std::string> options = c.options;
    options.push_back("-status");
    const std::string out = s_client(options);
    const std::string what = c.options[0] + " " + c.options[2];
    EXPECT_TRUE(has(out, c.rsa ? "Server public key is 2048 bit" : "Server public key is 256 bit")) << what << "\n"
                                                                                                    << out;
    EXPECT_TRUE(has(out, kGood)) << what << "\n" << out;
    EXPECT_TRUE(has(out, c.rsa ? rsa_serial : ec_serial)) << what << "\n" << out;
    EXPECT_FALSE(has(out, c.rsa ? ec_serial : rsa_serial)) << what << "\n" << out;
  }
}

}  // namespace
}  // namespace tlsgate::itest
