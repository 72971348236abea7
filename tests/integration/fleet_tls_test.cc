// TLS for a fleet (issue 19), through real tlsgate processes and real
// clients: one listener serving several names (ECDSA and RSA side by side)
// to openssl s_client and curl, and session tickets shared by two instances
// through a ticket_keys file, rotated with SIGHUP.
#include <sys/stat.h>

#include <chrono>
#include <string>
#include <vector>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

namespace fs = std::filesystem;

// A leaf certificate for `names` signed by the test CA: <dir>/<cn>.crt (leaf
// then CA) and <dir>/<cn>.key (mode 0600). "" or what failed.
std::string make_leaf(const fs::path& dir, const std::string& cn, bool rsa, const std::string& san) {
  const std::string key = (dir / (cn + ".key")).string(), crt = (dir / (cn + ".crt")).string();
  const std::string ca = certs().ca.string(), ca_key = (certs().dir / "ca.key").string();
  const std::string keygen = rsa ? "-algorithm RSA -pkeyopt rsa_keygen_bits:2048"
                                 : "-algorithm EC -pkeyopt ec_paramgen_curve:P-256";
  const std::string script =
      "set -e; umask 077; openssl genpkey " + keygen + " -out " + key +
      "; printf 'subjectAltName=" + san + "\\nextendedKeyUsage=serverAuth\\n' > " + cn +
      ".ext; openssl req -new -key " + key + " -subj '/CN=" + cn + "' -out " + cn +
      ".csr; openssl x509 -req -in " + cn + ".csr -CA " + ca + " -CAkey " + ca_key +
      " -CAcreateserial -CAserial ca.srl -days 30 -sha256 -extfile " + cn + ".ext -out " + cn +
      ".leaf; cat " + cn + ".leaf " + ca + " > " + crt;
  RunResult r = run({"/bin/bash", "-c", script}, dir, 60s);
  return r.status.exited && r.status.code == 0 ? "" : r.err;
}

std::string certificate_entry(const fs::path& dir, const std::string& cn) {
  return "[[listeners.tls.certificates]]\ncertificate = \"" + (dir / (cn + ".crt")).string() +
         "\"\nprivate_key = \"" + (dir / (cn + ".key")).string() + "\"\n";
}

// What `openssl s_client` reports for one handshake (stdout and stderr).
struct Handshake {
  std::string text;
  // The CN of the certificate sent ("subject=O = tlsgate test, CN = localhost").
  std::string cn() const {
    const size_t line = text.find("\nsubject=");
    if (line == std::string::npos) return "(none)";
    const size_t end = text.find('\n', line + 1);
    const size_t at = text.find("CN = ", line);
    if (at == std::string::npos || at > end) return "(no CN)";
    return text.substr(at + 5, end - at - 5);
  }
  bool verified() const { return text.find("Verification: OK") != std::string::npos; }
  bool reused() const { return text.find("\nReused, ") != std::string::npos; }
  bool fresh() const { return text.find("\nNew, ") != std::string::npos; }
};

// `args` after -connect; the connection stays open a moment so that TLS 1.3
// tickets arrive before s_client leaves.
Handshake s_client(const fs::path& dir, const std::string& target, const std::string& args) {
  RunResult r = run({"/bin/bash", "-c",
                     "(sleep 0.4; echo) | /usr/bin/openssl s_client -connect " + target + " -alpn h2 -CAfile " +
                         certs().ca.string() + " " + args + " 2>&1"},
                    dir, 20s);
  return Handshake{r.out};
}

