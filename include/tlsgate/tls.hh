// TLS termination in userspace over bytes the ring delivered. OpenSSL is used
// only in src/tls/.
//
// A Session never touches a socket: received ciphertext is handed to
// handshake()/read() as a span, and every record OpenSSL produces is appended
// to the connection's output ByteQueue by a custom BIO. Bytes of a span that
// OpenSSL did not consume are kept in the session's own pending queue, so the
// caller may recycle its receive buffer as soon as the call returns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "tlsgate/buffer.hh"
#include "tlsgate/config.hh"
#include "tlsgate/result.hh"

namespace tlsgate::tls {

// Process-wide OpenSSL set-up: routes OpenSSL's allocations to mimalloc (when
// built with it). Call once, first thing in main(), before any other thread.
void init_library();

enum class Alpn { None, H2, Http11 };
const char* to_string(Alpn a);

// One SSL_CTX, made per shard from validated settings (objects stay
// shard-local). Throws std::runtime_error naming the key (Origin) whose file
// OpenSSL refused.
class Context {
 public:
  explicit Context(const config::TlsSettings& settings);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  void* native() const { return ctx_; }

 private:
  void* ctx_ = nullptr;  // SSL_CTX*
};

enum class HandshakeState { InProgress, Done, Failed };
const char* to_string(HandshakeState s);

class Session {
 public:
  Session(Context& ctx, ChunkPool& pool);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Drives the handshake with newly received bytes (may be empty).
  // Records to send are appended to `out`.
  HandshakeState handshake(std::span<const uint8_t> in, ByteQueue& out);
  Alpn alpn() const { return alpn_; }
  const char* version() const;
  const char* cipher() const;
  // Why the handshake failed, for the log (OpenSSL's reason string).
  const std::string& failure() const { return failure_; }

  // Decrypts: feeds `in` (may be empty) and calls `sink(data, len)` for every
  // plaintext piece. Returns Closed on close_notify, Protocol on a bad record.
  // Records OpenSSL must send in reply (alerts, tickets) go to `out`.
  template <typename Sink>
  Result<void> read(std::span<const uint8_t> in, ByteQueue& out, Sink&& sink);

  // Encrypts all of `data` into records appended to `out`.
  Result<void> write(const uint8_t* data, size_t len, ByteQueue& out);
  // Appends a close_notify alert to `out`.
  void shutdown(ByteQueue& out);

 private:
  Result<size_t> read_some(uint8_t* buf, size_t cap);
  void begin(std::span<const uint8_t> in, ByteQueue& out);
  void end();

  friend struct BioAccess;
  void* ssl_ = nullptr;  // SSL*
  ByteQueue pending_in_;
  std::span<const uint8_t> in_;
  ByteQueue* out_ = nullptr;
  Alpn alpn_ = Alpn::None;
  bool broken_ = false;  // received bytes were lost (pool exhausted)
  std::string failure_;
};

template <typename Sink>
Result<void> Session::read(std::span<const uint8_t> in, ByteQueue& out, Sink&& sink) {
  begin(in, out);
  uint8_t buf[16384];
  for (;;) {
    Result<size_t> r = read_some(buf, sizeof buf);
    if (!r) {
      end();
      if (r.error() == Error::WouldBlock) return {};
      return Unexpected(r.error());
    }
    sink(buf, *r);
  }
}

}  // namespace tlsgate::tls
