// Session::derive_ktls() without a kernel: after a real handshake with an
// OpenSSL client (all in memory, as in tls_test.cc) the test takes the keys,
// IVs and sequence numbers kernel TLS would get and does the record crypto
// itself with OpenSSL's EVP AEAD API:
//   RX: records the client writes must decrypt with rx.key / rx.iv / rx.seq
//       (and the next one with rx.seq + 1);
//   TX: records the test encrypts with tx.key / tx.iv / tx.seq must be
//       accepted by the client, which proves that the TX sequence number
//       counts what the server already sent (TLS 1.3 session tickets).
// Record layouts: RFC 8446 5.2-5.3 (TLS 1.3), RFC 5288 3 (TLS 1.2 AES-GCM,
// explicit nonce), RFC 7905 2 (TLS 1.2 ChaCha20-Poly1305).
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "tlsgate/buffer.hh"
#include "tlsgate/config.hh"
#include "tlsgate/ktls.hh"
#include "tlsgate/tls.hh"
#include "cert_env.hh"
#include "tls_client.hh"

namespace tlsgate::tls {
namespace {
using namespace tlsgate::tls::tlstest;

constexpr uint8_t kApplicationData = 23;
constexpr size_t kTag = 16;

std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s.push_back(d[p[i] >> 4]);
    s.push_back(d[p[i] & 15]);
  }
  return s;
}

Bytes bytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

// ------------------------------------------------------------ test client

// Client-side SSL_CTX shared by the connections of one test (resumption).
// Counts, per connection, the sessions the server handed out: in TLS 1.3 one
// per NewSessionTicket message, in TLS 1.2 one per handshake.
struct KtlsClientOptions {
  int max_version = 0;           // 0 = TLS 1.3
  std::string ciphersuites;      // TLS 1.3 (SSL_CTX_set_ciphersuites)
  std::string cipher_list;       // TLS 1.2 (SSL_CTX_set_cipher_list)
};

struct ClientConnState {
  int sessions = 0;
  SSL_SESSION* last = nullptr;
};

int new_session_cb(SSL* ssl, SSL_SESSION* sess) {
  auto* st = static_cast<ClientConnState*>(SSL_get_app_data(ssl));
  if (st == nullptr) return 0;
  ++st->sessions;
  if (st->last != nullptr) SSL_SESSION_free(st->last);
  st->last = sess;
  return 1;  // we own it now
}

class ClientContext {
 public:
  explicit ClientContext(const KtlsClientOptions& o) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
    if (o.max_version != 0) SSL_CTX_set_max_proto_version(ctx_, o.max_version);
    if (!o.ciphersuites.empty()) {
      EXPECT_EQ(SSL_CTX_set_ciphersuites(ctx_, o.ciphersuites.c_str()), 1) << openssl_errors();
    }
    if (!o.cipher_list.empty()) {
      EXPECT_EQ(SSL_CTX_set_cipher_list(ctx_, o.cipher_list.c_str()), 1) << openssl_errors();
    }
    EXPECT_EQ(SSL_CTX_load_verify_locations(ctx_, cert_path("ca.crt").c_str(), nullptr), 1) << openssl_errors();
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx_, new_session_cb);
  }
  ~ClientContext() { SSL_CTX_free(ctx_); }
  ClientContext(const ClientContext&) = delete;
  ClientContext& operator=(const ClientContext&) = delete;
  SSL_CTX* get() const { return ctx_; }

 private:
  SSL_CTX* ctx_ = nullptr;
};

// A client on a shared context (resumption across connections) that keeps
// the sessions the server hands it.
class KtlsClient : public MemoryBioClient {
 public:
  explicit KtlsClient(ClientContext& cc, SSL_SESSION* resume = nullptr) {
    SSL* ssl = SSL_new(cc.get());
    SSL_set_app_data(ssl, &state_);
    static const unsigned char alpn[] = "\x02h2";
    EXPECT_EQ(SSL_set_alpn_protos(ssl, alpn, 3), 0);
    if (resume != nullptr) {
      EXPECT_EQ(SSL_set_session(ssl, resume), 1) << openssl_errors();
    }
    attach(ssl);
  }
  ~KtlsClient() override {
    if (state_.last != nullptr) SSL_SESSION_free(state_.last);
  }

  int sessions_received() const { return state_.sessions; }
  // The latest session the server handed out (new reference), or nullptr.
  SSL_SESSION* take_session() {
    SSL_SESSION* s = state_.last;
    state_.last = nullptr;
    return s;
  }

