// TLS13-KDF, the TLS 1.3 key schedule's HKDF, in a provider of tlsgate's own;
// and the Finished MAC libssl asks EVP_Q_mac for (at the end).
//
// libssl runs every step of the key schedule through the "TLS13-KDF" of the
// library's providers: ~15 operations per new connection, each a fresh
// EVP_KDF_CTX whose parameters are located by name, then an HMAC context
// that fetches its digest again and hashes its pads. That was 18% of a new
// connection's user-space instructions (bench/README.md, fourth round), of
// which the hashing is a third. This implementation computes the same
// function (RFC 8446 7.1; OpenSSL's providers/implementations/kdfs/hkdf.c is
// the reference for which parameter means what) with one digest context per
// thread and nothing fetched per operation. fetch_cache.cc hands it to
// libssl's fetch of "TLS13-KDF"; `Tls13Kdf.*` in unit_tls compares it with
// OpenSSL's on random inputs.
#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/provider.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "internal.hh"

namespace tlsgate::tls {
namespace {

constexpr size_t kMaxKey = 1024;   // extract's input: (EC)DHE secrets up to ffdhe8192
constexpr size_t kMaxShort = 255;  // prefix, label, context: one length byte each

struct Tls13Kdf {
  int mode = -1;
  EVP_MD* md = nullptr;
  bool has_key = false;
  bool has_salt = false;
  size_t key_len = 0;
  size_t salt_len = 0;
  size_t prefix_len = 0;
  size_t label_len = 0;
  size_t data_len = 0;
  uint8_t key[kMaxKey];
  uint8_t salt[EVP_MAX_MD_SIZE];
  uint8_t prefix[kMaxShort];
  uint8_t label[kMaxShort];
  uint8_t data[kMaxShort];

  ~Tls13Kdf() {
    EVP_MD_free(md);
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(salt, sizeof salt);
  }
};

// An octet-string parameter into `dst` (capacity `cap`); false if it does not fit.
bool take_octets(const OSSL_PARAM* p, uint8_t* dst, size_t cap, size_t* len) {
  if (p->data_type != OSSL_PARAM_OCTET_STRING || p->data_size > cap) return false;
  if (p->data_size > 0) std::memcpy(dst, p->data, p->data_size);
  *len = p->data_size;
  return true;
}

enum class Param { Mode, Digest, Key, Salt, Prefix, Label, Data, Other };

// libssl passes six or seven parameters to each of ~15 derives per
// handshake: the first letter picks the one name to compare, where a chain
// of strcmp compared up to seven.
Param param_of(const char* name) {
  auto is = [name](const char* want, Param p) { return std::strcmp(name, want) == 0 ? p : Param::Other; };
  switch (name[0]) {
    case 'm': return is(OSSL_KDF_PARAM_MODE, Param::Mode);
    case 'd': return name[1] == 'i' ? is(OSSL_KDF_PARAM_DIGEST, Param::Digest) : is(OSSL_KDF_PARAM_DATA, Param::Data);
    case 'k': return is(OSSL_KDF_PARAM_KEY, Param::Key);
    case 's': return is(OSSL_KDF_PARAM_SALT, Param::Salt);
    case 'p': return is(OSSL_KDF_PARAM_PREFIX, Param::Prefix);
    case 'l': return is(OSSL_KDF_PARAM_LABEL, Param::Label);
    default: return Param::Other;
  }
}

int set_params(void* vctx, const OSSL_PARAM params[]) {
  auto* k = static_cast<Tls13Kdf*>(vctx);
  for (const OSSL_PARAM* p = params; p != nullptr && p->key != nullptr; ++p) {
    switch (param_of(p->key)) {
      case Param::Mode:
        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
          const char* v = static_cast<const char*>(p->data);
          if (std::strcmp(v, "EXTRACT_ONLY") == 0)
            k->mode = EVP_KDF_HKDF_MODE_EXTRACT_ONLY;
          else if (std::strcmp(v, "EXPAND_ONLY") == 0)
            k->mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
          else
            return 0;
        } else if (!OSSL_PARAM_get_int(p, &k->mode)) {
          return 0;
        }
        break;
      case Param::Digest: {
        const char* v = nullptr;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &v)) return 0;
        EVP_MD* md = EVP_MD_fetch(nullptr, v, nullptr);
        if (md == nullptr) return 0;
        EVP_MD_free(k->md);
        k->md = md;
        break;
      }
      case Param::Key:
        if (!take_octets(p, k->key, sizeof k->key, &k->key_len)) return 0;
        k->has_key = true;
        break;
      case Param::Salt:
        if (!take_octets(p, k->salt, sizeof k->salt, &k->salt_len)) return 0;
        k->has_salt = true;
        break;
      case Param::Prefix:
        if (!take_octets(p, k->prefix, sizeof k->prefix, &k->prefix_len)) return 0;
        break;
      case Param::Label:
        if (!take_octets(p, k->label, sizeof k->label, &k->label_len)) return 0;
        break;
      case Param::Data:
        if (!take_octets(p, k->data, sizeof k->data, &k->data_len)) return 0;
        break;
      case Param::Other:  // "properties", unknown names: ignored, as OpenSSL's does
        break;
    }
  }
  return 1;
}

