#include "tlsgate/route.hh"

#include <cstring>

namespace tlsgate::route {
namespace {

bool equals_lower(const uint8_t* a, size_t alen, const std::string& lower_b) {
  if (alen != lower_b.size()) return false;
  for (size_t i = 0; i < alen; ++i) {
    uint8_t c = a[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<uint8_t>(c - 'A' + 'a');
    if (c != static_cast<uint8_t>(lower_b[i])) return false;
  }
  return true;
}

}  // namespace

bool authority_matches(const std::string& route, const uint8_t* a, size_t len) {
  if (route.find(':') == std::string::npos || route[0] == '[') {
    size_t host_len = len;
    if (len > 0 && a[0] == '[') {
      const void* close = std::memchr(a, ']', len);
      if (close != nullptr) host_len = static_cast<size_t>(static_cast<const uint8_t*>(close) - a) + 1;
    } else if (const void* colon = std::memchr(a, ':', len)) {
      host_len = static_cast<size_t>(static_cast<const uint8_t*>(colon) - a);
    }
    if (route.find("]:") == std::string::npos && equals_lower(a, host_len, route)) return true;
  }
  return equals_lower(a, len, route);
}

uint32_t Table::cluster_for(Field authority, Field path) const {
  for (const config::Route& r : routes_) {
    if (!r.authority.empty() &&
        (authority.data == nullptr || !authority_matches(r.authority, authority.data, authority.len)))
      continue;
    if (!r.path_prefix.empty() &&
        (path.data == nullptr || path.len < r.path_prefix.size() ||
         std::memcmp(path.data, r.path_prefix.data(), r.path_prefix.size()) != 0))
      continue;
    return static_cast<uint32_t>(r.cluster_index);
  }
  return default_;
}

}  // namespace tlsgate::route
