#include "harness.hh"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace tlsgate::itest {

namespace fs = std::filesystem;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::map<std::string, std::string> stopped_counters(const std::string& log) {
  std::map<std::string, std::string> counters;
  const size_t pos = log.rfind("stopped: ");
  if (pos == std::string::npos) return counters;
  std::istringstream words(log.substr(pos, log.find('\n', pos) - pos));
  std::string word;
  while (words >> word) {
    const size_t eq = word.find('=');
    if (eq != std::string::npos) counters[word.substr(0, eq)] = word.substr(eq + 1);
  }
  return counters;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return "";
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const fs::path& p, const std::string& content) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << content;
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

void rewrite_in_place(const fs::path& p, const std::string& content) {
  // O_TRUNC on the existing file: same inode, unlike write-then-rename.
  int fd = ::open(p.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + p.string() + ": " + std::strerror(errno));
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      ::close(fd);
      throw std::runtime_error("cannot write " + p.string() + ": " + std::strerror(e));
    }
    off += static_cast<size_t>(n);
  }
  ::close(fd);
}

// ---------------------------------------------------------------- TempDir

TempDir::TempDir(const std::string& prefix) {
  std::string base = env("TMPDIR").empty() ? "/tmp" : env("TMPDIR");
  std::string tmpl = base + "/" + prefix + ".XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp " + tmpl + ": " + std::strerror(errno));
  path_ = buf.data();
}

TempDir::~TempDir() {
  if (env("TLSGATE_KEEP_TMP") == "1") return;
  std::error_code ec;
  fs::remove_all(path_, ec);
}

// ---------------------------------------------------------------- ExitStatus

std::string ExitStatus::to_string() const {
  if (timed_out) return "still running (wait timed out)";
  if (exited) return "exit code " + std::to_string(code);
  if (signal)
    return std::string("killed by signal ") + std::to_string(signal) + " (" + strsignal(signal) + ")";
  return "unknown";
}

static ExitStatus decode(int wstatus) {
  ExitStatus s;
  if (WIFEXITED(wstatus)) {
    s.exited = true;
    s.code = WEXITSTATUS(wstatus);
  } else if (WIFSIGNALED(wstatus)) {
    s.signal = WTERMSIG(wstatus);
  }
  return s;
}

// ---------------------------------------------------------------- Process

namespace {
std::atomic<int> process_counter{0};

std::string tail(const std::string& s, size_t max = 4000) {
  if (s.size() <= max) return s;
  return "[...]" + s.substr(s.size() - max);
}
}  // namespace

Process::Process(ProcessOptions opts) : opts_(std::move(opts)) {
  if (opts_.argv.empty()) throw std::runtime_error("Process: empty argv");
  if (opts_.name.empty()) opts_.name = fs::path(opts_.argv[0]).filename().string();
  if (opts_.output_dir.empty()) opts_.output_dir = fs::temp_directory_path();
  int n = process_counter.fetch_add(1);
  std::string stem = opts_.name + "." + std::to_string(n);
  out_path_ = opts_.output_dir / (stem + ".stdout");
  err_path_ = opts_.output_dir / (stem + ".stderr");
  fs::path in_path = opts_.output_dir / (stem + ".stdin");
  write_file(in_path, opts_.stdin_data);

  // Everything the child needs is prepared before fork: after fork only
  // async-signal-safe calls (grpc threads may hold locks in the parent).
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    auto eq = kv.find('=');
    if (eq != std::string::npos && opts_.env.count(kv.substr(0, eq))) continue;
    envs.push_back(std::move(kv));
  }
  for (const auto& [k, v] : opts_.env) envs.push_back(k + "=" + v);
  std::vector<char*> argv, envp;
  for (auto& a : opts_.argv) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);

  int in_fd = ::open(in_path.c_str(), O_RDONLY | O_CLOEXEC);
  int out_fd = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err_fd = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (in_fd < 0 || out_fd < 0 || err_fd < 0) {
    for (int fd : {in_fd, out_fd, err_fd})
      if (fd >= 0) ::close(fd);
    throw std::runtime_error("Process: cannot open output files in " + opts_.output_dir.string());
  }
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    ::close(in_fd), ::close(out_fd), ::close(err_fd);
    throw std::runtime_error(std::string("fork: ") + std::strerror(e));
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);
    dup2(in_fd, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    close_range(3, ~0U, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    execve(argv[0], argv.data(), envp.data());
    const char msg[] = "harness: execve failed: ";
    (void)!write(2, msg, sizeof msg - 1);
    const char* e = strerror(errno);
    (void)!write(2, e, strlen(e));
    (void)!write(2, "\n", 1);
    _exit(127);
  }
  ::close(in_fd), ::close(out_fd), ::close(err_fd);
  pid_ = pid;
}

