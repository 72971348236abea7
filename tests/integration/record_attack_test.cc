// tlsgate's own TLS 1.3 record layer against records no TLS library would
// send, through the real gateway process over a real loopback socket: what
// tests/unit/tls/record_layer_test.cc shows at the tls::Session level, here
// as a user sees it on the wire — the alert arrives, then the server closes.
//
// The client is tests/unit/tls/raw_client.hh: an OpenSSL client in memory
// BIOs does the handshake (its bytes carried over the socket by this file),
// then the RawClient seals and opens every record itself. The first record
// after the handshake (the HTTP/2 preface and SETTINGS) is still read by the
// gateway's OpenSSL; at its end the server session detaches into tlsgate's
// record layer, which every later record meets. kTLS is off (with kTLS on the
// kernel would read the records instead).
//
// One gateway (one worker, so one shard) per test: six connections, each
// ending in its own way, then a normal gRPC call on the same shard, then the
// counters of the gateway's "stopped:" line. Runs for each TLS 1.3 suite.
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../unit/tls/raw_client.hh"
#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

namespace tt = tlsgate::tls::tlstest;
using tt::openssl_errors;
using tt::Bytes;
using tt::Received;

// Every wait for the server.
constexpr Ms kWait = 5s;

struct Suite {
  const char* name;
  const char* openssl;  // TLS 1.3 suite name
};

void PrintTo(const Suite& s, std::ostream* os) { *os << s.name; }

const Suite kSuites[] = {
    {"Aes128Gcm", "TLS_AES_128_GCM_SHA256"},
    {"Aes256Gcm", "TLS_AES_256_GCM_SHA384"},
    {"Chacha20Poly1305", "TLS_CHACHA20_POLY1305_SHA256"},
};

// ------------------------------------------------------------ HTTP/2 frames (RFC 9113 4.1)

constexpr uint8_t kH2Settings = 4;
constexpr uint8_t kH2Ping = 6;
constexpr uint8_t kH2Ack = 1;
const std::string kH2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// A frame on stream 0.
Bytes h2_frame(uint8_t type, uint8_t flags, const Bytes& payload) {
  Bytes f(9 + payload.size(), 0);
  f[0] = static_cast<uint8_t>(payload.size() >> 16);
  f[1] = static_cast<uint8_t>(payload.size() >> 8);
  f[2] = static_cast<uint8_t>(payload.size());
  f[3] = type;
  f[4] = flags;
  std::copy(payload.begin(), payload.end(), f.begin() + 9);
  return f;
}

struct H2Frame {
  uint8_t type = 0;
  uint8_t flags = 0;
  uint32_t stream = 0;
  Bytes payload;
};

// The whole frames at the start of `data` (a partial last frame is left out).
std::vector<H2Frame> h2_frames(const Bytes& data) {
  std::vector<H2Frame> v;
  size_t off = 0;
  while (data.size() - off >= 9) {
    const uint8_t* h = data.data() + off;
    const size_t len = size_t(h[0]) << 16 | size_t(h[1]) << 8 | h[2];
    if (data.size() - off - 9 < len) break;
    H2Frame f;
    f.type = h[3];
    f.flags = h[4];
    f.stream = (uint32_t(h[5]) << 24 | uint32_t(h[6]) << 16 | uint32_t(h[7]) << 8 | h[8]) & 0x7fffffff;
    f.payload.assign(h + 9, h + 9 + len);
    v.push_back(std::move(f));
    off += 9 + len;
  }
  return v;
}

bool has_frame(const Bytes& data, uint8_t type, uint8_t flags, const Bytes* payload = nullptr) {
  for (const H2Frame& f : h2_frames(data))
    if (f.type == type && f.flags == flags && f.stream == 0 && (payload == nullptr || f.payload == *payload))
      return true;
  return false;
}

// Concatenated application data of `recs`.
Bytes app_data(const std::vector<Received>& recs) {
  Bytes b;
  for (const Received& r : recs)
    if (r.is_application_data()) b.insert(b.end(), r.content.begin(), r.content.end());
  return b;
}

// ------------------------------------------------------------ a raw TLS 1.3 connection

// What the client saw after it sent something.
struct Reply {
  std::vector<Received> records;  // the server's records, as the raw client opened them (tickets left out)
  bool eof = false;               // recv returned 0: the server closed (FIN)
  std::string error;              // recv failed (e.g. ECONNRESET), or poll did
  bool timed_out = false;         // neither the awaited records nor the end came in time
  Ms took{};

