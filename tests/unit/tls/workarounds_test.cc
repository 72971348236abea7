// The OpenSSL 3.0 workarounds (src/tls/workarounds.cc), built only with
// -Dopenssl_3_0_workarounds=true: the fetch cache and the keylog formatter
// give the same answers as the library, never cache a library context that
// can be freed, and a handshake is served from them.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "tlsgate/buffer.hh"
#include "tlsgate/tls.hh"
#include "cert_env.hh"
#include "tls_client.hh"

#ifndef TLSGATE_OPENSSL_WORKAROUNDS
#error "built only with -Dopenssl_3_0_workarounds=true"
#endif

extern "C" int __sprintf_chk(char* __restrict s, int flag, size_t slen, const char* __restrict format, ...) noexcept;

namespace tlsgate::tls {
namespace {
using namespace tlsgate::tls::tlstest;

// The object in which the global lookup, which libssl's and libcrypto's
// calls bind to, finds `symbol`; empty if none.
std::string defined_in(const char* symbol) {
  void* sym = dlsym(RTLD_DEFAULT, symbol);
  Dl_info info{};
  if (sym == nullptr || dladdr(sym, &info) == 0 || info.dli_fname == nullptr) return {};
  return info.dli_fname;
}

// What libssl binds to: the global lookup must find the executable's copy,
// not glibc's (otherwise every handshake formats its keylog with printf).
TEST(KeylogFormat, LibsslGetsTheExecutablesFormatter) {
  const std::string where = defined_in("__sprintf_chk");
  ASSERT_FALSE(where.empty());
  EXPECT_EQ(where.find("libc.so"), std::string::npos) << where;
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "__sprintf_chk"), reinterpret_cast<void*>(&__sprintf_chk));
}

TEST(KeylogFormat, ByteAsHexIsWhatPrintfWrites) {
  char mine[8];
  char want[8];
  for (unsigned v = 0; v < 256; ++v) {
    ASSERT_EQ(__sprintf_chk(mine, 1, sizeof mine, "%02x", v), 2);
    std::snprintf(want, sizeof want, "%02x", v);
    ASSERT_STREQ(mine, want);
  }
}

TEST(KeylogFormat, OtherCallsReachGlibc) {
  char buf[32];
  EXPECT_EQ(__sprintf_chk(buf, 1, sizeof buf, "%02x", 0x1234u), 4);  // more than a byte
  EXPECT_STREQ(buf, "1234");
  EXPECT_EQ(__sprintf_chk(buf, 1, sizeof buf, "%d-%s", 42, "x"), 4);
  EXPECT_STREQ(buf, "42-x");
  EXPECT_EQ(__sprintf_chk(buf, 1, sizeof buf, "%02X", 0xabu), 2);
  EXPECT_STREQ(buf, "AB");
}

// ------------------------------------------------------------ fetch cache

// Runs `fn` on a new thread: its fetch cache starts empty.
template <class F>
void on_fresh_thread(F fn) {
  std::thread t(fn);
  t.join();
}

// The executable defines these libcrypto functions (the fetches and key
// manager names); libssl's and libcrypto's own calls must bind to them.
TEST(Interposers, OpensslBindsToTheExecutablesDefinitions) {
  for (const char* name : {"EVP_MD_fetch", "EVP_KDF_fetch", "EVP_MAC_fetch", "EVP_CIPHER_fetch",
                           "EVP_KEYMGMT_names_do_all"}) {
    const std::string where = defined_in(name);
    ASSERT_FALSE(where.empty()) << name;
    EXPECT_EQ(where.find("libcrypto"), std::string::npos) << name << " " << where;
  }
}

TEST(FetchCache, SameQuerySameMethodOtherQueriesTheirOwn) {
  on_fresh_thread([] {
    const uint64_t h0 = fetch_cache_hits();
    EVP_MD* a = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(fetch_cache_hits(), h0) << "the first fetch is a miss";
    EVP_MD* b = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    EXPECT_EQ(a, b);
    EXPECT_EQ(fetch_cache_hits(), h0 + 1);
    // Another name, or the same name with properties: looked up for itself.
    EVP_MD* c = EVP_MD_fetch(nullptr, "SHA384", nullptr);
    ASSERT_NE(c, nullptr);
    EXPECT_TRUE(EVP_MD_is_a(c, "SHA2-384"));
    EVP_MD* d = EVP_MD_fetch(nullptr, "SHA256", "provider=default");
    ASSERT_NE(d, nullptr);
    EXPECT_TRUE(EVP_MD_is_a(d, "SHA2-256"));
    EXPECT_EQ(fetch_cache_hits(), h0 + 1);
    for (EVP_MD* m : {a, b, c, d}) EVP_MD_free(m);
    // The cache holds its own reference: the method outlives the callers'.
    EVP_MD* e = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    ASSERT_NE(e, nullptr);
    uint8_t digest[32];
    unsigned len = 0;
    ASSERT_EQ(EVP_Digest("abc", 3, digest, &len, e, nullptr), 1);
    EXPECT_EQ(len, 32u);
    EXPECT_EQ(digest[0], 0xba);  // SHA-256("abc") = ba7816bf...
    EVP_MD_free(e);
  });
}

