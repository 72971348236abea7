// The backend pool of one shard: every cluster's endpoints, their HTTP/2
// connections, circuit breakers, health checks, outlier ejection, keepalive
// and idle close, DNS updates, endpoint choice and the retry policy.
//
// It does no IO. Sockets are the shard's: the manager asks its Transport to
// open or close a connection, and the shard tells it what happened to one
// (connected, closed, bytes received). So the whole pool runs in a unit test
// with a fake Transport and in-memory HTTP/2 sessions (tests/unit/upstream).
//
// Owns: Cluster and Endpoint objects (never shared with another shard).
// May call: h2::UpstreamSession (can_take_stream, submit_probe, ping, fail),
// its Transport, the log. Must never be called by: src/h2 except through the
// h2::Pool interface it implements.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tlsgate/config.hh"
#include "tlsgate/h2.hh"
#include "tlsgate/timer.hh"
#include "tlsgate/upstream.hh"

namespace tlsgate::upstream {

// The pool's view of one backend connection; the shard's upstream
// connection object derives from it and outlives the pool's interest in it
// (the pool forgets it in connection_closed()).
struct Connection {
  uint32_t cluster = 0;
  uint32_t endpoint = 0;
  h2::UpstreamSession* session = nullptr;  // set by Transport::connect; null once closed
  bool ready = false;    // connected (and TLS done): keepalive and idle apply
  bool broken = false;   // a send failed: takes no new stream (the shard closes it)
  uint32_t generation = 0;  // the cluster's tls_generation when it was opened
  uint64_t last_recv_ms = 0;   // keepalive: any received byte proves the peer alive
  uint64_t ping_sent_ms = 0;   // 0 = no PING outstanding
  uint64_t idle_since_ms = 0;  // 0 = has streams
  // Connect (and upstream TLS handshake) timer, run by the manager's tick.
  struct ConnectTimer : TimerLink {
    Connection* owner = nullptr;
  } connect_timer;
};

// The IO the pool needs; implemented by the shard.
class Transport {
 public:
  // Starts a connection to endpoint `e` of `cluster` (socket, connect; the
  // shard makes its h2::UpstreamSession and sets Connection::session).
  // nullptr when no socket could be made; `why` then says so.
  virtual Connection* open(uint32_t cluster, uint32_t endpoint, const config::SocketAddress& addr,
                           const char*& why) = 0;
  // Closes it now: the shard cancels its IO and calls connection_closed()
  // (`nothing_sent`: the connection never opened, its streams may be
  // retried elsewhere).
  virtual void close(Connection& c, const char* why, bool nothing_sent) = 0;

 protected:
  ~Transport() = default;
};

// What the pool counts, per shard (the shard prints them at exit; metrics
// read the per-cluster and per-endpoint ones below).
struct Counters {
  uint64_t connects = 0;
  uint64_t connect_failures = 0;
  uint64_t circuit_breaker_streams = 0;      // refused: max_pending_streams reached
  uint64_t circuit_breaker_connections = 0;  // refused: max_connections reached
  uint64_t no_healthy_endpoint = 0;          // refused: no usable endpoint
  uint64_t endpoints_ejected = 0;
  uint64_t endpoints_ejection_refused = 0;
  uint64_t health_check_failures = 0;
  uint64_t health_checks_passed = 0;
  uint64_t idle_closed = 0;
  uint64_t keepalive_timeouts = 0;
  uint64_t dns_updates = 0;
};

// Per endpoint: what metrics show beside its EndpointState.
struct EndpointStats {
  uint64_t streams = 0;    // streams started on it
  uint64_t failures = 0;   // failed streams, connects and lost connections
  uint64_t ejections = 0;
};

class ClusterManager;

// One backend address of a cluster, in this shard.
struct Endpoint final : h2::ProbeSink {
  ClusterManager* manager = nullptr;
  uint32_t cluster = 0;
  uint32_t index = 0;
  config::SocketAddress addr;
  int dns_name = -1;  // index into the cluster's dns_names, or -1 (static)
  std::vector<Connection*> conns;  // open or opening
  EndpointStats stats;
  uint64_t last_warning_ms = 0;  // failures are counted always, logged at most once a second
  uint64_t suppressed = 0;
  uint64_t last_refusal_log_ms = 0;
  // Active health check in flight: its stream and session.
  void* probe = nullptr;
  h2::UpstreamSession* probe_session = nullptr;
  uint64_t probe_deadline_ms = 0;
  uint64_t next_check_ms = 0;
  void probe_done(bool ok, const char* why) override;
};

// One cluster in this shard. Its settings come from the configuration
// snapshot the manager adopted last (`config` keeps it alive).
struct Cluster {
  std::shared_ptr<const config::Config> config;
  const config::Cluster* cfg = nullptr;
  uint32_t index = 0;
  // Never shrinks: Connection::endpoint indexes it. An endpoint gone from
  // DNS stays, inactive, and its slot is reused when an address comes back.
  std::vector<std::unique_ptr<Endpoint>> endpoints;
  std::vector<EndpointState> states;  // parallel to endpoints
  Balancer balancer;
  HealthPolicy health;
  OutlierPolicy outlier;
  TimerList connect_timers;
  uint32_t pending = 0;      // client streams on this cluster's connections (a gauge)
  uint32_t connections = 0;  // open or opening connections (a gauge)
  uint64_t streams = 0;      // client streams started (a counter)
  bool retired = false;      // gone from the configuration: no new streams
  // Bumped when a configuration with TLS towards this cluster's backends is
  // adopted: connections made with the previous TLS settings take no new
  // stream and close once idle.
  uint32_t tls_generation = 0;
  std::string no_endpoint;   // grpc-message when no endpoint is usable
};

class ClusterManager final : public h2::Pool {
 public:
  static constexpr size_t kMaxConnsPerEndpoint = 64;
  // `seed` spreads the shards' random picks.
  ClusterManager(unsigned shard_id, Transport& transport, uint64_t seed);
  ~ClusterManager();
  ClusterManager(const ClusterManager&) = delete;
  ClusterManager& operator=(const ClusterManager&) = delete;

