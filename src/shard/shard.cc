// The shard's event loop: completions in, protocol modules driven, bytes out.
//
// Loop turn: submit + wait, dispatch every completion (a switch on the
// operation packed in user_data), then flush every connection that was woken
// during the turn, then free connections that are closed and have no
// operation in flight. Nothing is freed while the kernel may still write to it.
#include "tlsgate/shard.hh"

#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

#include "tlsgate/buffer.hh"
#include "tlsgate/edge.hh"
#include "tlsgate/h2.hh"
#include "tlsgate/io.hh"
#include "tlsgate/log.hh"
#include "tlsgate/timer.hh"
#include "tlsgate/tls.hh"
#include "tlsgate/upstream.hh"

namespace tlsgate::shard {

namespace {

constexpr unsigned kRingEntries = 1024;
constexpr unsigned kRecvBuffers = 512;
constexpr unsigned kRecvBufferSize = 16 * 1024;
constexpr uint64_t kTickMs = 100;
// A send to a client that has not completed for this long, while the I/O
// pool is full, marks a client that stopped reading (see relieve_chunk_pool).
constexpr uint64_t kSendStallMs = 1000;
constexpr uint64_t kDrainMs = 5000;
constexpr size_t kProduceBudget = 256 * 1024;
constexpr size_t kOutputHighWater = 1 << 20;  // stop producing above this
constexpr size_t kMaxConnsPerEndpoint = 64;
constexpr int kSendIovecs = 16;
// Out of file descriptors: accepting stops this long (the listen backlog
// holds new clients meanwhile) instead of retrying every tick, and the
// warning is one line a second with a count.
constexpr uint64_t kFdPauseMs = 250;
constexpr uint64_t kWarnIntervalMs = 1000;
// A multishot accept may take the whole listen backlog (main.cc: 4096) in
// one entry into the kernel, before a cancel can reach it.
constexpr uint32_t kAcceptBatch = 4096;

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

// A [limits] byte bound in whole chunks (0 = unbounded).
size_t chunks_for(uint64_t bytes) {
  return static_cast<size_t>((bytes + Chunk::kCapacity - 1) / Chunk::kCapacity);
}

uint64_t clock_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1'000'000;
}

// user_data: | op:8 | generation:24 | slot:32 |
enum class Op : uint8_t { Accept = 1, DownRecv, DownSend, UpRecv, UpSend, UpConnect, Tick, Stop, Ignore };

constexpr uint64_t pack(Op op, uint32_t gen, uint32_t slot) {
  return (static_cast<uint64_t>(op) << 56) | (static_cast<uint64_t>(gen & 0xffffff) << 32) | slot;
}
constexpr Op op_of(uint64_t ud) { return static_cast<Op>(ud >> 56); }
constexpr uint32_t gen_of(uint64_t ud) { return static_cast<uint32_t>(ud >> 32) & 0xffffff; }
constexpr uint32_t slot_of(uint64_t ud) { return static_cast<uint32_t>(ud); }

enum class DownState { Proxy, Handshake, H2, Http1, Lingering, Closed };
const char* to_string(DownState s) {
  switch (s) {
    case DownState::Proxy: return "proxy";
    case DownState::Handshake: return "handshake";
    case DownState::H2: return "h2";
    case DownState::Http1: return "http1";
    case DownState::Lingering: return "lingering";
    case DownState::Closed: return "closed";
  }
  return "?";
}

enum class UpState { Connecting, Handshake, Ready, Closed };

constexpr char kHttp1Response[] =
    "HTTP/1.1 426 Upgrade Required\r\n"
    "Upgrade: h2\r\n"
    "Connection: close\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 74\r\n"
    "\r\n"
    "This gateway serves gRPC over HTTP/2 only; connect with HTTP/2 (ALPN h2).\n";

}  // namespace

struct Loop;

// State every connection has: socket, output queue, in-flight accounting.
struct Conn : h2::Owner {
  Loop* shard = nullptr;
  uint32_t slot = 0;
  uint32_t gen = 0;
  int fd = -1;
  unsigned inflight = 0;       // submissions that still refer to this object
  bool recv_armed = false;
  bool send_inflight = false;
  bool dirty = false;
  bool closing = false;        // no new work; freed when inflight == 0
  bool close_after_flush = false;
  uint64_t send_since_ms = 0;  // when the send in flight was submitted
  ByteQueue out;               // bytes to send, ciphertext (down) or h2c (up)
  msghdr msg{};
  iovec iov[kSendIovecs]{};
  // Handshake, idle, linger or connect timer (one at a time).
  struct Timer : TimerLink {
    Conn* owner;
  } timer{{}, this};

  void wake() override;
  void idle() override;
};

enum class KtlsState { Off, Pending, On };

struct DownConn : Conn {
  struct ListenerRt* listener = nullptr;
  DownState state = DownState::Handshake;
  KtlsState ktls = KtlsState::Off;
  std::unique_ptr<tls::Session> tls;
  std::unique_ptr<h2::DownstreamSession> h2;
  ByteQueue plain;  // nghttp2's output before encryption
  // The socket's peer, replaced by the PROXY header's source when it has one.
  std::string client_ip;
  // State Proxy only: the header bytes received so far, when one receive did
  // not hold the whole header (at most edge::kProxyMaxHeader bytes; a chunk
  // of the shard's pool, given back when the header is done or on close).
  Chunk* proxy_buf = nullptr;
};

struct UpConn : Conn {
  uint32_t cluster = 0;
  uint32_t endpoint = 0;
  UpState state = UpState::Connecting;
  std::unique_ptr<h2::UpstreamSession> h2;
  std::unique_ptr<tls::Session> tls;  // TLS to the backend, if the cluster asks for it
  ByteQueue plain;                    // nghttp2's output before encryption
  uint64_t last_recv_ms = 0;   // keepalive: any received byte proves the peer alive
  uint64_t ping_sent_ms = 0;   // 0 = no PING outstanding
  uint64_t idle_since_ms = 0;  // 0 = has streams
  // A send failed: nothing more is sent, what the backend sent before it
  // reset the connection (a GOAWAY) is still read, then the connection closes.
  int send_errno = 0;
  uint64_t send_failed_ms = 0;
};

struct ListenerRt {
  const config::Listener* cfg = nullptr;
  uint32_t index = 0;
  int fd = -1;
  uint32_t cluster = 0;
  std::unique_ptr<tls::Context> tls;
  bool ktls = false;  // try kernel TLS on this listener's connections
  edge::ProxyMode proxy = edge::ProxyMode::Off;
  TimerList handshake_timers;  // PROXY header and TLS handshake, then linger
  TimerList idle_timers;
  bool accepting = false;
  uint32_t connections = 0;  // client connections of this listener in this shard, until their fd is closed
  bool full = false;         // accepting paused at max_connections (counted once per pause)
  // This shard's budget of streams cancelled on connections that completed
  // fewer than they cancelled (src/h2/README.md, "Budgets"): what rapid reset
  // across reconnects spends.
  std::unique_ptr<h2::Budget> unearned_resets;
};

// One backend address of a cluster, in this shard.
struct EndpointRt : h2::ProbeSink {
  Loop* loop = nullptr;
  uint32_t cluster = 0;
  uint32_t index = 0;
  config::SocketAddress addr;
  int dns_name = -1;  // index into the cluster's dns_names, or -1 (static)
  std::vector<UpConn*> conns;
  uint64_t last_warning_ms = 0;  // failures are counted always, logged at most once a second
  uint64_t suppressed = 0;
  uint64_t last_refusal_log_ms = 0;  // max_ejection_percent refusals: logged at most once a second
  // Active health check in flight: its stream and session.
  void* probe = nullptr;
  h2::UpstreamSession* probe_session = nullptr;
  uint64_t probe_deadline_ms = 0;
  uint64_t next_check_ms = 0;
  void probe_done(bool ok, const char* why) override;
};

struct ClusterRt {
  const config::Cluster* cfg = nullptr;
  uint32_t index = 0;
  // Never shrinks: UpConn::endpoint indexes it. An endpoint gone from DNS
  // stays, inactive, and its slot is reused when an address comes back.
  std::vector<std::unique_ptr<EndpointRt>> endpoints;
  std::vector<upstream::EndpointState> states;  // parallel to endpoints
  upstream::Balancer balancer;
  h2::ClusterPolicy policy;
  upstream::HealthPolicy health;
  upstream::OutlierPolicy outlier;
  TimerList connect_timers;  // connect and, with TLS, the handshake
  std::unique_ptr<tls::Context> tls;
  uint32_t pending = 0;      // client streams on this cluster's upstream sessions
  uint32_t connections = 0;  // open or opening upstream connections
  std::string no_endpoint;   // grpc-message when no endpoint is usable
};

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

struct Loop : h2::Router {
  unsigned id;
  const config::Config& config;
  io::Ring ring;
  ChunkPool chunks;       // connection I/O: [limits] chunk_pool
  ChunkPool body_chunks;  // stream bodies: [limits] body_buffer
  h2::Context h2ctx;
  std::vector<std::unique_ptr<ListenerRt>> listeners;
  std::vector<std::unique_ptr<ClusterRt>> clusters;
  Slots<DownConn> downs;
  Slots<UpConn> ups;
  std::vector<Conn*> dirty;
  std::vector<Conn*> to_free;
  Counters counters;
  uint32_t streams_lost = 0;  // ended by the connection close_up is closing
  int stop_fd = -1;
  uint64_t stop_value = 0;
  bool stopping = false;
  uint64_t drain_deadline = 0;
  uint64_t now = 0;
  tls::KtlsSupport ktls_support;
  // DNS answers from the main thread's watcher, taken on the timer tick.
  struct DnsUpdate {
    uint32_t cluster;
    uint32_t name;
    std::vector<config::SocketAddress> addrs;
  };
  std::mutex dns_mu;
  std::vector<DnsUpdate> dns_inbox;
  std::atomic<bool> dns_pending{false};
  uint64_t fd_pause_until = 0;  // no accepting before this (out of file descriptors)
  RepeatedWarning fd_warning;
  RepeatedWarning pool_warning;
  const char* fd_warning_where = "accept";
  int fd_warning_errno = EMFILE;

