// Issue 16: memory bounded and given back, descriptor exhaustion survived.
// The real tlsgate (one shard) under bursts of half-open handshakes, idle
// TLS + HTTP/2 connections and more connections than it may hold, with a
// good gRPC client beside it; what is checked is what an operator sees:
// the process's RSS (/proc/PID/status), its open descriptors, its log and
// whether clients are served.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

// VmRSS of `pid` in KiB (0 if unreadable).
uint64_t rss_kib(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6));
  return 0;
}

size_t open_fds(pid_t pid) {
  size_t n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++n;
  return n;
}

// Raises this process's descriptor limit (the clients need thousands).
bool raise_nofile(rlim_t want) {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return false;
  if (r.rlim_cur >= want) return true;
  r.rlim_cur = std::min(want, r.rlim_max);
  return setrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur >= want;
}

// A TCP connection to the gateway, connected (the kernel's handshake; the
// gateway may not have accepted it yet).
int tcp_connect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// The first half of a ClientHello record: the header announces 512 bytes,
// 260 follow. The gateway must wait for the rest.
const std::string& half_client_hello() {
  static const std::string h = [] {
    std::string s = {22, 3, 1, 2, 0, 1, 0, 1, static_cast<char>(252), 3, 3};
    s.resize(5 + 260, 'x');
    return s;
  }();
  return h;
}

int half_open(uint16_t port) {
  int fd = tcp_connect(port);
  if (fd < 0) return -1;
  const std::string& h = half_client_hello();
  if (::send(fd, h.data(), h.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(h.size())) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// A finished TLS handshake (ALPN h2) and the HTTP/2 preface with an empty
// SETTINGS frame, then nothing: an idle client connection.
struct IdleConn {
  int fd = -1;
  SSL* ssl = nullptr;
};

IdleConn idle_h2(SSL_CTX* ctx, uint16_t port) {
  IdleConn c;
  c.fd = tcp_connect(port);
  if (c.fd < 0) return c;
  c.ssl = SSL_new(ctx);
  SSL_set_fd(c.ssl, c.fd);
  static const unsigned char alpn[] = {2, 'h', '2'};
  SSL_set_alpn_protos(c.ssl, alpn, sizeof alpn);
  static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\4\0\0\0\0\0";
  if (SSL_connect(c.ssl) != 1 || SSL_write(c.ssl, preface, sizeof preface - 1) != static_cast<int>(sizeof preface - 1)) {
    SSL_free(c.ssl);
    ::close(c.fd);
    return IdleConn{};
  }
  return c;
}

void close_all(std::vector<int>& fds) {
  for (int fd : fds) ::close(fd);
  fds.clear();
}

void close_all(std::vector<IdleConn>& conns) {
  for (auto& c : conns) {
    SSL_free(c.ssl);  // no close_notify: the peer simply goes away
    ::close(c.fd);
  }
  conns.clear();
}

bool unary_ok(Echo::Stub& stub, const std::string& text) {
  EchoRequest req;
  req.set_payload(text);
  EchoReply reply;
  auto ctx = context(5s);
  return stub.Unary(ctx.get(), req, &reply).ok() && reply.payload() == text;
}

// Waits until pred() holds, polling; false after `timeout`.
template <class Pred>
bool eventually(Pred pred, Ms timeout) {
  auto deadline = Clock::now() + timeout;
  while (!pred()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(50ms);
  }
  return true;
}

// Counter `name` of the gateway's stopped: line in `log`, or 0. (No
// <regex> in this file: GCC 12's libstdc++ regex raises a false
// -Wmaybe-uninitialized in the sanitizer build.)
uint64_t counter(const std::string& log, const std::string& name) {
  const auto counters = stopped_counters(log);
  const auto it = counters.find(name);
  return it == counters.end() ? 0 : std::strtoull(it->second.c_str(), nullptr, 10);
}

// The counts of the descriptor warnings in the log: each line's "N times
// since the last warning".
std::vector<uint64_t> fd_warnings(const std::string& log) {
  static const std::string kLine = "out of file descriptors (";
  static const std::string kCount = " times since the last warning";
  std::vector<uint64_t> counts;
  for (size_t at = log.find(kLine); at != std::string::npos; at = log.find(kLine, at + 1)) {
    const size_t eol = log.find('\n', at);
    const std::string line = log.substr(at, eol == std::string::npos ? std::string::npos : eol - at);
    const size_t times = line.find(kCount);
    const size_t comma = times == std::string::npos ? std::string::npos : line.rfind(", ", times);
    if (comma == std::string::npos) continue;
    counts.push_back(std::strtoull(line.c_str() + comma + 2, nullptr, 10));
  }
  return counts;
}

class LimitsTest : public GatewayTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(raise_nofile(16000)) << "the test needs 16,000 descriptors for its clients";
    GatewayTest::SetUp();
  }
  void configure(GatewayConfig& cfg) override {
    cfg.workers = 1;  // one shard: its RSS and descriptors are the process's
    cfg.handshake_timeout = "60s";  // the half-open clients stay until the test closes them
    tune(cfg);
  }
  virtual void tune(GatewayConfig&) {}
  pid_t pid() { return gw_->process().pid(); }
};

