// Private to src/tls/.
#pragma once

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>

namespace tlsgate::tls {

// Records the TLS 1.3 application traffic secrets of every session of `ctx`
// (kTLS needs them; OpenSSL 3.0 has no other public way to get them).
void install_keylog(SSL_CTX* ctx);

// HKDF-Expand-Label(secret, label, "", length), length <= the hash's size
// (RFC 8446 7.1).
bool expand_label(const EVP_MD* md, const uint8_t* secret, size_t secret_len, const char* label, uint8_t* out,
                  size_t length);

}  // namespace tlsgate::tls
