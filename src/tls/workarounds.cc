// OpenSSL 3.0 workarounds, built only with -Dopenssl_3_0_workarounds=true
// (meson refuses the option for any other OpenSSL). Nothing here computes a
// cryptographic value: it caches lookups and formats text.
//
// 1. A per-thread cache in front of OpenSSL 3.0's algorithm fetches.
//    OpenSSL 3.0 fetches algorithm implementations by name over and over
//    while it runs a handshake: libssl's TLS 1.3 key schedule fetches the
//    TLS13-KDF for every secret, and the KDF, HMAC and signature providers
//    fetch their digest and MAC again each time they are set up: about 115
//    fetches per new connection, each a name-map lookup under a read lock, a
//    property-query parse and a method-store lookup under another lock. The
//    executable defines the fetch functions, so the dynamic linker binds
//    libssl's and libcrypto's own calls to these. A hit returns the method
//    the real fetch returned before, with one more reference, which is what
//    the real fetch does for a method in its store; a miss, a failure or an
//    unusual name goes to the real function.
//    Only the default library context (NULL) is cached: it lives as long as
//    the process, so a cached method can never belong to a context that was
//    freed and whose address a new one reuses. Providers are loaded before
//    the shards start, so a (name, properties) pair always yields the same
//    method there.
// 2. libssl writes each keylog line one byte at a time with
//    sprintf(p, "%02x", b); the executable's __sprintf_chk writes that one
//    format directly and hands every other call to glibc unchanged.
//
// Both are inactive (every call goes straight to the library's function)
// unless activate_workarounds() found OpenSSL 3.0.x at run time, no FIPS
// provider, FIPS mode off, no default properties in OpenSSL's configuration
// file, and the default provider answering fetches with no properties.
#include <dlfcn.h>
#include <openssl/conf.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/provider.h>

#include <cstdarg>
#include <cstdlib>
#include <cstring>
#include <string>

#include "internal.hh"
#include "tlsgate/tls.hh"

namespace tlsgate::tls {
namespace {

// Set once by activate_workarounds(), before any shard thread exists.
bool g_active = false;
std::string g_inactive_reason = "not activated";

// libcrypto's (or glibc's) definition of a function the executable defines
// too: the next one in lookup order.
template <class Fn>
Fn next_definition(const char* symbol) {
  const auto fn = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, symbol));
  if (fn == nullptr) std::abort();  // cannot happen while libcrypto is linked
  return fn;
}

constexpr size_t kNameMax = 40;
constexpr unsigned kEntries = 24;

template <class M>
struct FetchKind {
  using Fetch = M* (*)(OSSL_LIB_CTX*, const char*, const char*);
  using Ref = int (*)(M*);
  using Free = void (*)(M*);
  const char* symbol;
  Ref up_ref;
  Free free;
};

template <class M>
class FetchCache {
 public:
  explicit FetchCache(const FetchKind<M>& kind) : kind_(kind) {}
  FetchCache(const FetchCache&) = delete;
  FetchCache& operator=(const FetchCache&) = delete;
  ~FetchCache() {
    for (unsigned i = 0; i < count_; ++i) kind_.free(entries_[i].method);
  }

  M* fetch(OSSL_LIB_CTX* ctx, const char* name, const char* props) {
    if (!g_active || ctx != nullptr) return real()(ctx, name, props);
    const size_t nl = name ? std::strlen(name) : kNameMax;
    const size_t pl = props ? std::strlen(props) : 0;
    if (nl >= kNameMax || pl >= kNameMax) return real()(ctx, name, props);
    for (unsigned i = 0; i < count_; ++i) {
      Entry& e = entries_[i];
      if (e.ctx == ctx && e.has_props == (props != nullptr) && std::memcmp(e.name, name, nl + 1) == 0 &&
          (props == nullptr || std::memcmp(e.props, props, pl + 1) == 0)) {
        ++hits_;
        if (kind_.up_ref(e.method) == 1) return e.method;
        break;
      }
    }
    M* m = real()(ctx, name, props);
    if (m == nullptr || count_ == kEntries || kind_.up_ref(m) != 1) return m;
    Entry& e = entries_[count_++];
    e.ctx = ctx;
    e.has_props = props != nullptr;
    std::memcpy(e.name, name, nl + 1);
    if (props) std::memcpy(e.props, props, pl + 1);
    e.method = m;
    return m;
  }

  uint64_t hits() const { return hits_; }

 private:
  struct Entry {
    OSSL_LIB_CTX* ctx;
    bool has_props;
    char name[kNameMax];
    char props[kNameMax];
    M* method;
  };

