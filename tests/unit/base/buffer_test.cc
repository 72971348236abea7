// ChunkPool / ByteQueue: the byte FIFO every connection sends and receives
// through. What callers rely on: bytes come out in order across chunk
// boundaries, a failed append changes nothing, and every chunk goes back to
// the pool so the steady state allocates no new slabs.
#include "tlsgate/buffer.hh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace tlsgate {
namespace {

constexpr size_t kCap = Chunk::kCapacity;

// Deterministic, position-dependent bytes: a misplaced or repeated byte shows.
std::vector<uint8_t> pattern(size_t len, uint32_t seed = 1) {
  std::vector<uint8_t> v(len);
  uint32_t x = seed * 2654435761u + 12345u;
  for (size_t i = 0; i < len; ++i) {
    x = x * 1103515245u + 12345u;
    v[i] = static_cast<uint8_t>(x >> 16);
  }
  return v;
}

std::vector<uint8_t> drain(ByteQueue& q) {
  std::vector<uint8_t> out(q.size());
  EXPECT_EQ(q.read(out.data(), out.size()), out.size());
  return out;
}

std::vector<uint8_t> gather(const iovec* iov, int n) {
  std::vector<uint8_t> out;
  for (int i = 0; i < n; ++i) {
    const auto* p = static_cast<const uint8_t*>(iov[i].iov_base);
    out.insert(out.end(), p, p + iov[i].iov_len);
  }
  return out;
}

TEST(ChunkPool, GetPutReusesChunksWithoutNewSlabs) {
  ChunkPool pool(4);
  EXPECT_EQ(pool.allocated(), 0u);
  EXPECT_EQ(pool.in_use(), 0u);
  std::vector<Chunk*> got;
  for (int i = 0; i < 4; ++i) got.push_back(pool.get());
  EXPECT_EQ(pool.slab_allocations(), 1u);
  EXPECT_EQ(pool.allocated(), 4u);
  EXPECT_EQ(pool.in_use(), 4u);
  for (Chunk* c : got) {
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->readable(), 0u);
    EXPECT_EQ(c->writable(), kCap);
  }
  // Distinct chunks.
  for (size_t i = 0; i < got.size(); ++i)
    for (size_t j = i + 1; j < got.size(); ++j) EXPECT_NE(got[i], got[j]);
  // A fifth needs a second slab.
  Chunk* fifth = pool.get();
  ASSERT_NE(fifth, nullptr);
  EXPECT_EQ(pool.slab_allocations(), 2u);
  EXPECT_EQ(pool.allocated(), 8u);
  got.push_back(fifth);
  for (Chunk* c : got) pool.put(c);
  EXPECT_EQ(pool.in_use(), 0u);
  // Reuse: a returned chunk comes back reset, no slab is added.
  for (int round = 0; round < 10; ++round) {
    Chunk* c = pool.get();
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->begin, 0u);
    EXPECT_EQ(c->end, 0u);
    EXPECT_EQ(c->next, nullptr);
    c->end = 100;  // dirty it
    c->begin = 3;
    pool.put(c);
  }
  EXPECT_EQ(pool.slab_allocations(), 2u);
  EXPECT_EQ(pool.in_use(), 0u);
}

TEST(ChunkPool, MaxChunksBoundsTheTotal) {
  ChunkPool pool(4, 6);  // slabs of 4, but at most 6 chunks
  std::vector<Chunk*> got;
  for (int i = 0; i < 6; ++i) {
    Chunk* c = pool.get();
    ASSERT_NE(c, nullptr) << i;
    got.push_back(c);
  }
  EXPECT_EQ(pool.allocated(), 6u);
  EXPECT_EQ(pool.get(), nullptr);
  EXPECT_EQ(pool.get(), nullptr);
  EXPECT_EQ(pool.allocated(), 6u);
  pool.put(got.back());
  got.pop_back();
  Chunk* again = pool.get();
  EXPECT_NE(again, nullptr);
  got.push_back(again);
  for (Chunk* c : got) pool.put(c);
  EXPECT_EQ(pool.in_use(), 0u);
}

