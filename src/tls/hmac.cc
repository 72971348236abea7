// HMAC (RFC 2104) for the TLS 1.3 key schedule, and the per-step cache of
// key pads (HmacKeyScope).
//
// Every secret of a handshake passes through hmac(): ~26 HMACs per new
// connection, ~31 per resumed one (kdf.cc's TLS13-KDF, the Finished MACs,
// the record keys). Through EVP each cost ~3k instructions besides the
// hashing: a provider call per update and final, and every
// EVP_MD_CTX_copy_ex frees the destination's digest context and allocates a
// new one. SHA-256 and SHA-384, the digests of all TLS 1.3 cipher suites,
// run on OpenSSL's low-level SHA functions instead (deprecated in 3.0 but in
// its default builds; the same block functions underneath), whose state is
// a plain struct: keeping and restoring a pad state is a copy. Any other
// digest takes the EVP path.
#define OPENSSL_SUPPRESS_DEPRECATED  // SHA256_Init & co.: see above
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include <cstring>

#include "internal.hh"

namespace tlsgate::tls {
namespace {

constexpr size_t kMaxBlock = 128;

#ifndef OPENSSL_NO_DEPRECATED_3_0
constexpr bool kLowLevelSha = true;
#else
constexpr bool kLowLevelSha = false;
#endif

// SHA-256 or SHA-384 state.
class Sha2 {
 public:
  static bool handles(int nid) { return kLowLevelSha && (nid == NID_sha256 || nid == NID_sha384); }
  static size_t block_of(int nid) { return nid == NID_sha256 ? SHA256_CBLOCK : SHA512_CBLOCK; }

#ifndef OPENSSL_NO_DEPRECATED_3_0
  void init(int nid) {
    nid_ = nid;
    if (nid == NID_sha256)
      SHA256_Init(&c_.s256);
    else
      SHA384_Init(&c_.s512);
  }
  void update(const void* p, size_t n) {
    if (nid_ == NID_sha256)
      SHA256_Update(&c_.s256, p, n);
    else
      SHA384_Update(&c_.s512, p, n);
  }
  // The digest into `out`; returns its size.
  size_t final(uint8_t* out) {
    if (nid_ == NID_sha256) {
      SHA256_Final(out, &c_.s256);
      return SHA256_DIGEST_LENGTH;
    }
    SHA384_Final(out, &c_.s512);
    return SHA384_DIGEST_LENGTH;
  }
#else
  void init(int) {}
  void update(const void*, size_t) {}
  size_t final(uint8_t*) { return 0; }
#endif
  void wipe() { OPENSSL_cleanse(this, sizeof *this); }

 private:
  int nid_ = 0;
#ifndef OPENSSL_NO_DEPRECATED_3_0
  union {
    SHA256_CTX s256;
    SHA512_CTX s512;
  } c_;
#endif
};

// Within one handshake step the key schedule keys several HMACs with the
// same secret (a traffic secret gives its key, IV and finished key): the
// states after the inner and the outer pad are kept for the few secrets of
// the step and forgotten when it ends (HmacKeyScope), so no secret outlives
// the step in here.
class PadCache {
 public:
  static constexpr size_t kEntries = 6;
  static constexpr size_t kMaxKey = 64;

  ~PadCache() { forget(); }
  bool on = false;

  struct Entry {
    int nid = 0;  // 0: empty
    size_t key_len = 0;
    uint8_t key[kMaxKey];
    Sha2 inner;  // the digest after (key ^ ipad)
    Sha2 outer;  // the digest after (key ^ opad)
  };

  // The entry for (nid, key), or nullptr.
  const Entry* find(int nid, const uint8_t* key, size_t len) const {
    for (const Entry& e : entries_)
      if (e.nid == nid && e.key_len == len && std::memcmp(e.key, key, len) == 0) return &e;
    return nullptr;
  }
  // Keeps the pad states of (nid, key), replacing the oldest entry.
  void keep(int nid, const uint8_t* key, size_t len, const Sha2& inner, const Sha2& outer) {
    if (len > kMaxKey) return;
    Entry& e = entries_[next_];
    next_ = (next_ + 1) % kEntries;
    e.nid = nid;
    e.key_len = len;
    std::memcpy(e.key, key, len);
    e.inner = inner;
    e.outer = outer;
  }
  void forget() {
    for (Entry& e : entries_) {
      if (e.nid == 0) continue;
      e.nid = 0;
      OPENSSL_cleanse(e.key, sizeof e.key);
      e.inner.wipe();
      e.outer.wipe();
    }
    next_ = 0;
  }