  std::string describe() const {
    std::string s = "received: " + tt::describe(records) + "; then ";
    s += eof              ? "EOF"
         : timed_out      ? "nothing more for " + std::to_string(kWait.count()) + " ms (no EOF)"
         : !error.empty() ? "recv error: " + error
                          : "stopped reading (all awaited records in)";
    return s + " (after " + std::to_string(took.count()) + " ms)";
  }
};

// A TCP connection to the gateway whose TLS 1.3 handshake is OpenSSL's and
// whose records after it are the RawClient's.
class RawConnection {
 public:
  RawConnection() = default;
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;
  ~RawConnection() {
    if (fd_ >= 0) ::close(fd_);
  }

  tt::RawClient& raw() { return raw_; }
  unsigned tickets() const { return tickets_; }

  // Connects, runs the handshake over the socket with ALPN "h2" and hands the
  // records to the RawClient. "" on success, else what went wrong.
  std::string open(int port, const char* suite) {
    fd_ = tcp_connect("127.0.0.1", port, kWait);
    if (fd_ < 0) return "cannot connect to 127.0.0.1:" + std::to_string(port);
    ctx_.reset(SSL_CTX_new(TLS_client_method()));
    if (!ctx_) return "SSL_CTX_new: " + openssl_errors();
    if (SSL_CTX_load_verify_locations(ctx_.get(), certs().ca.c_str(), nullptr) != 1)
      return "cannot load the test CA: " + openssl_errors();
    SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER, nullptr);
    ssl_.reset(SSL_new(ctx_.get()));
    if (!ssl_) return "SSL_new: " + openssl_errors();
    SSL* ssl = ssl_.get();
    static const unsigned char kAlpn[] = {2, 'h', '2'};
    if (SSL_set_tlsext_host_name(ssl, "localhost") != 1 || SSL_set1_host(ssl, "localhost") != 1 ||
        SSL_set_alpn_protos(ssl, kAlpn, sizeof kAlpn) != 0)
      return "cannot configure the client: " + openssl_errors();
    net_in_ = BIO_new(BIO_s_mem());
    net_out_ = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(net_in_, -1);  // empty = "would block", not EOF
    SSL_set_bio(ssl, net_in_, net_out_);  // the SSL owns both now
    SSL_set_connect_state(ssl);
    if (!raw_.attach(ssl, suite)) return raw_.error();

