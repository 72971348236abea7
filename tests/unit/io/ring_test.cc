// io::Ring and the socket helpers, for real on loopback. Every wait is bounded
// by a guard timeout submitted through the ring itself, so a lost completion
// fails the test instead of hanging it.
//
// io_uring is required: if the kernel (or a seccomp policy) refuses
// io_uring_setup, the tests fail with the kernel's reason, they do not skip.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "tlsgate/io.hh"

namespace tlsgate::io {
namespace {

constexpr unsigned kBufferCount = 8;
constexpr unsigned kBufferSize = 4096;

constexpr uint64_t kAccept = 1;
constexpr uint64_t kRecv = 2;
constexpr uint64_t kSend = 3;
constexpr uint64_t kTimer = 4;
constexpr uint64_t kCancel = 5;
constexpr uint64_t kConnect = 6;
constexpr uint64_t kRead = 7;
constexpr uint64_t kGuardBase = 1000;

constexpr uint64_t kGuardMs = 5000;

class FdCloser {
 public:
  explicit FdCloser(int fd = -1) : fd_(fd) {}
  ~FdCloser() { reset(); }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// A plain blocking client with a receive timeout, so a test never blocks forever.
int blocking_client(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in a = loopback(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
    int err = errno;
    ::close(fd);
    return -err;
  }
  return fd;
}

bool send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

std::string recv_exactly(int fd, size_t len) {
  std::string out(len, '\0');
  size_t off = 0;
  while (off < len) {
    ssize_t n = ::recv(fd, out.data() + off, len - off, 0);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  out.resize(off);
  return out;
}

// Owns the ring and the completions reaped but not yet claimed by a test.
class Harness {
 public:
  // Fails (does not skip) if io_uring is refused; `ring` stays null then.
  explicit Harness(unsigned buffer_count = kBufferCount) {
    try {
      ring = std::make_unique<Ring>(64, buffer_count, kBufferSize);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "io_uring unavailable (the gateway needs it): " << e.what();
    }
  }

  // Waits until a completion with `ud` arrives, at most kGuardMs. Returns it,
  // or nullopt (with a test failure) on timeout or a ring error.
  std::optional<Completion> wait(uint64_t ud) {
    if (auto c = take(ud)) return c;
    const uint64_t guard = kGuardBase + ++guards_;
    ring->prep_timeout_ms(kGuardMs, guard);
    for (;;) {
      int rc = ring->submit_and_wait();
      if (rc < 0) {
        ADD_FAILURE() << "submit_and_wait: " << std::strerror(-rc);
        return std::nullopt;
      }
      Completion batch[16];
      unsigned n;
      while ((n = ring->reap(batch, 16)) > 0) {
        for (unsigned i = 0; i < n; ++i) {
          if (batch[i].user_data == guard) {
            expired_guard_ = true;
          } else if (batch[i].user_data < kGuardBase) {
            ready_.push_back(batch[i]);
          }
        }
      }
      if (auto c = take(ud)) return c;
      if (expired_guard_) {
        expired_guard_ = false;
        ADD_FAILURE() << "no completion for user_data " << ud << " within " << kGuardMs << " ms";
        return std::nullopt;
      }
    }
  }

  std::unique_ptr<Ring> ring;

 private:
  std::optional<Completion> take(uint64_t ud) {
    for (auto it = ready_.begin(); it != ready_.end(); ++it) {
      if (it->user_data == ud) {
        Completion c = *it;
        ready_.erase(it);
        return c;
      }
    }
    return std::nullopt;
  }

  std::vector<Completion> ready_;
  uint64_t guards_ = 0;
  bool expired_guard_ = false;
};

#define REQUIRE_RING(h) \
  if (!(h).ring) return

int listen_loopback() {
  sockaddr_in a = loopback(0);
  return listen_socket(reinterpret_cast<sockaddr*>(&a), sizeof a, 16);
}

TEST(Ring, RejectsBufferCountThatIsNotAPowerOfTwo) {
  EXPECT_THROW(Ring(8, 3, 4096), std::invalid_argument);
  EXPECT_THROW(Ring(8, 0, 4096), std::invalid_argument);
}

TEST(Ring, FeaturesAreDescribed) {
  Harness h;
  REQUIRE_RING(h);
  std::string d = h.ring->features().describe();
  for (const char* name : {"single_issuer", "defer_taskrun", "coop_taskrun", "registered_fd"})
    EXPECT_NE(d.find(name), std::string::npos) << d;
  EXPECT_EQ(h.ring->buffer_size(), kBufferSize);
}

TEST(Sockets, ListenOnPortZeroReportsTheBoundPort) {
  FdCloser a(listen_loopback());
  ASSERT_GE(a.get(), 0) << std::strerror(-a.get());
  uint16_t port = local_port(a.get());
  EXPECT_NE(port, 0);
  // SO_REUSEPORT: a second shard's socket can share the port.
  sockaddr_in same = loopback(port);
  FdCloser b(listen_socket(reinterpret_cast<sockaddr*>(&same), sizeof same, 16));
  ASSERT_GE(b.get(), 0) << std::strerror(-b.get());
  EXPECT_EQ(local_port(b.get()), port);
  // The listening socket is non-blocking (the ring does the waiting).
  EXPECT_NE(::fcntl(a.get(), F_GETFL) & O_NONBLOCK, 0);
}

TEST(Sockets, AcceptedConnectionsHaveNoDelay) {
  // The shard sets no option on an accepted socket: Nagle must already be off,
  // or a small response waits for the client's delayed ACK (up to 40 ms).
  FdCloser l(listen_loopback());
  ASSERT_GE(l.get(), 0) << std::strerror(-l.get());
  sockaddr_in a = loopback(local_port(l.get()));
  FdCloser c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  pollfd pfd{l.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 5000), 1);
  FdCloser s(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_GE(s.get(), 0) << std::strerror(errno);
  int v = 0;
  socklen_t len = sizeof v;
  ASSERT_EQ(::getsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &v, &len), 0);
  EXPECT_EQ(v, 1);
}

TEST(Sockets, ListenFailureReturnsNegativeErrno) {
  // A port held by a socket without SO_REUSEPORT cannot be shared.
  FdCloser plain(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = loopback(0);
  ASSERT_EQ(::bind(plain.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(plain.get(), 4), 0);
  sockaddr_in taken = loopback(local_port(plain.get()));
  int fd = listen_socket(reinterpret_cast<sockaddr*>(&taken), sizeof taken, 16);
  EXPECT_EQ(fd, -EADDRINUSE);
  if (fd >= 0) ::close(fd);
}

TEST(Sockets, LocalPortAndPeerIpOfUnconnectedSockets) {
  FdCloser s(::socket(AF_INET, SOCK_STREAM, 0));
  char buf[64];
  EXPECT_FALSE(peer_ip(s.get(), buf, sizeof buf));
  EXPECT_EQ(local_port(-1), 0);
  EXPECT_FALSE(peer_ip(-1, buf, sizeof buf));
}

TEST(Ring, AcceptRecvSendCancelOnLoopback) {
  Harness h;
  REQUIRE_RING(h);
  Ring& ring = *h.ring;

  FdCloser lfd(listen_loopback());
  ASSERT_GE(lfd.get(), 0) << std::strerror(-lfd.get());
  const uint16_t port = local_port(lfd.get());
  ASSERT_NE(port, 0);

  ring.prep_accept_multishot(lfd.get(), kAccept);
  FdCloser client(blocking_client(port));
  ASSERT_GE(client.get(), 0) << std::strerror(-client.get());

  auto acc = h.wait(kAccept);
  ASSERT_TRUE(acc);
  ASSERT_GE(acc->res, 0) << std::strerror(-acc->res);
  EXPECT_TRUE(acc->more()) << "multishot accept must stay armed";
  EXPECT_EQ(acc->buffer_id(), -1);
  FdCloser conn(acc->res);
  // Accepted sockets are non-blocking.
  EXPECT_NE(::fcntl(conn.get(), F_GETFL) & O_NONBLOCK, 0);

  char ip[INET6_ADDRSTRLEN];
  ASSERT_TRUE(peer_ip(conn.get(), ip, sizeof ip));
  EXPECT_STREQ(ip, "127.0.0.1");

  // The same accept submission delivers the next connection too.
  FdCloser client2(blocking_client(port));
  ASSERT_GE(client2.get(), 0);
  auto acc2 = h.wait(kAccept);
  ASSERT_TRUE(acc2);
  ASSERT_GE(acc2->res, 0) << std::strerror(-acc2->res);
  EXPECT_TRUE(acc2->more());
  FdCloser conn2(acc2->res);

  // Multishot receive into provided buffers. More messages than buffers: only
  // works if recycle() really hands buffers back.
  ring.prep_recv_multishot(conn.get(), kRecv);
  std::vector<int> seen_ids;
  for (int i = 0; i < 3 * static_cast<int>(kBufferCount); ++i) {
    std::string msg = "message " + std::to_string(i);
    ASSERT_TRUE(send_all(client.get(), msg));
    std::string got;
    while (got.size() < msg.size()) {
      auto rc = h.wait(kRecv);
      ASSERT_TRUE(rc);
      ASSERT_GT(rc->res, 0) << "recv: " << std::strerror(-rc->res);
      ASSERT_TRUE(rc->more()) << "multishot recv ended early, res=" << rc->res;
      int id = rc->buffer_id();
      ASSERT_GE(id, 0);
      ASSERT_LT(id, static_cast<int>(kBufferCount));
      ASSERT_LE(static_cast<unsigned>(rc->res), ring.buffer_size());
      seen_ids.push_back(id);
      got.append(reinterpret_cast<const char*>(ring.buffer(id)), static_cast<size_t>(rc->res));
      ring.recycle(id);
    }
    EXPECT_EQ(got, msg);
  }
  EXPECT_GE(seen_ids.size(), 3 * kBufferCount);

  // A payload larger than one buffer arrives in several completions, in order.
  std::string big(3 * kBufferSize + 123, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  ASSERT_TRUE(send_all(client.get(), big));
  std::string got_big;
  int pieces = 0;
  while (got_big.size() < big.size()) {
    auto rc = h.wait(kRecv);
    ASSERT_TRUE(rc);
    ASSERT_GT(rc->res, 0) << std::strerror(-rc->res);
    ASSERT_GE(rc->buffer_id(), 0);
    got_big.append(reinterpret_cast<const char*>(ring.buffer(rc->buffer_id())), static_cast<size_t>(rc->res));
    ring.recycle(rc->buffer_id());
    ++pieces;
  }
  EXPECT_EQ(got_big, big);
  EXPECT_GE(pieces, 4);

  // sendmsg with two iovecs back to the client.
  std::string part1 = "reply-", part2 = "with-two-iovecs";
  iovec iov[2] = {{part1.data(), part1.size()}, {part2.data(), part2.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  ring.prep_sendmsg(conn.get(), &msg, kSend);
  auto sc = h.wait(kSend);
  ASSERT_TRUE(sc);
  EXPECT_EQ(sc->res, static_cast<int32_t>(part1.size() + part2.size())) << std::strerror(-sc->res);
  EXPECT_FALSE(sc->more());
  EXPECT_EQ(recv_exactly(client.get(), part1.size() + part2.size()), part1 + part2);

  // Cancelling by fd ends the multishot receive: -ECANCELED, no more.
  ring.prep_cancel_fd(conn.get(), kCancel);
  auto cc = h.wait(kCancel);
  ASSERT_TRUE(cc);
  EXPECT_GE(cc->res, 1) << "cancel found nothing: " << std::strerror(-cc->res);
  auto rc = h.wait(kRecv);
  ASSERT_TRUE(rc);
  EXPECT_EQ(rc->res, -ECANCELED);
  EXPECT_FALSE(rc->more());

  // The accept on the listening socket is still armed after that.
  FdCloser client3(blocking_client(port));
  ASSERT_GE(client3.get(), 0);
  auto acc3 = h.wait(kAccept);
  ASSERT_TRUE(acc3);
  ASSERT_GE(acc3->res, 0);
  FdCloser conn3(acc3->res);

  // Cancel the accept too, so nothing refers to the listening socket.
  ring.prep_cancel_fd(lfd.get(), kCancel);
  auto cc2 = h.wait(kCancel);
  ASSERT_TRUE(cc2);
  EXPECT_GE(cc2->res, 1);
  auto acc_end = h.wait(kAccept);
  ASSERT_TRUE(acc_end);
  EXPECT_EQ(acc_end->res, -ECANCELED);
  EXPECT_FALSE(acc_end->more());
}

TEST(Ring, PeerCloseEndsMultishotRecvWithZero) {
  Harness h;
  REQUIRE_RING(h);
  FdCloser lfd(listen_loopback());
  ASSERT_GE(lfd.get(), 0);
  h.ring->prep_accept_multishot(lfd.get(), kAccept);
  FdCloser client(blocking_client(local_port(lfd.get())));
  ASSERT_GE(client.get(), 0);
  auto acc = h.wait(kAccept);
  ASSERT_TRUE(acc);
  ASSERT_GE(acc->res, 0);
  FdCloser conn(acc->res);

  h.ring->prep_recv_multishot(conn.get(), kRecv);
  ASSERT_TRUE(send_all(client.get(), "last words"));
  client.reset();  // FIN after the data
  std::string got;
  for (;;) {
    auto rc = h.wait(kRecv);
    ASSERT_TRUE(rc);
    if (rc->res == 0) {
      EXPECT_FALSE(rc->more()) << "EOF must end the multishot receive";
      break;
    }
    ASSERT_GT(rc->res, 0) << std::strerror(-rc->res);
    got.append(reinterpret_cast<const char*>(h.ring->buffer(rc->buffer_id())), static_cast<size_t>(rc->res));
    h.ring->recycle(rc->buffer_id());
    if (!rc->more()) {
      // The kernel may end the multishot with the data and report EOF on a
      // new receive; re-arm as the shard does.
      h.ring->prep_recv_multishot(conn.get(), kRecv);
    }
  }
  EXPECT_EQ(got, "last words");
  h.ring->prep_cancel_fd(lfd.get(), kCancel);
  ASSERT_TRUE(h.wait(kCancel));
  ASSERT_TRUE(h.wait(kAccept));
}

TEST(Ring, TimeoutCompletesWithEtimeAfterItsDuration) {
  Harness h;
  REQUIRE_RING(h);
  auto start = std::chrono::steady_clock::now();
  h.ring->prep_timeout_ms(30, kTimer);
  auto tc = h.wait(kTimer);
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(tc);
  EXPECT_EQ(tc->res, -ETIME);
  EXPECT_GE(elapsed, std::chrono::milliseconds(29));

  // Several timeouts queued in one turn each keep their own duration.
  start = std::chrono::steady_clock::now();
  h.ring->prep_timeout_ms(60, kTimer + 100);
  h.ring->prep_timeout_ms(10, kTimer);
  tc = h.wait(kTimer);
  ASSERT_TRUE(tc);
  EXPECT_EQ(tc->res, -ETIME);
  auto late = h.wait(kTimer + 100);
  elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(late);
  EXPECT_EQ(late->res, -ETIME);
  EXPECT_GE(elapsed, std::chrono::milliseconds(59));
}

TEST(Ring, ConnectAndReadThroughTheRing) {
  Harness h;
  REQUIRE_RING(h);
  FdCloser lfd(listen_loopback());
  ASSERT_GE(lfd.get(), 0);
  const uint16_t port = local_port(lfd.get());

  FdCloser up(tcp_socket(AF_INET));
  ASSERT_GE(up.get(), 0) << std::strerror(-up.get());
  sockaddr_in to = loopback(port);
  h.ring->prep_connect(up.get(), reinterpret_cast<sockaddr*>(&to), sizeof to, kConnect);
  auto cc = h.wait(kConnect);
  ASSERT_TRUE(cc);
  EXPECT_EQ(cc->res, 0) << std::strerror(-cc->res);

  // A connection refused is reported as -ECONNREFUSED, not a hang.
  uint16_t closed_port = 0;
  {
    FdCloser tmp(listen_loopback());
    closed_port = local_port(tmp.get());
  }
  FdCloser refused(tcp_socket(AF_INET));
  sockaddr_in nowhere = loopback(closed_port);
  h.ring->prep_connect(refused.get(), reinterpret_cast<sockaddr*>(&nowhere), sizeof nowhere, kConnect);
  cc = h.wait(kConnect);
  ASSERT_TRUE(cc);
  EXPECT_EQ(cc->res, -ECONNREFUSED);

  // prep_read into the caller's own buffer.
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  FdCloser rd(p[0]), wr(p[1]);
  char buf[32] = {};
  h.ring->prep_read(rd.get(), buf, sizeof buf, kRead);
  ASSERT_EQ(::write(wr.get(), "pipe bytes", 10), 10);
  auto rc = h.wait(kRead);
  ASSERT_TRUE(rc);
  EXPECT_EQ(rc->res, 10);
  EXPECT_EQ(rc->buffer_id(), -1);
  EXPECT_EQ(std::string(buf, 10), "pipe bytes");
}

}  // namespace
}  // namespace tlsgate::io
