// Steady state allocates nothing per request.
//
// Every operator new made while the gateway's sessions run (receive/produce)
// is counted; nghttp2 allocates from the shard's Memory (src/h2/memory.hh),
// whose spans are counted instead. After a warm-up (stream objects, pool
// slabs, spans), more unary calls must add zero of either.
#include "../counting_new.hh"
#include "forward_fixture.hh"

namespace tlsgate::h2 {
namespace {
using namespace tlsgate::h2::fwdtest;

// The counter itself: every form of new counts once, and each pairs with its
// delete (under AddressSanitizer a form left to the runtime would report an
// alloc-dealloc mismatch against the replaced delete). The pointers escape
// through a volatile so that the compiler cannot drop a new/delete pair.
void* volatile g_escape = nullptr;
struct alignas(64) Wide {
  int x = 0;
};

TEST(CountingNew, EveryFormCountsOnceAndPairsWithItsDelete) {
  const size_t before = g_allocations;
  g_counting = true;
  int* a = new int(1);
  g_escape = a;
  delete a;
  int* b = new (std::nothrow) int(2);
  g_escape = b;
  delete b;
  int* c = new int[4];
  g_escape = c;
  delete[] c;
  int* d = new (std::nothrow) int[3];
  g_escape = d;
  delete[] d;
  Wide* e = new Wide;
  g_escape = e;
  delete e;
  Wide* f = new Wide[2];
  g_escape = f;
  delete[] f;
  Wide* g = new (std::nothrow) Wide;
  g_escape = g;
  delete g;
  g_counting = false;
  EXPECT_EQ(g_allocations - before, 7u);
}

// The fixture, with the gateway's calls wrapped in the counter.
class AllocTest : public ForwardTest {
 protected:
  size_t counted_unary(int calls) {
    size_t before = g_allocations;
    for (int i = 0; i < calls; ++i) {
      Body req{grpc_frame("ping")};
      int32_t cid = client_->request(grpc_request(), &req);
      counted_pump();
      const int32_t bid = backend_->last_stream;
      Body resp{grpc_frame("pong"), true, {{"grpc-status", "0"}}};
      backend_->respond(bid, grpc_response_headers(), &resp);
      counted_pump();
      EXPECT_TRUE(client_->streams[cid].end_stream);
      EXPECT_EQ(value(client_->streams[cid].trailers, "grpc-status"), "0");
      client_->streams.erase(cid);  // the harness's own bookkeeping stays flat
      backend_->streams.erase(bid);
    }
    return g_allocations - before;
  }

  // pump() with counting on only inside the gateway's sessions.
  void counted_pump() {
    for (int round = 0; round < 1000; ++round) {
      bool moved = false;
      moved |= transfer(client_->session(), *down_, down_dirty_);
      moved |= transfer(backend_->session(), *up_, up_dirty_);
      if (down_dirty_ || down_owner_.woken) moved |= counted_deliver(*down_, client_->session(), down_dirty_, down_owner_);
      if (up_dirty_ || up_owner_.woken) moved |= counted_deliver(*up_, backend_->session(), up_dirty_, up_owner_);
      if (!moved) return;
    }
    ADD_FAILURE() << "did not go quiet";
  }

  bool transfer(nghttp2_session* from, Session& to, bool& dirty) {
    bool moved = false;
    for (;;) {
      const uint8_t* p = nullptr;
      ssize_t n = nghttp2_session_mem_send(from, &p);
      if (n <= 0) return moved;
      moved = dirty = true;
      g_counting = true;
      Result<void> r = to.receive(p, static_cast<size_t>(n));
      g_counting = false;
      EXPECT_TRUE(r.has_value());
    }
  }

  bool counted_deliver(Session& from, nghttp2_session* to, bool& dirty, TestOwner& owner) {
    dirty = false;
    owner.woken = false;
    wire_.clear();
    g_counting = true;
    from.produce(wire_, SIZE_MAX);
    g_counting = false;
    if (wire_.empty()) return false;
    size_t n = wire_.read(buf_, sizeof buf_);
    EXPECT_EQ(wire_.size(), 0u) << "test buffer too small";
    EXPECT_EQ(nghttp2_session_mem_recv(to, buf_, n), static_cast<ssize_t>(n));
    return true;
  }

  ByteQueue wire_{&wire_pool_};
  uint8_t buf_[256 * 1024];
};

TEST_F(AllocTest, SteadyStateUnaryAllocatesNothingOutsideNghttp2) {
  start();
  down_owner_.keep_ends = false;
  counted_unary(50);  // warm-up: stream objects, pool slabs
  const uint64_t spans = ctx_->memory_stats().spans;
  const uint64_t large = ctx_->memory_stats().large_maps;
  const size_t allocations = counted_unary(1000);
  EXPECT_EQ(allocations, 0u) << "operator new calls by the gateway for 1000 unary calls after warm-up";
  EXPECT_EQ(ctx_->memory_stats().spans, spans) << "nghttp2 took more memory from the system";
  EXPECT_EQ(ctx_->memory_stats().large_maps, large);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(down_owner_.ended, 1050) << "one end-of-stream record per call";
}

// A responder cluster's calls (echo) take nothing either: no Stream, buffer
// or header storage beyond what forwarding recycles, and nghttp2's frames
// from the session's pools.
TEST_F(AllocTest, SteadyStateResponderEchoAllocatesNothingOutsideNghttp2) {
  router_.policy.respond = config::Respond::Echo;
  start();
  down_owner_.keep_ends = false;
  auto echo_calls = [&](int calls) {
    const size_t before = g_allocations;
    for (int i = 0; i < calls; ++i) {
      Body req{grpc_frame("ping")};
      int32_t cid = client_->request(grpc_request(), &req);
      counted_pump();
      EXPECT_TRUE(client_->streams[cid].end_stream);
      EXPECT_EQ(client_->streams[cid].body, grpc_frame("ping"));
      EXPECT_EQ(value(client_->streams[cid].trailers, "grpc-status"), "0");
      client_->streams.erase(cid);
    }
    return g_allocations - before;
  };
  echo_calls(50);
  const uint64_t spans = ctx_->memory_stats().spans;
  EXPECT_EQ(echo_calls(1000), 0u) << "operator new calls by the gateway for 1000 echo calls after warm-up";
  EXPECT_EQ(ctx_->memory_stats().spans, spans) << "nghttp2 took more memory from the system";
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(router_.calls, 0);
}

TEST_F(AllocTest, CounterSeesGatewayAllocations) {
  // The counter is live: the very first stream allocates its Stream object.
  start();
  EXPECT_GT(counted_unary(1), 0u);
}

}  // namespace
}  // namespace tlsgate::h2
