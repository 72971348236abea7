// The PROXY protocol parser: valid v1/v2/auto headers, each one fed in every
// split a TCP stream could deliver, and the ways a header can be wrong.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "tlsgate/edge.hh"

namespace tlsgate::edge {
namespace {

const std::string kV2Sig("\r\n\r\n\0\r\nQUIT\n", 12);
// The start of a TLS record carrying a ClientHello: what follows a header.
const std::string kTls("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);

std::string be16(size_t v) { return {static_cast<char>(v >> 8), static_cast<char>(v & 0xff)}; }

// A v2 header: signature, version/command, family/transport, then `payload`
// with its length (or `length` when given, to lie about it).
std::string v2(uint8_t ver_cmd, uint8_t fam, const std::string& payload, int length = -1) {
  return kV2Sig + std::string{static_cast<char>(ver_cmd), static_cast<char>(fam)} +
         be16(length < 0 ? payload.size() : static_cast<size_t>(length)) + payload;
}

std::string tlv(uint8_t type, const std::string& value) {
  return std::string(1, static_cast<char>(type)) + be16(value.size()) + value;
}

// 203.0.113.7:4242 -> 192.0.2.1:443
const std::string kInet("\xcb\x00\x71\x07\xc0\x00\x02\x01\x10\x92\x01\xbb", 12);
// [2001:db8::7]:4242 -> [2001:db8::1]:443
const std::string kInet6 = std::string("\x20\x01\x0d\xb8", 4) + std::string(11, '\0') + "\x07" +
                           std::string("\x20\x01\x0d\xb8", 4) + std::string(11, '\0') + "\x01" +
                           std::string("\x10\x92\x01\xbb", 4);

std::string text(const ProxyAddress& a) {
  char buf[64];
  size_t n = format_address(a, buf, sizeof buf);
  return std::string(buf, n);
}

struct Valid {
  const char* name;
  ProxyMode mode;
  std::string header;
  uint8_t version;
  std::string src;  // "" = no address: keep the socket's peer
  uint16_t sport;
  std::string dst;
  uint16_t dport;
};

std::vector<Valid> valid_cases() {
  const std::string max_tlv = tlv(0xe0, std::string(kProxyV2MaxPayload - 12 - 3, 'x'));
  return {
      {"v1_tcp4", ProxyMode::V1, "PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n", 1, "203.0.113.7", 4242,
       "192.0.2.1", 443},
      {"v1_tcp6", ProxyMode::V1, "PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n", 1, "2001:db8::7", 4242,
       "2001:db8::1", 443},
      {"v1_tcp4_ports_0_65535", ProxyMode::V1, "PROXY TCP4 10.0.0.1 10.0.0.2 0 65535\r\n", 1, "10.0.0.1", 0,
       "10.0.0.2", 65535},
      {"v1_tcp6_longest", ProxyMode::V1,
       "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 "
       "65535\r\n",
       1, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535},
      {"v1_tcp6_mapped_v4", ProxyMode::V1, "PROXY TCP6 ::ffff:192.0.2.9 ::1 1 2\r\n", 1, "::ffff:192.0.2.9",
       1, "::1", 2},
      {"v1_unknown", ProxyMode::V1, "PROXY UNKNOWN\r\n", 1, "", 0, "", 0},
      // The spec's worst case: exactly 107 bytes with CRLF.
      {"v1_unknown_107_bytes", ProxyMode::V1,
       "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 "
       "65535\r\n",
       1, "", 0, "", 0},
      {"v1_unknown_anything", ProxyMode::V1, "PROXY UNKNOWN whatever  the balancer\tsays\r\n", 1, "", 0, "",
       0},
      {"v2_proxy_inet", ProxyMode::V2, v2(0x21, 0x11, kInet), 2, "203.0.113.7", 4242, "192.0.2.1", 443},
      {"v2_proxy_inet6", ProxyMode::V2, v2(0x21, 0x21, kInet6), 2, "2001:db8::7", 4242, "2001:db8::1", 443},
      {"v2_proxy_inet_tlvs", ProxyMode::V2,
       v2(0x21, 0x11, kInet + tlv(0x01, "h2") + tlv(0x04, "") + tlv(0xea, "\x01vpce-0123456789abcdef")), 2,
       "203.0.113.7", 4242, "192.0.2.1", 443},
      {"v2_proxy_inet6_tlv", ProxyMode::V2, v2(0x21, 0x21, kInet6 + tlv(0x02, "api.example.com")), 2,
       "2001:db8::7", 4242, "2001:db8::1", 443},
      {"v2_proxy_inet_largest", ProxyMode::V2, v2(0x21, 0x11, kInet + max_tlv), 2, "203.0.113.7", 4242,
       "192.0.2.1", 443},
      {"v2_local", ProxyMode::V2, v2(0x20, 0x00, ""), 2, "", 0, "", 0},
      // LOCAL: the address block, whatever it holds, is skipped unread.
      {"v2_local_with_payload", ProxyMode::V2, v2(0x20, 0x11, kInet + "\xff"), 2, "", 0, "", 0},
      {"v2_local_bad_family_ignored", ProxyMode::V2, v2(0x20, 0xff, "abc"), 2, "", 0, "", 0},
      {"v2_proxy_unspec", ProxyMode::V2, v2(0x21, 0x00, ""), 2, "", 0, "", 0},
      {"v2_proxy_unspec_payload", ProxyMode::V2, v2(0x21, 0x00, "ignored"), 2, "", 0, "", 0},
      {"v2_proxy_unix", ProxyMode::V2, v2(0x21, 0x31, std::string(216, 'u') + tlv(0x03, "abcd")), 2, "", 0,
       "", 0},
      {"auto_v1", ProxyMode::Auto, "PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n", 1, "203.0.113.7", 4242,
       "192.0.2.1", 443},
      {"auto_v2", ProxyMode::Auto, v2(0x21, 0x11, kInet), 2, "203.0.113.7", 4242, "192.0.2.1", 443},
      {"auto_none", ProxyMode::Auto, "", 0, "", 0, "", 0},
  };
}

void expect_same(const ProxyResult& r, const Valid& c, const std::string& where) {
  ASSERT_EQ(r.status, ProxyStatus::Done) << where << ": " << to_string(r.error);
  EXPECT_EQ(r.consumed, c.header.size()) << where;
  EXPECT_EQ(r.version, c.version) << where;
  EXPECT_EQ(text(r.source), c.src) << where;
  EXPECT_EQ(text(r.destination), c.dst) << where;
  if (!c.src.empty()) {
    EXPECT_EQ(r.source.port, c.sport) << where;
    EXPECT_EQ(r.destination.port, c.dport) << where;
  }
}

const uint8_t* bytes(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

TEST(ProxyParse, ValidHeadersLeaveTheTlsBytes) {
  for (const Valid& c : valid_cases()) {
    SCOPED_TRACE(c.name);
    const std::string in = c.header + kTls;
    expect_same(parse_proxy(c.mode, bytes(in), in.size()), c, c.name);
  }
}

// TCP may deliver a header in any number of pieces; the shard calls again
// with everything so far, so every prefix must say Incomplete, and from the
// last header byte on the answer must be the final one.
TEST(ProxyParse, EverySplitIsIncompleteUntilTheHeaderEnds) {
  for (const Valid& c : valid_cases()) {
    SCOPED_TRACE(c.name);
    const std::string in = c.header + kTls;
    // Auto without a header still needs one byte to decide.
    const size_t needed = std::max<size_t>(c.header.size(), 1);
    for (size_t k = 0; k < needed; ++k) {
      ProxyResult r = parse_proxy(c.mode, bytes(in), k);
      EXPECT_EQ(r.status, ProxyStatus::Incomplete)
          << c.name << " at " << k << " bytes: " << to_string(r.error);
    }
    for (size_t k = needed; k <= in.size(); ++k)
      expect_same(parse_proxy(c.mode, bytes(in), k), c, std::string(c.name) + " at " + std::to_string(k));
  }
}

TEST(ProxyParse, OffConsumesNothingWithoutLooking) {
  const std::string hdr = "PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n";
  for (const std::string& in : {std::string(), hdr, kTls}) {
    ProxyResult r = parse_proxy(ProxyMode::Off, bytes(in), in.size());
    EXPECT_EQ(r.status, ProxyStatus::Done);
    EXPECT_EQ(r.consumed, 0u);
    EXPECT_EQ(r.source.family, 0);
  }
}

TEST(ProxyParse, AutoDecidesFromTheFirstBytes) {
  // A ClientHello's first byte settles it: no header, nothing consumed.
  ProxyResult r = parse_proxy(ProxyMode::Auto, bytes(kTls), 1);
  EXPECT_EQ(r.status, ProxyStatus::Done);
  EXPECT_EQ(r.consumed, 0u);
  // "PROX" or the first bytes of the v2 signature could still be a header.
  EXPECT_EQ(parse_proxy(ProxyMode::Auto, bytes("PROX"), 4).status, ProxyStatus::Incomplete);
  EXPECT_EQ(parse_proxy(ProxyMode::Auto, bytes(kV2Sig), 7).status, ProxyStatus::Incomplete);
  // Once the bytes leave both signatures, there is no header.
  r = parse_proxy(ProxyMode::Auto, bytes("PROXZ"), 5);
  EXPECT_EQ(r.status, ProxyStatus::Done);
  EXPECT_EQ(r.consumed, 0u);
}

struct Invalid {
  const char* name;
  ProxyMode mode;
  std::string in;
  ProxyError error;
};

std::vector<Invalid> invalid_cases() {
  const std::string ok4 = " 203.0.113.7 192.0.2.1 4242 443\r\n";
  auto port_line = [](const char* sport) {
    return std::string("PROXY TCP4 203.0.113.7 192.0.2.1 ") + sport + " 443\r\n";
  };
  auto addr_line = [](const char* proto, const std::string& src) {
    return std::string("PROXY ") + proto + " " + src + " 192.0.2.1 4242 443\r\n";
  };
  std::string v2_bit_off = v2(0x21, 0x11, kInet);
  v2_bit_off[7] ^= 0x01;
  return {
      // Not a header where one is required.
      {"v1_tls_instead", ProxyMode::V1, kTls, ProxyError::BadSignature},
      {"v2_tls_instead", ProxyMode::V2, kTls, ProxyError::BadSignature},
      {"v1_http_instead", ProxyMode::V1, "GET / HTTP/1.1\r\n", ProxyError::BadSignature},
      {"v1_lowercase_signature", ProxyMode::V1, "proxy TCP4" + ok4, ProxyError::BadSignature},
      {"v1_signature_without_space", ProxyMode::V1, "PROXYTCP4" + ok4, ProxyError::BadSignature},
      {"v2_signature_bit_off", ProxyMode::V2, v2_bit_off, ProxyError::BadSignature},
      {"auto_v2_signature_bit_off", ProxyMode::Auto, v2_bit_off.substr(0, 8) + "x", ProxyError::None},
      // The other version than the listener's.
      {"v1_on_v2_listener", ProxyMode::V2, "PROXY TCP4" + ok4, ProxyError::V1NotAllowed},
      {"v2_on_v1_listener", ProxyMode::V1, v2(0x21, 0x11, kInet), ProxyError::V2NotAllowed},
      // v1 line ends.
      {"v1_lf_only", ProxyMode::V1, "PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\n", ProxyError::V1BadLineEnd},
      {"v1_cr_without_lf", ProxyMode::V1, "PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\rX",
       ProxyError::V1BadLineEnd},
      {"v1_no_crlf_107", ProxyMode::V1, "PROXY UNKNOWN " + std::string(93, 'a'), ProxyError::V1NoLineEnd},
      {"v1_no_crlf_200", ProxyMode::V1, "PROXY UNKNOWN " + std::string(186, 'a'), ProxyError::V1NoLineEnd},
      {"v1_crlf_at_108", ProxyMode::V1, "PROXY UNKNOWN " + std::string(92, 'a') + "\r\n",
       ProxyError::V1NoLineEnd},
      // v1 protocol and fields.
      {"v1_lowercase_proto", ProxyMode::V1, "PROXY tcp4" + ok4, ProxyError::V1BadProtocol},
      {"v1_tcp5", ProxyMode::V1, "PROXY TCP5" + ok4, ProxyError::V1BadProtocol},
      {"v1_udp4", ProxyMode::V1, "PROXY UDP4" + ok4, ProxyError::V1BadProtocol},
      {"v1_empty_proto", ProxyMode::V1, "PROXY \r\n", ProxyError::V1BadProtocol},
      {"v1_unknownx", ProxyMode::V1, "PROXY UNKNOWNX\r\n", ProxyError::V1BadProtocol},
      {"v1_tab_separator", ProxyMode::V1, "PROXY TCP4\t203.0.113.7 192.0.2.1 4242 443\r\n",
       ProxyError::V1BadProtocol},
      {"v1_tcp4_alone", ProxyMode::V1, "PROXY TCP4\r\n", ProxyError::V1BadSyntax},
      {"v1_double_space", ProxyMode::V1, "PROXY TCP4  203.0.113.7 192.0.2.1 4242 443\r\n",
       ProxyError::V1BadSyntax},
      {"v1_double_space_later", ProxyMode::V1, "PROXY TCP4 203.0.113.7 192.0.2.1  4242 443\r\n",
       ProxyError::V1BadSyntax},
      {"v1_trailing_space", ProxyMode::V1, "PROXY TCP4 203.0.113.7 192.0.2.1 4242 443 \r\n",
       ProxyError::V1BadSyntax},
      {"v1_missing_port", ProxyMode::V1, "PROXY TCP4 203.0.113.7 192.0.2.1 4242\r\n",
       ProxyError::V1BadSyntax},
      {"v1_extra_field", ProxyMode::V1, "PROXY TCP4 203.0.113.7 192.0.2.1 4242 443 1\r\n",
       ProxyError::V1BadSyntax},
      {"v1_tcp4_with_ipv6", ProxyMode::V1, "PROXY TCP4 2001:db8::7 2001:db8::1 4242 443\r\n",
       ProxyError::V1BadAddress},
      {"v1_tcp6_with_ipv4", ProxyMode::V1, "PROXY TCP6 203.0.113.7 192.0.2.1 4242 443\r\n",
       ProxyError::V1BadAddress},
      {"v1_octet_256", ProxyMode::V1, addr_line("TCP4", "203.0.113.256"), ProxyError::V1BadAddress},
      {"v1_three_octets", ProxyMode::V1, addr_line("TCP4", "203.0.113"), ProxyError::V1BadAddress},
      {"v1_leading_zero_octet", ProxyMode::V1, addr_line("TCP4", "203.0.113.07"), ProxyError::V1BadAddress},
      {"v1_hostname", ProxyMode::V1, addr_line("TCP4", "localhost"), ProxyError::V1BadAddress},
      {"v1_ipv6_scope", ProxyMode::V1, addr_line("TCP6", "fe80::1%eth0"), ProxyError::V1BadAddress},
      {"v1_ipv6_two_gaps", ProxyMode::V1, addr_line("TCP6", "1::2::3"), ProxyError::V1BadAddress},
      {"v1_ipv6_too_long", ProxyMode::V1, addr_line("TCP6", "0000:0000:0000:0000:0000:0000:0000:0000:0"),
       ProxyError::V1BadAddress},
      {"v1_nul_in_address", ProxyMode::V1, addr_line("TCP4", std::string("1.2.3.4\0x", 9)),
       ProxyError::V1BadAddress},
      {"v1_port_65536", ProxyMode::V1, port_line("65536"), ProxyError::V1BadPort},
      {"v1_port_99999", ProxyMode::V1, port_line("99999"), ProxyError::V1BadPort},
      {"v1_port_six_digits", ProxyMode::V1, port_line("100000"), ProxyError::V1BadPort},
      {"v1_port_plus", ProxyMode::V1, port_line("+443"), ProxyError::V1BadPort},
      {"v1_port_minus", ProxyMode::V1, port_line("-1"), ProxyError::V1BadPort},
      {"v1_port_leading_zero", ProxyMode::V1, port_line("0443"), ProxyError::V1BadPort},
      {"v1_port_hex", ProxyMode::V1, port_line("0x1bb"), ProxyError::V1BadPort},
      {"v1_port_letters", ProxyMode::V1, port_line("https"), ProxyError::V1BadPort},
      {"v1_bad_dport", ProxyMode::V1, "PROXY TCP4 203.0.113.7 192.0.2.1 4242 70000\r\n",
       ProxyError::V1BadPort},
      // v2 fixed header.
      {"v2_version_1", ProxyMode::V2, v2(0x11, 0x11, kInet), ProxyError::V2BadVersion},
      {"v2_version_3", ProxyMode::V2, v2(0x31, 0x11, kInet), ProxyError::V2BadVersion},
      {"v2_version_0", ProxyMode::Auto, v2(0x01, 0x11, kInet), ProxyError::V2BadVersion},
      {"v2_command_2", ProxyMode::V2, v2(0x22, 0x11, kInet), ProxyError::V2BadCommand},
      {"v2_command_f", ProxyMode::V2, v2(0x2f, 0x11, kInet), ProxyError::V2BadCommand},
      {"v2_family_4", ProxyMode::V2, v2(0x21, 0x41, kInet), ProxyError::V2BadFamily},
      {"v2_inet_dgram", ProxyMode::V2, v2(0x21, 0x12, kInet), ProxyError::V2BadTransport},
      {"v2_inet_unspec_transport", ProxyMode::V2, v2(0x21, 0x10, kInet), ProxyError::V2BadTransport},
      {"v2_inet6_transport_3", ProxyMode::V2, v2(0x21, 0x23, kInet6), ProxyError::V2BadTransport},
      {"v2_unix_unspec_transport", ProxyMode::V2, v2(0x21, 0x30, std::string(216, 'u')),
       ProxyError::V2BadTransport},
      // v2 lengths.
      {"v2_inet_length_11", ProxyMode::V2, v2(0x21, 0x11, kInet.substr(0, 11)), ProxyError::V2ShortAddresses},
      {"v2_inet_length_0", ProxyMode::V2, v2(0x21, 0x11, ""), ProxyError::V2ShortAddresses},
      {"v2_inet6_length_35", ProxyMode::V2, v2(0x21, 0x21, kInet6.substr(0, 35)),
       ProxyError::V2ShortAddresses},
      {"v2_inet6_inet_length", ProxyMode::V2, v2(0x21, 0x21, kInet), ProxyError::V2ShortAddresses},
      {"v2_unix_length_215", ProxyMode::V2, v2(0x21, 0x31, std::string(215, 'u')),
       ProxyError::V2ShortAddresses},
      {"v2_length_2049", ProxyMode::V2, v2(0x21, 0x11, kInet, 2049), ProxyError::V2TooLarge},
      {"v2_length_65535", ProxyMode::V2, v2(0x21, 0x11, kInet, 65535), ProxyError::V2TooLarge},
      {"v2_local_length_65535", ProxyMode::V2, v2(0x20, 0x00, "", 65535), ProxyError::V2TooLarge},
      // v2 TLVs.
      {"v2_tlv_value_overrun", ProxyMode::V2, v2(0x21, 0x11, kInet + tlv(0x01, "h2").substr(0, 4)),
       ProxyError::V2TlvOverrun},
      {"v2_tlv_length_past_end", ProxyMode::V2, v2(0x21, 0x11, kInet + "\x01" + be16(100) + "h2"),
       ProxyError::V2TlvOverrun},
      {"v2_tlv_one_dangling_byte", ProxyMode::V2, v2(0x21, 0x11, kInet + "\x04"), ProxyError::V2TlvOverrun},
      {"v2_tlv_two_dangling_bytes", ProxyMode::V2, v2(0x21, 0x11, kInet + tlv(0x04, "") + "\x04\x00"),
       ProxyError::V2TlvOverrun},
      {"v2_inet6_tlv_overrun", ProxyMode::V2, v2(0x21, 0x21, kInet6 + "\x02" + be16(0xffff)),
       ProxyError::V2TlvOverrun},
  };
}

TEST(ProxyParse, RejectsMalformedHeaders) {
  for (const Invalid& c : invalid_cases()) {
    ProxyResult r = parse_proxy(c.mode, bytes(c.in), c.in.size());
    if (c.error == ProxyError::None) {  // auto: not a header after all
      EXPECT_EQ(r.status, ProxyStatus::Done) << c.name;
      EXPECT_EQ(r.consumed, 0u) << c.name;
      continue;
    }
    EXPECT_EQ(r.status, ProxyStatus::Error) << c.name << ": " << to_string(r.status);
    EXPECT_EQ(r.error, c.error) << c.name << ": got \"" << to_string(r.error) << "\", want \""
                                << to_string(c.error) << "\"";
    // More bytes never turn an error into a header.
    const std::string more = c.in + kTls + std::string(kProxyMaxHeader, 'z');
    ProxyResult longer = parse_proxy(c.mode, bytes(more), more.size());
    EXPECT_EQ(longer.status, ProxyStatus::Error) << c.name;
    EXPECT_EQ(longer.error, c.error) << c.name;
  }
}

// Errors show as soon as the offending byte arrives: garbage must not hold
// a connection (and its buffer) until the handshake timeout.
TEST(ProxyParse, ErrorsAreEarly) {
  EXPECT_EQ(parse_proxy(ProxyMode::V1, bytes(kTls), 1).error, ProxyError::BadSignature);
  EXPECT_EQ(parse_proxy(ProxyMode::V2, bytes("G"), 1).error, ProxyError::BadSignature);
  const std::string big = v2(0x21, 0x11, kInet, 4000);
  EXPECT_EQ(parse_proxy(ProxyMode::V2, bytes(big), 16).error, ProxyError::V2TooLarge);
  const std::string v3 = v2(0x31, 0x11, kInet);
  EXPECT_EQ(parse_proxy(ProxyMode::V2, bytes(v3), 13).error, ProxyError::V2BadVersion);
  const std::string dgram = v2(0x21, 0x12, kInet);
  EXPECT_EQ(parse_proxy(ProxyMode::V2, bytes(dgram), 14).error, ProxyError::V2BadTransport);
  const std::string tcp5 = "PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n";
  EXPECT_EQ(parse_proxy(ProxyMode::V1, bytes(tcp5), tcp5.size()).error, ProxyError::V1BadProtocol);
}

// The shard buffers at most kProxyMaxHeader bytes: with that many, the
// parser always decides.
TEST(ProxyParse, NeverIncompleteAtTheCap) {
  const std::vector<std::string> starts = {"PROXY UNKNOWN ", "PROXY TCP4 ", kV2Sig + "\x21\x11" + be16(2048),
                                           kV2Sig + std::string("\x20\x00", 2) + be16(2048), kV2Sig};
  for (ProxyMode mode : {ProxyMode::V1, ProxyMode::V2, ProxyMode::Auto}) {
    for (const std::string& s : starts) {
      std::string in = s + std::string(kProxyMaxHeader - s.size(), 'a');
      EXPECT_NE(parse_proxy(mode, bytes(in), in.size()).status, ProxyStatus::Incomplete) << s.size();
    }
  }
}

TEST(ProxyParse, FormatsAddresses) {
  char buf[64];
  ProxyAddress none;
  EXPECT_EQ(format_address(none, buf, sizeof buf), 0u);
  ProxyAddress v4;
  v4.family = 4;
  const uint8_t addr[4] = {203, 0, 113, 7};
  std::copy(addr, addr + 4, v4.bytes);
  EXPECT_EQ(format_address(v4, buf, sizeof buf), 11u);
  EXPECT_STREQ(buf, "203.0.113.7");
  EXPECT_EQ(format_address(v4, buf, 45), 0u) << "below INET6_ADDRSTRLEN";
}

TEST(ProxyParse, EveryReasonHasText) {
  for (int e = 0; e <= static_cast<int>(ProxyError::V2TlvOverrun); ++e)
    EXPECT_STRNE(to_string(static_cast<ProxyError>(e)), "?") << e;
  EXPECT_STREQ(to_string(ProxyStatus::Incomplete), "incomplete");
  EXPECT_STREQ(to_string(ProxyStatus::Done), "done");
  EXPECT_STREQ(to_string(ProxyStatus::Error), "error");
}

}  // namespace
}  // namespace tlsgate::edge
