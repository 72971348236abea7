// Leaf certificates made with OpenSSL's API for the tls unit tests (the CLI
// cannot make an expired one), signed by tools/gen-cert's test CA in
// g_cert_dir, and the config entries naming them.
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cstdio>
#include <string>
#include <vector>

#include "cert_env.hh"

namespace tlsgate::tls::tlstest {

inline EVP_PKEY* read_ca_key() {
  FILE* f = std::fopen(cert_path("ca.key").c_str(), "r");
  EVP_PKEY* k = f ? PEM_read_PrivateKey(f, nullptr, nullptr, nullptr) : nullptr;
  if (f) std::fclose(f);
  return k;
}

inline X509* read_ca() {
  FILE* f = std::fopen(cert_path("ca.crt").c_str(), "r");
  X509* c = f ? PEM_read_X509(f, nullptr, nullptr, nullptr) : nullptr;
  if (f) std::fclose(f);
  return c;
}

struct Leaf {
  std::string name;                  // files <name>.crt (leaf + CA) and <name>.key; CN = name
  bool rsa = false;                  // else ECDSA P-256
  std::vector<std::string> dns;      // subjectAltName DNS entries
  long not_after_days = 30;          // from now; negative = expired
};

// Writes the leaf's key and chain into the test folder; "" or what failed.
inline std::string make_leaf(const Leaf& l) {
  EVP_PKEY* key = l.rsa ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
  X509* ca = read_ca();
  EVP_PKEY* ca_key = read_ca_key();
  X509* x = X509_new();
  std::string problem;
  if (key == nullptr || ca == nullptr || ca_key == nullptr || x == nullptr) problem = "setup: " + openssl_errors();
  if (problem.empty()) {
    X509_set_version(x, X509_VERSION_3);
    uint8_t serial[8];
    RAND_bytes(serial, sizeof serial);
    serial[0] &= 0x7f;
    BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    X509_gmtime_adj(X509_getm_notBefore(x), -60L * 60 * 24 * (l.not_after_days < 0 ? 30 - l.not_after_days : 1));
    X509_gmtime_adj(X509_getm_notAfter(x), 60L * 60 * 24 * l.not_after_days);
    X509_NAME* n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(l.name.c_str()), -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(ca));
    X509_set_pubkey(x, key);
    std::string san;
    for (const std::string& d : l.dns) san += (san.empty() ? "DNS:" : ",DNS:") + d;
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, ca, x, nullptr, nullptr, 0);
    if (!san.empty()) {
      X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, san.c_str());
      X509_add_ext(x, ext, -1);
      X509_EXTENSION_free(ext);
    }
    if (X509_sign(x, ca_key, EVP_sha256()) == 0) problem = "sign: " + openssl_errors();
  }
  if (problem.empty()) {
    FILE* c = std::fopen(cert_path((l.name + ".crt").c_str()).c_str(), "w");
    FILE* k = std::fopen(cert_path((l.name + ".key").c_str()).c_str(), "w");
    if (c == nullptr || k == nullptr || PEM_write_X509(c, x) != 1 || PEM_write_X509(c, ca) != 1 ||
        PEM_write_PrivateKey(k, key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
      problem = "write: " + openssl_errors();
    if (c) std::fclose(c);
    if (k) std::fclose(k);
    ::chmod(cert_path((l.name + ".key").c_str()).c_str(), 0600);
  }
  X509_free(x);
  X509_free(ca);
  EVP_PKEY_free(ca_key);
  EVP_PKEY_free(key);
  return problem;
}

inline config::CertificateFiles entry(const std::string& name, size_t index) {
  config::CertificateFiles f;
  f.certificate = cert_path((name + ".crt").c_str());
  f.private_key = cert_path((name + ".key").c_str());
  const std::string at = "listeners[0].tls.certificates[" + std::to_string(index) + "]";
  f.certificate_origin = origin((at + ".certificate").c_str(), static_cast<uint32_t>(10 + index));
  f.private_key_origin = origin((at + ".private_key").c_str(), static_cast<uint32_t>(10 + index));
  return f;
}

inline config::TlsSettings with_certificates(const std::vector<std::string>& names) {
  config::TlsSettings s;
  for (size_t i = 0; i < names.size(); ++i) s.certificates.push_back(entry(names[i], i));
  return s;
}

}  // namespace tlsgate::tls::tlstest
