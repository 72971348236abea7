// OpenSSL contexts and sessions: handshake through a memory BIO, the
// userspace record path after it, kTLS hand-off.
//
// Over 600 lines on purpose: it is the one place that holds an SSL object's
// state machine (BIO plumbing, handshake, KeyUpdate watch, the switch to
// tlsgate's record layer, shutdown); split, each piece would need the SSL
// object's private state in a shared header. The record layer itself
// (record.cc), key derivation (kdf.cc), kTLS (ktls.cc) and cipher policy
// are files of their own.
#include "tlsgate/tls.hh"

#include "certificates.hh"
#include "cipher_policy.hh"
#include "client_auth.hh"
#include "internal.hh"
#include "ocsp.hh"
#include "record.hh"
#include "tickets.hh"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <stdexcept>

#ifdef TLSGATE_MIMALLOC
#include <mimalloc.h>
#endif

namespace tlsgate::tls {

std::string openssl_error_text() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

const char* to_string(HandshakeFailure f) {
  switch (f) {
    case HandshakeFailure::Other: return "other";
    case HandshakeFailure::NotTls: return "not_tls";
    case HandshakeFailure::Version: return "version";
    case HandshakeFailure::NoSharedCipher: return "no_shared_cipher";
    case HandshakeFailure::NoAlpn: return "no_alpn";
    case HandshakeFailure::PeerAlert: return "peer_alert";
    case HandshakeFailure::ClientCertificate: return "client_certificate";
    case HandshakeFailure::Count: break;
  }
  return "?";
}

namespace {

HandshakeFailure classify_failure(unsigned long e) {
  if (ERR_GET_LIB(e) != ERR_LIB_SSL) return HandshakeFailure::Other;
  const int reason = ERR_GET_REASON(e);
  // Alerts the peer sent are reported as SSL_AD_REASON_OFFSET + description.
  if (reason >= SSL_AD_REASON_OFFSET) return HandshakeFailure::PeerAlert;
  switch (reason) {
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_UNKNOWN_PROTOCOL:
      return HandshakeFailure::NotTls;
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_VERSION_TOO_LOW:
      return HandshakeFailure::Version;
    case SSL_R_NO_SHARED_CIPHER:
    case SSL_R_NO_SHARED_GROUPS:
    case SSL_R_NO_SUITABLE_KEY_SHARE:
    case SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS:
    case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
      return HandshakeFailure::NoSharedCipher;
    case SSL_R_NO_APPLICATION_PROTOCOL:
      return HandshakeFailure::NoAlpn;
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
      return HandshakeFailure::ClientCertificate;
    default:
      return HandshakeFailure::Other;
  }
}

#ifdef TLSGATE_MIMALLOC
void* mi_crypto_malloc(size_t n, const char*, int) { return mi_malloc(n); }
void* mi_crypto_realloc(void* p, size_t n, const char*, int) { return mi_realloc(p, n); }
void mi_crypto_free(void* p, const char*, int) { mi_free(p); }
#endif

BIO_METHOD* g_bio_method = nullptr;

constexpr uint8_t kAlertType = 21;
constexpr uint8_t kHandshakeType = 22;
constexpr uint8_t kApplicationDataType = 23;
constexpr uint8_t kKeyUpdate = 24;  // handshake message type
constexpr uint8_t kAlertFatal = 2;
constexpr uint8_t kAlertWarning = 1;
constexpr uint8_t kCloseNotify = 0;

// The session-ticket key of listeners without a ticket_keys file, made once
// per process so that a client resumes on whichever shard it lands on.
TicketKeys g_random_ticket_keys;

int alpn_select(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned inlen,
                void* arg) {
  const auto* wire = static_cast<const std::string*>(arg);
  unsigned char* selected = nullptr;
  // Server preference: the configured order (h2 first by default).
  int rc = SSL_select_next_proto(&selected, outlen, reinterpret_cast<const unsigned char*>(wire->data()),
                                 static_cast<unsigned>(wire->size()), in, inlen);
  if (rc != OPENSSL_NPN_NEGOTIATED) return SSL_TLSEXT_ERR_ALERT_FATAL;  // RFC 7301: no_application_protocol
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

}  // namespace

// Record keys derived from the keylog's traffic secrets (for kTLS or the
// detached record layer) are right only until OpenSSL handles a KeyUpdate
// (received, or sent in answer): OpenSSL 3.0 logs no later secret. After one,
// derive_keys() refuses and the session stays with OpenSSL. Watched only on
// sessions that may leave OpenSSL, until they do.
//
// The same for any handshake record OpenSSL decrypts after the handshake,
// whole message or not: the first bytes of a KeyUpdate fragmented across
// records (RFC 8446 5.1 allows it) wait in OpenSSL's buffer, where neither
// the record layer nor the kernel would find them, and the rest of the
// message arriving there was refused as "handshake message other than
// KeyUpdate" (found by the tls_session fuzz target).
struct MsgWatch {
  static void seen(int write_p, int, int content_type, const void* buf, size_t len, SSL* ssl, void*) {
    if (len == 0) return;
    const uint8_t first = static_cast<const uint8_t*>(buf)[0];
    const bool key_update = content_type == SSL3_RT_HANDSHAKE && first == kKeyUpdate;
    const bool late_handshake_record = write_p == 0 && content_type == SSL3_RT_INNER_CONTENT_TYPE &&
                                       first == SSL3_RT_HANDSHAKE && SSL_is_init_finished(ssl);
    if (!key_update && !late_handshake_record) return;
    if (auto* s = static_cast<Session*>(SSL_get_app_data(ssl))) s->secrets_stale_ = true;
  }
};

// The custom BIO reads from the session's pending bytes and current span and
// writes records straight into the connection's output queue.
struct BioAccess {
  static int read(BIO* bio, char* out, int outl) {
    auto* s = static_cast<Session*>(BIO_get_data(bio));
    BIO_clear_retry_flags(bio);
    size_t want = static_cast<size_t>(outl);
    if (s->whole_records_) {
      if (s->gate_left_ == 0) s->gate_left_ = static_cast<uint32_t>(s->next_record_size());
      if (s->gate_left_ == 0) {  // the next record is not all here yet
        BIO_set_retry_read(bio);
        return -1;
      }
      want = std::min<size_t>(want, s->gate_left_);
    }
    size_t got = s->pending_in_.read(out, want);
    if (got < want && !s->in_.empty()) {
      size_t n = std::min(want - got, s->in_.size());
      std::memcpy(out + got, s->in_.data(), n);
      s->in_ = s->in_.subspan(n);
      got += n;
    }
    if (got == 0) {
      BIO_set_retry_read(bio);
      return -1;
    }
    s->rx_records_.feed(reinterpret_cast<const uint8_t*>(out), got);
    if (s->whole_records_) s->gate_left_ -= static_cast<uint32_t>(got);
    return static_cast<int>(got);
  }
  static int write(BIO* bio, const char* data, int len) {
    auto* s = static_cast<Session*>(BIO_get_data(bio));
    BIO_clear_retry_flags(bio);
    if (s->out_ == nullptr || !s->out_->append(data, static_cast<size_t>(len))) {
      BIO_set_retry_write(bio);
      return -1;
    }
    s->tx_records_.feed(reinterpret_cast<const uint8_t*>(data), static_cast<size_t>(len));
    return len;
  }
};

namespace {

long bio_ctrl(BIO*, int cmd, long, void*) {
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;
    default:
      return 0;  // in particular: no kTLS through this BIO (issue 4 adds it)
  }
}

int bio_create(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

BIO_METHOD* bio_method() { return g_bio_method; }

}  // namespace

}  // namespace tlsgate::tls

namespace tlsgate::tls {

#ifndef TLSGATE_OPENSSL_WORKAROUNDS
WorkaroundState workaround_state() { return WorkaroundState{false, false, "not built (-Dopenssl_3_0_workarounds=false)"}; }
#endif

void init_library() {
#ifdef TLSGATE_MIMALLOC
  // Before OpenSSL allocates anything: every OpenSSL allocation goes to
  // mimalloc's thread-local heaps instead of glibc's arenas.
  CRYPTO_set_mem_functions(mi_crypto_malloc, mi_crypto_realloc, mi_crypto_free);
#endif
  OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, nullptr);
#ifdef TLSGATE_OPENSSL_WORKAROUNDS
  activate_workarounds();  // after OpenSSL loaded its configuration and providers
#endif
  init_tickets();
  g_random_ticket_keys = random_ticket_keys();
  g_bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tlsgate");
  BIO_meth_set_read(g_bio_method, BioAccess::read);
  BIO_meth_set_write(g_bio_method, BioAccess::write);
  BIO_meth_set_ctrl(g_bio_method, bio_ctrl);
  BIO_meth_set_create(g_bio_method, bio_create);
}

const char* to_string(Alpn a) {
  switch (a) {
    case Alpn::None: return "none";
    case Alpn::H2: return "h2";
    case Alpn::Http11: return "http/1.1";
  }
  return "?";
}

const char* to_string(HandshakeState s) {
  switch (s) {
    case HandshakeState::InProgress: return "in_progress";
    case HandshakeState::Done: return "done";
    case HandshakeState::Failed: return "failed";
  }
  return "?";
}

// A listener's certificates, one SSL_CTX per group of them, and what every
// one of those contexts shares (ALPN list, ticket keys).
struct Context::Server {
  explicit Server(const config::TlsSettings& settings)
      : certs(settings.certificates), staples(settings.certificates, certs) {
    warnings = certs.warnings();
    warnings.insert(warnings.end(), staples.warnings().begin(), staples.warnings().end());
  }
  ~Server() {
    for (SSL_CTX* c : contexts) SSL_CTX_free(c);
  }
  CertificateSet certs;
  StapleTable staples;  // OCSP responses (ocsp.cc)
  std::vector<std::string> warnings;  // the certificates' and the responses'
  std::vector<SSL_CTX*> contexts;  // [g] holds certificate group g; [0] is the default
  std::string alpn_wire;
  TicketKeys ticket_keys;  // empty: the process's random key
};

namespace {

// Picks the context of the certificate for the client's server name when
// the ClientHello did not fit the early parse (server_name_of), and counts a
// name no certificate carries. Called on every handshake; switches only when
// the early choice was not already right.
int servername_cb(SSL* ssl, int*, void* arg) {
  const auto* server = static_cast<const Context::Server*>(arg);
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (name == nullptr) return SSL_TLSEXT_ERR_OK;
  const int g = server->certs.find(name);
  if (g < 0) {
    if (auto* s = static_cast<Session*>(SSL_get_app_data(ssl))) s->note_unknown_server_name();
    return SSL_TLSEXT_ERR_OK;  // the default certificate; the client decides whether it will do
  }
  SSL_CTX* want = server->contexts[static_cast<size_t>(g)];
  if (SSL_get_SSL_CTX(ssl) != want && SSL_set_SSL_CTX(ssl, want) == nullptr) return SSL_TLSEXT_ERR_ALERT_FATAL;
  return SSL_TLSEXT_ERR_OK;
}

}  // namespace

// Everything but the certificates: the same for each of a listener's
// contexts, since OpenSSL reads some settings from the context a session
// switched to and others from the one it was made from.
void* Context::make_server_ctx(const config::TlsSettings& settings) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) throw std::runtime_error("SSL_CTX_new: " + openssl_error_text());
  server_->contexts.push_back(ctx);  // freed with server_ from here on, also by a throw below
  SSL_CTX_set_min_proto_version(ctx, settings.min_version == config::TlsVersion::Tls13 ? TLS1_3_VERSION
                                                                                      : TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
  // RELEASE_BUFFERS: an idle connection holds no 16 KiB read/write buffers
  // (the largest part of its memory); mimalloc makes getting them back cheap.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  apply_cipher_policy(ctx, settings.cipher_policy);
  install_ticket_keys(ctx, server_->ticket_keys.keys.empty() ? &g_random_ticket_keys : &server_->ticket_keys);
  // OpenSSL sends two TLS 1.3 tickets by default; each costs ~6% of a new
  // connection's CPU (an encoded, encrypted session). A gRPC client keeps one
  // connection and resumes with one ticket, and gets a fresh one each time.
  SSL_CTX_set_num_tickets(ctx, settings.session_tickets);
  if (settings.session_tickets == 0) {  // no resumption at all: no TLS 1.2 tickets or session-id cache either
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  }
  apply_client_auth(ctx, settings);
  SSL_CTX_set_alpn_select_cb(ctx, alpn_select, &server_->alpn_wire);
  SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
  SSL_CTX_set_tlsext_servername_arg(ctx, server_.get());
  // The traffic secrets are needed either way: for kernel TLS, or for the
  // session's own record layer once it detaches from OpenSSL.
  install_keylog(ctx);
  return ctx;
}

