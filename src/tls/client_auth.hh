// mTLS from clients ([listeners.tls] client_ca, client_auth) and the
// x-forwarded-client-cert value a verified client certificate gives the
// backends. Private to src/tls (the unit test includes it by path).
#pragma once

#include <openssl/ssl.h>

#include <string>
#include <string_view>
#include <vector>

#include "tlsgate/config.hh"

namespace tlsgate::tls {

// Makes `ctx` ask for client certificates when settings.client_ca is set:
// trust store and CA list from the file, SSL_VERIFY_PEER (and
// FAIL_IF_NO_PEER_CERT for "require"), and a session id context that a
// session made under another trust or mode does not share, so it never
// resumes here. No-op without client_ca. May be called on several contexts
// of one listener (they get the same session id context). Throws
// std::runtime_error "<client_ca's origin>: <problem>" when OpenSSL cannot
// load the file.
void apply_client_auth(SSL_CTX* ctx, const config::TlsSettings& settings);

// What an XFCC element says of one client certificate (Envoy's keys).
struct XfccFields {
  std::vector<std::string> by;    // tlsgate's own certificate's SAN URIs
  std::string hash;               // hex SHA-256 of the client leaf's DER
  std::string subject;            // RFC 2253
  std::vector<std::string> uris;  // the client leaf's SAN URIs
};

// `By=..;Hash=..;Subject="..";URI=..`: each By and URI a pair of its own,
// By, Hash and URI left out when empty; Subject always there, quoted, any other value
// quoted when it holds , ; = " or \; inside quotes " and \ are
// backslash-escaped; bytes outside printable ASCII become %XX (a header
// value can carry none of them).
std::string format_xfcc(const XfccFields& f);

// The XFCC value for `ssl`'s peer when the handshake verified a client
// certificate (also on a resumed session, whose peer certificate OpenSSL
// kept), else "".
std::string client_cert_header(SSL* ssl);

}  // namespace tlsgate::tls
