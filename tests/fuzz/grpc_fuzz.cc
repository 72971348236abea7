// Fuzz target for src/grpc/: grpc-timeout values and health-check responses
// are read from backends and clients, so any bytes must give a clean answer.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tlsgate/grpc.hh"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tlsgate::grpc;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto ms = parse_timeout_ms(text)) {
    // Whatever parsed formats back to a value that parses and is not earlier.
    char buf[16];
    size_t n = format_timeout(*ms, buf);
    auto back = parse_timeout_ms(std::string_view(buf, n));
    if (!back || *back < *ms) __builtin_trap();
  }
  const char* why = nullptr;
  auto st = parse_health_response(data, size, &why);
  if (!st && why == nullptr) __builtin_trap();  // every rejection says why
  if (st && static_cast<int>(*st) > 3) __builtin_trap();
  return 0;
}
