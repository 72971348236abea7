// Upstream selection logic that needs no sockets: which endpoint of a cluster
// takes the next stream. The shard owns the connections themselves.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tlsgate::upstream {

// Round-robin over `count` endpoints, per stream. One per cluster per shard,
// so no atomics.
class RoundRobin {
 public:
  explicit RoundRobin(size_t count = 0) : count_(count) {}
  void set_count(size_t count) { count_ = count; next_ = 0; }
  size_t count() const { return count_; }
  // Index of the endpoint for the next stream; count() must be > 0.
  size_t next() {
    size_t i = next_;
    next_ = (next_ + 1 == count_) ? 0 : next_ + 1;
    return i;
  }

 private:
  size_t count_;
  size_t next_ = 0;
};

}  // namespace tlsgate::upstream
