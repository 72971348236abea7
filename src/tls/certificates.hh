// A server listener's certificates: loaded from their files once per
// tls::Context, grouped into the SSL_CTXs to make, and the server-name
// lookup that picks one. Private to src/tls/.
#pragma once

#include <openssl/ssl.h>

#include <cstddef>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tlsgate/config.hh"

namespace tlsgate::tls {

class CertificateSet {
 public:
  // Throws std::runtime_error naming the entry's key (unreadable file, key
  // not matching its certificate, two certificates of one key type claiming
  // one name).
  explicit CertificateSet(const std::vector<config::CertificateFiles>& files);
  ~CertificateSet();
  CertificateSet(const CertificateSet&) = delete;
  CertificateSet& operator=(const CertificateSet&) = delete;

  // One SSL_CTX per group: the certificates (at most one per key type) that
  // serve the same names. Group 0 holds the first certificate: the default.
  size_t groups() const { return groups_.size(); }
  // Installs group `g`'s certificates, keys and chains in `ctx`; false (with
  // OpenSSL's error queued) if OpenSSL refuses one.
  bool install(SSL_CTX* ctx, size_t g) const;
  // The certificate entries (indexes into the files) of group `g`.
  const std::vector<size_t>& members(size_t g) const { return groups_[g]; }
  // The group serving `server_name` (any case; exact name first, then a
  // wildcard for its first label), or -1.
  int find(std::string_view server_name) const;
  // Things to tell the operator (an expired certificate, one that serves no
  // name and is not the default).
  const std::vector<std::string>& warnings() const { return warnings_; }
  X509* leaf(size_t entry) const { return certs_[entry].leaf; }
  // The certificates after the leaf in its file (its issuer first, usually).
  STACK_OF(X509)* chain(size_t entry) const { return certs_[entry].chain; }

 private:
  struct Loaded {
    X509* leaf = nullptr;
    STACK_OF(X509)* chain = nullptr;
    EVP_PKEY* key = nullptr;
    int key_type = 0;  // EVP_PKEY_get_base_id
    std::vector<std::string> names;  // lower case; "*.example.com" as written
  };
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };
  using NameMap = std::unordered_map<std::string, int, Hash, std::equal_to<>>;
  void load(const config::CertificateFiles& f, Loaded& out);
  void release();
  void group(const std::vector<config::CertificateFiles>& files);

  std::vector<Loaded> certs_;
  std::vector<std::vector<size_t>> groups_;
  NameMap exact_;     // "api.example.com" -> group
  NameMap wildcard_;  // "example.com" (from "*.example.com") -> group
  std::vector<std::string> warnings_;
};

}  // namespace tlsgate::tls
