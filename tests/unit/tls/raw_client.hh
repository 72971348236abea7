// A hand-made TLS 1.3 client record layer, for tests of the server's own
// (detached) record layer, src/tls/record.*, that must see records no TLS
// library would send.
//
// The handshake is OpenSSL's: attach() restricts an in-memory OpenSSL client
// (tls_client.hh's Client, or the fuzzer's own) to TLS 1.3 and one cipher
// suite, and captures its application traffic secrets through the keylog
// callback of the client's SSL_CTX. After the handshake, start() derives the
// record keys from those secrets and the client stops using OpenSSL's record
// layer: every record from then on is sealed and opened here, with OpenSSL's
// EVP AEAD, the key and IV from OpenSSL's "TLS13-KDF" (RFC 8446 5.2-5.3, 7.1,
// 7.3). Nothing cryptographic is computed by this file itself.
//
// seal() builds any record: outer content type and legacy version, inner
// content type, content, zero padding, a chosen sequence number, a corrupted
// tag. plaintext_record() builds an unprotected one. The client tracks its
// send and receive sequence numbers and moves to the next traffic secret
// after it sends a KeyUpdate (key_update(), or update_send_keys() by hand)
// and after it opens one from the server (receive()).
//
// No gtest here: the TLS session fuzzer includes this header too. Failures
// come back as false / an error string.
#pragma once

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "openssl_errors.hh"
#include "tlsgate/buffer.hh"

namespace tlsgate::tls::tlstest {

using Bytes = std::vector<uint8_t>;

// Record content types (RFC 8446 5.1).
inline constexpr uint8_t kChangeCipherSpec = 20;
inline constexpr uint8_t kAlert = 21;
inline constexpr uint8_t kHandshake = 22;
inline constexpr uint8_t kApplicationData = 23;
// Handshake message types (RFC 8446 4).
inline constexpr uint8_t kClientHello = 1;
inline constexpr uint8_t kNewSessionTicket = 4;
inline constexpr uint8_t kCertificateRequest = 13;
inline constexpr uint8_t kFinished = 20;
inline constexpr uint8_t kKeyUpdate = 24;
// Alert levels and the descriptions the tests expect (RFC 8446 6).
inline constexpr uint8_t kWarning = 1;
inline constexpr uint8_t kFatal = 2;
inline constexpr uint8_t kCloseNotify = 0;
inline constexpr uint8_t kUnexpectedMessage = 10;
inline constexpr uint8_t kBadRecordMac = 20;
inline constexpr uint8_t kRecordOverflow = 22;
inline constexpr uint8_t kHandshakeFailure = 40;
inline constexpr uint8_t kIllegalParameter = 47;
inline constexpr uint8_t kDecodeError = 50;
inline constexpr uint8_t kProtocolVersion = 70;
// Record sizes (RFC 8446 5.1-5.2).
inline constexpr size_t kHeader = 5;
inline constexpr size_t kTag = 16;
inline constexpr size_t kMaxPlaintext = 16384;                 // 2^14
inline constexpr size_t kMaxCiphertext = kMaxPlaintext + 256;  // 2^14 + 256

inline const char* alert_name(uint8_t d) {
  switch (d) {
    case kCloseNotify:
      return "close_notify";
    case kUnexpectedMessage:
      return "unexpected_message";
    case kBadRecordMac:
      return "bad_record_mac";
    case kRecordOverflow:
      return "record_overflow";
    case kHandshakeFailure:
      return "handshake_failure";
    case kIllegalParameter:
      return "illegal_parameter";
    case kDecodeError:
      return "decode_error";
    case kProtocolVersion:
      return "protocol_version";
    case 80:
      return "internal_error";
    case 90:
      return "user_canceled";
    default:
      return "alert";
  }
}

inline Bytes to_bytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

// A handshake message: type, 24-bit length, body.
inline Bytes handshake_message(uint8_t type, const Bytes& body) {
  Bytes m(4 + body.size());
  m[0] = type;
  m[1] = static_cast<uint8_t>(body.size() >> 16);
  m[2] = static_cast<uint8_t>(body.size() >> 8);
  m[3] = static_cast<uint8_t>(body.size());
  if (!body.empty()) std::memcpy(m.data() + 4, body.data(), body.size());
  return m;
}

// KeyUpdate (RFC 8446 4.6.3): request_update 0 = update_not_requested,
// 1 = update_requested (other values are invalid, for tests).
inline Bytes key_update_message(uint8_t request) { return {kKeyUpdate, 0, 0, 1, request}; }

// An unprotected record with any header and body (body up to 65535 bytes;
// the length field is the body's).
inline Bytes plaintext_record(uint8_t type, uint16_t version, const Bytes& body) {
  Bytes r(kHeader + body.size());
  r[0] = type;
  r[1] = static_cast<uint8_t>(version >> 8);
  r[2] = static_cast<uint8_t>(version);
  r[3] = static_cast<uint8_t>(body.size() >> 8);
  r[4] = static_cast<uint8_t>(body.size());
  if (!body.empty()) std::memcpy(r.data() + kHeader, body.data(), body.size());
  return r;
}

// Everything queued in `q`, consumed.
inline Bytes drain(ByteQueue& q) {
  Bytes b(q.size());
  const size_t n = b.empty() ? 0 : q.read(b.data(), b.size());
  b.resize(n);
  return b;
}

inline Bytes concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// What seal() builds. Defaults: one application data record under the next
// sequence number, no padding, a valid tag.
struct SealSpec {
  uint8_t outer_type = kApplicationData;
  uint16_t version = 0x0303;
  uint8_t inner_type = kApplicationData;
  Bytes content;
  size_t padding = 0;  // zero bytes after the inner content type
  // The whole TLSInnerPlaintext instead of content || inner_type || padding
  // (e.g. empty, for a record that is only a tag).
  std::optional<Bytes> inner;
  // The sequence number in the nonce. Unset: the next one, which is then
  // used up. Set: that one, and the client's counter does not move.
  std::optional<uint64_t> seq;
  bool corrupt_tag = false;  // flips a bit of the last tag byte
};

// One record the server sent, as the client saw it.
struct Received {
  uint8_t outer_type = 0;
  uint16_t version = 0;
  bool opened = false;      // authenticated under the expected key and sequence number
  uint8_t inner_type = 0;   // when opened
  Bytes content;            // opened: without type and padding; otherwise the raw body
  uint64_t seq = 0;         // the sequence number it opened at
  unsigned generation = 0;  // the server's key generation it opened under (KeyUpdates)
  std::string error;        // why it did not open

