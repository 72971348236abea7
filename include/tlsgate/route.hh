// Routing of a request to a cluster: a listener's routes, in order, else its
// default cluster. Pure (no IO, no state between calls); src/h2 asks it once
// per request, with the request's :authority (or host) and :path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tlsgate/config.hh"

namespace tlsgate::route {

// A request field's bytes; data == nullptr when the request has no such field.
struct Field {
  const uint8_t* data = nullptr;
  size_t len = 0;
};

// A route's authority without a port matches the request's host whatever its
// port; with a port, host and port must both match. Case-insensitive
// (`route` is lower case, as config keeps it).
bool authority_matches(const std::string& route, const uint8_t* a, size_t len);

class Table {
 public:
  Table() = default;
  // Cluster indices are the configuration's (config::Route::cluster_index).
  Table(uint32_t default_cluster, std::vector<config::Route> routes)
      : default_(default_cluster), routes_(std::move(routes)) {}
  // The first route whose authority and path prefix match, else the default.
  uint32_t cluster_for(Field authority, Field path) const;
  bool empty() const { return routes_.empty(); }
  uint32_t default_cluster() const { return default_; }

 private:
  uint32_t default_ = 0;
  std::vector<config::Route> routes_;
};

}  // namespace tlsgate::route
