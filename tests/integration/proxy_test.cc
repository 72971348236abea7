// The PROXY protocol on listeners: a real tlsgate with proxy_protocol set, a
// real grpc++ client behind a small relay that plays the load balancer (it
// writes the header, then copies bytes both ways), curl's own
// --haproxy-protocol, and raw sockets for the headers a balancer should never
// send. What a user checks: the call works and the backend sees the header's
// address in x-forwarded-for; a bad header is closed and counted, and the
// gateway keeps serving.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

std::string be16(unsigned v) { return {static_cast<char>(v >> 8), static_cast<char>(v & 0xff)}; }

// A v2 PROXY header: TCP over IPv4 from 203.0.113.7:4242 to 127.0.0.1:port,
// with two TLVs (ALPN "h2", and a NOOP) that the gateway must skip.
std::string v2_inet_header(int port) {
  std::string payload("\xcb\x00\x71\x07\x7f\x00\x00\x01", 8);
  payload += be16(4242) + be16(static_cast<unsigned>(port));
  payload += std::string("\x01", 1) + be16(2) + "h2" + std::string("\x04", 1) + be16(0);
  return std::string("\r\n\r\n\0\r\nQUIT\n", 12) + "\x21\x11" + be16(static_cast<unsigned>(payload.size())) +
         payload;
}

// The same over IPv6, from [2001:db8::7]:4242.
std::string v2_inet6_header(int port) {
  std::string src("\x20\x01\x0d\xb8", 4), dst(16, '\0');
  src += std::string(11, '\0') + "\x07";
  dst[15] = 1;
  const std::string payload = src + dst + be16(4242) + be16(static_cast<unsigned>(port));
  return std::string("\r\n\r\n\0\r\nQUIT\n", 12) + "\x21\x21" + be16(static_cast<unsigned>(payload.size())) +
         payload;
}

// LOCAL: the balancer's own connection (health checks); no address to use.
std::string v2_local_header() {
  return std::string("\r\n\r\n\0\r\nQUIT\n", 12) + std::string("\x20\x00\x00\x00", 4);
}

// How the relay delivers the header to the gateway.
enum class Delivery {
  First,          // on connect, before the client has sent anything
  InPieces,       // on connect, in two segments 100 ms apart
  WithFirstBytes  // in one send with the client's first bytes (the ClientHello)
};

// A TCP relay standing in for a load balancer that speaks the PROXY protocol:
// each accepted connection gets its own connection to the gateway, which
// starts with `header`; then bytes are copied both ways until both sides
// have closed. Everything stops and is joined in the destructor.
class HeaderRelay {
 public:
  HeaderRelay(int gateway_port, std::string header, Delivery delivery = Delivery::First)
      : gateway_port_(gateway_port), header_(std::move(header)), delivery_(delivery) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(listen_fd_, 16) != 0)
      throw std::runtime_error("relay: cannot listen");
    socklen_t len = sizeof a;
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }

  ~HeaderRelay() {
    stop_ = true;
    acceptor_.join();
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& t : pipes_) t.join();
    ::close(listen_fd_);
  }

  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  int connections() const { return connections_; }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) != 1) continue;
      int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) continue;
      int server = tcp_connect("127.0.0.1", gateway_port_, 5s);
      if (server < 0) {
        ::close(client);
        continue;
      }
      ++connections_;
      std::lock_guard<std::mutex> lock(mu_);
      pipes_.emplace_back([this, client, server] { pipe(client, server); });
    }
  }

  bool send_header(int client, int server) {
    int one = 1;
    setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // pieces stay apart
    switch (delivery_) {
      case Delivery::First:
        return send_all(server, header_);
      case Delivery::InPieces: {
        const size_t half = header_.size() / 2;
        if (!send_all(server, header_.substr(0, half))) return false;
        std::this_thread::sleep_for(100ms);
        return send_all(server, header_.substr(half));
      }
      case Delivery::WithFirstBytes: {
        pollfd p{client, POLLIN, 0};
        while (!stop_ && ::poll(&p, 1, 50) != 1) {
        }
        if (stop_) return false;
        char buf[16384];
        ssize_t n = ::recv(client, buf, sizeof buf, 0);
        if (n <= 0) return false;
        return send_all(server, header_ + std::string(buf, static_cast<size_t>(n)));
      }
    }
    return false;
  }

  // Copies both ways; a side's EOF becomes a FIN to the other side.
  void pipe(int client, int server) {
    if (send_header(client, server)) {
      pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
      bool open[2] = {true, true};
      char buf[16384];
      while (!stop_ && (open[0] || open[1])) {
        p[0].fd = open[0] ? client : -1;
        p[1].fd = open[1] ? server : -1;
        if (::poll(p, 2, 50) <= 0) continue;
        for (int i = 0; i < 2; ++i) {
          if (!open[i] || p[i].revents == 0) continue;
          ssize_t n = ::recv(p[i].fd, buf, sizeof buf, 0);
          const int to = i == 0 ? server : client;
          if (n > 0 && send_all(to, std::string(buf, static_cast<size_t>(n)))) continue;
          open[i] = false;
          ::shutdown(to, SHUT_WR);
        }
      }
    }
    ::close(client);
    ::close(server);
  }

  int gateway_port_;
  std::string header_;
  Delivery delivery_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> pipes_;
};

