#include "worker.hh"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <string_view>

namespace tlsgate::load {

std::atomic<bool> g_stop{false};

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

namespace {

constexpr size_t kRecvBuffer = 16 * 1024;
constexpr unsigned kRingEntries = 4096;
constexpr uint64_t kSweepNs = 100'000'000;  // timeouts are checked this often
constexpr size_t kMaxTickets = 4096;
constexpr uint32_t kNoSlot = 0xffffffffu;

std::string ssl_error_text() {
  const unsigned long e = ERR_get_error();
  if (e == 0) return "unexpected end of TLS";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

nghttp2_nv make_nv(std::string_view name, std::string_view value) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
                    NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
}

// Index `k` of a schedule with `per_s` events per second starting at t0.
uint64_t due_at(uint64_t t0, uint64_t k, double per_s) {
  return t0 + static_cast<uint64_t>(std::llround(static_cast<double>(k) * 1e9 / per_s));
}

uint64_t schedule_length(double per_s, double seconds) {
  return static_cast<uint64_t>(std::llround(per_s * seconds));
}

}  // namespace

Worker::Worker(const Options& o, unsigned index, unsigned count) : o_(o), index_(index), count_(count) {
  auto share = [&](uint64_t n) { return n / count + (index < n % count ? 1 : 0); };
  if (o.mode != Mode::Persistent && o.concurrency != 0) cap_ = share(o.concurrency);
  if (o.mode == Mode::Persistent) local_conns_ = static_cast<unsigned>(share(o.connections));
  if (o.mode == Mode::Hold) local_conns_ = static_cast<unsigned>(share(o.hold));
  quota_ = share(o.connections_total);
}

Worker::~Worker() {
  for (auto& c : slots_) {
    if (c->h2 != nullptr) nghttp2_session_del(c->h2);
    if (c->ssl != nullptr) SSL_free(c->ssl);
    if (c->fd >= 0) close(c->fd);
  }
  for (SSL_SESSION* s : tickets_) SSL_SESSION_free(s);
  if (callbacks_ != nullptr) nghttp2_session_callbacks_del(callbacks_);
  if (ctx_ != nullptr) SSL_CTX_free(ctx_);
  if (ring_ok_) io_uring_queue_exit(&ring_);
}

std::string Worker::init() {
  const int r = io_uring_queue_init(kRingEntries, &ring_, 0);
  if (r < 0) return std::string("io_uring_queue_init: ") + std::strerror(-r);
  ring_ok_ = true;
  ctx_ = SSL_CTX_new(TLS_client_method());
  if (ctx_ == nullptr) return "SSL_CTX_new: " + ssl_error_text();
  SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
  if (!o_.tls13_ciphers.empty() && SSL_CTX_set_ciphersuites(ctx_, o_.tls13_ciphers.c_str()) != 1)
    return "--tls13-ciphers: OpenSSL accepts none of '" + o_.tls13_ciphers + "'";
  SSL_CTX_set_alpn_protos(ctx_, reinterpret_cast<const unsigned char*>("\x02h2"), 3);
  // Like h2load: this measures a server, it does not authenticate it.
  SSL_CTX_set_verify(ctx_, SSL_VERIFY_NONE, nullptr);
  SSL_CTX_set_app_data(ctx_, this);
  if (o_.resume) {
    // Tickets go to this thread's pool, not OpenSSL's cache: each is
    // offered once (RFC 8446 advises single use), newest first.
    SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx_, on_new_session);
  }
  nghttp2_session_callbacks_new(&callbacks_);
  nghttp2_session_callbacks_set_on_header_callback(callbacks_, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks_, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks_, on_stream_close);
  return "";
}

int Worker::on_new_session(SSL* ssl, SSL_SESSION* sess) {
  auto* w = static_cast<Worker*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  const auto* c = static_cast<const Conn*>(SSL_get_app_data(ssl));
  // --tickets-from: each measured resumption is of a ticket the other
  // server sealed, so the measured server's own are not kept.
  if (!w->o_.tickets_from.empty() && c != nullptr && c->measured) return 0;  // OpenSSL frees it
  if (w->tickets_.size() >= kMaxTickets) {
    SSL_SESSION_free(w->tickets_.front());
    w->tickets_.erase(w->tickets_.begin());
  }
  w->tickets_.push_back(sess);
  return 1;  // the pool keeps the reference
}

uint64_t Worker::user_data(const Conn& c, Op op) const {
  return (uint64_t{c.slot} << 32) | (uint64_t{c.gen & 0xffffffu} << 8) | static_cast<uint64_t>(op);
}

io_uring_sqe* Worker::sqe() {
  io_uring_sqe* s = io_uring_get_sqe(&ring_);
  while (s == nullptr) {
    io_uring_submit(&ring_);
    s = io_uring_get_sqe(&ring_);
  }
  return s;
}

