// Table-driven tests for src/config: every rule of the configuration shape has
// a row, and every error row checks the whole one-line message, position
// included, because that line is what an operator reads.
#include "tlsgate/config.hh"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace tlsgate::config {
namespace {

using namespace std::chrono_literals;

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
  return s;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Names ending in ".test" resolve (RFC 6761 reserves the TLD), anything else
// fails like getaddrinfo does; no test waits on DNS.
SocketAddress fake_resolver(const std::string& host, uint16_t port) {
  SocketAddress a;
  if (host == "backend.test") {
    auto& sin = reinterpret_cast<sockaddr_in&>(a.storage);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    inet_pton(AF_INET, "192.0.2.10", &sin.sin_addr);
    a.length = sizeof sin;
    return a;
  }
  if (host == "v6.test") {
    auto& sin6 = reinterpret_cast<sockaddr_in6&>(a.storage);
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(port);
    inet_pton(AF_INET6, "2001:db8::1", &sin6.sin6_addr);
    a.length = sizeof sin6;
    return a;
  }
  throw std::invalid_argument("cannot resolve \"" + host + "\": Name or service not known");
}

std::string ip_of(const SocketAddress& a) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (a.family() == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(a.storage).sin_addr, buf, sizeof buf);
  } else if (a.family() == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(a.storage).sin6_addr, buf, sizeof buf);
  }
  return buf;
}

// A temp folder with a certificate and key (contents are not checked here),
// the fake resolver installed, and text templates:
//   @DIR@ the temp folder, @CRT@ / @KEY@ the two files,
//   @LISTENER@ / @CLUSTER@ a valid listener / cluster block.
class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tlsgate_config_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    write_file(dir_ + "/server.crt", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    write_file(dir_ + "/server.key", "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n");
    previous_ = set_resolver(fake_resolver);
  }
  void TearDown() override {
    set_resolver(previous_);
    std::filesystem::remove_all(dir_);
  }

  std::string expand(std::string s) const {
    s = replace_all(s, "@LISTENER@",
                    "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
                    "  [listeners.tls]\n  certificate = \"@CRT@\"\n  private_key = \"@KEY@\"\n");
    s = replace_all(s, "@CLUSTER@", "[[clusters]]\nname = \"backend\"\nendpoints = [\"127.0.0.1:50051\"]\n");
    s = replace_all(s, "@CRT@", dir_ + "/server.crt");
    s = replace_all(s, "@KEY@", dir_ + "/server.key");
    return replace_all(s, "@DIR@", dir_);
  }

  // The what() of the ConfigError, or "no error".
  std::string error_of(const std::string& text) const {
    try {
      parse(expand(text), "demo.toml");
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "no error";
  }

  std::string dir_;
  Resolver previous_ = nullptr;
};

// ---------------------------------------------------------------------------
// Rejected documents: the exact message.

struct ErrorCase {
  const char* name;
  const char* text;
  const char* message;
};

const std::string kLong(256, 'x');

