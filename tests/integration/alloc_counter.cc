// LD_PRELOAD library for AllocationFree.*: counts every heap allocation a
// process makes, in a file another process can read at any time.
//
// TLSGATE_ALLOC_COUNTER=PATH names a file of 16 bytes, mapped shared: the
// count, then a flag the test sets once warm — from then on every counted
// allocation also writes its call stack to stderr, so a failure says where
// it came from. Each
// malloc, calloc, realloc, aligned allocation, operator new, and each
// mi_malloc/mi_calloc/mi_realloc/mi_zalloc (tlsgate hands OpenSSL mimalloc's
// functions directly) adds one; the call then goes to the next definition
// (RTLD_NEXT), so the process runs on its own allocator as usual. Not for
// sanitizer builds (their runtime must be the first library).
#include <dlfcn.h>
#include <execinfo.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace {

volatile uint64_t* g_counter = nullptr;  // [0] count, [1] trace flag
thread_local bool t_tracing = false;

void count() {
  if (g_counter == nullptr) return;
  __atomic_add_fetch(&g_counter[0], 1, __ATOMIC_RELAXED);
  if (__atomic_load_n(&g_counter[1], __ATOMIC_RELAXED) != 0 && !t_tracing) {
    t_tracing = true;  // backtrace() may allocate the first time
    void* frames[32];
    const int n = backtrace(frames, 32);
    static const char kHead[] = "alloc_counter: allocation after warm-up:\n";
    if (::write(2, kHead, sizeof kHead - 1) < 0) {
    }
    backtrace_symbols_fd(frames, n, 2);
    t_tracing = false;
  }
}

// dlsym may call calloc/malloc while the first lookup runs: a small static
// arena (zero-initialized) serves those calls.
alignas(16) char g_arena[4096];
size_t g_arena_used = 0;
int g_resolving = 0;

void* from_arena(size_t n) {
  n = (n + 15) & ~size_t{15};
  if (g_arena_used + n > sizeof g_arena) return nullptr;
  void* p = g_arena + g_arena_used;
  g_arena_used += n;
  return p;
}
bool in_arena(void* p) {
  return static_cast<char*>(p) >= g_arena && static_cast<char*>(p) < g_arena + sizeof g_arena;
}

template <typename Fn>
Fn next(const char* name) {
  ++g_resolving;
  void* f = dlsym(RTLD_NEXT, name);
  --g_resolving;
  if (f == nullptr) std::abort();  // the program links no such function: cannot forward
  return reinterpret_cast<Fn>(f);
}

#define FORWARD(var, type, name) static const auto var = next<type>(name)

}  // namespace

extern "C" {

void* malloc(size_t n) noexcept {
  if (g_resolving) return from_arena(n);
  count();
  FORWARD(f, void* (*)(size_t), "malloc");
  return f(n);
}
void* calloc(size_t n, size_t m) noexcept {
  if (g_resolving) return from_arena(n * m);
  count();
  FORWARD(f, void* (*)(size_t, size_t), "calloc");
  return f(n, m);
}
void* realloc(void* p, size_t n) noexcept {
  count();
  FORWARD(f, void* (*)(void*, size_t), "realloc");
  return f(p, n);
}
void free(void* p) noexcept {
  if (p == nullptr || in_arena(p)) return;
  FORWARD(f, void (*)(void*), "free");
  f(p);
}
int posix_memalign(void** out, size_t a, size_t n) noexcept {
  count();
  FORWARD(f, int (*)(void**, size_t, size_t), "posix_memalign");
  return f(out, a, n);
}
void* aligned_alloc(size_t a, size_t n) noexcept {
  count();
  FORWARD(f, void* (*)(size_t, size_t), "aligned_alloc");
  return f(a, n);
}
__attribute__((visibility("default"))) void* mi_malloc(size_t n) {
  count();
  FORWARD(f, void* (*)(size_t), "mi_malloc");
  return f(n);
}
__attribute__((visibility("default"))) void* mi_calloc(size_t n, size_t m) {
  count();
  FORWARD(f, void* (*)(size_t, size_t), "mi_calloc");
  return f(n, m);
}
__attribute__((visibility("default"))) void* mi_realloc(void* p, size_t n) {
  count();
  FORWARD(f, void* (*)(void*, size_t), "mi_realloc");
  return f(p, n);
}
__attribute__((visibility("default"))) void* mi_zalloc(size_t n) {
  count();
  FORWARD(f, void* (*)(size_t), "mi_zalloc");
  return f(n);
}

}  // extern "C"

// libmimalloc defines operator new itself; whichever the program bound to
// comes next.
void* operator new(size_t n) {
  count();
  FORWARD(f, void* (*)(size_t), "_Znwm");
  return f(n);
}
void* operator new[](size_t n) {
  count();
  FORWARD(f, void* (*)(size_t), "_Znam");
  return f(n);
}
void* operator new(size_t n, std::align_val_t a) {
  count();
  FORWARD(f, void* (*)(size_t, std::align_val_t), "_ZnwmSt11align_val_t");
  return f(n, a);
}

__attribute__((constructor)) static void map_counter() {
  const char* path = std::getenv("TLSGATE_ALLOC_COUNTER");
  if (path == nullptr) return;
  int fd = ::open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return;
  void* m = ::mmap(nullptr, 2 * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m != MAP_FAILED) g_counter = static_cast<volatile uint64_t*>(m);
}
