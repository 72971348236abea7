// The PROXY protocol parser (src/edge): it runs once per new connection on
// a listener with proxy_protocol set, before the TLS handshake.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>

#include "tlsgate/edge.hh"

namespace {

using tlsgate::edge::ProxyMode;

void parse(benchmark::State& state, ProxyMode mode, const std::string& header) {
  // A ClientHello's first bytes follow, as on the wire.
  const std::string in = header + std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
  const auto* p = reinterpret_cast<const uint8_t*>(in.data());
  for (auto _ : state) {
    auto r = tlsgate::edge::parse_proxy(mode, p, in.size());
    benchmark::DoNotOptimize(r);
  }
}

std::string v2(uint8_t family, const std::string& payload) {
  return std::string("\r\n\r\n\0\r\nQUIT\n", 12) + std::string{'\x21', static_cast<char>(family)} +
         std::string{static_cast<char>(payload.size() >> 8), static_cast<char>(payload.size() & 0xff)} +
         payload;
}

void BM_ProxyV1Tcp4(benchmark::State& state) {
  parse(state, ProxyMode::V1, "PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n");
}
BENCHMARK(BM_ProxyV1Tcp4);

void BM_ProxyV1Tcp6(benchmark::State& state) {
  parse(state, ProxyMode::V1, "PROXY TCP6 2001:db8:85a3::8a2e:370:7334 2001:db8::1 4242 443\r\n");
}
BENCHMARK(BM_ProxyV1Tcp6);

void BM_ProxyV2Inet(benchmark::State& state) {
  parse(state, ProxyMode::V2, v2(0x11, std::string("\xcb\x00\x71\x07\xc0\x00\x02\x01\x10\x92\x01\xbb", 12)));
}
BENCHMARK(BM_ProxyV2Inet);

// What an AWS NLB sends with its VPC endpoint id TLV.
void BM_ProxyV2Inet6Tlv(benchmark::State& state) {
  std::string addrs(32, '\x20');
  addrs += std::string("\x10\x92\x01\xbb", 4);
  const std::string id = "\x01vpce-0123456789abcdef0";
  const std::string tlv = std::string{'\xea', 0, static_cast<char>(id.size())} + id;
  parse(state, ProxyMode::V2, v2(0x21, addrs + tlv));
}
BENCHMARK(BM_ProxyV2Inet6Tlv);

}  // namespace

BENCHMARK_MAIN();
