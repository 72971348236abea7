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
// between listeners and clusters). Loading keys and cipher lists into OpenSSL
// and binding sockets happen later; those errors use Origin::to_string() to
// name the key.
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
  // Same family, IP and port (and IPv6 scope), whatever the texts say: an
  // endpoint written as a DNS name keeps the name as its text.
  bool same_address(const SocketAddress& o) const;
};

enum class ProxyProtocol { Off, V1, V2, Auto };
enum class Ktls { Auto, On, Off };
// Who protects TLS 1.3 records after the handshake when kTLS does not:
// tlsgate's own record layer (frees OpenSSL's objects, ~12 KB per idle
// connection) or OpenSSL's, the escape hatch.
enum class RecordLayer { Tlsgate, Openssl };
enum class TlsVersion { Tls12, Tls13 };
enum class LbPolicy { RoundRobin, P2c };
enum class AllUnhealthy { Fail, Panic };
enum class AccessLogFormat { Json, Text };
// Client certificates on a listener ([listeners.tls] client_auth): none asked
// (no client_ca), required (a handshake without a verified one fails), or
// asked for and verified when sent.
enum class ClientAuth { Off, Require, Optional };
// A cluster answered at the gateway itself (`respond`): no backend; Off for
// a cluster of endpoints.
enum class Respond : uint8_t { Off, Echo, Status };

const char* to_string(ProxyProtocol v);
const char* to_string(Ktls v);
const char* to_string(RecordLayer v);
const char* to_string(TlsVersion v);
const char* to_string(LbPolicy v);
const char* to_string(AllUnhealthy v);
const char* to_string(AccessLogFormat v);
const char* to_string(ClientAuth v);
const char* to_string(Respond v);

// The defaults: Mozilla's "intermediate" profile
// (https://wiki.mozilla.org/Security/Server_Side_TLS). TLS 1.2: ECDHE key
// exchange with an AEAD cipher only; no CBC suites (LUCKY13 and its kin), no
// RSA key exchange (no forward secrecy), no DHE (tlsgate configures no DH
// parameters). A listener prefers its own order, so the order is the choice.
inline constexpr std::string_view default_tls12_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
inline constexpr std::string_view default_tls13_ciphersuites =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
inline constexpr std::string_view default_groups = "X25519:prime256v1:secp384r1";

// What a TLS context offers: the keys `ciphers`, `ciphersuites` and `groups`
// of [listeners.tls] and [clusters.tls], each one list in OpenSSL's syntax
// (entries joined with ':'; written in the file as one such string or as an
// array of entries). The config layer checks their shape only; whether
// OpenSSL knows every name is checked when a tls::Context is made (also by
// --check-config), and that error names the key through its Origin.
struct CipherPolicy {
  std::string ciphers{default_tls12_ciphers};            // TLS 1.2, SSL_CTX_set_cipher_list
  std::string ciphersuites{default_tls13_ciphersuites};  // TLS 1.3, SSL_CTX_set_ciphersuites
  std::string groups{default_groups};                    // key exchange, SSL_CTX_set1_groups_list
  // The key's value, or its table when the key is not written (default).
  Origin ciphers_origin;
  Origin ciphersuites_origin;
  Origin groups_origin;
};

// One certificate of a listener: the names it serves are its subjectAltName
// DNS entries (read when the tls::Context is made, not repeated here).
struct CertificateFiles {
  std::string certificate;    // path, PEM chain (leaf first)
  std::string private_key;    // path, PEM
  std::string ocsp_response;  // path, DER OCSP response to staple; "" = none
  Origin certificate_origin;
  Origin private_key_origin;
  Origin ocsp_response_origin;
};

// One session-ticket key from a ticket_keys file: its name (which key sealed
// a ticket), HMAC-SHA256 key and AES-256 key, in the file's order. Wiped when
// freed.
struct TicketKey {
  static constexpr size_t kSize = 80;
  uint8_t name[16] = {};
  uint8_t hmac[32] = {};
  uint8_t aes[32] = {};
  TicketKey() = default;
  TicketKey(const TicketKey&) = default;
  TicketKey& operator=(const TicketKey&) = default;
  ~TicketKey();
};

// The keys of a ticket_keys file's text: one per line, base64 of 80 bytes
// (16 name, 32 HMAC, 32 AES); blank lines and lines starting with '#' are
// skipped; at least one, at most kMaxTicketKeys, no name twice. Throws
// std::invalid_argument "<file>:<line>: <problem>" naming the file `name`.
inline constexpr size_t kMaxTicketKeys = 64;
std::vector<TicketKey> parse_ticket_keys(std::string_view text, const std::string& name);

