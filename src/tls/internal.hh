// Private to src/tls/.
#pragma once

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tlsgate::tls {

// The first error in OpenSSL's queue as text (and the queue cleared), for
// messages that name what OpenSSL refused.
std::string openssl_error_text();

// The subjectAltName entries of `cert` of one type (GEN_DNS, GEN_URI), as
// written, in order (certificates.cc).
std::vector<std::string> subject_alt_names(X509* cert, int type);

// Records the TLS 1.3 application traffic secrets of every session of `ctx`
// (kTLS and the detached record layer need them; OpenSSL 3.0 has no other
// public way to get them).
void install_keylog(SSL_CTX* ctx);

// HKDF-Expand-Label(secret, label, "", length), length <= the hash's size
// (RFC 8446 7.1), by OpenSSL's TLS13-KDF (kdf.cc).
bool expand_label(const EVP_MD* md, const uint8_t* secret, size_t secret_len, const char* label, uint8_t* out,
                  size_t length);

#ifdef TLSGATE_OPENSSL_WORKAROUNDS
// workarounds.cc: decides once, at start-up, whether its caches may answer.
void activate_workarounds();
#endif

}  // namespace tlsgate::tls
