// A listener with several certificates (issue 19): the one a client gets for
// its server name and signature algorithms, what a bad set of certificates
// says, session tickets under shared and rotated keys, and the ClientHello
// reader that picks the context before OpenSSL does. In memory, against a
// real OpenSSL client; certificates made here with OpenSSL's API (the CLI
// cannot make an expired one) and signed by tools/gen-cert's test CA.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "cert_env.hh"
#include "leaf_certs.hh"
#include "tls_client.hh"

namespace tlsgate::tls::tlstest {
namespace {

// ------------------------------------------------------------ client

struct Hello {
  Hello(std::string name = "", std::string sig = "", int version = 0, std::string cipher_list = "",
        SSL_SESSION* resume = nullptr)
      : server_name(std::move(name)), sigalgs(std::move(sig)), max_version(version), ciphers(std::move(cipher_list)),
        session(resume) {}
  std::string server_name;  // "" = no SNI
  std::string sigalgs;      // "" = OpenSSL's default list
  int max_version = 0;      // 0 = TLS 1.3
  std::string ciphers;      // TLS 1.2 list, "" = default
  SSL_SESSION* session = nullptr;  // to resume
  bool check_name = true;          // verify the certificate carries server_name (else the chain only)
  size_t split_hello = 0;          // >0: the ClientHello sent as two records, the first this long
};

// The client's first flight as two handshake records, the first holding
// `first` bytes of the ClientHello (RFC 8446 5.1 allows any fragmenting).
Bytes split_record(const Bytes& rec, size_t first) {
  const size_t len = static_cast<size_t>(rec[3]) << 8 | rec[4];
  EXPECT_EQ(rec.size(), 5 + len) << "one record expected";
  if (rec.size() != 5 + len || first > len) return {};
  const size_t rest = len - first;
  const uint8_t head1[5] = {rec[0], rec[1], rec[2], static_cast<uint8_t>(first >> 8), static_cast<uint8_t>(first)};
  const uint8_t head2[5] = {rec[0], rec[1], rec[2], static_cast<uint8_t>(rest >> 8), static_cast<uint8_t>(rest)};
  Bytes out(rec.size() + 5);
  std::memcpy(out.data(), head1, 5);
  std::memcpy(out.data() + 5, rec.data() + 5, first);
  std::memcpy(out.data() + 5 + first, head2, 5);
  std::memcpy(out.data() + 10 + first, rec.data() + 5 + first, rest);
  return out;
}

// For a name the server has no certificate for: the client checks the chain
// only, to see which certificate it got.
Hello any_certificate(std::string name, std::string sigalgs = "") {
  Hello h(std::move(name), std::move(sigalgs));
  h.check_name = false;
  return h;
}

// Keeps the newest session ticket it receives.
int keep_session(SSL* ssl, SSL_SESSION* sess) {
  auto** slot = static_cast<SSL_SESSION**>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  SSL_SESSION_free(*slot);
  *slot = sess;
  return 1;  // the callback keeps the reference
}

class HelloClient : public MemoryBioClient {
 public:
  explicit HelloClient(const Hello& h) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
    if (h.max_version != 0) SSL_CTX_set_max_proto_version(ctx_, h.max_version);
    EXPECT_EQ(SSL_CTX_load_verify_locations(ctx_, cert_path("ca.crt").c_str(), nullptr), 1) << openssl_errors();
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    SSL_CTX_set_app_data(ctx_, &session_);
    SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx_, keep_session);
    if (!h.sigalgs.empty()) {
      EXPECT_EQ(SSL_CTX_set1_sigalgs_list(ctx_, h.sigalgs.c_str()), 1) << openssl_errors();
    }
    if (!h.ciphers.empty()) {
      EXPECT_EQ(SSL_CTX_set_cipher_list(ctx_, h.ciphers.c_str()), 1) << openssl_errors();
    }
    SSL* ssl = SSL_new(ctx_);
    SSL_set_alpn_protos(ssl, reinterpret_cast<const unsigned char*>("\x02h2"), 3);
    attach(ssl);
    SSL_set_tlsext_host_name(ssl, h.server_name.empty() ? nullptr : const_cast<char*>(h.server_name.c_str()));
    SSL_set1_host(ssl, !h.check_name ? nullptr : h.server_name.empty() ? "localhost" : h.server_name.c_str());
    if (h.session != nullptr) SSL_set_session(ssl, h.session);
  }
  ~HelloClient() override {
    SSL_SESSION_free(session_);
    SSL_CTX_free(ctx_);
  }
  // The CN of the certificate the server sent.
  std::string peer_cn() {
    X509* peer = SSL_get1_peer_certificate(ssl());
    if (peer == nullptr) return "(none)";
    char cn[256] = {};
    X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof cn);
    X509_free(peer);
    return cn;
  }
  // Reads what the server sent after the handshake (TLS 1.3 tickets).
  void read_tickets() { (void)read_all(); }
  // The newest ticket's session; owned by the client.
  SSL_SESSION* session() const { return session_; }

 private:
  SSL_CTX* ctx_ = nullptr;
  SSL_SESSION* session_ = nullptr;
};

