#include "ocsp.hh"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <memory>
#include <string>

#include "certificates.hh"
#include "internal.hh"
#include "tlsgate/tls.hh"

namespace tlsgate::tls {

namespace {

time_t wall_now() { return ::time(nullptr); }

WallClock g_clock = wall_now;

// Clock difference allowed between tlsgate and the responder for a
// thisUpdate in the future (the openssl ocsp command's default).
constexpr long kClockSkew = 300;

// Responses are a few KiB; a file far larger is the wrong file, and is not
// read whole into memory for nothing.
constexpr size_t kMaxResponseSize = 1 << 20;

template <class T, void (*Free)(T*)>
struct Freer {
  void operator()(T* p) const { Free(p); }
};
using ResponsePtr = std::unique_ptr<OCSP_RESPONSE, Freer<OCSP_RESPONSE, OCSP_RESPONSE_free>>;
using BasicPtr = std::unique_ptr<OCSP_BASICRESP, Freer<OCSP_BASICRESP, OCSP_BASICRESP_free>>;
using CertIdPtr = std::unique_ptr<OCSP_CERTID, Freer<OCSP_CERTID, OCSP_CERTID_free>>;
using StorePtr = std::unique_ptr<X509_STORE, Freer<X509_STORE, X509_STORE_free>>;
using BioPtr = std::unique_ptr<BIO, Freer<BIO, BIO_free_all>>;

// The whole file, or "" in *problem.
std::vector<unsigned char> read_file(const std::string& path, std::string* problem) {
  std::vector<unsigned char> out;
  FILE* f = ::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    *problem = std::string("cannot open it: ") + ::strerror(errno);
    return out;
  }
  unsigned char buf[16384];
  while (size_t n = ::fread(buf, 1, sizeof buf, f)) {
    out.insert(out.end(), buf, buf + n);
    if (out.size() > kMaxResponseSize) {
      *problem = "larger than " + std::to_string(kMaxResponseSize) + " bytes: not an OCSP response";
      break;
    }
  }
  if (problem->empty() && ::ferror(f)) *problem = "cannot read it";
  ::fclose(f);
  return out;
}

std::string time_text(const ASN1_TIME* t) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || ASN1_TIME_print(bio.get(), t) != 1) return "?";
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(std::max(n, 0L)));
}

time_t to_time_t(const ASN1_TIME* t) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return ::timegm(&tm);
}

std::string serial_text(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || i2a_ASN1_INTEGER(bio.get(), X509_get0_serialNumber(cert)) <= 0) return "?";
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(std::max(n, 0L)));
}

// The certificate of the chain that issued `leaf`: the OCSP CertID hashes
// its name and key, and it is the trust anchor of the response's signature.
X509* issuer_of(X509* leaf, STACK_OF(X509) * chain) {
  for (int i = 0; i < sk_X509_num(chain); ++i)
    if (X509_check_issued(sk_X509_value(chain, i), leaf) == X509_V_OK) return sk_X509_value(chain, i);
  return nullptr;
}

// The single response about `leaf`. Each CertID is compared with one made
// with its own hash algorithm: `openssl ocsp` uses SHA-1, other tools SHA-256.
OCSP_SINGLERESP* single_for(OCSP_BASICRESP* basic, X509* leaf, X509* issuer) {
  for (int i = 0; i < OCSP_resp_count(basic); ++i) {
    OCSP_SINGLERESP* single = OCSP_resp_get0(basic, i);
    const OCSP_CERTID* id = OCSP_SINGLERESP_get0_id(single);
    ASN1_OBJECT* md_oid = nullptr;
    if (OCSP_id_get0_info(nullptr, &md_oid, nullptr, nullptr, const_cast<OCSP_CERTID*>(id)) != 1) continue;
    const EVP_MD* md = EVP_get_digestbyobj(md_oid);
    if (md == nullptr) continue;
    CertIdPtr mine(OCSP_cert_to_id(md, leaf, issuer));
    if (mine && OCSP_id_cmp(mine.get(), id) == 0) return single;
  }
  ERR_clear_error();
  return nullptr;
}

// The signature is the issuer's own or a responder's whose certificate the
// issuer signed with the OCSP-signing purpose (OCSP_basic_verify's issuer
// checks). The issuer is the only trust anchor, even when it is an
// intermediate (PARTIAL_CHAIN): a response signed by anyone else, however
// trusted elsewhere, says nothing about this certificate. The chain is
// offered to find the signer when the response does not carry it.
bool signed_by_issuer(OCSP_BASICRESP* basic, STACK_OF(X509) * chain, X509* issuer) {
  StorePtr store(X509_STORE_new());
  if (!store || X509_STORE_add_cert(store.get(), issuer) != 1) return false;
  return OCSP_basic_verify(basic, chain, store.get(), OCSP_PARTIAL_CHAIN) == 1;
}

struct Verdict {
  bool staple = false;
  std::string problem;  // a warning, also when stapled (revoked)
};

