// PROXY protocol v1 and v2 (haproxy's proxy-protocol.txt), parsed from the
// bytes received so far. Every check that can fail on a prefix fails as soon
// as the offending byte is there, so garbage is closed on its first receive
// instead of waiting for the handshake timeout.
#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include "tlsgate/edge.hh"

namespace tlsgate::edge {

namespace {

constexpr uint8_t kV1Signature[] = {'P', 'R', 'O', 'X', 'Y', ' '};
constexpr uint8_t kV2Signature[] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr size_t kV2HeaderSize = 16;

// Address block sizes of the v2 families (src + dst addresses, then ports).
constexpr size_t kV2Inet = 12;
constexpr size_t kV2Inet6 = 36;
constexpr size_t kV2Unix = 216;

enum class Match { No, Prefix, Full };

// Whether data[0, len) is the signature, a strict prefix of it, or neither.
Match match(const uint8_t* sig, size_t sig_len, const uint8_t* data, size_t len) noexcept {
  const size_t n = std::min(sig_len, len);
  if (std::memcmp(sig, data, n) != 0) return Match::No;
  return n == sig_len ? Match::Full : Match::Prefix;
}

ProxyResult incomplete() noexcept { return ProxyResult{}; }

ProxyResult error(ProxyError e) noexcept {
  ProxyResult r;
  r.status = ProxyStatus::Error;
  r.error = e;
  return r;
}

ProxyResult done(uint8_t version, size_t consumed) noexcept {
  ProxyResult r;
  r.status = ProxyStatus::Done;
  r.version = version;
  r.consumed = consumed;
  return r;
}

uint16_t be16(const uint8_t* p) noexcept { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

// ---------------------------------------------------------------- v1

struct Text {
  const uint8_t* p;
  size_t n;
  bool equals(const char* s) const noexcept { return std::strlen(s) == n && std::memcmp(p, s, n) == 0; }
};

// Splits off the field before the next space (or the end). Returns false
// when the field is empty: two spaces in a row, or nothing left.
bool next_field(Text& rest, Text& field) noexcept {
  const auto* space = static_cast<const uint8_t*>(std::memchr(rest.p, ' ', rest.n));
  const size_t n = space != nullptr ? static_cast<size_t>(space - rest.p) : rest.n;
  field = Text{rest.p, n};
  rest = space != nullptr ? Text{space + 1, rest.n - n - 1} : Text{rest.p + n, 0};
  return n > 0;
}

bool parse_v1_address(Text t, uint8_t family, ProxyAddress& out) noexcept {
  char text[46];  // INET6_ADDRSTRLEN: inet_pton needs a NUL-terminated copy
  // An embedded NUL would end inet_pton's string early and pass "1.2.3.4\0junk".
  if (t.n >= sizeof text || std::memchr(t.p, '\0', t.n) != nullptr) return false;
  std::memcpy(text, t.p, t.n);
  text[t.n] = '\0';
  if (::inet_pton(family == 4 ? AF_INET : AF_INET6, text, out.bytes) != 1) return false;
  out.family = family;
  return true;
}

// Decimal 0..65535: digits only (no sign, no space), no leading zero, as
// every sender writes it (%u); anything else is a broken or hostile sender.
bool parse_v1_port(Text t, uint16_t& out) noexcept {
  if (t.n == 0 || t.n > 5 || (t.n > 1 && t.p[0] == '0')) return false;
  uint32_t v = 0;
  for (size_t i = 0; i < t.n; ++i) {
    if (t.p[i] < '0' || t.p[i] > '9') return false;
    v = v * 10 + static_cast<uint32_t>(t.p[i] - '0');
  }
  if (v > 65535) return false;
  out = static_cast<uint16_t>(v);
  return true;
}

// The line without "PROXY " and without CRLF.
ProxyResult parse_v1_line(Text rest, size_t consumed) noexcept {
  Text proto{};
  const bool more = rest.n > 0 && std::memchr(rest.p, ' ', rest.n) != nullptr;
  next_field(rest, proto);
  // UNKNOWN: the sender could not tell; whatever follows is to be ignored.
  if (proto.equals("UNKNOWN")) return done(1, consumed);
  uint8_t family = 0;
  if (proto.equals("TCP4"))
    family = 4;
  else if (proto.equals("TCP6"))
    family = 6;
  else
    return error(ProxyError::V1BadProtocol);
  if (!more) return error(ProxyError::V1BadSyntax);

  Text src{}, dst{}, sport{}, dport{};
  if (!next_field(rest, src) || !next_field(rest, dst) || !next_field(rest, sport) ||
      !next_field(rest, dport))
    return error(ProxyError::V1BadSyntax);
  // next_field consumed a space after dport, or there is more text.
  if (rest.n > 0 || dport.p + dport.n != rest.p) return error(ProxyError::V1BadSyntax);

  ProxyResult r = done(1, consumed);
  if (!parse_v1_address(src, family, r.source) || !parse_v1_address(dst, family, r.destination))
    return error(ProxyError::V1BadAddress);
  if (!parse_v1_port(sport, r.source.port) || !parse_v1_port(dport, r.destination.port))
    return error(ProxyError::V1BadPort);
  return r;
}

ProxyResult parse_v1(const uint8_t* data, size_t len) noexcept {
  // The line ends at the first CR, which must be followed by LF, within
  // kProxyV1MaxLine bytes; a bare LF before it is an error too.
  const size_t limit = std::min(len, kProxyV1MaxLine);
  for (size_t i = sizeof kV1Signature; i < limit; ++i) {
    if (data[i] == '\n') return error(ProxyError::V1BadLineEnd);
    if (data[i] != '\r') continue;
    if (i + 1 >= kProxyV1MaxLine) return error(ProxyError::V1NoLineEnd);
    if (i + 1 >= len) return incomplete();
    if (data[i + 1] != '\n') return error(ProxyError::V1BadLineEnd);
    Text rest{data + sizeof kV1Signature, i - sizeof kV1Signature};
    return parse_v1_line(rest, i + 2);
  }
  return len >= kProxyV1MaxLine ? error(ProxyError::V1NoLineEnd) : incomplete();
}

// ---------------------------------------------------------------- v2

// Each TLV is type (1), length (2, big endian), value; together they must
// fill the rest of the payload exactly.
bool tlvs_consistent(const uint8_t* p, size_t n) noexcept {
  size_t pos = 0;
  while (pos < n) {
    if (n - pos < 3) return false;
    const size_t value = be16(p + pos + 1);
    if (value > n - pos - 3) return false;
    pos += 3 + value;
  }
  return true;
}

// The payload size the family's addresses need (0 for UNSPEC), or an error
// for what a TCP listener cannot have been sent.
ProxyError v2_address_size(uint8_t fam_proto, size_t& size) noexcept {
  const uint8_t family = fam_proto >> 4;
  const uint8_t transport = fam_proto & 0x0f;
  switch (family) {
    case 0:
      size = 0;
      return ProxyError::None;  // UNSPEC: no address, whatever the transport
    case 1:
      size = kV2Inet;
      break;
    case 2:
      size = kV2Inet6;
      break;
    case 3:
      size = kV2Unix;
      return transport == 1 || transport == 2 ? ProxyError::None : ProxyError::V2BadTransport;
    default:
      return ProxyError::V2BadFamily;
  }
  return transport == 1 ? ProxyError::None : ProxyError::V2BadTransport;
}

ProxyResult v2_addresses(const uint8_t* payload, uint8_t fam_proto, size_t total) noexcept {
  ProxyResult r = done(2, total);
  const uint8_t family = fam_proto >> 4;
  if (family == 1) {
    r.source.family = r.destination.family = 4;
    std::memcpy(r.source.bytes, payload, 4);
    std::memcpy(r.destination.bytes, payload + 4, 4);
    r.source.port = be16(payload + 8);
    r.destination.port = be16(payload + 10);
  } else if (family == 2) {
    r.source.family = r.destination.family = 6;
    std::memcpy(r.source.bytes, payload, 16);
    std::memcpy(r.destination.bytes, payload + 16, 16);
    r.source.port = be16(payload + 32);
    r.destination.port = be16(payload + 34);
  }
  return r;  // UNSPEC and AF_UNIX: family 0, keep the socket's peer
}

ProxyResult parse_v2(const uint8_t* data, size_t len) noexcept {
  if (len < 13) return incomplete();
  const uint8_t version = data[12] >> 4;
  const uint8_t command = data[12] & 0x0f;
  if (version != 2) return error(ProxyError::V2BadVersion);
  if (command > 1) return error(ProxyError::V2BadCommand);
  const bool local = command == 0;
  if (len < 14) return incomplete();
  // LOCAL (a balancer's own health check): the spec says to ignore the
  // family and the whole address block, so only PROXY is checked.
  size_t address_size = 0;
  if (!local) {
    ProxyError e = v2_address_size(data[13], address_size);
    if (e != ProxyError::None) return error(e);
  }
  if (len < kV2HeaderSize) return incomplete();
  const size_t payload = be16(data + 14);
  if (payload > kProxyV2MaxPayload) return error(ProxyError::V2TooLarge);
  if (payload < address_size) return error(ProxyError::V2ShortAddresses);
  const size_t total = kV2HeaderSize + payload;
  if (len < total) return incomplete();
  if (local) return done(2, total);
  const uint8_t* p = data + kV2HeaderSize;
  // UNSPEC has no address block, so its TLVs (if any) cannot be located.
  if (data[13] >> 4 != 0 && !tlvs_consistent(p + address_size, payload - address_size))
    return error(ProxyError::V2TlvOverrun);
  return v2_addresses(p, data[13], total);
}

}  // namespace

ProxyResult parse_proxy(ProxyMode mode, const uint8_t* data, size_t len) noexcept {
  if (mode == ProxyMode::Off) return done(0, 0);
  if (len == 0) return incomplete();
  const Match v1 = match(kV1Signature, sizeof kV1Signature, data, len);
  const Match v2 = match(kV2Signature, sizeof kV2Signature, data, len);
  if (v1 == Match::No && v2 == Match::No) {
    // Auto: bytes that cannot start a header (a ClientHello starts with
    // 0x16) mean there is none.
    return mode == ProxyMode::Auto ? done(0, 0) : error(ProxyError::BadSignature);
  }
  // Wait for the whole signature, even of the version the listener refuses,
  // so the log says what the sender meant.
  if (v1 == Match::Prefix || v2 == Match::Prefix) return incomplete();
  if (v1 == Match::Full) return mode == ProxyMode::V2 ? error(ProxyError::V1NotAllowed) : parse_v1(data, len);
  return mode == ProxyMode::V1 ? error(ProxyError::V2NotAllowed) : parse_v2(data, len);
}

size_t format_address(const ProxyAddress& a, char* out, size_t cap) noexcept {
  if (a.family == 0 || cap < 46) return 0;
  if (::inet_ntop(a.family == 4 ? AF_INET : AF_INET6, a.bytes, out, static_cast<socklen_t>(cap)) == nullptr)
    return 0;
  return std::strlen(out);
}

const char* to_string(ProxyStatus s) noexcept {
  switch (s) {
    case ProxyStatus::Incomplete:
      return "incomplete";
    case ProxyStatus::Done:
      return "done";
    case ProxyStatus::Error:
      return "error";
  }
  return "?";
}

const char* to_string(ProxyError e) noexcept {
  switch (e) {
    case ProxyError::None:
      return "none";
    case ProxyError::BadSignature:
      return "not a PROXY protocol header";
    case ProxyError::V1NotAllowed:
      return "v1 header on a v2 listener";
    case ProxyError::V2NotAllowed:
      return "v2 header on a v1 listener";
    case ProxyError::V1NoLineEnd:
      return "v1: no CRLF within 107 bytes";
    case ProxyError::V1BadLineEnd:
      return "v1: CR without LF, or LF without CR";
    case ProxyError::V1BadProtocol:
      return "v1: protocol is not TCP4, TCP6 or UNKNOWN";
    case ProxyError::V1BadSyntax:
      return "v1: wrong fields or spacing";
    case ProxyError::V1BadAddress:
      return "v1: bad address for the protocol";
    case ProxyError::V1BadPort:
      return "v1: bad port";
    case ProxyError::V2BadVersion:
      return "v2: version is not 2";
    case ProxyError::V2BadCommand:
      return "v2: command is not LOCAL or PROXY";
    case ProxyError::V2BadFamily:
      return "v2: unknown address family";
    case ProxyError::V2BadTransport:
      return "v2: transport is not STREAM";
    case ProxyError::V2TooLarge:
      return "v2: header above 2064 bytes";
    case ProxyError::V2ShortAddresses:
      return "v2: length shorter than the addresses";
    case ProxyError::V2TlvOverrun:
      return "v2: TLV runs past the header";
  }
  return "?";
}

}  // namespace tlsgate::edge
