// src/admin: the request head parser (every row a user or an attacker can
// send), the answers, the exposition format, and that /metrics shows every
// counter of the stopped: line.
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "tlsgate/admin.hh"
#include "tlsgate/metrics.hh"

namespace tlsgate::admin {
namespace {

struct ParseCase {
  const char* name;
  std::string in;
  ParseStatus status;
  int error;           // for Error
  const char* path;    // for Done
};

const ParseCase kCases[] = {
    {"get", "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", ParseStatus::Done, 0, "/metrics"},
    {"http10_bare_lf", "GET /ready HTTP/1.0\n\n", ParseStatus::Done, 0, "/ready"},
    {"query_dropped", "GET /metrics?name[]=x HTTP/1.1\r\n\r\n", ParseStatus::Done, 0, "/metrics"},
    {"no_empty_line_yet", "GET /metrics HTTP/1.1\r\nHost: x\r\n", ParseStatus::Incomplete, 0, ""},
    {"half_a_line", "GET /met", ParseStatus::Incomplete, 0, ""},
    {"empty", "", ParseStatus::Incomplete, 0, ""},
    {"no_target", "GET HTTP/1.1\r\n\r\n", ParseStatus::Error, 400, ""},
    {"two_spaces", "GET  /x HTTP/1.1\r\n\r\n", ParseStatus::Error, 400, ""},
    {"absolute_form", "GET http://x/metrics HTTP/1.1\r\n\r\n", ParseStatus::Error, 400, ""},
    {"control_in_target", "GET /a\x01 HTTP/1.1\r\n\r\n", ParseStatus::Error, 400, ""},
    {"bad_method", "G(T /x HTTP/1.1\r\n\r\n", ParseStatus::Error, 400, ""},
    {"http2_preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", ParseStatus::Error, 400, ""},
    {"http2_version", "GET /x HTTP/2\r\n\r\n", ParseStatus::Error, 505, ""},
    {"not_http", "GET /x SPDY/3\r\n\r\n", ParseStatus::Error, 400, ""},
    {"bad_line_rejected_before_the_end", "GET /x HTTP/9.9\r\nHost: x\r\n", ParseStatus::Error, 505, ""},
    {"field_without_colon", "GET /x HTTP/1.1\r\nHost x\r\n\r\n", ParseStatus::Error, 400, ""},
    {"folded_field", "GET /x HTTP/1.1\r\nA: b\r\n c\r\n\r\n", ParseStatus::Error, 400, ""},
    {"space_before_colon", "GET /x HTTP/1.1\r\nHost : x\r\n\r\n", ParseStatus::Error, 400, ""},
    {"control_in_value", "GET /x HTTP/1.1\r\nA: b\x01\r\n\r\n", ParseStatus::Error, 400, ""},
    {"line_too_long", "GET /" + std::string(kMaxHead, 'a'), ParseStatus::Error, 414, ""},
    {"head_too_large", "GET /x HTTP/1.1\r\nA: " + std::string(kMaxHead, 'b'), ParseStatus::Error, 431, ""},
};

class Parse : public ::testing::TestWithParam<ParseCase> {};

TEST_P(Parse, Row) {
  const ParseCase& c = GetParam();
  const ParseResult r = parse_request(c.in);
  EXPECT_EQ(r.status, c.status) << r.why;
  if (c.status == ParseStatus::Error) {
    EXPECT_EQ(r.error, c.error) << r.why;
  }
  if (c.status == ParseStatus::Done) {
    EXPECT_EQ(r.request.path, c.path);
  }
}

INSTANTIATE_TEST_SUITE_P(Admin, Parse, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<ParseCase>& i) { return std::string(i.param.name); });

Handlers fixed(bool ready) {
  Handlers h;
  h.ready = [ready] { return ready; };
  h.metrics = [] { return std::string("tlsgate_x 1\n"); };
  h.config = [] { return std::string("workers = 1\n"); };
  return h;
}

std::string status_line(const std::string& answer) { return answer.substr(0, answer.find("\r\n")); }

TEST(AdminRespond, PathsMethodsAndReadiness) {
  EXPECT_EQ(status_line(respond({"GET", "/healthz"}, fixed(false))), "HTTP/1.1 200 OK");
  EXPECT_EQ(status_line(respond({"GET", "/ready"}, fixed(true))), "HTTP/1.1 200 OK");
  EXPECT_EQ(status_line(respond({"GET", "/ready"}, fixed(false))), "HTTP/1.1 503 Service Unavailable");
  EXPECT_EQ(status_line(respond({"GET", "/nope"}, fixed(true))), "HTTP/1.1 404 Not Found");
  EXPECT_EQ(status_line(respond({"DELETE", "/config"}, fixed(true))), "HTTP/1.1 405 Method Not Allowed");
  const std::string m = respond({"GET", "/metrics"}, fixed(true));
  EXPECT_NE(m.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << m;
  EXPECT_NE(m.find("Content-Length: 12\r\n"), std::string::npos) << m;
  EXPECT_EQ(m.substr(m.size() - 12), "tlsgate_x 1\n");
  const std::string head = respond({"HEAD", "/metrics"}, fixed(true));
  EXPECT_NE(head.find("Content-Length: 12\r\n"), std::string::npos) << "HEAD says the length of the GET body";
  EXPECT_EQ(head.substr(head.size() - 4), "\r\n\r\n") << "and sends none";
}

TEST(AdminExposition, EscapesAndHistograms) {
  Exposition x;
  x.family("tlsgate_a_total", "counter", "help with \\ and\nnewline");
  x.sample("tlsgate_a_total", {{"path", "a\"b\\c\nd"}}, uint64_t{7});
  const double bounds[] = {0.001, 0.01};
  const uint64_t counts[] = {2, 3};
  x.histogram("tlsgate_h_seconds", {{"l", "x"}}, bounds, counts, 2, 0.5, 6);
  EXPECT_EQ(x.text(),
            "# HELP tlsgate_a_total help with \\\\ and\\nnewline\n"
            "# TYPE tlsgate_a_total counter\n"
            "tlsgate_a_total{path=\"a\\\"b\\\\c\\nd\"} 7\n"
            "tlsgate_h_seconds_bucket{l=\"x\",le=\"0.001\"} 2\n"
            "tlsgate_h_seconds_bucket{l=\"x\",le=\"0.01\"} 5\n"
            "tlsgate_h_seconds_bucket{l=\"x\",le=\"+Inf\"} 6\n"
            "tlsgate_h_seconds_sum{l=\"x\"} 0.5\n"
            "tlsgate_h_seconds_count{l=\"x\"} 6\n");
}

// Every key=value of the stopped: line has a metric.
TEST(AdminMetrics, EveryStoppedLineCounterIsExported) {
  shard::Counters c;
  std::vector<std::string> keys;
  std::istringstream words(c.describe());
  for (std::string w; words >> w;) keys.push_back(w.substr(0, w.find('=')));
  // describe() prints the kTLS rows only when non-zero.
  c.ktls_offloaded[1][0] = 1;
  std::istringstream more(c.describe());
  for (std::string w; more >> w;) keys.push_back(w.substr(0, w.find('=')));
  ASSERT_GT(keys.size(), 50u);
  EXPECT_EQ(counter_keys_without_metric(keys), std::vector<std::string>{});
  EXPECT_EQ(counter_keys_without_metric({"made_up_counter"}), std::vector<std::string>{"made_up_counter"});
}

TEST(AdminMetrics, ShardsAreSummed) {
  MetricsInput in;
  in.listener_names = {"public"};
  for (unsigned i = 0; i < 2; ++i) {
    shard::Stats s;
    s.shard = i;
    s.counters.streams_forwarded = 10 + i;
    s.listeners.resize(1);
    s.listeners[0].accepted = 3;
    s.listeners[0].handshake.observe(1500);
    s.handshakes.push_back({0, "TLSv1.3", "TLS_AES_128_GCM_SHA256", false, false, 4});
    shard::Stats::Cluster& c = s.clusters.emplace_back();
    c.name = "backend";
    c.streams = 5;
    c.endpoints.push_back({"127.0.0.1:1", "healthy", 1, 5, 0, 0});
    in.shards.push_back(s);
  }
  const std::string page = render_metrics(in);
  auto has = [&](const std::string& line) { return page.find(line + "\n") != std::string::npos; };
  EXPECT_TRUE(has("tlsgate_streams_forwarded_total 21")) << page;
  EXPECT_TRUE(has("tlsgate_connections_accepted_total{listener=\"public\"} 6")) << page;
  EXPECT_TRUE(has("tlsgate_handshakes_total{listener=\"public\",version=\"TLSv1.3\",cipher=\"TLS_AES_128_GCM_SHA256\","
                  "resumed=\"false\",record_layer=\"userspace\"} 8"))
      << page;
  EXPECT_TRUE(has("tlsgate_handshake_duration_seconds_bucket{listener=\"public\",le=\"0.0025\"} 2")) << page;
  EXPECT_TRUE(has("tlsgate_handshake_duration_seconds_bucket{listener=\"public\",le=\"0.001\"} 0")) << page;
  EXPECT_TRUE(has("tlsgate_cluster_streams_total{cluster=\"backend\"} 10")) << page;
  EXPECT_TRUE(has("tlsgate_endpoint_state{cluster=\"backend\",endpoint=\"127.0.0.1:1\",state=\"healthy\"} 2")) << page;
}

}  // namespace
}  // namespace tlsgate::admin
