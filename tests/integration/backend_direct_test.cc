// Sanity checks of the test peers themselves: the grpc++ client talks h2c to
// echo_server directly, without the gateway. If these fail, the gateway
// suites' failures mean nothing.
#include <thread>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

class BackendDirect : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<TempDir>();
    echo_ = std::make_unique<EchoBackend>(dir_->path());
    channel_ = h2c_channel(echo_->endpoint().address());
    stub_ = Echo::NewStub(channel_);
  }
  void TearDown() override {
    stub_.reset();
    channel_.reset();
    if (echo_) {
      auto st = echo_->process().stop(10s);
      EXPECT_TRUE(st.exited && st.code == 0) << "echo_server on SIGTERM: " << st.to_string() << "\n"
                                             << echo_->process().describe();
    }
  }
  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<EchoBackend> echo_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Echo::Stub> stub_;
};

TEST_F(BackendDirect, Unary) {
  auto o = unary(*stub_, "hello");
  ASSERT_TRUE(o.status.ok()) << status_str(o.status);
  EXPECT_EQ(o.payload, "hello");
  EXPECT_EQ(o.server_id, "echo");

  StatsReply s;
  ASSERT_TRUE(echo_->stats(&s).ok());
  EXPECT_EQ(calls_of(s, "Unary"), 1u);
  EXPECT_EQ(s.messages_received(), 1u);
  EXPECT_EQ(s.bytes_received(), 5u);
  EXPECT_EQ(s.last_authority(), echo_->endpoint().address());
  EXPECT_EQ(s.last_x_forwarded_for(), "");
}

TEST_F(BackendDirect, Streams) {
  {
    auto ctx = context();
    EchoRequest req;
    req.set_payload("s");
    req.set_response_count(100);
    auto reader = stub_->ServerStream(ctx.get(), req);
    EchoReply r;
    uint64_t n = 0;
    while (reader->Read(&r)) {
      EXPECT_EQ(r.sequence(), n);
      EXPECT_EQ(r.payload(), "s");
      ++n;
    }
    auto st = reader->Finish();
    ASSERT_TRUE(st.ok()) << status_str(st);
    EXPECT_EQ(n, 100u);
  }
  {
    auto ctx = context();
    EchoReply reply;
    auto writer = stub_->ClientStream(ctx.get(), &reply);
    std::string all;
    for (int i = 0; i < 100; ++i) {
      EchoRequest req;
      req.set_payload("c" + std::to_string(i) + ";");
      all += req.payload();
      ASSERT_TRUE(writer->Write(req));
    }
    writer->WritesDone();
    auto st = writer->Finish();
    ASSERT_TRUE(st.ok()) << status_str(st);
    EXPECT_EQ(reply.message_count(), 100u);
    EXPECT_EQ(reply.payload(), all);
  }
  {
    auto ctx = context();
    auto stream = stub_->Bidi(ctx.get());
    for (int i = 0; i < 100; ++i) {
      EchoRequest req;
      req.set_payload("b" + std::to_string(i));
      ASSERT_TRUE(stream->Write(req));
      EchoReply r;
      ASSERT_TRUE(stream->Read(&r));
      EXPECT_EQ(r.payload(), req.payload());
      EXPECT_EQ(r.sequence(), static_cast<uint64_t>(i));
    }
    stream->WritesDone();
    auto st = stream->Finish();
    ASSERT_TRUE(st.ok()) << status_str(st);
  }
}

TEST_F(BackendDirect, StatusAndTrailers) {
  auto ctx = context();
  EchoRequest req;
  EchoReply reply;
  req.set_status_code(5);
  req.set_status_message("not found: 100% sure");
  (*req.mutable_trailers())["x-trailer-one"] = "alpha";
  auto st = stub_->Unary(ctx.get(), req, &reply);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "not found: 100% sure");
  auto tr = ctx->GetServerTrailingMetadata();
  auto it = tr.find("x-trailer-one");
  ASSERT_NE(it, tr.end());
  EXPECT_EQ(std::string(it->second.data(), it->second.size()), "alpha");
}

