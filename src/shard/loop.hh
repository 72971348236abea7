// Private to src/shard: the loop and the connection objects it owns.
//
//   loop.cc               submissions, completions, the tick, end of turn,
//                         accept, stop and drain, memory and fd pressure
//   client_connection.cc  PROXY → TLS → ALPN → h2 | 426, kTLS hand-off and
//                         control records, flush, close
//   upstream_connection.cc connect, upstream TLS, h2 to the backend; the
//                         upstream::Transport the cluster manager uses
//   snapshot.cc           the configuration as this shard runs it
//   counters.cc           Counters::describe / add
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "tlsgate/access_log.hh"
#include "tlsgate/buffer.hh"
#include "tlsgate/cluster_manager.hh"
#include "tlsgate/edge.hh"
#include "tlsgate/h2.hh"
#include "tlsgate/io.hh"
#include "tlsgate/shard.hh"
#include "tlsgate/snapshot.hh"
#include "tlsgate/timer.hh"
#include "tlsgate/tls.hh"

namespace tlsgate::shard {

inline constexpr unsigned kRingEntries = 1024;
inline constexpr unsigned kRecvBuffers = 512;
inline constexpr unsigned kRecvBufferSize = 16 * 1024;
inline constexpr uint64_t kTickMs = 100;
// A send to a client that has not completed for this long, while the I/O
// pool is full, marks a client that stopped reading (see relieve_chunk_pool).
inline constexpr uint64_t kSendStallMs = 1000;
// The two-step GOAWAY's PING: the final GOAWAY goes this long after the
// first even without its ACK.
inline constexpr uint64_t kDrainAckWaitMs = 1000;
// Shard::stop_now() adds this to the stop eventfd's counter.
inline constexpr uint64_t kStopNow = 1u << 20;
inline constexpr size_t kProduceBudget = 256 * 1024;
inline constexpr size_t kOutputHighWater = 1 << 20;  // stop producing above this
inline constexpr int kSendIovecs = 16;
// Out of file descriptors: accepting stops this long (the listen backlog
// holds new clients meanwhile) instead of retrying every tick, and the
// warning is one line a second with a count.
inline constexpr uint64_t kFdPauseMs = 250;
inline constexpr uint64_t kWarnIntervalMs = 1000;
// A multishot accept may take the whole listen backlog (main.cc: 4096) in
// one entry into the kernel, before a cancel can reach it.
inline constexpr uint32_t kAcceptBatch = 4096;

// user_data: | op:8 | generation:24 | slot:32 |
enum class Op : uint8_t { Accept = 1, DownRecv, DownSend, UpRecv, UpSend, UpConnect, Tick, Stop, Ignore, RespondTimer };

constexpr uint64_t pack(Op op, uint32_t gen, uint32_t slot) {
  return (static_cast<uint64_t>(op) << 56) | (static_cast<uint64_t>(gen & 0xffffff) << 32) | slot;
}
constexpr Op op_of(uint64_t ud) { return static_cast<Op>(ud >> 56); }
constexpr uint32_t gen_of(uint64_t ud) { return static_cast<uint32_t>(ud >> 32) & 0xffffff; }
constexpr uint32_t slot_of(uint64_t ud) { return static_cast<uint32_t>(ud); }

uint64_t clock_ms();

// "203.0.113.7:50051" / "[2001:db8::1]:50051" into `out` (kAddressText
// bytes hold any): endpoints of one DNS name share their config text (the
// name), so metrics and the access log name them by address.
inline constexpr size_t kAddressText = 64;
std::string_view numeric_address(const config::SocketAddress& a, char* out, size_t cap);

// A warning that repeats is logged at most once per kWarnIntervalMs, saying
// how many times it happened since the last line.
struct RepeatedWarning {
  uint64_t last_ms = 0;
  uint64_t pending = 0;  // occurrences not yet reported
  bool ever = false;