TEST(ByteQueue, AppendAndReadAcrossChunkBoundaries) {
  ChunkPool pool(8);
  ByteQueue q(&pool);
  EXPECT_TRUE(q.empty());
  // Sizes chosen to straddle chunk boundaries in different ways.
  const std::vector<size_t> sizes = {1, kCap - 1, 1, 1, kCap, 2 * kCap + 17, 0, 5, kCap - 6};
  std::vector<uint8_t> expect;
  uint32_t seed = 1;
  for (size_t n : sizes) {
    std::vector<uint8_t> piece = pattern(n, seed++);
    ASSERT_TRUE(q.append(piece.data(), piece.size()));
    expect.insert(expect.end(), piece.begin(), piece.end());
    EXPECT_EQ(q.size(), expect.size());
  }
  EXPECT_FALSE(q.empty());
  // Chunks are filled before new ones are taken: exactly ceil(size/cap).
  EXPECT_EQ(pool.in_use(), (expect.size() + kCap - 1) / kCap);

  // Read back in odd pieces.
  std::vector<uint8_t> got;
  std::vector<uint8_t> buf(kCap + 3);
  for (size_t step : {size_t{3}, kCap + 3, size_t{1}, size_t{7777}}) {
    size_t n = q.read(buf.data(), step);
    EXPECT_EQ(n, step);
    got.insert(got.end(), buf.begin(), buf.begin() + n);
  }
  std::vector<uint8_t> rest = drain(q);
  got.insert(got.end(), rest.begin(), rest.end());
  EXPECT_EQ(got, expect);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.size(), 0u);
  EXPECT_EQ(pool.in_use(), 0u);
}

// reserve/commit: writing in place at the back (TLS records are sealed so).
TEST(ByteQueue, ReserveWritesInPlaceInTheLastChunkOrANewOne) {
  ChunkPool pool(8);
  ByteQueue q(&pool);
  EXPECT_EQ(q.tail_room(), 0u);
  std::vector<uint8_t> expect = pattern(100, 1);
  ASSERT_TRUE(q.append(expect.data(), expect.size()));
  EXPECT_EQ(q.tail_room(), kCap - 100);
  // Fits in the last chunk: written right after what is there.
  std::vector<uint8_t> a = pattern(kCap - 200, 2);
  uint8_t* p = q.reserve(a.size());
  ASSERT_NE(p, nullptr);
  std::copy(a.begin(), a.end(), p);
  EXPECT_EQ(q.size(), 100u) << "nothing is appended before commit";
  q.commit(a.size());
  expect.insert(expect.end(), a.begin(), a.end());
  EXPECT_EQ(pool.in_use(), 1u);
  EXPECT_EQ(q.tail_room(), 100u);
  // Does not fit: a new chunk, the old one's last 100 bytes left unused.
  std::vector<uint8_t> b = pattern(300, 3);
  p = q.reserve(b.size());
  ASSERT_NE(p, nullptr);
  std::copy(b.begin(), b.end(), p);
  q.commit(b.size());
  expect.insert(expect.end(), b.begin(), b.end());
  EXPECT_EQ(pool.in_use(), 2u);
  EXPECT_EQ(q.size(), expect.size());
  iovec iov[4];
  const int n = q.iovecs(iov, 4);
  EXPECT_EQ(n, 2);
  EXPECT_EQ(gather(iov, n), expect);
  EXPECT_EQ(drain(q), expect);
  EXPECT_EQ(pool.in_use(), 0u);
}

