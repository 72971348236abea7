#include "options.hh"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string_view>

namespace tlsgate::load {

namespace {

constexpr const char* kHelp =
    R"(usage: tlsgate-load --target HOST:PORT --path /pkg.Service/Method --rate N [--calls K] [--resume] [options]
       tlsgate-load --target HOST:PORT --path /pkg.Service/Method --connections C [--streams S]
                    [--calls-per-second R] [options]
       tlsgate-load --target HOST:PORT --path /pkg.Service/Method --hold N [--concurrency C] [options]

A TLS 1.3 + HTTP/2 gRPC load generator: unary calls, every answer checked,
latency measured from the time each call was meant to start.

Modes (one of):
  --rate N              open N new TLS connections per second on a fixed schedule
                        (connection i is due at start + i/N, whatever happened to
                        the ones before); each makes --calls unary calls, one after
                        the other, then closes (GOAWAY, close_notify).
  --connections C       open C connections at the start and keep them; each keeps
                        --streams calls in flight.
  --hold N              open N connections (at most --concurrency opening at a time),
                        make one checked call on each, then keep them all open and
                        idle: for a server's memory per idle connection. When every
                        one has its answer, prints "ready ok=N failed=M" on stdout
                        ({"ready":{"ok":N,"failed":M}} with --json), then waits for
                        SIGTERM/SIGINT (or --duration seconds, when given) and closes
                        them; the report counts the held connections the server
                        closed meanwhile ("held ... closed by the server"). When
                        the server has closed all of them, it ends by itself.

Rate mode:
  --connections-total N the measured part is N connections (after the warm-up)
                        instead of --duration seconds: at a fixed --rate, N more
                        slots of the schedule; with --rate max, the closed loop
                        stops opening after N.
  --calls K             unary calls per connection (default 1).
  --concurrency C       at most C connections in flight in all threads. A connection
                        due while C are in flight waits for one to end, and the wait
                        is part of its first call's latency; one that waited longer
                        than --timeout fails as "timeout" without being opened.
  --rate max            with --concurrency: a closed loop, as many connections as
                        C in flight allow (a new one as soon as one ends), for
                        benchmarks of the server's connection capacity. Latency
                        then starts when each connection is opened: it is the
                        service time, not what clients arriving at a rate see.
  --resume              offer a TLS session ticket from an earlier connection of the
                        same thread (each ticket once); the first connections of a
                        thread make full handshakes until tickets arrive.
  --tickets-from HOST:PORT
                        resumption across instances (servers sharing ticket keys):
                        the --warmup connections go to this other server, with full
                        handshakes, and keep its tickets; every measured connection
                        to --target offers one of them, and tickets --target sends
                        are not kept. Implies --resume; needs --warmup long enough
                        to collect a ticket per measured connection (the report
                        counts measured handshakes that could not resume as full).

Persistent mode:
  --streams S           calls in flight per connection (default 1).
  --calls-per-second R  start R calls per second in all on a fixed schedule, spread
                        over the connections; a call due while all S streams of its
                        connection are busy waits, and its wait counts in its latency.
                        Without it: as fast as possible (each stream starts its next
                        call when the previous one ends).
  A kept connection the server ends (GOAWAY, e.g. at its maximum connection
  age) is not reopened: the calls it had fail (h2, closed) and later ones go
  to the connections still open.

Both:
  --target HOST:PORT    where to connect: 127.0.0.1:8443 or [::1]:8443 (IP literals);
                        also the :authority of every call. Required.
  --path PATH           the gRPC method, e.g. /tlsgate.test.Echo/Unary. Required.
  --sni NAME            TLS server name (default localhost). The certificate is not
                        verified: this measures, it does not authenticate.
  --tls13-ciphers LIST  TLS 1.3 cipher suites to offer, in OpenSSL's syntax
                        (e.g. TLS_AES_256_GCM_SHA384); default: OpenSSL's list.
  --data FILE           the request body: one gRPC-framed message (5-byte header:
                        flag 0, 4-byte big-endian length; then the message).
  --payload-bytes N     instead of --data: a message of N bytes (a protobuf field 1
                        of 'x's, which echo services taking a bytes field 1 accept;
                        N = 1 cannot be made). Default: 0 (an empty message).
  --expect-bytes N      each response must be one message of exactly N bytes.
  --duration SECS       the measured period (default 10); with --hold, how long to
                        hold after the ready line (default: until a signal).
  --warmup SECS         a period before it, run the same way and not counted (default 0).
  --timeout SECS        a connection (rate mode: from its due time to its last answer)
                        or a call (persistent mode) taking longer fails as "timeout"
                        (default 10).
  --threads T           threads, each with its own io_uring loop, its share of the
                        schedule (thread t takes connections or calls i with
                        i mod T = t) and its own counters (default: online CPUs).
  --json                print one JSON object on stdout instead of the text report.
  --marks               print "measuring" on stdout when the warm-up ends and "done"
                        when the last measured connection or call has ended, before
                        the report ({"mark":"measuring"} and {"mark":"done"} lines
                        with --json): a caller reads a server's CPU time between them
                        to get its cost over the measured part only.
  --help                this text.

Latency: from each call's intended time. In rate mode the first call of a
connection is measured from the connection's due time, so it includes the TCP
connect and the TLS handshake (and any lateness of the generator itself); each
later call on that connection from the end of the one before. In persistent mode
at --calls-per-second, from the call's slot in the schedule; as fast as
possible, from when it was sent. A generator that falls behind therefore shows
up as latency, never as silently missing samples (no coordinated omission).

Checks: every answer must be :status 200 with grpc-status 0 (and --expect-bytes
when given). The report counts grpc-status by code and errors by kind: connect,
tls, h2, closed (the server closed the connection early), http_status,
grpc_status, timeout, length.

SIGINT or SIGTERM stops the schedule: the calls in flight end (each
within --timeout), then the report, marked interrupted.

Exit status: 0 when every call was answered OK; 1 when any failed or had an
unexpected status; 2 for a bad command line.
)";

[[noreturn]] void bad(std::string_view flag, const std::string& why) {
  throw UsageError(std::string(flag) + ": " + why);
}

double parse_seconds(std::string_view flag, const char* text, bool allow_zero) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (errno != 0 || end == text || *end != '\0' || !std::isfinite(v) || v < 0 || (!allow_zero && v == 0))
    bad(flag, std::string("expected a ") + (allow_zero ? "non-negative" : "positive") + " number, got '" +
                  text + "'");
  return v;
}

