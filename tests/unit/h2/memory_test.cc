// The per-shard nghttp2 memory (src/h2/memory.hh) and the release of idle
// sessions' frame buffers, checked through the forwarding harness.
#include "memory.hh"

#include <cstring>
#include <initializer_list>
#include <vector>

#include "forward_fixture.hh"

namespace tlsgate::h2 {
namespace {
using namespace tlsgate::h2::fwdtest;

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kPooled = false;  // Memory passes every call to malloc under ASan
#else
constexpr bool kPooled = true;
#endif

void fill(void* p, size_t n, uint8_t seed) {
  auto* b = static_cast<uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + i * 7);
}
bool holds(const void* p, size_t n, uint8_t seed) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i)
    if (b[i] != static_cast<uint8_t>(seed + i * 7)) return false;
  return true;
}

TEST(Memory, EverySizeHoldsItsBytesAndIsAligned) {
  Memory m;
  std::vector<std::pair<void*, size_t>> live;
  for (size_t n : std::initializer_list<size_t>{1, 15, 16, 17, 100, 128, 129, 1000, 1032, 2936, 4096, 4104, 8192,
                                                8193, 16393,
                                                Memory::kFrameBufferSize, 16395, 70000}) {
    void* p = m.allocate(n);
    ASSERT_NE(p, nullptr) << n;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 16, 0u) << n;
    fill(p, n, static_cast<uint8_t>(n));
    live.emplace_back(p, n);
  }
  for (auto [p, n] : live) EXPECT_TRUE(holds(p, n, static_cast<uint8_t>(n))) << n;
  for (auto [p, n] : live) m.release(p);
  EXPECT_EQ(m.stats().blocks_in_use, 0u);
}

TEST(Memory, ReallocateKeepsContentsAndCallocZeroes) {
  Memory m;
  void* p = m.mem()->realloc(nullptr, 40, m.mem()->mem_user_data);
  fill(p, 40, 3);
  for (size_t n : std::initializer_list<size_t>{48, 300, 5000, 20000, 64}) {
    p = m.mem()->realloc(p, n, m.mem()->mem_user_data);
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(holds(p, 40, 3)) << n;
  }
  m.release(p);
  void* q = m.allocate(200);
  std::memset(q, 0xff, 200);
  m.release(q);
  auto* z = static_cast<uint8_t*>(m.mem()->calloc(10, 20, m.mem()->mem_user_data));  // likely q again
  for (int i = 0; i < 200; ++i) ASSERT_EQ(z[i], 0) << i;
  m.release(z);
}

// The pool's own promises hold only where it is in use: under AddressSanitizer
// Memory hands every call to malloc so ASan sees each block, which the test
// below checks instead.
#if !defined(__SANITIZE_ADDRESS__)
// Every size up to 64 KiB lands in a class that holds it, with at most 12.5%
// slack above 128 bytes.
TEST(Memory, SizeClassesFitTightly) {
  Memory m;
  for (size_t n = 1; n <= 64 * 1024; n += (n < 2048 ? 1 : 61)) {
    void* p = m.allocate(n);
    ASSERT_NE(p, nullptr) << n;
    const uint64_t held = m.stats().bytes_in_use;
    EXPECT_GE(held, n);
    if (n > 128) {
      EXPECT_LE(held, n + n / 8) << n;
    }
    m.release(p);
  }
}

// Free blocks are kept on a stack per class that grows with the pool: across
// many spans and interleaved frees, no block is handed out twice while live,
// and a freed block is the next one handed out (still warm in the cache).
TEST(Memory, FreeStacksNeverHandOutALiveBlock) {
  Memory m;
  std::vector<void*> live;
  for (size_t i = 0; i < 20000; ++i) {  // 48-byte class: several 256 KiB spans
    live.push_back(m.allocate(48));
    ASSERT_NE(live.back(), nullptr);
    fill(live.back(), 48, static_cast<uint8_t>(i));
  }
  for (size_t i = 0; i < live.size(); i += 3) {  // free every third
    m.release(live[i]);
    live[i] = nullptr;
  }
  std::vector<void*> again;
  for (size_t i = 0; i < 10000; ++i) {
    again.push_back(m.allocate(48));
    ASSERT_NE(again.back(), nullptr);
    fill(again.back(), 48, static_cast<uint8_t>(i + 101));
  }
  for (size_t i = 0; i < live.size(); ++i) {
    if (live[i] != nullptr) {
      ASSERT_TRUE(holds(live[i], 48, static_cast<uint8_t>(i))) << "block " << i << " was handed out again";
    }
  }
  for (size_t i = 0; i < again.size(); ++i) ASSERT_TRUE(holds(again[i], 48, static_cast<uint8_t>(i + 101)));
  void* last = again.back();
  m.release(last);
  EXPECT_EQ(m.allocate(48), last) << "the last freed block comes back first";
  for (void* p : live)
    if (p) m.release(p);
  for (void* p : again) m.release(p);
  EXPECT_EQ(m.stats().blocks_in_use, 0u);
}

