// Fuzz target for src/edge/: the PROXY protocol header is the first thing a
// stranger's bytes reach, before TLS. Beyond "no crash", it checks the
// contract the shard relies on when it re-parses the bytes of every receive.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "tlsgate/edge.hh"

namespace {

using namespace tlsgate::edge;

bool same(const ProxyAddress& a, const ProxyAddress& b) {
  return a.family == b.family && a.port == b.port && std::memcmp(a.bytes, b.bytes, sizeof a.bytes) == 0;
}

bool same(const ProxyResult& a, const ProxyResult& b) {
  return a.status == b.status && a.error == b.error && a.version == b.version && a.consumed == b.consumed &&
         same(a.source, b.source) && same(a.destination, b.destination);
}

void check(ProxyMode mode, const uint8_t* data, size_t size) {
  const ProxyResult r = parse_proxy(mode, data, size);
  // The shard buffers at most kProxyMaxHeader bytes: it needs an answer then.
  if (r.status == ProxyStatus::Incomplete && size >= kProxyMaxHeader) __builtin_trap();
  if (r.status == ProxyStatus::Error && r.error == ProxyError::None) __builtin_trap();
  if (r.status != ProxyStatus::Error && r.error != ProxyError::None) __builtin_trap();
  if (r.status != ProxyStatus::Done) return;
  if (r.consumed > size || r.consumed > kProxyMaxHeader) __builtin_trap();
  if (r.source.family != r.destination.family) __builtin_trap();
  if (r.source.family != 0 && r.source.family != 4 && r.source.family != 6) __builtin_trap();
  if (r.version == 1 && r.consumed > kProxyV1MaxLine) __builtin_trap();
  if ((r.version == 0) != (r.consumed == 0)) __builtin_trap();
  // Bytes after a header do not change the answer, and one byte less of it
  // is not enough (the stream may have been cut right there).
  if (r.consumed > 0) {
    if (!same(parse_proxy(mode, data, r.consumed), r)) __builtin_trap();
    if (parse_proxy(mode, data, r.consumed - 1).status != ProxyStatus::Incomplete) __builtin_trap();
  }
  char text[64];
  if ((format_address(r.source, text, sizeof text) == 0) != (r.source.family == 0)) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The first byte picks the listener's mode, so one corpus covers all four.
  if (size == 0) return 0;
  const auto mode = static_cast<ProxyMode>(data[0] & 3);
  check(mode, data + 1, size - 1);
  return 0;
}
