// Integration test harness: real processes (tlsgate, echo_server, curl,
// openssl) in a temp folder, bounded waits, reaped children.
//
// Contracts:
// - Every wait takes a timeout; nothing here blocks without one.
// - A Process is owned by exactly one object; its destructor stops and reaps
//   the child (TERM, then KILL), so a failing test leaves no process behind.
//   Children also get PR_SET_PDEATHSIG(SIGKILL), for when the test binary
//   itself dies.
// - Binaries come from the environment: TLSGATE_BIN, ECHO_SERVER_BIN,
//   FASTBACKEND_BIN, TLSGATE_GEN_CERT (set by tests/integration/meson.build).
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "echo.grpc.pb.h"
#include "health.grpc.pb.h"

namespace tlsgate::itest {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

// Value of an environment variable, or "" if unset.
std::string env(const char* name);

std::string read_file(const std::filesystem::path& p);
// The key=value words of the last "stopped: " line in a gateway's log (its
// counters summed over shards); empty when there is none.
std::map<std::string, std::string> stopped_counters(const std::string& log);
void write_file(const std::filesystem::path& p, const std::string& content);
// Truncates and rewrites p, keeping its inode (no rename), so a bind mount of
// p (see GatewayConfig::hosts_file) sees the new content.
void rewrite_in_place(const std::filesystem::path& p, const std::string& content);

// A fresh folder under $TMPDIR (mkdtemp), removed on destruction unless the
// environment has TLSGATE_KEEP_TMP=1.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "tlsgate-it");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// Certificates made once per test binary by tools/gen-cert.
// server_crt carries DNS:localhost, IP:127.0.0.1, IP:::1; client_crt is a
// clientAuth certificate signed by the same CA (for mTLS to backends).
struct Certs {
  std::filesystem::path dir, ca, server_crt, server_key, rsa_crt, rsa_key, client_crt, client_key;
};
const Certs& certs();

// How a child ended, from waitpid's status.
struct ExitStatus {
  bool exited = false;  // exited normally; code is valid
  int code = -1;
  int signal = 0;          // killed by this signal
  bool timed_out = false;  // still running when the wait gave up
  std::string to_string() const;
};

enum class Stream { Stdout, Stderr };

struct ProcessOptions {
  std::vector<std::string> argv;
  // Added to (or replacing in) the test's own environment.
  std::map<std::string, std::string> env;
  std::filesystem::path output_dir;  // where NAME.stdout / NAME.stderr go
  std::string name;                  // file prefix and label in messages
  std::string stdin_data;            // written to a file and given as stdin
};

class Process {
 public:
  // Starts the child; throws std::runtime_error if it cannot be spawned.
  explicit Process(ProcessOptions opts);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& name() const { return opts_.name; }
  bool running();

  std::string output(Stream s) const;
  std::string stdout_text() const { return output(Stream::Stdout); }
  std::string stderr_text() const { return output(Stream::Stderr); }

  // Waits until `found` holds for the stream's text so far; false on
  // timeout or if the process exited first.
  bool wait_for(Stream s, const std::function<bool(const std::string&)>& found, Ms timeout);

  // Waits for the child to exit on its own.
  ExitStatus wait(Ms timeout);
  void signal(int sig);
  // SIGTERM, wait up to `grace`, then SIGKILL; always reaps. Idempotent.
  ExitStatus stop(Ms grace = 10s);
  // SIGKILL and reap.
  ExitStatus kill();

  // Everything useful for a failure message.
  std::string describe() const;

