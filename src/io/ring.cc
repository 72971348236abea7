#include <liburing.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#include "tlsgate/io.hh"
#include "tlsgate/log.hh"

namespace tlsgate::io {

namespace {
constexpr int kBufferGroup = 0;

std::string errno_text(int err) { return std::strerror(err < 0 ? -err : err); }
}  // namespace

bool Completion::more() const { return (flags & IORING_CQE_F_MORE) != 0; }

int Completion::buffer_id() const {
  if ((flags & IORING_CQE_F_BUFFER) == 0) return -1;
  return static_cast<int>(flags >> IORING_CQE_BUFFER_SHIFT);
}

std::string RingFeatures::describe() const {
  std::string s;
  auto add = [&](bool on, const char* name) {
    if (!s.empty()) s += ' ';
    s += on ? "+" : "-";
    s += name;
  };
  add(single_issuer, "single_issuer");
  add(defer_taskrun, "defer_taskrun");
  add(coop_taskrun, "coop_taskrun");
  add(registered_fd, "registered_fd");
  return s;
}

struct Ring::Impl {
  io_uring ring{};
  io_uring_buf_ring* buf_ring = nullptr;
  size_t buf_ring_bytes = 0;
  uint8_t* buffers = nullptr;
  size_t buffers_bytes = 0;
  unsigned buffer_count = 0;
  unsigned buffer_size = 0;
  // Timeouts: the kernel reads the timespec when the SQE is submitted, and we
  // submit once per loop turn, so a small array of slots suffices.
  __kernel_timespec timeouts[64]{};
  unsigned next_timeout = 0;

  io_uring_sqe* sqe() {
    io_uring_sqe* s = io_uring_get_sqe(&ring);
    if (s == nullptr) {
      // The submission queue is full: push what we have, then retry. This is
      // rare (the ring is sized for a loop turn's batch).
      io_uring_submit(&ring);
      next_timeout = 0;
      s = io_uring_get_sqe(&ring);
    }
    if (s == nullptr) throw std::runtime_error("io_uring: submission queue exhausted");
    return s;
  }

  ~Impl() {
    if (buf_ring) {
      io_uring_unregister_buf_ring(&ring, kBufferGroup);
      munmap(buf_ring, buf_ring_bytes);
    }
    if (buffers) munmap(buffers, buffers_bytes);
    if (ring.ring_fd > 0) io_uring_queue_exit(&ring);
  }
};

Ring::Ring(unsigned entries, unsigned buffer_count, unsigned buffer_size)
    : impl_(std::make_unique<Impl>()), buffer_size_(buffer_size) {
  if (buffer_count == 0 || (buffer_count & (buffer_count - 1)) != 0)
    throw std::invalid_argument("io_uring: buffer count must be a power of two");

  // Best flags first, then fall back one at a time; say what was missing.
  struct Attempt {
    unsigned flags;
    RingFeatures f;
  };
  const Attempt attempts[] = {
      {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, {true, true, false, false}},
      {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN, {true, false, true, false}},
      {IORING_SETUP_COOP_TASKRUN, {false, false, true, false}},
      {0, {}},
  };
  int rc = -EINVAL;
  for (const Attempt& a : attempts) {
    io_uring_params p{};
    p.flags = a.flags | IORING_SETUP_CQSIZE;
    p.cq_entries = entries * 4;
    rc = io_uring_queue_init_params(entries, &impl_->ring, &p);
    if (rc == 0) {
      features_ = a.f;
      break;
    }
  }
  if (rc < 0) throw std::runtime_error("io_uring_queue_init failed: " + errno_text(rc));
  features_.registered_fd = io_uring_register_ring_fd(&impl_->ring) == 1;

  // Provided-buffer ring, set up by hand (io_uring_setup_buf_ring is 2.4+).
  impl_->buffer_count = buffer_count;
  impl_->buffer_size = buffer_size;
  impl_->buf_ring_bytes = sizeof(io_uring_buf) * buffer_count;
  void* br = mmap(nullptr, impl_->buf_ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (br == MAP_FAILED) throw std::runtime_error("io_uring: mmap of buffer ring failed: " + errno_text(errno));
  impl_->buf_ring = static_cast<io_uring_buf_ring*>(br);
  impl_->buffers_bytes = static_cast<size_t>(buffer_count) * buffer_size;
  void* bufs = mmap(nullptr, impl_->buffers_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (bufs == MAP_FAILED) throw std::runtime_error("io_uring: mmap of buffers failed: " + errno_text(errno));
  impl_->buffers = static_cast<uint8_t*>(bufs);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(impl_->buf_ring);
  reg.ring_entries = buffer_count;
  reg.bgid = kBufferGroup;
  rc = io_uring_register_buf_ring(&impl_->ring, &reg, 0);
  if (rc < 0) {
    munmap(impl_->buf_ring, impl_->buf_ring_bytes);
    impl_->buf_ring = nullptr;
    throw std::runtime_error("io_uring: provided buffer rings are not supported by this kernel (need 5.19+): " +
                             errno_text(rc));
  }
  io_uring_buf_ring_init(impl_->buf_ring);
  const int mask = io_uring_buf_ring_mask(buffer_count);
  for (unsigned i = 0; i < buffer_count; ++i)
    io_uring_buf_ring_add(impl_->buf_ring, impl_->buffers + static_cast<size_t>(i) * buffer_size, buffer_size, i,
                          mask, i);
  io_uring_buf_ring_advance(impl_->buf_ring, buffer_count);
}

Ring::~Ring() = default;

void Ring::prep_accept_multishot(int listen_fd, uint64_t ud) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_multishot_accept(s, listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data64(s, ud);
}

void Ring::prep_accept_once(int listen_fd, uint64_t ud) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_accept(s, listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data64(s, ud);
}

// Both receive kinds take a buffer from the provided-buffer ring.
static void select_buffer(io_uring_sqe* s, uint64_t ud) {
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = kBufferGroup;
  io_uring_sqe_set_data64(s, ud);
}

void Ring::prep_recv_multishot(int fd, uint64_t ud) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_recv_multishot(s, fd, nullptr, 0, 0);
  select_buffer(s, ud);
}

void Ring::prep_recv_once(int fd, uint64_t ud) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_recv(s, fd, nullptr, 0, 0);
  select_buffer(s, ud);
}

void Ring::prep_read(int fd, void* buf, unsigned len, uint64_t ud) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_read(s, fd, buf, len, 0);
  io_uring_sqe_set_data64(s, ud);
}

