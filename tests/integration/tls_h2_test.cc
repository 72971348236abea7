// gRPC over TLS + HTTP/2 through a real tlsgate to a real grpc++ backend.
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <thread>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

namespace fs = std::filesystem;

class TlsH2 : public GatewayTest {};

std::string md_value(const std::multimap<grpc::string_ref, grpc::string_ref>& md, const std::string& key) {
  auto it = md.find(key);
  if (it == md.end()) return "<absent>";
  return std::string(it->second.data(), it->second.size());
}

// An ESTABLISHED connection accepted on the gateway's port, as /proc/net/tcp
// and /proc/*/fd show it.
struct Accepted {
  std::string text;       // "local <- remote held by comm[pid], peer held by comm[pid]"
  bool peer_is_this_test;  // the client end is a socket of this process
};

// socket inode -> "comm[pid]" of the process holding it, for every process.
std::map<std::string, std::string> socket_owners() {
  std::map<std::string, std::string> owners;
  for (const auto& p : fs::directory_iterator("/proc")) {
    const std::string pid = p.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;  // "self", "sys", ...
    std::ifstream comm(p.path() / "comm");
    std::string name;
    std::getline(comm, name);
    std::error_code ec;
    for (const auto& fd : fs::directory_iterator(p.path() / "fd", ec)) {
      std::string link = fs::read_symlink(fd.path(), ec).string();
      if (link.starts_with("socket:[")) owners[link.substr(8, link.size() - 9)] = name + "[" + pid + "]";
    }
  }
  return owners;
}

// Every connection established on 127.0.0.1:port, so a test can count its own
// client's connections — another test process's stray connection to a port the
// kernel has since handed to this gateway is not this client's doing — and a
// failure can say whose each one was.
std::vector<Accepted> accepted_on(int port) {
  struct Row {
    std::string local, remote, inode;
  };
  // A gRPC client's socket is AF_INET6 connected to ::ffff:127.0.0.1, so its
  // end is in tcp6 under the v4-mapped address: written here the v4 way.
  auto v4 = [](std::string a) {
    const std::string mapped = "0000000000000000FFFF0000";
    return a.starts_with(mapped) ? a.substr(mapped.size()) : a;
  };
  std::vector<Row> rows;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream s(line);
      std::string sl, local, remote, state, queues, timer, retr, uid, timeout, inode;
      s >> sl >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >> inode;
      if (state == "01") rows.push_back({v4(local), v4(remote), inode});
    }
  }
  const auto owners = socket_owners();
  auto owner = [&](const std::string& inode) {
    auto it = owners.find(inode);
    return it == owners.end() ? std::string("?") : it->second;
  };
  const std::string self = std::to_string(::getpid());
  char want[16];
  std::snprintf(want, sizeof want, ":%04X", port);
  std::vector<Accepted> out;
  for (const auto& r : rows) {
    if (r.local.size() <= 5 || r.local.substr(r.local.size() - 5) != want) continue;
    std::string peer = "?";
    for (const auto& c : rows)
      if (c.local == r.remote && c.remote == r.local) peer = owner(c.inode);
    out.push_back({r.local + " <- " + r.remote + " held by " + owner(r.inode) + ", peer held by " + peer,
                   peer.ends_with("[" + self + "]")});
  }
  return out;
}

int from_this_test(const std::vector<Accepted>& conns) {
  return static_cast<int>(std::count_if(conns.begin(), conns.end(), [](const Accepted& c) { return c.peer_is_this_test; }));
}

std::string describe(const std::vector<Accepted>& conns) {
  std::string s = "established on the gateway's port:\n";
  for (const auto& c : conns) s += "  " + c.text + "\n";
  return s;
}

TEST_F(TlsH2, GrpcUnary) {
  const std::string payload = "hello through the gateway";
  auto o = unary(*stub(), payload);
  ASSERT_TRUE(o.status.ok()) << status_str(o.status);
  EXPECT_EQ(o.payload, payload);
  EXPECT_EQ(o.server_id, "echo");

  StatsReply s;
  ASSERT_TRUE(echo_->stats(&s).ok());
  EXPECT_EQ(calls_of(s, "Unary"), 1u);
  EXPECT_EQ(s.bytes_received(), payload.size());
}

