// The upstream backend pool (issue 5) through a real tlsgate: load balancing,
// active health checks, DNS re-resolution, deadlines, retries, circuit
// breakers, TLS to backends and routing. Real echo_server backends (and
// fastbackend for refused streams and GOAWAY), a real grpc++ client over TLS.
//
// What is asserted is what a client sees: gRPC status codes and messages,
// which backend answered (EchoReply.server_id), and the backends' own Stats.
// Every wait is bounded; no assertion is about how fast something was.
#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

std::string counts_str(const std::map<std::string, uint64_t>& m) {
  std::string s;
  for (const auto& [k, v] : m)
    s += (s.empty() ? "" : ", ") + (k.empty() ? "<none>" : k) + "=" + std::to_string(v);
  return "{" + s + "}";
}

class UpstreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (env("TLSGATE_BIN").empty()) GTEST_FAIL() << "TLSGATE_BIN is not set (path to the tlsgate binary)";
    dir_ = std::make_unique<TempDir>("tlsgate-up");
  }
  void TearDown() override {
    if (gw_) gw_->stop();
    gw_.reset();
    backends_.clear();
    fast_.clear();
    dir_.reset();
  }

  EchoBackend& add_echo(EchoOptions o) {
    backends_.push_back(std::make_unique<EchoBackend>(dir_->path(), std::move(o)));
    return *backends_.back();
  }
  EchoBackend& add_echo(const std::string& id) {
    EchoOptions o;
    o.id = id;
    return add_echo(o);
  }
  // Backends b0..b{n-1}; their addresses.
  std::vector<std::string> add_echos(int n) {
    std::vector<std::string> addrs;
    for (int i = 0; i < n; ++i) addrs.push_back(add_echo("b" + std::to_string(i)).endpoint().address());
    return addrs;
  }
  FastBackend& add_fast(const std::vector<std::string>& args) {
    fast_.push_back(std::make_unique<FastBackend>(dir_->path(), args));
    return *fast_.back();
  }

  // Starts tlsgate with `clusters` as its [[clusters]] tables; false (and a
  // test failure with its stderr) if it did not start.
  [[nodiscard]] bool start_gateway(const std::string& clusters, GatewayConfig cfg = {}) {
    cfg.clusters = clusters;
    gw_ = std::make_unique<Gateway>(dir_->path(), cfg);
    return gw_->started();
  }

  std::shared_ptr<grpc::Channel> channel() { return tls_channel(gw_->target()); }
  std::unique_ptr<Echo::Stub> stub() { return Echo::NewStub(channel()); }

  // Sequential calls until every backend in `ids` has answered one; false
  // after `timeout`. Failures are tolerated here (and printed): right after
  // start a gateway may still be running its first health checks.
  bool all_answer(Echo::Stub& s, const std::set<std::string>& ids, Ms timeout) {
    std::set<std::string> seen;
    int failed = 0;
    std::string first_failure;
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      auto o = unary(s, "warm-up");
      if (!o.status.ok()) {
        if (failed++ == 0) first_failure = status_str(o.status);
        std::this_thread::sleep_for(20ms);
        continue;
      }
      seen.insert(o.server_id);
      if (std::includes(seen.begin(), seen.end(), ids.begin(), ids.end())) break;
    }
    if (failed)
      std::cout << "[ info ] " << failed << " calls failed while warming up; first: " << first_failure
                << "\n";
    return std::includes(seen.begin(), seen.end(), ids.begin(), ids.end());
  }

  // n sequential calls on `stub`; OK replies counted per server_id. Failures
  // are test failures (the first few are shown).
  std::map<std::string, uint64_t> spread(Echo::Stub& s, int n) {
    std::map<std::string, uint64_t> by;
    int failed = 0;
    for (int i = 0; i < n; ++i) {
      auto o = unary(s, "spread-" + std::to_string(i));
      if (o.status.ok()) {
        ++by[o.server_id];
      } else if (failed++ < 3) {
        ADD_FAILURE() << "call " << i << ": " << status_str(o.status);
      }
    }
    EXPECT_EQ(failed, 0) << "of " << n << " calls";
    return by;
  }

  static GatewayConfig one_worker() {
    GatewayConfig c;
    c.workers = 1;
    return c;
  }
  // The gateway's counter `name` from the summary it logs when it stops
  // (stops it first).
  uint64_t stopped_counter(const std::string& name) {
    gw_->stop();
    const std::string err = gw_->process().stderr_text();
    const auto counters = stopped_counters(err);
    const auto it = counters.find(name);
    if (it == counters.end()) {
      ADD_FAILURE() << "no counter " << name << " in tlsgate's stopped: line:\n" << err;
      return 0;
    }
    return std::strtoull(it->second.c_str(), nullptr, 10);
  }

  std::unique_ptr<TempDir> dir_;
  std::vector<std::unique_ptr<EchoBackend>> backends_;
  std::vector<std::unique_ptr<FastBackend>> fast_;
  std::unique_ptr<Gateway> gw_;
};

// ---------------------------------------------------------------- a. distribution

class UpstreamLb : public UpstreamTest {
 protected:
  // 4 backends, one client connection, 10,000 sequential calls: each backend
  // answers 25% +- 5%, and its own Stats agree with the replies.
  void check_even_spread(const std::string& lb_line) {
    auto addrs = add_echos(4);
    ASSERT_TRUE(start_gateway(cluster_toml("backend", addrs, lb_line)));
    auto ch = channel();
    ASSERT_TRUE(wait_connected(ch, 10s));
    auto s = Echo::NewStub(ch);
    constexpr int kCalls = 10000;
    auto by = spread(*s, kCalls);
    for (int i = 0; i < 4; ++i) {
      const std::string id = "b" + std::to_string(i);
      EXPECT_GE(by[id], 2000u) << id << " got too few calls: " << counts_str(by);
      EXPECT_LE(by[id], 3000u) << id << " got too many calls: " << counts_str(by);
      StatsReply st;
      ASSERT_TRUE(backends_[i]->stats(&st).ok());
      EXPECT_EQ(calls_of(st, "Unary"), by[id]) << id << ": backend count differs from the replies";
    }
    std::cout << "[ info ] " << (lb_line.empty() ? "default lb" : lb_line.substr(0, lb_line.size() - 1))
              << ": " << counts_str(by) << "\n";
  }
};

