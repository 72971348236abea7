// Per-thread cache in front of OpenSSL 3's algorithm fetches.
//
// OpenSSL 3.0 fetches algorithm implementations by name over and over while
// it runs a handshake: libssl's TLS 1.3 key schedule fetches the TLS13-KDF
// for every secret, and the KDF, HMAC and signature providers fetch their
// digest and MAC again each time they are set up: about 115 fetches per new
// connection, each a name-map lookup under a read lock, a property-query
// parse and a method-store lookup under another lock (4.4% of a new
// connection's user-space instructions, callgrind; bench/README.md).
//
// The executable defines the fetch functions, so the dynamic linker binds
// libssl's and libcrypto's own calls to these (the same interposition as
// __sprintf_chk in ktls.cc). A hit returns the method the real fetch returned
// before, with one more reference, which is what the real fetch does for a
// method in its store; a miss, a failure or an unusual name goes to the real
// function. Providers are loaded once at start-up, before the shards run, so
// a (library context, name, properties) triple always yields the same method.
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include <cstring>

#include "internal.hh"
#include "tlsgate/tls.hh"

namespace tlsgate::tls {
namespace {

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

}  // namespace

uint64_t fetch_cache_hits() { return t_md.hits() + t_kdf.hits() + t_mac.hits() + t_cipher.hits(); }
uint64_t names_cache_hits() { return t_names.hits(); }

void link_fetch_cache() {}

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
  // libssl's key schedule gets tlsgate's TLS13-KDF (kdf.cc).
  if (ctx == nullptr && props == nullptr && name != nullptr && std::strcmp(name, "TLS13-KDF") == 0 &&
      tlsgate::tls::kdf_provider_loaded())
    props = "provider=tlsgate";
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