TEST_F(TlsH2, GrpcServerStream1000) {
  auto ctx = context(60s);
  EchoRequest req;
  req.set_payload("server-stream");
  req.set_response_count(1000);
  auto reader = stub()->ServerStream(ctx.get(), req);
  EchoReply r;
  uint64_t n = 0;
  while (reader->Read(&r)) {
    if (r.sequence() != n || r.payload() != "server-stream") {
      ADD_FAILURE() << "reply " << n << ": sequence " << r.sequence() << " payload \"" << r.payload() << "\"";
      break;
    }
    ++n;
  }
  auto st = reader->Finish();
  ASSERT_TRUE(st.ok()) << status_str(st);
  EXPECT_EQ(n, 1000u);
}

TEST_F(TlsH2, GrpcClientStream1000) {
  auto ctx = context(60s);
  EchoReply reply;
  auto writer = stub()->ClientStream(ctx.get(), &reply);
  std::string all;
  for (int i = 0; i < 1000; ++i) {
    EchoRequest req;
    req.set_payload("client-" + std::to_string(i) + ";");
    all += req.payload();
    ASSERT_TRUE(writer->Write(req)) << "write " << i << " failed";
  }
  ASSERT_TRUE(writer->WritesDone());
  auto st = writer->Finish();
  ASSERT_TRUE(st.ok()) << status_str(st);
  EXPECT_EQ(reply.message_count(), 1000u);
  EXPECT_EQ(reply.payload(), all);

  StatsReply s;
  ASSERT_TRUE(echo_->stats(&s).ok());
  EXPECT_EQ(s.messages_received(), 1000u);
  EXPECT_EQ(s.bytes_received(), all.size());
}

TEST_F(TlsH2, GrpcBidi1000) {
  auto ctx = context(60s);
  auto stream = stub()->Bidi(ctx.get());
  // Writes and reads run concurrently, so flow control in both directions
  // is exercised rather than strict ping-pong.
  std::thread writer([&] {
    for (int i = 0; i < 1000; ++i) {
      EchoRequest req;
      req.set_payload("bidi-" + std::to_string(i));
      if (!stream->Write(req)) return;
    }
    stream->WritesDone();
  });
  EchoReply r;
  uint64_t n = 0;
  while (stream->Read(&r)) {
    if (r.sequence() != n || r.payload() != "bidi-" + std::to_string(n)) {
      ADD_FAILURE() << "reply " << n << ": sequence " << r.sequence() << " payload \"" << r.payload() << "\"";
      ctx->TryCancel();
      break;
    }
    ++n;
  }
  writer.join();
  auto st = stream->Finish();
  ASSERT_TRUE(st.ok()) << status_str(st);
  EXPECT_EQ(n, 1000u);
}

TEST_F(TlsH2, GrpcLargeMessages4MiB) {
  constexpr size_t kSize = 4 << 20;
  auto s = stub();
  {
    SCOPED_TRACE("unary, 4 MiB each way");
    auto ctx = context(60s);
    EchoRequest req;
    EchoReply reply;
    req.set_payload(pattern(kSize, 1));
    auto st = s->Unary(ctx.get(), req, &reply);
    ASSERT_TRUE(st.ok()) << status_str(st);
    EXPECT_EQ(reply.payload().size(), kSize);
    EXPECT_TRUE(reply.payload() == req.payload()) << "4 MiB echo differs";
  }
  {
    SCOPED_TRACE("server stream, 3 x 4 MiB down");
    auto ctx = context(60s);
    EchoRequest req;
    req.set_response_size(kSize);
    req.set_response_count(3);
    auto reader = s->ServerStream(ctx.get(), req);
    EchoReply r;
    int n = 0;
    while (reader->Read(&r)) {
      EXPECT_EQ(r.payload().size(), kSize);
      ++n;
    }
    auto st = reader->Finish();
    ASSERT_TRUE(st.ok()) << status_str(st);
    EXPECT_EQ(n, 3);
  }
  {
    SCOPED_TRACE("client stream, 3 x 4 MiB up");
    auto ctx = context(60s);
    EchoReply reply;
    auto writer = s->ClientStream(ctx.get(), &reply);
    for (unsigned i = 0; i < 3; ++i) {
      EchoRequest req;
      req.set_payload(pattern(kSize, 10 + i));
      if (i == 0) req.set_response_size(16);
      ASSERT_TRUE(writer->Write(req));
    }
    ASSERT_TRUE(writer->WritesDone());
    auto st = writer->Finish();
    ASSERT_TRUE(st.ok()) << status_str(st);
    EXPECT_EQ(reply.message_count(), 3u);
  }
  {
    SCOPED_TRACE("bidi, 3 x 4 MiB each way");
    auto ctx = context(60s);
    auto stream = s->Bidi(ctx.get());
    for (unsigned i = 0; i < 3; ++i) {
      EchoRequest req;
      req.set_payload(pattern(kSize, 20 + i));
      ASSERT_TRUE(stream->Write(req));
      EchoReply r;
      ASSERT_TRUE(stream->Read(&r));
      EXPECT_TRUE(r.payload() == req.payload()) << "bidi echo " << i << " differs";
    }
    stream->WritesDone();
    auto st = stream->Finish();
    ASSERT_TRUE(st.ok()) << status_str(st);
  }
  StatsReply st;
  ASSERT_TRUE(echo_->stats(&st).ok());
  EXPECT_EQ(st.bytes_received(), 7 * kSize);
}

