// Timer lists: every entry of one list has the same duration, so insertion
// order is deadline order and arm/disarm/expire are O(1) per entry. A shard
// keeps one list per (listener, timeout kind); its loop expires them on a tick.
#pragma once

#include <cstdint>

namespace tlsgate {

struct TimerLink {
  TimerLink* prev = nullptr;
  TimerLink* next = nullptr;
  uint64_t deadline_ms = 0;
  bool linked() const { return prev != nullptr; }
};

class TimerList {
 public:
  explicit TimerList(uint64_t duration_ms = 0) : duration_ms_(duration_ms) {
    head_.prev = head_.next = &head_;
  }
  TimerList(const TimerList&) = delete;
  TimerList& operator=(const TimerList&) = delete;

  void set_duration(uint64_t ms) { duration_ms_ = ms; }
  uint64_t duration() const { return duration_ms_; }

  // (Re)starts the timer of `t`, expiring at now + duration. A caller may
  // arm after the fact with an earlier `now_ms` (the time of an event it
  // only recorded); that entry then sits behind later deadlines and expires
  // late by at most the current time minus `now_ms`.
  void arm(TimerLink& t, uint64_t now_ms) {
    disarm(t);
    t.deadline_ms = now_ms + duration_ms_;
    t.prev = head_.prev;
    t.next = &head_;
    head_.prev->next = &t;
    head_.prev = &t;
  }
  static void disarm(TimerLink& t) {
    if (!t.linked()) return;
    t.prev->next = t.next;
    t.next->prev = t.prev;
    t.prev = t.next = nullptr;
  }
  // Unlinks and returns the first expired entry, or nullptr.
  TimerLink* pop_expired(uint64_t now_ms) {
    TimerLink* t = head_.next;
    if (t == &head_ || t->deadline_ms > now_ms) return nullptr;
    disarm(*t);
    return t;
  }
  bool empty() const { return head_.next == &head_; }

 private:
  TimerLink head_;
  uint64_t duration_ms_;
};

}  // namespace tlsgate