TEST(ByteQueue, ReserveRefusesMoreThanAChunkAndAnExhaustedPool) {
  ChunkPool pool(1, 1);
  ByteQueue q(&pool);
  EXPECT_EQ(q.reserve(kCap + 1), nullptr);
  EXPECT_EQ(pool.in_use(), 0u);
  uint8_t* p = q.reserve(kCap);
  ASSERT_NE(p, nullptr);
  q.commit(kCap);
  EXPECT_EQ(q.reserve(1), nullptr) << "the pool's only chunk is full";
  EXPECT_EQ(q.size(), kCap);
  q.clear();
  EXPECT_EQ(pool.in_use(), 0u);
}

// A reserved, never committed new chunk holds nothing and is used next.
TEST(ByteQueue, UncommittedReserveIsFilledByTheNextAppend) {
  ChunkPool pool(8);
  ByteQueue q(&pool);
  ASSERT_NE(q.reserve(64), nullptr);
  EXPECT_TRUE(q.empty());
  iovec iov[2];
  EXPECT_EQ(q.iovecs(iov, 2), 0);
  std::vector<uint8_t> a = pattern(10, 4);
  ASSERT_TRUE(q.append(a.data(), a.size()));
  EXPECT_EQ(pool.in_use(), 1u);
  EXPECT_EQ(drain(q), a);
  EXPECT_EQ(pool.in_use(), 0u);
}

TEST(ByteQueue, ReadMoreThanAvailableReturnsWhatThereIs) {
  ChunkPool pool;
  ByteQueue q(&pool);
  uint8_t buf[64];
  EXPECT_EQ(q.read(buf, sizeof buf), 0u);
  EXPECT_EQ(q.peek(buf, sizeof buf), 0u);
  ASSERT_TRUE(q.append("hello", 5));
  EXPECT_EQ(q.read(buf, sizeof buf), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf), 5), "hello");
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(pool.in_use(), 0u);
}

TEST(ByteQueue, PeekDoesNotConsume) {
  ChunkPool pool;
  ByteQueue q(&pool);
  std::vector<uint8_t> data = pattern(kCap + 100);
  ASSERT_TRUE(q.append(data.data(), data.size()));
  std::vector<uint8_t> a(kCap + 50), b(kCap + 50);
  EXPECT_EQ(q.peek(a.data(), a.size()), a.size());
  EXPECT_EQ(q.peek(b.data(), b.size()), b.size());
  EXPECT_EQ(a, b);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), data.begin()));
  EXPECT_EQ(q.size(), data.size());
  // Peek of more than there is: all of it.
  std::vector<uint8_t> all(data.size() + 10);
  EXPECT_EQ(q.peek(all.data(), all.size()), data.size());
}

TEST(ByteQueue, ConsumeDropsFrontAndReturnsEmptiedChunks) {
  ChunkPool pool;
  ByteQueue q(&pool);
  std::vector<uint8_t> data = pattern(3 * kCap);
  ASSERT_TRUE(q.append(data.data(), data.size()));
  EXPECT_EQ(pool.in_use(), 3u);
  q.consume(10);
  EXPECT_EQ(q.size(), data.size() - 10);
  EXPECT_EQ(pool.in_use(), 3u);
  q.consume(kCap - 10);  // exactly the first chunk
  EXPECT_EQ(pool.in_use(), 2u);
  q.consume(kCap + 1);  // second chunk and one byte of the third
  EXPECT_EQ(pool.in_use(), 1u);
  uint8_t b = 0;
  ASSERT_EQ(q.peek(&b, 1), 1u);
  EXPECT_EQ(b, data[2 * kCap + 1]);
  q.consume(q.size());
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(pool.in_use(), 0u);
  // The queue is usable after being emptied by consume().
  ASSERT_TRUE(q.append("xy", 2));
  char out[2];
  EXPECT_EQ(q.read(out, 2), 2u);
  EXPECT_EQ(std::string(out, 2), "xy");
}

