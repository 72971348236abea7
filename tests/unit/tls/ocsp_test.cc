// OCSP stapling (issue 19): tls::Context loads each certificate's
// ocsp_response, checks it, and staples it when a client asks. The responses
// are made here with OpenSSL's OCSP API (the openssl CLI cannot make a
// nextUpdate in the past), signed by the gen-cert test CA; an in-memory
// OpenSSL client asks for the status and reads what came.
#include "../../../src/tls/ocsp.hh"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cert_env.hh"
#include "tls_client.hh"
#include "tlsgate/config.hh"
#include "tlsgate/tls.hh"

namespace tlsgate::tls {
namespace {
using namespace tlsgate::tls::tlstest;

template <class T, void (*Free)(T*)>
struct Freer {
  void operator()(T* p) const { Free(p); }
};
using X509Ptr = std::unique_ptr<X509, Freer<X509, X509_free>>;
using KeyPtr = std::unique_ptr<EVP_PKEY, Freer<EVP_PKEY, EVP_PKEY_free>>;

X509Ptr load_cert(const std::string& name) {  // the first certificate of the file (the leaf)
  FILE* f = std::fopen(cert_path(name.c_str()).c_str(), "r");
  if (f == nullptr) return X509Ptr();
  X509Ptr c(PEM_read_X509(f, nullptr, nullptr, nullptr));
  std::fclose(f);
  return c;
}

KeyPtr load_key(const std::string& name) {
  FILE* f = std::fopen(cert_path(name.c_str()).c_str(), "r");
  if (f == nullptr) return KeyPtr();
  KeyPtr k(PEM_read_PrivateKey(f, nullptr, nullptr, nullptr));
  std::fclose(f);
  return k;
}

// A certificate with a new P-256 key, signed by `issuer` (default: the test
// CA), with these X.509v3 extensions (name, value as in an openssl config).
struct Issued {
  X509Ptr cert;
  KeyPtr key;
};
Issued issue(const char* cn, long serial, const std::vector<std::pair<int, const char*>>& extensions,
             X509* issuer = nullptr, EVP_PKEY* issuer_key = nullptr) {
  X509Ptr ca = load_cert("ca.crt");
  KeyPtr ca_key = load_key("ca.key");
  if (issuer == nullptr) {
    issuer = ca.get();
    issuer_key = ca_key.get();
  }
  Issued r;
  r.key.reset(EVP_EC_gen("P-256"));
  r.cert.reset(X509_new());
  X509* c = r.cert.get();
  X509_set_version(c, X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(c), serial);
  X509_set_issuer_name(c, X509_get_subject_name(issuer));
  X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn), -1, -1, 0);
  X509_gmtime_adj(X509_getm_notBefore(c), -3600);
  X509_gmtime_adj(X509_getm_notAfter(c), 86400 * 30);
  X509_set_pubkey(c, r.key.get());
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, issuer, c, nullptr, nullptr, 0);
  for (const auto& [nid, value] : extensions) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
    EXPECT_NE(ext, nullptr) << value << ": " << openssl_errors();
    X509_add_ext(c, ext, -1);
    X509_EXTENSION_free(ext);
  }
  EXPECT_GT(X509_sign(c, issuer_key, EVP_sha256()), 0) << openssl_errors();
  return r;
}

// A responder certificate the test CA signs with extendedKeyUsage `eku`
// ("OCSPSigning": a delegated responder; "serverAuth": not one).
Issued make_responder(const char* eku) { return issue("test responder", 4242, {{NID_ext_key_usage, eku}}); }

// What a made-up response says, and who signs it.
struct Spec {
  std::string about = "server.crt";  // the certificate the status is for
  X509* about_cert = nullptr;        // instead of `about`, with:
  X509* issuer = nullptr;            // its issuer (default: the test CA), the default signer
  EVP_PKEY* issuer_key = nullptr;
  int status = V_OCSP_CERTSTATUS_GOOD;
  long this_update = -3600;  // seconds from now
  long next_update = 86400;  // seconds from now
  X509* signer = nullptr;    // default: the test CA
  EVP_PKEY* signer_key = nullptr;
  const EVP_MD* id_md = nullptr;  // the CertID's hash; default SHA-1 (as `openssl ocsp`)
};

