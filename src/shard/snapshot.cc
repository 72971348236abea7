#include "tlsgate/snapshot.hh"

namespace tlsgate::shard {
namespace {

edge::ProxyMode proxy_mode(config::ProxyProtocol p) {
  switch (p) {
    case config::ProxyProtocol::Off: return edge::ProxyMode::Off;
    case config::ProxyProtocol::V1: return edge::ProxyMode::V1;
    case config::ProxyProtocol::V2: return edge::ProxyMode::V2;
    case config::ProxyProtocol::Auto: return edge::ProxyMode::Auto;
  }
  return edge::ProxyMode::Off;
}

}  // namespace

std::shared_ptr<const Snapshot> Snapshot::build(std::shared_ptr<const config::Config> config,
                                                upstream::ClusterManager& pool, bool ktls_any, bool listener_tls) {
  auto s = std::make_shared<Snapshot>();
  s->config = config;
  // Everything that can fail first: the pool adopts the clusters only once
  // the snapshot will be used (a throw leaves the shard on its old one).
  for (const config::Cluster& c : config->clusters)
    s->cluster_tls.push_back(c.tls.enabled ? std::make_unique<tls::Context>(c.tls) : nullptr);
  for (const config::Listener& l : config->listeners) {
    Listener out;
    out.cfg = &l;
    out.ktls = l.tls.ktls != config::Ktls::Off && ktls_any;
    if (listener_tls) out.tls = std::make_unique<tls::Context>(l.tls, out.ktls);
    out.proxy = proxy_mode(l.proxy_protocol);
    out.routes = route::Table(static_cast<uint32_t>(l.cluster_index), l.routes);
    s->listeners.push_back(std::move(out));
  }
  s->clusters = pool.adopt(config);
  return s;
}

tls::Context* Snapshot::tls_for_pool(uint32_t pool_id) const {
  for (size_t i = 0; i < clusters.size(); ++i)
    if (clusters[i].pool_id == pool_id) return cluster_tls[i].get();
  return nullptr;
}

}  // namespace tlsgate::shard