Context::Context(const config::TlsSettings& settings, bool ktls) : server_(std::make_unique<Server>(settings)) {
  for (const std::string& p : settings.alpn) {  // wire format
    server_->alpn_wire.push_back(static_cast<char>(p.size()));
    server_->alpn_wire += p;
  }
  server_->ticket_keys.keys = settings.ticket_key_set;
  for (size_t g = 0; g < server_->certs.groups(); ++g) {
    auto* ctx = static_cast<SSL_CTX*>(make_server_ctx(settings));
    if (!server_->certs.install(ctx, g)) {
      const config::CertificateFiles& f = settings.certificates[server_->certs.members(g).front()];
      throw std::runtime_error(f.certificate_origin.to_string() + ": OpenSSL refused certificate '" + f.certificate +
                               "': " + openssl_error_text());
    }
    server_->staples.install(ctx, server_->certs.members(g));
  }
  detach_ = !ktls && settings.record_layer == config::RecordLayer::Tlsgate;
  ktls_ = ktls;
  ctx_ = server_->contexts.front();
}

void* Context::context_for(std::string_view server_name) const {
  const int g = server_name.empty() ? -1 : server_->certs.find(server_name);
  return server_->contexts[g < 0 ? 0 : static_cast<size_t>(g)];
}

size_t Context::contexts() const { return server_ ? server_->contexts.size() : 1; }