  bool is_alert(uint8_t level, uint8_t description) const {
    return opened && inner_type == kAlert && content.size() == 2 && content[0] == level &&
           content[1] == description;
  }
  bool is_key_update(uint8_t request) const {
    return opened && inner_type == kHandshake && content == key_update_message(request);
  }
  bool is_application_data() const { return opened && inner_type == kApplicationData; }
};

inline std::string describe(const Received& r) {
  std::string s;
  if (!r.opened) {
    s = "unopened record (outer type " + std::to_string(r.outer_type) + ", " +
        std::to_string(r.content.size()) + " bytes): " + r.error;
  } else if (r.inner_type == kAlert && r.content.size() == 2) {
    s = std::string(r.content[0] == kFatal     ? "fatal"
                    : r.content[0] == kWarning ? "warning"
                                               : "level-?") +
        " alert " + std::to_string(r.content[1]) + " (" + alert_name(r.content[1]) + ")";
  } else if (r.inner_type == kHandshake && r.content.size() == 5 && r.content[0] == kKeyUpdate) {
    s = "KeyUpdate(request " + std::to_string(r.content[4]) + ")";
  } else if (r.inner_type == kApplicationData) {
    s = "application data, " + std::to_string(r.content.size()) + " bytes";
  } else {
    s = "inner type " + std::to_string(r.inner_type) + ", " + std::to_string(r.content.size()) + " bytes";
  }
  if (r.opened) s += " [gen " + std::to_string(r.generation) + " seq " + std::to_string(r.seq) + "]";
  if (r.outer_type != kApplicationData)
    s += " (not protected: outer type " + std::to_string(r.outer_type) + ")";
  return s;
}

inline std::string describe(const std::vector<Received>& v) {
  if (v.empty()) return "nothing";
  std::string s;
  for (const Received& r : v) {
    if (!s.empty()) s += "; ";
    s += describe(r);
  }
  return s;
}

// One direction's protection: the traffic secret and what derives from it.
struct TrafficKeys {
  uint8_t secret[64] = {};
  size_t secret_len = 0;
  uint8_t key[32] = {};
  uint8_t iv[12] = {};
  uint64_t seq = 0;         // the next record's sequence number
  unsigned generation = 0;  // KeyUpdates so far