class FleetTls : public ::testing::Test {
 protected:
  void SetUp() override {
    if (env("TLSGATE_BIN").empty()) GTEST_FAIL() << "TLSGATE_BIN is not set (path to the tlsgate binary)";
    dir_ = std::make_unique<TempDir>();
    backend_ = std::make_unique<EchoBackend>(dir_->path(), EchoOptions{});
  }
  void TearDown() override {
    for (auto& g : gateways_) g->stop();
  }
  Gateway& start(GatewayConfig cfg) {
    cfg.endpoints = {backend_->endpoint().address()};
    cfg.admin = true;
    gateways_.push_back(std::make_unique<Gateway>(dir_->path(), cfg));
    EXPECT_TRUE(gateways_.back()->started());
    return *gateways_.back();
  }
  double metric_of(Gateway& g, const std::string& name, const std::vector<std::string>& labels = {}) {
    HttpAnswer a = http_request(g.admin_port(), "/metrics");
    return a.status == 200 ? metric(a.body, name, labels) : -2;
  }

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<EchoBackend> backend_;
  std::vector<std::unique_ptr<Gateway>> gateways_;
};

// One listener, four certificates: each name gets its own, a client that
// cannot verify ECDSA the RSA one, an unknown name the first (counted); the
// client verifies chain and name each time, and a gRPC call goes through.
TEST_F(FleetTls, EachNameItsCertificateAndEachClientAKeyItCanVerify) {
  const fs::path d = dir_->path();
  ASSERT_EQ(make_leaf(d, "api-ec", false, "DNS:api.fleet.test,DNS:*.wild.fleet.test"), "");
  ASSERT_EQ(make_leaf(d, "api-rsa", true, "DNS:api.fleet.test"), "");
  ASSERT_EQ(make_leaf(d, "other-ec", false, "DNS:other.fleet.test"), "");
  GatewayConfig cfg;
  cfg.certificates = "[[listeners.tls.certificates]]\ncertificate = \"" + certs().server_crt.string() +
                      "\"\nprivate_key = \"" + certs().server_key.string() + "\"\n" +
                      certificate_entry(d, "api-ec") + certificate_entry(d, "api-rsa") +
                      certificate_entry(d, "other-ec");
  Gateway& gw = start(cfg);
  const std::string t = gw.target();

  struct Row {
    std::string args, cn;
  };
  for (const Row& row : std::vector<Row>{
           {"-servername api.fleet.test -verify_hostname api.fleet.test", "api-ec"},
           {"-servername api.fleet.test -verify_hostname api.fleet.test -sigalgs rsa_pss_rsae_sha256", "api-rsa"},
           {"-servername api.fleet.test -verify_hostname api.fleet.test -tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256",
            "api-rsa"},
           {"-servername api.fleet.test -verify_hostname api.fleet.test -tls1_2", "api-ec"},
           {"-servername x.wild.fleet.test -verify_hostname x.wild.fleet.test", "api-ec"},
           {"-servername OTHER.fleet.test -verify_hostname other.fleet.test", "other-ec"},
           {"-servername localhost -verify_hostname localhost", "localhost"},
       }) {
    Handshake h = s_client(d, t, row.args);
    EXPECT_EQ(h.cn(), row.cn) << row.args << "\n" << h.text;
    EXPECT_TRUE(h.verified()) << row.args << "\n" << h.text;
  }
  EXPECT_EQ(metric_of(gw, "tlsgate_tls_unknown_server_name_total"), 0);
  Handshake unknown = s_client(d, t, "-servername nobody.fleet.test");
  EXPECT_EQ(unknown.cn(), "localhost") << unknown.text;
  EXPECT_EQ(s_client(d, t, "-noservername").cn(), "localhost");
  EXPECT_EQ(metric_of(gw, "tlsgate_tls_unknown_server_name_total"), 1) << "a missing name is not an unknown one";

  // A real gRPC call by name: curl checks the certificate against the CA.
  std::vector<std::string> argv = curl_grpc_argv(d);
  argv.erase(std::find(argv.begin(), argv.end(), "-k"));
  const std::string port = std::to_string(gw.endpoint().port);
  for (const std::string& extra : std::vector<std::string>{"--cacert", certs().ca.string(), "--resolve"})
    argv.push_back(extra);
  argv.push_back("api.fleet.test:" + port + ":127.0.0.1");
  argv.push_back("https://api.fleet.test:" + port + "/tlsgate.test.Echo/Unary");
  RunResult r = run(argv, d, 20s);
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << "\n" << r.err;
  EXPECT_NE(r.out.find("grpc-status: 0"), std::string::npos) << r.out;
}

