#include "memory.hh"

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <new>

namespace tlsgate::h2 {

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kPassThrough = true;  // ASan must see every block
#else
constexpr bool kPassThrough = false;
#endif

constexpr size_t kPage = 4096;
constexpr size_t kSpan = 256 * 1024;
constexpr size_t kHeader = 64;      // span header at the span's base
constexpr size_t kMaxSmall = 64 * 1024;  // largest size class (nghttp2 bounds header blocks to 64 KiB)
constexpr size_t kSlotPages = (Memory::kFrameBufferSize + kPage - 1) / kPage;
constexpr size_t kSlot = kSlotPages * kPage;
constexpr size_t kSlotsPerSpan = (kSpan - kPage) / kSlot;  // the first page holds the header
constexpr uint32_t kLarge = UINT32_MAX;

uintptr_t span_base(const void* p) { return reinterpret_cast<uintptr_t>(p) & ~(kSpan - 1); }

// A kSpan-aligned anonymous mapping of `len` bytes (a multiple of kPage),
// or nullptr. Pages cost memory only once written.
void* map_aligned(size_t len) {
  const size_t total = len + kSpan;
  void* raw = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t r = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t a = (r + kSpan - 1) & ~(kSpan - 1);
  if (a > r) munmap(raw, a - r);
  if (const size_t tail = r + total - (a + len); tail > 0) munmap(reinterpret_cast<void*>(a + len), tail);
  // Small pages only: a transparent huge page would make release_pages()
  // split it or keep 2 MiB resident for a few live blocks.
  madvise(reinterpret_cast<void*>(a), len, MADV_NOHUGEPAGE);
  return reinterpret_cast<void*>(a);
}

void* mem_malloc(size_t n, void* self) { return static_cast<Memory*>(self)->allocate(n); }
void mem_free(void* p, void* self) { static_cast<Memory*>(self)->release(p); }
void* mem_calloc(size_t n, size_t m, void* self) {
  if (m != 0 && n > SIZE_MAX / m) return nullptr;
  void* p = static_cast<Memory*>(self)->allocate(n * m);
  if (p) std::memset(p, 0, n * m);  // recycled blocks are not zero
  return p;
}
void* mem_realloc(void* p, size_t n, void* self) { return static_cast<Memory*>(self)->reallocate(p, n); }

}  // namespace

struct Memory::Span {
  uint32_t cls;    // size class, kFrameClass, or kLarge
  uint32_t free_blocks;  // scratch for trim()
  size_t length;   // bytes mapped
  Span* next;      // every span of this Memory (not large blocks)
};


Memory::Memory() {
  static_assert(sizeof(Span) <= kHeader);
  mem_.mem_user_data = this;
  mem_.malloc = mem_malloc;
  mem_.free = mem_free;
  mem_.calloc = mem_calloc;
  mem_.realloc = mem_realloc;
  for (int c = 0; c < kClasses; ++c) classes_[c].size = static_cast<uint32_t>(class_size(c));
  classes_[kFrameClass].size = static_cast<uint32_t>(kFrameBufferSize);
}

Memory::~Memory() {
  for (Class& k : classes_) std::free(k.stack);
  while (spans_) {
    Span* s = spans_;
    spans_ = s->next;
    munmap(s, s->length);
  }
}

namespace {

constexpr int compute_class(size_t n) {
  if (n <= 128) return n == 0 ? 0 : static_cast<int>((n + 15) / 16) - 1;
  // 2^k < n <= 2^(k+1): eight steps of 2^(k-3).
  const int k = std::bit_width(n - 1) - 1;
  const size_t step = size_t{1} << (k - 3);
  const int idx = static_cast<int>((n - (size_t{1} << k) + step - 1) / step) - 1;
  return 8 + (k - 7) * 8 + idx;
}

// Most of nghttp2's blocks per call are small (header fields, stream
// objects): a table lookup instead of the computation.
constexpr size_t kTabled = 1024;
constexpr auto kClassTable = [] {
  std::array<uint8_t, kTabled / 16 + 1> t{};
  for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<uint8_t>(compute_class(i * 16));
  return t;
}();

}  // namespace

inline int Memory::class_of(size_t n) {
  return n <= kTabled ? kClassTable[(n + 15) / 16] : compute_class(n);
}

size_t Memory::class_size(int c) {
  if (c < 8) return static_cast<size_t>(c + 1) * 16;
  const int k = (c - 8) / 8 + 7;
  const int idx = (c - 8) % 8;
  return (size_t{1} << k) + static_cast<size_t>(idx + 1) * (size_t{1} << (k - 3));
}

Memory::Span* Memory::map_span(int c) {
  void* p = map_aligned(kSpan);
  if (p == nullptr) return nullptr;
  auto* s = new (p) Span{static_cast<uint32_t>(c), 0, kSpan, spans_};
  spans_ = s;
  ++stats_.spans;
  return s;
}

