// X25519 key generation for the TLS 1.3 key share, without OpenSSL 3.0's
// slow path for it.
//
// A new TLS 1.3 connection makes one X25519 key pair (the server's share)
// and one X25519 shared secret. OpenSSL 3.0 derives the shared secret with a
// fast 64-bit ladder, but computes the public key of a fresh private key with
// an Edwards-curve comb in 25.5-bit limbs: 53-71 µs per key on the benchmark
// machine, more than the shared secret (~45 µs) and ~8% of a whole new
// connection's proxy CPU (bench/README.md, fifth round). The same comb in
// 51-bit limbs with 128-bit products takes ~27 µs per key, EVP calls
// included.
//
// What it computes: public = u([k]B), k the clamped private key, B the
// Ed25519 base point (birationally equivalent to Curve25519's u = 9), with
// u = (1 + y) / (1 - y) = (Z + Y) / (Z - Y) (RFC 7748 4.1). The comb:
// k = sum e_i 16^i with signed digits e_i in [-8, 8]; [k]B =
// 16 sum_odd e_i 256^(i/2) B + sum_even e_i 256^(i/2) B, where the multiples
// |e| 256^j B (j < 32, |e| <= 8) are a table built once per process from B.
// Twisted Edwards (a = -1) extended coordinates; mixed additions with the
// table's (y + x, y - x, 2dxy) form; both formulas are complete on this curve
// (d is not a square), so the identity and equal points need no branch.
// Secret-dependent choices are masks, never branches or indices.
//
// The executable defines EVP_PKEY_keygen (the fetch_cache.cc interposition):
// for an X25519 context it draws the private key from the same generator
// OpenSSL's key manager uses (RAND_priv_bytes_ex on the context's library
// context), clamps it as that key manager does, computes the public key here
// and hands both to OpenSSL's own key manager with EVP_PKEY_fromdata, so the
// key is the one OpenSSL would have made. Everything else goes to OpenSSL.
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <atomic>
#include <cstring>

#include "internal.hh"
#include "tlsgate/tls.hh"