 private:
  ClientConnState state_;
};

// ------------------------------------------------------------ record crypto

struct Record {
  uint8_t type = 0;
  uint16_t version = 0;
  Bytes header;  // the 5 bytes
  Bytes body;
};

// Splits a byte stream into whole records; false if it does not end on a
// record boundary.
bool split_records(const Bytes& wire, std::vector<Record>& out) {
  size_t off = 0;
  while (off < wire.size()) {
    if (wire.size() - off < 5) return false;
    size_t len = size_t(wire[off + 3]) << 8 | wire[off + 4];
    if (wire.size() - off - 5 < len) return false;
    Record r;
    r.type = wire[off];
    r.version = static_cast<uint16_t>(wire[off + 1] << 8 | wire[off + 2]);
    r.header.assign(wire.begin() + off, wire.begin() + off + 5);
    r.body.assign(wire.begin() + off + 5, wire.begin() + off + 5 + len);
    out.push_back(std::move(r));
    off += 5 + len;
  }
  return true;
}

const EVP_CIPHER* evp_cipher(KtlsCipher c) {
  switch (c) {
    case KtlsCipher::Aes128Gcm: return EVP_aes_128_gcm();
    case KtlsCipher::Aes256Gcm: return EVP_aes_256_gcm();
    case KtlsCipher::Chacha20Poly1305: return EVP_chacha20_poly1305();
    case KtlsCipher::Unknown: break;
  }
  return nullptr;
}

void put_u64(uint8_t* out, uint64_t v) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<uint8_t>(v);
    v >>= 8;
  }
}

bool tls12_gcm(const KtlsKeys& k) { return !k.tls13 && k.cipher != KtlsCipher::Chacha20Poly1305; }

// The 12-byte AEAD nonce. TLS 1.3 and TLS 1.2 ChaCha20: iv XOR the sequence
// number (big-endian, right-aligned). TLS 1.2 AES-GCM: salt || explicit nonce.
void make_nonce(const KtlsKeys& k, uint64_t seq, const uint8_t* explicit_nonce, uint8_t nonce[12]) {
  if (tls12_gcm(k)) {
    std::memcpy(nonce, k.iv, 4);
    std::memcpy(nonce + 4, explicit_nonce, 8);
    return;
  }
  std::memcpy(nonce, k.iv, 12);
  uint8_t s[8];
  put_u64(s, seq);
  for (int i = 0; i < 8; ++i) nonce[4 + i] ^= s[i];
}

// TLS 1.2 additional data: seq || type || version || plaintext length.
Bytes tls12_aad(uint64_t seq, uint8_t type, uint16_t version, size_t plain_len) {
  Bytes aad(13);
  put_u64(aad.data(), seq);
  aad[8] = type;
  aad[9] = static_cast<uint8_t>(version >> 8);
  aad[10] = static_cast<uint8_t>(version);
  aad[11] = static_cast<uint8_t>(plain_len >> 8);
  aad[12] = static_cast<uint8_t>(plain_len);
  return aad;
}

bool aead_open(const KtlsKeys& k, const uint8_t nonce[12], const Bytes& aad, const uint8_t* ct, size_t ct_len,
               const uint8_t* tag, Bytes& plain) {
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
  int outl = 0;
  plain.assign(ct_len + 16, 0);
  bool ok = EVP_DecryptInit_ex(ctx.get(), evp_cipher(k.cipher), nullptr, nullptr, nullptr) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_IVLEN, 12, nullptr) == 1 &&
            EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, k.key, nonce) == 1 &&
            EVP_DecryptUpdate(ctx.get(), nullptr, &outl, aad.data(), static_cast<int>(aad.size())) == 1 &&
            EVP_DecryptUpdate(ctx.get(), plain.data(), &outl, ct, static_cast<int>(ct_len)) == 1;
  size_t total = ok ? static_cast<size_t>(outl) : 0;
  ok = ok &&
       EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, int(kTag), const_cast<uint8_t*>(tag)) == 1 &&
       EVP_DecryptFinal_ex(ctx.get(), plain.data() + total, &outl) == 1;
  ERR_clear_error();
  if (!ok) return false;
  plain.resize(total + static_cast<size_t>(outl));
  return true;
}

