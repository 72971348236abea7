// What the load tests (load_test.cc, load_responder_test.cc) read from
// tlsgate-load's --json report and from tlsgate's /metrics around a run.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "harness.hh"

namespace tlsgate::itest {

// tlsgate-load (TLSGATE_LOAD_BIN) against `target`, calling `path`, with two
// threads and `args`; a run that outlives `timeout` fails the test.
inline RunResult run_load(const std::string& target, const std::string& path, std::vector<std::string> args,
                          const std::filesystem::path& dir, Ms timeout) {
  const std::string bin = env("TLSGATE_LOAD_BIN");
  EXPECT_FALSE(bin.empty()) << "TLSGATE_LOAD_BIN is not set (path to tlsgate-load)";
  args.insert(args.begin(), {bin, "--target", target, "--path", path, "--threads", "2"});
  RunResult r = run(args, dir, timeout);
  EXPECT_FALSE(r.status.timed_out) << r.out << r.err;
  return r;
}

// The number after `key` in the one-object JSON report, e.g. "\"resumed\":";
// -1 when the key is not there.
inline long json_number(const std::string& json, const std::string& key) {
  const auto at = json.find(key);
  if (at == std::string::npos) return -1;
  return std::strtol(json.c_str() + at + key.size(), nullptr, 10);
}

// tlsgate_connections_closed_total{reason=...} on a /metrics page, 0 when
// no connection has closed for that reason yet.
inline double connections_closed(const std::string& page, const char* reason) {
  return std::max(0.0,
                  metric(page, "tlsgate_connections_closed_total", {std::string("reason=\"") + reason + "\""}));
}

}  // namespace tlsgate::itest