const std::vector<std::string>& Context::warnings() const {
  static const std::vector<std::string> none;
  return server_ ? server_->warnings : none;
}

Context::Context(const config::UpstreamTls& settings) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) throw std::runtime_error("SSL_CTX_new: " + openssl_error_text());
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> owner(ctx, &SSL_CTX_free);
  const std::string where = settings.origin.to_string();
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  apply_cipher_policy(ctx, settings.cipher_policy);
  if (SSL_CTX_load_verify_locations(ctx, settings.ca.c_str(), nullptr) != 1)
    throw std::runtime_error(where + ".ca: cannot load CA certificates '" + settings.ca + "': " + openssl_error_text());
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  static const unsigned char h2[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(ctx, h2, sizeof h2);
  if (!settings.certificate.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, settings.certificate.c_str()) != 1)
      throw std::runtime_error(where + ".certificate: cannot load certificate '" + settings.certificate +
                               "': " + openssl_error_text());
    if (SSL_CTX_use_PrivateKey_file(ctx, settings.private_key.c_str(), SSL_FILETYPE_PEM) != 1)
      throw std::runtime_error(where + ".private_key: cannot load private key '" + settings.private_key +
                               "': " + openssl_error_text());
    if (SSL_CTX_check_private_key(ctx) != 1)
      throw std::runtime_error(where + ".private_key: private key '" + settings.private_key +
                               "' does not match certificate '" + settings.certificate + "'");
  }
  ctx_ = owner.release();
}