uint64_t parse_count(std::string_view flag, const char* text, bool allow_zero) {
  errno = 0;
  char* end = nullptr;
  if (text[0] == '-' || text[0] == '+') bad(flag, std::string("expected a whole number, got '") + text + "'");
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || (!allow_zero && v == 0))
    bad(flag, std::string("expected a ") + (allow_zero ? "whole number" : "positive whole number") +
                  ", got '" + text + "'");
  return v;
}

// "1.2.3.4:p" or "[v6]:p" into addr/len; errors name `flag`.
void parse_address(std::string_view flag, const std::string& text, sockaddr_storage& addr, socklen_t& len) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 == text.size())
    bad(flag, "expected HOST:PORT (an IPv4 literal or [IPv6]), got '" + text + "'");
  std::string host = text.substr(0, colon);
  const char* port_text = text.c_str() + colon + 1;
  char* end = nullptr;
  const unsigned long port = std::strtoul(port_text, &end, 10);
  if (*end != '\0' || port == 0 || port > 65535) bad(flag, "bad port in '" + text + "'");
  addr = sockaddr_storage{};
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&addr);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a6->sin6_addr) != 1)
      bad(flag, "bad IPv6 address in '" + text + "'");
    len = sizeof(sockaddr_in6);
  } else {
    auto* a4 = reinterpret_cast<sockaddr_in*>(&addr);
    a4->sin_family = AF_INET;
    a4->sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, host.c_str(), &a4->sin_addr) != 1)
      bad(flag, "expected an IPv4 literal or [IPv6] address, got '" + host + "'");
    len = sizeof(sockaddr_in);
  }
}

