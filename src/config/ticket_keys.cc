// The ticket_keys file: one session-ticket key per line, base64 of 80 bytes.
// A parser of a file an operator's tooling writes, so it is strict: a line
// that is not exactly one key is an error naming its line, never skipped.
#include <string.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "tlsgate/config.hh"

namespace tlsgate::config {

TicketKey::~TicketKey() {
  explicit_bzero(name, sizeof name);
  explicit_bzero(hmac, sizeof hmac);
  explicit_bzero(aes, sizeof aes);
}

namespace {

// The value of a base64 digit (RFC 4648 section 4, the standard alphabet),
// or -1.
int digit_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// Decodes padded base64 into `out` (at most `cap` bytes). "" or the problem.
// Padding is required ('=' to a multiple of 4), as `openssl rand -base64`
// writes it, so a truncated copy-paste is caught by its length.
std::string decode_base64(std::string_view in, uint8_t* out, size_t cap, size_t* len) {
  if (in.size() % 4 != 0) return "base64 of " + std::to_string(in.size()) + " characters (not a multiple of 4)";
  size_t n = 0;
  for (size_t i = 0; i < in.size(); i += 4) {
    uint32_t group = 0;
    int pad = 0;
    for (size_t j = 0; j < 4; ++j) {
      const unsigned char c = static_cast<unsigned char>(in[i + j]);
      if (c == '=' && i + 4 == in.size() && j >= 2) {
        ++pad;
        group <<= 6;
        continue;
      }
      const int v = digit_value(c);
      if (v < 0 || pad > 0) return "not base64 (column " + std::to_string(i + j + 1) + ")";
      group = group << 6 | static_cast<uint32_t>(v);
    }
    const uint8_t bytes[3] = {static_cast<uint8_t>(group >> 16), static_cast<uint8_t>(group >> 8),
                              static_cast<uint8_t>(group)};
    for (int b = 0; b < 3 - pad; ++b) {
      if (n == cap) return "more than " + std::to_string(cap) + " bytes";
      out[n++] = bytes[b];
    }
  }
  *len = n;
  return "";
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::vector<TicketKey> parse_ticket_keys(std::string_view text, const std::string& name) {
  std::vector<TicketKey> keys;
  size_t line_no = 0;
  auto fail = [&](const std::string& problem) {
    return std::invalid_argument(name + ":" + std::to_string(line_no) + ": " + problem);
  };
  while (!text.empty()) {
    ++line_no;
    const size_t end = text.find('\n');
    std::string_view line = trim(text.substr(0, end));
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    if (line.empty() || line.front() == '#') continue;
    uint8_t raw[TicketKey::kSize + 3];
    size_t len = 0;
    std::string problem = decode_base64(line, raw, sizeof raw, &len);
    if (problem.empty() && len != TicketKey::kSize)
      problem = std::to_string(len) +
                " bytes, expected 80 (16 name, 32 HMAC, 32 AES), one key per line: openssl rand -base64 80 | tr -d '\\n'";
    if (!problem.empty()) {
      explicit_bzero(raw, sizeof raw);
      throw fail(problem);
    }
    if (keys.size() == kMaxTicketKeys) throw fail("more than " + std::to_string(kMaxTicketKeys) + " keys");
    TicketKey& k = keys.emplace_back();
    std::memcpy(k.name, raw, sizeof k.name);
    std::memcpy(k.hmac, raw + sizeof k.name, sizeof k.hmac);
    std::memcpy(k.aes, raw + sizeof k.name + sizeof k.hmac, sizeof k.aes);
    explicit_bzero(raw, sizeof raw);
    for (size_t i = 0; i + 1 < keys.size(); ++i)
      if (std::memcmp(keys[i].name, k.name, sizeof k.name) == 0)
        throw fail("the same key name (first 16 bytes) as the key on an earlier line");
  }
  if (keys.empty()) {
    line_no = std::max<size_t>(line_no, 1);
    throw fail("no key (one base64 line of 80 random bytes per key: openssl rand -base64 80)");
  }
  return keys;
}

}  // namespace tlsgate::config
