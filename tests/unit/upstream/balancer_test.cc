// Balancer and endpoint health: distribution, skipping unusable endpoints,
// ejection back-off, health thresholds, panic routing.
#include <gtest/gtest.h>

#include <vector>

#include "tlsgate/upstream.hh"

namespace tlsgate::upstream {
namespace {

std::vector<int> spread(Balancer& b, std::vector<EndpointState>& eps, int n, uint64_t now = 0) {
  std::vector<int> counts(eps.size(), 0);
  for (int i = 0; i < n; ++i) {
    int e = b.pick(eps, now, -1, false);
    EXPECT_GE(e, 0);
    if (e >= 0) ++counts[static_cast<size_t>(e)];
  }
  return counts;
}

TEST(Balancer, RoundRobinIsExactOverEqualEndpoints) {
  Balancer b(Policy::RoundRobin);
  std::vector<EndpointState> eps(4);
  auto c = spread(b, eps, 10'000);
  for (int n : c) EXPECT_EQ(n, 2'500);
}

TEST(Balancer, P2cSpreadsSequentialStreamsEvenly) {
  // Sequential streams: every endpoint has 0 outstanding, so p2c is a fair
  // random choice: 25% +- 5% each over 10,000.
  Balancer b(Policy::P2c, 42);
  std::vector<EndpointState> eps(4);
  auto c = spread(b, eps, 10'000);
  for (int n : c) {
    EXPECT_GE(n, 2'000);
    EXPECT_LE(n, 3'000);
  }
}

TEST(Balancer, P2cSamplesLargeClustersEvenlyAndOnlyUsable) {
  // 100 endpoints, every third unusable in one way or another: p2c samples
  // (no scan) and must still never pick an unusable one and spread evenly.
  Balancer b(Policy::P2c, 11);
  std::vector<EndpointState> eps(100);
  for (size_t i = 0; i < eps.size(); i += 3) {
    if (i % 2 == 0) eps[i].healthy = false;
    else eps[i].ejected_until_ms = 1'000;
  }
  std::vector<int> c(eps.size(), 0);
  for (int i = 0; i < 67'000; ++i) {
    int e = b.pick(eps, 0, 1, false);
    ASSERT_GE(e, 0);
    ++c[static_cast<size_t>(e)];
  }
  for (size_t i = 0; i < eps.size(); ++i) {
    if (i % 3 == 0 || i == 1) {
      EXPECT_EQ(c[i], 0) << i;  // unusable, or avoided
    } else {
      EXPECT_GT(c[i], 700) << i;  // 1,015 expected
      EXPECT_LT(c[i], 1'350) << i;
    }
  }
  // Only the avoided endpoint usable: sampling fails, the scan finds it.
  for (size_t i = 0; i < eps.size(); ++i) eps[i].active = i == 1;
  EXPECT_EQ(b.pick(eps, 0, 1, false), 1);
  eps[1].active = false;
  EXPECT_EQ(b.pick(eps, 0, 1, false), -1);
}

TEST(Balancer, P2cPrefersFewerOutstandingStreams) {
  Balancer b(Policy::P2c, 7);
  std::vector<EndpointState> eps(2);
  eps[0].outstanding = 10;
  auto c = spread(b, eps, 1'000);
  EXPECT_EQ(c[0], 0);
  EXPECT_EQ(c[1], 1'000);
}

TEST(Balancer, SkipsUnhealthyEjectedAndInactive) {
  for (Policy p : {Policy::P2c, Policy::RoundRobin}) {
    Balancer b(p, 3);
    std::vector<EndpointState> eps(4);
    eps[0].healthy = false;
    eps[1].ejected_until_ms = 1'000;
    eps[2].active = false;
    auto c = spread(b, eps, 100, 500);
    EXPECT_EQ(c[3], 100);
    // After the ejection ends endpoint 1 is back.
    c = spread(b, eps, 100, 1'000);
    EXPECT_GT(c[1], 0);
    EXPECT_EQ(c[0] + c[2], 0);
  }
}

TEST(Balancer, AvoidUnlessNothingElse) {
  Balancer b(Policy::P2c, 5);
  std::vector<EndpointState> eps(2);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(b.pick(eps, 0, 0, false), 1);
  eps[1].healthy = false;
  EXPECT_EQ(b.pick(eps, 0, 0, false), 0);
}

TEST(Balancer, NoneUsableFailsOrPanics) {
  Balancer b(Policy::RoundRobin);
  std::vector<EndpointState> eps(3);
  for (auto& e : eps) e.healthy = false;
  eps[2].active = false;
  EXPECT_EQ(b.pick(eps, 0, -1, false), -1);
  std::vector<int> seen(3, 0);
  for (int i = 0; i < 10; ++i) ++seen[static_cast<size_t>(b.pick(eps, 0, -1, true))];
  EXPECT_EQ(seen[0], 5);
  EXPECT_EQ(seen[1], 5);
  EXPECT_EQ(seen[2], 0);  // inactive: never, not even in panic
  EXPECT_EQ(b.pick({}, 0, -1, true), -1);
}

TEST(EndpointState, EjectionDoublesUpToMaxAndSuccessResets) {
  OutlierPolicy p{3, 1'000, 5'000};
  EndpointState e;
  EXPECT_FALSE(e.on_result(true, 0, p));
  EXPECT_FALSE(e.on_result(true, 0, p));
  EXPECT_TRUE(e.on_result(true, 0, p));
  EXPECT_EQ(e.ejected_until_ms, 1'000u);
  for (int i = 0; i < 2; ++i) e.on_result(true, 1'000, p);
  EXPECT_TRUE(e.on_result(true, 1'000, p));
  EXPECT_EQ(e.ejected_until_ms, 3'000u);  // 2 s
  for (int i = 0; i < 3; ++i) e.on_result(true, 3'000, p);
  EXPECT_EQ(e.ejected_until_ms, 7'000u);  // 4 s
  for (int i = 0; i < 3; ++i) e.on_result(true, 7'000, p);
  EXPECT_EQ(e.ejected_until_ms, 12'000u);  // capped at 5 s
  // A success after the ejection ended starts the back-off again.
  e.on_result(false, 12'000, p);
  for (int i = 0; i < 3; ++i) e.on_result(true, 12'000, p);
  EXPECT_EQ(e.ejected_until_ms, 13'000u);
}

TEST(EndpointState, SuccessBreaksTheFailureStreak) {
  OutlierPolicy p{2, 1'000, 1'000};
  EndpointState e;
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(e.on_result(true, 0, p));
    EXPECT_FALSE(e.on_result(false, 0, p));
  }
  EXPECT_FALSE(e.ejected(0));
  OutlierPolicy off{0, 1'000, 1'000};
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(e.on_result(true, 0, off));
}

TEST(EndpointState, HealthThresholds) {
  HealthPolicy p{2, 3};
  EndpointState e;
  EXPECT_FALSE(e.on_check(false, p));
  EXPECT_FALSE(e.on_check(false, p));
  EXPECT_TRUE(e.on_check(false, p));
  EXPECT_FALSE(e.healthy);
  EXPECT_FALSE(e.on_check(true, p));
  EXPECT_FALSE(e.on_check(false, p));  // streak broken
  EXPECT_FALSE(e.on_check(true, p));
  EXPECT_TRUE(e.on_check(true, p));
  EXPECT_TRUE(e.healthy);
}

TEST(EndpointState, PassingCheckEndsEjection) {
  EndpointState e;
  e.ejected_until_ms = 10'000;
  e.on_check(true, HealthPolicy{});
  EXPECT_TRUE(e.usable(0));
}

}  // namespace
}  // namespace tlsgate::upstream
