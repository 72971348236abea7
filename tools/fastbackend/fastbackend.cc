// fastbackend: a minimal single-threaded h2c gRPC server for benchmarks.
//
//   fastbackend --listen 127.0.0.1:PORT [--max-concurrent-streams N]
//               [--refuse N] [--goaway-after N] [--hold]
//
// Answers every request (any method, any path) once its END_STREAM arrives
// with :status 200, content-type application/grpc, one DATA frame echoing the
// request body (the request's gRPC message; an empty gRPC message when the
// request had no body) and trailers grpc-status: 0. No protobuf, no grpc++:
// one epoll loop over libnghttp2 sessions, so that a proxy in front of it is
// the bottleneck, not the backend.
//
// Test modes for the gateway's retries (both off by default):
//   --refuse N        the first N request streams (counted over all
//                     connections) get RST_STREAM REFUSED_STREAM as soon as
//                     their HEADERS arrive, and nothing else.
//   --goaway-after N  on each connection, when the N-th request stream is
//                     answered, GOAWAY(NO_ERROR, last-stream-id = that stream)
//                     is sent; streams above it get nothing (nghttp2 closes
//                     them as refused by the GOAWAY). The connection closes
//                     once its remaining streams are done.
//   --hold            never answer: every request stays open until the client
//                     resets it (a backend that ignores grpc-timeout, for the
//                     gateway's own deadline). Counted: held, cancelled (reset
//                     by the client with CANCEL).
//
// Prints "listening on HOST:PORT" (the port actually bound; --listen may give
// port 0) on stderr. SIGTERM / SIGINT stop it; it then prints
// "fastbackend: stopped by signal S from pid P: connections=N calls=N" on
// stderr, followed by " refused=N goaways=N held=N cancelled=N" when a test
// mode is given, and exits 0. calls counts answered streams only.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

volatile sig_atomic_t g_stop = 0;
volatile sig_atomic_t g_stop_signal = 0;
volatile pid_t g_stop_sender = 0;
void on_signal(int sig, siginfo_t* info, void*) {
  g_stop = 1;
  g_stop_signal = sig;
  g_stop_sender = info != nullptr ? info->si_pid : 0;
}

uint64_t g_calls = 0;
uint64_t g_conns = 0;
uint64_t g_refuse = 0;        // --refuse: streams still to refuse
uint64_t g_refused = 0;       // streams refused so far
uint64_t g_goaway_after = 0;  // --goaway-after; 0 = never
bool g_hold = false;           // --hold
uint64_t g_held = 0;           // requests never answered (--hold)
uint64_t g_cancelled = 0;      // held requests the client reset with CANCEL
uint64_t g_goaways = 0;

constexpr std::string_view kEmptyGrpcMessage{"\0\0\0\0\0", 5};

struct Stream {
  std::string body;      // request body, then echoed back
  size_t off = 0;        // bytes of body already handed to nghttp2
  bool refused = false;  // --refuse: RST_STREAM submitted, never answered
  bool held = false;     // --hold: complete, deliberately not answered
};

struct Conn {
  int fd = -1;
  nghttp2_session* session = nullptr;
  std::string out;  // bytes produced by nghttp2, not yet written
  size_t out_off = 0;
  bool epollout = false;
  uint64_t answered = 0;     // streams answered on this connection
  int32_t goaway_last = -1;  // --goaway-after: last-stream-id sent, -1 = none
};

nghttp2_nv make_nv(std::string_view name, std::string_view value) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
                    NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
}