// A listener with proxy_protocol = MODE; handshake_timeout 1s as in BadInput,
// so the timeout cases stay short.
class ProxyTest : public GatewayTest {
 protected:
  virtual const char* mode() const = 0;
  void configure(GatewayConfig& cfg) override {
    cfg.handshake_timeout = "1s";
    cfg.extra_listener = std::string("proxy_protocol = \"") + mode() + "\"";
  }

  // One unary call through `target`; the backend's x-forwarded-for after it
  // (or a description of the failure, prefixed "FAILED: ").
  std::string call_and_get_xff(const std::string& target) {
    auto stub = Echo::NewStub(tls_channel(target));
    auto ctx = context();
    EchoRequest req;
    EchoReply reply;
    req.set_payload("through a balancer");
    auto st = stub->Unary(ctx.get(), req, &reply);
    if (!st.ok()) return "FAILED: " + status_str(st);
    if (reply.payload() != req.payload()) return "FAILED: payload \"" + reply.payload() + "\"";
    StatsReply s;
    if (!echo_->stats(&s).ok()) return "FAILED: backend stats";
    return s.last_x_forwarded_for();
  }

  // Stops the gateway and returns the value of `counter` in its "stopped:"
  // line (the counters summed over shards), or -1 when absent.
  long stopped_counter(const std::string& counter) {
    gw_->stop();
    const auto counters = stopped_counters(gw_->process().stderr_text());
    const auto it = counters.find(counter);
    return it == counters.end() ? -1 : std::stol(it->second);
  }

  // A raw connection that sends `bytes`: the gateway must close it without
  // sending anything, well before the handshake timeout.
  void expect_closed_silently(const std::string& bytes) {
    Fd s{tcp_connect("127.0.0.1", gw_->endpoint().port, 5s)};
    ASSERT_GE(s.fd, 0);
    ASSERT_TRUE(send_all(s.fd, bytes));
    Ms took{};
    std::string got;
    EXPECT_TRUE(wait_peer_close(s.fd, 5s, &took, &got)) << "connection still open after 5 s";
    EXPECT_EQ(got.size(), 0u) << "the gateway answered a bad PROXY header";
    EXPECT_LT(took, 900ms) << "closed by the handshake timeout, not by the parser";
  }
};

class ProxyV2 : public ProxyTest {
  const char* mode() const override { return "v2"; }
};
class ProxyV1 : public ProxyTest {
  const char* mode() const override { return "v1"; }
};
class ProxyAuto : public ProxyTest {
  const char* mode() const override { return "auto"; }
};

// ---------------------------------------------------------------- v2

TEST_F(ProxyV2, Tls_GrpcUnary) {
  HeaderRelay relay(gw_->endpoint().port, v2_inet_header(gw_->endpoint().port));
  EXPECT_EQ(call_and_get_xff(relay.target()), "203.0.113.7");
  EXPECT_GE(relay.connections(), 1);
  EXPECT_EQ(stopped_counter("proxy_headers"), relay.connections());
  EXPECT_EQ(stopped_counter("proxy_errors"), 0);
}

// The access log names the client the balancer saw, with its port.
class ProxyV2Logged : public ProxyV2 {
  void configure(GatewayConfig& cfg) override {
    ProxyV2::configure(cfg);
    cfg.extra_top = "[access_log]\npath = \"" + (dir_->path() / "access.log").string() + "\"\n";
  }
};

TEST_F(ProxyV2Logged, AccessLogHasTheHeadersSource) {
  HeaderRelay relay(gw_->endpoint().port, v2_inet_header(gw_->endpoint().port));
  EXPECT_EQ(call_and_get_xff(relay.target()), "203.0.113.7");
  gw_->stop();
  const std::string log = read_file(dir_->path() / "access.log");
  EXPECT_NE(log.find("\"client\":\"203.0.113.7\",\"client_port\":4242,"), std::string::npos) << log;
}

