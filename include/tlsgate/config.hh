// Configuration: the one TOML file, parsed and validated before anything is
// served. toml++ is used only in src/config/; the rest of the program sees the
// plain structs below.
//
// Contract: load_file()/parse() either return a fully validated Config, or
// throw ConfigError whose what() is one line naming file, line, column and
// key, e.g.
//   demo.toml:12:15: listeners[0].tls.certificate: cannot read 'x.crt': No such file or directory
// Everything that can be checked without starting to serve is checked here
// (types, unknown keys, ranges, enums, addresses, files readable, references
// between listeners and clusters). Loading keys into OpenSSL and binding
// sockets happen later; those errors use Origin::to_string() to name the key.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tlsgate::config {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Where a value came from, for messages raised after parsing.
struct Origin {
  std::string file;
  std::string key;  // "listeners[0].tls.private_key"
  uint32_t line = 0;
  uint32_t column = 0;
  // "demo.toml:12:15: listeners[0].tls.private_key"
  std::string to_string() const;
};

// A numeric socket address (IPv4 or IPv6), already resolved.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  std::string text;  // as written, e.g. "127.0.0.1:8443" or "[::1]:8443"
  uint16_t port() const;
  int family() const { return storage.ss_family; }
};

enum class ProxyProtocol { Off, V1, V2, Auto };
enum class Ktls { Auto, On, Off };
enum class TlsVersion { Tls12, Tls13 };
enum class LbPolicy { RoundRobin, P2c };

const char* to_string(ProxyProtocol v);
const char* to_string(Ktls v);
const char* to_string(TlsVersion v);
const char* to_string(LbPolicy v);

struct TlsSettings {
  std::string certificate;  // path, PEM chain (leaf first)
  std::string private_key;  // path, PEM
  std::vector<std::string> alpn{"h2", "http/1.1"};
  TlsVersion min_version = TlsVersion::Tls12;
  Ktls ktls = Ktls::Auto;
  Origin certificate_origin;
  Origin private_key_origin;
  Origin ktls_origin;
};

struct Listener {
  std::string name;
  SocketAddress listen;
  Origin listen_origin;
  ProxyProtocol proxy_protocol = ProxyProtocol::Off;
  std::string cluster;  // name of the default cluster; validated to exist
  TlsSettings tls;
  std::chrono::milliseconds handshake_timeout{10'000};
  std::chrono::milliseconds idle_timeout{300'000};
  uint32_t max_concurrent_streams = 1000;  // advertised to clients
};

struct Cluster {
  std::string name;
  std::vector<SocketAddress> endpoints;  // numeric host:port, or names resolved at load
  LbPolicy lb = LbPolicy::RoundRobin;
  std::chrono::milliseconds connect_timeout{2'000};
};

struct Admin {
  bool enabled = false;
  SocketAddress listen;
  Origin listen_origin;
};

struct Config {
  std::string path;
  unsigned workers = 1;  // "auto" resolved to the number of online CPUs
  bool workers_auto = false;
  Admin admin;
  std::vector<Listener> listeners;
  std::vector<Cluster> clusters;

  const Cluster* find_cluster(std::string_view name) const;
};

// Parses and validates. Relative file paths in the config are relative to the
// current working directory, as in the DESIGN.md example
// (`certificate = "conf/certs/server.crt"` with tlsgate started from the repo).
Config load_file(const std::string& path);
// Same, from text; `name` is used in messages. Files named inside are checked.
Config parse(std::string_view text, const std::string& name);

// "10s", "250ms", "5m", "1h" -> milliseconds. Throws std::invalid_argument.
// Digits and a unit (ms, s, m, h) only: no sign, no fraction, no bare number.
// At most 8760h (365 days), so adding one to any clock cannot overflow.
std::chrono::milliseconds parse_duration(std::string_view text);
// "127.0.0.1:8443", "[::1]:8443", "0.0.0.0:0". Throws std::invalid_argument.
// With allow_names, "localhost:50051" is resolved with getaddrinfo (first answer).
SocketAddress parse_address(std::string_view text, bool allow_names);

// How parse_address(…, allow_names = true) turns a host name into an address:
// returns the first address for `host` with its port set to `port`, or throws
// std::invalid_argument("cannot resolve \"host\": <reason>"). The default uses
// getaddrinfo. Unit tests and the fuzz target install a fake so they never wait
// on DNS. set_resolver() returns the previous one; nullptr restores the default.
// Process-wide; set it before loading, not while another thread loads.
using Resolver = SocketAddress (*)(const std::string& host, uint16_t port);
Resolver set_resolver(Resolver resolver);

}  // namespace tlsgate::config
