#include "record.hh"

#include <openssl/crypto.h>

#include <cstring>

#include "internal.hh"

namespace tlsgate::tls {

namespace {

constexpr uint8_t kApplicationData = 23;

// Fetched once per process (the implementations are read-only and shared).
const EVP_CIPHER* fetch(KtlsCipher c) {
  static EVP_CIPHER* aes128 = EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr);
  static EVP_CIPHER* aes256 = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  static EVP_CIPHER* chacha = EVP_CIPHER_fetch(nullptr, "ChaCha20-Poly1305", nullptr);
  switch (c) {
    case KtlsCipher::Aes128Gcm: return aes128;
    case KtlsCipher::Aes256Gcm: return aes256;
    case KtlsCipher::Chacha20Poly1305: return chacha;
    default: return nullptr;
  }
}

size_t key_length(KtlsCipher c) { return c == KtlsCipher::Aes128Gcm ? 16 : 32; }

// RFC 8446 5.3: the per-record nonce is the IV XOR the sequence number.
void nonce(const uint8_t* iv, uint64_t seq, uint8_t* out) {
  std::memcpy(out, iv, 12);
  for (int i = 11; i >= 4; --i) {
    out[i] ^= static_cast<uint8_t>(seq);
    seq >>= 8;
  }
}

}  // namespace

RecordLayer::~RecordLayer() {
  EVP_CIPHER_CTX_free(enc_);
  EVP_CIPHER_CTX_free(dec_);
  OPENSSL_cleanse(tx_secret_, sizeof tx_secret_);
  OPENSSL_cleanse(rx_secret_, sizeof rx_secret_);
  OPENSSL_cleanse(tx_iv_, sizeof tx_iv_);
  OPENSSL_cleanse(rx_iv_, sizeof rx_iv_);
}

bool RecordLayer::init(const KtlsKeys& tx, const KtlsKeys& rx, const EVP_MD* md, const uint8_t* client_secret,
                       const uint8_t* server_secret, size_t secret_len) {
  const EVP_CIPHER* cipher = fetch(tx.cipher);
  if (cipher == nullptr || !tx.tls13 || tx.iv_len != 12 || rx.iv_len != 12 || secret_len > sizeof tx_secret_)
    return false;
  enc_ = EVP_CIPHER_CTX_new();
  dec_ = EVP_CIPHER_CTX_new();
  if (enc_ == nullptr || dec_ == nullptr || EVP_EncryptInit_ex(enc_, cipher, nullptr, tx.key, nullptr) != 1 ||
      EVP_DecryptInit_ex(dec_, cipher, nullptr, rx.key, nullptr) != 1)
    return false;
  cipher_ = tx.cipher;
  md_ = md;
  std::memcpy(tx_iv_, tx.iv, 12);
  std::memcpy(rx_iv_, rx.iv, 12);
  tx_seq_ = tx.seq;
  rx_seq_ = rx.seq;
  std::memcpy(tx_secret_, server_secret, secret_len);
  std::memcpy(rx_secret_, client_secret, secret_len);
  secret_len_ = static_cast<uint8_t>(secret_len);
  return true;
}

RecordLayer::Open RecordLayer::open_into(const uint8_t* rec, size_t len, uint8_t* p, uint8_t* type, uint8_t** plain,
                                         size_t* plain_len) {
  if (len < kHeader + 1 + kTag) return Open::BadRecordMac;  // no room for a tag and a content type
  if (rx_seq_ == kSeqLast) return Open::Exhausted;
  const size_t body = len - kHeader - kTag;
  // The whole TLSInnerPlaintext, padding included, is limited (5.4); known
  // from the length alone, so nothing of it is decrypted.
  if (body > kMaxInner) return Open::Overflow;
  if (!ensure(dec_, false, rx_secret_)) return Open::BadRecordMac;
  uint8_t iv[12];
  nonce(rx_iv_, rx_seq_, iv);
  int n = 0;
  uint8_t tag[kTag];
  std::memcpy(tag, rec + kHeader + body, kTag);  // OpenSSL wants it writable
  if (EVP_DecryptInit_ex(dec_, nullptr, nullptr, nullptr, iv) != 1 ||
      EVP_DecryptUpdate(dec_, nullptr, &n, rec, static_cast<int>(kHeader)) != 1 ||  // AAD: the header
      EVP_DecryptUpdate(dec_, p, &n, rec + kHeader, static_cast<int>(body)) != 1 ||
      EVP_CIPHER_CTX_ctrl(dec_, EVP_CTRL_AEAD_SET_TAG, static_cast<int>(kTag), tag) != 1 ||
      EVP_DecryptFinal_ex(dec_, p + body, &n) != 1)
    return Open::BadRecordMac;
  ++rx_seq_;
  // TLSInnerPlaintext: content, content type, zero padding.
  size_t end = body;
  while (end > 0 && p[end - 1] == 0) --end;
  if (end == 0) return Open::NoContentType;
  *type = p[end - 1];
  *plain = p;
  *plain_len = end - 1;
  return Open::Ok;
}

