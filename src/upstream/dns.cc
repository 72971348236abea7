#include "tlsgate/dns.hh"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include "tlsgate/log.hh"

namespace tlsgate::upstream {

namespace {

uint64_t mono_ms() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

}  // namespace

std::vector<config::SocketAddress> resolve_all(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0) {
    std::string reason = rc == EAI_SYSTEM ? std::generic_category().message(errno) : ::gai_strerror(rc);
    throw std::invalid_argument("cannot resolve \"" + host + "\": " + reason);
  }
  std::vector<config::SocketAddress> out;
  for (const addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) || ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
    config::SocketAddress a;
    std::memcpy(&a.storage, ai->ai_addr, ai->ai_addrlen);
    a.length = ai->ai_addrlen;
    char ip[INET6_ADDRSTRLEN] = "?";
    char text[INET6_ADDRSTRLEN + 10];
    // snprintf rather than string concatenation: GCC 12 at -O3 reports a
    // false -Wrestrict on the latter.
    if (a.family() == AF_INET) {
      auto& sin = reinterpret_cast<sockaddr_in&>(a.storage);
      sin.sin_port = htons(port);
      inet_ntop(AF_INET, &sin.sin_addr, ip, sizeof ip);
      std::snprintf(text, sizeof text, "%s:%u", ip, static_cast<unsigned>(port));
    } else {
      auto& sin6 = reinterpret_cast<sockaddr_in6&>(a.storage);
      sin6.sin6_port = htons(port);
      inet_ntop(AF_INET6, &sin6.sin6_addr, ip, sizeof ip);
      std::snprintf(text, sizeof text, "[%s]:%u", ip, static_cast<unsigned>(port));
    }
    a.text = text;
    if (std::none_of(out.begin(), out.end(), [&](const config::SocketAddress& b) { return b.text == a.text; }))
      out.push_back(std::move(a));
  }
  ::freeaddrinfo(res);
  return out;
}

config::SocketAddress resolve_first(const std::string& host, uint16_t port) {
  std::vector<config::SocketAddress> all = resolve_all(host, port);
  if (all.empty()) throw std::invalid_argument("cannot resolve \"" + host + "\": no IPv4 or IPv6 address");
  return std::move(all.front());
}

DnsWatcher::DnsWatcher(const config::Config& cfg, Publish publish, Resolve resolve)
    : publish_(std::move(publish)), resolve_(std::move(resolve)) {
  for (size_t c = 0; c < cfg.clusters.size(); ++c) {
    const config::Cluster& cl = cfg.clusters[c];
    for (size_t n = 0; n < cl.dns_names.size(); ++n) {
      Name name{static_cast<uint32_t>(c), static_cast<uint32_t>(n), cl.dns_names[n].host, cl.dns_names[n].port,
                static_cast<uint64_t>(cl.dns_refresh.count()), 0, {}};
      // The shards start with the address found at load; the first refresh
      // publishes the full set.
      for (size_t e = 0; e < cl.endpoints.size(); ++e)
        if (cl.endpoint_name[e] == static_cast<int>(n)) name.last.push_back(cl.endpoints[e].text);
      names_.push_back(std::move(name));
    }
  }
}

DnsWatcher::~DnsWatcher() { stop(); }

void DnsWatcher::start() {
  if (names_.empty() || thread_.joinable()) return;
  thread_ = std::thread([this] { run(); });
}

void DnsWatcher::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void DnsWatcher::refresh(uint64_t now) {
  for (Name& n : names_) {
    if (now < n.next_ms) continue;
    n.next_ms = now + n.interval_ms;
    std::vector<config::SocketAddress> addrs;
    try {
      addrs = resolve_(n.host, n.port);
    } catch (const std::exception& e) {
      LOG_WARN("dns", "%s: %s; keeping the previous addresses", n.host.c_str(), e.what());
      continue;
    }
    if (addrs.empty()) {
      LOG_WARN("dns", "%s: no addresses; keeping the previous ones", n.host.c_str());
      continue;
    }
    std::vector<std::string> texts;
    for (const auto& a : addrs) texts.push_back(a.text);
    std::sort(texts.begin(), texts.end());
    if (texts == n.last) continue;
    std::string list;
    for (const auto& t : texts) {
      if (!list.empty()) list += ", ";
      list += t;
    }
    LOG_INFO("dns", "%s:%u now resolves to %s", n.host.c_str(), n.port, list.c_str());
    n.last = std::move(texts);
    publish_(n.cluster, n.name, std::move(addrs));
  }
}

void DnsWatcher::run() {
  for (;;) {
    uint64_t now = mono_ms();
    refresh(now);
    uint64_t next = UINT64_MAX;
    for (const Name& n : names_) next = std::min(next, n.next_ms);
    std::unique_lock<std::mutex> lock(mu_);
    if (cv_.wait_for(lock, std::chrono::milliseconds(next > now ? next - now : 0), [this] { return stopping_; })) return;
  }
}

}  // namespace tlsgate::upstream
