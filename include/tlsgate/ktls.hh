// Kernel TLS: after the userspace handshake, the record keys go into the
// kernel (TCP_ULP "tls", SOL_TLS TLS_TX / TLS_RX) and the connection carries
// plaintext from then on. Part of the tls module (src/tls/ktls.cc).
#pragma once

#include <cstdint>
#include <string>

namespace tlsgate::tls {

// What the running kernel can offload, probed once at start-up on a
// loopback socket pair.
struct KtlsSupport {
  bool ulp = false;  // TCP_ULP "tls" accepted (module present)
  bool aes128gcm = false;
  bool aes256gcm = false;
  bool chacha20poly1305 = false;
  std::string reason;  // why not, when ulp is false
  bool any() const { return ulp && (aes128gcm || aes256gcm || chacha20poly1305); }
  std::string describe() const;
};

KtlsSupport probe_ktls();

// Which offloads a connection got, for counters (by version and cipher).
enum class KtlsCipher : uint8_t { Aes128Gcm = 0, Aes256Gcm = 1, Chacha20Poly1305 = 2, Unknown = 3 };
const char* to_string(KtlsCipher c);

// One direction's record protection, as the kernel gets it.
struct KtlsKeys {
  KtlsCipher cipher = KtlsCipher::Unknown;
  bool tls13 = false;
  uint8_t key[32] = {};
  size_t key_len = 0;
  // TLS 1.3: the 12-byte nonce base. TLS 1.2: the implicit part of the nonce
  // (4 bytes for AES-GCM, 12 for ChaCha20-Poly1305).
  uint8_t iv[12] = {};
  size_t iv_len = 0;
  uint64_t seq = 0;  // sequence number of the next record
};

// Result of Session::offload().
enum class Offload {
  Done,         // TX and RX are in the kernel
  Unsupported,  // cipher or version the kernel (or this code) cannot offload
  Failed,       // a setsockopt failed: the connection stays in userspace
};
const char* to_string(Offload o);

// A non-data record read from a kTLS socket (recvmsg + TLS_GET_RECORD_TYPE).
struct ControlRecord {
  uint8_t type = 0;  // 21 alert, 22 handshake
  uint8_t data[64] = {};
  size_t len = 0;
};
// Reads the pending control record; -errno on failure (EAGAIN: none yet).
int read_control_record(int fd, ControlRecord& out);
// Sends an alert record (e.g. close_notify: level 1, description 0).
int send_alert(int fd, uint8_t level, uint8_t description);

}  // namespace tlsgate::tls