  typename FetchKind<M>::Fetch real() const {
    static const auto fn = next_definition<typename FetchKind<M>::Fetch>(kind_.symbol);
    return fn;
  }

  const FetchKind<M>& kind_;
  Entry entries_[kEntries];
  unsigned count_ = 0;
  uint64_t hits_ = 0;
};

const FetchKind<EVP_MD> kMd{"EVP_MD_fetch", EVP_MD_up_ref, EVP_MD_free};
const FetchKind<EVP_KDF> kKdf{"EVP_KDF_fetch", EVP_KDF_up_ref, EVP_KDF_free};
const FetchKind<EVP_MAC> kMac{"EVP_MAC_fetch", EVP_MAC_up_ref, EVP_MAC_free};
const FetchKind<EVP_CIPHER> kCipher{"EVP_CIPHER_fetch", EVP_CIPHER_up_ref, EVP_CIPHER_free};

// EVP_KEYMGMT_names_do_all: OpenSSL calls it whenever it makes a key or a
// key context (eight times per new connection) to find a key type's legacy
// id, and each call walks the library's whole name map under its lock to
// collect the few names of one key manager. Those names never change (the
// map only grows, its strings live as long as the library), so they are
// collected once per key manager, which the cache keeps a reference to.
class NamesCache {
 public:
  using Fn = void (*)(const char*, void*);
  NamesCache() = default;
  NamesCache(const NamesCache&) = delete;
  NamesCache& operator=(const NamesCache&) = delete;
  ~NamesCache() {
    for (unsigned i = 0; i < count_; ++i) EVP_KEYMGMT_free(entries_[i].keymgmt);
  }

  int names_do_all(const EVP_KEYMGMT* km, Fn fn, void* data) {
    if (!g_active) return real()(km, fn, data);
    for (unsigned i = 0; i < count_; ++i) {
      const Entry& e = entries_[i];
      if (e.keymgmt != km) continue;
      ++hits_;
      for (unsigned n = 0; n < e.count; ++n) fn(e.names[n], data);
      return 1;
    }
    if (km == nullptr || count_ == kEntries) return real()(km, fn, data);
    Entry& e = entries_[count_];
    e.count = 0;
    e.overflow = false;
    if (real()(km, collect, &e) != 1 || e.overflow || EVP_KEYMGMT_up_ref(const_cast<EVP_KEYMGMT*>(km)) != 1)
      return real()(km, fn, data);
    e.keymgmt = const_cast<EVP_KEYMGMT*>(km);
    ++count_;
    for (unsigned n = 0; n < e.count; ++n) fn(e.names[n], data);
    return 1;
  }

  uint64_t hits() const { return hits_; }

 private:
  static constexpr unsigned kEntries = 16;
  static constexpr unsigned kNames = 16;
  struct Entry {
    EVP_KEYMGMT* keymgmt;
    const char* names[kNames];
    unsigned count;
    bool overflow;
  };

  static void collect(const char* name, void* arg) {
    auto* e = static_cast<Entry*>(arg);
    if (e->count == kNames)
      e->overflow = true;
    else
      e->names[e->count++] = name;
  }

  using Real = int (*)(const EVP_KEYMGMT*, Fn, void*);
  static Real real() {
    static const auto fn = next_definition<Real>("EVP_KEYMGMT_names_do_all");
    return fn;
  }

  Entry entries_[kEntries];
  unsigned count_ = 0;
  uint64_t hits_ = 0;
};

thread_local FetchCache<EVP_MD> t_md(kMd);
thread_local FetchCache<EVP_KDF> t_kdf(kKdf);
thread_local FetchCache<EVP_MAC> t_mac(kMac);
thread_local FetchCache<EVP_CIPHER> t_cipher(kCipher);
thread_local NamesCache t_names;

// The default properties (and FIPS mode) the configuration file OpenSSL
// loaded sets in its algorithm section, read the way OpenSSL reads them;
// OpenSSL 3.0 has no call that returns them. Empty when none are set.
std::string configured_properties() {
  std::string out;
  char* file = CONF_get1_default_config_file();  // honours OPENSSL_CONF
  CONF* conf = NCONF_new(nullptr);
  long bad_line = 0;
  if (file != nullptr && conf != nullptr && NCONF_load(conf, file, &bad_line) == 1) {
    const char* init = NCONF_get_string(conf, nullptr, "openssl_conf");
    const char* alg = init != nullptr ? NCONF_get_string(conf, init, "alg_section") : nullptr;
    if (alg != nullptr) {
      if (const char* p = NCONF_get_string(conf, alg, "default_properties")) out = p;
      if (const char* f = NCONF_get_string(conf, alg, "fips_mode")) out += std::string(out.empty() ? "" : ",") + "fips_mode=" + f;
    }
  }
  ERR_clear_error();  // a missing key or file is an error in OpenSSL's queue
  NCONF_free(conf);
  OPENSSL_free(file);
  return out;
}

