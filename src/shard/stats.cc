// What /metrics shows of a shard: Loop::make_stats copies the counters and
// gauges on the shard thread (no atomics on the hot path: the admin thread
// asks through the mailbox and gets a copy at the next tick).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <time.h>

#include <cstring>

#include "loop.hh"

namespace tlsgate::shard {

const char* to_string(CloseReason r) {
  switch (r) {
    case CloseReason::Client: return "client";
    case CloseReason::Idle: return "idle";
    case CloseReason::HandshakeTimeout: return "handshake_timeout";
    case CloseReason::HandshakeFailed: return "handshake_failed";
    case CloseReason::ProxyProtocol: return "proxy_protocol";
    case CloseReason::Http1: return "http1";
    case CloseReason::ProtocolError: return "protocol_error";
    case CloseReason::TlsError: return "tls_error";
    case CloseReason::Drain: return "drain";
    case CloseReason::SendStalled: return "send_stalled";
    case CloseReason::SocketError: return "socket_error";
    case CloseReason::KeepaliveTimeout: return "keepalive_timeout";
    case CloseReason::MaxConnectionAge: return "max_connection_age";
    case CloseReason::Count: break;
  }
  return "?";
}

uint64_t clock_us() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
}

namespace {

uint64_t thread_cpu_ns() {
  timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000 + static_cast<uint64_t>(ts.tv_nsec);
}

const char* endpoint_state(const upstream::EndpointState& s, uint64_t now) {
  if (!s.active) return "removed";
  if (s.ejected(now)) return "ejected";
  return s.healthy ? "healthy" : "unhealthy";
}

// The numeric address: endpoints of one DNS name share their text (the name).
std::string numeric(const config::SocketAddress& a) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (a.family() == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&a.storage);
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
    return std::string(ip) + ":" + std::to_string(a.port());
  }
  const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
  inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
  return "[" + std::string(ip) + "]:" + std::to_string(a.port());
}

}  // namespace

void Loop::count_handshake(uint32_t listener, const char* version, const char* cipher, bool resumed, bool kernel) {
  for (Stats::Handshakes& h : handshake_kinds)
    if (h.listener == listener && h.version == version && h.cipher == cipher && h.resumed == resumed &&
        h.ktls == kernel) {
      ++h.count;
      return;
    }
  handshake_kinds.push_back(Stats::Handshakes{listener, version, cipher, resumed, kernel, 1});
}

Stats Loop::make_stats() {
  Stats s;
  s.shard = id;
  s.cpu_ns = thread_cpu_ns();
  s.counters = counters;
  s.counters.take(h2ctx.counters());
  s.counters.take(pool.counters());
  for (const auto& lp : listeners) {
    Stats::Listener& l = s.listeners.emplace_back();
    l.accepted = lp->accepted;
    l.open = lp->connections;
    std::memcpy(l.closed, lp->closed, sizeof l.closed);
    l.handshake = lp->handshake;
  }
  s.handshakes = handshake_kinds;
  for (const auto& cp : pool.clusters()) {
    const upstream::Cluster& c = *cp;
    Stats::Cluster& out = s.clusters.emplace_back();
    out.name = c.cfg->name;
    out.pending = c.pending;
    out.connections = c.connections;
    out.streams = c.streams;
    for (size_t e = 0; e < c.endpoints.size(); ++e) {
      const upstream::Endpoint& ep = *c.endpoints[e];
      Stats::Endpoint& row = out.endpoints.emplace_back();
      row.address = numeric(ep.addr);
      row.state = endpoint_state(c.states[e], now);
      row.connections = ep.conns.size();
      row.streams = ep.stats.streams;
      row.failures = ep.stats.failures;
      row.ejections = ep.stats.ejections;
    }
  }
  s.streams_active = h2ctx.streams_in_use();
  s.upstream_connections = ups.live;
  s.io_pool_bytes = chunks.in_use() * sizeof(Chunk);
  s.body_pool_bytes = body_chunks.in_use() * sizeof(Chunk);
  return s;
}

}  // namespace tlsgate::shard