// ------------------------------------------------------------ memory comes back

class MemoryReturn : public LimitsTest {
 protected:
  // RSS may stay this much above where it started. Measured here: ~10 MB
  // stays (connection slots kept for reuse, which never shrink; the first
  // page of each nghttp2 pool span; the allocator's own metadata). With the
  // 5 s decommit delay tlsgate set before issue 16 the same run kept ~15 MB,
  // and before the lazy TLS session a half-open connection alone took ~45 KiB
  // (~90 MB for the burst), so the margin tells them apart.
  static constexpr uint64_t kMarginKib = 12 * 1024;

  // Under AddressSanitizer tlsgate's allocator is ASan's: no quarantine, and
  // freed pages released to the OS every 100 ms, so the same question (does
  // memory come back?) is asked of the same program.
  void tune(GatewayConfig& cfg) override {
    if (kSanitized)
      cfg.process_env["ASAN_OPTIONS"] =
          "detect_leaks=1:abort_on_error=0:quarantine_size_mb=0:allocator_release_to_os_interval_ms=100";
  }
  // ASan's allocator gives back only wholly free pages of its size-class
  // regions, and its shadow stays mapped: measured, it returns about 60% of
  // what the bursts took (170 -> 87 MB from a 38 MB start). So there the test
  // asks for at least half back; the release build asks for kMarginKib.
  static uint64_t margin_kib(uint64_t peak_growth_kib) {
    return kSanitized ? peak_growth_kib / 2 : kMarginKib;
  }
};

TEST_F(MemoryReturn, AfterBurstsOfHalfOpenAndIdleConnections) {
  constexpr int kHalfOpen = 2000;
  constexpr int kIdle = 5000;
  auto stub = this->stub();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(unary_ok(*stub, "warm-up " + std::to_string(i)));
  std::this_thread::sleep_for(1500ms);
  const uint64_t base = rss_kib(pid());
  const size_t base_fds = open_fds(pid());

  std::vector<int> half;
  for (int i = 0; i < kHalfOpen; ++i) {
    int fd = half_open(gw_->endpoint().port);
    ASSERT_GE(fd, 0) << "half-open connection " << i;
    half.push_back(fd);
  }
  ASSERT_TRUE(eventually([&] { return open_fds(pid()) >= base_fds + kHalfOpen; }, 15s))
      << "tlsgate holds " << open_fds(pid()) - base_fds << " of the half-open connections";
  std::this_thread::sleep_for(300ms);  // their first bytes read
  const uint64_t half_peak = rss_kib(pid());
  EXPECT_TRUE(unary_ok(*stub, "beside the half-open ones"));
  close_all(half);

  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  std::vector<IdleConn> idle;
  for (int i = 0; i < kIdle; ++i) {
    IdleConn c = idle_h2(ctx, gw_->endpoint().port);
    ASSERT_GE(c.fd, 0) << "idle connection " << i;
    idle.push_back(c);
  }
  std::this_thread::sleep_for(300ms);
  const uint64_t idle_peak = rss_kib(pid());
  EXPECT_TRUE(unary_ok(*stub, "beside the idle ones"));
  close_all(idle);
  SSL_CTX_free(ctx);
  ASSERT_TRUE(eventually([&] { return open_fds(pid()) <= base_fds; }, 10s)) << "connections not closed";

  // Traffic flows while the memory should come back.
  uint64_t after = 0;
  const uint64_t margin = margin_kib(std::max(half_peak, idle_peak) - base);
  auto back = [&] {
    (void)unary_ok(*stub, "after");
    after = rss_kib(pid());
    return after <= base + margin;
  };
  const bool returned = eventually(back, 10s);
  const double half_each = (static_cast<double>(half_peak) - static_cast<double>(base)) * 1024 / kHalfOpen;
  std::cout << "[ info ] RSS KiB: start " << base << ", 2,000 half-open " << half_peak << " (~" << half_each
            << " bytes each), 5,000 idle h2 " << idle_peak << ", after " << after << "\n";
  RecordProperty("rss_start_kib", static_cast<int>(base));
  RecordProperty("rss_half_open_peak_kib", static_cast<int>(half_peak));
  RecordProperty("rss_idle_peak_kib", static_cast<int>(idle_peak));
  RecordProperty("rss_after_kib", static_cast<int>(after));
  EXPECT_TRUE(unary_ok(*stub, "still served"));
  EXPECT_TRUE(returned) << "RSS " << after << " KiB 10 s after the bursts; started at " << base << " KiB (margin "
                        << margin << " KiB)";
}

