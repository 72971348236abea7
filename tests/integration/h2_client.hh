// A hand-made HTTP/2-over-TLS client for the integration tests: OpenSSL
// does the TLS (ALPN h2), the test writes the HTTP/2 frames (RFC 9113) byte
// by byte and reads back the gateway's frames as they arrived. It is for
// what no client library lets a test do: send frames a well-behaved client
// never sends (h2_attack_test.cc), or stop answering at a chosen point
// (rebalance_test.cc's silent peer). A gRPC client is the tool for anything
// a real client does.
#pragma once

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "harness.hh"

namespace tlsgate::itest {

// ------------------------------------------------------------ HTTP/2 frames

enum FrameType : uint8_t {
  kData = 0,
  kHeaders = 1,
  kPriority = 2,
  kRstStream = 3,
  kSettings = 4,
  kPing = 6,
  kGoaway = 7,
  kWindowUpdate = 8,
  kContinuation = 9,
};
constexpr uint8_t kEndStream = 0x1;
constexpr uint8_t kAck = 0x1;
constexpr uint8_t kEndHeaders = 0x4;

enum ErrorCode : uint32_t {
  kNoError = 0,
  kProtocolError = 1,
  kFlowControlError = 3,
  kRefusedStream = 7,
  kCancel = 8,
  kCompressionError = 9,
  kEnhanceYourCalm = 0xb,
};

inline const std::string kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

inline std::string u32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

inline uint32_t be32(const std::string& s, size_t at) {
  return uint32_t(uint8_t(s[at])) << 24 | uint32_t(uint8_t(s[at + 1])) << 16 |
         uint32_t(uint8_t(s[at + 2])) << 8 | uint8_t(s[at + 3]);
}

inline std::string frame(uint8_t type, uint8_t flags, uint32_t stream, const std::string& payload = "") {
  const size_t n = payload.size();
  std::string f = {static_cast<char>(n >> 16), static_cast<char>(n >> 8), static_cast<char>(n),
                   static_cast<char>(type), static_cast<char>(flags)};
  f += u32(stream);
  return f + payload;
}

struct Frame {
  uint8_t type = 0;
  uint8_t flags = 0;
  uint32_t stream = 0;
  std::string payload;
};

// ------------------------------------------------------------ the client

// One TLS connection (ALPN h2) that writes raw HTTP/2 bytes and reads the
// server's frames; it answers nothing unless told to (answer_pings()).
class RawH2Client {
 public:
  RawH2Client() = default;
  RawH2Client(const RawH2Client&) = delete;
  RawH2Client& operator=(const RawH2Client&) = delete;
  ~RawH2Client() {
    if (ssl_ != nullptr) SSL_free(ssl_);
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
    if (fd_ >= 0) ::close(fd_);
  }

  // TCP, TLS handshake, client preface and an empty SETTINGS. "" or why not.
  std::string open(int port, bool preface = true) {
    fd_ = tcp_connect("127.0.0.1", port, std::chrono::seconds(5));
    if (fd_ < 0) return "cannot connect";
    // A flood into a gateway that stopped reading must fail, not hang.
    timeval tv{5, 0};
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    ctx_ = SSL_CTX_new(TLS_client_method());
    ssl_ = SSL_new(ctx_);
    static const unsigned char kAlpn[] = {2, 'h', '2'};
    SSL_set_alpn_protos(ssl_, kAlpn, sizeof kAlpn);
    SSL_set_tlsext_host_name(ssl_, "localhost");
    SSL_set_fd(ssl_, fd_);
    if (SSL_connect(ssl_) != 1) return "TLS handshake failed";
    if (preface && !send(kPreface + frame(kSettings, 0, 0))) return "cannot send the preface";
    return "";
  }

  // While reading, ACK each PING the server sends, as a live client would
  // (a client that goes silent is the default).
  void answer_pings(bool on) { answer_pings_ = on; }

  // False once the server stopped taking bytes (closed).
  bool send(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      const int chunk = static_cast<int>(std::min<size_t>(bytes.size() - off, 16384));
      const int n = SSL_write(ssl_, bytes.data() + off, chunk);
      if (n <= 0) {
        ERR_clear_error();
        return false;
      }
      off += static_cast<size_t>(n);
    }
    return true;
  }

  // Reads frames until `done` holds for what arrived, the server closes or
  // `timeout` passes. True if `done` held.
  bool read_until(const std::function<bool(const std::vector<Frame>&)>& done, Ms timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      if (done(frames_)) return true;
      if (closed_) return false;
      const auto left = std::chrono::duration_cast<Ms>(deadline - Clock::now());
      if (left.count() <= 0) return false;
      if (SSL_pending(ssl_) == 0) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      }
      char buf[16384];
      const int n = SSL_read(ssl_, buf, sizeof buf);
      if (n <= 0) {
        const int err = SSL_get_error(ssl_, n);
        ERR_clear_error();
        if (err == SSL_ERROR_WANT_READ) continue;
        closed_ = true;
        continue;
      }
      in_.append(buf, static_cast<size_t>(n));
      const size_t first_new = frames_.size();
      parse();
      if (answer_pings_) ack_pings(first_new);
    }
  }

  // Reads until the server closes the connection; true if it did in time.
  bool wait_closed(Ms timeout) {
    read_until([](const std::vector<Frame>&) { return false; }, timeout);
    return closed_;
  }

  const Frame* goaway() const {
    for (const Frame& f : frames_)
      if (f.type == kGoaway && f.stream == 0 && f.payload.size() >= 8) return &f;
    return nullptr;
  }
  // The GOAWAY's error code, or -1 if none arrived.
  int64_t goaway_code() const { return goaway() ? int64_t{be32(goaway()->payload, 4)} : -1; }
  const std::vector<Frame>& frames() const { return frames_; }
  const Frame* find(uint8_t type, uint32_t stream) const {
    for (const Frame& f : frames_)
      if (f.type == type && f.stream == stream) return &f;
    return nullptr;
  }
  size_t count(uint8_t type) const {
    size_t n = 0;
    for (const Frame& f : frames_) n += f.type == type;
    return n;
  }

 private:
  void parse() {
    size_t off = 0;
    while (in_.size() - off >= 9) {
      const size_t len =
          size_t(uint8_t(in_[off])) << 16 | size_t(uint8_t(in_[off + 1])) << 8 | uint8_t(in_[off + 2]);
      if (in_.size() - off - 9 < len) break;
      Frame f;
      f.type = static_cast<uint8_t>(in_[off + 3]);
      f.flags = static_cast<uint8_t>(in_[off + 4]);
      f.stream = be32(in_, off + 5) & 0x7fffffff;
      f.payload = in_.substr(off + 9, len);
      frames_.push_back(std::move(f));
      off += 9 + len;
    }
    in_.erase(0, off);
  }

  void ack_pings(size_t from) {
    for (size_t i = from; i < frames_.size(); ++i) {
      const Frame& f = frames_[i];
      if (f.type == kPing && !(f.flags & kAck)) send(frame(kPing, kAck, 0, f.payload));
    }
  }

  int fd_ = -1;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  std::string in_;
  std::vector<Frame> frames_;
  bool closed_ = false;
  bool answer_pings_ = false;
};

}  // namespace tlsgate::itest
