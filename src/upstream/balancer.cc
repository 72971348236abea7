#include <algorithm>

#include "tlsgate/upstream.hh"

namespace tlsgate::upstream {

bool EndpointState::on_check(bool ok, const HealthPolicy& p) {
  if (ok) {
    check_failures = 0;
    ++check_successes;
    // A backend that answers its health check gets another chance at once.
    ejected_until_ms = 0;
    failures = 0;
    if (!healthy && check_successes >= p.healthy_threshold) {
      healthy = true;
      return true;
    }
    return false;
  }
  check_successes = 0;
  ++check_failures;
  if (healthy && check_failures >= p.unhealthy_threshold) {
    healthy = false;
    return true;
  }
  return false;
}

bool EndpointState::on_result(bool failure, uint64_t now, const OutlierPolicy& p) {
  if (ejected(now)) return false;
  if (!failure) {
    failures = 0;
    ejections = 0;
    return false;
  }
  ++failures;
  if (p.consecutive_failures == 0 || failures < p.consecutive_failures) return false;
  failures = 0;
  return true;
}

void EndpointState::eject(uint64_t now, const OutlierPolicy& p) {
  uint64_t ms = p.base_ejection_ms;
  for (uint32_t i = 0; i < ejections && ms < p.max_ejection_ms; ++i) ms *= 2;
  ++ejections;
  ejected_until_ms = now + std::min(ms, p.max_ejection_ms);
}

bool ejection_allowed(const std::vector<EndpointState>& eps, size_t e, uint64_t now, const OutlierPolicy& p) {
  if (p.max_ejection_percent >= 100 || !eps[e].active) return true;
  uint64_t active = 0, ejected = 0, usable = 0;
  for (const EndpointState& s : eps) {
    if (!s.active) continue;
    ++active;
    if (s.ejected(now)) ++ejected;
    if (s.usable(now)) ++usable;
  }
  // An unhealthy endpoint still taking streams (panic) leaves the usable
  // count as it is when ejected.
  const uint64_t usable_after = usable - (eps[e].usable(now) ? 1 : 0);
  if (usable_after == 0) return false;
  return (ejected + 1) * 100 <= uint64_t{p.max_ejection_percent} * active;
}

OutlierVerdict record_outcome(std::vector<EndpointState>& eps, size_t e, bool failure, uint64_t now,
                              const OutlierPolicy& p) {
  if (!eps[e].on_result(failure, now, p)) return OutlierVerdict::None;
  if (!ejection_allowed(eps, e, now, p)) return OutlierVerdict::Refused;
  eps[e].eject(now, p);
  return OutlierVerdict::Ejected;
}

const char* to_string(OutlierVerdict v) {
  switch (v) {
    case OutlierVerdict::None: return "none";
    case OutlierVerdict::Ejected: return "ejected";
    case OutlierVerdict::Refused: return "refused";
  }
  return "?";
}

int Balancer::sample_two(const std::vector<EndpointState>& eps, uint64_t now, int avoid) {
  const uint32_t n = static_cast<uint32_t>(eps.size());
  auto draw = [&](int other) -> int {
    for (int tries = 0; tries < 8; ++tries) {
      int i = static_cast<int>(rng_.below(n));
      if (i != avoid && i != other && eps[static_cast<size_t>(i)].usable(now)) return i;
    }
    return -1;
  };
  const int a = draw(-1);
  const int b = a < 0 ? -1 : draw(a);
  if (b < 0) return -1;
  return eps[static_cast<size_t>(b)].outstanding < eps[static_cast<size_t>(a)].outstanding ? b : a;
}

int Balancer::pick(const std::vector<EndpointState>& eps, uint64_t now, int avoid, bool panic) {
  // Large clusters: two random draws usually find two usable endpoints
  // without looking at every one; the scan below is the fallback.
  if (policy_ == Policy::P2c && eps.size() >= kSampleFrom) {
    int e = sample_two(eps, now, avoid);
    if (e >= 0) return e;
  }
  candidates_.clear();
  bool avoid_usable = false;
  for (uint32_t i = 0; i < eps.size(); ++i) {
    if (!eps[i].usable(now)) continue;
    if (static_cast<int>(i) == avoid) {
      avoid_usable = true;
      continue;
    }
    candidates_.push_back(i);
  }
  if (candidates_.empty() && avoid_usable) candidates_.push_back(static_cast<uint32_t>(avoid));
  if (candidates_.empty() && panic) {
    for (uint32_t i = 0; i < eps.size(); ++i)
      if (eps[i].active) candidates_.push_back(i);
  }
  const uint32_t n = static_cast<uint32_t>(candidates_.size());
  if (n == 0) return -1;
  if (n == 1) return static_cast<int>(candidates_[0]);
  if (policy_ == Policy::RoundRobin) {
    // The first candidate at or after the cursor, so skipped endpoints do not
    // shift the others' turns.
    uint32_t chosen = candidates_[0];
    for (uint32_t c : candidates_)
      if (c >= next_) {
        chosen = c;
        break;
      }
    next_ = chosen + 1;
    return static_cast<int>(chosen);
  }
  uint32_t a = rng_.below(n);
  uint32_t b = rng_.below(n - 1);
  if (b >= a) ++b;
  uint32_t ea = candidates_[a], eb = candidates_[b];
  return static_cast<int>(eps[eb].outstanding < eps[ea].outstanding ? eb : ea);
}

}  // namespace tlsgate::upstream