// ------------------------------------------------------------ max_connections

class MaxConnections : public LimitsTest {
 protected:
  static constexpr int kMax = 100;
  void tune(GatewayConfig& cfg) override {
    cfg.extra_listener = "max_connections = " + std::to_string(kMax) + "\n";
    cfg.extra_top = "[limits]\nbody_buffer = 4194304\nchunk_pool = 8388608\n";
  }
};

TEST_F(MaxConnections, AcceptPausesAtTheLimitAndResumes) {
  auto stub = this->stub();
  ASSERT_TRUE(unary_ok(*stub, "before"));  // the good client holds one of the places
  std::this_thread::sleep_for(500ms);
  const uint64_t base = rss_kib(pid());
  const size_t base_fds = open_fds(pid());
  std::vector<int> flood;
  for (int i = 0; i < 1000; ++i) {
    int fd = half_open(gw_->endpoint().port);  // beyond the limit: waits in the listen backlog
    ASSERT_GE(fd, 0) << "connection " << i;
    flood.push_back(fd);
  }
  std::this_thread::sleep_for(1s);
  // The good client keeps being served on its connection.
  for (int i = 0; i < 20; ++i) EXPECT_TRUE(unary_ok(*stub, "during " + std::to_string(i)));
  const size_t fds = open_fds(pid());
  const uint64_t rss = rss_kib(pid());
  // At most kMax client connections (one is the good client's) plus what
  // was already queued when accepting paused.
  EXPECT_LE(fds, base_fds + kMax + 8) << "tlsgate accepted past max_connections";
  EXPECT_GE(fds, base_fds + kMax - 8) << "tlsgate did not accept up to max_connections";
  // 100 half-open connections: well under 64 KiB each, whatever the
  // allocator keeps (four times that under ASan: redzones and quarantine).
  const uint64_t per_connection_kib = kSanitized ? 256 : 64;
  EXPECT_LE(rss, base + kMax * per_connection_kib) << "RSS grew past the bound for " << kMax << " connections";
  std::cout << "[ info ] 1,000 connections, max_connections " << kMax << ": " << fds - base_fds
            << " descriptors more, RSS " << base << " -> " << rss << " KiB\n";
  close_all(flood);
  // Places free again: a new client is served.
  auto fresh = this->stub();
  EXPECT_TRUE(eventually([&] { return unary_ok(*fresh, "a new client"); }, 10s));
  gw_->stop();
  const std::string log = gw_->process().stderr_text();
  EXPECT_GE(counter(log, "accept_paused"), 1u) << log.substr(log.size() > 2000 ? log.size() - 2000 : 0);
}

// ------------------------------------------------------------ body_buffer

class BodyBuffer : public LimitsTest {
 protected:
  // 256 KiB for all request and response bodies of the shard: 16 concurrent
  // 1 MiB calls, each allowed a 256 KiB window per direction, cannot all be
  // held, so some streams must be reset. (With 1 MiB, a backend that read
  // as fast as the client sent let every body through once in a CI run.)
  void tune(GatewayConfig& cfg) override { cfg.extra_top = "[limits]\nbody_buffer = 262144\n"; }
};