struct Result1 {
  bool done = false;
  std::string cn;
  bool unknown_name = false;
  bool resumed = false;
  long verify = -1;
  std::string ticket_name;  // hex of the first 16 bytes of the newest ticket
  bool new_ticket = false;  // the server sent a ticket on this connection (TLS 1.3; TLS 1.2 full handshakes)
};

std::string hex(const uint8_t* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

// One handshake of a fresh client against a fresh session on `ctx`.
Result1 handshake(Context& ctx, const Hello& h, SSL_SESSION** keep = nullptr) {
  ChunkPool pool;
  ByteQueue out(&pool);
  Session session(ctx, pool);
  HelloClient client(h);
  if (h.split_hello > 0) {
    EXPECT_EQ(client.step(), 0);
    const Bytes hello = client.take_output();
    EXPECT_EQ(server_name_of(split_record(hello, h.split_hello)), "") << "the name must lie beyond the first record";
    EXPECT_EQ(session.handshake(split_record(hello, h.split_hello), out), HandshakeState::InProgress);
    client.give(out);
  }
  Outcome o = run_handshake(session, client, out);
  Result1 r;
  r.done = o.server == HandshakeState::Done && o.client == 1;
  if (!r.done) {
    ADD_FAILURE() << "handshake for '" << h.server_name << "' failed: " << session.failure() << " / "
                  << client.last_error();
    return r;
  }
  client.read_tickets();
  r.cn = client.peer_cn();
  r.unknown_name = session.unknown_server_name();
  r.resumed = session.resumed();
  r.verify = SSL_get_verify_result(client.ssl());
  SSL_SESSION* s = client.session();
  r.new_ticket = s != nullptr;
  std::unique_ptr<SSL_SESSION, decltype(&SSL_SESSION_free)> current(nullptr, &SSL_SESSION_free);
  if (s == nullptr) {
    // TLS 1.2: a resumed handshake's new ticket (a renewal) replaces the
    // session's without a new-session callback.
    current.reset(SSL_get1_session(client.ssl()));
    s = current.get();
  }
  if (s != nullptr) {
    const unsigned char* ticket = nullptr;
    size_t len = 0;
    SSL_SESSION_get0_ticket(s, &ticket, &len);
    if (len >= 16) r.ticket_name = hex(ticket, 16);
    if (keep != nullptr) {
      SSL_SESSION_up_ref(s);
      SSL_SESSION_free(*keep);
      *keep = s;
    }
  }
  return r;
}

class Certificates : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (const Leaf& l : {Leaf{"api-ec", false, {"api.fleet.test", "*.wild.fleet.test"}},
                          Leaf{"api-rsa", true, {"api.fleet.test"}},
                          Leaf{"other-ec", false, {"Other.Fleet.Test"}},
                          Leaf{"api-ec-again", false, {"api.fleet.test"}},
                          Leaf{"expired", false, {"old.fleet.test"}, -3},
                          Leaf{"nameless", false, {}}})
      ASSERT_EQ(make_leaf(l), "") << l.name;
    // The default: tools/gen-cert's server.crt (CN and SAN localhost).
    ::symlink(cert_path("server.crt").c_str(), cert_path("default.crt").c_str());
    ::symlink(cert_path("server.key").c_str(), cert_path("default.key").c_str());
  }
};

