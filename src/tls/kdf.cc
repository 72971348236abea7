// HKDF-Expand-Label (RFC 8446 7.1) for the record keys tlsgate installs in
// the kernel or uses in its own record layer, computed by OpenSSL's own
// "TLS13-KDF" through the public EVP_KDF API: the same implementation libssl
// runs for its key schedule, and the FIPS provider's when one is configured.
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <cstring>

#include "internal.hh"

namespace tlsgate::tls {

namespace {

// Fetched once per process: an EVP_KDF is immutable and reference-counted,
// so every thread may make contexts from it. Fetching per call would look
// the name up under the library's locks each time.
EVP_KDF* tls13_kdf() {
  static EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "TLS13-KDF", nullptr);
  return kdf;
}

}  // namespace

bool expand_label(const EVP_MD* md, const uint8_t* secret, size_t secret_len, const char* label, uint8_t* out,
                  size_t length) {
  EVP_KDF* kdf = tls13_kdf();
  if (kdf == nullptr || md == nullptr || static_cast<size_t>(EVP_MD_get_size(md)) < length) return false;
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
  if (ctx == nullptr) return false;
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  static const char kPrefix[] = "tls13 ";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(EVP_MD_get0_name(md)), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(secret), secret_len),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, const_cast<char*>(kPrefix), sizeof kPrefix - 1),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, const_cast<char*>(label), std::strlen(label)),
      OSSL_PARAM_construct_end(),
  };
  const bool ok = EVP_KDF_derive(ctx, out, length, params) == 1;
  EVP_KDF_CTX_free(ctx);  // clears the key it copied
  return ok;
}

}  // namespace tlsgate::tls
