// A peer's mistakes: each case must end in a closed connection or an error
// answer, and the same gateway process must still serve a normal call.
#include <sys/socket.h>
#include <unistd.h>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

class BadInput : public GatewayTest {
 protected:
  void configure(GatewayConfig& cfg) override { cfg.handshake_timeout = "1s"; }

  void expect_still_serving() {
    EXPECT_EQ(unary_check(gw_->target()), "");
    EXPECT_TRUE(gw_->process().running()) << gw_->process().describe();
  }
};

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

TEST_F(BadInput, PlainHttpInsteadOfClientHello) {
  Fd s{tcp_connect("127.0.0.1", gw_->endpoint().port, 5s)};
  ASSERT_GE(s.fd, 0);
  ASSERT_TRUE(send_all(s.fd, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"));
  Ms took{};
  std::string got;
  EXPECT_TRUE(wait_peer_close(s.fd, 5s, &took, &got)) << "connection still open after 5 s";
  std::cout << "[ info ] closed after " << took.count() << " ms, " << got.size() << " bytes received\n";
  expect_still_serving();
}

TEST_F(BadInput, TruncatedClientHelloThenClose) {
  const std::string& hello = client_hello();
  Fd s{tcp_connect("127.0.0.1", gw_->endpoint().port, 5s)};
  ASSERT_GE(s.fd, 0);
  ASSERT_TRUE(send_all(s.fd, hello.substr(0, hello.size() / 2)));
  ::shutdown(s.fd, SHUT_WR);
  Ms took{};
  EXPECT_TRUE(wait_peer_close(s.fd, 5s, &took)) << "connection still open 5 s after the client's FIN";
  std::cout << "[ info ] closed after " << took.count() << " ms\n";
  ::close(s.fd);
  s.fd = -1;
  expect_still_serving();
}

TEST_F(BadInput, TruncatedClientHelloThenSilence) {
  const std::string& hello = client_hello();
  Fd s{tcp_connect("127.0.0.1", gw_->endpoint().port, 5s)};
  ASSERT_GE(s.fd, 0);
  ASSERT_TRUE(send_all(s.fd, hello.substr(0, 20)));
  Ms took{};
  EXPECT_TRUE(wait_peer_close(s.fd, 5s, &took)) << "connection still open after 5 s (handshake_timeout 1s)";
  EXPECT_LE(took, 3000ms);
  expect_still_serving();
}

TEST_F(BadInput, SilentClientClosedAfterHandshakeTimeout) {
  Fd s{tcp_connect("127.0.0.1", gw_->endpoint().port, 5s)};
  ASSERT_GE(s.fd, 0);
  Ms took{};
  bool closed = wait_peer_close(s.fd, 6s, &took);
  EXPECT_TRUE(closed) << "connection still open after 6 s (handshake_timeout 1s)";
  EXPECT_GE(took, 500ms) << "closed before the handshake timeout";
  EXPECT_LE(took, 3000ms) << "handshake_timeout is 1s";
  std::cout << "[ info ] closed after " << took.count() << " ms\n";
  expect_still_serving();
}

TEST_F(BadInput, OversizeHeaderBlock) {
  auto url = "https://" + gw_->target() + "/tlsgate.test.Echo/Unary";
  write_file(dir_->path() / "big-header", "x-big: " + std::string(200 * 1024, 'a') + "\n");
  std::vector<std::string> big = curl_grpc_argv(dir_->path());
  big.insert(big.end(), {"-H", "@" + (dir_->path() / "big-header").string(), url});
  auto r = run(big, dir_->path(), 20s);
  ASSERT_FALSE(r.status.timed_out) << "curl hung";
  bool curl_failed = !(r.status.exited && r.status.code == 0);
  bool http_error = r.out.rfind("HTTP/2 200", 0) != 0;
  bool grpc_error = r.out.find("grpc-status: 0") == std::string::npos;
  EXPECT_TRUE(curl_failed || http_error || grpc_error) << "a 200 KB header was accepted and answered OK\n"
                                                       << r.out.substr(0, 2000);
  std::cout << "[ info ] curl " << r.status.to_string() << "; stderr: " << r.err.substr(0, 300)
            << "; stdout: " << r.out.substr(0, 300) << "\n";
  expect_still_serving();
}

}  // namespace
}  // namespace tlsgate::itest