Context::~Context() {
  if (!server_) SSL_CTX_free(static_cast<SSL_CTX*>(ctx_));  // a server's contexts go with server_
}

// No SSL object yet: OpenSSL's objects for a connection in the handshake
// (the SSL, a 16 KiB handshake message buffer made when the handshake
// starts, an ~18 KiB record read buffer on the first read) came to ~45 KiB,
// and a client that sends half a ClientHello and waits would hold them until
// the handshake timeout. They are made when its first record is whole.
Session::Session(Context& ctx, ChunkPool& pool)
    : server_ctx_(&ctx), pending_in_(&pool), detach_allowed_(ctx.detach()) {}

bool Session::make_server_ssl() {
  // Made from the context of the certificate for the client's server name,
  // so that OpenSSL does not copy another certificate set to switch.
  SSL* ssl = SSL_new(static_cast<SSL_CTX*>(server_ctx_->context_for(server_name_of(hello_))));
  if (ssl == nullptr) return false;
  BIO* bio = BIO_new(bio_method());
  if (bio == nullptr) {
    SSL_free(ssl);
    return false;
  }
  BIO_set_data(bio, this);
  SSL_set_bio(ssl, bio, bio);
  SSL_set_accept_state(ssl);
  SSL_set_app_data(ssl, this);
  if (server_ctx_->leaves_openssl()) SSL_set_msg_callback(ssl, MsgWatch::seen);
  ssl_ = ssl;
  return true;
}

// True once hello_ holds the client's whole first record, or bytes that are
// not a TLS handshake record within the size limit (OpenSSL then says what
// is wrong, at once). The buffer grows with what arrives, not with the
// length the header announces.
bool Session::gather_first_record(std::span<const uint8_t> in) {
  hello_.insert(hello_.end(), in.begin(), in.end());
  if (hello_.size() < 5) return false;
  constexpr size_t kMaxRecord = 16384 + 256;  // RFC 8446 5.2: TLSCiphertext.length
  const size_t len = static_cast<size_t>(hello_[3]) << 8 | hello_[4];
  if (hello_[0] != 22 || len > kMaxRecord) return true;
  return hello_.size() >= 5 + len;
}

Session::Session(Context& ctx, ChunkPool& pool, const Peer& peer) : pending_in_(&pool) {
  SSL* ssl = SSL_new(static_cast<SSL_CTX*>(ctx.native()));
  if (ssl == nullptr) throw std::bad_alloc();
  std::unique_ptr<SSL, decltype(&SSL_free)> owner(ssl, &SSL_free);
  BIO* bio = BIO_new(bio_method());
  BIO_set_data(bio, this);
  SSL_set_bio(ssl, bio, bio);
  SSL_set_connect_state(ssl);
  SSL_set_app_data(ssl, this);
  bool named;
  if (peer.is_ip) {
    named = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), peer.name.c_str()) == 1;
  } else {
    named = SSL_set_tlsext_host_name(ssl, peer.name.c_str()) == 1 && SSL_set1_host(ssl, peer.name.c_str()) == 1;
  }
  if (!named) throw std::runtime_error("cannot set the TLS peer name '" + peer.name + "': " + openssl_error_text());
  ssl_ = owner.release();
}

// Every path ends here (detached, offloaded to the kernel, TLS 1.2, never
// left OpenSSL): the traffic secrets the keylog gave us are wiped. OpenSSL
// wipes its own in SSL_free; the RecordLayer in its destructor.
Session::~Session() {
  SSL_free(static_cast<SSL*>(ssl_));
  OPENSSL_cleanse(client_secret_, sizeof client_secret_);
  OPENSSL_cleanse(server_secret_, sizeof server_secret_);
  OPENSSL_cleanse(hs_msg_, sizeof hs_msg_);
}

