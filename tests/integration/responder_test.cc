// Responder clusters (issue 20): calls answered by the gateway itself, through
// the real binary with real grpc++ clients and curl. One gateway per test:
// its default cluster echoes; routes send Stats to a real echo backend,
// ServerStream to a cluster answering INTERNAL and ClientStream... to one
// answering a message of a configured size, so that one connection reaches
// responders and a backend side by side.
#include <fstream>

#include "fixtures.hh"

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
message = "responder says 100% no"

[[clusters]]
name = "sized"
respond = "status"
response_bytes = 1000

[[clusters]]
name = "slow"
respond = "echo"
delay = "300ms"
)";

constexpr const char* kRoutes = R"(
[[listeners.routes]]
path_prefix = "/tlsgate.test.Echo/Stats"
cluster = "backend"
[[listeners.routes]]
path_prefix = "/tlsgate.test.Echo/ClientStream"
cluster = "failing"
[[listeners.routes]]
path_prefix = "/tlsgate.test.Echo/ServerStream"
cluster = "sized"
[[listeners.routes]]
path_prefix = "/tlsgate.test.Echo/SetServing"
cluster = "slow"
)";

void responder_config(GatewayConfig& c, const std::string& backend) {
  c.cluster = "target";
  c.clusters = std::string(kResponders) + cluster_toml("backend", {backend});
  c.listener_tail = kRoutes;
}

class Responder : public GatewayTest {
 protected:
  void configure(GatewayConfig& c) override {
    responder_config(c, echo_->endpoint().address());
    c.admin = true;
    c.extra_top = "[access_log]\npath = \"" + (dir_->path() / "access.log").string() + "\"\n";
  }

  std::string scrape() {
    HttpAnswer a = http_request(gw_->admin_port(), "/metrics");
    EXPECT_EQ(a.status, 200) << a.head;
    return a.body;
  }

  // curl POSTs `request` (a gRPC-framed body) to `path`; the response body
  // goes to a file, returned with curl's stdout (the -i head and trailers).
  RunResult curl(const std::string& path, const std::string& request, std::string* body) {
    const auto req = dir_->path() / "request.grpc";
    const auto out = dir_->path() / "response.grpc";
    write_file(req, request);
    std::string data = "@";  // appended: GCC 12's false -Wrestrict at -O3
    data += req.string();
    RunResult r = run({"/usr/bin/curl", "-k", "-sS", "-D", "-", "-o", out.string(), "--max-time", "10",
                       "--http2-prior-knowledge", "-X", "POST", "-H", "content-type: application/grpc", "-H",
                       "te: trailers", "--data-binary", data, "https://" + gw_->target() + path},
                      dir_->path(), 20s);
    std::ifstream in(out, std::ios::binary);
    *body = std::string(std::istreambuf_iterator<char>(in), {});
    return r;
  }
};

// The reply of a unary call comes from the responder: the request's own
// payload, and no server_id (the echo backend always sets one).
TEST_F(Responder, GrpcUnaryEcho) {
  auto s = stub();
  for (int i = 0; i < 20; ++i) {
    UnaryOutcome o = unary(*s, "ping-" + std::to_string(i));
    ASSERT_TRUE(o.status.ok()) << status_str(o.status);
    EXPECT_EQ(o.payload, "ping-" + std::to_string(i));
    EXPECT_EQ(o.server_id, "");
  }
}

// 4 MiB each way is 16 stream windows of 256 KiB: the echo can only go on if
// request bytes go back to the client's window as they are answered.
TEST_F(Responder, GrpcUnaryEcho4MiB) {
  auto s = stub();
  for (unsigned seed = 1; seed <= 2; ++seed) {
    auto ctx = context(60s);
    EchoRequest req;
    EchoReply reply;
    req.set_payload(pattern(4 << 20, seed));
    auto st = s->Unary(ctx.get(), req, &reply);
    ASSERT_TRUE(st.ok()) << status_str(st);
    EXPECT_TRUE(reply.payload() == req.payload()) << "the 4 MiB reply differs from the request (size "
                                                  << reply.payload().size() << ")";
  }
}

