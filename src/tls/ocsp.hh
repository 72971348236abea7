// OCSP stapling: each certificate entry's `ocsp_response` file (DER, fetched
// by the operator's tooling; tlsgate never asks a responder itself), checked
// once per tls::Context and handed to OpenSSL for the certificate it chose
// when a client asks. Private to src/tls/.
#pragma once

#include <openssl/ssl.h>
#include <time.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "tlsgate/config.hh"

namespace tlsgate::tls {

class CertificateSet;

class StapleTable {
 public:
  // Reads and checks every entry's response: a successful basic response
  // whose single response names this certificate, signed by its issuer (the
  // chain's certificate that issued the leaf) or a responder the issuer
  // delegated to, thisUpdate/nextUpdate valid now. A response that fails
  // any check, or says "unknown", is a warning and is not stapled; one that
  // says "revoked" is a warning and is stapled (see conf/tlsgate.toml).
  // Never throws for a bad response: the file is the operator tooling's
  // output, and a stale or broken one must not stop a reload.
  StapleTable(const std::vector<config::CertificateFiles>& files, const CertificateSet& certs);
  ~StapleTable();
  StapleTable(const StapleTable&) = delete;
  StapleTable& operator=(const StapleTable&) = delete;

  // Sets the status callback on `ctx` when one of `entries` (a group's
  // certificates) has a response to staple; otherwise leaves `ctx` alone,
  // so a listener without responses pays nothing.
  void install(SSL_CTX* ctx, const std::vector<size_t>& entries);
  // Each names the entry's ocsp_response origin and what is wrong.
  const std::vector<std::string>& warnings() const { return warnings_; }

  // One loaded response. The leaf is CertificateSet's (same pointer as
  // OpenSSL's SSL_get_certificate after SSL_CTX_use_cert_and_key).
  struct Staple {
    X509* leaf = nullptr;
    std::vector<unsigned char> der;
    time_t next_update = 0;  // stapled while now < next_update; no nextUpdate: forever
  };
  // The staples of one SSL_CTX (its group's certificates): the callback's
  // argument, so its scan is over at most one entry per key type.
  struct Group {
    std::vector<const Staple*> staples;
  };

 private:
  std::vector<std::unique_ptr<Staple>> staples_;  // by entry; null: nothing to staple
  std::vector<std::unique_ptr<Group>> groups_;
  std::vector<std::string> warnings_;
};

// The wall clock the status callback compares nextUpdate with (time(), a
// vDSO read); a test replaces it to see a response go stale while running.
using WallClock = time_t (*)();
void set_staple_clock(WallClock clock);

}  // namespace tlsgate::tls
