// Upstream selection logic that needs no sockets: which endpoint of a cluster
// takes the next stream, and what health checks and stream outcomes say about
// an endpoint. The shard owns the connections themselves; one Balancer and
// its endpoint states per cluster per shard, so no atomics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace tlsgate::upstream {

// xorshift64*: cheap, per shard, good enough to pick two endpoints.
class Rng {
 public:
  explicit Rng(uint64_t seed = 0x9e3779b97f4a7c15ull) : s_(seed ? seed : 1) {}
  uint64_t next() {
    s_ ^= s_ >> 12;
    s_ ^= s_ << 25;
    s_ ^= s_ >> 27;
    return s_ * 0x2545f4914f6cdd1dull;
  }
  // Uniform in [0, n); n > 0.
  uint32_t below(uint32_t n) { return static_cast<uint32_t>((next() >> 32) * n >> 32); }

 private:
  uint64_t s_;
};

struct HealthPolicy {
  uint32_t healthy_threshold = 2;
  uint32_t unhealthy_threshold = 2;
};

struct OutlierPolicy {
  uint32_t consecutive_failures = 5;  // 0 = never eject
  uint64_t base_ejection_ms = 10'000;
  uint64_t max_ejection_ms = 300'000;
  // At most this share of a cluster's active endpoints is ejected at once,
  // and below 100 the last usable endpoint never is.
  uint32_t max_ejection_percent = 50;
};

// What one stream or connect outcome did to an endpoint.
enum class OutlierVerdict {
  None,     // counted, nothing more
  Ejected,  // consecutive failures reached: ejected
  Refused,  // consecutive failures reached, but max_ejection_percent kept it in
};
const char* to_string(OutlierVerdict v);

// What the balancer knows of one endpoint.
struct EndpointState {
  bool active = true;    // false: gone from DNS; running streams finish, no new ones
  bool healthy = true;   // verdict of the active health checks (healthy until told otherwise)
  uint32_t check_successes = 0;  // consecutive
  uint32_t check_failures = 0;   // consecutive
  uint32_t failures = 0;         // consecutive failed streams, lost connections, connects
  // Ejections in a row, each after the endpoint came back and failed again;
  // the next one lasts base_ejection << ejections. A success resets it.
  uint32_t ejections = 0;
  uint64_t ejected_until_ms = 0;
  uint32_t outstanding = 0;      // streams in flight

  bool ejected(uint64_t now) const { return now < ejected_until_ms; }
  bool usable(uint64_t now) const { return active && healthy && !ejected(now); }

  // An active health check ended. Returns true when `healthy` changed.
  bool on_check(bool ok, const HealthPolicy& p);
  // A stream or connect attempt ended (a lost connection counts once, not
  // per stream). Returns true when the failures in a row reach the
  // threshold; the caller then ejects (or may not, see record_outcome).
  // Outcomes while ejected are ignored: they are the in-flight remains of the
  // burst that ejected it and must not eject it again.
  bool on_result(bool failure, uint64_t now, const OutlierPolicy& p);
  // Ejects for base_ejection << ejections (at most max_ejection).
  void eject(uint64_t now, const OutlierPolicy& p);
};

// Whether ejecting endpoint e now keeps the cluster within
// max_ejection_percent of its active endpoints ejected and, below 100, at
// least one usable endpoint.
bool ejection_allowed(const std::vector<EndpointState>& eps, size_t e, uint64_t now, const OutlierPolicy& p);

// Passive outlier detection for endpoint e of a cluster: counts the outcome
// and ejects the endpoint when it is due and allowed.
OutlierVerdict record_outcome(std::vector<EndpointState>& eps, size_t e, bool failure, uint64_t now,
                              const OutlierPolicy& p);

enum class Policy { P2c, RoundRobin };

class Balancer {
 public:
  explicit Balancer(Policy policy = Policy::P2c, uint64_t seed = 1) : policy_(policy), rng_(seed) {}
  Policy policy() const { return policy_; }

  // Index of the endpoint for the next stream, or -1 when none is usable.
  // `avoid` (an endpoint that just failed this stream, or -1) is chosen only
  // when no other is usable. With `panic`, when no endpoint is usable every
  // active one is a candidate.
  // p2c: two distinct usable endpoints at random, the one with fewer
  // outstanding streams wins. round_robin: the next usable one in order.
  int pick(const std::vector<EndpointState>& eps, uint64_t now, int avoid, bool panic);
  // From this many endpoints on, p2c samples instead of scanning them all.
  static constexpr size_t kSampleFrom = 16;

 private:
  int sample_two(const std::vector<EndpointState>& eps, uint64_t now, int avoid);
  Policy policy_;
  Rng rng_;
  size_t next_ = 0;
  std::vector<uint32_t> candidates_;  // reused: no allocation per pick after warm-up
};

}  // namespace tlsgate::upstream