void Session::begin(std::span<const uint8_t> in, ByteQueue& out) {
  in_ = in;
  out_ = &out;
  ERR_clear_error();
}

void Session::end() {
  // Keep what OpenSSL did not read yet: the caller recycles its buffer.
  if (!in_.empty() && !pending_in_.append(in_.data(), in_.size())) {
    // Out of buffer memory: the stream of records has a hole now, so this
    // connection cannot continue; the next read reports it.
    broken_ = true;
  }
  in_ = {};
  out_ = nullptr;
}

HandshakeState Session::handshake(std::span<const uint8_t> in, ByteQueue& out) {
  if (broken_) {
    failure_ = "out of buffer memory";
    return HandshakeState::Failed;
  }
  if (ssl_ == nullptr && server_ctx_ != nullptr) {
    if (!gather_first_record(in)) return HandshakeState::InProgress;
    if (!make_server_ssl()) {
      failure_ = "out of memory for a TLS session";
      return HandshakeState::Failed;
    }
    in = hello_;
  }
  begin(in, out);
  SSL* ssl = static_cast<SSL*>(ssl_);
  tx_at_final_call_ = tx_records_.total;
  const int rc = SSL_do_handshake(ssl);
  HandshakeState st = HandshakeState::Done;
  if (rc != 1) {
    int err = SSL_get_error(ssl, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      st = HandshakeState::InProgress;
    } else {
      if (err == SSL_ERROR_SSL) handshake_failure_ = classify_failure(ERR_peek_error());
      failure_ = err == SSL_ERROR_SSL ? openssl_error_text() : "handshake error " + std::to_string(err);
      long verify = SSL_get_verify_result(ssl);
      if (verify != X509_V_OK) failure_ += std::string(" (") + X509_verify_cert_error_string(verify) + ")";
      st = HandshakeState::Failed;
    }
  } else {
    const unsigned char* proto = nullptr;
    unsigned len = 0;
    SSL_get0_alpn_selected(ssl, &proto, &len);
    rx_at_done_ = rx_records_.total;
    resumed_ = SSL_session_reused(ssl) == 1;
    if (server_ctx_ != nullptr) client_cert_header_ = tls::client_cert_header(ssl);  // before the SSL may be freed
    whole_records_ = detach_allowed_;
    if (len == 2 && std::memcmp(proto, "h2", 2) == 0) alpn_ = Alpn::H2;
    else if (len == 8 && std::memcmp(proto, "http/1.1", 8) == 0) alpn_ = Alpn::Http11;
    else alpn_ = Alpn::None;
  }
  end();  // what OpenSSL did not read of hello_ is in pending_in_ now
  if (!hello_.empty()) std::vector<uint8_t>().swap(hello_);
  return st;
}

const char* Session::version() const {
  return ssl_ ? SSL_get_version(static_cast<SSL*>(ssl_)) : version_name_;
}

const char* Session::cipher() const {
  return ssl_ ? SSL_get_cipher_name(static_cast<SSL*>(ssl_)) : cipher_name_;
}

Result<size_t> Session::read_some(uint8_t* buf, size_t cap) {
  if (broken_) {
    failure_ = "out of buffer memory";
    return Unexpected(Error::Resource);
  }
  SSL* ssl = static_cast<SSL*>(ssl_);
  size_t n = 0;
  if (SSL_read_ex(ssl, buf, cap, &n) == 1) return n;
  int err = SSL_get_error(ssl, 0);
  switch (err) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
      return Unexpected(Error::WouldBlock);
    case SSL_ERROR_ZERO_RETURN:
      return Unexpected(Error::Closed);
    default:
      failure_ = err == SSL_ERROR_SSL ? openssl_error_text() : "read error " + std::to_string(err);
      ERR_clear_error();
      return Unexpected(Error::Protocol);
  }
}

Result<void> Session::write(const uint8_t* data, size_t len, ByteQueue& out) {
  if (failed_) return Unexpected(Error::Protocol);  // nothing follows an alert
  if (records_) return write_records(kApplicationDataType, data, len, out);
  begin({}, out);
  SSL* ssl = static_cast<SSL*>(ssl_);
  while (len > 0) {
    size_t n = 0;
    if (SSL_write_ex(ssl, data, len, &n) != 1) {
      failure_ = openssl_error_text();
      end();
      return Unexpected(Error::Resource);
    }
    data += n;
    len -= n;
  }
  end();
  return {};
}

void Session::shutdown(ByteQueue& out) {
  if (failed_) return;
  if (records_) {
    static const uint8_t close_notify[2] = {kAlertWarning, kCloseNotify};
    (void)write_records(kAlertType, close_notify, sizeof close_notify, out);
    failed_ = true;  // nothing is sent after close_notify
    return;
  }
  if (ssl_ == nullptr) return;  // the handshake never began: nothing to close
  begin({}, out);
  SSL_shutdown(static_cast<SSL*>(ssl_));
  ERR_clear_error();
  end();
}

