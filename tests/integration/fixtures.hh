// Fixtures shared by the integration suites.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
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

// Unary calls in a loop on `channels` connections of their own until stop,
// counting failures and which backend answered ("b"); the backend answers
// each after `delay_ms`. Each call's start (steady clock) and status is kept.
class Load {
 public:
  struct Call {
    Clock::time_point start;
    bool ok;
  };
  Load(const std::string& target, int channels, uint32_t delay_ms = 0) {
    for (int i = 0; i < channels; ++i) {
      threads_.emplace_back([this, target, i, delay_ms] {
        auto stub = Echo::NewStub(tls_channel(target));
        for (int n = 0; !stop_ && n < 100'000; ++n) {
          const Clock::time_point start = Clock::now();
          UnaryOutcome r = unary(*stub, "load-" + std::to_string(i) + "-" + std::to_string(n), delay_ms);
          ++calls_;
          {
            std::lock_guard<std::mutex> lock(mu_);
            log_.push_back({start, r.status.ok()});
          }
          if (!r.status.ok()) {
            std::lock_guard<std::mutex> lock(mu_);
            if (failed_++ == 0) first_failure_ = status_str(r.status);
          } else if (r.server_id == "b") {
            ++on_b_;
          }
        }
      });
    }
  }
  ~Load() { finish(); }
  void finish() {
    stop_ = true;
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  uint64_t calls() const { return calls_; }
  uint64_t failed() const { return failed_; }
  uint64_t on_b() const { return on_b_; }
  std::string first_failure() {
    std::lock_guard<std::mutex> lock(mu_);
    return first_failure_;
  }
  // After finish(): every call, in the order they ended.
  const std::vector<Call>& calls_log() const { return log_; }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> calls_{0}, failed_{0}, on_b_{0};
  std::mutex mu_;
  std::vector<Call> log_;
  std::string first_failure_;
  std::vector<std::thread> threads_;
};

}  // namespace tlsgate::itest