std::vector<unsigned char> make_response(const Spec& s) {
  X509Ptr ca = load_cert("ca.crt");
  KeyPtr ca_key = load_key("ca.key");
  X509Ptr about_file = s.about_cert ? nullptr : load_cert(s.about);
  X509* about = s.about_cert ? s.about_cert : about_file.get();
  X509* issuer = s.issuer ? s.issuer : ca.get();
  EVP_PKEY* issuer_key = s.issuer ? s.issuer_key : ca_key.get();
  EXPECT_TRUE(ca && ca_key && about) << openssl_errors();
  OCSP_CERTID* id = OCSP_cert_to_id(s.id_md, about, issuer);
  OCSP_BASICRESP* basic = OCSP_BASICRESP_new();
  ASN1_TIME* this_update = X509_gmtime_adj(nullptr, s.this_update);
  ASN1_TIME* next_update = X509_gmtime_adj(nullptr, s.next_update);
  ASN1_TIME* revoked = s.status == V_OCSP_CERTSTATUS_REVOKED ? X509_gmtime_adj(nullptr, -7200) : nullptr;
  EXPECT_NE(OCSP_basic_add1_status(basic, id, s.status, OCSP_REVOKED_STATUS_KEYCOMPROMISE, revoked,
                                   this_update, next_update),
            nullptr)
      << openssl_errors();
  EXPECT_EQ(OCSP_basic_sign(basic, s.signer ? s.signer : issuer, s.signer_key ? s.signer_key : issuer_key,
                            EVP_sha256(), nullptr, 0),
            1)
      << openssl_errors();
  OCSP_RESPONSE* response = OCSP_response_create(OCSP_RESPONSE_STATUS_SUCCESSFUL, basic);
  unsigned char* der = nullptr;
  const int n = i2d_OCSP_RESPONSE(response, &der);
  EXPECT_GT(n, 0) << openssl_errors();
  std::vector<unsigned char> out(der, der + std::max(n, 0));
  OPENSSL_free(der);
  OCSP_RESPONSE_free(response);
  OCSP_BASICRESP_free(basic);
  OCSP_CERTID_free(id);
  ASN1_TIME_free(this_update);
  ASN1_TIME_free(next_update);
  ASN1_TIME_free(revoked);
  return out;
}

std::string write_response(const std::string& name, const std::vector<unsigned char>& der) {
  const std::string path = g_cert_dir + "/" + name;
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(der.data()), static_cast<std::streamsize>(der.size()));
  return path;
}

// settings() for `cert` with its response in `path`, key at line 9.
config::TlsSettings with_response(const std::string& path, const char* cert = "server.crt",
                                  const char* key = "server.key") {
  config::TlsSettings ts = settings(cert, key);
  ts.certificates[0].ocsp_response = path;
  ts.certificates[0].ocsp_response_origin = origin("listeners[0].tls.ocsp_response", 9);
  return ts;
}

// What an OpenSSL client that asks for the status (or not) got.
struct Stapled {
  bool handshake_ok = false;
  std::vector<unsigned char> response;            // empty: none
  std::string peer_key;                           // "EC" or "RSA": the certificate that came
  Session::Ocsp noted = Session::Ocsp::NotAsked;  // what the session tells the shard to count
};

Stapled try_status(Context& ctx, int max_version = 0, bool ask = true, const char* sigalgs = nullptr) {
  ChunkPool pool;
  ByteQueue out{&pool};
  Session session(ctx, pool);
  Client client(ClientOptions{.max_version = max_version});
  if (ask) {
    EXPECT_EQ(SSL_set_tlsext_status_type(client.ssl(), TLSEXT_STATUSTYPE_ocsp), 1);
  }
  if (sigalgs) {
    EXPECT_EQ(SSL_set1_sigalgs_list(client.ssl(), sigalgs), 1) << openssl_errors();
  }
  Outcome o = run_handshake(session, client, out);
  Stapled s;
  s.handshake_ok = o.server == HandshakeState::Done && o.client == 1;
  EXPECT_TRUE(s.handshake_ok) << session.failure() << " / " << client.last_error();
  const unsigned char* p = nullptr;
  const long n = SSL_get_tlsext_status_ocsp_resp(client.ssl(), &p);
  if (n > 0 && p != nullptr) s.response.assign(p, p + n);
  s.noted = session.ocsp();
  if (X509* peer = SSL_get0_peer_certificate(client.ssl()))
    s.peer_key = EVP_PKEY_get_base_id(X509_get0_pubkey(peer)) == EVP_PKEY_EC ? "EC" : "RSA";
  return s;
}