TEST(ByteQueue, IovecsCoverTheFrontInOrder) {
  ChunkPool pool;
  ByteQueue q(&pool);
  std::vector<uint8_t> data = pattern(3 * kCap + 5);
  ASSERT_TRUE(q.append(data.data(), data.size()));
  q.consume(7);  // the first iovec starts mid-chunk

  iovec iov[8];
  int n = q.iovecs(iov, 8);
  ASSERT_EQ(n, 4);
  EXPECT_EQ(iov[0].iov_len, kCap - 7);
  EXPECT_EQ(iov[3].iov_len, 5u);
  std::vector<uint8_t> want(data.begin() + 7, data.end());
  EXPECT_EQ(gather(iov, n), want);

  // `max` caps the count; the iovecs are still the front of the queue.
  n = q.iovecs(iov, 2);
  ASSERT_EQ(n, 2);
  EXPECT_EQ(gather(iov, n), std::vector<uint8_t>(data.begin() + 7, data.begin() + 2 * kCap));

  // iovecs() does not consume; the typical writev loop consumes what was sent.
  EXPECT_EQ(q.size(), data.size() - 7);
  q.consume(iov[0].iov_len + 3);
  n = q.iovecs(iov, 8);
  ASSERT_EQ(n, 3);
  EXPECT_EQ(gather(iov, n), std::vector<uint8_t>(data.begin() + kCap + 3, data.end()));

  ByteQueue empty(&pool);
  EXPECT_EQ(empty.iovecs(iov, 8), 0);
}

TEST(ByteQueue, SpliceMovesAllBytesToTheBack) {
  ChunkPool pool;
  ByteQueue a(&pool), b(&pool);
  std::vector<uint8_t> da = pattern(kCap + 10, 1), db = pattern(2 * kCap + 3, 2);
  ASSERT_TRUE(a.append(da.data(), da.size()));
  ASSERT_TRUE(b.append(db.data(), db.size()));
  size_t chunks = pool.in_use();
  a.splice(b);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.size(), 0u);
  EXPECT_EQ(a.size(), da.size() + db.size());
  EXPECT_EQ(pool.in_use(), chunks);  // moved, not copied

  // Both queues stay usable: append after splice lands after the spliced bytes.
  ASSERT_TRUE(a.append("END", 3));
  ASSERT_TRUE(b.append("B", 1));
  std::vector<uint8_t> want = da;
  want.insert(want.end(), db.begin(), db.end());
  want.insert(want.end(), {'E', 'N', 'D'});
  EXPECT_EQ(drain(a), want);
  EXPECT_EQ(drain(b), std::vector<uint8_t>{'B'});
  EXPECT_EQ(pool.in_use(), 0u);

  // Splicing into an empty queue, and splicing an empty queue.
  ByteQueue c(&pool), d(&pool);
  ASSERT_TRUE(d.append("abc", 3));
  c.splice(d);
  d.splice(a);  // a is empty
  EXPECT_EQ(c.size(), 3u);
  EXPECT_TRUE(d.empty());
  ASSERT_TRUE(c.append("def", 3));
  char out[6];
  EXPECT_EQ(c.read(out, 6), 6u);
  EXPECT_EQ(std::string(out, 6), "abcdef");
}

