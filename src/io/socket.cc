#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "tlsgate/io.hh"

namespace tlsgate::io {

int listen_socket(const sockaddr* addr, socklen_t len, int backlog, bool reuse_port) {
  int fd = ::socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  // SO_REUSEPORT: every shard has its own socket on the port and the kernel
  // spreads new connections across them.
  // TCP_NODELAY here: accepted sockets inherit it, one syscall fewer per connection.
  if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      (reuse_port && ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) ||
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
    int err = errno;
    ::close(fd);
    return -err;
  }
  if (addr->sa_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (::bind(fd, addr, len) < 0 || ::listen(fd, backlog) < 0) {
    int err = errno;
    ::close(fd);
    return -err;
  }
  return fd;
}

int tcp_socket(int family) {
  int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

uint16_t local_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return 0;
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return 0;
}

bool peer_ip(int fd, char* out, size_t out_len, uint16_t* port) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return false;
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    if (port != nullptr) *port = ntohs(a->sin_port);
    return ::inet_ntop(AF_INET, &a->sin_addr, out, out_len) != nullptr;
  }
  if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    if (port != nullptr) *port = ntohs(a->sin6_port);
    return ::inet_ntop(AF_INET6, &a->sin6_addr, out, out_len) != nullptr;
  }
  return false;
}

}  // namespace tlsgate::io
