// A connection to a backend: connect, TLS to the backend (where the cluster
// asks for it), HTTP/2 client session. Which connection a stream takes, when
// one opens or closes for policy reasons (idle, keepalive, DNS, breakers) is
// the cluster manager's (src/upstream); this file does its IO, and is the
// upstream::Transport the manager calls.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "loop.hh"
#include "tlsgate/log.hh"

namespace tlsgate::shard {

// ------------------------------------------------------------ Transport

upstream::Connection* Loop::open(uint32_t cluster, uint32_t endpoint, const config::SocketAddress& addr,
                                 const char*& why) {
  const int fd = io::tcp_socket(addr.family());
  if (fd < 0) {
    if (errno == EMFILE || errno == ENFILE) out_of_fds("upstream connect", errno);
    why = "cannot create upstream socket";
    return nullptr;
  }
  UpstreamConnection* u = ups.acquire();
  u->loop = this;
  u->fd = fd;
  u->snapshot = snapshot;
  u->tls_ctx = snapshot->tls_for_pool(cluster);
  u->out.set_pool(&chunks);
  u->h2 = std::make_unique<h2::UpstreamSession>(h2ctx, *u, cluster, static_cast<int>(endpoint), u->tls_ctx != nullptr);
  u->session = u->h2.get();
  ring.prep_connect(fd, reinterpret_cast<const sockaddr*>(&addr.storage), addr.length,
                    pack(Op::UpConnect, u->gen, u->slot));
  ++u->inflight;
  return u;
}

void Loop::close(upstream::Connection& c, const char* why, bool nothing_sent) {
  static_cast<UpstreamConnection&>(c).close(why, nothing_sent);
}

// ------------------------------------------------------------ connect, TLS

void UpstreamConnection::on_connect(const io::Completion& c) {
  --inflight;
  if (closing) {
    loop->maybe_free(this);
    return;
  }
  if (c.res < 0) {
    char what[96];
    std::snprintf(what, sizeof what, "connect failed: %s", std::strerror(-c.res));
    loop->pool.connect_failed(*this, what);
    return;
  }
  if (tls_ctx != nullptr) {
    // The connect timer keeps running until the handshake is done.
    bool is_ip = false;
    std::string name = loop->pool.peer_name(*this, is_ip);
    tls = std::make_unique<tls::Session>(*tls_ctx, loop->chunks, tls::Peer{std::move(name), is_ip});
    plain.set_pool(&loop->chunks);
    out.set_pool(&loop->chunks, /*past_bound=*/true);  // ciphertext
    state = UpState::Handshake;
    tls->handshake({}, out);  // ClientHello
    loop->start_send(this, Op::UpSend);
  } else {
    state = UpState::Ready;
    loop->pool.connected(*this);
    loop->mark_dirty(this);
  }
  loop->arm_recv(this, Op::UpRecv);
}

void UpstreamConnection::on_handshake(std::span<const uint8_t> in) {
  tls::HandshakeState st = tls->handshake(in, out);
  loop->mark_dirty(this);
  if (st == tls::HandshakeState::InProgress) return;
  if (st == tls::HandshakeState::Failed) {
    std::string what = "TLS handshake failed: " + tls->failure();
    loop->pool.connect_failed(*this, what.c_str());
    return;
  }
  if (tls->alpn() != tls::Alpn::H2 && tls->alpn() != tls::Alpn::None) {
    loop->pool.connect_failed(*this, "TLS handshake: the backend did not choose ALPN h2");
    return;
  }
  state = UpState::Ready;
  loop->pool.connected(*this);
  on_records({});  // records that came with the server's Finished
}

// Decrypts TLS records from the backend and feeds the HTTP/2 session.
void UpstreamConnection::on_records(std::span<const uint8_t> in) {
  bool h2_failed = false;
  Result<void> r = tls->read(in, out, [&](const uint8_t* p, size_t n) {
    if (!h2_failed && n > 0 && !h2->receive(p, n)) h2_failed = true;
  });
  if (h2_failed || !r)
    lost(h2_failed                        ? "upstream protocol error"
         : r.error() == Error::Closed     ? "upstream closed TLS (close_notify)"
                                          : "upstream TLS record error");
}

// ------------------------------------------------------------ receive, send

const char* UpstreamConnection::endpoint_text() { return loop->pool.endpoint_of(*this).addr.text.c_str(); }

void UpstreamConnection::on_recv(const io::Completion& c) {
  const RecvResult got = loop->take_recv(this, c);
  if (got == RecvResult::Handled) return;
  if (got == RecvResult::Failed) {
    char why[160];
    if (send_errno != 0)
      std::snprintf(why, sizeof why, "upstream %s: send failed: %s", endpoint_text(), std::strerror(send_errno));
    else
      std::snprintf(why, sizeof why, "upstream %s: connection %s", endpoint_text(),
                    c.res == 0 ? "closed by the backend" : std::strerror(-c.res));
    lost(why);
    return;
  }
  last_recv_ms = loop->now;
  const int bid = c.buffer_id();
  std::span<const uint8_t> in(loop->ring.buffer(bid), static_cast<size_t>(c.res));
  loop->mark_dirty(this);
  if (state == UpState::Handshake) {
    on_handshake(in);
  } else if (tls) {
    on_records(in);
  } else if (!h2->receive(in.data(), in.size())) {
    lost("upstream protocol error");
  }
  loop->ring.recycle(bid);  // the TLS session kept what it did not consume
}

void UpstreamConnection::flush() {
  if (send_errno != 0) {
    loop->arm_recv(this, Op::UpRecv);
    return;
  }
  if (state == UpState::Handshake) {
    loop->start_send(this, Op::UpSend);
    loop->arm_recv(this, Op::UpRecv);
    return;
  }
  if (state != UpState::Ready || !h2 || h2->failed()) return;
  if (out.size() < kOutputHighWater) {
    if (tls) {
      h2->produce(plain, kProduceBudget);
      encrypt(*tls, plain, out);
    } else {
      h2->produce(out, kProduceBudget);
    }
  }
  loop->start_send(this, Op::UpSend);
  if (h2->finished() && out.empty() && !send_inflight) {
    close("upstream session finished");
    return;
  }
  loop->arm_recv(this, Op::UpRecv);
}

// A backend that sends GOAWAY and closes resets the connection when our next
// request arrives; the send fails, possibly before the GOAWAY is read.
// Streams above its last-stream-id were never processed and can be retried,
// so read to the end first: the receive then fails too and closes the
// connection (the tick closes it if that does not come within a second).
void UpstreamConnection::send_failed(int err) {
  send_errno = err;
  send_failed_ms = loop->now;
  broken = true;
  out.clear();
  loop->arm_recv(this, Op::UpRecv);
}

void UpstreamConnection::lost(const char* why) {
  ++loop->counters.upstream_lost;
  close(why);
}

void UpstreamConnection::close(const char* why, bool nothing_sent) {
  if (closing) return;
  LOG_DEBUG("upstream", "%u: close upstream (%s)", loop->id, why);
  closing = true;
  state = UpState::Closed;
  loop->pool.connection_closed(*this, why, nothing_sent);
  h2.reset();
  loop->begin_close(this);
}

}  // namespace tlsgate::shard