// Bidi: every message comes back, in order, while the client is still
// writing (writes and reads run concurrently); half-close ends it OK.
TEST_F(Responder, GrpcBidiEchoesEveryMessage) {
  auto ctx = context(60s);
  auto stream = stub()->Bidi(ctx.get());
  constexpr int kMessages = 1000;
  std::thread writer([&] {
    for (int i = 0; i < kMessages; ++i) {
      EchoRequest req;
      req.set_payload("bidi-" + std::to_string(i) + std::string(static_cast<size_t>(i % 7) * 100, 'b'));
      if (!stream->Write(req)) return;
    }
    stream->WritesDone();
  });
  EchoReply r;
  int n = 0;
  while (stream->Read(&r)) {
    const std::string want = "bidi-" + std::to_string(n) + std::string(static_cast<size_t>(n % 7) * 100, 'b');
    if (r.payload() != want) {
      ADD_FAILURE() << "reply " << n << ": \"" << r.payload().substr(0, 40) << "\"";
      ctx->TryCancel();
      break;
    }
    ++n;
  }
  writer.join();
  auto st = stream->Finish();
  ASSERT_TRUE(st.ok()) << status_str(st);
  EXPECT_EQ(n, kMessages);
}

// respond = "status", status = 13: the client sees INTERNAL and the
// configured message (sent percent-encoded, decoded by grpc).
TEST_F(Responder, GrpcStatusAndMessage) {
  auto ctx = context(10s);
  EchoReply reply;
  auto writer = stub()->ClientStream(ctx.get(), &reply);
  writer->WritesDone();  // may fail: the answer can come first
  auto st = writer->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INTERNAL) << status_str(st);
  EXPECT_EQ(st.error_message(), "responder says 100% no");
}

// response_bytes = 1000: a typed client gets a reply (a protobuf message
// whose field 1 holds zeros), and on the wire the message is 1000 bytes.
TEST_F(Responder, GrpcResponseBytes) {
  auto ctx = context(10s);
  EchoRequest req;
  req.set_payload("size please");
  auto reader = stub()->ServerStream(ctx.get(), req);
  EchoReply r;
  int n = 0;
  while (reader->Read(&r)) {
    ++n;
    EXPECT_EQ(r.payload(), std::string(995, '\0'));  // 1000 - tag - 4-byte length
  }
  auto st = reader->Finish();
  ASSERT_TRUE(st.ok()) << status_str(st);
  EXPECT_EQ(n, 1);

  std::string body;
  RunResult c = curl("/tlsgate.test.Echo/ServerStream", grpc_frame(""), &body);
  ASSERT_TRUE(c.status.exited && c.status.code == 0) << c.status.to_string() << "\n" << c.err;
  ASSERT_EQ(body.size(), 1005u);
  EXPECT_EQ(body.substr(0, 5), std::string("\0\0\0\x03\xe8", 5)) << "gRPC prefix: uncompressed, 1000 bytes";
  EXPECT_NE(c.out.find("grpc-status: 0"), std::string::npos) << c.out;
}