Process::~Process() { stop(5s); }

bool Process::running() {
  if (status_) return false;
  int ws = 0;
  pid_t r = waitpid(pid_, &ws, WNOHANG);
  if (r == pid_) {
    status_ = decode(ws);
    return false;
  }
  return true;
}

std::string Process::output(Stream s) const { return read_file(s == Stream::Stdout ? out_path_ : err_path_); }

bool Process::wait_for(Stream s, const std::function<bool(const std::string&)>& found, Ms timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    bool alive = running();
    if (found(output(s))) return true;
    if (!alive || Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
}

ExitStatus Process::wait(Ms timeout) {
  auto deadline = Clock::now() + timeout;
  while (running()) {
    if (Clock::now() >= deadline) {
      ExitStatus s;
      s.timed_out = true;
      return s;
    }
    std::this_thread::sleep_for(5ms);
  }
  return *status_;
}

void Process::signal(int sig) {
  if (running()) ::kill(pid_, sig);
}

ExitStatus Process::stop(Ms grace) {
  if (pid_ < 0) return {};
  if (!running()) return *status_;
  ::kill(pid_, SIGTERM);
  auto s = wait(grace);
  if (!s.timed_out) return s;
  return kill();
}

ExitStatus Process::kill() {
  if (pid_ < 0) return {};
  if (!running()) return *status_;
  ::kill(pid_, SIGKILL);
  int ws = 0;
  // SIGKILL cannot be ignored; a blocking reap ends promptly.
  while (waitpid(pid_, &ws, 0) < 0 && errno == EINTR) {
  }
  status_ = decode(ws);
  return *status_;
}

std::string Process::describe() const {
  std::string s = opts_.name + " (pid " + std::to_string(pid_) + "):";
  for (const auto& a : opts_.argv) s += " " + a;
  s += "\n  status: " + (status_ ? status_->to_string() : std::string("running"));
  s += "\n  --- stdout (" + out_path_.string() + ") ---\n" + tail(output(Stream::Stdout));
  s += "\n  --- stderr (" + err_path_.string() + ") ---\n" + tail(output(Stream::Stderr));
  return s;
}

RunResult run(const std::vector<std::string>& argv, const fs::path& dir, Ms timeout,
              const std::map<std::string, std::string>& envs, const std::string& stdin_data) {
  ProcessOptions o;
  o.argv = argv;
  o.env = envs;
  o.output_dir = dir;
  o.name = fs::path(argv[0]).filename().string();
  o.stdin_data = stdin_data;
  Process p(std::move(o));
  RunResult r;
  r.status = p.wait(timeout);
  if (r.status.timed_out) {
    p.kill();
    r.status.timed_out = true;
  }
  r.out = p.stdout_text();
  r.err = p.stderr_text();
  return r;
}

std::string sanitizer_report(const std::string& text) {
  for (const char* needle : {"ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer"}) {
    auto pos = text.find(needle);
    if (pos != std::string::npos) {
      auto start = text.rfind('\n', pos);
      start = start == std::string::npos ? 0 : start + 1;
      return text.substr(start, 6000);
    }
  }
  return "";
}

// ---------------------------------------------------------------- certs

const Certs& certs() {
  static TempDir dir("tlsgate-certs");
  static const Certs c = [] {
    std::string gen = env("TLSGATE_GEN_CERT");
    if (gen.empty()) throw std::runtime_error("TLSGATE_GEN_CERT is not set (path to tools/gen-cert)");
    auto r = run({gen, dir.path().string()}, dir.path(), 60s);
    if (!r.status.exited || r.status.code != 0)
      throw std::runtime_error("gen-cert failed: " + r.status.to_string() + "\n" + r.out + r.err);
    Certs c;
    c.dir = dir.path();
    c.ca = dir / "ca.crt";
    c.server_crt = dir / "server.crt";
    c.server_key = dir / "server.key";
    c.rsa_crt = dir / "rsa-server.crt";
    c.rsa_key = dir / "rsa-server.key";
    c.client_crt = dir / "client.crt";
    c.client_key = dir / "client.key";
    if (!fs::exists(c.client_crt) || !fs::exists(c.client_key))
      throw std::runtime_error("gen-cert wrote no client.crt/client.key in " + dir.path().string());
    return c;
  }();
  return c;
}

// ---------------------------------------------------------------- peers

std::optional<Endpoint> find_listening(const std::string& text, bool first_line) {
  static const std::string kPrefix = "listening on ";
  for (size_t pos = text.find(kPrefix); pos != std::string::npos; pos = text.find(kPrefix, pos + 1)) {
    if (first_line && pos != 0) return std::nullopt;
    size_t start = pos + kPrefix.size();
    size_t end = text.find_first_of(" \t\r\n", start);
    if (end == std::string::npos) return std::nullopt;  // line not complete yet
    if (first_line && text[end] != '\n') return std::nullopt;
    std::string addr = text.substr(start, end - start);
    auto colon = addr.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == addr.size()) continue;
    std::string port = addr.substr(colon + 1);
    if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5) continue;
    Endpoint e;
    e.host = addr.substr(0, colon);
    e.port = std::stoi(port);
    return e;
  }
  return std::nullopt;
}