TEST_F(Certificates, EachNameGetsItsCertificateAndEachClientTheKeyTypeItCanVerify) {
  Context ctx(with_certificates({"default", "api-ec", "api-rsa", "other-ec"}));
  // default; api.fleet.test (ECDSA + RSA); *.wild.fleet.test (api-ec alone); other.fleet.test.
  EXPECT_EQ(ctx.contexts(), 4u);
  struct Row {
    Hello hello;
    std::string cn;
  };
  const std::string rsa_only = "rsa_pss_rsae_sha256:rsa_pkcs1_sha256";
  for (const Row& row : std::vector<Row>{
           {{"api.fleet.test"}, "api-ec"},
           {{"api.fleet.test", rsa_only}, "api-rsa"},
           {{"api.fleet.test", "", TLS1_2_VERSION}, "api-ec"},
           {{"api.fleet.test", "", TLS1_2_VERSION, "ECDHE-RSA-AES128-GCM-SHA256"}, "api-rsa"},
           {{"x.wild.fleet.test"}, "api-ec"},
           {{"other.fleet.test"}, "other-ec"},  // the certificate's name was written in capitals
           {{"localhost"}, "localhost"},
       }) {
    Result1 r = handshake(ctx, row.hello);
    EXPECT_EQ(r.cn, row.cn) << row.hello.server_name << " sigalgs=" << row.hello.sigalgs
                            << " ciphers=" << row.hello.ciphers;
    EXPECT_EQ(r.verify, X509_V_OK) << row.hello.server_name << ": the client checks chain and name";
    EXPECT_FALSE(r.unknown_name) << row.hello.server_name;
  }
}

TEST_F(Certificates, NamesAreMatchedWithoutCaseAndAWildcardCoversOneLabel) {
  Context ctx(with_certificates({"default", "api-ec", "api-rsa"}));
  EXPECT_EQ(handshake(ctx, {"API.Fleet.TEST"}).cn, "api-ec");
  EXPECT_EQ(handshake(ctx, {"Deep.WILD.fleet.test"}).cn, "api-ec");
  Result1 two_labels = handshake(ctx, any_certificate("a.b.wild.fleet.test"));
  EXPECT_EQ(two_labels.cn, "localhost") << "*.wild.fleet.test covers one label only";
  EXPECT_TRUE(two_labels.unknown_name);
  EXPECT_EQ(handshake(ctx, any_certificate("wild.fleet.test")).cn, "localhost");
}

TEST_F(Certificates, UnknownOrMissingServerNameGetsTheFirstCertificateAndOnlyAnUnknownOneIsCounted) {
  Context ctx(with_certificates({"api-ec", "default", "api-rsa"}));
  // The first entry is the default, with its partner of the other key type.
  Result1 unknown = handshake(ctx, any_certificate("nobody.fleet.test"));
  EXPECT_EQ(unknown.cn, "api-ec");
  EXPECT_TRUE(unknown.unknown_name);
  Result1 unknown_rsa = handshake(ctx, any_certificate("nobody.fleet.test", "rsa_pss_rsae_sha256"));
  EXPECT_EQ(unknown_rsa.cn, "api-rsa") << "the default's RSA partner for a client that cannot verify ECDSA";
  Result1 none = handshake(ctx, any_certificate(""));
  EXPECT_EQ(none.cn, "api-ec");
  EXPECT_FALSE(none.unknown_name) << "no server name is not an unknown one";
  EXPECT_EQ(handshake(ctx, {"localhost"}).cn, "localhost");
}

