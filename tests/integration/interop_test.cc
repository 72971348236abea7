// TLS interoperability (issue 15): tlsgate's TLS (OpenSSL's handshake, then
// its own TLS 1.3 record layer) against client stacks other than the
// OpenSSL-based ones the other suites use, through a real gateway to a real
// echo backend.
//
// Each client is a program in tests/integration/interop/ (see its header):
//   gnutls_cli.py     GnuTLS (gnutls-cli), HTTP/2 built by hand (h2raw.py):
//                     the only one that can send a KeyUpdate
//   pyssl.py          CPython's ssl module, HTTP/2 by h2raw.py
//   grpcio_client.py  grpcio, gRPC core's own HTTP/2 and TLS wrapper
//   go_client.go      Go's crypto/tls and net/http: no OpenSSL at all
// It makes echo calls through the gateway and prints what a user would check
// as facts, "name value" lines; the tests below assert them, and the
// gateway's own counters once it has stopped.
//
// Environment (tests/integration/meson.build): INTEROP_DIR (the programs),
// INTEROP_PYTHON (/usr/bin/python3, which has Debian's grpcio),
// INTEROP_GO_CLIENT (the built Go client; unset when `go` was not found).
// A missing client is a failure, not a skip: tools/deps installs them all.
#include <unistd.h>

#include <sstream>
#include <tuple>

#include "fixtures.hh"

namespace tlsgate::itest {
namespace {

// The listener under test. kTLS is off in every variant: with kernel TLS a
// client's KeyUpdate closes the connection (kernels before 6.13 cannot take
// new receive keys), and the record layer under test would depend on the
// host. Each client runs against both record layers.
struct ListenerVariant {
  std::string name;          // the test name's suffix
  std::string record_layer;  // [listeners.tls] record_layer
};
const ListenerVariant kVariants[] = {{"TlsgateRecordLayer", "tlsgate"}, {"OpensslRecordLayer", "openssl"}};
void PrintTo(const ListenerVariant& v, std::ostream* os) { *os << v.name; }

const ListenerVariant& variant_of(const ListenerVariant& v) { return v; }
template <class... T>
const ListenerVariant& variant_of(const std::tuple<ListenerVariant, T...>& p) {
  return std::get<0>(p);
}

// What a client program printed and how it ended.
struct ClientRun {
  RunResult result;
  std::map<std::string, std::string> facts;

  bool ok() const { return result.status.exited && result.status.code == 0; }
  std::string operator[](const std::string& name) const {
    auto it = facts.find(name);
    return it == facts.end() ? "<absent>" : it->second;
  }
  std::string describe() const {
    return result.status.to_string() + "\n--- stdout ---\n" + result.out + "--- stderr ---\n" + result.err;
  }
};

template <class Param>
class InteropTest : public GatewayTest, public ::testing::WithParamInterface<Param> {
 protected:
  void configure(GatewayConfig& cfg) override {
    cfg.ktls = "off";
    cfg.record_layer = variant_of(this->GetParam()).record_layer;
  }

  std::string port() const { return std::to_string(gw_->endpoint().port); }
  std::string ca() const { return certs().ca.string(); }

  // A Python client program from INTEROP_DIR, run with INTEROP_PYTHON.
  ClientRun run_python(const std::string& script, std::vector<std::string> args) {
    const std::string python = env("INTEROP_PYTHON"), dir = env("INTEROP_DIR");
    if (python.empty() || dir.empty()) ADD_FAILURE() << "INTEROP_PYTHON or INTEROP_DIR is not set";
    if (::access(python.c_str(), X_OK) != 0)
      ADD_FAILURE() << python << " is missing (tools/deps installs it)";
    args.insert(args.begin(), {python, dir + "/" + script});
    return run_client(args);
  }

  ClientRun run_client(const std::vector<std::string>& argv) {
    ClientRun c;
    // Each program bounds its own waits (60 s); this bounds the program.
    c.result = run(argv, dir_->path(), 120s, {{"PYTHONDONTWRITEBYTECODE", "1"}});
    std::istringstream lines(c.result.out);
    std::string line;
    while (std::getline(lines, line)) {
      auto space = line.find(' ');
      if (space != std::string::npos) c.facts[line.substr(0, space)] = line.substr(space + 1);
    }
    return c;
  }

