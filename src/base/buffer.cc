#include "tlsgate/buffer.hh"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

namespace tlsgate {

ChunkPool::ChunkPool(size_t slab_chunks, size_t max_chunks)
    : slab_chunks_(slab_chunks ? slab_chunks : 1), max_chunks_(max_chunks) {}

ChunkPool::~ChunkPool() {
  for (Chunk* slab : slabs_) ::operator delete(slab, std::align_val_t{64});
}

bool ChunkPool::grow(bool past_bound) {
  size_t n = slab_chunks_;
  if (max_chunks_ != 0 && !past_bound) {
    if (allocated_ >= max_chunks_) return false;
    n = std::min(n, max_chunks_ - allocated_);
  }
  try {
    free_.reserve(allocated_ + n);
  } catch (const std::bad_alloc&) {
    return false;
  }
  auto* slab = static_cast<Chunk*>(::operator new(sizeof(Chunk) * n, std::align_val_t{64}, std::nothrow));
  if (slab == nullptr) return false;
  slabs_.push_back(slab);
  // Pushed last first, so that get() hands them out in address order.
  for (size_t i = n; i-- > 0;) free_.push_back(new (&slab[i]) Chunk);
  allocated_ += n;
  return true;
}

Chunk* ChunkPool::get(bool past_bound) {
  if (free_.empty() && !grow(past_bound)) return nullptr;
  Chunk* c = free_.back();
  free_.pop_back();
  c->next = nullptr;
  c->begin = c->end = 0;
  return c;
}

void ChunkPool::put(Chunk* c) {
  free_.push_back(c);
}

ByteQueue::ByteQueue(ByteQueue&& o) noexcept
    : pool_(o.pool_), past_bound_(o.past_bound_), head_(o.head_), tail_(o.tail_), size_(o.size_) {
  o.head_ = o.tail_ = nullptr;
  o.size_ = 0;
}

ByteQueue& ByteQueue::operator=(ByteQueue&& o) noexcept {
  if (this != &o) {
    clear();
    pool_ = o.pool_;
    past_bound_ = o.past_bound_;
    head_ = o.head_;
    tail_ = o.tail_;
    size_ = o.size_;
    o.head_ = o.tail_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

bool ByteQueue::append(const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  // Reserve every chunk first so a failure leaves the queue unchanged.
  size_t room = tail_ ? tail_->writable() : 0;
  Chunk* extra_head = nullptr;
  Chunk* extra_tail = nullptr;
  while (room < len) {
    Chunk* c = pool_->get(past_bound_);
    if (c == nullptr) {
      while (extra_head) {
        Chunk* n = extra_head->next;
        pool_->put(extra_head);
        extra_head = n;
      }
      return false;
    }
    if (extra_tail) extra_tail->next = c; else extra_head = c;
    extra_tail = c;
    room += Chunk::kCapacity;
  }
  if (tail_ && tail_->writable() > 0) {
    size_t n = std::min(len, tail_->writable());
    std::memcpy(tail_->data + tail_->end, p, n);
    tail_->end += n;
    p += n;
    len -= n;
    size_ += n;
  }
  for (Chunk* c = extra_head; c != nullptr; c = c->next) {
    size_t n = std::min(len, Chunk::kCapacity);
    std::memcpy(c->data, p, n);
    c->end = n;
    p += n;
    len -= n;
    size_ += n;
  }
  if (extra_head) {
    if (tail_) tail_->next = extra_head; else head_ = extra_head;
    tail_ = extra_tail;
  }
  return true;
}

uint8_t* ByteQueue::reserve(size_t len) {
  if (tail_ != nullptr && tail_->writable() >= len) return tail_->data + tail_->end;
  if (len > Chunk::kCapacity) return nullptr;
  Chunk* c = pool_->get(past_bound_);
  if (c == nullptr) return nullptr;
  if (tail_) tail_->next = c; else head_ = c;
  tail_ = c;
  return c->data;
}

size_t ByteQueue::peek(void* out, size_t len) const {
  auto* o = static_cast<uint8_t*>(out);
  size_t done = 0;
  for (const Chunk* c = head_; c != nullptr && done < len; c = c->next) {
    size_t n = std::min(len - done, c->readable());
    std::memcpy(o + done, c->data + c->begin, n);
    done += n;
  }
  return done;
}

size_t ByteQueue::peek_at(size_t offset, void* out, size_t len) const {
  auto* dst = static_cast<uint8_t*>(out);
  size_t done = 0;
  for (const Chunk* c = head_; c != nullptr && done < len; c = c->next) {
    size_t avail = c->readable();
    if (offset >= avail) {
      offset -= avail;
      continue;
    }
    const size_t n = std::min(len - done, avail - offset);
    std::memcpy(dst + done, c->data + c->begin + offset, n);
    done += n;
    offset = 0;
  }
  return done;
}

size_t ByteQueue::read(void* out, size_t len) {
  size_t n = peek(out, len);
  consume(n);
  return n;
}

void ByteQueue::consume(size_t len) {
  while (len > 0 && head_ != nullptr) {
    size_t n = std::min(len, head_->readable());
    head_->begin += n;
    len -= n;
    size_ -= n;
    if (head_->readable() == 0) {
      Chunk* c = head_;
      head_ = c->next;
      if (head_ == nullptr) tail_ = nullptr;
      pool_->put(c);
    }
  }
}

int ByteQueue::iovecs(iovec* iov, int max) const {
  int n = 0;
  for (const Chunk* c = head_; c != nullptr && n < max; c = c->next) {
    if (c->readable() == 0) continue;
    iov[n].iov_base = const_cast<uint8_t*>(c->data + c->begin);
    iov[n].iov_len = c->readable();
    ++n;
  }
  return n;
}

void ByteQueue::splice(ByteQueue& other) {
  if (other.head_ == nullptr) return;
  if (tail_) tail_->next = other.head_; else head_ = other.head_;
  tail_ = other.tail_;
  size_ += other.size_;
  other.head_ = other.tail_ = nullptr;
  other.size_ = 0;
}

void ByteQueue::clear() {
  while (head_ != nullptr) {
    Chunk* c = head_;
    head_ = c->next;
    pool_->put(c);
  }
  tail_ = nullptr;
  size_ = 0;
}

}  // namespace tlsgate
