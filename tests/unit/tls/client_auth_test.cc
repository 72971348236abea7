// mTLS from clients (issue 19): the x-forwarded-client-cert format, and a
// real OpenSSL client with and without a certificate against a Session whose
// Context has client_ca: the header, its survival when the session leaves
// OpenSSL, resumption, and the refusals.
#include "../../../src/tls/client_auth.hh"

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cstdio>
#include <string>

#include "cert_env.hh"
#include "tls_client.hh"

namespace tlsgate::tls::tlstest {
namespace {

// ------------------------------------------------------------ the format

TEST(Xfcc, EnvoysExampleField) {
  XfccFields f;
  f.by = {"http://frontend.lyft.com"};
  f.hash = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688";
  f.subject = "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";
  f.uris = {"http://testclient.lyft.com"};
  EXPECT_EQ(
      format_xfcc(f),
      "By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;"
      "Subject=\"/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client\";URI=http://testclient.lyft.com");
}

TEST(Xfcc, WithoutOwnOrClientUrisOnlyHashAndSubject) {
  XfccFields f;
  f.hash = "ab";
  f.subject = "CN=a,O=b";
  EXPECT_EQ(format_xfcc(f), "Hash=ab;Subject=\"CN=a,O=b\"");
}

TEST(Xfcc, EveryUriAPairOfItsOwn) {
  XfccFields f;
  f.by = {"spiffe://edge/a", "spiffe://edge/b"};
  f.hash = "00";
  f.subject = "";
  f.uris = {"spiffe://x/1", "spiffe://x/2"};
  EXPECT_EQ(format_xfcc(f),
            "By=spiffe://edge/a;By=spiffe://edge/b;Hash=00;Subject=\"\";URI=spiffe://x/1;"
            "URI=spiffe://x/2");
}

// A value holding , ; = " or \ is quoted; inside quotes " and \ are
// escaped, so a parser that undoes the escapes gets the RFC 2253 text back
// (which escapes with backslashes itself).
TEST(Xfcc, SeparatorsQuotedQuotesAndBackslashesEscaped) {
  XfccFields f;
  f.hash = "00";
  f.subject = "CN=say \\\"hi\\\",O=a\\;b";
  f.uris = {"https://x.test/p?a=1;b=2", "urn:plain"};
  EXPECT_EQ(format_xfcc(f),
            "Hash=00;Subject=\"CN=say \\\\\\\"hi\\\\\\\",O=a\\\\;b\";"
            "URI=\"https://x.test/p?a=1;b=2\";URI=urn:plain");
}

// No byte a header value cannot carry (CR, LF, NUL, DEL, non-ASCII) gets
// through, whatever a certificate's IA5String holds.
TEST(Xfcc, ControlAndNonAsciiBytesPercentEncoded) {
  XfccFields f;
  f.hash = "00";
  f.subject = "CN=x";
  f.uris = {std::string("urn:a\r\nb\0c\x7f\xc3\xa9", 13)};
  EXPECT_EQ(format_xfcc(f), "Hash=00;Subject=\"CN=x\";URI=urn:a%0D%0Ab%00c%7F%C3%A9");
}

// ------------------------------------------------------------ handshakes

config::TlsSettings mtls_settings(config::ClientAuth mode, const std::string& ca = cert_path("ca.crt")) {
  config::TlsSettings s = settings();
  s.client_ca = ca;
  s.client_auth = mode;
  s.client_ca_origin = origin("listeners[0].tls.client_ca", 9);
  return s;
}

// The test client, optionally with a certificate and a session to resume.
class CertClient : public MemoryBioClient {
 public:
  explicit CertClient(bool with_cert, SSL_SESSION* resume = nullptr) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
    EXPECT_EQ(SSL_CTX_load_verify_locations(ctx_, cert_path("ca.crt").c_str(), nullptr), 1)
        << openssl_errors();
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    if (with_cert) {
      EXPECT_EQ(SSL_CTX_use_certificate_chain_file(ctx_, cert_path("client.crt").c_str()), 1)
          << openssl_errors();
      EXPECT_EQ(SSL_CTX_use_PrivateKey_file(ctx_, cert_path("client.key").c_str(), SSL_FILETYPE_PEM), 1);
    }
    SSL* ssl = SSL_new(ctx_);
    static const unsigned char h2[] = {2, 'h', '2'};
    SSL_set_alpn_protos(ssl, h2, sizeof h2);
    if (resume != nullptr) SSL_set_session(ssl, resume);
    attach(ssl);
  }
  ~CertClient() override { SSL_CTX_free(ctx_); }