// HKDF-Expand(prk, HkdfLabel(length, prefix || label, data), length).
bool expand(const EVP_MD* md, const uint8_t* prk, size_t prk_len, const uint8_t* prefix, size_t prefix_len,
            const uint8_t* label, size_t label_len, const uint8_t* data, size_t data_len, uint8_t* out,
            size_t length) {
  const size_t hlen = static_cast<size_t>(EVP_MD_get_size(md));
  if (hlen == 0 || length == 0 || length > 255 * hlen || length > 0xffff || prefix_len + label_len > 255)
    return false;
  uint8_t info[2 + 1 + 255 + 1 + kMaxShort];
  size_t n = 0;
  info[n++] = static_cast<uint8_t>(length >> 8);
  info[n++] = static_cast<uint8_t>(length);
  info[n++] = static_cast<uint8_t>(prefix_len + label_len);
  if (prefix_len > 0) std::memcpy(info + n, prefix, prefix_len);
  n += prefix_len;
  if (label_len > 0) std::memcpy(info + n, label, label_len);
  n += label_len;
  info[n++] = static_cast<uint8_t>(data_len);
  if (data_len > 0) std::memcpy(info + n, data, data_len);
  n += data_len;
  uint8_t t[EVP_MAX_MD_SIZE];
  size_t t_len = 0;
  for (uint8_t i = 1; length > 0; ++i) {
    const HmacPart parts[] = {{t, t_len}, {info, n}, {&i, 1}};
    if (!hmac(md, prk, prk_len, parts, 3, t)) return false;
    t_len = hlen;
    const size_t take = length < hlen ? length : hlen;
    std::memcpy(out, t, take);
    out += take;
    length -= take;
  }
  OPENSSL_cleanse(t, sizeof t);
  return true;
}

// Hash("") of the digest, which every extract after the first needs: made
// once per thread and digest (SHA-256 and SHA-384 in practice) instead of a
// compression per extract.
bool hash_of_nothing(const EVP_MD* md, const uint8_t** out, unsigned* len) {
  struct Entry {
    int type = NID_undef;  // the digest's NID: an EVP_MD's address may be reused
    unsigned len = 0;
    uint8_t hash[EVP_MAX_MD_SIZE];
  };
  thread_local Entry cache[4];
  const int type = EVP_MD_get_type(md);
  for (const Entry& e : cache) {
    if (type != NID_undef && e.type == type) {
      *out = e.hash;
      *len = e.len;
      return true;
    }
  }
  thread_local unsigned next = 0;
  Entry& e = cache[next++ % 4];
  e.type = NID_undef;
  if (EVP_Digest(nullptr, 0, e.hash, &e.len, md, nullptr) != 1) return false;
  e.type = type;
  *out = e.hash;
  *len = e.len;
  return true;
}

// Extract with TLS 1.3's salt: HKDF-Extract(Derive-Secret(prev, "derived", ""),
// input); no previous secret means an empty salt, no input means zeros.
bool extract(const Tls13Kdf& k, uint8_t* out, size_t length) {
  const size_t hlen = static_cast<size_t>(EVP_MD_get_size(k.md));
  if (hlen == 0 || length != hlen) return false;
  static const uint8_t zeros[EVP_MAX_MD_SIZE] = {};
  const uint8_t* input = k.has_key ? k.key : zeros;
  const size_t input_len = k.has_key ? k.key_len : hlen;
  uint8_t salt[EVP_MAX_MD_SIZE];
  size_t salt_len = 0;
  if (k.has_salt) {
    const uint8_t* empty_hash = nullptr;
    unsigned eh_len = 0;
    if (!hash_of_nothing(k.md, &empty_hash, &eh_len) ||
        !expand(k.md, k.salt, k.salt_len, k.prefix, k.prefix_len, k.label, k.label_len, empty_hash, eh_len,
                salt, hlen))
      return false;
    salt_len = hlen;
  }
  const HmacPart parts[] = {{input, input_len}};
  const bool ok = hmac(k.md, salt, salt_len, parts, 1, out);
  OPENSSL_cleanse(salt, sizeof salt);
  return ok;
}