TEST_F(ProxyV2, Tls_GrpcUnaryIpv6Source) {
  HeaderRelay relay(gw_->endpoint().port, v2_inet6_header(gw_->endpoint().port));
  EXPECT_EQ(call_and_get_xff(relay.target()), "2001:db8::7");
}

// The header split over two receives: the shard holds the first part.
TEST_F(ProxyV2, Tls_HeaderInPieces) {
  HeaderRelay relay(gw_->endpoint().port, v2_inet_header(gw_->endpoint().port), Delivery::InPieces);
  EXPECT_EQ(call_and_get_xff(relay.target()), "203.0.113.7");
}

// Header and ClientHello in one receive: the bytes after the header start
// the handshake.
TEST_F(ProxyV2, Tls_HeaderWithClientHello) {
  HeaderRelay relay(gw_->endpoint().port, v2_inet_header(gw_->endpoint().port), Delivery::WithFirstBytes);
  EXPECT_EQ(call_and_get_xff(relay.target()), "203.0.113.7");
}

// LOCAL (a balancer's health check) carries no client: the socket's peer,
// here the relay on 127.0.0.1, is the client address.
TEST_F(ProxyV2, Tls_LocalKeepsSocketPeer) {
  HeaderRelay relay(gw_->endpoint().port, v2_local_header());
  EXPECT_EQ(call_and_get_xff(relay.target()), "127.0.0.1");
}

