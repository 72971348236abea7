// mTLS from clients (issue 19): [listeners.tls] client_ca / client_auth
// through a real tlsgate. Refusals as `openssl s_client` sees them (the
// alert) and as /metrics counts them; the x-forwarded-client-cert a backend
// receives for a verified certificate (its hash checked against `openssl
// x509 -fingerprint`); a client's forged x-forwarded-client-cert never
// reaching a backend; resumption with a client certificate.
#include <grpc/grpc_security.h>

#include <algorithm>
#include <cctype>
#include <csignal>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

namespace fs = std::filesystem;

constexpr const char* kOpenssl = "/usr/bin/openssl";
constexpr const char* kForged = "By=spiffe://evil;Hash=00;Subject=\"CN=admin\";URI=spiffe://evil/admin";

// A key and a certificate made with the openssl tool into `dir`: signed by
// the test CA (certs()), or self-signed when `by_test_ca` is false (a CA
// tlsgate does not trust). `ext` is the extension section's lines.
struct MadeCert {
  fs::path crt, key;
};
MadeCert make_cert(const fs::path& dir, const std::string& name, const std::string& subject,
                   const std::string& ext, bool by_test_ca = true) {
  MadeCert m{dir / (name + ".crt"), dir / (name + ".key")};
  const fs::path csr = dir / (name + ".csr"), extfile = dir / (name + ".ext");
  write_file(extfile, ext);
  auto check = [&](const RunResult& r, const char* what) {
    if (!r.status.exited || r.status.code != 0)
      throw std::runtime_error(std::string(what) + " failed: " + r.status.to_string() + "\n" + r.out + r.err);
  };
  check(run({kOpenssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
             m.key.string()},
            dir, 30s),
        "genpkey");
  check(run({kOpenssl, "req", "-new", "-key", m.key.string(), "-subj", subject, "-out", csr.string()}, dir,
            30s),
        "req");
  if (by_test_ca) {
    check(run({kOpenssl, "x509", "-req", "-in", csr.string(), "-CA", certs().ca.string(), "-CAkey",
               (certs().dir / "ca.key").string(), "-CAcreateserial", "-CAserial", (dir / "ca.srl").string(),
               "-days", "30", "-sha256", "-extfile", extfile.string(), "-out", m.crt.string()},
              dir, 30s),
          "x509 -req");
  } else {
    check(run({kOpenssl, "x509", "-req", "-in", csr.string(), "-signkey", m.key.string(), "-days", "30",
               "-sha256", "-extfile", extfile.string(), "-out", m.crt.string()},
              dir, 30s),
          "x509 -req -signkey");
  }
  return m;
}

const char* kClientExt =
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";

// The lower-case hex SHA-256 of the first certificate in `crt`, as the
// openssl tool prints it ("sha256 Fingerprint=AB:CD:..."), normalised.
std::string fingerprint(const fs::path& crt, const fs::path& dir) {
  RunResult r = run({kOpenssl, "x509", "-in", crt.string(), "-noout", "-fingerprint", "-sha256"}, dir, 30s);
  EXPECT_TRUE(r.status.exited && r.status.code == 0) << r.err;
  std::string hex;
  for (char c : r.out.substr(r.out.find('=') + 1))
    if (std::isxdigit(static_cast<unsigned char>(c))) hex.push_back(static_cast<char>(std::tolower(c)));
  EXPECT_EQ(hex.size(), 64u) << r.out;
  return hex;
}

// A gRPC channel to the gateway presenting `crt`/`key` (none when empty);
// with `sessions`, TLS sessions are kept there and resumed.
std::shared_ptr<grpc::Channel> cert_channel(const std::string& target, const fs::path& crt,
                                            const fs::path& key, grpc_ssl_session_cache* sessions = nullptr) {
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = read_file(certs().ca);
  if (!crt.empty()) {
    o.pem_cert_chain = read_file(crt);
    o.pem_private_key = read_file(key);
  }
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (sessions != nullptr) {
    grpc_arg a = grpc_ssl_session_cache_create_channel_arg(sessions);
    args.SetPointerWithVtable(a.key, a.value.pointer.p, a.value.pointer.vtable);
  }
  return grpc::CreateCustomChannel(target, grpc::SslCredentials(o), args);
}

// One unary call, with a forged x-forwarded-client-cert when `forge`.
grpc::Status call(const std::shared_ptr<grpc::Channel>& ch, bool forge = false) {
  auto stub = Echo::NewStub(ch);
  auto ctx = context(10s);
  if (forge) ctx->AddMetadata("x-forwarded-client-cert", kForged);
  EchoRequest req;
  EchoReply reply;
  req.set_payload("mtls");
  return stub->Unary(ctx.get(), req, &reply);
}

