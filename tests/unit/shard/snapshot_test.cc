// Configuration snapshots swapped under running streams: a connection keeps
// the snapshot it started with, new connections take the new one, and the
// pool keeps its clusters (by name) across the swap. No io_uring: the pool
// and h2 sessions run against in-memory peers (tests/unit/upstream).
#include "tlsgate/snapshot.hh"

#include <chrono>
#include <memory>
#include <string>

#include "../upstream/pool_fixture.hh"
#include "tlsgate/grpc.hh"

namespace tlsgate::upstream::pooltest {
namespace {

using h2::fwdtest::value;
using shard::Snapshot;

std::string timeout_text(uint64_t ms) {
  char buf[16];
  return std::string(buf, grpc::format_timeout(ms, buf));
}

std::shared_ptr<config::Config> echo_with_cap(std::chrono::milliseconds cap) {
  auto cfg = one_cluster({"127.0.0.1:50051"});
  cfg->clusters[0].max_grpc_timeout = cap;
  return cfg;
}

class SnapshotTest : public PoolTest {
 protected:
  // What the backend was told of the newest stream it got.
  std::string backend_timeout() {
    FakeConnection& c = *conns_.back();
    return value(c.backend->streams[c.backend->last_stream].headers, "grpc-timeout");
  }
};

TEST_F(SnapshotTest, StreamsFinishOnTheirSnapshotAndNewConnectionsTakeTheNewOne) {
  auto cfg1 = echo_with_cap(std::chrono::milliseconds(1000));
  std::shared_ptr<const Snapshot> current = Snapshot::build(cfg1, manager_, false, false);
  const std::weak_ptr<const Snapshot> first = current;

  // Connection A starts under snapshot 1 and keeps it.
  std::shared_ptr<const Snapshot> a_snapshot = current;
  const size_t a = connect_client(&a_snapshot->clusters);
  const int32_t old_stream = call(a, "10S");
  EXPECT_EQ(backend_timeout(), timeout_text(1000)) << "snapshot 1 caps grpc-timeout at 1 s";
  const uint32_t pool_id = a_snapshot->clusters[0].pool_id;

  // The shard adopts snapshot 2 while the stream runs.
  auto cfg2 = echo_with_cap(std::chrono::milliseconds(3000));
  current = Snapshot::build(cfg2, manager_, false, false);
  EXPECT_FALSE(first.expired()) << "connection A still holds snapshot 1";
  EXPECT_EQ(current->clusters[0].pool_id, pool_id) << "the same cluster (by name) in the pool";
  EXPECT_EQ(manager_.cluster(pool_id).cfg, &cfg2->clusters[0]) << "the pool runs the new settings";
  EXPECT_EQ(manager_.cluster(pool_id).pending, 1u) << "the running stream is still counted";

  // A new connection takes snapshot 2.
  const size_t b = connect_client(&current->clusters);
  const int32_t new_stream = call(b, "10S");
  EXPECT_EQ(backend_timeout(), timeout_text(3000)) << "snapshot 2 caps grpc-timeout at 3 s";
  // Connection A's next stream still follows snapshot 1.
  const int32_t old_conn_stream = call(a, "10S");
  EXPECT_EQ(backend_timeout(), timeout_text(1000));
  EXPECT_EQ(conns_.size(), 1u) << "all three streams share the pooled connection";

  // Every stream finishes.
  for (auto& [id, s] : conns_[0]->backend->streams) answer(*conns_[0], id);
  pump();
  EXPECT_EQ(value(clients_[a]->streams[old_stream].trailers, "grpc-status"), "0");
  EXPECT_EQ(value(clients_[a]->streams[old_conn_stream].trailers, "grpc-status"), "0");
  EXPECT_EQ(value(clients_[b]->streams[new_stream].trailers, "grpc-status"), "0");
  EXPECT_EQ(manager_.cluster(pool_id).pending, 0u);

  // Connection A closes: snapshot 1 goes with it.
  downs_[a].reset();
  a_snapshot.reset();
  EXPECT_TRUE(first.expired()) << "nothing holds snapshot 1 any more";
}

}  // namespace
}  // namespace tlsgate::upstream::pooltest
