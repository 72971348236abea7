// TLS termination in userspace over bytes the ring delivered. OpenSSL is used
// only in src/tls/.
//
// A Session never touches a socket: received ciphertext is handed to
// handshake()/read() as a span, and every record OpenSSL produces is appended
// to the connection's output ByteQueue by a custom BIO. Bytes of a span that
// OpenSSL did not consume are kept in the session's own pending queue, so the
// caller may recycle its receive buffer as soon as the call returns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "tlsgate/buffer.hh"
#include "tlsgate/config.hh"
#include "tlsgate/ktls.hh"
#include "tlsgate/result.hh"

namespace tlsgate::tls {

class RecordLayer;

// Process-wide OpenSSL set-up: routes OpenSSL's allocations to mimalloc (when
// built with it). Call once, first thing in main(), before any other thread.
void init_library();
// The OpenSSL 3.0 workarounds (meson option openssl_3_0_workarounds, off by
// default): whether they are compiled in, whether they answer calls in this
// process, and if not, why.
struct WorkaroundState {
  bool compiled = false;
  bool active = false;
  std::string inactive_reason;
};
WorkaroundState workaround_state();
#ifdef TLSGATE_OPENSSL_WORKAROUNDS
// Algorithm fetches answered from this thread's cache (workarounds.cc).
uint64_t fetch_cache_hits();
// Key manager name lists answered from this thread's cache (workarounds.cc).
uint64_t names_cache_hits();
#endif

enum class Alpn { None, H2, Http11 };
const char* to_string(Alpn a);

// One SSL_CTX, made per shard from validated settings (objects stay
// shard-local). Throws std::runtime_error naming the key (Origin) whose file
// OpenSSL refused.
class Context {
 public:
  // Every session records its TLS 1.3 traffic secrets and record counts.
  // With `ktls`, that is for kernel offload; without, a TLS 1.3 session
  // frees its OpenSSL objects after the handshake and protects records
  // itself (Session::detached()).
  explicit Context(const config::TlsSettings& settings, bool ktls = false);
  // Client side, towards backends: verifies the peer against settings.ca,
  // offers ALPN h2, presents the client certificate if configured.
  explicit Context(const config::UpstreamTls& settings);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  // The default context (a server's first certificate).
  void* native() const { return ctx_; }
  // Server: the context whose certificates carry `server_name` (exact, or a
  // wildcard for its first label; any case), else the default one.
  void* context_for(std::string_view server_name) const;
  // Server: SSL_CTXs made (one per group of certificates serving the same
  // names); 1 for a client context.
  size_t contexts() const;
  // Server: what the operator should hear about its certificates (expired,
  // unreachable) and their OCSP responses (not stapled, revoked), for
  // start-up, --check-config and reloads.
  const std::vector<std::string>& warnings() const;
  struct Server;
  bool detach() const { return detach_; }
  // Whether its sessions may leave OpenSSL after the handshake (kTLS or the
  // detached record layer), which needs their traffic secrets kept current.
  bool leaves_openssl() const { return detach_ || ktls_; }