TEST_F(TlsH2, Grpc1000ConcurrentStreamsOneConnection) {
  constexpr int kCalls = 1000;
  auto ch = tls_channel(gw_->target());
  ASSERT_TRUE(wait_connected(ch, 10s)) << "channel did not connect";
  auto s = Echo::NewStub(ch);
  int completed = 0;
  // delay_ms keeps the streams open at the same time.
  auto results = concurrent_unary(*s, kCalls, "call-", 100, 120s, &completed);
  ASSERT_EQ(completed, kCalls) << "completion queue timed out";
  int failed = 0;
  std::string first_failure;
  for (int i = 0; i < kCalls; ++i) {
    const auto& c = results[i];
    if (!c.status.ok() || c.reply.payload() != "call-" + std::to_string(i)) {
      if (failed++ == 0) first_failure = "call " + std::to_string(i) + ": " + status_str(c.status);
    }
  }
  EXPECT_EQ(failed, 0) << "first: " << first_failure;
  auto conns = accepted_on(gw_->endpoint().port);
  EXPECT_EQ(from_this_test(conns), 1) << "expected one client connection; " << describe(conns);
  StatsReply st;
  ASSERT_TRUE(echo_->stats(&st).ok());
  EXPECT_EQ(calls_of(st, "Unary"), static_cast<uint64_t>(kCalls));
  std::cout << "[ info ] backend saw at most " << st.max_active() << " concurrent calls\n";
  RecordProperty("backend_max_active", static_cast<int>(st.max_active()));
}

TEST_F(TlsH2, Grpc100ClientConnections) {
  constexpr int kConns = 100;
  constexpr int kRounds = 3;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<Echo::Stub>> stubs;
  for (int i = 0; i < kConns; ++i) {
    channels.push_back(tls_channel(gw_->target()));
    stubs.push_back(Echo::NewStub(channels.back()));
  }
  for (int round = 0; round < kRounds; ++round) {
    struct Call {
      grpc::ClientContext ctx;
      EchoReply reply;
      grpc::Status status;
      std::unique_ptr<grpc::ClientAsyncResponseReader<EchoReply>> rpc;
    };
    grpc::CompletionQueue cq;
    std::vector<std::unique_ptr<Call>> calls;
    auto deadline = std::chrono::system_clock::now() + 60s;
    for (int i = 0; i < kConns; ++i) {
      auto c = std::make_unique<Call>();
      c->ctx.set_deadline(deadline);
      EchoRequest req;
      req.set_payload("conn-" + std::to_string(i) + "-round-" + std::to_string(round));
      c->rpc = stubs[i]->AsyncUnary(&c->ctx, req, &cq);
      c->rpc->Finish(&c->reply, &c->status, c.get());
      calls.push_back(std::move(c));
    }
    for (int done = 0; done < kConns; ++done) {
      void* tag = nullptr;
      bool ok = false;
      auto r = cq.AsyncNext(&tag, &ok, std::chrono::system_clock::now() + 70s);
      ASSERT_EQ(r, grpc::CompletionQueue::GOT_EVENT) << "round " << round << ": timed out after " << done;
    }
    int failed = 0;
    std::string first;
    for (int i = 0; i < kConns; ++i) {
      const auto& c = *calls[i];
      auto want = "conn-" + std::to_string(i) + "-round-" + std::to_string(round);
      if (!c.status.ok() || c.reply.payload() != want)
        if (failed++ == 0) first = "connection " + std::to_string(i) + ": " + status_str(c.status);
    }
    EXPECT_EQ(failed, 0) << "round " << round << ", first: " << first;
    cq.Shutdown();
    void* tag;
    bool ok;
    while (cq.Next(&tag, &ok)) {
    }
    if (round == 0) {
      // The channels really are separate connections, all open at once.
      auto conns = accepted_on(gw_->endpoint().port);
      EXPECT_EQ(from_this_test(conns), kConns) << describe(conns);
    }
  }
  StatsReply st;
  ASSERT_TRUE(echo_->stats(&st).ok());
  EXPECT_EQ(calls_of(st, "Unary"), static_cast<uint64_t>(kConns * kRounds));
}

