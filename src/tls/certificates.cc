#include "certificates.hh"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <map>
#include <memory>
#include <stdexcept>

#include "internal.hh"

namespace tlsgate::tls {

namespace {

// A private key with a passphrase is refused with an error instead of
// OpenSSL's default of asking on the terminal, which would hang a service.
int no_passphrase(char*, int, int, void*) { return -1; }

std::string key_type_name(int type) {
  switch (type) {
    case EVP_PKEY_EC: return "ECDSA";
    case EVP_PKEY_RSA: return "RSA";
    case EVP_PKEY_RSA_PSS: return "RSA-PSS";
    case EVP_PKEY_ED25519: return "Ed25519";
    case EVP_PKEY_ED448: return "Ed448";
    default: return OBJ_nid2sn(type);
  }
}

std::string time_text(const ASN1_TIME* t) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
  if (!bio || ASN1_TIME_print(bio.get(), t) != 1) return "?";
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(std::max(n, 0L)));
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

// The subjectAltName DNS entries of `leaf`, lower case, each once. Names are
// taken from there only, as browsers and gRPC clients check them (the
// subject's CN is not a name since RFC 6125).
std::vector<std::string> dns_names(X509* leaf) {
  std::vector<std::string> names;
  for (const std::string& n : subject_alt_names(leaf, GEN_DNS)) {
    std::string name = lower(n);
    if (!name.empty() && std::find(names.begin(), names.end(), name) == names.end()) names.push_back(std::move(name));
  }
  return names;
}

}  // namespace

std::vector<std::string> subject_alt_names(X509* cert, int type) {
  std::vector<std::string> out;
  auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans == nullptr) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(sans, i);
    if (g->type != type) continue;
    const ASN1_STRING* s = g->d.ia5;  // dNSName and uniformResourceIdentifier are both IA5Strings
    out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), static_cast<size_t>(ASN1_STRING_length(s)));
  }
  GENERAL_NAMES_free(sans);
  return out;
}

CertificateSet::CertificateSet(const std::vector<config::CertificateFiles>& files) {
  certs_.resize(files.size());
  try {
    for (size_t i = 0; i < files.size(); ++i) load(files[i], certs_[i]);
    group(files);
  } catch (...) {
    release();  // no destructor runs for an object whose constructor threw
    throw;
  }
}

CertificateSet::~CertificateSet() { release(); }

void CertificateSet::release() {
  for (Loaded& c : certs_) {
    X509_free(c.leaf);
    sk_X509_pop_free(c.chain, X509_free);
    EVP_PKEY_free(c.key);
    c.leaf = nullptr;
    c.chain = nullptr;
    c.key = nullptr;
  }
}

void CertificateSet::load(const config::CertificateFiles& f, Loaded& out) {
  const std::string cert_where = f.certificate_origin.to_string();
  const std::string key_where = f.private_key_origin.to_string();
  auto fail = [](const std::string& where, const std::string& what) {
    return std::runtime_error(where + ": " + what + ": " + openssl_error_text());
  };
  std::unique_ptr<BIO, decltype(&BIO_free)> cert_bio(BIO_new_file(f.certificate.c_str(), "r"), &BIO_free);
  if (!cert_bio) throw fail(cert_where, "cannot load certificate '" + f.certificate + "'");
  out.leaf = PEM_read_bio_X509_AUX(cert_bio.get(), nullptr, no_passphrase, nullptr);
  if (out.leaf == nullptr) throw fail(cert_where, "cannot load certificate '" + f.certificate + "'");
  out.chain = sk_X509_new_null();
  while (X509* ca = PEM_read_bio_X509(cert_bio.get(), nullptr, no_passphrase, nullptr)) {
    if (out.chain == nullptr || sk_X509_push(out.chain, ca) == 0) {
      X509_free(ca);
      throw fail(cert_where, "cannot load certificate '" + f.certificate + "'");
    }
  }
  // The chain ends at the end of the file; anything else is a broken file.
  const unsigned long end = ERR_peek_last_error();
  if (ERR_GET_LIB(end) == ERR_LIB_PEM && ERR_GET_REASON(end) == PEM_R_NO_START_LINE) ERR_clear_error();
  else if (end != 0) throw fail(cert_where, "cannot load the chain in '" + f.certificate + "'");

  std::unique_ptr<BIO, decltype(&BIO_free)> key_bio(BIO_new_file(f.private_key.c_str(), "r"), &BIO_free);
  if (!key_bio) throw fail(key_where, "cannot load private key '" + f.private_key + "'");
  out.key = PEM_read_bio_PrivateKey(key_bio.get(), nullptr, no_passphrase, nullptr);
  if (out.key == nullptr) throw fail(key_where, "cannot load private key '" + f.private_key + "'");
  if (X509_check_private_key(out.leaf, out.key) != 1) {
    ERR_clear_error();
    throw std::runtime_error(key_where + ": private key '" + f.private_key + "' does not match certificate '" +
                             f.certificate + "'");
  }
  out.key_type = EVP_PKEY_get_base_id(out.key);
  out.names = dns_names(out.leaf);
  const ASN1_TIME* not_after = X509_get0_notAfter(out.leaf);
  if (X509_cmp_current_time(not_after) < 0)
    warnings_.push_back(cert_where + ": certificate '" + f.certificate + "' expired on " + time_text(not_after) +
                        "; clients will refuse it");
}