EchoBackend::EchoBackend(const fs::path& dir, const std::string& name) : dir_(dir) {
  opts_.id = name;
  start(15s);
}

EchoBackend::EchoBackend(const fs::path& dir, EchoOptions opts) : dir_(dir), opts_(std::move(opts)) {
  start(15s);
}

void EchoBackend::start(Ms timeout) {
  std::string bin = env("ECHO_SERVER_BIN");
  if (bin.empty()) throw std::runtime_error("ECHO_SERVER_BIN is not set");
  ProcessOptions o;
  o.argv = {bin, "--listen", opts_.host + ":" + std::to_string(opts_.port), "--id", opts_.id};
  if (opts_.max_concurrent_streams > 0)
    o.argv.insert(o.argv.end(), {"--max-concurrent-streams", std::to_string(opts_.max_concurrent_streams)});
  for (const auto& name : opts_.health_services) o.argv.insert(o.argv.end(), {"--health-service", name});
  if (!opts_.tls_cert.empty())
    o.argv.insert(o.argv.end(), {"--tls-cert", opts_.tls_cert.string(), "--tls-key", opts_.tls_key.string()});
  if (!opts_.client_ca.empty()) o.argv.insert(o.argv.end(), {"--client-ca", opts_.client_ca.string()});
  // grpc is not instrumented: its internals look like leaks to LSan.
  o.env = {{"ASAN_OPTIONS", "detect_leaks=0"}};
  o.output_dir = dir_;
  o.name = opts_.id;
  auto deadline = Clock::now() + timeout;
  auto found = [](const std::string& t) { return find_listening(t, true).has_value(); };
  for (;;) {
    proc_ = std::make_unique<Process>(o);
    auto left = std::chrono::duration_cast<Ms>(deadline - Clock::now());
    if (proc_->wait_for(Stream::Stdout, found, std::max(left, Ms(1000)))) break;
    // A fixed port can still be held for a moment by a process being torn
    // down; echo_server then exits 1 ("cannot listen"): try again.
    bool exited = !proc_->running();
    if (!exited || opts_.port == 0 || Clock::now() >= deadline)
      throw std::runtime_error("echo_server did not print 'listening on HOST:PORT' first:\n" +
                               proc_->describe());
    std::this_thread::sleep_for(100ms);
  }
  endpoint_ = *find_listening(proc_->stdout_text(), true);
  opts_.port = endpoint_.port;  // a restart binds the same port
}

void EchoBackend::restart() {
  if (proc_) proc_->kill();
  start(10s);
}

std::shared_ptr<grpc::Channel> EchoBackend::direct_channel() const {
  if (opts_.tls_cert.empty()) return h2c_channel(endpoint_.address());
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = read_file(certs().ca);
  if (!opts_.client_ca.empty()) {
    o.pem_private_key = read_file(certs().client_key);
    o.pem_cert_chain = read_file(certs().client_crt);
  }
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(endpoint_.address(), grpc::SslCredentials(o), args);
}