    const auto deadline = Clock::now() + kWait;
    for (;;) {
      const int rc = SSL_do_handshake(ssl);
      const int err = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl, rc);
      const std::string why = err == SSL_ERROR_SSL ? openssl_errors() : "";
      if (!flush_client_output()) return "cannot send the client's handshake records";
      if (rc == 1) break;
      if (err != SSL_ERROR_WANT_READ)
        return "handshake failed (SSL_get_error " + std::to_string(err) + "): " + why;
      Bytes in;
      const std::string r = recv_some(deadline, &in);
      if (!r.empty()) return "during the handshake: " + r;
      if (BIO_write(net_in_, in.data(), static_cast<int>(in.size())) != static_cast<int>(in.size()))
        return "BIO_write failed";
    }
    const unsigned char* proto = nullptr;
    unsigned proto_len = 0;
    SSL_get0_alpn_selected(ssl, &proto, &proto_len);
    if (std::string(reinterpret_cast<const char*>(proto), proto_len) != "h2")
      return "the server did not select ALPN h2";
    if (!raw_.start()) return "RawClient::start: " + raw_.error();
    tickets_ = raw_.tickets();
    return "";
  }

  bool send(const Bytes& wire) {
    return !wire.empty() && send_all(fd_, std::string(wire.begin(), wire.end()));
  }

  // Reads the server's records until `done` holds for those of this call
  // (nullptr: until the stream ends), the stream ends, or kWait passes.
  Reply read(const std::function<bool(const std::vector<Received>&)>& done = nullptr) {
    Reply reply;
    const auto start = Clock::now();
    const auto deadline = start + kWait;
    for (;;) {
      if (done && done(reply.records)) break;
      Bytes in;
      const std::string r = recv_some(deadline, &in);
      if (r == "EOF") {
        reply.eof = true;
        break;
      }
      if (r == "timeout") {
        reply.timed_out = true;
        break;
      }
      if (!r.empty()) {
        reply.error = r;
        break;
      }
      for (Received& rec : raw_.receive(in)) {
        // The server's NewSessionTickets may arrive after start(): not part of any reply.
        if (rec.opened && rec.inner_type == tt::kHandshake && !rec.content.empty() &&
            rec.content[0] == tt::kNewSessionTicket) {
          ++tickets_;
          continue;
        }
        reply.records.push_back(std::move(rec));
      }
    }
    reply.took = std::chrono::duration_cast<Ms>(Clock::now() - start);
    return reply;
  }

 private:
  struct CtxFree {
    void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
  };
  struct SslFree {
    void operator()(SSL* s) const {
      // No close_notify through OpenSSL: keeps it from marking the session bad.
      SSL_set_shutdown(s, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
      SSL_free(s);
    }
  };


  bool flush_client_output() {
    const size_t n = BIO_ctrl_pending(net_out_);
    if (n == 0) return true;
    std::string out(n, '\0');
    if (BIO_read(net_out_, out.data(), static_cast<int>(n)) != static_cast<int>(n)) return false;
    return send_all(fd_, out);
  }

  // One recv, waiting at most until `deadline`: "" with bytes in *out,
  // "EOF", "timeout", or the error.
  std::string recv_some(Clock::time_point deadline, Bytes* out) {
    for (;;) {
      const auto left = std::chrono::duration_cast<Ms>(deadline - Clock::now());
      if (left.count() <= 0) return "timeout";
      pollfd p{fd_, POLLIN, 0};
      const int pr = ::poll(&p, 1, static_cast<int>(left.count()));
      if (pr < 0 && errno == EINTR) continue;
      if (pr < 0) return std::string("poll: ") + std::strerror(errno);
      if (pr == 0) return "timeout";
      uint8_t buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return std::string("recv: ") + std::strerror(errno);
      if (n == 0) return "EOF";
      out->assign(buf, buf + n);
      return "";
    }
  }

  int fd_ = -1;
  // Declared in this order so that raw_ goes first: its destructor may still
  // touch the SSL.
  std::unique_ptr<SSL_CTX, CtxFree> ctx_;
  std::unique_ptr<SSL, SslFree> ssl_;
  BIO* net_in_ = nullptr;   // owned by ssl_
  BIO* net_out_ = nullptr;  // owned by ssl_
  tt::RawClient raw_;
  unsigned tickets_ = 0;
};

// ------------------------------------------------------------ fixture

class RecordAttack : public GatewayTest, public ::testing::WithParamInterface<Suite> {
 protected:
  void configure(GatewayConfig& cfg) override {
    cfg.ktls = "off";  // the records must reach the userspace record layer
    cfg.workers = 1;   // every connection on one shard: the good call proves that shard survived
  }

  // A connection past the handshake whose server session has detached: the
  // preface and SETTINGS went out in one record (read by the server's
  // OpenSSL, which it leaves at the end of that read) and the server's
  // SETTINGS ACK came back (written by tlsgate's record layer).
  void connect(RawConnection& c) {
    const std::string err = c.open(gw_->endpoint().port, GetParam().openssl);
    ASSERT_EQ(err, "") << gw_->process().describe();
    ASSERT_EQ(c.raw().suite(), GetParam().openssl);
    Bytes hello(kH2Preface.begin(), kH2Preface.end());
    const Bytes settings = h2_frame(kH2Settings, 0, {});
    hello.insert(hello.end(), settings.begin(), settings.end());
    ASSERT_TRUE(c.send(c.raw().app(hello))) << c.raw().error();
    const Reply r = c.read([](const std::vector<Received>& recs) {
      const Bytes data = app_data(recs);
      return has_frame(data, kH2Settings, 0) && has_frame(data, kH2Settings, kH2Ack);
    });
    ASSERT_TRUE(has_frame(app_data(r.records), kH2Settings, kH2Ack))
        << "no SETTINGS and SETTINGS ACK from the server; " << r.describe();
    for (const Received& rec : r.records) ASSERT_TRUE(rec.is_application_data()) << r.describe();
  }

  // The server's whole answer to an attack: one record, the alert, then the
  // end of the stream (FIN, not a reset) within kWait.
  static void expect_alert_then_eof(const Reply& r, uint8_t level, uint8_t description) {
    std::cout << "[ info ] " << r.describe() << "\n";
    EXPECT_TRUE(r.eof) << "the server did not close the connection cleanly; " << r.describe();
    ASSERT_FALSE(r.records.empty()) << "no alert; " << r.describe();
    EXPECT_TRUE(r.records.front().is_alert(level, description))
        << "expected " << (level == tt::kFatal ? "fatal" : "warning") << " alert " << int(description) << " ("
        << tt::alert_name(description) << "); " << r.describe();
    EXPECT_EQ(r.records.size(), 1u) << "records besides the alert; " << r.describe();
  }

