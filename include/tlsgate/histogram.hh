// A fixed-bucket latency histogram: plain integers, one per shard, summed
// by whoever reads them (the admin's /metrics). Bounds are in microseconds
// and shown in seconds; they span a fast local call (0.1 ms) to a
// long-running stream (5 min).
#pragma once

#include <cstddef>
#include <cstdint>

namespace tlsgate {

struct Histogram {
  static constexpr size_t kBuckets = 18;
  static constexpr uint64_t kBoundsUs[kBuckets] = {
      100,       250,       500,       1'000,     2'500,      5'000,      10'000,     25'000,      50'000,
      100'000,   250'000,   500'000,   1'000'000, 2'500'000,  5'000'000,  10'000'000, 60'000'000,  300'000'000};
  uint64_t counts[kBuckets] = {};  // observations in (bound[i-1], bound[i]]
  uint64_t count = 0;              // all observations, also those above the last bound
  uint64_t sum_us = 0;

  void observe(uint64_t us) {
    ++count;
    sum_us += us;
    for (size_t i = 0; i < kBuckets; ++i)
      if (us <= kBoundsUs[i]) {
        ++counts[i];
        return;
      }
  }
  void add(const Histogram& o) {
    for (size_t i = 0; i < kBuckets; ++i) counts[i] += o.counts[i];
    count += o.count;
    sum_us += o.sum_us;
  }
};

}  // namespace tlsgate
