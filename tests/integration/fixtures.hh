// Fixtures shared by the integration suites.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "harness.hh"

namespace tlsgate::itest {

using tlsgate::test::Echo;
using tlsgate::test::EchoReply;
using tlsgate::test::EchoRequest;
using tlsgate::test::StatsReply;
using HealthCheckResponse = grpc::health::v1::HealthCheckResponse;

// A temp folder, a real echo_server and a real tlsgate in front of it.
// Subclasses adjust the gateway configuration in configure().
class GatewayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (env("TLSGATE_BIN").empty()) GTEST_FAIL() << "TLSGATE_BIN is not set (path to the tlsgate binary)";
    dir_ = std::make_unique<TempDir>();
    echo_ = std::make_unique<EchoBackend>(dir_->path());
    GatewayConfig cfg;
    cfg.endpoints = {echo_->endpoint().address()};
    configure(cfg);
    gw_ = std::make_unique<Gateway>(dir_->path(), cfg);
    ASSERT_TRUE(gw_->started());
  }

  void TearDown() override {
    if (gw_) gw_->stop();
    gw_.reset();
    echo_.reset();
    dir_.reset();
  }

  virtual void configure(GatewayConfig&) {}

  std::unique_ptr<Echo::Stub> stub() { return Echo::NewStub(tls_channel(gw_->target())); }

  // Polls the backend's Stats (directly, over h2c) until pred holds.
  template <class Pred>
  bool poll_stats(Pred pred, Ms timeout, StatsReply* last) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
      StatsReply s;
      auto st = echo_->stats(&s);
      if (st.ok()) {
        *last = s;
        if (pred(s)) return true;
      }
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(20ms);
    }
  }

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<EchoBackend> echo_;
  std::unique_ptr<Gateway> gw_;
};

inline uint64_t calls_of(const StatsReply& s, const std::string& method) {
  auto it = s.calls().find(method);
  return it == s.calls().end() ? 0 : it->second;
}

// One unary call's outcome.
struct UnaryOutcome {
  grpc::Status status;
  std::string server_id;
  std::string payload;
};

// One Unary call of `payload` on `stub`, the backend answering after
// `delay_ms`, with a `timeout` deadline and, if not empty, that :authority.
inline UnaryOutcome unary(Echo::Stub& stub, const std::string& payload, uint32_t delay_ms = 0,
                          Ms timeout = 10s, const std::string& authority = "") {
  auto ctx = context(timeout);
  if (!authority.empty()) ctx->set_authority(authority);
  EchoRequest req;
  EchoReply reply;
  req.set_payload(payload);
  req.set_delay_ms(delay_ms);
  UnaryOutcome o;
  o.status = stub.Unary(ctx.get(), req, &reply);
  o.server_id = reply.server_id();
  o.payload = reply.payload();
  return o;
}

// Polls pred every 20 ms until it holds or timeout passes; its last answer.
template <class Pred>
bool eventually(Pred pred, Ms timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
}

// `n` unary calls started together on `stub` (payload `prefix` + index, the
// backend waits `delay_ms` before answering so they overlap), each with
// `deadline`; waits for every completion, at most `deadline` + 10 s. The
// results are in call order; `*completed` counts the completions seen.
struct AsyncOutcome {
  grpc::Status status;
  EchoReply reply;
};
inline std::vector<AsyncOutcome> concurrent_unary(Echo::Stub& stub, int n, const std::string& prefix,
                                                  uint32_t delay_ms, Ms deadline, int* completed) {
  struct Call {
    grpc::ClientContext ctx;
    AsyncOutcome out;
    std::unique_ptr<grpc::ClientAsyncResponseReader<EchoReply>> rpc;
  };
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<Call>> calls;
  const auto until = std::chrono::system_clock::now() + deadline;
  for (int i = 0; i < n; ++i) {
    auto c = std::make_unique<Call>();
    c->ctx.set_deadline(until);
    EchoRequest req;
    req.set_payload(prefix + std::to_string(i));
    req.set_delay_ms(delay_ms);
    c->rpc = stub.AsyncUnary(&c->ctx, req, &cq);
    c->rpc->Finish(&c->out.reply, &c->out.status, c.get());
    calls.push_back(std::move(c));
  }
  *completed = 0;
  void* tag = nullptr;
  bool ok = false;
  while (*completed < n && cq.AsyncNext(&tag, &ok, until + 10s) == grpc::CompletionQueue::GOT_EVENT) ++*completed;
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  std::vector<AsyncOutcome> out;
  for (auto& c : calls) out.push_back(std::move(c->out));
  return out;
}