TEST_F(ProxyV2, GarbageHeaderClosedThenServing) {
  expect_closed_silently("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  expect_closed_silently(client_hello());  // TLS without the header the listener requires
  expect_closed_silently("PROXY TCP4 203.0.113.7 127.0.0.1 4242 443\r\n");  // v1 on a v2 listener
  std::string tlv_overrun = v2_inet_header(443);
  tlv_overrun[tlv_overrun.size() - 1] = 9;  // the NOOP TLV now claims 9 bytes that are not there
  expect_closed_silently(tlv_overrun);
  HeaderRelay relay(gw_->endpoint().port, v2_inet_header(gw_->endpoint().port));
  EXPECT_EQ(call_and_get_xff(relay.target()), "203.0.113.7");
  EXPECT_TRUE(gw_->process().running()) << gw_->process().describe();
  EXPECT_EQ(stopped_counter("proxy_errors"), 4);
}

// A complete header and then nothing: the handshake timer, armed at accept,
// closes it.
TEST_F(ProxyV2, HeaderThenSilenceTimesOut) {
  Fd s{tcp_connect("127.0.0.1", gw_->endpoint().port, 5s)};
  ASSERT_GE(s.fd, 0);
  ASSERT_TRUE(send_all(s.fd, v2_inet_header(443)));
  Ms took{};
  std::string got;
  EXPECT_TRUE(wait_peer_close(s.fd, 6s, &took, &got))
      << "connection still open after 6 s (handshake_timeout 1s)";
  EXPECT_GE(took, 500ms) << "closed before the handshake timeout";
  EXPECT_EQ(got.size(), 0u);
  HeaderRelay relay(gw_->endpoint().port, v2_inet_header(gw_->endpoint().port));
  EXPECT_EQ(call_and_get_xff(relay.target()), "203.0.113.7");
  EXPECT_EQ(stopped_counter("handshake_timeouts"), 1);
}

// Part of a header and then nothing: the same timer covers the header phase.
TEST_F(ProxyV2, PartialHeaderThenSilenceTimesOut) {
  Fd s{tcp_connect("127.0.0.1", gw_->endpoint().port, 5s)};
  ASSERT_GE(s.fd, 0);
  ASSERT_TRUE(send_all(s.fd, v2_inet_header(443).substr(0, 10)));
  Ms took{};
  EXPECT_TRUE(wait_peer_close(s.fd, 6s, &took)) << "connection still open after 6 s (handshake_timeout 1s)";
  EXPECT_GE(took, 500ms) << "closed before the handshake timeout";
  HeaderRelay relay(gw_->endpoint().port, v2_inet_header(gw_->endpoint().port));
  EXPECT_EQ(call_and_get_xff(relay.target()), "203.0.113.7");
  EXPECT_EQ(stopped_counter("handshake_timeouts"), 1);
}

// ---------------------------------------------------------------- v1

TEST_F(ProxyV1, Tls_GrpcUnary) {
  HeaderRelay relay(gw_->endpoint().port,
                    "PROXY TCP4 203.0.113.7 127.0.0.1 4242 " + std::to_string(gw_->endpoint().port) + "\r\n");
  EXPECT_EQ(call_and_get_xff(relay.target()), "203.0.113.7");
}

// curl's own PROXY v1 sender (it writes the connection's real addresses),
// with a gRPC call made by hand as in TlsH2.CurlGrpcUnary.
class ProxyV1Curl : public ProxyV1 {
 protected:
  RunResult curl_grpc_unary(bool haproxy_protocol) {
    std::vector<std::string> argv = curl_grpc_argv(dir_->path());
    if (haproxy_protocol) argv.push_back("--haproxy-protocol");
    argv.push_back("https://" + gw_->target() + "/tlsgate.test.Echo/Unary");
    return run(argv, dir_->path(), 20s);
  }
};

TEST_F(ProxyV1Curl, Tls_CurlHaproxyProtocol) {
  auto r = curl_grpc_unary(true);
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << "\n" << r.err;
  EXPECT_EQ(r.out.rfind("HTTP/2 200", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("grpc-status: 0"), std::string::npos) << r.out;
  StatsReply s;
  ASSERT_TRUE(echo_->stats(&s).ok());
  EXPECT_EQ(s.last_x_forwarded_for(), "127.0.0.1");
  EXPECT_EQ(stopped_counter("proxy_headers"), 1);
}

// Without the header a v1 listener refuses the connection; the next client
// that sends one is served.
TEST_F(ProxyV1Curl, CurlWithoutHeaderFailsThenServing) {
  auto bad = curl_grpc_unary(false);
  ASSERT_FALSE(bad.status.timed_out) << "curl hung";
  EXPECT_FALSE(bad.status.exited && bad.status.code == 0)
      << "a v1 listener served a client without a header\n"
      << bad.out;
  std::cout << "[ info ] curl without --haproxy-protocol: " << bad.status.to_string() << "; " << bad.err
            << "\n";
  auto good = curl_grpc_unary(true);
  ASSERT_TRUE(good.status.exited && good.status.code == 0) << good.status.to_string() << "\n" << good.err;
  EXPECT_NE(good.out.find("grpc-status: 0"), std::string::npos) << good.out;
  EXPECT_TRUE(gw_->process().running()) << gw_->process().describe();
  EXPECT_EQ(stopped_counter("proxy_errors"), 1);
}

TEST_F(ProxyV1, MalformedLinesClosedThenServing) {
  expect_closed_silently("PROXY TCP4 203.0.113.7 127.0.0.1 65536 443\r\n");
  expect_closed_silently("PROXY TCP4 2001:db8::7 127.0.0.1 4242 443\r\n");
  expect_closed_silently("PROXY tcp4 203.0.113.7 127.0.0.1 4242 443\r\n");
  expect_closed_silently("PROXY UNKNOWN " + std::string(120, 'a'));  // no CRLF within 107 bytes
  expect_closed_silently(v2_inet_header(443));                       // v2 on a v1 listener
  HeaderRelay relay(gw_->endpoint().port, "PROXY UNKNOWN\r\n");
  EXPECT_EQ(call_and_get_xff(relay.target()), "127.0.0.1") << "UNKNOWN keeps the socket's peer";
  EXPECT_EQ(stopped_counter("proxy_errors"), 5);
}

// ---------------------------------------------------------------- auto

TEST_F(ProxyAuto, Tls_GrpcUnaryWithoutHeader) {
  EXPECT_EQ(call_and_get_xff(gw_->target()), "127.0.0.1");
  EXPECT_EQ(stopped_counter("proxy_headers"), 0);
}

TEST_F(ProxyAuto, Tls_GrpcUnaryV1) {
  HeaderRelay relay(gw_->endpoint().port, "PROXY TCP6 2001:db8::7 ::1 4242 443\r\n");
  EXPECT_EQ(call_and_get_xff(relay.target()), "2001:db8::7");
}

TEST_F(ProxyAuto, Tls_GrpcUnaryV2) {
  HeaderRelay relay(gw_->endpoint().port, v2_inet_header(gw_->endpoint().port));
  EXPECT_EQ(call_and_get_xff(relay.target()), "203.0.113.7");
}

TEST_F(ProxyAuto, BadHeaderClosedThenServing) {
  expect_closed_silently("PROXY TCP4 203.0.113.7 127.0.0.1 4242\r\n");  // a field missing
  std::string v3 = v2_inet_header(443);
  v3[12] = 0x31;  // version 3
  expect_closed_silently(v3);
  EXPECT_EQ(call_and_get_xff(gw_->target()), "127.0.0.1");
  EXPECT_EQ(stopped_counter("proxy_errors"), 2);
}

}  // namespace
}  // namespace tlsgate::itest