Verdict check(const std::vector<unsigned char>& der, X509* leaf, STACK_OF(X509) * chain, time_t now,
              time_t* next) {
  const unsigned char* p = der.data();
  ResponsePtr response(d2i_OCSP_RESPONSE(nullptr, &p, static_cast<long>(der.size())));
  if (!response) return {false, "not a DER OCSP response: " + openssl_error_text()};
  if (p != der.data() + der.size()) return {false, "bytes follow the DER OCSP response: not one response"};
  const int status = OCSP_response_status(response.get());
  if (status != OCSP_RESPONSE_STATUS_SUCCESSFUL)
    return {false, std::string("the responder answered '") + OCSP_response_status_str(status) +
                       "', not a certificate status"};
  BasicPtr basic(OCSP_response_get1_basic(response.get()));
  if (!basic) return {false, "not a basic OCSP response: " + openssl_error_text()};
  X509* issuer = issuer_of(leaf, chain);
  if (issuer == nullptr)
    return {false,
            "the certificate file has no issuer certificate after the leaf, which checking a response needs"};
  OCSP_SINGLERESP* single = single_for(basic.get(), leaf, issuer);
  if (single == nullptr)
    return {false, "it is for another certificate (none of its statuses is about serial " +
                       serial_text(leaf) + " of this issuer)"};
  if (!signed_by_issuer(basic.get(), chain, issuer))
    return {false, "it is not signed by the certificate's issuer or a responder the issuer delegated to: " +
                       openssl_error_text()};
  int reason = -1;
  ASN1_GENERALIZEDTIME* revoked_at = nullptr;
  ASN1_GENERALIZEDTIME* this_update = nullptr;
  ASN1_GENERALIZEDTIME* next_update = nullptr;
  const int cert_status = OCSP_single_get0_status(single, &reason, &revoked_at, &this_update, &next_update);
  *next = next_update == nullptr ? std::numeric_limits<time_t>::max() : to_time_t(next_update);
  if (next_update != nullptr && *next <= now)
    return {false, "it expired: its nextUpdate was " + time_text(next_update) +
                       "; the tooling that fetches it has not run since"};
  if (OCSP_check_validity(this_update, next_update, kClockSkew, -1) != 1) {
    const std::string why = openssl_error_text();
    return {false, "its validity is wrong (thisUpdate " + time_text(this_update) + "): " + why};
  }
  switch (cert_status) {
    case V_OCSP_CERTSTATUS_GOOD:
      return {true, ""};
    case V_OCSP_CERTSTATUS_REVOKED:
      return {true, std::string("it says the certificate is REVOKED (on ") +
                        (revoked_at ? time_text(revoked_at) : std::string("?")) +
                        ", reason: " + OCSP_crl_reason_str(reason) +
                        "); stapled as it is, so clients that check refuse the certificate: replace it"};
    default:
      return {
          false,
          "the responder does not know this certificate (status 'unknown'): was the right responder asked?"};
  }
}

int staple_cb(SSL* ssl, void* arg) {
  const auto* group = static_cast<const StapleTable::Group*>(arg);
  const X509* chosen = SSL_get_certificate(ssl);  // with ECDSA and RSA in one context, the one OpenSSL picked
  for (const StapleTable::Staple* s : group->staples) {
    if (s->leaf != chosen) continue;
    auto* session = static_cast<Session*>(SSL_get_app_data(ssl));
    // Past nextUpdate a response proves nothing and a careful client
    // refuses it: better none than a stale one until the file is refreshed.
    if (g_clock() >= s->next_update) {
      if (session) session->note_ocsp(Session::Ocsp::Stale);
      return SSL_TLSEXT_ERR_NOACK;
    }
    // OpenSSL takes the buffer and frees it with the SSL.
    auto* copy = static_cast<unsigned char*>(OPENSSL_malloc(s->der.size()));
    if (copy == nullptr) return SSL_TLSEXT_ERR_NOACK;
    ::memcpy(copy, s->der.data(), s->der.size());
    if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, static_cast<long>(s->der.size())) != 1) {
      OPENSSL_free(copy);
      return SSL_TLSEXT_ERR_NOACK;
    }
    if (session) session->note_ocsp(Session::Ocsp::Stapled);
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

}  // namespace

void set_staple_clock(WallClock clock) { g_clock = clock != nullptr ? clock : wall_now; }

StapleTable::StapleTable(const std::vector<config::CertificateFiles>& files, const CertificateSet& certs) {
  staples_.resize(files.size());
  const time_t now = g_clock();
  for (size_t i = 0; i < files.size(); ++i) {
    const config::CertificateFiles& f = files[i];
    if (f.ocsp_response.empty()) continue;
    auto warn = [&](const std::string& what, bool stapled) {
      warnings_.push_back(f.ocsp_response_origin.to_string() + ": '" + f.ocsp_response +
                          "' for certificate '" + f.certificate + "': " + what +
                          (stapled ? "" : "; not stapled"));
    };
    std::string problem;
    std::vector<unsigned char> der = read_file(f.ocsp_response, &problem);
    if (!problem.empty()) {
      warn(problem, false);
      continue;
    }
    time_t next_update = 0;
    const Verdict v = check(der, certs.leaf(i), certs.chain(i), now, &next_update);
    ERR_clear_error();
    if (!v.problem.empty()) warn(v.problem, v.staple);
    if (!v.staple) continue;
    staples_[i] = std::make_unique<Staple>(Staple{certs.leaf(i), std::move(der), next_update});
  }
}

StapleTable::~StapleTable() = default;

void StapleTable::install(SSL_CTX* ctx, const std::vector<size_t>& entries) {
  auto group = std::make_unique<Group>();
  for (size_t e : entries)
    if (e < staples_.size() && staples_[e]) group->staples.push_back(staples_[e].get());
  if (group->staples.empty()) return;
  SSL_CTX_set_tlsext_status_cb(ctx, staple_cb);
  SSL_CTX_set_tlsext_status_arg(ctx, group.get());
  groups_.push_back(std::move(group));
}

}  // namespace tlsgate::tls