// --------------------------------------------------------------- tickets

// A ticket key line: 16 bytes of `tag` (its name), 64 random bytes, base64.
std::string key_line(const fs::path& dir, int tag) {
  char byte[8];
  std::snprintf(byte, sizeof byte, "\\x%02x", tag);
  std::string name;
  for (int i = 0; i < 16; ++i) name += byte;
  RunResult r = run({"/bin/bash", "-c",
                     "{ printf '" + name + "'; /usr/bin/head -c 64 /dev/urandom; } | /usr/bin/openssl base64 -A"},
                    dir, 10s);
  return r.out;
}

std::string name_hex(int tag) {
  char b[3];
  std::snprintf(b, sizeof b, "%02x", tag);
  std::string s;
  for (int i = 0; i < 16; ++i) s += b;
  return s;
}

// The first 16 bytes of the ticket in OpenSSL's text form of a session
// ("TLS session ticket:" then "    0000 - 22 22 ... 22-22 ..."), as hex.
std::string ticket_name_in(const std::string& text) {
  const size_t at = text.find("TLS session ticket:\n");
  if (at == std::string::npos) return "(no ticket)";
  std::string hex;
  const size_t line = text.find(" - ", at);
  for (size_t i = line + 3; i < text.size() && hex.size() < 32; ++i) {
    const char c = text[i];
    if (std::isxdigit(static_cast<unsigned char>(c))) hex += static_cast<char>(std::tolower(c));
    else if (c == '\n') break;
  }
  return hex;
}

// The same for a session file s_client wrote.
std::string ticket_name(const fs::path& dir, const fs::path& session) {
  RunResult r = run({"/usr/bin/openssl", "sess_id", "-in", session.string(), "-noout", "-text"}, dir, 10s);
  return ticket_name_in(r.out);
}

class FleetTickets : public FleetTls, public ::testing::WithParamInterface<std::string> {
 protected:
  void write_keys(const std::vector<std::string>& lines) {
    std::string text = "# tlsgate ticket keys, newest first\n";
    for (const std::string& l : lines) text += l + "\n";
    write_file(keys_, text);
    ::chmod(keys_.c_str(), 0600);
  }
  void reload(Gateway& g) {
    const std::string before = g.process().stderr_text();
    size_t n = 0;
    for (size_t at = before.find("configuration reloaded"); at != std::string::npos;
         at = before.find("configuration reloaded", at + 1))
      ++n;
    g.process().signal(SIGHUP);
    ASSERT_TRUE(eventually(
        [&] {
          const std::string err = g.process().stderr_text();
          size_t m = 0;
          for (size_t at = err.find("configuration reloaded"); at != std::string::npos;
               at = err.find("configuration reloaded", at + 1))
            ++m;
          return m > n;
        },
        10s))
        << g.process().stderr_text();
  }
  fs::path keys_;
};