// Through OpenSSL's allocator, like the rest of a handshake's memory.
void* kdf_new(void*) {
  void* p = OPENSSL_malloc(sizeof(Tls13Kdf));
  return p != nullptr ? new (p) Tls13Kdf : nullptr;
}
void kdf_free(void* vctx) {
  if (vctx == nullptr) return;
  static_cast<Tls13Kdf*>(vctx)->~Tls13Kdf();
  OPENSSL_free(vctx);
}
void kdf_reset(void* vctx) {
  auto* k = static_cast<Tls13Kdf*>(vctx);
  k->~Tls13Kdf();
  new (k) Tls13Kdf;
}

int kdf_derive(void* vctx, unsigned char* out, size_t length, const OSSL_PARAM params[]) {
  auto* k = static_cast<Tls13Kdf*>(vctx);
  if (!set_params(k, params) || k->md == nullptr || out == nullptr) return 0;
  switch (k->mode) {
    case EVP_KDF_HKDF_MODE_EXTRACT_ONLY:
      return extract(*k, out, length) ? 1 : 0;
    case EVP_KDF_HKDF_MODE_EXPAND_ONLY:
      if (!k->has_key) return 0;
      return expand(k->md, k->key, k->key_len, k->prefix, k->prefix_len, k->label, k->label_len, k->data,
                    k->data_len, out, length)
                 ? 1
                 : 0;
    default:
      return 0;  // TLS13-KDF has no extract-and-expand mode
  }
}

const OSSL_PARAM* kdf_settable(void*, void*) {
  static const OSSL_PARAM settable[] = {
      OSSL_PARAM_int(OSSL_KDF_PARAM_MODE, nullptr),
      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_MODE, nullptr, 0),
      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_PROPERTIES, nullptr, 0),
      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_KEY, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SALT, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_PREFIX, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_LABEL, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_DATA, nullptr, 0),
      OSSL_PARAM_END,
  };
  return settable;
}

int kdf_get(void* vctx, OSSL_PARAM params[]) {
  auto* k = static_cast<Tls13Kdf*>(vctx);
  OSSL_PARAM* p = OSSL_PARAM_locate(params, OSSL_KDF_PARAM_SIZE);
  if (p == nullptr) return -2;
  // Extract gives one hash; expand any length.
  const size_t size = k->mode == EVP_KDF_HKDF_MODE_EXTRACT_ONLY && k->md != nullptr
                          ? static_cast<size_t>(EVP_MD_get_size(k->md))
                          : SIZE_MAX;
  return OSSL_PARAM_set_size_t(p, size);
}

const OSSL_PARAM* kdf_gettable(void*, void*) {
  static const OSSL_PARAM gettable[] = {OSSL_PARAM_size_t(OSSL_KDF_PARAM_SIZE, nullptr), OSSL_PARAM_END};
  return gettable;
}

using Fn = void (*)();
const OSSL_DISPATCH kKdfFunctions[] = {
    {OSSL_FUNC_KDF_NEWCTX, reinterpret_cast<Fn>(kdf_new)},
    {OSSL_FUNC_KDF_FREECTX, reinterpret_cast<Fn>(kdf_free)},
    {OSSL_FUNC_KDF_RESET, reinterpret_cast<Fn>(kdf_reset)},
    {OSSL_FUNC_KDF_DERIVE, reinterpret_cast<Fn>(kdf_derive)},
    {OSSL_FUNC_KDF_SETTABLE_CTX_PARAMS, reinterpret_cast<Fn>(kdf_settable)},
    {OSSL_FUNC_KDF_SET_CTX_PARAMS, reinterpret_cast<Fn>(set_params)},
    {OSSL_FUNC_KDF_GETTABLE_CTX_PARAMS, reinterpret_cast<Fn>(kdf_gettable)},
    {OSSL_FUNC_KDF_GET_CTX_PARAMS, reinterpret_cast<Fn>(kdf_get)},
    {0, nullptr},
};

const OSSL_ALGORITHM kKdfs[] = {
    {"TLS13-KDF", "provider=tlsgate", kKdfFunctions, "TLS 1.3 key schedule HKDF (tlsgate)"},
    {nullptr, nullptr, nullptr, nullptr},
};

const OSSL_ALGORITHM* query(void*, int operation, int* no_cache) {
  *no_cache = 0;
  return operation == OSSL_OP_KDF ? kKdfs : nullptr;
}

const OSSL_DISPATCH kProvider[] = {
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, reinterpret_cast<Fn>(query)},
    {0, nullptr},
};

int provider_init(const OSSL_CORE_HANDLE* handle, const OSSL_DISPATCH*, const OSSL_DISPATCH** out,
                  void** provctx) {
  *out = kProvider;
  *provctx = const_cast<OSSL_CORE_HANDLE*>(handle);
  return 1;
}