  // Stops the gateway (TERM; the harness checks exit 0 and sanitizer output)
  // and returns the counters of its "stopped:" line.
  std::map<std::string, std::string> stop_gateway() {
    gw_->stop();
    return stopped_counters(gw_->process().stderr_text());
  }
};

// An echo call a user would call good: HTTP 200, gRPC status 0, no reset
// (the Go client reports none: a reset fails its call), the payload back byte
// for byte.
void expect_echo(const ClientRun& c, const std::string& call, size_t bytes) {
  SCOPED_TRACE(call);
  EXPECT_EQ(c[call + ".status"], "200") << c.describe();
  EXPECT_EQ(c[call + ".grpc_status"], "0");
  if (c.facts.count(call + ".reset")) {
    EXPECT_EQ(c[call + ".reset"], "none");
  }
  EXPECT_EQ(c[call + ".payload_up"], std::to_string(bytes));
  EXPECT_EQ(c[call + ".payload_down"], std::to_string(bytes));
  EXPECT_EQ(c[call + ".echo"], "intact");
}

// The gateway's side of a clean exchange: at least the client's
// `connections` handshakes, no HTTP/2 protocol error, no stream reset by the
// client. At least, not exactly: a stray connection from another test process
// to a port the kernel has since given this gateway would be counted too.
void expect_clean_gateway(const std::map<std::string, std::string>& counters, int connections) {
  auto get = [&](const char* k) {
    auto it = counters.find(k);
    return it == counters.end() ? std::string("<absent>") : it->second;
  };
  ASSERT_NE(get("handshakes"), "<absent>") << "no \"stopped:\" line with counters in tlsgate's stderr";
  EXPECT_GE(std::stoi(get("handshakes")), connections);
  EXPECT_EQ(get("downstream_protocol_errors"), "0");
  EXPECT_EQ(get("streams_reset_by_client"), "0");
}

constexpr size_t kMiB = 1 << 20;

// ---------------------------------------------------------------- GnuTLS

// Parameter: the listener, and the TLS 1.3 AEAD gnutls-cli is limited to (by
// its GnuTLS name). Each AEAD has its own record protection and key schedule
// hash (SHA-384 for AES-256-GCM), so each one's KeyUpdate is tested.
using GnutlsParam = std::tuple<ListenerVariant, std::string>;
class InteropGnutls : public InteropTest<GnutlsParam> {
 protected:
  const std::string& cipher() const { return std::get<1>(GetParam()); }
  ClientRun gnutls(const std::string& scenario, const std::string& versions = "") {
    const std::string priority = "NORMAL:-CIPHER-ALL:+" + cipher() + versions;
    return run_python("gnutls_cli.py", {"--port", port(), "--ca", ca(), "--dir",
                                        (dir_->path() / ("gnutls-" + scenario)).string(), "--scenario",
                                        scenario, "--priority", priority});
  }
};

// A full handshake, then 1 MiB up and the same 1 MiB echoed down, then a
// small call on the same connection.
TEST_P(InteropGnutls, Transfer1MiBEachWay) {
  auto c = gnutls("transfer");
  ASSERT_TRUE(c.ok()) << c.describe();
  EXPECT_EQ(c["conn1.version"], "TLS1.3");
  EXPECT_EQ(c["conn1.cipher"], cipher());
  EXPECT_EQ(c["conn1.alpn"], "h2");
  EXPECT_EQ(c["conn1.resumed"], "no");
  expect_echo(c, "call1", kMiB);
  expect_echo(c, "call2", 1000);
  EXPECT_EQ(c["gnutls_cli.exit"], "0");
  expect_clean_gateway(stop_gateway(), 1);
}

// gnutls-cli sends KeyUpdate(update_requested) twice and
// KeyUpdate(update_not_requested) once, with calls between them (1 MiB each
// way right after the first). The server must answer each requested update with its own
// KeyUpdate and no other, and both directions must keep working with the
// new keys: every echo intact, a PING answered after the last update, all on
// one connection.
TEST_P(InteropGnutls, KeyUpdateBothWays) {
  auto c = gnutls("keyupdate");
  ASSERT_TRUE(c.ok()) << c.describe();
  EXPECT_EQ(c["conn1.version"], "TLS1.3");
  EXPECT_EQ(c["conn1.cipher"], cipher());
  EXPECT_EQ(c["key_updates.sent"], "3");
  EXPECT_EQ(c["key_updates.received_not_requested"], "2") << "the server's answers to update_requested";
  EXPECT_EQ(c["key_updates.received_requested"], "0");
  expect_echo(c, "call1", 64 << 10);
  expect_echo(c, "call2", kMiB);
  expect_echo(c, "call3", 64 << 10);
  expect_echo(c, "call4", 256 << 10);
  EXPECT_EQ(c["ping_after_last_update"], "acked");
  EXPECT_EQ(c["conn2.version"], "<absent>") << "a second connection";
  EXPECT_EQ(c["gnutls_cli.exit"], "0");
  expect_clean_gateway(stop_gateway(), 1);
}

// A call; gnutls-cli's ^resume^ closes the connection and connects again
// with the session ticket it got; a call on the resumed connection.
TEST_P(InteropGnutls, ResumesTls13) {
  auto c = gnutls("resume");
  ASSERT_TRUE(c.ok()) << c.describe();
  EXPECT_EQ(c["conn1.version"], "TLS1.3");
  EXPECT_EQ(c["conn1.resumed"], "no");
  EXPECT_EQ(c["conn2.version"], "TLS1.3");
  EXPECT_EQ(c["conn2.cipher"], cipher());
  EXPECT_EQ(c["conn2.alpn"], "h2");
  EXPECT_EQ(c["conn2.resumed"], "yes");
  expect_echo(c, "call1", 64 << 10);
  expect_echo(c, "call2", 64 << 10);
  EXPECT_EQ(c["gnutls_cli.exit"], "0");
  expect_clean_gateway(stop_gateway(), 2);
}

// The same over TLS 1.2 (records stay with OpenSSL there).
TEST_P(InteropGnutls, ResumesTls12) {
  auto c = gnutls("resume", ":-VERS-ALL:+VERS-TLS1.2");
  ASSERT_TRUE(c.ok()) << c.describe();
  EXPECT_EQ(c["conn1.version"], "TLS1.2");
  EXPECT_EQ(c["conn1.cipher"], cipher());
  EXPECT_EQ(c["conn1.resumed"], "no");
  EXPECT_EQ(c["conn2.version"], "TLS1.2");
  EXPECT_EQ(c["conn2.resumed"], "yes");
  expect_echo(c, "call1", 64 << 10);
  expect_echo(c, "call2", 64 << 10);
  EXPECT_EQ(c["gnutls_cli.exit"], "0");
  expect_clean_gateway(stop_gateway(), 2);
}

std::string gnutls_name(const ::testing::TestParamInfo<GnutlsParam>& info) {
  std::string s = std::get<0>(info.param).name + "_" + std::get<1>(info.param);
  for (char& ch : s)
    if (ch == '-') ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Listener, InteropGnutls,
                         ::testing::Combine(::testing::ValuesIn(kVariants),
                                            ::testing::Values("AES-128-GCM", "AES-256-GCM",
                                                              "CHACHA20-POLY1305")),
                         gnutls_name);

std::string variant_name(const ::testing::TestParamInfo<ListenerVariant>& info) { return info.param.name; }

// ---------------------------------------------------------------- Python ssl

class InteropPythonSsl : public InteropTest<ListenerVariant> {
 protected:
  ClientRun pyssl(const std::string& scenario) {
    return run_python("pyssl.py", {"--port", port(), "--ca", ca(), "--scenario", scenario});
  }
};

TEST_P(InteropPythonSsl, Transfer1MiBEachWay) {
  auto c = pyssl("transfer");
  ASSERT_TRUE(c.ok()) << c.describe();
  EXPECT_EQ(c["conn1.version"], "TLSv1.3");
  EXPECT_EQ(c["conn1.alpn"], "h2");
  EXPECT_EQ(c["conn1.resumed"], "no");
  expect_echo(c, "call1", kMiB);
  expect_echo(c, "call2", 1000);
  expect_clean_gateway(stop_gateway(), 1);
}

// The first connection's session (with the ticket read after the handshake)
// offered on the second: SSLSocket.session_reused.
TEST_P(InteropPythonSsl, Resumes) {
  auto c = pyssl("resume");
  ASSERT_TRUE(c.ok()) << c.describe();
  EXPECT_EQ(c["conn1.resumed"], "no");
  EXPECT_EQ(c["conn1.ticket"], "yes");
  EXPECT_EQ(c["conn2.version"], "TLSv1.3");
  EXPECT_EQ(c["conn2.alpn"], "h2");
  EXPECT_EQ(c["conn2.resumed"], "yes");
  expect_echo(c, "call1", 64 << 10);
  expect_echo(c, "call2", 64 << 10);
  expect_clean_gateway(stop_gateway(), 2);
}

INSTANTIATE_TEST_SUITE_P(Listener, InteropPythonSsl, ::testing::ValuesIn(kVariants), variant_name);

// ---------------------------------------------------------------- grpcio

class InteropGrpcio : public InteropTest<ListenerVariant> {};

// One secure channel: 4 calls of 1 MiB each way one after the other, then 200
// small calls in flight together; every reply the request's payload, and
// the backend counted every call.
TEST_P(InteropGrpcio, ManyCallsOneChannel) {
  auto c = run_python("grpcio_client.py", {"--port", port(), "--ca", ca(), "--big", "4", "--small", "200"});
  ASSERT_TRUE(c.ok()) << c.describe();
  EXPECT_EQ(c["channel"], "ready");
  EXPECT_EQ(c["big.calls"], "4");
  EXPECT_EQ(c["big.echo.intact"], "4") << c.describe();
  EXPECT_EQ(c["small.calls"], "200");
  EXPECT_EQ(c["small.echo.intact"], "200") << c.describe();
  StatsReply s;
  ASSERT_TRUE(echo_->stats(&s).ok());
  EXPECT_EQ(calls_of(s, "Unary"), 204u);
  expect_clean_gateway(stop_gateway(), 1);
}

INSTANTIATE_TEST_SUITE_P(Listener, InteropGrpcio, ::testing::ValuesIn(kVariants), variant_name);

// ---------------------------------------------------------------- Go

class InteropGo : public InteropTest<ListenerVariant> {};

// 1 MiB each way and a small call on one connection; the connection closed;
// a call on a new connection that resumes the first one's session.
TEST_P(InteropGo, TransferAndResume) {
  const std::string client = env("INTEROP_GO_CLIENT");
  ASSERT_FALSE(client.empty())
      << "INTEROP_GO_CLIENT is not set: meson found no `go` (tools/deps installs golang-go)";
  auto c = run_client({client, "-port", port(), "-ca", ca()});
  ASSERT_TRUE(c.ok()) << c.describe();
  EXPECT_EQ(c["call1.new_connection"], "1");
  EXPECT_EQ(c["call1.proto"], "HTTP/2.0");
  EXPECT_EQ(c["call1.version"], "TLS1.3");
  EXPECT_EQ(c["call1.alpn"], "h2");
  EXPECT_EQ(c["call1.resumed"], "no");
  expect_echo(c, "call1", kMiB);
  EXPECT_EQ(c["call2.new_connection"], "<absent>") << "the second call should reuse the connection";
  expect_echo(c, "call2", 1000);
  EXPECT_EQ(c["call3.new_connection"], "2");
  EXPECT_EQ(c["call3.resumed"], "yes");
  expect_echo(c, "call3", 1000);
  expect_clean_gateway(stop_gateway(), 2);
}

INSTANTIATE_TEST_SUITE_P(Listener, InteropGo, ::testing::ValuesIn(kVariants), variant_name);

}  // namespace
}  // namespace tlsgate::itest