TEST_F(BodyBuffer, StreamsThatDoNotFitAreResetNeverForwardedWithAHole) {
  constexpr int kCalls = 16;
  const uint64_t base = rss_kib(pid());
  auto ch = tls_channel(gw_->target());
  ASSERT_TRUE(wait_connected(ch, 10s));
  auto stub = Echo::NewStub(ch);
  std::vector<std::string> payloads;
  for (int i = 0; i < kCalls; ++i) payloads.push_back(pattern(1 << 20, static_cast<unsigned>(i)));
  grpc::CompletionQueue cq;
  struct Call {
    std::unique_ptr<grpc::ClientContext> ctx;
    EchoReply reply;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<EchoReply>> rpc;
  };
  std::vector<Call> calls(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    EchoRequest req;
    req.set_payload(payloads[static_cast<size_t>(i)]);
    calls[static_cast<size_t>(i)].ctx = context(30s);
    calls[static_cast<size_t>(i)].rpc = stub->AsyncUnary(calls[static_cast<size_t>(i)].ctx.get(), req, &cq);
    calls[static_cast<size_t>(i)].rpc->Finish(&calls[static_cast<size_t>(i)].reply,
                                              &calls[static_cast<size_t>(i)].status, reinterpret_cast<void*>(i));
  }
  int ok = 0, exhausted = 0;
  for (int done = 0; done < kCalls; ++done) {
    void* tag = nullptr;
    bool fine = false;
    ASSERT_TRUE(cq.Next(&tag, &fine));
    const auto i = reinterpret_cast<intptr_t>(tag);
    const Call& c = calls[static_cast<size_t>(i)];
    if (c.status.ok()) {
      // Forwarded whole or not at all: an echo that comes back is the request.
      EXPECT_TRUE(c.reply.payload() == payloads[static_cast<size_t>(i)]) << "call " << i << " came back altered";
      ++ok;
    } else {
      EXPECT_EQ(c.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << "call " << i << ": " << status_str(c.status);
      ++exhausted;
    }
  }
  const uint64_t rss = rss_kib(pid());
  std::cout << "[ info ] " << kCalls << " concurrent 1 MiB requests, body_buffer 256 KiB: " << ok << " echoed, "
            << exhausted << " reset; RSS " << base << " -> " << rss << " KiB\n";
  EXPECT_GT(exhausted, 0) << "256 KiB held every body: the limit was not reached";
  // The connection and the gateway keep serving small calls.
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(unary_ok(*stub, "small " + std::to_string(i)));
  gw_->stop();
  const std::string log = gw_->process().stderr_text();
  EXPECT_GE(counter(log, "body_buffer_resets"), static_cast<uint64_t>(exhausted));
}

// ------------------------------------------------------------ EMFILE

class FdExhaustion : public LimitsTest {
 protected:
  void SetUp() override {
    // tlsgate inherits the limit when the harness forks it: 64 descriptors.
    rlimit r{};
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &r), 0);
    saved_ = r;
    r.rlim_cur = 64;
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &r), 0);
    GatewayTest::SetUp();
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved_), 0);
    ASSERT_TRUE(raise_nofile(4096));
  }
  rlimit saved_{};
};

TEST_F(FdExhaustion, AcceptPausesLogsOnceASecondAndRecovers) {
  auto stub = this->stub();
  ASSERT_TRUE(unary_ok(*stub, "before"));
  std::vector<int> flood;
  for (int i = 0; i < 200; ++i) {
    int fd = half_open(gw_->endpoint().port);
    ASSERT_GE(fd, 0) << "connection " << i;
    flood.push_back(fd);
  }
  const auto start = Clock::now();
  auto warnings = [&] { return static_cast<long>(fd_warnings(gw_->process().stderr_text()).size()); };
  ASSERT_TRUE(eventually([&] { return warnings() >= 1; }, 5s)) << gw_->process().stderr_text();
  std::this_thread::sleep_for(3s);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const long lines = warnings();
  // Once a second (plus the first line at once), never a line per retry.
  EXPECT_LE(lines, static_cast<long>(seconds) + 2) << "in " << seconds << " s:\n" << gw_->process().stderr_text();
  close_all(flood);
  auto fresh = this->stub();
  EXPECT_TRUE(eventually([&] { return unary_ok(*fresh, "after"); }, 10s)) << "not served after the flood closed";
  EXPECT_TRUE(unary_ok(*stub, "the first client too"));
  gw_->stop();
  const std::string log = gw_->process().stderr_text();
  EXPECT_GE(counter(log, "fd_exhausted"), 1u);
  const std::vector<uint64_t> counts = fd_warnings(log);
  ASSERT_FALSE(counts.empty());
  EXPECT_GE(counts.front(), 1u);
}

}  // namespace
}  // namespace tlsgate::itest
