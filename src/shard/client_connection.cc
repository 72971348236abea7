// A client connection: PROXY header → TLS handshake → ALPN → HTTP/2 (or a
// 426 for HTTP/1.1), the kTLS hand-off and its control records, flushing
// nghttp2's output through TLS, drain and close. The loop owns the object
// (loop.cc); this file is what happens to it.
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>

#include "loop.hh"
#include "tlsgate/log.hh"

namespace tlsgate::shard {

namespace {

constexpr char kHttp1Response[] =
    "HTTP/1.1 426 Upgrade Required\r\n"
    "Upgrade: h2\r\n"
    "Connection: close\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 74\r\n"
    "\r\n"
    "This gateway serves gRPC over HTTP/2 only; connect with HTTP/2 (ALPN h2).\n";

}  // namespace

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

void ClientConnection::start(const io::Completion& accepted) {
  fd = accepted.res;
  accepted_ms = loop->now;
  out.set_pool(&loop->chunks, /*past_bound=*/true);  // ciphertext until a kTLS offload
  plain.set_pool(&loop->chunks);
  // TCP_NODELAY comes from the listening socket (io::listen_socket).
  char ip[64];
  client_ip = io::peer_ip(fd, ip, sizeof ip, &client_port) ? ip : "unknown";
  accepted_us = h2::monotonic_us();
  tls = std::make_unique<tls::Session>(*settings->tls, loop->chunks);
  ktls = settings->ktls ? KtlsState::Pending : KtlsState::Off;
  state = settings->proxy == edge::ProxyMode::Off ? DownState::Handshake : DownState::Proxy;
  listener->handshake_timers.arm(timer, loop->now);  // covers the PROXY header too
  arm_recv();
}

namespace {


}  // namespace

// One access log line per client stream: what the session knows of the
// stream, and what the connection knows of the client and the backend.
void ClientConnection::stream_ended(const h2::StreamEnd& e) {
  const auto& policies = snapshot->clusters;
  const int pool_cluster = e.cluster >= 0 && static_cast<size_t>(e.cluster) < policies.size()
                               ? static_cast<int>(policies[static_cast<size_t>(e.cluster)].pool_id)
                               : -1;
  loop->count_stream(listener->index, pool_cluster, e);
  accesslog::Buffer* log = loop->access_log;
  if (log == nullptr || log->mode() == accesslog::Mode::Off) return;
  accesslog::Record r;
  r.listener = settings->cfg->name;
  r.client_ip = client_ip;
  r.client_port = client_port;
  r.tls_version = tls_version != nullptr ? tls_version : "";
  r.tls_resumed = tls_resumed;
  r.authority = e.authority;
  r.path = e.path;
  r.http_status = e.http_status;
  r.grpc_status = e.grpc_status;
  if (e.reset_by != h2::ResetBy::None) r.reset_by = h2::to_string(e.reset_by);
  r.reset_code = e.reset_code;
  r.request_bytes = e.request_bytes;
  r.response_bytes = e.response_bytes;
  r.duration_us = e.end_us >= e.start_us ? e.end_us - e.start_us : 0;
  r.retries = e.retries();
  char upstream[kAddressText];
  const auto& clusters = snapshot->config->clusters;
  if (e.cluster >= 0 && static_cast<size_t>(e.cluster) < clusters.size()) {
    r.cluster = clusters[static_cast<size_t>(e.cluster)].name;
    const uint32_t pool_id = snapshot->clusters[static_cast<size_t>(e.cluster)].pool_id;
    const auto& pool = loop->pool.clusters();
    if (e.endpoint >= 0 && pool_id < pool.size() && static_cast<size_t>(e.endpoint) < pool[pool_id]->endpoints.size())
      r.upstream = numeric_address(pool[pool_id]->endpoints[static_cast<size_t>(e.endpoint)]->addr, upstream,
                                 sizeof upstream);
  }
  if (log->append(r)) ++loop->counters.access_log_lines;
  else ++loop->counters.access_log_dropped;
}

// ------------------------------------------------------------ receive

void ClientConnection::on_recv(const io::Completion& c) {
  switch (loop->take_recv(this, c)) {
    case RecvResult::Handled: return;
    case RecvResult::Failed:
      if (c.res == -EIO && ktls == KtlsState::On) {  // a non-data record: read it with recvmsg
        on_ktls_control();
        return;
      }
      if (c.res != 0) mark(CloseReason::SocketError);
      close(c.res == 0 ? "peer closed" : std::strerror(-c.res));
      return;
    case RecvResult::Bytes: break;
  }
  const int bid = c.buffer_id();
  on_bytes(std::span<const uint8_t>(loop->ring.buffer(bid), static_cast<size_t>(c.res)));
  loop->ring.recycle(bid);  // the TLS session kept whatever it did not consume
  if (!closing && !recv_armed) loop->mark_dirty(this);  // re-arm in flush
}

void ClientConnection::on_bytes(std::span<const uint8_t> in) {
  switch (state) {
    case DownState::Proxy: return on_proxy_bytes(in);
    case DownState::Handshake: return on_handshake_bytes(in);
    case DownState::H2: return on_h2_bytes(in);
    case DownState::Http1: return on_http1_bytes(in);
    case DownState::Lingering: return;  // discard until the peer closes
    case DownState::Closed: return;
  }
}

// The PROXY header phase. Usually one receive holds the whole header (and
// often the ClientHello after it): it is parsed in place, no copy.
// Otherwise the bytes so far wait in one pool chunk and the parser, which
// keeps no state, reads them all again with each receive.
void ClientConnection::on_proxy_bytes(std::span<const uint8_t> in) {
  const size_t held = proxy_buf != nullptr ? proxy_buf->end : 0;
  std::span<const uint8_t> all = in;
  if (proxy_buf != nullptr) {
    // The parser decides within kProxyMaxHeader bytes, so more need not be kept.
    const size_t take = std::min(in.size(), edge::kProxyMaxHeader - held);
    std::memcpy(proxy_buf->data + held, in.data(), take);
    proxy_buf->end += static_cast<uint32_t>(take);
    all = std::span<const uint8_t>(proxy_buf->data, held + take);
  }
  edge::ProxyResult r = edge::parse_proxy(settings->proxy, all.data(), all.size());
  if (r.status == edge::ProxyStatus::Incomplete && all.size() < edge::kProxyMaxHeader) {
    if (proxy_buf == nullptr && !hold_proxy_bytes(in)) {
      mark(CloseReason::SocketError);
      close("no buffer for the PROXY header");
    }
    return;
  }
  if (r.status != edge::ProxyStatus::Done) {
    ++loop->counters.proxy_errors;
    // Incomplete at the cap cannot happen (the parser decides within it);
    // should it, the connection is refused all the same.
    const char* why = r.status == edge::ProxyStatus::Error ? edge::to_string(r.error) : "no header within the cap";
    LOG_DEBUG("shard", "%u: bad PROXY header from %s on %s: %s", loop->id, client_ip.c_str(),
              settings->cfg->name.c_str(), why);
    mark(CloseReason::ProxyProtocol);
    close("bad PROXY header");  // nothing sent: the sender is no TLS client
    return;
  }
  adopt_proxy_source(r);
  state = DownState::Handshake;
  // What follows the header starts the TLS handshake: the rest of the held
  // bytes (auto mode can decide "no header" after holding a few), then the
  // rest of this receive.
  Chunk* buf = std::exchange(proxy_buf, nullptr);
  if (buf != nullptr && r.consumed < held)
    on_bytes(std::span<const uint8_t>(buf->data + r.consumed, held - r.consumed));
  const size_t from_in = r.consumed > held ? r.consumed - held : 0;
  if (from_in < in.size() && !closing && !close_after_flush) on_bytes(in.subspan(from_in));
  if (buf != nullptr) loop->chunks.put(buf);
  loop->mark_dirty(this);  // re-arms a one-shot receive (kTLS pending)
}

bool ClientConnection::hold_proxy_bytes(std::span<const uint8_t> in) {
  proxy_buf = loop->chunks.get();
  if (proxy_buf == nullptr) return false;
  std::memcpy(proxy_buf->data, in.data(), in.size());  // in.size() < kProxyMaxHeader
  proxy_buf->begin = 0;
  proxy_buf->end = static_cast<uint32_t>(in.size());
  return true;
}

// x-forwarded-for and every later log line name the header's source; a
// header without one (v1 UNKNOWN, v2 LOCAL/UNSPEC/AF_UNIX, none in auto
// mode) keeps the socket's peer.
void ClientConnection::adopt_proxy_source(const edge::ProxyResult& r) {
  if (r.version != 0) ++loop->counters.proxy_headers;
  char ip[64];
  if (edge::format_address(r.source, ip, sizeof ip) == 0) return;
  LOG_DEBUG("shard", "%u: PROXY v%u from %s: client %s port %u", loop->id, r.version, client_ip.c_str(), ip,
            r.source.port);
  client_ip = ip;
  client_port = r.source.port;
}

void ClientConnection::on_handshake_bytes(std::span<const uint8_t> in) {
  Counters& n = loop->counters;
  tls::HandshakeState st = tls->handshake(in, out);
  loop->mark_dirty(this);
  if (st == tls::HandshakeState::InProgress) return;
  if (st == tls::HandshakeState::Failed) {
    ++n.handshake_failures;
    ++n.handshake_failure_reasons[static_cast<int>(tls->handshake_failure())];
    mark(CloseReason::HandshakeFailed);
    LOG_DEBUG("tls", "%u: handshake from %s failed: %s", loop->id, client_ip.c_str(), tls->failure().c_str());
    close_after_flush = true;  // send OpenSSL's alert first
    return;
  }
  ++n.handshakes;
  if (!tls->client_cert_header().empty()) ++n.client_certificates;
  handshake_done();
  TimerList::disarm(timer);
  listener->idle_timers.arm(timer, loop->now);
  LOG_DEBUG("tls", "%u: %s %s alpn=%s from %s", loop->id, tls->version(), tls->cipher(), tls::to_string(tls->alpn()),
            client_ip.c_str());
  if (ktls == KtlsState::Pending && !loop->kernel_offers(tls->cipher_kind())) {
    ktls = KtlsState::Off;
    ++n.ktls_unsupported_cipher;
  }
  if (ktls == KtlsState::Off) {
    ++n.tls_userspace;
    count_record_layer(false);
  }
  if (tls->alpn() == tls::Alpn::Http11) {
    state = DownState::Http1;
    ++n.http1_rejected;
    mark(CloseReason::Http1);
    if (ktls == KtlsState::Pending) {
      ktls = KtlsState::Off;
      ++n.tls_userspace;
      count_record_layer(false);
    }
  } else {
    start_h2();  // h2 by ALPN, or no ALPN at all: HTTP/2 with prior knowledge
  }
  // Application bytes that came with the client's Finished are pending.
  on_bytes({});
}

// For /metrics: the handshake's duration and kind (counted by record layer
// once that is known: count_record_layer).
void ClientConnection::handshake_done() {
  listener->handshake.observe(h2::monotonic_us() - accepted_us);
  tls_version = tls->version();
  tls_cipher = tls->cipher();
  tls_resumed = tls->resumed();
  if (tls->unknown_server_name()) ++loop->counters.tls_unknown_server_name;
  if (tls->ocsp() == tls::Session::Ocsp::Stapled) ++loop->counters.tls_ocsp_stapled;
  if (tls->ocsp() == tls::Session::Ocsp::Stale) ++loop->counters.tls_ocsp_stale;
}

void ClientConnection::count_record_layer(bool kernel) {
  if (handshake_counted || tls_version == nullptr) return;
  handshake_counted = true;
  loop->count_handshake(listener->index, tls_version, tls_cipher, tls_resumed, kernel);
}

void ClientConnection::start_h2() {
  const config::Listener& cfg = *settings->cfg;
  state = DownState::H2;
  h2::DownstreamSettings s;
  s.cluster = settings->routes.default_cluster();
  s.routes = &settings->routes;
  s.clusters = &snapshot->clusters;
  s.max_concurrent_streams = cfg.max_concurrent_streams;
  s.client_ip = client_ip;
  s.client_cert = tls->take_client_cert_header();
  s.glitch_budget = cfg.h2_glitch_budget;
  s.glitch_rate = cfg.h2_glitch_rate;
  s.reset_budget = cfg.h2_reset_budget;
  s.shard_resets = listener->unearned_resets.get();
  h2 = std::make_unique<h2::DownstreamSession>(loop->h2ctx, *this, std::move(s));
  start_rebalancing();
}

// The connection's own snapshot says whether it takes part; the durations
// are the listener's current ones, as for the idle timer.
void ClientConnection::start_rebalancing() {
  const config::Listener& cfg = *settings->cfg;
  if (cfg.keepalive_interval.count() > 0 && listener->keepalive_timers.duration() > 0) {
    last_recv_ms = loop->now;
    listener->keepalive_timers.arm(keepalive_timer, loop->now);
  }
  // The age counts from the accept, as gRPC's MAX_CONNECTION_AGE does.
  if (cfg.max_connection_age.count() > 0) {
    const auto limit_ms = static_cast<uint64_t>(cfg.max_connection_age.count());
    loop->ages.arm(age_timer, accepted_ms + jittered(limit_ms, loop->jitter_state));
  }
}

void ClientConnection::on_h2_bytes(std::span<const uint8_t> in) {
  // Given up on (end_h2): what still arrives is dropped, and neither re-arms
  // the idle timer nor pushes back the bounded wait for the flush.
  if (close_after_flush) return;
  // Any bytes prove the client alive (keepalive): one store, and a timer
  // moved only when they answer a PING, not per receive.
  last_recv_ms = loop->now;
  if (ping_sent_ms != 0) keepalive_answered();
  const uint64_t frames_before = h2->frames_seen();
  const uint64_t acks_before = h2->keepalive_acks();
  if (ktls == KtlsState::On) {  // the kernel already decrypted
    loop->mark_dirty(this);
    if (!in.empty() && !h2->receive(in.data(), in.size())) {
      end_h2();
      return;
    }
    rearm_idle(frames_before, acks_before);
    return;
  }
  bool failed = false;
  Result<void> r = tls->read(in, out, [&](const uint8_t* p, size_t n) {
    if (!failed && !h2->receive(p, n)) failed = true;
  });
  loop->mark_dirty(this);
  if (failed) {
    end_h2();
    return;
  }
  rearm_idle(frames_before, acks_before);
  if (!r) {
    if (r.error() == Error::Protocol) {
      mark(CloseReason::TlsError);
      ++loop->counters.tls_violations[static_cast<int>(tls->violation())];
      LOG_DEBUG("tls", "%u: bad record from %s: %s", loop->id, client_ip.c_str(), tls->failure().c_str());
    }
    if (r.error() == Error::Closed) tls->shutdown(out);
    close_after_flush = true;
  }
}

// The idle timer measures the client's own activity: a receive that carried
// nothing but ACKs of keepalive PINGs does not push it back, or a
// keepalive_interval below idle_timeout would keep idle connections for ever.
void ClientConnection::rearm_idle(uint64_t frames_before, uint64_t acks_before) {
  const uint64_t acks = h2->keepalive_acks() - acks_before;
  if (acks > 0 && h2->frames_seen() - frames_before == acks) return;
  listener->idle_timers.arm(timer, loop->now);
}

// The client broke the protocol or spent a budget: nghttp2 has a GOAWAY
// queued. Nothing more is read; the connection closes once the GOAWAY is
// out, or after handshake_timeout if the client does not read it.
void ClientConnection::end_h2() {
  ++loop->counters.downstream_protocol_errors;
  mark(CloseReason::ProtocolError);
  close_after_flush = true;
  TimerList::disarm(timer);
  listener->handshake_timers.arm(timer, loop->now);
}

void ClientConnection::on_http1_bytes(std::span<const uint8_t> in) {
  bool got = false;
  Result<void> r = tls->read(in, out, [&](const uint8_t*, size_t n) { got = got || n > 0; });
  if (got || !r) {
    // Answer once, then close our side cleanly and let the client read it.
    tls->write(reinterpret_cast<const uint8_t*>(kHttp1Response), sizeof kHttp1Response - 1, out);
    tls->shutdown(out);
    state = DownState::Lingering;
    close_after_flush = true;
  }
  loop->mark_dirty(this);
}

// ------------------------------------------------------------ send

void ClientConnection::flush() {
  if (ktls == KtlsState::Pending && state == DownState::H2) try_offload();
  if (ktls == KtlsState::On && h2 && out.size() < kOutputHighWater) {
    h2->produce(out, kProduceBudget);  // the kernel encrypts
  } else if (ktls != KtlsState::On && state == DownState::H2 && h2 && out.size() < kOutputHighWater) {
    h2->produce(plain, kProduceBudget);
    encrypt(*tls, plain, out);
  }
  loop->start_send(this, Op::DownSend);
  if (finish_session()) return;
  // A GOAWAY that ends the session may still wait in nghttp2 behind what one
  // produce() takes (e.g. the ACKs of a PING flood).
  const bool goaway_pending = state == DownState::H2 && h2 && h2->terminating() && h2->want_write();
  if (close_after_flush && out.empty() && !send_inflight && !goaway_pending) {
    linger_or_close();
    if (closing) return;
  }
  arm_recv();
}

// The HTTP/2 session ended (GOAWAY sent, no streams): end TLS cleanly too, so
// the client sees close_notify rather than a truncation. True when the
// connection is closing or waits for that last flush.
bool ClientConnection::finish_session() {
  if (state != DownState::H2 || !h2 || !h2->finished() || !out.empty() || send_inflight) return false;
  if (ktls == KtlsState::On) {
    tls::send_alert(fd, 1, 0);
  } else if (!close_after_flush) {
    tls->shutdown(out);
    close_after_flush = true;
    loop->start_send(this, Op::DownSend);
    return true;
  }
  close("session finished");
  return true;
}

// An HTTP/2 session given up on (its GOAWAY is out) lingers too: a close with
// the client's bytes unread would reset the connection, and the reset can
// discard the GOAWAY before the client reads it.
void ClientConnection::linger_or_close() {
  if (state == DownState::H2) state = DownState::Lingering;
  if (state != DownState::Lingering) {
    close("closed after flush");
    return;
  }
  ::shutdown(fd, SHUT_WR);
  close_after_flush = false;
  TimerList::disarm(timer);
  listener->handshake_timers.arm(timer, loop->now);  // bounded linger
}

// While a kTLS switch is pending, read one buffer at a time, and only when
// OpenSSL still needs bytes (a handshake in progress or a partial record):
// everything else stays in the socket for the kernel to decrypt.
void ClientConnection::arm_recv() {
  if (ktls != KtlsState::Pending) return loop->arm_recv(this, Op::DownRecv);
  if (state == DownState::Proxy || state == DownState::Handshake || tls->pending_input() > 0)
    loop->arm_recv(this, Op::DownRecv, true);
}

// ------------------------------------------------------------ kTLS

// The switch needs a quiet connection: every record OpenSSL wrote is sent, no
// receive is in flight, and OpenSSL holds no partial record.
void ClientConnection::try_offload() {
  if (send_inflight || !out.empty() || !plain.empty() || recv_armed || tls->pending_input() > 0) return;
  Counters& n = loop->counters;
  tls::Offload r = tls->offload(fd);
  if (r != tls::Offload::Done) {
    LOG_DEBUG("tls", "%u: kTLS offload %s for %s %s (errno: %s); staying in userspace", loop->id, tls::to_string(r),
              tls->version(), tls->cipher(), std::strerror(errno));
    if (r == tls::Offload::Unsupported) ++n.ktls_unsupported_cipher;
    else ++n.ktls_failed;
    ++n.tls_userspace;
    count_record_layer(false);
    ktls = KtlsState::Off;
    return;
  }
  ktls = KtlsState::On;
  count_record_layer(true);
  out.set_pool(&loop->chunks);  // nghttp2's output now: bounded like plain
  const int cipher = static_cast<int>(tls->cipher_kind());
  if (cipher < 3) ++n.ktls_offloaded[tls->is_tls13() ? 1 : 0][cipher];
  LOG_DEBUG("tls", "%u: kTLS TX+RX on for %s %s", loop->id, tls->version(), tls->cipher());
  // The kernel has the keys now; OpenSSL's objects (several KiB per
  // connection) have nothing left to do.
  tls.reset();
}

// A non-data record on a kTLS socket: the receive failed with EIO.
void ClientConnection::on_ktls_control() {
  Counters& n = loop->counters;
  tls::ControlRecord rec;
  int rc = tls::read_control_record(fd, rec);
  if (rc == -EAGAIN) {
    loop->mark_dirty(this);
    return;
  }
  if (rc < 0) {
    mark(CloseReason::SocketError);
    close(std::strerror(-rc));
    return;
  }
  if (rec.type == 21 && rec.len >= 2) {  // alert
    if (rec.data[1] == 0) {
      ++n.ktls_close_notify;
      tls::send_alert(fd, 1, 0);
      close("close_notify");
    } else {
      ++n.ktls_alerts;
      mark(CloseReason::TlsError);
      LOG_INFO("tls", "%u: alert from %s: level %u description %u", loop->id, client_ip.c_str(), rec.data[0],
               rec.data[1]);
      close("alert received");
    }
    return;
  }
  if (rec.type == 22 && rec.len >= 1 && rec.data[0] == 24) {  // KeyUpdate
    // Kernels before 6.13 cannot take new receive keys; a clean close lets
    // the client reconnect instead of failing on records we cannot read.
    ++n.ktls_key_update_closed;
    mark(CloseReason::TlsError);
    LOG_INFO("tls", "%u: KeyUpdate from %s: kernel TLS cannot rekey; closing", loop->id, client_ip.c_str());
    if (h2) h2->shutdown();
    close_after_flush = true;
    loop->mark_dirty(this);
    return;
  }
  // Nothing else may come after the handshake: a change_cipher_spec, a
  // client's NewSessionTicket or Finished, a TLS 1.2 renegotiation. The
  // kernel decrypted it; answer as RFC 8446 (and OpenSSL) would.
  ++n.ktls_unexpected_records;
  mark(CloseReason::TlsError);
  LOG_DEBUG("tls", "%u: unexpected record type %u from %s: closing", loop->id, rec.type, client_ip.c_str());
  tls::send_alert(fd, 2, 10);  // fatal, unexpected_message
  close("unexpected record after the handshake");
}

// ------------------------------------------------------------ timers, drain, close

void ClientConnection::handshake_timer_expired() {
  const DownState st = state;
  if (st == DownState::Proxy || st == DownState::Handshake) {
    ++loop->counters.handshake_timeouts;
    mark(CloseReason::HandshakeTimeout);
  }
  close(st == DownState::Proxy       ? "PROXY header timeout"
        : st == DownState::Handshake ? "handshake timeout"
                                     : "linger timeout");
}

void ClientConnection::idle_timer_expired() {
  if (h2 && h2->active_streams() > 0) {
    listener->idle_timers.arm(timer, loop->now);  // busy, not idle
    return;
  }
  ++loop->counters.idle_closed;
  mark(CloseReason::Idle);
  if (!h2) {
    close("idle timeout");
    return;
  }
  h2->shutdown();
  close_after_flush = true;
  loop->mark_dirty(this);
}

// Nothing received for keepalive_interval: a PING. Any bytes after it count
// as the answer (keepalive_answered), not only its ACK: the question is
// whether the peer is alive, and an ACK may wait behind a large upload in
// the client's own send buffer.
void ClientConnection::keepalive_due() {
  const uint64_t interval = listener->keepalive_timers.duration();
  if (!h2 || state != DownState::H2 || close_after_flush || interval == 0) return;
  if (loop->now - last_recv_ms < interval) {
    // Bytes came since it was armed: due `interval` after them. Armed after
    // the fact, so it may expire late by up to the time since those bytes;
    // moving the timer on every receive would cost each one a list update.
    listener->keepalive_timers.arm(keepalive_timer, last_recv_ms);
    return;
  }
  if (!h2->keepalive_ping()) return;  // the session is ending
  ++loop->counters.keepalive_pings;
  LOG_DEBUG("shard", "%u: keepalive PING to %s, quiet for %lu ms", loop->id, client_ip.c_str(),
            loop->now - last_recv_ms);
  ping_sent_ms = loop->now;
  listener->keepalive_acks.arm(keepalive_timer, loop->now);
}

// Bytes after the PING: the next one is due an interval from now.
void ClientConnection::keepalive_answered() {
  ping_sent_ms = 0;
  if (listener->keepalive_timers.duration() > 0) listener->keepalive_timers.arm(keepalive_timer, loop->now);
  else TimerList::disarm(keepalive_timer);  // keepalive turned off by a reload
}

// Nothing at all came within keepalive_timeout of the PING (any bytes would
// have taken the connection off this list: keepalive_answered).
void ClientConnection::keepalive_unanswered() {
  if (!h2 || state != DownState::H2 || ping_sent_ms == 0) return;
  ++loop->counters.keepalive_timeouts;
  mark(CloseReason::KeepaliveTimeout);
  close("keepalive timeout: nothing received after the PING");
}

// max_connection_age, in three steps: the two-step GOAWAY the drain uses
// (a stream the client sent before it saw the first is still served); the
// final GOAWAY when the PING's ACK is in or kDrainAckWaitMs later; with a
// grace, a close of whatever still runs. The connection closes by itself
// once its streams are done and the final GOAWAY is out (finish_session).
void ClientConnection::age_step() {
  const uint64_t grace = static_cast<uint64_t>(settings->cfg->max_connection_age_grace.count());
  switch (age) {
    case Age::Young:
      // A connection the shard drains, or one already ending, is left to that.
      if (loop->stopping || !h2 || state != DownState::H2 || close_after_flush || h2->terminating()) return;
      ++loop->counters.max_age_goaways;
      mark(CloseReason::MaxConnectionAge);
      age_goaway_ms = loop->now;
      h2->drain();
      age = Age::AckWait;
      loop->ages.arm(age_timer, loop->now + kDrainAckWaitMs);
      return;
    case Age::AckWait:
      if (h2) h2->finish_drain();  // nothing when the ACK came
      age = grace > 0 ? Age::Grace : Age::Done;
      if (grace > 0) loop->ages.arm(age_timer, age_goaway_ms + grace);
      return;
    case Age::Grace:
      age = Age::Done;
      if (h2 && h2->active_streams() > 0) ++loop->counters.max_age_grace_closed;
      close("max_connection_age_grace: streams cut");
      return;
    case Age::Done: return;
  }
}

void ClientConnection::begin_drain() {
  mark(CloseReason::Drain);
  if (!h2) {
    close("shutting down");
    return;
  }
  h2->drain();  // the two-step GOAWAY: running streams finish, no new ones after it
  loop->mark_dirty(this);
}

void ClientConnection::drain_step(bool late, bool ack_overdue) {
  if (h2 && ack_overdue) h2->finish_drain();  // a client that does not answer PINGs
  // Streams the client sent before it saw the first GOAWAY may still come
  // until the final one is queued.
  if (!late && h2 && (h2->active_streams() > 0 || h2->drain_pending())) return;
  if (h2 && !late) {
    close_after_flush = true;
    loop->mark_dirty(this);
  } else {
    close(late ? "drain deadline" : "shutting down");
  }
}

void ClientConnection::close(const char* why) {
  if (closing) return;
  LOG_DEBUG("shard", "%u: close downstream %s (%s, %s)", loop->id, client_ip.c_str(), to_string(state), why);
  closing = true;
  state = DownState::Closed;
  // A handshake whose record layer was never decided (closed while a kTLS
  // switch was pending) did all its records in userspace.
  count_record_layer(false);
  if (listener != nullptr) ++listener->closed[static_cast<int>(close_reason)];
  TimerList::disarm(timer);
  TimerList::disarm(keepalive_timer);
  loop->ages.disarm(age_timer);
  if (proxy_buf != nullptr) loop->chunks.put(std::exchange(proxy_buf, nullptr));
  h2.reset();  // cancels the upstream halves of its streams
  tls.reset();
  loop->begin_close(this);
}

}  // namespace tlsgate::shard