 private:
  ProcessOptions opts_;
  std::filesystem::path out_path_, err_path_;
  pid_t pid_ = -1;
  std::optional<ExitStatus> status_;
};

// Runs a command to completion (bounded) and returns its output.
struct RunResult {
  ExitStatus status;
  std::string out, err;
};
RunResult run(const std::vector<std::string>& argv, const std::filesystem::path& dir, Ms timeout,
              const std::map<std::string, std::string>& env = {}, const std::string& stdin_data = "");

// Sanitizer reports in a child's stderr ("" if none).
std::string sanitizer_report(const std::string& stderr_text);

// "listening on HOST:PORT" parsed from a stream.
struct Endpoint {
  std::string host;
  int port = 0;
  std::string address() const { return host + ":" + std::to_string(port); }
};

// How to start an echo_server.
struct EchoOptions {
  std::string id = "echo";  // --id (EchoReply.server_id) and the process label
  std::string host = "127.0.0.1";
  int port = 0;  // 0 = the kernel's choice
  // SETTINGS_MAX_CONCURRENT_STREAMS; 0 = echo_server's default (10000).
  int max_concurrent_streams = 0;
  // Health service names that start SERVING besides the overall "".
  std::vector<std::string> health_services;
  // TLS instead of h2c when tls_cert is set; with client_ca the backend
  // requires a client certificate signed by it (mTLS).
  std::filesystem::path tls_cert, tls_key, client_ca;
};

// echo_server (ECHO_SERVER_BIN), started and its port read back. After the
// first start the port is fixed: restart() binds the same HOST:PORT again.
class EchoBackend {
 public:
  explicit EchoBackend(const std::filesystem::path& dir, const std::string& name = "echo");
  EchoBackend(const std::filesystem::path& dir, EchoOptions opts);
  const Endpoint& endpoint() const { return endpoint_; }
  const std::string& id() const { return opts_.id; }
  const EchoOptions& options() const { return opts_; }
  Process& process() { return *proc_; }
  // SIGKILL (no goodbye to its peers) and reap.
  void kill() { proc_->kill(); }
  // Stops the current process if it still runs (SIGKILL) and starts a new one
  // on the same HOST:PORT, retrying the bind for up to 10 s; throws if it
  // cannot.
  void restart();
  // A channel straight to the backend (not through the gateway): h2c, or TLS
  // with the test CA (and the client certificate when the backend wants one).
  std::shared_ptr<grpc::Channel> direct_channel() const;
  // Stats straight from the backend (not through the gateway).
  grpc::Status stats(tlsgate::test::StatsReply* out, bool reset = false);
  // Echo/SetServing on the backend: what its grpc.health.v1.Health/Check
  // answers for `service` ("" = overall).
  grpc::Status set_serving(bool serving, const std::string& service = "");
  // grpc.health.v1.Health/Check straight on the backend.
  grpc::Status health(const std::string& service, grpc::health::v1::HealthCheckResponse::ServingStatus* out);

 private:
  void start(Ms timeout);
  std::filesystem::path dir_;
  EchoOptions opts_;
  std::unique_ptr<Process> proc_;
  Endpoint endpoint_;
};

// fastbackend (FASTBACKEND_BIN): the nghttp2 h2c backend that echoes the
// request's gRPC message. Its test modes: --refuse N, --goaway-after N.
class FastBackend {
 public:
  FastBackend(const std::filesystem::path& dir, const std::vector<std::string>& args = {},
              const std::string& name = "fastbackend");
  const Endpoint& endpoint() const { return endpoint_; }
  Process& process() { return *proc_; }
  // SIGTERM, then the counters of its exit line ("connections", "calls",
  // and with a test mode "refused", "goaways"); empty if it did not exit 0
  // within 10 s or printed no such line.
  std::map<std::string, uint64_t> stop_and_count();

 private:
  std::unique_ptr<Process> proc_;
  Endpoint endpoint_;
};

// Gateway configuration written to a file. Values are inserted verbatim into
// TOML, so strings carry their quotes.
struct GatewayConfig {
  std::vector<std::string> endpoints;  // "127.0.0.1:1234"
  // Empty: $TLSGATE_HANDSHAKE_TIMEOUT if set (the VM suite runs under CPU
  // emulation, where 100 concurrent handshakes take longer), else "2s".
  std::string handshake_timeout;
  int workers = 2;
  std::filesystem::path certificate;  // default: certs().server_crt
  std::filesystem::path private_key;  // default: certs().server_key
  // Raw [[listeners.tls.certificates]] tables; when set they replace the
  // certificate/private_key pair above (written after listener_tail).
  std::string certificates;
  std::string extra_listener;         // raw TOML lines appended to [[listeners]]
  std::string tls_extra;              // raw TOML lines inside [listeners.tls] (e.g. ticket_keys)
  std::string extra_top;              // raw TOML lines at the top
  // The [drain] table's keys. stop() sends TERM, then KILL after 10 s: the
  // default keeps the drain within that.
  std::string drain = "timeout = \"5s\"";
  // The listener's default cluster (its `cluster` key).
  std::string cluster = "backend";
  // Raw TOML after [listeners.tls], e.g. [[listeners.routes]] tables.
  std::string listener_tail;
  // Raw TOML for every [[clusters]] table (see cluster_toml()); when set it
  // replaces the one cluster "backend" made from `endpoints`.
  std::string clusters;
  // Not TOML: when set, tlsgate runs in a private mount namespace with this
  // file bind-mounted on /etc/hosts (unshare --mount --propagation private;
  // needs root). Change it with rewrite_in_place().
  std::filesystem::path hosts_file;
  // listeners.tls.ktls; empty: $TLSGATE_KTLS if set (the VM suite runs every
  // gateway test with "on"), else the default ("auto").
  std::string ktls;
  // listeners.tls.record_layer; empty: $TLSGATE_RECORD_LAYER if set (meson
  // runs the gateway tests with each), else the default ("tlsgate").
  std::string record_layer;
  // An [admin] listener on 127.0.0.1:0 (Gateway::admin_port() finds its port).
  bool admin = false;
  // Not TOML: the test leaves streams running when it stops the gateway
  // (clients that never finish them), so stop() accepts exit 3 (the drain
  // cut them) besides 0.
  bool leaves_streams = false;
  // Not TOML: added to tlsgate's environment (e.g. LD_PRELOAD).
  std::map<std::string, std::string> process_env;
  std::string render() const;
};

// One [[clusters]] table: name and endpoints, then `extra` verbatim (more keys
// of the cluster, then sub-tables such as [clusters.health_check]).
std::string cluster_toml(const std::string& name, const std::vector<std::string>& endpoints,
                         const std::string& extra = "");

// "" if this process can run a command in a private mount namespace with a
// file bind-mounted on /etc/hosts, else why not (a test failure message).
std::string hosts_namespace_unavailable();

// tlsgate (TLSGATE_BIN) started with a config and its listener port read back.
// The child runs with ASAN_OPTIONS=detect_leaks=1:abort_on_error=0; stop()
// adds a test failure if its stderr holds a sanitizer report or if it does not
// exit with status 0 on SIGTERM.
class Gateway {
 public:
  Gateway(const std::filesystem::path& dir, const GatewayConfig& cfg);
  ~Gateway();
  const Endpoint& endpoint() const { return endpoint_; }
  std::string target() const { return endpoint_.address(); }
  Process& process() { return *proc_; }
  bool started() const { return started_; }
  // Stop (TERM then KILL) and check exit status and sanitizer output.
  void stop();
  // For a test that signalled the gateway itself: waits for it to exit (KILL
  // after `timeout`, reported as timed_out) and checks its sanitizer output;
  // stop() does nothing afterwards.
  ExitStatus wait_exit(Ms timeout);
  std::filesystem::path config_path() const { return config_path_; }
  // The admin listener's port from the start-up log, or 0.
  int admin_port();

