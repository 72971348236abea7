// Broken configurations: `tlsgate --check-config FILE` and `tlsgate --config
// FILE` must exit with 2 and print one stderr line naming the key (and, for
// errors in the TOML file itself, the file and line).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

int line_of(const std::string& text, const std::string& needle) {
  auto pos = text.find(needle);
  if (pos == std::string::npos) return -1;
  return 1 + static_cast<int>(std::count(text.begin(), text.begin() + static_cast<long>(pos), '\n'));
}

// "FILE:N" / "FILE:N:COL" or "line N", N not followed by another digit.
bool mentions_line(const std::string& l, int n) {
  for (const std::string& prefix : {std::string(":"), std::string("line ")}) {
    std::string needle = prefix + std::to_string(n);
    for (size_t pos = l.find(needle); pos != std::string::npos; pos = l.find(needle, pos + 1)) {
      size_t after = pos + needle.size();
      if (after == l.size() || !std::isdigit(static_cast<unsigned char>(l[after]))) return true;
    }
  }
  return false;
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  std::string l;
  while (std::getline(in, l))
    if (!l.empty()) out.push_back(l);
  return out;
}

std::string replace(std::string s, const std::string& from, const std::string& to) {
  auto pos = s.find(from);
  if (pos == std::string::npos) throw std::runtime_error("config template has no \"" + from + "\"");
  return s.replace(pos, from.size(), to);
}

class BadConfig : public ::testing::Test {
 protected:
  void SetUp() override {
    if (env("TLSGATE_BIN").empty()) GTEST_FAIL() << "TLSGATE_BIN is not set (path to the tlsgate binary)";
    dir_ = std::make_unique<TempDir>();
    base_.endpoints = {"127.0.0.1:50051"};
  }

  struct Expect {
    std::string key;                // e.g. "listeners[0].tls.certificate"
    int line = -1;                  // config line to mention, -1: none required
    std::vector<std::string> also;  // other strings the line must contain
  };

  // Runs tlsgate in `mode` ("--check-config" or "--config") on `text`.
  void check(const std::string& mode, const std::string& text, const Expect& want) {
    SCOPED_TRACE("tlsgate " + mode);
    auto path = dir_->path() / "bad.toml";
    write_file(path, text);
    auto r = run({env("TLSGATE_BIN"), mode, path.string()}, dir_->path(), 15s, gateway_env());
    std::string ctx = "config:\n" + text + "\nstderr:\n" + r.err + "\nstdout:\n" + r.out;
    ASSERT_FALSE(r.status.timed_out) << "still running after 15 s (it should refuse to start)\n" << ctx;
    EXPECT_EQ(sanitizer_report(r.err), "") << ctx;
    EXPECT_TRUE(r.status.exited && r.status.code == 2) << r.status.to_string() << "\n" << ctx;
    // One line names the key; other lines (start-up logs) may precede it.
    std::vector<std::string> keyed;
    for (const auto& l : lines(r.err))
      if (l.find(want.key) != std::string::npos) keyed.push_back(l);
    ASSERT_EQ(keyed.size(), 1u) << "expected exactly one stderr line naming " << want.key << "\n" << ctx;
    const std::string& l = keyed[0];
    if (want.line > 0) {
      EXPECT_NE(l.find(path.string()), std::string::npos) << "line does not name the file: " << l;
      EXPECT_TRUE(mentions_line(l, want.line)) << "line does not give line " << want.line << ": " << l;
    }
    for (const auto& a : want.also)
      EXPECT_NE(l.find(a), std::string::npos) << "line lacks \"" << a << "\": " << l;
  }

  void check_both(const std::string& text, const Expect& want) {
    check("--check-config", text, want);
    check("--config", text, want);
  }

  std::unique_ptr<TempDir> dir_;
  GatewayConfig base_;
};

TEST_F(BadConfig, ValidConfigPassesCheck) {
  auto path = dir_->path() / "good.toml";
  write_file(path, base_.render());
  auto r = run({env("TLSGATE_BIN"), "--check-config", path.string()}, dir_->path(), 15s, gateway_env());
  EXPECT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << "\n" << r.err;
  EXPECT_EQ(sanitizer_report(r.err), "");
}

