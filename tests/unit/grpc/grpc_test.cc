// grpc-timeout and the health protocol messages, including malformed input.
#include <gtest/gtest.h>

#include <string>

#include "tlsgate/grpc.hh"

namespace tlsgate::grpc {
namespace {

TEST(GrpcTimeout, ParsesEveryUnitRoundingUp) {
  EXPECT_EQ(parse_timeout_ms("1H"), 3'600'000u);
  EXPECT_EQ(parse_timeout_ms("2M"), 120'000u);
  EXPECT_EQ(parse_timeout_ms("3S"), 3'000u);
  EXPECT_EQ(parse_timeout_ms("250m"), 250u);
  EXPECT_EQ(parse_timeout_ms("1500u"), 2u);
  EXPECT_EQ(parse_timeout_ms("1n"), 1u);
  EXPECT_EQ(parse_timeout_ms("0m"), 0u);
  EXPECT_EQ(parse_timeout_ms("99999999H"), 99'999'999ull * 3'600'000);
}

TEST(GrpcTimeout, RejectsMalformed) {
  for (const char* bad : {"", "m", "10", "10x", "-1m", "1.5S", "123456789m", " 1m", "1m ", "1 m", "0x1m"})
    EXPECT_FALSE(parse_timeout_ms(bad).has_value()) << bad;
}

TEST(GrpcTimeout, FormatRoundTrips) {
  char buf[16];
  for (uint64_t ms : {0ull, 1ull, 250ull, 99'999'999ull, 100'000'000ull, 360'000'000'000ull}) {
    size_t n = format_timeout(ms, buf);
    auto back = parse_timeout_ms(std::string_view(buf, n));
    ASSERT_TRUE(back.has_value()) << std::string(buf, n);
    EXPECT_GE(*back, ms);
    EXPECT_LE(*back - ms, ms / 1'000 + 3'600'000) << std::string(buf, n);
  }
  EXPECT_EQ(std::string(buf, format_timeout(300, buf)), "300m");
}

std::string frame(const std::string& msg) {
  std::string f(5, '\0');
  f[4] = static_cast<char>(msg.size());
  return f + msg;
}

std::optional<ServingStatus> parse(const std::string& s, const char** why = nullptr) {
  return parse_health_response(reinterpret_cast<const uint8_t*>(s.data()), s.size(), why);
}

TEST(Health, EncodesRequest) {
  uint8_t buf[64];
  size_t n = encode_health_request("", buf, sizeof buf);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf), n), frame(""));
  n = encode_health_request("pkg.Svc", buf, sizeof buf);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf), n), frame(std::string("\x0a\x07pkg.Svc")));
  EXPECT_EQ(encode_health_request("pkg.Svc", buf, 8), 0u);
  EXPECT_EQ(encode_health_request(std::string(1025, 'a'), buf, sizeof buf), 0u);
}

TEST(Health, ParsesStatuses) {
  EXPECT_EQ(parse(frame("")), ServingStatus::Unknown);
  EXPECT_EQ(parse(frame("\x08\x01")), ServingStatus::Serving);
  EXPECT_EQ(parse(frame("\x08\x02")), ServingStatus::NotServing);
  EXPECT_EQ(parse(frame("\x08\x03")), ServingStatus::ServiceUnknown);
  // Unknown fields of every wire type are skipped; the last status wins.
  EXPECT_EQ(parse(frame(std::string("\x10\x05\x19") + std::string(8, 'x') + "\x22\x02hi\x2d" + std::string(4, 'y') +
                        "\x08\x02\x08\x01")),
            ServingStatus::Serving);
}

TEST(Health, RejectsMalformed) {
  const char* why = nullptr;
  struct Case {
    std::string bytes;
    const char* why;
  } cases[] = {
      {"", "response shorter than a gRPC message header"},
      {std::string("\x01\0\0\0\0", 5), "compressed response (not requested)"},
      {std::string("\x07\0\0\0\0", 5), "bad gRPC message flags"},
      {std::string("\0\0\0\0\x05\x08", 6), "truncated gRPC message"},
      {frame("\x08\x01") + frame(""), "more than one gRPC message"},
      {frame("\x08"), "bad protobuf varint"},
      {frame("\x08\x80\x80"), "bad protobuf varint"},
      {frame("\x80"), "bad protobuf field key"},
      {frame("\x12\x05hi"), "truncated protobuf field"},
      {frame("\x11\x01"), "truncated protobuf field"},
      {frame("\x15\x01"), "truncated protobuf field"},
      {frame("\x0b"), "unsupported protobuf wire type"},
      {frame(std::string("\x00\x01", 2)), "protobuf field number 0"},
      {frame("\x08\x04"), "unknown serving status"},
      {frame("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), "unknown serving status"},
      {frame("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), "bad protobuf varint"},
  };
  for (const Case& c : cases) {
    why = nullptr;
    EXPECT_FALSE(parse(c.bytes, &why).has_value());
    EXPECT_STREQ(why, c.why);
  }
}

}  // namespace
}  // namespace tlsgate::grpc