void Worker::run() {
  if (o_.mode == Mode::Rate) {
    run_rate();
  } else if (o_.mode == Mode::Hold) {
    run_hold();
  } else {
    run_persistent();
  }
  finished.store(true);
}

// Rate mode: connection i (i mod T = index_) is opened at t0 + i / rate; the
// loop sleeps in io_uring until the next one is due or a completion comes.
void Worker::run_rate() {
  if (o_.rate == 0) return run_closed_loop();
  const uint64_t t0 = start_ns.load();
  warmup_end_ns_ = t0 + static_cast<uint64_t>(o_.warmup * 1e9);
  const uint64_t warm = schedule_length(o_.rate, o_.warmup);
  const uint64_t total = o_.connections_total != 0 ? warm + o_.connections_total
                                                   : schedule_length(o_.rate, o_.warmup + o_.duration);
  uint64_t next = index_;
  for (;;) {
    if (g_stop.load(std::memory_order_relaxed)) next = std::max(next, total);
    uint64_t now = now_ns();
    const auto limit = static_cast<uint64_t>(o_.timeout * 1e9);
    bool capped = false;
    while (next < total && due_at(t0, next, o_.rate) <= now) {
      const uint64_t due = due_at(t0, next, o_.rate);
      if (open_count_ >= cap_) {
        // --concurrency: it waits for a free place (a completion wakes the
        // loop), unless it already waited longer than a connection may take.
        capped = now <= due + limit;
        if (capped) break;
        drop_late(next >= warm);
      } else {
        stats_.max_lag_ns = std::max(stats_.max_lag_ns, now_ns() - due);
        open_conn(due, next >= warm);
      }
      next += count_;
    }
    if (next >= total && open_count_ == 0) break;
    now = now_ns();
    sweep_timeouts(now);
    uint64_t wake = now + kSweepNs;
    if (next < total && !capped) wake = std::min(wake, due_at(t0, next, o_.rate));
    wait_and_dispatch(wake);
    reap();
  }
}

// A connection that waited for a free place (--concurrency) longer than
// --timeout: counted as started and failed, with every call it owed.
void Worker::drop_late(bool measured) {
  Stats& s = stats_for(measured);
  ++s.conns_started;
  ++s.conns_failed;
  s.calls_failed += o_.calls;
  s.error(ErrorKind::Timeout, "waited longer than --timeout for a place under --concurrency");
  if (measured) s.last_start_ns = std::max(s.last_start_ns, now_ns());
  progress_conns.fetch_add(1, std::memory_order_relaxed);
  progress_errors.fetch_add(1, std::memory_order_relaxed);
}

// --rate max: a closed loop. Each free place (of this thread's share of
// --concurrency) opens a connection at once, until the end of the run.
void Worker::run_closed_loop() {
  const uint64_t t0 = start_ns.load();
  warmup_end_ns_ = t0 + static_cast<uint64_t>(o_.warmup * 1e9);
  // --connections-total: the measured part ends with this thread's share,
  // not at a time.
  const bool counted = o_.connections_total != 0;
  // After a warm-up, the measured part starts once every thread's warm-up
  // connections have ended (main() sets measure_ns), so that none of their
  // work falls in it: a server's CPU read from then on is the measured
  // connections' alone.
  bool measuring = o_.warmup == 0;
  if (measuring) measure_ns.store(t0);
  end_ns_ = counted ? UINT64_MAX : t0 + static_cast<uint64_t>(o_.duration * 1e9);
  uint64_t measured_opened = 0;
  auto more = [&](uint64_t now) {
    if (g_stop.load(std::memory_order_relaxed)) return false;
    if (!measuring) return now < warmup_end_ns_;
    return counted ? measured_opened < quota_ : now < end_ns_;
  };
  while (now_ns() < t0) wait_and_dispatch(t0);
  for (;;) {
    uint64_t now = now_ns();
    if (!measuring && now >= warmup_end_ns_ && open_count_ == 0) {
      drained.store(true);
      const uint64_t go = measure_ns.load();
      measuring = go != 0;
      if (measuring && !counted) end_ns_ = go + static_cast<uint64_t>(o_.duration * 1e9);
    }
    while (more(now) && open_count_ < cap_) {
      open_conn(now, measuring);
      measured_opened += measuring ? 1 : 0;
      now = now_ns();
    }
    const bool open_more = more(now);
    const bool waiting_for_go = !measuring && !g_stop.load(std::memory_order_relaxed);
    if (!open_more && open_count_ == 0 && !waiting_for_go) break;
    sweep_timeouts(now);
    uint64_t wake = now + kSweepNs;
    if (open_more) wake = std::min(wake, measuring ? end_ns_ : warmup_end_ns_);
    if (waiting_for_go && open_count_ == 0) wake = now + 1'000'000;  // main() polls every 10 ms
    wait_and_dispatch(wake);
    reap();
  }
}