// Whether this kernel takes TCP_ULP "tls" (the tls module, CONFIG_TLS).
bool kernel_has_tls() {
  int l = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  ::bind(l, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  ::listen(l, 1);
  ::getsockname(l, reinterpret_cast<sockaddr*>(&sa), &len);
  int c = ::socket(AF_INET, SOCK_STREAM, 0);
  bool ok = ::connect(c, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 &&
            ::setsockopt(c, IPPROTO_TCP, 31 /* TCP_ULP */, "tls", 3) == 0;
  ::close(c);
  ::close(l);
  return ok;
}

// ktls = "on" must not start without kernel TLS; with it, it must.
TEST_F(BadConfig, KtlsOnNeedsKernelTls) {
  base_.ktls = "on";
  auto text = base_.render();
  if (kernel_has_tls()) {
    auto path = dir_->path() / "ktls.toml";
    write_file(path, text);
    auto r = run({env("TLSGATE_BIN"), "--check-config", path.string()}, dir_->path(), 15s, gateway_env());
    EXPECT_TRUE(r.status.exited && r.status.code == 0) << "kernel has TLS, yet: " << r.err;
  } else {
    check_both(text, {"listeners[0].tls.ktls", line_of(text, "ktls = "), {"modprobe tls"}});
  }
}

TEST_F(BadConfig, UnknownKey) {
  base_.extra_listener = "bogus_option = true";
  auto text = base_.render();
  check_both(text, {"listeners[0].bogus_option", line_of(text, "bogus_option"), {}});
}

TEST_F(BadConfig, UnknownKeyInTls) {
  auto text = replace(base_.render(), "  min_version", "  cipher_soup = \"yes\"\n  min_version");
  check_both(text, {"listeners[0].tls.cipher_soup", line_of(text, "cipher_soup"), {}});
}

TEST_F(BadConfig, WrongType) {
  auto text = replace(base_.render(), "cluster = \"backend\"", "cluster = 42");
  check_both(text, {"listeners[0].cluster", line_of(text, "cluster = 42"), {}});
}

TEST_F(BadConfig, WrongTypeEndpoints) {
  auto text = replace(base_.render(), "endpoints = [\"127.0.0.1:50051\"]", "endpoints = 50051");
  check_both(text, {"clusters[0].endpoints", line_of(text, "endpoints = 50051"), {}});
}

TEST_F(BadConfig, TomlSyntaxError) {
  auto text = replace(base_.render(), "name = \"backend\"", "name = \"backend");
  auto path = dir_->path() / "bad.toml";
  for (const char* mode : {"--check-config", "--config"}) {
    SCOPED_TRACE(mode);
    write_file(path, text);
    auto r = run({env("TLSGATE_BIN"), mode, path.string()}, dir_->path(), 15s, gateway_env());
    ASSERT_FALSE(r.status.timed_out);
    EXPECT_TRUE(r.status.exited && r.status.code == 2) << r.status.to_string() << "\n" << r.err;
    std::vector<std::string> named;
    for (const auto& l : lines(r.err))
      if (l.find(path.string()) != std::string::npos) named.push_back(l);
    ASSERT_EQ(named.size(), 1u) << "expected exactly one stderr line naming the file\n" << r.err;
    int want = line_of(text, "name = \"backend\n");
    EXPECT_TRUE(mentions_line(named[0], want)) << "line does not give line " << want << ": " << named[0];
  }
}

TEST_F(BadConfig, MissingCertificateFile) {
  auto missing = dir_->path() / "no-such.crt";
  base_.certificate = missing;
  check_both(base_.render(), {"listeners[0].tls.certificate", -1, {missing.string()}});
}

TEST_F(BadConfig, GarbagePrivateKey) {
  auto garbage = dir_->path() / "garbage.key";
  write_file(garbage, "this is not a private key\n");
  base_.private_key = garbage;
  check_both(base_.render(), {"listeners[0].tls.private_key", -1, {garbage.string()}});
}

// TLS to backends: files OpenSSL cannot use are start-up errors naming the key.
TEST_F(BadConfig, GarbageUpstreamCa) {
  auto garbage = dir_->path() / "garbage-ca.pem";
  write_file(garbage, "this is not a certificate\n");
  base_.clusters = cluster_toml("backend", {"127.0.0.1:50051"}, "[clusters.tls]\nca = \"" + garbage.string() + "\"\n");
  check_both(base_.render(), {"clusters[0].tls.ca", -1, {garbage.string(), "cannot load CA certificates"}});
}

TEST_F(BadConfig, UpstreamClientKeyDoesNotMatch) {
  base_.clusters = cluster_toml("backend", {"127.0.0.1:50051"},
                                "[clusters.tls]\nca = \"" + certs().ca.string() + "\"\ncertificate = \"" +
                                    certs().client_crt.string() + "\"\nprivate_key = \"" +
                                    certs().server_key.string() + "\"\n");
  check_both(base_.render(), {"clusters[0].tls.private_key", -1, {"cannot load private key", "mismatch"}});
}

// Cipher policy: OpenSSL would drop an unknown name from a list that still
// selects something; tlsgate refuses to start, naming the key and the entry.
TEST_F(BadConfig, UnknownCipher) {
  auto text = replace(base_.render(), "  min_version",
                      "  ciphers = \"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-SHAX\"\n  min_version");
  check_both(text,
             {"listeners[0].tls.ciphers", line_of(text, "ciphers = "), {"\"ECDHE-ECDSA-AES128-SHAX\""}});
}

TEST_F(BadConfig, CiphersSelectingNothing) {
  auto text = replace(base_.render(), "  min_version",
                      "  ciphers = \"ECDHE-ECDSA-AES128-GCM-SHA256:!AESGCM\"\n  min_version");
  check_both(text, {"listeners[0].tls.ciphers", line_of(text, "ciphers = "), {"selects no TLS 1.2 cipher"}});
}

TEST_F(BadConfig, UnknownTls13SuiteInArray) {
  auto text =
      replace(base_.render(), "  min_version",
              "  ciphersuites = [\"TLS_AES_128_GCM_SHA256\", \"TLS_AES_512_GCM_SHA1024\"]\n  min_version");
  check_both(
      text,
      {"listeners[0].tls.ciphersuites", line_of(text, "ciphersuites = "), {"\"TLS_AES_512_GCM_SHA1024\""}});
}

TEST_F(BadConfig, UnknownGroup) {
  auto text = replace(base_.render(), "  min_version", "  groups = \"X25519:P-999\"\n  min_version");
  check_both(text, {"listeners[0].tls.groups", line_of(text, "groups = "), {"unknown group \"P-999\""}});
}

TEST_F(BadConfig, UnknownUpstreamGroup) {
  base_.clusters = cluster_toml(
      "backend", {"127.0.0.1:50051"},
      "[clusters.tls]\nca = \"" + certs().ca.string() + "\"\ngroups = [\"X25519\", \"P-999\"]\n");
  auto text = base_.render();
  check_both(text, {"clusters[0].tls.groups", line_of(text, "groups = "), {"unknown group \"P-999\""}});
}

TEST_F(BadConfig, ValidCipherPolicyPassesCheck) {
  auto text = replace(base_.render(), "  min_version",
                      "  ciphers = \"ECDHE+AESGCM:!aNULL:!RC4\"\n"
                      "  ciphersuites = [\"TLS_AES_256_GCM_SHA384\", \"TLS_CHACHA20_POLY1305_SHA256\"]\n"
                      "  groups = [\"X25519\", \"secp384r1\"]\n  min_version");
  auto path = dir_->path() / "good.toml";
  write_file(path, text);
  auto r = run({env("TLSGATE_BIN"), "--check-config", path.string()}, dir_->path(), 15s, gateway_env());
  EXPECT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << "\n" << r.err;
  EXPECT_EQ(sanitizer_report(r.err), "");
}

TEST_F(BadConfig, RouteToUnknownCluster) {
  base_.listener_tail = "  [[listeners.routes]]\n  path_prefix = \"/a.B/\"\n  cluster = \"nope\"\n";
  check_both(base_.render(), {"listeners[0].routes[0].cluster", -1, {"no cluster named \"nope\""}});
}

TEST_F(BadConfig, ListenPortAlreadyBound) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  std::string addr = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  auto text = replace(base_.render(), "listen = \"127.0.0.1:0\"", "listen = \"" + addr + "\"");
  check("--config", text, {"listeners[0].listen", -1, {addr}});
  ::close(fd);
}

}  // namespace
}  // namespace tlsgate::itest