// `openssl s_client` to the gateway (ALPN h2, the TLS version given, the
// client certificate when `crt` is set); -ign_eof keeps it reading until the
// gateway closes, so a TLS 1.3 refusal (sent after the client's Finished)
// is printed too. stdout and stderr together.
RunResult s_client(const std::string& target, const char* version, const fs::path& dir,
                   const fs::path& crt = {}, const fs::path& key = {},
                   const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv = {kOpenssl, "s_client", "-connect", target,    version,
                                   "-alpn",  "h2",       "-ign_eof", "-CAfile", certs().ca.string()};
  if (!crt.empty()) argv.insert(argv.end(), {"-cert", crt.string(), "-key", key.string()});
  argv.insert(argv.end(), extra.begin(), extra.end());
  RunResult r = run(argv, dir, 30s);
  r.out += r.err;
  return r;
}

std::string last_xfcc(EchoBackend& echo) {
  StatsReply s;
  grpc::Status st = echo.stats(&s, true);
  EXPECT_TRUE(st.ok()) << status_str(st);
  auto it = s.last_metadata().find("x-forwarded-client-cert");
  return it == s.last_metadata().end() ? "<absent>" : it->second;
}

class MtlsBase : public GatewayTest {
 protected:
  void configure(GatewayConfig& cfg) override {
    cfg.admin = true;
    if (!mode_.empty())
      cfg.listener_tail =
          "  client_ca = \"" + certs().ca.string() + "\"\n  client_auth = \"" + mode_ + "\"\n";
  }
  double metric_now(const std::string& name, const std::vector<std::string>& labels = {}) {
    HttpAnswer a = http_request(gw_->admin_port(), "/metrics");
    EXPECT_EQ(a.status, 200) << a.head;
    return metric(a.body, name, labels);
  }
  std::string mode_;
};

class MtlsRequire : public MtlsBase {
 protected:
  MtlsRequire() { mode_ = "require"; }
};
class MtlsOptional : public MtlsBase {
 protected:
  MtlsOptional() { mode_ = "optional"; }
};
class MtlsOff : public MtlsBase {};  // a listener without client_ca