// --hold: this thread's share of the connections, at most its share of
// --concurrency opening at a time; each answered one stays open and idle
// until main() sets `release` (or a signal), then all are closed.
void Worker::run_hold() {
  uint64_t opened = 0;
  for (;;) {
    const bool stop = g_stop.load(std::memory_order_relaxed) || release.load();
    while (!stop && opened < local_conns_ && opened - settled.load() < cap_) {
      open_conn(now_ns(), true);
      ++opened;
    }
    if (stop) release_held();
    if (stop && open_count_ == 0) break;
    // The server closed every connection it held: nothing left to hold.
    if (opened == local_conns_ && open_count_ == 0) break;
    const uint64_t now = now_ns();
    sweep_timeouts(now);
    wait_and_dispatch(now + kSweepNs);
    reap();
  }
}

void Worker::release_held() {
  for (auto& p : slots_)
    if (p->state == State::Open && p->held) close_gracefully(*p);
}

// Hold mode, after an answer or a frame on the connection: its one call
// answered makes it held (settled); a GOAWAY on a held one is the server
// ending it, counted as closed by the server.
void Worker::hold_after_call(Conn& c) {
  if (c.state != State::Open) return;
  if (!c.held && c.calls_done > 0 && c.calls_started == c.calls_done) {
    c.held = true;
    c.deadline_ns = UINT64_MAX;  // idle for as long as it is held
    if (!c.bad) held_ok.fetch_add(1);
    settled.fetch_add(1);
    if (c.bad) return close_gracefully(c);  // counted failed; nothing worth holding
  }
  if (c.held && !accepts_calls(c)) {
    ++stats_.held_closed;
    close_gracefully(c);
  }
}

// Persistent mode: this thread's connections first (main() starts the clock
// when every thread's are up), then calls until the end of the run.
void Worker::run_persistent() {
  for (unsigned k = 0; k < local_conns_; ++k) {
    Conn* c = open_conn(now_ns(), true);
    if (c != nullptr) live_.push_back(c);
  }
  while (start_ns.load() == 0 && !g_stop.load(std::memory_order_relaxed)) {
    wait_and_dispatch(now_ns() + 5'000'000);
    reap();
  }
  const uint64_t t0 = start_ns.load() != 0 ? start_ns.load() : now_ns();
  // main() sets t0 a little ahead; a call started before it would fall in
  // the warm-up.
  while (now_ns() < t0) {
    wait_and_dispatch(t0);
    reap();
  }
  warmup_end_ns_ = t0 + static_cast<uint64_t>(o_.warmup * 1e9);
  end_ns_ = warmup_end_ns_ + static_cast<uint64_t>(o_.duration * 1e9);
  const bool fixed = o_.calls_per_second > 0;
  const uint64_t total = fixed ? schedule_length(o_.calls_per_second, o_.warmup + o_.duration) : 0;
  const uint64_t warm = fixed ? schedule_length(o_.calls_per_second, o_.warmup) : 0;
  uint64_t next = index_;
  if (!fixed)
    for (Conn* c : live_) start_persistent_calls(*c);
  for (;;) {
    uint64_t now = now_ns();
    if (g_stop.load(std::memory_order_relaxed)) {
      end_ns_ = std::min(end_ns_, now);
      next = std::max(next, total);
    }
    // Calls due now go to their connection's queue (round robin over this
    // thread's connections); a connection with every stream busy keeps them
    // waiting, and the wait is part of their latency.
    while (fixed && next < total && due_at(t0, next, o_.calls_per_second) <= now) {
      const uint64_t at = due_at(t0, next, o_.calls_per_second);
      const bool measured = next >= warm;
      stats_.max_lag_ns = std::max(stats_.max_lag_ns, now - at);
      Conn* c = open_conn_for(next / count_);
      if (c != nullptr) {
        c->queue.push_back(Due{at, measured});
        start_persistent_calls(*c);
      } else {
        ++stats_for(measured).calls_failed;  // no connection left (their failures are counted)
      }
      next += count_;
    }
    if (!ending_ && now >= end_ns_ && (!fixed || next >= total)) ending_ = true;
    if (ending_) {
      for (Conn* c : live_)
        if (c->state == State::Open && c->queue.empty() && c->calls_started == c->calls_done)
          close_gracefully(*c);
    }
    if (ending_ && open_count_ == 0) break;
    now = now_ns();
    sweep_timeouts(now);
    uint64_t wake = now + kSweepNs;
    if (fixed && next < total) wake = std::min(wake, due_at(t0, next, o_.calls_per_second));
    if (!fixed && !ending_) wake = std::min(wake, end_ns_);
    wait_and_dispatch(wake);
    reap();
  }
}

