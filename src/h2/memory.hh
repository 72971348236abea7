// Per-shard memory for nghttp2 (an nghttp2_mem). Private to src/h2/.
//
// Blocks come from 256 KiB spans mapped at start-up and warm-up; afterwards
// every nghttp2 allocation is a pop from its class's stack of free blocks,
// every free a push (the stacks grow with the spans). Nothing is unmapped
// (STYLE: "pools at runtime, malloc only at boot"), but trim() hands the
// pages of wholly free spans back to the kernel after a burst.
//
// - Blocks up to 64 KiB: size classes, 8 per doubling (at most 12.5%
//   slack), carved from spans of one class each.
// - nghttp2's outbound frame buffer (one 16,394-byte block per session, kept
//   for the session's life): page-aligned 5-page slots in spans of their own,
//   so that release_pages() can hand a slot's pages back to the kernel
//   while its session is idle (Context::release_idle_memory; its contents
//   are dead then).
//   A freed slot's pages are handed back at once.
// - Classes whose size is a whole number of pages (4 KiB, 8 KiB, ...) are
//   page-aligned (their spans give up the first page to the header), so a
//   page of such a block belongs to it alone. nghttp2's stream map is one
//   4 KiB block per session that reads all zero while the session has no
//   stream; discard_zero_page() hands such a page back while idle.
// - Anything larger (nghttp2 does not, with header lists bounded to 64 KiB):
//   its own mapping, unmapped on free.
//
// The span header sits at the span's 256 KiB-aligned base, so free() finds a
// block's class from the address alone; there is no per-block header.
//
// One shard, one thread: no locks. Under AddressSanitizer every call goes to
// malloc/free instead, so ASan sees nghttp2's memory.
#pragma once

#include <nghttp2/nghttp2.h>

#include <cstddef>
#include <cstdint>

#include "tlsgate/h2.hh"  // MemoryStats

namespace tlsgate::h2 {

class Memory {
 public:
  // nghttp2's outbound frame buffer: frame header (9) + padding length (1) +
  // the largest payload it packs (16,384), NGHTTP2_FRAMEBUF_CHUNKLEN in
  // nghttp2's sources. If a later nghttp2 changes it, the block simply takes
  // the large path and is never released while idle.
  static constexpr size_t kFrameBufferSize = 9 + 1 + 16384;

  Memory();
  ~Memory();
  Memory(const Memory&) = delete;
  Memory& operator=(const Memory&) = delete;

  // For nghttp2_session_*_new3; mem_user_data is this object.
  nghttp2_mem* mem() { return &mem_; }

  void* allocate(size_t n);
  void release(void* p);
  void* reallocate(void* p, size_t n);

  // The address of the last frame buffer handed out (its session's, when
  // read right after nghttp2_session_*_new3), or nullptr.
  void* last_frame_buffer() const { return last_frame_buffer_; }
  // The last one-page block handed out since forget_last_page(), or nullptr:
  // read around nghttp2_session_*_new3, the session's stream map.
  void* last_page() const { return last_page_; }
  void forget_last_page() { last_page_ = nullptr; }
  // If the page at `p` (a one-page block from this Memory, live or freed
  // since) is all zeros, hands it back to the kernel, which reads it back as
  // zeros: whoever owns it now sees no change. True if it did.
  bool discard_zero_page(void* p);
  // Hands the pages of frame buffer `p` back to the kernel: they read as
  // zeros afterwards and cost no memory until written again. Only for a
  // buffer whose contents are dead.
  void release_pages(void* p);

  MemoryStats stats() const;
  // After a burst: spans whose blocks are all free again hand their pages
  // (all but the header's) back to the kernel; a block taken from them later
  // is a zero page fault away. Cheap when nothing was freed since the last
  // call (it scans only once free blocks grew by kTrimStep bytes), so it can
  // run on every idle pass. Returns the spans trimmed.
  static constexpr size_t kTrimStep = 1 << 20;
  size_t trim();

 private:
  struct Span;
  struct Class {
    // Free blocks as a stack of pointers (grown as blocks are carved, so
    // release() never allocates): allocate() then reads nothing from a block
    // that may have gone cold in the cache since it was freed.
    void** stack = nullptr;
    size_t top = 0;       // free blocks on the stack
    size_t capacity = 0;  // >= blocks ever carved for the class
    uint64_t in_use = 0;
    uint64_t allocations = 0;
    uint32_t size = 0;
    Span* current = nullptr;  // span being carved
    size_t carved = 0;        // bytes carved from `current`
  };
  static constexpr int kClasses = 8 + 9 * 8;  // 16..128 by 16, then 8 per doubling up to 64 KiB
  static constexpr int kFrameClass = kClasses;
  static int class_of(size_t n);
  static size_t class_size(int c);

  // The slow paths, kept out of line so allocate() and release() inline
  // into the nghttp2_mem functions.
  [[gnu::noinline]] void* refill(int c);
  [[gnu::noinline]] void* allocate_big(size_t n);
  [[gnu::noinline]] void release_big(void* p, uint32_t cls);
  void* carve(int c);
  bool make_room(Class& k);
  Span* map_span(int c);

  nghttp2_mem mem_{};
  Class classes_[kClasses + 1];
  void* last_frame_buffer_ = nullptr;
  void* last_page_ = nullptr;
  Span* spans_ = nullptr;  // every span, to unmap at destruction
  size_t free_bytes_at_trim_ = 0;
  Class large_;  // blocks over 64 KiB: only in_use
  uint64_t large_bytes_ = 0;
  MemoryStats stats_;  // spans, large_maps, pages_released; the rest is summed
};

}  // namespace tlsgate::h2
