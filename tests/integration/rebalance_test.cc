// Connections that rebalance (issue 18): the listener's keepalive_interval /
// keepalive_timeout (a PING to a quiet client; no answer, closed) and
// max_connection_age / max_connection_age_grace (the two-step GOAWAY past
// the age; with a grace, what still runs is cut). Real tlsgate, real echo
// backend, real gRPC clients, and a hand-made TLS + HTTP/2 client for a
// peer that stops answering. The counters come from the "stopped:" line.
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

constexpr uint8_t kSettings = 4;
constexpr uint8_t kPing = 6;
constexpr uint8_t kGoaway = 7;
constexpr uint8_t kAck = 0x1;

std::string h2_frame(uint8_t type, uint8_t flags, const std::string& payload = "") {
  const size_t n = payload.size();
  std::string f = {static_cast<char>(n >> 16),
                   static_cast<char>(n >> 8),
                   static_cast<char>(n),
                   static_cast<char>(type),
                   static_cast<char>(flags),
                   0,
                   0,
                   0,
                   0};
  return f + payload;
}

struct RawFrame {
  uint8_t type = 0;
  uint8_t flags = 0;
  std::string payload;
};

// TLS (ALPN h2) with the client preface and an empty SETTINGS, then only
// what the test tells it: it reads the gateway's frames and, when asked,
// ACKs its PINGs; nothing else.
class QuietClient {
 public:
  ~QuietClient() {
    if (ssl_ != nullptr) SSL_free(ssl_);
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
    if (fd_ >= 0) ::close(fd_);
  }

  std::string open(int port) {
    fd_ = tcp_connect("127.0.0.1", port, 5s);
    if (fd_ < 0) return "cannot connect";
    ctx_ = SSL_CTX_new(TLS_client_method());
    ssl_ = SSL_new(ctx_);
    static const unsigned char kAlpn[] = {2, 'h', '2'};
    SSL_set_alpn_protos(ssl_, kAlpn, sizeof kAlpn);
    SSL_set_tlsext_host_name(ssl_, "localhost");
    SSL_set_fd(ssl_, fd_);
    if (SSL_connect(ssl_) != 1) return "TLS handshake failed";
    if (!send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(kSettings, 0))) return "cannot send the preface";
    return "";
  }

  // Reads frames until the gateway closes or `timeout` passes; with
  // `answer_pings`, each PING is ACKed as a live client would. True if the
  // gateway closed.
  bool read_until_closed(Ms timeout, bool answer_pings) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      if (SSL_pending(ssl_) == 0) {
        pollfd p{fd_, POLLIN, 0};
        const auto left = std::chrono::duration_cast<Ms>(deadline - Clock::now());
        if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 1))) <= 0) continue;
      }
      char buf[16384];
      const int n = SSL_read(ssl_, buf, sizeof buf);
      if (n <= 0) {
        const int err = SSL_get_error(ssl_, n);
        ERR_clear_error();
        if (err == SSL_ERROR_WANT_READ) continue;
        return true;
      }
      in_.append(buf, static_cast<size_t>(n));
      for (const RawFrame& f : parse())
        if (answer_pings && f.type == kPing && !(f.flags & kAck)) send(h2_frame(kPing, kAck, f.payload));
    }
    return false;
  }

  size_t pings() const {
    size_t n = 0;
    for (const RawFrame& f : frames_) n += f.type == kPing && !(f.flags & kAck);
    return n;
  }
  size_t goaways() const {
    size_t n = 0;
    for (const RawFrame& f : frames_) n += f.type == kGoaway;
    return n;
  }

 private:
  bool send(const std::string& bytes) {
    return SSL_write(ssl_, bytes.data(), static_cast<int>(bytes.size())) == static_cast<int>(bytes.size());
  }
  std::vector<RawFrame> parse() {
    std::vector<RawFrame> fresh;
    size_t off = 0;
    while (in_.size() - off >= 9) {
      const size_t len =
          size_t(uint8_t(in_[off])) << 16 | size_t(uint8_t(in_[off + 1])) << 8 | uint8_t(in_[off + 2]);
      if (in_.size() - off - 9 < len) break;
      RawFrame f{static_cast<uint8_t>(in_[off + 3]), static_cast<uint8_t>(in_[off + 4]),
                 in_.substr(off + 9, len)};
      fresh.push_back(f);
      frames_.push_back(std::move(f));
      off += 9 + len;
    }
    in_.erase(0, off);
    return fresh;
  }

  int fd_ = -1;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  std::string in_;
  std::vector<RawFrame> frames_;
};

