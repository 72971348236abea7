// The shard's event loop: completions in, connections driven, bytes out.
//
// Loop turn: submit + wait, dispatch every completion (a switch on the
// operation packed in user_data), then flush every connection that was woken
// during the turn, then free connections that are closed and have no
// operation in flight. Nothing is freed while the kernel may still write to it.
#include "loop.hh"

#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "tlsgate/log.hh"

namespace tlsgate::shard {

namespace {

// A [limits] byte bound in whole chunks (0 = unbounded).
size_t chunks_for(uint64_t bytes) {
  return static_cast<size_t>((bytes + Chunk::kCapacity - 1) / Chunk::kCapacity);
}

ClientConnection* client_of(TimerLink* t) {
  return static_cast<ClientConnection*>(static_cast<Conn::Timer*>(t)->owner);
}

}  // namespace

uint64_t clock_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1'000'000;
}

void Conn::wake() { loop->mark_dirty(this); }
void Conn::idle() { loop->on_idle(this); }

void encrypt(tls::Session& tls, ByteQueue& plain, ByteQueue& out) {
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

Loop::Loop(unsigned shard_id, std::shared_ptr<const config::Config> cfg, std::vector<int> fds,
           const tls::KtlsSupport& ktls)
    : id(shard_id),
      ring(kRingEntries, kRecvBuffers, kRecvBufferSize),
      chunks(64, chunks_for(cfg->limits.chunk_pool)),
      body_chunks(64, chunks_for(cfg->limits.body_buffer)),
      // Seeded per shard so that shards do not pick in lockstep.
      pool(shard_id, *this, (uint64_t{shard_id} + 1) * 0x9e3779b97f4a7c15ull ^ clock_ms()),
      h2ctx(body_chunks, pool),
      ktls_support(ktls),
      jitter_state((uint64_t{shard_id} + 7) * 0xbf58476d1ce4e5b9ull ^ clock_ms()) {
  stop_fd = ::eventfd(0, EFD_CLOEXEC);
  if (stop_fd < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
  for (size_t i = 0; i < cfg->listeners.size(); ++i) {
    listeners.push_back(std::make_unique<ListenerRt>());
    ListenerRt& l = *listeners.back();
    l.index = static_cast<uint32_t>(i);
    l.fd = fds.at(i);
  }
  adopt(std::move(cfg));
}

Loop::~Loop() {
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

// ------------------------------------------------------------ configuration

// New connections start with the new snapshot; running ones keep theirs.
// The listening sockets stay: a snapshot with other listeners is refused.
void Loop::adopt(std::shared_ptr<const config::Config> cfg) {
  if (cfg->listeners.size() != listeners.size()) {
    LOG_ERROR("shard", "%u: configuration with %zu listeners ignored: this shard has %zu sockets", id,
              cfg->listeners.size(), listeners.size());
    return;
  }
  try {
    snapshot = Snapshot::build(std::move(cfg), pool, ktls_support.any());
  } catch (const std::exception& e) {
    // The main thread loaded every certificate before posting it; should a
    // shard still fail, it keeps serving what it has (none at start-up).
    if (!snapshot) throw;
    LOG_ERROR("shard", "%u: new configuration not adopted: %s", id, e.what());
    return;
  }
  size_stream_tables(pool.clusters().size() + 1);
  for (auto& lp : listeners) {
    ListenerRt& l = *lp;
    const config::Listener& c = *snapshot->listeners[l.index].cfg;
    l.max_connections = c.max_connections;
    // Timers already running keep their deadline; a changed duration applies
    // to those armed from now on (a shorter one may then wait behind a longer
    // one at the head of the list for at most the old duration).
    l.handshake_timers.set_duration(static_cast<uint64_t>(c.handshake_timeout.count()));
    l.idle_timers.set_duration(static_cast<uint64_t>(c.idle_timeout.count()));
    // 0 (keepalive turned off by a reload) also stops it on connections
    // that started with it: ClientConnection::keepalive_due.
    l.keepalive_timers.set_duration(static_cast<uint64_t>(c.keepalive_interval.count()));
    l.keepalive_acks.set_duration(static_cast<uint64_t>(c.keepalive_timeout.count()));
    // Running connections hold this budget: made once, at start-up.
    if (!l.unearned_resets) {
      const auto shard_resets =
          static_cast<uint32_t>(std::min<uint64_t>(uint64_t{c.h2_reset_budget} * 10, UINT32_MAX));
      l.unearned_resets = std::make_unique<h2::Budget>(shard_resets, shard_resets, shard_resets);
    }
  }
}

void Loop::take_inbox() {
  std::vector<DnsUpdate> updates;
  std::shared_ptr<const config::Config> cfg;
  std::vector<std::promise<Stats>> stats_wanted;
  {
    std::lock_guard<std::mutex> lock(inbox_mu);
    updates.swap(dns_inbox);
    cfg = std::move(config_inbox);
    stats_wanted.swap(stats_inbox);
    inbox_pending.store(false, std::memory_order_release);
  }
  // A configuration first: a collect() posted after adopt() is answered
  // once the shard serves under it (main waits on that before it says a
  // reload is done).
  if (cfg) adopt(std::move(cfg));
  if (!stats_wanted.empty()) {
    const Stats s = make_stats();
    for (std::promise<Stats>& p : stats_wanted) p.set_value(s);
  }
  for (DnsUpdate& u : updates) {
    // Indices of the configuration the watcher reads: the current snapshot's.
    if (u.cluster >= snapshot->clusters.size()) continue;
    pool.apply_dns(snapshot->clusters[u.cluster].pool_id, u.name, u.addrs);
  }
}

// ------------------------------------------------------------ loop

void Loop::run() {
  now = clock_ms();
  pool.set_now(now);
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
    pool.set_now(now);
    unsigned n;
    while ((n = ring.reap(cqes, 256)) > 0)
      for (unsigned i = 0; i < n; ++i) dispatch(cqes[i]);
    end_of_turn();
    if (stopping && downs.live == 0 && ups.live == 0) break;
  }
}

// A completion for a freed slot (old generation) is dropped; its receive
// buffer goes back to the ring.
template <typename T>
static T* live_or_recycle(Slots<T>& slots, io::Ring& ring, const io::Completion& c) {
  T* conn = slots.find(c.user_data);
  if (conn == nullptr && c.buffer_id() >= 0) ring.recycle(c.buffer_id());
  return conn;
}

void Loop::dispatch(const io::Completion& c) {
  switch (op_of(c.user_data)) {
    case Op::Accept: on_accept(c); break;
    case Op::DownRecv:
      if (ClientConnection* d = live_or_recycle(downs, ring, c)) d->on_recv(c);
      break;
    case Op::DownSend: on_send(downs.find(c.user_data), c); break;
    case Op::UpRecv:
      if (UpstreamConnection* u = live_or_recycle(ups, ring, c)) u->on_recv(c);
      break;
    case Op::UpSend: on_send(ups.find(c.user_data), c); break;
    case Op::UpConnect:
      if (UpstreamConnection* u = ups.find(c.user_data)) u->on_connect(c);
      break;
    case Op::Tick: on_tick(); break;
    case Op::Stop: on_stop(); break;
    case Op::Ignore: break;
    // The answers themselves go at the end of the turn (end_of_turn); another
    // timer in flight only makes an extra turn.
    case Op::RespondTimer: respond_timer_ms = 0; break;
  }
}

void Loop::end_of_turn() {
  h2ctx.respond_due(now);  // responders' delayed answers, flushed below
  // Flushing one connection can wake others (a DATA frame taken by one side
  // opens the other side's window), so repeat until quiet.
  while (!dirty.empty() || !to_free.empty()) {
    while (!dirty.empty()) {
      Conn* c = dirty.back();
      dirty.pop_back();
      c->dirty = false;
      if (c->closing) continue;
      if (c->down) static_cast<ClientConnection*>(c)->flush();
      else static_cast<UpstreamConnection*>(c)->flush();
    }
    while (!to_free.empty()) {
      Conn* c = to_free.back();
      to_free.pop_back();
      finish_close(c);
    }
  }
  arm_respond_timer();
}

void Loop::arm_respond_timer() {
  const uint64_t due = h2ctx.next_response_ms();
  if (due == 0 || (respond_timer_ms != 0 && respond_timer_ms <= due)) return;
  respond_timer_ms = due;
  ring.prep_timeout_ms(due > now ? due - now : 1, pack(Op::RespondTimer, 0, 0));
}

// A quiet client connection's TLS session lets go of its cipher contexts.
void Loop::on_idle(Conn* c) {
  if (!c->down) return;
  auto* d = static_cast<ClientConnection*>(c);
  if (d->tls && !d->closing) d->tls->release_idle_memory();
}

// ------------------------------------------------------------ accept

// Accepting is paused while the listener has max_connections in this shard
// or the process is out of file descriptors; the kernel's listen backlog
// holds new clients meanwhile (and refuses them once it is full).
bool Loop::accept_blocked(const ListenerRt& l) const {
  return l.connections >= l.max_connections || now < fd_pause_until;
}

void Loop::arm_accept(ListenerRt& l) {
  if (l.fd < 0 || l.accepting || stopping || accept_blocked(l)) return;
  l.full = false;
  // Close to the limit, connections are taken one at a time so that it
  // holds exactly (see kAcceptBatch).
  if (l.max_connections - l.connections > kAcceptBatch)
    ring.prep_accept_multishot(l.fd, pack(Op::Accept, 0, l.index));
  else
    ring.prep_accept_once(l.fd, pack(Op::Accept, 0, l.index));
  l.accepting = true;
}

// Ends the multishot accept; its last completion (ECANCELED) clears
// `accepting`, and arm_accept() starts it again once nothing blocks it.
void Loop::pause_accept(ListenerRt& l) {
  if (l.accepting) ring.prep_cancel_fd(l.fd, pack(Op::Ignore, 0, 0));
}

void Loop::on_accept(const io::Completion& c) {
  ListenerRt& l = *listeners.at(slot_of(c.user_data));
  if (!c.more()) l.accepting = false;
  if (c.res == -EMFILE || c.res == -ENFILE) {
    out_of_fds("accept", -c.res);
    return;  // accepting again from the tick after the pause
  }
  if (c.res < 0) {
    if (c.res != -ECANCELED)
      LOG_WARN("shard", "%u: accept on %s: %s", id, snapshot->listeners[l.index].cfg->name.c_str(),
               std::strerror(-c.res));
    if (!l.accepting) arm_accept(l);
    return;
  }
  if (stopping) {
    ::close(c.res);
    return;
  }
  ++counters.accepted;
  ++l.accepted;
  if (++l.connections >= l.max_connections && !l.full) {
    l.full = true;
    ++counters.accept_paused;
    pause_accept(l);
  }
  ClientConnection* d = downs.acquire();
  d->loop = this;
  d->down = true;
  d->listener = &l;
  d->snapshot = snapshot;
  d->settings = &snapshot->listeners[l.index];
  d->start(c);
  if (!l.accepting) arm_accept(l);
}

// EMFILE / ENFILE: counted always, logged once a second with a count, and
// every listener stops accepting for kFdPauseMs: connections that close
// meanwhile give descriptors back, and a client beyond them waits in the
// backlog instead of costing an accept and a close.
void Loop::out_of_fds(const char* where, int err) {
  ++counters.fd_exhausted;
  fd_warning_where = where;
  fd_warning_errno = err;
  if (fd_warning.note(now)) warn_fds();
  fd_pause_until = now + kFdPauseMs;
  for (auto& l : listeners) pause_accept(*l);
}

// The connection I/O pool is shared by the shard's connections. Clients that
// stopped reading fill it (each holds up to kOutputHighWater of ciphertext,
// which may pass the bound: ByteQueue::set_pool), and at the bound new output
// only reuses freed chunks. So there the ones whose send has not moved for
// kSendStallMs give their chunks back, largest first, until a quarter of the
// pool is free.
bool Loop::chunk_pool_full() const { return chunks.max_chunks() != 0 && chunks.in_use() >= chunks.max_chunks(); }

void Loop::relieve_chunk_pool() {
  std::vector<ClientConnection*> stalled;
  for (auto& d : downs.items)
    if (d->fd >= 0 && !d->closing && d->send_inflight && now - d->send_since_ms >= kSendStallMs)
      stalled.push_back(d.get());
  std::sort(stalled.begin(), stalled.end(), [](const ClientConnection* a, const ClientConnection* b) {
    return a->out.size() + a->plain.size() > b->out.size() + b->plain.size();
  });
  const size_t target = chunks.max_chunks() - chunks.max_chunks() / 4;
  size_t freed = 0;
  uint64_t closed = 0;
  for (ClientConnection* d : stalled) {
    if (chunks.in_use() - std::min(freed, chunks.in_use()) < target) break;
    freed += (d->out.size() + d->plain.size()) / Chunk::kCapacity;
    d->mark(CloseReason::SendStalled);
    d->close("send stalled while the chunk pool is full");
    ++closed;
  }
  counters.send_stalled_closed += closed;
  if (closed > 0 && pool_warning.note(now, closed)) warn_pool();
}

void Loop::warn_pool() {
  const uint64_t n = pool_warning.take(now);
  LOG_WARN("shard",
           "%u: connection I/O pool full ([limits] chunk_pool): %lu clients that stopped reading closed since the "
           "last warning",
           id, n);
}

void Loop::warn_fds() {
  const uint64_t n = fd_warning.take(now);
  LOG_WARN("shard", "%u: out of file descriptors (%s on %s), %lu times since the last warning; accepting paused %lu ms",
           id, std::strerror(fd_warning_errno), fd_warning_where, n, kFdPauseMs);
}

// ------------------------------------------------------------ common IO

void Loop::arm_recv(Conn* c, Op op, bool once) {
  if (c->recv_armed || c->closing) return;
  if (once) ring.prep_recv_once(c->fd, pack(op, c->gen, c->slot));
  else ring.prep_recv_multishot(c->fd, pack(op, c->gen, c->slot));
  c->recv_armed = true;
  ++c->inflight;
}

// The part of a receive completion that is the same for both kinds of
// connection: in-flight accounting, the buffer of a completion without
// bytes, a closing connection, a dry buffer ring (read again next turn).
RecvResult Loop::take_recv(Conn* c, const io::Completion& cqe) {
  if (!cqe.more()) {
    c->recv_armed = false;
    --c->inflight;
  }
  if (cqe.res > 0 && !c->closing) return RecvResult::Bytes;
  if (cqe.buffer_id() >= 0) ring.recycle(cqe.buffer_id());
  if (c->closing) {
    maybe_free(c);
    return RecvResult::Handled;
  }
  if (cqe.res == -ENOBUFS) {
    mark_dirty(c);
    return RecvResult::Handled;
  }
  return RecvResult::Failed;
}

void Loop::start_send(Conn* c, Op op) {
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

void Loop::on_send(Conn* c, const io::Completion& cqe) {
  if (c == nullptr) return;
  --c->inflight;
  c->send_inflight = false;
  if (c->closing) {
    maybe_free(c);
    return;
  }
  if (cqe.res < 0) {
    if (c->down) {
      auto* d = static_cast<ClientConnection*>(c);
      d->mark(CloseReason::SocketError);
      d->close(std::strerror(-cqe.res));
    }
    else {
      static_cast<UpstreamConnection*>(c)->send_failed(-cqe.res);
    }
    return;
  }
  c->out.consume(static_cast<size_t>(cqe.res));
  mark_dirty(c);
}

// Cancel what is in flight; the object is freed once nothing refers to it.
void Loop::begin_close(Conn* c) {
  if (c->inflight > 0) ring.prep_cancel_fd(c->fd, pack(Op::Ignore, 0, 0));
  maybe_free(c);
}

void Loop::finish_close(Conn* c) {
  if (c->fd >= 0) ::close(c->fd);
  c->fd = -1;
  c->out.clear();
  c->plain.clear();
  if (c->down) {
    auto* d = static_cast<ClientConnection*>(c);
    ListenerRt* l = d->listener;
    downs.release(d);
    if (l != nullptr) {
      --l->connections;
      arm_accept(*l);  // a descriptor and a place under max_connections are free again
    }
  } else {
    auto* u = static_cast<UpstreamConnection*>(c);
    u->tls.reset();
    ups.release(u);
  }
}

bool Loop::kernel_offers(tls::KtlsCipher c) const {
  switch (c) {
    case tls::KtlsCipher::Aes128Gcm: return ktls_support.aes128gcm;
    case tls::KtlsCipher::Aes256Gcm: return ktls_support.aes256gcm;
    case tls::KtlsCipher::Chacha20Poly1305: return ktls_support.chacha20poly1305;
    case tls::KtlsCipher::Unknown: return false;
  }
  return false;
}

// ------------------------------------------------------------ timers, stop

void Loop::on_tick() {
  h2ctx.release_idle_memory(now);
  if (access_log != nullptr) access_log->flush();  // lines wait at most a tick and the writer's interval
  for (auto& lp : listeners) {
    ListenerRt& l = *lp;
    while (TimerLink* t = l.handshake_timers.pop_expired(now)) client_of(t)->handshake_timer_expired();
    while (TimerLink* t = l.idle_timers.pop_expired(now)) client_of(t)->idle_timer_expired();
    while (TimerLink* t = l.keepalive_timers.pop_expired(now)) client_of(t)->keepalive_due();
    while (TimerLink* t = l.keepalive_acks.pop_expired(now)) client_of(t)->keepalive_unanswered();
    if (!l.accepting) arm_accept(l);
  }
  if (fd_warning.overdue(now)) warn_fds();
  if (chunk_pool_full()) relieve_chunk_pool();
  if (pool_warning.overdue(now)) warn_pool();
  h2ctx.expire_deadlines(now);
  expire_ages();
  if (inbox_pending.load(std::memory_order_acquire)) take_inbox();
  // A send failed and the backend did not end the connection within a
  // second (UpstreamConnection::send_failed). By index: closing a connection
  // can retry its streams on a new one, which may grow ups.items.
  for (size_t i = 0; i < ups.items.size(); ++i) {
    UpstreamConnection* u = ups.items[i].get();
    if (u->fd >= 0 && !u->closing && u->send_errno != 0 && now - u->send_failed_ms >= 1000)
      u->lost("upstream send failed and the connection did not end");
  }
  pool.tick();
  if (stopping) drain_step();
  ring.prep_timeout_ms(kTickMs, pack(Op::Tick, 0, 0));
}

// ------------------------------------------------------------ connection age

void Loop::expire_ages() {
  while (HeapLink* t = ages.pop_expired(now))
    static_cast<ClientConnection::AgeTimer*>(t)->owner->age_step();  // may arm it again
}

// The main thread wrote the stop eventfd: stop() once to drain, stop_now()
// to end the drain at once (a second SIGTERM). The read is armed again for
// the next one.
void Loop::on_stop() {
  const uint64_t value = std::exchange(stop_value, 0);
  ring.prep_read(stop_fd, &stop_value, sizeof stop_value, pack(Op::Stop, 0, 0));
  begin_stop();
  if (value >= kStopNow) {
    drain_deadline = now;
    drain_step();
  }
}

void Loop::begin_stop() {
  if (stopping) return;
  stopping = true;
  pool.stop();
  drain_started = now;
  drain_deadline = now + static_cast<uint64_t>(snapshot->config->drain.timeout.count());
  for (auto& l : listeners)
    if (l->fd >= 0) ring.prep_cancel_fd(l->fd, pack(Op::Ignore, 0, 0));
  for (auto& d : downs.items)
    if (d->fd >= 0 && !d->closing) d->begin_drain();
  drain_step();
}

void Loop::drain_step() {
  const bool late = now >= drain_deadline;
  const bool ack_overdue = now - drain_started >= kDrainAckWaitMs;
  uint64_t cut = 0;
  for (auto& d : downs.items) {
    if (d->fd < 0 || d->closing) continue;
    if (late && d->h2 && d->h2->active_streams() > 0) ++cut;
    d->drain_step(late, ack_overdue);
  }
  counters.drain_cut_connections += cut;
  if (cut > 0) LOG_WARN("shard", "%u: drain timeout: %lu connections closed with streams running", id, cut);
  if (downs.live == 0)
    for (auto& u : ups.items)
      if (u->fd >= 0 && !u->closing) u->close("gateway shutting down");
}

// ------------------------------------------------------------ Shard

struct Shard::Impl : Loop {
  using Loop::Loop;
};

Shard::Shard(unsigned id, std::shared_ptr<const config::Config> config, std::vector<int> listen_fds,
             const tls::KtlsSupport& ktls, accesslog::Buffer* access_log)
    : impl_(std::make_unique<Impl>(id, std::move(config), std::move(listen_fds), ktls)) {
  impl_->access_log = access_log;
}

Shard::~Shard() = default;

void Shard::run() {
  impl_->run();
  if (impl_->access_log != nullptr) impl_->access_log->flush();
  Counters& c = impl_->counters;
  c.take(impl_->h2ctx.counters());
  c.take(impl_->pool.counters());
  // From now on collect() answers at once with these.
  Stats last = impl_->make_stats();
  std::lock_guard<std::mutex> lock(impl_->inbox_mu);
  impl_->final_stats = std::move(last);
  impl_->finished = true;
  for (std::promise<Stats>& p : impl_->stats_inbox) p.set_value(impl_->final_stats);
  impl_->stats_inbox.clear();
}

void Shard::update_dns(uint32_t cluster, uint32_t name, std::vector<config::SocketAddress> addrs) {
  std::lock_guard<std::mutex> lock(impl_->inbox_mu);
  impl_->dns_inbox.push_back(Loop::DnsUpdate{cluster, name, std::move(addrs)});
  impl_->inbox_pending.store(true, std::memory_order_release);
}

void Shard::adopt(std::shared_ptr<const config::Config> config) {
  std::lock_guard<std::mutex> lock(impl_->inbox_mu);
  // DNS answers still queued name clusters by the old configuration's
  // indices; the new configuration's watcher answers again.
  impl_->dns_inbox.clear();
  impl_->config_inbox = std::move(config);
  impl_->inbox_pending.store(true, std::memory_order_release);
}

void Shard::stop() {
  uint64_t one = 1;
  ssize_t w = ::write(impl_->stop_fd, &one, sizeof one);
  (void)w;
}

void Shard::stop_now() {
  uint64_t now = kStopNow;
  ssize_t w = ::write(impl_->stop_fd, &now, sizeof now);
  (void)w;
}

std::future<Stats> Shard::collect() {
  std::promise<Stats> p;
  std::future<Stats> f = p.get_future();
  std::lock_guard<std::mutex> lock(impl_->inbox_mu);
  if (impl_->finished) {
    p.set_value(impl_->final_stats);
  } else {
    impl_->stats_inbox.push_back(std::move(p));
    impl_->inbox_pending.store(true, std::memory_order_release);
  }
  return f;
}

const Counters& Shard::counters() const { return impl_->counters; }

std::string Shard::ring_features() const { return impl_->ring.features().describe(); }

}  // namespace tlsgate::shard