 private:
  void* make_server_ctx(const config::TlsSettings& settings);
  void* ctx_ = nullptr;  // SSL_CTX*
  std::unique_ptr<Server> server_;
  bool detach_ = false;
  bool ktls_ = false;
};

enum class HandshakeState { InProgress, Done, Failed };

// The host_name of the server_name extension of the ClientHello that starts
// `record` (a whole TLS record as received), or "" when there is none or the
// record cannot be read as one (client_hello.cc).
std::string_view server_name_of(std::span<const uint8_t> record);

// Why tlsgate's own record layer (a detached TLS 1.3 session) ended a
// connection; each is counted by the shard. The first five are the peer's
// protocol errors, answered with the RFC 8446 alert of the same name; an
// empty-record flood gets unexpected_message (as from OpenSSL); KeyUpdate
// floods and the AEAD limit get close_notify.
// Why a server handshake failed, from OpenSSL's reason (for metrics).
enum class HandshakeFailure : uint8_t {
  Other,
  NotTls,          // plain HTTP or other bytes that are no TLS record
  Version,         // no protocol version both sides allow
  NoSharedCipher,  // no cipher suite, group or signature both sides allow
  NoAlpn,          // the client offered ALPN without h2 or http/1.1
  PeerAlert,       // the client ended it with an alert (e.g. it does not trust the certificate)
  ClientCertificate,  // client_ca: no client certificate where required, or one that does not verify
  Count,
};
const char* to_string(HandshakeFailure f);

enum class TlsViolation : uint8_t {
  None,
  BadRecordMac,       // a record does not authenticate (bad tag, replayed, too short)
  DecodeError,        // a malformed alert or KeyUpdate
  UnexpectedMessage,  // a record or message not allowed after the handshake
  RecordOverflow,     // a record longer than TLS allows
  IllegalParameter,   // a KeyUpdate request other than 0 or 1
  KeyUpdateFlood,     // more KeyUpdates per second than kMaxKeyUpdatesPerSecond
  EmptyRecordFlood,   // more consecutive empty records than kMaxEmptyRecords
  AeadLimit,          // the peer's key protected more records than RFC 8446 5.5 allows
  PeerAlert,          // the peer sent a fatal alert (nothing is sent back)
  Count,
};
const char* to_string(TlsViolation v);

// Counts whole TLS records in a byte stream (header + body), for the record
// sequence numbers kernel TLS must start from.
struct RecordCounter {
  uint64_t total = 0;      // complete records
  uint64_t since_ccs = 0;  // complete records after the last ChangeCipherSpec
  void feed(const uint8_t* p, size_t n);
  bool at_boundary() const { return header_len_ == 0 && body_left_ == 0; }

 private:
  uint8_t header_[5] = {};
  uint8_t header_len_ = 0;
  uint32_t body_left_ = 0;
};
const char* to_string(HandshakeState s);

// Whom a client session expects to talk to: the name (or IP address) the
// backend's certificate must carry. A name is also sent as SNI.
struct Peer {
  std::string name;
  bool is_ip = false;
};

class Session {
 public:
  // Server side (a client connection).
  Session(Context& ctx, ChunkPool& pool);
  // Client side (a backend connection): handshake() with no input produces
  // the ClientHello.
  Session(Context& ctx, ChunkPool& pool, const Peer& peer);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Drives the handshake with newly received bytes (may be empty).
  // Records to send are appended to `out`.
  HandshakeState handshake(std::span<const uint8_t> in, ByteQueue& out);
  Alpn alpn() const { return alpn_; }
  const char* version() const;
  const char* cipher() const;
  // The handshake resumed a session (a ticket or a session id).
  bool resumed() const { return resumed_; }
  // The client asked for a server name no certificate carries (and got the
  // default certificate).
  bool unknown_server_name() const { return unknown_server_name_; }
  void note_unknown_server_name() { unknown_server_name_ = true; }
  // OCSP (the client asked, its certificate has an ocsp_response): stapled,
  // or withheld because the response passed its nextUpdate while running.
  enum class Ocsp : uint8_t { NotAsked, Stapled, Stale };
  Ocsp ocsp() const { return ocsp_; }
  void note_ocsp(Ocsp o) { ocsp_ = o; }
  // Why the handshake failed, for the log (OpenSSL's reason string).
  const std::string& failure() const { return failure_; }
  HandshakeFailure handshake_failure() const { return handshake_failure_; }
  // mTLS ([listeners.tls] client_ca): the x-forwarded-client-cert value for
  // the client certificate the handshake verified (Envoy's format, made once
  // when the handshake is done, resumed sessions included); empty without one.
  const std::string& client_cert_header() const { return client_cert_header_; }
  // Moves it out (to the connection's HTTP/2 session), leaving it empty.
  std::string take_client_cert_header() { return std::move(client_cert_header_); }
  // Why the detached record layer ended the session (None otherwise).
  TlsViolation violation() const { return violation_; }