// SIGTERM drains: a call already running when the signal arrives still
// completes (within the 5 s drain), and the gateway then exits 0.
TEST_F(TlsH2, SigtermLetsRunningCallFinish) {
  auto ctx = context(30s);
  EchoRequest req;
  EchoReply reply;
  req.set_payload("drain");
  req.set_delay_ms(1500);
  std::thread terminator([&] {
    StatsReply s;
    poll_stats([](const StatsReply& x) { return x.active() == 1; }, 10s, &s);
    gw_->stop();  // SIGTERM; fails the test unless it exits 0 with a clean stderr
  });
  auto st = stub()->Unary(ctx.get(), req, &reply);
  terminator.join();
  EXPECT_TRUE(st.ok()) << status_str(st);
  EXPECT_EQ(reply.payload(), "drain");
}

TEST_F(TlsH2, GrpcClientCancelDelayedUnary) {
  auto ctx = context(30s);
  EchoRequest req;
  EchoReply reply;
  req.set_delay_ms(20000);
  std::thread canceller([&] {
    // Cancel once the backend is really inside the call.
    StatsReply s;
    poll_stats([](const StatsReply& x) { return x.active() == 1; }, 10s, &s);
    ctx->TryCancel();
  });
  auto start = Clock::now();
  auto st = stub()->Unary(ctx.get(), req, &reply);
  canceller.join();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << status_str(st);
  EXPECT_LT(Clock::now() - start, 15s);

  StatsReply s;
  bool seen = poll_stats([](const StatsReply& x) { return x.cancelled() >= 1 && x.active() == 0; }, 5s, &s);
  EXPECT_TRUE(seen) << "backend did not see the cancel within 5 s: cancelled=" << s.cancelled()
                    << " active=" << s.active() << " Unary calls=" << calls_of(s, "Unary");
  EXPECT_EQ(calls_of(s, "Unary"), 1u);
}

TEST_F(TlsH2, GrpcClientCancelMidServerStream) {
  auto ctx = context(60s);
  EchoRequest req;
  req.set_payload("tick");
  req.set_response_count(1000);
  req.set_interval_ms(50);
  auto reader = stub()->ServerStream(ctx.get(), req);
  EchoReply r;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(reader->Read(&r)) << "read " << i;
  ctx->TryCancel();
  while (reader->Read(&r)) {
  }
  auto st = reader->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << status_str(st);

  StatsReply s;
  bool seen = poll_stats([](const StatsReply& x) { return x.cancelled() >= 1 && x.active() == 0; }, 5s, &s);
  EXPECT_TRUE(seen) << "backend did not see the cancel within 5 s: cancelled=" << s.cancelled()
                    << " active=" << s.active() << " ServerStream calls=" << calls_of(s, "ServerStream");
}

