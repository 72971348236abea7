// What /metrics shows of a shard: Loop::make_stats copies the counters and
// gauges on the shard thread (no atomics on the hot path: the admin thread
// asks through the mailbox and gets a copy at the next tick).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <time.h>

#include <cstdio>
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


}  // namespace

std::string_view numeric_address(const config::SocketAddress& a, char* out, size_t cap) {
  char ip[INET6_ADDRSTRLEN] = {0};
  const bool v6 = a.family() == AF_INET6;
  const void* src = v6 ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_addr)
                       : static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_addr);
  if (::inet_ntop(a.family(), src, ip, sizeof ip) == nullptr) return {};
  const int n = std::snprintf(out, cap, v6 ? "[%s]:%u" : "%s:%u", ip, a.port());
  return n > 0 && static_cast<size_t>(n) < cap ? std::string_view(out, static_cast<size_t>(n)) : std::string_view();
}

void Loop::count_handshake(uint32_t listener, const char* version, const char* cipher, bool resumed, bool kernel) {
  for (Stats::Handshakes& h : handshake_kinds)
    if (h.listener == listener && h.version == version && h.cipher == cipher && h.resumed == resumed &&
        h.ktls == kernel) {
      ++h.count;
      return;
    }
  handshake_kinds.push_back(Stats::Handshakes{listener, version, cipher, resumed, kernel, 1});
}

// Column of a stream's grpc-status: 0..16, other, none (a reset or an
// answer without one).
size_t status_column(int grpc_status) {
  if (grpc_status < 0) return Stats::kStatusNone;
  return grpc_status <= 16 ? static_cast<size_t>(grpc_status) : Stats::kStatusOther;
}

void Loop::count_stream(uint32_t listener, int pool_cluster, const h2::StreamEnd& e) {
  const size_t row = pool_cluster >= 0 ? static_cast<size_t>(pool_cluster) + 1 : 0;  // 0: never routed
  if (row >= stream_durations.size()) size_stream_tables(row + 1);
  const size_t per_row = listeners.size() * Stats::kStatusColumns;
  ++stream_counts[row * per_row + listener * Stats::kStatusColumns + status_column(e.grpc_status)];
  stream_durations[row].observe(e.end_us >= e.start_us ? e.end_us - e.start_us : 0);
}

// Done when a configuration is adopted, so that no stream allocates.
void Loop::size_stream_tables(size_t rows) {
  if (rows <= stream_durations.size()) return;
  stream_durations.resize(rows);
  stream_counts.resize(rows * listeners.size() * Stats::kStatusColumns);
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
  const size_t per_row = listeners.size() * Stats::kStatusColumns;
  for (size_t row = 0; row < stream_durations.size(); ++row) {
    const std::string name = row == 0 ? "none" : pool.clusters()[row - 1]->cfg->name;
    s.stream_durations.push_back({name, stream_durations[row]});
    for (uint32_t l = 0; l < listeners.size(); ++l) {
      Stats::Streams& out = s.streams.emplace_back();
      out.listener = l;
      out.cluster = name;
      std::memcpy(out.by_status, &stream_counts[row * per_row + l * Stats::kStatusColumns], sizeof out.by_status);
    }
  }
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
      char text[kAddressText];
      row.address = numeric_address(ep.addr, text, sizeof text);
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