struct TlsSettings {
  // At least one; the first is the default for a ClientHello whose server
  // name no certificate carries (or that sends none).
  std::vector<CertificateFiles> certificates;
  // True when written as the list [[listeners.tls.certificates]] (for /config).
  bool certificate_list = false;
  // Session tickets: "" = keys made at random per process (shared by its
  // shards); else the file's keys, the first sealing new tickets.
  std::string ticket_keys;
  Origin ticket_keys_origin;
  std::vector<TicketKey> ticket_key_set;
  std::vector<std::string> alpn{"h2", "http/1.1"};
  TlsVersion min_version = TlsVersion::Tls12;
  Ktls ktls = Ktls::Auto;
  RecordLayer record_layer = RecordLayer::Tlsgate;
  uint32_t session_tickets = 1;  // TLS 1.3 tickets per handshake; 0 = no tickets at all
  CipherPolicy cipher_policy;
  Origin ktls_origin;
  // mTLS from clients: the CA file (PEM) whose certificates sign the clients
  // allowed in; empty = no client certificates asked. client_auth is Off
  // exactly when client_ca is empty.
  std::string client_ca;
  ClientAuth client_auth = ClientAuth::Off;
  Origin client_ca_origin;
};

// A listener's routing rule: the first rule whose present fields all match
// sends the stream to `cluster`; no match uses the listener's default cluster.
struct Route {
  std::string authority;    // "" = any; exact, case-insensitive; without a port here the request's port is ignored
  std::string path_prefix;  // "" = any; byte prefix of :path
  std::string cluster;
  size_t cluster_index = 0;
  Origin cluster_origin;
};

