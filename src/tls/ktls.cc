// Kernel TLS offload after a userspace handshake.
//
// Keys: TLS 1.3 from the application traffic secrets (keylog callback) with
// HKDF-Expand-Label; TLS 1.2 from the key block, PRF(master secret,
// "key expansion", server_random + client_random). Sequence numbers: the
// session's custom BIO counts every record OpenSSL wrote and read, so the
// kernel continues exactly where OpenSSL stopped (TLS 1.3 session tickets
// written under the application key count).
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "internal.hh"
#include "tlsgate/ktls.hh"
#include "tlsgate/tls.hh"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

namespace tlsgate::tls {

namespace {

constexpr uint8_t kChangeCipherSpec = 20;

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "LABEL <client_random hex> <secret hex>" → secret bytes.
size_t parse_secret(const char* line, const char* label, uint8_t* out, size_t cap) {
  size_t ll = std::strlen(label);
  if (std::strncmp(line, label, ll) != 0 || line[ll] != ' ') return 0;
  const char* p = std::strchr(line + ll + 1, ' ');
  if (p == nullptr) return 0;
  ++p;
  size_t n = 0;
  while (p[0] && p[1] && n < cap) {
    int hi = hexval(p[0]), lo = hexval(p[1]);
    if (hi < 0 || lo < 0) break;
    out[n++] = static_cast<uint8_t>(hi << 4 | lo);
    p += 2;
  }
  return n;
}

void put_seq(uint8_t* out, uint64_t seq) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<uint8_t>(seq);
    seq >>= 8;
  }
}

bool tls12_key_block(SSL* ssl, const EVP_MD* md, uint8_t* out, size_t length) {
  uint8_t master[SSL_MAX_MASTER_KEY_LENGTH];
  size_t master_len = SSL_SESSION_get_master_key(SSL_get_session(ssl), master, sizeof master);
  uint8_t seed[13 + 64];
  std::memcpy(seed, "key expansion", 13);
  SSL_get_server_random(ssl, seed + 13, 32);
  SSL_get_client_random(ssl, seed + 45, 32);
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "TLS1-PRF", nullptr);
  if (kdf == nullptr) return false;
  EVP_KDF_CTX* kctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (kctx == nullptr) return false;
  OSSL_PARAM params[4];
  params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(EVP_MD_get0_name(md)), 0);
  params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, master, master_len);
  params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, seed, 77);
  params[3] = OSSL_PARAM_construct_end();
  bool ok = EVP_KDF_derive(kctx, out, length, params) == 1;
  EVP_KDF_CTX_free(kctx);
  OPENSSL_cleanse(master, sizeof master);
  return ok;
}

// One direction's kernel parameters.
union CryptoInfo {
  tls12_crypto_info_aes_gcm_128 aes128;
  tls12_crypto_info_aes_gcm_256 aes256;
  tls12_crypto_info_chacha20_poly1305 chacha;
};

size_t key_len(KtlsCipher c) { return c == KtlsCipher::Aes128Gcm ? 16 : 32; }

// AES-GCM (128 or 256): the kernel structs differ only in the key size.
// `iv`: TLS 1.3 the 12-byte nonce base (salt = first 4, iv = last 8);
// TLS 1.2 the 4-byte implicit salt, and the explicit nonce the kernel starts
// from is the sequence number (any unique value would do).
template <typename Info>
socklen_t fill_gcm(Info& info, uint16_t version, uint16_t cipher_type, bool tls13, const uint8_t* key,
                   const uint8_t* iv, const uint8_t* seqb) {
  info.info.version = version;
  info.info.cipher_type = cipher_type;
  std::memcpy(info.key, key, sizeof info.key);
  std::memcpy(info.salt, iv, 4);
  std::memcpy(info.iv, tls13 ? iv + 4 : seqb, 8);
  std::memcpy(info.rec_seq, seqb, 8);
  return sizeof info;
}

