// The gRPC wire parsers the gateway runs itself (src/grpc): grpc-timeout on
// every request that carries one, the health response on every check.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>

#include "tlsgate/grpc.hh"

namespace {

void BM_ParseGrpcTimeout(benchmark::State& state) {
  const char* values[] = {"250m", "30S", "1500000u", "99999999n"};
  size_t i = 0;
  for (auto _ : state) {
    auto ms = tlsgate::grpc::parse_timeout_ms(values[i++ & 3]);
    benchmark::DoNotOptimize(ms);
  }
}
BENCHMARK(BM_ParseGrpcTimeout);

void BM_FormatGrpcTimeout(benchmark::State& state) {
  char buf[16];
  uint64_t ms = 300;
  for (auto _ : state) {
    benchmark::DoNotOptimize(tlsgate::grpc::format_timeout(ms++, buf));
  }
}
BENCHMARK(BM_FormatGrpcTimeout);

// A gRPC message frame holding HealthCheckResponse{SERVING}, as grpc++ sends it.
void BM_ParseHealthResponse(benchmark::State& state) {
  const std::string frame("\0\0\0\0\x02\x08\x01", 7);
  const auto* p = reinterpret_cast<const uint8_t*>(frame.data());
  for (auto _ : state) {
    auto st = tlsgate::grpc::parse_health_response(p, frame.size(), nullptr);
    benchmark::DoNotOptimize(st);
  }
}
BENCHMARK(BM_ParseHealthResponse);

void BM_EncodeHealthRequest(benchmark::State& state) {
  uint8_t buf[64];
  for (auto _ : state) {
    benchmark::DoNotOptimize(tlsgate::grpc::encode_health_request("tlsgate.test.Echo", buf, sizeof buf));
  }
}
BENCHMARK(BM_EncodeHealthRequest);

}  // namespace

BENCHMARK_MAIN();