TEST_F(BackendDirect, CancelIsCounted) {
  auto ctx = context(30s);
  EchoRequest req;
  EchoReply reply;
  req.set_delay_ms(20000);
  std::thread canceller([&] {
    auto deadline = Clock::now() + 5s;
    StatsReply s;
    while (Clock::now() < deadline && !(echo_->stats(&s).ok() && s.active() == 1))
      std::this_thread::sleep_for(10ms);
    ctx->TryCancel();
  });
  auto start = Clock::now();
  auto st = stub_->Unary(ctx.get(), req, &reply);
  canceller.join();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << status_str(st);
  EXPECT_LT(Clock::now() - start, 10s);
  auto deadline = Clock::now() + 5s;
  StatsReply s;
  while (Clock::now() < deadline) {
    ASSERT_TRUE(echo_->stats(&s).ok());
    if (s.cancelled() >= 1) break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(s.cancelled(), 1u);
  EXPECT_EQ(calls_of(s, "Unary"), 1u);
}

// What grpc++ answers to a plain GET: the TlsH2 curl test expects the same
// answer through the gateway.
TEST_F(BackendDirect, CurlGetAnswer) {
  auto r = run({"/usr/bin/curl", "-sS", "-i", "--max-time", "10", "--http2-prior-knowledge",
                "http://" + echo_->endpoint().address() + "/"},
               dir_->path(), 20s);
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << "\n" << r.err;
  EXPECT_EQ(r.out.rfind("HTTP/2 200", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("grpc-status: 2"), std::string::npos) << r.out;
}

// ---------------------------------------------------------------- issue 5 peers
// What the upstream suites (upstream_test.cc) rely on, checked without the
// gateway: health flips, TLS and mTLS, the stream limit, a restart on the same
// port, other loopback addresses, fastbackend's refuse and GOAWAY modes.

using HealthStatus = HealthCheckResponse::ServingStatus;

class BackendDirectPeers : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = std::make_unique<TempDir>(); }
  std::unique_ptr<TempDir> dir_;
};

std::string unary_direct(EchoBackend& b, const std::string& payload, EchoReply* reply,
                         grpc::ClientContext* ctx = nullptr) {
  auto stub = Echo::NewStub(b.direct_channel());
  auto own = context(10s);
  EchoRequest req;
  req.set_payload(payload);
  auto st = stub->Unary(ctx ? ctx : own.get(), req, reply);
  return st.ok() ? "" : status_str(st);
}

TEST_F(BackendDirectPeers, HealthCheckFlipsOverallAndNamedService) {
  EchoOptions o;
  o.health_services = {"tlsgate.test.Echo"};
  EchoBackend b(dir_->path(), o);
  HealthStatus hs{};
  auto check = [&](const std::string& service) {
    hs = HealthCheckResponse::UNKNOWN;
    auto st = b.health(service, &hs);
    return st.ok() ? HealthCheckResponse::ServingStatus_Name(hs) : status_str(st);
  };
  EXPECT_EQ(check(""), "SERVING");
  EXPECT_EQ(check("tlsgate.test.Echo"), "SERVING");
  EXPECT_EQ(b.health("no.such.Service", &hs).error_code(), grpc::StatusCode::NOT_FOUND);

  ASSERT_TRUE(b.set_serving(false).ok());
  EXPECT_EQ(check(""), "NOT_SERVING");
  EXPECT_EQ(check("tlsgate.test.Echo"), "SERVING") << "the overall status must not change a named one";
  ASSERT_TRUE(b.set_serving(true).ok());
  EXPECT_EQ(check(""), "SERVING");

  ASSERT_TRUE(b.set_serving(false, "tlsgate.test.Echo").ok());
  EXPECT_EQ(check("tlsgate.test.Echo"), "NOT_SERVING");
  EXPECT_EQ(check(""), "SERVING");
  // NOT_SERVING is only what the health service says: calls still work.
  EchoReply reply;
  EXPECT_EQ(unary_direct(b, "still here", &reply), "");
  ASSERT_TRUE(b.set_serving(true, "tlsgate.test.Echo").ok());
  EXPECT_EQ(check("tlsgate.test.Echo"), "SERVING");
  // SetServing is not a counted call.
  StatsReply s;
  ASSERT_TRUE(b.stats(&s).ok());
  EXPECT_EQ(calls_of(s, "SetServing"), 0u);
  EXPECT_EQ(calls_of(s, "Unary"), 1u);
}

