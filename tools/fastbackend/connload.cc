// connload: a TLS 1.3 + HTTP/2 gRPC client for connection benchmarks, the
// parts h2load cannot do: it checks every call's grpc-status, it can resume
// TLS sessions, and it can hold connections idle.
//
//   connload --connect HOST:PORT [--duration SECS | --connections N]
//            [--concurrency C] [--resume] [--data FILE] [--path PATH]
//            [--sni NAME] [--timeout SECS] [--tls13-ciphers LIST]
//   connload --connect HOST:PORT --hold N [--concurrency C] [--hold-time SECS]
//
// Rate mode (default): keeps C connections in flight; each is one TCP
// connect, one TLS 1.3 handshake (ALPN h2, no certificate verification, as
// h2load), one unary gRPC call (POST, content-type application/grpc, te:
// trailers, the body from --data: a 5-byte-framed gRPC message), a check that
// the answer is :status 200 with grpc-status 0, then GOAWAY + close_notify and
// close. A finished connection is replaced by a new one until --duration
// seconds have passed or --connections were started.
//   --resume: first a warm-up, not counted: C full handshakes (one at first,
//   until a ticket arrives) that fill a pool of session tickets; then every
//   measured connection offers a ticket of its own from the pool (TLS 1.3 PSK
//   with (EC)DHE; OpenSSL clients use a TLS 1.3 ticket once, newest first;
//   servers send one or two per connection, so the pool does not run dry).
//   The summary's resumed= counts the handshakes the server resumed.
//   --tickets-from HOST2:PORT2 (implies --resume, needs --connections N):
//   the warm-up makes N full handshakes with that other server and keeps
//   their tickets; every measured connection to --connect resumes one of
//   them, and tickets from the measured server are not kept: each measured
//   resumption is of a ticket another instance sealed (servers sharing a
//   ticket key file).
//
// Hold mode: opens N connections (C in flight at a time), makes one call on
// each, keeps them all open and idle, prints "ready ok=N failed=N" on stdout
// when every connection has its answer, then waits for SIGTERM / SIGINT (or
// --hold-time seconds) and prints the summary.
//
// Output on stdout: "start" when the measured part begins (after the
// --resume warm-up), "ready ..." in hold mode, then the summary, one line:
// connections= ok= failed= grpc_error= resumed= elapsed= rate= (ok
// connections per second) cipher= group= closed_idle= (held connections the
// server closed) and, if any failed, first_error="...". Exit 0 if no call
// failed, 1 otherwise.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

double now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

struct Options {
  sockaddr_in addr{};
  std::string authority;
  std::string sni = "localhost";
  std::string ciphersuites;  // empty: OpenSSL's default TLS 1.3 list
  std::string path = "/bench.Echo/Unary";
  std::string body = std::string("\0\0\0\0\x07\x0a\x05hello", 12);
  double duration = 0;
  long connections = 0;
  int concurrency = 64;
  bool resume = false;
  bool cross = false;          // --tickets-from: warm up against another server
  sockaddr_in tickets_from{};
  long hold = 0;
  double hold_time = 0;
  double timeout = 10;
};

Options g_opt;
SSL_CTX* g_ctx = nullptr;
// Session tickets the servers sent, newest last. OpenSSL makes a TLS 1.3
// client ticket single-use (a completed resumption removes it), as RFC 8446
// advises, so each connection takes its own ticket; servers send one or two
// per connection, so the pool does not run dry.
std::vector<SSL_SESSION*> g_tickets;
constexpr size_t kMaxTickets = 4096;
bool g_keep_tickets = true;    // off in the measured part of --tickets-from
bool g_offer_tickets = true;   // off in the warm-up of --tickets-from: full handshakes only

struct Stats {
  long started = 0, ok = 0, failed = 0, grpc_error = 0, resumed = 0, closed_idle = 0;
  std::string first_error, cipher, group;
} g_stats;

enum class State { Connecting, Handshaking, Active, Idle };

struct Conn {
  int fd = -1;
  SSL* ssl = nullptr;
  nghttp2_session* h2 = nullptr;
  State state = State::Connecting;
  std::string out;  // plaintext from nghttp2 not yet accepted by SSL_write
  size_t out_off = 0;
  size_t body_off = 0;
  int http_status = 0;
  int grpc_status = -1;
  bool stream_closed = false;
  uint32_t stream_error = 0;
  double deadline = 0;
  bool dead = false;
};

