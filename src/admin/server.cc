// The admin listener's thread: poll(2) over the listening socket, the open
// connections and a stop eventfd. Each connection reads one request head,
// gets one answer and is closed; each has kRequestTimeoutMs from its accept
// to the end of its answer.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "tlsgate/admin.hh"
#include "tlsgate/log.hh"

namespace tlsgate::admin {

namespace {

uint64_t now_ms() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

enum class Phase { Reading, Writing, Closing };

struct Client {
  int fd = -1;
  uint64_t deadline_ms = 0;
  Phase phase = Phase::Reading;
  std::string in;
  std::string out;  // the answer; set once the head is parsed
  size_t sent = 0;
};

std::string error_answer(int status, const char* why) {
  const char* reason = status == 414   ? "URI Too Long"
                       : status == 431 ? "Request Header Fields Too Large"
                       : status == 505 ? "HTTP Version Not Supported"
                                       : "Bad Request";
  const std::string body = std::string(why) + "\n";
  return "HTTP/1.1 " + std::to_string(status) + " " + reason +
         "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nConnection: close\r\n\r\n" + body;
}

bool would_block() { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }

// Reads until the head is complete; false when the connection is done
// with (closed by the peer, failed).
bool read_head(Client& c, const Handlers& handlers) {
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return false;
    if (n < 0) return would_block();
    c.in.append(buf, static_cast<size_t>(n));
    const ParseResult r = parse_request(c.in);
    if (r.status == ParseStatus::Incomplete) continue;
    c.out = r.status == ParseStatus::Done ? respond(r.request, handlers) : error_answer(r.error, r.why);
    c.in.clear();
    c.in.shrink_to_fit();
    c.phase = Phase::Writing;
    return true;
  }
}

// Sends what the socket takes. Once the answer is out, our side is shut
// down and whatever the client still sends is read and dropped until it
// closes: closing with unread bytes would reset the connection and could
// destroy the answer before the client read it.
bool write_answer(Client& c) {
  while (c.sent < c.out.size()) {
    const ssize_t n = ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) return would_block();
    c.sent += static_cast<size_t>(n);
  }
  ::shutdown(c.fd, SHUT_WR);
  c.out.clear();
  c.out.shrink_to_fit();
  c.phase = Phase::Closing;
  return true;
}

bool discard_input(Client& c) {
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return false;
    if (n < 0) return would_block();
  }
}

bool advance(Client& c, const Handlers& handlers) {
  switch (c.phase) {
    case Phase::Reading:
      if (!read_head(c, handlers)) return false;
      return c.phase == Phase::Reading || write_answer(c);
    case Phase::Writing: return write_answer(c);
    case Phase::Closing: return discard_input(c);
  }
  return false;
}

}  // namespace

Server::Server(int listen_fd, Handlers handlers)
    : listen_fd_(listen_fd), wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)), handlers_(std::move(handlers)) {
  if (wake_fd_ < 0) {
    ::close(listen_fd_);
    throw std::runtime_error("admin: eventfd failed");
  }
  thread_ = std::thread([this] { run(); });
}

Server::~Server() {
  const uint64_t one = 1;
  if (::write(wake_fd_, &one, sizeof one) < 0) LOG_WARN("admin", "cannot wake the admin thread");
  thread_.join();
  ::close(wake_fd_);
  ::close(listen_fd_);
}

void Server::run() {
  std::vector<Client> clients;
  std::vector<pollfd> fds;
  for (;;) {
    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    // Past kMaxConnections new clients wait in the listen backlog.
    fds.push_back({listen_fd_, static_cast<short>(clients.size() < kMaxConnections ? POLLIN : 0), 0});
    uint64_t now = now_ms();
    int timeout = -1;
    for (const Client& c : clients) {
      fds.push_back({c.fd, static_cast<short>(c.phase == Phase::Writing ? POLLOUT : POLLIN), 0});
      const int left = c.deadline_ms > now ? static_cast<int>(c.deadline_ms - now) : 0;
      timeout = timeout < 0 ? left : std::min(timeout, left);
    }
    if (::poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) {
      LOG_ERROR("admin", "poll failed: %s; the admin listener stops", std::strerror(errno));
      break;
    }
    if (fds[0].revents != 0) break;
    now = now_ms();
    std::vector<Client> kept;
    kept.reserve(clients.size() + 1);
    for (size_t i = 0; i < clients.size(); ++i) {
      Client& c = clients[i];
      const short ev = fds[i + 2].revents;
      bool keep = c.deadline_ms > now;
      if (keep && ev != 0) keep = advance(c, handlers_);
      if (keep) kept.push_back(std::move(c));
      else ::close(c.fd);
    }
    clients.swap(kept);
    if (fds[1].revents & POLLIN) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd >= 0) clients.push_back(Client{fd, now + kRequestTimeoutMs, Phase::Reading, {}, {}, 0});
    }
  }
  for (Client& c : clients) ::close(c.fd);
}

}  // namespace tlsgate::admin
