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
  auto ctx = context();
  EchoRequest req;
  EchoReply reply;
  req.set_payload("hello");
  auto st = stub_->Unary(ctx.get(), req, &reply);
  ASSERT_TRUE(st.ok()) << status_str(st);
  EXPECT_EQ(reply.payload(), "hello");
  EXPECT_EQ(reply.server_id(), "echo");

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

}  // namespace
}  // namespace tlsgate::itest