ssize_t read_body(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                  uint32_t* data_flags, nghttp2_data_source* source, void*) {
  auto* st = static_cast<Stream*>(source->ptr);
  size_t n = st->body.size() - st->off;
  if (n > length) n = length;
  std::memcpy(buf, st->body.data() + st->off, n);
  st->off += n;
  if (st->off == st->body.size()) {
    *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    static nghttp2_nv trailers[] = {make_nv("grpc-status", "0")};
    if (nghttp2_submit_trailer(session, stream_id, trailers, 1) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  return static_cast<ssize_t>(n);
}

int on_begin_headers(nghttp2_session* session, const nghttp2_frame* frame, void*) {
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  auto* st = new Stream;
  nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, st);
  if (g_refuse > 0) {
    // The flag keeps a body or END_STREAM that arrives before the RST_STREAM
    // goes out from being answered.
    --g_refuse;
    ++g_refused;
    st->refused = true;
    if (nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_REFUSED_STREAM) !=
        0)
      return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  return 0;
}

int on_data_chunk(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data, size_t len,
                  void*) {
  auto* st = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (st != nullptr && !st->refused) st->body.append(reinterpret_cast<const char*>(data), len);
  return 0;
}

int on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0) return 0;
  auto* st = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (st == nullptr || st->refused) return 0;
  auto* c = static_cast<Conn*>(user_data);
  // Above the GOAWAY's last-stream-id: never processed, the client retries it.
  if (c->goaway_last >= 0 && frame->hd.stream_id > c->goaway_last) return 0;
  if (g_hold) {
    st->held = true;
    ++g_held;
    return 0;
  }
  if (st->body.empty()) st->body.assign(kEmptyGrpcMessage);
  static nghttp2_nv headers[] = {make_nv(":status", "200"), make_nv("content-type", "application/grpc")};
  nghttp2_data_provider dp;
  dp.source.ptr = st;
  dp.read_callback = read_body;
  if (nghttp2_submit_response(session, frame->hd.stream_id, headers, 2, &dp) != 0)
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  ++g_calls;
  if (g_goaway_after != 0 && ++c->answered == g_goaway_after && c->goaway_last < 0) {
    c->goaway_last = frame->hd.stream_id;
    if (nghttp2_submit_goaway(session, NGHTTP2_FLAG_NONE, c->goaway_last, NGHTTP2_NO_ERROR, nullptr, 0) != 0)
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    ++g_goaways;
  }
  return 0;
}

int on_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code, void*) {
  auto* st = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (st != nullptr && st->held && error_code == NGHTTP2_CANCEL) ++g_cancelled;
  delete st;
  nghttp2_session_set_stream_user_data(session, stream_id, nullptr);
  return 0;
}

nghttp2_session_callbacks* g_callbacks = nullptr;
nghttp2_option* g_option = nullptr;
uint32_t g_max_streams = 0;  // 0 = not advertised (unlimited, like a grpc++ server)

void close_conn(int ep, Conn* c) {
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, nullptr);
  close(c->fd);
  nghttp2_session_del(c->session);  // frees remaining streams via on_stream_close
  delete c;
}

// Writes what nghttp2 has to send. Returns false when the connection is done.
bool flush(int ep, Conn* c) {
  for (;;) {
    if (c->out_off == c->out.size()) {
      c->out.clear();
      c->out_off = 0;
      // Gather everything nghttp2 wants to send into one buffer: one write().
      for (;;) {
        const uint8_t* data = nullptr;
        ssize_t n = nghttp2_session_mem_send(c->session, &data);
        if (n < 0) return false;
        if (n == 0) break;
        c->out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
        if (c->out.size() >= 256 * 1024) break;
      }
      if (c->out.empty()) break;
    }
    ssize_t w = write(c->fd, c->out.data() + c->out_off, c->out.size() - c->out_off);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return false;
    }
    c->out_off += static_cast<size_t>(w);
  }
  bool pending = c->out_off < c->out.size();
  if (pending != c->epollout) {
    epoll_event ev{};
    ev.events = EPOLLIN | (pending ? EPOLLOUT : 0u);
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->epollout = pending;
  }
  if (!pending && nghttp2_session_want_read(c->session) == 0 && nghttp2_session_want_write(c->session) == 0)
    return false;
  return true;
}

bool on_readable(Conn* c) {
  static uint8_t buf[64 * 1024];
  for (;;) {
    ssize_t n = read(c->fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN;
    }
    if (n == 0) return false;
    if (nghttp2_session_mem_recv(c->session, buf, static_cast<size_t>(n)) < 0) return false;
    if (static_cast<size_t>(n) < sizeof buf) return true;
  }
}