// Where a method the real fetch returns with no properties comes from.
const char* provider_of(const char* digest) {
  using Real = EVP_MD* (*)(OSSL_LIB_CTX*, const char*, const char*);
  static const Real real = next_definition<Real>("EVP_MD_fetch");
  EVP_MD* md = real(nullptr, digest, nullptr);
  const char* name = md != nullptr ? OSSL_PROVIDER_get0_name(EVP_MD_get0_provider(md)) : nullptr;
  EVP_MD_free(md);  // the provider outlives it: providers stay loaded
  return name != nullptr ? name : "";
}

}  // namespace

void activate_workarounds() {
  g_active = false;
  const unsigned long v = OpenSSL_version_num();
  if ((v >> 20) != 0x300) {
    g_inactive_reason = std::string("OpenSSL at run time is ") + OpenSSL_version(OPENSSL_VERSION) + ", not 3.0.x";
  } else if (EVP_default_properties_is_fips_enabled(nullptr) || OSSL_PROVIDER_available(nullptr, "fips")) {
    g_inactive_reason = "a FIPS provider is configured";
  } else if (const std::string props = configured_properties(); !props.empty()) {
    g_inactive_reason = "the OpenSSL configuration sets default properties (" + props + ")";
  } else if (std::strcmp(provider_of("SHA256"), "default") != 0) {
    g_inactive_reason = "fetches without properties do not reach the default provider (configured properties?)";
  } else {
    g_active = true;
    g_inactive_reason.clear();
  }
}

WorkaroundState workaround_state() {
  return WorkaroundState{true, g_active, g_active ? "" : g_inactive_reason};
}

uint64_t fetch_cache_hits() { return t_md.hits() + t_kdf.hits() + t_mac.hits() + t_cipher.hits(); }
uint64_t names_cache_hits() { return t_names.hits(); }

}  // namespace tlsgate::tls

using tlsgate::tls::t_cipher;
using tlsgate::tls::t_kdf;
using tlsgate::tls::t_mac;
using tlsgate::tls::t_md;
using tlsgate::tls::t_names;

extern "C" {
EVP_MD* EVP_MD_fetch(OSSL_LIB_CTX* ctx, const char* name, const char* props) {
  return t_md.fetch(ctx, name, props);
}
EVP_KDF* EVP_KDF_fetch(OSSL_LIB_CTX* ctx, const char* name, const char* props) {
  return t_kdf.fetch(ctx, name, props);
}
EVP_MAC* EVP_MAC_fetch(OSSL_LIB_CTX* ctx, const char* name, const char* props) {
  return t_mac.fetch(ctx, name, props);
}
EVP_CIPHER* EVP_CIPHER_fetch(OSSL_LIB_CTX* ctx, const char* name, const char* props) {
  return t_cipher.fetch(ctx, name, props);
}
int EVP_KEYMGMT_names_do_all(const EVP_KEYMGMT* km, void (*fn)(const char*, void*), void* data) {
  return t_names.names_do_all(km, fn, data);
}
}

extern "C" int __vsprintf_chk(char* __restrict s, int flag, size_t slen, const char* __restrict format,
                              va_list ap) noexcept;

namespace {
// The format libssl's keylog writer uses, tested without a call to strcmp:
// this runs 400 times per new connection.
bool is_byte_as_hex(const char* f) { return f[0] == '%' && f[1] == '0' && f[2] == '2' && f[3] == 'x' && f[4] == '\0'; }
}  // namespace

extern "C" __attribute__((visibility("default"))) int __sprintf_chk(char* __restrict s, int flag, size_t slen,
                                                                     const char* __restrict format, ...) noexcept {
  va_list ap;
  va_start(ap, format);
  if (tlsgate::tls::g_active && slen >= 3 && is_byte_as_hex(format)) {
    const unsigned v = va_arg(ap, unsigned);
    if (v <= 0xff) {
      va_end(ap);
      static constexpr char kHex[] = "0123456789abcdef";
      s[0] = kHex[v >> 4];
      s[1] = kHex[v & 0xf];
      s[2] = '\0';
      return 2;
    }
    va_end(ap);  // more than a byte: glibc formats it, from the first argument again
    va_start(ap, format);
  }
  const int n = __vsprintf_chk(s, flag, slen, format, ap);
  va_end(ap);
  return n;
}
