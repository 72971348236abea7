// tlsgate-load's command line (tools/load/options.cc): the payload it makes
// is one gRPC frame whose message is a valid protobuf field 1 of exactly the
// asked size, targets are IPv4 or [IPv6] literals, and every bad command
// line is a UsageError naming the flag.
#include "../../../tools/load/options.hh"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tlsgate::load {
namespace {

// Decodes a protobuf varint at `at`; advances `at`.
uint64_t varint(const std::string& s, size_t& at) {
  uint64_t v = 0;
  for (int shift = 0; at < s.size(); shift += 7) {
    const auto b = static_cast<uint8_t>(s[at++]);
    v |= uint64_t{b & 0x7fu} << shift;
    if ((b & 0x80) == 0) break;
  }
  return v;
}

bool parse(std::vector<std::string> args, Options& o) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return parse_options(static_cast<int>(argv.size()), argv.data(), o);
}

TEST(LoadOptions, PayloadIsOneFrameOfOneField1OfTheAskedSize) {
  // Every size up to a few varint-length boundaries (127/128, 16383/16384).
  std::vector<uint64_t> sizes;
  for (uint64_t n = 0; n <= 300; ++n) sizes.push_back(n);
  for (uint64_t n = 16370; n <= 16400; ++n) sizes.push_back(n);
  for (const uint64_t n : sizes) {
    if (n == 1) {
      EXPECT_THROW(make_payload(1), UsageError);
      continue;
    }
    const std::string p = make_payload(n);
    ASSERT_EQ(p.size(), 5 + n) << n;
    EXPECT_EQ(p[0], '\0') << "uncompressed";
    const uint32_t len = (uint32_t{static_cast<uint8_t>(p[1])} << 24) |
                         (uint32_t{static_cast<uint8_t>(p[2])} << 16) |
                         (uint32_t{static_cast<uint8_t>(p[3])} << 8) | uint32_t{static_cast<uint8_t>(p[4])};
    EXPECT_EQ(len, n);
    if (n == 0) continue;
    EXPECT_EQ(p[5], '\x0a') << "field 1, length-delimited";
    size_t at = 6;
    const uint64_t field = varint(p, at);
    EXPECT_EQ(at + field, p.size()) << "the field fills the message exactly: " << n;
    EXPECT_EQ(p.find_first_not_of('x', at), std::string::npos) << n;
  }
}

TEST(LoadOptions, TargetsAreIpv4OrBracketedIpv6Literals) {
  Options v4;
  ASSERT_TRUE(parse({"--target", "127.0.0.1:8443", "--path", "/a.B/C", "--rate", "5"}, v4));
  EXPECT_EQ(v4.addr.ss_family, AF_INET);
  EXPECT_EQ(ntohs(reinterpret_cast<const sockaddr_in*>(&v4.addr)->sin_port), 8443);
  EXPECT_EQ(v4.mode, Mode::Rate);
  EXPECT_EQ(v4.body, std::string(5, '\0')) << "default: an empty message";
  EXPECT_GT(v4.threads, 0u) << "default: online CPUs";

  Options v6;
  ASSERT_TRUE(
      parse({"--target", "[::1]:443", "--path", "/a.B/C", "--connections", "2", "--streams", "3"}, v6));
  EXPECT_EQ(v6.addr.ss_family, AF_INET6);
  EXPECT_EQ(v6.addr_len, sizeof(sockaddr_in6));
  EXPECT_EQ(ntohs(reinterpret_cast<const sockaddr_in6*>(&v6.addr)->sin6_port), 443);
  EXPECT_EQ(v6.mode, Mode::Persistent);
  EXPECT_EQ(v6.streams, 3u);
}

TEST(LoadOptions, HoldAndConnectionsTotal) {
  Options hold;
  ASSERT_TRUE(
      parse({"--target", "127.0.0.1:1", "--path", "/a.B/C", "--hold", "7", "--concurrency", "3"}, hold));
  EXPECT_EQ(hold.mode, Mode::Hold);
  EXPECT_EQ(hold.hold, 7u);
  EXPECT_TRUE(hold.hold_forever) << "no --duration: held until a signal";
  Options timed;
  ASSERT_TRUE(
      parse({"--target", "127.0.0.1:1", "--path", "/a.B/C", "--hold", "7", "--duration", "2"}, timed));
  EXPECT_FALSE(timed.hold_forever);
  Options counted;
  ASSERT_TRUE(parse({"--target", "127.0.0.1:1", "--path", "/a.B/C", "--rate", "max", "--concurrency", "2",
                     "--connections-total", "30", "--marks"},
                    counted));
  EXPECT_EQ(counted.connections_total, 30u);
  EXPECT_TRUE(counted.marks);
}

