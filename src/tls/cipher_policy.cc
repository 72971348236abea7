// The cipher policy: which TLS 1.2 ciphers, TLS 1.3 suites and groups a
// context offers (config::CipherPolicy), checked strictly.
//
// OpenSSL is lenient with the first two lists: it drops names it does not
// know as long as something is left (ciphers) or even when nothing is
// (ciphersuites, which then turns TLS 1.3 off). An operator who names a
// cipher means it, so a misspelt or unavailable name is a start-up error
// naming the key (tlsgate --check-config builds every Context, so it finds
// them too).
#include "cipher_policy.hh"
#include "internal.hh"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tlsgate::tls {

namespace {


[[noreturn]] void policy_error(const config::Origin& where, const std::string& problem) {
  throw std::runtime_error(where.to_string() + ": " + problem);
}

// The entries of an OpenSSL list, split at any of `separators`, with the
// blanks around each trimmed (as OpenSSL does). Empty entries are kept.
std::vector<std::string> list_entries(std::string_view list, std::string_view separators) {
  std::vector<std::string> out;
  size_t begin = 0;
  for (;;) {
    size_t end = list.find_first_of(separators, begin);
    std::string_view e =
        list.substr(begin, end == std::string_view::npos ? std::string_view::npos : end - begin);
    while (!e.empty() && e.front() == ' ') e.remove_prefix(1);
    while (!e.empty() && e.back() == ' ') e.remove_suffix(1);
    out.emplace_back(e);
    if (end == std::string_view::npos) return out;
    begin = end + 1;
  }
}

// Whether `name` alone makes `probe` offer the TLS 1.3 suite of that name.
// OpenSSL 3.0 refuses a lone unknown name already; the kx check keeps a
// TLS 1.2 cipher of that name (in the offered list too) from counting where
// a version takes the call as an empty list instead.
bool known_tls13_suite(SSL_CTX* probe, const std::string& name) {
  if (SSL_CTX_set_ciphersuites(probe, name.c_str()) != 1) {
    ERR_clear_error();
    return false;
  }
  const STACK_OF(SSL_CIPHER)* offered = SSL_CTX_get_ciphers(probe);
  for (int i = 0; i < sk_SSL_CIPHER_num(offered); ++i) {
    const SSL_CIPHER* c = sk_SSL_CIPHER_value(offered, i);
    if (SSL_CIPHER_get_kx_nid(c) == NID_kx_any && name == SSL_CIPHER_get_name(c)) return true;
  }
  return false;
}

// TLS 1.2. Each entry that adds ciphers must select one on its own; entries
// that remove (!, -), reorder (+) or set options (@) select nothing alone.
void set_tls12_ciphers(SSL_CTX* ctx, SSL_CTX* probe, const std::string& list, const config::Origin& where) {
  for (const std::string& entry : list_entries(list, ":, ;")) {  // OpenSSL's cipher list separators
    if (entry.empty() || std::strchr("!-+@", entry[0]) != nullptr) continue;
    if (SSL_CTX_set_cipher_list(probe, entry.c_str()) == 1) continue;
    ERR_clear_error();
    std::string problem =
        "\"" + entry + "\" selects no TLS 1.2 cipher (unknown name, or not available in this OpenSSL)";
    if (known_tls13_suite(probe, entry)) problem += "; TLS 1.3 suites belong in ciphersuites";
    policy_error(where, problem);
  }
  if (SSL_CTX_set_cipher_list(ctx, list.c_str()) != 1) {
    ERR_clear_error();
    policy_error(where, "selects no TLS 1.2 cipher");
  }
}

// TLS 1.3: every name must be a suite this OpenSSL offers.
void set_tls13_ciphersuites(SSL_CTX* ctx, SSL_CTX* probe, const std::string& list,
                            const config::Origin& where) {
  for (const std::string& name : list_entries(list, ":")) {
    if (name.empty()) policy_error(where, "has an empty entry");
    if (known_tls13_suite(probe, name)) continue;
    std::string problem = "unknown TLS 1.3 cipher suite \"" + name + "\" (or not available in this OpenSSL)";
    if (SSL_CTX_set_cipher_list(probe, name.c_str()) == 1) problem += "; TLS 1.2 ciphers belong in ciphers";
    ERR_clear_error();
    policy_error(where, problem);
  }
  if (SSL_CTX_set_ciphersuites(ctx, list.c_str()) != 1) policy_error(where, openssl_error_text());
}

// Groups: OpenSSL refuses a list with an unknown name itself, but without
// saying which; the entries tried alone, then in pairs, tell.
void set_groups(SSL_CTX* ctx, SSL_CTX* probe, const std::string& list, const config::Origin& where) {
  if (SSL_CTX_set1_groups_list(ctx, list.c_str()) == 1) return;
  const std::string refused = openssl_error_text();
  const std::vector<std::string> names = list_entries(list, ":");
  for (const std::string& name : names) {
    if (name.empty()) policy_error(where, "has an empty entry");
    if (SSL_CTX_set1_groups_list(probe, name.c_str()) != 1) {
      ERR_clear_error();
      policy_error(where, "unknown group \"" + name + "\" (or not available in this OpenSSL)");
    }
  }
  // Each name is known: OpenSSL also refuses one group twice, even under two
  // of its names (P-256, prime256v1).
  for (size_t i = 0; i < names.size(); ++i) {
    for (size_t j = i + 1; j < names.size(); ++j) {
      if (SSL_CTX_set1_groups_list(probe, (names[i] + ":" + names[j]).c_str()) == 1) continue;
      ERR_clear_error();
      policy_error(where, "\"" + names[j] + "\" is the same group as \"" + names[i] + "\"");
    }
  }
  policy_error(where, "OpenSSL refuses it: " + refused);
}

}  // namespace

// Entries are tried alone on a scratch context: some (SUITEB128) leave flags
// behind on the context they are set on.
void apply_cipher_policy(SSL_CTX* ctx, const config::CipherPolicy& p) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> probe(SSL_CTX_new(TLS_method()), &SSL_CTX_free);
  if (!probe) throw std::runtime_error("SSL_CTX_new: " + openssl_error_text());
  set_tls12_ciphers(ctx, probe.get(), p.ciphers, p.ciphers_origin);
  set_tls13_ciphersuites(ctx, probe.get(), p.ciphersuites, p.ciphersuites_origin);
  set_groups(ctx, probe.get(), p.groups, p.groups_origin);
}

}  // namespace tlsgate::tls