// The one warning of `ctx`, which must name the key and say `what`.
void expect_one_warning(const Context& ctx, const std::string& what) {
  ASSERT_EQ(ctx.warnings().size(), 1u);
  const std::string& w = ctx.warnings()[0];
  EXPECT_NE(w.find("gateway.toml:9:15: listeners[0].tls.ocsp_response"), std::string::npos) << w;
  EXPECT_NE(w.find(what), std::string::npos) << w;
}

// ------------------------------------------------------------ stapled

TEST(OcspStapling, GoodResponseIsStapledInTls13AndTls12) {
  const std::vector<unsigned char> der = make_response({});
  Context ctx(with_response(write_response("good.der", der)));
  EXPECT_TRUE(ctx.warnings().empty()) << ctx.warnings()[0];
  const Stapled tls13 = try_status(ctx);
  EXPECT_EQ(tls13.response, der) << "TLS 1.3: in the Certificate message";
  EXPECT_EQ(tls13.noted, Session::Ocsp::Stapled);
  const Stapled tls12 = try_status(ctx, TLS1_2_VERSION);
  EXPECT_EQ(tls12.response, der) << "TLS 1.2: the CertificateStatus message";
  EXPECT_EQ(tls12.noted, Session::Ocsp::Stapled);
}

TEST(OcspStapling, ClientThatDoesNotAskGetsNone) {
  Context ctx(with_response(write_response("good.der", make_response({}))));
  for (int version : {0, TLS1_2_VERSION}) {
    const Stapled s = try_status(ctx, version, false);
    EXPECT_TRUE(s.response.empty()) << version;
    EXPECT_EQ(s.noted, Session::Ocsp::NotAsked) << "the callback ran for a client that did not ask";
  }
}

TEST(OcspStapling, NoResponseConfiguredStaplesNothing) {
  Context ctx(settings());
  EXPECT_TRUE(try_status(ctx).response.empty());
}

TEST(OcspStapling, Sha256CertIdIsRecognised) {
  Spec s;
  s.id_md = EVP_sha256();
  const std::vector<unsigned char> der = make_response(s);
  Context ctx(with_response(write_response("sha256.der", der)));
  EXPECT_TRUE(ctx.warnings().empty()) << ctx.warnings()[0];
  EXPECT_EQ(try_status(ctx).response, der);
}

TEST(OcspStapling, DelegatedResponderIsAccepted) {
  Issued r = make_responder("OCSPSigning");
  Spec s;
  s.signer = r.cert.get();
  s.signer_key = r.key.get();
  const std::vector<unsigned char> der = make_response(s);
  Context ctx(with_response(write_response("delegated.der", der)));
  EXPECT_TRUE(ctx.warnings().empty()) << ctx.warnings()[0];
  EXPECT_EQ(try_status(ctx).response, der);
}

// What public CAs do: the leaf comes from an intermediate, which signs the
// response; the file holds leaf + intermediate. The intermediate is the
// trust anchor for the response (its root is not in the file).
TEST(OcspStapling, IntermediateIssuerSigningItsResponseIsAccepted) {
  Issued inter =
      issue("test intermediate", 77,
            {{NID_basic_constraints, "critical,CA:TRUE"}, {NID_key_usage, "critical,keyCertSign,cRLSign"}});
  Issued leaf = issue("localhost", 78,
                      {{NID_subject_alt_name, "DNS:localhost"},
                       {NID_ext_key_usage, "serverAuth"},
                       {NID_key_usage, "critical,digitalSignature"}},
                      inter.cert.get(), inter.key.get());
  const std::string chain = g_cert_dir + "/inter-chain.crt";
  const std::string key = g_cert_dir + "/inter-leaf.key";
  FILE* f = std::fopen(chain.c_str(), "w");
  ASSERT_NE(f, nullptr);
  PEM_write_X509(f, leaf.cert.get());
  PEM_write_X509(f, inter.cert.get());
  std::fclose(f);
  f = std::fopen(key.c_str(), "w");
  ASSERT_NE(f, nullptr);
  PEM_write_PrivateKey(f, leaf.key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
  Spec s;
  s.about_cert = leaf.cert.get();
  s.issuer = inter.cert.get();
  s.issuer_key = inter.key.get();
  const std::vector<unsigned char> der = make_response(s);
  config::TlsSettings ts = with_response(write_response("inter.der", der));
  ts.certificates[0].certificate = chain;
  ts.certificates[0].private_key = key;
  Context ctx(ts);
  EXPECT_TRUE(ctx.warnings().empty()) << ctx.warnings()[0];
  // The test client trusts only the root: it checks the name and the status, not this chain.
  ChunkPool pool;
  ByteQueue out{&pool};
  Session session(ctx, pool);
  Client client;
  SSL_set_verify(client.ssl(), SSL_VERIFY_NONE, nullptr);
  ASSERT_EQ(SSL_set_tlsext_status_type(client.ssl(), TLSEXT_STATUSTYPE_ocsp), 1);
  Outcome o = run_handshake(session, client, out);
  ASSERT_EQ(o.client, 1) << client.last_error();
  const unsigned char* p = nullptr;
  const long n = SSL_get_tlsext_status_ocsp_resp(client.ssl(), &p);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::vector<unsigned char>(p, p + n), der);

  // The root signing a response about the intermediate's leaf is not its issuer.
  Spec wrong = s;
  X509Ptr ca = load_cert("ca.crt");
  KeyPtr ca_key = load_key("ca.key");
  wrong.signer = ca.get();
  wrong.signer_key = ca_key.get();
  ts.certificates[0].ocsp_response = write_response("inter-by-root.der", make_response(wrong));
  Context by_root(ts);
  expect_one_warning(by_root, "not signed by the certificate's issuer");
}