std::string read_data_file(const char* path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) bad("--data", std::string("cannot read '") + path + "': " + std::strerror(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  std::string body = ss.str();
  // A body that is not exactly one framed message would be answered with an
  // error by any gRPC server; say so now rather than count it as failures.
  if (body.size() < 5)
    bad("--data", std::string("'") + path + "' is shorter than a gRPC frame header (5 bytes)");
  const uint32_t len =
      (uint32_t{static_cast<uint8_t>(body[1])} << 24) | (uint32_t{static_cast<uint8_t>(body[2])} << 16) |
      (uint32_t{static_cast<uint8_t>(body[3])} << 8) | uint32_t{static_cast<uint8_t>(body[4])};
  if (body[0] != 0 || body.size() != 5 + uint64_t{len})
    bad("--data", std::string("'") + path + "' is not one uncompressed gRPC-framed message (flag 0, length " +
                      std::to_string(len) + ", " + std::to_string(body.size() - 5) + " bytes follow)");
  return body;
}

size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// --hold takes --concurrency and the common flags; one call per connection,
// no warm-up (everything it opens is what is held).
void check_hold(const Options& o, bool have_calls, bool have_persistent) {
  if (have_calls) bad("--calls", "only with --rate (--hold makes one call per connection)");
  if (have_persistent) bad("--streams", "only with --connections");
  if (o.resume) bad(o.tickets_from.empty() ? "--resume" : "--tickets-from", "only with --rate");
  if (o.warmup != 0) bad("--warmup", "not with --hold");
}

}  // namespace

const char* help_text() { return kHelp; }

std::string make_payload(uint64_t n) {
  if (n == 1) bad("--payload-bytes", "1 byte cannot hold a protobuf field; use 0 or at least 2");
  if (n > (uint64_t{1} << 30)) bad("--payload-bytes", "at most 1 GiB");
  std::string msg;
  if (n > 0) {
    // Field 1, wire type 2: tag, length as a varint of k bytes, the bytes.
    // Some sizes have no minimal encoding (130: a 127-byte field takes 129
    // bytes, a 128-byte one 131): then the length is written in one byte
    // more than it needs, a padded varint, which protobuf parsers accept.
    size_t k = 1;
    while (varint_size(n - 1 - k) > k) ++k;
    const uint64_t len = n - 1 - k;
    msg.push_back('\x0a');
    for (size_t i = 0; i < k; ++i) {
      const auto low = static_cast<char>((len >> (7 * i)) & 0x7f);
      msg.push_back(i + 1 < k ? static_cast<char>(low | 0x80) : low);
    }
    msg.append(len, 'x');
  }
  std::string framed(5, '\0');
  framed[1] = static_cast<char>(n >> 24);
  framed[2] = static_cast<char>(n >> 16);
  framed[3] = static_cast<char>(n >> 8);
  framed[4] = static_cast<char>(n);
  return framed + msg;
}