Bytes aead_seal(const KtlsKeys& k, const uint8_t nonce[12], const Bytes& aad, const Bytes& plain) {
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
  Bytes out(plain.size() + 16 + kTag);
  int outl = 0, fin = 0;
  bool ok = EVP_EncryptInit_ex(ctx.get(), evp_cipher(k.cipher), nullptr, nullptr, nullptr) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_IVLEN, 12, nullptr) == 1 &&
            EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, k.key, nonce) == 1 &&
            EVP_EncryptUpdate(ctx.get(), nullptr, &outl, aad.data(), static_cast<int>(aad.size())) == 1 &&
            EVP_EncryptUpdate(ctx.get(), out.data(), &outl, plain.data(), static_cast<int>(plain.size())) == 1 &&
            EVP_EncryptFinal_ex(ctx.get(), out.data() + outl, &fin) == 1;
  EXPECT_TRUE(ok) << "EVP encrypt failed: " << openssl_errors();
  size_t len = static_cast<size_t>(outl + fin);
  ok = ok && EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, int(kTag), out.data() + len) == 1;
  EXPECT_TRUE(ok) << "EVP get tag failed: " << openssl_errors();
  out.resize(len + kTag);
  return out;
}

// Decrypts one application data record with `k` at sequence number `seq`.
// `plain` gets the content (TLS 1.3: inner type and padding removed).
bool open_record(const KtlsKeys& k, uint64_t seq, const Record& r, Bytes& plain, std::string* why = nullptr) {
  auto fail = [&](const char* w) {
    if (why) *why = w;
    return false;
  };
  if (r.type != kApplicationData) return fail("outer record type is not application_data");
  if (r.version != 0x0303) return fail("record version is not 0x0303");
  const size_t explicit_len = tls12_gcm(k) ? 8 : 0;
  if (r.body.size() < explicit_len + kTag) return fail("record too short");
  const uint8_t* ct = r.body.data() + explicit_len;
  const size_t ct_len = r.body.size() - explicit_len - kTag;
  const uint8_t* tag = r.body.data() + r.body.size() - kTag;
  uint8_t nonce[12];
  make_nonce(k, seq, r.body.data(), nonce);
  const Bytes aad = k.tls13 ? r.header : tls12_aad(seq, r.type, r.version, ct_len);
  if (!aead_open(k, nonce, aad, ct, ct_len, tag, plain)) return fail("AEAD authentication failed");
  if (k.tls13) {
    while (!plain.empty() && plain.back() == 0) plain.pop_back();
    if (plain.empty()) return fail("TLS 1.3 inner plaintext is all padding");
    uint8_t inner = plain.back();
    plain.pop_back();
    if (inner != kApplicationData) return fail("TLS 1.3 inner content type is not application_data");
  }
  return true;
}

// Encrypts `plain` as one application data record with `k` at `seq`. TLS 1.3
// adds `padding` zero bytes after the inner content type.
Bytes seal_record(const KtlsKeys& k, uint64_t seq, const Bytes& plain, size_t padding = 0) {
  Bytes header = {kApplicationData, 0x03, 0x03, 0, 0};
  Bytes body;
  uint8_t nonce[12];
  if (k.tls13) {
    Bytes inner = plain;
    inner.push_back(kApplicationData);
    inner.insert(inner.end(), padding, 0);
    size_t len = inner.size() + kTag;
    header[3] = static_cast<uint8_t>(len >> 8);
    header[4] = static_cast<uint8_t>(len);
    make_nonce(k, seq, nullptr, nonce);
    body = aead_seal(k, nonce, header, inner);
  } else {
    // Any explicit nonce will do (unique per key): not the sequence number,
    // to show that the receiver takes it from the record.
    uint8_t explicit_nonce[8];
    put_u64(explicit_nonce, seq ^ 0x5a5aa5a5deadbeefULL);
    size_t explicit_len = tls12_gcm(k) ? 8 : 0;
    size_t len = explicit_len + plain.size() + kTag;
    header[3] = static_cast<uint8_t>(len >> 8);
    header[4] = static_cast<uint8_t>(len);
    make_nonce(k, seq, explicit_nonce, nonce);
    body.assign(explicit_nonce, explicit_nonce + explicit_len);
    Bytes sealed = aead_seal(k, nonce, tls12_aad(seq, kApplicationData, 0x0303, plain.size()), plain);
    body.insert(body.end(), sealed.begin(), sealed.end());
  }
  // Sized once and filled: GCC 12 at -O3 mistakes insert() after a copy for
  // an out-of-bounds write (-Warray-bounds).
  Bytes rec(header.size() + body.size());
  std::memcpy(rec.data(), header.data(), header.size());
  if (!body.empty()) std::memcpy(rec.data() + header.size(), body.data(), body.size());
  return rec;
}

