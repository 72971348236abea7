// TLS 1.3 record protection done by tlsgate itself, for sessions whose
// OpenSSL objects were freed after the handshake (Session::maybe_detach).
// Private to src/tls/.
//
// Only what a server needs after a TLS 1.3 handshake: application data both
// ways, alerts, and the client's KeyUpdate. Keys, IVs and the first sequence
// numbers come from Session::derive_ktls, exactly as for kernel TLS.
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

  RecordLayer() = default;
  ~RecordLayer();
  RecordLayer(const RecordLayer&) = delete;
  RecordLayer& operator=(const RecordLayer&) = delete;

  // `md`: the suite's hash, for KeyUpdate. False if OpenSSL refused a context.
  bool init(const KtlsKeys& tx, const KtlsKeys& rx, const EVP_MD* md, const uint8_t* client_secret,
            const uint8_t* server_secret, size_t secret_len);

  // Opens the record `rec` (header + body, `len` bytes), in place. Returns its
  // inner content type and the plaintext, or 0 when it does not open.
  uint8_t open(uint8_t* rec, size_t len, uint8_t** plain, size_t* plain_len) {
    return open_into(rec, len, rec + kHeader, plain, plain_len);
  }
  // Like open(), decrypting into `body` (room for len - kHeader bytes; either
  // rec + kHeader or memory that does not overlap the record).
  uint8_t open_into(const uint8_t* rec, size_t len, uint8_t* body, uint8_t** plain, size_t* plain_len);
  // Seals `len` (<= kMaxPlain) bytes of content `type` into `out`, which has
  // room for kHeader + len + 1 + kTag bytes and does not overlap `data`.
  // Returns the record's length.
  size_t seal(uint8_t type, const uint8_t* data, size_t len, uint8_t* out);

  // KeyUpdate: the next receive (or send) traffic secret and its key and IV.
  bool update_rx();
  bool update_tx();

  // Frees both cipher contexts (~1 KB each with their key schedules); the
  // next open/seal makes its context again from the traffic secret kept
  // here. For connections that have gone quiet.
  void release_contexts();
  bool holds_contexts() const { return enc_ != nullptr || dec_ != nullptr; }

 private:
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