TEST_F(UpstreamLb, DefaultLbSpreadsEvenly) { check_even_spread(""); }
TEST_F(UpstreamLb, P2cSpreadsEvenly) { check_even_spread("lb = \"p2c\"\n"); }
TEST_F(UpstreamLb, RoundRobinSpreadsEvenly) { check_even_spread("lb = \"round_robin\"\n"); }

// ---------------------------------------------------------------- b, c. health

class UpstreamHealth : public UpstreamTest {
 protected:
  // Calls (sequential, one channel) until `n_in_a_row` consecutive ones were
  // answered by `id`; false after `timeout`. Every call must succeed.
  bool settle_on(Echo::Stub& s, const std::string& id, int n_in_a_row, Ms timeout, int* failures) {
    auto deadline = Clock::now() + timeout;
    int run = 0;
    while (Clock::now() < deadline) {
      auto o = unary(s, "settle");
      if (!o.status.ok()) {
        if ((*failures)++ < 3) ADD_FAILURE() << "call while settling: " << status_str(o.status);
        run = 0;
        continue;
      }
      run = o.server_id == id ? run + 1 : 0;
      if (run >= n_in_a_row) return true;
    }
    return false;
  }
  // Calls until one is answered by `id`; false after `timeout`.
  bool reaches(Echo::Stub& s, const std::string& id, Ms timeout, int* failures) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      auto o = unary(s, "reach");
      if (!o.status.ok()) {
        if ((*failures)++ < 3)
          ADD_FAILURE() << "call while waiting for " << id << ": " << status_str(o.status);
        continue;
      }
      if (o.server_id == id) return true;
    }
    return false;
  }

  // 2 backends checked every 500 ms; b1 says NOT_SERVING for `service`: once
  // that settles, 200 calls all land on b0 (b1's own count stays put); when it
  // says SERVING again it gets calls again. No call fails meanwhile.
  void not_serving_case(const std::string& service) {
    for (int i = 0; i < 2; ++i) {
      EchoOptions o;
      o.id = "b" + std::to_string(i);
      if (!service.empty()) o.health_services = {service};
      add_echo(o);
    }
    std::string hc = "[clusters.health_check]\ninterval = \"500ms\"\n";
    if (!service.empty()) hc += "service = \"" + service + "\"\n";
    ASSERT_TRUE(start_gateway(
        cluster_toml("backend", {backends_[0]->endpoint().address(), backends_[1]->endpoint().address()},
                     "lb = \"round_robin\"\n" + hc)));
    auto s = stub();
    int failures = 0;
    ASSERT_TRUE(all_answer(*s, {"b0", "b1"}, 15s)) << "not both backends answered within 15 s";

    ASSERT_TRUE(backends_[1]->set_serving(false, service).ok());
    ASSERT_TRUE(settle_on(*s, "b0", 50, 15s, &failures))
        << "b1 still got calls 15 s after its health check said NOT_SERVING for \"" << service << "\"";
    StatsReply b1_before, b1_after;
    ASSERT_TRUE(backends_[1]->stats(&b1_before).ok());
    auto after = spread(*s, 200);
    EXPECT_EQ(after["b0"], 200u) << "calls reached the NOT_SERVING backend: " << counts_str(after);
    ASSERT_TRUE(backends_[1]->stats(&b1_after).ok());
    EXPECT_EQ(calls_of(b1_after, "Unary"), calls_of(b1_before, "Unary"));

    ASSERT_TRUE(backends_[1]->set_serving(true, service).ok());
    EXPECT_TRUE(reaches(*s, "b1", 15s, &failures)) << "b1 got no call within 15 s of SERVING again";
    EXPECT_EQ(failures, 0);
  }
};

TEST_F(UpstreamHealth, KilledBackendCostsOnlyInFlightCalls) {
  auto addrs = add_echos(3);
  ASSERT_TRUE(start_gateway(cluster_toml("backend", addrs,
                                         "[clusters.health_check]\n"
                                         "interval = \"1s\"\n"
                                         "healthy_threshold = 1\n")));
  constexpr int kThreads = 4;
  auto ch = channel();
  {
    auto s = Echo::NewStub(ch);
    ASSERT_TRUE(all_answer(*s, {"b0", "b1", "b2"}, 15s)) << "not all backends answered within 15 s";
  }
  Load load(ch, kThreads, /*delay_ms=*/20);
  // Mid-load: every backend has served a share of it.
  ASSERT_TRUE(eventually(
      [&] { return load.ok_from("b0") >= 20 && load.ok_from("b1") >= 20 && load.ok_from("b2") >= 20; }, 15s))
      << "not every backend got 20 calls: " << counts_str(load.by_server());

  backends_[1]->kill();
  // Load keeps running for three health-check intervals with b1 dead.
  const uint64_t at_kill = load.total();
  std::this_thread::sleep_for(3s);
  const uint64_t b1_dead = load.ok_from("b1");
  EXPECT_GT(load.total(), at_kill) << "no calls finished after the kill";

  backends_[1]->restart();
  const bool back = eventually([&] { return load.ok_from("b1") > b1_dead; }, 15s);
  load.stop();
  EXPECT_TRUE(back) << "the restarted backend got no call within 15 s: " << counts_str(load.by_server());

  auto failures = load.failures();
  for (const auto& st : failures)
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE)
        << "a call failed otherwise: " << status_str(st);
  // Only calls in flight on b1 when it died may fail.
  EXPECT_LE(failures.size(), 2u * kThreads)
      << "of " << load.total() << " calls; first: " << (failures.empty() ? "" : status_str(failures[0]));
  std::cout << "[ info ] " << load.total() << " calls, " << failures.size()
            << " failed, answered by: " << counts_str(load.by_server()) << "\n";
}

