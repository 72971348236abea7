// DnsWatcher: publishes an address set only when it changed, keeps the old
// one on a failed or empty answer, and respects each name's interval.
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "tlsgate/dns.hh"

namespace tlsgate::upstream {
namespace {

config::SocketAddress addr(const std::string& text) {
  config::SocketAddress a;
  a.text = text;
  a.length = 1;
  return a;
}

config::Config one_name_config(std::chrono::milliseconds refresh) {
  config::Config cfg;
  config::Cluster c;
  c.name = "backend";
  c.dns_refresh = refresh;
  c.endpoints.push_back(addr("10.0.0.1:50051"));
  c.endpoint_name.push_back(-1);
  c.endpoints.push_back(addr("10.0.0.2:50051"));
  c.endpoint_name.push_back(0);
  c.dns_names.push_back({"svc.test", 50051, "svc.test:50051"});
  cfg.clusters.push_back(c);
  return cfg;
}

struct Published {
  uint32_t cluster, name;
  std::vector<std::string> addrs;
};

TEST(DnsWatcher, PublishesOnlyChangesAndKeepsAddressesOnFailure) {
  std::vector<std::string> answer = {"10.0.0.2:50051"};  // what was found at load
  bool fail = false;
  int lookups = 0;
  std::vector<Published> got;
  DnsWatcher w(
      one_name_config(std::chrono::milliseconds(1000)),
      [&](uint32_t c, uint32_t n, std::vector<config::SocketAddress> a) {
        Published p{c, n, {}};
        for (auto& x : a) p.addrs.push_back(x.text);
        got.push_back(p);
      },
      [&](const std::string& host, uint16_t port) {
        ++lookups;
        EXPECT_EQ(host, "svc.test");
        EXPECT_EQ(port, 50051);
        if (fail) throw std::invalid_argument("cannot resolve \"svc.test\": Temporary failure");
        std::vector<config::SocketAddress> out;
        for (auto& t : answer) out.push_back(addr(t));
        return out;
      });
  w.refresh(0);
  EXPECT_EQ(lookups, 1);
  EXPECT_TRUE(got.empty());  // the same single address as at load: nothing to tell

  answer = {"10.0.0.3:50051", "10.0.0.2:50051"};
  w.refresh(500);  // not due yet
  EXPECT_EQ(lookups, 1);
  w.refresh(1000);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].cluster, 0u);
  EXPECT_EQ(got[0].name, 0u);
  EXPECT_EQ(got[0].addrs, (std::vector<std::string>{"10.0.0.3:50051", "10.0.0.2:50051"}));

  answer = {"10.0.0.2:50051", "10.0.0.3:50051"};  // same set, other order
  w.refresh(2000);
  EXPECT_EQ(got.size(), 1u);

  fail = true;
  w.refresh(3000);
  answer = {};
  fail = false;
  w.refresh(4000);
  EXPECT_EQ(got.size(), 1u);  // failure and empty answer keep the last set
  EXPECT_EQ(lookups, 5);

  answer = {"10.0.0.4:50051"};
  w.refresh(5000);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].addrs, std::vector<std::string>{"10.0.0.4:50051"});
}

TEST(DnsWatcher, StaticOnlyConfigStartsNoThread) {
  config::Config cfg;
  config::Cluster c;
  c.endpoints.push_back(addr("10.0.0.1:1"));
  c.endpoint_name.push_back(-1);
  cfg.clusters.push_back(c);
  int lookups = 0;
  DnsWatcher w(
      cfg, [](uint32_t, uint32_t, std::vector<config::SocketAddress>) {},
      [&](const std::string&, uint16_t) {
        ++lookups;
        return std::vector<config::SocketAddress>{};
      });
  w.start();
  w.refresh(0);
  w.stop();
  EXPECT_EQ(lookups, 0);
}

// localhost comes from /etc/hosts: no DNS server is asked.
TEST(ResolveAll, LocalhostGivesLoopbackWithPort) {
  auto a = resolve_all("localhost", 8443);
  ASSERT_FALSE(a.empty());
  for (const auto& x : a) {
    EXPECT_TRUE(x.text == "127.0.0.1:8443" || x.text == "[::1]:8443") << x.text;
    EXPECT_EQ(x.port(), 8443);
  }
}

// Moved from the config tests with the resolver (src/config does no DNS).
TEST(ResolveFirst, RealResolverFindsLocalhost) {
  config::Resolver previous = config::set_resolver(resolve_first);
  config::SocketAddress a = config::parse_address("localhost:50051", true);
  config::set_resolver(previous);
  EXPECT_EQ(a.text, "localhost:50051");
  EXPECT_EQ(a.port(), 50051);
  if (a.family() == AF_INET) {
    EXPECT_TRUE(a.same_address(config::parse_address("127.0.0.1:50051", false)));
    EXPECT_EQ(a.length, sizeof(sockaddr_in));
  } else {
    EXPECT_EQ(a.family(), AF_INET6);
    EXPECT_TRUE(a.same_address(config::parse_address("[::1]:50051", false)));
  }
}

// An endpoint written as a name keeps the name as its text; the resolver
// names the same address "IP:port". They are the same address.
TEST(ResolveFirst, SameAddressComparesAddressesNotTexts) {
  config::Resolver previous = config::set_resolver(resolve_first);
  config::SocketAddress named = config::parse_address("localhost:50051", true);
  config::set_resolver(previous);
  std::vector<config::SocketAddress> all = resolve_all("localhost", 50051);
  ASSERT_FALSE(all.empty());
  EXPECT_NE(named.text, all.front().text);
  EXPECT_TRUE(named.same_address(all.front()));
  EXPECT_FALSE(named.same_address(resolve_all("localhost", 50052).front()));  // port
  EXPECT_TRUE(config::parse_address("127.0.0.1:1", false).same_address(config::parse_address("127.0.0.1:1", false)));
  EXPECT_FALSE(config::parse_address("127.0.0.1:1", false).same_address(config::parse_address("127.0.0.2:1", false)));
  EXPECT_FALSE(config::parse_address("127.0.0.1:1", false).same_address(config::parse_address("[::1]:1", false)));
  EXPECT_TRUE(config::parse_address("[::1]:1", false).same_address(config::parse_address("[0::1]:1", false)));
  EXPECT_FALSE(config::parse_address("[::1]:1", false).same_address(config::parse_address("[::2]:1", false)));
  EXPECT_FALSE(config::SocketAddress{}.same_address(config::SocketAddress{}));
}

}  // namespace
}  // namespace tlsgate::upstream
