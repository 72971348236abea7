// gRPC wire details the gateway reads or writes itself: grpc-timeout values,
// the 5-byte message framing, and the health protocol's two messages
// (grpc.health.v1.HealthCheckRequest / HealthCheckResponse) encoded by hand,
// so no protobuf runtime is needed. Every parser here has a fuzz target
// (tests/fuzz/grpc_fuzz.cc) and takes untrusted bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace tlsgate::grpc {

// "grpc-timeout" value: 1 to 8 ASCII digits and a unit (H M S m u n).
// Returns milliseconds, rounded up (a deadline never moves earlier than the
// client asked, "1n" is 1 ms), or nullopt when malformed.
std::optional<uint64_t> parse_timeout_ms(std::string_view value);

// Writes `ms` as a grpc-timeout value ("250m", "3600S" when 8 digits of
// milliseconds are not enough) to `out` (at least 10 bytes). Returns length.
size_t format_timeout(uint64_t ms, char* out);

enum class ServingStatus : uint8_t { Unknown = 0, Serving = 1, NotServing = 2, ServiceUnknown = 3 };
const char* to_string(ServingStatus s);

// One gRPC message frame carrying HealthCheckRequest{service}. Returns the
// length written, or 0 if `cap` is too small (service at most 1024 bytes needs
// 1034).
size_t encode_health_request(std::string_view service, uint8_t* out, size_t cap);

// The response body (gRPC framing + HealthCheckResponse). nullopt when the
// bytes are not exactly one uncompressed message holding a valid response;
// `why` then names the problem.
std::optional<ServingStatus> parse_health_response(const uint8_t* data, size_t len, const char** why);

}  // namespace tlsgate::grpc