TEST(FetchCache, FailuresAndLongQueriesGoToOpenssl) {
  on_fresh_thread([] {
    ERR_clear_error();
    EXPECT_EQ(EVP_MD_fetch(nullptr, "NO-SUCH-DIGEST", nullptr), nullptr);
    EXPECT_NE(ERR_peek_error(), 0u) << "OpenSSL's error queue says why";
    ERR_clear_error();
    EXPECT_EQ(EVP_MD_fetch(nullptr, "NO-SUCH-DIGEST", nullptr), nullptr);
    EXPECT_NE(ERR_peek_error(), 0u) << "the second failure reached OpenSSL too";
    ERR_clear_error();
    EXPECT_EQ(EVP_MD_fetch(nullptr, "SHA256", "provider=no-such-provider"), nullptr);
    ERR_clear_error();
    // Longer than the cache keeps: straight to OpenSSL.
    EXPECT_EQ(EVP_CIPHER_fetch(nullptr, "A-NAME-LONGER-THAN-FORTY-CHARACTERS-XXXXXXXX", nullptr), nullptr);
    ERR_clear_error();
    const char* long_props = "provider=default,provider=default,provider=default";
    const uint64_t h0 = fetch_cache_hits();
    for (int i = 0; i < 2; ++i) {
      EVP_MD* m = EVP_MD_fetch(nullptr, "SHA256", long_props);
      ASSERT_NE(m, nullptr);
      EXPECT_TRUE(EVP_MD_is_a(m, "SHA2-256"));
      EVP_MD_free(m);
    }
    EXPECT_EQ(fetch_cache_hits(), h0) << "long properties are not cached";
  });
}

TEST(FetchCache, EachKindHasItsOwnEntries) {
  on_fresh_thread([] {
    EVP_KDF* k1 = EVP_KDF_fetch(nullptr, "TLS13-KDF", nullptr);
    EVP_KDF* k2 = EVP_KDF_fetch(nullptr, "TLS13-KDF", nullptr);
    EVP_MAC* m1 = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    EVP_MAC* m2 = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    EVP_CIPHER* c1 = EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr);
    EVP_CIPHER* c2 = EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr);
    ASSERT_NE(k1, nullptr);
    ASSERT_NE(m1, nullptr);
    ASSERT_NE(c1, nullptr);
    EXPECT_EQ(k1, k2);
    EXPECT_EQ(m1, m2);
    EXPECT_EQ(c1, c2);
    EXPECT_TRUE(EVP_KDF_is_a(k1, "TLS13-KDF"));
    EXPECT_TRUE(EVP_MAC_is_a(m1, "HMAC"));
    EXPECT_EQ(EVP_CIPHER_get_key_length(c1), 16);
    EXPECT_EQ(fetch_cache_hits(), 3u);
    EVP_KDF_free(k1);
    EVP_KDF_free(k2);
    EVP_MAC_free(m1);
    EVP_MAC_free(m2);
    EVP_CIPHER_free(c1);
    EVP_CIPHER_free(c2);
  });
}

std::vector<std::string> keymgmt_names(const EVP_KEYMGMT* km,
                                       int (*do_all)(const EVP_KEYMGMT*, void (*)(const char*, void*), void*)) {
  std::vector<std::string> names;
  EXPECT_EQ(do_all(
                km, [](const char* n, void* v) { static_cast<std::vector<std::string>*>(v)->push_back(n); }, &names),
            1);
  return names;
}