 private:
  std::filesystem::path config_path_;
  std::unique_ptr<Process> proc_;
  Endpoint endpoint_;
  bool started_ = false;
  bool stopped_ = false;
  bool leaves_streams_ = false;
};

// The environment every tlsgate child gets (sanitizer settings).
std::map<std::string, std::string> gateway_env();

// The first "listening on HOST:PORT" in text (HOST may be "[::1]"); with
// first_line, only if text starts with it and the line is complete.
std::optional<Endpoint> find_listening(const std::string& text, bool first_line = false);

// gRPC channels. Each call makes a new channel with a local subchannel pool,
// so two channels never share a connection. Message size limits 16 MiB.
std::shared_ptr<grpc::Channel> tls_channel(const std::string& target,
                                           const grpc::ChannelArguments* extra = nullptr);
std::shared_ptr<grpc::Channel> h2c_channel(const std::string& target,
                                           const grpc::ChannelArguments* extra = nullptr);
// TLS to `target` verified against the test CA as "localhost", whose calls
// may carry any :authority (ClientContext::set_authority): grpc's check of the
// call host against the server certificate is off. For routing by authority.
std::shared_ptr<grpc::Channel> tls_channel_any_authority(const std::string& target);
// Waits until the channel is connected; false on timeout.
bool wait_connected(const std::shared_ptr<grpc::Channel>& ch, Ms timeout);

// A client context with a deadline.
std::unique_ptr<grpc::ClientContext> context(Ms timeout = 10s);

std::string status_str(const grpc::Status& st);

// A gRPC length-prefixed message (uncompressed): 0, 4-byte big-endian length,
// the bytes. For curl --data-binary.
std::string grpc_frame(const std::string& message);

// One unary call "ping" through `target` over TLS; OK and echoed, or a
// description of what went wrong ("" on success).
std::string unary_check(const std::string& target, Ms timeout = 10s);

// One HTTP/1.1 request to the admin listener on 127.0.0.1:port; status 0
// when there was no complete answer within `timeout`.
struct HttpAnswer {
  int status = 0;
  std::string head;
  std::string body;
};
HttpAnswer http_request(int port, const std::string& path, const std::string& method = "GET", Ms timeout = 5s);

// A Prometheus text page: the sum of the samples of `name` (exactly that
// name, so a histogram's _bucket lines are not its _count) whose labels
// contain every one of `labels` (e.g. {"cluster=\"backend\""}). -1 when no
// sample matched.
double metric(const std::string& page, const std::string& name, const std::vector<std::string>& labels = {});

// Raw TCP helpers for bad-input tests.
int tcp_connect(const std::string& host, int port, Ms timeout);
// Reads until EOF/reset or timeout. Returns true if the peer closed (EOF or
// ECONNRESET) within the timeout; `elapsed` is the time it took.
bool wait_peer_close(int fd, Ms timeout, Ms* elapsed, std::string* received = nullptr);
bool send_all(int fd, const std::string& data);
// A port on 127.0.0.1 where connections are refused for the rest of the
// process's life (bound, never listening, so no other socket gets it).
int closed_port();

// A real TLS ClientHello record (as sent by `openssl s_client`, SNI localhost,
// ALPN h2), captured once per test binary.
const std::string& client_hello();

}  // namespace tlsgate::itest