TEST_F(UpstreamHealth, NotServingBackendGetsNoCalls) { not_serving_case(""); }
TEST_F(UpstreamHealth, NotServingNamedServiceGetsNoCalls) { not_serving_case("tlsgate.test.Echo"); }

// ---------------------------------------------------------------- d. DNS

// Names resolve through a hosts file of the test's, which tlsgate sees as
// /etc/hosts (GatewayConfig::hosts_file: a private mount namespace).
class UpstreamDns : public UpstreamTest {
 protected:
  void SetUp() override {
    UpstreamTest::SetUp();
    // tools/test runs as root, where this works; not being able to is a failure.
    ASSERT_EQ(hosts_namespace_unavailable(), "") << "the DNS test needs a private mount namespace";
  }

  // An echo_server `id` on `host`, at `port` (0: the kernel's choice).
  EchoBackend& add_echo_on(const std::string& id, const std::string& host, int port = 0) {
    EchoOptions o;
    o.id = id;
    o.host = host;
    o.port = port;
    return add_echo(o);
  }

  std::filesystem::path hosts_file() const { return dir_->path() / "hosts"; }

  // Writes `hosts` into hosts_file(), then starts tlsgate (one worker) with
  // `clusters`, seeing that file as its /etc/hosts.
  [[nodiscard]] bool start_gateway_with_hosts(const std::string& hosts, const std::string& clusters) {
    write_file(hosts_file(), hosts);
    GatewayConfig cfg;
    cfg.workers = 1;
    cfg.hosts_file = hosts_file();
    return start_gateway(clusters, cfg);
  }
};

// backend.tlsgate.test resolves through a hosts file that tlsgate sees as
// /etc/hosts (private mount namespace). Moving the name from 127.0.0.2 to
// 127.0.0.3 moves the traffic, and no call fails.
TEST_F(UpstreamDns, FollowsHostsFileChange) {
  const int port = add_echo_on("dot2", "127.0.0.2").endpoint().port;
  add_echo_on("dot3", "127.0.0.3", port);

  const std::string common = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n";
  const std::string cluster =
      cluster_toml("backend", {"backend.tlsgate.test:" + std::to_string(port)}, "dns_refresh = \"500ms\"\n");
  ASSERT_TRUE(start_gateway_with_hosts(common + "127.0.0.2 backend.tlsgate.test\n", cluster));
  auto s = stub();
  auto first = spread(*s, 20);
  EXPECT_EQ(first["dot2"], 20u) << counts_str(first);

  // A stream running on the old address while the name moves: it must
  // finish there (the old endpoint drains, it is not cut).
  grpc::Status stream_status;
  std::vector<std::string> stream_ids;
  std::thread streamer([&] {
    auto ctx = context(20s);
    EchoRequest req;
    req.set_payload("draining");
    req.set_response_count(15);
    req.set_interval_ms(100);
    auto reader = s->ServerStream(ctx.get(), req);
    EchoReply r;
    while (reader->Read(&r)) stream_ids.push_back(r.server_id());
    stream_status = reader->Finish();
  });
  std::this_thread::sleep_for(200ms);  // the stream has started on 127.0.0.2

  rewrite_in_place(hosts_file(), common + "127.0.0.3 backend.tlsgate.test\n");
  std::map<std::string, uint64_t> moving;
  int failed = 0;
  bool moved = false;
  auto deadline = Clock::now() + 15s;
  while (!moved && Clock::now() < deadline) {
    auto o = unary(*s, "moving");
    if (!o.status.ok()) {
      if (failed++ < 3) ADD_FAILURE() << "call while the name moved: " << status_str(o.status);
      continue;
    }
    ++moving[o.server_id];
    moved = o.server_id == "dot3";
  }
  ASSERT_TRUE(moved) << "no call reached 127.0.0.3 within 15 s of the hosts change: " << counts_str(moving);
  auto after = spread(*s, 50);
  EXPECT_EQ(after["dot3"], 50u) << "calls still reach the old address: " << counts_str(after);
  EXPECT_EQ(failed, 0);
  streamer.join();
  EXPECT_TRUE(stream_status.ok()) << "the stream on the old address: " << status_str(stream_status);
  EXPECT_EQ(stream_ids.size(), 15u);
  for (const auto& id : stream_ids) EXPECT_EQ(id, "dot2");
}

// A name that keeps resolving to the address it had at load keeps its
// endpoint across every refresh: no "removed" / "added" churn, one upstream
// connection throughout (with health checks on it), and the health state it
// had is still there. (The endpoint written as a name kept the name as its
// text and was compared with the resolver's "IP:port" texts, so the first
// refresh removed it and added it again, fresh.)
TEST_F(UpstreamDns, SameAddressKeepsTheEndpoint) {
  auto& b = add_echo_on("dot2", "127.0.0.2");
  const std::string name = "backend.tlsgate.test:" + std::to_string(b.endpoint().port);
  ASSERT_TRUE(start_gateway_with_hosts("127.0.0.1 localhost\n127.0.0.2 backend.tlsgate.test\n",
                                       cluster_toml("backend", {name},
                                                    "dns_refresh = \"200ms\"\n"
                                                    "idle_timeout = \"1h\"\n"
                                                    "[clusters.health_check]\n"
                                                    "interval = \"200ms\"\n"
                                                    "unhealthy_threshold = 1\n"
                                                    "healthy_threshold = 3\n")));
  auto s = stub();
  // Calls spread over 3 s: 15 refresh intervals.
  int failed = 0;
  for (int i = 0; i < 15; ++i) {
    auto r = unary(*s, "steady");
    if (!r.status.ok() && failed++ < 3) ADD_FAILURE() << "call " << i << ": " << status_str(r.status);
    std::this_thread::sleep_for(200ms);
  }
  // Health state is kept too: NOT_SERVING makes the endpoint unhealthy at
  // the next check; a replaced endpoint would start healthy again.
  ASSERT_TRUE(b.set_serving(false).ok());
  ASSERT_TRUE(gw_->process().wait_for(
      Stream::Stderr, [](const std::string& t) { return t.find("is unhealthy") != std::string::npos; }, 10s))
      << gw_->process().describe();
  std::this_thread::sleep_for(1s);  // five more refreshes
  auto down = unary(*s, "unhealthy");
  EXPECT_EQ(down.status.error_code(), grpc::StatusCode::UNAVAILABLE) << status_str(down.status);
  const std::string log = gw_->process().stderr_text();
  EXPECT_EQ(log.find("removed, draining"), std::string::npos) << log;
  EXPECT_EQ(log.find("added (DNS)"), std::string::npos) << log;
  EXPECT_EQ(stopped_counter("upstream_connects"), 1u) << "the endpoint's connection was closed and reopened";
}

