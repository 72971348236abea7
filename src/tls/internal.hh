// Private to src/tls/.
#pragma once

#include <openssl/ssl.h>

namespace tlsgate::tls {

// Records the TLS 1.3 application traffic secrets of every session of `ctx`
// (kTLS needs them; OpenSSL 3.0 has no other public way to get them).
void install_keylog(SSL_CTX* ctx);

}  // namespace tlsgate::tls