  ~TrafficKeys() {
    OPENSSL_cleanse(secret, sizeof secret);
    OPENSSL_cleanse(key, sizeof key);
  }
};

class RawClient {
 public:
  RawClient() = default;
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;
  // Before start(), the SSL must still exist (its keylog pointer is cleared).
  ~RawClient() {
    if (ssl_ != nullptr && !started_) SSL_set_ex_data(ssl_, ex_index(), nullptr);
  }

  // Before the handshake: `ssl` is an OpenSSL client that has not started.
  // Restricts it to TLS 1.3 and `suite` (an OpenSSL TLS 1.3 suite name) and
  // sets the keylog callback on its SSL_CTX (which then reports to the
  // RawClient attached to each of its SSLs). The RawClient must outlive the
  // handshake.
  bool attach(SSL* ssl, const char* suite) {
    ssl_ = ssl;
    if (SSL_set_min_proto_version(ssl, TLS1_3_VERSION) != 1 ||
        SSL_set_max_proto_version(ssl, TLS1_3_VERSION) != 1 || SSL_set_ciphersuites(ssl, suite) != 1 ||
        SSL_set_ex_data(ssl, ex_index(), this) != 1)
      return fail("cannot restrict the client to TLS 1.3 " + std::string(suite) + ": " + errors());
    SSL_CTX_set_keylog_callback(SSL_get_SSL_CTX(ssl), &RawClient::keylog);
    return true;
  }

  // After the handshake, before the client's SSL reads anything more: derives
  // both directions' keys and takes over. What the server wrote after its
  // Finished and the client's SSL has not read (its NewSessionTickets, under
  // the server's application key) is taken from the SSL's read BIO and
  // opened, which sets the receive sequence number; if there is none, the
  // first record received later finds it among 0..4.
  bool start() {
    if (ssl_ == nullptr) return fail("not attached");
    SSL_set_ex_data(ssl_, ex_index(), nullptr);  // the secrets are in; the SSL may go first from now on
    if (SSL_version(ssl_) != TLS1_3_VERSION) return fail("the handshake did not negotiate TLS 1.3");
    const SSL_CIPHER* c = SSL_get_current_cipher(ssl_);
    md_ = c != nullptr ? SSL_CIPHER_get_handshake_digest(c) : nullptr;
    if (md_ == nullptr) return fail("no cipher suite");
    suite_ = SSL_CIPHER_get_name(c);
    const char* evp = suite_ == "TLS_AES_128_GCM_SHA256"         ? "AES-128-GCM"
                      : suite_ == "TLS_AES_256_GCM_SHA384"       ? "AES-256-GCM"
                      : suite_ == "TLS_CHACHA20_POLY1305_SHA256" ? "ChaCha20-Poly1305"
                                                                 : nullptr;
    if (evp == nullptr) return fail("unsupported suite " + suite_);
    cipher_.reset(EVP_CIPHER_fetch(nullptr, evp, nullptr));
    if (!cipher_) return fail(std::string("EVP_CIPHER_fetch ") + evp + ": " + errors());
    key_len_ = static_cast<size_t>(EVP_CIPHER_get_key_length(cipher_.get()));
    const size_t hash_len = static_cast<size_t>(EVP_MD_get_size(md_));
    if (send_.secret_len != hash_len || recv_.secret_len != hash_len)
      return fail("the keylog callback gave no application traffic secrets of " + std::to_string(hash_len) +
                  " bytes");
    if (!derive(send_) || !derive(recv_)) return fail("TLS13-KDF: " + errors());
    send_.seq = recv_.seq = 0;
    recv_seq_known_ = false;
    started_ = true;
    BIO* rbio = SSL_get_rbio(ssl_);
    Bytes rest(static_cast<size_t>(BIO_ctrl_pending(rbio)));
    if (!rest.empty()) {
      const int n = BIO_read(rbio, rest.data(), static_cast<int>(rest.size()));
      rest.resize(n > 0 ? static_cast<size_t>(n) : 0);
    }
    if (SSL_has_pending(ssl_)) return fail("the client's SSL already holds server bytes");
    for (const Received& r : receive(rest)) {
      if (!r.opened || r.inner_type != kHandshake || r.content.empty() || r.content[0] != kNewSessionTicket)
        return fail("after the handshake the server sent " + describe(r));
      ++tickets_;
    }
    if (!pending_.empty()) return fail("a partial record after the tickets");
    return true;
  }