 private:
  SSL_CTX* ctx_ = nullptr;
};

// The client certificate's SHA-256, read from the PEM file here (the
// integration test checks it against `openssl x509 -fingerprint`).
std::string client_leaf_sha256() {
  FILE* f = std::fopen(cert_path("client.crt").c_str(), "r");
  if (f == nullptr) return "";
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  X509_digest(x, EVP_sha256(), md, &len);
  X509_free(x);
  std::string hex;
  char b[3];
  for (unsigned i = 0; i < len; ++i) {
    std::snprintf(b, sizeof b, "%02x", md[i]);
    hex += b;
  }
  return hex;
}

std::string expected_header() {
  return "Hash=" + client_leaf_sha256() + ";Subject=\"CN=tlsgate test client,O=tlsgate test\"";
}

TEST(ClientAuth, RequireWithoutCertificateFailsWithItsReason) {
  TestServer server(mtls_settings(config::ClientAuth::Require));
  CertClient client(false);
  Outcome o = server.handshake_with(client);
  EXPECT_EQ(o.server, HandshakeState::Failed);
  EXPECT_EQ(server.session.handshake_failure(), HandshakeFailure::ClientCertificate)
      << server.session.failure();
  EXPECT_TRUE(server.session.client_cert_header().empty());
}

TEST(ClientAuth, OptionalWithoutCertificateServesWithoutHeader) {
  TestServer server(mtls_settings(config::ClientAuth::Optional));
  CertClient client(false);
  Outcome o = server.handshake_with(client);
  ASSERT_EQ(o.server, HandshakeState::Done) << server.session.failure();
  EXPECT_EQ(server.session.client_cert_header(), "");
}

// A certificate from a CA the listener does not trust fails even where
// certificates are optional: "optional" means "verified if sent".
TEST(ClientAuth, CertificateFromAnotherCaRefusedEvenWhenOptional) {
  // The only "CA" trusted is the server's leaf: the client certificate does
  // not chain to it.
  const std::string other = g_cert_dir + "/other-ca.pem";
  {
    FILE* in = std::fopen(cert_path("server.crt").c_str(), "r");
    ASSERT_NE(in, nullptr);
    X509* leaf = PEM_read_X509(in, nullptr, nullptr, nullptr);
    std::fclose(in);
    FILE* out = std::fopen(other.c_str(), "w");
    ASSERT_NE(out, nullptr);
    PEM_write_X509(out, leaf);
    std::fclose(out);
    X509_free(leaf);
  }
  TestServer server(mtls_settings(config::ClientAuth::Optional, other));
  CertClient client(true);
  Outcome o = server.handshake_with(client);
  EXPECT_EQ(o.server, HandshakeState::Failed);
  EXPECT_EQ(server.session.handshake_failure(), HandshakeFailure::ClientCertificate)
      << server.session.failure();
}

TEST(ClientAuth, UnreadableCaNamesTheKey) {
  const std::string empty = g_cert_dir + "/empty.pem";
  FILE* f = std::fopen(empty.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fclose(f);
  try {
    Context ctx(mtls_settings(config::ClientAuth::Require, empty));
    FAIL() << "a CA file without certificates was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("gateway.toml:9:15: listeners[0].tls.client_ca: ", 0), 0u)
        << e.what();
  }
}

// The header is made at the end of the handshake, before the session frees
// its SSL (detached record layer), and a resumed session (whose ticket
// carries the peer certificate) gets the same one. TLS 1.3 and 1.2.
TEST(ClientAuth, VerifiedCertificateHeaderSurvivesDetachAndResumption) {
  for (int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    SCOPED_TRACE(version == TLS1_3_VERSION ? "TLS 1.3" : "TLS 1.2");
    config::TlsSettings ts = mtls_settings(config::ClientAuth::Require);
    ChunkPool pool;
    ByteQueue out(&pool);
    Context ctx(ts);
    SSL_SESSION* saved = nullptr;
    {
      Session server(ctx, pool);
      CertClient client(true);
      SSL_set_max_proto_version(client.ssl(), version);
      Outcome o = run_handshake(server, client, out);
      ASSERT_EQ(o.server, HandshakeState::Done) << server.failure();
      ASSERT_EQ(o.client, 1) << client.last_error();
      EXPECT_FALSE(server.resumed());
      EXPECT_EQ(server.client_cert_header(), expected_header());
      client.write(std::string("ping"));
      EXPECT_EQ(as_string(read_plain(server, client.take_output(), out)), "ping");
      EXPECT_EQ(server.detached(), version == TLS1_3_VERSION);
      EXPECT_EQ(server.client_cert_header(), expected_header()) << "kept after the SSL is gone";
      client.give(out);
      client.read_all();  // the TLS 1.3 ticket
      saved = SSL_get1_session(client.ssl());
      ASSERT_NE(saved, nullptr);
    }
    Session server(ctx, pool);
    CertClient client(true, saved);
    SSL_set_max_proto_version(client.ssl(), version);
    Outcome o = run_handshake(server, client, out);
    SSL_SESSION_free(saved);
    ASSERT_EQ(o.server, HandshakeState::Done) << server.failure();
    EXPECT_TRUE(server.resumed()) << "mTLS sessions resume (session id context set)";
    EXPECT_EQ(server.client_cert_header(), expected_header());
    EXPECT_EQ(server.take_client_cert_header(), expected_header());
    EXPECT_EQ(server.client_cert_header(), "");
    out.clear();
  }
}

// A session from a listener without client certificates never resumes on
// one that requires them (it would skip the check): full handshake, and it
// fails without a certificate.
TEST(ClientAuth, SessionFromListenerWithoutClientCaDoesNotResumeUnderRequire) {
  ChunkPool pool;
  ByteQueue out(&pool);
  Context plain(settings());
  Context mtls(mtls_settings(config::ClientAuth::Require));
  SSL_SESSION* saved = nullptr;
  {
    Session server(plain, pool);
    CertClient client(false);
    Outcome o = run_handshake(server, client, out);
    ASSERT_EQ(o.server, HandshakeState::Done) << server.failure();
    client.read_all();
    saved = SSL_get1_session(client.ssl());
    ASSERT_NE(saved, nullptr);
  }
  out.clear();
  Session server(mtls, pool);
  CertClient client(false, saved);
  Outcome o = run_handshake(server, client, out);
  SSL_SESSION_free(saved);
  EXPECT_EQ(o.server, HandshakeState::Failed);
  EXPECT_FALSE(server.resumed());
  EXPECT_EQ(server.handshake_failure(), HandshakeFailure::ClientCertificate) << server.failure();
}

}  // namespace
}  // namespace tlsgate::tls::tlstest
