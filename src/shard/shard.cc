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

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "tlsgate/buffer.hh"
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
constexpr uint64_t kDrainMs = 5000;
constexpr size_t kProduceBudget = 256 * 1024;
constexpr size_t kOutputHighWater = 1 << 20;  // stop producing above this
constexpr size_t kMaxConnsPerEndpoint = 64;
constexpr int kSendIovecs = 16;

uint64_t now_ms() {
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

enum class DownState { Handshake, H2, Http1, Lingering, Closed };
const char* to_string(DownState s) {
  switch (s) {
    case DownState::Handshake: return "handshake";
    case DownState::H2: return "h2";
    case DownState::Http1: return "http1";
    case DownState::Lingering: return "lingering";
    case DownState::Closed: return "closed";
  }
  return "?";
}

enum class UpState { Connecting, Ready, Closed };

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
  ByteQueue out;               // bytes to send, ciphertext (down) or h2c (up)
  msghdr msg{};
  iovec iov[kSendIovecs]{};
  // Handshake, idle, linger or connect timer (one at a time).
  struct Timer : TimerLink {
    Conn* owner;
  } timer{{}, this};

  void wake() override;
};

enum class KtlsState { Off, Pending, On };

struct DownConn : Conn {
  struct ListenerRt* listener = nullptr;
  DownState state = DownState::Handshake;
  KtlsState ktls = KtlsState::Off;
  std::unique_ptr<tls::Session> tls;
  std::unique_ptr<h2::DownstreamSession> h2;
  ByteQueue plain;  // nghttp2's output before encryption
  std::string client_ip;
};

struct UpConn : Conn {
  uint32_t cluster = 0;
  uint32_t endpoint = 0;
  UpState state = UpState::Connecting;
  std::unique_ptr<h2::UpstreamSession> h2;
};

struct ListenerRt {
  const config::Listener* cfg = nullptr;
  uint32_t index = 0;
  int fd = -1;
  uint32_t cluster = 0;
  std::unique_ptr<tls::Context> tls;
  bool ktls = false;  // try kernel TLS on this listener's connections
  TimerList handshake_timers;
  TimerList idle_timers;
  bool accepting = false;
};

struct EndpointRt {
  const config::SocketAddress* addr = nullptr;
  std::vector<UpConn*> conns;
  uint64_t last_warning_ms = 0;  // failures are counted always, logged at most once a second
  uint64_t suppressed = 0;
};

struct ClusterRt {
  const config::Cluster* cfg = nullptr;
  uint32_t index = 0;
  std::vector<EndpointRt> endpoints;
  upstream::RoundRobin rr;
  TimerList connect_timers;
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
  ChunkPool chunks;
  h2::Context h2ctx;
  std::vector<std::unique_ptr<ListenerRt>> listeners;
  std::vector<std::unique_ptr<ClusterRt>> clusters;
  Slots<DownConn> downs;
  Slots<UpConn> ups;
  std::vector<Conn*> dirty;
  std::vector<Conn*> to_free;
  Counters counters;
  int stop_fd = -1;
  uint64_t stop_value = 0;
  bool stopping = false;
  uint64_t drain_deadline = 0;
  uint64_t now = 0;
  tls::KtlsSupport ktls_support;

