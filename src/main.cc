// Command line, start-up checks, shard threads, signals.
//
// Everything that can be wrong with the configuration or the host is found
// here, before a single connection is accepted, and reported as one line
// naming the key; exit code 2. Runtime failures exit 1.
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <future>
#include <memory>
#include <mutex>
#include <condition_variable>
#include <string>
#include <thread>
#include <vector>

#include "tlsgate/admin.hh"
#include "tlsgate/access_log.hh"
#include "tlsgate/config.hh"
#include "tlsgate/dns.hh"
#include "tlsgate/io.hh"
#include "tlsgate/ktls.hh"
#include "tlsgate/log.hh"
#include "tlsgate/metrics.hh"
#include "tlsgate/shard.hh"
#include "tlsgate/tls.hh"

#ifdef TLSGATE_MIMALLOC
#include <mimalloc.h>
#endif

namespace {

using namespace tlsgate;

constexpr int kExitRuntime = 1;
// The drain ended before every stream did ([drain] timeout, or a second
// SIGTERM): a supervisor sees that calls were cut.
constexpr int kExitDrainCut = 3;
constexpr int kExitConfig = 2;

const char* kUsage =
    "usage: tlsgate --config FILE [--log-level debug|info|warn|error]\n"
    "       tlsgate --check-config FILE\n"
    "       tlsgate --version | --help\n"
    "\n"
    "Terminates TLS for gRPC and forwards HTTP/2 streams to gRPC backends.\n"
    "  --config FILE        serve with this TOML configuration\n"
    "  --check-config FILE  validate FILE (including certificates and keys) and exit\n"
    "  --log-level LEVEL    default info\n"
    "Exit codes: 0 stopped cleanly, 1 runtime failure, 2 bad configuration or usage,\n"
    "3 the drain closed connections with streams still running.\n"
    "Signals: SIGTERM/SIGINT drain ([drain] delay, then GOAWAY and [drain] timeout)\n"
    "and stop, a second one stops at once; SIGHUP reloads FILE (refused, and logged,\n"
    "when it is bad or changes workers or a listener's address).\n";

struct Args {
  std::string config;
  bool check = false;
  log::Level level = log::Level::Info;
};

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "tlsgate: %s\n%s", msg.c_str(), kUsage);
  std::exit(kExitConfig);
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (arg == "--version") {
      std::printf("tlsgate %s\n", TLSGATE_VERSION);
      std::exit(0);
    } else if (arg == "--config" || arg == "-c") {
      a.config = value();
    } else if (arg == "--check-config") {
      a.config = value();
      a.check = true;
    } else if (arg == "--log-level") {
      std::string l = value();
      if (l == "debug") a.level = log::Level::Debug;
      else if (l == "info") a.level = log::Level::Info;
      else if (l == "warn") a.level = log::Level::Warn;
      else if (l == "error") a.level = log::Level::Error;
      else usage_error("unknown log level '" + l + "'");
    } else {
      usage_error("unknown argument '" + arg + "'");
    }
  }
  if (a.config.empty()) usage_error("--config FILE or --check-config FILE is required");
  return a;
}

[[noreturn]] void config_error(const std::string& msg) {
  std::fprintf(stderr, "tlsgate: %s\n", msg.c_str());
  std::exit(kExitConfig);
}

// ktls = "on" refuses to start without kernel TLS; "auto" says what it found.
tls::KtlsSupport check_ktls(const config::Config& cfg) {
  bool wanted = false;
  for (const config::Listener& l : cfg.listeners) wanted = wanted || l.tls.ktls != config::Ktls::Off;
  if (!wanted) return {};
  tls::KtlsSupport k = tls::probe_ktls();
  for (const config::Listener& l : cfg.listeners)
    if (l.tls.ktls == config::Ktls::On && !k.any())
      config_error(l.tls.ktls_origin.to_string() + ": ktls = \"on\" but this kernel cannot offload TLS: " +
                   k.describe() + "; load the module (modprobe tls) or use ktls = \"auto\"");
  return k;
}

