// Byte buffers for the data plane: fixed-size chunks from a per-shard pool,
// chained into queues. No malloc after warm-up: chunks come back to the pool.
//
// Ownership: a ChunkPool belongs to one shard and is never touched by another
// thread. A ByteQueue holds chunks of exactly one pool and must be cleared (or
// destroyed) before that pool goes away.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace tlsgate {

struct Chunk {
  static constexpr size_t kCapacity = 16 * 1024 - 32;
  Chunk* next = nullptr;
  uint32_t begin = 0;  // first unread byte
  uint32_t end = 0;    // one past the last written byte
  uint8_t data[kCapacity];

  size_t readable() const { return end - begin; }
  size_t writable() const { return kCapacity - end; }
};

class ChunkPool {
 public:
  // Chunks are allocated in slabs of `slab_chunks`; `max_chunks` bounds the
  // total (0 = unbounded). get() returns nullptr when the bound is reached.
  explicit ChunkPool(size_t slab_chunks = 64, size_t max_chunks = 0);
  ~ChunkPool();
  ChunkPool(const ChunkPool&) = delete;
  ChunkPool& operator=(const ChunkPool&) = delete;

  // `past_bound`: the bound does not apply (see ByteQueue::set_pool).
  Chunk* get(bool past_bound = false);
  void put(Chunk* c);
  // A new bound on the total (0 = unbounded); chunks already allocated stay.
  void set_max_chunks(size_t max_chunks) { max_chunks_ = max_chunks; }
  size_t max_chunks() const { return max_chunks_; }

  size_t allocated() const { return allocated_; }
  size_t in_use() const { return allocated_ - free_.size(); }
  // Number of times a slab was allocated: stays flat in steady state.
  size_t slab_allocations() const { return slabs_.size(); }

 private:
  bool grow(bool past_bound);

  std::vector<Chunk*> slabs_;
  // Free chunks as a stack of pointers (capacity reserved in grow(), so put()
  // never allocates) rather than a list through the chunks: get() then reads
  // nothing from a chunk that may have gone cold in the cache since it was
  // freed, and only writes to it.
  std::vector<Chunk*> free_;
  size_t allocated_ = 0;
  size_t slab_chunks_;
  size_t max_chunks_;
};

// FIFO of bytes in pool chunks.
class ByteQueue {
 public:
  explicit ByteQueue(ChunkPool* pool = nullptr) : pool_(pool) {}
  ~ByteQueue() { clear(); }
  ByteQueue(const ByteQueue&) = delete;
  ByteQueue& operator=(const ByteQueue&) = delete;
  ByteQueue(ByteQueue&& o) noexcept;
  ByteQueue& operator=(ByteQueue&& o) noexcept;

  // `past_bound`: this queue's chunks are taken even beyond the pool's bound.
  // For ciphertext: its plaintext already holds pool chunks (the bound
  // stopped it being produced), and a record layer refused half-way through
  // its input would have to be retried with the rest, which OpenSSL's
  // SSL_write and a sealed record sequence cannot do.
  void set_pool(ChunkPool* pool, bool past_bound = false) {
    pool_ = pool;
    past_bound_ = past_bound;
  }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // Appends all of `data`; returns false (having appended nothing) when the
  // pool is exhausted.
  bool append(const void* data, size_t len);
  // Writable bytes left in the last chunk (appended without a new chunk).
  size_t tail_room() const { return tail_ ? tail_->writable() : 0; }
  // `len` (<= Chunk::kCapacity) contiguous writable bytes at the back, in a
  // new last chunk if the current one has less room; nullptr when the pool
  // is exhausted. Nothing is part of the queue until commit(); an unused new
  // chunk stays at the back, empty, for the next append.
  uint8_t* reserve(size_t len);
  // Appends `len` bytes written at the pointer reserve() returned.
  void commit(size_t len) {
    tail_->end += static_cast<uint32_t>(len);
    size_ += len;
  }
  // Copies up to `len` bytes out and consumes them; returns bytes copied.
  size_t read(void* out, size_t len);
  // Copies up to `len` bytes out without consuming.
  size_t peek(void* out, size_t len) const;
  // Like peek(), from `offset` bytes into the queue.
  size_t peek_at(size_t offset, void* out, size_t len) const;
  // Drops `len` bytes from the front (len <= size()).
  void consume(size_t len);
  // Fills up to `max` iovecs with the front of the queue; returns count.
  int iovecs(iovec* iov, int max) const;
  // Moves every chunk of `other` to the back of this queue.
  void splice(ByteQueue& other);
  void clear();

 private:
  ChunkPool* pool_;
  bool past_bound_ = false;
  Chunk* head_ = nullptr;
  Chunk* tail_ = nullptr;
  size_t size_ = 0;
};

}  // namespace tlsgate