grpc::Status EchoBackend::stats(tlsgate::test::StatsReply* out, bool reset) {
  auto stub = tlsgate::test::Echo::NewStub(direct_channel());
  auto ctx = context(5s);
  tlsgate::test::StatsRequest req;
  req.set_reset(reset);
  return stub->Stats(ctx.get(), req, out);
}

grpc::Status EchoBackend::set_serving(bool serving, const std::string& service) {
  auto stub = tlsgate::test::Echo::NewStub(direct_channel());
  auto ctx = context(5s);
  tlsgate::test::SetServingRequest req;
  req.set_serving(serving);
  req.set_service(service);
  tlsgate::test::StatsReply reply;
  return stub->SetServing(ctx.get(), req, &reply);
}

grpc::Status EchoBackend::health(const std::string& service,
                                 grpc::health::v1::HealthCheckResponse::ServingStatus* out) {
  auto stub = grpc::health::v1::Health::NewStub(direct_channel());
  auto ctx = context(5s);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse reply;
  auto st = stub->Check(ctx.get(), req, &reply);
  if (out) *out = reply.status();
  return st;
}

FastBackend::FastBackend(const fs::path& dir, const std::vector<std::string>& args, const std::string& name) {
  std::string bin = env("FASTBACKEND_BIN");
  if (bin.empty()) throw std::runtime_error("FASTBACKEND_BIN is not set");
  ProcessOptions o;
  o.argv = {bin, "--listen", "127.0.0.1:0"};
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  o.env = {{"ASAN_OPTIONS", "detect_leaks=0"}};
  o.output_dir = dir;
  o.name = name;
  proc_ = std::make_unique<Process>(std::move(o));
  auto found = [](const std::string& t) { return find_listening(t, true).has_value(); };
  if (!proc_->wait_for(Stream::Stderr, found, 15s))
    throw std::runtime_error("fastbackend did not print 'listening on HOST:PORT' first:\n" +
                             proc_->describe());
  endpoint_ = *find_listening(proc_->stderr_text(), true);
}

std::map<std::string, uint64_t> FastBackend::stop_and_count() {
  std::map<std::string, uint64_t> counts;
  auto st = proc_->stop(10s);
  if (!st.exited || st.code != 0) return counts;
  std::string err = proc_->stderr_text();
  auto pos = err.rfind("fastbackend: stopped by signal");
  if (pos == std::string::npos) return counts;
  std::istringstream line(err.substr(pos, err.find('\n', pos) - pos));
  std::string word;
  while (line >> word) {
    auto eq = word.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == word.size()) continue;
    std::string value = word.substr(eq + 1);
    if (value.find_first_not_of("0123456789") != std::string::npos) continue;
    counts[word.substr(0, eq)] = std::stoull(value);
  }
  return counts;
}

std::string GatewayConfig::render() const {
  std::ostringstream s;
  s << "# written by the integration test harness\n";
  s << "workers = " << workers << "\n";
  s << extra_top << "\n";
  if (admin) s << "[admin]\nlisten = \"127.0.0.1:0\"\n";
  s << "[drain]\n" << drain << "\n";
  s << "[[listeners]]\n"
    << "name = \"public\"\n"
    << "listen = \"127.0.0.1:0\"\n"
    << "cluster = \"" << cluster << "\"\n"
    << "handshake_timeout = \""
    << (!handshake_timeout.empty()                  ? handshake_timeout
        : !env("TLSGATE_HANDSHAKE_TIMEOUT").empty() ? env("TLSGATE_HANDSHAKE_TIMEOUT")
                                                    : std::string("2s"))
    << "\"\n"
    << extra_listener << "\n"
    << "  [listeners.tls]\n";
  if (certificates.empty())
    s << "  certificate = \"" << (certificate.empty() ? certs().server_crt : certificate).string() << "\"\n"
      << "  private_key = \"" << (private_key.empty() ? certs().server_key : private_key).string() << "\"\n";
  s << tls_extra << "\n"
    << "  alpn = [\"h2\", \"http/1.1\"]\n"
    << "  min_version = \"1.2\"\n";
  const std::string mode = ktls.empty() ? env("TLSGATE_KTLS") : ktls;
  if (!mode.empty()) s << "  ktls = \"" << mode << "\"\n";
  // The integration suite runs with each record layer (tests/integration/meson.build).
  if (const std::string layer = record_layer.empty() ? env("TLSGATE_RECORD_LAYER") : record_layer; !layer.empty())
    s << "  record_layer = \"" << layer << "\"\n";
  s << listener_tail << "\n";
  s << certificates << "\n";
  s << (clusters.empty() ? cluster_toml("backend", endpoints) : clusters);
  return s.str();
}