// ---------------------------------------------------------------- detached

void Session::maybe_detach() {
  SSL* ssl = static_cast<SSL*>(ssl_);
  // A quiet point: the handshake is over, OpenSSL holds no partial record and
  // no decrypted bytes, and everything it wrote went out in whole records.
  // Bytes of a next, partial record may wait in pending_in_: the record
  // layer reads on from there.
  if (!detach_allowed_ || records_ || broken_ || SSL_version(ssl) != TLS1_3_VERSION || !SSL_is_init_finished(ssl) ||
      SSL_has_pending(ssl) || (SSL_get_shutdown(ssl) != 0) || !rx_records_.at_boundary() ||
      !tx_records_.at_boundary())
    return;
  KtlsKeys tx, rx;
  auto layer = std::make_unique<RecordLayer>();
  const EVP_MD* md = SSL_CIPHER_get_handshake_digest(SSL_get_current_cipher(ssl));
  bool ok = derive_keys(tx, rx, true) == Offload::Done &&
            layer->init(tx, rx, md, client_secret_, server_secret_, secret_len_);
  OPENSSL_cleanse(&tx, sizeof tx);
  OPENSSL_cleanse(&rx, sizeof rx);
  OPENSSL_cleanse(client_secret_, sizeof client_secret_);
  OPENSSL_cleanse(server_secret_, sizeof server_secret_);
  detach_allowed_ = false;  // one attempt
  if (!ok) return;          // OpenSSL keeps doing the records
  version_name_ = SSL_get_version(ssl);       // static strings in OpenSSL
  cipher_name_ = SSL_get_cipher_name(ssl);
  cipher_kind_ = cipher_kind();
  records_ = std::move(layer);
  SSL_free(ssl);
  ssl_ = nullptr;
}

// The size of the next record if all of it has arrived, else 0.
size_t Session::next_record_size() const {
  const size_t have = pending_in_.size() + in_.size();
  if (have < RecordLayer::kHeader) return 0;
  uint8_t h[RecordLayer::kHeader];
  const size_t got = pending_in_.peek(h, sizeof h);
  if (got < sizeof h) std::memcpy(h + got, in_.data(), sizeof h - got);
  const size_t body = static_cast<size_t>(h[3]) << 8 | h[4];
  // A length no record may have: OpenSSL may read it all and fail.
  if (body > RecordLayer::kMaxBody) return have;
  return have >= RecordLayer::kHeader + body ? RecordLayer::kHeader + body : 0;
}

// Detaching waits for no idle period: tried (2% fewer instructions for a
// connection that makes one call and closes), but then every connection of
// a burst holds its whole SSL until it goes quiet, and 5,000 idle
// connections cost 11.7 KiB each instead of 9.7 (the allocator keeps the
// burst's high-water mark).
void Session::release_idle_memory() {
  if (records_) records_->release_contexts();
}

bool Session::holds_cipher_contexts() const { return records_ && records_->holds_contexts(); }

namespace {

// The alert RFC 8446 names for each violation; 0 for those answered with
// close_notify (limits) and for the peer's own alert (answered with nothing).
uint8_t alert_for(TlsViolation v) {
  switch (v) {
    case TlsViolation::BadRecordMac: return 20;
    case TlsViolation::RecordOverflow: return 22;
    case TlsViolation::DecodeError: return 50;
    case TlsViolation::UnexpectedMessage:
    case TlsViolation::EmptyRecordFlood: return 10;  // as OpenSSL answers too many empty records
    case TlsViolation::IllegalParameter: return 47;
    default: return 0;
  }
}

uint64_t coarse_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

}  // namespace

const char* to_string(TlsViolation v) {
  switch (v) {
    case TlsViolation::None: return "none";
    case TlsViolation::BadRecordMac: return "bad_record_mac";
    case TlsViolation::DecodeError: return "decode_error";
    case TlsViolation::UnexpectedMessage: return "unexpected_message";
    case TlsViolation::RecordOverflow: return "record_overflow";
    case TlsViolation::IllegalParameter: return "illegal_parameter";
    case TlsViolation::KeyUpdateFlood: return "key_update_flood";
    case TlsViolation::EmptyRecordFlood: return "empty_record_flood";
    case TlsViolation::AeadLimit: return "aead_limit";
    case TlsViolation::PeerAlert: return "peer_alert";
    case TlsViolation::Count: break;
  }
  return "?";
}

Unexpected<Error> Session::fail(TlsViolation v, const char* why, ByteQueue& out) {
  violation_ = v;
  failure_ = why;
  if (!failed_ && v != TlsViolation::PeerAlert) {
    const uint8_t desc = alert_for(v);
    const uint8_t alert[2] = {desc != 0 ? kAlertFatal : kAlertWarning, desc};  // desc 0: close_notify
    (void)write_records(kAlertType, alert, sizeof alert, out);  // best effort: the connection ends either way
  }
  failed_ = true;
  return Unexpected(Error::Protocol);
}

