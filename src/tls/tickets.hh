// Session-ticket keys of a server context. Private to src/tls/.
#pragma once

#include <openssl/ssl.h>

#include <vector>

#include "tlsgate/config.hh"

namespace tlsgate::tls {

// The keys a context seals (the first) and opens (all) tickets with.
struct TicketKeys {
  std::vector<config::TicketKey> keys;
};

// Once, from init_library().
void init_tickets();
// One random key: what a listener without a ticket_keys file uses, made once
// per process so that a client resumes on whichever shard it lands on.
TicketKeys random_ticket_keys();
// `keys` must outlive `ctx`.
void install_ticket_keys(SSL_CTX* ctx, const TicketKeys* keys);

}  // namespace tlsgate::tls