// For failure messages: which sequence numbers (0..63) open the record.
std::string seqs_that_open(const KtlsKeys& k, const Record& r) {
  std::string s;
  Bytes plain;
  for (uint64_t q = 0; q < 64; ++q)
    if (open_record(k, q, r, plain)) {
      if (!s.empty()) s += ',';  // not a temporary string: GCC 12 -O3 -Wrestrict false positive
      s += std::to_string(q);
    }
  return s.empty() ? "none of 0..63 (key or IV wrong)" : s;
}

std::string describe(const KtlsKeys& k) {
  return std::string(to_string(k.cipher)) + (k.tls13 ? " tls1.3" : " tls1.2") + " key=" + hex(k.key, k.key_len) +
         " iv=" + hex(k.iv, k.iv_len) + " seq=" + std::to_string(k.seq);
}

// ------------------------------------------------------------ checks

// The client writes a message; it must be one record that opens with rx at
// `seq`.
void check_rx_record(KtlsClient& client, const KtlsKeys& rx, uint64_t seq, const std::string& msg) {
  client.write(bytes(msg));
  std::vector<Record> recs;
  ASSERT_TRUE(split_records(client.take_output(), recs));
  ASSERT_EQ(recs.size(), 1u) << "one SSL_write of " << msg.size() << " bytes, one record";
  Bytes plain;
  std::string why;
  ASSERT_TRUE(open_record(rx, seq, recs[0], plain, &why))
      << "RX record does not open at seq " << seq << " (" << why << "); it opens at seq "
      << seqs_that_open(rx, recs[0]) << "; rx: " << describe(rx);
  EXPECT_EQ(as_string(plain), msg);
}

void check_rx(KtlsClient& client, const KtlsKeys& rx) {
  check_rx_record(client, rx, rx.seq, "first record under the kernel's RX key");
  check_rx_record(client, rx, rx.seq + 1, "second record, next sequence number");
}

// The test encrypts records with tx; the client must read them.
void check_tx(KtlsClient& client, const KtlsKeys& tx) {
  const std::string m1 = "first record from the kernel's TX key";
  const std::string m2 = "second record, padded in TLS 1.3";
  client.give(seal_record(tx, tx.seq, bytes(m1)));
  int status = 0;
  std::string err;
  Bytes got = client.read_all(&status, &err);
  ASSERT_EQ(as_string(got), m1) << "client rejected the record sealed at tx.seq " << tx.seq << ": " << err
                                << "; tx: " << describe(tx);
  EXPECT_EQ(status, SSL_ERROR_WANT_READ);
  client.give(seal_record(tx, tx.seq + 1, bytes(m2), 7));
  got = client.read_all(&status, &err);
  ASSERT_EQ(as_string(got), m2) << "client rejected the record sealed at tx.seq + 1: " << err;
  EXPECT_EQ(status, SSL_ERROR_WANT_READ);
  EXPECT_TRUE(client.take_output().empty()) << "client answered the records (an alert?)";
}

void check_shape(const KtlsKeys& k, KtlsCipher cipher, bool tls13) {
  EXPECT_EQ(k.cipher, cipher) << to_string(k.cipher);
  EXPECT_EQ(k.tls13, tls13);
  EXPECT_EQ(k.key_len, cipher == KtlsCipher::Aes128Gcm ? 16u : 32u);
  EXPECT_EQ(k.iv_len, tls13 || cipher == KtlsCipher::Chacha20Poly1305 ? 12u : 4u);
}

// ------------------------------------------------------------ cases

struct KtlsCase {
  const char* name;
  bool tls13;
  const char* suite;  // TLS 1.3 ciphersuite or TLS 1.2 cipher list
  KtlsCipher cipher;
  bool resumed;
  int records_before;  // application records the server reads in userspace first
};

void PrintTo(const KtlsCase& c, std::ostream* os) { *os << c.name; }

KtlsClientOptions client_options(const KtlsCase& c) {
  KtlsClientOptions o;
  if (c.tls13) {
    o.ciphersuites = c.suite;
  } else {
    o.max_version = TLS1_2_VERSION;
    o.cipher_list = c.suite;
  }
  return o;
}