const ErrorCase kErrorCases[] = {
    // Syntax, reported with toml++'s position and description.
    {"syntax_missing_value", "workers = \n",
     "demo.toml:1:11: syntax error: Error while parsing key-value pair: expected value, saw '\\n'"},
    {"syntax_duplicate_key", "workers = 1\nworkers = 2\n",
     "demo.toml:2:11: syntax error: Error while parsing key-value pair: cannot redefine existing integer "
     "'workers'"},
    // Unknown keys, at the key; before anything else in the same table.
    {"unknown_top_level", "colour = 1\n@LISTENER@@CLUSTER@", "demo.toml:1:1: colour: unknown key"},
    {"unknown_first_in_document", "zeta = 1\nalpha = 2\n@LISTENER@@CLUSTER@",
     "demo.toml:1:1: zeta: unknown key"},
    {"unknown_in_listener", "[[listeners]]\nname = \"public\"\ncolour = \"blue\"\n@CLUSTER@",
     "demo.toml:3:1: listeners[0].colour: unknown key"},
    {"unknown_in_tls", "@LISTENER@  cert = \"x\"\n@CLUSTER@",
     "demo.toml:8:3: listeners[0].tls.cert: unknown key"},
    {"unknown_table_in_listener", "[[listeners]]\n[listeners.tsl]\n@CLUSTER@",
     "demo.toml:2:12: listeners[0].tsl: unknown key"},
    {"unknown_in_cluster", "@LISTENER@[[clusters]]\nname = \"backend\"\nweight = 3\n",
     "demo.toml:10:1: clusters[0].weight: unknown key"},
    {"unknown_in_admin", "[admin]\nport = 9901\n@LISTENER@@CLUSTER@",
     "demo.toml:2:1: admin.port: unknown key"},
    {"unknown_quoted_key_stays_one_line", "\"a\\nb\" = 1\n", "demo.toml:1:1: \"a\\nb\": unknown key"},
    {"misspelt_required_key_is_unknown", "[[listeners]]\nnmae = \"public\"\n@CLUSTER@",
     "demo.toml:2:1: listeners[0].nmae: unknown key"},
    // workers
    {"workers_zero", "workers = 0\n@LISTENER@@CLUSTER@",
     "demo.toml:1:11: workers: expected \"auto\" or an integer from 1 to 256, got 0"},
    {"workers_too_many", "workers = 257\n@LISTENER@@CLUSTER@",
     "demo.toml:1:11: workers: expected \"auto\" or an integer from 1 to 256, got 257"},
    {"workers_negative", "workers = -1\n@LISTENER@@CLUSTER@",
     "demo.toml:1:11: workers: expected \"auto\" or an integer from 1 to 256, got -1"},
    {"workers_other_string", "workers = \"eight\"\n@LISTENER@@CLUSTER@",
     "demo.toml:1:11: workers: expected \"auto\" or an integer from 1 to 256, got \"eight\""},
    {"workers_bool", "workers = true\n@LISTENER@@CLUSTER@",
     "demo.toml:1:11: workers: expected \"auto\" or an integer from 1 to 256, got a boolean"},
    {"workers_float", "workers = 1.5\n@LISTENER@@CLUSTER@",
     "demo.toml:1:11: workers: expected \"auto\" or an integer from 1 to 256, got a float"},
    // [admin]
    {"admin_not_table", "admin = 1\n@LISTENER@@CLUSTER@",
     "demo.toml:1:9: admin: expected a table, got an integer"},
    {"admin_without_listen", "[admin]\n@LISTENER@@CLUSTER@",
     "demo.toml:1:1: admin.listen: required key is missing"},
    {"admin_listen_name", "[admin]\nlisten = \"localhost:9901\"\n@LISTENER@@CLUSTER@",
     "demo.toml:2:10: admin.listen: invalid address \"localhost:9901\": \"localhost\" is not a numeric IP "
     "address"},
    {"admin_same_address_as_listener", "[admin]\nlisten = \"127.0.0.1:8443\"\n@LISTENER@@CLUSTER@",
     "demo.toml:2:10: admin.listen: address \"127.0.0.1:8443\" is already used by listeners[0].listen"},
    // [[listeners]] itself
    {"listeners_missing", "workers = 1\n@CLUSTER@", "demo.toml:1:1: listeners: required key is missing"},
    {"listeners_empty", "listeners = []\n@CLUSTER@",
     "demo.toml:1:13: listeners: at least one listener is required"},
    {"listeners_not_array", "listeners = \"public\"\n@CLUSTER@",
     "demo.toml:1:13: listeners: expected an array of tables, got a string"},
    {"listeners_not_table", "listeners = [1]\n@CLUSTER@",
     "demo.toml:1:14: listeners[0]: expected a table, got an integer"},
    {"listener_name_missing", "[[listeners]]\nlisten = \"127.0.0.1:8443\"\n@CLUSTER@",
     "demo.toml:1:1: listeners[0].name: required key is missing"},
    {"listener_name_type", "[[listeners]]\nname = 7\n@CLUSTER@",
     "demo.toml:2:8: listeners[0].name: expected a string, got an integer"},
    {"listener_name_chars", "[[listeners]]\nname = \"pub lic\"\n@CLUSTER@",
     "demo.toml:2:8: listeners[0].name: expected a name of letters, digits, '_', '.' or '-', got \"pub "
     "lic\""},
    {"listener_name_empty", "[[listeners]]\nname = \"\"\n@CLUSTER@",
     "demo.toml:2:8: listeners[0].name: expected a name of letters, digits, '_', '.' or '-', got \"\""},
    {"listener_name_duplicate", "@LISTENER@[[listeners]]\nname = \"public\"\n@CLUSTER@",
     "demo.toml:9:8: listeners[1].name: duplicate listener name \"public\" (also listeners[0].name)"},
    // listen
    {"listen_missing", "[[listeners]]\nname = \"public\"\n@CLUSTER@",
     "demo.toml:1:1: listeners[0].listen: required key is missing"},
    {"listen_type", "[[listeners]]\nname = \"public\"\nlisten = 8443\n@CLUSTER@",
     "demo.toml:3:10: listeners[0].listen: expected a string, got an integer"},
    {"listen_no_port", "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1\"\n@CLUSTER@",
     "demo.toml:3:10: listeners[0].listen: invalid address \"127.0.0.1\": missing port; expected IP:port"},
    {"listen_name", "[[listeners]]\nname = \"public\"\nlisten = \"localhost:8443\"\n@CLUSTER@",
     "demo.toml:3:10: listeners[0].listen: invalid address \"localhost:8443\": \"localhost\" is not a "
     "numeric IP "
     "address"},
    {"listen_ipv6_without_brackets", "[[listeners]]\nname = \"public\"\nlisten = \"::1:8443\"\n@CLUSTER@",
     "demo.toml:3:10: listeners[0].listen: invalid address \"::1:8443\": write an IPv6 address in brackets, "
     "e.g. "
     "\"[::1]:8443\""},
    {"listen_port_too_big", "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:65536\"\n@CLUSTER@",
     "demo.toml:3:10: listeners[0].listen: invalid address \"127.0.0.1:65536\": port must be a number from 0 "
     "to "
     "65535"},
    {"listen_duplicate", "@LISTENER@[[listeners]]\nname = \"second\"\nlisten = \"127.0.0.1:8443\"\n@CLUSTER@",
     "demo.toml:10:10: listeners[1].listen: address \"127.0.0.1:8443\" is already used by "
     "listeners[0].listen"},
    {"listen_duplicate_ipv6_spelling",
     "[[listeners]]\nname = \"a\"\nlisten = \"[::1]:8443\"\ncluster = \"backend\"\ntls = { certificate = "
     "\"@CRT@\", "
     "private_key = \"@KEY@\" }\n"
     "[[listeners]]\nname = \"b\"\nlisten = \"[0:0::1]:8443\"\n@CLUSTER@",
     "demo.toml:8:10: listeners[1].listen: address \"[0:0::1]:8443\" is already used by listeners[0].listen"},
    // proxy_protocol, cluster
    {"proxy_protocol_value",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\nproxy_protocol = \"v3\"\n@CLUSTER@",
     "demo.toml:4:18: listeners[0].proxy_protocol: expected one of \"off\", \"v1\", \"v2\", \"auto\", got "
     "\"v3\""},
    {"proxy_protocol_type",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\nproxy_protocol = false\n@CLUSTER@",
     "demo.toml:4:18: listeners[0].proxy_protocol: expected one of \"off\", \"v1\", \"v2\", \"auto\", got a "
     "boolean"},
    {"cluster_missing", "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\n@CLUSTER@",
     "demo.toml:1:1: listeners[0].cluster: required key is missing"},
    {"cluster_undefined",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"nope\"\n"
     "tls = { certificate = \"@CRT@\", private_key = \"@KEY@\" }\n@CLUSTER@",
     "demo.toml:4:11: listeners[0].cluster: no cluster named \"nope\""},
    // durations
    {"handshake_timeout_integer",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = "
     "\"backend\"\nhandshake_timeout = "
     "10\n@CLUSTER@",
     "demo.toml:5:21: listeners[0].handshake_timeout: expected a duration string such as \"10s\", got an "
     "integer"},
    {"handshake_timeout_bare_number",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = "
     "\"backend\"\nhandshake_timeout = "
     "\"10\"\n@CLUSTER@",
     "demo.toml:5:21: listeners[0].handshake_timeout: invalid duration \"10\": missing unit (ms, s, m or h)"},
    {"idle_timeout_zero",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\nidle_timeout = "
     "\"0s\"\n@CLUSTER@",
     "demo.toml:5:16: listeners[0].idle_timeout: must be greater than zero, got \"0s\""},
    {"idle_timeout_fraction",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\nidle_timeout = "
     "\"1.5s\"\n@CLUSTER@",
     "demo.toml:5:16: listeners[0].idle_timeout: invalid duration \"1.5s\": fractions are not allowed; use a "
     "smaller unit, e.g. \"1500ms\""},
    {"idle_timeout_negative",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\nidle_timeout = "
     "\"-5s\"\n@CLUSTER@",
     "demo.toml:5:16: listeners[0].idle_timeout: invalid duration \"-5s\": must not be negative"},
    {"idle_timeout_overflow",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\nidle_timeout = "
     "\"99999999999999999999999h\"\n@CLUSTER@",
     "demo.toml:5:16: listeners[0].idle_timeout: invalid duration \"99999999999999999999999h\": too large "
     "(at "
     "most 8760h)"},
    // max_concurrent_streams
    {"max_concurrent_streams_zero",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "max_concurrent_streams = 0\n@CLUSTER@",
     "demo.toml:5:26: listeners[0].max_concurrent_streams: expected an integer from 1 to 2147483647, got 0"},
    {"max_concurrent_streams_too_big",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "max_concurrent_streams = 2147483648\n@CLUSTER@",
     "demo.toml:5:26: listeners[0].max_concurrent_streams: expected an integer from 1 to 2147483647, got "
     "2147483648"},
    {"max_concurrent_streams_string",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "max_concurrent_streams = \"100\"\n@CLUSTER@",
     "demo.toml:5:26: listeners[0].max_concurrent_streams: expected an integer from 1 to 2147483647, got a "
     "string"},
    // max_connections (issue 16)
    {"listener_max_connections_zero",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "max_connections = 0\n@CLUSTER@",
     "demo.toml:5:19: listeners[0].max_connections: expected an integer from 1 to 2147483647, got 0"},
    {"listener_max_connections_string",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "max_connections = \"many\"\n@CLUSTER@",
     "demo.toml:5:19: listeners[0].max_connections: expected an integer from 1 to 2147483647, got a string"},
    // [limits] (issue 16)
    {"limits_not_table", "limits = 1\n@LISTENER@@CLUSTER@", "demo.toml:1:10: limits: expected a table, got an integer"},
    {"limits_unknown_key", "[limits]\nbodies = 1\n@LISTENER@@CLUSTER@", "demo.toml:2:1: limits.bodies: unknown key"},
    {"limits_body_buffer_too_small", "[limits]\nbody_buffer = 100\n@LISTENER@@CLUSTER@",
     "demo.toml:2:15: limits.body_buffer: expected an integer from 16384 to 1099511627776, got 100"},
    {"limits_chunk_pool_string", "[limits]\nchunk_pool = \"64MiB\"\n@LISTENER@@CLUSTER@",
     "demo.toml:2:14: limits.chunk_pool: expected an integer from 16384 to 1099511627776, got a string"},
    // [drain] (issue 18)
    {"drain_unknown_key", "[drain]\ngrace = \"5s\"\n@LISTENER@@CLUSTER@", "demo.toml:2:1: drain.grace: unknown key"},
    {"drain_timeout_zero", "[drain]\ntimeout = \"0s\"\n@LISTENER@@CLUSTER@",
     "demo.toml:2:11: drain.timeout: must be greater than zero, got \"0s\""},
    {"drain_delay_number", "[drain]\ndelay = 10\n@LISTENER@@CLUSTER@",
     "demo.toml:2:9: drain.delay: expected a duration string such as \"10s\", got an integer"},
    // [access_log] (issue 18)
    {"access_log_unknown_key", "[access_log]\npath = \"-\"\nrotate = true\n@LISTENER@@CLUSTER@",
     "demo.toml:3:1: access_log.rotate: unknown key"},
    {"access_log_path_missing", "[access_log]\nformat = \"json\"\n@LISTENER@@CLUSTER@",
     "demo.toml:1:1: access_log.path: required key is missing"},
    {"access_log_path_empty", "[access_log]\npath = \"\"\n@LISTENER@@CLUSTER@",
     "demo.toml:2:8: access_log.path: expected \"-\" (standard output) or a file path, got \"\""},
    {"access_log_path_number", "[access_log]\npath = 1\n@LISTENER@@CLUSTER@",
     "demo.toml:2:8: access_log.path: expected a string, got an integer"},
    {"access_log_path_control", "[access_log]\npath = \"a\\nb\"\n@LISTENER@@CLUSTER@",
     "demo.toml:2:8: access_log.path: a control character in the path"},
    {"access_log_format_unknown", "[access_log]\npath = \"-\"\nformat = \"clf\"\n@LISTENER@@CLUSTER@",
     "demo.toml:3:10: access_log.format: expected one of \"json\", \"text\", got \"clf\""},
    {"access_log_not_table", "access_log = \"-\"\n@LISTENER@@CLUSTER@",
     "demo.toml:1:14: access_log: expected a table, got a string"},
    // HTTP/2 abuse budgets (issue 16)
    {"h2_glitch_budget_zero",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "h2_glitch_budget = 0\n@CLUSTER@",
     "demo.toml:5:20: listeners[0].h2_glitch_budget: expected an integer from 1 to 1073741824, got 0"},
    {"h2_glitch_rate_negative",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "h2_glitch_rate = -1\n@CLUSTER@",
     "demo.toml:5:18: listeners[0].h2_glitch_rate: expected an integer from 0 to 1073741824, got -1"},
    {"h2_reset_budget_string",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "h2_reset_budget = \"100\"\n@CLUSTER@",
     "demo.toml:5:19: listeners[0].h2_reset_budget: expected an integer from 1 to 1073741824, got a string"},
    // Connection age and keepalive (issue 18)
    {"max_connection_age_zero",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "max_connection_age = \"0s\"\n@CLUSTER@",
     "demo.toml:5:22: listeners[0].max_connection_age: must be greater than zero, got \"0s\""},
    {"max_connection_age_negative",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "max_connection_age = \"-1m\"\n@CLUSTER@",
     "demo.toml:5:22: listeners[0].max_connection_age: invalid duration \"-1m\": must not be negative"},
    {"max_connection_age_under_a_second",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "max_connection_age = \"500ms\"\n@CLUSTER@",
     "demo.toml:5:22: listeners[0].max_connection_age: must be at least 1s, got \"500ms\""},
    {"max_connection_age_number",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "max_connection_age = 600\n@CLUSTER@",
     "demo.toml:5:22: listeners[0].max_connection_age: expected a duration string such as \"10s\", got an integer"},
    {"max_connection_age_grace_without_age",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "max_connection_age_grace = \"30s\"\n@CLUSTER@",
     "demo.toml:5:28: listeners[0].max_connection_age_grace: needs max_connection_age (the grace starts at its GOAWAY)"},
    {"max_connection_age_grace_zero",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "max_connection_age = \"10m\"\nmax_connection_age_grace = \"0s\"\n@CLUSTER@",
     "demo.toml:6:28: listeners[0].max_connection_age_grace: must be greater than zero, got \"0s\""},
    {"keepalive_interval_zero",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "keepalive_interval = \"0s\"\n@CLUSTER@",
     "demo.toml:5:22: listeners[0].keepalive_interval: must be greater than zero, got \"0s\""},
    {"keepalive_interval_under_a_second",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "keepalive_interval = \"100ms\"\n@CLUSTER@",
     "demo.toml:5:22: listeners[0].keepalive_interval: must be at least 1s, got \"100ms\""},
    {"keepalive_timeout_negative",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "keepalive_timeout = \"-20s\"\n@CLUSTER@",
     "demo.toml:5:21: listeners[0].keepalive_timeout: invalid duration \"-20s\": must not be negative"},
    {"keepalive_timeout_under_a_second",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "keepalive_interval = \"60s\"\nkeepalive_timeout = \"999ms\"\n@CLUSTER@",
     "demo.toml:6:21: listeners[0].keepalive_timeout: must be at least 1s, got \"999ms\""},
    // [listeners.tls]
    {"tls_missing",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n@CLUSTER@",
     "demo.toml:1:1: listeners[0].tls: required key is missing"},
    {"tls_not_table",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\ntls = "
     "\"on\"\n@CLUSTER@",
     "demo.toml:5:7: listeners[0].tls: expected a table, got a string"},
    {"certificate_missing",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n  "
     "[listeners.tls]\n"
     "  private_key = \"@KEY@\"\n@CLUSTER@",
     "demo.toml:5:3: listeners[0].tls.certificate: required key is missing"},
    {"private_key_type",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n"
     "certificate = \"@CRT@\"\nprivate_key = 5\n@CLUSTER@",
     "demo.toml:7:15: listeners[0].tls.private_key: expected a string, got an integer"},
    {"certificate_unreadable",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n"
     "certificate = \"@DIR@/missing.crt\"\nprivate_key = \"@KEY@\"\n@CLUSTER@",
     "demo.toml:6:15: listeners[0].tls.certificate: cannot read '@DIR@/missing.crt': No such file or "
     "directory"},
    {"certificate_is_directory",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n"
     "certificate = \"@DIR@\"\nprivate_key = \"@KEY@\"\n@CLUSTER@",
     "demo.toml:6:15: listeners[0].tls.certificate: cannot read '@DIR@': Is a directory"},
    {"certificate_not_regular",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n"
     "certificate = \"/dev/null\"\nprivate_key = \"@KEY@\"\n@CLUSTER@",
     "demo.toml:6:15: listeners[0].tls.certificate: '/dev/null' is not a regular file"},
    {"private_key_empty",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n"
     "certificate = \"@CRT@\"\nprivate_key = \"\"\n@CLUSTER@",
     "demo.toml:7:15: listeners[0].tls.private_key: must not be empty"},
    {"private_key_nul",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n"
     "certificate = \"@CRT@\"\nprivate_key = \"@KEY@\\u0000.bak\"\n@CLUSTER@",
     "demo.toml:7:15: listeners[0].tls.private_key: contains a NUL character"},
    // A list of certificates (issue 19).
    {"certificates_beside_a_pair",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n"
     "certificate = \"@CRT@\"\nprivate_key = \"@KEY@\"\n[[listeners.tls.certificates]]\ncertificate = \"@CRT@\"\n"
     "private_key = \"@KEY@\"\n@CLUSTER@",
     "demo.toml:6:15: listeners[0].tls.certificate: not allowed beside \"certificates\"; move it into the list's first entry"},
    {"certificates_empty", "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n" "certificates = []\n@CLUSTER@", "demo.toml:6:16: listeners[0].tls.certificates: at least one certificate is required"},
    {"certificates_not_tables", "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n" "certificates = [\"@CRT@\"]\n@CLUSTER@", "demo.toml:6:17: listeners[0].tls.certificates[0]: expected a table, got a string"},
    {"certificates_string", "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n" "certificates = \"@CRT@\"\n@CLUSTER@", "demo.toml:6:16: listeners[0].tls.certificates: expected an array of tables, got a string"},
    {"certificates_entry_unknown_key",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n" "[[listeners.tls.certificates]]\ncertificate = \"@CRT@\"\nprivate_key = \"@KEY@\"\nname = \"api\"\n"
     "@CLUSTER@",
     "demo.toml:9:1: listeners[0].tls.certificates[0].name: unknown key"},
    {"certificates_entry_without_key",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n" "[[listeners.tls.certificates]]\ncertificate = \"@CRT@\"\nprivate_key = \"@KEY@\"\n"
     "[[listeners.tls.certificates]]\ncertificate = \"@CRT@\"\n@CLUSTER@",
     "demo.toml:9:1: listeners[0].tls.certificates[1].private_key: required key is missing"},
    {"certificates_entry_unreadable",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n" "[[listeners.tls.certificates]]\ncertificate = \"@CRT@\"\nprivate_key = \"@DIR@/gone.key\"\n@CLUSTER@",
     "demo.toml:8:15: listeners[0].tls.certificates[0].private_key: cannot read '@DIR@/gone.key': No such file or directory"},
    {"ticket_keys_missing", "@LISTENER@  ticket_keys = \"@DIR@/gone.keys\"\n@CLUSTER@", "demo.toml:8:17: listeners[0].tls.ticket_keys: cannot read '@DIR@/gone.keys': No such file or directory"},
    {"ticket_keys_empty_path", "@LISTENER@  ticket_keys = \"\"\n@CLUSTER@", "demo.toml:8:17: listeners[0].tls.ticket_keys: must not be empty"},
    // ocsp_response: only readability here; what the file holds is checked
    // when the certificates load (tests/unit/tls/ocsp_test.cc), as warnings.
    {"ocsp_response_type", "@LISTENER@  ocsp_response = 5\n@CLUSTER@",
     "demo.toml:8:19: listeners[0].tls.ocsp_response: expected a string, got an integer"},
    {"ocsp_response_empty", "@LISTENER@  ocsp_response = \"\"\n@CLUSTER@",
     "demo.toml:8:19: listeners[0].tls.ocsp_response: must not be empty"},
    {"ocsp_response_unreadable", "@LISTENER@  ocsp_response = \"@DIR@/missing.der\"\n@CLUSTER@",
     "demo.toml:8:19: listeners[0].tls.ocsp_response: cannot read '@DIR@/missing.der': No such file or directory"},
    {"ocsp_response_in_list_unreadable",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n"
     "[[listeners.tls.certificates]]\ncertificate = \"@CRT@\"\nprivate_key = \"@KEY@\"\n"
     "ocsp_response = \"@DIR@\"\n@CLUSTER@",
     "demo.toml:9:17: listeners[0].tls.certificates[0].ocsp_response: cannot read '@DIR@': Is a directory"},
    {"ocsp_response_beside_list",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n[listeners.tls]\n"
     "ocsp_response = \"@CRT@\"\n[[listeners.tls.certificates]]\ncertificate = \"@CRT@\"\nprivate_key = \"@KEY@\"\n"
     "@CLUSTER@",
     "demo.toml:6:17: listeners[0].tls.ocsp_response: not allowed beside \"certificates\"; move it into the list's "
     "first entry"},
    {"alpn_empty", "@LISTENER@  alpn = []\n@CLUSTER@",
     "demo.toml:8:10: listeners[0].tls.alpn: must contain \"h2\" (gRPC runs over HTTP/2)"},
    {"alpn_without_h2", "@LISTENER@  alpn = [\"http/1.1\"]\n@CLUSTER@",
     "demo.toml:8:10: listeners[0].tls.alpn: must contain \"h2\" (gRPC runs over HTTP/2)"},
    {"alpn_empty_string", "@LISTENER@  alpn = [\"h2\", \"\"]\n@CLUSTER@",
     "demo.toml:8:17: listeners[0].tls.alpn[1]: must not be empty"},
    {"alpn_not_string", "@LISTENER@  alpn = [\"h2\", 2]\n@CLUSTER@",
     "demo.toml:8:17: listeners[0].tls.alpn[1]: expected a string, got an integer"},
    {"alpn_duplicate", "@LISTENER@  alpn = [\"h2\", \"h2\"]\n@CLUSTER@",
     "demo.toml:8:17: listeners[0].tls.alpn[1]: duplicate protocol \"h2\""},
    {"alpn_not_array", "@LISTENER@  alpn = \"h2\"\n@CLUSTER@",
     "demo.toml:8:10: listeners[0].tls.alpn: expected an array, got a string"},
    {"min_version_float", "@LISTENER@  min_version = 1.3\n@CLUSTER@",
     "demo.toml:8:17: listeners[0].tls.min_version: expected one of \"1.2\", \"1.3\", got a float"},
    {"min_version_old", "@LISTENER@  min_version = \"1.1\"\n@CLUSTER@",
     "demo.toml:8:17: listeners[0].tls.min_version: expected one of \"1.2\", \"1.3\", got \"1.1\""},
    {"ktls_value", "@LISTENER@  ktls = \"yes\"\n@CLUSTER@",
     "demo.toml:8:10: listeners[0].tls.ktls: expected one of \"auto\", \"on\", \"off\", got \"yes\""},
    {"record_layer_value", "@LISTENER@  record_layer = \"kernel\"\n@CLUSTER@",
     "demo.toml:8:18: listeners[0].tls.record_layer: expected one of \"tlsgate\", \"openssl\", got \"kernel\""},
    {"session_tickets_range", "@LISTENER@  session_tickets = 9\n@CLUSTER@",
     "demo.toml:8:21: listeners[0].tls.session_tickets: expected an integer from 0 to 8, got 9"},
    {"session_tickets_type", "@LISTENER@  session_tickets = \"1\"\n@CLUSTER@",
     "demo.toml:8:21: listeners[0].tls.session_tickets: expected an integer from 0 to 8, got a string"},
    // mTLS from clients (issue 19).
    {"client_auth_without_client_ca", "@LISTENER@  client_auth = \"require\"\n@CLUSTER@",
     "demo.toml:8:17: listeners[0].tls.client_auth: needs client_ca (the CA file that signs the client "
     "certificates)"},
    {"client_auth_value", "@LISTENER@  client_ca = \"@CRT@\"\n  client_auth = \"request\"\n@CLUSTER@",
     "demo.toml:9:17: listeners[0].tls.client_auth: expected one of \"require\", \"optional\", got \"request\""},
    {"client_auth_type", "@LISTENER@  client_ca = \"@CRT@\"\n  client_auth = true\n@CLUSTER@",
     "demo.toml:9:17: listeners[0].tls.client_auth: expected one of \"require\", \"optional\", got a boolean"},
    {"client_ca_type", "@LISTENER@  client_ca = [\"@CRT@\"]\n@CLUSTER@",
     "demo.toml:8:15: listeners[0].tls.client_ca: expected a string, got an array"},
    {"client_ca_unreadable", "@LISTENER@  client_ca = \"@DIR@/clients.pem\"\n@CLUSTER@",
     "demo.toml:8:15: listeners[0].tls.client_ca: cannot read '@DIR@/clients.pem': No such file or directory"},
    {"client_ca_empty", "@LISTENER@  client_ca = \"\"\n@CLUSTER@",
     "demo.toml:8:15: listeners[0].tls.client_ca: must not be empty"},
    // ciphers / ciphersuites / groups: the shape only (OpenSSL judges the names in src/tls).
    {"ciphers_empty", "@LISTENER@  ciphers = \"\"\n@CLUSTER@",
     "demo.toml:8:13: listeners[0].tls.ciphers: must not be empty"},
    {"ciphers_type", "@LISTENER@  ciphers = 1\n@CLUSTER@",
     "demo.toml:8:13: listeners[0].tls.ciphers: expected a string or an array of strings, got an integer"},
    {"ciphers_control_character", "@LISTENER@  ciphers = \"HIGH\\nLOW\"\n@CLUSTER@",
     "demo.toml:8:13: listeners[0].tls.ciphers: contains a control character"},
    {"ciphersuites_empty_array", "@LISTENER@  ciphersuites = []\n@CLUSTER@",
     "demo.toml:8:18: listeners[0].tls.ciphersuites: must not be empty"},
    {"ciphersuites_two_in_one_entry",
     "@LISTENER@  ciphersuites = [\"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384\"]\n@CLUSTER@",
     "demo.toml:8:19: listeners[0].tls.ciphersuites[0]: one entry per string, got "
     "\"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384\""},
    {"groups_entry_not_string", "@LISTENER@  groups = [\"X25519\", 25519]\n@CLUSTER@",
     "demo.toml:8:23: listeners[0].tls.groups[1]: expected a string, got an integer"},
    {"groups_entry_empty", "@LISTENER@  groups = [\"X25519\", \"\"]\n@CLUSTER@",
     "demo.toml:8:23: listeners[0].tls.groups[1]: must not be empty"},
    {"upstream_tls_groups_type", "@LISTENER@@CLUSTER@[clusters.tls]\nca = \"@CRT@\"\ngroups = 7\n",
     "demo.toml:13:10: clusters[0].tls.groups: expected a string or an array of strings, got an integer"},
    {"upstream_tls_unknown_key", "@LISTENER@@CLUSTER@[clusters.tls]\nca = \"@CRT@\"\ncipher = \"HIGH\"\n",
     "demo.toml:13:1: clusters[0].tls.cipher: unknown key"},
    // [[clusters]]
    {"clusters_missing", "@LISTENER@", "demo.toml:1:1: clusters: required key is missing"},
    {"clusters_empty", "clusters = []\n@LISTENER@",
     "demo.toml:1:12: clusters: at least one cluster is required"},
    {"cluster_name_missing", "@LISTENER@[[clusters]]\nendpoints = [\"127.0.0.1:50051\"]\n",
     "demo.toml:8:1: clusters[0].name: required key is missing"},
    {"cluster_name_duplicate", "@LISTENER@@CLUSTER@[[clusters]]\nname = \"backend\"\n",
     "demo.toml:12:8: clusters[1].name: duplicate cluster name \"backend\" (also clusters[0].name)"},
    // respond (issue 20): a responder has no backend.
    {"respond_with_endpoints",
     "@LISTENER@[[clusters]]\nname = \"backend\"\nrespond = \"echo\"\nendpoints = [\"127.0.0.1:1\"]\n",
     "demo.toml:11:13: clusters[0].endpoints: not allowed with respond (the gateway answers; there is no backend)"},
    {"respond_with_health_check",
     "@LISTENER@[[clusters]]\nname = \"backend\"\nrespond = \"echo\"\n[clusters.health_check]\ninterval = \"1s\"\n",
     "demo.toml:11:1: clusters[0].health_check: not allowed with respond (the gateway answers; there is no backend)"},
    {"respond_with_retries", "@LISTENER@[[clusters]]\nname = \"backend\"\nrespond = \"echo\"\nretries = 1\n",
     "demo.toml:11:11: clusters[0].retries: not allowed with respond (the gateway answers; there is no backend)"},
    {"respond_unknown", "@LISTENER@[[clusters]]\nname = \"backend\"\nrespond = \"mirror\"\n",
     "demo.toml:10:11: clusters[0].respond: expected one of \"echo\", \"status\", got \"mirror\""},
    {"respond_status_range", "@LISTENER@[[clusters]]\nname = \"backend\"\nrespond = \"status\"\nstatus = 17\n",
     "demo.toml:11:10: clusters[0].status: expected an integer from 0 to 16, got 17"},
    {"respond_message_without_status",
     "@LISTENER@[[clusters]]\nname = \"backend\"\nrespond = \"status\"\nmessage = \"why\"\n",
     "demo.toml:11:11: clusters[0].message: needs a non-zero status (clients ignore grpc-message with status 0)"},
    {"respond_message_control",
     "@LISTENER@[[clusters]]\nname = \"backend\"\nrespond = \"status\"\nstatus = 2\nmessage = \"a\\nb\"\n",
     "demo.toml:12:11: clusters[0].message: contains a control character"},
    {"respond_response_bytes_too_large",
     "@LISTENER@[[clusters]]\nname = \"backend\"\nrespond = \"status\"\nresponse_bytes = 4194305\n",
     "demo.toml:11:18: clusters[0].response_bytes: expected an integer from 0 to 4194304, got 4194305"},
    {"respond_response_bytes_one",
     "@LISTENER@[[clusters]]\nname = \"backend\"\nrespond = \"status\"\nresponse_bytes = 1\n",
     "demo.toml:11:18: clusters[0].response_bytes: 0 or at least 2 (a protobuf field takes 2 bytes), got 1"},
    {"respond_status_with_echo", "@LISTENER@[[clusters]]\nname = \"backend\"\nrespond = \"echo\"\nstatus = 3\n",
     "demo.toml:11:10: clusters[0].status: needs respond = \"status\" (echo answers with the request's bytes)"},
    {"respond_delay_too_long", "@LISTENER@[[clusters]]\nname = \"backend\"\nrespond = \"echo\"\ndelay = \"61s\"\n",
     "demo.toml:11:9: clusters[0].delay: at most 1m, got \"61s\""},
    {"respond_delay_without_respond", "@LISTENER@@CLUSTER@delay = \"1s\"\n",
     "demo.toml:11:9: clusters[0].delay: needs respond (it delays the gateway's own answer)"},
    {"respond_keys_without_respond", "@LISTENER@@CLUSTER@response_bytes = 10\n",
     "demo.toml:11:18: clusters[0].response_bytes: needs respond = \"status\""},
    {"endpoints_missing", "@LISTENER@[[clusters]]\nname = \"backend\"\n",
     "demo.toml:8:1: clusters[0].endpoints: required key is missing"},
    {"endpoints_empty", "@LISTENER@[[clusters]]\nname = \"backend\"\nendpoints = []\n",
     "demo.toml:10:13: clusters[0].endpoints: at least one endpoint is required"},
    {"endpoints_not_array", "@LISTENER@[[clusters]]\nname = \"backend\"\nendpoints = \"127.0.0.1:1\"\n",
     "demo.toml:10:13: clusters[0].endpoints: expected an array, got a string"},
    {"endpoint_not_string", "@LISTENER@[[clusters]]\nname = \"backend\"\nendpoints = [\"127.0.0.1:1\", 2]\n",
     "demo.toml:10:29: clusters[0].endpoints[1]: expected a string, got an integer"},
    {"endpoint_no_port", "@LISTENER@[[clusters]]\nname = \"backend\"\nendpoints = [\"127.0.0.1\"]\n",
     "demo.toml:10:14: clusters[0].endpoints[0]: invalid address \"127.0.0.1\": missing port; expected "
     "host:port"},
    {"endpoint_port_zero", "@LISTENER@[[clusters]]\nname = \"backend\"\nendpoints = [\"127.0.0.1:0\"]\n",
     "demo.toml:10:14: clusters[0].endpoints[0]: an endpoint needs a port from 1 to 65535, got "
     "\"127.0.0.1:0\""},
    {"endpoint_unresolvable",
     "@LISTENER@[[clusters]]\nname = \"backend\"\nendpoints = [\"nowhere.invalid:80\"]\n",
     "demo.toml:10:14: clusters[0].endpoints[0]: cannot resolve \"nowhere.invalid\": Name or service not "
     "known"},
    {"endpoint_bad_host", "@LISTENER@[[clusters]]\nname = \"backend\"\nendpoints = [\"bad host:80\"]\n",
     "demo.toml:10:14: clusters[0].endpoints[0]: invalid address \"bad host:80\": \"bad host\" is not a "
     "valid host "
     "name"},
    {"endpoint_legacy_ipv4", "@LISTENER@[[clusters]]\nname = \"backend\"\nendpoints = [\"127.1:80\"]\n",
     "demo.toml:10:14: clusters[0].endpoints[0]: invalid address \"127.1:80\": \"127.1\" is not an IPv4 "
     "address "
     "(expected a.b.c.d)"},
    {"lb_value", "@LISTENER@@CLUSTER@lb = \"random\"\n",
     "demo.toml:11:6: clusters[0].lb: expected one of \"p2c\", \"round_robin\", got \"random\""},
    {"route_without_match", "@LISTENER@  [[listeners.routes]]\n  cluster = \"backend\"\n@CLUSTER@",
     "demo.toml:8:3: listeners[0].routes[0]: a route needs \"authority\", \"path_prefix\" or both"},
    {"route_unknown_cluster", "@LISTENER@  [[listeners.routes]]\n  path_prefix = \"/a.B/\"\n  cluster = \"nope\"\n@CLUSTER@",
     "demo.toml:10:13: listeners[0].routes[0].cluster: no cluster named \"nope\""},
    {"route_prefix_without_slash", "@LISTENER@  [[listeners.routes]]\n  path_prefix = \"a.B/\"\n  cluster = \"backend\"\n@CLUSTER@",
     "demo.toml:9:17: listeners[0].routes[0].path_prefix: must start with '/', got \"a.B/\""},
    {"route_bad_authority", "@LISTENER@  [[listeners.routes]]\n  authority = \"a b\"\n  cluster = \"backend\"\n@CLUSTER@",
     "demo.toml:9:15: listeners[0].routes[0].authority: expected a host or host:port, got \"a b\""},
    {"route_unknown_key", "@LISTENER@  [[listeners.routes]]\n  prefix = \"/\"\n  cluster = \"backend\"\n@CLUSTER@",
     "demo.toml:9:3: listeners[0].routes[0].prefix: unknown key"},
    {"duplicate_endpoint", "@LISTENER@[[clusters]]\nname = \"backend\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n",
     "demo.toml:10:29: clusters[0].endpoints[1]: duplicate endpoint \"127.0.0.1:1\""},
    {"retries_range", "@LISTENER@@CLUSTER@retries = 11\n",
     "demo.toml:11:11: clusters[0].retries: expected an integer from 0 to 10, got 11"},
    {"max_connections_zero", "@LISTENER@@CLUSTER@max_connections = 0\n",
     "demo.toml:11:19: clusters[0].max_connections: expected an integer from 1 to 1000000, got 0"},
    {"all_unhealthy_value", "@LISTENER@@CLUSTER@all_unhealthy = \"ignore\"\n",
     "demo.toml:11:17: clusters[0].all_unhealthy: expected one of \"fail\", \"panic\", got \"ignore\""},
    {"health_timeout_above_interval",
     "@LISTENER@@CLUSTER@[clusters.health_check]\ninterval = \"1s\"\ntimeout = \"2s\"\n",
     "demo.toml:13:11: clusters[0].health_check.timeout: must not be longer than interval"},
    {"health_threshold_zero", "@LISTENER@@CLUSTER@[clusters.health_check]\nhealthy_threshold = 0\n",
     "demo.toml:12:21: clusters[0].health_check.healthy_threshold: expected an integer from 1 to 100, got 0"},
    {"outlier_max_below_base",
     "@LISTENER@@CLUSTER@[clusters.outlier]\nbase_ejection = \"10s\"\nmax_ejection = \"1s\"\n",
     "demo.toml:13:16: clusters[0].outlier.max_ejection: must not be shorter than base_ejection"},
    {"outlier_max_ejection_percent_range", "@LISTENER@@CLUSTER@[clusters.outlier]\nmax_ejection_percent = 101\n",
     "demo.toml:12:24: clusters[0].outlier.max_ejection_percent: expected an integer from 0 to 100, got 101"},
    {"outlier_max_ejection_percent_type", "@LISTENER@@CLUSTER@[clusters.outlier]\nmax_ejection_percent = \"50%\"\n",
     "demo.toml:12:24: clusters[0].outlier.max_ejection_percent: expected an integer from 0 to 100, got a string"},
    {"upstream_tls_cert_without_key", "@LISTENER@@CLUSTER@[clusters.tls]\nca = \"@CRT@\"\ncertificate = \"@CRT@\"\n",
     "demo.toml:13:15: clusters[0].tls.certificate: needs private_key too (mTLS)"},
    {"upstream_tls_ca_missing", "@LISTENER@@CLUSTER@[clusters.tls]\nserver_name = \"a.test\"\n",
     "demo.toml:11:1: clusters[0].tls.ca: required key is missing"},
    {"upstream_tls_ca_unreadable", "@LISTENER@@CLUSTER@[clusters.tls]\nca = \"/nonexistent/ca.pem\"\n",
     "demo.toml:12:6: clusters[0].tls.ca: cannot read '/nonexistent/ca.pem': No such file or directory"},
    {"connect_timeout_zero", "@LISTENER@@CLUSTER@connect_timeout = \"0ms\"\n",
     "demo.toml:11:19: clusters[0].connect_timeout: must be greater than zero, got \"0ms\""},
    {"connect_timeout_unit", "@LISTENER@@CLUSTER@connect_timeout = \"2sec\"\n",
     "demo.toml:11:19: clusters[0].connect_timeout: invalid duration \"2sec\": unknown unit \"sec\" (use ms, "
     "s, m "
     "or h)"},
};

