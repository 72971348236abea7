// tlsgate-load's command line: what a run asks for, parsed and checked before
// anything connects. A bad flag is a UsageError naming the flag (exit 2).
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace tlsgate::load {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Mode {
  Rate,        // --rate N: new TLS connections per second, --calls K each
  Persistent,  // --connections C --streams S, as fast as possible or --calls-per-second
  Hold,        // --hold N: N connections, one call each, then kept open and idle
};

struct Options {
  Mode mode = Mode::Rate;
  std::string target;  // as given: HOST:PORT or [V6]:PORT; also the :authority
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  std::string sni = "localhost";
  std::string tls13_ciphers;  // empty: OpenSSL's default TLS 1.3 list
  std::string path;           // gRPC method path, e.g. /tlsgate.test.Echo/Unary
  std::string body;           // the request body: one gRPC-framed message
  double rate = 0;            // Rate: connections per second; 0 = "max" (closed loop)
  uint64_t concurrency = 0;   // Rate: connections in flight at most; 0 = no cap
  uint64_t calls = 1;         // Rate: unary calls per connection, one after the other
  bool resume = false;        // Rate: offer a session ticket from an earlier connection
  // Rate: the warm-up collects tickets from this other server; measured
  // connections resume them on `addr` and keep none of its own.
  std::string tickets_from;
  sockaddr_storage tickets_from_addr{};
  socklen_t tickets_from_len = 0;
  uint64_t connections = 0;     // Persistent
  uint64_t streams = 1;         // Persistent: calls in flight per connection
  double calls_per_second = 0;  // Persistent: 0 = as fast as possible
  double duration = 10;         // seconds measured
  // Rate: the measured part is this many connections instead of --duration
  // seconds; 0 = bounded by --duration.
  uint64_t connections_total = 0;
  uint64_t hold = 0;          // Hold: connections to open and keep
  bool hold_forever = true;   // Hold: no --duration given, held until a signal
  bool marks = false;         // "measuring" / "done" lines on stdout around the measured part
  double warmup = 0;          // seconds before, not counted
  double timeout = 10;        // seconds a connection (Rate) or a call (Persistent) may take
  int64_t expect_bytes = -1;  // response message length to check; -1: any
  unsigned threads = 0;       // 0: online CPUs
  bool json = false;
};

// Parses argv (without argv[0]). Throws UsageError with a message naming the
// flag. Returns false when --help was asked (the help is printed on stdout).
bool parse_options(int argc, char** argv, Options& out);

// One gRPC length-prefixed message of `n` bytes that a service whose request
// has a bytes field 1 accepts: field 1 holding 'x's, sized to make n bytes
// in all (n = 0: an empty message; n = 1 cannot be made: UsageError).
std::string make_payload(uint64_t n);

const char* help_text();

}  // namespace tlsgate::load