// Groups certificates by the names they serve: a name's group is the set of
// certificates (one per key type) that carry it, and each distinct set is one
// SSL_CTX, in which OpenSSL picks by the client's signature_algorithms.
void CertificateSet::group(const std::vector<config::CertificateFiles>& files) {
  std::map<std::string, std::vector<size_t>> by_name;  // name -> entries, in file order
  for (size_t i = 0; i < certs_.size(); ++i) {
    for (const std::string& name : certs_[i].names) {
      std::vector<size_t>& entries = by_name[name];
      for (size_t other : entries)
        if (certs_[other].key_type == certs_[i].key_type)
          throw std::runtime_error(files[i].certificate_origin.to_string() + ": '" + name +
                                   "' is also a name of " + files[other].certificate_origin.key + " ('" +
                                   files[other].certificate + "'), with the same key type (" +
                                   key_type_name(certs_[i].key_type) +
                                   "); a name has one certificate per key type");
      entries.push_back(i);
    }
  }
  std::map<std::vector<size_t>, int> index;
  auto group_of = [&](const std::vector<size_t>& entries) {
    auto [it, fresh] = index.emplace(entries, static_cast<int>(groups_.size()));
    if (fresh) groups_.push_back(entries);
    return it->second;
  };
  // Group 0, the default: the first certificate with its partners of other
  // key types for its first name (a client without SNI still gets the key
  // type it can verify).
  group_of(certs_[0].names.empty() ? std::vector<size_t>{0} : by_name[certs_[0].names.front()]);
  for (const auto& [name, entries] : by_name) {
    const int g = group_of(entries);
    if (name.size() > 2 && name.compare(0, 2, "*.") == 0) wildcard_.emplace(name.substr(2), g);
    else if (name.find('*') == std::string::npos) exact_.emplace(name, g);
    else warnings_.push_back("certificate '" + files[entries.front()].certificate + "': name '" + name +
                             "' is ignored: a wildcard may only be a whole first label (*.example.com)");
  }
  for (size_t i = 1; i < certs_.size(); ++i)
    if (certs_[i].names.empty())
      warnings_.push_back(files[i].certificate_origin.to_string() + ": certificate '" + files[i].certificate +
                          "' has no DNS name (subjectAltName) and is not the first: no client can reach it");
}

bool CertificateSet::install(SSL_CTX* ctx, size_t g) const {
  for (size_t entry : groups_[g]) {
    const Loaded& c = certs_[entry];
    if (SSL_CTX_use_cert_and_key(ctx, c.leaf, c.key, c.chain, 1) != 1) return false;
  }
  return true;
}

int CertificateSet::find(std::string_view server_name) const {
  char buf[256];
  if (server_name.empty() || server_name.size() >= sizeof buf) return -1;
  for (size_t i = 0; i < server_name.size(); ++i) {
    const char c = server_name[i];
    buf[i] = c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
  }
  const std::string_view name(buf, server_name.size());
  if (auto it = exact_.find(name); it != exact_.end()) return it->second;
  const size_t dot = name.find('.');
  if (dot == 0 || dot == std::string_view::npos) return -1;
  if (auto it = wildcard_.find(name.substr(dot + 1)); it != wildcard_.end()) return it->second;
  return -1;
}

}  // namespace tlsgate::tls
