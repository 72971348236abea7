#include "tlsgate/log.hh"

#include <unistd.h>

#include <time.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <mutex>

namespace tlsgate::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::Info)};

// One kind of warn/error line. The table is fixed (no allocation in a shard
// that logs); when it is full, further kinds are not limited. Format strings
// are literals, so their addresses name them.
struct Kind {
  const char* component = nullptr;
  const char* fmt = nullptr;
  Level level = Level::Warn;
  uint64_t window_ms = 0;  // start of the current second
  unsigned in_window = 0;  // lines written in it
  uint64_t suppressed = 0; // not written since the last summary
};
constexpr size_t kKinds = 128;
std::mutex g_kinds_mu;  // warn/error lines only: rare, and never on a request's path when all is well
Kind g_kinds[kKinds];

uint64_t now_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000u + static_cast<uint64_t>(ts.tv_nsec) / 1'000'000u;
}

Kind* kind_of(const char* component, const char* fmt) {
  const size_t start = (reinterpret_cast<uintptr_t>(fmt) >> 3) % kKinds;
  for (size_t i = 0; i < kKinds; ++i) {
    Kind& k = g_kinds[(start + i) % kKinds];
    if (k.fmt == fmt && k.component == component) return &k;
    if (k.fmt == nullptr) {
      k.fmt = fmt;
      k.component = component;
      return &k;
    }
  }
  return nullptr;
}

// True when the line may be written; else it is counted.
bool admit(Level l, const char* component, const char* fmt) {
  if (l < Level::Warn) return true;
  std::lock_guard<std::mutex> lock(g_kinds_mu);
  Kind* k = kind_of(component, fmt);
  if (k == nullptr) return true;
  k->level = l;
  const uint64_t now = now_ms();
  if (now - k->window_ms >= 1000) {
    k->window_ms = now;
    k->in_window = 0;
  }
  if (k->in_window < kMaxPerSecond) {
    ++k->in_window;
    return true;
  }
  ++k->suppressed;
  return false;
}

void write_line(char* line, size_t len) {
  line[len++] = '\n';
  // One write per line: atomic for lines below PIPE_BUF, no interleaving.
  ssize_t w = ::write(STDERR_FILENO, line, len);
  (void)w;
}

}  // namespace

const char* to_string(Level l) {
  switch (l) {
    case Level::Debug: return "debug";
    case Level::Info: return "info";
    case Level::Warn: return "warn";
    case Level::Error: return "error";
  }
  return "?";
}

void set_level(Level l) { g_level.store(static_cast<int>(l), std::memory_order_relaxed); }
Level level() { return static_cast<Level>(g_level.load(std::memory_order_relaxed)); }
bool enabled(Level l) { return static_cast<int>(l) >= g_level.load(std::memory_order_relaxed); }

void write(Level l, const char* component, const char* fmt, ...) {
  if (!admit(l, component, fmt)) return;
  // The shutdown counter line is over 1 KiB; PIPE_BUF (4096) keeps a line one atomic write.
  char line[4096];
  int n = std::snprintf(line, sizeof line, "%s %s: ", to_string(l), component);
  if (n < 0) return;
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(line + n, sizeof line - n, fmt, ap);
  va_end(ap);
  size_t len = (m < 0) ? n : std::min<size_t>(n + m, sizeof line - 2);
  write_line(line, len);
}

void flush_suppressed() {
  std::lock_guard<std::mutex> lock(g_kinds_mu);
  for (Kind& k : g_kinds) {
    if (k.fmt == nullptr || k.suppressed == 0) continue;
    char line[1024];
    const int n = std::snprintf(line, sizeof line, "%s %s: %" PRIu64 " more like this suppressed: %s", to_string(k.level),
                                k.component, k.suppressed, k.fmt);
    k.suppressed = 0;
    if (n > 0) write_line(line, std::min<size_t>(static_cast<size_t>(n), sizeof line - 2));
  }
}

}  // namespace tlsgate::log