// Room on the class's free stack for one more block than it has carved, so
// that release() can always push. Grows with the pool, at warm-up.
bool Memory::make_room(Class& k) {
  const size_t blocks = k.in_use + k.top + 1;
  if (blocks <= k.capacity) return true;
  const size_t cap = std::max<size_t>(64, 2 * k.capacity);
  void* grown = std::realloc(k.stack, cap * sizeof(void*));
  if (grown == nullptr) return false;
  k.stack = static_cast<void**>(grown);
  k.capacity = cap;
  return true;
}

void* Memory::carve(int c) {
  Class& k = classes_[c];
  const bool frame = c == kFrameClass;
  const size_t size = frame ? kSlot : k.size;
  // Whole-page blocks start on a page: the header takes the first page.
  const size_t first = frame || size % kPage == 0 ? kPage : kHeader;
  const size_t room = frame ? kPage + kSlotsPerSpan * kSlot : kSpan;
  if (k.current == nullptr || first + k.carved + size > room) {
    Span* s = map_span(c);
    if (s == nullptr) return nullptr;
    k.current = s;
    k.carved = 0;
  }
  if (!make_room(k)) return nullptr;
  void* p = reinterpret_cast<uint8_t*>(k.current) + first + k.carved;
  k.carved += size;
  return p;
}

// The hot path: a class lookup, a pop or push on the free stack and one counter in
// the class (the totals are summed in stats()).
void* Memory::allocate(size_t n) {
  if (kPassThrough) return std::malloc(n);
  if (n <= kMaxSmall && n != kFrameBufferSize && n != kPage) [[likely]] {
    Class& k = classes_[class_of(n)];
    if (k.top != 0) [[likely]] {
      ++k.in_use;
      ++k.allocations;
      return k.stack[--k.top];
    }
    return refill(class_of(n));
  }
  return allocate_big(n);
}

void* Memory::allocate_big(size_t n) {
  if (n == kFrameBufferSize) {
    void* p = refill(kFrameClass);
    if (p) last_frame_buffer_ = p;
    return p;
  }
  if (n == kPage) {
    void* p = refill(class_of(kPage));
    if (p) last_page_ = p;
    return p;
  }
  const size_t len = (kHeader + n + kPage - 1) / kPage * kPage;
  void* base = map_aligned(len);
  if (base == nullptr) return nullptr;
  new (base) Span{kLarge, 0, len, nullptr};
  ++stats_.large_maps;
  ++large_.in_use;
  ++large_.allocations;
  large_bytes_ += len - kHeader;
  return static_cast<uint8_t*>(base) + kHeader;
}

void* Memory::refill(int c) {
  Class& k = classes_[c];
  void* p = k.top != 0 ? k.stack[--k.top] : carve(c);
  if (p == nullptr) return nullptr;
  ++k.in_use;
  ++k.allocations;
  return p;
}

void Memory::release(void* p) {
  if (kPassThrough) return std::free(p);
  if (p == nullptr) return;
  const uint32_t cls = reinterpret_cast<Span*>(span_base(p))->cls;
  if (cls < kFrameClass) [[likely]] {
    Class& k = classes_[cls];
    --k.in_use;
    k.stack[k.top++] = p;
    return;
  }
  release_big(p, cls);
}

void Memory::release_big(void* p, uint32_t cls) {
  if (cls == kLarge) {
    auto* s = reinterpret_cast<Span*>(span_base(p));
    --large_.in_use;
    large_bytes_ -= s->length - kHeader;
    munmap(s, s->length);
    return;
  }
  if (last_frame_buffer_ == p) last_frame_buffer_ = nullptr;
  // A closed connection's buffer keeps one page in the pool, not five: the
  // first, where the next session's first frames go without a page fault.
  madvise(static_cast<uint8_t*>(p) + kPage, kSlot - kPage, MADV_DONTNEED);
  Class& k = classes_[kFrameClass];
  --k.in_use;
  k.stack[k.top++] = p;
}

MemoryStats Memory::stats() const {
  MemoryStats st = stats_;
  st.allocations = large_.allocations;
  st.blocks_in_use = large_.in_use;
  st.bytes_in_use = large_bytes_;
  for (int c = 0; c <= kFrameClass; ++c) {
    st.allocations += classes_[c].allocations;
    st.blocks_in_use += classes_[c].in_use;
    st.bytes_in_use += classes_[c].in_use * classes_[c].size;
  }
  st.frame_buffers = classes_[kFrameClass].in_use;
  return st;
}

void* Memory::reallocate(void* p, size_t n) {
  if (kPassThrough) return std::realloc(p, n);
  if (p == nullptr) return allocate(n);
  auto* s = reinterpret_cast<Span*>(span_base(p));
  const size_t have = s->cls == kLarge ? s->length - kHeader : classes_[s->cls].size;
  if (s->cls == kFrameClass ? n == kFrameBufferSize
                            : n <= have && (s->cls == kLarge || class_of(n) == static_cast<int>(s->cls)))
    return p;
  void* q = allocate(n);
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, std::min(have, n));
  release(p);
  return q;
}

