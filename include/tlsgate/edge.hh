// The edge of a downstream connection, before TLS: the PROXY protocol header
// (v1 text, v2 binary; haproxy's proxy-protocol.txt) that a load balancer in
// front may write to tell us who the client really is.
//
// parse_proxy() is a pure function in the h2o style: it keeps no state, so
// the shard calls it again with every byte received so far until it answers
// Done or Error. It never allocates and never reads past `len`. Untrusted
// input: fuzzed by tests/fuzz/proxy_fuzz.cc.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tlsgate::edge {

// What a listener accepts before the TLS ClientHello.
enum class ProxyMode : uint8_t {
  Off,   // nothing: parse_proxy() answers Done, 0 bytes, without looking
  V1,    // a v1 text header, required
  V2,    // a v2 binary header, required
  Auto,  // v1, v2 or no header at all, decided by the first byte
};

// Limits. A v1 line is at most 107 bytes including CRLF (the spec's bound).
// A v2 header is 16 bytes plus a payload whose 16-bit length could say 64 KiB;
// we accept at most 2048 bytes of payload: the addresses take at most 216
// (AF_UNIX), the rest is TLVs, which balancers use for a few short fields
// (an AWS VPC endpoint id, an ALPN, a few SSL details). So the shard never
// buffers more than kProxyMaxHeader (2064) bytes for one connection, and
// parse_proxy() never answers Incomplete once it has that many.
inline constexpr size_t kProxyV1MaxLine = 107;
inline constexpr size_t kProxyV2MaxPayload = 2048;
inline constexpr size_t kProxyMaxHeader = 16 + kProxyV2MaxPayload;

enum class ProxyStatus : uint8_t {
  Incomplete,  // a prefix of a possibly valid header: call again with more
  Done,        // `consumed` bytes were the header (0: none, mode Off/Auto)
  Error,       // not a header we accept: close the connection
};
const char* to_string(ProxyStatus s) noexcept;

// Why a header was refused. to_string() gives a short reason for logs.
enum class ProxyError : uint8_t {
  None,
  BadSignature,      // neither "PROXY " nor the v2 signature
  V1NotAllowed,      // a v1 header on a v2-only listener
  V2NotAllowed,      // a v2 header on a v1-only listener
  V1NoLineEnd,       // no CRLF within 107 bytes
  V1BadLineEnd,      // a CR not followed by LF, or a bare LF
  V1BadProtocol,     // not TCP4, TCP6 or UNKNOWN (case matters)
  V1BadSyntax,       // wrong number of fields, or not single spaces
  V1BadAddress,      // not an address of the protocol's family
  V1BadPort,         // not 0..65535 in decimal, no sign, no leading zero
  V2BadVersion,      // version nibble other than 2
  V2BadCommand,      // command other than LOCAL (0) and PROXY (1)
  V2BadFamily,       // address family above AF_UNIX (3)
  V2BadTransport,    // an INET/INET6 header not over STREAM
  V2TooLarge,        // payload length above kProxyV2MaxPayload
  V2ShortAddresses,  // payload shorter than the family's addresses
  V2TlvOverrun,      // a TLV runs past the end of the payload
};
const char* to_string(ProxyError e) noexcept;

// An address from the header. family 0 means "the header carries no usable
// address" (v1 UNKNOWN, v2 LOCAL, UNSPEC or AF_UNIX, or no header): keep the
// socket's peer address.
struct ProxyAddress {
  uint8_t family = 0;      // 0, 4 (IPv4) or 6 (IPv6)
  uint8_t bytes[16] = {};  // network order; 4 bytes used for IPv4
  uint16_t port = 0;       // host order
};

struct ProxyResult {
  ProxyStatus status = ProxyStatus::Incomplete;
  ProxyError error = ProxyError::None;  // set when status == Error
  uint8_t version = 0;                  // 1 or 2 when a header was parsed, else 0
  size_t consumed = 0;                  // header bytes, when status == Done
  ProxyAddress source;                  // the client, as the balancer saw it
  ProxyAddress destination;             // the address the client connected to
};

// Parses the start of a connection's bytes. `data` is everything received so
// far (the shard appends and calls again); bytes after the header, such as
// the TLS ClientHello, are not consumed.
ProxyResult parse_proxy(ProxyMode mode, const uint8_t* data, size_t len) noexcept;

// Writes the address as text (inet_ntop: "203.0.113.7", "2001:db8::1") and a
// NUL to `out`; returns the length, or 0 when family is 0 or `cap` is below
// 46 (INET6_ADDRSTRLEN).
size_t format_address(const ProxyAddress& a, char* out, size_t cap) noexcept;

}  // namespace tlsgate::edge