// ---------------------------------------------------------------- e. deadlines

class UpstreamDeadline : public UpstreamTest {
 protected:
  // curl POSTs `message` (a serialized request) as one gRPC frame to Unary
  // with grpc-timeout: 300m, bounded by --max-time 4. Returns headers +
  // trailers (-i); a test failure if curl did not get a complete answer.
  std::string curl_with_timeout(const std::string& message) {
    const auto body = dir_->path() / "request.grpc";
    write_file(body, grpc_frame(message));
    auto r =
        run({"/usr/bin/curl", "-k", "-sS", "-i", "--max-time", "4", "--http2", "-X", "POST", "-H",
             "content-type: application/grpc", "-H", "te: trailers", "-H", "grpc-timeout: 300m",
             "--data-binary", "@" + body.string(), "https://" + gw_->target() + "/tlsgate.test.Echo/Unary"},
            dir_->path(), 20s);
    EXPECT_TRUE(r.status.exited && r.status.code == 0)
        << "curl (--max-time 4) did not get a complete answer: " << r.status.to_string() << "\n"
        << r.err << r.out;
    return r.out;
  }
};

// curl sends grpc-timeout: 300m on a call the backend would answer after 5 s:
// the answer is grpc-status 4 well within curl's 4 s bound, and the backend
// sees its call cancelled.
TEST_F(UpstreamDeadline, GrpcTimeoutHeaderEndsCall) {
  auto& b = add_echo("slow");
  ASSERT_TRUE(start_gateway(cluster_toml("backend", {b.endpoint().address()})));
  EchoRequest req;
  req.set_payload("deadline");
  req.set_delay_ms(5000);
  const std::string out = curl_with_timeout(req.SerializeAsString());
  EXPECT_EQ(out.rfind("HTTP/2 200", 0), 0u) << out;
  EXPECT_NE(out.find("grpc-status: 4"), std::string::npos) << out;

  StatsReply st;
  bool cancelled =
      eventually([&] { return b.stats(&st).ok() && st.cancelled() >= 1 && st.active() == 0; }, 10s);
  EXPECT_TRUE(cancelled) << "backend: cancelled=" << st.cancelled() << " active=" << st.active();
  EXPECT_EQ(calls_of(st, "Unary"), 1u);
}

// max_grpc_timeout = 300ms caps a client's 10 s deadline: the call that the
// backend would answer after 5 s ends DEADLINE_EXCEEDED, and the backend's
// call is cancelled.
TEST_F(UpstreamDeadline, MaxGrpcTimeoutCapsClientDeadline) {
  auto& b = add_echo("slow");
  ASSERT_TRUE(
      start_gateway(cluster_toml("backend", {b.endpoint().address()}, "max_grpc_timeout = \"300ms\"\n")));
  auto s = stub();
  auto o = unary(*s, "capped", /*delay_ms=*/5000, /*timeout=*/10s);
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status_str(o.status);
  StatsReply st;
  bool cancelled =
      eventually([&] { return b.stats(&st).ok() && st.cancelled() >= 1 && st.active() == 0; }, 10s);
  EXPECT_TRUE(cancelled) << "backend: cancelled=" << st.cancelled() << " active=" << st.active();
}

// A backend that ignores grpc-timeout (fastbackend --hold never answers):
// only the gateway can end the call. curl sees grpc-status 4 with the
// gateway's message, and the backend sees its stream cancelled.
TEST_F(UpstreamDeadline, GatewayEndsCallTheBackendNeverAnswers) {
  auto& fb = add_fast({"--hold"});
  ASSERT_TRUE(start_gateway(cluster_toml("backend", {fb.endpoint().address()})));
  const std::string out = curl_with_timeout("held");
  EXPECT_NE(out.find("grpc-status: 4"), std::string::npos) << out;
  EXPECT_NE(out.find("grpc-message: deadline exceeded at the gateway"), std::string::npos) << out;
  gw_->stop();  // the RST_STREAM has been sent by the time the gateway exits
  auto counts = fb.stop_and_count();
  EXPECT_EQ(counts["held"], 1u) << fb.process().describe();
  EXPECT_EQ(counts["cancelled"], 1u) << fb.process().describe();
}

// ---------------------------------------------------------------- f. retries

class UpstreamRetry : public UpstreamTest {};

