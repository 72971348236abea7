// A shard: one pinned thread with its own io_uring, listening sockets,
// connections, upstream pools and counters. Nothing in it is shared with
// another shard; the main thread talks to it only through stop(),
// update_dns() and adopt().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tlsgate/config.hh"
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
  uint64_t handshake_timeouts = 0;
  uint64_t http1_rejected = 0;
  uint64_t idle_closed = 0;
  uint64_t downstream_protocol_errors = 0;
  uint64_t upstream_connects = 0;
  uint64_t upstream_connect_failures = 0;
  uint64_t upstream_lost = 0;
  uint64_t streams_forwarded = 0;
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
  // Valid after run() returned.
  const Counters& counters() const;
  std::string ring_features() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tlsgate::shard
