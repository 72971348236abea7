// tlsgate-load: a connection-rate and call-rate gRPC load generator over
// TLS 1.3 + HTTP/2 (issue 20). See tools/load/README.md and --help.
//
// main() parses the command line, starts one Worker per thread, sets the
// common start of the schedule, prints a progress line every second when
// stderr is a terminal (and the --marks and --hold lines on stdout), merges
// the threads' Stats and prints the report.
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

// A line a caller waits for on stdout (--marks, --hold's ready line), in the
// report's format: text, or one JSON object per line.
void mark(const Options& o, const char* text, const char* json) {
  std::fputs(o.json ? json : text, stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

// --hold: when every connection has its answer (or failed), the ready line.
bool hold_ready(const Options& o, std::vector<std::unique_ptr<Worker>>& workers) {
  uint64_t settled = 0, ok = 0;
  for (auto& w : workers) {
    settled += w->settled.load();
    ok += w->held_ok.load();
  }
  if (settled < o.hold) return false;
  char text[128], json[128];
  std::snprintf(text, sizeof text, "ready ok=%" PRIu64 " failed=%" PRIu64, ok, o.hold - ok);
  std::snprintf(json, sizeof json, "{\"ready\":{\"ok\":%" PRIu64 ",\"failed\":%" PRIu64 "}}", ok,
                o.hold - ok);
  mark(o, text, json);
  return true;
}

bool all_finished(std::vector<std::unique_ptr<Worker>>& workers) {
  for (auto& w : workers)
    if (!w->finished.load()) return false;
  return true;
}

// The closed loop after a warm-up: once every thread's warm-up connections
// have ended, the measured part starts for all at once. True when it has.
bool start_measuring(std::vector<std::unique_ptr<Worker>>& workers) {
  for (auto& w : workers)
    if (!w->drained.load() && !w->finished.load()) return false;
  const uint64_t now = tlsgate::load::now_ns();
  for (auto& w : workers) w->measure_ns.store(now);
  return true;
}

// Until every worker has ended: the "measuring" mark when the warm-up ends,
// --hold's ready line and then the release (a signal, or --duration after
// ready), and a progress line every second when stderr is a terminal.
void watch(const Options& o, std::vector<std::unique_ptr<Worker>>& workers, uint64_t t0) {
  const bool tty = isatty(STDERR_FILENO) == 1;
  const uint64_t measured_at = t0 + static_cast<uint64_t>(o.warmup * 1e9);
  const bool hold = o.mode == tlsgate::load::Mode::Hold;
  const bool barrier = o.mode == tlsgate::load::Mode::Rate && o.rate == 0 && o.warmup > 0;
  bool marked = !o.marks, ready = !hold, measuring = !barrier;
  uint64_t release_at = UINT64_MAX;
  uint64_t next_progress = tlsgate::load::now_ns() + 1'000'000'000;
  while (!all_finished(workers)) {
    const uint64_t now = tlsgate::load::now_ns();
    if (!measuring) measuring = start_measuring(workers);
    if (!marked && measuring && now >= measured_at) {
      mark(o, "measuring", "{\"mark\":\"measuring\"}");
      marked = true;
    }
    if (!ready && hold_ready(o, workers)) {
      ready = true;
      if (!o.hold_forever) release_at = now + static_cast<uint64_t>(o.duration * 1e9);
    }
    if (hold && ready && (tlsgate::load::g_stop.load() || now >= release_at))
      for (auto& w : workers) w->release.store(true);
    if (tty && now >= next_progress) {
      progress_line(o, workers, t0);
      next_progress += 1'000'000'000;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // --hold: the workers end early when the server closed every connection.
  if (!ready) hold_ready(o, workers);
  // A run cut short before its warm-up ended still gets both marks.
  if (!marked) mark(o, "measuring", "{\"mark\":\"measuring\"}");
  if (tty) std::fputs("\n", stderr);
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
  if (o.mode != tlsgate::load::Mode::Persistent && o.concurrency != 0 && o.concurrency < threads)
    threads = static_cast<unsigned>(o.concurrency);
  if (o.mode == tlsgate::load::Mode::Hold && o.hold < threads) threads = static_cast<unsigned>(o.hold);
  // A closed loop bounded by count: every thread needs a share of it.
  if (o.mode == tlsgate::load::Mode::Rate && o.rate == 0 && o.connections_total != 0 &&
      o.connections_total < threads)
    threads = static_cast<unsigned>(o.connections_total);

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
  // Rate mode: a common t0 a little ahead, so that every thread is waiting
  // in its loop when the first connections fall due.
  const uint64_t t0_rate = tlsgate::load::now_ns() + 20'000'000;
  if (o.mode != tlsgate::load::Mode::Persistent)
    for (auto& w : workers) w->start_ns.store(t0_rate);
  std::vector<std::thread> running;
  for (auto& w : workers) running.emplace_back([&w] { w->run(); });
  if (o.mode == tlsgate::load::Mode::Persistent) {
    wait_for_connections(o, workers);
    const uint64_t t0 = tlsgate::load::now_ns() + 2'000'000;
    for (auto& w : workers) w->start_ns.store(t0);
  }
  const uint64_t t0 = workers.front()->start_ns.load();

  // Each worker ends on its own; the main thread only watches.
  watch(o, workers, t0);
  for (auto& th : running) th.join();
  if (o.marks) mark(o, "done", "{\"mark\":\"done\"}");

  Stats total, warm;
  for (auto& w : workers) {
    total.merge(w->stats());
    warm.merge(w->warmup_stats());
  }
  tlsgate::load::RunInfo info;
  info.measured_start_ns = t0 + static_cast<uint64_t>(o.warmup * 1e9);
  // The closed loop's measured part starts when the warm-up has drained.
  if (o.mode == tlsgate::load::Mode::Rate && o.rate == 0 && workers.front()->measure_ns.load() != 0)
    info.measured_start_ns = workers.front()->measure_ns.load();
  info.threads = threads;
  // --hold ends on a signal by design: that is no interruption.
  info.interrupted = tlsgate::load::g_stop.load() && o.mode != tlsgate::load::Mode::Hold;
  info.cpu_s = cpu_seconds() - cpu_at_start;
  info.wall_s = static_cast<double>(tlsgate::load::now_ns() - wall_at_start) * 1e-9;
  const std::string report = o.json ? tlsgate::load::json_report(o, info, total, warm)
                                    : tlsgate::load::text_report(o, info, total, warm);
  std::fputs(report.c_str(), stdout);
  std::fflush(stdout);
  return tlsgate::load::all_ok(total) && tlsgate::load::all_ok(warm) ? 0 : 1;
}