std::string cluster_toml(const std::string& name, const std::vector<std::string>& endpoints,
                         const std::string& extra) {
  std::ostringstream s;
  s << "\n[[clusters]]\n"
    << "name = \"" << name << "\"\n"
    << "endpoints = [";
  for (size_t i = 0; i < endpoints.size(); ++i) s << (i ? ", " : "") << "\"" << endpoints[i] << "\"";
  s << "]\n" << extra;
  if (!extra.empty() && extra.back() != '\n') s << "\n";
  return s.str();
}

namespace {
// sh -c script that bind-mounts `hosts` on /etc/hosts, then execs argv.
std::vector<std::string> in_hosts_namespace(const fs::path& hosts, const std::vector<std::string>& argv) {
  auto quote = [](const std::string& a) {
    std::string q = "'";
    for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
  };
  // Appended piece by piece: GCC 12 at -O3 warns (-Wrestrict, a false
  // positive) on `"literal" + std::string`.
  std::string script = "mount --bind ";
  script += quote(hosts.string());
  script += " /etc/hosts && exec";
  for (const auto& a : argv) {
    script += ' ';
    script += quote(a);
  }
  return {"/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script};
}
}  // namespace

std::string hosts_namespace_unavailable() {
  if (::access("/usr/bin/unshare", X_OK) != 0) return "/usr/bin/unshare is missing";
  TempDir dir("tlsgate-ns");
  fs::path hosts = dir / "hosts";
  write_file(hosts, "127.0.0.2 probe.tlsgate.test\n");
  auto r =
      run(in_hosts_namespace(hosts, {"/usr/bin/getent", "hosts", "probe.tlsgate.test"}), dir.path(), 20s);
  if (!r.status.exited || r.status.code != 0 || r.out.find("127.0.0.2") == std::string::npos)
    return "cannot bind-mount a file on /etc/hosts in a private mount namespace (needs root): " +
           r.status.to_string() + " " + r.err;
  return "";
}

std::map<std::string, std::string> gateway_env() {
  return {
      {"ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0"},
      {"LSAN_OPTIONS", "detect_leaks=1"},
      {"UBSAN_OPTIONS", "print_stacktrace=1"},
  };
}

Gateway::Gateway(const fs::path& dir, const GatewayConfig& cfg) {
  std::string bin = env("TLSGATE_BIN");
  if (bin.empty()) throw std::runtime_error("TLSGATE_BIN is not set");
  config_path_ = dir / "tlsgate.toml";
  leaves_streams_ = cfg.leaves_streams;
  write_file(config_path_, cfg.render());
  ProcessOptions o;
  o.argv = {bin, "--config", config_path_.string()};
  // unshare execs sh, which execs tlsgate: one pid, so signals reach tlsgate.
  if (!cfg.hosts_file.empty()) o.argv = in_hosts_namespace(cfg.hosts_file, o.argv);
  o.env = gateway_env();
  for (const auto& [k, v] : cfg.process_env) o.env[k] = v;
  o.output_dir = dir;
  o.name = "tlsgate";
  proc_ = std::make_unique<Process>(std::move(o));
  auto found = [](const std::string& t) { return find_listening(t).has_value(); };
  if (!proc_->wait_for(Stream::Stderr, found, 15s)) {
    ADD_FAILURE() << "tlsgate did not print 'listening on HOST:PORT' on stderr within 15 s\n"
                  << "config:\n"
                  << cfg.render() << "\n"
                  << proc_->describe();
    return;
  }
  endpoint_ = *find_listening(proc_->stderr_text());
  started_ = true;
}

Gateway::~Gateway() { stop(); }

int Gateway::admin_port() {
  static const std::string kPrefix = "admin listener on 127.0.0.1:";
  if (!proc_) return 0;
  // Logged after the listeners' lines, which is what the constructor waited for.
  proc_->wait_for(Stream::Stderr, [](const std::string& t) { return t.find(kPrefix) != std::string::npos; }, 5s);
  const std::string err = proc_->stderr_text();
  const size_t at = err.find(kPrefix);
  if (at == std::string::npos) return 0;
  return std::atoi(err.c_str() + at + kPrefix.size());
}

HttpAnswer http_request(int port, const std::string& path, const std::string& method, Ms timeout) {
  HttpAnswer a;
  const int fd = tcp_connect("127.0.0.1", port, timeout);
  if (fd < 0) return a;
  std::string text;
  if (send_all(fd, method + " " + path + " HTTP/1.1\r\nHost: admin\r\n\r\n")) {
    Ms elapsed{};
    wait_peer_close(fd, timeout, &elapsed, &text);
  }
  ::close(fd);
  const size_t end = text.find("\r\n\r\n");
  if (end == std::string::npos || text.compare(0, 9, "HTTP/1.1 ") != 0) return a;
  a.status = std::atoi(text.c_str() + 9);
  a.head = text.substr(0, end);
  a.body = text.substr(end + 4);
  return a;
}

double metric(const std::string& page, const std::string& name, const std::vector<std::string>& labels) {
  double sum = 0;
  bool any = false;
  std::istringstream in(page);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#' || line.compare(0, name.size(), name) != 0) continue;
    const char next = line.size() > name.size() ? line[name.size()] : '\0';
    if (next != '{' && next != ' ') continue;
    const size_t space = line.rfind(' ');
    const std::string series = line.substr(0, space);
    bool match = true;
    for (const std::string& l : labels) match = match && series.find(l) != std::string::npos;
    if (!match) continue;
    sum += std::stod(line.substr(space + 1));
    any = true;
  }
  return any ? sum : -1;
}