  // Takes the clusters of a configuration snapshot: a cluster known by name
  // keeps its endpoints, connections and their state and takes the new
  // settings (static endpoints added or drained like DNS changes); a new
  // one is created; one the snapshot no longer has is retired (no new
  // streams; running ones finish). Returns, for each of the snapshot's
  // clusters in order, what its streams apply: its pool id (the index
  // pick() takes) and the stream side of the retry policy (retries, retry
  // buffer) and the deadline cap.
  std::vector<h2::ClusterPolicy> adopt(std::shared_ptr<const config::Config> config);

  // h2::Pool
  h2::UpstreamSession* pick(uint32_t cluster, int avoid, const char*& why) override;
  bool may_retry(const h2::ClusterPolicy& policy, uint32_t attempts) override;
  uint64_t now_ms() override { return now_; }
  void stream_started(h2::UpstreamSession& u) override;
  void stream_finished(h2::UpstreamSession& u, h2::Outcome outcome) override;

  // From the shard.
  void set_now(uint64_t now_ms) { now_ = now_ms; }
  // The connection is up (TLS done, where the cluster has TLS).
  void connected(Connection& c);
  // Connect or upstream TLS handshake failed: counted against the endpoint,
  // then closed through the Transport (its streams retried elsewhere).
  void connect_failed(Connection& c, const char* what);
  // The connection is closing (whatever closed it): it leaves its pool, its
  // streams end (never sent: retried; else grpc-status 14), and a loss with
  // streams on it is one failure of the endpoint. Call before destroying
  // the session.
  void connection_closed(Connection& c, const char* why, bool nothing_sent);
  // DNS: the addresses of clusters[cluster].dns_names[name] (config indices
  // of the snapshot the shard adopted last) are now `addrs`.
  void apply_dns(uint32_t cluster, uint32_t name, const std::vector<config::SocketAddress>& addrs);
  // Every ~100 ms: connect timeouts, keepalive PINGs, idle connections and
  // drained DNS-removed endpoints closed, health checks started or timed out.
  void tick();
  // The gateway drains: no more health checks. Streams the client
  // connections still accept before their final GOAWAY are served as usual.
  void stop() { stopping_ = true; }
  // The name the backend's certificate must carry: server_name, else the
  // endpoint's DNS name, else its IP address (`is_ip`).
  std::string peer_name(const Connection& c, bool& is_ip) const;

  const Counters& counters() const { return counters_; }
  const std::vector<std::unique_ptr<Cluster>>& clusters() const { return clusters_; }
  Endpoint& endpoint_of(const Connection& c) { return *clusters_[c.cluster]->endpoints[c.endpoint]; }
  Cluster& cluster(uint32_t i) { return *clusters_.at(i); }

  // Called by Endpoint::probe_done.
  void probe_done(Endpoint& ep, bool ok, const char* why);

 private:
  void configure(Cluster& c, std::shared_ptr<const config::Config> config, const config::Cluster& cfg);
  void sync_static_endpoints(Cluster& c);
  Endpoint& add_endpoint(Cluster& c, const config::SocketAddress& addr, int dns_name);
  Connection* pooled_connection(Cluster& c, size_t e, const char*& why);
  void record_result(Cluster& c, size_t e, bool failure, const char* what);
  void warn_endpoint(Endpoint& ep, const char* why);
  void keepalive(Connection& c, const config::Cluster& cfg);
  void check_health(Cluster& c);
  void start_health_check(Cluster& c, size_t e);
  void health_result(Cluster& c, size_t e, bool ok, const char* why);

  unsigned id_;
  Transport& transport_;
  uint64_t seed_;
  uint64_t now_ = 0;
  bool stopping_ = false;
  uint32_t streams_lost_ = 0;  // ended by the connection connection_closed() is closing
  std::vector<std::unique_ptr<Cluster>> clusters_;
  Counters counters_;
};

}  // namespace tlsgate::upstream