void accept_all(int ep, int lfd) {
  for (;;) {
    int fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto* c = new Conn;
    c->fd = fd;
    nghttp2_session_server_new2(&c->session, g_callbacks, c, g_option);
    std::vector<nghttp2_settings_entry> iv = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (1u << 24)}};
    if (g_max_streams != 0) iv.push_back({NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, g_max_streams});
    nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv.data(), iv.size());
    nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, (1 << 30));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    ++g_conns;
    if (!flush(ep, c)) close_conn(ep, c);
  }
}

[[noreturn]] void usage(int code) {
  std::fprintf(code == 0 ? stdout : stderr,
               "usage: fastbackend --listen HOST:PORT [--max-concurrent-streams N] [--refuse N] [--hold]\n"
               "                   [--goaway-after N]\n");
  std::exit(code);
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:50051";
  bool test_modes = false;  // --refuse / --goaway-after given: report their counts
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--listen" && i + 1 < argc) {
      listen = argv[++i];
    } else if (a == "--max-concurrent-streams" && i + 1 < argc) {
      g_max_streams = static_cast<uint32_t>(std::strtoul(argv[++i], nullptr, 10));
    } else if (a == "--refuse" && i + 1 < argc) {
      g_refuse = std::strtoull(argv[++i], nullptr, 10);
      test_modes = true;
    } else if (a == "--goaway-after" && i + 1 < argc) {
      g_goaway_after = std::strtoull(argv[++i], nullptr, 10);
      test_modes = true;
    } else if (a == "--hold") {
      g_hold = true;
      test_modes = true;
    } else if (a == "-h" || a == "--help") {
      usage(0);
    } else {
      usage(2);
    }
  }
  auto colon = listen.rfind(':');
  if (colon == std::string::npos) usage(2);
  std::string host = listen.substr(0, colon);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::atoi(listen.c_str() + colon + 1)));
  if (inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1) {
    std::fprintf(stderr, "fastbackend: bad IPv4 address '%s'\n", host.c_str());
    return 2;
  }

  signal(SIGPIPE, SIG_IGN);
  struct sigaction sact{};
  sact.sa_sigaction = on_signal;
  sact.sa_flags = SA_SIGINFO;
  sigaction(SIGTERM, &sact, nullptr);
  sigaction(SIGINT, &sact, nullptr);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(lfd, 4096) != 0) {
    std::fprintf(stderr, "fastbackend: cannot listen on %s: %s\n", listen.c_str(), std::strerror(errno));
    return 1;
  }
  socklen_t slen = sizeof sa;
  getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &slen);
  std::fprintf(stderr, "listening on %s:%u\n", host.c_str(), ntohs(sa.sin_port));
  std::fflush(stderr);

  nghttp2_session_callbacks_new(&g_callbacks);
  nghttp2_session_callbacks_set_on_begin_headers_callback(g_callbacks, on_begin_headers);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(g_callbacks, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_recv_callback(g_callbacks, on_frame_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(g_callbacks, on_stream_close);
  nghttp2_option_new(&g_option);
  nghttp2_option_set_no_closed_streams(g_option, 1);

  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event lev{};
  lev.events = EPOLLIN;
  lev.data.ptr = nullptr;  // nullptr = the listening socket
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);

  epoll_event events[256];
  while (!g_stop) {
    int n = epoll_wait(ep, events, 256, 500);
    for (int i = 0; i < n; ++i) {
      auto* c = static_cast<Conn*>(events[i].data.ptr);
      if (c == nullptr) {
        accept_all(ep, lfd);
        continue;
      }
      bool ok = true;
      if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) ok = on_readable(c);
      if (ok) ok = flush(ep, c);
      if (!ok) close_conn(ep, c);
    }
  }
  std::fprintf(stderr, "fastbackend: stopped by signal %d from pid %d: connections=%llu calls=%llu",
               static_cast<int>(g_stop_signal), static_cast<int>(g_stop_sender),
               static_cast<unsigned long long>(g_conns), static_cast<unsigned long long>(g_calls));
  if (test_modes)
    std::fprintf(stderr, " refused=%llu goaways=%llu held=%llu cancelled=%llu",
                 static_cast<unsigned long long>(g_refused), static_cast<unsigned long long>(g_goaways),
                 static_cast<unsigned long long>(g_held), static_cast<unsigned long long>(g_cancelled));
  std::fprintf(stderr, "\n");
  return 0;
}
