// The backend pool of one shard (include/tlsgate/cluster_manager.hh).
#include "tlsgate/cluster_manager.hh"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "tlsgate/log.hh"

namespace tlsgate::upstream {

void Endpoint::probe_done(bool ok, const char* why) { manager->probe_done(*this, ok, why); }

ClusterManager::ClusterManager(unsigned shard_id, Transport& transport, uint64_t seed)
    : id_(shard_id), transport_(transport), seed_(seed) {}

ClusterManager::~ClusterManager() = default;

// ------------------------------------------------------------ configuration

std::vector<h2::ClusterPolicy> ClusterManager::adopt(std::shared_ptr<const config::Config> config) {
  std::vector<h2::ClusterPolicy> policies;
  std::vector<bool> kept(clusters_.size(), false);
  for (const config::Cluster& cfg : config->clusters) {
    Cluster* c = nullptr;
    for (size_t i = 0; i < clusters_.size() && c == nullptr; ++i)
      if (!kept[i] && clusters_[i]->cfg->name == cfg.name) {
        c = clusters_[i].get();
        kept[i] = true;
      }
    if (c == nullptr) {
      clusters_.push_back(std::make_unique<Cluster>());
      kept.push_back(true);
      c = clusters_.back().get();
      c->index = static_cast<uint32_t>(clusters_.size() - 1);
    }
    configure(*c, config, cfg);
    h2::ClusterPolicy p;
    p.pool_id = c->index;
    p.max_grpc_timeout_ms = static_cast<uint64_t>(cfg.max_grpc_timeout.count());
    p.retries = cfg.retries;
    p.retry_buffer = cfg.retry_buffer;
    // `cfg` lives as long as the snapshot whose connections' streams keep p.
    p.respond = cfg.respond;
    p.respond_status = static_cast<uint8_t>(cfg.respond_status);
    p.respond_message = cfg.respond_message_wire.empty() ? nullptr : cfg.respond_message_wire.c_str();
    p.response_bytes = cfg.response_bytes;
    p.respond_delay_ms = static_cast<uint32_t>(cfg.respond_delay.count());
    policies.push_back(p);
  }
  for (size_t i = 0; i < clusters_.size(); ++i) {
    if (kept[i] || clusters_[i]->retired) continue;
    Cluster& c = *clusters_[i];
    c.retired = true;  // its streams finish; connections close as they go idle
    for (EndpointState& st : c.states) st.active = false;
    LOG_INFO("upstream", "%u: cluster %s retired (not in the new configuration)", id_, c.cfg->name.c_str());
  }
  return policies;
}

void ClusterManager::configure(Cluster& c, std::shared_ptr<const config::Config> config, const config::Cluster& cfg) {
  const bool fresh = c.cfg == nullptr;
  const Policy lb = cfg.lb == config::LbPolicy::P2c ? Policy::P2c : Policy::RoundRobin;
  // Seeded per shard and cluster so that shards do not pick in lockstep.
  if (fresh || c.balancer.policy() != lb) c.balancer = Balancer(lb, seed_ ^ (uint64_t{c.index} + 1));
  // Certificates may have been rewritten in place under the same names, so
  // any configuration with upstream TLS renews the connections (they drain).
  if (!fresh && (cfg.tls.enabled || c.cfg->tls.enabled)) ++c.tls_generation;
  c.cfg = &cfg;
  c.config = std::move(config);  // keeps `cfg` alive
  c.retired = false;
  c.health.healthy_threshold = cfg.health_check.healthy_threshold;
  c.health.unhealthy_threshold = cfg.health_check.unhealthy_threshold;
  c.outlier.consecutive_failures = cfg.outlier.consecutive_failures;
  c.outlier.base_ejection_ms = static_cast<uint64_t>(cfg.outlier.base_ejection.count());
  c.outlier.max_ejection_ms = static_cast<uint64_t>(cfg.outlier.max_ejection.count());
  c.outlier.max_ejection_percent = cfg.outlier.max_ejection_percent;
  c.connect_timers.set_duration(static_cast<uint64_t>(cfg.connect_timeout.count()));
  c.no_endpoint = "cluster " + cfg.name + ": no healthy endpoint";
  sync_static_endpoints(c);
}

// The configuration's endpoints (numeric ones and the first address of each
// DNS name) join; static endpoints of the previous configuration it no
// longer has drain. DNS names are matched by their index in the
// configuration (a reload that reorders them is issue 18's to handle).
void ClusterManager::sync_static_endpoints(Cluster& c) {
  const config::Cluster& cfg = *c.cfg;
  std::vector<bool> wanted(c.endpoints.size(), false);
  for (size_t i = 0; i < cfg.endpoints.size(); ++i) {
    const int name = cfg.endpoint_name[i];
    size_t e = 0;
    for (; e < c.endpoints.size(); ++e)
      if (c.endpoints[e]->dns_name == name && c.endpoints[e]->addr.same_address(cfg.endpoints[i]) &&
          (c.states[e].active || (c.endpoints[e]->conns.empty() && c.endpoints[e]->probe == nullptr)))
        break;
    if (e == c.endpoints.size()) {
      e = add_endpoint(c, cfg.endpoints[i], name).index;
      wanted.resize(c.endpoints.size(), false);
    }
    c.states[e].active = true;
    wanted[e] = true;
  }
  // Static endpoints the configuration no longer lists drain (tick); so do
  // those of a DNS name it no longer has. Other addresses of a name stay:
  // they are the DNS watcher's, which publishes only changes.
  const int names = static_cast<int>(cfg.dns_names.size());
  for (size_t e = 0; e < c.endpoints.size(); ++e) {
    const int name = c.endpoints[e]->dns_name;
    if (!wanted[e] && c.states[e].active && (name < 0 || name >= names)) c.states[e].active = false;
  }
}

Endpoint& ClusterManager::add_endpoint(Cluster& c, const config::SocketAddress& addr, int dns_name) {
  for (size_t i = 0; i < c.endpoints.size(); ++i) {
    Endpoint& ep = *c.endpoints[i];
    if (!c.states[i].active && ep.conns.empty() && ep.probe == nullptr) {  // reuse a drained slot
      ep.addr = addr;
      ep.dns_name = dns_name;
      ep.next_check_ms = 0;
      ep.stats = EndpointStats{};
      c.states[i] = EndpointState{};
      return ep;
    }
  }
  auto ep = std::make_unique<Endpoint>();
  ep->manager = this;
  ep->cluster = c.index;
  ep->index = static_cast<uint32_t>(c.endpoints.size());
  ep->addr = addr;
  ep->dns_name = dns_name;
  c.endpoints.push_back(std::move(ep));
  c.states.emplace_back();
  return *c.endpoints.back();
}

// ------------------------------------------------------------ streams

// While the gateway drains, streams still come on client connections until
// their final GOAWAY (RFC 9113 6.8): they are forwarded and retried like any
// other; [drain] timeout bounds them.
h2::UpstreamSession* ClusterManager::pick(uint32_t cluster, int avoid, const char*& why) {
  Cluster& c = *clusters_.at(cluster);
  if (c.pending >= c.cfg->max_pending_streams) {
    ++counters_.circuit_breaker_streams;
    why = "circuit breaker: max_pending_streams reached";
    return nullptr;
  }
  const bool panic = c.cfg->all_unhealthy == config::AllUnhealthy::Panic && !c.retired;
  const int e = c.balancer.pick(c.states, now_, avoid, panic);
  if (e < 0) {
    ++counters_.no_healthy_endpoint;
    why = c.no_endpoint.c_str();
    return nullptr;
  }
  Connection* u = pooled_connection(c, static_cast<size_t>(e), why);
  return u == nullptr ? nullptr : u->session;
}

// Retry where: pick() with the failed endpoint to avoid. Retry whether: a
// stream the backend never processed, while the cluster's retries last.
bool ClusterManager::may_retry(const h2::ClusterPolicy& policy, uint32_t attempts) {
  return attempts <= policy.retries;
}

// The least busy connection to the endpoint that takes another stream, or a
// new one.
Connection* ClusterManager::pooled_connection(Cluster& c, size_t e, const char*& why) {
  Endpoint& ep = *c.endpoints[e];
  Connection* best = nullptr;
  for (Connection* u : ep.conns) {
    if (u->broken || u->session == nullptr || u->generation != c.tls_generation || !u->session->can_take_stream())
      continue;
    if (best == nullptr || u->session->active_streams() < best->session->active_streams()) best = u;
  }
  if (best != nullptr) return best;
  if (c.connections >= c.cfg->max_connections) {
    ++counters_.circuit_breaker_connections;
    why = "circuit breaker: max_connections reached";
    return nullptr;
  }
  if (ep.conns.size() >= kMaxConnsPerEndpoint) {
    why = "upstream connection limit per endpoint reached";
    return nullptr;
  }
  Connection* u = transport_.open(c.index, static_cast<uint32_t>(e), ep.addr, why);
  if (u == nullptr) return nullptr;
  ++counters_.connects;
  ++c.connections;
  u->cluster = c.index;
  u->endpoint = static_cast<uint32_t>(e);
  u->connect_timer.owner = u;
  u->generation = c.tls_generation;
  ep.conns.push_back(u);
  c.connect_timers.arm(u->connect_timer, now_);
  LOG_DEBUG("upstream", "%u: connecting to %s", id_, ep.addr.text.c_str());
  return u;
}

void ClusterManager::stream_started(h2::UpstreamSession& u) {
  Cluster& c = *clusters_[u.cluster()];
  const auto e = static_cast<size_t>(u.endpoint());
  ++c.pending;
  ++c.streams;
  ++c.states[e].outstanding;
  ++c.endpoints[e]->stats.streams;
}

void ClusterManager::stream_finished(h2::UpstreamSession& u, h2::Outcome outcome) {
  Cluster& c = *clusters_[u.cluster()];
  const auto e = static_cast<size_t>(u.endpoint());
  --c.pending;
  --c.states[e].outstanding;
  if (outcome == h2::Outcome::Success) record_result(c, e, false, "");
  else if (outcome == h2::Outcome::Failure) record_result(c, e, true, "stream failed");
  else if (outcome == h2::Outcome::ConnectionLost) ++streams_lost_;  // connection_closed counts the loss once
}

// Passive outlier detection: every stream outcome, connect attempt and lost
// connection counts once.
void ClusterManager::record_result(Cluster& c, size_t e, bool failure, const char* what) {
  Endpoint& ep = *c.endpoints[e];
  if (failure) ++ep.stats.failures;
  const OutlierVerdict v = record_outcome(c.states, e, failure, now_, c.outlier);
  if (v == OutlierVerdict::Ejected) {
    ++counters_.endpoints_ejected;
    ++ep.stats.ejections;
    LOG_WARN("upstream", "%u: cluster %s: endpoint %s ejected for %lu ms after %u consecutive failures (last: %s)",
             id_, c.cfg->name.c_str(), ep.addr.text.c_str(),
             static_cast<unsigned long>(c.states[e].ejected_until_ms - now_), c.outlier.consecutive_failures, what);
  } else if (v == OutlierVerdict::Refused) {
    ++counters_.endpoints_ejection_refused;
    // Its own once-a-second limit: the connect failure that caused it has
    // just used the endpoint's warning slot.
    if (ep.last_refusal_log_ms != 0 && now_ - ep.last_refusal_log_ms < 1000) return;
    ep.last_refusal_log_ms = now_;
    LOG_WARN("upstream",
             "%u: cluster %s: endpoint %s not ejected after %u consecutive failures: max_ejection_percent = %u "
             "keeps it (last: %s)",
             id_, c.cfg->name.c_str(), ep.addr.text.c_str(), c.outlier.consecutive_failures,
             c.outlier.max_ejection_percent, what);
  }
}

// ------------------------------------------------------------ connections

void ClusterManager::connected(Connection& c) {
  TimerList::disarm(c.connect_timer);
  c.ready = true;
  c.last_recv_ms = now_;
}

void ClusterManager::connect_failed(Connection& u, const char* what) {
  Cluster& c = *clusters_[u.cluster];
  Endpoint& ep = *c.endpoints[u.endpoint];
  ++counters_.connect_failures;
  char why[160];
  std::snprintf(why, sizeof why, "upstream %s: %s", ep.addr.text.c_str(), what);
  warn_endpoint(ep, why);
  record_result(c, u.endpoint, true, what);
  transport_.close(u, why, true);
}

void ClusterManager::connection_closed(Connection& u, const char* why, bool nothing_sent) {
  TimerList::disarm(u.connect_timer);
  Cluster& c = *clusters_[u.cluster];
  --c.connections;
  std::vector<Connection*>& conns = c.endpoints[u.endpoint]->conns;
  for (size_t i = 0; i < conns.size(); ++i)
    if (conns[i] == &u) {
      conns[i] = conns.back();
      conns.pop_back();
      break;
    }
  // Every stream on it: retried elsewhere if never sent, else grpc-status 14.
  const uint32_t outer = std::exchange(streams_lost_, 0);
  if (u.session != nullptr) u.session->fail(why, nothing_sent);
  u.session = nullptr;
  // The backend saw streams that the loss ended: one failure of the
  // endpoint, however many there were (a crash under load must not eject it
  // once per stream).
  if (streams_lost_ > 0) record_result(c, u.endpoint, true, why);
  streams_lost_ = outer;
}

void ClusterManager::warn_endpoint(Endpoint& ep, const char* why) {
  if (now_ - ep.last_warning_ms < 1000 && ep.last_warning_ms != 0) {
    ++ep.suppressed;
    return;
  }
  if (ep.suppressed > 0)
    LOG_WARN("upstream", "%u: %s (and %lu similar in the last second)", id_, why, ep.suppressed);
  else
    LOG_WARN("upstream", "%u: %s", id_, why);
  ep.last_warning_ms = now_;
  ep.suppressed = 0;
}

std::string ClusterManager::peer_name(const Connection& u, bool& is_ip) const {
  const Cluster& c = *clusters_[u.cluster];
  const Endpoint& ep = *c.endpoints[u.endpoint];
  is_ip = false;
  if (!c.cfg->tls.server_name.empty()) return c.cfg->tls.server_name;
  if (ep.dns_name >= 0 && static_cast<size_t>(ep.dns_name) < c.cfg->dns_names.size())
    return c.cfg->dns_names[static_cast<size_t>(ep.dns_name)].host;
  std::string ip = ep.addr.text.substr(0, ep.addr.text.rfind(':'));
  if (!ip.empty() && ip.front() == '[') ip = ip.substr(1, ip.size() - 2);
  is_ip = true;
  return ip;
}

// ------------------------------------------------------------ DNS

void ClusterManager::apply_dns(uint32_t cluster, uint32_t name, const std::vector<config::SocketAddress>& addrs) {
  Cluster& c = *clusters_.at(cluster);
  if (c.retired) return;
  ++counters_.dns_updates;
  const int n = static_cast<int>(name);
  for (size_t e = 0; e < c.endpoints.size(); ++e) {
    Endpoint& ep = *c.endpoints[e];
    if (ep.dns_name != n) continue;
    // By address: the endpoint written as the name keeps the name as its
    // text, and must survive a refresh that returns its address.
    const bool keep = std::any_of(addrs.begin(), addrs.end(),
                                  [&](const config::SocketAddress& a) { return a.same_address(ep.addr); });
    if (keep == c.states[e].active) continue;
    c.states[e].active = keep;  // gone: no new streams; running ones finish (tick)
    LOG_INFO("upstream", "%u: cluster %s: endpoint %s %s (DNS)", id_, c.cfg->name.c_str(), ep.addr.text.c_str(),
             keep ? "back" : "removed, draining");
  }
  for (const config::SocketAddress& a : addrs) {
    bool known = false;
    for (size_t e = 0; e < c.endpoints.size() && !known; ++e)
      known = c.endpoints[e]->dns_name == n && c.endpoints[e]->addr.same_address(a) && c.states[e].active;
    if (known) continue;
    add_endpoint(c, a, n);
    LOG_INFO("upstream", "%u: cluster %s: endpoint %s added (DNS)", id_, c.cfg->name.c_str(), a.text.c_str());
  }
}

// ------------------------------------------------------------ timers

void ClusterManager::tick() {
  for (auto& cp : clusters_) {
    Cluster& c = *cp;
    while (TimerLink* t = c.connect_timers.pop_expired(now_))
      connect_failed(*static_cast<Connection::ConnectTimer*>(t)->owner, "connect timed out");
    // Backwards by index, without a copy (the tick allocates nothing):
    // closing a connection moves the last one into its place (already
    // visited), and retries of its streams may append new ones (skipped).
    for (size_t e = 0; e < c.endpoints.size(); ++e) {
      std::vector<Connection*>& conns = c.endpoints[e]->conns;
      for (size_t i = conns.size(); i-- > 0;)
        if (i < conns.size()) keepalive(*conns[i], *c.cfg);
    }
    if (c.cfg->health_check.enabled && !stopping_ && !c.retired) check_health(c);
  }
}

// Keepalive PINGs on quiet connections; idle connections, and drained ones of
// endpoints gone from DNS (or from the configuration), closed.
void ClusterManager::keepalive(Connection& u, const config::Cluster& cfg) {
  if (!u.ready || u.broken || u.session == nullptr) return;
  h2::UpstreamSession& s = *u.session;
  const Cluster& c = *clusters_[u.cluster];
  if (s.active_streams() == 0 && (!c.states[u.endpoint].active || u.generation != c.tls_generation)) {
    transport_.close(u, c.states[u.endpoint].active ? "upstream TLS settings replaced" : "endpoint removed", false);
    return;
  }
  if (s.active_streams() > 0) {
    u.idle_since_ms = 0;
  } else if (u.idle_since_ms == 0) {
    u.idle_since_ms = now_;
  } else if (now_ - u.idle_since_ms >= static_cast<uint64_t>(cfg.idle_timeout.count())) {
    ++counters_.idle_closed;
    transport_.close(u, "upstream connection idle", false);
    return;
  }
  if (u.ping_sent_ms != 0 && u.last_recv_ms >= u.ping_sent_ms) u.ping_sent_ms = 0;
  if (u.ping_sent_ms != 0) {
    if (now_ - u.ping_sent_ms >= static_cast<uint64_t>(cfg.keepalive_timeout.count())) {
      ++counters_.keepalive_timeouts;
      Endpoint& ep = endpoint_of(u);
      char why[160];
      std::snprintf(why, sizeof why, "upstream %s: no answer to a keepalive PING", ep.addr.text.c_str());
      warn_endpoint(ep, why);
      transport_.close(u, why, false);
    }
  } else if (now_ - u.last_recv_ms >= static_cast<uint64_t>(cfg.keepalive_interval.count())) {
    u.ping_sent_ms = now_;
    s.ping();
  }
}

void ClusterManager::check_health(Cluster& c) {
  for (size_t e = 0; e < c.endpoints.size(); ++e) {
    Endpoint& ep = *c.endpoints[e];
    if (ep.probe != nullptr && now_ >= ep.probe_deadline_ms) {
      ep.probe_session->cancel_probe(ep.probe);
      ep.probe = nullptr;
      ep.probe_session = nullptr;
      health_result(c, e, false, "health check timed out");
    }
    if (ep.probe == nullptr && c.states[e].active && now_ >= ep.next_check_ms) start_health_check(c, e);
  }
}

void ClusterManager::start_health_check(Cluster& c, size_t e) {
  Endpoint& ep = *c.endpoints[e];
  const config::HealthCheck& hc = c.cfg->health_check;
  ep.next_check_ms = now_ + static_cast<uint64_t>(hc.interval.count());
  const char* why = "cannot open a connection";
  Connection* u = pooled_connection(c, e, why);
  void* probe = u != nullptr ? u->session->submit_probe(hc.service, ep.addr.text, &ep) : nullptr;
  if (probe == nullptr) {
    health_result(c, e, false, why);
    return;
  }
  ep.probe = probe;
  ep.probe_session = u->session;
  ep.probe_deadline_ms = now_ + static_cast<uint64_t>(hc.timeout.count());
}

void ClusterManager::health_result(Cluster& c, size_t e, bool ok, const char* why) {
  if (!ok) ++counters_.health_check_failures;
  else ++counters_.health_checks_passed;
  EndpointState& st = c.states[e];
  if (!st.on_check(ok, c.health)) return;
  if (st.healthy)
    LOG_INFO("upstream", "%u: cluster %s: endpoint %s is healthy", id_, c.cfg->name.c_str(),
             c.endpoints[e]->addr.text.c_str());
  else
    LOG_WARN("upstream", "%u: cluster %s: endpoint %s is unhealthy: %s", id_, c.cfg->name.c_str(),
             c.endpoints[e]->addr.text.c_str(), why);
}

void ClusterManager::probe_done(Endpoint& ep, bool ok, const char* why) {
  ep.probe = nullptr;
  ep.probe_session = nullptr;
  health_result(*clusters_[ep.cluster], ep.index, ok, why);
}

}  // namespace tlsgate::upstream