namespace tlsgate::tls {
namespace {

using u128 = unsigned __int128;
constexpr uint64_t kMask = (uint64_t{1} << 51) - 1;

// A field element mod p = 2^255 - 19: v[0] + v[1] 2^51 + ... + v[4] 2^204.
// Every function returns limbs below 2^52 given limbs below 2^52.
struct Fe {
  uint64_t v[5];
};

Fe fe_small(uint64_t n) { return Fe{{n, 0, 0, 0, 0}}; }

void carry(Fe& h) {
  uint64_t c = h.v[0] >> 51;
  h.v[0] &= kMask;
  for (int i = 1; i < 5; ++i) {
    h.v[i] += c;
    c = h.v[i] >> 51;
    h.v[i] &= kMask;
  }
  h.v[0] += 19 * c;  // 2^255 = 19 (mod p)
  c = h.v[0] >> 51;
  h.v[0] &= kMask;
  h.v[1] += c;
}

Fe fe_add(const Fe& f, const Fe& g) {
  Fe h;
  for (int i = 0; i < 5; ++i) h.v[i] = f.v[i] + g.v[i];
  carry(h);
  return h;
}

// f - g + 4p: every limb stays positive for g's limbs below 2^52.
Fe fe_sub(const Fe& f, const Fe& g) {
  constexpr uint64_t k4p0 = 4 * ((uint64_t{1} << 51) - 19), k4p = 4 * ((uint64_t{1} << 51) - 1);
  Fe h;
  h.v[0] = f.v[0] + k4p0 - g.v[0];
  for (int i = 1; i < 5; ++i) h.v[i] = f.v[i] + k4p - g.v[i];
  carry(h);
  return h;
}

Fe fe_neg(const Fe& f) { return fe_sub(fe_small(0), f); }

// The limbs of a 128-bit-per-limb product (each below 2^112) carried into
// an element with limbs below 2^52.
Fe reduce(u128 r0, u128 r1, u128 r2, u128 r3, u128 r4) {
  r1 += r0 >> 51;
  r2 += r1 >> 51;
  r3 += r2 >> 51;
  r4 += r3 >> 51;
  const u128 low = (u128)((uint64_t)r0 & kMask) + (r4 >> 51) * 19;
  return Fe{{(uint64_t)low & kMask, ((uint64_t)r1 & kMask) + (uint64_t)(low >> 51), (uint64_t)r2 & kMask,
             (uint64_t)r3 & kMask, (uint64_t)r4 & kMask}};
}

Fe fe_mul(const Fe& f, const Fe& g) {
  const uint64_t f0 = f.v[0], f1 = f.v[1], f2 = f.v[2], f3 = f.v[3], f4 = f.v[4];
  const uint64_t g0 = g.v[0], g1 = g.v[1], g2 = g.v[2], g3 = g.v[3], g4 = g.v[4];
  const uint64_t g1x = 19 * g1, g2x = 19 * g2, g3x = 19 * g3, g4x = 19 * g4;
  u128 r0 = (u128)f0 * g0 + (u128)f1 * g4x + (u128)f2 * g3x + (u128)f3 * g2x + (u128)f4 * g1x;
  u128 r1 = (u128)f0 * g1 + (u128)f1 * g0 + (u128)f2 * g4x + (u128)f3 * g3x + (u128)f4 * g2x;
  u128 r2 = (u128)f0 * g2 + (u128)f1 * g1 + (u128)f2 * g0 + (u128)f3 * g4x + (u128)f4 * g3x;
  u128 r3 = (u128)f0 * g3 + (u128)f1 * g2 + (u128)f2 * g1 + (u128)f3 * g0 + (u128)f4 * g4x;
  u128 r4 = (u128)f0 * g4 + (u128)f1 * g3 + (u128)f2 * g2 + (u128)f3 * g1 + (u128)f4 * g0;
  return reduce(r0, r1, r2, r3, r4);
}

// fe_mul(f, f) with the equal cross products counted once, doubled.
Fe fe_sq(const Fe& f) {
  const uint64_t f0 = f.v[0], f1 = f.v[1], f2 = f.v[2], f3 = f.v[3], f4 = f.v[4];
  const uint64_t f0d = 2 * f0, f1d = 2 * f1, f1x = 38 * f1, f2x = 38 * f2, f3x = 38 * f3, f3y = 19 * f3,
                 f4y = 19 * f4;
  u128 r0 = (u128)f0 * f0 + (u128)f1x * f4 + (u128)f2x * f3;
  u128 r1 = (u128)f0d * f1 + (u128)f3y * f3 + (u128)f2x * f4;
  u128 r2 = (u128)f0d * f2 + (u128)f1 * f1 + (u128)f3x * f4;
  u128 r3 = (u128)f0d * f3 + (u128)f1d * f2 + (u128)f4y * f4;
  u128 r4 = (u128)f0d * f4 + (u128)f1d * f3 + (u128)f2 * f2;
  return reduce(r0, r1, r2, r3, r4);
}

Fe fe_sq_n(Fe f, int n) {
  for (int i = 0; i < n; ++i) f = fe_sq(f);
  return f;
}

// z^(p - 2) = z^(2^255 - 21) = 1 / z.
Fe fe_invert(const Fe& z) {
  const Fe z2 = fe_sq(z);
  const Fe z9 = fe_mul(fe_sq_n(z2, 2), z);
  const Fe z11 = fe_mul(z9, z2);
  const Fe e5 = fe_mul(fe_sq(z11), z9);           // z^(2^5 - 1)
  const Fe e10 = fe_mul(fe_sq_n(e5, 5), e5);      // z^(2^10 - 1)
  const Fe e20 = fe_mul(fe_sq_n(e10, 10), e10);   // z^(2^20 - 1)
  const Fe e40 = fe_mul(fe_sq_n(e20, 20), e20);   // z^(2^40 - 1)
  const Fe e50 = fe_mul(fe_sq_n(e40, 10), e10);   // z^(2^50 - 1)
  const Fe e100 = fe_mul(fe_sq_n(e50, 50), e50);  // z^(2^100 - 1)
  const Fe e200 = fe_mul(fe_sq_n(e100, 100), e100);
  const Fe e250 = fe_mul(fe_sq_n(e200, 50), e50);
  return fe_mul(fe_sq_n(e250, 5), z11);  // z^(2^255 - 32 + 11)
}

void fe_tobytes(uint8_t out[32], Fe h) {
  carry(h);
  carry(h);
  // h < 2^255 + small now; q = 1 exactly when h >= p.
  uint64_t q = (h.v[0] + 19) >> 51;
  for (int i = 1; i < 5; ++i) q = (h.v[i] + q) >> 51;
  h.v[0] += 19 * q;
  for (int i = 0; i < 4; ++i) {
    h.v[i + 1] += h.v[i] >> 51;
    h.v[i] &= kMask;
  }
  h.v[4] &= kMask;  // drops 2^255, which q*19 added back as p
  const uint64_t w[4] = {h.v[0] | h.v[1] << 51, h.v[1] >> 13 | h.v[2] << 38, h.v[2] >> 26 | h.v[3] << 25,
                         h.v[3] >> 39 | h.v[4] << 12};
  for (int i = 0; i < 4; ++i)
    for (int b = 0; b < 8; ++b) out[8 * i + b] = static_cast<uint8_t>(w[i] >> (8 * b));
}

Fe fe_frombytes(const uint8_t in[32]) {
  auto load = [&](int at) {
    uint64_t r = 0;
    for (int b = 0; b < 8; ++b) r |= uint64_t{in[at + b]} << (8 * b);
    return r;
  };
  return Fe{{load(0) & kMask, (load(6) >> 3) & kMask, (load(12) >> 6) & kMask, (load(19) >> 1) & kMask,
             (load(24) >> 12) & kMask}};
}

bool fe_equal(const Fe& a, const Fe& b) {
  uint8_t x[32], y[32];
  fe_tobytes(x, a);
  fe_tobytes(y, b);
  return std::memcmp(x, y, 32) == 0;
}

// f = mask ? g : f, mask all ones or zero.
void fe_cmov(Fe& f, const Fe& g, uint64_t mask) {
  for (int i = 0; i < 5; ++i) f.v[i] ^= mask & (f.v[i] ^ g.v[i]);
}

// ---------------------------------------------------------------- points

struct Extended {  // x = X/Z, y = Y/Z, xy = T/Z
  Fe X, Y, Z, T;
};
struct Completed {  // x = X/Z, y = Y/T: what an addition or doubling yields
  Fe X, Y, Z, T;
};
struct Niels {  // an affine point as (y + x, y - x, 2dxy)
  Fe ypx, ymx, xy2d;
};

Extended to_extended(const Completed& c) {
  return Extended{fe_mul(c.X, c.T), fe_mul(c.Y, c.Z), fe_mul(c.Z, c.T), fe_mul(c.X, c.Y)};
}

// p + q (Hisil, Wong, Carter, Dawson 2008, a = -1, q affine).
Completed add(const Extended& p, const Niels& q) {
  const Fe a = fe_mul(fe_add(p.Y, p.X), q.ypx);
  const Fe b = fe_mul(fe_sub(p.Y, p.X), q.ymx);
  const Fe c = fe_mul(p.T, q.xy2d);
  const Fe d = fe_add(p.Z, p.Z);
  return Completed{fe_sub(a, b), fe_add(a, b), fe_add(d, c), fe_sub(d, c)};
}

// 2p, from X, Y, Z only (a = -1).
Completed dbl(const Extended& p) {
  const Fe xx = fe_sq(p.X);
  const Fe yy = fe_sq(p.Y);
  const Fe zz = fe_sq(p.Z);
  const Fe zz2 = fe_add(zz, zz);
  const Fe sum = fe_add(yy, xx);
  const Fe diff = fe_sub(yy, xx);
  return Completed{fe_sub(fe_sq(fe_add(p.X, p.Y)), sum), sum, diff, fe_sub(zz2, diff)};
}

struct Table {
  Niels at[32][8];  // at[j][m - 1] = m 256^j B
  bool ok = false;
};

Niels niels_of(const Fe& x, const Fe& y, const Fe& d2) {
  return Niels{fe_add(y, x), fe_sub(y, x), fe_mul(fe_mul(x, y), d2)};
}

Niels niels_of(const Extended& p, const Fe& d2) {
  const Fe zi = fe_invert(p.Z);
  return niels_of(fe_mul(p.X, zi), fe_mul(p.Y, zi), d2);
}

// Built from the base point's coordinates, checked against the curve
// equation -x^2 + y^2 = 1 + d x^2 y^2 first.
Table build_table() {
  Table t;
  // RFC 8032 5.1: B = (x, 4/5); x's little-endian bytes.
  static const uint8_t kBaseX[32] = {0x1a, 0xd5, 0x25, 0x8f, 0x60, 0x2d, 0x56, 0xc9, 0xb2, 0xa7, 0x25,
                                     0x95, 0x60, 0xc7, 0x2c, 0x69, 0x5c, 0xdc, 0xd6, 0xfd, 0x31, 0xe2,
                                     0xa4, 0xc0, 0xfe, 0x53, 0x6e, 0xcd, 0xd3, 0x36, 0x69, 0x21};
  const Fe d = fe_mul(fe_neg(fe_small(121665)), fe_invert(fe_small(121666)));
  const Fe d2 = fe_add(d, d);
  Fe x = fe_frombytes(kBaseX);
  Fe y = fe_mul(fe_small(4), fe_invert(fe_small(5)));
  const Fe xx = fe_sq(x), yy = fe_sq(y);
  if (!fe_equal(fe_sub(yy, xx), fe_add(fe_small(1), fe_mul(d, fe_mul(xx, yy))))) return t;
  for (int j = 0; j < 32; ++j) {
    const Niels base = niels_of(x, y, d2);
    Extended p{x, y, fe_small(1), fe_mul(x, y)};
    t.at[j][0] = base;
    for (int m = 1; m < 8; ++m) {
      p = to_extended(add(p, base));
      t.at[j][m] = niels_of(p, d2);
    }
    Extended q{x, y, fe_small(1), fe_mul(x, y)};
    for (int i = 0; i < 8; ++i) q = to_extended(dbl(q));  // 256 times
    const Fe zi = fe_invert(q.Z);
    x = fe_mul(q.X, zi);
    y = fe_mul(q.Y, zi);
  }
  t.ok = true;
  return t;
}

const Table& table() {
  static const Table t = build_table();
  return t;
}

// All ones when a == b, for a, b in [0, 8].
uint64_t equal_mask(uint32_t a, uint32_t b) { return 0 - (uint64_t)(((a ^ b) - 1) >> 31); }

// |e| 256^j B with e's sign, e in [-8, 8], without branching on e.
Niels select(const Table& t, int j, int8_t e) {
  const uint64_t negative = (uint64_t)((uint8_t)e >> 7);
  const uint32_t magnitude = (uint32_t)(e - (int8_t)((-(int)negative & e) * 2));
  Niels r{fe_small(1), fe_small(1), fe_small(0)};  // the identity
  for (uint32_t m = 1; m <= 8; ++m) {
    const uint64_t mask = equal_mask(magnitude, m);
    fe_cmov(r.ypx, t.at[j][m - 1].ypx, mask);
    fe_cmov(r.ymx, t.at[j][m - 1].ymx, mask);
    fe_cmov(r.xy2d, t.at[j][m - 1].xy2d, mask);
  }
  // -(x, y) = (-x, y): swap y + x and y - x, negate 2dxy.
  const uint64_t neg_mask = 0 - negative;
  const Niels n{r.ymx, r.ypx, fe_neg(r.xy2d)};
  fe_cmov(r.ypx, n.ypx, neg_mask);
  fe_cmov(r.ymx, n.ymx, neg_mask);
  fe_cmov(r.xy2d, n.xy2d, neg_mask);
  return r;
}

std::atomic<uint64_t> g_fast_keys{0};

}  // namespace

bool x25519_public_key(uint8_t out[32], const uint8_t private_key[32]) {
  const Table& t = table();
  if (!t.ok) return false;
  uint8_t k[32];
  std::memcpy(k, private_key, 32);
  k[0] &= 248;
  k[31] &= 127;
  k[31] |= 64;
  int8_t e[64];
  for (int i = 0; i < 32; ++i) {
    e[2 * i] = static_cast<int8_t>(k[i] & 15);
    e[2 * i + 1] = static_cast<int8_t>(k[i] >> 4);
  }
  int8_t c = 0;
  for (int i = 0; i < 63; ++i) {  // digits into [-8, 8)
    e[i] = static_cast<int8_t>(e[i] + c);
    c = static_cast<int8_t>((e[i] + 8) >> 4);
    e[i] = static_cast<int8_t>(e[i] - c * 16);
  }
  e[63] = static_cast<int8_t>(e[63] + c);
  Extended h{fe_small(0), fe_small(1), fe_small(1), fe_small(0)};
  for (int i = 1; i < 64; i += 2) h = to_extended(add(h, select(t, i / 2, e[i])));
  for (int i = 0; i < 4; ++i) h = to_extended(dbl(h));
  for (int i = 0; i < 64; i += 2) h = to_extended(add(h, select(t, i / 2, e[i])));
  fe_tobytes(out, fe_mul(fe_add(h.Z, h.Y), fe_invert(fe_sub(h.Z, h.Y))));
  OPENSSL_cleanse(k, sizeof k);
  OPENSSL_cleanse(e, sizeof e);
  return true;
}

uint64_t x25519_fast_keys() { return g_fast_keys.load(std::memory_order_relaxed); }

bool link_x25519() { return table().ok; }

namespace {

using KeygenFn = int (*)(EVP_PKEY_CTX*, EVP_PKEY**);

KeygenFn real_keygen() {
  static const KeygenFn fn = next_definition<KeygenFn>("EVP_PKEY_keygen");
  return fn;
}

// One import context per thread for the library context libssl uses.
class Importer {
 public:
  ~Importer() { EVP_PKEY_CTX_free(ctx_); }
  EVP_PKEY_CTX* get(OSSL_LIB_CTX* libctx) {
    if (ctx_ != nullptr && libctx_ == libctx) return ctx_;
    EVP_PKEY_CTX_free(ctx_);
    ctx_ = EVP_PKEY_CTX_new_from_name(libctx, "X25519", nullptr);
    libctx_ = libctx;
    if (ctx_ != nullptr && EVP_PKEY_fromdata_init(ctx_) <= 0) {
      EVP_PKEY_CTX_free(ctx_);
      ctx_ = nullptr;
    }
    return ctx_;
  }