// Loads every certificate and key once in the main thread, so a bad file is
// a start-up error (or a refused reload) and not a shard failure. "" or what
// is wrong.
std::string tls_problem(const config::Config& cfg, std::vector<std::string>* warnings = nullptr) {
  try {
    for (const config::Listener& l : cfg.listeners) {
      tls::Context probe(l.tls);
      if (warnings) warnings->insert(warnings->end(), probe.warnings().begin(), probe.warnings().end());
    }
    for (const config::Cluster& c : cfg.clusters)
      if (c.tls.enabled) tls::Context probe(c.tls);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// What is allowed but probably wrong (a private key others can read, an
// expired certificate): said on stderr by --check-config, logged otherwise.
std::vector<std::string> check_tls(const config::Config& cfg) {
  std::vector<std::string> warnings = cfg.warnings;
  const std::string problem = tls_problem(cfg, &warnings);
  if (!problem.empty()) config_error(problem);
  return warnings;
}

void log_warnings(const std::vector<std::string>& warnings) {
  for (const std::string& w : warnings) LOG_WARN("config", "%s", w.c_str());
}

// What a reload cannot change: the shards and their listening sockets. ""
// or the key that changed.
std::string reload_refusal(const config::Config& running, const config::Config& next, const tls::KtlsSupport& ktls) {
  if (next.workers != running.workers)
    return next.path + ": workers: changed from " + std::to_string(running.workers) + " to " +
           std::to_string(next.workers) + "; a restart applies it";
  if (next.listeners.size() != running.listeners.size())
    return next.path + ": listeners: " + std::to_string(next.listeners.size()) + " instead of " +
           std::to_string(running.listeners.size()) + "; adding or removing a listener needs a restart";
  if (next.admin.enabled != running.admin.enabled || next.admin.listen.text != running.admin.listen.text)
    return (next.admin.enabled ? next.admin.listen_origin.to_string() : next.path + ": admin") + ": " +
           (next.admin.enabled ? next.admin.listen.text : std::string("removed")) + " instead of " +
           (running.admin.enabled ? running.admin.listen.text : std::string("none")) +
           "; the admin listener's address needs a restart";
  for (size_t i = 0; i < next.listeners.size(); ++i) {
    const config::Listener& l = next.listeners[i];
    if (l.listen.text != running.listeners[i].listen.text)
      return l.listen_origin.to_string() + ": " + l.listen.text + " instead of " + running.listeners[i].listen.text +
             "; a listener's address needs a restart";
    if (l.tls.ktls == config::Ktls::On && !ktls.any())
      return l.tls.ktls_origin.to_string() + ": ktls = \"on\" but this kernel cannot offload TLS";
  }
  return "";
}

config::SocketAddress with_port(const config::SocketAddress& a, uint16_t port) {
  config::SocketAddress b = a;
  if (b.storage.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&b.storage)->sin_port = htons(port);
  else reinterpret_cast<sockaddr_in6*>(&b.storage)->sin6_port = htons(port);
  return b;
}

std::string host_part(const std::string& text) {
  size_t colon = text.rfind(':');
  return colon == std::string::npos ? text : text.substr(0, colon);
}

// fds[shard][listener]. The first socket of a listener fixes the port (port
// 0 = the kernel's choice); the other shards join it with SO_REUSEPORT.
std::vector<std::vector<int>> bind_listeners(const config::Config& cfg, unsigned shards) {
  std::vector<std::vector<int>> fds(shards, std::vector<int>(cfg.listeners.size(), -1));
  for (size_t li = 0; li < cfg.listeners.size(); ++li) {
    const config::Listener& l = cfg.listeners[li];
    config::SocketAddress addr = l.listen;
    for (unsigned s = 0; s < shards; ++s) {
      int fd = io::listen_socket(reinterpret_cast<const sockaddr*>(&addr.storage), addr.length, 4096);
      if (fd < 0)
        config_error(l.listen_origin.to_string() + ": cannot listen on " + l.listen.text + ": " +
                     std::strerror(-fd));
      if (s == 0) addr = with_port(addr, io::local_port(fd));
      fds[s][li] = fd;
    }
    LOG_INFO("listener", "%s listening on %s:%u (%u shards)", l.name.c_str(), host_part(l.listen.text).c_str(),
             addr.port(), shards);
  }
  return fds;
}

void pin_to_cpu(unsigned shard) {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
  int n = CPU_COUNT(&allowed);
  if (n <= 0) return;
  // The shard-th CPU this process may run on.
  int seen = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    if (seen++ == static_cast<int>(shard % static_cast<unsigned>(n))) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      pthread_setaffinity_np(pthread_self(), sizeof one, &one);
      return;
    }
  }
}

