// The cipher policy keys of [listeners.tls] and [clusters.tls] (ciphers,
// ciphersuites, groups), applied to an SSL_CTX. Private to src/tls.
#pragma once

#include <openssl/ssl.h>

#include "tlsgate/config.hh"

namespace tlsgate::tls {

// Sets `ctx`'s TLS 1.2 cipher list, TLS 1.3 cipher suites and key-exchange
// groups. Throws std::runtime_error "<file:line:col: key>: <problem>" (the
// key's Origin) when a list names a cipher, suite or group this OpenSSL does
// not offer, or selects nothing.
void apply_cipher_policy(SSL_CTX* ctx, const config::CipherPolicy& policy);

}  // namespace tlsgate::tls