bool Session::advance_sequence_for_test(uint64_t tx, uint64_t rx) {
  if (!records_) return false;
  records_->set_sequence_for_test(tx, rx);
  return true;
}

// The checks on a record's header before its body is read: only
// application_data (every record after the handshake is encrypted; a
// plaintext change_cipher_spec is allowed only before the peer's Finished,
// RFC 8446 5), no longer than 2^14 + 256 bytes (5.2). legacy_record_version
// is ignored, as 5.1 requires. Sets `*len` to the whole record's length.
Result<void> Session::check_header(const uint8_t* h, size_t* len, ByteQueue& out) {
  const size_t body = static_cast<size_t>(h[3]) << 8 | h[4];
  if (h[0] != kApplicationDataType) return fail(TlsViolation::UnexpectedMessage, "unencrypted record after the handshake", out);
  if (body > RecordLayer::kMaxBody) return fail(TlsViolation::RecordOverflow, "record longer than 2^14 + 256 bytes", out);
  *len = RecordLayer::kHeader + body;
  return {};
}

Result<void> Session::read_records(std::span<const uint8_t> in, ByteQueue& out, RawSink sink, void* arg) {
  if (peer_closed_) return Unexpected(Error::Closed);  // data after close_notify is ignored (RFC 8446 6.1)
  if (failed_) return Unexpected(Error::Protocol);
  if (broken_) return Unexpected(Error::Resource);
  uint8_t buf[RecordLayer::kHeader + RecordLayer::kMaxBody];
  size_t len = 0;
  // Whole records straight from the receive buffer, decrypted into `buf`;
  // only a record split across receives waits in pending_in_.
  while (pending_in_.empty() && in.size() >= RecordLayer::kHeader) {
    if (Result<void> h = check_header(in.data(), &len, out); !h) return h;
    if (in.size() < len) break;
    if (Result<void> r = take_record(in.data(), len, buf + RecordLayer::kHeader, out, sink, arg); !r) return r;
    in = in.subspan(len);
  }
  if (!in.empty() && !pending_in_.append(in.data(), in.size())) {
    broken_ = true;
    failure_ = "out of buffer memory";
    return Unexpected(Error::Resource);
  }
  while (pending_in_.size() >= RecordLayer::kHeader) {
    pending_in_.peek(buf, RecordLayer::kHeader);
    if (Result<void> h = check_header(buf, &len, out); !h) return h;
    if (pending_in_.size() < len) break;
    pending_in_.read(buf, len);
    if (Result<void> r = take_record(buf, len, buf + RecordLayer::kHeader, out, sink, arg); !r) return r;
  }
  return after_records(out);
}

// Opens one whole record into `body` and acts on its content.
Result<void> Session::take_record(const uint8_t* rec, size_t len, uint8_t* body, ByteQueue& out, RawSink sink,
                                  void* arg) {
  uint8_t type = 0;
  uint8_t* plain = nullptr;
  size_t n = 0;
  switch (records_->open_into(rec, len, body, &type, &plain, &n)) {
    case RecordLayer::Open::Ok: break;
    case RecordLayer::Open::BadRecordMac:
      return fail(TlsViolation::BadRecordMac, "record does not authenticate (bad_record_mac)", out);
    case RecordLayer::Open::NoContentType:
      return fail(TlsViolation::UnexpectedMessage, "record of padding only (no content type)", out);
    case RecordLayer::Open::Overflow:
      return fail(TlsViolation::RecordOverflow, "record plaintext longer than 2^14 bytes", out);
    case RecordLayer::Open::Exhausted:
      return fail(TlsViolation::AeadLimit, "receive sequence number exhausted", out);
  }
  // A handshake message may span records, but nothing may come between its
  // pieces (RFC 8446 5.1).
  if (hs_len_ > 0 && type != kHandshakeType)
    return fail(TlsViolation::UnexpectedMessage, "handshake message interleaved with another record type", out);
  switch (type) {
    case kApplicationDataType:
      if (n > 0) {
        empty_records_ = 0;
        sink(arg, plain, n);
      } else if (++empty_records_ > kMaxEmptyRecords) {
        return fail(TlsViolation::EmptyRecordFlood, "too many empty records in a row", out);
      }
      break;
    case kAlertType:
      if (n != 2) return fail(TlsViolation::DecodeError, "malformed alert", out);
      if (plain[1] == kCloseNotify) {
        peer_closed_ = true;
        return Unexpected(Error::Closed);  // the caller answers with shutdown()
      }
      {
        const std::string why = "alert " + std::to_string(plain[1]) + " from the peer";
        return fail(TlsViolation::PeerAlert, why.c_str(), out);
      }
    case kHandshakeType:
      if (n == 0) return fail(TlsViolation::UnexpectedMessage, "empty handshake record", out);
      if (Result<void> r = take_handshake_bytes(plain, n, out); !r) return r;
      break;
    default:
      return fail(TlsViolation::UnexpectedMessage, "unknown content type after the handshake", out);
  }
  if (records_->rx_exhausted())
    return fail(TlsViolation::AeadLimit, "the peer's key protected more records than RFC 8446 5.5 allows", out);
  return {};
}