struct ShardThread {
  std::unique_ptr<shard::Shard> shard;
  std::thread thread;
  std::string error;
};

// The next signal of `sigs` within `ms`, or 0.
int next_signal(const sigset_t& sigs, uint64_t ms) {
  timespec ts{static_cast<time_t>(ms / 1000), static_cast<long>(ms % 1000) * 1'000'000};
  const int sig = sigtimedwait(&sigs, nullptr, &ts);
  return sig > 0 ? sig : 0;
}

// What the admin thread reads of the main thread's state; guarded by `mu`.
struct AdminView {
  std::mutex mu;
  std::shared_ptr<const config::Config> running;
  std::vector<shard::Shard*> shards;  // set once every shard started
  bool ready = false;                 // serving and not draining
  uint64_t reloads = 0;
  uint64_t reloads_refused = 0;
  double start_time = 0;
  const accesslog::Writer* access_log = nullptr;  // outlives the admin server

  // How long /metrics waits for a shard's answer (each answers at its next
  // tick, 100 ms): a shard that does not is left out and counted.
  static constexpr auto kShardWait = std::chrono::seconds(1);

  std::string metrics() {
    admin::MetricsInput in;
    std::vector<std::future<shard::Stats>> asked;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (shard::Shard* s : shards) asked.push_back(s->collect());
      for (const config::Listener& l : running->listeners) in.listener_names.push_back(l.name);
      in.ready = ready;
      in.reloads = reloads;
      in.reload_failures = reloads_refused;
      in.access_log_lost = access_log != nullptr ? access_log->lines_lost() : 0;
      in.start_time_seconds = start_time;
    }
    in.version = TLSGATE_VERSION;
    const auto deadline = std::chrono::steady_clock::now() + kShardWait;
    for (std::future<shard::Stats>& f : asked) {
      if (f.wait_until(deadline) == std::future_status::ready) in.shards.push_back(f.get());
      else ++in.shards_unanswered;
    }
    return admin::render_metrics(in);
  }
  std::string config() {
    std::lock_guard<std::mutex> lock(mu);
    return config::to_toml(*running);
  }
  bool is_ready() {
    std::lock_guard<std::mutex> lock(mu);
    return ready;
  }
  void set_ready(bool r) {
    std::lock_guard<std::mutex> lock(mu);
    ready = r;
  }
};

// The admin listener, bound before the shards start: /ready says 503 until
// they serve. Null without [admin].
std::unique_ptr<admin::Server> start_admin(const config::Config& cfg, AdminView& view) {
  if (!cfg.admin.enabled) return nullptr;
  const config::SocketAddress& a = cfg.admin.listen;
  const int fd = io::listen_socket(reinterpret_cast<const sockaddr*>(&a.storage), a.length, 64, /*reuse_port=*/false);
  if (fd < 0)
    config_error(cfg.admin.listen_origin.to_string() + ": cannot listen on " + a.text + ": " + std::strerror(-fd));
  LOG_INFO("admin", "admin listener on %s:%u (/healthz /ready /metrics /config)", host_part(a.text).c_str(),
           io::local_port(fd));
  admin::Handlers h;
  h.ready = [&view] { return view.is_ready(); };
  h.metrics = [&view] { return view.metrics(); };
  h.config = [&view] { return view.config(); };
  return std::make_unique<admin::Server>(fd, std::move(h));
}

