// What a run saw: one Stats per thread (and one for its warm-up, thrown
// away), merged at the end and printed as text or one JSON object.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "histogram.hh"
#include "options.hh"

namespace tlsgate::load {

enum class ErrorKind { Connect, Tls, H2, Closed, HttpStatus, GrpcStatus, Timeout, Length, Count_ };
constexpr size_t kErrorKinds = static_cast<size_t>(ErrorKind::Count_);
const char* to_string(ErrorKind k);

// grpc-status codes 0..16 are counted one by one; anything else as "other".
constexpr size_t kGrpcCodes = 17;

struct Stats {
  uint64_t conns_started = 0;
  uint64_t conns_ok = 0;  // every call made and answered OK
  uint64_t conns_failed = 0;
  uint64_t handshakes_full = 0;
  uint64_t handshakes_resumed = 0;
  uint64_t calls_ok = 0;
  uint64_t calls_failed = 0;  // sent (or due) and not answered OK
  uint64_t held_closed = 0;   // --hold: held connections the server closed (GOAWAY, FIN, reset)
  std::array<uint64_t, kGrpcCodes> grpc_codes{};
  uint64_t grpc_other = 0;
  std::array<uint64_t, kErrorKinds> errors{};
  Histogram latency_us;  // calls answered (OK or not), from their intended time
  // CLOCK_MONOTONIC ns; 0 when nothing happened.
  uint64_t last_start_ns = 0;  // the last connection started (rate mode)
  uint64_t last_done_ns = 0;   // the last call answered
  // How late the generator itself was: the largest gap between a
  // connection's (rate mode) or a fixed-rate call's due time and when the
  // thread got round to it. Large values mean the generator, not only the
  // server, was short of CPU (latencies stay honest either way).
  uint64_t max_lag_ns = 0;
  std::string first_error;
  // What the first completed handshake negotiated (OpenSSL's names), so a
  // report says which suite and key exchange were measured.
  std::string cipher, group;

  void error(ErrorKind k, const std::string& what) {
    ++errors[static_cast<size_t>(k)];
    if (first_error.empty()) first_error = std::string(to_string(k)) + ": " + what;
  }
  void merge(const Stats& o);
  uint64_t error_total() const;
};

// Wall-clock facts of the run the report needs besides the counters.
struct RunInfo {
  uint64_t measured_start_ns = 0;  // start of the measured period (after warm-up)
  unsigned threads = 0;
  bool interrupted = false;  // SIGINT/SIGTERM ended the schedule early
  double cpu_s = 0;          // the generator's own CPU time (user + system), whole run
  double wall_s = 0;         // the whole run, warm-up included
};

// `warm`: the warm-up's counters, shown only as a summary line (its errors
// still make the run fail).
std::string text_report(const Options& o, const RunInfo& run, const Stats& s, const Stats& warm);
std::string json_report(const Options& o, const RunInfo& run, const Stats& s, const Stats& warm);

// True when the run is a success (exit 0).
bool all_ok(const Stats& s);

}  // namespace tlsgate::load