// TLS 1.3: the client's Finished is answered with certificate_required (116).
TEST_F(MtlsRequire, Tls13WithoutCertificateGetsCertificateRequired) {
  RunResult r = s_client(gw_->target(), "-tls1_3", dir_->path());
  EXPECT_NE(r.out.find("certificate required"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("SSL alert number 116"), std::string::npos) << r.out;
  EXPECT_TRUE(eventually(
      [&] { return metric_now("tlsgate_handshake_failures_total", {"reason=\"client_certificate\""}) == 1; },
      5s));
  EXPECT_EQ(last_xfcc(*echo_), "<absent>");
}

// TLS 1.2 has no certificate_required: handshake_failure (40).
TEST_F(MtlsRequire, Tls12WithoutCertificateGetsHandshakeFailure) {
  RunResult r = s_client(gw_->target(), "-tls1_2", dir_->path());
  EXPECT_TRUE(r.status.exited && r.status.code != 0) << r.status.to_string() << "\n" << r.out;
  EXPECT_NE(r.out.find("SSL alert number 40"), std::string::npos) << r.out;
  EXPECT_TRUE(eventually(
      [&] { return metric_now("tlsgate_handshake_failures_total", {"reason=\"client_certificate\""}) == 1; },
      5s));
}

// A certificate the listener's CA did not sign: unknown_ca (48), in both
// versions; and a gRPC client holding one gets no call through.
TEST_F(MtlsRequire, CertificateFromAnotherCaGetsUnknownCa) {
  MadeCert other = make_cert(dir_->path(), "stranger", "/CN=stranger", kClientExt, false);
  for (const char* v : {"-tls1_3", "-tls1_2"}) {
    RunResult r = s_client(gw_->target(), v, dir_->path(), other.crt, other.key);
    EXPECT_NE(r.out.find("SSL alert number 48"), std::string::npos) << v << "\n" << r.out;
  }
  EXPECT_FALSE(call(cert_channel(gw_->target(), other.crt, other.key)).ok());
  EXPECT_EQ(last_xfcc(*echo_), "<absent>");
  EXPECT_TRUE(eventually(
      [&] { return metric_now("tlsgate_handshake_failures_total", {"reason=\"client_certificate\""}) >= 2; },
      5s));
  EXPECT_EQ(metric_now("tlsgate_client_certificates_total"), 0);
}

// The test client certificate (gen-cert: O=tlsgate test, CN=tlsgate test
// client, SAN DNS only): Hash and Subject, no URI, no By (the gateway's
// certificate has no SAN URI). A forged header on the same call is gone.
TEST_F(MtlsRequire, VerifiedCertificateReachesTheBackendAsXfcc) {
  const std::string hash = fingerprint(certs().client_crt, dir_->path());
  grpc::Status st = call(cert_channel(gw_->target(), certs().client_crt, certs().client_key), true);
  ASSERT_TRUE(st.ok()) << status_str(st);
  EXPECT_EQ(last_xfcc(*echo_), "Hash=" + hash + ";Subject=\"CN=tlsgate test client,O=tlsgate test\"");
  EXPECT_TRUE(eventually([&] { return metric_now("tlsgate_client_certificates_total") == 1; }, 5s));
}

// SAN URIs on both sides: the client's as URI=, the gateway's own as By=.
TEST_F(MtlsRequire, SanUrisBecomeUriAndBy) {
  gw_->stop();
  MadeCert server =
      make_cert(dir_->path(), "gw", "/CN=localhost",
                "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"
                "subjectAltName=DNS:localhost,IP:127.0.0.1,URI:spiffe://tlsgate.test/gateway\n");
  MadeCert client =
      make_cert(dir_->path(), "svc", "/O=tlsgate test/CN=svc a",
                std::string(kClientExt) + "subjectAltName=URI:spiffe://tlsgate.test/svc/a,URI:urn:x?a=1\n");
  TempDir dir;
  GatewayConfig cfg;
  cfg.endpoints = {echo_->endpoint().address()};
  cfg.certificate = server.crt;
  cfg.private_key = server.key;
  configure(cfg);
  Gateway gw(dir.path(), cfg);
  ASSERT_TRUE(gw.started());
  grpc::Status st = call(cert_channel(gw.target(), client.crt, client.key));
  ASSERT_TRUE(st.ok()) << status_str(st);
  EXPECT_EQ(last_xfcc(*echo_),
            "By=spiffe://tlsgate.test/gateway;Hash=" + fingerprint(client.crt, dir_->path()) +
                ";Subject=\"CN=svc a,O=tlsgate test\";URI=spiffe://tlsgate.test/svc/a;"
                "URI=\"urn:x?a=1\"");
  gw.stop();
}

// Resumption keeps working with a client certificate: the session id
// context is set, and the resumed session still carries the certificate.
TEST_F(MtlsRequire, SessionWithClientCertificateResumes) {
  const std::string sess = (dir_->path() / "session.pem").string();
  const std::string crt = certs().client_crt.string(), key = certs().client_key.string();
  const std::string target = gw_->target();
  for (const char* v : {"-tls1_3", "-tls1_2"}) {
    // -ign_eof is not given here: the first s_client waits a moment (for the
    // TLS 1.3 ticket) and then closes on its own.
    std::string script = "(sleep 0.5; echo) | /usr/bin/openssl s_client -connect " + target + " " + v +
                         " -alpn h2 -cert " + crt + " -key " + key + " -sess_out " + sess +
                         " >/dev/null 2>&1; (sleep 0.5; echo) | /usr/bin/openssl s_client -connect " +
                         target + " " + v + " -alpn h2 -cert " + crt + " -key " + key + " -sess_in " + sess +
                         " 2>/dev/null | grep -a -E '^(New|Reused),'";
    RunResult r = run({"/bin/bash", "-c", script}, dir_->path(), 60s);
    EXPECT_EQ(r.out.rfind("Reused,", 0), 0u) << v << ": " << r.out << r.err;
  }
  EXPECT_TRUE(
      eventually([&] { return metric_now("tlsgate_handshakes_total", {"resumed=\"true\""}) == 2; }, 5s));
  EXPECT_EQ(metric_now("tlsgate_handshake_failures_total", {"reason=\"client_certificate\""}), 0);
}

// A gRPC client that resumes (a session cache shared by two channels) is
// still known by its certificate: the resumed session carries it.
TEST_F(MtlsRequire, ResumedConnectionStillSendsTheHeader) {
  const std::string want = "Hash=" + fingerprint(certs().client_crt, dir_->path()) +
                           ";Subject=\"CN=tlsgate test client,O=tlsgate test\"";
  grpc_ssl_session_cache* sessions = grpc_ssl_session_cache_create_lru(4);
  for (int i = 0; i < 2; ++i) {
    grpc::Status st = call(cert_channel(gw_->target(), certs().client_crt, certs().client_key, sessions));
    ASSERT_TRUE(st.ok()) << i << ": " << status_str(st);
    EXPECT_EQ(last_xfcc(*echo_), want) << i;
  }
  grpc_ssl_session_cache_destroy(sessions);
  EXPECT_TRUE(
      eventually([&] { return metric_now("tlsgate_handshakes_total", {"resumed=\"true\""}) == 1; }, 5s))
      << "the second connection resumed";
  EXPECT_EQ(metric_now("tlsgate_client_certificates_total"), 2);
}

TEST_F(MtlsOptional, WithoutCertificateCallWorksAndNoHeader) {
  grpc::Status st = call(tls_channel(gw_->target()), true);
  ASSERT_TRUE(st.ok()) << status_str(st);
  EXPECT_EQ(last_xfcc(*echo_), "<absent>") << "forged header dropped, none added";
  EXPECT_EQ(metric_now("tlsgate_client_certificates_total"), 0);
}

TEST_F(MtlsOptional, WithCertificateHeaderAdded) {
  grpc::Status st = call(cert_channel(gw_->target(), certs().client_crt, certs().client_key));
  ASSERT_TRUE(st.ok()) << status_str(st);
  EXPECT_EQ(last_xfcc(*echo_), "Hash=" + fingerprint(certs().client_crt, dir_->path()) +
                                   ";Subject=\"CN=tlsgate test client,O=tlsgate test\"");
}

// SIGHUP reads client_ca and client_auth again: a CA file without a
// certificate is refused with the key named (nothing changes), "require"
// then applies to new connections.
TEST_F(MtlsOptional, ReloadReadsClientCaAndModeAgain) {
  auto count = [&](const std::string& text) {
    const std::string err = gw_->process().stderr_text();
    size_t n = 0;
    for (size_t at = err.find(text); at != std::string::npos; at = err.find(text, at + 1)) ++n;
    return n;
  };
  auto reload = [&](const std::string& ca, const std::string& mode, const std::string& expect) {
    GatewayConfig cfg;
    cfg.endpoints = {echo_->endpoint().address()};
    cfg.admin = true;
    cfg.listener_tail = "  client_ca = \"" + ca + "\"\n  client_auth = \"" + mode + "\"\n";
    write_file(gw_->config_path(), cfg.render());
    const size_t before = count(expect);
    gw_->process().signal(SIGHUP);
    return eventually([&] { return count(expect) > before; }, 10s);
  };
  const fs::path empty = dir_->path() / "no-certificate.pem";
  write_file(empty, "not a certificate\n");
  ASSERT_TRUE(reload(empty.string(), "require", "reload refused")) << gw_->process().stderr_text();
  EXPECT_NE(gw_->process().stderr_text().find("listeners[0].tls.client_ca"), std::string::npos)
      << gw_->process().stderr_text();
  EXPECT_TRUE(call(tls_channel(gw_->target())).ok()) << "still optional";

  ASSERT_TRUE(reload(certs().ca.string(), "require", "configuration reloaded"))
      << gw_->process().stderr_text();
  // Each shard adopts the new configuration at its next loop turn, after the
  // log line: a new connection is refused once they have.
  EXPECT_TRUE(eventually([&] { return !call(tls_channel(gw_->target())).ok(); }, 10s))
      << "require applies to new connections";
  grpc::Status st = call(cert_channel(gw_->target(), certs().client_crt, certs().client_key));
  EXPECT_TRUE(st.ok()) << status_str(st);
  EXPECT_EQ(last_xfcc(*echo_), "Hash=" + fingerprint(certs().client_crt, dir_->path()) +
                                   ";Subject=\"CN=tlsgate test client,O=tlsgate test\"");
}

// "optional" means verified when sent: another CA's certificate is refused.
TEST_F(MtlsOptional, CertificateFromAnotherCaRefused) {
  MadeCert other = make_cert(dir_->path(), "stranger", "/CN=stranger", kClientExt, false);
  RunResult r = s_client(gw_->target(), "-tls1_3", dir_->path(), other.crt, other.key);
  EXPECT_NE(r.out.find("SSL alert number 48"), std::string::npos) << r.out;
}

// No client_ca: a client's x-forwarded-client-cert is dropped all the same,
// on a call with a client certificate (not asked for, never sent) too.
TEST_F(MtlsOff, ForgedHeaderNeverReachesTheBackend) {
  for (bool with_cert : {false, true}) {
    auto ch = with_cert ? cert_channel(gw_->target(), certs().client_crt, certs().client_key)
                        : tls_channel(gw_->target());
    grpc::Status st = call(ch, true);
    ASSERT_TRUE(st.ok()) << status_str(st);
    EXPECT_EQ(last_xfcc(*echo_), "<absent>");
  }
}

}  // namespace
}  // namespace tlsgate::itest