// fastbackend refuses every stream (REFUSED_STREAM: never processed); the
// gateway retries them on the echo backend: all 50 calls OK, all from echo.
TEST_F(UpstreamRetry, RefusedStreamRetriedOnOtherBackend) {
  auto& fb = add_fast({"--refuse", "1000"});
  auto& echo = add_echo("echo");
  ASSERT_TRUE(start_gateway(cluster_toml("backend", {fb.endpoint().address(), echo.endpoint().address()},
                                         "lb = \"round_robin\"\n")));
  auto s = stub();
  auto by = spread(*s, 50);
  EXPECT_EQ(by["echo"], 50u) << counts_str(by);
  auto counts = fb.stop_and_count();
  EXPECT_GT(counts["refused"], 0u) << fb.process().describe();
  EXPECT_EQ(counts["calls"], 0u) << fb.process().describe();
}

// The same with retries = 0: the refused calls fail UNAVAILABLE.
TEST_F(UpstreamRetry, RefusedStreamWithoutRetriesFails) {
  auto& fb = add_fast({"--refuse", "1000"});
  auto& echo = add_echo("echo");
  ASSERT_TRUE(start_gateway(cluster_toml("backend", {fb.endpoint().address(), echo.endpoint().address()},
                                         "lb = \"round_robin\"\nretries = 0\n")));
  auto s = stub();
  int failed = 0, ok = 0;
  for (int i = 0; i < 50; ++i) {
    auto o = unary(*s, "no-retry-" + std::to_string(i));
    if (o.status.ok()) {
      ++ok;
      EXPECT_EQ(o.server_id, "echo");
    } else {
      ++failed;
      EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << status_str(o.status);
    }
  }
  EXPECT_GT(failed, 0) << "no call failed although retries = 0 and every other pick is refused";
  EXPECT_GT(ok, 0);
  auto counts = fb.stop_and_count();
  EXPECT_GT(counts["refused"], 0u) << fb.process().describe();
}

// One endpoint refuses connections: calls that pick it are retried elsewhere.
TEST_F(UpstreamRetry, ConnectFailureRetried) {
  auto& echo = add_echo("echo");
  ASSERT_TRUE(start_gateway(
      cluster_toml("backend", {"127.0.0.1:" + std::to_string(closed_port()), echo.endpoint().address()},
                   "lb = \"round_robin\"\n")));
  auto s = stub();
  auto by = spread(*s, 50);
  EXPECT_EQ(by["echo"], 50u) << counts_str(by);
}

// fastbackend sends GOAWAY after every 5th stream of a connection and closes
// it once those are answered; streams above its last-stream-id were never
// processed and must be retried. Four concurrent callers, fewer than the five
// streams a connection answers, so a retried stream is always answered by the
// next connection (more callers would let one be refused more times than
// `retries`, and fail by design). Calls in flight often reach a connection the
// backend has already closed before the gateway has read its GOAWAY: the
// failed send must not fail those streams. All calls OK with their own
// payload back, and fastbackend answered each exactly once.
TEST_F(UpstreamRetry, GoawayRetried) {
  auto& fb = add_fast({"--goaway-after", "5"});
  ASSERT_TRUE(start_gateway(cluster_toml("backend", {fb.endpoint().address()})));
  auto ch = channel();
  ASSERT_TRUE(wait_connected(ch, 10s));
  auto s = Echo::NewStub(ch);
  constexpr int kThreads = 4, kCalls = 100;
  std::mutex mu;
  std::vector<std::string> problems;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCalls; ++i) {
        const std::string payload = "goaway-" + std::to_string(t) + "-" + std::to_string(i);
        auto o = unary(*s, payload);
        if (!o.status.ok() || o.payload != payload) {
          std::lock_guard lock(mu);
          problems.push_back(payload + ": " + status_str(o.status) + " payload \"" + o.payload + "\"");
        }
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_TRUE(problems.empty()) << problems.size() << " calls failed; first: " << problems.front();
  auto counts = fb.stop_and_count();
  EXPECT_GT(counts["goaways"], 0u) << fb.process().describe();
  EXPECT_EQ(counts["calls"], static_cast<uint64_t>(kThreads * kCalls)) << fb.process().describe();
}

// ---------------------------------------------------------------- g. circuit breakers

class UpstreamCircuitBreaker : public UpstreamTest {
 protected:
  // `n` concurrent unary calls with delay_ms on one channel; their statuses.
  std::vector<grpc::Status> concurrent_delayed(Echo::Stub& s, int n, uint32_t delay_ms) {
    int completed = 0;
    auto results = concurrent_unary(s, n, "cb-", delay_ms, 20s, &completed);
    EXPECT_EQ(completed, n) << "completion queue timed out";
    std::vector<grpc::Status> out;
    for (auto& r : results) out.push_back(r.status);
    return out;
  }

  // Exactly one of the statuses is UNAVAILABLE with `needle` in its message;
  // all others are OK.
  void expect_one_breaker(const std::vector<grpc::Status>& sts, const std::string& needle) {
    int ok = 0, tripped = 0;
    std::string all;
    for (const auto& st : sts) {
      all += "\n  " + status_str(st);
      if (st.ok())
        ++ok;
      else if (st.error_code() == grpc::StatusCode::UNAVAILABLE &&
               st.error_message().find(needle) != std::string::npos)
        ++tripped;
    }
    EXPECT_EQ(tripped, 1) << "want exactly one UNAVAILABLE mentioning \"" << needle << "\":" << all;
    EXPECT_EQ(ok, static_cast<int>(sts.size()) - 1) << all;
  }
};

// max_pending_streams = 2 (per shard; one worker): the third of three
// concurrent calls is refused by the gateway.
TEST_F(UpstreamCircuitBreaker, MaxPendingStreams) {
  auto& b = add_echo("echo");
  GatewayConfig cfg;
  cfg.workers = 1;
  ASSERT_TRUE(
      start_gateway(cluster_toml("backend", {b.endpoint().address()}, "max_pending_streams = 2\n"), cfg));
  auto s = stub();
  auto warm = unary(*s, "warm-up");  // connections up before the burst
  ASSERT_TRUE(warm.status.ok()) << status_str(warm.status);
  expect_one_breaker(concurrent_delayed(*s, 3, 1500), "max_pending_streams");
  StatsReply st;
  ASSERT_TRUE(b.stats(&st).ok());
  EXPECT_EQ(calls_of(st, "Unary"), 3u) << "the refused call must not reach the backend";
}

