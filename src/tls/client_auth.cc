// mTLS from clients: the listener's SSL_CTX asks for and verifies client
// certificates; a verified one becomes the x-forwarded-client-cert value
// (Envoy's XFCC format) the connection adds to every request it forwards.
#include "client_auth.hh"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>

#include "internal.hh"

namespace tlsgate::tls {

namespace {

// The session id context binds a session to the trust it was verified
// under: OpenSSL resumes a session only where the context matches, so a
// ticket from a listener without client certificates, under another CA, or
// from an "optional" listener that saw no certificate never resumes on a
// "require" listener and skips its check. OpenSSL also refuses to resume at
// all with SSL_VERIFY_PEER and no context set.
void set_session_id_context(SSL_CTX* ctx, const config::TlsSettings& s, const std::string& where) {
  std::ifstream in(s.client_ca, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) throw std::runtime_error(where + ": cannot read '" + s.client_ca + "'");
  bytes += s.client_auth == config::ClientAuth::Require ? "\nrequire" : "\noptional";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr) != 1 ||
      len > SSL_MAX_SID_CTX_LENGTH || SSL_CTX_set_session_id_context(ctx, md, len) != 1)
    throw std::runtime_error(where + ": session id context: " + openssl_error_text());
}

std::string rfc2253_subject(X509* cert) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
  if (!bio || X509_NAME_print_ex(bio.get(), X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) < 0) return "";
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return n > 0 ? std::string(data, static_cast<size_t>(n)) : std::string();
}

std::string sha256_hex(X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert, EVP_sha256(), md, &len) != 1) return "";
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * len);
  for (unsigned i = 0; i < len; ++i) {
    hex.push_back(kHex[md[i] >> 4]);
    hex.push_back(kHex[md[i] & 15]);
  }
  return hex;
}

bool needs_quotes(std::string_view v) { return v.find_first_of(",;=\"\\") != std::string_view::npos; }

void append_value(std::string& out, std::string_view v, bool quote) {
  static const char kHex[] = "0123456789ABCDEF";
  if (quote) out.push_back('"');
  for (unsigned char c : v) {
    if (c < 0x20 || c > 0x7e) {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
      continue;
    }
    if (quote && (c == '"' || c == '\\')) out.push_back('\\');
    out.push_back(static_cast<char>(c));
  }
  if (quote) out.push_back('"');
}

void append_pair(std::string& out, const char* key, std::string_view v, bool always_quote = false) {
  if (!out.empty()) out.push_back(';');
  out += key;
  out.push_back('=');
  append_value(out, v, always_quote || needs_quotes(v));
}

}  // namespace

void apply_client_auth(SSL_CTX* ctx, const config::TlsSettings& s) {
  if (s.client_ca.empty()) return;
  const std::string where = s.client_ca_origin.to_string();
  if (SSL_CTX_load_verify_locations(ctx, s.client_ca.c_str(), nullptr) != 1)
    throw std::runtime_error(where + ": cannot load CA certificates '" + s.client_ca +
                             "': " + openssl_error_text());
  // The names sent in CertificateRequest, so a client holding several
  // certificates picks one this CA signed.
  STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(s.client_ca.c_str());
  if (names == nullptr)
    throw std::runtime_error(where + ": no CA certificate in '" + s.client_ca + "': " + openssl_error_text());
  SSL_CTX_set_client_CA_list(ctx, names);  // takes ownership
  int mode = SSL_VERIFY_PEER;
  if (s.client_auth == config::ClientAuth::Require) mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
  SSL_CTX_set_verify(ctx, mode, nullptr);
  set_session_id_context(ctx, s, where);
}

std::string format_xfcc(const XfccFields& f) {
  std::string out;
  for (const std::string& by : f.by) append_pair(out, "By", by);
  if (!f.hash.empty()) append_pair(out, "Hash", f.hash);
  append_pair(out, "Subject", f.subject, true);
  for (const std::string& uri : f.uris) append_pair(out, "URI", uri);
  return out;
}

std::string client_cert_header(SSL* ssl) {
  if ((SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) == 0) return "";
  X509* peer = SSL_get0_peer_certificate(ssl);
  // With a verify callback absent, a certificate that fails verification
  // fails the handshake; the check stays for the day one is installed.
  if (peer == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return "";
  XfccFields f;
  if (X509* own = SSL_get_certificate(ssl)) f.by = subject_alt_names(own, GEN_URI);
  f.hash = sha256_hex(peer);
  f.subject = rfc2253_subject(peer);
  f.uris = subject_alt_names(peer, GEN_URI);
  return format_xfcc(f);
}

}  // namespace tlsgate::tls
