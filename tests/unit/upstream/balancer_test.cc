// Balancer and endpoint health: distribution, skipping unusable endpoints,
// ejection back-off and its limits, health thresholds, panic routing.
#include <gtest/gtest.h>

#include <algorithm>
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

// n failures of endpoint e at `now`; the verdicts.
std::vector<OutlierVerdict> fail(std::vector<EndpointState>& eps, size_t e, int n, uint64_t now,
                                 const OutlierPolicy& p) {
  std::vector<OutlierVerdict> v;
  for (int i = 0; i < n; ++i) v.push_back(record_outcome(eps, e, true, now, p));
  return v;
}

size_t count(const std::vector<OutlierVerdict>& v, OutlierVerdict which) {
  return static_cast<size_t>(std::count(v.begin(), v.end(), which));
}

TEST(Outlier, EjectionDoublesOnlyAfterReturnUpToMaxAndSuccessResets) {
  OutlierPolicy p{3, 1'000, 5'000, 100};
  std::vector<EndpointState> eps(1);
  EXPECT_EQ(record_outcome(eps, 0, true, 0, p), OutlierVerdict::None);
  EXPECT_EQ(record_outcome(eps, 0, true, 0, p), OutlierVerdict::None);
  EXPECT_EQ(record_outcome(eps, 0, true, 0, p), OutlierVerdict::Ejected);
  EXPECT_EQ(eps[0].ejected_until_ms, 1'000u);
  // Back at 1 s, used, failing again: 2 s, then 4 s, then the 5 s cap.
  EXPECT_EQ(count(fail(eps, 0, 3, 1'000, p), OutlierVerdict::Ejected), 1u);
  EXPECT_EQ(eps[0].ejected_until_ms, 3'000u);
  fail(eps, 0, 3, 3'000, p);
  EXPECT_EQ(eps[0].ejected_until_ms, 7'000u);
  fail(eps, 0, 3, 7'000, p);
  EXPECT_EQ(eps[0].ejected_until_ms, 12'000u);
  // A success after the ejection ended starts the back-off again.
  EXPECT_EQ(record_outcome(eps, 0, false, 12'000, p), OutlierVerdict::None);
  fail(eps, 0, 3, 12'000, p);
  EXPECT_EQ(eps[0].ejected_until_ms, 13'000u);
}

// A crash with 60 streams in flight: even if every one of them reported a
// failure, the endpoint is ejected once, for base_ejection; what fails while
// it is ejected neither ejects it again nor counts towards the next ejection.
TEST(Outlier, BurstOfFailuresEjectsOnce) {
  OutlierPolicy p{5, 10'000, 300'000, 100};
  std::vector<EndpointState> eps(1);
  auto v = fail(eps, 0, 60, 50, p);
  EXPECT_EQ(count(v, OutlierVerdict::Ejected), 1u);
  EXPECT_EQ(eps[0].ejected_until_ms, 10'050u);
  EXPECT_EQ(eps[0].ejections, 1u);
  fail(eps, 0, 60, 5'000, p);  // stragglers during the ejection
  EXPECT_EQ(eps[0].ejected_until_ms, 10'050u);
  // Back: it takes a full streak again to eject it, for twice as long.
  EXPECT_EQ(count(fail(eps, 0, 4, 10'050, p), OutlierVerdict::None), 4u);
  EXPECT_TRUE(eps[0].usable(10'050));
  EXPECT_EQ(record_outcome(eps, 0, true, 10'050, p), OutlierVerdict::Ejected);
  EXPECT_EQ(eps[0].ejected_until_ms, 30'050u);
}

// Defaults: a single endpoint is never ejected, however often it fails;
// it stays usable, so calls reach it as soon as it is back.
TEST(Outlier, LastUsableEndpointIsNeverEjectedByDefault) {
  OutlierPolicy p;
  EXPECT_EQ(p.max_ejection_percent, 50u);
  std::vector<EndpointState> one(1);
  auto v = fail(one, 0, 60, 0, p);
  EXPECT_EQ(count(v, OutlierVerdict::Ejected), 0u);
  EXPECT_EQ(count(v, OutlierVerdict::Refused), 12u);  // one per streak of 5
  EXPECT_TRUE(one[0].usable(0));
  EXPECT_EQ(one[0].ejections, 0u);

  // Two endpoints: one may go (50%), not the other.
  std::vector<EndpointState> two(2);
  EXPECT_EQ(count(fail(two, 0, 5, 0, p), OutlierVerdict::Ejected), 1u);
  EXPECT_EQ(count(fail(two, 1, 5, 0, p), OutlierVerdict::Refused), 1u);
  EXPECT_TRUE(two[1].usable(0));

  // The other one unhealthy (active health checks): the last usable stays.
  std::vector<EndpointState> sick(2);
  sick[1].healthy = false;
  EXPECT_EQ(count(fail(sick, 0, 5, 0, p), OutlierVerdict::Refused), 1u);
  EXPECT_TRUE(sick[0].usable(0));
}

TEST(Outlier, MaxEjectionPercentOfActiveEndpoints) {
  OutlierPolicy p{1, 1'000, 1'000, 50};
  std::vector<EndpointState> eps(5);
  EXPECT_EQ(record_outcome(eps, 0, true, 0, p), OutlierVerdict::Ejected);  // 20%
  EXPECT_EQ(record_outcome(eps, 1, true, 0, p), OutlierVerdict::Ejected);  // 40%
  EXPECT_EQ(record_outcome(eps, 2, true, 0, p), OutlierVerdict::Refused);  // 60% > 50%
  // An endpoint gone from DNS does not count.
  eps[4].active = false;
  EXPECT_EQ(record_outcome(eps, 3, true, 0, p), OutlierVerdict::Refused);  // 3 of 4
  // Once an ejection ends, another endpoint may take its place.
  EXPECT_EQ(record_outcome(eps, 2, true, 1'000, p), OutlierVerdict::Ejected);

  // 100: no limit, the last one too (the behaviour before the limit).
  OutlierPolicy all{1, 1'000, 1'000, 100};
  std::vector<EndpointState> one(1);
  EXPECT_EQ(record_outcome(one, 0, true, 0, all), OutlierVerdict::Ejected);
  EXPECT_FALSE(one[0].usable(0));
  // 0: never.
  OutlierPolicy none{1, 1'000, 1'000, 0};
  std::vector<EndpointState> many(10);
  EXPECT_EQ(record_outcome(many, 0, true, 0, none), OutlierVerdict::Refused);
}

TEST(EndpointState, SuccessBreaksTheFailureStreak) {
  OutlierPolicy p{2, 1'000, 1'000, 100};
  EndpointState e;
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(e.on_result(true, 0, p));
    EXPECT_FALSE(e.on_result(false, 0, p));
  }
  EXPECT_FALSE(e.ejected(0));
  OutlierPolicy off{0, 1'000, 1'000, 100};
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
