#include "tlsgate/grpc.hh"

#include <cstring>

namespace tlsgate::grpc {

std::optional<uint64_t> parse_timeout_ms(std::string_view v) {
  if (v.size() < 2 || v.size() > 9) return std::nullopt;
  uint64_t n = 0;
  for (size_t i = 0; i + 1 < v.size(); ++i) {
    if (v[i] < '0' || v[i] > '9') return std::nullopt;
    n = n * 10 + static_cast<uint64_t>(v[i] - '0');
  }
  // 8 digits at most, so none of these products overflows.
  switch (v.back()) {
    case 'H': return n * 3'600'000;
    case 'M': return n * 60'000;
    case 'S': return n * 1'000;
    case 'm': return n;
    case 'u': return (n + 999) / 1'000;
    case 'n': return (n + 999'999) / 1'000'000;
    default: return std::nullopt;
  }
}

size_t format_timeout(uint64_t ms, char* out) {
  char unit = 'm';
  uint64_t n = ms;
  if (n > 99'999'999) {
    n = (ms + 999) / 1'000;
    unit = 'S';
    if (n > 99'999'999) {
      n = (n + 3'599) / 3'600;
      unit = 'H';
      if (n > 99'999'999) n = 99'999'999;
    }
  }
  char digits[20];
  size_t d = 0;
  do {
    digits[d++] = static_cast<char>('0' + n % 10);
    n /= 10;
  } while (n > 0);
  size_t len = 0;
  while (d > 0) out[len++] = digits[--d];
  out[len++] = unit;
  return len;
}

const char* to_string(ServingStatus s) {
  switch (s) {
    case ServingStatus::Unknown: return "UNKNOWN";
    case ServingStatus::Serving: return "SERVING";
    case ServingStatus::NotServing: return "NOT_SERVING";
    case ServingStatus::ServiceUnknown: return "SERVICE_UNKNOWN";
  }
  return "?";
}

namespace {

size_t put_varint(uint64_t v, uint8_t* out) {
  size_t n = 0;
  while (v >= 0x80) {
    out[n++] = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  out[n++] = static_cast<uint8_t>(v);
  return n;
}

// Reads a protobuf varint (at most 10 bytes); false when truncated or too long.
bool get_varint(const uint8_t*& p, const uint8_t* end, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    if (p == end) return false;
    uint8_t b = *p++;
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) return true;
  }
  return false;
}

}  // namespace

size_t encode_health_request(std::string_view service, uint8_t* out, size_t cap) {
  if (service.size() > 1024) return 0;
  uint8_t field[1040];
  size_t f = 0;
  if (!service.empty()) {  // proto3: an empty string is not written
    field[f++] = 0x0a;     // field 1, length-delimited
    f += put_varint(service.size(), field + f);
    std::memcpy(field + f, service.data(), service.size());
    f += service.size();
  }
  if (cap < 5 + f) return 0;
  out[0] = 0;  // not compressed
  out[1] = static_cast<uint8_t>(f >> 24);
  out[2] = static_cast<uint8_t>(f >> 16);
  out[3] = static_cast<uint8_t>(f >> 8);
  out[4] = static_cast<uint8_t>(f);
  std::memcpy(out + 5, field, f);
  return 5 + f;
}

std::optional<ServingStatus> parse_health_response(const uint8_t* data, size_t len, const char** why) {
  const char* dummy;
  if (why == nullptr) why = &dummy;
  if (len < 5) {
    *why = "response shorter than a gRPC message header";
    return std::nullopt;
  }
  if (data[0] != 0) {
    *why = data[0] == 1 ? "compressed response (not requested)" : "bad gRPC message flags";
    return std::nullopt;
  }
  uint64_t msg_len = (uint64_t{data[1]} << 24) | (uint64_t{data[2]} << 16) | (uint64_t{data[3]} << 8) | data[4];
  if (msg_len != len - 5) {
    *why = msg_len > len - 5 ? "truncated gRPC message" : "more than one gRPC message";
    return std::nullopt;
  }
  const uint8_t* p = data + 5;
  const uint8_t* end = data + len;
  uint64_t status = 0;  // proto3 default: UNKNOWN
  while (p < end) {
    uint64_t key;
    if (!get_varint(p, end, key)) {
      *why = "bad protobuf field key";
      return std::nullopt;
    }
    uint64_t field = key >> 3;
    uint64_t v;
    switch (key & 7) {
      case 0:
        if (!get_varint(p, end, v)) {
          *why = "bad protobuf varint";
          return std::nullopt;
        }
        if (field == 1) status = v;
        break;
      case 1:
        if (end - p < 8) {
          *why = "truncated protobuf field";
          return std::nullopt;
        }
        p += 8;
        break;
      case 2:
        if (!get_varint(p, end, v) || v > static_cast<uint64_t>(end - p)) {
          *why = "truncated protobuf field";
          return std::nullopt;
        }
        p += v;
        break;
      case 5:
        if (end - p < 4) {
          *why = "truncated protobuf field";
          return std::nullopt;
        }
        p += 4;
        break;
      default:
        *why = "unsupported protobuf wire type";
        return std::nullopt;
    }
    if (field == 0) {
      *why = "protobuf field number 0";
      return std::nullopt;
    }
  }
  if (status > 3) {
    *why = "unknown serving status";
    return std::nullopt;
  }
  return static_cast<ServingStatus>(status);
}

}  // namespace tlsgate::grpc
