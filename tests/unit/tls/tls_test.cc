// tls::Context / tls::Session against a real OpenSSL client, all in memory:
// the client talks through memory BIOs, the server Session through spans and
// ByteQueues, and the test carries the bytes between them. Certificates come
// from tools/gen-cert, run once into a temporary folder.
#include "tlsgate/tls.hh"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tlsgate/buffer.hh"
#include "tlsgate/config.hh"
#include "cert_env.hh"
#include "tls_client.hh"

namespace tlsgate::tls {
namespace {
using namespace tlsgate::tls::tlstest;

// Feeds `in` to Session::read in pieces of the given sizes (cycled), from a
// scratch buffer the test overwrites after every call: the session must not
// keep pointers into it.
Result<void> feed_read(Session& s, const Bytes& in, const std::vector<size_t>& pieces, ByteQueue& out,
                       Bytes& got) {
  Bytes scratch;
  size_t off = 0, i = 0;
  while (off < in.size()) {
    size_t n = std::min(pieces[i++ % pieces.size()], in.size() - off);
    scratch.assign(in.begin() + off, in.begin() + off + n);
    off += n;
    Result<void> r =
        s.read(scratch, out, [&](const uint8_t* p, size_t len) { got.insert(got.end(), p, p + len); });
    std::fill(scratch.begin(), scratch.end(), 0xEE);
    if (!r) return r;
  }
  return {};
}

Bytes pattern(size_t len) {
  Bytes v(len);
  uint32_t x = 7;
  for (size_t i = 0; i < len; ++i) {
    x = x * 1103515245u + 12345u;
    v[i] = static_cast<uint8_t>(x >> 16);
  }
  return v;
}

// A connected pair, handshake done, for the data tests.
class TlsSessionTest : public ConnectedPair {
 protected:
  void TearDown() override {
    ConnectedPair::TearDown();
    EXPECT_EQ(pool_.in_use(), 0u) << "the session kept pool chunks";
  }
};

// ------------------------------------------------------------ handshakes

TEST_F(TlsSessionTest, Tls13HandshakeSelectsH2) {
  connect();
  EXPECT_STREQ(session_->version(), "TLSv1.3");
  EXPECT_STREQ(SSL_get_version(client_->ssl()), "TLSv1.3");
  EXPECT_EQ(session_->alpn(), Alpn::H2);
  EXPECT_NE(session_->cipher(), nullptr);
  EXPECT_TRUE(session_->failure().empty());
  // The client verified the chain (leaf + CA from server.crt) and the name.
  EXPECT_EQ(SSL_get_verify_result(client_->ssl()), X509_V_OK);
  const unsigned char* p = nullptr;
  unsigned len = 0;
  SSL_get0_alpn_selected(client_->ssl(), &p, &len);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(p), len), "h2");
}

// session_tickets sets how many TLS 1.3 tickets follow a handshake; 0 = none.
TEST_F(TlsSessionTest, SendsTheConfiguredNumberOfTickets) {
  for (uint32_t n : {0u, 1u, 3u}) {
    int tickets = 0;
    config::TlsSettings ts = settings();
    ts.session_tickets = n;
    connect({.tickets = &tickets}, ts);
    client_->read_all();  // the tickets are post-handshake messages
    EXPECT_EQ(tickets, static_cast<int>(n)) << "session_tickets = " << n;
    session_.reset();
    client_.reset();
    out_.clear();
  }
}

TEST_F(TlsSessionTest, Tls12HandshakeSelectsH2) {
  connect({.max_version = TLS1_2_VERSION});
  EXPECT_STREQ(session_->version(), "TLSv1.2");
  EXPECT_EQ(session_->alpn(), Alpn::H2);
  EXPECT_EQ(SSL_get_verify_result(client_->ssl()), X509_V_OK);
}

TEST_F(TlsSessionTest, Tls12WithRsaCertificate) {
  connect({.max_version = TLS1_2_VERSION}, settings("rsa-server.crt", "rsa-server.key"));
  EXPECT_STREQ(session_->version(), "TLSv1.2");
  EXPECT_EQ(SSL_get_verify_result(client_->ssl()), X509_V_OK);
}

TEST_F(TlsSessionTest, Http11SelectedWhenOnlyThatIsOffered) {
  connect({.alpn = {"http/1.1"}});
  EXPECT_EQ(session_->alpn(), Alpn::Http11);
}

TEST_F(TlsSessionTest, ServerPreferenceWinsOverClientOrder) {
  connect({.alpn = {"http/1.1", "h2"}});
  EXPECT_EQ(session_->alpn(), Alpn::H2);
}

TEST_F(TlsSessionTest, NoAlpnOfferedMeansAlpnNone) {
  connect({.alpn = {}});
  EXPECT_EQ(session_->alpn(), Alpn::None);
}

config::TlsSettings tls13_only() {
  config::TlsSettings ts = settings();
  ts.min_version = config::TlsVersion::Tls13;
  return ts;
}

TEST(TlsHandshake, UnknownProtocolOnlyFailsWithNoApplicationProtocol) {
  TestServer server;
  Client c({.alpn = {"spdy/3"}});
  expect_refused(server.handshake_with(c), server.session, c, SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL);
}

TEST(TlsHandshake, MinVersion13RejectsTls12OnlyClient) {
  TestServer server(tls13_only());
  Client c({.max_version = TLS1_2_VERSION});
  expect_refused(server.handshake_with(c), server.session, c, SSL_R_TLSV1_ALERT_PROTOCOL_VERSION);
}

