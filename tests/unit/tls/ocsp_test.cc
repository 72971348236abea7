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

// A responder certificate the test CA signs for `days` with extendedKeyUsage
// `eku` ("OCSPSigning": a delegated responder; "serverAuth": not one).
struct Responder {
  X509Ptr cert;
  KeyPtr key;
};
Responder make_responder(const char* eku) {
  Responder r;
  r.key.reset(EVP_EC_gen("P-256"));
  X509Ptr ca = load_cert("ca.crt");
  KeyPtr ca_key = load_key("ca.key");
  r.cert.reset(X509_new());
  X509* c = r.cert.get();
  X509_set_version(c, X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(c), 4242);
  X509_set_issuer_name(c, X509_get_subject_name(ca.get()));
  X509_NAME* name = X509_get_subject_name(c);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("test responder"), -1, -1, 0);
  X509_gmtime_adj(X509_getm_notBefore(c), -3600);
  X509_gmtime_adj(X509_getm_notAfter(c), 86400 * 30);
  X509_set_pubkey(c, r.key.get());
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, ca.get(), c, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, NID_ext_key_usage, eku);
  EXPECT_NE(ext, nullptr) << openssl_errors();
  X509_add_ext(c, ext, -1);
  X509_EXTENSION_free(ext);
  EXPECT_GT(X509_sign(c, ca_key.get(), EVP_sha256()), 0) << openssl_errors();
  return r;
}

// What a made-up response says, and who signs it.
struct Spec {
  std::string about = "server.crt";  // the certificate the status is for
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
  X509Ptr about = load_cert(s.about);
  EXPECT_TRUE(ca && ca_key && about) << openssl_errors();
  OCSP_CERTID* id = OCSP_cert_to_id(s.id_md, about.get(), ca.get());
  OCSP_BASICRESP* basic = OCSP_BASICRESP_new();
  ASN1_TIME* this_update = X509_gmtime_adj(nullptr, s.this_update);
  ASN1_TIME* next_update = X509_gmtime_adj(nullptr, s.next_update);
  ASN1_TIME* revoked = s.status == V_OCSP_CERTSTATUS_REVOKED ? X509_gmtime_adj(nullptr, -7200) : nullptr;
  EXPECT_NE(OCSP_basic_add1_status(basic, id, s.status, OCSP_REVOKED_STATUS_KEYCOMPROMISE, revoked,
                                   this_update, next_update),
            nullptr)
      << openssl_errors();
  EXPECT_EQ(OCSP_basic_sign(basic, s.signer ? s.signer : ca.get(), s.signer_key ? s.signer_key : ca_key.get(),
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
  Responder r = make_responder("OCSPSigning");
  Spec s;
  s.signer = r.cert.get();
  s.signer_key = r.key.get();
  const std::vector<unsigned char> der = make_response(s);
  Context ctx(with_response(write_response("delegated.der", der)));
  EXPECT_TRUE(ctx.warnings().empty()) << ctx.warnings()[0];
  EXPECT_EQ(try_status(ctx).response, der);
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

  Responder r = make_responder("serverAuth");
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
