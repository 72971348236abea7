#include "tlsgate/dns.hh"

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "tlsgate/log.hh"

namespace tlsgate::upstream {

namespace {

uint64_t mono_ms() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

}  // namespace

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