  // Counts one occurrence; true when a line is due now (take() says how many).
  bool note(uint64_t now, uint64_t n = 1) {
    pending += n;
    return !ever || now - last_ms >= kWarnIntervalMs;
  }
  // For the tick: occurrences left unreported whose second has passed.
  bool overdue(uint64_t now) const { return pending > 0 && now - last_ms >= kWarnIntervalMs; }
  uint64_t take(uint64_t now) {
    ever = true;
    last_ms = now;
    return std::exchange(pending, 0);
  }
};

struct Loop;

// What a receive completion holds for its connection (Loop::take_recv).
enum class RecvResult {
  Bytes,    // bytes to take; the caller recycles the buffer
  Handled,  // nothing for the connection (closing, or the buffer ring ran dry)
  Failed,   // the peer closed or the receive failed: c.res says why
};

// State every connection has: socket, output queue, in-flight accounting.
struct Conn : h2::Owner {
  Loop* loop = nullptr;
  uint32_t slot = 0;
  uint32_t gen = 0;
  bool down = false;           // a ClientConnection (else an UpstreamConnection)
  int fd = -1;
  unsigned inflight = 0;       // submissions that still refer to this object
  bool recv_armed = false;
  bool send_inflight = false;
  bool dirty = false;
  bool closing = false;        // no new work; freed when inflight == 0
  bool close_after_flush = false;
  uint64_t send_since_ms = 0;  // when the send in flight was submitted
  ByteQueue out;               // bytes to send, ciphertext (down) or h2c (up)
  ByteQueue plain;             // nghttp2's output before encryption
  msghdr msg{};
  iovec iov[kSendIovecs]{};
  // Handshake, idle or linger timer (client connections).
  struct Timer : TimerLink {
    Conn* owner;
  } timer{{}, this};

  void wake() override;
  void idle() override;
};

// ------------------------------------------------------------ client side

enum class DownState { Proxy, Handshake, H2, Http1, Lingering, Closed };
const char* to_string(DownState s);
enum class KtlsState { Off, Pending, On };

// A listening socket of this shard and what its connections share.
struct ListenerRt {
  uint32_t index = 0;
  int fd = -1;
  TimerList handshake_timers;  // PROXY header and TLS handshake, then linger
  TimerList idle_timers;
  // keepalive_interval: connections armed at their last receive (lazily:
  // see ClientConnection::keepalive_due); keepalive_timeout: PINGs unanswered.
  TimerList keepalive_timers;
  TimerList keepalive_acks;
  bool accepting = false;
  uint32_t max_connections = 0;
  uint32_t connections = 0;  // client connections of this listener in this shard, until their fd is closed
  bool full = false;         // accepting paused at max_connections (counted once per pause)
  // For /metrics (Stats::Listener).
  uint64_t accepted = 0;
  uint64_t closed[static_cast<int>(CloseReason::Count)] = {};
  Histogram handshake;
  // This shard's budget of streams cancelled on connections that completed
  // fewer than they cancelled (src/h2/README.md, "Budgets"): what rapid reset
  // across reconnects spends.
  std::unique_ptr<h2::Budget> unearned_resets;
};

struct ClientConnection final : Conn {
  ListenerRt* listener = nullptr;
  // The configuration the connection started with, kept to its end.
  std::shared_ptr<const Snapshot> snapshot;
  const Snapshot::Listener* settings = nullptr;  // in `snapshot`
  DownState state = DownState::Handshake;
  KtlsState ktls = KtlsState::Off;
  std::unique_ptr<tls::Session> tls;
  std::unique_ptr<h2::DownstreamSession> h2;
  // The socket's peer, replaced by the PROXY header's source when it has one.
  std::string client_ip;
  // Keepalive (the listener's keepalive_interval): the receive path only
  // stores the time; the timer is moved when it expires, not per receive.
  Timer keepalive_timer{{}, this};
  uint64_t last_recv_ms = 0;  // bytes from the client, HTTP/2 state
  uint64_t ping_sent_ms = 0;  // the keepalive PING waiting for an answer
  // max_connection_age: the next step's time, in the loop's `ages`.
  enum class Age : uint8_t { Young, AckWait, Grace, Done };
  Age age = Age::Young;
  struct AgeTimer : HeapLink {
    ClientConnection* owner;
  } age_timer{{}, this};
  uint64_t accepted_ms = 0;
  uint64_t age_goaway_ms = 0;
  uint16_t client_port = 0;
  // State Proxy only: the header bytes received so far, when one receive did
  // not hold the whole header (at most edge::kProxyMaxHeader bytes; a chunk
  // of the shard's pool, given back when the header is done or on close).
  Chunk* proxy_buf = nullptr;
  // For /metrics: when it was accepted, what its handshake was, why it closes.
  uint64_t accepted_us = 0;
  const char* tls_version = nullptr;  // set when the handshake is done
  const char* tls_cipher = nullptr;
  bool tls_resumed = false;
  bool handshake_counted = false;     // in Loop::handshake_kinds (once its record layer is known)
  CloseReason close_reason = CloseReason::Client;

  // Its session reports its streams' ends while it is destroyed: first,
  // while the members stream_ended() reads are alive.
  ~ClientConnection() { h2.reset(); }