  // Stops the gateway and returns the counters of its "stopped:" line.
  std::map<std::string, std::string> stop_and_count() {
    gw_->stop();
    return stopped_counters(gw_->process().stderr_text());
  }

  // ---------------------------------------------------------- the cases

  // RFC 8446 5.2: a record that does not authenticate.
  void bad_tag() {
    RawConnection c;
    ASSERT_NO_FATAL_FAILURE(connect(c));
    tt::SealSpec s;
    s.content = tt::to_bytes("tampered");
    s.corrupt_tag = true;
    ASSERT_TRUE(c.send(c.raw().seal(s)));
    expect_alert_then_eof(c.read(), tt::kFatal, tt::kBadRecordMac);
  }

  // RFC 8446 5.2: a TLSInnerPlaintext over 2^14 + 1 bytes (the ciphertext,
  // 2^14 + 225 bytes, passes the header check; only the opened record is
  // too long).
  void plaintext_16592() {
    RawConnection c;
    ASSERT_NO_FATAL_FAILURE(connect(c));
    ASSERT_TRUE(c.send(c.raw().app(Bytes(16592, 'x'))));
    expect_alert_then_eof(c.read(), tt::kFatal, tt::kRecordOverflow);
  }

  // RFC 8446 5: change_cipher_spec after the handshake is an unexpected record.
  void plaintext_change_cipher_spec() {
    RawConnection c;
    ASSERT_NO_FATAL_FAILURE(connect(c));
    ASSERT_TRUE(c.send(tt::plaintext_record(tt::kChangeCipherSpec, 0x0303, {1})));  // 14 03 03 00 01 01
    expect_alert_then_eof(c.read(), tt::kFatal, tt::kUnexpectedMessage);
  }

  // RFC 8446 6.1: close_notify is answered with close_notify.
  void close_notify() {
    RawConnection c;
    ASSERT_NO_FATAL_FAILURE(connect(c));
    ASSERT_TRUE(c.send(c.raw().alert(tt::kWarning, tt::kCloseNotify)));
    expect_alert_then_eof(c.read(), tt::kWarning, tt::kCloseNotify);
  }

  // More KeyUpdates in a second than the server allows (8): it closes with
  // close_notify, not a fatal alert.
  void key_update_flood() {
    RawConnection c;
    ASSERT_NO_FATAL_FAILURE(connect(c));
    Bytes wire;
    for (int i = 0; i < 20; ++i) {
      const Bytes ku = c.raw().key_update(false);  // then the client's next key
      wire.insert(wire.end(), ku.begin(), ku.end());
    }
    ASSERT_TRUE(c.send(wire)) << c.raw().error();
    expect_alert_then_eof(c.read(), tt::kWarning, tt::kCloseNotify);
  }

  // RFC 8446 4.6.3: KeyUpdate(update_requested) in three records (2, 2 and 1
  // bytes of the message), then a PING under the client's new key. The
  // server answers with its own KeyUpdate(update_not_requested) and the PING
  // ACK under its new key; then both sides close with close_notify.
  void key_update_requested_in_pieces() {
    RawConnection c;
    ASSERT_NO_FATAL_FAILURE(connect(c));
    ASSERT_TRUE(c.send(c.raw().key_update(true, {2, 2}))) << c.raw().error();
    const Bytes opaque = tt::to_bytes("rekeyed!");
    ASSERT_TRUE(c.send(c.raw().app(h2_frame(kH2Ping, 0, opaque))));
    const Reply r = c.read([&](const std::vector<Received>& recs) {
      return has_frame(app_data(recs), kH2Ping, kH2Ack, &opaque);
    });
    std::cout << "[ info ] " << r.describe() << "\n";
    ASSERT_FALSE(r.records.empty()) << r.describe();
    EXPECT_TRUE(r.records.front().is_key_update(0))
        << "expected the server's KeyUpdate(update_not_requested) first; " << r.describe();
    EXPECT_EQ(r.records.front().generation, 0u) << r.describe();
    EXPECT_TRUE(has_frame(app_data(r.records), kH2Ping, kH2Ack, &opaque)) << "no PING ACK; " << r.describe();
    for (size_t i = 1; i < r.records.size(); ++i) {
      EXPECT_TRUE(r.records[i].is_application_data()) << r.describe();
      EXPECT_EQ(r.records[i].generation, 1u) << "not under the server's new key; " << r.describe();
    }
    EXPECT_EQ(c.raw().recv_generation(), 1u) << r.describe();
    EXPECT_FALSE(r.eof) << r.describe();
    // Still working both ways: close_notify under the client's new key,
    // answered under the server's.
    ASSERT_TRUE(c.send(c.raw().alert(tt::kWarning, tt::kCloseNotify)));
    const Reply end = c.read();
    expect_alert_then_eof(end, tt::kWarning, tt::kCloseNotify);
    if (!end.records.empty()) {
      EXPECT_EQ(end.records.front().generation, 1u) << end.describe();
    }
  }
};