// The cached name list is libcrypto's, in libcrypto's order, every time.
TEST(FetchCache, KeyManagerNamesAreLibcryptos) {
  on_fresh_thread([] {
    using DoAll = int (*)(const EVP_KEYMGMT*, void (*)(const char*, void*), void*);
    auto real = reinterpret_cast<DoAll>(dlsym(RTLD_NEXT, "EVP_KEYMGMT_names_do_all"));
    ASSERT_NE(real, nullptr);
    for (const char* alg : {"EC", "X25519", "RSA"}) {
      EVP_KEYMGMT* km = EVP_KEYMGMT_fetch(nullptr, alg, nullptr);
      ASSERT_NE(km, nullptr) << alg;
      const std::vector<std::string> want = keymgmt_names(km, real);
      ASSERT_FALSE(want.empty()) << alg;
      const uint64_t h0 = names_cache_hits();
      EXPECT_EQ(keymgmt_names(km, EVP_KEYMGMT_names_do_all), want) << alg << ", first call";
      EXPECT_EQ(keymgmt_names(km, EVP_KEYMGMT_names_do_all), want) << alg << ", from the cache";
      EXPECT_EQ(names_cache_hits(), h0 + 1) << alg;
      EVP_KEYMGMT_free(km);
    }
  });
}

// One complete TLS 1.3 handshake of a fresh client with a new server session
// of `ctx`, for the tests that count what a handshake does.
void complete_handshake(Context& ctx, ChunkPool& pool) {
  ByteQueue out(&pool);
  Session s(ctx, pool);
  Client c(ClientOptions{});
  Outcome o = run_handshake(s, c, out);
  EXPECT_EQ(o.server, HandshakeState::Done) << s.failure();
  EXPECT_EQ(o.client, 1) << c.last_error();
}

// What the cache is for: a handshake's fetches (libssl's key schedule, the
// providers' digests and MACs) are answered from it after the first one.
TEST(FetchCache, HandshakesFetchFromTheCache) {
  on_fresh_thread([] {
    ChunkPool pool;
    Context ctx(settings());
    complete_handshake(ctx, pool);
    const uint64_t before = fetch_cache_hits();
    const uint64_t names_before = names_cache_hits();
    complete_handshake(ctx, pool);
    EXPECT_GT(fetch_cache_hits() - before, 50u) << "a TLS 1.3 handshake (both sides) fetches ~200 times";
    EXPECT_GT(names_cache_hits() - names_before, 4u) << "and asks for key manager names ~16 times";
  });
}

// Active with Debian 12's OpenSSL 3.0 and its default provider; inactive
// when OPENSSL_CONF configures FIPS properties or properties that steer
// fetches to another provider (meson runs this test under both too, with
// TLSGATE_EXPECT_INACTIVE naming the reason it must give).
TEST(Workarounds, ActiveOnlyWithTheDefaultProvider) {
  const WorkaroundState st = workaround_state();
  EXPECT_TRUE(st.compiled);
  const char* expect_inactive = std::getenv("TLSGATE_EXPECT_INACTIVE");
  if (expect_inactive == nullptr) {
    EXPECT_TRUE(st.active) << st.inactive_reason;
    return;
  }
  EXPECT_FALSE(st.active);
  EXPECT_NE(st.inactive_reason.find(expect_inactive), std::string::npos) << st.inactive_reason;
  // Inactive means every fetch goes to OpenSSL: nothing is answered from the cache.
  on_fresh_thread([] {
    const uint64_t h0 = fetch_cache_hits();
    for (int i = 0; i < 3; ++i) EVP_MD_free(EVP_MD_fetch(nullptr, "SHA256", nullptr));
    EXPECT_EQ(fetch_cache_hits(), h0);
  });
}

// A library context other than the default one can be freed, and a new one
// may get its address: such fetches are never answered from the cache, so a
// method of the freed context can never be handed out.
TEST(FetchCache, OtherLibraryContextsAreNeverCached) {
  on_fresh_thread([] {
    for (int round = 0; round < 3; ++round) {
      OSSL_LIB_CTX* lib = OSSL_LIB_CTX_new();
      ASSERT_NE(lib, nullptr);
      const uint64_t h0 = fetch_cache_hits();
      EVP_MD* a = EVP_MD_fetch(lib, "SHA256", nullptr);
      EVP_MD* b = EVP_MD_fetch(lib, "SHA256", nullptr);
      ASSERT_NE(a, nullptr);
      ASSERT_NE(b, nullptr);
      EXPECT_EQ(fetch_cache_hits(), h0) << "round " << round;
      uint8_t digest[32];
      unsigned len = 0;
      ASSERT_EQ(EVP_Digest("abc", 3, digest, &len, b, nullptr), 1);
      EXPECT_EQ(digest[0], 0xba);
      EVP_MD_free(a);
      EVP_MD_free(b);
      OSSL_LIB_CTX_free(lib);  // the next round's context may reuse this address
    }
  });
}

}  // namespace
}  // namespace tlsgate::tls
