// The load generator's latency histogram (tools/load/histogram.hh) against
// exact percentiles of the same samples, sorted.
#include "../../../tools/load/histogram.hh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace tlsgate::load {
namespace {

// The exact p-th percentile as Histogram::percentile defines it: the sample
// at rank ceil(p/100 x n) (1-based) of the sorted samples.
uint64_t exact(std::vector<uint64_t> s, double p) {
  std::sort(s.begin(), s.end());
  const size_t rank = std::max<size_t>(1, static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(s.size()))));
  return s[rank - 1];
}

void expect_close(const std::vector<uint64_t>& samples, const char* what) {
  Histogram h;
  for (uint64_t v : samples) h.record(v);
  ASSERT_EQ(h.count(), samples.size());
  EXPECT_EQ(h.max(), *std::max_element(samples.begin(), samples.end())) << what;
  EXPECT_EQ(h.min(), *std::min_element(samples.begin(), samples.end())) << what;
  for (double p : {0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0}) {
    const uint64_t want = exact(samples, p), got = h.percentile(p);
    // Never below the true value; above it by at most one sub-bucket's width
    // (1/1024 of the value), and never above the largest sample.
    EXPECT_GE(got, want) << what << " p" << p;
    EXPECT_LE(got, want + want / Histogram::kHalf) << what << " p" << p;
    EXPECT_LE(got, h.max()) << what << " p" << p;
  }
  EXPECT_EQ(h.percentile(100), h.max()) << what;
}

TEST(Histogram, PercentilesWithinThreeSignificantDigitsOfTheExactOnes) {
  std::mt19937_64 rng(20261207);
  std::vector<uint64_t> uniform, exponential, bimodal;
  std::uniform_int_distribution<uint64_t> u(1, 1'000'000);
  std::exponential_distribution<double> e(1.0 / 2000.0);  // mean 2 ms in µs
  std::normal_distribution<double> fast(100, 10), slow(50'000, 5'000);
  for (int i = 0; i < 100'000; ++i) {
    uniform.push_back(u(rng));
    exponential.push_back(1 + static_cast<uint64_t>(e(rng)));
    bimodal.push_back(static_cast<uint64_t>(std::max(1.0, i % 100 == 0 ? slow(rng) : fast(rng))));
  }
  expect_close(uniform, "uniform");
  expect_close(exponential, "exponential");
  expect_close(bimodal, "bimodal");
}

TEST(Histogram, SmallValuesAreExactAndEveryValueFallsInItsOwnRange) {
  Histogram h;
  for (uint64_t v = 0; v < 2048; ++v) h.record(v);
  EXPECT_EQ(h.percentile(50), 1023u);
  EXPECT_EQ(h.percentile(100), 2047u);
  // Sub-bucket bounds: each value lies in the range its index reports, and
  // indices grow with values.
  size_t last = 0;
  for (uint64_t v = 1; v < (uint64_t{1} << 36); v = v * 3 / 2 + 1) {
    const size_t i = Histogram::index_of(v);
    EXPECT_GE(i, last);
    last = i;
    EXPECT_GE(Histogram::highest_in(i), v);
    EXPECT_LE(Histogram::highest_in(i) - v, v / Histogram::kHalf) << v;
    if (i > 0) {
      EXPECT_LT(Histogram::highest_in(i - 1), v) << v;
    }
  }
}

TEST(Histogram, MergeEqualsRecordingEverythingInOneAndLargeValuesAreClamped) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<uint64_t> u(1, 10'000'000);
  Histogram a, b, all;
  for (int i = 0; i < 10'000; ++i) {
    const uint64_t v = u(rng);
    (i % 3 ? a : b).record(v);
    all.record(v);
  }
  a.merge(b);
  EXPECT_EQ(a.count(), all.count());
  for (double p : {50.0, 99.0, 99.9, 100.0}) EXPECT_EQ(a.percentile(p), all.percentile(p)) << p;
  Histogram big;
  big.record(UINT64_MAX);
  EXPECT_EQ(big.max(), (uint64_t{1} << 36) - 1);
  Histogram none;
  EXPECT_EQ(none.percentile(99), 0u);
  EXPECT_EQ(none.max(), 0u);
}

}  // namespace
}  // namespace tlsgate::load