// max_connections = 1 and a backend that takes one stream per connection
// (SETTINGS_MAX_CONCURRENT_STREAMS 1): a second concurrent call would need a
// second connection, and is refused.
TEST_F(UpstreamCircuitBreaker, MaxConnections) {
  EchoOptions o;
  o.id = "single";
  o.max_concurrent_streams = 1;
  auto& b = add_echo(o);
  GatewayConfig cfg;
  cfg.workers = 1;
  ASSERT_TRUE(start_gateway(cluster_toml("backend", {b.endpoint().address()}, "max_connections = 1\n"), cfg));
  auto s = stub();
  auto warm = unary(*s, "warm-up");  // the one connection, its SETTINGS known
  ASSERT_TRUE(warm.status.ok()) << status_str(warm.status);
  expect_one_breaker(concurrent_delayed(*s, 2, 1500), "max_connections");
  StatsReply st;
  ASSERT_TRUE(b.stats(&st).ok());
  EXPECT_EQ(st.max_active(), 1u);
}

// ---------------------------------------------------------------- h. TLS to backends
// Note: a grpc++ TLS server closes a connection whose handshake did not
// negotiate ALPN "h2" (checked by hand: without ALPN it answers the HTTP/2
// preface with EOF), so the gateway must offer h2 upstream.

class UpstreamTls : public UpstreamTest {
 protected:
  EchoBackend& tls_echo(bool want_client_cert) {
    EchoOptions o;
    o.id = want_client_cert ? "mtls-echo" : "tls-echo";
    o.tls_cert = certs().server_crt;
    o.tls_key = certs().server_key;
    if (want_client_cert) o.client_ca = certs().ca;
    return add_echo(o);
  }
  static std::string tls_table(const std::string& server_name, bool client_cert) {
    std::string t =
        "[clusters.tls]\nca = \"" + certs().ca.string() + "\"\nserver_name = \"" + server_name + "\"\n";
    if (client_cert)
      t += "certificate = \"" + certs().client_crt.string() + "\"\nprivate_key = \"" +
           certs().client_key.string() + "\"\n";
    return t;
  }
  // n calls, all with the same expected outcome.
  void expect_calls(Echo::Stub& s, int n, grpc::StatusCode want, const std::string& want_id) {
    for (int i = 0; i < n; ++i) {
      auto o = unary(s, "tls-" + std::to_string(i));
      EXPECT_EQ(o.status.error_code(), want) << "call " << i << ": " << status_str(o.status);
      if (want == grpc::StatusCode::OK) {
        EXPECT_EQ(o.server_id, want_id);
      }
    }
  }
};

TEST_F(UpstreamTls, VerifiedBackend) {
  auto& b = tls_echo(false);
  ASSERT_TRUE(
      start_gateway(cluster_toml("backend", {b.endpoint().address()}, tls_table("localhost", false))));
  expect_calls(*stub(), 5, grpc::StatusCode::OK, "tls-echo");
}

TEST_F(UpstreamTls, WrongServerNameFails) {
  auto& b = tls_echo(false);
  ASSERT_TRUE(start_gateway(
      cluster_toml("backend", {b.endpoint().address()}, tls_table("wrong.tlsgate.test", false))));
  expect_calls(*stub(), 3, grpc::StatusCode::UNAVAILABLE, "");
  StatsReply st;
  ASSERT_TRUE(b.stats(&st).ok());
  EXPECT_EQ(calls_of(st, "Unary"), 0u);
}

TEST_F(UpstreamTls, ClientCertificate) {
  auto& b = tls_echo(true);
  ASSERT_TRUE(start_gateway(cluster_toml("backend", {b.endpoint().address()}, tls_table("localhost", true))));
  expect_calls(*stub(), 5, grpc::StatusCode::OK, "mtls-echo");
}

TEST_F(UpstreamTls, MissingClientCertificateFails) {
  auto& b = tls_echo(true);
  ASSERT_TRUE(
      start_gateway(cluster_toml("backend", {b.endpoint().address()}, tls_table("localhost", false))));
  expect_calls(*stub(), 3, grpc::StatusCode::UNAVAILABLE, "");
  StatsReply st;
  ASSERT_TRUE(b.stats(&st).ok());
  EXPECT_EQ(calls_of(st, "Unary"), 0u);
}

// ---------------------------------------------------------------- routing

class UpstreamRouting : public UpstreamTest {};