TEST(ByteQueue, MoveTransfersOwnership) {
  ChunkPool pool;
  std::vector<uint8_t> data = pattern(kCap + 1);
  ByteQueue a(&pool);
  ASSERT_TRUE(a.append(data.data(), data.size()));
  ByteQueue b(std::move(a));
  EXPECT_EQ(a.size(), 0u);  // NOLINT(bugprone-use-after-move): moved-from state is specified
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(b.size(), data.size());
  EXPECT_EQ(pool.in_use(), 2u);

  // Move assignment releases the target's old chunks.
  ByteQueue c(&pool);
  ASSERT_TRUE(c.append("old", 3));
  EXPECT_EQ(pool.in_use(), 3u);
  c = std::move(b);
  EXPECT_EQ(pool.in_use(), 2u);
  EXPECT_TRUE(b.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(drain(c), data);
  EXPECT_EQ(pool.in_use(), 0u);

  // The moved-from queue is reusable.
  ASSERT_TRUE(a.append("z", 1));
  EXPECT_EQ(a.size(), 1u);
  a.clear();
  EXPECT_EQ(pool.in_use(), 0u);
}

TEST(ByteQueue, DestructorAndClearReturnChunks) {
  ChunkPool pool;
  {
    ByteQueue q(&pool);
    std::vector<uint8_t> data = pattern(5 * kCap);
    ASSERT_TRUE(q.append(data.data(), data.size()));
    EXPECT_EQ(pool.in_use(), 5u);
  }
  EXPECT_EQ(pool.in_use(), 0u);
  ByteQueue q(&pool);
  ASSERT_TRUE(q.append("abc", 3));
  q.clear();
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(pool.in_use(), 0u);
}

TEST(ByteQueue, AppendFailsAtomicallyWhenThePoolIsExhausted) {
  ChunkPool pool(2, 3);  // at most 3 chunks
  ByteQueue q(&pool);
  std::vector<uint8_t> first = pattern(kCap + 100, 1);
  ASSERT_TRUE(q.append(first.data(), first.size()));  // 2 chunks, tail has room
  ASSERT_EQ(pool.in_use(), 2u);

  // Needs the tail's free room plus two more chunks, but only one is left.
  std::vector<uint8_t> big = pattern((kCap - 100) + kCap + 1, 2);
  EXPECT_FALSE(q.append(big.data(), big.size()));
  EXPECT_EQ(q.size(), first.size());  // nothing appended
  EXPECT_EQ(pool.in_use(), 2u);       // the reserved chunk went back
  {
    std::vector<uint8_t> peeked(first.size());
    ASSERT_EQ(q.peek(peeked.data(), peeked.size()), first.size());
    EXPECT_EQ(peeked, first);  // the tail chunk was not partially written
  }

  // What does fit still fits: the tail's room plus the one free chunk.
  std::vector<uint8_t> fits = pattern((kCap - 100) + kCap, 3);
  ASSERT_TRUE(q.append(fits.data(), fits.size()));
  EXPECT_EQ(pool.in_use(), 3u);
  // Now full: even one byte fails and leaves the queue as it was.
  EXPECT_FALSE(q.append("x", 1));
  EXPECT_EQ(q.size(), first.size() + fits.size());

  std::vector<uint8_t> want = first;
  want.insert(want.end(), fits.begin(), fits.end());
  EXPECT_EQ(drain(q), want);
  EXPECT_EQ(pool.in_use(), 0u);

  // An empty queue on an exhausted pool: append fails, queue stays empty.
  ChunkPool tiny(1, 1);
  ByteQueue holder(&tiny), other(&tiny);
  ASSERT_TRUE(holder.append("a", 1));
  EXPECT_FALSE(other.append("b", 1));
  EXPECT_TRUE(other.empty());
  EXPECT_EQ(other.iovecs(nullptr, 0), 0);
  holder.clear();
  EXPECT_TRUE(other.append("b", 1));
}

TEST(ByteQueue, SteadyStateReusesChunksWithoutNewSlabs) {
  ChunkPool pool(4);
  ByteQueue q(&pool);
  std::vector<uint8_t> msg = pattern(3 * kCap + 99);
  std::vector<uint8_t> out(msg.size());
  // Warm-up.
  ASSERT_TRUE(q.append(msg.data(), msg.size()));
  ASSERT_EQ(q.read(out.data(), out.size()), msg.size());
  const size_t slabs = pool.slab_allocations();
  const size_t allocated = pool.allocated();
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(q.append(msg.data(), msg.size()));
    // Consume in two unequal steps, as a partial writev would.
    q.consume(kCap / 3);
    ASSERT_EQ(q.read(out.data(), out.size()), msg.size() - kCap / 3);
  }
  EXPECT_EQ(pool.slab_allocations(), slabs);
  EXPECT_EQ(pool.allocated(), allocated);
  EXPECT_EQ(pool.in_use(), 0u);
}

}  // namespace
}  // namespace tlsgate
