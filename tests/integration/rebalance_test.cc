// Connections that rebalance (issue 18): the listener's keepalive_interval /
// keepalive_timeout (a PING to a quiet client; no answer, closed) and
// max_connection_age / max_connection_age_grace (the two-step GOAWAY past
// the age; with a grace, what still runs is cut). Real tlsgate, real echo
// backend, real gRPC clients, and a hand-made TLS + HTTP/2 client
// (RawH2Client, h2_client.hh) for a peer that stops answering. The counters
// come from the "stopped:" line.
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <map>
#include <string>
#include <thread>

#include "fixtures.hh"
#include "h2_client.hh"

namespace tlsgate::itest {
namespace {

// The PINGs the gateway sent (not its ACKs of ours).
size_t pings_from(const RawH2Client& c) {
  size_t n = 0;
  for (const Frame& f : c.frames()) n += f.type == kPing && !(f.flags & kAck);
  return n;
}

// One worker, so that every count is one shard's; the listener's keys from
// the test.
class Rebalance : public GatewayTest {
 protected:
  void SetUp() override {
    std::signal(SIGPIPE, SIG_IGN);
    GatewayTest::SetUp();
  }
  void configure(GatewayConfig& cfg) override {
    cfg.workers = 1;
    cfg.extra_listener = listener_keys();
  }
  virtual std::string listener_keys() const = 0;