  const std::string& error() const { return error_; }
  const std::string& suite() const { return suite_; }
  unsigned tickets() const { return tickets_; }
  uint64_t send_seq() const { return send_.seq; }
  uint64_t recv_seq() const { return recv_.seq; }
  unsigned send_generation() const { return send_.generation; }
  unsigned recv_generation() const { return recv_.generation; }
  // For Session::advance_sequence_for_test(tx, rx): the client sends at the
  // server's rx and receives at its tx.
  void set_sequences(uint64_t send, uint64_t recv) {
    send_.seq = send;
    recv_.seq = recv;
    recv_seq_known_ = true;
  }

  // ---------------------------------------------------------------- sending

  Bytes seal(const SealSpec& s) {
    Bytes inner;
    if (s.inner) {
      inner = *s.inner;
    } else {
      inner.resize(s.content.size() + 1 + s.padding, 0);
      if (!s.content.empty()) std::memcpy(inner.data(), s.content.data(), s.content.size());
      inner[s.content.size()] = s.inner_type;
    }
    const size_t body = inner.size() + kTag;
    if (!started_ || body > 0xffff) {
      fail(!started_ ? "seal before start()" : "record body over 65535 bytes");
      return {};
    }
    Bytes rec(kHeader + body);
    rec[0] = s.outer_type;
    rec[1] = static_cast<uint8_t>(s.version >> 8);
    rec[2] = static_cast<uint8_t>(s.version);
    rec[3] = static_cast<uint8_t>(body >> 8);
    rec[4] = static_cast<uint8_t>(body);
    const uint64_t seq = s.seq ? *s.seq : send_.seq++;
    if (!aead(true, send_, seq, rec.data(), inner.data(), inner.size(), rec.data() + kHeader,
              rec.data() + kHeader + inner.size())) {
      fail("EVP encrypt: " + errors());
      return {};
    }
    if (s.corrupt_tag) rec.back() ^= 0x01;
    return rec;
  }

  Bytes app(const Bytes& content, size_t padding = 0) {
    SealSpec s;
    s.content = content;
    s.padding = padding;
    return seal(s);
  }
  Bytes app(std::string_view content, size_t padding = 0) { return app(to_bytes(content), padding); }

  // A protected record of inner type `type` with `content`.
  Bytes record(uint8_t type, const Bytes& content, size_t padding = 0) {
    SealSpec s;
    s.inner_type = type;
    s.content = content;
    s.padding = padding;
    return seal(s);
  }

  Bytes alert(uint8_t level, uint8_t description) { return record(kAlert, {level, description}); }

  // `message` as handshake records, split after the given fragment sizes
  // (the last record takes the rest; a size past the end is cut short).
  Bytes handshake_records(const Bytes& message, const std::vector<size_t>& fragments = {}) {
    Bytes wire;
    size_t off = 0;
    for (size_t i = 0; i <= fragments.size(); ++i) {
      const size_t n =
          i < fragments.size() ? std::min(fragments[i], message.size() - off) : message.size() - off;
      const Bytes r = record(kHandshake, Bytes(message.begin() + long(off), message.begin() + long(off + n)));
      wire.insert(wire.end(), r.begin(), r.end());
      off += n;
    }
    return wire;
  }

  // A KeyUpdate in records of the given fragment sizes, after which the
  // client sends under its next traffic secret (RFC 8446 4.6.3).
  Bytes key_update(bool requested, const std::vector<size_t>& fragments = {}) {
    Bytes wire = handshake_records(key_update_message(requested ? 1 : 0), fragments);
    update_send_keys();
    return wire;
  }

  // RFC 8446 7.2: next secret = HKDF-Expand-Label(secret, "traffic upd", "",
  // Hash.length); key and IV from it; sequence number 0.
  bool update_send_keys() { return update(send_); }
  bool update_recv_keys() { return update(recv_); }

