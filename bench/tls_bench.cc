// Full and resumed TLS handshakes in process: tlsgate's server Session (custom BIO, the
// code the shards run) against an OpenSSL client over memory BIOs. The
// figure includes the client's work, so compare variants with each other
// (ECDSA vs RSA vs resumed), not with a server-only number.
#include <benchmark/benchmark.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <stdlib.h>

#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "tlsgate/buffer.hh"
#include "tlsgate/config.hh"
#include "tlsgate/tls.hh"

namespace {

const std::string& cert_dir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/tlsgate-bench-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp");
    std::string cmd = std::string("bash '") + TLSGATE_SOURCE_ROOT + "/tools/gen-cert' '" + tmpl + "' >/dev/null";
    if (std::system(cmd.c_str()) != 0) throw std::runtime_error("tools/gen-cert failed");
    return std::string(tmpl);
  }();
  return dir;
}

void init_once() {
  static const bool done = (tlsgate::tls::init_library(), true);
  (void)done;
}

struct Fixture {
  tlsgate::ChunkPool pool;
  std::unique_ptr<tlsgate::tls::Context> server;
  SSL_CTX* client = nullptr;

  Fixture(const char* cert, const char* key, int version) {
    init_once();
    tlsgate::config::TlsSettings s;
    s.certificates.push_back({cert_dir() + "/" + cert, cert_dir() + "/" + key, "", {}, {}, {}});
    server = std::make_unique<tlsgate::tls::Context>(s);
    client = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(client, version);
    SSL_CTX_set_max_proto_version(client, version);
    SSL_CTX_set_session_cache_mode(client, SSL_SESS_CACHE_CLIENT);
    static const unsigned char alpn[] = "\x02h2";
    SSL_CTX_set_alpn_protos(client, alpn, 3);
  }
  ~Fixture() { SSL_CTX_free(client); }

  // One handshake; returns the client's session for resumption when asked.
  // The client reads once after the handshake so TLS 1.3 tickets arrive.
  SSL_SESSION* handshake(SSL_SESSION* resume, bool keep_session) {
    SSL* c = SSL_new(client);
    BIO* c_in = BIO_new(BIO_s_mem());
    BIO* c_out = BIO_new(BIO_s_mem());
    SSL_set_bio(c, c_in, c_out);
    SSL_set_connect_state(c);
    if (resume) SSL_set_session(c, resume);
    tlsgate::tls::Session s(*server, pool);
    tlsgate::ByteQueue to_client(&pool);
    std::vector<uint8_t> wire(64 * 1024);
    bool server_done = false;
    for (int round = 0; round < 20; ++round) {
      int rc = SSL_do_handshake(c);
      int n = BIO_read(c_out, wire.data(), static_cast<int>(wire.size()));
      if (n > 0 || !server_done) {
        auto st = s.handshake({wire.data(), n > 0 ? static_cast<size_t>(n) : 0}, to_client);
        if (st == tlsgate::tls::HandshakeState::Failed) throw std::runtime_error("server: " + s.failure());
        server_done = st == tlsgate::tls::HandshakeState::Done;
      }
      while (!to_client.empty()) {
        size_t m = to_client.read(wire.data(), wire.size());
        BIO_write(c_in, wire.data(), static_cast<int>(m));
      }
      if (rc == 1 && server_done) break;
    }
    char b[16];
    SSL_read(c, b, sizeof b);  // takes the tickets
    ERR_clear_error();
    SSL_SESSION* out = keep_session ? SSL_get1_session(c) : nullptr;
    if (out && !SSL_SESSION_is_resumable(out)) throw std::runtime_error("no resumable session after the handshake");
    if (!SSL_is_init_finished(c)) throw std::runtime_error("client did not finish");
    if (resume && !SSL_session_reused(c)) throw std::runtime_error("session was not resumed");
    // A connection freed without a shutdown marks its session not resumable.
    SSL_set_shutdown(c, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(c);
    return out;
  }
};

// Resumed: every handshake offers the ticket the previous one received. An
// OpenSSL client uses a TLS 1.3 ticket once (with SSL_SESS_CACHE_CLIENT a
// completed resumption marks the session not resumable), as RFC 8446 advises
// and as real clients do, so the same SSL_SESSION cannot be offered twice.
void run(benchmark::State& state, const char* cert, const char* key, int version, bool resumed) {
  Fixture f(cert, key, version);
  SSL_SESSION* session = resumed ? f.handshake(nullptr, true) : nullptr;
  for (auto _ : state) {
    if (!resumed) {
      f.handshake(nullptr, false);
      continue;
    }
    SSL_SESSION* next = f.handshake(session, true);
    SSL_SESSION_free(session);
    session = next;
  }
  if (session) SSL_SESSION_free(session);
  state.counters["handshakes/s"] = benchmark::Counter(static_cast<double>(state.iterations()),
                                                      benchmark::Counter::kIsRate);
}

void BM_Tls13FullEcdsaP256(benchmark::State& s) { run(s, "server.crt", "server.key", TLS1_3_VERSION, false); }
void BM_Tls13FullRsa2048(benchmark::State& s) { run(s, "rsa-server.crt", "rsa-server.key", TLS1_3_VERSION, false); }
void BM_Tls12FullEcdsaP256(benchmark::State& s) { run(s, "server.crt", "server.key", TLS1_2_VERSION, false); }
void BM_Tls13ResumedEcdsaP256(benchmark::State& s) { run(s, "server.crt", "server.key", TLS1_3_VERSION, true); }

BENCHMARK(BM_Tls13FullEcdsaP256)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Tls13FullRsa2048)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Tls12FullEcdsaP256)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Tls13ResumedEcdsaP256)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