// The k-th connection of this thread, or the next one still open after it.
Worker::Conn* Worker::open_conn_for(uint64_t k) {
  for (size_t tried = 0; tried < live_.size(); ++tried) {
    Conn* c = live_[(k + tried) % live_.size()];
    if (c->state == State::Open) return c;
  }
  return nullptr;
}

void Worker::wait_and_dispatch(uint64_t wake_ns) {
  const uint64_t now = now_ns();
  const uint64_t wait = wake_ns > now ? wake_ns - now : 0;
  __kernel_timespec ts{};
  ts.tv_sec = static_cast<long long>(wait / 1000000000u);
  ts.tv_nsec = static_cast<long long>(wait % 1000000000u);
  io_uring_cqe* cqe = nullptr;
  if (wait > 0) {
    io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
  } else {
    io_uring_submit(&ring_);
  }
  unsigned head;
  unsigned seen = 0;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    on_cqe(cqe);
    ++seen;
  }
  io_uring_cq_advance(&ring_, seen);
}

void Worker::on_cqe(const io_uring_cqe* cqe) {
  const uint64_t ud = cqe->user_data;
  const auto op = static_cast<Op>(ud & 0xff);
  const auto slot = static_cast<uint32_t>(ud >> 32);
  if (op == Op::Cancel || slot == kNoSlot || slot >= slots_.size()) return;
  Conn& c = *slots_[slot];
  if ((c.gen & 0xffffffu) != ((ud >> 8) & 0xffffffu)) return;  // cannot happen: freed only at ops == 0
  --c.ops;
  switch (op) {
    case Op::Connect:
      on_connect(c, cqe->res);
      break;
    case Op::Recv:
      on_recv(c, cqe->res);
      break;
    case Op::Send:
      on_send(c, cqe->res);
      break;
    case Op::Cancel:
      break;
  }
}

// Frees connections that are done and no longer referred to by the ring.
void Worker::reap() {
  size_t kept = 0;
  for (Conn* dead : dead_) {
    Conn& c = *dead;
    if (c.ops != 0) {
      dead_[kept++] = dead;
      continue;
    }
    if (c.h2 != nullptr) nghttp2_session_del(c.h2);
    if (c.ssl != nullptr) SSL_free(c.ssl);
    if (c.fd >= 0) close(c.fd);
    c.h2 = nullptr;
    c.ssl = nullptr;
    c.fd = -1;
    ++c.gen;
    free_slots_.push_back(c.slot);
    --open_count_;
  }
  dead_.resize(kept);
}

void Worker::set_dead(Conn& c) {
  c.state = State::Dead;
  dead_.push_back(&c);
}

void Worker::sweep_timeouts(uint64_t now) {
  if (now - last_sweep_ns_ < kSweepNs) return;
  last_sweep_ns_ = now;
  const auto limit = static_cast<uint64_t>(o_.timeout * 1e9);
  for (auto& p : slots_) {
    Conn& c = *p;
    if (c.fd < 0 || c.state == State::Dead) continue;
    if (o_.mode != Mode::Persistent) {
      if (now > c.deadline_ns) fail(c, ErrorKind::Timeout, "connection not done within --timeout");
      continue;
    }
    bool late = !c.queue.empty() && now > c.queue.front().at_ns + limit;
    for (const Call& call : c.calls) late = late || (call.busy && now > call.intended_ns + limit);
    if (c.state != State::Open && c.state != State::Closing && now > c.due_ns + limit) late = true;
    if (late) fail(c, ErrorKind::Timeout, "call not answered within --timeout");
  }
}

Worker::Conn* Worker::open_conn(uint64_t due_ns, bool measured) {
  if (free_slots_.empty()) {
    auto c = std::make_unique<Conn>();
    c->slot = static_cast<uint32_t>(slots_.size());
    c->rbuf = std::make_unique<uint8_t[]>(kRecvBuffer);
    c->calls.resize(o_.mode == Mode::Persistent ? o_.streams : 1);
    free_slots_.push_back(c->slot);
    slots_.push_back(std::move(c));
  }
  Conn& c = *slots_[free_slots_.back()];
  free_slots_.pop_back();
  ++open_count_;
  c.state = State::Connecting;
  c.due_ns = due_ns;
  c.deadline_ns = due_ns + static_cast<uint64_t>(o_.timeout * 1e9);
  c.measured = measured;
  c.bad = false;
  c.held = false;
  c.goodbye_sent = false;
  c.calls_started = c.calls_done = 0;
  c.recv_posted = c.send_posted = false;
  c.sending.clear();
  c.next_out.clear();
  c.send_off = 0;
  c.finished.clear();
  c.queue.clear();
  for (Call& call : c.calls) call = Call{};
  Stats& s = stats_for(measured);
  ++s.conns_started;
  if (measured) s.last_start_ns = std::max(s.last_start_ns, now_ns());
  progress_conns.fetch_add(1, std::memory_order_relaxed);
  // --tickets-from: the warm-up talks to the other server.
  const bool other = !o_.tickets_from.empty() && !measured;
  const sockaddr_storage& addr = other ? o_.tickets_from_addr : o_.addr;
  const socklen_t addr_len = other ? o_.tickets_from_len : o_.addr_len;
  c.fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c.fd < 0) {
    fail(c, ErrorKind::Connect, std::string("socket: ") + std::strerror(errno));
    return nullptr;
  }
  const int one = 1;
  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  io_uring_sqe* s2 = sqe();
  io_uring_prep_connect(s2, c.fd, reinterpret_cast<const sockaddr*>(&addr), addr_len);
  io_uring_sqe_set_data64(s2, user_data(c, Op::Connect));
  ++c.ops;
  return &c;
}