  // ---------------------------------------------------------------- receiving

  // Splits the server's bytes (with any partial record kept from the last
  // call) into records and opens each protected one under the receive key
  // and sequence number; a KeyUpdate moves the receive key on. Once a record
  // fails to open, the later ones are not tried (the sequence is lost).
  std::vector<Received> receive(const Bytes& wire) {
    pending_.insert(pending_.end(), wire.begin(), wire.end());
    std::vector<Received> out;
    size_t off = 0;
    while (pending_.size() - off >= kHeader) {
      const uint8_t* h = pending_.data() + off;
      const size_t len = size_t(h[3]) << 8 | h[4];
      if (pending_.size() - off - kHeader < len) break;
      Received r;
      r.outer_type = h[0];
      r.version = static_cast<uint16_t>(h[1] << 8 | h[2]);
      open(h, len, r);
      out.push_back(std::move(r));
      off += kHeader + len;
    }
    pending_.erase(pending_.begin(), pending_.begin() + long(off));
    return out;
  }
  std::vector<Received> receive(ByteQueue& q) { return receive(drain(q)); }
  // Bytes of a partial record from the server, kept for the next receive().
  size_t partial() const { return pending_.size(); }

 private:
  struct CipherFree {
    void operator()(EVP_CIPHER* c) const { EVP_CIPHER_free(c); }
  };
  struct CtxFree {
    void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
  };

  static int ex_index() {
    static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return index;
  }

  static std::string errors() { return openssl_errors(); }

  bool fail(std::string why) {
    if (error_.empty()) error_ = std::move(why);
    return false;
  }

  // "LABEL <client random> <secret>", hex (NSS key log format).
  static void keylog(const SSL* ssl, const char* line) {
    auto* self = static_cast<RawClient*>(SSL_get_ex_data(ssl, ex_index()));
    if (self == nullptr) return;
    const std::string_view l(line);
    TrafficKeys* k = nullptr;
    if (l.starts_with("CLIENT_TRAFFIC_SECRET_0 ")) k = &self->send_;
    if (l.starts_with("SERVER_TRAFFIC_SECRET_0 ")) k = &self->recv_;
    const size_t sp = l.rfind(' ');
    if (k == nullptr || sp == std::string_view::npos) return;
    const std::string_view hex = l.substr(sp + 1);
    if (hex.size() % 2 != 0 || hex.size() / 2 > sizeof k->secret) return;
    auto nibble = [](char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; };
    for (size_t i = 0; i < hex.size() / 2; ++i)
      k->secret[i] = static_cast<uint8_t>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
    k->secret_len = hex.size() / 2;
  }

