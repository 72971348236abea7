// RoundRobin: every endpoint of a cluster takes its turn, in index order, so
// N streams over K endpoints land floor(N/K) or ceil(N/K) on each.
#include <gtest/gtest.h>

#include <vector>

#include "tlsgate/upstream.hh"

namespace tlsgate::upstream {
namespace {

TEST(RoundRobin, VisitsEndpointsInOrderAndWraps) {
  RoundRobin rr(3);
  EXPECT_EQ(rr.count(), 3u);
  std::vector<size_t> got;
  for (int i = 0; i < 7; ++i) got.push_back(rr.next());
  EXPECT_EQ(got, (std::vector<size_t>{0, 1, 2, 0, 1, 2, 0}));
}

TEST(RoundRobin, SingleEndpointAlwaysZero) {
  RoundRobin rr(1);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(rr.next(), 0u);
}

TEST(RoundRobin, SpreadIsEvenForEveryCount) {
  for (size_t k = 1; k <= 16; ++k) {
    for (size_t n : {k, 3 * k, 10 * k + k / 2, size_t{1000}}) {
      std::vector<size_t> hits(k, 0);
      RoundRobin fresh(k);
      for (size_t i = 0; i < n; ++i) {
        size_t e = fresh.next();
        ASSERT_LT(e, k);
        ++hits[e];
      }
      for (size_t e = 0; e < k; ++e) {
        EXPECT_GE(hits[e], n / k) << "k=" << k << " n=" << n << " endpoint " << e;
        EXPECT_LE(hits[e], (n + k - 1) / k) << "k=" << k << " n=" << n << " endpoint " << e;
      }
    }
  }
}

TEST(RoundRobin, SetCountRestartsAtZeroAndStaysInRange) {
  RoundRobin rr(5);
  rr.next();
  rr.next();
  rr.next();        // next would be 3
  rr.set_count(2);  // cluster shrank: 3 is no longer a valid index
  EXPECT_EQ(rr.count(), 2u);
  EXPECT_EQ(rr.next(), 0u);
  EXPECT_EQ(rr.next(), 1u);
  EXPECT_EQ(rr.next(), 0u);

  RoundRobin empty;
  EXPECT_EQ(empty.count(), 0u);
  empty.set_count(4);
  std::vector<size_t> got;
  for (int i = 0; i < 4; ++i) got.push_back(empty.next());
  EXPECT_EQ(got, (std::vector<size_t>{0, 1, 2, 3}));
}

}  // namespace
}  // namespace tlsgate::upstream