// One server Context (ktls on) and one client context for a test; connect()
// makes a fresh pair each time, resuming the previous session if asked.
class KtlsTest : public ::testing::Test {
 protected:
  void TearDown() override {
    client_.reset();
    session_.reset();
    out_.clear();
    if (resume_ != nullptr) SSL_SESSION_free(resume_);
    EXPECT_EQ(pool_.in_use(), 0u) << "the session kept pool chunks";
  }

  void make_contexts(const KtlsClientOptions& co, bool ktls = true) {
    ctx_ = std::make_unique<Context>(settings(), ktls);
    cctx_ = std::make_unique<ClientContext>(co);
  }

  // Full handshake; everything the server wrote reaches the client, which
  // processes it (TLS 1.3 tickets) with an SSL_read that finds no data.
  void connect(bool resume = false) {
    client_.reset();
    session_.reset();
    out_.clear();
    session_ = std::make_unique<Session>(*ctx_, pool_);
    client_ = std::make_unique<KtlsClient>(*cctx_, resume ? resume_ : nullptr);
    Outcome o = run_handshake(*session_, *client_, out_);
    ASSERT_EQ(o.server, HandshakeState::Done) << session_->failure();
    ASSERT_EQ(o.client, 1) << client_->last_error();
    ASSERT_TRUE(out_.empty());
    int status = 0;
    std::string err;
    EXPECT_TRUE(client_->read_all(&status, &err).empty());
    ASSERT_EQ(status, SSL_ERROR_WANT_READ) << err;
    ASSERT_EQ(client_->unread_input(), 0u) << "client left server bytes unread";
    ASSERT_TRUE(client_->take_output().empty()) << "client answered the tickets";
    EXPECT_EQ(SSL_session_reused(client_->ssl()), resume ? 1 : 0);
    EXPECT_EQ(session_->resumed(), resume) << "what the access log says of the handshake";
    if (SSL_SESSION* s = client_->take_session()) {
      if (resume_ != nullptr) SSL_SESSION_free(resume_);
      resume_ = s;
    }
  }

  // The client sends `n` small records; the server reads them in userspace.
  void client_records(int n) {
    std::string expect;
    Bytes wire;
    for (int i = 0; i < n; ++i) {
      std::string m = "userspace record " + std::to_string(i);
      expect += m;
      client_->write(bytes(m));
      Bytes w = client_->take_output();
      wire.insert(wire.end(), w.begin(), w.end());
    }
    std::vector<Record> recs;
    ASSERT_TRUE(split_records(wire, recs));
    ASSERT_EQ(recs.size(), size_t(n));
    EXPECT_EQ(as_string(read_plain(*session_, wire, out_)), expect);
    ASSERT_TRUE(out_.empty()) << "server wrote while reading application data";
  }

  ChunkPool pool_;
  ByteQueue out_{&pool_};
  std::unique_ptr<Context> ctx_;
  std::unique_ptr<ClientContext> cctx_;
  std::unique_ptr<Session> session_;
  std::unique_ptr<KtlsClient> client_;
  SSL_SESSION* resume_ = nullptr;
};

class KtlsDerive : public KtlsTest, public ::testing::WithParamInterface<KtlsCase> {};

TEST_P(KtlsDerive, KeysAndSequenceNumbersMatchTheRecords) {
  const KtlsCase& c = GetParam();
  make_contexts(client_options(c));
  ASSERT_NO_FATAL_FAILURE(connect());
  if (c.resumed) {
    ASSERT_NE(resume_, nullptr) << "the first connection got no session";
    ASSERT_EQ(SSL_SESSION_is_resumable(resume_), 1);
    ASSERT_NO_FATAL_FAILURE(connect(true));
  }
  const int tickets = client_->sessions_received();
  // TLS 1.3: the server sent tickets under its application key, so tx.seq
  // starts above 0 and the TX check below tests the count.
  if (c.tls13) {
    EXPECT_GE(tickets, 1);
  }
  RecordProperty("tickets", tickets);
  EXPECT_STREQ(session_->version(), c.tls13 ? "TLSv1.3" : "TLSv1.2");
  EXPECT_EQ(session_->is_tls13(), c.tls13);
  EXPECT_EQ(session_->cipher_kind(), c.cipher);

  ASSERT_NO_FATAL_FAILURE(client_records(c.records_before));

  ASSERT_EQ(session_->pending_input(), 0u);
  KtlsKeys tx, rx;
  ASSERT_EQ(session_->derive_ktls(tx, rx), Offload::Done);
  check_shape(tx, c.cipher, c.tls13);
  check_shape(rx, c.cipher, c.tls13);
  EXPECT_NE(std::memcmp(tx.key, rx.key, tx.key_len), 0) << "TX and RX share a key";

  // The sequence numbers as the protocol defines them. TLS 1.3: records under
  // the application keys; the server's are its NewSessionTickets (one record
  // each). TLS 1.2: records after ChangeCipherSpec, i.e. the Finished first.
  const uint64_t n = static_cast<uint64_t>(c.records_before);
  EXPECT_EQ(rx.seq, c.tls13 ? n : n + 1) << "rx: " << describe(rx);
  EXPECT_EQ(tx.seq, c.tls13 ? static_cast<uint64_t>(tickets) : 1u)
      << "tx: " << describe(tx) << "; tickets the client got: " << tickets;

  // The proof: the records themselves.
  ASSERT_NO_FATAL_FAILURE(check_rx(*client_, rx));
  ASSERT_NO_FATAL_FAILURE(check_tx(*client_, tx));
}

