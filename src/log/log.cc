#include "tlsgate/log.hh"

#include <unistd.h>

#include <atomic>
#include <algorithm>
#include <cstdio>

namespace tlsgate::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::Info)};
}

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
  // The shutdown counter line is over 1 KiB; PIPE_BUF (4096) keeps a line one atomic write.
  char line[4096];
  int n = std::snprintf(line, sizeof line, "%s %s: ", to_string(l), component);
  if (n < 0) return;
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(line + n, sizeof line - n, fmt, ap);
  va_end(ap);
  size_t len = (m < 0) ? n : std::min<size_t>(n + m, sizeof line - 2);
  line[len++] = '\n';
  // One write per line: atomic for lines below PIPE_BUF, no interleaving.
  ssize_t w = ::write(STDERR_FILENO, line, len);
  (void)w;
}

}  // namespace tlsgate::log