// curl with a hand-made gRPC frame (the README's way to call a responder):
// the response body is the request body.
TEST_F(Responder, CurlEcho) {
  const std::string request = grpc_frame(std::string("\x0a\x05hello", 7));
  std::string body;
  RunResult c = curl("/tlsgate.test.Echo/Unary", request, &body);
  ASSERT_TRUE(c.status.exited && c.status.code == 0) << c.status.to_string() << "\n" << c.err;
  EXPECT_EQ(c.out.rfind("HTTP/2 200", 0), 0u) << c.out;
  EXPECT_NE(c.out.find("content-type: application/grpc"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("grpc-status: 0"), std::string::npos) << c.out;
  EXPECT_TRUE(body == request) << "echoed " << body.size() << " bytes for " << request.size();
}

// One connection: Unary to the echo responder, Stats to the real backend,
// which saw none of the unary calls.
TEST_F(Responder, RoutesToResponderAndBackendOnOneConnection) {
  auto ch = tls_channel(gw_->target());
  auto s = Echo::NewStub(ch);
  for (int i = 0; i < 5; ++i) {
    UnaryOutcome o = unary(*s, "mixed-" + std::to_string(i));
    ASSERT_TRUE(o.status.ok()) << status_str(o.status);
    EXPECT_EQ(o.payload, "mixed-" + std::to_string(i));
    EXPECT_EQ(o.server_id, "");
    auto ctx = context(10s);
    tlsgate::test::StatsRequest sreq;
    StatsReply stats;
    auto st = s->Stats(ctx.get(), sreq, &stats);
    ASSERT_TRUE(st.ok()) << status_str(st);
    EXPECT_NE(stats.server_id(), "") << "Stats was answered by the backend";
    EXPECT_EQ(calls_of(stats, "Unary"), 0u);
  }
  EXPECT_EQ(metric(scrape(), "tlsgate_upstream_connects_total"), 1) << "one backend connection, for Stats";
}

// /metrics counts responder streams by their cluster and grpc-status, like
// any cluster's, and in tlsgate_streams_responded_total.
TEST_F(Responder, MetricsCountByCluster) {
  auto s = stub();
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(unary(*s, "m").status.ok());
  for (int i = 0; i < 3; ++i) {
    auto ctx = context(10s);
    EchoReply reply;
    auto writer = s->ClientStream(ctx.get(), &reply);
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::INTERNAL);
  }
  std::string page;
  // Streams are counted when they end at the gateway, which may be just
  // after the client saw its answer.
  EXPECT_TRUE(eventually(
      [&] {
        page = scrape();
        return metric(page, "tlsgate_streams_total", {"cluster=\"target\"", "grpc_status=\"0\""}) == 7 &&
               metric(page, "tlsgate_streams_total", {"cluster=\"failing\"", "grpc_status=\"13\""}) == 3;
      },
      5s))
      << page;
  EXPECT_EQ(metric(page, "tlsgate_streams_responded_total"), 10) << page;
  EXPECT_EQ(metric(page, "tlsgate_streams_forwarded_total"), 0) << page;

  // The access log names the cluster of each line (all written once the
  // gateway has stopped).
  gw_->stop();
  const std::string log = read_file(dir_->path() / "access.log");
  auto count = [&](const std::string& needle) {
    size_t n = 0;
    for (size_t at = log.find(needle); at != std::string::npos; at = log.find(needle, at + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count("\"cluster\":\"target\""), 7u) << log;
  EXPECT_EQ(count("\"cluster\":\"failing\""), 3u) << log;
}

// /config shows the responders as configured, defaults included.
TEST_F(Responder, ConfigEndpointShowsResponders) {
  HttpAnswer a = http_request(gw_->admin_port(), "/config");
  ASSERT_EQ(a.status, 200) << a.head;
  EXPECT_NE(a.body.find("name = \"target\"\nrespond = \"echo\"\ndelay = \"0s\""), std::string::npos) << a.body;
  EXPECT_NE(a.body.find("respond = \"status\"\ndelay = \"0s\"\nstatus = 13\nmessage = \"responder says 100% no\""),
            std::string::npos)
      << a.body;
  EXPECT_NE(a.body.find("name = \"slow\"\nrespond = \"echo\"\ndelay = \"300ms\""), std::string::npos) << a.body;
}

// delay = "300ms": no answer comes sooner, and 20 calls at once all come
// within a few delays (a timer per call, not a sleep that would hold the
// shard: 20 x 300 ms one after another).
TEST_F(Responder, DelayIsATimerPerCall) {
  auto s = stub();
  ASSERT_TRUE(unary(*s, "warm").status.ok());  // the connection is up
  grpc::CompletionQueue cq;
  struct Call {
    grpc::ClientContext ctx;
    grpc::Status status;
    StatsReply reply;
    std::unique_ptr<grpc::ClientAsyncResponseReader<StatsReply>> rpc;
  };
  constexpr int kCalls = 20;
  std::vector<std::unique_ptr<Call>> calls;
  const auto start = Clock::now();
  for (int i = 0; i < kCalls; ++i) {
    auto c = std::make_unique<Call>();
    c->ctx.set_deadline(std::chrono::system_clock::now() + 20s);
    tlsgate::test::SetServingRequest req;  // empty: echoed as an empty StatsReply
    c->rpc = s->AsyncSetServing(&c->ctx, req, &cq);
    c->rpc->Finish(&c->reply, &c->status, c.get());
    calls.push_back(std::move(c));
  }
  int done = 0;
  void* tag = nullptr;
  bool ok = false;
  while (done < kCalls && cq.AsyncNext(&tag, &ok, std::chrono::system_clock::now() + 30s) ==
                              grpc::CompletionQueue::GOT_EVENT) {
    auto* c = static_cast<Call*>(tag);
    EXPECT_TRUE(c->status.ok()) << status_str(c->status);
    EXPECT_GE(Clock::now() - start, 300ms) << "answered before its delay";
    ++done;
  }
  const auto elapsed = Clock::now() - start;
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  EXPECT_EQ(done, kCalls);
  EXPECT_LT(elapsed, 3s) << "20 delayed calls took as long as a sleep per call";
}

// SIGHUP turns the cluster "backend" into a responder and back, by name:
// connections made after each reload follow it, and the backend serves again
// after. (A connection made before keeps its snapshot, which forwards, while
// the pool's cluster has the new configuration's endpoints, none: its calls
// get grpc-status 14 until it reconnects, as for endpoints a reload removes.)
class ResponderReload : public GatewayTest {
 protected:
  GatewayConfig config(bool responder) const {
    GatewayConfig c;
    c.endpoints = {echo_->endpoint().address()};
    if (responder) c.clusters = "\n[[clusters]]\nname = \"backend\"\nrespond = \"echo\"\n";
    return c;
  }
  void reload(bool responder) {
    const std::string line = "configuration reloaded";
    auto seen = [&] {
      const std::string err = gw_->process().stderr_text();
      size_t n = 0;
      for (size_t at = err.find(line); at != std::string::npos; at = err.find(line, at + 1)) ++n;
      return n;
    };
    const size_t before = seen();
    write_file(gw_->config_path(), config(responder).render());
    gw_->process().signal(SIGHUP);
    ASSERT_TRUE(eventually([&] { return seen() > before; }, 10s)) << gw_->process().stderr_text();
  }
  // Who answered one call on a new connection: the backend's id, or "" (the responder).
  std::string answered_by(Echo::Stub& s) {
    UnaryOutcome o = unary(s, "who");
    EXPECT_TRUE(o.status.ok()) << status_str(o.status);
    EXPECT_EQ(o.payload, "who");
    return o.server_id;
  }
};

TEST_F(ResponderReload, ClusterBecomesAResponderAndBack) {
  EXPECT_NE(answered_by(*stub()), "");
  ASSERT_NO_FATAL_FAILURE(reload(true));
  // The shards adopt the new snapshot at their next tick (100 ms).
  EXPECT_TRUE(eventually([&] { return answered_by(*stub()).empty(); }, 5s)) << "no call reached the responder";
  ASSERT_NO_FATAL_FAILURE(reload(false));
  EXPECT_TRUE(eventually([&] { return !answered_by(*stub()).empty(); }, 5s)) << "the backend did not come back";
}

// `tlsgate --check-config` accepts the shipped load-testing target.
TEST(ResponderConfig, ShippedTargetChecks) {
  TempDir dir;
  std::string text;
  {
    std::ifstream in(env("TLSGATE_SOURCE_ROOT") + "/conf/target.toml");
    text = std::string(std::istreambuf_iterator<char>(in), {});
  }
  ASSERT_FALSE(text.empty()) << "TLSGATE_SOURCE_ROOT=" << env("TLSGATE_SOURCE_ROOT");
  auto replace = [&](const std::string& from, const std::string& to) {
    for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
      text.replace(at, from.size(), to);
  };
  replace("conf/certs/server.crt", certs().server_crt.string());
  replace("conf/certs/server.key", certs().server_key.string());
  write_file(dir.path() / "target.toml", text);
  RunResult r = run({env("TLSGATE_BIN"), "--check-config", (dir.path() / "target.toml").string()}, dir.path(), 20s);
  EXPECT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << "\n" << r.out << r.err;
}

}  // namespace
}  // namespace tlsgate::itest