// Default cluster a; routes in order: path prefix /tlsgate.test.Echo/Unary ->
// b, authority api.example.com -> c. The first match wins.
TEST_F(UpstreamRouting, PathPrefixThenAuthority) {
  auto& a = add_echo("a");
  auto& b = add_echo("b");
  auto& c = add_echo("c");
  GatewayConfig cfg;
  cfg.cluster = "a";
  cfg.listener_tail =
      "  [[listeners.routes]]\n"
      "  path_prefix = \"/tlsgate.test.Echo/Unary\"\n"
      "  cluster = \"b\"\n"
      "  [[listeners.routes]]\n"
      "  authority = \"api.example.com\"\n"
      "  cluster = \"c\"\n";
  ASSERT_TRUE(start_gateway(cluster_toml("a", {a.endpoint().address()}) +
                                cluster_toml("b", {b.endpoint().address()}) +
                                cluster_toml("c", {c.endpoint().address()}),
                            cfg));
  auto s = Echo::NewStub(tls_channel_any_authority(gw_->target()));

  auto server_stream_id = [&](const std::string& authority) {
    auto ctx = context(10s);
    if (!authority.empty()) ctx->set_authority(authority);
    EchoRequest req;
    req.set_payload("route");
    auto reader = s->ServerStream(ctx.get(), req);
    EchoReply r;
    std::string id = "<no reply>";
    while (reader->Read(&r)) id = r.server_id();
    auto st = reader->Finish();
    return st.ok() ? id : status_str(st);
  };

  {
    SCOPED_TRACE("Unary, default authority: path route");
    auto o = unary(*s, "x");
    ASSERT_TRUE(o.status.ok()) << status_str(o.status);
    EXPECT_EQ(o.server_id, "b");
  }
  {
    SCOPED_TRACE("Unary, authority api.example.com: the path route comes first");
    auto o = unary(*s, "x", 0, 10s, "api.example.com");
    ASSERT_TRUE(o.status.ok()) << status_str(o.status);
    EXPECT_EQ(o.server_id, "b");
  }
  EXPECT_EQ(server_stream_id(""), "a") << "ServerStream, default authority: default cluster";
  EXPECT_EQ(server_stream_id("api.example.com"), "c") << "ServerStream, authority route";
  EXPECT_EQ(server_stream_id("API.Example.COM"), "c") << "authority match is case-insensitive";
  EXPECT_EQ(server_stream_id("other.example.com"), "a") << "no route matches: default cluster";
  StatsReply st;
  ASSERT_TRUE(c.stats(&st).ok());
  EXPECT_EQ(st.last_authority(), "API.Example.COM") << "the authority is forwarded as sent";
}

// ---------------------------------------------------------------- connection upkeep

class UpstreamConnections : public UpstreamTest {};

// A backend that stops answering (SIGSTOP: the kernel still holds its TCP
// connection open) is noticed by the keepalive PING; once it runs again the
// gateway connects anew and calls succeed.
TEST_F(UpstreamConnections, KeepalivePingDetectsAFrozenBackend) {
  auto& b = add_echo("frozen");
  ASSERT_TRUE(start_gateway(cluster_toml("backend", {b.endpoint().address()},
                                         "keepalive_interval = \"200ms\"\nkeepalive_timeout = \"300ms\"\n"),
                            one_worker()));
  auto s = stub();
  ASSERT_TRUE(unary(*s, "before").status.ok());
  b.process().signal(SIGSTOP);
  const bool noticed = gw_->process().wait_for(
      Stream::Stderr, [](const std::string& t) { return t.find("no answer to a keepalive PING") != std::string::npos; },
      10s);
  b.process().signal(SIGCONT);
  EXPECT_TRUE(noticed) << gw_->process().describe();
  auto o = unary(*s, "after");
  EXPECT_TRUE(o.status.ok()) << status_str(o.status);
  EXPECT_GE(stopped_counter("upstream_keepalive_timeouts"), 1u);
}

// An upstream connection without streams is closed after idle_timeout; the
// next call opens a new one.
TEST_F(UpstreamConnections, IdleConnectionIsClosed) {
  auto& b = add_echo("idle");
  ASSERT_TRUE(start_gateway(cluster_toml("backend", {b.endpoint().address()}, "idle_timeout = \"300ms\"\n"),
                            one_worker()));
  auto s = stub();
  ASSERT_TRUE(unary(*s, "first").status.ok());
  std::this_thread::sleep_for(1s);
  ASSERT_TRUE(unary(*s, "second").status.ok());
  EXPECT_GE(stopped_counter("upstream_idle_closed"), 1u);
  EXPECT_GE(stopped_counter("upstream_connects"), 2u);
}

// Every endpoint NOT_SERVING: all_unhealthy = "fail" answers UNAVAILABLE
// with the cluster named; "panic" still uses them.
TEST_F(UpstreamConnections, AllUnhealthyFailsOrPanics) {
  for (const char* mode : {"fail", "panic"}) {
    SCOPED_TRACE(mode);
    backends_.clear();
    auto addrs = add_echos(2);
    for (auto& b : backends_) ASSERT_TRUE(b->set_serving(false, "").ok());
    ASSERT_TRUE(start_gateway(cluster_toml("backend", addrs,
                                           std::string("all_unhealthy = \"") + mode +
                                               "\"\n[clusters.health_check]\ninterval = \"200ms\"\n"
                                               "unhealthy_threshold = 1\n"),
                              one_worker()));
    auto s = stub();
    // The first checks run right after start; wait until they have failed.
    ASSERT_TRUE(gw_->process().wait_for(
        Stream::Stderr,
        [](const std::string& t) {
          size_t n = 0;
          for (size_t at = t.find("is unhealthy"); at != std::string::npos; at = t.find("is unhealthy", at + 1)) ++n;
          return n >= 2;
        },
        10s))
        << gw_->process().describe();
    for (int i = 0; i < 5; ++i) {
      auto o = unary(*s, "unhealthy");
      if (std::string(mode) == "fail") {
        EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << status_str(o.status);
        EXPECT_EQ(o.status.error_message(), "cluster backend: no healthy endpoint");
      } else {
        EXPECT_TRUE(o.status.ok()) << status_str(o.status);
      }
    }
    gw_->stop();
    gw_.reset();
  }
}

// Without health checks, an endpoint that refuses connections is ejected
// after consecutive failures; every call still succeeds (retried on the
// other endpoint), and the ejection is logged.
TEST_F(UpstreamConnections, RefusingEndpointIsEjected) {
  auto& b = add_echo("alive");
  ASSERT_TRUE(start_gateway(cluster_toml("backend",
                                         {"127.0.0.1:" + std::to_string(closed_port()), b.endpoint().address()},
                                         "[clusters.outlier]\nconsecutive_failures = 2\nbase_ejection = \"1m\"\n"),
                            one_worker()));
  auto s = stub();
  auto by = spread(*s, 40);
  EXPECT_EQ(by["alive"], 40u) << counts_str(by);
  EXPECT_NE(gw_->process().stderr_text().find("ejected for 60000 ms after 2 consecutive failures"), std::string::npos)
      << gw_->process().stderr_text();
  EXPECT_EQ(stopped_counter("endpoints_ejected"), 1u);
}