void Worker::on_connect(Conn& c, int res) {
  if (c.state == State::Dead) return;
  if (res < 0) return fail(c, ErrorKind::Connect, std::string("connect: ") + std::strerror(-res));
  c.ssl = SSL_new(ctx_);
  c.rbio = BIO_new(BIO_s_mem());
  c.wbio = BIO_new(BIO_s_mem());
  if (c.ssl == nullptr || c.rbio == nullptr || c.wbio == nullptr) {
    // Not yet handed to the SSL object: freed here (SSL_free in reap()).
    BIO_free(c.rbio);
    BIO_free(c.wbio);
    c.rbio = c.wbio = nullptr;
    return fail(c, ErrorKind::Tls, "out of memory for a TLS connection: " + ssl_error_text());
  }
  // Memory BIOs: the ring moves the bytes, OpenSSL only transforms them.
  BIO_set_mem_eof_return(c.rbio, -1);
  SSL_set_bio(c.ssl, c.rbio, c.wbio);
  SSL_set_connect_state(c.ssl);
  SSL_set_tlsext_host_name(c.ssl, o_.sni.c_str());
  SSL_set_app_data(c.ssl, &c);
  // --tickets-from: the warm-up makes full handshakes only.
  const bool offer = o_.resume && (o_.tickets_from.empty() || c.measured);
  while (offer && !tickets_.empty()) {
    SSL_SESSION* t = tickets_.back();
    tickets_.pop_back();
    const bool usable = SSL_SESSION_is_resumable(t) == 1;
    if (usable) SSL_set_session(c.ssl, t);
    SSL_SESSION_free(t);
    if (usable) break;
  }
  c.state = State::Handshaking;
  post_recv(c);
  advance(c);
}

void Worker::post_recv(Conn& c) {
  if (c.recv_posted || c.state == State::Dead) return;
  io_uring_sqe* s = sqe();
  io_uring_prep_recv(s, c.fd, c.rbuf.get(), kRecvBuffer, 0);
  io_uring_sqe_set_data64(s, user_data(c, Op::Recv));
  c.recv_posted = true;
  ++c.ops;
}

void Worker::on_recv(Conn& c, int res) {
  c.recv_posted = false;
  if (c.state == State::Dead) return;
  if (res <= 0) {
    if (c.state == State::Closing) {
      // The server closed after our goodbye: the normal end.
      set_dead(c);
      cancel_all(c);
      return;
    }
    if (res == 0) return fail(c, ErrorKind::Closed, "the server closed the connection");
    return fail(c, ErrorKind::Connect, std::string("recv: ") + std::strerror(-res));
  }
  BIO_write(c.rbio, c.rbuf.get(), res);
  advance(c);
  post_recv(c);
}