size_t Memory::trim() {
  if (kPassThrough) return 0;
  size_t free_bytes = 0;
  for (int c = 0; c < kFrameClass; ++c) free_bytes += classes_[c].top * classes_[c].size;
  // Only after a burst freed memory since the last pass: a steady state
  // costs this sum and nothing else.
  if (free_bytes < free_bytes_at_trim_ + kTrimStep) {
    free_bytes_at_trim_ = std::min(free_bytes_at_trim_, free_bytes);
    return 0;
  }
  free_bytes_at_trim_ = free_bytes;
  for (Span* s = spans_; s != nullptr; s = s->next) s->free_blocks = 0;
  for (int c = 0; c < kFrameClass; ++c)
    for (size_t i = 0; i < classes_[c].top; ++i) ++reinterpret_cast<Span*>(span_base(classes_[c].stack[i]))->free_blocks;
  size_t trimmed = 0;
  for (Span* s = spans_; s != nullptr; s = s->next) {
    if (s->cls >= kFrameClass) continue;  // frame slots are released when freed
    const Class& k = classes_[s->cls];
    if (s == k.current) continue;  // still being carved
    const size_t first = k.size % kPage == 0 ? kPage : kHeader;
    const size_t blocks = (kSpan - first) / k.size;
    if (s->free_blocks != blocks) continue;
    // The first page keeps the header (and a few blocks); the rest reads
    // back as zeros, which no free block's reader minds: nothing is read
    // from a free block (its pointer is on the stack).
    if (madvise(reinterpret_cast<uint8_t*>(s) + kPage, kSpan - kPage, MADV_DONTNEED) == 0) ++trimmed;
  }
  stats_.spans_trimmed += trimmed;
  return trimmed;
}

void Memory::release_pages(void* p) {
  if (kPassThrough || p == nullptr) return;
  // The slot is page-aligned and kSlot long: every page of it is the buffer's.
  if (madvise(p, kSlot, MADV_DONTNEED) == 0) ++stats_.pages_released;
}

bool Memory::discard_zero_page(void* p) {
  if (kPassThrough || p == nullptr) return false;
  const auto* w = static_cast<const uint64_t*>(p);
  uint64_t any = 0;
  for (size_t i = 0; i < kPage / sizeof(uint64_t); ++i) any |= w[i];
  if (any != 0 || madvise(p, kPage, MADV_DONTNEED) != 0) return false;
  ++stats_.zero_pages_released;
  return true;
}

// ---------------------------------------------------------------- idle sessions
// Kept here rather than in session.cc: how sessions use the shard's memory.

MemoryStats Context::memory_stats() const { return memory_->stats(); }

void Context::release_idle_memory(uint64_t now_ms) {
  now_ms_ = now_ms;
  memory_->trim();
  while (active_head_ != nullptr && active_head_->touched_ms_ + kIdleReleaseMs <= now_ms) {
    Session* s = active_head_;
    s->unlink_active();
    // A session that holds output (blocked) or wants to send is not idle; it
    // is listed again when it next sends.
    if (s->blocked_ || s->want_write()) continue;
    if (s->frame_buffer_ && !s->frame_buffer_released_) {
      memory_->release_pages(s->frame_buffer_);
      s->frame_buffer_released_ = true;
    }
    memory_->discard_zero_page(s->map_page_);  // no stream open: nghttp2's stream map is empty
    s->owner_.idle();
  }
}

void Session::adopt_session(void* session) {
  session_ = session;
  // nghttp2 allocates the frame buffer while it makes the session, and keeps
  // that block for the session's life.
  frame_buffer_ = ctx_.memory().last_frame_buffer();
  map_page_ = ctx_.memory().last_page();
  touch();
}

void Session::drop_session() {
  if (session_ == nullptr) return;
  nghttp2_session_del(static_cast<nghttp2_session*>(session_));
  session_ = nullptr;
  frame_buffer_ = nullptr;  // freed: it may belong to another session soon
  map_page_ = nullptr;
  unlink_active();
}

void Session::touch() {
  frame_buffer_released_ = false;
  touched_ms_ = ctx_.now_ms_;
  if (listed_) {
    if (ctx_.active_tail_ == this) return;  // already the newest
    unlink_active();
  }
  listed_ = true;
  active_prev_ = ctx_.active_tail_;
  active_next_ = nullptr;
  if (ctx_.active_tail_) ctx_.active_tail_->active_next_ = this; else ctx_.active_head_ = this;
  ctx_.active_tail_ = this;
}

void Session::unlink_active() {
  if (!listed_) return;
  if (active_prev_) active_prev_->active_next_ = active_next_; else ctx_.active_head_ = active_next_;
  if (active_next_) active_next_->active_prev_ = active_prev_; else ctx_.active_tail_ = active_prev_;
  active_prev_ = active_next_ = nullptr;
  listed_ = false;
}

}  // namespace tlsgate::h2
