// A shard: one pinned thread with its own io_uring, listening sockets,
// connections, upstream pools and counters. Nothing in it is shared with
// another shard; the main thread talks to it only through stop(),
// update_dns() and adopt().
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "tlsgate/config.hh"
#include "tlsgate/histogram.hh"
#include "tlsgate/ktls.hh"
#include "tlsgate/tls.hh"

namespace tlsgate::h2 {
struct Counters;
}
namespace tlsgate::upstream {
struct Counters;
}
namespace tlsgate::accesslog {
class Buffer;
}

namespace tlsgate::shard {

struct Counters {
  uint64_t accepted = 0;
  uint64_t handshakes = 0;
  uint64_t handshake_failures = 0;
  // By tls::HandshakeFailure (not on the stopped: line; /metrics shows them).
  uint64_t handshake_failure_reasons[static_cast<int>(tls::HandshakeFailure::Count)] = {};
  uint64_t handshake_timeouts = 0;
  uint64_t client_certificates = 0;  // handshakes that verified a client certificate (client_ca)
  uint64_t http1_rejected = 0;
  uint64_t idle_closed = 0;
  uint64_t downstream_protocol_errors = 0;
  uint64_t upstream_connects = 0;
  uint64_t upstream_connect_failures = 0;
  uint64_t upstream_lost = 0;
  uint64_t streams_forwarded = 0;
  uint64_t streams_responded = 0;
  uint64_t streams_unavailable = 0;
  uint64_t streams_reset_by_client = 0;
  uint64_t streams_reset_by_upstream = 0;
  uint64_t header_limit_resets = 0;
  uint64_t deadline_exceeded = 0;            // streams answered grpc-status 4 by the gateway
  uint64_t retries = 0;                      // streams sent again after the backend never processed them
  uint64_t circuit_breaker_streams = 0;      // refused: cluster's max_pending_streams reached
  uint64_t circuit_breaker_connections = 0;  // refused: cluster's max_connections reached
  uint64_t no_healthy_endpoint = 0;          // refused: no usable endpoint
  uint64_t endpoints_ejected = 0;            // passive outlier ejections
  uint64_t endpoints_ejection_refused = 0;   // ejections max_ejection_percent held back
  uint64_t health_check_failures = 0;
  uint64_t health_checks_passed = 0;
  uint64_t upstream_idle_closed = 0;
  uint64_t upstream_keepalive_timeouts = 0;
  uint64_t dns_updates = 0;                  // endpoint sets changed by re-resolution
  uint64_t proxy_headers = 0;                // PROXY protocol headers accepted (v1 or v2)
  uint64_t proxy_errors = 0;                 // connections closed for a bad PROXY header
  // HTTP/2 abuse from clients (h2::Counters, src/h2/README.md "Budgets").
  uint64_t h2_glitch_empty_data = 0;
  uint64_t h2_glitch_priority = 0;
  uint64_t h2_glitch_unknown_frames = 0;
  uint64_t h2_glitch_pings = 0;
  uint64_t h2_glitch_settings = 0;
  uint64_t h2_glitch_window_updates = 0;
  uint64_t h2_glitch_invalid_frames = 0;   // stream or connection errors nghttp2 answered
  uint64_t h2_glitch_stale_resets = 0;     // RST_STREAM for streams already closed
  uint64_t h2_streams_cancelled = 0;       // reset while their backend stream was open
  uint64_t h2_closed_glitch_budget = 0;    // GOAWAY ENHANCE_YOUR_CALM
  uint64_t h2_closed_reset_budget = 0;     // GOAWAY ENHANCE_YOUR_CALM (rapid reset, MadeYouReset)
  uint64_t h2_closed_shard_reset_budget = 0;  // GOAWAY ENHANCE_YOUR_CALM (rapid reset across reconnects)
  uint64_t h2_closed_flood = 0;            // GOAWAY ENHANCE_YOUR_CALM (nghttp2's ACK / CONTINUATION limits)
  uint64_t h2_closed_bad_preface = 0;      // GOAWAY PROTOCOL_ERROR
  uint64_t tls_userspace = 0;  // connections whose record crypto stays in userspace
  uint64_t tls_unknown_server_name = 0;  // handshakes naming a server no certificate carries (default one sent)
  uint64_t tls_ocsp_stapled = 0;  // handshakes given their certificate's OCSP response (the client asked)
  uint64_t tls_ocsp_stale = 0;    // the client asked, the response had passed its nextUpdate: none sent
  // kTLS: offloaded connections by [tls 1.2, tls 1.3][aes128gcm, aes256gcm, chacha20].
  uint64_t ktls_offloaded[2][3] = {};
  uint64_t ktls_unsupported_cipher = 0;  // kept in userspace: the kernel cannot offload the cipher
  uint64_t ktls_failed = 0;              // setsockopt refused: kept in userspace
  uint64_t ktls_close_notify = 0;        // clean closes seen as control records
  uint64_t ktls_alerts = 0;              // other alerts received
  uint64_t ktls_key_update_closed = 0;   // KeyUpdate: the kernel cannot rekey; closed cleanly
  uint64_t ktls_unexpected_records = 0;  // other handshake or change_cipher_spec records: unexpected_message, closed
  // tlsgate's record layer ended a connection, by tls::TlsViolation; [None]:
  // a record error found by OpenSSL's record layer (TLS 1.2, record_layer = "openssl").
  uint64_t tls_violations[static_cast<int>(tls::TlsViolation::Count)] = {};
  // Memory and descriptor limits (issue 16).
  uint64_t body_buffer_resets = 0;    // streams reset: body bytes the shard's body pool could not hold
  uint64_t accept_paused = 0;         // accepting paused: a listener's max_connections reached
  uint64_t send_stalled_closed = 0;   // clients closed: not reading while the I/O pool was full
  uint64_t fd_exhausted = 0;          // accept or upstream connect failed with EMFILE/ENFILE
  uint64_t drain_cut_connections = 0; // closed by the drain's end ([drain] timeout, second SIGTERM) with streams running
  // Connection age and keepalive (issue 18; the listener's keys).
  uint64_t keepalive_pings = 0;       // PINGs sent to clients quiet for keepalive_interval
  uint64_t keepalive_timeouts = 0;    // clients closed: nothing received within keepalive_timeout of the PING
  uint64_t max_age_goaways = 0;       // connections sent the two-step GOAWAY at max_connection_age
  uint64_t max_age_grace_closed = 0;  // closed with streams still open max_connection_age_grace after it
  // The access log (issue 18): lines put in the shard's buffer, and lines
  // dropped because the writer had not taken the buffer yet.
  uint64_t access_log_lines = 0;
  uint64_t access_log_dropped = 0;
  std::string describe() const;
  void add(const Counters& o);
  // The modules' own counts, copied in when the shard stops.
  void take(const h2::Counters& h);
  void take(const upstream::Counters& u);
};

// Why a client connection closed (tlsgate_connections_closed_total's
// `reason`).
enum class CloseReason : uint8_t {
  Client,            // the client closed (or the connection ended normally)
  Idle,              // the listener's idle_timeout
  HandshakeTimeout,  // no PROXY header or TLS handshake within handshake_timeout
  HandshakeFailed,
  ProxyProtocol,     // a bad PROXY header
  Http1,             // ALPN was not h2: answered 426
  ProtocolError,     // HTTP/2 errors and abuse (GOAWAY sent)
  TlsError,          // alerts, record violations, records kTLS cannot take
  Drain,             // the gateway stopped
  SendStalled,       // not reading while the I/O pool was full
  SocketError,       // a socket call failed, or no buffer for the PROXY header
  KeepaliveTimeout,  // nothing received within keepalive_timeout of a PING
  MaxConnectionAge,  // the age GOAWAY (then its streams finished, or the grace cut them)
  Count,
};
const char* to_string(CloseReason r);

// What /metrics shows of one shard, copied on the shard (Shard::collect).
struct Stats {
  struct Listener {
    uint64_t accepted = 0;
    uint64_t open = 0;  // client connections (a gauge)
    uint64_t closed[static_cast<int>(CloseReason::Count)] = {};
    Histogram handshake;  // from accept to the end of the TLS handshake
  };
  // Completed handshakes of one kind. `version` and `cipher` are OpenSSL's
  // static names.
  struct Handshakes {
    uint32_t listener = 0;
    const char* version = "";
    const char* cipher = "";
    bool resumed = false;
    bool ktls = false;  // record crypto in the kernel (else userspace)
    uint64_t count = 0;
  };
  struct Endpoint {
    std::string address;
    const char* state = "";
    uint64_t connections = 0;
    uint64_t streams = 0;
    uint64_t failures = 0;
    uint64_t ejections = 0;
  };
  struct Cluster {
    std::string name;
    uint64_t pending = 0;      // streams on its connections (a gauge)
    uint64_t connections = 0;  // open or opening (a gauge)
    uint64_t streams = 0;
    std::vector<Endpoint> endpoints;
  };
  // Client streams by grpc-status: columns 0..16, then other codes, then
  // none (reset, or an answer without grpc-status).
  static constexpr size_t kStatusOther = 17;
  static constexpr size_t kStatusNone = 18;
  static constexpr size_t kStatusColumns = 19;
  struct Streams {
    uint32_t listener = 0;
    std::string cluster;  // "none": refused before a cluster was chosen
    uint64_t by_status[kStatusColumns] = {};
  };
  struct Durations {
    std::string cluster;
    Histogram duration;  // from the request's HEADERS to the stream's end
  };
  unsigned shard = 0;
  uint64_t cpu_ns = 0;  // the shard thread's CPU time
  Counters counters;    // with the h2 and upstream modules' own counts taken in
  std::vector<Listener> listeners;    // by configuration listener index
  std::vector<Handshakes> handshakes;
  std::vector<Cluster> clusters;      // by pool id (clusters gone from the configuration too)
  std::vector<Streams> streams;
  std::vector<Durations> stream_durations;
  uint64_t streams_active = 0;
  uint64_t upstream_connections = 0;
  uint64_t io_pool_bytes = 0;    // connection I/O chunks in use
  uint64_t body_pool_bytes = 0;  // stream body chunks in use
};

class Shard {
 public:
  // `listen_fds[i]` is this shard's SO_REUSEPORT socket for
  // config.listeners[i]; the shard owns and closes them. Throws on a set-up
  // failure (io_uring refused, TLS context), with a message saying what.
  // `access_log`: this shard's buffer of the process's accesslog::Writer
  // (which outlives the shard), or null for none.
  Shard(unsigned id, std::shared_ptr<const config::Config> config, std::vector<int> listen_fds,
        const tls::KtlsSupport& ktls, accesslog::Buffer* access_log = nullptr);
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  // Serves until stop() and the drain that follows are over.
  void run();
  // Thread-safe: asks the shard to drain and return from run(): listeners
  // closed, the two-step GOAWAY on every client connection, streams given
  // [drain] timeout.
  void stop();
  // Thread-safe: ends the drain now (a second SIGTERM): every connection
  // closes.
  void stop_now();
  // Thread-safe: the addresses of clusters[cluster].dns_names[name] changed.
  // The shard adopts them at its next timer tick: new addresses join, gone
  // ones drain (no new streams; running ones finish).
  void update_dns(uint32_t cluster, uint32_t name, std::vector<config::SocketAddress> addrs);
  // Thread-safe: a new configuration (same listeners). The shard adopts it
  // at its next timer tick: new connections start with it, running ones
  // keep theirs to their end (include/tlsgate/snapshot.hh). DNS answers
  // queued before it are dropped (they use the old cluster indices): stop
  // the old DnsWatcher first and start one for the new configuration after.
  void adopt(std::shared_ptr<const config::Config> config);
  // Thread-safe: the shard's counters and gauges, copied on the shard at
  // its next tick (within ~100 ms); after run() returned, its last ones.
  std::future<Stats> collect();
  // Valid after run() returned.
  const Counters& counters() const;
  std::string ring_features() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tlsgate::shard