// Each violation through the real process: the alert RFC 8446 names (or
// close_notify for the flood and for the client's own close_notify) arrives
// on the socket and opens under the server's key, nothing follows it, and
// the server closes within 5 s. The shard then serves a normal gRPC call and
// counts one of each violation.
TEST_P(RecordAttack, TlsH2_AlertOnTheWireThenClose) {
  {
    SCOPED_TRACE("bad tag -> fatal bad_record_mac");
    EXPECT_NO_FATAL_FAILURE(bad_tag());
  }
  {
    SCOPED_TRACE("plaintext of 16592 bytes -> fatal record_overflow");
    EXPECT_NO_FATAL_FAILURE(plaintext_16592());
  }
  {
    SCOPED_TRACE("plaintext ChangeCipherSpec -> fatal unexpected_message");
    EXPECT_NO_FATAL_FAILURE(plaintext_change_cipher_spec());
  }
  {
    SCOPED_TRACE("close_notify -> close_notify");
    EXPECT_NO_FATAL_FAILURE(close_notify());
  }
  {
    SCOPED_TRACE("20 KeyUpdates at once -> close_notify");
    EXPECT_NO_FATAL_FAILURE(key_update_flood());
  }
  {
    SCOPED_TRACE("KeyUpdate(update_requested) in 3 records, then PING -> KeyUpdate, PING ACK");
    EXPECT_NO_FATAL_FAILURE(key_update_requested_in_pieces());
  }
  {
    SCOPED_TRACE("a good gRPC call after the attacks");
    EXPECT_EQ(unary_check(gw_->target()), "");
    EXPECT_TRUE(gw_->process().running()) << gw_->process().describe();
  }

  const auto counters = stop_and_count();
  auto get = [&](const std::string& k) {
    const auto it = counters.find(k);
    return it == counters.end() ? std::string("<absent>") : it->second;
  };
  ASSERT_NE(get("handshakes"), "<absent>") << "no \"stopped:\" line with counters\n"
                                           << gw_->process().describe();
  std::cout << "[ info ] "
            << gw_->process().stderr_text().substr(gw_->process().stderr_text().rfind("stopped: ")) << "\n";
  EXPECT_EQ(get("tls_violation_bad_record_mac"), "1");
  EXPECT_EQ(get("tls_violation_record_overflow"), "1");
  EXPECT_EQ(get("tls_violation_unexpected_message"), "1");
  EXPECT_EQ(get("tls_violation_key_update_flood"), "1");
  // Nothing else: no other violation, none found by OpenSSL's record layer
  // (which would mean a session did not detach), no HTTP/2 error.
  for (const char* k :
       {"tls_violation_decode_error", "tls_violation_illegal_parameter", "tls_violation_empty_record_flood",
        "tls_violation_aead_limit", "tls_openssl_record_errors", "downstream_protocol_errors"})
    EXPECT_EQ(get(k), "0") << k;
  // The last counter of the line: the whole line must reach the log (it
  // was cut at 1,023 bytes inside this name before log lines got 4 KiB).
  EXPECT_EQ(get("tls_violation_peer_alert"), "0");
  // Six raw connections and at least the good call's (another test
  // process's stray connection to a reused port could add more).
  EXPECT_GE(std::stoul(get("handshakes")), 7u);
}

INSTANTIATE_TEST_SUITE_P(Suites, RecordAttack, ::testing::ValuesIn(kSuites),
                         [](const ::testing::TestParamInfo<Suite>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace tlsgate::itest
