// Fuzz target for the configuration parser: any bytes in, either a Config or a
// ConfigError out. Anything else escaping (another exception, a crash, a
// sanitizer report) is a bug in src/config.
//
// Host names in endpoints go to a fake resolver ("localhost" resolves, nothing
// else does), so fuzzing never sends DNS queries. Seeds that should parse all
// the way name /tmp/tlsgate_config_fuzz/server.{crt,key}, created here.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/stat.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <string_view>

#include "tlsgate/config.hh"

namespace {

using tlsgate::config::SocketAddress;

SocketAddress fake_resolver(const std::string& host, uint16_t port) {
  if (host != "localhost") {
    throw std::invalid_argument("cannot resolve \"" + host + "\": Name or service not known");
  }
  SocketAddress a;
  auto& sin = reinterpret_cast<sockaddr_in&>(a.storage);
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.length = sizeof sin;
  return a;
}

void write_if_missing(const char* path, const char* text) {
  struct stat st {};
  if (stat(path, &st) == 0) return;
  if (FILE* f = std::fopen(path, "w")) {
    std::fputs(text, f);
    std::fclose(f);
  }
}

bool set_up() {
  tlsgate::config::set_resolver(fake_resolver);
  mkdir("/tmp/tlsgate_config_fuzz", 0755);
  write_if_missing("/tmp/tlsgate_config_fuzz/server.crt",
                   "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n");
  write_if_missing("/tmp/tlsgate_config_fuzz/server.key",
                   "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n");
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool ready = set_up();
  (void)ready;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    tlsgate::config::Config cfg = tlsgate::config::parse(text, "fuzz.toml");
    // A Config that parsed must satisfy what the rest of the program relies on.
    if (cfg.listeners.empty() || cfg.clusters.empty() || cfg.workers < 1 || cfg.workers > 256) {
      __builtin_trap();
    }
    for (const auto& l : cfg.listeners) {
      if (cfg.find_cluster(l.cluster) == nullptr || l.listen.length == 0) __builtin_trap();
      if (l.handshake_timeout.count() <= 0 || l.idle_timeout.count() <= 0) __builtin_trap();
      if (l.max_concurrent_streams < 1 || l.max_concurrent_streams > 0x7fffffffu) __builtin_trap();
      if (l.listen_origin.line == 0 || l.tls.certificates.at(0).certificate_origin.line == 0) __builtin_trap();
    }
    for (const auto& c : cfg.clusters) {
      if (c.endpoints.empty() || c.connect_timeout.count() <= 0) __builtin_trap();
      for (const auto& e : c.endpoints) {
        if (e.port() == 0 || e.length == 0) __builtin_trap();
      }
    }
  } catch (const tlsgate::config::ConfigError& e) {
    // The expected outcome for bad input: one line.
    if (std::string_view(e.what()).find('\n') != std::string_view::npos) __builtin_trap();
  } catch (const std::invalid_argument&) {
    // The other type the API documents (parse_duration/parse_address). parse()
    // wraps those into ConfigError, so nothing should land here either.
  }
  return 0;
}