// One worker, so that every count is one shard's; the listener's keys from
// the test.
class Rebalance : public GatewayTest {
 protected:
  void SetUp() override {
    std::signal(SIGPIPE, SIG_IGN);
    GatewayTest::SetUp();
  }
  void configure(GatewayConfig& cfg) override {
    cfg.workers = 1;
    cfg.extra_listener = listener_keys();
  }
  virtual std::string listener_keys() const = 0;

  std::map<std::string, uint64_t> stop_and_count() {
    gw_->stop();
    std::map<std::string, uint64_t> counters;
    for (const auto& [key, value] : stopped_counters(gw_->process().stderr_text()))
      counters[key] = std::strtoull(value.c_str(), nullptr, 10);
    return counters;
  }
};

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// ------------------------------------------------------------ keepalive

class Keepalive : public Rebalance {
 protected:
  std::string listener_keys() const override {
    return "keepalive_interval = \"1s\"\nkeepalive_timeout = \"1s\"\n";
  }
};

// A peer that completed TLS and the preface and then went silent (what a
// connection the balancer dropped looks like): a PING after 1 s, closed 1 s
// later when nothing came back.
TEST_F(Keepalive, SilentClientIsPingedThenClosed) {
  QuietClient c;
  ASSERT_EQ(c.open(gw_->endpoint().port), "");
  const auto start = Clock::now();
  ASSERT_TRUE(c.read_until_closed(10s, /*answer_pings=*/false)) << "still open after 10 s";
  const double took = seconds(Clock::now() - start);
  std::cout << "[ measured ] silent client closed after " << took << " s\n";
  EXPECT_GE(took, 1.9) << "closed before keepalive_interval + keepalive_timeout";
  EXPECT_LE(took, 5.0) << "interval 1 s + timeout 1 s, checked every 100 ms";
  EXPECT_GE(c.pings(), 1u) << "no PING before the close";
  auto n = stop_and_count();
  EXPECT_EQ(n["keepalive_timeouts"], 1u);
  EXPECT_GE(n["keepalive_pings"], 1u);
}

// A gRPC channel left idle answers the PINGs (the library does): it stays
// on its one connection past several intervals and a call on it succeeds.
// The timeout is well above 5 s on purpose: a gRPC C++ client that only makes
// synchronous calls reads an idle connection only when grpc's backup poller
// runs, every 5 s (with a 1 s timeout this test saw the gateway close it).
class KeepaliveGrpc : public Rebalance {
 protected:
  std::string listener_keys() const override {
    return "keepalive_interval = \"1s\"\nkeepalive_timeout = \"7s\"\n";
  }
};

TEST_F(KeepaliveGrpc, IdleChannelAnswersAndStays) {
  auto ch = tls_channel(gw_->target());
  auto stub = Echo::NewStub(ch);
  ASSERT_TRUE(unary(*stub, "before").status.ok());
  // A PING at ~1 s, answered within about 5 s, the next one 1 s after the
  // answer; a client that did not answer would be closed at ~8 s.
  std::this_thread::sleep_for(9s);
  EXPECT_EQ(ch->GetState(false), GRPC_CHANNEL_READY);
  const UnaryOutcome after = unary(*stub, "after");
  EXPECT_TRUE(after.status.ok()) << status_str(after.status);
  auto n = stop_and_count();
  EXPECT_GE(n["keepalive_pings"], 2u);
  EXPECT_EQ(n["keepalive_timeouts"], 0u);
  EXPECT_EQ(n["accepted"], 1u) << "the channel had to reconnect";
}

class KeepaliveAndIdle : public Rebalance {
 protected:
  std::string listener_keys() const override {
    return "keepalive_interval = \"1s\"\nkeepalive_timeout = \"1s\"\nidle_timeout = \"3s\"\n";
  }
};