// Runs TLS and HTTP/2 over what arrived, ends the calls that closed, starts
// the next ones and sends what that produced.
void Worker::advance(Conn& c) {
  if (c.state == State::Handshaking) {
    const int r = SSL_do_handshake(c.ssl);
    if (r != 1) {
      const int e = SSL_get_error(c.ssl, r);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
        return fail(c, ErrorKind::Tls, "handshake: " + ssl_error_text());
      return pump(c);
    }
    if (!finish_handshake(c)) return;
  }
  if (c.state != State::Open && c.state != State::Closing) return;
  // Answers that arrived with the server's close are counted before the
  // close is: a call the server answered is OK even if the connection ends
  // right after it.
  std::string ended;
  ErrorKind ended_kind = ErrorKind::Closed;
  uint8_t buf[16 * 1024];
  for (;;) {
    const int r = SSL_read(c.ssl, buf, sizeof buf);
    if (r <= 0) {
      const int e = SSL_get_error(c.ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
      if (c.state == State::Closing) break;
      if (e == SSL_ERROR_ZERO_RETURN) {
        ended = "the server sent close_notify";
      } else {
        ended_kind = ErrorKind::Tls;
        ended = "read: " + ssl_error_text();
      }
      break;
    }
    if (nghttp2_session_mem_recv(c.h2, buf, static_cast<size_t>(r)) < 0) {
      ended_kind = ErrorKind::H2;
      ended = "the server's HTTP/2 is not valid";
      break;
    }
  }
  std::vector<Call*> done;
  done.swap(c.finished);
  for (Call* call : done) end_call(c, *call);
  done.clear();
  c.finished.swap(done);  // keeps the capacity
  if (c.state == State::Dead) return;
  if (ended.empty()) after_calls(c);
  if (!ended.empty()) return fail(c, ended_kind, ended);
  if (c.state != State::Dead) pump(c);
}

bool Worker::finish_handshake(Conn& c) {
  const unsigned char* alpn = nullptr;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(c.ssl, &alpn, &alpn_len);
  if (alpn_len != 2 || std::memcmp(alpn, "h2", 2) != 0) {
    fail(c, ErrorKind::Tls, "the server did not select ALPN h2");
    return false;
  }
  Stats& s = stats_for(c.measured);
  if (s.cipher.empty()) {
    s.cipher = SSL_get_cipher_name(c.ssl);
    const char* group = SSL_group_to_name(c.ssl, SSL_get_negotiated_group(c.ssl));
    s.group = group != nullptr ? group : "";
  }
  if (SSL_session_reused(c.ssl) == 1) {
    ++s.handshakes_resumed;
  } else {
    ++s.handshakes_full;
  }
  nghttp2_session_client_new(&c.h2, callbacks_, this);
  const nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
  nghttp2_submit_settings(c.h2, NGHTTP2_FLAG_NONE, settings, 1);
  c.state = State::Open;
  if (o_.mode != Mode::Persistent) {
    // The first call is measured from the connection's due time.
    if (!start_call(c, c.due_ns, c.measured)) return false;
  } else {
    settled.fetch_add(1);
  }
  return true;
}

Worker::Call* Worker::free_call(Conn& c) {
  for (Call& call : c.calls)
    if (!call.busy) return &call;
  return nullptr;
}

bool Worker::start_call(Conn& c, uint64_t intended_ns, bool measured) {
  Call* call = free_call(c);
  if (call == nullptr || !accepts_calls(c)) return false;
  *call = Call{};
  call->conn = &c;
  call->busy = true;
  call->measured = measured;
  call->intended_ns = intended_ns;
  const nghttp2_nv hdrs[] = {make_nv(":method", "POST"),
                             make_nv(":scheme", "https"),
                             make_nv(":authority", o_.target),
                             make_nv(":path", o_.path),
                             make_nv("content-type", "application/grpc"),
                             make_nv("te", "trailers"),
                             make_nv("user-agent", "tlsgate-load/" TLSGATE_VERSION)};
  nghttp2_data_provider dp{};
  dp.source.ptr = call;
  dp.read_callback = read_body;
  const int32_t id = nghttp2_submit_request(c.h2, nullptr, hdrs, sizeof hdrs / sizeof hdrs[0], &dp, call);
  if (id < 0) {
    call->busy = false;
    fail(c, ErrorKind::H2, std::string("cannot start a call: ") + nghttp2_strerror(id));
    return false;
  }
  call->stream_id = id;
  ++c.calls_started;
  return true;
}

ssize_t Worker::read_body(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                          nghttp2_data_source* source, void* user) {
  auto* call = static_cast<Call*>(source->ptr);
  const std::string& body = static_cast<Worker*>(user)->o_.body;
  const size_t n = std::min(length, body.size() - call->body_off);
  std::memcpy(buf, body.data() + call->body_off, n);
  call->body_off += n;
  if (call->body_off == body.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

int Worker::on_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void*) {
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (call == nullptr) return 0;
  const std::string_view n(reinterpret_cast<const char*>(name), namelen);
  const std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  auto number = [](std::string_view s) {
    int x = 0;
    if (s.empty() || s.size() > 6) return -2;
    for (const char ch : s) {
      if (ch < '0' || ch > '9') return -2;
      x = x * 10 + (ch - '0');
    }
    return x;
  };
  if (n == ":status") call->http_status = number(v);
  if (n == "grpc-status") call->grpc_status = number(v);
  return 0;
}

int Worker::on_data_chunk(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data,
                          size_t len, void*) {
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (call == nullptr) return 0;
  for (size_t i = 0; i < len && call->data_bytes + i < sizeof call->head; ++i)
    call->head[call->data_bytes + i] = data[i];
  call->data_bytes += len;
  return 0;
}

int Worker::on_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code, void*) {
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (call == nullptr) return 0;
  call->rst = error_code;
  call->conn->finished.push_back(call);  // handled after mem_recv: no submissions from inside nghttp2
  return 0;
}

// Checks one answer and counts it.
void Worker::end_call(Conn& c, Call& call) {
  call.busy = false;
  ++c.calls_done;
  Stats& s = stats_for(call.measured);
  const uint64_t now = now_ns();
  s.latency_us.record((now - std::min(now, call.intended_ns)) / 1000);
  if (call.measured) s.last_done_ns = std::max(s.last_done_ns, now);
  if (call.grpc_status >= 0 && call.grpc_status < static_cast<int>(kGrpcCodes)) {
    ++s.grpc_codes[static_cast<size_t>(call.grpc_status)];
  } else if (call.grpc_status != -1) {
    ++s.grpc_other;
  }
  std::string what;
  ErrorKind kind{};
  const uint64_t msg_len = (uint64_t{call.head[1]} << 24) | (uint64_t{call.head[2]} << 16) |
                           (uint64_t{call.head[3]} << 8) | uint64_t{call.head[4]};
  // The sweep looks every 100 ms; an answer that came after the limit but
  // before the sweep is late all the same.
  const uint64_t deadline = o_.mode != Mode::Persistent
                                ? c.deadline_ns
                                : call.intended_ns + static_cast<uint64_t>(o_.timeout * 1e9);
  if (now > deadline) {
    kind = ErrorKind::Timeout;
    what = "answered after --timeout";
  } else if (call.rst != 0) {
    kind = ErrorKind::H2;
    what = "stream reset, code " + std::to_string(call.rst);
  } else if (call.http_status != 200) {
    kind = ErrorKind::HttpStatus;
    what = ":status " + std::to_string(call.http_status);
  } else if (call.grpc_status != 0) {
    kind = ErrorKind::GrpcStatus;
    what = call.grpc_status == -1 ? "no grpc-status" : "grpc-status " + std::to_string(call.grpc_status);
  } else if (o_.expect_bytes >= 0 &&
             (call.data_bytes < 5 || msg_len != static_cast<uint64_t>(o_.expect_bytes) ||
              call.data_bytes != 5 + msg_len)) {
    kind = ErrorKind::Length;
    what = "expected one message of " + std::to_string(o_.expect_bytes) + " bytes, got " +
           (call.data_bytes < 5 ? std::to_string(call.data_bytes) + " bytes of body"
                                : "a message of " + std::to_string(msg_len) + " bytes in " +
                                      std::to_string(call.data_bytes) + " bytes of body");
  }
  progress_calls.fetch_add(1, std::memory_order_relaxed);
  if (what.empty()) {
    ++s.calls_ok;
    return;
  }
  ++s.calls_failed;
  s.error(kind, what);
  c.bad = true;
  progress_errors.fetch_add(1, std::memory_order_relaxed);
}

// What a connection does once its answered calls are counted.
// False once the server sent GOAWAY: a new stream would only be refused.
bool Worker::accepts_calls(Conn& c) { return nghttp2_session_check_request_allowed(c.h2) != 0; }

void Worker::after_calls(Conn& c) {
  if (o_.mode == Mode::Hold) return hold_after_call(c);
  if (c.state != State::Open) return;
  // The server said goodbye (GOAWAY, e.g. its maximum connection age): the
  // calls it had end normally; once none is left, the connection fails if it
  // still owed calls (rate mode) or had calls waiting (persistent mode), and
  // is closed otherwise.
  if (!accepts_calls(c) && c.calls_started == c.calls_done) {
    const bool owed = o_.mode == Mode::Rate ? c.calls_done < o_.calls : !c.queue.empty();
    if (owed) return fail(c, ErrorKind::Closed, "the server sent GOAWAY before every call was made");
    if (o_.mode == Mode::Rate || ending_) return close_gracefully(c);
    return fail(c, ErrorKind::Closed, "the server sent GOAWAY");
  }
  if (o_.mode == Mode::Rate) {
    if (c.calls_started == c.calls_done) {
      if (c.calls_done < o_.calls) {
        start_call(c, now_ns(), c.measured);  // the next call: from the end of the one before
      } else {
        close_gracefully(c);
      }
    }
    return;
  }
  start_persistent_calls(c);
}

void Worker::start_persistent_calls(Conn& c) {
  if (c.state != State::Open) return;
  if (o_.calls_per_second > 0) {
    while (!c.queue.empty() && free_call(c) != nullptr) {
      const Due d = c.queue.front();
      c.queue.pop_front();
      if (!start_call(c, d.at_ns, d.measured)) return;
    }
  } else {
    const uint64_t now = now_ns();
    while (!ending_ && now < end_ns_ && free_call(c) != nullptr)
      if (!start_call(c, now, now >= warmup_end_ns_)) return;
  }
  pump(c);
}

// nghttp2's output through TLS into the send buffer, and a send if none is
// in flight.
void Worker::pump(Conn& c) {
  if (c.state == State::Dead || c.goodbye_sent) return;
  if (c.h2 != nullptr) {
    for (;;) {
      const uint8_t* data = nullptr;
      const ssize_t n = nghttp2_session_mem_send(c.h2, &data);
      if (n < 0) return fail(c, ErrorKind::H2, nghttp2_strerror(static_cast<int>(n)));
      if (n == 0) break;
      if (SSL_write(c.ssl, data, static_cast<int>(n)) != static_cast<int>(n))
        return fail(c, ErrorKind::Tls, "write: " + ssl_error_text());
    }
  }
  char buf[16 * 1024];
  std::string& out = c.send_posted ? c.next_out : c.sending;
  for (;;) {
    const int n = BIO_read(c.wbio, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  post_send(c);
}

void Worker::post_send(Conn& c) {
  if (c.send_posted || c.send_off == c.sending.size()) return;
  io_uring_sqe* s = sqe();
  io_uring_prep_send(s, c.fd, c.sending.data() + c.send_off, c.sending.size() - c.send_off, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(s, user_data(c, Op::Send));
  c.send_posted = true;
  ++c.ops;
}

void Worker::on_send(Conn& c, int res) {
  c.send_posted = false;
  if (c.state == State::Dead) return;
  if (res < 0) return fail(c, ErrorKind::Connect, std::string("send: ") + std::strerror(-res));
  c.send_off += static_cast<size_t>(res);
  if (c.send_off == c.sending.size()) {
    c.sending.clear();
    c.send_off = 0;
    c.sending.swap(c.next_out);
  }
  if (c.send_off < c.sending.size()) return post_send(c);
  if (c.state == State::Closing) after_goodbye(c);
}

// Our goodbye is out: nothing more to learn from this connection, but it is
// closed only after the server's own close (FIN), within --timeout: closing
// it with the server's answer to our GOAWAY still unread would reset it, and
// the server would count a client that left cleanly as a socket error
// (hundreds of held connections released at once made that likely, and one
// in 200 rate-mode connections did under AddressSanitizer in CI).
void Worker::after_goodbye(Conn& c) {
  shutdown(c.fd, SHUT_WR);
  c.deadline_ns = now_ns() + static_cast<uint64_t>(o_.timeout * 1e9);
  post_recv(c);
}

// Every call answered: GOAWAY and close_notify, then close once they are sent.
void Worker::close_gracefully(Conn& c) {
  if (c.state != State::Open) return;
  Stats& s = stats_for(c.measured);
  if (c.bad) {
    ++s.conns_failed;
  } else {
    ++s.conns_ok;
  }
  c.state = State::Closing;
  nghttp2_session_terminate_session(c.h2, NGHTTP2_NO_ERROR);
  pump(c);
  SSL_shutdown(c.ssl);
  pump(c);
  c.goodbye_sent = true;  // nothing more goes out after close_notify
  if (!c.send_posted) after_goodbye(c);
}

void Worker::fail(Conn& c, ErrorKind kind, const std::string& why) {
  if (c.state == State::Dead) return;
  const bool was_open = c.state != State::Closing;
  set_dead(c);
  if (!was_open) {
    cancel_all(c);
    return;
  }  // its calls were all answered and counted already
  Stats& s = stats_for(c.measured);
  if (c.held) {
    // Its call was answered OK: the server closing an idle connection is
    // what --hold reports, not an error.
    ++s.held_closed;
    ++s.conns_ok;
    cancel_all(c);
    return;
  }
  if (o_.mode == Mode::Hold) settled.fetch_add(1);
  s.error(kind, why);
  ++s.conns_failed;
  progress_errors.fetch_add(1, std::memory_order_relaxed);
  // Rate mode: the calls this connection owed, answered or not yet made,
  // so that ok + failed is always connections x --calls.
  if (o_.mode != Mode::Persistent) s.calls_failed += o_.calls - c.calls_done;
  for (Call& call : c.calls) {
    if (!call.busy) continue;
    call.busy = false;
    if (o_.mode == Mode::Persistent) ++stats_for(call.measured).calls_failed;
  }
  for (const Due& d : c.queue) ++stats_for(d.measured).calls_failed;
  c.queue.clear();
  if (o_.mode == Mode::Persistent && c.h2 == nullptr) settled.fetch_add(1);  // never came up
  cancel_all(c);
}

void Worker::cancel_all(Conn& c) {
  if (c.ops == 0) return;
  io_uring_sqe* s = sqe();
  io_uring_prep_cancel_fd(s, c.fd, IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(s, (uint64_t{kNoSlot} << 32) | static_cast<uint64_t>(Op::Cancel));
}

}  // namespace tlsgate::load