// ---------------------------------------------------------------- f. a backend crash

class UpstreamOutlier : public UpstreamTest {};

// The one backend of a cluster without health checks is killed with 60
// calls in flight, then started again on the same port: calls succeed again
// within a second of the restart. (Each of the 60 failed streams used to
// count as one more consecutive failure: 12 ejections within milliseconds,
// up to the 5-minute cap, and "no healthy endpoint" long after the backend
// was back.) Now the lost connection is one failure, an ejection grows only
// after the endpoint came back, and the last usable endpoint is never
// ejected (max_ejection_percent's default).
TEST_F(UpstreamOutlier, SingleEndpointKilledWith60StreamsServesWithinASecondOfRestart) {
  auto& b = add_echo("crash");
  ASSERT_TRUE(start_gateway(cluster_toml("backend", {b.endpoint().address()}), one_worker()));
  auto ch = channel();
  auto s = Echo::NewStub(ch);
  ASSERT_TRUE(unary(*s, "before").status.ok());

  constexpr int kInFlight = 60;
  std::vector<std::thread> slow;
  std::atomic<int> slow_unavailable{0}, slow_other{0};
  for (int i = 0; i < kInFlight; ++i)
    slow.emplace_back([&, i] {
      auto o = unary(*s, "slow-" + std::to_string(i), /*delay_ms=*/20'000, 30s);
      (o.status.error_code() == grpc::StatusCode::UNAVAILABLE ? slow_unavailable : slow_other)++;
    });
  StatsReply st;
  const bool all_running =
      eventually([&] { return b.stats(&st).ok() && st.active() >= static_cast<uint64_t>(kInFlight); }, 15s);
  if (!all_running) {
    b.kill();
    for (auto& t : slow) t.join();
    FAIL() << "the backend never had " << kInFlight << " calls running; it had " << st.active();
  }

  b.kill();
  for (auto& t : slow) t.join();
  EXPECT_EQ(slow_unavailable.load(), kInFlight) << slow_other.load() << " calls in flight ended otherwise";

  // Clients keep calling while it is down (bounded: 30 calls): each call's
  // connect attempts fail, consecutive failures that reach the threshold.
  int down_failed = 0;
  for (int i = 0; i < 30; ++i)
    if (!unary(*s, "while-down", 0, 2s).status.ok()) ++down_failed;
  EXPECT_EQ(down_failed, 30) << "calls succeeded with the only backend dead";

  b.restart();
  const auto restarted = Clock::now();
  // Poll with short calls; the first success must come within 1 s.
  Ms first_ok{-1};
  std::string last_failure;
  while (Clock::now() - restarted < 5s) {
    auto o = unary(*s, "after", 0, 500ms);
    if (o.status.ok()) {
      first_ok = std::chrono::duration_cast<Ms>(Clock::now() - restarted);
      break;
    }
    last_failure = status_str(o.status);
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_GE(first_ok.count(), 0) << "no call succeeded within 5 s of the restart; last: " << last_failure;
  EXPECT_LE(first_ok.count(), 1000) << "the first call succeeded " << first_ok.count()
                                    << " ms after the restart; before it: " << last_failure;
  std::cout << "[ info ] first call OK " << first_ok.count() << " ms after the restart\n";
  for (int i = 0; i < 20; ++i) {
    auto o = unary(*s, "steady");
    EXPECT_TRUE(o.status.ok()) << "call " << i << " after the restart: " << status_str(o.status);
  }
  EXPECT_EQ(stopped_counter("endpoints_ejected"), 0u);
  EXPECT_GE(stopped_counter("endpoints_ejection_refused"), 1u);
  EXPECT_NE(gw_->process().stderr_text().find("not ejected after 5 consecutive failures: max_ejection_percent = 50"),
            std::string::npos)
      << gw_->process().stderr_text();
}


// Two backends, no health checks: one is killed with many calls in flight
// and started again at once. The lost connection is one failure of it (five
// in a row eject), not one per call, so it is not ejected and gets calls
// again as soon as it is back.
TEST_F(UpstreamOutlier, CrashWithCallsInFlightCountsAsOneFailure) {
  auto addrs = add_echos(2);
  ASSERT_TRUE(start_gateway(cluster_toml("backend", addrs, "[clusters.outlier]\nbase_ejection = \"1m\"\n"),
                            one_worker()));
  auto s = stub();
  ASSERT_TRUE(all_answer(*s, {"b0", "b1"}, 15s));

  constexpr int kInFlight = 60;
  std::vector<std::thread> slow;
  for (int i = 0; i < kInFlight; ++i)
    slow.emplace_back([&, i] { unary(*s, "slow-" + std::to_string(i), /*delay_ms=*/20'000, 30s); });
  StatsReply st0, st1;
  const bool running = eventually(
      [&] {
        return backends_[0]->stats(&st0).ok() && backends_[1]->stats(&st1).ok() &&
               st0.active() + st1.active() >= static_cast<uint64_t>(kInFlight);
      },
      15s);
  const uint64_t on_b0 = st0.active();
  backends_[0]->kill();
  backends_[1]->kill();  // ends the other calls too; restarted below
  for (auto& t : slow) t.join();
  ASSERT_TRUE(running) << "the backends never had " << kInFlight << " calls running";
  ASSERT_GE(on_b0, 5u) << "too few calls on b0 to have ejected it per call";

  backends_[0]->restart();
  backends_[1]->restart();
  // b0's lost connection counted once: b0 takes calls at once.
  EXPECT_TRUE(all_answer(*s, {"b0", "b1"}, 1s)) << "b0 did not answer within 1 s of its restart";
  EXPECT_EQ(stopped_counter("endpoints_ejected"), 0u);
}

}  // namespace
}  // namespace tlsgate::itest