  Loop(unsigned shard_id, const config::Config& cfg, std::vector<int> fds, const tls::KtlsSupport& ktls)
      : id(shard_id),
        config(cfg),
        ring(kRingEntries, kRecvBuffers, kRecvBufferSize),
        chunks(64),
        h2ctx(chunks, *this),
        ktls_support(ktls) {
    stop_fd = ::eventfd(0, EFD_CLOEXEC);
    if (stop_fd < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
    for (size_t i = 0; i < cfg.clusters.size(); ++i) {
      clusters.push_back(std::make_unique<ClusterRt>());
      ClusterRt& c = *clusters.back();
      c.cfg = &cfg.clusters[i];
      c.index = static_cast<uint32_t>(i);
      for (const config::SocketAddress& a : c.cfg->endpoints) c.endpoints.push_back(EndpointRt{&a, {}});
      c.rr.set_count(c.endpoints.size());
      c.connect_timers.set_duration(static_cast<uint64_t>(c.cfg->connect_timeout.count()));
    }
    for (size_t i = 0; i < cfg.listeners.size(); ++i) {
      listeners.push_back(std::make_unique<ListenerRt>());
      ListenerRt& l = *listeners.back();
      l.cfg = &cfg.listeners[i];
      l.index = static_cast<uint32_t>(i);
      l.fd = fds.at(i);
      for (size_t c = 0; c < cfg.clusters.size(); ++c)
        if (cfg.clusters[c].name == l.cfg->cluster) l.cluster = static_cast<uint32_t>(c);
      l.ktls = l.cfg->tls.ktls != config::Ktls::Off && ktls.any();
      l.tls = std::make_unique<tls::Context>(l.cfg->tls, l.ktls);
      l.handshake_timers.set_duration(static_cast<uint64_t>(l.cfg->handshake_timeout.count()));
      l.idle_timers.set_duration(static_cast<uint64_t>(l.cfg->idle_timeout.count()));
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
    now = now_ms();
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
      now = now_ms();
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

  bool op_is_down(Conn* c) const {
    return c->slot < downs.items.size() && downs.items[c->slot].get() == c;
  }

  void mark_dirty(Conn* c) {
    if (c->dirty || c->closing) return;
    c->dirty = true;
    dirty.push_back(c);
  }

  // ------------------------------------------------------------ accept
  void arm_accept(ListenerRt& l) {
    if (l.fd < 0 || l.accepting) return;
    ring.prep_accept_multishot(l.fd, pack(Op::Accept, 0, l.index));
    l.accepting = true;
  }

  void on_accept(const io::Completion& c) {
    ListenerRt& l = *listeners.at(slot_of(c.user_data));
    if (!c.more()) l.accepting = false;
    if (c.res < 0) {
      if (c.res != -ECANCELED) LOG_WARN("shard", "%u: accept on %s: %s", id, l.cfg->name.c_str(), std::strerror(-c.res));
      if (!stopping && !l.accepting && c.res != -EMFILE && c.res != -ENFILE) arm_accept(l);
      return;  // EMFILE: re-armed by the next tick
    }
    if (stopping) {
      ::close(c.res);
      return;
    }
    ++counters.accepted;
    DownConn* d = downs.acquire();
    d->shard = this;
    d->fd = c.res;
    d->listener = &l;
    d->out.set_pool(&chunks);
    d->plain.set_pool(&chunks);
    io::set_nodelay(d->fd);
    char ip[64];
    d->client_ip = io::peer_ip(d->fd, ip, sizeof ip) ? ip : "unknown";
    d->tls = std::make_unique<tls::Session>(*l.tls, chunks);
    d->ktls = l.ktls ? KtlsState::Pending : KtlsState::Off;
    l.handshake_timers.arm(d->timer, now);
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
      case DownState::Handshake: return on_handshake_bytes(d, in);
      case DownState::H2: return on_h2_bytes(d, in);
      case DownState::Http1: return on_http1_bytes(d, in);
      case DownState::Lingering: return;  // discard until the peer closes
      case DownState::Closed: return;
    }
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
      s.max_concurrent_streams = d->listener->cfg->max_concurrent_streams;
      s.client_ip = d->client_ip;
      d->h2 = std::make_unique<h2::DownstreamSession>(h2ctx, *d, std::move(s));
    }
    // Application bytes that came with the client's Finished are pending.
    on_down_bytes(d, {});
  }

  void on_h2_bytes(DownConn* d, std::span<const uint8_t> in) {
    d->listener->idle_timers.arm(d->timer, now);
    if (d->ktls == KtlsState::On) {  // the kernel already decrypted
      mark_dirty(d);
      if (!in.empty() && !d->h2->receive(in.data(), in.size())) {
        ++counters.downstream_protocol_errors;
        d->close_after_flush = true;
      }
      return;
    }
    bool failed = false;
    Result<void> r = d->tls->read(in, d->out, [&](const uint8_t* p, size_t n) {
      if (!failed && !d->h2->receive(p, n)) failed = true;
    });
    mark_dirty(d);
    if (failed) {
      ++counters.downstream_protocol_errors;
      d->close_after_flush = true;  // nghttp2 queued a GOAWAY
      return;
    }
    if (!r) {
      if (r.error() == Error::Protocol)
        LOG_DEBUG("tls", "%u: bad record from %s: %s", id, d->client_ip.c_str(), d->tls->failure().c_str());
      if (r.error() == Error::Closed) d->tls->shutdown(d->out);
      d->close_after_flush = true;
    }
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

  void flush_down(DownConn* d) {
    if (d->ktls == KtlsState::Pending && d->state == DownState::H2) try_offload(d);
    if (d->ktls == KtlsState::On && d->h2 && d->out.size() < kOutputHighWater) {
      d->h2->produce(d->out, kProduceBudget);  // the kernel encrypts
    } else if (d->ktls != KtlsState::On && d->state == DownState::H2 && d->h2 &&
               d->out.size() < kOutputHighWater) {
      d->h2->produce(d->plain, kProduceBudget);
      while (!d->plain.empty()) {
        iovec v[kSendIovecs];
        int n = d->plain.iovecs(v, kSendIovecs);
        size_t taken = 0;
        for (int i = 0; i < n; ++i) {
          if (!d->tls->write(static_cast<const uint8_t*>(v[i].iov_base), v[i].iov_len, d->out)) break;
          taken += v[i].iov_len;
        }
        d->plain.consume(taken);
        if (taken == 0) break;
      }
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
    if (d->close_after_flush && d->out.empty() && !d->send_inflight) {
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
    if (d->state == DownState::Handshake || d->tls->pending_input() > 0) arm_recv(d, Op::DownRecv, true);
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
    ++counters.ktls_other_records;
    LOG_DEBUG("tls", "%u: ignored record type %u from %s", id, rec.type, d->client_ip.c_str());
    mark_dirty(d);  // re-arms the receive
  }

  void close_down(DownConn* d, const char* why) {
    if (d->closing) return;
    LOG_DEBUG("shard", "%u: close downstream %s (%s, %s)", id, d->client_ip.c_str(), to_string(d->state), why);
    d->closing = true;
    d->state = DownState::Closed;
    TimerList::disarm(d->timer);
    d->h2.reset();  // cancels the upstream halves of its streams
    d->tls.reset();
    begin_close(d);
  }

  // ------------------------------------------------------------ upstream
  h2::UpstreamSession* pick_upstream(uint32_t cluster, const char*& why) override {
    if (stopping) {
      why = "gateway is shutting down";
      return nullptr;
    }
    ClusterRt& c = *clusters.at(cluster);
    if (c.endpoints.empty()) {
      why = "cluster has no endpoints";
      return nullptr;
    }
    EndpointRt& ep = c.endpoints[c.rr.next()];
    UpConn* best = nullptr;
    for (UpConn* u : ep.conns) {
      if (u->closing || !u->h2 || !u->h2->can_take_stream()) continue;
      if (best == nullptr || u->h2->active_streams() < best->h2->active_streams()) best = u;
    }
    if (best == nullptr) {
      if (ep.conns.size() >= kMaxConnsPerEndpoint) {
        why = "upstream connection limit reached";
        return nullptr;
      }
      best = open_upstream(c, static_cast<uint32_t>(&ep - c.endpoints.data()), why);
      if (best == nullptr) return nullptr;
    }
    return best->h2.get();
  }

  UpConn* open_upstream(ClusterRt& c, uint32_t endpoint, const char*& why) {
    EndpointRt& ep = c.endpoints[endpoint];
    int fd = io::tcp_socket(ep.addr->family());
    if (fd < 0) {
      why = "cannot create upstream socket";
      return nullptr;
    }
    ++counters.upstream_connects;
    UpConn* u = ups.acquire();
    u->shard = this;
    u->fd = fd;
    u->cluster = c.index;
    u->endpoint = endpoint;
    u->out.set_pool(&chunks);
    u->h2 = std::make_unique<h2::UpstreamSession>(h2ctx, *u);
    ep.conns.push_back(u);
    ring.prep_connect(fd, reinterpret_cast<const sockaddr*>(&ep.addr->storage), ep.addr->length,
                      pack(Op::UpConnect, u->gen, u->slot));
    ++u->inflight;
    c.connect_timers.arm(u->timer, now);
    LOG_DEBUG("upstream", "%u: connecting to %s", id, ep.addr->text.c_str());
    return u;
  }

  void on_connect(const io::Completion& c) {
    UpConn* u = ups.find(c.user_data);
    if (u == nullptr) return;
    --u->inflight;
    if (u->closing) {
      maybe_free(u);
      return;
    }
    TimerList::disarm(u->timer);
    if (c.res < 0) {
      ++counters.upstream_connect_failures;
      char why[160];
      std::snprintf(why, sizeof why, "upstream %s: connect failed: %s",
                    clusters[u->cluster]->endpoints[u->endpoint].addr->text.c_str(), std::strerror(-c.res));
      warn_endpoint(clusters[u->cluster]->endpoints[u->endpoint], why);
      close_up(u, why);
      return;
    }
    u->state = UpState::Ready;
    arm_recv(u, Op::UpRecv);
    mark_dirty(u);
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
      std::snprintf(why, sizeof why, "upstream %s: connection %s",
                    clusters[u->cluster]->endpoints[u->endpoint].addr->text.c_str(),
                    c.res == 0 ? "closed by the backend" : std::strerror(-c.res));
      close_up(u, why);
      return;
    }
    Result<void> r = u->h2->receive(ring.buffer(bid), static_cast<size_t>(c.res));
    ring.recycle(bid);
    mark_dirty(u);
    if (!r) {
      ++counters.upstream_lost;
      close_up(u, "upstream protocol error");
    }
  }

  void flush_up(UpConn* u) {
    if (u->state != UpState::Ready || !u->h2 || u->h2->failed()) return;
    if (u->out.size() < kOutputHighWater) u->h2->produce(u->out, kProduceBudget);
    start_send(u, Op::UpSend);
    if (u->h2->finished() && u->out.empty() && !u->send_inflight) {
      close_up(u, "upstream session finished");
      return;
    }
    arm_recv(u, Op::UpRecv);
  }

  void close_up(UpConn* u, const char* why) {
    if (u->closing) return;
    LOG_DEBUG("upstream", "%u: close upstream (%s)", id, why);
    u->closing = true;
    u->state = UpState::Closed;
    TimerList::disarm(u->timer);
    std::vector<UpConn*>& conns = clusters[u->cluster]->endpoints[u->endpoint].conns;
    for (size_t i = 0; i < conns.size(); ++i)
      if (conns[i] == u) {
        conns[i] = conns.back();
        conns.pop_back();
        break;
      }
    if (u->h2) u->h2->fail(why);  // every stream on it: grpc-status 14
    u->h2.reset();
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

  // ------------------------------------------------------------ common IO
  void start_send(Conn* c, Op op) {
    if (c->send_inflight || c->out.empty() || c->closing) return;
    int n = c->out.iovecs(c->iov, kSendIovecs);
    c->msg = msghdr{};
    c->msg.msg_iov = c->iov;
    c->msg.msg_iovlen = static_cast<size_t>(n);
    ring.prep_sendmsg(c->fd, &c->msg, pack(op, c->gen, c->slot));
    c->send_inflight = true;
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
        ++counters.upstream_lost;
        close_up(static_cast<UpConn*>(c), "upstream send failed");
      }
      return;
    }
    c->out.consume(static_cast<size_t>(cqe.res));
    mark_dirty(c);
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
      downs.release(d);
    } else {
      ups.release(static_cast<UpConn*>(c));
    }
  }

  // ------------------------------------------------------------ timers, stop
  void on_tick() {
    h2ctx.release_idle_memory(now);
    for (auto& lp : listeners) {
      ListenerRt& l = *lp;
      while (TimerLink* t = l.handshake_timers.pop_expired(now)) {
        auto* d = container_of_down(t);
        if (d->state == DownState::Handshake) ++counters.handshake_timeouts;
        close_down(d, d->state == DownState::Handshake ? "handshake timeout" : "linger timeout");
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
      if (!stopping && !l.accepting) arm_accept(l);
    }
    for (auto& cp : clusters) {
      ClusterRt& c = *cp;
      while (TimerLink* t = c.connect_timers.pop_expired(now)) {
        UpConn* u = container_of_up(t);
        ++counters.upstream_connect_failures;
        char why[160];
        std::snprintf(why, sizeof why, "upstream %s: connect timed out", c.endpoints[u->endpoint].addr->text.c_str());
        warn_endpoint(c.endpoints[u->endpoint], why);
        close_up(u, why);
      }
    }
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

struct Shard::Impl : Loop {
  using Loop::Loop;
};

std::string Counters::describe() const {
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                "accepted=%lu handshakes=%lu handshake_failures=%lu handshake_timeouts=%lu http1_rejected=%lu "
                "idle_closed=%lu downstream_protocol_errors=%lu tls_userspace=%lu upstream_connects=%lu "
                "upstream_connect_failures=%lu upstream_lost=%lu streams_forwarded=%lu streams_unavailable=%lu "
                "streams_reset_by_client=%lu streams_reset_by_upstream=%lu header_limit_resets=%lu",
                accepted, handshakes, handshake_failures, handshake_timeouts, http1_rejected, idle_closed,
                downstream_protocol_errors, tls_userspace, upstream_connects, upstream_connect_failures, upstream_lost,
                streams_forwarded, streams_unavailable, streams_reset_by_client, streams_reset_by_upstream,
                header_limit_resets);
  std::string s = buf;
  static const char* versions[2] = {"tls1.2", "tls1.3"};
  for (int v = 0; v < 2; ++v)
    for (int c = 0; c < 3; ++c)
      if (ktls_offloaded[v][c] > 0)
        s += std::string(" ktls_") + versions[v] + "_" + tls::to_string(static_cast<tls::KtlsCipher>(c)) + "=" +
             std::to_string(ktls_offloaded[v][c]);
  std::snprintf(buf, sizeof buf,
                " ktls_unsupported_cipher=%lu ktls_failed=%lu ktls_close_notify=%lu ktls_alerts=%lu "
                "ktls_key_update_closed=%lu ktls_other_records=%lu",
                ktls_unsupported_cipher, ktls_failed, ktls_close_notify, ktls_alerts, ktls_key_update_closed,
                ktls_other_records);
  return s + buf;
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
  tls_userspace += o.tls_userspace;
  for (int v = 0; v < 2; ++v)
    for (int c = 0; c < 3; ++c) ktls_offloaded[v][c] += o.ktls_offloaded[v][c];
  ktls_unsupported_cipher += o.ktls_unsupported_cipher;
  ktls_failed += o.ktls_failed;
  ktls_close_notify += o.ktls_close_notify;
  ktls_alerts += o.ktls_alerts;
  ktls_key_update_closed += o.ktls_key_update_closed;
  ktls_other_records += o.ktls_other_records;
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
}

void Shard::stop() {
  uint64_t one = 1;
  ssize_t w = ::write(impl_->stop_fd, &one, sizeof one);
  (void)w;
}

const Counters& Shard::counters() const { return impl_->counters; }

std::string Shard::ring_features() const { return impl_->ring.features().describe(); }

}  // namespace tlsgate::shard
