// TimerList: one duration per list, so entries expire in the order they were
// (re)armed. The shard relies on pop_expired() returning exactly the entries
// whose deadline has passed, oldest first, and on disarm()/re-arm moving an
// entry without disturbing the others.
#include "tlsgate/timer.hh"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

namespace tlsgate {
namespace {

std::vector<TimerLink*> pop_all(TimerList& list, uint64_t now) {
  std::vector<TimerLink*> out;
  while (TimerLink* t = list.pop_expired(now)) {
    EXPECT_FALSE(t->linked());  // popped entries are unlinked
    out.push_back(t);
  }
  return out;
}

TEST(TimerList, EmptyListExpiresNothing) {
  TimerList list(100);
  EXPECT_TRUE(list.empty());
  EXPECT_EQ(list.duration(), 100u);
  EXPECT_EQ(list.pop_expired(0), nullptr);
  EXPECT_EQ(list.pop_expired(UINT64_MAX), nullptr);
}

TEST(TimerList, ArmSetsDeadlineAndLinks) {
  TimerList list(250);
  TimerLink t;
  EXPECT_FALSE(t.linked());
  list.arm(t, 1000);
  EXPECT_TRUE(t.linked());
  EXPECT_FALSE(list.empty());
  EXPECT_EQ(t.deadline_ms, 1250u);
  // Not before the deadline; at the deadline it is expired.
  EXPECT_EQ(list.pop_expired(1249), nullptr);
  EXPECT_TRUE(t.linked());
  EXPECT_EQ(list.pop_expired(1250), &t);
  EXPECT_FALSE(t.linked());
  EXPECT_TRUE(list.empty());
  EXPECT_EQ(list.pop_expired(5000), nullptr);
}

TEST(TimerList, ExpiresInArmOrder) {
  TimerList list(100);
  TimerLink a, b, c;
  list.arm(a, 0);   // 100
  list.arm(b, 10);  // 110
  list.arm(c, 20);  // 120
  EXPECT_EQ(pop_all(list, 99), std::vector<TimerLink*>{});
  EXPECT_EQ(pop_all(list, 115), (std::vector<TimerLink*>{&a, &b}));
  EXPECT_TRUE(c.linked());
  EXPECT_EQ(pop_all(list, 1000), std::vector<TimerLink*>{&c});
  EXPECT_TRUE(list.empty());
}

TEST(TimerList, DisarmRemovesOnlyThatEntry) {
  TimerList list(100);
  TimerLink a, b, c;
  list.arm(a, 0);
  list.arm(b, 0);
  list.arm(c, 0);
  TimerList::disarm(b);  // middle
  EXPECT_FALSE(b.linked());
  TimerList::disarm(b);  // twice is harmless
  EXPECT_EQ(pop_all(list, 100), (std::vector<TimerLink*>{&a, &c}));

  list.arm(a, 0);
  list.arm(b, 0);
  TimerList::disarm(a);  // head
  TimerList::disarm(b);  // last one: list becomes empty
  EXPECT_TRUE(list.empty());
  EXPECT_EQ(list.pop_expired(1000), nullptr);

  TimerLink never;
  TimerList::disarm(never);  // never armed: no-op
  EXPECT_FALSE(never.linked());
}

TEST(TimerList, RearmMovesEntryToTheBack) {
  TimerList list(100);
  TimerLink a, b, c;
  list.arm(a, 0);   // 100
  list.arm(b, 10);  // 110
  list.arm(c, 20);  // 120
  list.arm(a, 50);  // activity on a: now 150, after c
  EXPECT_EQ(a.deadline_ms, 150u);
  EXPECT_EQ(pop_all(list, 120), (std::vector<TimerLink*>{&b, &c}));
  EXPECT_TRUE(a.linked());
  EXPECT_EQ(pop_all(list, 149), std::vector<TimerLink*>{});
  EXPECT_EQ(pop_all(list, 150), std::vector<TimerLink*>{&a});

  // Re-arming the only entry, and re-arming the last entry, keeps one link.
  list.arm(a, 0);
  list.arm(a, 1);
  list.arm(a, 2);
  EXPECT_EQ(pop_all(list, 10'000), std::vector<TimerLink*>{&a});
}

TEST(TimerList, DurationChangeAppliesToLaterArms) {
  TimerList list(100);
  TimerLink a, b;
  list.arm(a, 0);
  list.set_duration(30);
  EXPECT_EQ(list.duration(), 30u);
  list.arm(b, 80);  // 110
  EXPECT_EQ(a.deadline_ms, 100u);
  EXPECT_EQ(b.deadline_ms, 110u);
  EXPECT_EQ(pop_all(list, 110), (std::vector<TimerLink*>{&a, &b}));
}

TEST(TimerList, ManyEntriesStayOrderedUnderChurn) {
  TimerList list(1000);
  std::vector<TimerLink> links(64);
  for (size_t i = 0; i < links.size(); ++i) list.arm(links[i], i);
  // Touch every even entry at t=100: they move behind the odd ones.
  for (size_t i = 0; i < links.size(); i += 2) list.arm(links[i], 100);
  std::vector<TimerLink*> want;
  for (size_t i = 1; i < links.size(); i += 2) want.push_back(&links[i]);
  EXPECT_EQ(pop_all(list, 1063), want);
  want.clear();
  for (size_t i = 0; i < links.size(); i += 2) want.push_back(&links[i]);
  EXPECT_EQ(pop_all(list, 1099), std::vector<TimerLink*>{});
  EXPECT_EQ(pop_all(list, 1100), want);
  EXPECT_TRUE(list.empty());
}

// TimerHeap: entries of differing durations (max_connection_age with
// jitter) expire in deadline order whatever order they were armed in, and an
// entry removed from the middle (a connection closed) never comes out.
TEST(TimerHeap, ExpiresInDeadlineOrderAndOnlyWhenDue) {
  TimerHeap heap;
  HeapLink a, b, c;
  heap.arm(a, 300);
  heap.arm(b, 100);
  heap.arm(c, 200);
  EXPECT_EQ(heap.pop_expired(99), nullptr);
  EXPECT_EQ(heap.pop_expired(250), &b);
  EXPECT_EQ(heap.pop_expired(250), &c);
  EXPECT_EQ(heap.pop_expired(250), nullptr);
  EXPECT_FALSE(b.linked());
  EXPECT_TRUE(a.linked());
  EXPECT_EQ(heap.pop_expired(300), &a);
  EXPECT_TRUE(heap.empty());
}

TEST(TimerHeap, RearmMovesAnEntryAndDisarmIsIdempotent) {
  TimerHeap heap;
  HeapLink a, b;
  heap.arm(a, 100);
  heap.arm(b, 200);
  heap.arm(a, 300);  // later than b now
  EXPECT_EQ(heap.size(), 2u);
  heap.disarm(b);
  heap.disarm(b);
  EXPECT_EQ(heap.pop_expired(250), nullptr);
  EXPECT_EQ(heap.pop_expired(300), &a);
}

// Thousands of entries armed in random order, a third removed from
// anywhere: what comes out is exactly the rest, in deadline order.
TEST(TimerHeap, RandomArmsAndRemovalsKeepTheOrder) {
  std::mt19937_64 rng(18);
  std::vector<HeapLink> links(3000);
  TimerHeap heap;
  for (HeapLink& l : links) heap.arm(l, rng() % 100000);
  std::vector<uint64_t> expected;
  for (size_t i = 0; i < links.size(); ++i) {
    if (i % 3 == 1) heap.disarm(links[i]);
    else expected.push_back(links[i].deadline_ms);
  }
  std::sort(expected.begin(), expected.end());
  std::vector<uint64_t> got;
  while (HeapLink* l = heap.pop_expired(UINT64_MAX)) got.push_back(l->deadline_ms);
  EXPECT_EQ(got, expected);
  for (const HeapLink& l : links) EXPECT_FALSE(l.linked());
}

// max_connection_age's jitter: every draw within [0.9, 1.1] x the age, and
// the draws spread over that range rather than clustering.
TEST(Jittered, UniformWithinTenPercent) {
  uint64_t state = 42;
  uint64_t lo = UINT64_MAX, hi = 0;
  int low_fifth = 0, high_fifth = 0;
  for (int i = 0; i < 10000; ++i) {
    const uint64_t v = jittered(600000, state);
    ASSERT_GE(v, 540000u);
    ASSERT_LE(v, 660000u);
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    low_fifth += v < 564000;
    high_fifth += v >= 636000;
  }
  EXPECT_LT(lo, 541000u);
  EXPECT_GT(hi, 659000u);
  // A fifth of the range each: ~2,000 draws expected.
  EXPECT_GT(low_fifth, 1700);
  EXPECT_GT(high_fifth, 1700);
}

}  // namespace
}  // namespace tlsgate