// The main thread while serving: the running configuration, the shards it
// posts to, the DNS watcher of that configuration, and what reloads did.
struct Control {
  std::shared_ptr<const config::Config> running;
  std::vector<ShardThread>& shards;
  tls::KtlsSupport ktls;
  std::unique_ptr<upstream::DnsWatcher> dns;
  AdminView& view;
  accesslog::Writer& access_log;
  uint64_t reloads = 0;
  uint64_t reloads_refused = 0;

  // DNS re-resolution of the running configuration's names, published to
  // every shard.
  void watch_dns() {
    dns = std::make_unique<upstream::DnsWatcher>(
        *running, [this](uint32_t cluster, uint32_t name, std::vector<config::SocketAddress> addrs) {
          for (ShardThread& s : shards)
            if (s.shard) s.shard->update_dns(cluster, name, addrs);
        });
    dns->start();
  }

  // Each shard takes a new configuration at its next loop turn; the reload
  // is said to be done once every one serves under it (a stats request
  // posted after it is answered after it), so that a connection made after
  // "configuration reloaded" gets the new certificates and keys.
  void wait_for_adoption() {
    std::vector<std::future<shard::Stats>> turns;
    for (ShardThread& s : shards)
      if (s.shard) turns.push_back(s.shard->collect());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (auto& t : turns)
      if (t.wait_until(deadline) != std::future_status::ready)
        LOG_WARN("main", "a shard has not taken the new configuration within 10 s; it will at its next loop turn");
  }

  // SIGHUP: the file is read and checked as --check-config does; a good one
  // goes to every shard (new connections use it, running ones finish on
  // theirs), a bad one is refused with the same message as at start-up and
  // the running configuration keeps serving.
  void reload() {
    LOG_INFO("main", "SIGHUP: reloading %s", running->path.c_str());
    auto next = std::make_shared<config::Config>();
    std::string problem;
    std::vector<std::string> warnings;
    try {
      *next = config::load_file(running->path);
      warnings = next->warnings;
      problem = tls_problem(*next, &warnings);
      if (problem.empty()) problem = reload_refusal(*running, *next, ktls);
      // Last, once nothing else can refuse the file: the access log's file
      // (re)opened. One that cannot be opened refuses the reload like any
      // other bad setting, and the lines keep going to the old file.
      if (problem.empty()) problem = access_log.configure(next->access_log);
    } catch (const config::ConfigError& e) {
      problem = e.what();
    }
    if (!problem.empty()) {
      ++reloads_refused;
      {
        std::lock_guard<std::mutex> lock(view.mu);
        view.reloads_refused = reloads_refused;
      }
      LOG_ERROR("main", "reload refused, the running configuration stays: %s", problem.c_str());
      return;
    }
    // The old watcher's answers are in the running configuration's indices:
    // stopped first, and Shard::adopt drops what it queued.
    log_warnings(warnings);
    dns->stop();
    running = next;
    for (ShardThread& s : shards)
      if (s.shard) s.shard->adopt(running);
    wait_for_adoption();
    watch_dns();
    ++reloads;
    {
      std::lock_guard<std::mutex> lock(view.mu);
      view.running = running;
      view.reloads = reloads;
    }
    LOG_INFO("main", "configuration reloaded (%zu listeners, %zu clusters); new connections use it",
             running->listeners.size(), running->clusters.size());
  }

  // Waits for SIGTERM or SIGINT, reloading on SIGHUP meanwhile, for at most
  // `ms` (0: no limit). The signal, or 0 when the time is up.
  int wait_stop(const sigset_t& sigs, uint64_t ms) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    for (;;) {
      uint64_t left = 1000;
      if (ms != 0) {
        const auto rest = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
        if (rest.count() <= 0) return 0;
        left = static_cast<uint64_t>(rest.count());
      }
      const int sig = next_signal(sigs, std::min<uint64_t>(left, 1000));
      log::flush_suppressed();  // the summaries of rate-limited lines, about once a second
      if (sig == SIGHUP) reload();
      if (sig == SIGTERM || sig == SIGINT) return sig;
    }
  }
};