// Post-handshake handshake messages from a client: only KeyUpdate (4.6.3),
// 5 bytes, possibly split across records; it must end its record, since the
// peer's key changes after it (5.1).
Result<void> Session::take_handshake_bytes(const uint8_t* p, size_t n, ByteQueue& out) {
  while (n > 0) {
    if (hs_len_ == 0 && p[0] != kKeyUpdate)
      return fail(TlsViolation::UnexpectedMessage, "handshake message other than KeyUpdate after the handshake", out);
    const size_t take = std::min<size_t>(n, sizeof hs_msg_ - hs_len_);
    std::memcpy(hs_msg_ + hs_len_, p, take);
    hs_len_ = static_cast<uint8_t>(hs_len_ + take);
    p += take;
    n -= take;
    if (hs_len_ >= 4 && (hs_msg_[1] != 0 || hs_msg_[2] != 0 || hs_msg_[3] != 1))
      return fail(TlsViolation::DecodeError, "KeyUpdate whose length is not 1", out);
    if (hs_len_ < sizeof hs_msg_) continue;
    hs_len_ = 0;
    if (n > 0) return fail(TlsViolation::UnexpectedMessage, "bytes after a KeyUpdate in its record", out);
    return take_key_update(hs_msg_[4], out);
  }
  return {};
}

Result<void> Session::take_key_update(uint8_t request, ByteQueue& out) {
  if (request > 1) return fail(TlsViolation::IllegalParameter, "KeyUpdate request neither 0 nor 1", out);
  const uint64_t now = coarse_ms();
  if (now - key_update_window_ms_ >= 1000) {
    key_update_window_ms_ = now;
    key_updates_ = 0;
  }
  if (++key_updates_ > kMaxKeyUpdatesPerSecond)
    return fail(TlsViolation::KeyUpdateFlood, "more KeyUpdates per second than allowed", out);
  if (!records_->update_rx()) {
    failure_ = "KeyUpdate: deriving the next key failed";
    failed_ = true;
    return Unexpected(Error::Resource);
  }
  asked_key_update_ = false;
  // Several requests while we are silent get one answer (4.6.3).
  if (request == 1) owe_key_update_ = true;
  return {};
}

Result<void> Session::send_key_update(bool request, ByteQueue& out) {
  const uint8_t key_update[5] = {kKeyUpdate, 0, 0, 1, static_cast<uint8_t>(request ? 1 : 0)};
  if (Result<void> w = write_records(kHandshakeType, key_update, sizeof key_update, out); !w) return w;
  if (!records_->update_tx()) {
    failure_ = "KeyUpdate: deriving our next key failed";
    failed_ = true;
    return Unexpected(Error::Resource);
  }
  return {};
}

// After a batch of records: the KeyUpdate the peer asked for, or ours when
// its key nears the AEAD limit (asking for its update too).
Result<void> Session::after_records(ByteQueue& out) {
  if (records_->rx_wants_update() && !asked_key_update_) {
    asked_key_update_ = true;
    owe_key_update_ = false;  // any KeyUpdate of ours answers a request
    return send_key_update(true, out);
  }
  if (owe_key_update_) {
    owe_key_update_ = false;
    return send_key_update(false, out);
  }
  return {};
}

// Records are sealed straight into the output queue's last chunk (or a new
// one), sized to the room there: no copy of the plaintext or the record.
Result<void> Session::write_records(uint8_t type, const uint8_t* data, size_t len, ByteQueue& out) {
  constexpr size_t kOverhead = RecordLayer::kHeader + 1 + RecordLayer::kTag;
  constexpr size_t kWorthFilling = 256;  // a smaller remainder starts a new chunk
  while (len > 0) {
    // RFC 8446 5.5: a key retires before it protects too many records.
    if (type == kApplicationDataType && records_->tx_wants_update())
      if (Result<void> u = send_key_update(false, out); !u) return u;
    size_t room = out.tail_room();
    if (room < kOverhead + std::min(len, kWorthFilling)) room = Chunk::kCapacity;
    const size_t n = std::min({len, RecordLayer::kMaxPlain, room - kOverhead});
    uint8_t* dst = out.reserve(kOverhead + n);
    if (dst == nullptr) {
      failure_ = "out of buffer memory";
      return Unexpected(Error::Resource);
    }
    const size_t m = records_->seal(type, data, n, dst);
    if (m == 0) {
      failure_ = "record encryption failed";
      return Unexpected(Error::Resource);
    }
    out.commit(m);
    data += n;
    len -= n;
  }
  return {};
}

}  // namespace tlsgate::tls
