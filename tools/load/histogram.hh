// A latency histogram for load generators (issue 20): HdrHistogram's
// log-linear layout, written for tlsgate (Debian 12 packages no HdrHistogram
// for C or C++). Values below 2 x kHalf are counted exactly; above, each
// power of two is split into kHalf equal sub-buckets, so a reported value is
// at most 1/kHalf (0.1%, three significant digits) above the true one.
// Fixed memory (no allocation per sample), mergeable (one per thread).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

namespace tlsgate::load {

class Histogram {
 public:
  static constexpr int kHalfBits = 10;
  static constexpr uint64_t kHalf = uint64_t{1} << kHalfBits;  // sub-buckets per power of two
  // Values up to 2^kMaxBits - 1 (in microseconds: 2^36 µs ≈ 19 h); larger
  // ones are counted as that.
  static constexpr int kMaxBits = 36;

  Histogram() : counts_(index_of((uint64_t{1} << kMaxBits) - 1) + 1, 0) {}

  void record(uint64_t v) {
    v = std::min(v, (uint64_t{1} << kMaxBits) - 1);
    ++counts_[index_of(v)];
    ++count_;
    max_ = std::max(max_, v);
    min_ = std::min(min_, v);
  }
  void merge(const Histogram& o) {
    for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += o.counts_[i];
    count_ += o.count_;
    max_ = std::max(max_, o.max_);
    min_ = std::min(min_, o.min_);
  }
  uint64_t count() const { return count_; }
  uint64_t max() const { return count_ ? max_ : 0; }
  uint64_t min() const { return count_ ? min_ : 0; }

  // The smallest value v such that at least `p` percent of the samples are
  // <= v, reported as the highest value of its sub-bucket (never above the
  // largest sample): p = 100 is the exact maximum. 0 with no samples.
  uint64_t percentile(double p) const {
    if (count_ == 0) return 0;
    p = std::clamp(p, 0.0, 100.0);
    const uint64_t rank = std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(p / 100.0 * static_cast<double>(count_))));
    uint64_t seen = 0;
    for (size_t i = 0; i < counts_.size(); ++i) {
      seen += counts_[i];
      if (seen >= rank) return std::min(highest_in(i), max_);
    }
    return max_;
  }

  // Sub-bucket of `v`: exact below 2 x kHalf, then kHalf per power of two.
  static size_t index_of(uint64_t v) {
    if (v < 2 * kHalf) return static_cast<size_t>(v);
    const int shift = std::bit_width(v) - 1 - kHalfBits;  // >= 1
    const uint64_t top = v >> shift;                       // in [kHalf, 2 kHalf)
    return static_cast<size_t>(2 * kHalf + static_cast<uint64_t>(shift - 1) * kHalf + (top - kHalf));
  }
  // The largest value counted in sub-bucket `i`.
  static uint64_t highest_in(size_t i) {
    if (i < 2 * kHalf) return i;
    const uint64_t shift = (i - 2 * kHalf) / kHalf + 1;
    const uint64_t top = kHalf + (i - 2 * kHalf) % kHalf;
    return ((top + 1) << shift) - 1;
  }

 private:
  std::vector<uint64_t> counts_;
  uint64_t count_ = 0;
  uint64_t max_ = 0;
  uint64_t min_ = UINT64_MAX;
};

}  // namespace tlsgate::load