// The early read sees only the first record: a ClientHello whose
// server_name lies beyond it is made on the default context, and the
// servername callback switches to the right one.
TEST_F(Certificates, AServerNameBeyondTheFirstRecordStillPicksItsCertificate) {
  Context ctx(with_certificates({"default", "api-ec", "api-rsa"}));
  Hello h("api.fleet.test");
  h.split_hello = 40;  // within the random: every extension is in the second record
  Result1 r = handshake(ctx, h);
  EXPECT_EQ(r.cn, "api-ec");
  EXPECT_FALSE(r.unknown_name);
  Hello rsa("api.fleet.test", "rsa_pss_rsae_sha256");
  rsa.split_hello = 40;
  EXPECT_EQ(handshake(ctx, rsa).cn, "api-rsa");
}

std::string construct_error(const config::TlsSettings& s) {
  try {
    Context ctx(s);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST_F(Certificates, TwoCertificatesOfOneKeyTypeForOneNameAreAnErrorNamingBoth) {
  const std::string msg = construct_error(with_certificates({"default", "api-ec", "api-rsa", "api-ec-again"}));
  EXPECT_NE(msg.find("gateway.toml:13:15: listeners[0].tls.certificates[3].certificate"), std::string::npos) << msg;
  EXPECT_NE(msg.find("listeners[0].tls.certificates[1].certificate"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'api.fleet.test'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("ECDSA"), std::string::npos) << msg;
}

TEST_F(Certificates, AKeyOfAnotherCertificateIsAnErrorNamingTheKey) {
  config::TlsSettings s = with_certificates({"default", "api-ec"});
  s.certificates[1].private_key = cert_path("other-ec.key");
  const std::string msg = construct_error(s);
  EXPECT_NE(msg.find("listeners[0].tls.certificates[1].private_key"), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not match"), std::string::npos) << msg;
}

TEST_F(Certificates, ExpiredOrUnreachableCertificatesAreWarningsWithTheDate) {
  Context ctx(with_certificates({"default", "expired", "nameless"}));
  ASSERT_EQ(ctx.warnings().size(), 2u);
  const std::string& expired = ctx.warnings()[0];
  EXPECT_NE(expired.find("listeners[0].tls.certificates[1].certificate"), std::string::npos) << expired;
  EXPECT_NE(expired.find("expired on"), std::string::npos) << expired;
  // ASN1_TIME_print's form: "Mon DD HH:MM:SS YYYY GMT".
  char year[8];
  const std::time_t when = std::time(nullptr) - 3 * 86400;
  std::strftime(year, sizeof year, "%Y", std::gmtime(&when));
  EXPECT_NE(expired.find(std::string(year) + " GMT"), std::string::npos) << expired;
  EXPECT_NE(ctx.warnings()[1].find("no DNS name"), std::string::npos) << ctx.warnings()[1];
  // Still served: a warning, not a refusal (the operator may be replacing it).
  EXPECT_EQ(Context(with_certificates({"default"})).warnings().size(), 0u);
}

// ------------------------------------------------------------ tickets

config::TicketKey key_named(uint8_t tag) {
  config::TicketKey k;
  std::memset(k.name, tag, sizeof k.name);
  RAND_bytes(k.hmac, sizeof k.hmac);
  RAND_bytes(k.aes, sizeof k.aes);
  return k;
}

config::TlsSettings with_keys(const std::vector<config::TicketKey>& keys) {
  config::TlsSettings s = with_certificates({"default", "api-ec"});
  s.ticket_keys = "/etc/tlsgate/ticket.keys";
  s.ticket_key_set = keys;
  return s;
}

class Tickets : public Certificates, public ::testing::WithParamInterface<int> {};

// Two instances with one key file: a session from one resumes on the other;
// after rotation (new key first, old kept) the old ticket still resumes and
// the new ticket is under the new key; with the old key dropped, a full
// handshake and no error.
TEST_P(Tickets, SharedKeysResumeAcrossInstancesAndRotationKeepsThemUntilDropped) {
  const int version = GetParam();
  const config::TicketKey k1 = key_named(0x11), k2 = key_named(0x22);
  const std::string k1_name = hex(k1.name, 16), k2_name = hex(k2.name, 16);
  Context a(with_keys({k1})), b(with_keys({k1}));
  // One ticket per resumption, as TLS 1.3 clients use them (RFC 8446 C.4).
  SSL_SESSION* from_a[3] = {};
  for (SSL_SESSION*& t : from_a) {
    Result1 first = handshake(a, {"api.fleet.test", "", version}, &t);
    ASSERT_NE(t, nullptr) << "no ticket from instance A";
    EXPECT_FALSE(first.resumed);
    EXPECT_EQ(first.ticket_name, k1_name);
  }

  Result1 on_b = handshake(b, {"api.fleet.test", "", version, "", from_a[0]});
  EXPECT_TRUE(on_b.resumed) << "a ticket of instance A resumes on instance B";
  EXPECT_EQ(on_b.cn, "api-ec");
  // A resumed connection gets a new ticket (TLS 1.3 clients use one once);
  // TLS 1.2 keeps its ticket while the key is current.
  if (version == 0) {
    EXPECT_TRUE(on_b.new_ticket) << "no new ticket after a TLS 1.3 resumption";
    EXPECT_EQ(on_b.ticket_name, k1_name);
  }

  Context rotated(with_keys({k2, k1}));
  SSL_SESSION* from_rotated = nullptr;
  Result1 old_ticket = handshake(rotated, {"api.fleet.test", "", version, "", from_a[1]}, &from_rotated);
  EXPECT_TRUE(old_ticket.resumed) << "the old key is still in the file";
  EXPECT_EQ(old_ticket.ticket_name, k2_name) << "new tickets are sealed with the first key";

  Context dropped(with_keys({k2}));
  Result1 gone = handshake(dropped, {"api.fleet.test", "", version, "", from_a[2]});
  EXPECT_TRUE(gone.done) << "a ticket under a dropped key gets a full handshake, not an error";
  EXPECT_FALSE(gone.resumed);
  Result1 new_ticket = handshake(dropped, {"api.fleet.test", "", version, "", from_rotated});
  EXPECT_TRUE(new_ticket.resumed);
  for (SSL_SESSION* t : from_a) SSL_SESSION_free(t);
  SSL_SESSION_free(from_rotated);

  // Without a file: one random key per process, shared by all its contexts.
  Context own1(with_certificates({"default"})), own2(with_certificates({"default"}));
  SSL_SESSION* from_own = nullptr;
  handshake(own1, {"localhost", "", version}, &from_own);
  ASSERT_NE(from_own, nullptr);
  EXPECT_TRUE(handshake(own2, {"localhost", "", version, "", from_own}).resumed)
      << "one process: its random key is shared by every context (every shard)";
  SSL_SESSION_free(from_own);
}

INSTANTIATE_TEST_SUITE_P(Versions, Tickets, ::testing::Values(TLS1_2_VERSION, 0),
                         [](const auto& info) { return info.param == 0 ? "Tls13" : "Tls12"; });

// ------------------------------------------------------------ ClientHello

Bytes client_hello(const std::string& server_name) {
  HelloClient c(Hello{server_name});
  EXPECT_EQ(c.step(), 0);
  return c.take_output();
}

TEST(ServerNameOf, ReadsTheNameOfARealClientHelloAndNothingFromAPieceOfOne) {
  const Bytes hello = client_hello("api.fleet.test");
  ASSERT_GT(hello.size(), 100u);
  EXPECT_EQ(server_name_of(hello), "api.fleet.test");
  EXPECT_EQ(server_name_of(client_hello("")), "");
  // Every prefix: the name whole or nothing, never a piece of it.
  for (size_t n = 0; n < hello.size(); ++n) {
    const std::string_view got = server_name_of(std::span<const uint8_t>(hello.data(), n));
    EXPECT_TRUE(got.empty() || got == "api.fleet.test") << n << ": " << got;
  }
  Bytes not_handshake = hello;
  not_handshake[0] = 23;
  EXPECT_EQ(server_name_of(not_handshake), "");
  Bytes not_hello = hello;
  not_hello[5] = 2;  // ServerHello
  EXPECT_EQ(server_name_of(not_hello), "");
}

}  // namespace
}  // namespace tlsgate::tls::tlstest
