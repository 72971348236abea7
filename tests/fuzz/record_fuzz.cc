// Fuzz target for the detached TLS 1.3 record layer (src/tls/record.*): a
// client controls every byte of the records it sends. Two ways in:
//  - the input as a received record, opened as is (header, length, AEAD tag);
//  - the input as the inner plaintext of a record sealed with the peer's
//    keys (content, content type, padding of any shape), so the parsing after
//    a successful decryption is reached too. A record sealed by one side must
//    open on the other with the same type and content, and KeyUpdates on both
//    sides must keep them in step.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include <openssl/evp.h>

#include "record.hh"

using tlsgate::tls::KtlsCipher;
using tlsgate::tls::KtlsKeys;
using tlsgate::tls::RecordLayer;

namespace {

KtlsKeys keys(KtlsCipher c, uint8_t fill) {
  KtlsKeys k;
  k.cipher = c;
  k.tls13 = true;
  k.key_len = c == KtlsCipher::Aes128Gcm ? 16 : 32;
  std::memset(k.key, fill, sizeof k.key);
  k.iv_len = 12;
  std::memset(k.iv, fill ^ 0x5a, sizeof k.iv);
  return k;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  static const KtlsCipher ciphers[] = {KtlsCipher::Aes128Gcm, KtlsCipher::Aes256Gcm, KtlsCipher::Chacha20Poly1305};
  const KtlsCipher c = ciphers[data[0] % 3];
  const bool as_plaintext = (data[0] & 0x80) != 0;
  const bool key_update = (data[0] & 0x40) != 0;
  const uint8_t type = data[1];
  data += 2;
  size -= 2;
  const EVP_MD* md = c == KtlsCipher::Aes256Gcm ? EVP_sha384() : EVP_sha256();
  uint8_t client_secret[48], server_secret[48];
  std::memset(client_secret, 0x11, sizeof client_secret);
  std::memset(server_secret, 0x22, sizeof server_secret);
  const size_t secret_len = md == EVP_sha384() ? 48 : 32;
  // The server's layer and a peer with the directions swapped.
  RecordLayer server, client;
  if (!server.init(keys(c, 1), keys(c, 2), md, client_secret, server_secret, secret_len) ||
      !client.init(keys(c, 2), keys(c, 1), md, server_secret, client_secret, secret_len))
    __builtin_trap();
  if (key_update && !(client.update_tx() && server.update_rx())) __builtin_trap();

  std::vector<uint8_t> rec(RecordLayer::kHeader + RecordLayer::kMaxBody + 64);
  if (!as_plaintext) {
    const size_t n = std::min(size, rec.size());
    std::memcpy(rec.data(), data, n);
    uint8_t* plain = nullptr;
    size_t len = 0;
    uint8_t got = 0;
    if (server.open(rec.data(), n, &got, &plain, &len) == RecordLayer::Open::Ok &&
        (plain < rec.data() || plain + len > rec.data() + n || len > RecordLayer::kMaxPlain))
      __builtin_trap();
    return 0;
  }
  const size_t n = std::min(size, RecordLayer::kMaxPlain);
  const size_t sealed = client.seal(type, data, n, rec.data());
  if (sealed != RecordLayer::kHeader + n + 1 + RecordLayer::kTag) __builtin_trap();
  uint8_t* plain = nullptr;
  size_t len = 0;
  uint8_t got = 0;
  const RecordLayer::Open r = server.open(rec.data(), sealed, &got, &plain, &len);
  // Trailing zero bytes are padding by definition (RFC 8446 5.4): a zero
  // content type means the content ends at the last non-zero byte, and a
  // record of zeros only has no content type at all.
  if (type != 0) {
    if (r != RecordLayer::Open::Ok || got != type || len != n || std::memcmp(plain, data, n) != 0) __builtin_trap();
  } else if (r == RecordLayer::Open::Ok && (len >= n || plain + len + 1 > rec.data() + sealed)) {
    __builtin_trap();
  } else if (r != RecordLayer::Open::Ok && r != RecordLayer::Open::NoContentType) {
    __builtin_trap();
  }
  return 0;
}