 private:
  EVP_PKEY_CTX* ctx_ = nullptr;
  OSSL_LIB_CTX* libctx_ = nullptr;
};
thread_local Importer t_importer;

bool fast_keygen(EVP_PKEY_CTX* ctx, EVP_PKEY** out) {
  OSSL_LIB_CTX* libctx = EVP_PKEY_CTX_get0_libctx(ctx);
  EVP_PKEY_CTX* import = t_importer.get(libctx);
  if (import == nullptr) return false;
  uint8_t priv[32], pub[32];
  if (RAND_priv_bytes_ex(libctx, priv, sizeof priv, 0) <= 0) return false;
  priv[0] &= 248;  // stored clamped, as OpenSSL's X25519 key manager does
  priv[31] &= 127;
  priv[31] |= 64;
  bool ok = x25519_public_key(pub, priv);
  if (ok) {
    OSSL_PARAM params[] = {OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PRIV_KEY, priv, sizeof priv),
                           OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub),
                           OSSL_PARAM_construct_end()};
    ok = EVP_PKEY_fromdata(import, out, EVP_PKEY_KEYPAIR, params) > 0;
  }
  OPENSSL_cleanse(priv, sizeof priv);
  if (ok) g_fast_keys.fetch_add(1, std::memory_order_relaxed);
  return ok;
}

}  // namespace
}  // namespace tlsgate::tls

// Only a fresh X25519 key pair from a context without property query comes
// here (libssl's key share); any other context, or a failure, goes to
// OpenSSL. An X25519 context not set up by EVP_PKEY_keygen_init would get a
// key here where OpenSSL returns an error: nothing in tlsgate or libssl does
// that.
extern "C" int EVP_PKEY_keygen(EVP_PKEY_CTX* ctx, EVP_PKEY** ppkey) {
  if (ctx != nullptr && ppkey != nullptr && *ppkey == nullptr && EVP_PKEY_CTX_get0_propq(ctx) == nullptr &&
      EVP_PKEY_CTX_is_a(ctx, "X25519") && tlsgate::tls::fast_keygen(ctx, ppkey))
    return 1;
  return tlsgate::tls::real_keygen()(ctx, ppkey);
}