std::vector<Conn*> g_conns;

void fail(Conn* c, const std::string& why) {
  if (c->dead) return;
  c->dead = true;
  if (c->state == State::Idle) {
    ++g_stats.closed_idle;
    return;
  }
  ++g_stats.failed;
  if (g_stats.first_error.empty()) g_stats.first_error = why;
}

std::string ssl_error_text() {
  unsigned long e = ERR_get_error();
  if (e == 0) return std::strerror(errno);
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

int new_session_cb(SSL*, SSL_SESSION* sess) {
  if (!g_keep_tickets) return 0;  // OpenSSL frees it
  if (g_tickets.size() >= kMaxTickets) {
    SSL_SESSION_free(g_tickets.front());
    g_tickets.erase(g_tickets.begin());
  }
  g_tickets.push_back(sess);
  return 1;  // we keep the reference
}

ssize_t read_body(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* data_flags,
                  nghttp2_data_source* source, void*) {
  auto* c = static_cast<Conn*>(source->ptr);
  size_t n = g_opt.body.size() - c->body_off;
  if (n > length) n = length;
  std::memcpy(buf, g_opt.body.data() + c->body_off, n);
  c->body_off += n;
  if (c->body_off == g_opt.body.size()) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

int on_header(nghttp2_session*, const nghttp2_frame*, const uint8_t* name, size_t namelen, const uint8_t* value,
              size_t valuelen, uint8_t, void* user) {
  auto* c = static_cast<Conn*>(user);
  std::string_view n(reinterpret_cast<const char*>(name), namelen);
  std::string v(reinterpret_cast<const char*>(value), valuelen);
  if (n == ":status") c->http_status = std::atoi(v.c_str());
  if (n == "grpc-status") c->grpc_status = std::atoi(v.c_str());
  return 0;
}

int on_stream_close(nghttp2_session*, int32_t, uint32_t error_code, void* user) {
  auto* c = static_cast<Conn*>(user);
  c->stream_closed = true;
  c->stream_error = error_code;
  return 0;
}

nghttp2_session_callbacks* g_callbacks = nullptr;

nghttp2_nv make_nv(std::string_view name, std::string_view value) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
                    NGHTTP2_NV_FLAG_NONE};
}

void start_conn(int ep) {
  auto* c = new Conn;
  c->deadline = now() + g_opt.timeout;
  ++g_stats.started;
  g_conns.push_back(c);
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) {
    fail(c, std::string("socket: ") + std::strerror(errno));
    return;
  }
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(c->fd, reinterpret_cast<const sockaddr*>(&g_opt.addr), sizeof g_opt.addr) != 0 &&
      errno != EINPROGRESS) {
    fail(c, std::string("connect: ") + std::strerror(errno));
    return;
  }
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
  ev.data.ptr = c;
  epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

void destroy(Conn* c) {
  if (c->h2 != nullptr) nghttp2_session_del(c->h2);
  if (c->ssl != nullptr) SSL_free(c->ssl);
  if (c->fd >= 0) close(c->fd);  // also removes it from the epoll set
  delete c;
}

// Pushes nghttp2's output through SSL_write. False on a fatal error.
bool flush(Conn* c) {
  for (;;) {
    if (c->out_off == c->out.size()) {
      c->out.clear();
      c->out_off = 0;
      for (;;) {
        const uint8_t* data = nullptr;
        ssize_t n = nghttp2_session_mem_send(c->h2, &data);
        if (n < 0) return false;
        if (n == 0) break;
        c->out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
      }
      if (c->out.empty()) return true;
    }
    int w = SSL_write(c->ssl, c->out.data() + c->out_off, static_cast<int>(c->out.size() - c->out_off));
    if (w <= 0) {
      int e = SSL_get_error(c->ssl, w);
      return e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ;
    }
    c->out_off += static_cast<size_t>(w);
  }
}