  // HKDF-Expand-Label(secret, label, "", len) by OpenSSL's TLS13-KDF.
  bool expand_label(const uint8_t* secret, size_t secret_len, const char* label, uint8_t* out,
                    size_t len) const {
    static EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "TLS13-KDF", nullptr);
    if (kdf == nullptr) return false;
    EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
    if (ctx == nullptr) return false;
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    static const char kPrefix[] = "tls13 ";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(EVP_MD_get0_name(md_)), 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(secret), secret_len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, const_cast<char*>(kPrefix),
                                          sizeof kPrefix - 1),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, const_cast<char*>(label), std::strlen(label)),
        OSSL_PARAM_construct_end(),
    };
    const bool ok = EVP_KDF_derive(ctx, out, len, params) == 1;
    EVP_KDF_CTX_free(ctx);
    return ok;
  }

  bool derive(TrafficKeys& k) const {
    return expand_label(k.secret, k.secret_len, "key", k.key, key_len_) &&
           expand_label(k.secret, k.secret_len, "iv", k.iv, sizeof k.iv);
  }

  bool update(TrafficKeys& k) {
    uint8_t next[64];
    if (!started_ || !expand_label(k.secret, k.secret_len, "traffic upd", next, k.secret_len))
      return fail("KeyUpdate: TLS13-KDF: " + errors());
    std::memcpy(k.secret, next, k.secret_len);
    OPENSSL_cleanse(next, sizeof next);
    k.seq = 0;
    ++k.generation;
    return derive(k) || fail("KeyUpdate: TLS13-KDF: " + errors());
  }

  // One AEAD operation under `k` at `seq` (RFC 8446 5.3: nonce = iv XOR the
  // 64-bit sequence number, right-aligned; additional data = the header).
  // Encrypt: `in` -> `out`, tag written to `tag`. Decrypt: `tag` checked.
  bool aead(bool encrypt, const TrafficKeys& k, uint64_t seq, const uint8_t* header, const uint8_t* in,
            size_t len, uint8_t* out, uint8_t* tag) const {
    uint8_t nonce[12];
    std::memcpy(nonce, k.iv, sizeof nonce);
    for (int i = 0; i < 8; ++i) nonce[11 - i] ^= static_cast<uint8_t>(seq >> (8 * i));
    std::unique_ptr<EVP_CIPHER_CTX, CtxFree> ctx(EVP_CIPHER_CTX_new());
    int n = 0;
    uint8_t scratch[16];
    bool ok = ctx &&
              EVP_CipherInit_ex(ctx.get(), cipher_.get(), nullptr, k.key, nonce, encrypt ? 1 : 0) == 1 &&
              EVP_CipherUpdate(ctx.get(), nullptr, &n, header, static_cast<int>(kHeader)) == 1 &&
              (len == 0 || EVP_CipherUpdate(ctx.get(), out, &n, in, static_cast<int>(len)) == 1);
    if (ok && !encrypt) ok = EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, int(kTag), tag) == 1;
    ok = ok && EVP_CipherFinal_ex(ctx.get(), scratch, &n) == 1;
    if (ok && encrypt) ok = EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, int(kTag), tag) == 1;
    if (!ok && !encrypt) ERR_clear_error();
    return ok;
  }

  bool open_at(const uint8_t* rec, size_t len, uint64_t seq, Bytes& inner) const {
    if (len < kTag) return false;
    inner.assign(len - kTag, 0);
    uint8_t tag[kTag];
    std::memcpy(tag, rec + kHeader + len - kTag, kTag);
    return aead(false, recv_, seq, rec, rec + kHeader, len - kTag, inner.data(), tag);
  }

  void open(const uint8_t* rec, size_t len, Received& r) {
    r.content.assign(rec + kHeader, rec + kHeader + len);
    if (r.outer_type != kApplicationData) {
      r.error = "not a protected record";
      return;
    }
    if (recv_failed_) {
      r.error = "not tried: an earlier record did not open";
      return;
    }
    Bytes inner;
    bool ok = false;
    if (recv_seq_known_) {
      ok = open_at(rec, len, recv_.seq, inner);
    } else {
      for (uint64_t s = 0; s <= 4 && !ok; ++s) {
        ok = open_at(rec, len, s, inner);
        if (ok) recv_.seq = s;
      }
    }
    if (!ok) {
      recv_failed_ = true;
      r.error = "does not open under server key generation " + std::to_string(recv_.generation) + " at seq " +
                (recv_seq_known_ ? std::to_string(recv_.seq) : std::string("0..4"));
      return;
    }
    recv_seq_known_ = true;
    r.seq = recv_.seq++;
    r.generation = recv_.generation;
    size_t end = inner.size();
    while (end > 0 && inner[end - 1] == 0) --end;
    if (end == 0) {
      recv_failed_ = true;
      r.error = "opened, but the inner plaintext is all zeros";
      return;
    }
    r.opened = true;
    r.inner_type = inner[end - 1];
    inner.resize(end - 1);
    r.content = std::move(inner);
    if (r.is_key_update(0) || r.is_key_update(1)) update(recv_);
  }

  SSL* ssl_ = nullptr;
  const EVP_MD* md_ = nullptr;
  std::unique_ptr<EVP_CIPHER, CipherFree> cipher_;
  size_t key_len_ = 0;
  std::string suite_;
  TrafficKeys send_;  // client -> server: CLIENT_TRAFFIC_SECRET_0 onwards
  TrafficKeys recv_;  // server -> client: SERVER_TRAFFIC_SECRET_0 onwards
  bool started_ = false;
  bool recv_seq_known_ = false;
  bool recv_failed_ = false;
  unsigned tickets_ = 0;
  Bytes pending_;  // partial record from the server
  std::string error_;
};

}  // namespace tlsgate::tls::tlstest