  // Limits of the detached record layer on what a peer may make it do.
  static constexpr uint32_t kMaxKeyUpdatesPerSecond = 8;
  static constexpr uint32_t kMaxEmptyRecords = 32;  // in a row, as OpenSSL's limit

  // Decrypts: feeds `in` (may be empty) and calls `sink(data, len)` for every
  // plaintext piece. Returns Closed on close_notify, Protocol on a bad record.
  // Records OpenSSL must send in reply (alerts, tickets) go to `out`.
  template <typename Sink>
  Result<void> read(std::span<const uint8_t> in, ByteQueue& out, Sink&& sink);

  // TLS 1.3 without kernel TLS: after the handshake, at the first quiet point
  // (no partial record held), the session derives its record keys, frees its
  // OpenSSL objects (about 12 KB of an idle connection's 15) and from then on
  // seals and opens records itself; read/write/shutdown work as before.
  bool detached() const { return records_ != nullptr; }
  // For a connection that has gone quiet: a detached session frees its two
  // cipher contexts (~2 KB) until the next record, which makes them again
  // from the traffic secrets the session keeps. No-op otherwise.
  void release_idle_memory();
  // Whether a detached session holds cipher contexts now (for tests and stats).
  bool holds_cipher_contexts() const;
  // For tests of the AEAD limits: sets a detached session's next send and
  // receive record sequence numbers. False if the session is not detached.
  bool advance_sequence_for_test(uint64_t tx, uint64_t rx);

  // Encrypts all of `data` into records appended to `out`.
  Result<void> write(const uint8_t* data, size_t len, ByteQueue& out);
  // Appends a close_notify alert to `out`.
  void shutdown(ByteQueue& out);

  // kTLS. Non-zero while received bytes do not end on a record boundary:
  // bytes OpenSSL has not read yet, or a partial record it holds in its own
  // buffer (counted as 1). Offload must wait until this is 0.
  size_t pending_input() const { return pending_in_.size() + (rx_records_.at_boundary() ? 0 : 1); }
  // Installs TX and RX keys on `fd` with the exact record sequence numbers.
  // Preconditions: handshake done, every byte OpenSSL wrote has been sent,
  // pending_input() == 0, and no receive on `fd` in flight.
  Offload offload(int fd);
  // The keys and sequence numbers offload() installs (same preconditions).
  // Returns Unsupported / Failed like offload(), Done when filled.
  Offload derive_ktls(KtlsKeys& tx, KtlsKeys& rx) const;
  KtlsCipher cipher_kind() const;
  bool is_tls13() const;

 private:
  Result<size_t> read_some(uint8_t* buf, size_t cap);
  void begin(std::span<const uint8_t> in, ByteQueue& out);
  void end();
  void maybe_detach();
  size_t next_record_size() const;
  Offload derive_keys(KtlsKeys& tx, KtlsKeys& rx, bool queued_ok) const;
  using RawSink = void (*)(void* arg, const uint8_t* data, size_t len);
  Result<void> read_records(std::span<const uint8_t> in, ByteQueue& out, RawSink sink, void* arg);
  Result<void> take_record(const uint8_t* rec, size_t len, uint8_t* body, ByteQueue& out, RawSink sink, void* arg);
  Result<void> write_records(uint8_t type, const uint8_t* data, size_t len, ByteQueue& out);
  Result<void> check_header(const uint8_t* h, size_t* len, ByteQueue& out);
  Result<void> take_handshake_bytes(const uint8_t* p, size_t n, ByteQueue& out);
  Result<void> take_key_update(uint8_t request, ByteQueue& out);
  Result<void> send_key_update(bool request, ByteQueue& out);
  Result<void> after_records(ByteQueue& out);
  // Ends the session for `v`: sends the alert RFC 8446 names for it (fatal)
  // or close_notify for a limit, none for the peer's own alert. Returns the
  // error read() reports.
  Unexpected<Error> fail(TlsViolation v, const char* why, ByteQueue& out);

