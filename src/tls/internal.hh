// Private to src/tls/.
#pragma once

#include <dlfcn.h>
#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

namespace tlsgate::tls {

// libcrypto's definition of a function the executable defines too (the
// interposers in fetch_cache.cc and x25519.cc): the next one in lookup order.
template <class Fn>
Fn next_definition(const char* symbol) {
  const auto fn = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, symbol));
  if (fn == nullptr) std::abort();  // cannot happen while libcrypto is linked
  return fn;
}

// Records the TLS 1.3 application traffic secrets of every session of `ctx`
// (kTLS needs them; OpenSSL 3.0 has no other public way to get them).
void install_keylog(SSL_CTX* ctx);

struct HmacPart {
  const uint8_t* data;
  size_t len;
};
// HMAC(key, parts[0] || ... || parts[n_parts-1]) into `out` (the digest's
// size), with `md` already fetched.
bool hmac(const EVP_MD* md, const uint8_t* key, size_t key_len, const HmacPart* parts, size_t n_parts,
          uint8_t* out);

// While one exists on this thread, hmac() keeps the pad states of the keys it
// sees and uses them again; its destructor forgets them (and the keys).
class HmacKeyScope {
 public:
  HmacKeyScope();
  ~HmacKeyScope();
  HmacKeyScope(const HmacKeyScope&) = delete;
  HmacKeyScope& operator=(const HmacKeyScope&) = delete;
};

// Builds x25519.cc's table of base-point multiples and checks the base point;
// being called also links x25519.cc's EVP_PKEY_keygen into the program.
bool link_x25519();

// tlsgate's TLS13-KDF provider (kdf.cc): loaded with the default provider.
bool load_kdf_provider();
bool kdf_provider_loaded();

// HKDF-Expand-Label(secret, label, "", length), length <= the hash's size
// (RFC 8446 7.1).
bool expand_label(const EVP_MD* md, const uint8_t* secret, size_t secret_len, const char* label, uint8_t* out,
                  size_t length);

}  // namespace tlsgate::tls