TEST(Memory, SteadyStateMapsNothing) {
  Memory m;
  std::vector<void*> v;
  auto cycle = [&] {
    for (size_t i = 0; i < 500; ++i) v.push_back(m.allocate(16 + (i * 397) % 66000));
    v.push_back(m.allocate(Memory::kFrameBufferSize));
    for (void* p : v) m.release(p);
    v.clear();
  };
  cycle();
  const uint64_t spans = m.stats().spans;
  for (int i = 0; i < 100; ++i) cycle();
  EXPECT_EQ(m.stats().spans, spans);
}

TEST(Memory, WholePageBlocksArePageAlignedAndZeroPagesAreDiscarded) {
  Memory m;
  m.forget_last_page();
  void* p = m.allocate(4096);
  void* q = m.allocate(4096);
  EXPECT_EQ(m.last_page(), q);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 4096, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(q) % 4096, 0u);
  void* r = m.allocate(8192);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(r) % 4096, 0u);
  std::memset(p, 0, 4096);
  std::memset(q, 0, 4096);
  static_cast<uint8_t*>(q)[4095] = 1;  // one byte set: kept
  EXPECT_TRUE(m.discard_zero_page(p));
  EXPECT_FALSE(m.discard_zero_page(q));
  EXPECT_EQ(m.stats().zero_pages_released, 1u);
  const auto* z = static_cast<const uint8_t*>(p);
  EXPECT_TRUE(std::all_of(z, z + 4096, [](uint8_t b) { return b == 0; }));
  EXPECT_EQ(static_cast<uint8_t*>(q)[4095], 1);
  fill(p, 4096, 7);  // usable again after the discard
  EXPECT_TRUE(holds(p, 4096, 7));
  m.release(p);
  m.release(q);
  m.release(r);
}

TEST(Memory, ReleasedFrameBufferReadsZeroAndCanBeWrittenAgain) {
  Memory m;
  void* p = m.allocate(Memory::kFrameBufferSize);
  EXPECT_EQ(m.last_frame_buffer(), p);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 4096, 0u);
  fill(p, Memory::kFrameBufferSize, 9);
  m.release_pages(p);
  EXPECT_EQ(m.stats().pages_released, 1u);
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < Memory::kFrameBufferSize; i += 512) ASSERT_EQ(b[i], 0) << i;
  fill(p, Memory::kFrameBufferSize, 5);
  EXPECT_TRUE(holds(p, Memory::kFrameBufferSize, 5));
  m.release(p);
}

// Issue 16: what a burst of sessions took comes back once they are gone.
TEST(Memory, WhollyFreeSpansAreTrimmedAfterABurstAndServeAgain) {
  Memory m;
  std::vector<void*> blocks;
  for (int i = 0; i < 4000; ++i) {  // ~4 MiB of 1000-byte blocks: 16 spans
    void* p = m.allocate(1000);
    ASSERT_NE(p, nullptr);
    fill(p, 1000, static_cast<uint8_t>(i));
    blocks.push_back(p);
  }
  EXPECT_EQ(m.trim(), 0u) << "nothing is free: nothing to trim";
  void* kept = blocks.back();  // one live block keeps its span
  blocks.pop_back();
  for (void* p : blocks) m.release(p);
  const size_t trimmed = m.trim();
  EXPECT_GE(trimmed, 10u);
  EXPECT_EQ(m.stats().spans_trimmed, trimmed);
  EXPECT_EQ(m.trim(), 0u) << "a second pass with nothing freed since scans nothing";
  EXPECT_TRUE(holds(kept, 1000, static_cast<uint8_t>(3999)));
  // The trimmed blocks are handed out again and hold what is written.
  const uint64_t spans = m.stats().spans;
  for (int i = 0; i < 3999; ++i) {
    void* p = m.allocate(1000);
    ASSERT_NE(p, nullptr);
    fill(p, 1000, static_cast<uint8_t>(i + 1));
    blocks[static_cast<size_t>(i)] = p;
  }
  EXPECT_EQ(m.stats().spans, spans) << "trimmed spans are reused, not replaced";
  for (int i = 0; i < 3999; ++i) EXPECT_TRUE(holds(blocks[static_cast<size_t>(i)], 1000, static_cast<uint8_t>(i + 1)));
  for (void* p : blocks) m.release(p);
  m.release(kept);
}
#else
TEST(Memory, SanitizerBuildPassesEveryCallToMalloc) {
  Memory m;
  std::vector<void*> v;
  for (size_t n : std::initializer_list<size_t>{1, 100, 4096, Memory::kFrameBufferSize, 70 * 1024}) {
    void* p = m.allocate(n);
    ASSERT_NE(p, nullptr) << n;
    fill(p, n, 1);
    v.push_back(p);
  }
  EXPECT_EQ(m.stats().spans, 0u);
  EXPECT_EQ(m.stats().large_maps, 0u);
  for (void* p : v) m.release(p);
}
#endif