  Loop(unsigned shard_id, const config::Config& cfg, std::vector<int> fds, const tls::KtlsSupport& ktls)
      : id(shard_id),
        config(cfg),
        ring(kRingEntries, kRecvBuffers, kRecvBufferSize),
        chunks(64, chunks_for(cfg.limits.chunk_pool)),
        body_chunks(64, chunks_for(cfg.limits.body_buffer)),
        h2ctx(body_chunks, *this),
        ktls_support(ktls) {
    stop_fd = ::eventfd(0, EFD_CLOEXEC);
    if (stop_fd < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
    for (size_t i = 0; i < cfg.clusters.size(); ++i) set_up_cluster(i);
    for (size_t i = 0; i < cfg.listeners.size(); ++i) {
      listeners.push_back(std::make_unique<ListenerRt>());
      ListenerRt& l = *listeners.back();
      l.cfg = &cfg.listeners[i];
      l.index = static_cast<uint32_t>(i);
      l.fd = fds.at(i);
      l.cluster = static_cast<uint32_t>(l.cfg->cluster_index);
      l.ktls = l.cfg->tls.ktls != config::Ktls::Off && ktls.any();
      l.tls = std::make_unique<tls::Context>(l.cfg->tls, l.ktls);
      l.proxy = proxy_mode(l.cfg->proxy_protocol);
      l.handshake_timers.set_duration(static_cast<uint64_t>(l.cfg->handshake_timeout.count()));
      l.idle_timers.set_duration(static_cast<uint64_t>(l.cfg->idle_timeout.count()));
      const auto shard_resets = static_cast<uint32_t>(std::min<uint64_t>(uint64_t{l.cfg->h2_reset_budget} * 10, UINT32_MAX));
      l.unearned_resets = std::make_unique<h2::Budget>(shard_resets, shard_resets, shard_resets);
    }
  }

  ~Loop() {
    // Sessions first (they reference chunks and each other), then sockets.
    for (auto& d : downs.items) {
      d->h2.reset();
      d->tls.reset();
      if (d->fd >= 0) ::close(d->fd);
    }
    for (auto& u : ups.items) {
      u->h2.reset();
      u->tls.reset();
      if (u->fd >= 0) ::close(u->fd);
    }
    downs.items.clear();
    ups.items.clear();
    for (auto& l : listeners)
      if (l->fd >= 0) ::close(l->fd);
    if (stop_fd >= 0) ::close(stop_fd);
  }

  // ------------------------------------------------------------ loop
  void run() {
    now = clock_ms();
    for (auto& l : listeners) arm_accept(*l);
    ring.prep_read(stop_fd, &stop_value, sizeof stop_value, pack(Op::Stop, 0, 0));
    ring.prep_timeout_ms(kTickMs, pack(Op::Tick, 0, 0));
    io::Completion cqes[256];
    for (;;) {
      int rc = ring.submit_and_wait();
      if (rc < 0) {
        LOG_ERROR("shard", "%u: io_uring_submit_and_wait: %s", id, std::strerror(-rc));
        break;
      }
      now = clock_ms();
      unsigned n;
      while ((n = ring.reap(cqes, 256)) > 0)
        for (unsigned i = 0; i < n; ++i) dispatch(cqes[i]);
      end_of_turn();
      if (stopping && downs.live == 0 && ups.live == 0) break;
    }
  }

  void dispatch(const io::Completion& c) {
    switch (op_of(c.user_data)) {
      case Op::Accept: on_accept(c); break;
      case Op::DownRecv: on_down_recv(c); break;
      case Op::DownSend: on_send(downs.find(c.user_data), c, true); break;
      case Op::UpRecv: on_up_recv(c); break;
      case Op::UpSend: on_send(ups.find(c.user_data), c, false); break;
      case Op::UpConnect: on_connect(c); break;
      case Op::Tick: on_tick(); break;
      case Op::Stop: begin_stop(); break;
      case Op::Ignore: break;
    }
  }

  void end_of_turn() {
    // Flushing one connection can wake others (a DATA frame taken by one side
    // opens the other side's window), so repeat until quiet.
    while (!dirty.empty() || !to_free.empty()) {
      while (!dirty.empty()) {
        Conn* c = dirty.back();
        dirty.pop_back();
        c->dirty = false;
        if (c->closing) continue;
        if (op_is_down(c)) flush_down(static_cast<DownConn*>(c));
        else flush_up(static_cast<UpConn*>(c));
      }
      while (!to_free.empty()) {
        Conn* c = to_free.back();
        to_free.pop_back();
        finish_close(c);
      }
    }
  }

  // A quiet client connection's TLS session lets go of its cipher contexts.
  void on_idle(Conn* c) {
    if (!op_is_down(c)) return;
    auto* d = static_cast<DownConn*>(c);
    if (d->tls && !d->closing) d->tls->release_idle_memory();
  }

  bool op_is_down(Conn* c) const {
    return c->slot < downs.items.size() && downs.items[c->slot].get() == c;
  }

  void mark_dirty(Conn* c) {
    if (c->dirty || c->closing) return;
    c->dirty = true;
    dirty.push_back(c);
  }

  // ------------------------------------------------------------ accept
  // Accepting is paused while the listener has max_connections in this
  // shard or the process is out of file descriptors; the kernel's listen
  // backlog holds new clients meanwhile (and refuses them once it is full).
  bool accept_blocked(const ListenerRt& l) const {
    return l.connections >= l.cfg->max_connections || now < fd_pause_until;
  }

  void arm_accept(ListenerRt& l) {
    if (l.fd < 0 || l.accepting || stopping || accept_blocked(l)) return;
    l.full = false;
    // Close to the limit, connections are taken one at a time so that it
    // holds exactly (see kAcceptBatch).
    if (l.cfg->max_connections - l.connections > kAcceptBatch)
      ring.prep_accept_multishot(l.fd, pack(Op::Accept, 0, l.index));
    else
      ring.prep_accept_once(l.fd, pack(Op::Accept, 0, l.index));
    l.accepting = true;
  }

  // Ends the multishot accept; its last completion (ECANCELED) clears
  // `accepting`, and arm_accept() starts it again once nothing blocks it.
  void pause_accept(ListenerRt& l) {
    if (l.accepting) ring.prep_cancel_fd(l.fd, pack(Op::Ignore, 0, 0));
  }

  // EMFILE / ENFILE: counted always, logged once a second with a count, and
  // every listener stops accepting for kFdPauseMs: connections that close
  // meanwhile give descriptors back, and a client beyond them waits in the
  // backlog instead of costing an accept and a close.
  void out_of_fds(const char* where, int err) {
    ++counters.fd_exhausted;
    fd_warning_where = where;
    fd_warning_errno = err;
    if (fd_warning.note(now)) warn_fds();
    fd_pause_until = now + kFdPauseMs;
    for (auto& l : listeners) pause_accept(*l);
  }

  // The connection I/O pool is shared by the shard's connections. Clients
  // that stopped reading fill it (each holds up to kOutputHighWater of
  // ciphertext, which may pass the bound: ByteQueue::set_pool), and at the
  // bound new output only reuses freed chunks. So there the ones whose send
  // has not moved for kSendStallMs give their chunks back, largest first,
  // until a quarter of the pool is free.
  bool chunk_pool_full() const {
    return chunks.max_chunks() != 0 && chunks.in_use() >= chunks.max_chunks();
  }

  void relieve_chunk_pool() {
    std::vector<DownConn*> stalled;
    for (auto& d : downs.items)
      if (d->fd >= 0 && !d->closing && d->send_inflight && now - d->send_since_ms >= kSendStallMs)
        stalled.push_back(d.get());
    std::sort(stalled.begin(), stalled.end(),
              [](const DownConn* a, const DownConn* b) { return a->out.size() + a->plain.size() > b->out.size() + b->plain.size(); });
    const size_t target = chunks.max_chunks() - chunks.max_chunks() / 4;
    size_t freed = 0;
    uint64_t closed = 0;
    for (DownConn* d : stalled) {
      if (chunks.in_use() - std::min(freed, chunks.in_use()) < target) break;
      freed += (d->out.size() + d->plain.size()) / Chunk::kCapacity;
      close_down(d, "send stalled while the chunk pool is full");
      ++closed;
    }
    counters.send_stalled_closed += closed;
    if (closed > 0 && pool_warning.note(now, closed)) warn_pool();
  }

  void warn_pool() {
    const uint64_t n = pool_warning.take(now);
    LOG_WARN("shard", "%u: connection I/O pool full ([limits] chunk_pool): %lu clients that stopped reading closed since the last warning",
             id, n);
  }

  void warn_fds() {
    const uint64_t n = fd_warning.take(now);
    LOG_WARN("shard", "%u: out of file descriptors (%s on %s), %lu times since the last warning; accepting paused %lu ms",
             id, std::strerror(fd_warning_errno), fd_warning_where, n, kFdPauseMs);
  }

  void on_accept(const io::Completion& c) {
    ListenerRt& l = *listeners.at(slot_of(c.user_data));
    if (!c.more()) l.accepting = false;
    if (c.res == -EMFILE || c.res == -ENFILE) {
      out_of_fds("accept", -c.res);
      return;  // accepting again from the tick after the pause
    }
    if (c.res < 0) {
      if (c.res != -ECANCELED) LOG_WARN("shard", "%u: accept on %s: %s", id, l.cfg->name.c_str(), std::strerror(-c.res));
      if (!l.accepting) arm_accept(l);
      return;
    }
    if (stopping) {
      ::close(c.res);
      return;
    }
    ++counters.accepted;
    if (++l.connections >= l.cfg->max_connections && !l.full) {
      l.full = true;
      ++counters.accept_paused;
      pause_accept(l);
    }
    DownConn* d = downs.acquire();
    d->shard = this;
    d->fd = c.res;
    d->listener = &l;
    d->out.set_pool(&chunks, /*past_bound=*/true);  // ciphertext until a kTLS offload
    d->plain.set_pool(&chunks);
    // TCP_NODELAY comes from the listening socket (io::listen_socket).
    char ip[64];
    d->client_ip = io::peer_ip(d->fd, ip, sizeof ip) ? ip : "unknown";
    d->tls = std::make_unique<tls::Session>(*l.tls, chunks);
    d->ktls = l.ktls ? KtlsState::Pending : KtlsState::Off;
    d->state = l.proxy == edge::ProxyMode::Off ? DownState::Handshake : DownState::Proxy;
    l.handshake_timers.arm(d->timer, now);  // covers the PROXY header too
    arm_down_recv(d);
    if (!l.accepting) arm_accept(l);
  }

  void arm_recv(Conn* c, Op op, bool once = false) {
    if (c->recv_armed || c->closing) return;
    if (once) ring.prep_recv_once(c->fd, pack(op, c->gen, c->slot));
    else ring.prep_recv_multishot(c->fd, pack(op, c->gen, c->slot));
    c->recv_armed = true;
    ++c->inflight;
  }

  // ------------------------------------------------------------ downstream
  void on_down_recv(const io::Completion& c) {
    DownConn* d = downs.find(c.user_data);
    const int bid = c.buffer_id();
    if (d == nullptr) {
      if (bid >= 0) ring.recycle(bid);
      return;
    }
    if (!c.more()) {
      d->recv_armed = false;
      --d->inflight;
    }
    if (c.res <= 0 || d->closing) {
      if (bid >= 0) ring.recycle(bid);
      if (d->closing) {
        maybe_free(d);
        return;
      }
      if (c.res == -ENOBUFS) {  // buffer ring ran dry: read again next turn
        mark_dirty(d);
        return;
      }
      if (c.res == -EIO && d->ktls == KtlsState::On) {  // a non-data record: read it with recvmsg
        on_ktls_control(d);
        return;
      }
      close_down(d, c.res == 0 ? "peer closed" : std::strerror(-c.res));
      return;
    }
    std::span<const uint8_t> in(ring.buffer(bid), static_cast<size_t>(c.res));
    on_down_bytes(d, in);
    ring.recycle(bid);  // the TLS session kept whatever it did not consume
    if (!d->closing && !d->recv_armed) mark_dirty(d);  // re-arm in flush
  }

  void on_down_bytes(DownConn* d, std::span<const uint8_t> in) {
    switch (d->state) {
      case DownState::Proxy: return on_proxy_bytes(d, in);
      case DownState::Handshake: return on_handshake_bytes(d, in);
      case DownState::H2: return on_h2_bytes(d, in);
      case DownState::Http1: return on_http1_bytes(d, in);
      case DownState::Lingering: return;  // discard until the peer closes
      case DownState::Closed: return;
    }
  }

  static edge::ProxyMode proxy_mode(config::ProxyProtocol p) {
    switch (p) {
      case config::ProxyProtocol::Off: return edge::ProxyMode::Off;
      case config::ProxyProtocol::V1: return edge::ProxyMode::V1;
      case config::ProxyProtocol::V2: return edge::ProxyMode::V2;
      case config::ProxyProtocol::Auto: return edge::ProxyMode::Auto;
    }
    return edge::ProxyMode::Off;
  }

  // The PROXY header phase. Usually one receive holds the whole header (and
  // often the ClientHello after it): it is parsed in place, no copy.
  // Otherwise the bytes so far wait in one pool chunk and the parser, which
  // keeps no state, reads them all again with each receive.
  void on_proxy_bytes(DownConn* d, std::span<const uint8_t> in) {
    const size_t held = d->proxy_buf != nullptr ? d->proxy_buf->end : 0;
    std::span<const uint8_t> all = in;
    if (d->proxy_buf != nullptr) {
      // The parser decides within kProxyMaxHeader bytes, so more need not be kept.
      const size_t take = std::min(in.size(), edge::kProxyMaxHeader - held);
      std::memcpy(d->proxy_buf->data + held, in.data(), take);
      d->proxy_buf->end += static_cast<uint32_t>(take);
      all = std::span<const uint8_t>(d->proxy_buf->data, held + take);
    }
    edge::ProxyResult r = edge::parse_proxy(d->listener->proxy, all.data(), all.size());
    if (r.status == edge::ProxyStatus::Incomplete && all.size() < edge::kProxyMaxHeader) {
      if (d->proxy_buf == nullptr && !hold_proxy_bytes(d, in))
        close_down(d, "no buffer for the PROXY header");
      return;
    }
    if (r.status != edge::ProxyStatus::Done) {
      ++counters.proxy_errors;
      // Incomplete at the cap cannot happen (the parser decides within it);
      // should it, the connection is refused all the same.
      const char* why =
          r.status == edge::ProxyStatus::Error ? edge::to_string(r.error) : "no header within the cap";
      LOG_DEBUG("shard", "%u: bad PROXY header from %s on %s: %s", id, d->client_ip.c_str(),
                d->listener->cfg->name.c_str(), why);
      close_down(d, "bad PROXY header");  // nothing sent: the sender is no TLS client
      return;
    }
    adopt_proxy_source(d, r);
    d->state = DownState::Handshake;
    // What follows the header starts the TLS handshake: the rest of the held
    // bytes (auto mode can decide "no header" after holding a few), then the
    // rest of this receive.
    Chunk* buf = std::exchange(d->proxy_buf, nullptr);
    if (buf != nullptr && r.consumed < held)
      on_down_bytes(d, std::span<const uint8_t>(buf->data + r.consumed, held - r.consumed));
    const size_t from_in = r.consumed > held ? r.consumed - held : 0;
    if (from_in < in.size() && !d->closing && !d->close_after_flush) on_down_bytes(d, in.subspan(from_in));
    if (buf != nullptr) chunks.put(buf);
    mark_dirty(d);  // re-arms a one-shot receive (kTLS pending)
  }

  bool hold_proxy_bytes(DownConn* d, std::span<const uint8_t> in) {
    d->proxy_buf = chunks.get();
    if (d->proxy_buf == nullptr) return false;
    std::memcpy(d->proxy_buf->data, in.data(), in.size());  // in.size() < kProxyMaxHeader
    d->proxy_buf->begin = 0;
    d->proxy_buf->end = static_cast<uint32_t>(in.size());
    return true;
  }

  // x-forwarded-for and every later log line name the header's source; a
  // header without one (v1 UNKNOWN, v2 LOCAL/UNSPEC/AF_UNIX, none in auto
  // mode) keeps the socket's peer.
  void adopt_proxy_source(DownConn* d, const edge::ProxyResult& r) {
    if (r.version != 0) ++counters.proxy_headers;
    char ip[64];
    if (edge::format_address(r.source, ip, sizeof ip) == 0) return;
    LOG_DEBUG("shard", "%u: PROXY v%u from %s: client %s port %u", id, r.version, d->client_ip.c_str(), ip,
              r.source.port);
    d->client_ip = ip;
  }

  void on_handshake_bytes(DownConn* d, std::span<const uint8_t> in) {
    tls::HandshakeState st = d->tls->handshake(in, d->out);
    mark_dirty(d);
    if (st == tls::HandshakeState::InProgress) return;
    if (st == tls::HandshakeState::Failed) {
      ++counters.handshake_failures;
      LOG_DEBUG("tls", "%u: handshake from %s failed: %s", id, d->client_ip.c_str(), d->tls->failure().c_str());
      d->close_after_flush = true;  // send OpenSSL's alert first
      return;
    }
    ++counters.handshakes;
    TimerList::disarm(d->timer);
    d->listener->idle_timers.arm(d->timer, now);
    LOG_DEBUG("tls", "%u: %s %s alpn=%s from %s", id, d->tls->version(), d->tls->cipher(),
              tls::to_string(d->tls->alpn()), d->client_ip.c_str());
    if (d->ktls == KtlsState::Pending && !kernel_offers(d->tls->cipher_kind())) {
      d->ktls = KtlsState::Off;
      ++counters.ktls_unsupported_cipher;
    }
    if (d->ktls == KtlsState::Off) ++counters.tls_userspace;
    if (d->tls->alpn() == tls::Alpn::Http11) {
      d->state = DownState::Http1;
      ++counters.http1_rejected;
      if (d->ktls == KtlsState::Pending) {
        d->ktls = KtlsState::Off;
        ++counters.tls_userspace;
      }
    } else {
      // h2 by ALPN, or no ALPN at all: HTTP/2 with prior knowledge.
      d->state = DownState::H2;
      h2::DownstreamSettings s;
      s.cluster = d->listener->cluster;
      s.routes = &d->listener->cfg->routes;
      s.max_concurrent_streams = d->listener->cfg->max_concurrent_streams;
      s.client_ip = d->client_ip;
      s.glitch_budget = d->listener->cfg->h2_glitch_budget;
      s.glitch_rate = d->listener->cfg->h2_glitch_rate;
      s.reset_budget = d->listener->cfg->h2_reset_budget;
      s.shard_resets = d->listener->unearned_resets.get();
      d->h2 = std::make_unique<h2::DownstreamSession>(h2ctx, *d, std::move(s));
    }
    // Application bytes that came with the client's Finished are pending.
    on_down_bytes(d, {});
  }

  void on_h2_bytes(DownConn* d, std::span<const uint8_t> in) {
    // Given up on (end_h2): what still arrives is dropped, and neither
    // re-arms the idle timer nor pushes back the bounded wait for the flush.
    if (d->close_after_flush) return;
    d->listener->idle_timers.arm(d->timer, now);
    if (d->ktls == KtlsState::On) {  // the kernel already decrypted
      mark_dirty(d);
      if (!in.empty() && !d->h2->receive(in.data(), in.size())) end_h2(d);
      return;
    }
    bool failed = false;
    Result<void> r = d->tls->read(in, d->out, [&](const uint8_t* p, size_t n) {
      if (!failed && !d->h2->receive(p, n)) failed = true;
    });
    mark_dirty(d);
    if (failed) {
      end_h2(d);
      return;
    }
    if (!r) {
      if (r.error() == Error::Protocol) {
        ++counters.tls_violations[static_cast<int>(d->tls->violation())];
        LOG_DEBUG("tls", "%u: bad record from %s: %s", id, d->client_ip.c_str(), d->tls->failure().c_str());
      }
      if (r.error() == Error::Closed) d->tls->shutdown(d->out);
      d->close_after_flush = true;
    }
  }

  // The client broke the protocol or spent a budget: nghttp2 has a GOAWAY
  // queued. Nothing more is read; the connection closes once the GOAWAY is
  // out, or after handshake_timeout if the client does not read it.
  void end_h2(DownConn* d) {
    ++counters.downstream_protocol_errors;
    d->close_after_flush = true;
    TimerList::disarm(d->timer);
    d->listener->handshake_timers.arm(d->timer, now);
  }

  void on_http1_bytes(DownConn* d, std::span<const uint8_t> in) {
    bool got = false;
    Result<void> r = d->tls->read(in, d->out, [&](const uint8_t*, size_t n) { got = got || n > 0; });
    if (got || !r) {
      // Answer once, then close our side cleanly and let the client read it.
      d->tls->write(reinterpret_cast<const uint8_t*>(kHttp1Response), sizeof kHttp1Response - 1, d->out);
      d->tls->shutdown(d->out);
      d->state = DownState::Lingering;
      d->close_after_flush = true;
    }
    mark_dirty(d);
  }

  // Moves plaintext into TLS records; what the pool cannot take yet stays
  // in `plain` for the next flush.
  static void encrypt(tls::Session& tls, ByteQueue& plain, ByteQueue& out) {
    while (!plain.empty()) {
      iovec v[kSendIovecs];
      int n = plain.iovecs(v, kSendIovecs);
      size_t taken = 0;
      for (int i = 0; i < n; ++i) {
        if (!tls.write(static_cast<const uint8_t*>(v[i].iov_base), v[i].iov_len, out)) break;
        taken += v[i].iov_len;
      }
      plain.consume(taken);
      if (taken == 0) break;
    }
  }

  void flush_down(DownConn* d) {
    if (d->ktls == KtlsState::Pending && d->state == DownState::H2) try_offload(d);
    if (d->ktls == KtlsState::On && d->h2 && d->out.size() < kOutputHighWater) {
      d->h2->produce(d->out, kProduceBudget);  // the kernel encrypts
    } else if (d->ktls != KtlsState::On && d->state == DownState::H2 && d->h2 &&
               d->out.size() < kOutputHighWater) {
      d->h2->produce(d->plain, kProduceBudget);
      encrypt(*d->tls, d->plain, d->out);
    }
    start_send(d, Op::DownSend);
    if (d->state == DownState::H2 && d->h2 && d->h2->finished() && d->out.empty() && !d->send_inflight) {
      // The HTTP/2 session ended (GOAWAY sent, no streams): end TLS cleanly
      // too, so the client sees close_notify rather than a truncation.
      if (d->ktls == KtlsState::On) {
        tls::send_alert(d->fd, 1, 0);
      } else if (!d->close_after_flush) {
        d->tls->shutdown(d->out);
        d->close_after_flush = true;
        start_send(d, Op::DownSend);
        return;
      }
      close_down(d, "session finished");
      return;
    }
    // A GOAWAY that ends the session may still wait in nghttp2 behind what
    // one produce() takes (e.g. the ACKs of a PING flood).
    const bool goaway_pending = d->state == DownState::H2 && d->h2 && d->h2->terminating() && d->h2->want_write();
    if (d->close_after_flush && d->out.empty() && !d->send_inflight && !goaway_pending) {
      // An HTTP/2 session given up on (its GOAWAY is out) lingers too: a
      // close with the client's bytes unread would reset the connection, and
      // the reset can discard the GOAWAY before the client reads it.
      if (d->state == DownState::H2) d->state = DownState::Lingering;
      if (d->state == DownState::Lingering) {
        ::shutdown(d->fd, SHUT_WR);
        d->close_after_flush = false;
        TimerList::disarm(d->timer);
        d->listener->handshake_timers.arm(d->timer, now);  // bounded linger
      } else {
        close_down(d, "closed after flush");
        return;
      }
    }
    arm_down_recv(d);
  }

  // While a kTLS switch is pending, read one buffer at a time, and only when
  // OpenSSL still needs bytes (a handshake in progress or a partial record):
  // everything else stays in the socket for the kernel to decrypt.
  void arm_down_recv(DownConn* d) {
    if (d->ktls != KtlsState::Pending) return arm_recv(d, Op::DownRecv);
    if (d->state == DownState::Proxy || d->state == DownState::Handshake || d->tls->pending_input() > 0)
      arm_recv(d, Op::DownRecv, true);
  }

  bool kernel_offers(tls::KtlsCipher c) const {
    switch (c) {
      case tls::KtlsCipher::Aes128Gcm: return ktls_support.aes128gcm;
      case tls::KtlsCipher::Aes256Gcm: return ktls_support.aes256gcm;
      case tls::KtlsCipher::Chacha20Poly1305: return ktls_support.chacha20poly1305;
      case tls::KtlsCipher::Unknown: return false;
    }
    return false;
  }

  // The switch needs a quiet connection: every record OpenSSL wrote is sent,
  // no receive is in flight, and OpenSSL holds no partial record.
  void try_offload(DownConn* d) {
    if (d->send_inflight || !d->out.empty() || !d->plain.empty() || d->recv_armed || d->tls->pending_input() > 0)
      return;
    tls::Offload r = d->tls->offload(d->fd);
    if (r != tls::Offload::Done) {
      LOG_DEBUG("tls", "%u: kTLS offload %s for %s %s (errno: %s); staying in userspace", id, tls::to_string(r),
                d->tls->version(), d->tls->cipher(), std::strerror(errno));
      if (r == tls::Offload::Unsupported) ++counters.ktls_unsupported_cipher;
      else ++counters.ktls_failed;
      ++counters.tls_userspace;
      d->ktls = KtlsState::Off;
      return;
    }
    d->ktls = KtlsState::On;
    d->out.set_pool(&chunks);  // nghttp2's output now: bounded like d->plain
    int cipher = static_cast<int>(d->tls->cipher_kind());
    if (cipher < 3) ++counters.ktls_offloaded[d->tls->is_tls13() ? 1 : 0][cipher];
    LOG_DEBUG("tls", "%u: kTLS TX+RX on for %s %s", id, d->tls->version(), d->tls->cipher());
    // The kernel has the keys now; OpenSSL's objects (several KiB per
    // connection) have nothing left to do.
    d->tls.reset();
  }

  // A non-data record on a kTLS socket: the receive failed with EIO.
  void on_ktls_control(DownConn* d) {
    tls::ControlRecord rec;
    int rc = tls::read_control_record(d->fd, rec);
    if (rc == -EAGAIN) {
      mark_dirty(d);
      return;
    }
    if (rc < 0) {
      close_down(d, std::strerror(-rc));
      return;
    }
    if (rec.type == 21 && rec.len >= 2) {  // alert
      if (rec.data[1] == 0) {
        ++counters.ktls_close_notify;
        tls::send_alert(d->fd, 1, 0);
        close_down(d, "close_notify");
      } else {
        ++counters.ktls_alerts;
        LOG_INFO("tls", "%u: alert from %s: level %u description %u", id, d->client_ip.c_str(), rec.data[0],
                 rec.data[1]);
        close_down(d, "alert received");
      }
      return;
    }
    if (rec.type == 22 && rec.len >= 1 && rec.data[0] == 24) {  // KeyUpdate
      // Kernels before 6.13 cannot take new receive keys; a clean close lets
      // the client reconnect instead of failing on records we cannot read.
      ++counters.ktls_key_update_closed;
      LOG_INFO("tls", "%u: KeyUpdate from %s: kernel TLS cannot rekey; closing", id, d->client_ip.c_str());
      if (d->h2) d->h2->shutdown();
      d->close_after_flush = true;
      mark_dirty(d);
      return;
    }
    // Nothing else may come after the handshake: a change_cipher_spec, a
    // client's NewSessionTicket or Finished, a TLS 1.2 renegotiation. The
    // kernel decrypted it; answer as RFC 8446 (and OpenSSL) would.
    ++counters.ktls_unexpected_records;
    LOG_DEBUG("tls", "%u: unexpected record type %u from %s: closing", id, rec.type, d->client_ip.c_str());
    tls::send_alert(d->fd, 2, 10);  // fatal, unexpected_message
    close_down(d, "unexpected record after the handshake");
  }

  void close_down(DownConn* d, const char* why) {
    if (d->closing) return;
    LOG_DEBUG("shard", "%u: close downstream %s (%s, %s)", id, d->client_ip.c_str(), to_string(d->state), why);
    d->closing = true;
    d->state = DownState::Closed;
    TimerList::disarm(d->timer);
    if (d->proxy_buf != nullptr) chunks.put(std::exchange(d->proxy_buf, nullptr));
    d->h2.reset();  // cancels the upstream halves of its streams
    d->tls.reset();
    begin_close(d);
  }

  // ------------------------------------------------------------ upstream
  void set_up_cluster(size_t i) {
    clusters.push_back(std::make_unique<ClusterRt>());
    ClusterRt& c = *clusters.back();
    const config::Cluster& cfg = config.clusters[i];
    c.cfg = &cfg;
    c.index = static_cast<uint32_t>(i);
    // Seeded per shard and cluster so shards do not pick in lockstep.
    c.balancer = upstream::Balancer(cfg.lb == config::LbPolicy::P2c ? upstream::Policy::P2c : upstream::Policy::RoundRobin,
                                    (uint64_t{id} + 1) * 0x9e3779b97f4a7c15ull ^ (i + 1) ^ clock_ms());
    c.policy.max_grpc_timeout_ms = static_cast<uint64_t>(cfg.max_grpc_timeout.count());
    c.policy.retries = cfg.retries;
    c.policy.retry_buffer = cfg.retry_buffer;
    c.health.healthy_threshold = cfg.health_check.healthy_threshold;
    c.health.unhealthy_threshold = cfg.health_check.unhealthy_threshold;
    c.outlier.consecutive_failures = cfg.outlier.consecutive_failures;
    c.outlier.base_ejection_ms = static_cast<uint64_t>(cfg.outlier.base_ejection.count());
    c.outlier.max_ejection_ms = static_cast<uint64_t>(cfg.outlier.max_ejection.count());
    c.outlier.max_ejection_percent = cfg.outlier.max_ejection_percent;
    c.connect_timers.set_duration(static_cast<uint64_t>(cfg.connect_timeout.count()));
    c.no_endpoint = "cluster " + cfg.name + ": no healthy endpoint";
    if (cfg.tls.enabled) c.tls = std::make_unique<tls::Context>(cfg.tls);
    for (size_t e = 0; e < cfg.endpoints.size(); ++e) add_endpoint(c, cfg.endpoints[e], cfg.endpoint_name[e]);
  }

  EndpointRt& add_endpoint(ClusterRt& c, const config::SocketAddress& addr, int dns_name) {
    for (size_t i = 0; i < c.endpoints.size(); ++i) {
      EndpointRt& ep = *c.endpoints[i];
      if (!c.states[i].active && ep.conns.empty() && ep.probe == nullptr) {  // reuse a drained slot
        ep.addr = addr;
        ep.dns_name = dns_name;
        ep.next_check_ms = 0;
        c.states[i] = upstream::EndpointState{};
        return ep;
      }
    }
    auto ep = std::make_unique<EndpointRt>();
    ep->loop = this;
    ep->cluster = c.index;
    ep->index = static_cast<uint32_t>(c.endpoints.size());
    ep->addr = addr;
    ep->dns_name = dns_name;
    c.endpoints.push_back(std::move(ep));
    c.states.emplace_back();
    return *c.endpoints.back();
  }

  const h2::ClusterPolicy& cluster_policy(uint32_t cluster) override { return clusters[cluster]->policy; }
  uint64_t now_ms() override { return now; }

  void stream_started(h2::UpstreamSession& u) override {
    ClusterRt& c = *clusters[u.cluster()];
    ++c.pending;
    ++c.states[static_cast<size_t>(u.endpoint())].outstanding;
  }

  void stream_finished(h2::UpstreamSession& u, h2::Outcome outcome) override {
    ClusterRt& c = *clusters[u.cluster()];
    const auto e = static_cast<size_t>(u.endpoint());
    --c.pending;
    --c.states[e].outstanding;
    if (outcome == h2::Outcome::Success) record_result(c, e, false, "");
    else if (outcome == h2::Outcome::Failure) record_result(c, e, true, "stream failed");
    else if (outcome == h2::Outcome::ConnectionLost) ++streams_lost;  // close_up counts the loss once
  }

  // Passive outlier detection: every stream outcome, connect attempt and
  // lost connection counts once.
  void record_result(ClusterRt& c, size_t e, bool failure, const char* what) {
    const upstream::OutlierVerdict v = upstream::record_outcome(c.states, e, failure, now, c.outlier);
    if (v == upstream::OutlierVerdict::Ejected) {
      ++counters.endpoints_ejected;
      LOG_WARN("upstream",
               "%u: cluster %s: endpoint %s ejected for %lu ms after %u consecutive failures (last: %s)", id,
               c.cfg->name.c_str(), c.endpoints[e]->addr.text.c_str(),
               static_cast<unsigned long>(c.states[e].ejected_until_ms - now), c.outlier.consecutive_failures, what);
    } else if (v == upstream::OutlierVerdict::Refused) {
      ++counters.endpoints_ejection_refused;
      // Its own once-a-second limit: the connect failure that caused it has
      // just used the endpoint's warning slot.
      EndpointRt& ep = *c.endpoints[e];
      if (ep.last_refusal_log_ms != 0 && now - ep.last_refusal_log_ms < 1000) return;
      ep.last_refusal_log_ms = now;
      LOG_WARN("upstream",
               "%u: cluster %s: endpoint %s not ejected after %u consecutive failures: max_ejection_percent = %u "
               "keeps it (last: %s)",
               id, c.cfg->name.c_str(), ep.addr.text.c_str(), c.outlier.consecutive_failures,
               c.outlier.max_ejection_percent, what);
    }
  }

  h2::UpstreamSession* pick_upstream(uint32_t cluster, int avoid, const char*& why) override {
    if (stopping) {
      why = "gateway is shutting down";
      return nullptr;
    }
    ClusterRt& c = *clusters.at(cluster);
    if (c.pending >= c.cfg->max_pending_streams) {
      ++counters.circuit_breaker_streams;
      why = "circuit breaker: max_pending_streams reached";
      return nullptr;
    }
    const bool panic = c.cfg->all_unhealthy == config::AllUnhealthy::Panic;
    int e = c.balancer.pick(c.states, now, avoid, panic);
    if (e < 0) {
      ++counters.no_healthy_endpoint;
      why = c.no_endpoint.c_str();
      return nullptr;
    }
    UpConn* u = pooled_connection(c, static_cast<size_t>(e), why);
    return u == nullptr ? nullptr : u->h2.get();
  }

  // The least busy connection to the endpoint that takes another stream, or
  // a new one.
  UpConn* pooled_connection(ClusterRt& c, size_t e, const char*& why) {
    EndpointRt& ep = *c.endpoints[e];
    UpConn* best = nullptr;
    for (UpConn* u : ep.conns) {
      if (u->closing || u->send_errno != 0 || !u->h2 || !u->h2->can_take_stream()) continue;
      if (best == nullptr || u->h2->active_streams() < best->h2->active_streams()) best = u;
    }
    if (best != nullptr) return best;
    if (c.connections >= c.cfg->max_connections) {
      ++counters.circuit_breaker_connections;
      why = "circuit breaker: max_connections reached";
      return nullptr;
    }
    if (ep.conns.size() >= kMaxConnsPerEndpoint) {
      why = "upstream connection limit per endpoint reached";
      return nullptr;
    }
    return open_upstream(c, e, why);
  }

  UpConn* open_upstream(ClusterRt& c, size_t endpoint, const char*& why) {
    EndpointRt& ep = *c.endpoints[endpoint];
    int fd = io::tcp_socket(ep.addr.family());
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) out_of_fds("upstream connect", errno);
      why = "cannot create upstream socket";
      return nullptr;
    }
    ++counters.upstream_connects;
    ++c.connections;
    UpConn* u = ups.acquire();
    u->shard = this;
    u->fd = fd;
    u->cluster = c.index;
    u->endpoint = static_cast<uint32_t>(endpoint);
    u->out.set_pool(&chunks);
    u->h2 = std::make_unique<h2::UpstreamSession>(h2ctx, *u, c.index, static_cast<int>(endpoint), c.tls != nullptr);
    ep.conns.push_back(u);
    ring.prep_connect(fd, reinterpret_cast<const sockaddr*>(&ep.addr.storage), ep.addr.length,
                      pack(Op::UpConnect, u->gen, u->slot));
    ++u->inflight;
    c.connect_timers.arm(u->timer, now);
    LOG_DEBUG("upstream", "%u: connecting to %s", id, ep.addr.text.c_str());
    return u;
  }

  EndpointRt& endpoint_of(const UpConn* u) { return *clusters[u->cluster]->endpoints[u->endpoint]; }

  // Connect failed or timed out: nothing was sent, so its streams may be
  // retried on another endpoint.
  void connect_failed(UpConn* u, const char* what) {
    ClusterRt& c = *clusters[u->cluster];
    EndpointRt& ep = *c.endpoints[u->endpoint];
    ++counters.upstream_connect_failures;
    char why[160];
    std::snprintf(why, sizeof why, "upstream %s: %s", ep.addr.text.c_str(), what);
    warn_endpoint(ep, why);
    record_result(c, u->endpoint, true, what);
    close_up(u, why, true);
  }

  void on_connect(const io::Completion& c) {
    UpConn* u = ups.find(c.user_data);
    if (u == nullptr) return;
    --u->inflight;
    if (u->closing) {
      maybe_free(u);
      return;
    }
    if (c.res < 0) {
      char what[96];
      std::snprintf(what, sizeof what, "connect failed: %s", std::strerror(-c.res));
      connect_failed(u, what);
      return;
    }
    u->last_recv_ms = now;
    ClusterRt& cl = *clusters[u->cluster];
    if (cl.tls) {
      // The connect timer keeps running until the handshake is done.
      u->tls = std::make_unique<tls::Session>(*cl.tls, chunks, tls_peer(cl, endpoint_of(u)));
      u->plain.set_pool(&chunks);
      u->out.set_pool(&chunks, /*past_bound=*/true);  // ciphertext
      u->state = UpState::Handshake;
      u->tls->handshake({}, u->out);  // ClientHello
      start_send(u, Op::UpSend);
    } else {
      TimerList::disarm(u->timer);
      u->state = UpState::Ready;
      mark_dirty(u);
    }
    arm_recv(u, Op::UpRecv);
  }

  // The name the backend's certificate must carry: server_name, else the
  // endpoint's DNS name, else its IP address.
  tls::Peer tls_peer(const ClusterRt& c, const EndpointRt& ep) const {
    if (!c.cfg->tls.server_name.empty()) return {c.cfg->tls.server_name, false};
    if (ep.dns_name >= 0) return {c.cfg->dns_names[static_cast<size_t>(ep.dns_name)].host, false};
    std::string ip = ep.addr.text.substr(0, ep.addr.text.rfind(':'));
    if (!ip.empty() && ip.front() == '[') ip = ip.substr(1, ip.size() - 2);
    return {ip, true};
  }

  void on_up_handshake(UpConn* u, std::span<const uint8_t> in) {
    tls::HandshakeState st = u->tls->handshake(in, u->out);
    mark_dirty(u);
    if (st == tls::HandshakeState::InProgress) return;
    if (st == tls::HandshakeState::Failed) {
      std::string what = "TLS handshake failed: " + u->tls->failure();
      connect_failed(u, what.c_str());
      return;
    }
    if (u->tls->alpn() != tls::Alpn::H2 && u->tls->alpn() != tls::Alpn::None) {
      connect_failed(u, "TLS handshake: the backend did not choose ALPN h2");
      return;
    }
    TimerList::disarm(u->timer);
    u->state = UpState::Ready;
    on_up_plaintext_records(u, {});  // records that came with the server's Finished
  }

  // Decrypts TLS records from the backend and feeds the HTTP/2 session.
  void on_up_plaintext_records(UpConn* u, std::span<const uint8_t> in) {
    bool h2_failed = false;
    Result<void> r = u->tls->read(in, u->out, [&](const uint8_t* p, size_t n) {
      if (!h2_failed && n > 0 && !u->h2->receive(p, n)) h2_failed = true;
    });
    if (h2_failed || !r) {
      ++counters.upstream_lost;
      close_up(u, h2_failed ? "upstream protocol error"
                  : r.error() == Error::Closed ? "upstream closed TLS (close_notify)"
                                               : "upstream TLS record error");
    }
  }

  void on_up_recv(const io::Completion& c) {
    UpConn* u = ups.find(c.user_data);
    const int bid = c.buffer_id();
    if (u == nullptr) {
      if (bid >= 0) ring.recycle(bid);
      return;
    }
    if (!c.more()) {
      u->recv_armed = false;
      --u->inflight;
    }
    if (c.res <= 0 || u->closing) {
      if (bid >= 0) ring.recycle(bid);
      if (u->closing) {
        maybe_free(u);
        return;
      }
      if (c.res == -ENOBUFS) {
        mark_dirty(u);
        return;
      }
      ++counters.upstream_lost;
      char why[160];
      if (u->send_errno != 0)
        std::snprintf(why, sizeof why, "upstream %s: send failed: %s", endpoint_of(u).addr.text.c_str(),
                      std::strerror(u->send_errno));
      else
        std::snprintf(why, sizeof why, "upstream %s: connection %s", endpoint_of(u).addr.text.c_str(),
                      c.res == 0 ? "closed by the backend" : std::strerror(-c.res));
      close_up(u, why);
      return;
    }
    u->last_recv_ms = now;
    std::span<const uint8_t> in(ring.buffer(bid), static_cast<size_t>(c.res));
    mark_dirty(u);
    if (u->state == UpState::Handshake) {
      on_up_handshake(u, in);
    } else if (u->tls) {
      on_up_plaintext_records(u, in);
    } else if (!u->h2->receive(in.data(), in.size())) {
      ++counters.upstream_lost;
      close_up(u, "upstream protocol error");
    }
    ring.recycle(bid);  // the TLS session kept what it did not consume
  }

  void flush_up(UpConn* u) {
    if (u->send_errno != 0) {
      arm_recv(u, Op::UpRecv);
      return;
    }
    if (u->state == UpState::Handshake) {
      start_send(u, Op::UpSend);
      arm_recv(u, Op::UpRecv);
      return;
    }
    if (u->state != UpState::Ready || !u->h2 || u->h2->failed()) return;
    if (u->out.size() < kOutputHighWater) {
      if (u->tls) {
        u->h2->produce(u->plain, kProduceBudget);
        encrypt(*u->tls, u->plain, u->out);
      } else {
        u->h2->produce(u->out, kProduceBudget);
      }
    }
    start_send(u, Op::UpSend);
    if (u->h2->finished() && u->out.empty() && !u->send_inflight) {
      close_up(u, "upstream session finished");
      return;
    }
    arm_recv(u, Op::UpRecv);
  }

  void close_up(UpConn* u, const char* why, bool nothing_sent = false) {
    if (u->closing) return;
    LOG_DEBUG("upstream", "%u: close upstream (%s)", id, why);
    u->closing = true;
    u->state = UpState::Closed;
    TimerList::disarm(u->timer);
    ClusterRt& c = *clusters[u->cluster];
    --c.connections;
    std::vector<UpConn*>& conns = c.endpoints[u->endpoint]->conns;
    for (size_t i = 0; i < conns.size(); ++i)
      if (conns[i] == u) {
        conns[i] = conns.back();
        conns.pop_back();
        break;
      }
    // Every stream on it: retried elsewhere if never sent, else grpc-status 14.
    const uint32_t outer = std::exchange(streams_lost, 0);
    if (u->h2) u->h2->fail(why, nothing_sent);
    u->h2.reset();
    // The backend saw streams that the loss ended: one failure of the
    // endpoint, however many there were (a crash under load must not eject
    // it once per stream).
    if (streams_lost > 0) record_result(c, u->endpoint, true, why);
    streams_lost = outer;
    begin_close(u);
  }

  void warn_endpoint(EndpointRt& ep, const char* why) {
    if (now - ep.last_warning_ms < 1000 && ep.last_warning_ms != 0) {
      ++ep.suppressed;
      return;
    }
    if (ep.suppressed > 0)
      LOG_WARN("upstream", "%u: %s (and %lu similar in the last second)", id, why, ep.suppressed);
    else
      LOG_WARN("upstream", "%u: %s", id, why);
    ep.last_warning_ms = now;
    ep.suppressed = 0;
  }

  // ------------------------------------------------------------ DNS
  void apply_dns() {
    std::vector<DnsUpdate> updates;
    {
      std::lock_guard<std::mutex> lock(dns_mu);
      updates.swap(dns_inbox);
      dns_pending.store(false, std::memory_order_release);
    }
    for (DnsUpdate& u : updates) {
      ClusterRt& c = *clusters.at(u.cluster);
      ++counters.dns_updates;
      for (size_t e = 0; e < c.endpoints.size(); ++e) {
        EndpointRt& ep = *c.endpoints[e];
        if (ep.dns_name != static_cast<int>(u.name)) continue;
        // By address: the endpoint written as the name keeps the name as its
        // text, and must survive a refresh that returns its address.
        bool keep = std::any_of(u.addrs.begin(), u.addrs.end(),
                                [&](const config::SocketAddress& a) { return a.same_address(ep.addr); });
        if (keep == c.states[e].active) continue;
        c.states[e].active = keep;  // gone: no new streams; running ones finish (upstream_tick)
        LOG_INFO("upstream", "%u: cluster %s: endpoint %s %s (DNS)", id, c.cfg->name.c_str(), ep.addr.text.c_str(),
                 keep ? "back" : "removed, draining");
      }
      for (const config::SocketAddress& a : u.addrs) {
        bool known = false;
        for (size_t e = 0; e < c.endpoints.size() && !known; ++e)
          known = c.endpoints[e]->dns_name == static_cast<int>(u.name) &&
                  c.endpoints[e]->addr.same_address(a) && c.states[e].active;
        if (known) continue;
        add_endpoint(c, a, static_cast<int>(u.name));
        LOG_INFO("upstream", "%u: cluster %s: endpoint %s added (DNS)", id, c.cfg->name.c_str(), a.text.c_str());
      }
    }
  }

  // ------------------------------------------------------------ upstream timers
  // Keepalive PINGs on quiet connections, idle connections closed,
  // health checks due or timed out.
  void upstream_tick() {
    // By index: closing a connection can retry its streams on a new one,
    // which may grow ups.items.
    for (size_t i = 0; i < ups.items.size(); ++i) {
      UpConn* u = ups.items[i].get();
      if (u->fd < 0 || u->closing) continue;
      if (u->send_errno != 0) {
        if (now - u->send_failed_ms >= 1000) {
          ++counters.upstream_lost;
          close_up(u, "upstream send failed and the connection did not end");
        }
        continue;
      }
      if (u->state != UpState::Ready || !u->h2) continue;
      const config::Cluster& cfg = *clusters[u->cluster]->cfg;
      if (!clusters[u->cluster]->states[u->endpoint].active && u->h2->active_streams() == 0) {
        close_up(u, "endpoint removed from DNS");  // drained
        continue;
      }
      if (u->h2->active_streams() > 0) {
        u->idle_since_ms = 0;
      } else if (u->idle_since_ms == 0) {
        u->idle_since_ms = now;
      } else if (now - u->idle_since_ms >= static_cast<uint64_t>(cfg.idle_timeout.count())) {
        ++counters.upstream_idle_closed;
        close_up(u, "upstream connection idle");
        continue;
      }
      if (u->ping_sent_ms != 0 && u->last_recv_ms >= u->ping_sent_ms) u->ping_sent_ms = 0;
      if (u->ping_sent_ms != 0) {
        if (now - u->ping_sent_ms >= static_cast<uint64_t>(cfg.keepalive_timeout.count())) {
          ++counters.upstream_keepalive_timeouts;
          char why[160];
          std::snprintf(why, sizeof why, "upstream %s: no answer to a keepalive PING", endpoint_of(u).addr.text.c_str());
          warn_endpoint(endpoint_of(u), why);
          ++counters.upstream_lost;
          close_up(u, why);
        }
      } else if (now - u->last_recv_ms >= static_cast<uint64_t>(cfg.keepalive_interval.count())) {
        u->ping_sent_ms = now;
        u->h2->ping();
      }
    }
    for (auto& cp : clusters) {
      ClusterRt& c = *cp;
      if (!c.cfg->health_check.enabled || stopping) continue;
      for (size_t e = 0; e < c.endpoints.size(); ++e) {
        EndpointRt& ep = *c.endpoints[e];
        if (ep.probe != nullptr && now >= ep.probe_deadline_ms) {
          ep.probe_session->cancel_probe(ep.probe);
          ep.probe = nullptr;
          ep.probe_session = nullptr;
          health_result(c, e, false, "health check timed out");
        }
        if (ep.probe == nullptr && c.states[e].active && now >= ep.next_check_ms) start_health_check(c, e);
      }
    }
  }

  void start_health_check(ClusterRt& c, size_t e) {
    EndpointRt& ep = *c.endpoints[e];
    const config::HealthCheck& hc = c.cfg->health_check;
    ep.next_check_ms = now + static_cast<uint64_t>(hc.interval.count());
    const char* why = "cannot open a connection";
    UpConn* u = pooled_connection(c, e, why);
    void* probe = u != nullptr ? u->h2->submit_probe(hc.service, ep.addr.text, &ep) : nullptr;
    if (probe == nullptr) {
      health_result(c, e, false, why);
      return;
    }
    ep.probe = probe;
    ep.probe_session = u->h2.get();
    ep.probe_deadline_ms = now + static_cast<uint64_t>(hc.timeout.count());
  }

  void health_result(ClusterRt& c, size_t e, bool ok, const char* why) {
    if (!ok) ++counters.health_check_failures;
    upstream::EndpointState& st = c.states[e];
    if (!st.on_check(ok, c.health)) return;
    if (st.healthy)
      LOG_INFO("upstream", "%u: cluster %s: endpoint %s is healthy", id, c.cfg->name.c_str(),
               c.endpoints[e]->addr.text.c_str());
    else
      LOG_WARN("upstream", "%u: cluster %s: endpoint %s is unhealthy: %s", id, c.cfg->name.c_str(),
               c.endpoints[e]->addr.text.c_str(), why);
  }

  void on_probe_done(EndpointRt& ep, bool ok, const char* why) {
    ep.probe = nullptr;
    ep.probe_session = nullptr;
    health_result(*clusters[ep.cluster], ep.index, ok, why);
  }

  // ------------------------------------------------------------ common IO
  void start_send(Conn* c, Op op) {
    if (c->send_inflight || c->out.empty() || c->closing) return;
    int n = c->out.iovecs(c->iov, kSendIovecs);
    c->msg = msghdr{};
    c->msg.msg_iov = c->iov;
    c->msg.msg_iovlen = static_cast<size_t>(n);
    ring.prep_sendmsg(c->fd, &c->msg, pack(op, c->gen, c->slot));
    c->send_inflight = true;
    c->send_since_ms = now;
    ++c->inflight;
  }

  void on_send(Conn* c, const io::Completion& cqe, bool down) {
    if (c == nullptr) return;
    --c->inflight;
    c->send_inflight = false;
    if (c->closing) {
      maybe_free(c);
      return;
    }
    if (cqe.res < 0) {
      if (down) {
        close_down(static_cast<DownConn*>(c), std::strerror(-cqe.res));
      } else {
        on_up_send_failed(static_cast<UpConn*>(c), -cqe.res);
      }
      return;
    }
    c->out.consume(static_cast<size_t>(cqe.res));
    mark_dirty(c);
  }

  // A backend that sends GOAWAY and closes resets the connection when our next
  // request arrives; the send fails, possibly before the GOAWAY is read. Streams
  // above its last-stream-id were never processed and can be retried, so read
  // to the end first: the receive then fails too and closes the connection
  // (upstream_tick closes it if that does not come within a second).
  void on_up_send_failed(UpConn* u, int err) {
    u->send_errno = err;
    u->send_failed_ms = now;
    u->out.clear();
    arm_recv(u, Op::UpRecv);
  }

  // Cancel what is in flight; the object is freed once nothing refers to it.
  void begin_close(Conn* c) {
    if (c->inflight > 0) ring.prep_cancel_fd(c->fd, pack(Op::Ignore, 0, 0));
    maybe_free(c);
  }

  void maybe_free(Conn* c) {
    if (c->closing && c->inflight == 0) to_free.push_back(c);
  }

  void finish_close(Conn* c) {
    if (c->fd >= 0) ::close(c->fd);
    c->fd = -1;
    c->out.clear();
    if (op_is_down(c)) {
      auto* d = static_cast<DownConn*>(c);
      d->plain.clear();
      ListenerRt* l = d->listener;
      downs.release(d);
      if (l != nullptr) {
        --l->connections;
        arm_accept(*l);  // a descriptor and a place under max_connections are free again
      }
    } else {
      auto* u = static_cast<UpConn*>(c);
      u->plain.clear();
      u->tls.reset();
      ups.release(u);
    }
  }

  // ------------------------------------------------------------ timers, stop
  void on_tick() {
    h2ctx.release_idle_memory(now);
    for (auto& lp : listeners) {
      ListenerRt& l = *lp;
      while (TimerLink* t = l.handshake_timers.pop_expired(now)) {
        auto* d = container_of_down(t);
        const DownState st = d->state;
        if (st == DownState::Proxy || st == DownState::Handshake) ++counters.handshake_timeouts;
        close_down(d, st == DownState::Proxy       ? "PROXY header timeout"
                      : st == DownState::Handshake ? "handshake timeout"
                                                   : "linger timeout");
      }
      while (TimerLink* t = l.idle_timers.pop_expired(now)) {
        auto* d = container_of_down(t);
        if (d->h2 && d->h2->active_streams() > 0) {
          l.idle_timers.arm(*t, now);  // busy, not idle
          continue;
        }
        ++counters.idle_closed;
        if (d->h2) {
          d->h2->shutdown();
          d->close_after_flush = true;
          mark_dirty(d);
        } else {
          close_down(d, "idle timeout");
        }
      }
      if (!l.accepting) arm_accept(l);
    }
    if (fd_warning.overdue(now)) warn_fds();
    if (chunk_pool_full()) relieve_chunk_pool();
    if (pool_warning.overdue(now)) warn_pool();
    for (auto& cp : clusters) {
      ClusterRt& c = *cp;
      while (TimerLink* t = c.connect_timers.pop_expired(now)) connect_failed(container_of_up(t), "connect timed out");
    }
    h2ctx.expire_deadlines(now);
    if (dns_pending.load(std::memory_order_acquire)) apply_dns();
    upstream_tick();
    if (stopping) drain_step();
    ring.prep_timeout_ms(kTickMs, pack(Op::Tick, 0, 0));
  }

  static DownConn* container_of_down(TimerLink* t) {
    return static_cast<DownConn*>(static_cast<Conn::Timer*>(t)->owner);
  }
  static UpConn* container_of_up(TimerLink* t) { return static_cast<UpConn*>(static_cast<Conn::Timer*>(t)->owner); }

  void begin_stop() {
    if (stopping) return;
    stopping = true;
    drain_deadline = now + kDrainMs;
    for (auto& l : listeners)
      if (l->fd >= 0) ring.prep_cancel_fd(l->fd, pack(Op::Ignore, 0, 0));
    for (auto& d : downs.items) {
      if (d->fd < 0 || d->closing) continue;
      if (d->h2) {
        d->h2->shutdown();  // GOAWAY: no new streams, running ones finish
        mark_dirty(d.get());
      } else {
        close_down(d.get(), "shutting down");
      }
    }
    drain_step();
  }

  void drain_step() {
    const bool late = now >= drain_deadline;
    for (auto& d : downs.items) {
      if (d->fd < 0 || d->closing) continue;
      if (late || !d->h2 || d->h2->active_streams() == 0) {
        if (d->h2 && !late) {
          d->close_after_flush = true;
          mark_dirty(d.get());
        } else {
          close_down(d.get(), late ? "drain deadline" : "shutting down");
        }
      }
    }
    if (downs.live == 0)
      for (auto& u : ups.items)
        if (u->fd >= 0 && !u->closing) close_up(u.get(), "gateway shutting down");
  }
};