bool g_loaded = false;
OSSL_PROVIDER* g_default = nullptr;
OSSL_PROVIDER* g_tlsgate = nullptr;

// Registered after OpenSSL's own exit handler, so it runs first: OpenSSL's
// cleanup then frees the providers.
void unload_providers() {
  g_loaded = false;
  if (g_tlsgate) OSSL_PROVIDER_unload(g_tlsgate);
  if (g_default) OSSL_PROVIDER_unload(g_default);
  g_tlsgate = g_default = nullptr;
}

}  // namespace

// Loading a provider by hand stops OpenSSL from loading the default one on
// first use, so it is loaded explicitly first.
bool load_kdf_provider() {
  if (g_loaded) return true;
  if (g_default == nullptr && (g_default = OSSL_PROVIDER_load(nullptr, "default")) == nullptr) return false;
  if (OSSL_PROVIDER_add_builtin(nullptr, "tlsgate", provider_init) != 1) return false;
  g_tlsgate = OSSL_PROVIDER_load(nullptr, "tlsgate");
  if (g_tlsgate == nullptr) return false;
  std::atexit(unload_providers);
  g_loaded = true;
  return true;
}

bool kdf_provider_loaded() { return g_loaded; }

// ---------------------------------------------------------------- Finished MAC
//
// libssl computes each TLS 1.3 Finished (RFC 8446 4.4.4: HMAC of the
// transcript hash under the finished key) with EVP_Q_mac, which makes a MAC
// context, fetches HMAC and sets its digest by name, hashes the key's pads
// and frees it all again: ~18k instructions for four hash blocks of work,
// twice per handshake (bench/README.md, eighth round). The executable's
// EVP_Q_mac (below) computes exactly that call, an HMAC with a named digest,
// no parameters, into the caller's buffer, with hmac(); any other call, and
// any failure, goes to libcrypto's, which then reports it as it would.
namespace {
thread_local uint64_t t_q_macs = 0;

unsigned char* q_hmac(OSSL_LIB_CTX* libctx, const char* name, const char* propq, const char* subalg,
                      const OSSL_PARAM* params, const void* key, size_t keylen, const unsigned char* data,
                      size_t datalen, unsigned char* out, size_t outsize, size_t* outlen) {
  if (libctx != nullptr || propq != nullptr || name == nullptr || std::strcmp(name, "HMAC") != 0 ||
      subalg == nullptr || (params != nullptr && params->key != nullptr) || key == nullptr || out == nullptr ||
      (data == nullptr && datalen > 0))
    return nullptr;
  EVP_MD* md = EVP_MD_fetch(nullptr, subalg, nullptr);  // fetch_cache.cc: a reference, no lookup
  if (md == nullptr) return nullptr;
  const int size = EVP_MD_get_size(md);
  uint8_t mac[EVP_MAX_MD_SIZE];
  const HmacPart part{data, datalen};
  const bool ok = size > 0 && static_cast<size_t>(size) <= outsize && (EVP_MD_get_flags(md) & EVP_MD_FLAG_XOF) == 0 &&
                  hmac(md, static_cast<const uint8_t*>(key), keylen, &part, 1, mac);
  EVP_MD_free(md);
  if (!ok) return nullptr;
  std::memcpy(out, mac, static_cast<size_t>(size));
  OPENSSL_cleanse(mac, sizeof mac);
  if (outlen != nullptr) *outlen = static_cast<size_t>(size);
  ++t_q_macs;
  return out;
}
}  // namespace

uint64_t finished_macs_computed() { return t_q_macs; }

}  // namespace tlsgate::tls

extern "C" unsigned char* EVP_Q_mac(OSSL_LIB_CTX* libctx, const char* name, const char* propq, const char* subalg,
                                    const OSSL_PARAM* params, const void* key, size_t keylen,
                                    const unsigned char* data, size_t datalen, unsigned char* out, size_t outsize,
                                    size_t* outlen) {
  using Real = unsigned char* (*)(OSSL_LIB_CTX*, const char*, const char*, const char*, const OSSL_PARAM*,
                                  const void*, size_t, const unsigned char*, size_t, unsigned char*, size_t, size_t*);
  unsigned char* r = tlsgate::tls::q_hmac(libctx, name, propq, subalg, params, key, keylen, data, datalen, out,
                                          outsize, outlen);
  if (r != nullptr) return r;
  static const Real real = tlsgate::tls::next_definition<Real>("EVP_Q_mac");
  return real(libctx, name, propq, subalg, params, key, keylen, data, datalen, out, outsize, outlen);
}
