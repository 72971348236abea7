// One line per event on stderr: "<level> <component>: <message>".
// Each line is written with a single write(2), so lines from different shards
// never interleave. The level is process-wide and set once at start-up.
#pragma once

#include <cstdarg>

namespace tlsgate::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3 };

const char* to_string(Level l);
void set_level(Level l);
Level level();
bool enabled(Level l);

// Warn and error lines are rate-limited per kind, a kind being the same
// (component, format string) pair: past kMaxPerSecond lines of one kind in a
// second, the rest are counted and not written, and flush_suppressed() writes
// "<N> more like this suppressed: <format>" for each kind that had any. A
// failure that repeats per connection or per stream then costs a few lines a
// second, not one per event, whoever calls (shards and main alike).
inline constexpr unsigned kMaxPerSecond = 10;
void write(Level l, const char* component, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
// Writes the summaries of suppressed lines; the main thread calls it about
// once a second, and before it exits.
void flush_suppressed();

#define TLSGATE_LOG(lvl, comp, ...)                                           \
  do {                                                                        \
    if (::tlsgate::log::enabled(lvl)) ::tlsgate::log::write(lvl, comp, __VA_ARGS__); \
  } while (0)
#define LOG_DEBUG(comp, ...) TLSGATE_LOG(::tlsgate::log::Level::Debug, comp, __VA_ARGS__)
#define LOG_INFO(comp, ...) TLSGATE_LOG(::tlsgate::log::Level::Info, comp, __VA_ARGS__)
#define LOG_WARN(comp, ...) TLSGATE_LOG(::tlsgate::log::Level::Warn, comp, __VA_ARGS__)
#define LOG_ERROR(comp, ...) TLSGATE_LOG(::tlsgate::log::Level::Error, comp, __VA_ARGS__)

}  // namespace tlsgate::log