void Gateway::stop() {
  if (stopped_ || !proc_) return;
  stopped_ = true;
  bool was_running = proc_->running();
  auto st = proc_->stop(10s);
  std::string err = proc_->stderr_text();
  std::string report = sanitizer_report(err);
  EXPECT_EQ(report, "") << "sanitizer report in tlsgate's stderr\n" << proc_->describe();
  if (started_ && was_running) {
    // 3: the drain's end cut streams, which a test that leaves them running expects.
    EXPECT_TRUE(st.exited && (st.code == 0 || (leaves_streams_ && st.code == 3)))
        << "tlsgate did not exit with 0 within 10 s of SIGTERM: " << st.to_string() << "\n"
        << proc_->describe();
  } else if (started_) {
    ADD_FAILURE() << "tlsgate exited before the test stopped it: " << st.to_string() << "\n"
                  << proc_->describe();
  }
}

ExitStatus Gateway::wait_exit(Ms timeout) {
  stopped_ = true;
  ExitStatus st = proc_->wait(timeout);
  if (st.timed_out) {
    st = proc_->kill();
    st.timed_out = true;
  }
  EXPECT_EQ(sanitizer_report(proc_->stderr_text()), "") << "sanitizer report in tlsgate's stderr\n"
                                                        << proc_->describe();
  return st;
}

// ---------------------------------------------------------------- gRPC

std::shared_ptr<grpc::Channel> tls_channel(const std::string& target, const grpc::ChannelArguments* extra) {
  static const std::string ca = read_file(certs().ca);
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = ca;
  grpc::ChannelArguments args = extra ? *extra : grpc::ChannelArguments();
  args.SetSslTargetNameOverride("localhost");
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(16 << 20);
  args.SetMaxSendMessageSize(16 << 20);
  return grpc::CreateCustomChannel(target, grpc::SslCredentials(o), args);
}

std::shared_ptr<grpc::Channel> h2c_channel(const std::string& target, const grpc::ChannelArguments* extra) {
  grpc::ChannelArguments args = extra ? *extra : grpc::ChannelArguments();
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(16 << 20);
  args.SetMaxSendMessageSize(16 << 20);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

std::shared_ptr<grpc::Channel> tls_channel_any_authority(const std::string& target) {
  namespace gx = grpc::experimental;
  gx::TlsChannelCredentialsOptions o;
  o.set_certificate_provider(std::make_shared<gx::StaticDataCertificateProvider>(read_file(certs().ca)));
  o.watch_root_certs();
  o.set_check_call_host(false);
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(target, gx::TlsCredentials(o), args);
}

bool wait_connected(const std::shared_ptr<grpc::Channel>& ch, Ms timeout) {
  return ch->WaitForConnected(std::chrono::system_clock::now() + timeout);
}

std::unique_ptr<grpc::ClientContext> context(Ms timeout) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  return ctx;
}