// The shards drain ([drain] timeout, then they close what is left); a second
// SIGTERM or SIGINT closes everything now.
void await_drain(const sigset_t& sigs, std::vector<ShardThread>& shards, const std::atomic<unsigned>& finished) {
  while (finished.load() < shards.size()) {
    const int sig = next_signal(sigs, 100);
    log::flush_suppressed();
    if (sig != SIGTERM && sig != SIGINT) continue;
    LOG_INFO("main", "%s again: stopping now", strsignal(sig));
    for (ShardThread& s : shards)
      if (s.shard) s.shard->stop_now();
  }
}

int serve(const config::Config& cfg, const tls::KtlsSupport& ktls) {
  // Signals are taken by the main thread alone (sigwait); shards never see them.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  const unsigned n = cfg.workers;
  std::vector<std::vector<int>> fds = bind_listeners(cfg, n);
  for (const config::Listener& l : cfg.listeners) {
    if (l.tls.ktls == config::Ktls::Off)
      LOG_INFO("tls", "listener %s: ktls = off: record crypto in userspace", l.name.c_str());
    else
      LOG_INFO("tls", "listener %s: ktls = %s: %s%s", l.name.c_str(), config::to_string(l.tls.ktls),
               ktls.describe().c_str(), ktls.any() ? "" : "; record crypto in userspace");
    LOG_INFO("tls", "listener %s: record_layer = %s (TLS 1.3 records not given to the kernel)", l.name.c_str(),
             config::to_string(l.tls.record_layer));
  }
  const tls::WorkaroundState wa = tls::workaround_state();
  if (wa.compiled)
    LOG_INFO("tls", "OpenSSL 3.0 workarounds compiled in: %s%s", wa.active ? "active" : "inactive: ",
             wa.inactive_reason.c_str());
  // Opened before any shard runs: a file that cannot be opened is a
  // configuration error (exit 2) like a missing certificate.
  accesslog::Writer access_log(n);
  if (std::string problem = access_log.configure(cfg.access_log); !problem.empty()) config_error(problem);
  access_log.start();

  // One immutable copy every shard's first snapshot shares.
  const auto shared_cfg = std::make_shared<const config::Config>(cfg);
  AdminView view;
  view.running = shared_cfg;
  view.access_log = &access_log;
  view.start_time = static_cast<double>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                            std::chrono::system_clock::now().time_since_epoch())
                                            .count()) /
                    1000.0;
  std::unique_ptr<admin::Server> admin_server = start_admin(cfg, view);
  std::vector<ShardThread> shards(n);
  std::atomic<unsigned> finished{0};  // shards whose run() returned
  std::mutex mu;
  std::condition_variable cv;
  unsigned ready = 0;
  for (unsigned i = 0; i < n; ++i) {
    shards[i].thread = std::thread([&, i] {
      pin_to_cpu(i);
      try {
        shards[i].shard = std::make_unique<shard::Shard>(i, shared_cfg, fds[i], ktls, &access_log.buffer(i));
      } catch (const std::exception& e) {
        shards[i].error = e.what();
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        ++ready;
      }
      cv.notify_one();
      if (shards[i].shard) shards[i].shard->run();
      ++finished;
    });
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return ready == n; });
  }
  bool ok = true;
  for (unsigned i = 0; i < n; ++i) {
    if (!shards[i].error.empty()) {
      LOG_ERROR("shard", "%u: cannot start: %s", i, shards[i].error.c_str());
      ok = false;
    }
  }
  Control control{shared_cfg, shards, ktls, nullptr, view, access_log};
  control.watch_dns();
  bool now = !ok;
  if (ok) {
    {
      std::lock_guard<std::mutex> lock(view.mu);
      for (ShardThread& s : shards) view.shards.push_back(s.shard.get());
      view.ready = true;
    }
    LOG_INFO("main", "tlsgate %s serving with %u shards (io_uring %s)", TLSGATE_VERSION, n,
             shards[0].shard->ring_features().c_str());
    const int sig = control.wait_stop(sigs, 0);
    // /ready fails from now on: the load balancer stops sending new clients.
    view.set_ready(false);
    LOG_INFO("main", "%s: draining", strsignal(sig));
    // [drain] delay: the listeners keep accepting while the load balancer
    // deregisters this target; a second SIGTERM or SIGINT ends it all now.
    const auto delay = static_cast<uint64_t>(control.running->drain.delay.count());
    if (delay > 0) {
      LOG_INFO("main", "drain: still accepting for %lu ms ([drain] delay), then GOAWAY", delay);
      if (const int sig = control.wait_stop(sigs, delay)) {
        LOG_INFO("main", "%s again: stopping now", strsignal(sig));
        now = true;
      }
    }
  }
  control.dns->stop();
  for (ShardThread& s : shards)
    if (s.shard) s.shard->stop();
  if (now) {
    for (ShardThread& s : shards)
      if (s.shard) s.shard->stop_now();
  } else {
    await_drain(sigs, shards, finished);
  }
  shard::Counters total;
  for (ShardThread& s : shards) {
    s.thread.join();
    if (s.shard) total.add(s.shard->counters());
  }
  // Before the shards go: its /metrics reads them.
  admin_server.reset();
  for (unsigned i = 0; i < n; ++i)
    if (!shards[i].shard)
      for (int fd : fds[i]) ::close(fd);
  shards.clear();
  access_log.stop();  // the shards' last lines written
  log::flush_suppressed();
  LOG_INFO("main", "stopped: %s config_reloads=%lu config_reload_failures=%lu access_log_lost=%lu",
           total.describe().c_str(), control.reloads, control.reloads_refused, access_log.lines_lost());
  if (!ok) return kExitRuntime;
  if (total.drain_cut_connections > 0) {
    LOG_WARN("main", "exit %d: the drain closed %lu connections with streams still running", kExitDrainCut,
             total.drain_cut_connections);
    return kExitDrainCut;
  }
  return 0;
}

}  // namespace

