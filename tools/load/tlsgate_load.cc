// tlsgate-load: a connection-rate and call-rate gRPC load generator over
// TLS 1.3 + HTTP/2 (issue 20). See tools/load/README.md and --help.
//
// main() parses the command line, starts one Worker per thread, sets the
// common start of the schedule, prints a progress line every second when
// stderr is a terminal, merges the threads' Stats and prints the report.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "options.hh"
#include "report.hh"
#include "worker.hh"

namespace {

using tlsgate::load::Options;
using tlsgate::load::Stats;
using tlsgate::load::Worker;

void on_signal(int) { tlsgate::load::g_stop.store(true); }

void install_signals() {
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// Each connection in flight is a descriptor; at a high rate with slow
// answers that is more than the usual soft limit of 1024.
void raise_descriptor_limit() {
  rlimit l{};
  if (getrlimit(RLIMIT_NOFILE, &l) == 0 && l.rlim_cur < l.rlim_max) {
    l.rlim_cur = l.rlim_max;
    setrlimit(RLIMIT_NOFILE, &l);
  }
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

// Persistent mode measures calls, not handshakes: the clock starts when
// every connection is up (or failed), or after --timeout.
void wait_for_connections(const Options& o, std::vector<std::unique_ptr<Worker>>& workers) {
  const uint64_t give_up = tlsgate::load::now_ns() + static_cast<uint64_t>(o.timeout * 1e9);
  for (;;) {
    bool all = true;
    for (auto& w : workers) all = all && w->settled.load() >= w->connections_here();
    if (all || tlsgate::load::now_ns() > give_up || tlsgate::load::g_stop.load()) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

void progress_line(const Options& o, std::vector<std::unique_ptr<Worker>>& workers, uint64_t t0) {
  const uint64_t now = tlsgate::load::now_ns();
  const double elapsed = now > t0 ? static_cast<double>(now - t0) * 1e-9 : 0.0;
  uint64_t calls = 0, errors = 0, conns = 0;
  for (auto& w : workers) {
    calls += w->progress_calls.load(std::memory_order_relaxed);
    errors += w->progress_errors.load(std::memory_order_relaxed);
    conns += w->progress_conns.load(std::memory_order_relaxed);
  }
  const char* phase = elapsed < o.warmup ? "warm-up" : "measured";
  std::fprintf(stderr, "\r%6.1fs %-8s connections %" PRIu64 "  calls %" PRIu64 "  errors %" PRIu64 "   ",
               elapsed, phase, conns, calls, errors);
  std::fflush(stderr);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    if (!tlsgate::load::parse_options(argc - 1, argv + 1, o)) return 0;
  } catch (const tlsgate::load::UsageError& e) {
    std::fprintf(stderr, "tlsgate-load: %s\n", e.what());
    return 2;
  }
  install_signals();
  raise_descriptor_limit();
  // More threads than connections would leave some with nothing to do.
  unsigned threads = o.threads;
  if (o.mode == tlsgate::load::Mode::Persistent && o.connections < threads)
    threads = static_cast<unsigned>(o.connections);
  if (o.mode == tlsgate::load::Mode::Rate && o.concurrency != 0 && o.concurrency < threads)
    threads = static_cast<unsigned>(o.concurrency);

  const double cpu_at_start = cpu_seconds();
  const uint64_t wall_at_start = tlsgate::load::now_ns();
  std::vector<std::unique_ptr<Worker>> workers;
  for (unsigned t = 0; t < threads; ++t) {
    workers.push_back(std::make_unique<Worker>(o, t, threads));
    const std::string err = workers.back()->init();
    if (!err.empty()) {
      std::fprintf(stderr, "tlsgate-load: %s\n", err.c_str());
      return err.rfind("--", 0) == 0 ? 2 : 1;  // a flag OpenSSL refused is a bad command line
    }
  }
  const bool rate = o.mode == tlsgate::load::Mode::Rate;
  // Rate mode: a common t0 a little ahead, so that every thread is waiting
  // in its loop when the first connections fall due.
  const uint64_t t0_rate = tlsgate::load::now_ns() + 20'000'000;
  if (rate)
    for (auto& w : workers) w->start_ns.store(t0_rate);
  std::vector<std::thread> running;
  for (auto& w : workers) running.emplace_back([&w] { w->run(); });
  if (!rate) {
    wait_for_connections(o, workers);
    const uint64_t t0 = tlsgate::load::now_ns() + 2'000'000;
    for (auto& w : workers) w->start_ns.store(t0);
  }
  const uint64_t t0 = workers.front()->start_ns.load();

  if (isatty(STDERR_FILENO) == 1) {
    // Each worker ends on its own; the main thread only watches.
    size_t left = running.size();
    while (left > 0) {
      for (int step = 0; step < 100 && left > 0; ++step) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        left = 0;
        for (auto& w : workers) left += w->finished.load() ? 0 : 1;
      }
      if (left > 0) progress_line(o, workers, t0);
    }
    std::fputs("\n", stderr);
  }
  for (auto& th : running) th.join();

  Stats total, warm;
  for (auto& w : workers) {
    total.merge(w->stats());
    warm.merge(w->warmup_stats());
  }
  tlsgate::load::RunInfo info;
  info.measured_start_ns = t0 + static_cast<uint64_t>(o.warmup * 1e9);
  info.threads = threads;
  info.interrupted = tlsgate::load::g_stop.load();
  info.cpu_s = cpu_seconds() - cpu_at_start;
  info.wall_s = static_cast<double>(tlsgate::load::now_ns() - wall_at_start) * 1e-9;
  const std::string report = o.json ? tlsgate::load::json_report(o, info, total, warm)
                                    : tlsgate::load::text_report(o, info, total, warm);
  std::fputs(report.c_str(), stdout);
  std::fflush(stdout);
  return tlsgate::load::all_ok(total) && tlsgate::load::all_ok(warm) ? 0 : 1;
}