void Conn::wake() { shard->mark_dirty(this); }
void Conn::idle() { shard->on_idle(this); }

void EndpointRt::probe_done(bool ok, const char* why) { loop->on_probe_done(*this, ok, why); }

struct Shard::Impl : Loop {
  using Loop::Loop;
};

std::string Counters::describe() const {
  char buf[4096];
  std::snprintf(buf, sizeof buf,
                "accepted=%lu handshakes=%lu handshake_failures=%lu handshake_timeouts=%lu http1_rejected=%lu "
                "idle_closed=%lu downstream_protocol_errors=%lu tls_userspace=%lu upstream_connects=%lu "
                "upstream_connect_failures=%lu upstream_lost=%lu streams_forwarded=%lu streams_unavailable=%lu "
                "streams_reset_by_client=%lu streams_reset_by_upstream=%lu header_limit_resets=%lu "
                "deadline_exceeded=%lu retries=%lu circuit_breaker_streams=%lu circuit_breaker_connections=%lu "
                "no_healthy_endpoint=%lu endpoints_ejected=%lu endpoints_ejection_refused=%lu "
                "health_check_failures=%lu upstream_idle_closed=%lu upstream_keepalive_timeouts=%lu dns_updates=%lu "
                "proxy_headers=%lu proxy_errors=%lu "
                "h2_glitch_empty_data=%lu h2_glitch_priority=%lu h2_glitch_unknown_frames=%lu h2_glitch_pings=%lu "
                "h2_glitch_settings=%lu h2_glitch_window_updates=%lu h2_glitch_invalid_frames=%lu h2_glitch_stale_resets=%lu "
                "h2_streams_cancelled=%lu h2_closed_glitch_budget=%lu h2_closed_reset_budget=%lu "
                "h2_closed_shard_reset_budget=%lu h2_closed_flood=%lu h2_closed_bad_preface=%lu",
                accepted, handshakes, handshake_failures, handshake_timeouts, http1_rejected, idle_closed,
                downstream_protocol_errors, tls_userspace, upstream_connects, upstream_connect_failures, upstream_lost,
                streams_forwarded, streams_unavailable, streams_reset_by_client, streams_reset_by_upstream,
                header_limit_resets, deadline_exceeded, retries, circuit_breaker_streams, circuit_breaker_connections,
                no_healthy_endpoint, endpoints_ejected, endpoints_ejection_refused, health_check_failures,
                upstream_idle_closed, upstream_keepalive_timeouts, dns_updates, proxy_headers, proxy_errors,
                h2_glitch_empty_data,
                h2_glitch_priority, h2_glitch_unknown_frames, h2_glitch_pings, h2_glitch_settings,
                h2_glitch_window_updates, h2_glitch_invalid_frames, h2_glitch_stale_resets, h2_streams_cancelled, h2_closed_glitch_budget,
                h2_closed_reset_budget, h2_closed_shard_reset_budget, h2_closed_flood, h2_closed_bad_preface);
  std::string s = buf;
  static const char* versions[2] = {"tls1.2", "tls1.3"};
  for (int v = 0; v < 2; ++v)
    for (int c = 0; c < 3; ++c)
      if (ktls_offloaded[v][c] > 0)
        s += std::string(" ktls_") + versions[v] + "_" + tls::to_string(static_cast<tls::KtlsCipher>(c)) + "=" +
             std::to_string(ktls_offloaded[v][c]);
  std::snprintf(buf, sizeof buf,
                " ktls_unsupported_cipher=%lu ktls_failed=%lu ktls_close_notify=%lu ktls_alerts=%lu "
                "ktls_key_update_closed=%lu ktls_unexpected_records=%lu",
                ktls_unsupported_cipher, ktls_failed, ktls_close_notify, ktls_alerts, ktls_key_update_closed,
                ktls_unexpected_records);
  s += buf;
  std::snprintf(buf, sizeof buf, " body_buffer_resets=%lu accept_paused=%lu fd_exhausted=%lu send_stalled_closed=%lu",
                body_buffer_resets, accept_paused, fd_exhausted, send_stalled_closed);
  s += buf;
  // Index 0 (none): protocol errors OpenSSL's own record layer found.
  s += " tls_openssl_record_errors=" + std::to_string(tls_violations[0]);
  for (int v = 1; v < static_cast<int>(tls::TlsViolation::Count); ++v)
    s += std::string(" tls_violation_") + tls::to_string(static_cast<tls::TlsViolation>(v)) + "=" +
         std::to_string(tls_violations[v]);
  return s;
}