// Stapled, and said loudly: see conf/tlsgate.toml for why.
TEST(OcspStapling, RevokedIsAWarningAndStapled) {
  Spec s;
  s.status = V_OCSP_CERTSTATUS_REVOKED;
  const std::vector<unsigned char> der = make_response(s);
  Context ctx(with_response(write_response("revoked.der", der)));
  expect_one_warning(ctx, "REVOKED");
  EXPECT_NE(ctx.warnings()[0].find("keyCompromise"), std::string::npos) << ctx.warnings()[0];
  EXPECT_EQ(try_status(ctx).response, der);
}

// With an ECDSA and an RSA certificate for one name (one SSL_CTX), the
// response of the certificate OpenSSL chose.
TEST(OcspStapling, EcdsaAndRsaEachGetTheirOwn) {
  const std::vector<unsigned char> ec = make_response({});
  Spec rs;
  rs.about = "rsa-server.crt";
  const std::vector<unsigned char> rsa = make_response(rs);
  config::TlsSettings ts = with_response(write_response("ec.der", ec));
  config::CertificateFiles& second = ts.certificates.emplace_back();
  second.certificate = cert_path("rsa-server.crt");
  second.private_key = cert_path("rsa-server.key");
  second.ocsp_response = write_response("rsa.der", rsa);
  second.ocsp_response_origin = origin("listeners[0].tls.certificates[1].ocsp_response", 14);
  ts.certificate_list = true;
  Context ctx(ts);
  EXPECT_TRUE(ctx.warnings().empty()) << ctx.warnings()[0];
  ASSERT_EQ(ctx.contexts(), 1u) << "both certificates serve localhost: one context";
  for (int version : {0, TLS1_2_VERSION}) {
    Stapled e = try_status(ctx, version, true, "ecdsa_secp256r1_sha256");
    EXPECT_EQ(e.peer_key, "EC");
    EXPECT_EQ(e.response, ec) << "version " << version;
    Stapled r = try_status(ctx, version, true, "rsa_pss_rsae_sha256:rsa_pkcs1_sha256");
    EXPECT_EQ(r.peer_key, "RSA");
    EXPECT_EQ(r.response, rsa) << "version " << version;
  }
}

// ------------------------------------------------------------ refused

TEST(OcspStapling, ExpiredIsAWarningAndNotStapled) {
  Spec s;
  s.this_update = -3 * 86400;
  s.next_update = -86400;
  Context ctx(with_response(write_response("expired.der", make_response(s))));
  expect_one_warning(ctx, "expired");
  EXPECT_NE(ctx.warnings()[0].find("not stapled"), std::string::npos) << ctx.warnings()[0];
  EXPECT_TRUE(try_status(ctx).response.empty());
  EXPECT_TRUE(try_status(ctx, TLS1_2_VERSION).response.empty());
}