const KtlsCase kCases[] = {
    {"Tls13Aes128Gcm_N0", true, "TLS_AES_128_GCM_SHA256", KtlsCipher::Aes128Gcm, false, 0},
    {"Tls13Aes128Gcm_N2", true, "TLS_AES_128_GCM_SHA256", KtlsCipher::Aes128Gcm, false, 2},
    {"Tls13Aes256Gcm_N0", true, "TLS_AES_256_GCM_SHA384", KtlsCipher::Aes256Gcm, false, 0},
    {"Tls13Aes256Gcm_N2", true, "TLS_AES_256_GCM_SHA384", KtlsCipher::Aes256Gcm, false, 2},
    {"Tls13Chacha20_N0", true, "TLS_CHACHA20_POLY1305_SHA256", KtlsCipher::Chacha20Poly1305, false, 0},
    {"Tls13Chacha20_N2", true, "TLS_CHACHA20_POLY1305_SHA256", KtlsCipher::Chacha20Poly1305, false, 2},
    {"Tls12Aes128Gcm_N0", false, "ECDHE-ECDSA-AES128-GCM-SHA256", KtlsCipher::Aes128Gcm, false, 0},
    {"Tls12Aes128Gcm_N2", false, "ECDHE-ECDSA-AES128-GCM-SHA256", KtlsCipher::Aes128Gcm, false, 2},
    {"Tls12Aes256Gcm_N0", false, "ECDHE-ECDSA-AES256-GCM-SHA384", KtlsCipher::Aes256Gcm, false, 0},
    {"Tls12Aes256Gcm_N2", false, "ECDHE-ECDSA-AES256-GCM-SHA384", KtlsCipher::Aes256Gcm, false, 2},
    {"Tls12Chacha20_N0", false, "ECDHE-ECDSA-CHACHA20-POLY1305", KtlsCipher::Chacha20Poly1305, false, 0},
    {"Tls12Chacha20_N2", false, "ECDHE-ECDSA-CHACHA20-POLY1305", KtlsCipher::Chacha20Poly1305, false, 2},
    {"Tls13Resumed_N0", true, "TLS_AES_128_GCM_SHA256", KtlsCipher::Aes128Gcm, true, 0},
    {"Tls13Resumed_N2", true, "TLS_AES_256_GCM_SHA384", KtlsCipher::Aes256Gcm, true, 2},
    {"Tls12Resumed_N0", false, "ECDHE-ECDSA-AES128-GCM-SHA256", KtlsCipher::Aes128Gcm, true, 0},
    {"Tls12Resumed_N2", false, "ECDHE-ECDSA-CHACHA20-POLY1305", KtlsCipher::Chacha20Poly1305, true, 2},
};

INSTANTIATE_TEST_SUITE_P(All, KtlsDerive, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<KtlsCase>& i) { return std::string(i.param.name); });

// The checks above can fail: a record does not open one sequence number off,
// and the client rejects a record sealed one sequence number off (TLS 1.2
// AES-GCM: the sequence number is only in the additional data).
class KtlsOffByOne : public KtlsTest, public ::testing::WithParamInterface<KtlsCase> {};