TEST_F(TlsH2, GrpcBackendKilledMidStream) {
  auto ctx = context(60s);
  EchoRequest req;
  req.set_payload("tick");
  req.set_response_count(1000);
  req.set_interval_ms(100);
  auto reader = stub()->ServerStream(ctx.get(), req);
  EchoReply r;
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(reader->Read(&r)) << "read " << i;
  echo_->process().kill();
  auto start = Clock::now();
  int more = 0;
  while (reader->Read(&r)) ++more;
  auto st = reader->Finish();
  auto took = Clock::now() - start;
  EXPECT_LE(more, 2) << "replies kept coming after the backend died";
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << status_str(st);
  EXPECT_LT(took, 5s) << "took " << std::chrono::duration_cast<Ms>(took).count() << " ms";
  std::cout << "[ info ] client saw the end " << std::chrono::duration_cast<Ms>(took).count()
            << " ms after SIGKILL: " << status_str(st) << "\n";
}

class TlsH2BackendDown : public GatewayTest {
 protected:
  void configure(GatewayConfig& cfg) override {
    cfg.endpoints = {"127.0.0.1:" + std::to_string(closed_port())};
  }
};

TEST_F(TlsH2BackendDown, GrpcUnaryUnavailable) {
  for (int i = 0; i < 2; ++i) {
    auto ctx = context(20s);
    EchoRequest req;
    EchoReply reply;
    req.set_payload("anyone?");
    auto start = Clock::now();
    auto st = stub()->Unary(ctx.get(), req, &reply);
    auto took = Clock::now() - start;
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << "call " << i << ": " << status_str(st);
    EXPECT_FALSE(st.error_message().empty()) << "UNAVAILABLE without a message";
    EXPECT_LT(took, 5s) << "call " << i << " took " << std::chrono::duration_cast<Ms>(took).count() << " ms";
    std::cout << "[ info ] call " << i << ": " << status_str(st) << "\n";
  }
}

TEST_F(TlsH2, GrpcStatusAndTrailersPassThrough) {
  auto s = stub();
  const std::string message = "thing not found: 100% sure, ü";
  {
    SCOPED_TRACE("unary error with headers and trailers");
    auto ctx = context();
    EchoRequest req;
    EchoReply reply;
    req.set_status_code(5);
    req.set_status_message(message);
    (*req.mutable_headers())["x-header-one"] = "h1";
    (*req.mutable_trailers())["x-trailer-one"] = "alpha";
    (*req.mutable_trailers())["x-trailer-two"] = "beta gamma";
    (*req.mutable_trailers())["x-blob-bin"] = std::string("\x01\x02\x03 blob", 8);
    auto st = s->Unary(ctx.get(), req, &reply);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << status_str(st);
    EXPECT_EQ(st.error_message(), message);
    EXPECT_EQ(md_value(ctx->GetServerInitialMetadata(), "x-header-one"), "h1");
    const auto& tr = ctx->GetServerTrailingMetadata();
    EXPECT_EQ(md_value(tr, "x-trailer-one"), "alpha");
    EXPECT_EQ(md_value(tr, "x-trailer-two"), "beta gamma");
    EXPECT_EQ(md_value(tr, "x-blob-bin"), std::string("\x01\x02\x03 blob", 8));
  }
  {
    SCOPED_TRACE("trailers-only error");
    auto ctx = context();
    EchoRequest req;
    EchoReply reply;
    req.set_status_code(7);
    req.set_status_message("go away");
    (*req.mutable_trailers())["x-reason"] = "policy";
    auto st = s->Unary(ctx.get(), req, &reply);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status_str(st);
    EXPECT_EQ(st.error_message(), "go away");
    EXPECT_EQ(md_value(ctx->GetServerTrailingMetadata(), "x-reason"), "policy");
  }
  {
    SCOPED_TRACE("stream of 3 messages then FAILED_PRECONDITION");
    auto ctx = context();
    EchoRequest req;
    req.set_payload("m");
    req.set_response_count(3);
    req.set_status_code(9);
    req.set_status_message("after three");
    (*req.mutable_trailers())["x-count"] = "3";
    auto reader = s->ServerStream(ctx.get(), req);
    EchoReply r;
    int n = 0;
    while (reader->Read(&r)) ++n;
    auto st = reader->Finish();
    EXPECT_EQ(n, 3);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status_str(st);
    EXPECT_EQ(st.error_message(), "after three");
    EXPECT_EQ(md_value(ctx->GetServerTrailingMetadata(), "x-count"), "3");
  }
  {
    SCOPED_TRACE("OK with trailers");
    auto ctx = context();
    EchoRequest req;
    EchoReply reply;
    req.set_payload("fine");
    (*req.mutable_trailers())["x-ok-trailer"] = "yes";
    auto st = s->Unary(ctx.get(), req, &reply);
    EXPECT_TRUE(st.ok()) << status_str(st);
    EXPECT_EQ(reply.payload(), "fine");
    EXPECT_EQ(md_value(ctx->GetServerTrailingMetadata(), "x-ok-trailer"), "yes");
  }
}

