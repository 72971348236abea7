// ByteQueue append + read through pool chunks: the copy every forwarded DATA
// frame pays today. Run: meson test -C build --benchmark
#include <benchmark/benchmark.h>

#include <vector>

#include "tlsgate/buffer.hh"

namespace {

void BM_ByteQueueAppendRead(benchmark::State& state) {
  tlsgate::ChunkPool pool;
  tlsgate::ByteQueue q(&pool);
  std::vector<uint8_t> in(static_cast<size_t>(state.range(0)), 0x5a);
  std::vector<uint8_t> out(in.size());
  for (auto _ : state) {
    q.append(in.data(), in.size());
    benchmark::DoNotOptimize(q.read(out.data(), out.size()));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
  state.counters["slabs"] = static_cast<double>(pool.slab_allocations());
}
BENCHMARK(BM_ByteQueueAppendRead)->Arg(64)->Arg(1024)->Arg(16 * 1024)->Arg(256 * 1024);

}  // namespace

BENCHMARK_MAIN();
