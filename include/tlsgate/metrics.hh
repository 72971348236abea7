// /metrics: the shards' Stats as a Prometheus text page (src/admin/metrics.cc).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tlsgate/shard.hh"

namespace tlsgate::admin {

struct MetricsInput {
  std::vector<shard::Stats> shards;  // those that answered
  uint64_t shards_unanswered = 0;
  std::vector<std::string> listener_names;  // by configuration index
  std::string version;
  bool ready = false;
  uint64_t reloads = 0;
  uint64_t reload_failures = 0;
  uint64_t access_log_lost = 0;
  double start_time_seconds = 0;
};

std::string render_metrics(const MetricsInput& in);

// The keys of the stopped: line (shard::Counters::describe) that no metric
// shows; empty when /metrics has them all (a unit test checks).
std::vector<std::string> counter_keys_without_metric(const std::vector<std::string>& keys);

}  // namespace tlsgate::admin