TEST(TlsHandshake, MinVersion13AcceptsTls13Client) {
  TestServer server(tls13_only());
  Client c;
  Outcome o = server.handshake_with(c);
  EXPECT_EQ(o.server, HandshakeState::Done) << server.session.failure();
  EXPECT_STREQ(server.session.version(), "TLSv1.3");
}

TEST(TlsHandshake, GarbageInsteadOfClientHelloFails) {
  TestServer server;
  Session& s = server.session;
  const std::string garbage = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
  HandshakeState st =
      s.handshake({reinterpret_cast<const uint8_t*>(garbage.data()), garbage.size()}, server.out);
  EXPECT_EQ(st, HandshakeState::Failed);
  EXPECT_FALSE(s.failure().empty());
  EXPECT_STREQ(to_string(st), "failed");
}

TEST(TlsHandshake, ClientHelloOneByteAtATime) {
  TestServer server;
  Session& s = server.session;
  ByteQueue& out = server.out;
  Client c;
  ASSERT_EQ(c.step(), 0);
  Bytes hello = c.take_output();
  ASSERT_GT(hello.size(), 100u);
  HandshakeState st = HandshakeState::InProgress;
  for (size_t i = 0; i < hello.size(); ++i) {
    uint8_t b = hello[i];
    st = s.handshake({&b, 1}, out);
    b = 0;  // the caller's buffer is reused at once
    if (i + 1 < hello.size()) {
      ASSERT_EQ(st, HandshakeState::InProgress) << "at byte " << i << ": " << s.failure();
      ASSERT_TRUE(out.empty()) << "server answered before the ClientHello was complete";
    }
  }
  EXPECT_EQ(st, HandshakeState::InProgress);
  EXPECT_FALSE(out.empty()) << "no ServerHello after the whole ClientHello";
  c.give(out);
  Outcome o = run_handshake(s, c, out);
  EXPECT_EQ(o.server, HandshakeState::Done) << s.failure();
  EXPECT_EQ(o.client, 1) << c.last_error();
}

// ------------------------------------------------------------ data

TEST_F(TlsSessionTest, ApplicationDataBothWays) {
  connect();
  client_->write("hello from the client");
  Bytes got = read_plain(*session_, client_->take_output(), out_);
  EXPECT_EQ(as_string(got), "hello from the client");
  client_->give(out_);  // whatever the server queued (tickets)

  const std::string reply = "hello from the server";
  ASSERT_TRUE(
      session_->write(reinterpret_cast<const uint8_t*>(reply.data()), reply.size(), out_).has_value());
  EXPECT_FALSE(out_.empty());
  client_->give(out_);
  EXPECT_EQ(as_string(client_->read_all()), reply);

  // An empty read with nothing pending is fine and yields nothing.
  EXPECT_TRUE(read_plain(*session_, {}, out_).empty());
}

TEST_F(TlsSessionTest, DataSentWithClientFinishedIsKeptAndDelivered) {
  ctx_ = std::make_unique<Context>(settings());
  session_ = std::make_unique<Session>(*ctx_, pool_);
  client_ = std::make_unique<Client>();
  ASSERT_EQ(client_->step(), 0);
  ASSERT_EQ(session_->handshake(client_->take_output(), out_), HandshakeState::InProgress);
  client_->give(out_);
  ASSERT_EQ(client_->step(), 1) << client_->last_error();
  // The client's Finished and its first request leave in the same flight.
  client_->write("early request");
  Bytes flight = client_->take_output();
  ASSERT_EQ(session_->handshake(flight, out_), HandshakeState::Done) << session_->failure();
  std::fill(flight.begin(), flight.end(), 0);  // caller recycles its buffer
  // The bytes after Finished were kept by the session: an empty read delivers them.
  EXPECT_EQ(as_string(read_plain(*session_, {}, out_)), "early request");
}

TEST_F(TlsSessionTest, MegabyteFromClientInOddPieces) {
  connect();
  const Bytes payload = pattern(1 << 20);
  client_->write(payload.data(), payload.size());
  const Bytes wire = client_->take_output();
  ASSERT_GT(wire.size(), payload.size());
  Bytes got;
  Result<void> r = feed_read(*session_, wire, {1, 7, 16 * 1024 + 3}, out_, got);
  ASSERT_TRUE(r.has_value()) << to_string(r.error()) << ": " << session_->failure();
  ASSERT_EQ(got.size(), payload.size());
  EXPECT_TRUE(got == payload) << "plaintext differs";
}

TEST_F(TlsSessionTest, MegabyteFromClientInLargePieces) {
  connect({.max_version = TLS1_2_VERSION});
  const Bytes payload = pattern(1 << 20);
  client_->write(payload.data(), payload.size());
  const Bytes wire = client_->take_output();
  Bytes got;
  // Pieces holding several records at once, split mid-record.
  Result<void> r = feed_read(*session_, wire, {3 * 16 * 1024 + 5, 100 * 1024 + 1}, out_, got);
  ASSERT_TRUE(r.has_value()) << to_string(r.error()) << ": " << session_->failure();
  EXPECT_TRUE(got == payload) << "got " << got.size() << " bytes";
}

TEST_F(TlsSessionTest, MegabyteFromServer) {
  connect();
  client_->read_all();  // take the tickets
  const Bytes payload = pattern(1 << 20);
  ASSERT_TRUE(session_->write(payload.data(), payload.size(), out_).has_value()) << session_->failure();
  client_->give(out_);
  Bytes got = client_->read_all();
  EXPECT_EQ(got.size(), payload.size());
  EXPECT_TRUE(got == payload);
}