  void start(const io::Completion& accepted);
  // The first reason other than Client names why the connection closes.
  void mark(CloseReason r) {
    if (close_reason == CloseReason::Client) close_reason = r;
  }
  void on_recv(const io::Completion& c);
  void flush();
  void close(const char* why);
  // h2::Owner: the end-of-stream record (the access log, the metrics).
  void stream_ended(const h2::StreamEnd& e) override;
  // Timers.
  void handshake_timer_expired();
  void idle_timer_expired();
  void keepalive_due();         // keepalive_timers expired
  void keepalive_answered();    // bytes after the PING
  void keepalive_unanswered();  // keepalive_acks expired
  void age_step();              // the age heap's time for this connection came
  // Stop: GOAWAY, running streams finish; or close at once.
  void begin_drain();
  // `ack_overdue`: the drain PING got no ACK within kDrainAckWaitMs.
  void drain_step(bool late, bool ack_overdue);

 private:
  void on_bytes(std::span<const uint8_t> in);
  void on_proxy_bytes(std::span<const uint8_t> in);
  bool hold_proxy_bytes(std::span<const uint8_t> in);
  void adopt_proxy_source(const edge::ProxyResult& r);
  void on_handshake_bytes(std::span<const uint8_t> in);
  void start_h2();
  void on_h2_bytes(std::span<const uint8_t> in);
  void rearm_idle(uint64_t frames_before, uint64_t acks_before);
  void start_rebalancing();
  void end_h2();
  void on_http1_bytes(std::span<const uint8_t> in);
  void arm_recv();
  void try_offload();
  void on_ktls_control();
  bool finish_session();
  void linger_or_close();
  void handshake_done();
  void count_record_layer(bool kernel);
};

// ------------------------------------------------------------ upstream side

enum class UpState { Connecting, Handshake, Ready, Closed };

struct UpstreamConnection final : Conn, upstream::Connection {
  UpState state = UpState::Connecting;
  std::shared_ptr<const Snapshot> snapshot;  // keeps `tls_ctx` alive
  std::unique_ptr<h2::UpstreamSession> h2;
  std::unique_ptr<tls::Session> tls;  // TLS to the backend, if the cluster asks for it
  tls::Context* tls_ctx = nullptr;
  // A send failed: nothing more is sent, what the backend sent before it
  // reset the connection (a GOAWAY) is still read, then the connection closes.
  int send_errno = 0;
  uint64_t send_failed_ms = 0;

  void on_connect(const io::Completion& c);
  void on_recv(const io::Completion& c);
  void flush();
  void close(const char* why, bool nothing_sent = false);
  void send_failed(int err);
  // Lost: counted (upstream_lost) and closed.
  void lost(const char* why);

 private:
  void on_handshake(std::span<const uint8_t> in);
  void on_records(std::span<const uint8_t> in);
  const char* endpoint_text();
};

// ------------------------------------------------------------ the loop

// A slot table with generations: user_data names slot + generation, so a
// completion for a freed-and-reused slot is recognised and dropped.
template <typename T>
struct Slots {
  std::vector<std::unique_ptr<T>> items;
  std::vector<uint32_t> free;
  size_t live = 0;

