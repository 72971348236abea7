// tlsgate-load against tlsgate's own responder clusters (issue 20): the two
// tools a load test is built from, used together as the README shows. The
// echo responder returns each request message, so --expect-bytes of the
// payload size holds for every call; a "status" responder answering 13 fails
// the run with every call counted under 13; the gateway's /metrics count
// the same calls tlsgate-load reports, under the responder's cluster.
#include <string>
#include <vector>

#include "fixtures.hh"
#include "load_report.hh"

namespace tlsgate::itest {
namespace {

constexpr const char* kResponders = R"(
[[clusters]]
name = "target"
respond = "echo"

[[clusters]]
name = "failing"
respond = "status"
status = 13
message = "load test says no"

[[clusters]]
name = "sized"
respond = "status"
response_bytes = 1000
)";

constexpr const char* kRoutes = R"(
[[listeners.routes]]
path_prefix = "/load.Failing/"
cluster = "failing"
[[listeners.routes]]
path_prefix = "/load.Sized/"
cluster = "sized"
)";

class LoadResponder : public GatewayTest {
 protected:
  void configure(GatewayConfig& c) override {
    c.cluster = "target";
    c.clusters = kResponders;
    c.listener_tail = kRoutes;
    c.admin = true;
  }

  RunResult load(const std::string& path, std::vector<std::string> args) {
    args.push_back("--json");
    return run_load(gw_->target(), path, std::move(args), dir_->path(), 30s);
  }

  double streams(const std::string& cluster, const std::string& status) {
    const std::string page = http_request(gw_->admin_port(), "/metrics").body;
    return std::max(0.0, metric(page, "tlsgate_streams_total",
                                {"cluster=\"" + cluster + "\"", "grpc_status=\"" + status + "\""}));
  }

  // The gateway counts a stream when it ends; the client may have its
  // answer a moment before that.
  bool streams_reach(const std::string& cluster, const std::string& status, double want) {
    return eventually([&] { return streams(cluster, status) >= want; }, 5s);
  }
};

std::string describe(const RunResult& r) {
  return "status " + r.status.to_string() + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

TEST_F(LoadResponder, RateModeAgainstTheEchoResponder) {
  RunResult r = load("/load.Echo/Unary",
                     {"--rate", "100", "--duration", "2", "--calls", "2", "--payload-bytes", "100",
                      "--expect-bytes", "100"});
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << describe(r);
  EXPECT_EQ(json_number(r.out, "\"connections\":{\"started\":"), 200) << r.out;
  EXPECT_EQ(json_number(r.out, "\"calls\":{\"ok\":"), 400) << r.out;
  EXPECT_EQ(json_number(r.out, "\"grpc_status\":{\"0\":"), 400) << r.out;
  ASSERT_TRUE(streams_reach("target", "0", 400));
  EXPECT_EQ(streams("target", "0"), 400) << "the gateway answered each call once, itself";
  // 200 ordinary connections: their prefaces are no glitches.
  const std::string page = http_request(gw_->admin_port(), "/metrics").body;
  EXPECT_LE(metric(page, "tlsgate_h2_glitches_total", {"kind=\"settings\""}), 0) << page;
}

TEST_F(LoadResponder, PersistentModeAgainstASizedAnswer) {
  RunResult r = load("/load.Sized/Unary", {"--connections", "2", "--streams", "4", "--calls-per-second", "200",
                                           "--duration", "2", "--expect-bytes", "1000"});
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << describe(r);
  EXPECT_EQ(json_number(r.out, "\"calls\":{\"ok\":"), 400) << r.out;
  EXPECT_EQ(json_number(r.out, "\"connections\":{\"started\":"), 2) << r.out;
  ASSERT_TRUE(streams_reach("sized", "0", 400));
  EXPECT_EQ(streams("sized", "0"), 400);
}

TEST_F(LoadResponder, AResponderAnsweringInternalFailsTheRun) {
  RunResult r = load("/load.Failing/Unary", {"--rate", "20", "--duration", "1"});
  ASSERT_TRUE(r.status.exited) << describe(r);
  EXPECT_EQ(r.status.code, 1) << describe(r);
  EXPECT_EQ(json_number(r.out, "\"grpc_status\":{\"13\":"), 20) << r.out;
  EXPECT_EQ(json_number(r.out, "\"calls\":{\"ok\":"), 0) << r.out;
  ASSERT_TRUE(streams_reach("failing", "13", 20));
  EXPECT_EQ(streams("failing", "13"), 20);
}

}  // namespace
}  // namespace tlsgate::itest