TEST_F(TlsSessionTest, CloseNotifyFromClientIsClosed) {
  connect();
  client_->write("bye");
  ASSERT_EQ(SSL_shutdown(client_->ssl()), 0);  // close_notify sent, peer's not yet received
  Result<void> r;
  Bytes got = read_plain(*session_, client_->take_output(), out_, &r);
  EXPECT_EQ(as_string(got), "bye") << "data before close_notify is delivered first";
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error(), Error::Closed);
}

TEST_F(TlsSessionTest, ShutdownSendsCloseNotify) {
  connect();
  client_->read_all();
  session_->shutdown(out_);
  EXPECT_FALSE(out_.empty());
  client_->give(out_);
  int status = 0;
  EXPECT_TRUE(client_->read_all(&status).empty());
  EXPECT_EQ(status, SSL_ERROR_ZERO_RETURN);
}

TEST_F(TlsSessionTest, TamperedRecordIsProtocolError) {
  connect();
  client_->write("integrity matters");
  Bytes wire = client_->take_output();
  ASSERT_GT(wire.size(), 10u);
  wire[wire.size() - 3] ^= 0x55;  // inside the AEAD tag
  Result<void> r;
  Bytes got = read_plain(*session_, wire, out_, &r);
  EXPECT_TRUE(got.empty());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error(), Error::Protocol);
  EXPECT_FALSE(session_->failure().empty());
}

// ------------------------------------------------------------ detached record layer
// Without kernel TLS a TLS 1.3 session frees its OpenSSL objects after the
// handshake and seals and opens records itself (src/tls/record.cc). The data
// tests above run across that switch; these look at it directly.

// Data both ways until the session has detached (the first quiet read).
void exchange(Session& s, Client& c, ByteQueue& out, const std::string& tag) {
  c.write("ping " + tag);
  Result<void> r;
  EXPECT_EQ(as_string(read_plain(s, c.take_output(), out, &r)), "ping " + tag);
  EXPECT_TRUE(r.has_value()) << s.failure();
  const std::string reply = "pong " + tag;
  EXPECT_TRUE(s.write(reinterpret_cast<const uint8_t*>(reply.data()), reply.size(), out).has_value());
  c.give(out);
  EXPECT_EQ(as_string(c.read_all()), reply);
}

TEST_F(TlsSessionTest, Tls13DetachesAfterTheHandshakeAndKeepsWorking) {
  connect();
  exchange(*session_, *client_, out_, "1");
  ASSERT_TRUE(session_->detached());
  EXPECT_STREQ(session_->version(), "TLSv1.3");
  EXPECT_STREQ(session_->cipher(), "TLS_AES_128_GCM_SHA256");  // the first of the default ciphersuites
  EXPECT_TRUE(session_->is_tls13());
  KtlsKeys tx, rx;
  EXPECT_EQ(session_->derive_ktls(tx, rx), Offload::Unsupported) << "no kernel offload once detached";
  exchange(*session_, *client_, out_, "2");
  // A megabyte each way, records split at odd places on the way in.
  const Bytes payload = pattern(1 << 20);
  client_->write(payload.data(), payload.size());
  Bytes got;
  Result<void> r = feed_read(*session_, client_->take_output(), {1, 7, 16 * 1024 + 3}, out_, got);
  ASSERT_TRUE(r.has_value()) << session_->failure();
  EXPECT_TRUE(got == payload);
  ASSERT_TRUE(session_->write(payload.data(), payload.size(), out_).has_value());
  client_->give(out_);
  EXPECT_TRUE(client_->read_all() == payload);
}

// record_layer = "openssl": the escape hatch keeps the session in OpenSSL's
// record layer, and it works as before (KeyUpdate included).
TEST_F(TlsSessionTest, RecordLayerOpensslKeepsTheSessionInOpenssl) {
  config::TlsSettings ts = settings();
  ts.record_layer = config::RecordLayer::Openssl;
  connect({}, ts);
  exchange(*session_, *client_, out_, "1");
  EXPECT_FALSE(session_->detached());
  ASSERT_EQ(SSL_key_update(client_->ssl(), SSL_KEY_UPDATE_REQUESTED), 1);
  exchange(*session_, *client_, out_, "2");
  exchange(*session_, *client_, out_, "3");
  EXPECT_FALSE(session_->detached());
  EXPECT_STREQ(session_->version(), "TLSv1.3");
}

// A client that never pauses: every read ends inside a record. OpenSSL is
// handed whole records only, so the session still detaches at once, and the
// partial record it leaves behind is opened by the session's own layer.
TEST_F(TlsSessionTest, DetachesWhileTheClientNeverPauses) {
  connect();
  Bytes sent;
  for (int i = 0; i < 40; ++i) {
    const Bytes m = pattern(1000 + static_cast<size_t>(i));
    client_->write(m.data(), m.size());
    sent.insert(sent.end(), m.begin(), m.end());
  }
  const Bytes wire = client_->take_output();
  Bytes got;
  size_t off = 0;
  bool first = true;
  while (off < wire.size()) {
    const size_t n = std::min<size_t>(1500, wire.size() - off);  // never a record boundary
    Bytes piece(wire.begin() + off, wire.begin() + off + n);
    off += n;
    Result<void> r =
        session_->read(piece, out_, [&](const uint8_t* p, size_t len) { got.insert(got.end(), p, p + len); });
    ASSERT_TRUE(r.has_value()) << session_->failure();
    if (first) {
      EXPECT_TRUE(session_->detached()) << "detached after the first read, mid-record";
    }
    first = false;
  }
  EXPECT_TRUE(got == sent);
  exchange(*session_, *client_, out_, "after");
}