// The ACKs of the gateway's own PINGs are no client activity: a client that
// answers them but sends no request is still closed at idle_timeout (with a
// GOAWAY), and never as a keepalive timeout nor for glitches.
TEST_F(KeepaliveAndIdle, PingAcksDoNotKeepAnIdleConnection) {
  QuietClient c;
  ASSERT_EQ(c.open(gw_->endpoint().port), "");
  const auto start = Clock::now();
  ASSERT_TRUE(c.read_until_closed(10s, /*answer_pings=*/true)) << "the ACKs kept an idle connection open";
  const double took = seconds(Clock::now() - start);
  std::cout << "[ measured ] answering idle client closed after " << took << " s\n";
  EXPECT_GE(took, 2.9);
  EXPECT_LE(took, 6.0);
  EXPECT_GE(c.pings(), 2u);
  EXPECT_GE(c.goaways(), 1u) << "an idle close says GOAWAY";
  auto n = stop_and_count();
  EXPECT_EQ(n["idle_closed"], 1u);
  EXPECT_EQ(n["keepalive_timeouts"], 0u);
  EXPECT_EQ(n["h2_glitch_pings"], 0u);
  EXPECT_EQ(n["downstream_protocol_errors"], 0u);
}

// ------------------------------------------------------------ max_connection_age

class MaxAge : public Rebalance {
 protected:
  std::string listener_keys() const override { return "max_connection_age = \"1s\"\n"; }
};

// Unary calls over one shared channel across several connection ages: every
// GOAWAY is graceful (a call in flight finishes, one sent meanwhile is
// served or, above the final GOAWAY's last stream id, retried by the
// client), so no call fails, and the channel comes back on new connections.
TEST_F(MaxAge, SharedChannelLoadAcrossAgesLosesNoCall) {
  const std::string target = gw_->target();
  auto ch = tls_channel(target);
  {
    Load load(ch, 4, 20, 2000);  // each call waits 20 ms at the backend: some are always in flight
    std::this_thread::sleep_for(5s);
    load.stop();
    const auto failures = load.failures();
    std::cout << "[ measured ] " << load.total() << " calls, " << failures.size() << " failed\n";
    EXPECT_GE(load.total(), 100u) << "the load hardly ran";
    EXPECT_TRUE(failures.empty()) << failures.size() << " failed; first: " << status_str(failures[0]);
  }
  auto n = stop_and_count();
  std::cout << "[ measured ] accepted=" << n["accepted"] << " max_age_goaways=" << n["max_age_goaways"]
            << "\n";
  EXPECT_GE(n["accepted"], 2u) << "the channel never moved to a new connection";
  EXPECT_GE(n["max_age_goaways"], 2u);
  EXPECT_EQ(n["max_age_grace_closed"], 0u) << "no grace: nothing is cut";
}

class MaxAgeGrace : public Rebalance {
 protected:
  std::string listener_keys() const override {
    return "max_connection_age = \"1s\"\nmax_connection_age_grace = \"1s\"\n";
  }
};

// A server stream that would last 10 s: replies keep coming after the age
// GOAWAY (~1 s), and the grace cuts it about 1 s after that.
TEST_F(MaxAgeGrace, LongStreamIsCutAfterTheGrace) {
  auto stub = Echo::NewStub(tls_channel(gw_->target()));
  auto ctx = context(20s);
  EchoRequest req;
  req.set_payload("long");
  req.set_response_count(100);
  req.set_interval_ms(100);
  const auto start = Clock::now();
  auto reader = stub->ServerStream(ctx.get(), req);
  EchoReply reply;
  int replies = 0, after_age = 0;
  while (reader->Read(&reply)) {
    ++replies;
    if (Clock::now() - start > 1200ms) ++after_age;  // past the latest age (1.1 s)
  }
  const grpc::Status st = reader->Finish();
  const double took = seconds(Clock::now() - start);
  std::cout << "[ measured ] stream cut after " << took << " s, " << replies << " replies\n";
  EXPECT_FALSE(st.ok()) << "the 10 s stream was not cut";
  EXPECT_GE(after_age, 3) << "the stream did not keep running after the age GOAWAY";
  EXPECT_GE(took, 1.8) << "cut before age (>= 0.9 s) + grace (1 s)";
  EXPECT_LE(took, 5.0);
  auto n = stop_and_count();
  EXPECT_EQ(n["max_age_goaways"], 1u);
  EXPECT_EQ(n["max_age_grace_closed"], 1u);
}

}  // namespace
}  // namespace tlsgate::itest