  std::map<std::string, uint64_t> stop_and_count() {
    gw_->stop();
    std::map<std::string, uint64_t> counters;
    for (const auto& [key, value] : stopped_counters(gw_->process().stderr_text()))
      counters[key] = std::strtoull(value.c_str(), nullptr, 10);
    return counters;
  }
};

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// ------------------------------------------------------------ keepalive

class Keepalive : public Rebalance {
 protected:
  std::string listener_keys() const override {
    return "keepalive_interval = \"1s\"\nkeepalive_timeout = \"1s\"\n";
  }
};

// A peer that completed TLS and the preface and then went silent (what a
// connection the balancer dropped looks like): a PING after 1 s, closed 1 s
// later when nothing came back.
TEST_F(Keepalive, SilentClientIsPingedThenClosed) {
  RawH2Client c;  // answers nothing, PINGs included
  ASSERT_EQ(c.open(gw_->endpoint().port), "");
  const auto start = Clock::now();
  ASSERT_TRUE(c.wait_closed(10s)) << "still open after 10 s";
  const double took = seconds(Clock::now() - start);
  std::cout << "[ measured ] silent client closed after " << took << " s\n";
  EXPECT_GE(took, 1.9) << "closed before keepalive_interval + keepalive_timeout";
  EXPECT_LE(took, 5.0) << "interval 1 s + timeout 1 s, checked every 100 ms";
  EXPECT_GE(pings_from(c), 1u) << "no PING before the close";
  auto n = stop_and_count();
  EXPECT_EQ(n["keepalive_timeouts"], 1u);
  EXPECT_GE(n["keepalive_pings"], 1u);
}

// A gRPC channel left idle answers the PINGs (the library does): it stays
// on its one connection past several intervals and a call on it succeeds.
// The timeout is well above 5 s on purpose: a gRPC C++ client that only makes
// synchronous calls reads an idle connection only when grpc's backup poller
// runs, every 5 s (with a 1 s timeout this test saw the gateway close it).
class KeepaliveGrpc : public Rebalance {
 protected:
  std::string listener_keys() const override {
    return "keepalive_interval = \"1s\"\nkeepalive_timeout = \"7s\"\n";
  }
};

TEST_F(KeepaliveGrpc, IdleChannelAnswersAndStays) {
  auto ch = tls_channel(gw_->target());
  auto stub = Echo::NewStub(ch);
  ASSERT_TRUE(unary(*stub, "before").status.ok());
  // A PING at ~1 s, answered within about 5 s, the next one 1 s after the
  // answer; a client that did not answer would be closed at ~8 s.
  std::this_thread::sleep_for(9s);
  EXPECT_EQ(ch->GetState(false), GRPC_CHANNEL_READY);
  const UnaryOutcome after = unary(*stub, "after");
  EXPECT_TRUE(after.status.ok()) << status_str(after.status);
  auto n = stop_and_count();
  EXPECT_GE(n["keepalive_pings"], 2u);
  EXPECT_EQ(n["keepalive_timeouts"], 0u);
  EXPECT_EQ(n["accepted"], 1u) << "the channel had to reconnect";
}

class KeepaliveAndIdle : public Rebalance {
 protected:
  std::string listener_keys() const override {
    return "keepalive_interval = \"1s\"\nkeepalive_timeout = \"1s\"\nidle_timeout = \"3s\"\n";
  }
};

// The ACKs of the gateway's own PINGs are no client activity: a client that
// answers them but sends no request is still closed at idle_timeout (with a
// GOAWAY), and never as a keepalive timeout nor for glitches.
TEST_F(KeepaliveAndIdle, PingAcksDoNotKeepAnIdleConnection) {
  RawH2Client c;
  c.answer_pings(true);
  ASSERT_EQ(c.open(gw_->endpoint().port), "");
  const auto start = Clock::now();
  ASSERT_TRUE(c.wait_closed(10s)) << "the ACKs kept an idle connection open";
  const double took = seconds(Clock::now() - start);
  std::cout << "[ measured ] answering idle client closed after " << took << " s\n";
  EXPECT_GE(took, 2.9);
  EXPECT_LE(took, 6.0);
  EXPECT_GE(pings_from(c), 2u);
  EXPECT_GE(c.count(kGoaway), 1u) << "an idle close says GOAWAY";
  auto n = stop_and_count();
  EXPECT_EQ(n["idle_closed"], 1u);
  EXPECT_EQ(n["keepalive_timeouts"], 0u);
  EXPECT_EQ(n["h2_glitch_pings"], 0u);
  EXPECT_EQ(n["downstream_protocol_errors"], 0u);
}

// ------------------------------------------------------------ max_connection_age

class MaxAge : public Rebalance {
 protected:
  std::string listener_keys() const override { return "max_connection_age = \"1s\"\n"; }
};

// Unary calls over one shared channel across several connection ages: every
// GOAWAY is graceful (a call in flight finishes, one sent meanwhile is
// served or, above the final GOAWAY's last stream id, retried by the
// client), so no call fails, and the channel comes back on new connections.
TEST_F(MaxAge, SharedChannelLoadAcrossAgesLosesNoCall) {
  const std::string target = gw_->target();
  auto ch = tls_channel(target);
  {
    Load load(ch, 4, 20, 2000);  // each call waits 20 ms at the backend: some are always in flight
    std::this_thread::sleep_for(5s);
    load.stop();
    const auto failures = load.failures();
    std::cout << "[ measured ] " << load.total() << " calls, " << failures.size() << " failed\n";
    EXPECT_GE(load.total(), 100u) << "the load hardly ran";
    EXPECT_TRUE(failures.empty()) << failures.size() << " failed; first: " << status_str(failures[0]);
  }
  auto n = stop_and_count();
  std::cout << "[ measured ] accepted=" << n["accepted"] << " max_age_goaways=" << n["max_age_goaways"]
            << "\n";
  EXPECT_GE(n["accepted"], 2u) << "the channel never moved to a new connection";
  EXPECT_GE(n["max_age_goaways"], 2u);
  EXPECT_EQ(n["max_age_grace_closed"], 0u) << "no grace: nothing is cut";
}

class MaxAgeGrace : public Rebalance {
 protected:
  std::string listener_keys() const override {
    return "max_connection_age = \"1s\"\nmax_connection_age_grace = \"1s\"\n";
  }
};

// A server stream that would last 10 s: replies keep coming after the age
// GOAWAY (~1 s), and the grace cuts it about 1 s after that.
TEST_F(MaxAgeGrace, LongStreamIsCutAfterTheGrace) {
  auto stub = Echo::NewStub(tls_channel(gw_->target()));
  auto ctx = context(20s);
  EchoRequest req;
  req.set_payload("long");
  req.set_response_count(100);
  req.set_interval_ms(100);
  const auto start = Clock::now();
  auto reader = stub->ServerStream(ctx.get(), req);
  EchoReply reply;
  int replies = 0, after_age = 0;
  while (reader->Read(&reply)) {
    ++replies;
    if (Clock::now() - start > 1200ms) ++after_age;  // past the latest age (1.1 s)
  }
  const grpc::Status st = reader->Finish();
  const double took = seconds(Clock::now() - start);
  std::cout << "[ measured ] stream cut after " << took << " s, " << replies << " replies\n";
  EXPECT_FALSE(st.ok()) << "the 10 s stream was not cut";
  EXPECT_GE(after_age, 3) << "the stream did not keep running after the age GOAWAY";
  EXPECT_GE(took, 1.8) << "cut before age (>= 0.9 s) + grace (1 s)";
  EXPECT_LE(took, 5.0);
  auto n = stop_and_count();
  EXPECT_EQ(n["max_age_goaways"], 1u);
  EXPECT_EQ(n["max_age_grace_closed"], 1u);
}

}  // namespace
}  // namespace tlsgate::itest