  friend struct BioAccess;
  friend struct KeyLog;
  friend struct MsgWatch;
  bool gather_first_record(std::span<const uint8_t> in);
  bool make_server_ssl();

  void* ssl_ = nullptr;  // SSL*
  // Server side: the listener's context, for the SSL object made once the
  // client's first record (its ClientHello) is whole; until then its bytes
  // wait in hello_, which holds no more than what arrived.
  Context* server_ctx_ = nullptr;
  std::vector<uint8_t> hello_;
  ByteQueue pending_in_;
  std::span<const uint8_t> in_;
  ByteQueue* out_ = nullptr;
  Alpn alpn_ = Alpn::None;
  bool broken_ = false;  // received bytes were lost (pool exhausted)
  bool detach_allowed_ = false;
  // After the handshake of a session that may detach, the BIO hands OpenSSL
  // whole records only: a partial one waits in pending_in_, so OpenSSL is at
  // a record boundary after every read and the session can leave it even
  // while the client never pauses.
  bool whole_records_ = false;
  uint32_t gate_left_ = 0;  // bytes of the current whole record OpenSSL may still read
  std::unique_ptr<RecordLayer> records_;  // set once detached; ssl_ is null then
  // What the OpenSSL objects answered, kept for after they are freed.
  const char* version_name_ = "";
  const char* cipher_name_ = "";
  bool resumed_ = false;
  bool unknown_server_name_ = false;
  Ocsp ocsp_ = Ocsp::NotAsked;
  HandshakeFailure handshake_failure_ = HandshakeFailure::Other;
  KtlsCipher cipher_kind_ = KtlsCipher::Unknown;
  // kTLS bookkeeping.
  RecordCounter tx_records_;
  RecordCounter rx_records_;
  uint64_t tx_at_final_call_ = 0;  // TLS 1.3: records written before the call that finished
  uint64_t rx_at_done_ = 0;        // TLS 1.3: records read when the handshake finished
  uint8_t client_secret_[64] = {};
  uint8_t server_secret_[64] = {};
  uint8_t secret_len_ = 0;
  bool secrets_stale_ = false;  // OpenSSL handled a KeyUpdate: the secrets above are out of date
  // Detached record layer: a post-handshake handshake message arriving in
  // pieces (only KeyUpdate, 5 bytes, is accepted), and what the peer did.
  uint8_t hs_msg_[5] = {};
  uint8_t hs_len_ = 0;
  bool owe_key_update_ = false;    // the peer asked; answered once after this batch of records
  bool asked_key_update_ = false;  // we asked (AEAD limit), until the peer's KeyUpdate arrives
  bool failed_ = false;            // an alert was sent or received: no more records either way
  bool peer_closed_ = false;       // close_notify received: later records are ignored
  uint32_t empty_records_ = 0;     // empty application-data records in a row
  uint32_t key_updates_ = 0;       // received in the window that began at key_update_window_ms_
  uint64_t key_update_window_ms_ = 0;
  TlsViolation violation_ = TlsViolation::None;
  std::string failure_;
  std::string client_cert_header_;
};

template <typename Sink>
Result<void> Session::read(std::span<const uint8_t> in, ByteQueue& out, Sink&& sink) {
  if (records_) {
    return read_records(
        in, out,
        [](void* arg, const uint8_t* p, size_t n) { (*static_cast<std::remove_reference_t<Sink>*>(arg))(p, n); },
        &sink);
  }
  begin(in, out);
  uint8_t buf[16384];
  for (;;) {
    Result<size_t> r = read_some(buf, sizeof buf);
    if (!r) {
      end();
      if (r.error() == Error::WouldBlock) {
        maybe_detach();
        return {};
      }
      return Unexpected(r.error());
    }
    sink(buf, *r);
  }
}

}  // namespace tlsgate::tls
