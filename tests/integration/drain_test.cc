// Drain that fits an L4 balancer (issue 18): after SIGTERM the listeners keep
// accepting for [drain] delay, then every client connection gets the
// two-step GOAWAY and its streams [drain] timeout; under steady load no call
// that started before the listeners closed fails. A second SIGTERM stops at
// once.
#include <chrono>
#include <string>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

class Drain : public GatewayTest {
 protected:
  void configure(GatewayConfig& cfg) override { cfg.drain = "delay = \"2s\"\ntimeout = \"10s\""; }
};

TEST_F(Drain, DelayServesNewCallsThenGoawayLetsRunningCallsFinish) {
  // Each call waits 50 ms at the backend: some are always in flight.
  const std::string target = gw_->target();
  Load load([&](int) { return tls_channel(target); }, 8, 50);  // 8 connections
  ASSERT_TRUE(eventually([&] { return load.total() >= 50; }, 20s)) << "the load did not start";
  const Clock::time_point term = Clock::now();
  gw_->process().signal(SIGTERM);

  // During the delay a new connection is accepted and served.
  std::this_thread::sleep_for(500ms);
  auto late_stub = Echo::NewStub(tls_channel(gw_->target()));
  UnaryOutcome during = unary(*late_stub, "during the delay", 50);
  EXPECT_TRUE(during.status.ok()) << status_str(during.status);

  const ExitStatus st = gw_->wait_exit(20s);
  EXPECT_TRUE(st.exited && st.code == 0) << st.to_string() << "\n" << gw_->process().stderr_text();
  load.stop();
  // The listeners closed 2 s after SIGTERM; allow the test's own clock some
  // slack before that instant.
  const Clock::time_point closed = term + 2s - 200ms;
  uint64_t before = 0, failed_before = 0, in_delay = 0;
  for (const Load::Call& c : load.calls()) {
    if (c.start >= closed) continue;
    ++before;
    if (c.start > term) ++in_delay;
    if (!c.ok) ++failed_before;
  }
  const auto failures = load.failures();
  EXPECT_EQ(failed_before, 0u) << "of " << before << " calls started before the listeners closed; first failure: "
                               << (failures.empty() ? "" : status_str(failures[0]));
  EXPECT_GE(in_delay, 20u) << "the existing connections kept serving during the delay";
  const std::string err = gw_->process().stderr_text();
  EXPECT_NE(err.find("drain: still accepting for 2000 ms"), std::string::npos) << err;
}

TEST_F(Drain, SecondSigtermStopsAtOnce) {
  auto stub = Echo::NewStub(tls_channel(gw_->target()));
  ASSERT_TRUE(unary(*stub, "warm").status.ok());
  std::thread call([&] {
    UnaryOutcome r = unary(*stub, "slow", 8000, 20s);
    EXPECT_FALSE(r.status.ok()) << "the drain was cut short: the slow call cannot have finished";
  });
  std::this_thread::sleep_for(300ms);
  const Clock::time_point term = Clock::now();
  gw_->process().signal(SIGTERM);
  std::this_thread::sleep_for(300ms);
  gw_->process().signal(SIGTERM);
  const ExitStatus st = gw_->wait_exit(20s);
  const auto took = Clock::now() - term;
  call.join();
  EXPECT_TRUE(st.exited && st.code == 3) << "exit 3: a running call was cut; " << st.to_string();
  EXPECT_EQ(stopped_counters(gw_->process().stderr_text())["drain_cut_connections"], "1");
  EXPECT_LT(took, 5s) << "a second SIGTERM must not wait for the 8 s call nor the 10 s timeout";
  EXPECT_NE(gw_->process().stderr_text().find("again: stopping now"), std::string::npos);
}

}  // namespace
}  // namespace tlsgate::itest