struct Listener {
  std::string name;
  SocketAddress listen;
  Origin listen_origin;
  ProxyProtocol proxy_protocol = ProxyProtocol::Off;
  std::string cluster;  // name of the default cluster; validated to exist
  size_t cluster_index = 0;
  std::vector<Route> routes;
  TlsSettings tls;
  std::chrono::milliseconds handshake_timeout{10'000};
  std::chrono::milliseconds idle_timeout{300'000};
  uint32_t max_concurrent_streams = 1000;  // advertised to clients
  // Client connections of this listener per shard; accepting pauses there
  // (the listen backlog holds the next ones) until one closes.
  uint32_t max_connections = 10000;
  // HTTP/2 abuse budgets per client connection (src/h2/README.md, "Budgets").
  uint32_t h2_glitch_budget = 1000;  // cheap-but-useless frames allowed in a burst
  uint32_t h2_glitch_rate = 100;     // of them forgiven per second
  uint32_t h2_reset_budget = 100;    // streams cancelled (by either side) before one completes
  // Rebalancing and liveness (src/shard/README.md, "Connection age and
  // keepalive"). 0 = off.
  // Past this age (each connection's drawn in [0.9, 1.1] x it) a connection
  // gets the two-step GOAWAY; its running streams finish.
  std::chrono::milliseconds max_connection_age{0};
  // That long after the age GOAWAY, streams still open are cut and the
  // connection closed. 0 = streams finish however long they take.
  std::chrono::milliseconds max_connection_age_grace{0};
  // Nothing received for this long: a PING; nothing received within
  // keepalive_timeout after it: the connection is closed.
  std::chrono::milliseconds keepalive_interval{0};
  std::chrono::milliseconds keepalive_timeout{20'000};  // used only with keepalive_interval
};

// Per-shard memory bounds ([limits]), in bytes, rounded up to whole 16 KiB
// chunks. 0 = unbounded.
struct Limits {
  uint64_t body_buffer = 128ull << 20;  // request and response bodies held between the two sides
  uint64_t chunk_pool = 256ull << 20;  // connection I/O buffers (TLS records in and out, frames out)
};

// Active health checking with the gRPC health protocol.
struct HealthCheck {
  bool enabled = false;
  std::chrono::milliseconds interval{5'000};
  std::chrono::milliseconds timeout{1'000};
  std::string service;  // HealthCheckRequest.service; "" = the server as a whole
  uint32_t healthy_threshold = 2;
  uint32_t unhealthy_threshold = 2;
};

// Passive outlier ejection.
struct Outlier {
  uint32_t consecutive_failures = 5;  // 0 = off
  std::chrono::milliseconds base_ejection{10'000};
  std::chrono::milliseconds max_ejection{300'000};
  // At most this share (0-100) of the cluster's active endpoints is ejected
  // at once; below 100 the last usable endpoint never is.
  uint32_t max_ejection_percent = 50;
};

// TLS towards the backends.
struct UpstreamTls {
  bool enabled = false;
  std::string ca;           // PEM bundle the backend's certificate must chain to
  std::string server_name;  // SNI and the name verified; "" = the endpoint's host
  std::string certificate;  // client certificate (mTLS); "" = none
  std::string private_key;
  CipherPolicy cipher_policy;  // what the gateway offers the backend
  Origin origin;            // of the [clusters.tls] table
};

// An endpoint written as a DNS name: re-resolved every dns_refresh.
struct DnsName {
  std::string host;
  uint16_t port = 0;
  std::string text;  // as written
};

struct Cluster {
  std::string name;
  // Numeric endpoints and, for each DNS name, its first address at load.
  std::vector<SocketAddress> endpoints;
  // Parallel to `endpoints`: index into dns_names, or -1 for a numeric one.
  std::vector<int> endpoint_name;
  std::vector<DnsName> dns_names;
  LbPolicy lb = LbPolicy::P2c;
  std::chrono::milliseconds connect_timeout{2'000};
  std::chrono::milliseconds dns_refresh{5'000};
  uint32_t max_connections = 1024;     // per shard
  uint32_t max_pending_streams = 4096;  // per shard
  std::chrono::milliseconds max_grpc_timeout{0};  // 0 = no cap
  uint32_t retries = 2;
  uint32_t retry_buffer = 64 * 1024;
  std::chrono::milliseconds keepalive_interval{30'000};
  std::chrono::milliseconds keepalive_timeout{10'000};
  std::chrono::milliseconds idle_timeout{300'000};
  AllUnhealthy all_unhealthy = AllUnhealthy::Fail;
  HealthCheck health_check;
  Outlier outlier;
  UpstreamTls tls;
  // respond = "echo" | "status": the gateway answers the cluster's calls
  // itself (src/h2/README.md, "Responder clusters"); such a cluster has none
  // of the keys about reaching a backend (max_grpc_timeout excepted).
  Respond respond = Respond::Off;
  uint32_t respond_status = 0;                 // `status`: the grpc-status of respond = "status"
  std::string respond_message;                 // `message`, as written (no control characters)
  std::string respond_message_wire;            // the same, percent-encoded as grpc-message travels
  uint32_t response_bytes = 0;                 // a response message of this many zero bytes
  std::chrono::milliseconds respond_delay{0};  // `delay`: each call is answered this much later
  static constexpr uint32_t kMaxResponseBytes = 4u << 20;  // gRPC's default receive limit
};

struct Admin {
  bool enabled = false;
  SocketAddress listen;
  Origin listen_origin;
};

// After SIGTERM/SIGINT: keep accepting for `delay` (the load balancer
// deregisters the target meanwhile), then close the listeners, send every
// client connection the two-step GOAWAY and give its streams `timeout`.
struct Drain {
  std::chrono::milliseconds delay{0};
  std::chrono::milliseconds timeout{30'000};
};

// [access_log]: one line per client stream (src/accesslog). Off unless the
// section is there.
struct AccessLog {
  bool enabled = false;
  std::string path;  // "-" = standard output
  Origin path_origin;
  AccessLogFormat format = AccessLogFormat::Json;
};

struct Config {
  std::string path;
  // What is allowed but probably a mistake (a private key others can read):
  // logged at start-up and on reload, printed by --check-config.
  std::vector<std::string> warnings;
  unsigned workers = 1;  // "auto" resolved to the number of online CPUs
  bool workers_auto = false;
  Admin admin;
  Limits limits;
  Drain drain;
  AccessLog access_log;
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

// The configuration as TOML with every default written out (the admin's
// /config). parse() of the result gives the same configuration.
std::string to_toml(const Config& cfg);

// "10s", "250ms", "5m", "1h" -> milliseconds. Throws std::invalid_argument.
// Digits and a unit (ms, s, m, h) only: no sign, no fraction, no bare number.
// At most 8760h (365 days), so adding one to any clock cannot overflow.
std::chrono::milliseconds parse_duration(std::string_view text);
// "127.0.0.1:8443", "[::1]:8443", "0.0.0.0:0". Throws std::invalid_argument.
// With allow_names, "localhost:50051" is resolved by the installed Resolver.
SocketAddress parse_address(std::string_view text, bool allow_names);

// How parse_address(…, allow_names = true) turns a host name into an address:
// returns the first address for `host` with its port set to `port`, or throws
// std::invalid_argument("cannot resolve \"host\": <reason>"). src/config
// does no DNS itself: the program installs upstream::resolve_first (main.cc),
// unit tests and the fuzz target a fake, so they never wait on DNS. With none
// installed, a name is an error. set_resolver() returns the previous one.
// Process-wide; set it before loading, not while another thread loads.
using Resolver = SocketAddress (*)(const std::string& host, uint16_t port);
Resolver set_resolver(Resolver resolver);

}  // namespace tlsgate::config