void Counters::add(const Counters& o) {
  accepted += o.accepted;
  handshakes += o.handshakes;
  handshake_failures += o.handshake_failures;
  handshake_timeouts += o.handshake_timeouts;
  http1_rejected += o.http1_rejected;
  idle_closed += o.idle_closed;
  downstream_protocol_errors += o.downstream_protocol_errors;
  upstream_connects += o.upstream_connects;
  upstream_connect_failures += o.upstream_connect_failures;
  upstream_lost += o.upstream_lost;
  streams_forwarded += o.streams_forwarded;
  streams_unavailable += o.streams_unavailable;
  streams_reset_by_client += o.streams_reset_by_client;
  streams_reset_by_upstream += o.streams_reset_by_upstream;
  header_limit_resets += o.header_limit_resets;
  deadline_exceeded += o.deadline_exceeded;
  retries += o.retries;
  circuit_breaker_streams += o.circuit_breaker_streams;
  circuit_breaker_connections += o.circuit_breaker_connections;
  no_healthy_endpoint += o.no_healthy_endpoint;
  endpoints_ejected += o.endpoints_ejected;
  endpoints_ejection_refused += o.endpoints_ejection_refused;
  health_check_failures += o.health_check_failures;
  upstream_idle_closed += o.upstream_idle_closed;
  upstream_keepalive_timeouts += o.upstream_keepalive_timeouts;
  dns_updates += o.dns_updates;
  proxy_headers += o.proxy_headers;
  proxy_errors += o.proxy_errors;
  h2_glitch_empty_data += o.h2_glitch_empty_data;
  h2_glitch_priority += o.h2_glitch_priority;
  h2_glitch_unknown_frames += o.h2_glitch_unknown_frames;
  h2_glitch_pings += o.h2_glitch_pings;
  h2_glitch_settings += o.h2_glitch_settings;
  h2_glitch_window_updates += o.h2_glitch_window_updates;
  h2_glitch_invalid_frames += o.h2_glitch_invalid_frames;
  h2_glitch_stale_resets += o.h2_glitch_stale_resets;
  h2_streams_cancelled += o.h2_streams_cancelled;
  h2_closed_glitch_budget += o.h2_closed_glitch_budget;
  h2_closed_reset_budget += o.h2_closed_reset_budget;
  h2_closed_shard_reset_budget += o.h2_closed_shard_reset_budget;
  h2_closed_flood += o.h2_closed_flood;
  h2_closed_bad_preface += o.h2_closed_bad_preface;
  tls_userspace += o.tls_userspace;
  for (int v = 0; v < 2; ++v)
    for (int c = 0; c < 3; ++c) ktls_offloaded[v][c] += o.ktls_offloaded[v][c];
  ktls_unsupported_cipher += o.ktls_unsupported_cipher;
  ktls_failed += o.ktls_failed;
  ktls_close_notify += o.ktls_close_notify;
  ktls_alerts += o.ktls_alerts;
  ktls_key_update_closed += o.ktls_key_update_closed;
  ktls_unexpected_records += o.ktls_unexpected_records;
  for (int v = 0; v < static_cast<int>(tls::TlsViolation::Count); ++v) tls_violations[v] += o.tls_violations[v];
  body_buffer_resets += o.body_buffer_resets;
  accept_paused += o.accept_paused;
  fd_exhausted += o.fd_exhausted;
  send_stalled_closed += o.send_stalled_closed;
}