// `iv` is the full 12-byte nonce base (TLS 1.3) or the 4-byte implicit part
// (TLS 1.2 GCM) / 12 bytes (TLS 1.2 ChaCha20).
socklen_t fill(CryptoInfo& ci, KtlsCipher c, bool tls13, const uint8_t* key, const uint8_t* iv, uint64_t seq) {
  std::memset(&ci, 0, sizeof ci);
  uint16_t version = tls13 ? TLS_1_3_VERSION : TLS_1_2_VERSION;
  uint8_t seqb[8];
  put_seq(seqb, seq);
  switch (c) {
    case KtlsCipher::Aes128Gcm:
      return fill_gcm(ci.aes128, version, TLS_CIPHER_AES_GCM_128, tls13, key, iv, seqb);
    case KtlsCipher::Aes256Gcm:
      return fill_gcm(ci.aes256, version, TLS_CIPHER_AES_GCM_256, tls13, key, iv, seqb);
    case KtlsCipher::Chacha20Poly1305:
      ci.chacha.info.version = version;
      ci.chacha.info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
      std::memcpy(ci.chacha.key, key, 32);
      std::memcpy(ci.chacha.iv, iv, 12);
      std::memcpy(ci.chacha.rec_seq, seqb, 8);
      return sizeof ci.chacha;
    case KtlsCipher::Unknown:
      break;
  }
  return 0;
}

void keylog_cb(const SSL* ssl, const char* line);

// A connected loopback pair for the start-up probe.
bool socket_pair(int& a, int& b) {
  a = b = -1;
  int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0) return false;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  bool ok = ::bind(l, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 && ::listen(l, 1) == 0 &&
            ::getsockname(l, reinterpret_cast<sockaddr*>(&sa), &len) == 0;
  if (ok) {
    a = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ok = a >= 0 && ::connect(a, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
    if (ok) b = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    ok = ok && b >= 0;
  }
  ::close(l);
  if (!ok) {
    if (a >= 0) ::close(a);
    if (b >= 0) ::close(b);
  }
  return ok;
}

bool probe_cipher(KtlsCipher c) {
  int a, b;
  if (!socket_pair(a, b)) return false;
  CryptoInfo ci;
  uint8_t key[32] = {1}, iv[12] = {2};
  socklen_t len = fill(ci, c, true, key, iv, 0);
  bool ok = ::setsockopt(a, SOL_TCP, TCP_ULP, "tls", 3) == 0 && ::setsockopt(a, SOL_TLS, TLS_TX, &ci, len) == 0 &&
            ::setsockopt(a, SOL_TLS, TLS_RX, &ci, len) == 0;
  ::close(a);
  ::close(b);
  return ok;
}

}  // namespace

struct KeyLog {
  static void record(const SSL* ssl, const char* line) {
    auto* s = static_cast<Session*>(SSL_get_app_data(ssl));
    if (s == nullptr) return;
    size_t n = parse_secret(line, "CLIENT_TRAFFIC_SECRET_0", s->client_secret_, sizeof s->client_secret_);
    if (n > 0) {
      s->secret_len_ = static_cast<uint8_t>(n);
      return;
    }
    n = parse_secret(line, "SERVER_TRAFFIC_SECRET_0", s->server_secret_, sizeof s->server_secret_);
    if (n > 0) s->secret_len_ = static_cast<uint8_t>(n);
  }
};

namespace {
void keylog_cb(const SSL* ssl, const char* line) { KeyLog::record(ssl, line); }
}  // namespace

void install_keylog(SSL_CTX* ctx) { SSL_CTX_set_keylog_callback(ctx, keylog_cb); }

void RecordCounter::feed(const uint8_t* p, size_t n) {
  while (n > 0) {
    if (body_left_ == 0 && header_len_ < 5) {
      size_t take = std::min<size_t>(5 - header_len_, n);
      std::memcpy(header_ + header_len_, p, take);
      header_len_ += static_cast<uint8_t>(take);
      p += take;
      n -= take;
      if (header_len_ < 5) return;
      body_left_ = static_cast<uint32_t>(header_[3]) << 8 | header_[4];
      if (body_left_ > 0) continue;
    }
    size_t take = std::min<size_t>(body_left_, n);
    body_left_ -= static_cast<uint32_t>(take);
    p += take;
    n -= take;
    if (body_left_ == 0) {
      ++total;
      since_ccs = header_[0] == kChangeCipherSpec ? 0 : since_ccs + 1;
      header_len_ = 0;
    }
  }
}