class ConfigErrorTest : public ConfigTest, public ::testing::WithParamInterface<ErrorCase> {};

TEST_P(ConfigErrorTest, ReportsOneLine) {
  const ErrorCase& c = GetParam();
  std::string got = error_of(c.text);
  EXPECT_EQ(got, expand(c.message));
  EXPECT_EQ(got.find('\n'), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Rows, ConfigErrorTest, ::testing::ValuesIn(kErrorCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST_F(ConfigTest, AlpnEntryTooLong) {
  std::string text = "@LISTENER@  alpn = [\"h2\", \"" + kLong + "\"]\n@CLUSTER@";
  EXPECT_EQ(error_of(text),
            "demo.toml:8:17: listeners[0].tls.alpn[1]: a protocol name is at most 255 bytes, got 256");
  std::string ok = "@LISTENER@  alpn = [\"h2\", \"" + kLong.substr(1) + "\"]\n@CLUSTER@";
  EXPECT_EQ(error_of(ok), "no error");
}

TEST_F(ConfigTest, LongValuesAreTruncatedInMessages) {
  std::string text = "[[listeners]]\nname = \"" + kLong + " \"\n@CLUSTER@";
  std::string got = error_of(text);
  EXPECT_NE(got.find("got \"" + std::string(64, 'x') + "...\""), std::string::npos) << got;
  EXPECT_LT(got.size(), 200u);
}

// ---------------------------------------------------------------------------
// Accepted documents.

struct ValidCase {
  const char* name;
  const char* text;
  std::function<void(const Config&)> check;
};

const ValidCase kValidCases[] = {
    // respond (issue 20): no endpoints; the message is sent percent-encoded.
    {"responders",
     "@LISTENER@@CLUSTER@[[clusters]]\nname = \"echo\"\nrespond = \"echo\"\n"
     "[[clusters]]\nname = \"fail\"\nrespond = \"status\"\nstatus = 13\nmessage = \"100% é\"\n"
     "[[clusters]]\nname = \"sized\"\nrespond = \"status\"\nresponse_bytes = 4194304\ndelay = \"5ms\"\n",
     [](const Config& c) {
       ASSERT_EQ(c.clusters.size(), 4u);
       EXPECT_EQ(c.clusters[0].respond, Respond::Off);
       EXPECT_EQ(c.clusters[1].respond, Respond::Echo);
       EXPECT_TRUE(c.clusters[1].endpoints.empty());
       EXPECT_EQ(c.clusters[2].respond, Respond::Status);
       EXPECT_EQ(c.clusters[2].respond_status, 13u);
       EXPECT_EQ(c.clusters[2].respond_message, "100% é");
       EXPECT_EQ(c.clusters[2].respond_message_wire, "100%25 %C3%A9");
       EXPECT_EQ(c.clusters[2].response_bytes, 0u);
       EXPECT_EQ(c.clusters[3].respond_status, 0u);
       EXPECT_EQ(c.clusters[3].response_bytes, 4u << 20);
       EXPECT_EQ(c.clusters[3].respond_delay, 5ms);
       EXPECT_EQ(c.clusters[1].respond_delay, 0ms);
     }},
    {"minimal_defaults", "@LISTENER@@CLUSTER@",
     [](const Config& c) {
       EXPECT_EQ(c.path, "demo.toml");
       EXPECT_EQ(c.workers, 1u);
       EXPECT_FALSE(c.workers_auto);
       EXPECT_FALSE(c.admin.enabled);
       EXPECT_FALSE(c.access_log.enabled) << "no access log unless asked for";
       ASSERT_EQ(c.listeners.size(), 1u);
       const Listener& l = c.listeners[0];
       EXPECT_EQ(l.name, "public");
       EXPECT_EQ(l.listen.text, "127.0.0.1:8443");
       EXPECT_EQ(l.listen.family(), AF_INET);
       EXPECT_EQ(l.listen.length, sizeof(sockaddr_in));
       EXPECT_EQ(l.listen.port(), 8443);
       EXPECT_EQ(l.proxy_protocol, ProxyProtocol::Off);
       EXPECT_EQ(l.cluster, "backend");
       EXPECT_EQ(l.handshake_timeout, 10s);
       EXPECT_EQ(l.idle_timeout, 300s);
       EXPECT_EQ(l.max_concurrent_streams, 1000u);
       EXPECT_EQ(l.max_connections, 10000u);
       EXPECT_EQ(c.limits.body_buffer, 128u << 20);
       EXPECT_EQ(c.limits.chunk_pool, 256u << 20);
       EXPECT_EQ(c.drain.delay, 0s);
       EXPECT_EQ(c.drain.timeout, 30s);
       EXPECT_EQ(l.h2_glitch_budget, 1000u);
       EXPECT_EQ(l.h2_glitch_rate, 100u);
       EXPECT_EQ(l.h2_reset_budget, 100u);
       EXPECT_EQ(l.max_connection_age, 0ms);
       EXPECT_EQ(l.max_connection_age_grace, 0ms);
       EXPECT_EQ(l.keepalive_interval, 0ms);
       EXPECT_EQ(l.keepalive_timeout, 20s);
       EXPECT_EQ(l.tls.alpn, (std::vector<std::string>{"h2", "http/1.1"}));
       EXPECT_EQ(l.tls.min_version, TlsVersion::Tls12);
       EXPECT_EQ(l.tls.ktls, Ktls::Auto);
       EXPECT_EQ(l.tls.record_layer, RecordLayer::Tlsgate);
       EXPECT_EQ(l.tls.session_tickets, 1u);
       EXPECT_EQ(l.tls.client_ca, "");
       EXPECT_EQ(l.tls.client_auth, ClientAuth::Off);
       // Mozilla "intermediate": TLS 1.2 ECDHE + AEAD only (no CBC), written
       // out here so that a changed default shows up as a failing test.
       EXPECT_EQ(l.tls.cipher_policy.ciphers,
                 "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                 "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305");
       EXPECT_EQ(l.tls.cipher_policy.ciphersuites,
                 "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
       EXPECT_EQ(l.tls.cipher_policy.groups, "X25519:prime256v1:secp384r1");
       // A default is reported at its table.
       EXPECT_EQ(l.tls.cipher_policy.ciphers_origin.to_string(), "demo.toml:5:3: listeners[0].tls.ciphers");
       EXPECT_EQ(l.tls.cipher_policy.ciphersuites_origin.to_string(),
                 "demo.toml:5:3: listeners[0].tls.ciphersuites");
       EXPECT_EQ(l.tls.cipher_policy.groups_origin.to_string(), "demo.toml:5:3: listeners[0].tls.groups");
       ASSERT_EQ(c.clusters.size(), 1u);
       EXPECT_EQ(c.clusters[0].name, "backend");
       EXPECT_EQ(c.clusters[0].lb, LbPolicy::P2c);
       EXPECT_EQ(c.clusters[0].connect_timeout, 2s);
       const Cluster& k = c.clusters[0];
       EXPECT_EQ(k.dns_refresh, 5s);
       EXPECT_EQ(k.max_connections, 1024u);
       EXPECT_EQ(k.max_pending_streams, 4096u);
       EXPECT_EQ(k.max_grpc_timeout, 0ms);
       EXPECT_EQ(k.retries, 2u);
       EXPECT_EQ(k.retry_buffer, 65536u);
       EXPECT_EQ(k.keepalive_interval, 30s);
       EXPECT_EQ(k.keepalive_timeout, 10s);
       EXPECT_EQ(k.idle_timeout, 300s);
       EXPECT_EQ(k.all_unhealthy, AllUnhealthy::Fail);
       EXPECT_FALSE(k.health_check.enabled);
       EXPECT_EQ(k.outlier.consecutive_failures, 5u);
       EXPECT_EQ(k.outlier.base_ejection, 10s);
       EXPECT_EQ(k.outlier.max_ejection, 300s);
       EXPECT_EQ(k.outlier.max_ejection_percent, 50u);
       EXPECT_FALSE(k.tls.enabled);
       EXPECT_TRUE(k.dns_names.empty());
       EXPECT_EQ(k.endpoint_name, std::vector<int>{-1});
       EXPECT_TRUE(c.listeners[0].routes.empty());
       ASSERT_EQ(c.clusters[0].endpoints.size(), 1u);
       EXPECT_EQ(c.clusters[0].endpoints[0].port(), 50051);
       EXPECT_EQ(c.find_cluster("backend"), &c.clusters[0]);
       EXPECT_EQ(c.find_cluster("other"), nullptr);
     }},
    {"every_key_set",
     R"(workers = 4
[admin]
listen = "127.0.0.1:9901"
[[listeners]]
name = "edge.v2-a_1"
listen = "[::1]:8443"
proxy_protocol = "v2"
cluster = "grpc"
handshake_timeout = "250ms"
idle_timeout = "5m"
max_concurrent_streams = 2147483647
  [listeners.tls]
  certificate = "@CRT@"
  private_key = "@KEY@"
  alpn = ["h2"]
  min_version = "1.3"
  ktls = "on"
  session_tickets = 0
  ciphers = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-SHA"
  ciphersuites = ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
  groups = "secp384r1"
  [[listeners.routes]]
  authority = "API.example.com"
  path_prefix = "/pkg.Svc/"
  cluster = "other"
  [[listeners.routes]]
  path_prefix = "/pkg.Other/"
  cluster = "grpc"
[[clusters]]
name = "grpc"
endpoints = ["127.0.0.1:50051", "[::1]:50052", "backend.test:50053", "v6.test:50054"]
lb = "round_robin"
connect_timeout = "1h"
dns_refresh = "30s"
max_connections = 7
max_pending_streams = 9
max_grpc_timeout = "20s"
retries = 0
retry_buffer = 0
keepalive_interval = "1m"
keepalive_timeout = "3s"
idle_timeout = "2m"
all_unhealthy = "panic"
  [clusters.health_check]
  interval = "2s"
  timeout = "500ms"
  service = "pkg.Svc"
  healthy_threshold = 1
  unhealthy_threshold = 3
  [clusters.outlier]
  consecutive_failures = 0
  base_ejection = "1s"
  max_ejection = "8s"
  max_ejection_percent = 100
  [clusters.tls]
  ca = "@CRT@"
  server_name = "backend.internal"
  certificate = "@CRT@"
  private_key = "@KEY@"
  ciphers = ["ECDHE-RSA-AES256-GCM-SHA384"]
  ciphersuites = "TLS_AES_256_GCM_SHA384"
  groups = ["X25519", "secp521r1"]
[[clusters]]
name = "other"
endpoints = ["127.0.0.1:1"]
)",
     [](const Config& c) {
       EXPECT_EQ(c.workers, 4u);
       EXPECT_TRUE(c.admin.enabled);
       EXPECT_EQ(c.admin.listen.port(), 9901);
       EXPECT_EQ(c.admin.listen_origin.to_string(), "demo.toml:3:10: admin.listen");
       const Listener& l = c.listeners.at(0);
       EXPECT_EQ(l.name, "edge.v2-a_1");
       EXPECT_EQ(l.listen.family(), AF_INET6);
       EXPECT_EQ(l.listen.length, sizeof(sockaddr_in6));
       EXPECT_EQ(ip_of(l.listen), "::1");
       EXPECT_EQ(l.listen.port(), 8443);
       EXPECT_EQ(l.listen_origin.to_string(), "demo.toml:6:10: listeners[0].listen");
       EXPECT_EQ(l.proxy_protocol, ProxyProtocol::V2);
       EXPECT_EQ(l.handshake_timeout, 250ms);
       EXPECT_EQ(l.idle_timeout, 5min);
       EXPECT_EQ(l.max_concurrent_streams, 2147483647u);
       EXPECT_EQ(l.tls.alpn, std::vector<std::string>{"h2"});
       EXPECT_EQ(l.tls.min_version, TlsVersion::Tls13);
       EXPECT_EQ(l.tls.ktls, Ktls::On);
       EXPECT_EQ(l.tls.session_tickets, 0u);
       EXPECT_EQ(l.tls.ktls_origin.to_string(), "demo.toml:17:10: listeners[0].tls.ktls");
       EXPECT_EQ(l.tls.certificates.at(0).certificate_origin.file, "demo.toml");
       EXPECT_EQ(l.tls.certificates.at(0).certificate_origin.key, "listeners[0].tls.certificate");
       EXPECT_EQ(l.tls.certificates.at(0).certificate_origin.line, 13u);
       EXPECT_EQ(l.tls.certificates.at(0).certificate_origin.column, 17u);
       EXPECT_EQ(l.tls.certificates.at(0).private_key_origin.to_string(), "demo.toml:14:17: listeners[0].tls.private_key");
       EXPECT_EQ(l.tls.cipher_policy.ciphers, "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-SHA");
       EXPECT_EQ(l.tls.cipher_policy.ciphers_origin.to_string(), "demo.toml:19:13: listeners[0].tls.ciphers");
       // The array form is joined with ':'.
       EXPECT_EQ(l.tls.cipher_policy.ciphersuites, "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
       EXPECT_EQ(l.tls.cipher_policy.ciphersuites_origin.to_string(),
                 "demo.toml:20:18: listeners[0].tls.ciphersuites");
       EXPECT_EQ(l.tls.cipher_policy.groups, "secp384r1");
       EXPECT_EQ(l.tls.cipher_policy.groups_origin.to_string(), "demo.toml:21:12: listeners[0].tls.groups");
       ASSERT_EQ(l.routes.size(), 2u);
       EXPECT_EQ(l.routes[0].authority, "api.example.com");
       EXPECT_EQ(l.routes[0].path_prefix, "/pkg.Svc/");
       EXPECT_EQ(l.routes[0].cluster_index, 1u);
       EXPECT_EQ(l.routes[1].authority, "");
       EXPECT_EQ(l.routes[1].cluster_index, 0u);
       EXPECT_EQ(l.cluster_index, 0u);
       const Cluster& k = c.clusters.at(0);
       EXPECT_EQ(k.lb, LbPolicy::RoundRobin);
       EXPECT_EQ(k.connect_timeout, 1h);
       EXPECT_EQ(k.dns_refresh, 30s);
       EXPECT_EQ(k.max_connections, 7u);
       EXPECT_EQ(k.max_pending_streams, 9u);
       EXPECT_EQ(k.max_grpc_timeout, 20s);
       EXPECT_EQ(k.retries, 0u);
       EXPECT_EQ(k.retry_buffer, 0u);
       EXPECT_EQ(k.keepalive_interval, 1min);
       EXPECT_EQ(k.keepalive_timeout, 3s);
       EXPECT_EQ(k.idle_timeout, 2min);
       EXPECT_EQ(k.all_unhealthy, AllUnhealthy::Panic);
       EXPECT_TRUE(k.health_check.enabled);
       EXPECT_EQ(k.health_check.interval, 2s);
       EXPECT_EQ(k.health_check.timeout, 500ms);
       EXPECT_EQ(k.health_check.service, "pkg.Svc");
       EXPECT_EQ(k.health_check.healthy_threshold, 1u);
       EXPECT_EQ(k.health_check.unhealthy_threshold, 3u);
       EXPECT_EQ(k.outlier.consecutive_failures, 0u);
       EXPECT_EQ(k.outlier.base_ejection, 1s);
       EXPECT_EQ(k.outlier.max_ejection, 8s);
       EXPECT_EQ(k.outlier.max_ejection_percent, 100u);
       EXPECT_TRUE(k.tls.enabled);
       EXPECT_EQ(k.tls.server_name, "backend.internal");
       EXPECT_FALSE(k.tls.certificate.empty());
       EXPECT_EQ(k.tls.cipher_policy.ciphers, "ECDHE-RSA-AES256-GCM-SHA384");
       EXPECT_EQ(k.tls.cipher_policy.ciphersuites, "TLS_AES_256_GCM_SHA384");
       EXPECT_EQ(k.tls.cipher_policy.groups, "X25519:secp521r1");
       EXPECT_EQ(k.tls.cipher_policy.groups_origin.key, "clusters[0].tls.groups");
       EXPECT_EQ(k.endpoint_name, (std::vector<int>{-1, -1, 0, 1}));
       ASSERT_EQ(k.dns_names.size(), 2u);
       EXPECT_EQ(k.dns_names[0].host, "backend.test");
       EXPECT_EQ(k.dns_names[0].port, 50053);
       EXPECT_EQ(k.dns_names[1].text, "v6.test:50054");
       ASSERT_EQ(k.endpoints.size(), 4u);
       EXPECT_EQ(ip_of(k.endpoints[0]), "127.0.0.1");
       EXPECT_EQ(ip_of(k.endpoints[1]), "::1");
       EXPECT_EQ(k.endpoints[2].text, "backend.test:50053");
       EXPECT_EQ(ip_of(k.endpoints[2]), "192.0.2.10");
       EXPECT_EQ(k.endpoints[2].port(), 50053);
       EXPECT_EQ(ip_of(k.endpoints[3]), "2001:db8::1");
       EXPECT_EQ(k.endpoints[3].port(), 50054);
     }},
    {"workers_auto", "workers = \"auto\"\n@LISTENER@@CLUSTER@",
     [](const Config& c) {
       EXPECT_TRUE(c.workers_auto);
       EXPECT_GE(c.workers, 1u);
       EXPECT_LE(c.workers, 256u);
       unsigned hw = std::thread::hardware_concurrency();
       if (hw > 0 && hw <= 256) {
         EXPECT_EQ(c.workers, hw);
       }
     }},
    {"h2_budgets",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "h2_glitch_budget = 50\nh2_glitch_rate = 0\nh2_reset_budget = 7\n"
     "  [listeners.tls]\n  certificate = \"@CRT@\"\n  private_key = \"@KEY@\"\n@CLUSTER@",
     [](const Config& c) {
       const Listener& l = c.listeners.at(0);
       EXPECT_EQ(l.h2_glitch_budget, 50u);
       EXPECT_EQ(l.h2_glitch_rate, 0u);
       EXPECT_EQ(l.h2_reset_budget, 7u);
     }},
    {"rebalancing",
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
     "max_connection_age = \"30m\"\nmax_connection_age_grace = \"5m\"\nkeepalive_interval = \"1s\"\n"
     "keepalive_timeout = \"1s\"\n"
     "  [listeners.tls]\n  certificate = \"@CRT@\"\n  private_key = \"@KEY@\"\n@CLUSTER@",
     [](const Config& c) {
       const Listener& l = c.listeners.at(0);
       EXPECT_EQ(l.max_connection_age, 30min);
       EXPECT_EQ(l.max_connection_age_grace, 5min);
       EXPECT_EQ(l.keepalive_interval, 1s);
       EXPECT_EQ(l.keepalive_timeout, 1s);
     }},
    {"workers_bounds", "workers = 256\n@LISTENER@@CLUSTER@",
     [](const Config& c) { EXPECT_EQ(c.workers, 256u); }},
    {"upstream_tls_cipher_policy_defaults", "@LISTENER@@CLUSTER@[clusters.tls]\nca = \"@CRT@\"\n",
     [](const Config& c) {
       const CipherPolicy& p = c.clusters.at(0).tls.cipher_policy;
       EXPECT_EQ(p.ciphers, default_tls12_ciphers);
       EXPECT_EQ(p.ciphersuites, default_tls13_ciphersuites);
       EXPECT_EQ(p.groups, default_groups);
       EXPECT_EQ(p.ciphers_origin.to_string(), "demo.toml:11:1: clusters[0].tls.ciphers");
       EXPECT_EQ(p.groups_origin.to_string(), "demo.toml:11:1: clusters[0].tls.groups");
     }},
    {"cipher_list_string_passed_as_written",
     "@LISTENER@  ciphers = \"HIGH:!aNULL, +AES128 @STRENGTH\"\n@CLUSTER@",
     [](const Config& c) {
       EXPECT_EQ(c.listeners[0].tls.cipher_policy.ciphers, "HIGH:!aNULL, +AES128 @STRENGTH");
     }},
    {"record_layer_openssl", "@LISTENER@  record_layer = \"openssl\"\n@CLUSTER@",
     [](const Config& c) { EXPECT_EQ(c.listeners[0].tls.record_layer, RecordLayer::Openssl); }},
    {"ktls_origin_defaults_to_tls_table", "@LISTENER@@CLUSTER@",
     [](const Config& c) {
       EXPECT_EQ(c.listeners[0].tls.ktls_origin.to_string(), "demo.toml:5:3: listeners[0].tls.ktls");
     }},
    {"port_zero_may_repeat",
     "@LISTENER@[[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\ncluster = \"backend\"\n"
     "tls = { certificate = \"@CRT@\", private_key = \"@KEY@\" }\n"
     "[[listeners]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\ncluster = \"backend\"\n"
     "tls = { certificate = \"@CRT@\", private_key = \"@KEY@\" }\n[admin]\nlisten = "
     "\"127.0.0.1:0\"\n@CLUSTER@",
     [](const Config& c) {
       ASSERT_EQ(c.listeners.size(), 3u);
       EXPECT_EQ(c.listeners[1].listen.port(), 0);
       EXPECT_EQ(c.listeners[2].listen.port(), 0);
       EXPECT_TRUE(c.admin.enabled);
     }},
    {"same_port_other_address",
     "@LISTENER@[[listeners]]\nname = \"v6\"\nlisten = \"[::1]:8443\"\ncluster = \"backend\"\n"
     "tls = { certificate = \"@CRT@\", private_key = \"@KEY@\" }\n@CLUSTER@",
     [](const Config& c) { EXPECT_EQ(c.listeners.size(), 2u); }},
    {"inline_tables_and_dotted_keys",
     "listeners = [{ name = \"x\", listen = \"0.0.0.0:1\", cluster = \"c\", tls.certificate = \"@CRT@\", "
     "tls.private_key = \"@KEY@\" }]\nclusters = [{ name = \"c\", endpoints = [\"10.0.0.1:2\"] }]\n",
     [](const Config& c) {
       EXPECT_EQ(c.listeners.at(0).name, "x");
       EXPECT_EQ(c.listeners[0].tls.certificates.at(0).certificate_origin.line, 1u);
       EXPECT_EQ(c.clusters.at(0).endpoints.at(0).text, "10.0.0.1:2");
     }},
    {"several_clusters_in_any_order",
     "[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n"
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"b\"\n"
     "tls = { certificate = \"@CRT@\", private_key = \"@KEY@\" }\n"
     "[[clusters]]\nname = \"b\"\nendpoints = [\"127.0.0.1:2\"]\n",
     [](const Config& c) {
       ASSERT_EQ(c.clusters.size(), 2u);
       EXPECT_EQ(c.find_cluster(c.listeners[0].cluster), &c.clusters[1]);
     }},
    {"comments_and_whitespace", "# tlsgate\n\n  workers = 3   # three\n\n@LISTENER@\n# end\n@CLUSTER@",
     [](const Config& c) { EXPECT_EQ(c.workers, 3u); }},
    {"limits_and_max_connections",
     "[limits]\nbody_buffer = 1048576\nchunk_pool = 16384\n"
     "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\nmax_connections = 5\n"
     "tls = { certificate = \"@CRT@\", private_key = \"@KEY@\" }\n@CLUSTER@",
     [](const Config& c) {
       EXPECT_EQ(c.limits.body_buffer, 1048576u);
       EXPECT_EQ(c.limits.chunk_pool, 16384u);
       EXPECT_EQ(c.listeners[0].max_connections, 5u);
     }},
    {"access_log_text", "[access_log]\npath = \"/var/log/tlsgate/access.log\"\nformat = \"text\"\n@LISTENER@@CLUSTER@",
     [](const Config& c) {
       EXPECT_TRUE(c.access_log.enabled);
       EXPECT_EQ(c.access_log.path, "/var/log/tlsgate/access.log");
       EXPECT_EQ(c.access_log.format, AccessLogFormat::Text);
     }},
    {"access_log_stdout_json_by_default", "[access_log]\npath = \"-\"\n@LISTENER@@CLUSTER@",
     [](const Config& c) {
       EXPECT_TRUE(c.access_log.enabled);
       EXPECT_EQ(c.access_log.path, "-");
       EXPECT_EQ(c.access_log.format, AccessLogFormat::Json);
     }},
    {"drain", "[drain]\ndelay = \"0s\"\ntimeout = \"45s\"\n@LISTENER@@CLUSTER@",
     [](const Config& c) {
       EXPECT_EQ(c.drain.delay, 0s);
       EXPECT_EQ(c.drain.timeout, 45s);
     }},
};

class ConfigValidTest : public ConfigTest, public ::testing::WithParamInterface<ValidCase> {};

TEST_P(ConfigValidTest, Parses) {
  const ValidCase& c = GetParam();
  Config cfg;
  try {
    cfg = parse(expand(c.text), "demo.toml");
  } catch (const ConfigError& e) {
    FAIL() << e.what();
  }
  c.check(cfg);
}

INSTANTIATE_TEST_SUITE_P(Rows, ConfigValidTest, ::testing::ValuesIn(kValidCases),
                         [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------
// load_file and the shipped examples.

TEST_F(ConfigTest, LoadFileReadsAndNamesThePath) {
  std::string path = dir_ + "/tlsgate.toml";
  write_file(path, expand("@LISTENER@@CLUSTER@"));
  Config c = load_file(path);
  EXPECT_EQ(c.path, path);
  EXPECT_EQ(c.listeners.at(0).listen_origin.to_string(), path + ":3:10: listeners[0].listen");

  write_file(path, "workers = 0\n");
  try {
    load_file(path);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              path + ":1:11: workers: expected \"auto\" or an integer from 1 to 256, got 0");
  }
}

TEST_F(ConfigTest, LoadFileCannotRead) {
  struct Row {
    std::string path;
    std::string message;
  };
  const Row rows[] = {
      {dir_ + "/missing.toml", dir_ + "/missing.toml: cannot read: No such file or directory"},
      {dir_, dir_ + ": cannot read: Is a directory"},
      {dir_ + "/server.crt/x.toml", dir_ + "/server.crt/x.toml: cannot read: Not a directory"},
  };
  for (const Row& r : rows) {
    try {
      load_file(r.path);
      ADD_FAILURE() << r.path << ": no error";
    } catch (const ConfigError& e) {
      EXPECT_EQ(std::string(e.what()), r.message);
    }
  }
}

TEST_F(ConfigTest, LoadFileUnreadablePermissions) {
  std::string path = dir_ + "/secret.toml";
  write_file(path, "workers = 1\n");
  ASSERT_EQ(chmod(path.c_str(), 0), 0);
  // Root bypasses file permissions, so load as an unprivileged user in a child.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(3);
    try {
      load_file(path);
      _exit(1);
    } catch (const ConfigError& e) {
      _exit(std::string(e.what()) == path + ": cannot read: Permission denied" ? 0 : 2);
    }
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: no error, 2: wrong message, 3: could not drop privileges";
}

// conf/*.toml must stay valid: parse them with the certificate paths pointed
// at the temp files (conf/certs/ is generated, not committed).
TEST_F(ConfigTest, ShippedExamplesParse) {
  for (const char* name : {"tlsgate.toml", "demo.toml", "target.toml"}) {
    SCOPED_TRACE(name);
    std::string text = read_file(std::string(TLSGATE_SOURCE_ROOT) + "/conf/" + name);
    ASSERT_FALSE(text.empty());
    ASSERT_NE(text.find("conf/certs/server.crt"), std::string::npos);
    text = replace_all(text, "conf/certs/server.crt", dir_ + "/server.crt");
    text = replace_all(text, "conf/certs/server.key", dir_ + "/server.key");
    // Upstream TLS files: only their readability is checked here.
    text = replace_all(text, "conf/certs/ca.crt", dir_ + "/server.crt");
    text = replace_all(text, "conf/certs/client.crt", dir_ + "/server.crt");
    text = replace_all(text, "conf/certs/client.key", dir_ + "/server.key");
    try {
      Config c = parse(text, name);
      EXPECT_FALSE(c.listeners.empty());
      EXPECT_FALSE(c.clusters.empty());
      EXPECT_NE(c.find_cluster(c.listeners[0].cluster), nullptr);
    } catch (const ConfigError& e) {
      ADD_FAILURE() << e.what();
    }
  }
}

// ---------------------------------------------------------------------------
// ticket_keys files (issue 19)

// 80 bytes whose first 16 (the key's name) are all `tag`, as base64.
std::string key_line(uint8_t tag) {
  static const char* digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string raw(80, '\0');
  for (size_t i = 0; i < raw.size(); ++i) raw[i] = static_cast<char>(i < 16 ? tag : i * 7 + tag);
  std::string out;
  for (size_t i = 0; i < raw.size(); i += 3) {
    const size_t n = std::min<size_t>(3, raw.size() - i);
    uint32_t v = 0;
    for (size_t j = 0; j < 3; ++j) v = v << 8 | (j < n ? static_cast<uint8_t>(raw[i + j]) : 0);
    for (size_t j = 0; j < 4; ++j) out += j <= n ? digits[(v >> (18 - 6 * j)) & 63] : '=';
  }
  return out;
}

class TicketKeyFile : public ConfigTest {
 protected:
  // The error (or "no error") of a listener whose ticket_keys file holds `text` with `mode`.
  std::string with_file(const std::string& text, mode_t mode = 0600) {
    write_file(dir_ + "/t.keys", text);
    ::chmod((dir_ + "/t.keys").c_str(), mode);
    return error_of("@LISTENER@  ticket_keys = \"@DIR@/t.keys\"\n@CLUSTER@");
  }
  std::string prefix() const { return "demo.toml:8:17: listeners[0].tls.ticket_keys: " + dir_ + "/t.keys:"; }
};

TEST_F(TicketKeyFile, KeysInFileOrderWithCommentsBlankLinesAndCrlf) {
  write_file(dir_ + "/t.keys", "# rotated 2026-12-07\n" + key_line(2) + "\r\n\n  " + key_line(1) + "  \n");
  ::chmod((dir_ + "/t.keys").c_str(), 0640);
  Config c = parse(expand("@LISTENER@  ticket_keys = \"@DIR@/t.keys\"\n@CLUSTER@"), "demo.toml");
  const TlsSettings& tls = c.listeners.at(0).tls;
  EXPECT_EQ(tls.ticket_keys, dir_ + "/t.keys");
  ASSERT_EQ(tls.ticket_key_set.size(), 2u);
  EXPECT_EQ(tls.ticket_key_set[0].name[0], 2);
  EXPECT_EQ(tls.ticket_key_set[1].name[15], 1);
  EXPECT_EQ(tls.ticket_key_set[0].hmac[0], static_cast<uint8_t>(16 * 7 + 2));
  EXPECT_EQ(tls.ticket_key_set[0].aes[31], static_cast<uint8_t>(79 * 7 + 2));
  // The dump names the file, never a key.
  const std::string dumped = to_toml(c);
  EXPECT_NE(dumped.find("ticket_keys = \"" + dir_ + "/t.keys\""), std::string::npos);
  EXPECT_EQ(dumped.find(key_line(2).substr(0, 20)), std::string::npos);
}

TEST_F(TicketKeyFile, BadFilesAreErrorsWithTheFileAndLine) {
  EXPECT_EQ(with_file(key_line(1) + "\n" + key_line(2), 0644),
            "demo.toml:8:17: listeners[0].tls.ticket_keys: '" + dir_ +
                "/t.keys' is readable by others (mode 0644): whoever reads it can decrypt resumed sessions; "
                "chmod 600 (or 640)");
  std::string bad = key_line(2);
  bad[4] = '!';
  EXPECT_EQ(with_file(key_line(1) + "\n" + bad + "\n"), prefix() + "2: not base64 (column 5)");
  EXPECT_EQ(with_file(key_line(1).substr(0, 80) + "\n"),
            prefix() + "1: 60 bytes, expected 80 (16 name, 32 HMAC, 32 AES), one key per line: "
                       "openssl rand -base64 80 | tr -d '\\n'");
  // openssl rand -base64 80 without tr: its 64-column lines.
  EXPECT_EQ(with_file(key_line(1).substr(0, 64) + "\n" + key_line(1).substr(64) + "\n"),
            prefix() + "1: 48 bytes, expected 80 (16 name, 32 HMAC, 32 AES), one key per line: "
                       "openssl rand -base64 80 | tr -d '\\n'");
  EXPECT_EQ(with_file(key_line(1).substr(0, 107) + "\n"),
            prefix() + "1: base64 of 107 characters (not a multiple of 4)");
  EXPECT_EQ(with_file(key_line(1) + "\n" + key_line(3) + "\n" + key_line(1) + "\n"),
            prefix() + "3: the same key name (first 16 bytes) as the key on an earlier line");
  EXPECT_EQ(with_file("# nothing yet\n\n"),
            prefix() + "2: no key (one base64 line of 80 random bytes per key: openssl rand -base64 80)");
  EXPECT_EQ(with_file(""), prefix() + "1: no key (one base64 line of 80 random bytes per key: openssl rand -base64 80)");
  std::string many;
  for (int i = 0; i <= 64; ++i) many += key_line(static_cast<uint8_t>(i)) + "\n";
  EXPECT_EQ(with_file(many), prefix() + "65: more than 64 keys");
  EXPECT_EQ(with_file(std::string(70 << 10, 'A')),
            "demo.toml:8:17: listeners[0].tls.ticket_keys: '" + dir_ +
                "/t.keys' is larger than 64 KiB; not a ticket key file");
}

TEST_F(ConfigTest, PrivateKeyReadableByOthersIsAWarning) {
  ::chmod((dir_ + "/server.key").c_str(), 0644);
  Config c = parse(expand("@LISTENER@@CLUSTER@"), "demo.toml");
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_EQ(c.warnings[0], "demo.toml:7:17: listeners[0].tls.private_key: private key '" + dir_ +
                               "/server.key' is readable by group or others (mode 0644); chmod 600 it");
  ::chmod((dir_ + "/server.key").c_str(), 0600);
  EXPECT_TRUE(parse(expand("@LISTENER@@CLUSTER@"), "demo.toml").warnings.empty());
}

TEST_F(ConfigTest, DemoConfigShape) {
  std::string text = read_file(std::string(TLSGATE_SOURCE_ROOT) + "/conf/demo.toml");
  text = replace_all(text, "conf/certs/server.crt", dir_ + "/server.crt");
  text = replace_all(text, "conf/certs/server.key", dir_ + "/server.key");
  Config c = parse(text, "demo.toml");
  EXPECT_TRUE(c.workers_auto);
  ASSERT_EQ(c.listeners.size(), 1u);
  EXPECT_EQ(c.listeners[0].name, "public");
  EXPECT_EQ(c.listeners[0].listen.text, "127.0.0.1:8443");
  EXPECT_EQ(c.listeners[0].cluster, "backend");
  EXPECT_EQ(c.listeners[0].tls.certificates.at(0).certificate, dir_ + "/server.crt");
  EXPECT_EQ(c.listeners[0].tls.certificates.at(0).private_key, dir_ + "/server.key");
  ASSERT_EQ(c.clusters.size(), 1u);
  EXPECT_EQ(c.clusters[0].name, "backend");
  ASSERT_EQ(c.clusters[0].endpoints.size(), 1u);
  EXPECT_EQ(c.clusters[0].endpoints[0].text, "127.0.0.1:50051");
}

// ---------------------------------------------------------------------------
// parse_duration

struct DurationCase {
  const char* text;
  int64_t ms;  // -1: rejected
  const char* message;
};

const DurationCase kDurations[] = {
    {"0ms", 0, ""},
    {"250ms", 250, ""},
    {"10s", 10'000, ""},
    {"5m", 300'000, ""},
    {"1h", 3'600'000, ""},
    {"007s", 7'000, ""},
    {"8760h", 31'536'000'000, ""},
    {"31536000000ms", 31'536'000'000, ""},
    {"", -1, "invalid duration \"\": empty; expected a number and a unit, e.g. \"10s\""},
    {"10", -1, "invalid duration \"10\": missing unit (ms, s, m or h)"},
    {"s", -1, "invalid duration \"s\": expected a number and a unit, e.g. \"10s\""},
    {"-1s", -1, "invalid duration \"-1s\": must not be negative"},
    {"+1s", -1, "invalid duration \"+1s\": expected a number and a unit, e.g. \"10s\""},
    {"1.5s", -1, "invalid duration \"1.5s\": fractions are not allowed; use a smaller unit, e.g. \"1500ms\""},
    {"1,5s", -1, "invalid duration \"1,5s\": fractions are not allowed; use a smaller unit, e.g. \"1500ms\""},
    {" 10s", -1, "invalid duration \" 10s\": expected a number and a unit, e.g. \"10s\""},
    {"10 s", -1, "invalid duration \"10 s\": unknown unit \" s\" (use ms, s, m or h)"},
    {"10s ", -1, "invalid duration \"10s \": unknown unit \"s \" (use ms, s, m or h)"},
    {"10S", -1, "invalid duration \"10S\": unknown unit \"S\" (use ms, s, m or h)"},
    {"1d", -1, "invalid duration \"1d\": unknown unit \"d\" (use ms, s, m or h)"},
    {"10us", -1, "invalid duration \"10us\": unknown unit \"us\" (use ms, s, m or h)"},
    {"1h30m", -1, "invalid duration \"1h30m\": unknown unit \"h30m\" (use ms, s, m or h)"},
    {"8761h", -1, "invalid duration \"8761h\": too large (at most 8760h)"},
    {"31536000001ms", -1, "invalid duration \"31536000001ms\": too large (at most 8760h)"},
    {"525601m", -1, "invalid duration \"525601m\": too large (at most 8760h)"},
    {"18446744073709551617s", -1, "invalid duration \"18446744073709551617s\": too large (at most 8760h)"},
    {"99999999999999999999999999999999999999ms", -1,
     "invalid duration \"99999999999999999999999999999999999999ms\": too large (at most 8760h)"},
};

TEST(ParseDuration, Table) {
  for (const DurationCase& c : kDurations) {
    SCOPED_TRACE(c.text);
    if (c.ms >= 0) {
      EXPECT_EQ(parse_duration(c.text).count(), c.ms);
      continue;
    }
    try {
      parse_duration(c.text);
      ADD_FAILURE() << "accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()), c.message);
    }
  }
}

// ---------------------------------------------------------------------------
// parse_address

struct AddressCase {
  const char* text;
  bool allow_names;
  int family;  // 0: rejected
  const char* ip_or_message;
  uint16_t port;
};

const AddressCase kAddresses[] = {
    {"127.0.0.1:8443", false, AF_INET, "127.0.0.1", 8443},
    {"0.0.0.0:0", false, AF_INET, "0.0.0.0", 0},
    {"255.255.255.255:65535", false, AF_INET, "255.255.255.255", 65535},
    {"[::1]:8443", false, AF_INET6, "::1", 8443},
    {"[::]:0", false, AF_INET6, "::", 0},
    {"[2001:db8::1]:443", false, AF_INET6, "2001:db8::1", 443},
    {"[::ffff:10.0.0.1]:80", false, AF_INET6, "::ffff:10.0.0.1", 80},
    {"127.0.0.1:00080", false, AF_INET, "127.0.0.1", 80},
    {"backend.test:50051", true, AF_INET, "192.0.2.10", 50051},
    {"v6.test:1", true, AF_INET6, "2001:db8::1", 1},
    {"10.1.2.3:9", true, AF_INET, "10.1.2.3", 9},
    {"", false, 0, "invalid address \"\": empty; expected IP:port", 0},
    {"", true, 0, "invalid address \"\": empty; expected host:port", 0},
    {"127.0.0.1", false, 0, "invalid address \"127.0.0.1\": missing port; expected IP:port", 0},
    {"127.0.0.1:", false, 0, "invalid address \"127.0.0.1:\": missing port after ':'", 0},
    {":8443", false, 0, "invalid address \":8443\": missing host; expected IP:port", 0},
    {"[]:8443", false, 0, "invalid address \"[]:8443\": missing host; expected IP:port", 0},
    {"127.0.0.1:65536", false, 0,
     "invalid address \"127.0.0.1:65536\": port must be a number from 0 to 65535", 0},
    {"127.0.0.1:123456", false, 0,
     "invalid address \"127.0.0.1:123456\": port must be a number from 0 to 65535", 0},
    {"127.0.0.1:-1", false, 0, "invalid address \"127.0.0.1:-1\": port must be a number from 0 to 65535", 0},
    {"127.0.0.1:+1", false, 0, "invalid address \"127.0.0.1:+1\": port must be a number from 0 to 65535", 0},
    {"127.0.0.1:http", false, 0, "invalid address \"127.0.0.1:http\": port must be a number from 0 to 65535",
     0},
    {"256.0.0.1:1", false, 0,
     "invalid address \"256.0.0.1:1\": \"256.0.0.1\" is not an IPv4 address (expected "
     "a.b.c.d)",
     0},
    {"127.1:1", true, 0, "invalid address \"127.1:1\": \"127.1\" is not an IPv4 address (expected a.b.c.d)",
     0},
    {"0x7f.0.0.1:1", true, 0,
     "invalid address \"0x7f.0.0.1:1\": \"0x7f.0.0.1\" is not an IPv4 address (expected a.b.c.d)", 0},
    {"::1:8443", false, 0,
     "invalid address \"::1:8443\": write an IPv6 address in brackets, e.g. \"[::1]:8443\"", 0},
    {"[::1]8443", false, 0, "invalid address \"[::1]8443\": expected ':' and a port after ']'", 0},
    {"[::1]", false, 0, "invalid address \"[::1]\": expected ':' and a port after ']'", 0},
    {"[::1:8443", false, 0, "invalid address \"[::1:8443\": missing ']' after an IPv6 address", 0},
    {"[127.0.0.1]:1", false, 0, "invalid address \"[127.0.0.1]:1\": \"127.0.0.1\" is not an IPv6 address", 0},
    {"[fe80::1%eth0]:1", false, 0,
     "invalid address \"[fe80::1%eth0]:1\": \"fe80::1%eth0\" is not an IPv6 address", 0},
    {"localhost:1", false, 0, "invalid address \"localhost:1\": \"localhost\" is not a numeric IP address",
     0},
    {"a b:1", true, 0, "invalid address \"a b:1\": \"a b\" is not a valid host name", 0},
    {"-a:1", true, 0, "invalid address \"-a:1\": \"-a\" is not a valid host name", 0},
    {"a..b:1", true, 0, "invalid address \"a..b:1\": \"a..b\" is not a valid host name", 0},
    {"nowhere.invalid:1", true, 0, "cannot resolve \"nowhere.invalid\": Name or service not known", 0},
};

class AddressTest : public ::testing::Test {
 protected:
  void SetUp() override { previous_ = set_resolver(fake_resolver); }
  void TearDown() override { set_resolver(previous_); }
  Resolver previous_ = nullptr;
};

TEST_F(AddressTest, Table) {
  for (const AddressCase& c : kAddresses) {
    SCOPED_TRACE(std::string(c.text) + (c.allow_names ? " (names)" : ""));
    if (c.family != 0) {
      SocketAddress a = parse_address(c.text, c.allow_names);
      EXPECT_EQ(a.family(), c.family);
      EXPECT_EQ(a.length, c.family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6));
      EXPECT_EQ(ip_of(a), c.ip_or_message);
      EXPECT_EQ(a.port(), c.port);
      EXPECT_EQ(a.text, c.text);
      continue;
    }
    try {
      parse_address(c.text, c.allow_names);
      ADD_FAILURE() << "accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()), c.ip_or_message);
    }
  }
}

// The real resolver (getaddrinfo) is src/upstream's: its tests, and the
// same-address ones that need it, are in tests/unit/upstream/dns_test.cc.
TEST(ParseAddress, NoResolverInstalledRefusesNames) {
  Resolver previous = set_resolver(nullptr);
  try {
    parse_address("localhost:50051", true);
    ADD_FAILURE() << "a name parsed without a resolver";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), "cannot resolve \"localhost\": no resolver installed");
  }
  set_resolver(previous);
}

TEST(ParseAddress, SetResolverReturnsPrevious) {
  Resolver first = set_resolver(fake_resolver);
  EXPECT_EQ(set_resolver(first), fake_resolver);
}

// ---------------------------------------------------------------------------
// Small pieces.

TEST(ConfigStrings, EnumNames) {
  EXPECT_STREQ(to_string(ProxyProtocol::Off), "off");
  EXPECT_STREQ(to_string(ProxyProtocol::V1), "v1");
  EXPECT_STREQ(to_string(ProxyProtocol::V2), "v2");
  EXPECT_STREQ(to_string(ProxyProtocol::Auto), "auto");
  EXPECT_STREQ(to_string(Ktls::Auto), "auto");
  EXPECT_STREQ(to_string(Ktls::On), "on");
  EXPECT_STREQ(to_string(Ktls::Off), "off");
  EXPECT_STREQ(to_string(RecordLayer::Tlsgate), "tlsgate");
  EXPECT_STREQ(to_string(RecordLayer::Openssl), "openssl");
  EXPECT_STREQ(to_string(TlsVersion::Tls12), "1.2");
  EXPECT_STREQ(to_string(TlsVersion::Tls13), "1.3");
  EXPECT_STREQ(to_string(LbPolicy::RoundRobin), "round_robin");
  EXPECT_STREQ(to_string(LbPolicy::P2c), "p2c");
}

TEST(ConfigStrings, OriginToString) {
  EXPECT_EQ((Origin{"demo.toml", "listeners[0].tls.private_key", 12, 15}.to_string()),
            "demo.toml:12:15: listeners[0].tls.private_key");
  EXPECT_EQ((Origin{"demo.toml", "workers", 0, 0}.to_string()), "demo.toml: workers");
}

TEST(ConfigStrings, SocketAddressWithoutFamilyHasNoPort) {
  SocketAddress a;
  EXPECT_EQ(a.port(), 0);
  EXPECT_EQ(a.family(), AF_UNSPEC);
}

// client_ca alone asks for "require": naming a CA and letting clients without
// its certificates in anyway must be written out.
TEST_F(ConfigTest, ClientCaAloneRequiresClientCertificates) {
  const Config c = parse(expand("@LISTENER@  client_ca = \"@CRT@\"\n@CLUSTER@"), "demo.toml");
  const TlsSettings& t = c.listeners.at(0).tls;
  EXPECT_EQ(t.client_ca, dir_ + "/server.crt");
  EXPECT_EQ(t.client_auth, ClientAuth::Require);
  EXPECT_EQ(t.client_ca_origin.to_string(), "demo.toml:8:15: listeners[0].tls.client_ca");
  EXPECT_NE(to_toml(c).find("client_auth = \"require\""), std::string::npos) << to_toml(c);
}

// ---------------------------------------------------------------------------
// to_toml (the admin's /config): what it writes loads again into the same
// configuration, every default written out.

TEST_F(ConfigTest, ToTomlLoadsAgainIntoTheSameConfiguration) {
  const std::string text = expand(
      "workers = 3\n[admin]\nlisten = \"127.0.0.1:9901\"\n[drain]\ndelay = \"1500ms\"\n"
      "[access_log]\npath = \"-\"\nformat = \"text\"\n"
      "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\ncluster = \"backend\"\n"
      "proxy_protocol = \"v2\"\nidle_timeout = \"90s\"\nmax_connection_age = \"30m\"\n"
      "max_connection_age_grace = \"1m\"\nkeepalive_interval = \"2m\"\n"
      "  [listeners.tls]\n  certificate = \"@CRT@\"\n  private_key = \"@KEY@\"\n  min_version = \"1.3\"\n"
      "  client_ca = \"@CRT@\"\n  client_auth = \"optional\"\n"
      "  [[listeners.routes]]\n  authority = \"api.example.com\"\n  path_prefix = \"/a.\\\"b\"\n"
      "  cluster = \"other\"\n"
      "[[clusters]]\nname = \"backend\"\nendpoints = [\"127.0.0.1:50051\", \"backend.test:50052\"]\n"
      "max_grpc_timeout = \"2h\"\n  [clusters.health_check]\n  service = \"s\"\n"
      "[[clusters]]\nname = \"other\"\nendpoints = [\"[::1]:50053\"]\nlb = \"round_robin\"\n"
      "[[clusters]]\nname = \"echo\"\nrespond = \"echo\"\ndelay = \"250ms\"\nmax_grpc_timeout = \"3s\"\n"
      "[[clusters]]\nname = \"fail\"\nrespond = \"status\"\nstatus = 8\nmessage = \"slow \\\"down\\\"\"\n"
      "response_bytes = 10\n");
  const Config first = parse(text, "first.toml");
  const std::string shown = to_toml(first);
  const Config second = parse(shown, "second.toml");
  auto body = [](const std::string& t) { return t.substr(t.find('\n')); };  // after the line naming the file
  EXPECT_EQ(body(to_toml(second)), body(shown)) << shown;
  EXPECT_NE(shown.find("idle_timeout = \"90s\""), std::string::npos) << shown;
  EXPECT_NE(shown.find("handshake_timeout = \"10s\""), std::string::npos) << "a default\n" << shown;
  EXPECT_NE(shown.find("endpoints = [\"127.0.0.1:50051\", \"backend.test:50052\"]"), std::string::npos)
      << "a DNS name stays a name\n" << shown;
  EXPECT_NE(shown.find("path_prefix = \"/a.\\\"b\""), std::string::npos) << "escaped\n" << shown;
  EXPECT_EQ(second.clusters[0].max_grpc_timeout, std::chrono::hours(2));
  EXPECT_EQ(second.drain.delay, std::chrono::milliseconds(1500));
  EXPECT_EQ(second.access_log.format, AccessLogFormat::Text);
  EXPECT_EQ(second.listeners[0].max_connection_age, std::chrono::minutes(30));
  EXPECT_EQ(second.listeners[0].keepalive_interval, std::chrono::minutes(2));
  EXPECT_EQ(second.listeners[0].proxy_protocol, ProxyProtocol::V2);
  EXPECT_EQ(second.listeners[0].routes.at(0).cluster, "other");
  EXPECT_EQ(second.listeners[0].tls.client_auth, ClientAuth::Optional);
  EXPECT_NE(shown.find("client_ca = \"" + dir_ + "/server.crt\""), std::string::npos) << shown;
  EXPECT_EQ(shown.find("MIIE"), std::string::npos) << "no key material";
  EXPECT_EQ(second.clusters.at(2).respond, Respond::Echo);
  EXPECT_EQ(second.clusters.at(2).respond_delay, std::chrono::milliseconds(250));
  EXPECT_EQ(second.clusters.at(2).max_grpc_timeout, std::chrono::seconds(3));
  EXPECT_EQ(second.clusters.at(3).respond, Respond::Status);
  EXPECT_EQ(second.clusters.at(3).respond_status, 8u);
  EXPECT_EQ(second.clusters.at(3).respond_message, "slow \"down\"");
  EXPECT_EQ(second.clusters.at(3).response_bytes, 10u);
}

}  // namespace
}  // namespace tlsgate::config