std::string status_str(const grpc::Status& st) {
  std::string s = "grpc status " + std::to_string(static_cast<int>(st.error_code()));
  if (!st.error_message().empty()) s += " \"" + st.error_message() + "\"";
  if (!st.error_details().empty()) s += " details " + st.error_details();
  return s;
}

std::string grpc_frame(const std::string& message) {
  std::string f(5, '\0');
  uint32_t n = static_cast<uint32_t>(message.size());
  f[1] = static_cast<char>(n >> 24);
  f[2] = static_cast<char>(n >> 16);
  f[3] = static_cast<char>(n >> 8);
  f[4] = static_cast<char>(n);
  return f + message;
}

std::string unary_check(const std::string& target, Ms timeout) {
  auto stub = tlsgate::test::Echo::NewStub(tls_channel(target));
  auto ctx = context(timeout);
  tlsgate::test::EchoRequest req;
  tlsgate::test::EchoReply reply;
  req.set_payload("ping");
  auto st = stub->Unary(ctx.get(), req, &reply);
  if (!st.ok()) return "unary call through the gateway failed: " + status_str(st);
  if (reply.payload() != "ping") return "unary call returned payload \"" + reply.payload() + "\"";
  return "";
}

// ---------------------------------------------------------------- sockets

int tcp_connect(const std::string& host, int port, Ms timeout) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 && errno != EINPROGRESS) {
    ::close(fd);
    return -1;
  }
  pollfd p{fd, POLLOUT, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) {
    ::close(fd);
    return -1;
  }
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    ::close(fd);
    return -1;
  }
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

bool send_all(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

bool wait_peer_close(int fd, Ms timeout, Ms* elapsed, std::string* received) {
  auto start = Clock::now();
  auto deadline = start + timeout;
  char buf[4096];
  for (;;) {
    auto left = std::chrono::duration_cast<Ms>(deadline - Clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      if (received) received->append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 || errno == ECONNRESET || errno == EPIPE) {
      if (elapsed) *elapsed = std::chrono::duration_cast<Ms>(Clock::now() - start);
      return true;
    }
    break;
  }
  if (elapsed) *elapsed = std::chrono::duration_cast<Ms>(Clock::now() - start);
  return false;
}

// The socket stays bound, never listening, until the process ends: a port
// that was merely bound and closed is free for the kernel to hand to the next
// listener on port 0 — another test process's gateway, which then received
// this test's "refused" connections (and that test counted strangers).
int closed_port() {
  static std::vector<int> held;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("closed_port: socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = 0;
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::runtime_error(std::string("closed_port: bind: ") + std::strerror(err));
  }
  held.push_back(fd);
  return ntohs(a.sin_port);
}

const std::string& client_hello() {
  static const std::string hello = [] {
    int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    ::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(lfd, 1);
    socklen_t len = sizeof a;
    getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
    int port = ntohs(a.sin_port);
    TempDir dir("tlsgate-hello");
    ProcessOptions o;
    o.argv = {"/usr/bin/openssl", "s_client",  "-connect", "127.0.0.1:" + std::to_string(port),
              "-servername",      "localhost", "-alpn",    "h2"};
    o.output_dir = dir.path();
    o.name = "s_client";
    Process client(std::move(o));
    std::string record;
    pollfd p{lfd, POLLIN, 0};
    if (::poll(&p, 1, 10000) == 1) {
      int cfd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      auto deadline = Clock::now() + 10s;
      while (cfd >= 0 && Clock::now() < deadline) {
        if (record.size() >= 5) {
          size_t want = 5 + ((static_cast<uint8_t>(record[3]) << 8) | static_cast<uint8_t>(record[4]));
          if (record.size() >= want) {
            record.resize(want);
            break;
          }
        }
        pollfd q{cfd, POLLIN, 0};
        if (::poll(&q, 1, 1000) != 1) continue;
        char buf[4096];
        ssize_t n = ::recv(cfd, buf, sizeof buf, 0);
        if (n <= 0) break;
        record.append(buf, static_cast<size_t>(n));
      }
      if (cfd >= 0) ::close(cfd);
    }
    ::close(lfd);
    client.kill();
    if (record.size() < 50 || record[0] != 0x16)
      throw std::runtime_error("could not capture a ClientHello from openssl s_client");
    return record;
  }();
  return hello;
}

}  // namespace tlsgate::itest