 private:
  Entry entries_[kEntries];
  size_t next_ = 0;
};

thread_local PadCache t_pads;

// The key as RFC 2104 uses it: hashed first if longer than a block, then
// padded with zeros to the block (`k`, kMaxBlock bytes).
template <class Hash>
void block_key(Hash&& hash, size_t block, const uint8_t* key, size_t key_len, uint8_t* k) {
  std::memset(k, 0, kMaxBlock);
  if (key_len > block)
    hash(key, key_len, k);
  else if (key_len > 0)
    std::memcpy(k, key, key_len);
}

bool hmac_sha2(int nid, const uint8_t* key, size_t key_len, const HmacPart* parts, size_t n_parts, uint8_t* out) {
  Sha2 inner;
  Sha2 outer;
  const PadCache::Entry* cached = t_pads.on ? t_pads.find(nid, key, key_len) : nullptr;
  if (cached != nullptr) {
    inner = cached->inner;
    outer = cached->outer;
  } else {
    const size_t block = Sha2::block_of(nid);
    uint8_t k[kMaxBlock];
    uint8_t pad[kMaxBlock];
    block_key(
        [nid](const uint8_t* p, size_t n, uint8_t* digest) {
          Sha2 h;
          h.init(nid);
          h.update(p, n);
          h.final(digest);
          h.wipe();
        },
        block, key, key_len, k);
    for (size_t i = 0; i < block; ++i) pad[i] = static_cast<uint8_t>(k[i] ^ 0x36);
    inner.init(nid);
    inner.update(pad, block);
    for (size_t i = 0; i < block; ++i) pad[i] = static_cast<uint8_t>(k[i] ^ 0x5c);
    outer.init(nid);
    outer.update(pad, block);
    OPENSSL_cleanse(k, sizeof k);
    OPENSSL_cleanse(pad, sizeof pad);
    if (t_pads.on) t_pads.keep(nid, key, key_len, inner, outer);
  }
  for (size_t i = 0; i < n_parts; ++i)
    if (parts[i].len > 0) inner.update(parts[i].data, parts[i].len);
  uint8_t inner_digest[SHA512_DIGEST_LENGTH];
  const size_t n = inner.final(inner_digest);
  outer.update(inner_digest, n);
  outer.final(out);
  OPENSSL_cleanse(inner_digest, sizeof inner_digest);
  inner.wipe();
  outer.wipe();
  return n > 0;
}

// One digest context per thread for the EVP path: no allocation per call.
struct DigestCtx {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~DigestCtx() { EVP_MD_CTX_free(ctx); }
};

bool hmac_evp(const EVP_MD* md, const uint8_t* key, size_t key_len, const HmacPart* parts, size_t n_parts,
              uint8_t* out) {
  thread_local DigestCtx d;
  thread_local DigestCtx outer;
  const size_t block = static_cast<size_t>(EVP_MD_get_block_size(md));
  if (d.ctx == nullptr || outer.ctx == nullptr || block == 0 || block > kMaxBlock) return false;
  uint8_t k[kMaxBlock];
  uint8_t pad[kMaxBlock];
  bool ok = true;
  block_key(
      [&ok, md](const uint8_t* p, size_t n, uint8_t* digest) {
        unsigned len = 0;
        ok = EVP_Digest(p, n, digest, &len, md, nullptr) == 1;
      },
      block, key, key_len, k);
  for (size_t i = 0; i < block; ++i) pad[i] = static_cast<uint8_t>(k[i] ^ 0x36);
  ok = ok && EVP_DigestInit_ex(d.ctx, md, nullptr) == 1 && EVP_DigestUpdate(d.ctx, pad, block) == 1;
  for (size_t i = 0; i < block; ++i) pad[i] = static_cast<uint8_t>(k[i] ^ 0x5c);
  ok = ok && EVP_DigestInit_ex(outer.ctx, md, nullptr) == 1 && EVP_DigestUpdate(outer.ctx, pad, block) == 1;
  OPENSSL_cleanse(k, sizeof k);
  OPENSSL_cleanse(pad, sizeof pad);
  for (size_t i = 0; ok && i < n_parts; ++i)
    if (parts[i].len > 0) ok = EVP_DigestUpdate(d.ctx, parts[i].data, parts[i].len) == 1;
  uint8_t inner[EVP_MAX_MD_SIZE];
  unsigned inner_len = 0;
  ok = ok && EVP_DigestFinal_ex(d.ctx, inner, &inner_len) == 1;
  unsigned out_len = 0;
  ok = ok && EVP_DigestUpdate(outer.ctx, inner, inner_len) == 1 && EVP_DigestFinal_ex(outer.ctx, out, &out_len) == 1;
  OPENSSL_cleanse(inner, sizeof inner);
  return ok;
}

}  // namespace

// HMAC(key, msg) = H((key ^ opad) || H((key ^ ipad) || msg)). OpenSSL 3's
// HMAC() and HMAC_CTX fetch the MAC and the digest by name on every use:
// ~10x the cost of the two digests here.
bool hmac(const EVP_MD* md, const uint8_t* key, size_t key_len, const HmacPart* parts, size_t n_parts,
          uint8_t* out) {
  if (md == nullptr) return false;
  const int nid = EVP_MD_get_type(md);
  if (Sha2::handles(nid)) return hmac_sha2(nid, key, key_len, parts, n_parts, out);
  return hmac_evp(md, key, key_len, parts, n_parts, out);
}

HmacKeyScope::HmacKeyScope() { t_pads.on = true; }
HmacKeyScope::~HmacKeyScope() {
  t_pads.forget();
  t_pads.on = false;
}

}  // namespace tlsgate::tls