TEST_F(TlsSessionTest, Tls12StaysWithOpenSsl) {
  connect({.max_version = TLS1_2_VERSION});
  exchange(*session_, *client_, out_, "1");
  EXPECT_FALSE(session_->detached());
}

// A quiet connection's detached session drops its cipher contexts and makes
// them again from the traffic secrets on the next record, either way round,
// also when a KeyUpdate arrives while they are released.
TEST_F(TlsSessionTest, IdleDetachedSessionReleasesCipherContextsAndKeepsWorking) {
  connect();
  exchange(*session_, *client_, out_, "1");
  ASSERT_TRUE(session_->detached());
  EXPECT_TRUE(session_->holds_cipher_contexts());
  session_->release_idle_memory();
  EXPECT_FALSE(session_->holds_cipher_contexts());
  exchange(*session_, *client_, out_, "2");
  EXPECT_TRUE(session_->holds_cipher_contexts());
  session_->release_idle_memory();
  // Server speaks first this time.
  const std::string hello = "server first";
  ASSERT_TRUE(session_->write(reinterpret_cast<const uint8_t*>(hello.data()), hello.size(), out_).has_value());
  client_->give(out_);
  EXPECT_EQ(as_string(client_->read_all()), hello);
  session_->release_idle_memory();
  ASSERT_EQ(SSL_key_update(client_->ssl(), SSL_KEY_UPDATE_REQUESTED), 1);
  exchange(*session_, *client_, out_, "after an update while released");
  session_->release_idle_memory();
  exchange(*session_, *client_, out_, "and again");
}

TEST_F(TlsSessionTest, KeyUpdateAfterDetachBothWays) {
  connect();
  exchange(*session_, *client_, out_, "1");
  ASSERT_TRUE(session_->detached());
  // The client updates its keys and asks the server to update too.
  ASSERT_EQ(SSL_key_update(client_->ssl(), SSL_KEY_UPDATE_REQUESTED), 1);
  exchange(*session_, *client_, out_, "after requested update");
  ASSERT_EQ(SSL_key_update(client_->ssl(), SSL_KEY_UPDATE_NOT_REQUESTED), 1);
  exchange(*session_, *client_, out_, "after unrequested update");
  ASSERT_EQ(SSL_key_update(client_->ssl(), SSL_KEY_UPDATE_REQUESTED), 1);
  exchange(*session_, *client_, out_, "after a second requested update");
}

TEST_F(TlsSessionTest, CloseNotifyAndShutdownAfterDetach) {
  connect();
  exchange(*session_, *client_, out_, "1");
  ASSERT_TRUE(session_->detached());
  client_->write("bye");
  ASSERT_EQ(SSL_shutdown(client_->ssl()), 0);
  Result<void> r;
  EXPECT_EQ(as_string(read_plain(*session_, client_->take_output(), out_, &r)), "bye");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error(), Error::Closed);
  session_->shutdown(out_);
  client_->give(out_);
  int status = 0;
  EXPECT_TRUE(client_->read_all(&status).empty());
  EXPECT_EQ(status, SSL_ERROR_ZERO_RETURN);
}

TEST_F(TlsSessionTest, TamperedRecordAfterDetachIsProtocolError) {
  connect();
  exchange(*session_, *client_, out_, "1");
  ASSERT_TRUE(session_->detached());
  client_->write("integrity matters");
  Bytes wire = client_->take_output();
  wire[wire.size() - 3] ^= 0x55;
  Result<void> r;
  EXPECT_TRUE(read_plain(*session_, wire, out_, &r).empty());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error(), Error::Protocol);
  EXPECT_NE(session_->failure().find("bad_record_mac"), std::string::npos) << session_->failure();
}

TEST_F(TlsSessionTest, AlertAfterDetachIsProtocolError) {
  connect();
  exchange(*session_, *client_, out_, "1");
  ASSERT_TRUE(session_->detached());
  // A plaintext record where only protected ones may come.
  const Bytes alert = {21, 3, 3, 0, 2, 2, 40};
  Result<void> r;
  read_plain(*session_, alert, out_, &r);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error(), Error::Protocol);
}

// ------------------------------------------------------------ context errors

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