TEST_F(TlsH2, GrpcForwardedHeaders) {
  auto ctx = context();
  ctx->set_authority("localhost");
  ctx->AddMetadata("x-client-header", "kept");
  EchoRequest req;
  EchoReply reply;
  req.set_payload("who am i");
  auto st = stub()->Unary(ctx.get(), req, &reply);
  ASSERT_TRUE(st.ok()) << status_str(st);
  StatsReply s;
  ASSERT_TRUE(echo_->stats(&s).ok());
  EXPECT_EQ(s.last_x_forwarded_for(), "127.0.0.1");
  EXPECT_EQ(s.last_x_forwarded_proto(), "https");
  EXPECT_EQ(s.last_authority(), "localhost");
  auto it = s.last_metadata().find("x-client-header");
  EXPECT_TRUE(it != s.last_metadata().end() && it->second == "kept") << "custom request header not forwarded";
  std::string all;
  for (const auto& [k, v] : s.last_metadata()) all += "  " + k + ": " + v + "\n";
  std::cout << "[ info ] backend saw metadata:\n" << all;
}

// curl over TLS with ALPN h2: the gateway speaks HTTP/2 and relays what the
// backend (grpc++) answers to a plain GET (see BackendDirect.CurlGetAnswer).
TEST_F(TlsH2, CurlH2Get) {
  auto r = run({"/usr/bin/curl", "-k", "-sS", "-v", "-i", "--max-time", "10", "--http2-prior-knowledge",
                "https://" + gw_->target() + "/"},
               dir_->path(), 20s);
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << "\n" << r.err;
  EXPECT_NE(r.err.find("ALPN: server accepted h2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("> GET / HTTP/2"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.rfind("HTTP/2 200", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("grpc-status: 2"), std::string::npos) << r.out;
}

// TLS 1.3 resumption works whichever shard a connection lands on: every shard
// has its own SSL_CTX, and they must share the session ticket keys. The
// gateway runs 2 shards; SO_REUSEPORT spreads 8 reconnections over both.
TEST_F(TlsH2, SessionResumesOnEveryShard) {
  const std::string sess = (dir_->path() / "session.pem").string();
  const std::string target = gw_->target();
  // The first connection waits a moment before closing so the tickets arrive.
  std::string script =
      "(sleep 0.5; echo) | openssl s_client -connect " + target + " -tls1_3 -alpn h2 -sess_out " + sess +
      " >/dev/null 2>&1; for i in 1 2 3 4 5 6 7 8; do (sleep 0.3; echo) | openssl s_client -connect " + target +
      " -tls1_3 -alpn h2 -sess_in " + sess + " 2>/dev/null | grep -a -E '^(New|Reused),'; done";
  auto r = run({"/bin/bash", "-c", script}, dir_->path(), 60s);
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << "\n" << r.err;
  size_t reused = 0, fresh = 0;
  for (size_t pos = r.out.find("Reused,"); pos != std::string::npos; pos = r.out.find("Reused,", pos + 1)) ++reused;
  for (size_t pos = r.out.find("New,"); pos != std::string::npos; pos = r.out.find("New,", pos + 1)) ++fresh;
  EXPECT_EQ(reused, 8u) << r.out;
  EXPECT_EQ(fresh, 0u) << "full handshakes where a resumption was offered:\n" << r.out;
}

// A gRPC call made by curl (empty EchoRequest), to compare with the oversize
// header case in BadInput.
TEST_F(TlsH2, CurlGrpcUnary) {
  std::vector<std::string> argv = curl_grpc_argv(dir_->path());
  argv.push_back("https://" + gw_->target() + "/tlsgate.test.Echo/Unary");
  auto r = run(argv, dir_->path(), 20s);
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << "\n" << r.err;
  EXPECT_EQ(r.out.rfind("HTTP/2 200", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("grpc-status: 0"), std::string::npos) << r.out;
}

// `openssl s_client` as a TLS 1.2 client offering only `cipher`; stdout and
// stderr together (its session summary names the negotiated cipher).
RunResult s_client_tls12(const std::string& target, const std::string& cipher, const fs::path& dir) {
  return run(
      {"/bin/bash", "-c",
       "openssl s_client -connect " + target + " -tls1_2 -cipher " + cipher + " -alpn h2 </dev/null 2>&1"},
      dir, 20s);
}

// The cipher policy (issue 15), end to end: by default a TLS 1.2 client that
// offers only a CBC suite (testssl.sh: "LUCKY13 potentially vulnerable") is
// refused; a listener whose `ciphers` names the suite serves it.
TEST_F(TlsH2, Tls12CbcSuiteOnlyWhenCiphersNameIt) {
  auto refused = s_client_tls12(gw_->target(), "ECDHE-ECDSA-AES128-SHA", dir_->path());
  EXPECT_TRUE(refused.status.exited && refused.status.code != 0) << refused.status.to_string() << "\n"
                                                                 << refused.out;
  EXPECT_NE(refused.out.find("handshake failure"), std::string::npos) << refused.out;

  TempDir dir;
  GatewayConfig cfg;
  cfg.endpoints = {echo_->endpoint().address()};
  cfg.listener_tail = "  ciphers = \"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-SHA\"\n";
  Gateway gw(dir.path(), cfg);
  ASSERT_TRUE(gw.started());
  auto served = s_client_tls12(gw.target(), "ECDHE-ECDSA-AES128-SHA", dir.path());
  EXPECT_TRUE(served.status.exited && served.status.code == 0) << served.status.to_string() << "\n"
                                                               << served.out;
  EXPECT_NE(served.out.find("Cipher is ECDHE-ECDSA-AES128-SHA"), std::string::npos) << served.out;
  gw.stop();
}

// TLS 1.2 (the configured minimum) still negotiates h2 and serves.
TEST_F(TlsH2, CurlTls12) {
  auto r = run({"/usr/bin/curl", "-k", "-sS", "-v", "-i", "--max-time", "10", "--tlsv1.2", "--tls-max", "1.2",
                "--http2", "https://" + gw_->target() + "/"},
               dir_->path(), 20s);
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << "\n" << r.err;
  EXPECT_NE(r.err.find("SSL connection using TLSv1.2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("ALPN: server accepted h2"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.rfind("HTTP/2 200", 0), 0u) << r.out;
}

// The RSA-2048 certificate from tools/gen-cert works as well as the ECDSA one.
class TlsH2Rsa : public GatewayTest {
 protected:
  void configure(GatewayConfig& cfg) override {
    cfg.certificate = certs().rsa_crt;
    cfg.private_key = certs().rsa_key;
  }
};

TEST_F(TlsH2Rsa, GrpcUnary) { EXPECT_EQ(unary_check(gw_->target()), ""); }

class TlsHttp1 : public GatewayTest {};

TEST_F(TlsHttp1, CurlGetsUpgradeRequired) {
  auto r = run({"/usr/bin/curl", "-k", "-sS", "-v", "-i", "--max-time", "10", "--http1.1",
                "https://" + gw_->target() + "/"},
               dir_->path(), 20s);
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << r.status.to_string() << "\n" << r.err;
  EXPECT_NE(r.err.find("ALPN: server accepted http/1.1"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.rfind("HTTP/1.1 426", 0), 0u) << r.out;
  auto body = r.out.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos) << r.out;
  EXPECT_NE(r.out.substr(body).find("HTTP/2"), std::string::npos) << "body: " << r.out.substr(body);
  // The gateway still serves gRPC afterwards.
  EXPECT_EQ(unary_check(gw_->target()), "");
}

}  // namespace
}  // namespace tlsgate::itest
