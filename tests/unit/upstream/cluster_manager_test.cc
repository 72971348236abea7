// The cluster manager without io_uring: real h2 sessions and in-memory
// nghttp2 backends, the test in the role of the shard (pool_fixture.hh).
#include "pool_fixture.hh"

#include <string>

namespace tlsgate::upstream::pooltest {
namespace {

using h2::fwdtest::value;

class ClusterManagerTest : public PoolTest {
 protected:
  void adopt(std::shared_ptr<config::Config> cfg) { policies_ = manager_.adopt(cfg); }
  // The client's view of stream `id` of client `i`.
  PeerStream& seen(size_t i, int32_t id) { return clients_[i]->streams[id]; }

  std::vector<h2::ClusterPolicy> policies_;
};

// A backend that takes 2 streams per connection: the third stream opens a
// second connection to the same endpoint, and both carry their streams.
TEST_F(ClusterManagerTest, PoolGrowsWhenTheBackendsStreamLimitIsReached) {
  backend_max_streams_ = 2;
  adopt(one_cluster({"127.0.0.1:50051"}));
  const size_t c = connect_client(&policies_);
  call(c);
  ASSERT_EQ(conns_.size(), 1u);
  call(c);
  EXPECT_EQ(conns_.size(), 1u) << "the second stream fits the first connection";
  call(c);
  ASSERT_EQ(conns_.size(), 2u) << "MAX_CONCURRENT_STREAMS = 2 reached: a new connection";
  pump();
  EXPECT_EQ(backend_streams(*conns_[0]), 2u);
  EXPECT_EQ(backend_streams(*conns_[1]), 1u);
  EXPECT_EQ(conns_[0]->address, "127.0.0.1:50051");
  EXPECT_EQ(conns_[1]->address, "127.0.0.1:50051");
  EXPECT_EQ(manager_.cluster(0).pending, 3u);
  EXPECT_EQ(manager_.cluster(0).connections, 2u);
  EXPECT_EQ(manager_.counters().connects, 2u);
  // Answered: the gauges go back, the counters stay.
  for (auto& conn : conns_)
    for (auto& [id, s] : conn->backend->streams) answer(*conn, id);
  pump();
  EXPECT_EQ(manager_.cluster(0).pending, 0u);
  EXPECT_EQ(manager_.cluster(0).streams, 3u);
  EXPECT_EQ(manager_.cluster(0).endpoints[0]->stats.streams, 3u);
}

// max_pending_streams: the stream past it is answered UNAVAILABLE by the
// gateway, without reaching a backend.
TEST_F(ClusterManagerTest, BreakerRefusesStreamsPastMaxPendingStreams) {
  auto cfg = one_cluster({"127.0.0.1:50051"});
  cfg->clusters[0].max_pending_streams = 2;
  adopt(cfg);
  const size_t c = connect_client(&policies_);
  call(c);
  call(c);
  const int32_t third = call(c);
  EXPECT_EQ(backend_streams(*conns_[0]), 2u);
  EXPECT_EQ(value(seen(c, third).headers, "grpc-status"), "14");
  EXPECT_EQ(value(seen(c, third).headers, "grpc-message"), "circuit breaker: max_pending_streams reached");
  EXPECT_EQ(manager_.counters().circuit_breaker_streams, 1u);
}

// max_connections: a full connection and no room for another one.
TEST_F(ClusterManagerTest, BreakerRefusesConnectionsPastMaxConnections) {
  backend_max_streams_ = 1;
  auto cfg = one_cluster({"127.0.0.1:50051"});
  cfg->clusters[0].max_connections = 1;
  adopt(cfg);
  const size_t c = connect_client(&policies_);
  call(c);
  const int32_t second = call(c);
  EXPECT_EQ(conns_.size(), 1u);
  EXPECT_EQ(value(seen(c, second).headers, "grpc-status"), "14");
  EXPECT_EQ(manager_.counters().circuit_breaker_connections, 1u);
}

// Failures in a row eject an endpoint for base_ejection: new streams go to
// the other one; once the time is up it takes streams again.
TEST_F(ClusterManagerTest, EjectedEndpointReturnsAfterBaseEjection) {
  auto cfg = one_cluster({"127.0.0.1:50051", "127.0.0.1:50052"});
  cfg->clusters[0].outlier.consecutive_failures = 2;
  cfg->clusters[0].outlier.base_ejection = std::chrono::milliseconds(10'000);
  adopt(cfg);
  const size_t c = connect_client(&policies_);
  // Two connects to 50051 fail (round robin alternates: 50051, 50052, 50051).
  for (int i = 0; i < 3; ++i) {
    call(c);
    FakeConnection& last = *conns_.back();
    if (last.address == "127.0.0.1:50051") manager_.connect_failed(last, "connection refused");
    pump();
  }
  const Cluster& cl = manager_.cluster(0);
  EXPECT_TRUE(cl.states[0].ejected(now_)) << "two connect failures in a row eject 50051";
  EXPECT_EQ(manager_.counters().endpoints_ejected, 1u);
  EXPECT_EQ(cl.endpoints[0]->stats.ejections, 1u);
  // Every stream that met a failed connect was retried on 50052 and got there.
  size_t on_52 = 0;
  for (auto& conn : conns_)
    if (!conn->closed) on_52 += backend_streams(*conn);
  EXPECT_EQ(on_52, 3u);
  const size_t before = conns_.size();
  call(c);
  for (size_t i = before; i < conns_.size(); ++i) EXPECT_NE(conns_[i]->address, "127.0.0.1:50051");
  advance(10'001);
  EXPECT_TRUE(cl.states[0].usable(now_)) << "ejection over";
  call(c);
  call(c);
  bool back = false;
  for (auto& conn : conns_) back |= !conn->closed && conn->address == "127.0.0.1:50051";
  EXPECT_TRUE(back) << "50051 takes streams again";
}

// DNS: a name's new answer adds its address and drains the one it lost
// (running streams finish; the connection closes on the next tick after).
TEST_F(ClusterManagerTest, DnsAddsNewAddressesAndDrainsGoneOnes) {
  auto cfg = one_cluster({});
  config::Cluster& cl = cfg->clusters[0];
  cl.dns_names.push_back({"svc.test", 50051, "svc.test:50051"});
  cl.endpoints.push_back(address("10.0.0.1:50051"));
  cl.endpoint_name.push_back(0);
  adopt(cfg);
  const size_t c = connect_client(&policies_);
  const int32_t running = call(c);
  ASSERT_EQ(conns_.size(), 1u);
  EXPECT_EQ(conns_[0]->address, "10.0.0.1:50051");
  manager_.apply_dns(0, 0, {address("10.0.0.2:50051")});
  EXPECT_EQ(manager_.counters().dns_updates, 1u);
  call(c);
  ASSERT_EQ(conns_.size(), 2u);
  EXPECT_EQ(conns_[1]->address, "10.0.0.2:50051") << "new streams go to the new address";
  manager_.tick();
  EXPECT_FALSE(conns_[0]->closed) << "a stream still runs on the removed endpoint";
  answer(*conns_[0], conns_[0]->backend->last_stream);
  pump();
  EXPECT_EQ(value(seen(c, running).trailers, "grpc-status"), "0") << "the running stream finished";
  manager_.tick();
  EXPECT_TRUE(conns_[0]->closed) << "drained: closed";
  EXPECT_EQ(conns_[0]->close_why, "endpoint removed");
  EXPECT_FALSE(conns_[1]->closed);
  // The same address again: the endpoint comes back in the slot it had.
  manager_.apply_dns(0, 0, {address("10.0.0.2:50051"), address("10.0.0.1:50051")});
  EXPECT_TRUE(manager_.cluster(0).states[0].active);
  EXPECT_EQ(manager_.cluster(0).endpoints.size(), 2u);
}

// Retry policy: a stream the backend refused goes to the other endpoint
// while retries last; the pool never retries while the gateway stops.
TEST_F(ClusterManagerTest, RefusedStreamIsRetriedOnTheOtherEndpoint) {
  auto cfg = one_cluster({"127.0.0.1:50051", "127.0.0.1:50052"});
  cfg->clusters[0].retries = 1;
  adopt(cfg);
  const size_t c = connect_client(&policies_);
  const int32_t id = call(c);
  ASSERT_EQ(conns_.size(), 1u);
  FakeConnection& first = *conns_[0];
  first.backend->reset(first.backend->last_stream, NGHTTP2_REFUSED_STREAM);
  pump();
  ASSERT_EQ(conns_.size(), 2u) << "retried: a connection to the other endpoint";
  EXPECT_NE(conns_[1]->address, first.address);
  answer(*conns_[1], conns_[1]->backend->last_stream);
  pump();
  EXPECT_EQ(value(seen(c, id).trailers, "grpc-status"), "0");

  h2::ClusterPolicy p;
  p.retries = 2;
  EXPECT_TRUE(manager_.may_retry(p, 1));
  EXPECT_TRUE(manager_.may_retry(p, 2));
  EXPECT_FALSE(manager_.may_retry(p, 3)) << "three attempts: the first and two retries";
  manager_.stop();
  EXPECT_TRUE(manager_.may_retry(p, 1)) << "a stream accepted during the drain is retried like any other";
}

// A new configuration keeps what DNS added to a name it still has, drains a
// static endpoint it no longer lists and adds the one it now lists.
TEST_F(ClusterManagerTest, AdoptKeepsDnsAnswersAndSyncsStaticEndpoints) {
  auto cfg = one_cluster({"127.0.0.1:50051"});
  config::Cluster& cl = cfg->clusters[0];
  cl.dns_names.push_back({"svc.test", 50051, "svc.test:50051"});
  cl.endpoints.push_back(address("10.0.0.1:50051"));
  cl.endpoint_name.push_back(0);
  adopt(cfg);
  manager_.apply_dns(0, 0, {address("10.0.0.1:50051"), address("10.0.0.2:50051")});
  auto next = std::make_shared<config::Config>(*cfg);
  next->clusters[0].endpoints[0] = address("127.0.0.1:50052");  // the static one moved
  adopt(next);
  const Cluster& c = manager_.cluster(policies_[0].pool_id);
  auto active = [&](const std::string& text) {
    for (size_t e = 0; e < c.endpoints.size(); ++e)
      if (c.endpoints[e]->addr.same_address(address(text))) return c.states[e].active;
    return false;
  };
  EXPECT_FALSE(active("127.0.0.1:50051")) << "no longer listed: drains";
  EXPECT_TRUE(active("127.0.0.1:50052")) << "newly listed";
  EXPECT_TRUE(active("10.0.0.1:50051"));
  EXPECT_TRUE(active("10.0.0.2:50051")) << "DNS added it; the new configuration keeps the name";
}

// Upstream TLS may have new certificates under the same file names: a new
// configuration with TLS to the backends renews the connections (running
// streams finish on the old one, which then closes).
TEST_F(ClusterManagerTest, AdoptWithUpstreamTlsRenewsConnections) {
  auto cfg = one_cluster({"127.0.0.1:50051"});
  cfg->clusters[0].tls.enabled = true;
  adopt(cfg);
  const size_t c = connect_client(&policies_);
  const int32_t running = call(c);
  ASSERT_EQ(conns_.size(), 1u);
  adopt(std::make_shared<config::Config>(*cfg));
  call(c);
  ASSERT_EQ(conns_.size(), 2u) << "the stream after the reload takes a new connection";
  manager_.tick();
  EXPECT_FALSE(conns_[0]->closed) << "its stream still runs";
  answer(*conns_[0], conns_[0]->backend->last_stream);
  pump();
  EXPECT_EQ(value(seen(c, running).trailers, "grpc-status"), "0");
  manager_.tick();
  EXPECT_TRUE(conns_[0]->closed);
  EXPECT_EQ(conns_[0]->close_why, "upstream TLS settings replaced");
  EXPECT_FALSE(conns_[1]->closed);
}

// A cluster the new configuration no longer has is retired: no new streams.
TEST_F(ClusterManagerTest, AdoptKeepsClustersByNameAndRetiresTheOthers) {
  adopt(one_cluster({"127.0.0.1:50051"}, "a"));
  const uint32_t a = policies_[0].pool_id;
  auto two = one_cluster({"127.0.0.1:50052"}, "b");
  two->clusters.insert(two->clusters.begin(), one_cluster({"127.0.0.1:50051"}, "a")->clusters[0]);
  adopt(two);
  EXPECT_EQ(policies_[0].pool_id, a) << "cluster a keeps its pool id";
  EXPECT_NE(policies_[1].pool_id, a);
  adopt(one_cluster({"127.0.0.1:50052"}, "b"));
  EXPECT_TRUE(manager_.cluster(a).retired);
  const char* why = nullptr;
  EXPECT_EQ(manager_.pick(a, -1, why), nullptr);
  EXPECT_STREQ(why, "cluster a: no healthy endpoint");
}

}  // namespace
}  // namespace tlsgate::upstream::pooltest