TEST_P(KtlsOffByOne, IsDetected) {
  const KtlsCase& c = GetParam();
  make_contexts(client_options(c));
  ASSERT_NO_FATAL_FAILURE(connect());
  KtlsKeys tx, rx;
  ASSERT_EQ(session_->derive_ktls(tx, rx), Offload::Done);
  client_->write(bytes("probe"));
  std::vector<Record> recs;
  ASSERT_TRUE(split_records(client_->take_output(), recs));
  ASSERT_EQ(recs.size(), 1u);
  Bytes plain;
  EXPECT_TRUE(open_record(rx, rx.seq, recs[0], plain));
  EXPECT_FALSE(open_record(rx, rx.seq + 1, recs[0], plain));
  client_->give(seal_record(tx, tx.seq + 1, bytes("one off")));
  int status = 0;
  EXPECT_TRUE(client_->read_all(&status).empty());
  EXPECT_EQ(status, SSL_ERROR_SSL) << "the client accepted a record sealed at tx.seq + 1";
}

// One connection per cipher and version.
INSTANTIATE_TEST_SUITE_P(PerCipher, KtlsOffByOne,
                         ::testing::Values(kCases[0], kCases[2], kCases[4], kCases[6], kCases[8], kCases[10]),
                         [](const ::testing::TestParamInfo<KtlsCase>& i) { return std::string(i.param.name); });

// ------------------------------------------------------------ refusals

KtlsClientOptions version_options(bool tls13) {
  KtlsClientOptions o;
  if (!tls13) o.max_version = TLS1_2_VERSION;
  return o;
}

class KtlsPartial : public KtlsTest, public ::testing::WithParamInterface<bool> {};

// The server holds part of a client record: no offload until the rest came
// and was read; then the sequence numbers count that record.
TEST_P(KtlsPartial, PartialRecordFailsUntilCompleted) {
  const bool tls13 = GetParam();
  make_contexts(version_options(tls13));
  const std::string msg(300, 'p');
  // Cuts inside the header, right after it, mid-body, one byte short.
  for (size_t cut : {size_t(3), size_t(5), size_t(150), size_t(0)}) {
    ASSERT_NO_FATAL_FAILURE(connect());
    client_->write(bytes(msg));
    const Bytes wire = client_->take_output();
    ASSERT_GT(wire.size(), msg.size());
    if (cut == 0) cut = wire.size() - 1;
    SCOPED_TRACE("server holds " + std::to_string(cut) + " of " + std::to_string(wire.size()) + " bytes");
    EXPECT_TRUE(read_plain(*session_, Bytes(wire.begin(), wire.begin() + long(cut)), out_).empty());
    KtlsKeys tx, rx;
    EXPECT_EQ(session_->derive_ktls(tx, rx), Offload::Failed)
        << "offload allowed while the server holds part of a record (pending_input() = "
        << session_->pending_input() << ")";
    EXPECT_EQ(as_string(read_plain(*session_, Bytes(wire.begin() + long(cut), wire.end()), out_)), msg);
    ASSERT_EQ(session_->pending_input(), 0u);
    ASSERT_EQ(session_->derive_ktls(tx, rx), Offload::Done);
    EXPECT_EQ(rx.seq, tls13 ? 1u : 2u);
    ASSERT_NO_FATAL_FAILURE(check_rx(*client_, rx));
    ASSERT_NO_FATAL_FAILURE(check_tx(*client_, tx));
  }
}

// tls.hh documents pending_input() as "(a partial record): offload must wait
// until this is 0", and the caller (shard.cc arm_down_recv / try_offload)
// takes pending_input() > 0 as "OpenSSL holds a partial record, receive more
// before the switch": a partial record must show there. (If it does not, the
// shard attempts the offload, derive_ktls() refuses it, and the connection
// stays in userspace for good.)
TEST_P(KtlsPartial, PartialRecordShowsInPendingInput) {
  const bool tls13 = GetParam();
  make_contexts(version_options(tls13));
  ASSERT_NO_FATAL_FAILURE(connect());
  client_->write(bytes(std::string(300, 'q')));
  const Bytes wire = client_->take_output();
  EXPECT_TRUE(read_plain(*session_, Bytes(wire.begin(), wire.begin() + 150), out_).empty());
  EXPECT_GT(session_->pending_input(), 0u) << "150 of " << wire.size() << " bytes of a record held, none reported";
}