void finish_call(Conn* c) {
  if (c->http_status == 200 && c->grpc_status == 0 && c->stream_error == 0) {
    ++g_stats.ok;
  } else {
    ++g_stats.failed;
    if (c->http_status == 200 && c->grpc_status != 0) ++g_stats.grpc_error;
    if (g_stats.first_error.empty())
      g_stats.first_error = "call: :status " + std::to_string(c->http_status) + " grpc-status " +
                            std::to_string(c->grpc_status) + " rst " + std::to_string(c->stream_error);
  }
  if (g_opt.hold > 0) {
    c->state = State::Idle;
    return;
  }
  // Graceful close, as a client that is done: GOAWAY, close_notify, close.
  nghttp2_session_terminate_session(c->h2, NGHTTP2_NO_ERROR);
  flush(c);
  SSL_shutdown(c->ssl);
  c->dead = true;
}

void drive(Conn* c) {
  if (c->state == State::Connecting) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err == EINPROGRESS || err == EALREADY) return;
    if (err != 0) return fail(c, std::string("connect: ") + std::strerror(err));
    c->ssl = SSL_new(g_ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_connect_state(c->ssl);
    SSL_set_tlsext_host_name(c->ssl, g_opt.sni.c_str());
    while (g_opt.resume && g_offer_tickets && !g_tickets.empty()) {
      SSL_SESSION* t = g_tickets.back();
      g_tickets.pop_back();
      bool ok = SSL_SESSION_is_resumable(t) == 1;
      if (ok) SSL_set_session(c->ssl, t);
      SSL_SESSION_free(t);
      if (ok) break;
    }
    c->state = State::Handshaking;
  }
  if (c->state == State::Handshaking) {
    int r = SSL_do_handshake(c->ssl);
    if (r != 1) {
      int e = SSL_get_error(c->ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
      return fail(c, "handshake: " + ssl_error_text());
    }
    const unsigned char* alpn = nullptr;
    unsigned alpn_len = 0;
    SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
    if (alpn_len != 2 || std::memcmp(alpn, "h2", 2) != 0) return fail(c, "handshake: ALPN h2 not selected");
    if (SSL_session_reused(c->ssl)) ++g_stats.resumed;
    if (g_stats.cipher.empty()) {
      g_stats.cipher = SSL_get_cipher_name(c->ssl);
      int nid = SSL_get_negotiated_group(c->ssl);
      const char* sn = OBJ_nid2sn(nid & ~static_cast<int>(TLSEXT_nid_unknown));
      g_stats.group = sn != nullptr ? sn : std::to_string(nid);
    }
    nghttp2_session_client_new(&c->h2, g_callbacks, c);
    nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, nullptr, 0);
    nghttp2_nv hdrs[] = {make_nv(":method", "POST"),
                         make_nv(":scheme", "https"),
                         make_nv(":authority", g_opt.authority),
                         make_nv(":path", g_opt.path),
                         make_nv("content-type", "application/grpc"),
                         make_nv("te", "trailers"),
                         make_nv("user-agent", "connload")};
    nghttp2_data_provider dp;
    dp.source.ptr = c;
    dp.read_callback = read_body;
    if (nghttp2_submit_request(c->h2, nullptr, hdrs, sizeof hdrs / sizeof hdrs[0], &dp, c) < 0)
      return fail(c, "nghttp2_submit_request");
    c->state = State::Active;
  }
  // Active or Idle: read everything there is, then write what nghttp2 wants.
  static uint8_t buf[16 * 1024];
  for (;;) {
    int r = SSL_read(c->ssl, buf, sizeof buf);
    if (r <= 0) {
      int e = SSL_get_error(c->ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
      if (e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL) return fail(c, "connection closed by server");
      return fail(c, "read: " + ssl_error_text());
    }
    if (nghttp2_session_mem_recv(c->h2, buf, static_cast<size_t>(r)) < 0) return fail(c, "h2 protocol error");
  }
  if (!flush(c)) return fail(c, "write: " + ssl_error_text());
  if (c->state == State::Active && c->stream_closed) finish_call(c);
}

// "127.0.0.1:8443" into `out`.
bool parse_ipv4(const std::string& text, sockaddr_in& out) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) return false;
  out.sin_family = AF_INET;
  out.sin_port = htons(static_cast<uint16_t>(std::atoi(text.c_str() + colon + 1)));
  return inet_pton(AF_INET, text.substr(0, colon).c_str(), &out.sin_addr) == 1;
}

