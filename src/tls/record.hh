// TLS 1.3 record protection done by tlsgate itself, for sessions whose
// OpenSSL objects were freed after the handshake (Session::maybe_detach).
// Private to src/tls/.
//
// Only what a server needs after a TLS 1.3 handshake: application data both
// ways, alerts, and KeyUpdate. Keys, IVs and the first sequence numbers come
// from Session::derive_ktls, exactly as for kernel TLS. This class seals and
// opens single records and keeps the per-key record counts; what a record
// means (alerts, KeyUpdate, limits acted on) is Session's (tls.cc).
#pragma once

#include <openssl/evp.h>

#include <cstddef>
#include <cstdint>

#include "tlsgate/ktls.hh"

namespace tlsgate::tls {

class RecordLayer {
 public:
  static constexpr size_t kMaxPlain = 16384;
  static constexpr size_t kTag = 16;
  // Largest record body accepted: plaintext, content type, padding, tag.
  static constexpr size_t kMaxBody = kMaxPlain + 256;
  static constexpr size_t kHeader = 5;
  // RFC 8446 5.4: TLSInnerPlaintext is content || type || zeros, at most
  // 2^14 + 1 bytes, padding included.
  static constexpr size_t kMaxInner = kMaxPlain + 1;

  // RFC 8446 5.5: AES-GCM keys protect at most 2^24.5 full-size records
  // (with the safety margin the RFC gives). A key that reaches kRekeyAt
  // records (the last of them our KeyUpdate) is replaced; a peer that sends kRxLimit records
  // under one key without updating it is closed. ChaCha20-Poly1305 has no
  // practical limit: only the 64-bit sequence number bounds it.
  static constexpr uint64_t kGcmRekeyAt = uint64_t{1} << 24;
  static constexpr uint64_t kGcmRxLimit = 23726566;  // floor(2^24.5)
  static constexpr uint64_t kSeqLast = ~uint64_t{0};  // never used: a record would wrap after it

  enum class Open : uint8_t {
    Ok,
    BadRecordMac,  // the tag does not verify (or the record is too short to hold one)
    NoContentType, // all padding: no non-zero byte in the plaintext
    Overflow,      // the inner plaintext exceeds 2^14 + 1 bytes
    Exhausted,     // the receive sequence number would wrap
  };

  RecordLayer() = default;
  ~RecordLayer();
  RecordLayer(const RecordLayer&) = delete;
  RecordLayer& operator=(const RecordLayer&) = delete;

  // `md`: the suite's hash, for KeyUpdate. False if OpenSSL refused a context.
  bool init(const KtlsKeys& tx, const KtlsKeys& rx, const EVP_MD* md, const uint8_t* client_secret,
            const uint8_t* server_secret, size_t secret_len);

  // Opens the record `rec` (header + body, `len` bytes), in place. On Ok,
  // `*type` is its inner content type and `*plain` its content.
  Open open(uint8_t* rec, size_t len, uint8_t* type, uint8_t** plain, size_t* plain_len) {
    return open_into(rec, len, rec + kHeader, type, plain, plain_len);
  }
  // Like open(), decrypting into `body` (room for len - kHeader bytes; either
  // rec + kHeader or memory that does not overlap the record).
  Open open_into(const uint8_t* rec, size_t len, uint8_t* body, uint8_t* type, uint8_t** plain, size_t* plain_len);
  // Seals `len` (<= kMaxPlain) bytes of content `type` into `out`, which has
  // room for kHeader + len + 1 + kTag bytes and does not overlap `data`.
  // Returns the record's length, 0 if it cannot (the send sequence number
  // would wrap, or OpenSSL failed).
  size_t seal(uint8_t type, const uint8_t* data, size_t len, uint8_t* out);

  // Whether the send key has protected as many records as it should: the
  // next one is the KeyUpdate that retires it (Session sends it first).
  bool tx_wants_update() const { return tx_seq_ >= rekey_at() - 1; }
  // Whether the peer's key has reached the point where we ask it to update.
  bool rx_wants_update() const { return rx_seq_ >= rekey_at(); }
  // Whether the peer's key has protected more records than it may.
  bool rx_exhausted() const { return rx_seq_ >= rx_limit(); }

  // KeyUpdate: the next receive (or send) traffic secret and its key and IV.
  bool update_rx();
  bool update_tx();

  // Frees both cipher contexts (~1 KB each with their key schedules); the
  // next open/seal makes its context again from the traffic secret kept
  // here. For connections that have gone quiet.
  void release_contexts();
  bool holds_contexts() const { return enc_ != nullptr || dec_ != nullptr; }

  // For tests of the limits above: sets both sequence numbers.
  void set_sequence_for_test(uint64_t tx, uint64_t rx) {
    tx_seq_ = tx;
    rx_seq_ = rx;
  }

 private:
  uint64_t rekey_at() const { return cipher_ == KtlsCipher::Chacha20Poly1305 ? kSeqLast - 1 : kGcmRekeyAt; }
  uint64_t rx_limit() const { return cipher_ == KtlsCipher::Chacha20Poly1305 ? kSeqLast : kGcmRxLimit; }
  bool rekey(EVP_CIPHER_CTX*& ctx, bool encrypt, uint8_t* secret, uint8_t* iv);
  // The context for one direction, made from the current secret if it was released.
  bool ensure(EVP_CIPHER_CTX*& ctx, bool encrypt, const uint8_t* secret);

  EVP_CIPHER_CTX* enc_ = nullptr;
  EVP_CIPHER_CTX* dec_ = nullptr;
  const EVP_MD* md_ = nullptr;
  KtlsCipher cipher_ = KtlsCipher::Unknown;
  uint8_t tx_iv_[12] = {};
  uint8_t rx_iv_[12] = {};
  uint64_t tx_seq_ = 0;
  uint64_t rx_seq_ = 0;
  uint8_t tx_secret_[64] = {};
  uint8_t rx_secret_[64] = {};
  uint8_t secret_len_ = 0;
};

}  // namespace tlsgate::tls