TEST(LoadOptions, BadCommandLinesNameTheFlag) {
  const std::vector<std::string> base = {"--target", "127.0.0.1:1", "--path", "/a.B/C"};
  const std::vector<std::pair<std::vector<std::string>, std::string>> rows = {
      {{"--rate", "0"}, "--rate"},
      {{"--rate", "-3"}, "--rate"},
      {{"--rate", "1e999"}, "--rate"},
      {{"--rate", "5", "--calls", "0"}, "--calls"},
      {{"--rate", "5", "--calls", "2x"}, "--calls"},
      {{"--rate", "5", "--duration", "0"}, "--duration"},
      {{"--rate", "5", "--warmup", "-1"}, "--warmup"},
      {{"--rate", "5", "--timeout", "nan"}, "--timeout"},
      {{"--rate", "5", "--threads", "0"}, "--threads"},
      {{"--rate", "5", "--expect-bytes", "-1"}, "--expect-bytes"},
      {{"--rate", "5", "--connections", "2"}, "--rate"},
      {{"--connections", "2", "--calls", "3"}, "--calls"},
      {{"--connections", "2", "--resume"}, "--resume"},
      {{"--rate", "5", "--calls-per-second", "3"}, "--calls-per-second"},
      {{"--rate", "5", "--payload-bytes", "3", "--payload-bytes", "1"}, "--payload-bytes"},
      {{"--rate", "5", "--sni", ""}, "--sni"},
      {{"--rate", "max"}, "--rate"},
      {{"--rate", "5", "--tickets-from", "127.0.0.1:2"}, "--tickets-from"},
      {{"--rate", "5", "--warmup", "1", "--tickets-from", "host:2"}, "--tickets-from"},
      {{"--connections", "2", "--warmup", "1", "--tickets-from", "127.0.0.1:2"}, "--tickets-from"},
      {{"--rate", "5", "--concurrency", "0"}, "--concurrency"},
      {{"--connections", "2", "--concurrency", "2"}, "--concurrency"},
      {{"--rate"}, "--rate"},
      {{}, "--rate"},
      {{"--hold", "0"}, "--hold"},
      {{"--hold", "5", "--rate", "5"}, "--rate"},
      {{"--hold", "5", "--calls", "2"}, "--calls"},
      {{"--hold", "5", "--streams", "2"}, "--streams"},
      {{"--hold", "5", "--resume"}, "--resume"},
      {{"--hold", "5", "--warmup", "1"}, "--warmup"},
      {{"--rate", "5", "--connections-total", "0"}, "--connections-total"},
      {{"--rate", "5", "--duration", "2", "--connections-total", "9"}, "--connections-total"},
      {{"--hold", "5", "--connections-total", "9"}, "--connections-total"},
  };
  for (const auto& [extra, flag] : rows) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    Options o;
    try {
      parse(args, o);
      ADD_FAILURE() << flag << ": accepted";
    } catch (const UsageError& e) {
      EXPECT_EQ(std::string(e.what()).rfind(flag, 0), 0u)
          << "'" << e.what() << "' should start with " << flag;
    }
  }
  const std::vector<std::pair<std::string, std::string>> targets = {
      {"localhost:1", "--target"},     {"127.0.0.1", "--target"}, {"127.0.0.1:0", "--target"},
      {"127.0.0.1:70000", "--target"}, {"[::1:1", "--target"},    {"[fe80::zz]:1", "--target"}};
  for (const auto& [target, flag] : targets) {
    Options o;
    EXPECT_THROW(parse({"--target", target, "--path", "/a.B/C", "--rate", "1"}, o), UsageError) << target;
  }
  Options o;
  EXPECT_THROW(parse({"--target", "127.0.0.1:1", "--path", "a.B/C", "--rate", "1"}, o), UsageError)
      << "a path without its leading /";
}

}  // namespace
}  // namespace tlsgate::load
