// Timer lists: every entry of one list has the same duration, so insertion
// order is deadline order and arm/disarm/expire are O(1) per entry. A shard
// keeps one list per (listener, timeout kind); its loop expires them on a
// tick. Timers of differing durations (max_connection_age, with jitter) go
// in a TimerHeap instead.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

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

// For timers whose durations differ from entry to entry (drawn with
// jitter), where no list keeps deadline order: a binary min-heap of links,
// each knowing its place so that removal (on close) is O(log n). The vector
// grows to the most entries ever held and keeps that memory.
struct HeapLink {
  static constexpr uint32_t kNone = UINT32_MAX;
  uint64_t deadline_ms = 0;
  uint32_t index = kNone;  // place in the heap, or kNone
  bool linked() const { return index != kNone; }
};

class TimerHeap {
 public:
  // (Re)starts the timer of `t`, expiring at `deadline_ms`.
  void arm(HeapLink& t, uint64_t deadline_ms) {
    disarm(t);
    t.deadline_ms = deadline_ms;
    t.index = static_cast<uint32_t>(heap_.size());
    heap_.push_back(&t);
    sift_up(t.index);
  }
  void disarm(HeapLink& t) {
    if (!t.linked()) return;
    const size_t i = t.index;
    HeapLink* last = heap_.back();
    heap_.pop_back();
    t.index = HeapLink::kNone;
    if (i == heap_.size()) return;
    place(i, last);
    sift_down(i);
    sift_up(last->index);
  }
  // Unlinks and returns the entry with the earliest passed deadline, or nullptr.
  HeapLink* pop_expired(uint64_t now_ms) {
    if (heap_.empty() || heap_.front()->deadline_ms > now_ms) return nullptr;
    HeapLink* t = heap_.front();
    disarm(*t);
    return t;
  }
  bool empty() const { return heap_.empty(); }
  size_t size() const { return heap_.size(); }

 private:
  void place(size_t i, HeapLink* t) {
    heap_[i] = t;
    t->index = static_cast<uint32_t>(i);
  }
  void sift_up(size_t i) {
    while (i > 0) {
      const size_t parent = (i - 1) / 2;
      if (heap_[parent]->deadline_ms <= heap_[i]->deadline_ms) return;
      HeapLink* p = heap_[parent];
      place(parent, heap_[i]);
      place(i, p);
      i = parent;
    }
  }
  void sift_down(size_t i) {
    for (;;) {
      size_t least = i;
      for (size_t c = 2 * i + 1; c <= 2 * i + 2 && c < heap_.size(); ++c)
        if (heap_[c]->deadline_ms < heap_[least]->deadline_ms) least = c;
      if (least == i) return;
      HeapLink* l = heap_[least];
      place(least, heap_[i]);
      place(i, l);
      i = least;
    }
  }
  std::vector<HeapLink*> heap_;
};

// Uniform in [0.9, 1.1] x ms, from `state` (splitmix64; no syscall): timers
// armed together, such as connections accepted together after a deploy, do
// not all expire together.
inline uint64_t jittered(uint64_t ms, uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return ms - ms / 10 + z % (ms / 5 + 1);
}

}  // namespace tlsgate
