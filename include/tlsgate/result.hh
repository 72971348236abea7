// A tiny std::expected stand-in, used for the whole code base.
//
// GCC 12 has std::expected only with -std=c++2b, and clang 14 (the libFuzzer
// compiler on Debian 12) cannot compile libstdc++'s <expected> at all, so the
// data plane returns Result<T> instead. The API is the subset of std::expected
// we use, so a later switch is a rename.
#pragma once

#include <cassert>
#include <utility>
#include <variant>

namespace tlsgate {

// Data-plane failure classes. Documented here, once, because every module
// returns them; a peer's mistake maps to a protocol action, not to a crash.
enum class Error {
  WouldBlock,      // nothing to do until more bytes arrive / buffer space frees
  Closed,          // peer closed the transport cleanly
  Protocol,        // peer violated TLS / HTTP/2 / gRPC; connection-level action
  Timeout,         // a handshake, idle or connect timer fired
  Resource,        // a pool or ring is exhausted; caller queues or sheds
  Io,              // a socket operation failed (errno logged by the caller)
  Unavailable,     // no upstream could take the stream
};

constexpr const char* to_string(Error e) noexcept {
  switch (e) {
    case Error::WouldBlock: return "would_block";
    case Error::Closed: return "closed";
    case Error::Protocol: return "protocol";
    case Error::Timeout: return "timeout";
    case Error::Resource: return "resource";
    case Error::Io: return "io";
    case Error::Unavailable: return "unavailable";
  }
  return "?";
}

template <typename E>
struct Unexpected {
  // A constructor, not an aggregate: clang 14 (the fuzzing build) has no
  // parenthesised aggregate initialisation.
  explicit Unexpected(E e) : error(std::move(e)) {}
  E error;
};

template <typename E>
Unexpected(E) -> Unexpected<E>;

template <typename T, typename E = Error>
class Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit like expected
  Result(Unexpected<E> u) : v_(std::in_place_index<1>, std::move(u.error)) {}  // NOLINT

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }
  T& value() & { assert(has_value()); return std::get<0>(v_); }
  const T& value() const& { assert(has_value()); return std::get<0>(v_); }
  T&& value() && { assert(has_value()); return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const E& error() const { assert(!has_value()); return std::get<1>(v_); }

 private:
  std::variant<T, E> v_;
};

template <typename E>
class Result<void, E> {
 public:
  Result() = default;
  Result(Unexpected<E> u) : err_(std::move(u.error)), ok_(false) {}  // NOLINT
  bool has_value() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  const E& error() const { assert(!ok_); return err_; }

 private:
  E err_{};
  bool ok_ = true;
};

}  // namespace tlsgate