TEST(OcspStapling, ResponseForAnotherCertificateIsAWarningAndNotStapled) {
  Spec s;
  s.about = "rsa-server.crt";
  Context ctx(with_response(write_response("other.der", make_response(s))));
  expect_one_warning(ctx, "for another certificate");
  EXPECT_TRUE(try_status(ctx).response.empty());
}

TEST(OcspStapling, SignedByNonResponderIsAWarningAndNotStapled) {
  // The server's own key: the CA signed its certificate, but not for OCSP.
  X509Ptr leaf = load_cert("server.crt");
  KeyPtr key = load_key("server.key");
  Spec s;
  s.signer = leaf.get();
  s.signer_key = key.get();
  Context ctx(with_response(write_response("self.der", make_response(s))));
  expect_one_warning(ctx, "not signed by the certificate's issuer");
  EXPECT_TRUE(try_status(ctx).response.empty());

  Issued r = make_responder("serverAuth");
  s.signer = r.cert.get();
  s.signer_key = r.key.get();
  Context ctx2(with_response(write_response("not-delegated.der", make_response(s))));
  expect_one_warning(ctx2, "not signed by the certificate's issuer");
  EXPECT_TRUE(try_status(ctx2).response.empty());
}

TEST(OcspStapling, UnknownStatusIsAWarningAndNotStapled) {
  Spec s;
  s.status = V_OCSP_CERTSTATUS_UNKNOWN;
  Context ctx(with_response(write_response("unknown.der", make_response(s))));
  expect_one_warning(ctx, "status 'unknown'");
  EXPECT_TRUE(try_status(ctx).response.empty());
}

TEST(OcspStapling, UnsuccessfulResponseIsAWarning) {
  OCSP_RESPONSE* r = OCSP_response_create(OCSP_RESPONSE_STATUS_TRYLATER, nullptr);
  unsigned char* der = nullptr;
  const int n = i2d_OCSP_RESPONSE(r, &der);
  ASSERT_GT(n, 0);
  std::vector<unsigned char> bytes(der, der + n);
  OPENSSL_free(der);
  OCSP_RESPONSE_free(r);
  Context ctx(with_response(write_response("trylater.der", bytes)));
  expect_one_warning(ctx, "'trylater'");
  EXPECT_TRUE(try_status(ctx).response.empty());
}

TEST(OcspStapling, GarbageFileIsAWarningNotAnError) {
  Context ctx(with_response(write_response("garbage.der", {'h', 'e', 'l', 'l', 'o'})));
  expect_one_warning(ctx, "not a DER OCSP response");
  EXPECT_TRUE(try_status(ctx).response.empty());
}

TEST(OcspStapling, CertificateWithoutItsIssuerInTheFileIsAWarning) {
  // server.crt is leaf + CA; a file with the leaf alone gives nothing to
  // check the response against.
  X509Ptr leaf = load_cert("server.crt");
  const std::string path = g_cert_dir + "/leaf-only.crt";
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  PEM_write_X509(f, leaf.get());
  std::fclose(f);
  config::TlsSettings ts = with_response(write_response("good.der", make_response({})));
  ts.certificates[0].certificate = path;
  Context ctx(ts);
  expect_one_warning(ctx, "no issuer certificate");
}

// ------------------------------------------------------------ stale while running

time_t g_fake_now = 0;
time_t fake_clock() { return g_fake_now; }

// A response loaded while valid stops being stapled once its nextUpdate
// passes, without a reload.
TEST(OcspStapling, ResponsePastItsNextUpdateStopsBeingStapled) {
  Spec s;
  s.next_update = 3600;
  const std::vector<unsigned char> der = make_response(s);
  Context ctx(with_response(write_response("hour.der", der)));
  ASSERT_TRUE(ctx.warnings().empty()) << ctx.warnings()[0];
  g_fake_now = ::time(nullptr) + 1800;
  set_staple_clock(fake_clock);
  EXPECT_EQ(try_status(ctx).response, der) << "half an hour on: still valid";
  g_fake_now += 3600;
  for (int version : {0, TLS1_2_VERSION}) {
    const Stapled s = try_status(ctx, version);
    EXPECT_TRUE(s.response.empty()) << "an hour and a half on: stale";
    EXPECT_EQ(s.noted, Session::Ocsp::Stale) << "counted for /metrics";
  }
  set_staple_clock(nullptr);
  EXPECT_EQ(try_status(ctx).response, der) << "the real clock again";
}

}  // namespace
}  // namespace tlsgate::tls