TEST_F(BackendDirectPeers, TlsEcho) {
  EchoOptions o;
  o.id = "tls-echo";
  o.tls_cert = certs().server_crt;
  o.tls_key = certs().server_key;
  EchoBackend b(dir_->path(), o);
  EchoReply reply;
  EXPECT_EQ(unary_direct(b, "over tls", &reply), "");
  EXPECT_EQ(reply.payload(), "over tls");
  EXPECT_EQ(reply.server_id(), "tls-echo");
  HealthStatus hs{};
  EXPECT_TRUE(b.health("", &hs).ok());
  EXPECT_EQ(hs, HealthCheckResponse::SERVING);
  // Plaintext h2c to a TLS backend fails.
  auto stub = Echo::NewStub(h2c_channel(b.endpoint().address()));
  auto ctx = context(5s);
  EchoRequest req;
  auto st = stub->Unary(ctx.get(), req, &reply);
  EXPECT_FALSE(st.ok());
}

TEST_F(BackendDirectPeers, MutualTlsWantsClientCertificate) {
  EchoOptions o;
  o.id = "mtls-echo";
  o.tls_cert = certs().server_crt;
  o.tls_key = certs().server_key;
  o.client_ca = certs().ca;
  EchoBackend b(dir_->path(), o);
  EchoReply reply;
  EXPECT_EQ(unary_direct(b, "with client cert", &reply), "");  // direct_channel() presents client.crt
  EXPECT_EQ(reply.server_id(), "mtls-echo");

  grpc::SslCredentialsOptions no_cert;
  no_cert.pem_root_certs = read_file(certs().ca);
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub =
      Echo::NewStub(grpc::CreateCustomChannel(b.endpoint().address(), grpc::SslCredentials(no_cert), args));
  auto ctx = context(5s);
  EchoRequest req;
  req.set_payload("no client cert");
  auto st = stub->Unary(ctx.get(), req, &reply);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << status_str(st);
  StatsReply s;
  ASSERT_TRUE(b.stats(&s).ok());
  EXPECT_EQ(calls_of(s, "Unary"), 1u);
}

// The channel the routing test uses: any :authority over TLS.
TEST_F(BackendDirectPeers, AnyAuthorityTlsChannel) {
  EchoOptions o;
  o.tls_cert = certs().server_crt;
  o.tls_key = certs().server_key;
  EchoBackend b(dir_->path(), o);
  auto stub = Echo::NewStub(tls_channel_any_authority(b.endpoint().address()));
  // Mixed case reaches the server as sent.
  auto call = unary(*stub, "routed", 0, 10s, "API.Example.com");
  ASSERT_TRUE(call.status.ok()) << status_str(call.status);
  StatsReply s;
  ASSERT_TRUE(b.stats(&s).ok());
  EXPECT_EQ(s.last_authority(), "API.Example.com");
}

TEST_F(BackendDirectPeers, MaxConcurrentStreamsOne) {
  EchoOptions o;
  o.max_concurrent_streams = 1;
  EchoBackend b(dir_->path(), o);
  auto stub = Echo::NewStub(b.direct_channel());
  std::vector<std::thread> threads;
  std::vector<grpc::Status> results(3);
  for (int i = 0; i < 3; ++i)
    threads.emplace_back([&, i] {
      auto ctx = context(20s);
      EchoRequest req;
      EchoReply reply;
      req.set_delay_ms(300);
      results[i] = stub->Unary(ctx.get(), req, &reply);
    });
  for (auto& t : threads) t.join();
  for (const auto& st : results) EXPECT_TRUE(st.ok()) << status_str(st);
  StatsReply s;
  ASSERT_TRUE(b.stats(&s).ok());
  EXPECT_EQ(calls_of(s, "Unary"), 3u);
  EXPECT_EQ(s.max_active(), 1u) << "SETTINGS_MAX_CONCURRENT_STREAMS 1 not honoured by the client";
}

TEST_F(BackendDirectPeers, RestartOnSamePortAfterKill) {
  EchoOptions o;
  o.id = "phoenix";
  EchoBackend b(dir_->path(), o);
  const int port = b.endpoint().port;
  EchoReply reply;
  EXPECT_EQ(unary_direct(b, "before", &reply), "");
  // A connection stays open to the old process, as a gateway's would.
  auto ch = b.direct_channel();
  ASSERT_TRUE(wait_connected(ch, 5s));
  b.kill();
  b.restart();
  EXPECT_EQ(b.endpoint().port, port);
  EXPECT_EQ(unary_direct(b, "after", &reply), "");
  EXPECT_EQ(reply.server_id(), "phoenix");
}