void Ring::prep_sendmsg(int fd, const msghdr* msg, uint64_t ud) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_sendmsg(s, fd, msg, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(s, ud);
}

void Ring::prep_connect(int fd, const sockaddr* addr, socklen_t len, uint64_t ud) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_connect(s, fd, addr, len);
  io_uring_sqe_set_data64(s, ud);
}

void Ring::prep_timeout_ms(uint64_t ms, uint64_t ud) {
  unsigned slot = impl_->next_timeout++ % (sizeof impl_->timeouts / sizeof impl_->timeouts[0]);
  __kernel_timespec& ts = impl_->timeouts[slot];
  ts.tv_sec = static_cast<long long>(ms / 1000);
  ts.tv_nsec = static_cast<long long>((ms % 1000) * 1'000'000);
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_timeout(s, &ts, 0, 0);
  io_uring_sqe_set_data64(s, ud);
}

void Ring::prep_cancel_fd(int fd, uint64_t ud) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_cancel_fd(s, fd, IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(s, ud);
}

uint8_t* Ring::buffer(int id) { return impl_->buffers + static_cast<size_t>(id) * impl_->buffer_size; }

void Ring::recycle(int id) {
  const int mask = io_uring_buf_ring_mask(impl_->buffer_count);
  io_uring_buf_ring_add(impl_->buf_ring, buffer(id), impl_->buffer_size, static_cast<unsigned short>(id), mask, 0);
  io_uring_buf_ring_advance(impl_->buf_ring, 1);
}

int Ring::submit_and_wait() {
  int rc = io_uring_submit_and_wait(&impl_->ring, 1);
  impl_->next_timeout = 0;
  if (rc < 0 && rc != -EINTR && rc != -ETIME && rc != -EAGAIN && rc != -EBUSY) return rc;
  return 0;
}

unsigned Ring::reap(Completion* out, unsigned max) {
  unsigned n = 0;
  unsigned head;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(&impl_->ring, head, cqe) {
    if (n == max) break;
    out[n].user_data = cqe->user_data;
    out[n].res = cqe->res;
    out[n].flags = cqe->flags;
    ++n;
  }
  io_uring_cq_advance(&impl_->ring, n);
  return n;
}

}  // namespace tlsgate::io
