// An in-memory OpenSSL client for tls::Session tests, the loop that carries
// handshake bytes between the two, and the server side of one handshake.
// Shared by unit_tls, unit_tls_ktls, unit_tls_record, unit_tls_alloc and
// unit_tls_workarounds.
#pragma once

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <vector>

#include "cert_env.hh"
#include "tlsgate/buffer.hh"
#include "tlsgate/config.hh"
#include "tlsgate/tls.hh"

namespace tlsgate::tls::tlstest {

using Bytes = std::vector<uint8_t>;

// ------------------------------------------------------------ test client

struct ClientOptions {
  int max_version = 0;  // 0 = TLS 1.3
  std::vector<std::string> alpn{"h2", "http/1.1"};
  int* tickets = nullptr;  // counts the session tickets the client receives
};

inline int count_ticket(SSL* ssl, SSL_SESSION*) {
  ++*static_cast<int*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  return 0;  // the client does not keep the session
}

// The transport every test client shares: an SSL in client mode over two
// memory BIOs, driven by hand. A derived class makes and configures the SSL.
class MemoryBioClient {
 public:
  MemoryBioClient(const MemoryBioClient&) = delete;
  MemoryBioClient& operator=(const MemoryBioClient&) = delete;
  virtual ~MemoryBioClient() {
    // No close_notify was exchanged: without this OpenSSL marks the session
    // not resumable when the SSL goes away.
    if (ssl_) SSL_set_shutdown(ssl_, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(ssl_);
  }

  SSL* ssl() { return ssl_; }

  // 1 = done, 0 = wants more, -1 = failed (errors in last_error()).
  int step() {
    int rc = SSL_do_handshake(ssl_);
    if (rc == 1) return 1;
    int err = SSL_get_error(ssl_, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return 0;
    failed_reason_ = ERR_GET_REASON(ERR_peek_error());
    last_error_ = openssl_errors();
    return -1;
  }
  int failed_reason() const { return failed_reason_; }
  const std::string& last_error() const { return last_error_; }

  // Ciphertext the client wants to send.
  Bytes take_output() {
    Bytes out(static_cast<size_t>(BIO_ctrl_pending(net_out_)));
    if (!out.empty()) {
      int n = BIO_read(net_out_, out.data(), static_cast<int>(out.size()));
      out.resize(n > 0 ? static_cast<size_t>(n) : 0);
    }
    return out;
  }
  // Ciphertext from the server.
  void give(ByteQueue& q) {
    uint8_t buf[4096];
    while (size_t n = q.read(buf, sizeof buf))
      ASSERT_EQ(BIO_write(net_in_, buf, static_cast<int>(n)), int(n));
  }
  void give(const Bytes& b) {
    if (!b.empty()) {
      ASSERT_EQ(BIO_write(net_in_, b.data(), static_cast<int>(b.size())), int(b.size()));
    }
  }
  // Ciphertext given but not read by OpenSSL yet.
  size_t unread_input() const { return static_cast<size_t>(BIO_ctrl_pending(net_in_)); }

  // One SSL_write per call while it takes everything: one application data
  // record for a small buffer.
  void write(const Bytes& b) { write(b.data(), b.size()); }
  void write(const std::string& s) { write(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }
  void write(const uint8_t* p, size_t len) {
    while (len > 0) {
      size_t n = 0;
      ASSERT_EQ(SSL_write_ex(ssl_, p, len, &n), 1) << openssl_errors();
      p += n;
      len -= n;
    }
  }
  // Everything readable now. `status` gets SSL_get_error of the last call,
  // `error` the OpenSSL error queue then (empty unless SSL_ERROR_SSL).
  Bytes read_all(int* status = nullptr, std::string* error = nullptr) {
    Bytes out;
    uint8_t buf[16384];
    for (;;) {
      size_t n = 0;
      if (SSL_read_ex(ssl_, buf, sizeof buf, &n) == 1) {
        out.insert(out.end(), buf, buf + n);
        continue;
      }
      if (status) *status = SSL_get_error(ssl_, 0);
      std::string e = openssl_errors();
      if (error) *error = e;
      return out;
    }
  }

 protected:
  MemoryBioClient() = default;
  // Takes `ssl`, configured by the derived class, and connects it to the BIOs.
  void attach(SSL* ssl) {
    ssl_ = ssl;
    SSL_set_tlsext_host_name(ssl_, "localhost");
    SSL_set1_host(ssl_, "localhost");
    net_in_ = BIO_new(BIO_s_mem());
    net_out_ = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(net_in_, -1);  // empty = "would block", not EOF
    SSL_set_bio(ssl_, net_in_, net_out_);
    SSL_set_connect_state(ssl_);
  }

 private:
  SSL* ssl_ = nullptr;
  BIO* net_in_ = nullptr;
  BIO* net_out_ = nullptr;
  int failed_reason_ = 0;
  std::string last_error_;
};

// An OpenSSL client with a context of its own that verifies the server's
// chain against the test CA and the name "localhost", as a real client would.
class Client : public MemoryBioClient {
 public:
  explicit Client(const ClientOptions& o = {}) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
    if (o.max_version != 0) SSL_CTX_set_max_proto_version(ctx_, o.max_version);
    EXPECT_EQ(SSL_CTX_load_verify_locations(ctx_, cert_path("ca.crt").c_str(), nullptr), 1)
        << openssl_errors();
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    if (o.tickets != nullptr) {
      SSL_CTX_set_app_data(ctx_, o.tickets);
      SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
      SSL_CTX_sess_set_new_cb(ctx_, count_ticket);
    }
    SSL* ssl = SSL_new(ctx_);
    if (!o.alpn.empty()) {
      std::string wire;
      for (const std::string& p : o.alpn) {
        wire.push_back(static_cast<char>(p.size()));
        wire += p;
      }
      EXPECT_EQ(SSL_set_alpn_protos(ssl, reinterpret_cast<const unsigned char*>(wire.data()),
                                    static_cast<unsigned>(wire.size())),
                0);
    }
    attach(ssl);
  }
  ~Client() override { SSL_CTX_free(ctx_); }

 private:
  SSL_CTX* ctx_ = nullptr;
};

struct Outcome {
  HandshakeState server = HandshakeState::InProgress;
  int client = 0;  // as Client::step()
};

// Carries bytes both ways until both sides finish, one fails, or nothing moves.
inline Outcome run_handshake(Session& server, MemoryBioClient& client, ByteQueue& out) {
  Outcome o;
  for (int round = 0; round < 20; ++round) {
    if (o.client == 0) o.client = client.step();
    Bytes in = client.take_output();
    if (o.server == HandshakeState::InProgress) {
      o.server = server.handshake(in, out);
    } else {
      EXPECT_TRUE(in.empty()) << "client sent " << in.size() << " bytes after the server finished";
    }
    const bool server_sent = !out.empty();
    client.give(out);
    if (o.server == HandshakeState::Failed) {
      // Let the client read the alert.
      if (o.client == 0) o.client = client.step();
      return o;
    }
    if (o.server == HandshakeState::Done && o.client == 1) return o;
    if (o.client == -1) return o;
    if (in.empty() && !server_sent && round > 0) break;
  }
  return o;
}

// Plaintext as text, for comparing with string literals.
inline std::string as_string(const Bytes& b) { return std::string(b.begin(), b.end()); }

// The plaintext Session::read delivers from `in`. With `result` the caller
// checks how the read ended; without, it must have succeeded.
inline Bytes read_plain(Session& s, const Bytes& in, ByteQueue& out, Result<void>* result = nullptr) {
  Bytes got;
  Result<void> r = s.read(in, out, [&](const uint8_t* p, size_t len) { got.insert(got.end(), p, p + len); });
  if (result)
    *result = r;
  else
    EXPECT_TRUE(r.has_value()) << to_string(r.error()) << ": " << s.failure();
  return got;
}

// A server Session on a Context, pool and output queue of its own, for a
// test that looks at one handshake (ConnectedPair is for going on with data).
struct TestServer {
  explicit TestServer(const config::TlsSettings& ts = settings()) : ctx(ts), session(ctx, pool) {}
  Outcome handshake_with(MemoryBioClient& client) { return run_handshake(session, client, out); }

  ChunkPool pool;
  ByteQueue out{&pool};
  Context ctx;
  Session session;
};

// Both sides gave up the handshake: the server says why, and the client
// failed with `reason` (SSL_R_*, from the alert the server sent).
inline void expect_refused(const Outcome& o, const Session& server, const MemoryBioClient& client,
                           int reason) {
  EXPECT_EQ(o.server, HandshakeState::Failed);
  EXPECT_FALSE(server.failure().empty());
  EXPECT_EQ(o.client, -1);
  EXPECT_EQ(client.failed_reason(), reason) << client.last_error();
}

// A server Session and a Client; connect() runs the handshake to the end.
class ConnectedPair : public ::testing::Test {
 protected:
  void connect(ClientOptions co = {}, config::TlsSettings ts = settings()) {
    ctx_ = std::make_unique<Context>(ts);
    session_ = std::make_unique<Session>(*ctx_, pool_);
    client_ = std::make_unique<Client>(co);
    Outcome o = run_handshake(*session_, *client_, out_);
    ASSERT_EQ(o.server, HandshakeState::Done) << session_->failure();
    ASSERT_EQ(o.client, 1) << client_->last_error();
  }
  void TearDown() override {
    session_.reset();
    out_.clear();
  }

  ChunkPool pool_;
  ByteQueue out_{&pool_};
  std::unique_ptr<Context> ctx_;
  std::unique_ptr<Session> session_;
  std::unique_ptr<Client> client_;
};

}  // namespace tlsgate::tls::tlstest