bool parse_options(int argc, char** argv, Options& o) {
  bool have_rate = false, have_conns = false, have_calls = false, have_streams = false, have_cps = false;
  bool have_data = false, have_payload = false, have_hold = false, have_duration = false;
  uint64_t payload_bytes = 0;
  for (int i = 0; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) bad(a, "needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return false;
    } else if (a == "--target") {
      o.target = value();
      parse_address(a, o.target, o.addr, o.addr_len);
    } else if (a == "--tickets-from") {
      o.tickets_from = value();
      parse_address(a, o.tickets_from, o.tickets_from_addr, o.tickets_from_len);
      o.resume = true;
    } else if (a == "--sni") {
      o.sni = value();
      if (o.sni.empty()) bad(a, "must not be empty");
    } else if (a == "--tls13-ciphers") {
      o.tls13_ciphers = value();
      if (o.tls13_ciphers.empty()) bad(a, "must not be empty");
    } else if (a == "--path") {
      o.path = value();
      if (o.path.empty() || o.path[0] != '/')
        bad(a, "expected a method path starting with '/', got '" + o.path + "'");
    } else if (a == "--data") {
      o.body = read_data_file(value());
      have_data = true;
    } else if (a == "--payload-bytes") {
      payload_bytes = parse_count(a, value(), true);
      have_payload = true;
    } else if (a == "--expect-bytes") {
      o.expect_bytes = static_cast<int64_t>(parse_count(a, value(), true));
    } else if (a == "--rate") {
      const char* v = value();
      o.rate = std::string_view(v) == "max" ? 0 : parse_seconds(a, v, false);
      have_rate = true;
    } else if (a == "--concurrency") {
      o.concurrency = parse_count(a, value(), false);
    } else if (a == "--calls") {
      o.calls = parse_count(a, value(), false);
      have_calls = true;
    } else if (a == "--resume") {
      o.resume = true;
    } else if (a == "--connections") {
      o.connections = parse_count(a, value(), false);
      have_conns = true;
    } else if (a == "--streams") {
      o.streams = parse_count(a, value(), false);
      have_streams = true;
    } else if (a == "--calls-per-second") {
      o.calls_per_second = parse_seconds(a, value(), false);
      have_cps = true;
    } else if (a == "--duration") {
      o.duration = parse_seconds(a, value(), false);
      have_duration = true;
    } else if (a == "--connections-total") {
      o.connections_total = parse_count(a, value(), false);
    } else if (a == "--hold") {
      o.hold = parse_count(a, value(), false);
      have_hold = true;
    } else if (a == "--marks") {
      o.marks = true;
    } else if (a == "--warmup") {
      o.warmup = parse_seconds(a, value(), true);
    } else if (a == "--timeout") {
      o.timeout = parse_seconds(a, value(), false);
    } else if (a == "--threads") {
      const uint64_t t = parse_count(a, value(), false);
      if (t > 1024) bad(a, "at most 1024");
      o.threads = static_cast<unsigned>(t);
    } else if (a == "--json") {
      o.json = true;
    } else {
      throw UsageError(std::string(a) + ": unknown flag (see --help)");
    }
  }
  if (o.target.empty()) bad("--target", "required");
  if (o.path.empty()) bad("--path", "required");
  if (int{have_rate} + int{have_conns} + int{have_hold} != 1)
    bad("--rate", "give exactly one of --rate, --connections and --hold");
  if (have_hold) check_hold(o, have_calls, have_streams || have_cps);
  if (o.connections_total != 0 && !have_rate) bad("--connections-total", "only with --rate");
  if (o.connections_total != 0 && have_duration)
    bad("--connections-total", "give either --duration or --connections-total, not both");
  if (have_rate && (have_streams || have_cps))
    bad(have_streams ? "--streams" : "--calls-per-second", "only with --connections");
  if (have_conns && (have_calls || o.resume))
    bad(have_calls ? "--calls" : !o.tickets_from.empty() ? "--tickets-from" : "--resume", "only with --rate");
  if (have_conns && o.concurrency != 0) bad("--concurrency", "only with --rate");
  if (!o.tickets_from.empty() && o.warmup == 0)
    bad("--tickets-from", "needs --warmup: the period whose connections collect the tickets");
  if (have_rate && o.rate == 0 && o.concurrency == 0)
    bad("--rate", "max needs --concurrency (how many in flight)");
  if (have_data && have_payload) bad("--payload-bytes", "give either --data or --payload-bytes, not both");
  if (have_streams && o.streams > 100000) bad("--streams", "at most 100000");
  if (!have_data) o.body = make_payload(payload_bytes);
  o.mode = have_rate ? Mode::Rate : have_conns ? Mode::Persistent : Mode::Hold;
  o.hold_forever = have_hold && !have_duration;
  if (o.threads == 0) {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    o.threads = n > 0 ? static_cast<unsigned>(n) : 1;
  }
  return true;
}

}  // namespace tlsgate::load