// Freed memory goes back to the kernel at once. Debian 12's mimalloc (2.0.9;
// 2.1 renamed the option purge_delay) decommits the free pages of a segment
// only when a page is next allocated in that segment after the delay: with
// the 5 s this used to set, a shard that went quiet after a burst never got
// there, and 5,000 closed idle connections kept ~15 MB for good (issue 16).
// The delay was meant to spare page faults under a stream of handshakes; on
// this build they are 0.4 minor faults per connection at delay 0 (100
// connections at a time, 2,000 handshakes; 0.0 at 5 s), with the same CPU
// time. MIMALLOC_DECOMMIT_DELAY still overrides it.
static void tune_allocator() {
#ifdef TLSGATE_MIMALLOC
  mi_option_set_default(mi_option_decommit_delay, 0);
#endif
}

int main(int argc, char** argv) {
  tune_allocator();
  tls::init_library();
  Args args = parse_args(argc, argv);
  log::set_level(args.level);
  config::Config cfg;
  // Endpoint names are resolved at load by src/upstream (config does no DNS).
  config::set_resolver(upstream::resolve_first);
  try {
    cfg = config::load_file(args.config);
  } catch (const config::ConfigError& e) {
    config_error(e.what());
  }
  const std::vector<std::string> warnings = check_tls(cfg);
  tls::KtlsSupport ktls = check_ktls(cfg);
  if (args.check) {
    for (const std::string& w : warnings) std::fprintf(stderr, "tlsgate: warning: %s\n", w.c_str());
    std::printf("%s: configuration OK (%zu listeners, %zu clusters, %u workers)\n", args.config.c_str(),
                cfg.listeners.size(), cfg.clusters.size(), cfg.workers);
    return 0;
  }
  log_warnings(warnings);
  try {
    return serve(cfg, ktls);
  } catch (const std::exception& e) {
    LOG_ERROR("main", "%s", e.what());
    return kExitRuntime;
  }
}
