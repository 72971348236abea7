// Session tickets sealed and opened with the listener's ticket keys: the
// first key seals, every key opens. Only OpenSSL's primitives are used
// (AES-256-CBC and HMAC-SHA256, as OpenSSL's built-in ticket keys do); this
// callback only chooses the key.
#include "tickets.hh"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cstring>
#include <stdexcept>

namespace tlsgate::tls {

namespace {

int g_keys_index = -1;          // SSL_CTX ex_data slot holding the context's TicketKeys
EVP_CIPHER* g_cipher = nullptr;  // fetched once: a fetch per ticket costs a lock and a lookup

int set_hmac_key(EVP_MAC_CTX* hctx, const config::TicketKey& k) {
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, const_cast<uint8_t*>(k.hmac), sizeof k.hmac),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end(),
  };
  return EVP_MAC_CTX_set_params(hctx, params);
}

// OpenSSL's contract: 1 = use this key, 2 = the ticket is good and a new
// one is to be issued, 0 = unknown key (a full handshake), -1 = error. A
// ticket under an older key is renewed; so is every TLS 1.3 ticket, as
// OpenSSL's built-in keys do: a TLS 1.3 client uses a ticket once, and one
// that got no new ticket on a resumed connection pays a full handshake next.
int ticket_key_cb(SSL* ssl, unsigned char name[16], unsigned char* iv, EVP_CIPHER_CTX* cctx, EVP_MAC_CTX* hctx,
                  int enc) {
  const auto* keys =
      static_cast<const TicketKeys*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), g_keys_index));
  if (keys == nullptr || keys->keys.empty()) return -1;
  if (enc == 1) {
    const config::TicketKey& k = keys->keys.front();
    const int iv_len = EVP_CIPHER_get_iv_length(g_cipher);
    if (RAND_bytes(iv, iv_len) != 1) return -1;
    std::memcpy(name, k.name, sizeof k.name);
    if (EVP_EncryptInit_ex2(cctx, g_cipher, k.aes, iv, nullptr) != 1) return -1;
    return set_hmac_key(hctx, k) == 1 ? 1 : -1;
  }
  for (size_t i = 0; i < keys->keys.size(); ++i) {
    const config::TicketKey& k = keys->keys[i];
    if (std::memcmp(name, k.name, sizeof k.name) != 0) continue;
    if (set_hmac_key(hctx, k) != 1 || EVP_DecryptInit_ex2(cctx, g_cipher, k.aes, iv, nullptr) != 1) return -1;
    return i == 0 && SSL_version(ssl) != TLS1_3_VERSION ? 1 : 2;
  }
  return 0;
}

}  // namespace

void init_tickets() {
  g_keys_index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  g_cipher = EVP_CIPHER_fetch(nullptr, "AES-256-CBC", nullptr);
  if (g_keys_index < 0 || g_cipher == nullptr) throw std::runtime_error("cannot set up session ticket keys");
}

TicketKeys random_ticket_keys() {
  TicketKeys t;
  config::TicketKey& k = t.keys.emplace_back();
  if (RAND_bytes(k.name, sizeof k.name) != 1 || RAND_bytes(k.hmac, sizeof k.hmac) != 1 ||
      RAND_bytes(k.aes, sizeof k.aes) != 1)
    throw std::runtime_error("RAND_bytes for session ticket keys failed");
  return t;
}

void install_ticket_keys(SSL_CTX* ctx, const TicketKeys* keys) {
  SSL_CTX_set_ex_data(ctx, g_keys_index, const_cast<TicketKeys*>(keys));
  SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key_cb);
}

}  // namespace tlsgate::tls