// curl making a gRPC call by hand over TLS + h2: POST of an empty EchoRequest
// (written into `dir`), gRPC headers, `-i`. Append more options, then the URL.
inline std::vector<std::string> curl_grpc_argv(const std::filesystem::path& dir) {
  const std::filesystem::path body = dir / "empty.grpc";
  write_file(body, std::string(5, '\0'));
  std::string data = "@";  // not "@" + string: GCC 12's false -Wrestrict at -O3
  data += body.string();
  return {"/usr/bin/curl", "-k", "-sS", "-i", "--max-time", "10", "--http2-prior-knowledge", "-X", "POST", "-H",
          "content-type: application/grpc", "-H", "te: trailers", "--data-binary", data};
}

// Deterministic bytes so corruption or reordering shows.
inline std::string pattern(size_t n, unsigned seed = 0) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 31 + seed * 7 + i / 251) % 251);
  return s;
}

// Steady unary load from `threads` threads until stop() or a cap (calls per
// thread, 120 s). Thread i calls on channel(i): one shared channel (one
// connection) or one each. The backend answers each call after `delay_ms`.
// Kept per call: when it started and whether it succeeded; per backend
// (EchoReply.server_id): the calls it answered.
class Load {
 public:
  struct Call {
    Clock::time_point start;
    bool ok;
  };
  Load(const std::function<std::shared_ptr<grpc::Channel>(int)>& channel, int threads, uint32_t delay_ms,
       int max_calls_per_thread = 20000) {
    for (int t = 0; t < threads; ++t)
      threads_.emplace_back([this, stub = Echo::NewStub(channel(t)), t, delay_ms, max_calls_per_thread] {
        const auto stop_at = Clock::now() + 120s;  // a bound even if the test never calls stop()
        for (int i = 0; i < max_calls_per_thread && !stop_ && Clock::now() < stop_at; ++i) {
          const Clock::time_point start = Clock::now();
          auto o = unary(*stub, "load-" + std::to_string(t) + "-" + std::to_string(i), delay_ms, 10s);
          std::lock_guard lock(mu_);
          if (o.status.ok()) ++by_server_[o.server_id];
          else failures_.push_back(o.status);
          calls_.push_back({start, o.status.ok()});
        }
      });
  }
  // All threads on one channel.
  Load(std::shared_ptr<grpc::Channel> ch, int threads, uint32_t delay_ms, int max_calls_per_thread = 20000)
      : Load([ch](int) { return ch; }, threads, delay_ms, max_calls_per_thread) {}
  ~Load() { stop(); }

  void stop() {
    stop_ = true;
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  uint64_t ok_from(const std::string& id) {
    std::lock_guard lock(mu_);
    auto it = by_server_.find(id);
    return it == by_server_.end() ? 0 : it->second;
  }
  uint64_t total() {
    std::lock_guard lock(mu_);
    return calls_.size();
  }
  std::vector<grpc::Status> failures() {
    std::lock_guard lock(mu_);
    return failures_;
  }
  std::map<std::string, uint64_t> by_server() {
    std::lock_guard lock(mu_);
    return by_server_;
  }
  // Every call so far, in the order they ended.
  std::vector<Call> calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }

 private:
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::map<std::string, uint64_t> by_server_;
  std::vector<grpc::Status> failures_;
  std::vector<Call> calls_;
};

}  // namespace tlsgate::itest