std::string construct_error(const config::TlsSettings& ts) {
  try {
    Context ctx(ts);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(TlsContext, KeyThatDoesNotMatchCertificateNamesTheKey) {
  std::string msg = construct_error(settings("server.crt", "rsa-server.key"));
  ASSERT_FALSE(msg.empty()) << "a mismatched key was accepted";
  EXPECT_NE(msg.find("listeners[0].tls.private_key"), std::string::npos) << msg;
  EXPECT_NE(msg.find("gateway.toml:8"), std::string::npos) << msg;
}

TEST(TlsContext, GarbageKeyFileNamesTheKey) {
  const std::string path = g_cert_dir + "/garbage.key";
  write_text(path, "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n");
  config::TlsSettings ts = settings();
  ts.certificates.at(0).private_key = path;
  std::string msg = construct_error(ts);
  ASSERT_FALSE(msg.empty()) << "a garbage key was accepted";
  EXPECT_NE(msg.find("listeners[0].tls.private_key"), std::string::npos) << msg;
  EXPECT_NE(msg.find("gateway.toml:8"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
}

TEST(TlsContext, GarbageCertificateFileNamesTheCertificateKey) {
  const std::string path = g_cert_dir + "/garbage.crt";
  write_text(path, "hello\n");
  config::TlsSettings ts = settings();
  ts.certificates.at(0).certificate = path;
  std::string msg = construct_error(ts);
  ASSERT_FALSE(msg.empty()) << "a garbage certificate was accepted";
  EXPECT_NE(msg.find("listeners[0].tls.certificate"), std::string::npos) << msg;
  EXPECT_NE(msg.find("gateway.toml:7"), std::string::npos) << msg;
}

// ------------------------------------------------------------ cipher policy
// [listeners.tls] / [clusters.tls] ciphers, ciphersuites, groups: what each
// side offers, and lists OpenSSL would quietly shorten are refused.

// settings() with the cipher policy keys placed as in a file (lines 9-11).
config::TlsSettings policy_settings() {
  config::TlsSettings ts = settings();
  ts.cipher_policy.ciphers_origin = origin("listeners[0].tls.ciphers", 9);
  ts.cipher_policy.ciphersuites_origin = origin("listeners[0].tls.ciphersuites", 10);
  ts.cipher_policy.groups_origin = origin("listeners[0].tls.groups", 11);
  return ts;
}

config::UpstreamTls upstream_settings() {
  config::UpstreamTls u;
  u.enabled = true;
  u.ca = cert_path("ca.crt");
  u.origin = origin("clusters[0].tls", 20);
  u.cipher_policy.ciphers_origin = origin("clusters[0].tls.ciphers", 22);
  u.cipher_policy.ciphersuites_origin = origin("clusters[0].tls.ciphersuites", 23);
  u.cipher_policy.groups_origin = origin("clusters[0].tls.groups", 24);
  return u;
}

// What the test client offers beyond ClientOptions, set on its SSL before
// the first flight; an empty field keeps OpenSSL's default.
struct Offer {
  int min_version = 0;
  int max_version = 0;
  const char* ciphers = "";
  const char* ciphersuites = "";
  const char* groups = "";
};

std::unique_ptr<Client> client_offering(const Offer& o) {
  auto c = std::make_unique<Client>(ClientOptions{.max_version = o.max_version});
  SSL* ssl = c->ssl();
  if (o.min_version != 0) {
    EXPECT_EQ(SSL_set_min_proto_version(ssl, o.min_version), 1);
  }
  if (*o.ciphers) {
    EXPECT_EQ(SSL_set_cipher_list(ssl, o.ciphers), 1) << openssl_errors();
  }
  if (*o.ciphersuites) {
    EXPECT_EQ(SSL_set_ciphersuites(ssl, o.ciphersuites), 1) << openssl_errors();
  }
  if (*o.groups) {
    EXPECT_EQ(SSL_set1_groups_list(ssl, o.groups), 1) << openssl_errors();
  }
  return c;
}

struct Handshake {
  Outcome outcome;
  std::string server_failure;
  std::string client_error;
  std::string cipher;  // as the client sees it; "" when it failed
  int group = 0;       // NID of the key exchange group, as the client sees it
  bool ok() const { return outcome.server == HandshakeState::Done && outcome.client == 1; }
  bool refused() const { return outcome.server == HandshakeState::Failed && outcome.client == -1; }
};

Handshake handshake_with(const config::TlsSettings& ts, const Offer& offer) {
  TestServer server(ts);
  std::unique_ptr<Client> c = client_offering(offer);
  Handshake h;
  h.outcome = server.handshake_with(*c);
  h.server_failure = server.session.failure();
  h.client_error = c->last_error();
  if (h.outcome.client == 1) {
    h.cipher = SSL_get_cipher_name(c->ssl());
    h.group = SSL_get_negotiated_group(c->ssl());
  }
  return h;
}

TEST(TlsCipherPolicy, DefaultRefusesTls12CbcSuite) {
  // LUCKY13's target: an ECDHE suite with CBC and HMAC-SHA1, which OpenSSL's
  // own default list offers.
  Handshake h =
      handshake_with(policy_settings(), {.max_version = TLS1_2_VERSION, .ciphers = "ECDHE-ECDSA-AES128-SHA"});
  EXPECT_TRUE(h.refused()) << "negotiated " << h.cipher;
  EXPECT_NE(h.server_failure.find("no shared cipher"), std::string::npos) << h.server_failure;
  // The same client with the default's first suite gets through.
  h = handshake_with(policy_settings(),
                     {.max_version = TLS1_2_VERSION, .ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256"});
  EXPECT_TRUE(h.ok()) << h.server_failure << " / " << h.client_error;
}

TEST(TlsCipherPolicy, CiphersCanAllowTheCbcSuiteAgain) {
  config::TlsSettings ts = policy_settings();
  ts.cipher_policy.ciphers = std::string(config::default_tls12_ciphers) + ":ECDHE-ECDSA-AES128-SHA";
  Handshake h = handshake_with(ts, {.max_version = TLS1_2_VERSION, .ciphers = "ECDHE-ECDSA-AES128-SHA"});
  ASSERT_TRUE(h.ok()) << h.server_failure << " / " << h.client_error;
  EXPECT_EQ(h.cipher, "ECDHE-ECDSA-AES128-SHA");
}

// Server preference: the configured order decides, not the client's.
TEST(TlsCipherPolicy, Tls12OrderIsTheConfiguredOne) {
  config::TlsSettings ts = policy_settings();
  ts.cipher_policy.ciphers = "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384";
  Handshake h =
      handshake_with(ts, {.max_version = TLS1_2_VERSION,
                          .ciphers = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305"});
  ASSERT_TRUE(h.ok()) << h.server_failure << " / " << h.client_error;
  EXPECT_EQ(h.cipher, "ECDHE-ECDSA-CHACHA20-POLY1305");
}

TEST(TlsCipherPolicy, Tls13SuiteOutsideCiphersuitesIsRefused) {
  config::TlsSettings ts = policy_settings();
  ts.cipher_policy.ciphersuites = "TLS_AES_256_GCM_SHA384";
  Handshake h = handshake_with(ts, {.min_version = TLS1_3_VERSION, .ciphersuites = "TLS_AES_128_GCM_SHA256"});
  EXPECT_TRUE(h.refused()) << "negotiated " << h.cipher;
  h = handshake_with(ts, {.min_version = TLS1_3_VERSION, .ciphersuites = "TLS_AES_256_GCM_SHA384"});
  ASSERT_TRUE(h.ok()) << h.server_failure << " / " << h.client_error;
  EXPECT_EQ(h.cipher, "TLS_AES_256_GCM_SHA384");
}

TEST(TlsCipherPolicy, GroupsRestrictTheKeyExchange) {
  config::TlsSettings ts = policy_settings();
  ts.cipher_policy.groups = "secp384r1";
  for (int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    SCOPED_TRACE(version == TLS1_3_VERSION ? "TLS 1.3" : "TLS 1.2");
    Handshake h =
        handshake_with(ts, {.min_version = version, .max_version = version, .groups = "X25519:prime256v1"});
    EXPECT_TRUE(h.refused()) << "negotiated group " << OBJ_nid2sn(h.group);
    // Offered second, it is chosen (TLS 1.3: after a HelloRetryRequest).
    // prime256v1 stays in the offer: a TLS 1.2 client must list the curve
    // of the server's ECDSA certificate.
    h = handshake_with(ts,
                       {.min_version = version, .max_version = version, .groups = "prime256v1:secp384r1"});
    ASSERT_TRUE(h.ok()) << h.server_failure << " / " << h.client_error;
    EXPECT_EQ(h.group, NID_secp384r1);
  }
}

// OpenSSL's own default list also has X448, X25519's larger sibling; the
// default here does not.
TEST(TlsCipherPolicy, DefaultGroupsLeaveOutX448) {
  Handshake h = handshake_with(policy_settings(), {.groups = "X448"});
  EXPECT_TRUE(h.refused()) << "negotiated group " << OBJ_nid2sn(h.group);
  h = handshake_with(policy_settings(), {.groups = "X448:prime256v1"});
  ASSERT_TRUE(h.ok()) << h.server_failure << " / " << h.client_error;
  EXPECT_EQ(h.group, NID_X9_62_prime256v1);
}

// Each default TLS 1.3 suite detaches and keeps working, KeyUpdate included:
// AES-GCM with the SHA-256 and the SHA-384 key schedule, ChaCha20-Poly1305.
// (Before the default list, OpenSSL's order made every test here use
// AES-256-GCM; now the default tests use AES-128-GCM.)
TEST_F(TlsSessionTest, EachDefaultSuiteDetachesAndKeepsWorking) {
  for (const char* suite : {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}) {
    SCOPED_TRACE(suite);
    config::TlsSettings ts = policy_settings();
    ts.cipher_policy.ciphersuites = suite;
    connect({}, ts);
    exchange(*session_, *client_, out_, "1");
    ASSERT_TRUE(session_->detached());
    EXPECT_STREQ(session_->cipher(), suite);
    ASSERT_EQ(SSL_key_update(client_->ssl(), SSL_KEY_UPDATE_REQUESTED), 1);
    exchange(*session_, *client_, out_, "after a requested update");
    session_.reset();
    client_.reset();
    out_.clear();
  }
}

// A suite the detached record layer does not implement (AES-CCM) can be
// configured now: such a session stays with OpenSSL and keeps working.
TEST(TlsCipherPolicy, SuiteTheRecordLayerLacksStaysWithOpenssl) {
  config::TlsSettings ts = policy_settings();
  ts.cipher_policy.ciphersuites = "TLS_AES_128_CCM_SHA256";
  TestServer server(ts);
  Session& s = server.session;
  ByteQueue& out = server.out;
  std::unique_ptr<Client> c = client_offering({.ciphersuites = "TLS_AES_128_CCM_SHA256"});
  Outcome o = server.handshake_with(*c);
  ASSERT_EQ(o.server, HandshakeState::Done) << s.failure();
  ASSERT_EQ(o.client, 1) << c->last_error();
  EXPECT_STREQ(s.cipher(), "TLS_AES_128_CCM_SHA256");
  exchange(s, *c, out, "1");
  exchange(s, *c, out, "2");
  EXPECT_FALSE(s.detached());
}

// --- what a tlsgate client (towards backends) offers

Bytes drain(ByteQueue& q) {
  Bytes b(q.size());
  b.resize(q.read(b.data(), b.size()));
  return b;
}

struct UpstreamOutcome {
  HandshakeState client = HandshakeState::InProgress;
  HandshakeState server = HandshakeState::InProgress;
  std::string cipher;  // the client session's, when done
  std::string failure;
};

// A tlsgate client Session (the upstream side) against a tlsgate server
// Session, bytes carried by hand. `server_max` caps the server's version.
UpstreamOutcome upstream_handshake(const config::UpstreamTls& u, const config::TlsSettings& ts,
                                   int server_max = 0) {
  ChunkPool pool;
  ByteQueue to_server(&pool), to_client(&pool);
  Context client_ctx(u);
  Context server_ctx(ts);
  if (server_max != 0) SSL_CTX_set_max_proto_version(static_cast<SSL_CTX*>(server_ctx.native()), server_max);
  Session client(client_ctx, pool, Peer{"localhost", false});
  Session server(server_ctx, pool);
  UpstreamOutcome o;
  o.client = client.handshake({}, to_server);
  for (int round = 0; round < 20; ++round) {
    if (o.server == HandshakeState::InProgress) o.server = server.handshake(drain(to_server), to_client);
    if (o.client == HandshakeState::InProgress) o.client = client.handshake(drain(to_client), to_server);
    if (o.client != HandshakeState::InProgress && o.server != HandshakeState::InProgress) break;
    if (o.client == HandshakeState::Failed || o.server == HandshakeState::Failed) break;
  }
  if (o.client == HandshakeState::Done) o.cipher = client.cipher();
  o.failure = "client: " + client.failure() + " / server: " + server.failure();
  return o;
}

TEST(TlsCipherPolicy, UpstreamOffersItsCiphersuites) {
  config::TlsSettings backend = policy_settings();
  backend.cipher_policy.ciphersuites = "TLS_AES_256_GCM_SHA384";
  config::UpstreamTls u = upstream_settings();
  u.cipher_policy.ciphersuites = "TLS_AES_128_GCM_SHA256";
  EXPECT_EQ(upstream_handshake(u, backend).client, HandshakeState::Failed);
  u.cipher_policy.ciphersuites = "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384";
  UpstreamOutcome o = upstream_handshake(u, backend);
  ASSERT_EQ(o.client, HandshakeState::Done) << o.failure;
  EXPECT_EQ(o.cipher, "TLS_AES_256_GCM_SHA384");
}

// A TLS 1.2 backend that only speaks a CBC suite: refused by default,
// reachable when the cluster's ciphers allow it.
TEST(TlsCipherPolicy, UpstreamDefaultRefusesCbcOnlyBackend) {
  config::TlsSettings backend = policy_settings();
  backend.cipher_policy.ciphers = "ECDHE-ECDSA-AES128-SHA";
  config::UpstreamTls u = upstream_settings();
  EXPECT_EQ(upstream_handshake(u, backend, TLS1_2_VERSION).client, HandshakeState::Failed);
  u.cipher_policy.ciphers = "ECDHE-ECDSA-AES128-SHA";
  UpstreamOutcome o = upstream_handshake(u, backend, TLS1_2_VERSION);
  ASSERT_EQ(o.client, HandshakeState::Done) << o.failure;
  EXPECT_EQ(o.cipher, "ECDHE-ECDSA-AES128-SHA");
}

TEST(TlsCipherPolicy, UpstreamOffersItsGroups) {
  config::TlsSettings backend = policy_settings();
  backend.cipher_policy.groups = "secp384r1";
  config::UpstreamTls u = upstream_settings();
  u.cipher_policy.groups = "X25519:prime256v1";
  EXPECT_EQ(upstream_handshake(u, backend).client, HandshakeState::Failed);
  u.cipher_policy.groups = "X25519:secp384r1";
  UpstreamOutcome o = upstream_handshake(u, backend);
  EXPECT_EQ(o.client, HandshakeState::Done) << o.failure;
}

// --- lists OpenSSL would take but shorten, or refuse without naming the key

struct BadPolicy {
  const char* name;
  const char* ciphers;       // "" = default
  const char* ciphersuites;  // "" = default
  const char* groups;        // "" = default
  const char* message;       // after "gateway.toml:<line>:15: <table>."
};

const BadPolicy kBadPolicies[] = {
    {"unknown_cipher", "NOPE", "", "",
     "ciphers: \"NOPE\" selects no TLS 1.2 cipher (unknown name, or not available in this OpenSSL)"},
    {"one_unknown_among_known", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-SHAX", "", "",
     "ciphers: \"ECDHE-ECDSA-AES128-SHAX\" selects no TLS 1.2 cipher (unknown name, or not available in this "
     "OpenSSL)"},
    {"unknown_after_other_separators", "ECDHE-ECDSA-AES128-GCM-SHA256, AES128;NOPE", "", "",
     "ciphers: \"NOPE\" selects no TLS 1.2 cipher (unknown name, or not available in this OpenSSL)"},
    {"cipher_list_selecting_nothing", "ECDHE-ECDSA-AES128-GCM-SHA256:!AESGCM", "", "",
     "ciphers: selects no TLS 1.2 cipher"},
    {"tls13_suite_in_ciphers", "TLS_AES_128_GCM_SHA256", "", "",
     "ciphers: \"TLS_AES_128_GCM_SHA256\" selects no TLS 1.2 cipher (unknown name, or not available in this "
     "OpenSSL); TLS 1.3 suites belong in ciphersuites"},
    {"unknown_suite", "", "TLS_AES_128_GCM_SHA256:TLS_AES_512_GCM_SHA1024", "",
     "ciphersuites: unknown TLS 1.3 cipher suite \"TLS_AES_512_GCM_SHA1024\" (or not available in this "
     "OpenSSL)"},
    {"suite_in_lower_case", "", "tls_aes_128_gcm_sha256", "",
     "ciphersuites: unknown TLS 1.3 cipher suite \"tls_aes_128_gcm_sha256\" (or not available in this "
     "OpenSSL)"},
    {"tls12_cipher_in_ciphersuites", "", "ECDHE-ECDSA-AES128-GCM-SHA256", "",
     "ciphersuites: unknown TLS 1.3 cipher suite \"ECDHE-ECDSA-AES128-GCM-SHA256\" (or not available in this "
     "OpenSSL); TLS 1.2 ciphers belong in ciphers"},
    {"empty_suite_entry", "", "TLS_AES_128_GCM_SHA256::TLS_AES_256_GCM_SHA384", "",
     "ciphersuites: has an empty entry"},
    {"unknown_group", "", "", "X25519:P-999",
     "groups: unknown group \"P-999\" (or not available in this OpenSSL)"},
    {"group_twice", "", "", "X25519:secp384r1:X25519", "groups: \"X25519\" is the same group as \"X25519\""},
    {"group_under_two_names", "", "", "P-256:X25519:prime256v1",
     "groups: \"prime256v1\" is the same group as \"P-256\""},
    {"empty_group_entry", "", "", "X25519::secp384r1", "groups: has an empty entry"},
};

std::string line_of_key(const std::string& message) {
  if (message.starts_with("ciphers:")) return "9";
  if (message.starts_with("ciphersuites:")) return "10";
  return "11";
}

template <typename Settings>
std::string policy_error_of(Settings s, const BadPolicy& b) {
  if (*b.ciphers) s.cipher_policy.ciphers = b.ciphers;
  if (*b.ciphersuites) s.cipher_policy.ciphersuites = b.ciphersuites;
  if (*b.groups) s.cipher_policy.groups = b.groups;
  try {
    Context ctx(s);
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(ERR_peek_error(), 0u) << "left on OpenSSL's error queue: " << openssl_errors();
    return e.what();
  }
  return "no error";
}

TEST(TlsCipherPolicy, BadListsNameTheKey) {
  for (const BadPolicy& b : kBadPolicies) {
    SCOPED_TRACE(b.name);
    EXPECT_EQ(policy_error_of(policy_settings(), b),
              "gateway.toml:" + line_of_key(b.message) + ":15: listeners[0].tls." + b.message);
    const std::string upstream_line = std::to_string(std::stoi(line_of_key(b.message)) + 13);
    EXPECT_EQ(policy_error_of(upstream_settings(), b),
              "gateway.toml:" + upstream_line + ":15: clusters[0].tls." + b.message);
  }
}

// What OpenSSL's list syntax allows stays allowed: removing or reordering
// ciphers this OpenSSL does not have (RC4, MD5) is not an error, nor are
// aliases, options and the other separators.
TEST(TlsCipherPolicy, OpensslListSyntaxIsAccepted) {
  config::TlsSettings ts = policy_settings();
  ts.cipher_policy.ciphers =
      "ECDHE+AESGCM:ECDHE+CHACHA20, HIGH;!aNULL:!eNULL:!RC4:!MD5:-3DES:+AES256:@STRENGTH";
  ts.cipher_policy.ciphersuites = "TLS_CHACHA20_POLY1305_SHA256 : TLS_AES_128_CCM_SHA256";
  ts.cipher_policy.groups = "P-384:x25519";
  EXPECT_NO_THROW(Context ctx(ts));
  config::UpstreamTls u = upstream_settings();
  u.cipher_policy = ts.cipher_policy;
  EXPECT_NO_THROW(Context ctx(u));
}

}  // namespace
}  // namespace tlsgate::tls

namespace tlsgate::tls {
namespace {

#ifndef TLSGATE_OPENSSL_WORKAROUNDS
// The default build redefines no library function: every function OpenSSL's
// own calls go to (fetches, key generation, MACs, wiping, formatting) is the
// library's. tools/check-symbols checks the same for the tlsgate executable.
TEST(NoInterposition, LibraryCallsReachTheLibraries) {
  for (const char* name : {"EVP_MD_fetch", "EVP_KDF_fetch", "EVP_MAC_fetch", "EVP_CIPHER_fetch",
                           "EVP_KEYMGMT_names_do_all", "EVP_PKEY_keygen", "EVP_Q_mac", "OPENSSL_cleanse"}) {
    void* sym = dlsym(RTLD_DEFAULT, name);
    Dl_info info{};
    ASSERT_NE(sym, nullptr) << name;
    ASSERT_NE(dladdr(sym, &info), 0) << name;
    EXPECT_NE(std::string(info.dli_fname).find("libcrypto"), std::string::npos) << name << " is in " << info.dli_fname;
  }
  void* sym = dlsym(RTLD_DEFAULT, "__sprintf_chk");
  Dl_info info{};
  ASSERT_NE(dladdr(sym, &info), 0);
  EXPECT_NE(std::string(info.dli_fname).find("libc.so"), std::string::npos) << info.dli_fname;
  const WorkaroundState st = workaround_state();
  EXPECT_FALSE(st.compiled);
  EXPECT_FALSE(st.active);
}
#endif

TEST(TlsContext, EnumNamesForLogs) {
  EXPECT_STREQ(to_string(Alpn::H2), "h2");
  EXPECT_STREQ(to_string(Alpn::Http11), "http/1.1");
  EXPECT_STREQ(to_string(Alpn::None), "none");
  EXPECT_STREQ(to_string(HandshakeState::Done), "done");
  EXPECT_STREQ(to_string(HandshakeState::InProgress), "in_progress");
}

}  // namespace
}  // namespace tlsgate::tls