[[noreturn]] void usage(int code) {
  std::fprintf(code == 0 ? stdout : stderr,
               "usage: connload --connect HOST:PORT [--duration SECS | --connections N] [--concurrency C]\n"
               "                [--resume] [--data FILE] [--path PATH] [--sni NAME] [--timeout SECS]\n"
               "                [--tls13-ciphers LIST] [--tickets-from HOST2:PORT2]\n"
               "       connload --connect HOST:PORT --hold N [--concurrency C] [--hold-time SECS]\n");
  std::exit(code);
}

// Runs connections until `total` were started (0: no count limit) and
// `duration` seconds passed (0: no time limit); in hold mode until stopped.
void run_phase(int ep, long total, double duration, bool hold) {
  const double t0 = now();
  const double end = duration > 0 ? t0 + duration : 0;
  bool ready_printed = false;
  double hold_end = 0;
  double last_sweep = t0;
  std::vector<epoll_event> events(1024);

  for (;;) {
    double t = now();
    bool may_start = !g_stop && (total == 0 || g_stats.started < total) && (end == 0 || t < end);
    // In-flight connections: those not yet answered.
    long in_flight = 0;
    for (Conn* c : g_conns)
      if (!c->dead && c->state != State::Idle) ++in_flight;
    long limit = g_opt.concurrency;
    if (g_opt.resume && g_stats.resumed == 0 && g_tickets.empty()) limit = 1;  // first: get a ticket
    while (may_start && in_flight < limit && (total == 0 || g_stats.started < total)) {
      start_conn(ep);
      ++in_flight;
    }
    if (hold) {
      if (!ready_printed && g_stats.ok + g_stats.failed >= total) {
        std::printf("ready ok=%ld failed=%ld\n", g_stats.ok, g_stats.failed);
        std::fflush(stdout);
        ready_printed = true;
        if (g_opt.hold_time > 0) hold_end = now() + g_opt.hold_time;
      }
      if (g_stop || (hold_end != 0 && now() >= hold_end)) break;
    } else if (in_flight == 0 && !may_start) {
      break;
    }
    if (g_stop && !hold) {
      // Stop asked: give up on in-flight connections.
      for (Conn* c : g_conns) fail(c, "interrupted");
    }

    int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 50);
    for (int i = 0; i < n; ++i) {
      auto* c = static_cast<Conn*>(events[i].data.ptr);
      if (!c->dead) drive(c);
    }
    // Reap dead connections; time out stuck ones (not idle held ones).
    t = now();
    bool sweep = t - last_sweep > 0.2;
    if (sweep) last_sweep = t;
    size_t j = 0;
    for (Conn* c : g_conns) {
      if (sweep && !c->dead && c->state != State::Idle && t > c->deadline) fail(c, "timeout");
      if (c->dead) {
        destroy(c);
      } else {
        g_conns[j++] = c;
      }
    }
    g_conns.resize(j);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string connect_to, tickets_from;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) usage(2);
      return argv[++i];
    };
    if (a == "--connect") connect_to = next();
    else if (a == "--tickets-from") {
      tickets_from = next();
      g_opt.resume = g_opt.cross = true;
    }
    else if (a == "--duration") g_opt.duration = std::atof(next());
    else if (a == "--connections") g_opt.connections = std::atol(next());
    else if (a == "--concurrency") g_opt.concurrency = std::atoi(next());
    else if (a == "--resume") g_opt.resume = true;
    else if (a == "--hold") g_opt.hold = std::atol(next());
    else if (a == "--hold-time") g_opt.hold_time = std::atof(next());
    else if (a == "--timeout") g_opt.timeout = std::atof(next());
    else if (a == "--path") g_opt.path = next();
    else if (a == "--sni") g_opt.sni = next();
    else if (a == "--tls13-ciphers") g_opt.ciphersuites = next();
    else if (a == "--data") {
      std::ifstream f(next(), std::ios::binary);
      if (!f) {
        std::fprintf(stderr, "connload: cannot read %s\n", argv[i]);
        return 2;
      }
      std::stringstream ss;
      ss << f.rdbuf();
      g_opt.body = ss.str();
    } else if (a == "-h" || a == "--help") usage(0);
    else usage(2);
  }
  if (g_opt.concurrency < 1 || !parse_ipv4(connect_to, g_opt.addr)) usage(2);
  if (g_opt.cross && (!parse_ipv4(tickets_from, g_opt.tickets_from) || g_opt.connections <= 0 ||
                      g_opt.connections > static_cast<long>(kMaxTickets) || g_opt.duration > 0 || g_opt.hold > 0))
    usage(2);
  g_opt.authority = connect_to;
  if (g_opt.hold == 0 && g_opt.duration <= 0 && g_opt.connections <= 0) g_opt.connections = 1;

  signal(SIGPIPE, SIG_IGN);
  struct sigaction sact{};
  sact.sa_handler = on_signal;
  sigaction(SIGTERM, &sact, nullptr);
  sigaction(SIGINT, &sact, nullptr);

  g_ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_min_proto_version(g_ctx, TLS1_3_VERSION);
  SSL_CTX_set_alpn_protos(g_ctx, reinterpret_cast<const unsigned char*>("\x02h2"), 3);
  SSL_CTX_set_verify(g_ctx, SSL_VERIFY_NONE, nullptr);
  SSL_CTX_set_read_ahead(g_ctx, 1);
  if (!g_opt.ciphersuites.empty() && SSL_CTX_set_ciphersuites(g_ctx, g_opt.ciphersuites.c_str()) != 1) {
    std::fprintf(stderr, "connload: bad --tls13-ciphers '%s'\n", g_opt.ciphersuites.c_str());
    return 2;
  }  // fewer read() calls: whole records at once
  SSL_CTX_set_mode(g_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (g_opt.resume) {
    SSL_CTX_set_session_cache_mode(g_ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(g_ctx, new_session_cb);
  }

  nghttp2_session_callbacks_new(&g_callbacks);
  nghttp2_session_callbacks_set_on_header_callback(g_callbacks, on_header);
  nghttp2_session_callbacks_set_on_stream_close_callback(g_callbacks, on_stream_close);

  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (g_opt.resume) {
    // Warm-up, not counted: enough full handshakes that every one of the C
    // connections in flight can start with a ticket of its own; with
    // --tickets-from, one per measured connection, all from the other server.
    const sockaddr_in measured = g_opt.addr;
    if (g_opt.cross) {
      g_opt.addr = g_opt.tickets_from;
      g_offer_tickets = false;
    }
    run_phase(ep, g_opt.cross ? g_opt.connections : g_opt.concurrency, 0, false);
    g_opt.addr = measured;
    g_offer_tickets = true;
    if (g_opt.cross) g_keep_tickets = false;
    if (g_stats.failed != 0) {
      std::printf("connections=%ld ok=%ld failed=%ld warmup=1 first_error=\"%s\"\n", g_stats.started, g_stats.ok,
                  g_stats.failed, g_stats.first_error.c_str());
      return 1;
    }
    std::string cipher = g_stats.cipher, group = g_stats.group;
    g_stats = Stats{};
    g_stats.cipher = cipher;
    g_stats.group = group;
    usleep(200 * 1000);  // let the server finish closing the warm-up connections
  }
  // A harness that samples the server's CPU time does it at this line and at
  // the summary line.
  std::printf("start\n");
  std::fflush(stdout);
  const double t0 = now();
  if (g_opt.hold > 0) {
    run_phase(ep, g_opt.hold, 0, true);
  } else {
    run_phase(ep, g_opt.connections, g_opt.duration, false);
  }
  double elapsed = now() - t0;
  std::printf("connections=%ld ok=%ld failed=%ld grpc_error=%ld resumed=%ld elapsed=%.3f rate=%.1f cipher=%s "
              "group=%s closed_idle=%ld",
              g_stats.started, g_stats.ok, g_stats.failed, g_stats.grpc_error, g_stats.resumed, elapsed,
              elapsed > 0 ? static_cast<double>(g_stats.ok) / elapsed : 0.0,
              g_stats.cipher.empty() ? "-" : g_stats.cipher.c_str(),
              g_stats.group.empty() ? "-" : g_stats.group.c_str(), g_stats.closed_idle);
  if (!g_stats.first_error.empty()) std::printf(" first_error=\"%s\"", g_stats.first_error.c_str());
  std::printf("\n");
  std::fflush(stdout);
  return g_stats.failed == 0 ? 0 : 1;
}