Shard::Shard(unsigned id, const config::Config& config, std::vector<int> listen_fds, const tls::KtlsSupport& ktls)
    : impl_(std::make_unique<Impl>(id, config, std::move(listen_fds), ktls)) {}

Shard::~Shard() = default;

void Shard::run() {
  impl_->run();
  const h2::Counters& h = impl_->h2ctx.counters();
  Counters& c = impl_->counters;
  c.streams_forwarded = h.streams_forwarded;
  c.streams_unavailable = h.streams_unavailable;
  c.streams_reset_by_client = h.streams_reset_by_client;
  c.streams_reset_by_upstream = h.streams_reset_by_upstream;
  c.header_limit_resets = h.header_limit_resets;
  c.deadline_exceeded = h.deadline_exceeded;
  c.retries = h.retries;
  c.body_buffer_resets = h.body_buffer_resets;
  c.h2_glitch_empty_data = h.glitch_empty_data;
  c.h2_glitch_priority = h.glitch_priority;
  c.h2_glitch_unknown_frames = h.glitch_unknown_frames;
  c.h2_glitch_pings = h.glitch_pings;
  c.h2_glitch_settings = h.glitch_settings;
  c.h2_glitch_window_updates = h.glitch_window_updates;
  c.h2_glitch_invalid_frames = h.glitch_invalid_frames;
  c.h2_glitch_stale_resets = h.glitch_stale_resets;
  c.h2_streams_cancelled = h.streams_cancelled;
  c.h2_closed_glitch_budget = h.closed_glitch_budget;
  c.h2_closed_reset_budget = h.closed_reset_budget;
  c.h2_closed_shard_reset_budget = h.closed_shard_reset_budget;
  c.h2_closed_flood = h.closed_flood;
  c.h2_closed_bad_preface = h.closed_bad_preface;
}

void Shard::update_dns(uint32_t cluster, uint32_t name, std::vector<config::SocketAddress> addrs) {
  std::lock_guard<std::mutex> lock(impl_->dns_mu);
  impl_->dns_inbox.push_back(Loop::DnsUpdate{cluster, name, std::move(addrs)});
  impl_->dns_pending.store(true, std::memory_order_release);
}

void Shard::stop() {
  uint64_t one = 1;
  ssize_t w = ::write(impl_->stop_fd, &one, sizeof one);
  (void)w;
}

const Counters& Shard::counters() const { return impl_->counters; }

std::string Shard::ring_features() const { return impl_->ring.features().describe(); }

}  // namespace tlsgate::shard