std::string KtlsSupport::describe() const {
  if (!ulp) return "no kernel TLS (" + reason + ")";
  std::string s = "kernel TLS:";
  s += aes128gcm ? " aes-128-gcm" : "";
  s += aes256gcm ? " aes-256-gcm" : "";
  s += chacha20poly1305 ? " chacha20-poly1305" : "";
  return s;
}

KtlsSupport probe_ktls() {
  KtlsSupport k;
  int a, b;
  if (!socket_pair(a, b)) {
    k.reason = "cannot make a loopback socket pair";
    return k;
  }
  if (::setsockopt(a, SOL_TCP, TCP_ULP, "tls", 3) != 0) {
    k.reason = std::string("TCP_ULP \"tls\": ") + std::strerror(errno) +
               (errno == ENOENT ? " (no tls module: CONFIG_TLS off, or modprobe tls)" : "");
    ::close(a);
    ::close(b);
    return k;
  }
  ::close(a);
  ::close(b);
  k.ulp = true;
  k.aes128gcm = probe_cipher(KtlsCipher::Aes128Gcm);
  k.aes256gcm = probe_cipher(KtlsCipher::Aes256Gcm);
  k.chacha20poly1305 = probe_cipher(KtlsCipher::Chacha20Poly1305);
  return k;
}

const char* to_string(KtlsCipher c) {
  switch (c) {
    case KtlsCipher::Aes128Gcm: return "aes-128-gcm";
    case KtlsCipher::Aes256Gcm: return "aes-256-gcm";
    case KtlsCipher::Chacha20Poly1305: return "chacha20-poly1305";
    case KtlsCipher::Unknown: return "other";
  }
  return "?";
}

const char* to_string(Offload o) {
  switch (o) {
    case Offload::Done: return "done";
    case Offload::Unsupported: return "unsupported";
    case Offload::Failed: return "failed";
  }
  return "?";
}

KtlsCipher Session::cipher_kind() const {
  if (ssl_ == nullptr) return cipher_kind_;  // detached
  const SSL_CIPHER* c = SSL_get_current_cipher(static_cast<SSL*>(ssl_));
  if (c == nullptr) return KtlsCipher::Unknown;
  switch (SSL_CIPHER_get_cipher_nid(c)) {
    case NID_aes_128_gcm: return KtlsCipher::Aes128Gcm;
    case NID_aes_256_gcm: return KtlsCipher::Aes256Gcm;
    case NID_chacha20_poly1305: return KtlsCipher::Chacha20Poly1305;
    default: return KtlsCipher::Unknown;
  }
}

bool Session::is_tls13() const {
  return ssl_ == nullptr || SSL_version(static_cast<SSL*>(ssl_)) == TLS1_3_VERSION;  // only TLS 1.3 detaches
}

Offload Session::derive_ktls(KtlsKeys& tx, KtlsKeys& rx) const { return derive_keys(tx, rx, false); }

