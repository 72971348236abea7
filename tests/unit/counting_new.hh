// Global operator new/delete that count the allocations a thread makes while
// g_counting is set. Include from exactly one file of a test executable (the
// replacement functions are not inline); used by unit_h2_alloc and
// unit_tls_alloc.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

namespace {
thread_local bool g_counting = false;
thread_local size_t g_allocations = 0;
}  // namespace

// Replacing the global allocation functions with malloc/free is the point
// here; GCC cannot see that new and delete are replaced together.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

// Every variant is replaced, so that every one counts and every pair is
// malloc/free: a variant left to the sanitizer runtime (which defines them
// all) would neither count nor match the replaced delete.
namespace counting_new {
inline void* plain(size_t n) noexcept {
  if (g_counting) ++g_allocations;
  return std::malloc(n ? n : 1);
}
inline void* aligned(size_t n, std::align_val_t a) noexcept {
  if (g_counting) ++g_allocations;
  const size_t align = static_cast<size_t>(a);
  return std::aligned_alloc(align, (n + align - 1) / align * align);
}
}  // namespace counting_new

void* operator new(size_t n) {
  if (void* p = counting_new::plain(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) {
  if (void* p = counting_new::plain(n)) return p;
  throw std::bad_alloc();
}
void* operator new(size_t n, const std::nothrow_t&) noexcept { return counting_new::plain(n); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { return counting_new::plain(n); }
void* operator new(size_t n, std::align_val_t a) {
  if (void* p = counting_new::aligned(n, a)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n, std::align_val_t a) {
  if (void* p = counting_new::aligned(n, a)) return p;
  throw std::bad_alloc();
}
void* operator new(size_t n, std::align_val_t a, const std::nothrow_t&) noexcept { return counting_new::aligned(n, a); }
void* operator new[](size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return counting_new::aligned(n, a);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
