// The gateway makes no heap allocation per request once warm: the real
// binary, real grpc++ client and backend, every allocation of the tlsgate
// process counted by an LD_PRELOAD library (alloc_counter.cc: malloc family,
// operator new, mimalloc's entry points). nghttp2 allocates from the shards'
// pools, which map nothing after warm-up; TLS 1.3 sessions run their own
// record layer; streams, buffers and connections come from pools.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

class AllocationFree : public GatewayTest {
 protected:
  void configure(GatewayConfig& c) override {
    const std::string lib = env("ALLOC_COUNTER_LIB");
    if (lib.empty()) GTEST_FAIL() << "ALLOC_COUNTER_LIB is not set (path to liballoc_counter.so)";
    counter_ = dir_->path() / "allocations";
    std::ofstream(counter_, std::ios::binary).write(std::string(16, '\0').data(), 16);
    c.process_env["LD_PRELOAD"] = lib;
    c.process_env["TLSGATE_ALLOC_COUNTER"] = counter_.string();
    c.workers = 1;  // one shard: every call takes the same pools
    // Every call also writes its access log line (formatted without allocating).
    c.extra_top = "[access_log]\npath = \"" + (dir_->path() / "access.log").string() + "\"\n";
  }

  // From now on the library logs the call stack of every allocation.
  void trace_from_now() const {
    const uint64_t one = 1;
    int fd = ::open(counter_.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(::pwrite(fd, &one, sizeof one, 8), static_cast<ssize_t>(sizeof one));
    ::close(fd);
  }

  uint64_t allocations() const {
    uint64_t v = 0;
    int fd = ::open(counter_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      if (::pread(fd, &v, sizeof v, 0) != static_cast<ssize_t>(sizeof v)) v = 0;
      ::close(fd);
    }
    return v;
  }

  // `batches` rounds of `n` concurrent unary calls on one channel; all must succeed.
  void calls(Echo::Stub& stub, int batches, int n) {
    for (int b = 0; b < batches; ++b) {
      int completed = 0;
      auto out = concurrent_unary(stub, n, "alloc-" + std::to_string(b) + "-", 0, 20s, &completed);
      ASSERT_EQ(completed, n);
      for (const AsyncOutcome& o : out) ASSERT_TRUE(o.status.ok()) << o.status.error_message();
    }
  }

  std::filesystem::path counter_;
};

TEST_F(AllocationFree, UnaryCallsInSteadyStateAllocateNothing) {
  auto s = stub();
  // Warm-up: the handshake, the upstream connection, HPACK tables, and pool
  // slabs and spans for more streams in flight than the measured part has
  // (pools grow to the highest load seen, once; that is not per request).
  ASSERT_NO_FATAL_FAILURE(calls(*s, 10, 100));
  ASSERT_NO_FATAL_FAILURE(calls(*s, 5, 300));
  ASSERT_NO_FATAL_FAILURE(calls(*s, 20, 100));  // the measured shape, too
  const uint64_t warm = allocations();
  ASSERT_GT(warm, 0u) << "the counter saw nothing: is LD_PRELOAD in effect?";
  trace_from_now();
  ASSERT_NO_FATAL_FAILURE(calls(*s, 50, 100));
  const uint64_t after = allocations();
  // Per request would be thousands. A pool that meets a new peak of frames
  // queued in nghttp2 (scheduling decides it: seen once in six release runs)
  // grows its free stack once, by doubling: at most that, twice.
  EXPECT_LE(after - warm, 2u) << "heap allocations by tlsgate during 5,000 unary calls after warm-up ("
                              << warm << " before); their call stacks:\n"
                              << gw_->process().stderr_text();
}

// The same with every call answered by a responder cluster (issue 20): the
// gateway's fastest path allocates nothing per call either.
class AllocationFreeResponder : public AllocationFree {
 protected:
  void configure(GatewayConfig& c) override {
    AllocationFree::configure(c);
    c.cluster = "target";
    c.clusters = "\n[[clusters]]\nname = \"target\"\nrespond = \"echo\"\n";
  }
};

TEST_F(AllocationFreeResponder, EchoCallsInSteadyStateAllocateNothing) {
  auto s = stub();
  ASSERT_NO_FATAL_FAILURE(calls(*s, 10, 100));
  ASSERT_NO_FATAL_FAILURE(calls(*s, 5, 300));
  ASSERT_NO_FATAL_FAILURE(calls(*s, 20, 100));
  const uint64_t warm = allocations();
  ASSERT_GT(warm, 0u) << "the counter saw nothing: is LD_PRELOAD in effect?";
  trace_from_now();
  ASSERT_NO_FATAL_FAILURE(calls(*s, 50, 100));
  const uint64_t after = allocations();
  // As for forwarding: a pool free stack may double once or twice at a new
  // peak of frames queued in nghttp2.
  EXPECT_LE(after - warm, 2u) << "heap allocations by tlsgate during 5,000 echo calls after warm-up (" << warm
                              << " before); their call stacks:\n"
                              << gw_->process().stderr_text();
}

}  // namespace
}  // namespace tlsgate::itest