size_t RecordLayer::seal(uint8_t type, const uint8_t* data, size_t len, uint8_t* out) {
  if (tx_seq_ == kSeqLast || !ensure(enc_, true, tx_secret_)) return 0;
  const size_t body = len + 1 + kTag;
  out[0] = kApplicationData;
  out[1] = 3;
  out[2] = 3;
  out[3] = static_cast<uint8_t>(body >> 8);
  out[4] = static_cast<uint8_t>(body);
  uint8_t* p = out + kHeader;
  uint8_t iv[12];
  nonce(tx_iv_, tx_seq_, iv);
  int n = 0;
  // Content and type in two updates, straight from `data`: no copy first.
  if (EVP_EncryptInit_ex(enc_, nullptr, nullptr, nullptr, iv) != 1 ||
      EVP_EncryptUpdate(enc_, nullptr, &n, out, static_cast<int>(kHeader)) != 1 ||
      (len > 0 && EVP_EncryptUpdate(enc_, p, &n, data, static_cast<int>(len)) != 1) ||
      EVP_EncryptUpdate(enc_, p + len, &n, &type, 1) != 1 ||
      EVP_EncryptFinal_ex(enc_, p + len + 1, &n) != 1 ||
      EVP_CIPHER_CTX_ctrl(enc_, EVP_CTRL_AEAD_GET_TAG, static_cast<int>(kTag), p + len + 1) != 1)
    return 0;
  ++tx_seq_;
  return kHeader + body;
}

// RFC 8446 7.2: next secret = HKDF-Expand-Label(secret, "traffic upd", "",
// Hash.length); key and IV derived from it as at the start; sequence 0.
bool RecordLayer::rekey(EVP_CIPHER_CTX*& ctx, bool encrypt, uint8_t* secret, uint8_t* iv) {
  uint8_t next[64];
  uint8_t key[32];
  const size_t klen = key_length(cipher_);
  bool ok = expand_label(md_, secret, secret_len_, "traffic upd", next, secret_len_) &&
            expand_label(md_, next, secret_len_, "key", key, klen) && expand_label(md_, next, secret_len_, "iv", iv, 12);
  if (ok) {
    std::memcpy(secret, next, secret_len_);
    if (ctx != nullptr)  // else ensure() makes it from the new secret when needed
      ok = encrypt ? EVP_EncryptInit_ex(ctx, nullptr, nullptr, key, nullptr) == 1
                   : EVP_DecryptInit_ex(ctx, nullptr, nullptr, key, nullptr) == 1;
  }
  OPENSSL_cleanse(next, sizeof next);
  OPENSSL_cleanse(key, sizeof key);
  return ok;
}

bool RecordLayer::update_rx() {
  rx_seq_ = 0;
  return rekey(dec_, false, rx_secret_, rx_iv_);
}

bool RecordLayer::update_tx() {
  tx_seq_ = 0;
  return rekey(enc_, true, tx_secret_, tx_iv_);
}

void RecordLayer::release_contexts() {
  EVP_CIPHER_CTX_free(enc_);
  EVP_CIPHER_CTX_free(dec_);
  enc_ = dec_ = nullptr;
}

bool RecordLayer::ensure(EVP_CIPHER_CTX*& ctx, bool encrypt, const uint8_t* secret) {
  if (ctx != nullptr) [[likely]]
    return true;
  uint8_t key[32];
  const EVP_CIPHER* cipher = fetch(cipher_);
  EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
  bool ok = c != nullptr && cipher != nullptr &&
            expand_label(md_, secret, secret_len_, "key", key, key_length(cipher_)) &&
            (encrypt ? EVP_EncryptInit_ex(c, cipher, nullptr, key, nullptr) == 1
                     : EVP_DecryptInit_ex(c, cipher, nullptr, key, nullptr) == 1);
  OPENSSL_cleanse(key, sizeof key);
  if (!ok) {
    EVP_CIPHER_CTX_free(c);
    return false;
  }
  ctx = c;
  return true;
}

}  // namespace tlsgate::tls