  T* acquire() {
    uint32_t i;
    if (!free.empty()) {
      i = free.back();
      free.pop_back();
    } else {
      i = static_cast<uint32_t>(items.size());
      items.push_back(std::make_unique<T>());
      items[i]->slot = i;
    }
    ++live;
    return items[i].get();
  }
  void release(T* c) {
    uint32_t slot = c->slot;
    uint32_t gen = (c->gen + 1) & 0xffffff;
    // Fresh state in the same memory: no allocation per closed connection.
    T* p = items[slot].get();
    std::destroy_at(p);
    std::construct_at(p);
    p->slot = slot;
    p->gen = gen;
    free.push_back(slot);
    --live;
  }
  T* find(uint64_t ud) {
    uint32_t slot = slot_of(ud);
    if (slot >= items.size()) return nullptr;
    T* c = items[slot].get();
    return c->gen == gen_of(ud) ? c : nullptr;
  }
};

struct Loop : upstream::Transport {
  unsigned id;
  io::Ring ring;
  ChunkPool chunks;       // connection I/O: [limits] chunk_pool
  ChunkPool body_chunks;  // stream bodies: [limits] body_buffer
  upstream::ClusterManager pool;
  h2::Context h2ctx;
  std::shared_ptr<const Snapshot> snapshot;  // what new connections start with
  std::vector<std::unique_ptr<ListenerRt>> listeners;
  Slots<ClientConnection> downs;
  Slots<UpstreamConnection> ups;
  std::vector<Conn*> dirty;
  std::vector<Conn*> to_free;
  Counters counters;
  int stop_fd = -1;
  uint64_t stop_value = 0;
  bool stopping = false;
  uint64_t drain_started = 0;
  uint64_t drain_deadline = 0;
  uint64_t now = 0;
  // When the responder timer in flight fires (0: none armed): see arm_respond_timer.
  uint64_t respond_timer_ms = 0;
  tls::KtlsSupport ktls_support;
  accesslog::Buffer* access_log = nullptr;  // the Writer's, for this shard; null: none
  // From the main thread, taken on the tick (a mutex-guarded mailbox,
  // checked with one atomic load): DNS answers and configuration snapshots.
  struct DnsUpdate {
    uint32_t cluster;
    uint32_t name;
    std::vector<config::SocketAddress> addrs;
  };
  std::mutex inbox_mu;
  std::vector<DnsUpdate> dns_inbox;
  std::shared_ptr<const config::Config> config_inbox;
  std::vector<std::promise<Stats>> stats_inbox;
  bool finished = false;  // run() returned: collect() answers from final_stats
  Stats final_stats;
  std::atomic<bool> inbox_pending{false};
  // Completed handshakes by kind (a handful of rows: linear search).
  std::vector<Stats::Handshakes> handshake_kinds;
  // Client streams ended, by [pool cluster][listener][grpc status column]
  // (pool ids are stable across reloads: the pool keeps clusters by name),
  // and their durations by pool cluster; grown when a reload adds a cluster.
  std::vector<uint64_t> stream_counts;
  std::vector<Histogram> stream_durations;
  uint64_t fd_pause_until = 0;  // no accepting before this (out of file descriptors)
  RepeatedWarning fd_warning;
  RepeatedWarning pool_warning;
  // Client connections by the time of their next max_connection_age step
  // (a heap: each connection's age is drawn apart, so no list keeps them in
  // order); `jitter_state` draws those ages.
  TimerHeap ages;
  uint64_t jitter_state = 0;
  const char* fd_warning_where = "accept";
  int fd_warning_errno = EMFILE;

  Loop(unsigned shard_id, std::shared_ptr<const config::Config> cfg, std::vector<int> fds,
       const tls::KtlsSupport& ktls);
  ~Loop();

  void run();
  void dispatch(const io::Completion& c);
  void end_of_turn();
  // A timeout for the first delayed responder answer (h2::Context), unless
  // one armed already fires no later.
  void arm_respond_timer();
  void mark_dirty(Conn* c) {
    if (c->dirty || c->closing) return;
    c->dirty = true;
    dirty.push_back(c);
  }
  void on_idle(Conn* c);

  // Configuration.
  void adopt(std::shared_ptr<const config::Config> cfg);
  void take_inbox();
  Stats make_stats();
  void count_handshake(uint32_t listener, const char* version, const char* cipher, bool resumed, bool ktls);
  void count_stream(uint32_t listener, int pool_cluster, const h2::StreamEnd& e);
  void size_stream_tables(size_t rows);

  // Accept.
  bool accept_blocked(const ListenerRt& l) const;
  void arm_accept(ListenerRt& l);
  void pause_accept(ListenerRt& l);
  void on_accept(const io::Completion& c);
  void out_of_fds(const char* where, int err);
  bool chunk_pool_full() const;
  void relieve_chunk_pool();
  void warn_pool();
  void warn_fds();

  // Common IO.
  void arm_recv(Conn* c, Op op, bool once = false);
  RecvResult take_recv(Conn* c, const io::Completion& cqe);
  void start_send(Conn* c, Op op);
  void on_send(Conn* c, const io::Completion& cqe);
  void begin_close(Conn* c);
  void maybe_free(Conn* c) {
    if (c->closing && c->inflight == 0) to_free.push_back(c);
  }
  void finish_close(Conn* c);
  bool kernel_offers(tls::KtlsCipher c) const;

  // upstream::Transport
  upstream::Connection* open(uint32_t cluster, uint32_t endpoint, const config::SocketAddress& addr,
                             const char*& why) override;
  void close(upstream::Connection& c, const char* why, bool nothing_sent) override;

  // Timers, stop.
  void expire_ages();
  void on_tick();
  void on_stop();
  void begin_stop();
  void drain_step();
};

// Moves plaintext into TLS records; what the pool cannot take yet stays in
// `plain` for the next flush.
void encrypt(tls::Session& tls, ByteQueue& plain, ByteQueue& out);

}  // namespace tlsgate::shard