TEST_F(BackendDirectPeers, OtherLoopbackAddressesSamePort) {
  EchoOptions o2;
  o2.id = "dot2";
  o2.host = "127.0.0.2";
  EchoBackend b2(dir_->path(), o2);
  EchoOptions o3;
  o3.id = "dot3";
  o3.host = "127.0.0.3";
  o3.port = b2.endpoint().port;
  EchoBackend b3(dir_->path(), o3);
  EXPECT_EQ(b2.endpoint().address(), "127.0.0.2:" + std::to_string(b2.endpoint().port));
  EXPECT_EQ(b3.endpoint().address(), "127.0.0.3:" + std::to_string(b2.endpoint().port));
  EchoReply reply;
  EXPECT_EQ(unary_direct(b2, "x", &reply), "");
  EXPECT_EQ(reply.server_id(), "dot2");
  EXPECT_EQ(unary_direct(b3, "x", &reply), "");
  EXPECT_EQ(reply.server_id(), "dot3");
}

// The DNS test needs this; tools/test runs as root, where it works.
TEST_F(BackendDirectPeers, HostsNamespaceHelper) { EXPECT_EQ(hosts_namespace_unavailable(), ""); }

class FastBackendDirect : public BackendDirectPeers {};

// An EchoRequest sent to fastbackend comes back as the same bytes, which
// parse as an EchoReply with the same payload (field 1 in both).
TEST_F(FastBackendDirect, DefaultEchoesAndPrintsNoTestCounters) {
  FastBackend fb(dir_->path());
  auto stub = Echo::NewStub(h2c_channel(fb.endpoint().address()));
  for (int i = 0; i < 3; ++i) {
    const std::string payload = "fast-" + std::to_string(i);
    auto o = unary(*stub, payload);
    ASSERT_TRUE(o.status.ok()) << status_str(o.status);
    EXPECT_EQ(o.payload, payload);
    EXPECT_EQ(o.server_id, "");
  }
  auto counts = fb.stop_and_count();
  EXPECT_EQ(counts["calls"], 3u) << fb.process().describe();
  EXPECT_EQ(counts.count("refused"), 0u) << "the default exit line changed:\n" << fb.process().stderr_text();
}

TEST_F(FastBackendDirect, RefuseFirstN) {
  FastBackend fb(dir_->path(), {"--refuse", "3"});
  // Without grpc's transparent retries a refused stream is UNAVAILABLE.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  auto stub = Echo::NewStub(h2c_channel(fb.endpoint().address(), &args));
  std::vector<grpc::StatusCode> codes;
  for (int i = 0; i < 5; ++i) codes.push_back(unary(*stub, "r" + std::to_string(i)).status.error_code());
  std::vector<grpc::StatusCode> want = {grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::UNAVAILABLE,
                                        grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::OK,
                                        grpc::StatusCode::OK};
  EXPECT_EQ(codes, want);
  auto counts = fb.stop_and_count();
  EXPECT_EQ(counts["refused"], 3u) << fb.process().describe();
  EXPECT_EQ(counts["calls"], 2u) << fb.process().describe();
}

TEST_F(FastBackendDirect, GoawayAfterN) {
  FastBackend fb(dir_->path(), {"--goaway-after", "2"});
  auto stub = Echo::NewStub(h2c_channel(fb.endpoint().address()));
  for (int i = 0; i < 5; ++i) {
    const std::string payload = "g" + std::to_string(i);
    auto o = unary(*stub, payload);
    EXPECT_TRUE(o.status.ok()) << "call " << i << ": " << status_str(o.status);
    EXPECT_EQ(o.payload, payload);
  }
  auto counts = fb.stop_and_count();
  // Sequential calls: 2 per connection, then GOAWAY; the fifth is alone.
  EXPECT_EQ(counts["calls"], 5u) << fb.process().describe();
  EXPECT_EQ(counts["goaways"], 2u) << fb.process().describe();
  EXPECT_GE(counts["connections"], 3u) << fb.process().describe();
}

}  // namespace
}  // namespace tlsgate::itest
