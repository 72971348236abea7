// One configuration as a shard runs it: the listeners' TLS contexts and
// routes, the clusters' stream policies and upstream TLS contexts. Built on
// the shard that uses it (OpenSSL objects stay shard-local), immutable once
// built, and reference-counted: every connection keeps the snapshot it
// started with to its end, whatever snapshot the shard adopts meanwhile
// (Shard::adopt, the same mailbox DNS updates use).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tlsgate/cluster_manager.hh"
#include "tlsgate/config.hh"
#include "tlsgate/edge.hh"
#include "tlsgate/h2.hh"
#include "tlsgate/route.hh"
#include "tlsgate/tls.hh"

namespace tlsgate::shard {

struct Snapshot {
  struct Listener {
    const config::Listener* cfg = nullptr;  // in `config`
    std::unique_ptr<tls::Context> tls;      // null in a snapshot built without listeners' TLS (tests)
    bool ktls = false;                      // try kernel TLS on its connections
    edge::ProxyMode proxy = edge::ProxyMode::Off;
    route::Table routes;
  };
  std::shared_ptr<const config::Config> config;
  std::vector<Listener> listeners;
  // By configuration cluster index: what streams of the cluster apply
  // (pool_id: the cluster in the shard's upstream::ClusterManager).
  std::vector<h2::ClusterPolicy> clusters;
  // By configuration cluster index: TLS towards its backends, or null.
  std::vector<std::unique_ptr<tls::Context>> cluster_tls;

  // The shard's pool adopts the configuration's clusters (keeping the state
  // of those it knows by name) and the snapshot records their pool ids.
  // `listener_tls`: make the listeners' TLS contexts (false: unit tests
  // without certificates). Throws on a TLS set-up failure.
  static std::shared_ptr<const Snapshot> build(std::shared_ptr<const config::Config> config,
                                               upstream::ClusterManager& pool, bool ktls_any,
                                               bool listener_tls = true);
  // The upstream TLS context for pool cluster `pool_id`, or null.
  tls::Context* tls_for_pool(uint32_t pool_id) const;
};

}  // namespace tlsgate::shard