// Sessions idle for kIdleReleaseMs give their frame buffers' pages back, and
// work as before when traffic resumes (nghttp2 rebuilds every frame there).
TEST_F(ForwardTest, IdleSessionsReleaseFrameBuffersAndKeepWorking) {
  start();
  EXPECT_EQ(value(unary("one").trailers, "grpc-status"), "0");
  const uint64_t before = ctx_->memory_stats().pages_released;
  const uint64_t zero_before = ctx_->memory_stats().zero_pages_released;
  ctx_->release_idle_memory(Context::kIdleReleaseMs - 1);  // not idle long enough
  EXPECT_EQ(ctx_->memory_stats().pages_released, before);
  EXPECT_EQ(down_owner_.idles + up_owner_.idles, 0);
  ctx_->release_idle_memory(Context::kIdleReleaseMs);
  EXPECT_EQ(down_owner_.idles, 1) << "the owner hears the session went quiet (TLS lets go of its contexts)";
  EXPECT_EQ(up_owner_.idles, 1);
  EXPECT_EQ(ctx_->memory_stats().pages_released, before + (kPooled ? 2 : 0)) << "both sessions were idle";
  // With no stream open, each session's stream map is one page of zeros.
  EXPECT_EQ(ctx_->memory_stats().zero_pages_released, zero_before + (kPooled ? 2 : 0));
  ctx_->release_idle_memory(3 * Context::kIdleReleaseMs);  // nothing moved since: released once only
  EXPECT_EQ(ctx_->memory_stats().pages_released, before + (kPooled ? 2 : 0));
  EXPECT_EQ(ctx_->memory_stats().zero_pages_released, zero_before + (kPooled ? 2 : 0));

  // Traffic again, with full 16 KiB DATA frames both ways.
  const std::string big = pattern(200 * 1024);
  Body req{grpc_frame(big)};
  int32_t cid = send_request(grpc_request(), &req);
  Body resp{grpc_frame(big), true, {{"grpc-status", "0"}}};
  backend_->respond(backend_->last_stream, grpc_response_headers(), &resp);
  ASSERT_TRUE(pump());
  EXPECT_EQ(backend_->streams[backend_->last_stream].body, grpc_frame(big));
  EXPECT_EQ(client_->streams[cid].body, grpc_frame(big));
  EXPECT_EQ(value(client_->streams[cid].trailers, "grpc-status"), "0");

  ctx_->release_idle_memory(5 * Context::kIdleReleaseMs);
  EXPECT_EQ(ctx_->memory_stats().pages_released, before + (kPooled ? 4 : 0));
  EXPECT_EQ(ctx_->memory_stats().zero_pages_released, zero_before + (kPooled ? 4 : 0));
  // The maps read as zeros again: new streams go in as into a fresh map.
  EXPECT_EQ(value(unary("three").trailers, "grpc-status"), "0");
  EXPECT_EQ(value(unary("four").trailers, "grpc-status"), "0");
}

// A session whose output is held back (its send callback said WOULDBLOCK)
// keeps bytes in its frame buffer: it must not be released.
TEST_F(ForwardTest, BlockedSessionKeepsItsFrameBuffer) {
  start();
  down_->shutdown();
  down_->shutdown();  // two frames queued: the first fills the budget, the second blocks
  ByteQueue q(&wire_pool_);
  EXPECT_GT(down_->produce(q, 1), 0u);
  const uint64_t before = ctx_->memory_stats().pages_released;
  ctx_->release_idle_memory(10 * Context::kIdleReleaseMs);
  // Only the upstream session was idle.
  EXPECT_EQ(ctx_->memory_stats().pages_released, before + (kPooled ? 1 : 0));
  q.clear();
}

}  // namespace
}  // namespace tlsgate::h2
