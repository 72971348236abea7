// Re-resolution of endpoints written as DNS names (a Kubernetes headless
// service): one thread outside the shards runs getaddrinfo, so DNS never
// blocks a shard, and hands every changed address set to a callback (which
// forwards it to each shard's mailbox).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tlsgate/config.hh"

namespace tlsgate::upstream {

// Every IPv4/IPv6 address getaddrinfo gives for `host`, with `port`,
// deduplicated, in the resolver's order; text is "IP:port" / "[IP]:port".
// Throws std::invalid_argument("cannot resolve \"host\": <reason>").
// Blocks on DNS: never call it on a shard.
std::vector<config::SocketAddress> resolve_all(const std::string& host, uint16_t port);
// The first of them (a config::Resolver: main installs it for loading).
config::SocketAddress resolve_first(const std::string& host, uint16_t port);

class DnsWatcher {
 public:
  using Resolve = std::function<std::vector<config::SocketAddress>(const std::string& host, uint16_t port)>;
  // (cluster index, dns name index, the new addresses); never empty: a
  // failed or empty answer keeps the previous set (logged).
  using Publish = std::function<void(uint32_t, uint32_t, std::vector<config::SocketAddress>)>;

  DnsWatcher(const config::Config& cfg, Publish publish, Resolve resolve = resolve_all);
  ~DnsWatcher();  // stops the thread
  DnsWatcher(const DnsWatcher&) = delete;
  DnsWatcher& operator=(const DnsWatcher&) = delete;

  // Starts the thread if any cluster has a DNS name.
  void start();
  void stop();
  // One pass over the names that are due (what the thread does each time).
  void refresh(uint64_t now_ms);

 private:
  struct Name {
    uint32_t cluster;
    uint32_t name;
    std::string host;
    uint16_t port;
    uint64_t interval_ms;
    uint64_t next_ms = 0;
    std::vector<std::string> last;  // sorted address texts last published
  };
  void run();
  std::vector<Name> names_;
  Publish publish_;
  Resolve resolve_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace tlsgate::upstream