// Two instances with one key file: a session from A resumes on B; after
// rotation (new key first, old kept; SIGHUP) the old session still resumes
// and the new ticket is under the new key; once the old key is dropped, a
// full handshake, never an error.
TEST_P(FleetTickets, ResumeOnAnotherInstanceAndAcrossRotation) {
  const fs::path d = dir_->path();
  const std::string version = GetParam();
  keys_ = d / "ticket.keys";
  const std::string k1 = key_line(d, 0x11), k2 = key_line(d, 0x22);
  ASSERT_EQ(k1.size(), 108u) << k1;
  write_keys({k1});
  GatewayConfig cfg;
  cfg.tls_extra = "  ticket_keys = \"" + keys_.string() + "\"\n";
  Gateway& a = start(cfg);
  Gateway& b = start(cfg);
  const std::string flags = "-servername localhost " + version;
  auto sess = [&](const std::string& name) { return (d / (name + ".pem")).string(); };

  for (const char* name : {"a1", "a2", "a3"}) {
    Handshake h = s_client(d, a.target(), flags + " -sess_out " + sess(name));
    ASSERT_TRUE(h.fresh() && h.verified()) << h.text;
    EXPECT_EQ(ticket_name(d, sess(name)), name_hex(0x11));
  }
  Handshake on_b = s_client(d, b.target(), flags + " -sess_in " + sess("a1"));
  EXPECT_TRUE(on_b.reused()) << "a session from instance A resumes on instance B\n" << on_b.text;
  EXPECT_EQ(metric_of(b, "tlsgate_handshakes_total", {"resumed=\"true\""}), 1);

  write_keys({k2, k1});
  reload(b);
  Handshake rotated = s_client(d, b.target(), flags + " -sess_in " + sess("a2") + " -sess_out " + sess("b2"));
  EXPECT_TRUE(rotated.reused()) << "the old key is still in the file\n" << rotated.text;
  if (version == "-tls1_3") {
    EXPECT_EQ(ticket_name(d, sess("b2")), name_hex(0x22)) << "new tickets are sealed with the first key";
  } else {
    // TLS 1.2: the renewed ticket replaces the resumed session's (s_client
    // prints it, but writes -sess_out only after a full handshake).
    EXPECT_EQ(ticket_name_in(rotated.text), name_hex(0x22)) << "a ticket under an older key is renewed";
    ASSERT_TRUE(s_client(d, b.target(), flags + " -sess_out " + sess("b2")).fresh());
    EXPECT_EQ(ticket_name(d, sess("b2")), name_hex(0x22));
  }

  write_keys({k2});
  reload(b);
  Handshake dropped = s_client(d, b.target(), flags + " -sess_in " + sess("a3"));
  EXPECT_TRUE(dropped.fresh() && dropped.verified()) << "a full handshake, not an error\n" << dropped.text;
  Handshake current = s_client(d, b.target(), flags + " -sess_in " + sess("b2"));
  EXPECT_TRUE(current.reused()) << current.text;
  EXPECT_EQ(metric_of(b, "tlsgate_handshakes_total", {"resumed=\"true\""}), 3);
  EXPECT_EQ(metric_of(b, "tlsgate_handshake_failures_total"), 0);
}

INSTANTIATE_TEST_SUITE_P(Versions, FleetTickets, ::testing::Values("-tls1_3", "-tls1_2"),
                         [](const auto& info) { return info.param == "-tls1_3" ? "Tls13" : "Tls12"; });

// A key file others can read, or a broken line, refuses a reload naming the
// file and line; the running keys stay.
TEST_F(FleetTls, ABadTicketKeyFileIsRefusedOnReload) {
  const fs::path d = dir_->path();
  const fs::path keys = d / "ticket.keys";
  write_file(keys, key_line(d, 0x11) + "\n");
  ::chmod(keys.c_str(), 0600);
  GatewayConfig cfg;
  cfg.tls_extra = "  ticket_keys = \"" + keys.string() + "\"\n";
  Gateway& gw = start(cfg);
  const std::string session = (d / "s.pem").string();
  ASSERT_TRUE(s_client(d, gw.target(), "-servername localhost -sess_out " + session).fresh());

  write_file(keys, key_line(d, 0x11) + "\nnot-a-key\n");
  gw.process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return gw.process().stderr_text().find("reload refused") != std::string::npos; }, 10s));
  EXPECT_NE(gw.process().stderr_text().find(keys.string() + ":2: "), std::string::npos) << gw.process().stderr_text();
  EXPECT_TRUE(s_client(d, gw.target(), "-servername localhost -sess_in " + session).reused());

  RunResult check = run({env("TLSGATE_BIN"), "--check-config", gw.config_path().string()}, d, 20s);
  EXPECT_EQ(check.status.code, 2) << check.err;
  EXPECT_NE(check.err.find("listeners[0].tls.ticket_keys: " + keys.string() + ":2: "), std::string::npos) << check.err;
}

}  // namespace
}  // namespace tlsgate::itest
