// The HTTP/2 forwarding core without sockets: one gRPC unary call (request
// HEADERS + DATA, response HEADERS + DATA + trailers) through a
// DownstreamSession and an UpstreamSession, driven by the unit tests' harness
// (tests/unit/h2/forward_fixture.hh) with in-memory nghttp2 peers as the gRPC
// client and backend.
//
// Time per call includes both peers' nghttp2 work and the harness's copies,
// so compare runs of this benchmark with each other, not with the gateway's
// end-to-end CPU per call. Counters, all for the gateway's sessions only:
//   malloc/call, malloc/conn: system allocations (malloc is replaced below and
//     counts while the gateway's code runs: receive, produce, session set-up);
//   ng_blocks/call, ng_blocks/conn: blocks nghttp2 took from the shard's pool
//     (h2::Memory), recycled;
//   idle_bytes/conn: heap the gateway keeps for one idle client connection
//     after one call: malloc'd bytes plus pool bytes in use (nghttp2's session,
//     HPACK tables, its 16 KiB frame buffer), before any idle release.
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <cstdlib>

#include "forward_fixture.hh"

// ---------------------------------------------------------------- counting malloc
// glibc lets a program replace malloc; forwarding to __libc_* keeps glibc's
// allocator. Counted only while fwdtest::g_in_gateway is set.
extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
void __libc_free(void*);
}

namespace {
struct AllocStats {
  uint64_t allocations = 0;
  int64_t live_bytes = 0;  // allocated minus freed, by the gateway
};
thread_local AllocStats g_stats;

inline void note_alloc(void* p) {
  if (p == nullptr || !tlsgate::h2::fwdtest::g_in_gateway) return;
  ++g_stats.allocations;
  g_stats.live_bytes += static_cast<int64_t>(malloc_usable_size(p));
}
inline void note_free(void* p) {
  if (p == nullptr || !tlsgate::h2::fwdtest::g_in_gateway) return;
  g_stats.live_bytes -= static_cast<int64_t>(malloc_usable_size(p));
}
}  // namespace

extern "C" {
void* malloc(size_t n) noexcept {
  void* p = __libc_malloc(n);
  note_alloc(p);
  return p;
}
void* calloc(size_t n, size_t m) noexcept {
  void* p = __libc_calloc(n, m);
  note_alloc(p);
  return p;
}
void* realloc(void* old, size_t n) noexcept {
  note_free(old);
  void* p = __libc_realloc(old, n);
  note_alloc(p);
  return p;
}
void free(void* p) noexcept {
  note_free(p);
  __libc_free(p);
}
void* memalign(size_t align, size_t n) noexcept {
  void* p = __libc_memalign(align, n);
  note_alloc(p);
  return p;
}
void* aligned_alloc(size_t align, size_t n) noexcept { return memalign(align, n); }
int posix_memalign(void** out, size_t align, size_t n) noexcept {
  *out = memalign(align, n);
  return *out ? 0 : 12;  // ENOMEM
}
}

namespace tlsgate::h2::fwdtest {
namespace {

// The unit tests' fixture, used outside a running test.
class Harness final : public ForwardTest {
 public:
  Harness() { start(); }
  ~Harness() override { TearDown(); }
  void TestBody() override {}

  // One unary call; false if it did not end with grpc-status 0.
  bool call() {
    Body req{request_frame_};
    int32_t cid = client_->request(request_headers_, &req);
    pump();
    const int32_t bid = backend_->last_stream;
    Body resp{response_frame_, true, {{"grpc-status", "0"}}};
    backend_->respond(bid, response_headers_, &resp);
    pump();
    PeerStream& st = client_->streams[cid];
    bool ok = st.end_stream && st.trailers.size() == 1 && st.trailers[0].second == "0";
    client_->streams.erase(cid);  // the peers' bookkeeping stays flat
    backend_->streams.erase(bid);
    return ok;
  }

  MemoryStats memory_stats() const { return ctx_->memory_stats(); }

  void drop_client() {
    down_.reset();
    client_.reset();
  }
  // Opens a new client connection (a new client peer and a new
  // DownstreamSession) after drop_client(); the upstream session stays.
  void reconnect() {
    client_ = std::make_unique<Peer>(Peer::Role::Client);
    DownstreamSettings ds;
    ds.cluster = 3;
    ds.max_concurrent_streams = 100;
    ds.client_ip = kClientIp;
    {
      GatewayScope scope;
      down_ = std::make_unique<DownstreamSession>(*ctx_, down_owner_, ds);
    }
    down_dirty_ = true;
    pump();
  }

 private:
  const Headers request_headers_ = grpc_request();
  const Headers response_headers_ = {{":status", "200"}, {"content-type", "application/grpc"}};
  const std::string request_frame_ = grpc_frame("hello");
  const std::string response_frame_ = grpc_frame("hello");
};

// Steady state: unary calls one after another on one client connection.
void BM_UnaryCall(benchmark::State& state) {
  Harness h;
  for (int i = 0; i < 100; ++i) h.call();  // warm-up: stream objects, pool slabs, HPACK tables
  const AllocStats before = g_stats;
  const uint64_t ng_before = h.memory_stats().allocations;
  for (auto _ : state) {
    if (!h.call()) {
      state.SkipWithError("call did not end with grpc-status 0");
      break;
    }
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["malloc/call"] = static_cast<double>(g_stats.allocations - before.allocations) / n;
  state.counters["ng_blocks/call"] = static_cast<double>(h.memory_stats().allocations - ng_before) / n;
}
BENCHMARK(BM_UnaryCall);

// A new client connection: SETTINGS exchange and one unary call on a new
// DownstreamSession. gw_idle_bytes is the heap the gateway keeps for the
// connection afterwards (what one idle client connection costs in src/h2).
void BM_NewConnectionOneCall(benchmark::State& state) {
  Harness h;
  for (int i = 0; i < 20; ++i) h.call();
  int64_t idle_bytes = 0;
  uint64_t allocations = 0, blocks = 0;
  for (auto _ : state) {
    h.drop_client();  // the previous connection, freed outside the count
    const AllocStats before = g_stats;
    const MemoryStats ng_before = h.memory_stats();
    h.reconnect();
    if (!h.call()) {
      state.SkipWithError("call did not end with grpc-status 0");
      break;
    }
    allocations += g_stats.allocations - before.allocations;
    blocks += h.memory_stats().allocations - ng_before.allocations;
    idle_bytes += g_stats.live_bytes - before.live_bytes +
                  static_cast<int64_t>(h.memory_stats().bytes_in_use - ng_before.bytes_in_use);
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["malloc/conn"] = static_cast<double>(allocations) / n;
  state.counters["ng_blocks/conn"] = static_cast<double>(blocks) / n;
  state.counters["idle_bytes/conn"] = static_cast<double>(idle_bytes) / n;
}
BENCHMARK(BM_NewConnectionOneCall);

}  // namespace
}  // namespace tlsgate::h2::fwdtest

BENCHMARK_MAIN();