// `queued_ok`: bytes of later records may wait in pending_in_ (the session's
// own record layer reads on from there; the kernel could not).
Offload Session::derive_keys(KtlsKeys& tx, KtlsKeys& rx, bool queued_ok) const {
  SSL* ssl = static_cast<SSL*>(ssl_);
  if (ssl == nullptr) return Offload::Unsupported;  // detached: the keys live in the RecordLayer
  const KtlsCipher kind = cipher_kind();
  const int version = SSL_version(ssl);
  if (kind == KtlsCipher::Unknown || (version != TLS1_3_VERSION && version != TLS1_2_VERSION))
    return Offload::Unsupported;
  if ((!queued_ok && !pending_in_.empty()) || !rx_records_.at_boundary() || !tx_records_.at_boundary())
    return Offload::Failed;
  const EVP_MD* md = SSL_CIPHER_get_handshake_digest(SSL_get_current_cipher(ssl));
  const bool tls13 = version == TLS1_3_VERSION;
  tx = KtlsKeys{};
  rx = KtlsKeys{};
  tx.cipher = rx.cipher = kind;
  tx.tls13 = rx.tls13 = tls13;
  tx.key_len = rx.key_len = key_len(kind);
  if (tls13) {
    // Keylog not installed, or a KeyUpdate moved the keys past the logged secrets.
    if (secret_len_ == 0 || secrets_stale_) return Offload::Failed;
    tx.iv_len = rx.iv_len = 12;
    if (!expand_label(md, server_secret_, secret_len_, "key", tx.key, tx.key_len) ||
        !expand_label(md, server_secret_, secret_len_, "iv", tx.iv, 12) ||
        !expand_label(md, client_secret_, secret_len_, "key", rx.key, rx.key_len) ||
        !expand_label(md, client_secret_, secret_len_, "iv", rx.iv, 12))
      return Offload::Failed;
    tx.seq = tx_records_.total - tx_at_final_call_;
    rx.seq = rx_records_.total - rx_at_done_;
    return Offload::Done;
  }
  // key_block = client_key | server_key | client_iv | server_iv (AEAD: no MAC keys)
  const size_t klen = tx.key_len;
  const size_t ivlen = kind == KtlsCipher::Chacha20Poly1305 ? 12 : 4;
  tx.iv_len = rx.iv_len = ivlen;
  uint8_t block[2 * 32 + 2 * 12];
  if (!tls12_key_block(ssl, md, block, 2 * klen + 2 * ivlen)) return Offload::Failed;
  std::memcpy(rx.key, block, klen);
  std::memcpy(tx.key, block + klen, klen);
  std::memcpy(rx.iv, block + 2 * klen, ivlen);
  std::memcpy(tx.iv, block + 2 * klen + ivlen, ivlen);
  OPENSSL_cleanse(block, sizeof block);
  tx.seq = tx_records_.since_ccs;
  rx.seq = rx_records_.since_ccs;
  return Offload::Done;
}

Offload Session::offload(int fd) {
  KtlsKeys tx, rx;
  Offload r = derive_ktls(tx, rx);
  if (r != Offload::Done) return r;
  CryptoInfo txi, rxi;
  socklen_t len = fill(txi, tx.cipher, tx.tls13, tx.key, tx.iv, tx.seq);
  fill(rxi, rx.cipher, rx.tls13, rx.key, rx.iv, rx.seq);
  OPENSSL_cleanse(&tx, sizeof tx);
  OPENSSL_cleanse(&rx, sizeof rx);
  bool ok = ::setsockopt(fd, SOL_TCP, TCP_ULP, "tls", 3) == 0 && ::setsockopt(fd, SOL_TLS, TLS_TX, &txi, len) == 0 &&
            ::setsockopt(fd, SOL_TLS, TLS_RX, &rxi, len) == 0;
  OPENSSL_cleanse(&txi, sizeof txi);
  OPENSSL_cleanse(&rxi, sizeof rxi);
  return ok ? Offload::Done : Offload::Failed;
}

int read_control_record(int fd, ControlRecord& out) {
  char cbuf[CMSG_SPACE(sizeof(unsigned char))];
  iovec iov{out.data, sizeof out.data};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
  if (n < 0) return -errno;
  out.len = static_cast<size_t>(n);
  out.type = 23;  // application data unless the kernel says otherwise
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c))
    if (c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE)
      out.type = *reinterpret_cast<unsigned char*>(CMSG_DATA(c));
  return 0;
}

int send_alert(int fd, uint8_t level, uint8_t description) {
  uint8_t body[2] = {level, description};
  char cbuf[CMSG_SPACE(sizeof(unsigned char))] = {};
  iovec iov{body, sizeof body};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_TLS;
  c->cmsg_type = TLS_SET_RECORD_TYPE;
  c->cmsg_len = CMSG_LEN(sizeof(unsigned char));
  *reinterpret_cast<unsigned char*>(CMSG_DATA(c)) = 21;
  return ::sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 ? -errno : 0;
}

}  // namespace tlsgate::tls
