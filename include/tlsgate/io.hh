// The shard's io_uring, behind an interface that keeps liburing inside
// src/io/. Every submission carries a 64-bit user_data chosen by the caller
// (the shard packs slot index + generation + operation into it) and comes back
// as one or more Completions.
//
// Contract: one Ring per shard thread, used only from that thread
// (IORING_SETUP_SINGLE_ISSUER). prep_* calls only queue; nothing reaches the
// kernel until submit_and_wait(), which the shard calls once per loop turn.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>

namespace tlsgate::io {

struct Completion {
  uint64_t user_data;
  int32_t res;
  uint32_t flags;
  // More completions will follow for this multishot submission.
  bool more() const;
  // The provided buffer this completion filled, or -1.
  int buffer_id() const;
};

struct RingFeatures {
  bool single_issuer = false;
  bool defer_taskrun = false;
  bool coop_taskrun = false;
  bool registered_fd = false;
  std::string describe() const;
};

class Ring {
 public:
  // Throws std::runtime_error naming what the kernel refused.
  // `buffer_count` buffers of `buffer_size` bytes are provided for receives
  // (count must be a power of two).
  Ring(unsigned entries, unsigned buffer_count, unsigned buffer_size);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  const RingFeatures& features() const { return features_; }

  void prep_accept_multishot(int listen_fd, uint64_t ud);
  // One connection (no more after it): near a connection limit, where a
  // multishot accept would take a whole batch past it.
  void prep_accept_once(int listen_fd, uint64_t ud);
  void prep_recv_multishot(int fd, uint64_t ud);
  // One receive into a provided buffer (no more after it): used where the
  // shard must know that nothing else is read before it acts (kTLS switch).
  void prep_recv_once(int fd, uint64_t ud);
  void prep_read(int fd, void* buf, unsigned len, uint64_t ud);
  // `msg` and everything it points to must stay valid until the completion.
  void prep_sendmsg(int fd, const msghdr* msg, uint64_t ud);
  // `addr` must stay valid until the completion.
  void prep_connect(int fd, const sockaddr* addr, socklen_t len, uint64_t ud);
  void prep_timeout_ms(uint64_t ms, uint64_t ud);
  void prep_cancel_fd(int fd, uint64_t ud);

  // Provided receive buffers.
  uint8_t* buffer(int id);
  unsigned buffer_size() const { return buffer_size_; }
  // Hands buffer `id` back to the kernel (after its bytes were consumed).
  void recycle(int id);

  // Submits everything queued and waits for at least one completion.
  // Returns a negative errno on failure (EINTR/ETIME are not failures).
  int submit_and_wait();
  // Copies up to `max` ready completions out and marks them seen.
  unsigned reap(Completion* out, unsigned max);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  RingFeatures features_;
  unsigned buffer_size_;
};

}  // namespace tlsgate::io

namespace tlsgate::io {

// Control-plane socket helpers. They return -errno on failure.
// A listening socket with TCP_NODELAY, which the sockets it accepts inherit,
// and SO_REUSEPORT (one per shard share a port) unless `reuse_port` is false:
// a socket only one thread listens on (the admin listener) must not share its
// port with another process, nor be given one in use by the kernel's choice
// of port 0, which with SO_REUSEPORT may be another process's port.
int listen_socket(const sockaddr* addr, socklen_t len, int backlog, bool reuse_port = true);
// A non-blocking TCP socket for an upstream connection, with TCP_NODELAY.
int tcp_socket(int family);
// The port a socket is bound to (after binding port 0), or 0.
uint16_t local_port(int fd);
// "1.2.3.4" / "::1" of a connected peer, and its port if `port` is given;
// false if unknown.
bool peer_ip(int fd, char* out, size_t out_len, uint16_t* port = nullptr);

}  // namespace tlsgate::io