// The client's Finished and its first request in one flight: the request
// stays in the session's pending input until read, and blocks the offload.
// (TLS 1.2: the client sends the last Finished only when resuming.)
TEST_P(KtlsPartial, DataBehindFinishedFailsUntilRead) {
  const bool tls13 = GetParam();
  make_contexts(version_options(tls13));
  if (!tls13) {
    ASSERT_NO_FATAL_FAILURE(connect());
    ASSERT_NE(resume_, nullptr);
  }
  client_.reset();
  session_.reset();
  session_ = std::make_unique<Session>(*ctx_, pool_);
  client_ = std::make_unique<KtlsClient>(*cctx_, tls13 ? nullptr : resume_);
  HandshakeState st = HandshakeState::InProgress;
  int cst = 0;
  for (int round = 0; round < 10 && cst != 1; ++round) {
    cst = client_->step();
    ASSERT_NE(cst, -1) << client_->last_error();
    if (cst == 1) break;
    st = session_->handshake(client_->take_output(), out_);
    ASSERT_EQ(st, HandshakeState::InProgress) << session_->failure();
    client_->give(out_);
  }
  ASSERT_EQ(cst, 1);
  EXPECT_EQ(SSL_session_reused(client_->ssl()), tls13 ? 0 : 1);
  client_->write(bytes("request in the Finished flight"));
  ASSERT_EQ(session_->handshake(client_->take_output(), out_), HandshakeState::Done) << session_->failure();
  client_->give(out_);
  int status = 0;
  EXPECT_TRUE(client_->read_all(&status).empty());
  EXPECT_EQ(status, SSL_ERROR_WANT_READ);
  const int tickets = client_->sessions_received();
  EXPECT_GT(session_->pending_input(), 0u);
  KtlsKeys tx, rx;
  EXPECT_EQ(session_->derive_ktls(tx, rx), Offload::Failed);
  EXPECT_EQ(as_string(read_plain(*session_, {}, out_)), "request in the Finished flight");
  ASSERT_TRUE(out_.empty());
  ASSERT_EQ(session_->pending_input(), 0u);
  ASSERT_EQ(session_->derive_ktls(tx, rx), Offload::Done);
  EXPECT_EQ(rx.seq, tls13 ? 1u : 2u);
  EXPECT_EQ(tx.seq, tls13 ? static_cast<uint64_t>(tickets) : 1u);
  ASSERT_NO_FATAL_FAILURE(check_rx(*client_, rx));
  ASSERT_NO_FATAL_FAILURE(check_tx(*client_, tx));
}

INSTANTIATE_TEST_SUITE_P(Versions, KtlsPartial, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "Tls13" : "Tls12"; });

// Without ktls=true a TLS 1.3 session detaches from OpenSSL after the
// handshake (its own record layer, src/tls/record.cc): nothing to offload.
TEST_F(KtlsTest, ContextWithoutKtlsDetachesTls13) {
  make_contexts({}, /*ktls=*/false);
  ASSERT_NO_FATAL_FAILURE(connect());
  ASSERT_STREQ(session_->version(), "TLSv1.3");
  client_->write(bytes("still fine"));
  EXPECT_EQ(as_string(read_plain(*session_, client_->take_output(), out_)), "still fine");
  EXPECT_TRUE(session_->detached());
  KtlsKeys tx, rx;
  EXPECT_EQ(session_->derive_ktls(tx, rx), Offload::Unsupported);
}

// A KeyUpdate OpenSSL handled before the offload moved the keys past the
// keylog's secrets: the session must not hand the kernel the old ones.
TEST_F(KtlsTest, KeyUpdateBeforeOffloadRefusesTheOldKeys) {
  make_contexts({});
  ASSERT_NO_FATAL_FAILURE(connect());
  KtlsKeys tx, rx;
  ASSERT_EQ(session_->derive_ktls(tx, rx), Offload::Done) << "fresh keys derive";
  ASSERT_EQ(SSL_key_update(client_->ssl(), SSL_KEY_UPDATE_NOT_REQUESTED), 1);
  client_->write(bytes("after the update"));
  EXPECT_EQ(as_string(read_plain(*session_, client_->take_output(), out_)), "after the update");
  EXPECT_EQ(session_->derive_ktls(tx, rx), Offload::Failed) << "the logged secrets are out of date";
}

TEST(KtlsNames, EnumNames) {
  EXPECT_STREQ(to_string(KtlsCipher::Aes128Gcm), "aes-128-gcm");
  EXPECT_STREQ(to_string(KtlsCipher::Chacha20Poly1305), "chacha20-poly1305");
  EXPECT_STREQ(to_string(Offload::Done), "done");
  EXPECT_STREQ(to_string(Offload::Failed), "failed");
}

}  // namespace
}  // namespace tlsgate::tls
