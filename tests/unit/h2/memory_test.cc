// The per-shard nghttp2 memory (src/h2/memory.hh).
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

TEST(Memory, SteadyStateMapsNothing) {
  if (!kPooled) GTEST_SKIP() << "Memory passes through to malloc under AddressSanitizer";
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

TEST(Memory, ReleasedFrameBufferReadsZeroAndCanBeWrittenAgain) {
  if (!kPooled) GTEST_SKIP() << "Memory passes through to malloc under AddressSanitizer";
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

}  // namespace
}  // namespace tlsgate::h2
