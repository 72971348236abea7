// The admin listener: plain HTTP/1.1 on its own thread, never on a shard.
//
//   GET /healthz  200 while the process runs
//   GET /ready    200 when serving and not draining, else 503
//   GET /metrics  Prometheus text exposition format 0.0.4
//   GET /config   the running configuration after defaults
//   anything else 404 (405 for another method on a known path)
//
// One request per connection (the answer says Connection: close): probes and
// scrapers open a connection each time anyway, and a server without
// keep-alive has no idle connections to bound. A request head must arrive
// whole within kRequestTimeoutMs and kMaxHead bytes, and at most
// kMaxConnections are open at once: a slow or malformed client costs the
// admin thread a descriptor for a few seconds and never touches a shard.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <thread>

namespace tlsgate::admin {

inline constexpr size_t kMaxHead = 8 * 1024;
inline constexpr uint64_t kRequestTimeoutMs = 5'000;
inline constexpr size_t kMaxConnections = 64;

// ------------------------------------------------------------ request head

enum class ParseStatus { Incomplete, Done, Error };

struct Request {
  std::string_view method;
  std::string_view path;  // the request target without its query string
};

struct ParseResult {
  ParseStatus status = ParseStatus::Incomplete;
  Request request;    // Done: views into the input
  int error = 0;      // Error: the HTTP status to answer (400, 414, 431, 505)
  const char* why = "";
};

// Parses an HTTP/1.x request head (request line, header fields, empty line)
// from the bytes received so far. Only the request line is interpreted;
// header fields are checked for shape and skipped. Incomplete until the
// empty line; more than kMaxHead bytes without it is an error.
ParseResult parse_request(std::string_view in);

// ------------------------------------------------------------ exposition

// Builds a Prometheus text-format page: a family's HELP and TYPE lines
// once, then its samples. Label values are escaped as the format asks.
class Exposition {
 public:
  struct Label {
    std::string_view name;
    std::string_view value;
  };
  // type: "counter", "gauge" or "histogram".
  void family(std::string_view name, std::string_view type, std::string_view help);
  void sample(std::string_view name, std::initializer_list<Label> labels, uint64_t value);
  void sample(std::string_view name, std::initializer_list<Label> labels, double value);
  // Cumulative buckets: counts[i] observations <= bounds[i] (seconds), then
  // +Inf (= count), _sum and _count.
  void histogram(std::string_view name, std::initializer_list<Label> labels, const double* bounds,
                 const uint64_t* counts, size_t n, double sum, uint64_t count);
  const std::string& text() const { return text_; }
  std::string take() { return std::move(text_); }

 private:
  void labels(std::initializer_list<Label> labels, std::string_view extra_name = {},
              std::string_view extra_value = {});
  std::string text_;
};

// ------------------------------------------------------------ server

// What the pages show; called on the admin thread.
struct Handlers {
  std::function<bool()> ready;
  std::function<std::string()> metrics;
  std::function<std::string()> config;
};

// The answer to a parsed request: status line, headers and body.
std::string respond(const Request& request, const Handlers& handlers);

class Server {
 public:
  // `listen_fd`: a bound, listening TCP socket (owned from now on).
  Server(int listen_fd, Handlers handlers);
  ~Server();  // stops the thread
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

 private:
  void run();
  int listen_fd_;
  int wake_fd_;  // eventfd: the destructor's stop signal
  Handlers handlers_;
  std::thread thread_;
};

}  // namespace tlsgate::admin
