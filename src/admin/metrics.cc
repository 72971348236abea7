// /metrics: the shards' Stats summed and written in the Prometheus text
// format. Names follow Prometheus practice: tlsgate_ prefix, _total for
// counters, base units (seconds, bytes). The stopped: line's keys map to
// metrics through kCounterMetrics; tests/unit/admin checks that none is
// missing.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "tlsgate/admin.hh"
#include "tlsgate/metrics.hh"

namespace tlsgate::admin {

namespace {

using shard::Counters;
using shard::Stats;

// One sample of a family: the stopped: line's key, the Counters field and
// the label that sets it apart in its family (or none).
struct CounterMetric {
  const char* key;
  uint64_t Counters::*field;
  const char* family;
  const char* label_name;
  const char* label_value;
  const char* help;  // the family's; the first entry of a family gives it
};

// Entries of one family are contiguous.
constexpr CounterMetric kCounterMetrics[] = {
    {"handshake_timeouts", &Counters::handshake_timeouts, "tlsgate_handshake_timeouts_total", nullptr, nullptr,
     "Connections without a PROXY header or TLS handshake within handshake_timeout"},
    {"http1_rejected", &Counters::http1_rejected, "tlsgate_http1_rejected_total", nullptr, nullptr,
     "Connections that negotiated HTTP/1.1 and were answered 426"},
    {"idle_closed", &Counters::idle_closed, "tlsgate_idle_closed_total", nullptr, nullptr,
     "Client connections closed by the listener's idle_timeout"},
    {"downstream_protocol_errors", &Counters::downstream_protocol_errors, "tlsgate_downstream_protocol_errors_total",
     nullptr, nullptr, "Client connections ended by an HTTP/2 protocol error or a spent abuse budget"},
    {"tls_userspace", &Counters::tls_userspace, "tlsgate_tls_userspace_connections_total", nullptr, nullptr,
     "Client connections whose record crypto stayed in userspace"},
    {"tls_unknown_server_name", &Counters::tls_unknown_server_name, "tlsgate_tls_unknown_server_name_total", nullptr,
     nullptr, "TLS handshakes whose server name no certificate carries (the default certificate was sent)"},
    {"tls_ocsp_stapled", &Counters::tls_ocsp_stapled, "tlsgate_tls_ocsp_stapled_total", nullptr, nullptr,
     "TLS handshakes given the OCSP response of their certificate (the client asked for it)"},
    {"tls_ocsp_stale", &Counters::tls_ocsp_stale, "tlsgate_tls_ocsp_stale_total", nullptr, nullptr,
     "TLS handshakes that asked for OCSP and got none: the response file has passed its nextUpdate"},
    {"upstream_connects", &Counters::upstream_connects, "tlsgate_upstream_connects_total", nullptr, nullptr,
     "Connections opened to backends"},
    {"upstream_connect_failures", &Counters::upstream_connect_failures, "tlsgate_upstream_connect_failures_total",
     nullptr, nullptr, "Backend connects (or upstream TLS handshakes) that failed or timed out"},
    {"upstream_lost", &Counters::upstream_lost, "tlsgate_upstream_connections_lost_total", nullptr, nullptr,
     "Backend connections lost while open"},
    {"streams_forwarded", &Counters::streams_forwarded, "tlsgate_streams_forwarded_total", nullptr, nullptr,
     "Client streams sent to a backend"},
    {"streams_responded", &Counters::streams_responded, "tlsgate_streams_responded_total", nullptr, nullptr,
     "Client streams answered by the gateway itself: a responder cluster (respond = echo | status)"},
    {"streams_unavailable", &Counters::streams_unavailable, "tlsgate_streams_unavailable_total", nullptr, nullptr,
     "Client streams the gateway answered with grpc-status 14 (no backend could take them)"},
    {"streams_reset_by_client", &Counters::streams_reset_by_client, "tlsgate_streams_reset_total", "by", "client",
     "Streams ended by RST_STREAM, by who sent it"},
    {"streams_reset_by_upstream", &Counters::streams_reset_by_upstream, "tlsgate_streams_reset_total", "by", "upstream",
     ""},
    {"header_limit_resets", &Counters::header_limit_resets, "tlsgate_header_limit_resets_total", nullptr, nullptr,
     "Streams refused for header fields past the gateway's limits"},
    {"deadline_exceeded", &Counters::deadline_exceeded, "tlsgate_deadline_exceeded_total", nullptr, nullptr,
     "Streams the gateway answered with grpc-status 4 when their grpc-timeout passed"},
    {"retries", &Counters::retries, "tlsgate_retries_total", nullptr, nullptr,
     "Streams sent again after a backend never processed them"},
    {"circuit_breaker_streams", &Counters::circuit_breaker_streams, "tlsgate_circuit_breaker_trips_total", "limit",
     "max_pending_streams", "Streams refused by a cluster's circuit breakers, by limit"},
    {"circuit_breaker_connections", &Counters::circuit_breaker_connections, "tlsgate_circuit_breaker_trips_total",
     "limit", "max_connections", ""},
    {"no_healthy_endpoint", &Counters::no_healthy_endpoint, "tlsgate_no_healthy_endpoint_total", nullptr, nullptr,
     "Streams refused because no endpoint of the cluster was usable"},
    {"endpoints_ejected", &Counters::endpoints_ejected, "tlsgate_upstream_ejections_total", nullptr, nullptr,
     "Passive outlier ejections of endpoints"},
    {"endpoints_ejection_refused", &Counters::endpoints_ejection_refused,
     "tlsgate_upstream_ejections_refused_total", nullptr, nullptr,
     "Ejections max_ejection_percent held back"},
    {"health_check_failures", &Counters::health_check_failures, "tlsgate_health_checks_total", "result", "failure",
     "Active health checks (grpc.health.v1), by result"},
    {"health_checks_passed", &Counters::health_checks_passed, "tlsgate_health_checks_total", "result", "success", ""},
    {"upstream_idle_closed", &Counters::upstream_idle_closed, "tlsgate_upstream_idle_closed_total", nullptr, nullptr,
     "Backend connections closed by the cluster's idle_timeout"},
    {"upstream_keepalive_timeouts", &Counters::upstream_keepalive_timeouts, "tlsgate_upstream_keepalive_timeouts_total",
     nullptr, nullptr, "Backend connections closed because a keepalive PING got no answer"},
    {"dns_updates", &Counters::dns_updates, "tlsgate_dns_updates_total", nullptr, nullptr,
     "Endpoint sets changed by DNS re-resolution"},
    {"proxy_headers", &Counters::proxy_headers, "tlsgate_proxy_headers_total", nullptr, nullptr,
     "PROXY protocol headers accepted"},
    {"proxy_errors", &Counters::proxy_errors, "tlsgate_proxy_errors_total", nullptr, nullptr,
     "Connections closed for a bad PROXY protocol header"},
    {"h2_glitch_empty_data", &Counters::h2_glitch_empty_data, "tlsgate_h2_glitches_total", "kind", "empty_data",
     "HTTP/2 frames from clients that cost work and serve no request, by kind"},
    {"h2_glitch_priority", &Counters::h2_glitch_priority, "tlsgate_h2_glitches_total", "kind", "priority", ""},
    {"h2_glitch_unknown_frames", &Counters::h2_glitch_unknown_frames, "tlsgate_h2_glitches_total", "kind",
     "unknown_frames", ""},
    {"h2_glitch_pings", &Counters::h2_glitch_pings, "tlsgate_h2_glitches_total", "kind", "pings", ""},
    {"h2_glitch_settings", &Counters::h2_glitch_settings, "tlsgate_h2_glitches_total", "kind", "settings", ""},
    {"h2_glitch_window_updates", &Counters::h2_glitch_window_updates, "tlsgate_h2_glitches_total", "kind",
     "window_updates", ""},
    {"h2_glitch_invalid_frames", &Counters::h2_glitch_invalid_frames, "tlsgate_h2_glitches_total", "kind",
     "invalid_frames", ""},
    {"h2_glitch_stale_resets", &Counters::h2_glitch_stale_resets, "tlsgate_h2_glitches_total", "kind", "stale_resets",
     ""},
    {"h2_streams_cancelled", &Counters::h2_streams_cancelled, "tlsgate_h2_streams_cancelled_total", nullptr, nullptr,
     "Streams reset (by either side) while their backend stream was open"},
    {"h2_closed_glitch_budget", &Counters::h2_closed_glitch_budget, "tlsgate_h2_abuse_closed_total", "budget",
     "glitch", "Client connections closed with GOAWAY for abuse, by the budget or limit spent"},
    {"h2_closed_reset_budget", &Counters::h2_closed_reset_budget, "tlsgate_h2_abuse_closed_total", "budget", "reset",
     ""},
    {"h2_closed_shard_reset_budget", &Counters::h2_closed_shard_reset_budget, "tlsgate_h2_abuse_closed_total",
     "budget", "shard_reset", ""},
    {"h2_closed_flood", &Counters::h2_closed_flood, "tlsgate_h2_abuse_closed_total", "budget", "flood", ""},
    {"h2_closed_bad_preface", &Counters::h2_closed_bad_preface, "tlsgate_h2_abuse_closed_total", "budget",
     "bad_preface", ""},
    {"ktls_unsupported_cipher", &Counters::ktls_unsupported_cipher, "tlsgate_ktls_unsupported_cipher_total", nullptr,
     nullptr, "Connections kept in userspace: the kernel cannot offload their cipher"},
    {"ktls_failed", &Counters::ktls_failed, "tlsgate_ktls_failed_total", nullptr, nullptr,
     "kTLS offloads the kernel refused (kept in userspace)"},
    {"ktls_close_notify", &Counters::ktls_close_notify, "tlsgate_ktls_control_records_total", "record", "close_notify",
     "Non-data records received on kTLS sockets, by what they were"},
    {"ktls_alerts", &Counters::ktls_alerts, "tlsgate_ktls_control_records_total", "record", "alert", ""},
    {"ktls_key_update_closed", &Counters::ktls_key_update_closed, "tlsgate_ktls_control_records_total", "record",
     "key_update", ""},
    {"ktls_unexpected_records", &Counters::ktls_unexpected_records, "tlsgate_ktls_control_records_total", "record",
     "unexpected", ""},
    {"keepalive_pings", &Counters::keepalive_pings, "tlsgate_keepalive_pings_total", nullptr, nullptr,
     "PINGs sent to clients quiet for the listener's keepalive_interval"},
    {"keepalive_timeouts", &Counters::keepalive_timeouts, "tlsgate_keepalive_timeouts_total", nullptr, nullptr,
     "Client connections closed: nothing received within keepalive_timeout of a PING"},
    {"max_age_goaways", &Counters::max_age_goaways, "tlsgate_max_connection_age_goaways_total", nullptr, nullptr,
     "Client connections sent the graceful GOAWAY at their max_connection_age"},
    {"max_age_grace_closed", &Counters::max_age_grace_closed, "tlsgate_max_connection_age_grace_closed_total", nullptr,
     nullptr, "Client connections closed with streams still running at max_connection_age + grace"},
    {"access_log_lines", &Counters::access_log_lines, "tlsgate_access_log_lines_total", nullptr, nullptr,
     "Access log lines put in the shards' buffers"},
    {"access_log_dropped", &Counters::access_log_dropped, "tlsgate_access_log_dropped_total", nullptr, nullptr,
     "Access log lines dropped because the writer had not taken the shard's buffer yet"},
    {"drain_cut_connections", &Counters::drain_cut_connections, "tlsgate_drain_cut_connections_total", nullptr,
     nullptr, "Client connections the drain's end closed with streams still running"},
    {"client_certificates", &Counters::client_certificates, "tlsgate_client_certificates_total", nullptr, nullptr,
     "TLS handshakes that verified a client certificate (listeners with client_ca)"},
    {"body_buffer_resets", &Counters::body_buffer_resets, "tlsgate_body_buffer_resets_total", nullptr, nullptr,
     "Streams reset because the shard's body pool could not hold their bytes"},
    {"accept_paused", &Counters::accept_paused, "tlsgate_accept_paused_total", nullptr, nullptr,
     "Times accepting paused at a listener's max_connections"},
    {"fd_exhausted", &Counters::fd_exhausted, "tlsgate_fd_exhausted_total", nullptr, nullptr,
     "Accepts or backend connects that failed for lack of file descriptors"},
    {"send_stalled_closed", &Counters::send_stalled_closed, "tlsgate_send_stalled_closed_total", nullptr, nullptr,
     "Clients closed for not reading while the I/O pool was full"},
};

void write_counters(Exposition& x, const Counters& total) {
  const char* current = "";
  for (const CounterMetric& m : kCounterMetrics) {
    if (std::strcmp(current, m.family) != 0) {
      x.family(m.family, "counter", m.help);
      current = m.family;
    }
    if (m.label_name != nullptr) x.sample(m.family, {{m.label_name, m.label_value}}, total.*m.field);
    else x.sample(m.family, {}, total.*m.field);
  }
  x.family("tlsgate_handshake_failures_total", "counter", "TLS handshakes OpenSSL refused, by reason");
  for (int r = 0; r < static_cast<int>(tls::HandshakeFailure::Count); ++r)
    x.sample("tlsgate_handshake_failures_total", {{"reason", tls::to_string(static_cast<tls::HandshakeFailure>(r))}},
             total.handshake_failure_reasons[r]);
  static const char* versions[2] = {"TLSv1.2", "TLSv1.3"};
  x.family("tlsgate_ktls_offloaded_total", "counter", "Client connections whose record crypto went to kernel TLS");
  for (int v = 0; v < 2; ++v)
    for (int c = 0; c < 3; ++c)
      x.sample("tlsgate_ktls_offloaded_total",
               {{"version", versions[v]}, {"cipher", tls::to_string(static_cast<tls::KtlsCipher>(c))}},
               total.ktls_offloaded[v][c]);
  x.family("tlsgate_tls_record_violations_total", "counter",
           "Connections ended for a bad TLS record, by what was wrong (openssl: found by OpenSSL's record layer)");
  for (int v = 0; v < static_cast<int>(tls::TlsViolation::Count); ++v)
    x.sample("tlsgate_tls_record_violations_total",
             {{"kind", v == 0 ? "openssl" : tls::to_string(static_cast<tls::TlsViolation>(v))}}, total.tls_violations[v]);
}

double seconds(uint64_t us) { return static_cast<double>(us) / 1e6; }

void write_histogram(Exposition& x, const char* name, std::initializer_list<Exposition::Label> labels,
                     const Histogram& h) {
  double bounds[Histogram::kBuckets];
  for (size_t i = 0; i < Histogram::kBuckets; ++i) bounds[i] = seconds(Histogram::kBoundsUs[i]);
  x.histogram(name, labels, bounds, h.counts, Histogram::kBuckets, seconds(h.sum_us), h.count);
}

void write_listeners(Exposition& x, const MetricsInput& in) {
  const size_t n = in.listener_names.size();
  std::vector<Stats::Listener> sum(n);
  for (const Stats& s : in.shards)
    for (size_t i = 0; i < n && i < s.listeners.size(); ++i) {
      const Stats::Listener& l = s.listeners[i];
      sum[i].accepted += l.accepted;
      sum[i].open += l.open;
      for (int r = 0; r < static_cast<int>(shard::CloseReason::Count); ++r) sum[i].closed[r] += l.closed[r];
      sum[i].handshake.add(l.handshake);
    }
  x.family("tlsgate_connections_accepted_total", "counter", "Client connections accepted");
  for (size_t i = 0; i < n; ++i) x.sample("tlsgate_connections_accepted_total", {{"listener", in.listener_names[i]}}, sum[i].accepted);
  x.family("tlsgate_connections_open", "gauge", "Client connections open");
  for (size_t i = 0; i < n; ++i) x.sample("tlsgate_connections_open", {{"listener", in.listener_names[i]}}, sum[i].open);
  x.family("tlsgate_connections_closed_total", "counter", "Client connections closed, by reason");
  for (size_t i = 0; i < n; ++i)
    for (int r = 0; r < static_cast<int>(shard::CloseReason::Count); ++r)
      x.sample("tlsgate_connections_closed_total",
               {{"listener", in.listener_names[i]}, {"reason", shard::to_string(static_cast<shard::CloseReason>(r))}},
               sum[i].closed[r]);
  x.family("tlsgate_handshake_duration_seconds", "histogram",
           "From accept (PROXY header included) to the end of the TLS handshake");
  for (size_t i = 0; i < n; ++i)
    write_histogram(x, "tlsgate_handshake_duration_seconds", {{"listener", in.listener_names[i]}}, sum[i].handshake);
}

const char* status_label(size_t column) {
  static const char* names[Stats::kStatusColumns] = {"0",  "1",  "2",  "3",  "4",  "5",  "6",  "7",  "8",    "9",
                                                     "10", "11", "12", "13", "14", "15", "16", "other", "none"};
  return names[column];
}

// Streams by listener, cluster and grpc-status; durations by cluster.
void write_streams(Exposition& x, const MetricsInput& in) {
  std::map<std::pair<uint32_t, std::string>, std::vector<uint64_t>> rows;
  std::map<std::string, Histogram> durations;
  for (const Stats& s : in.shards) {
    for (const Stats::Streams& r : s.streams) {
      std::vector<uint64_t>& sum = rows[{r.listener, r.cluster}];
      sum.resize(Stats::kStatusColumns);
      for (size_t c = 0; c < Stats::kStatusColumns; ++c) sum[c] += r.by_status[c];
    }
    for (const Stats::Durations& d : s.stream_durations) durations[d.cluster].add(d.duration);
  }
  x.family("tlsgate_streams_total", "counter",
           "Client streams ended, by listener, cluster and the grpc-status sent to the client (none: reset, or "
           "an answer without grpc-status; cluster none: refused before routing)");
  for (const auto& [key, sum] : rows) {
    // The row of streams refused before routing shows once there is one.
    if (key.second == "none" && std::all_of(sum.begin(), sum.end(), [](uint64_t n) { return n == 0; })) continue;
    const std::string listener = key.first < in.listener_names.size() ? in.listener_names[key.first] : "?";
    for (size_t c = 0; c < Stats::kStatusColumns; ++c)
      if (sum[c] > 0 || c == 0)
        x.sample("tlsgate_streams_total",
                 {{"listener", listener}, {"cluster", key.second}, {"grpc_status", status_label(c)}}, sum[c]);
  }
  x.family("tlsgate_stream_duration_seconds", "histogram",
           "Client streams from their request HEADERS to their end, by cluster");
  for (const auto& [cluster, h] : durations) write_histogram(x, "tlsgate_stream_duration_seconds", {{"cluster", cluster}}, h);
}

void write_handshakes(Exposition& x, const MetricsInput& in) {
  // Summed by their text: shards hold their own rows.
  std::map<std::tuple<uint32_t, std::string, std::string, bool, bool>, uint64_t> kinds;
  for (const Stats& s : in.shards)
    for (const Stats::Handshakes& h : s.handshakes) kinds[{h.listener, h.version, h.cipher, h.resumed, h.ktls}] += h.count;
  x.family("tlsgate_handshakes_total", "counter",
           "Completed TLS handshakes by listener, version, cipher, full or resumed, and who does the record crypto");
  for (const auto& [k, count] : kinds) {
    const auto& [listener, version, cipher, resumed, kernel] = k;
    const std::string name = listener < in.listener_names.size() ? in.listener_names[listener] : "?";
    x.sample("tlsgate_handshakes_total",
             {{"listener", name},
              {"version", version},
              {"cipher", cipher},
              {"resumed", resumed ? "true" : "false"},
              {"record_layer", kernel ? "kernel" : "userspace"}},
             count);
  }
}

void write_clusters(Exposition& x, const MetricsInput& in) {
  struct Sum {
    uint64_t pending = 0, connections = 0, streams = 0;
    std::map<std::string, Stats::Endpoint> endpoints;
    std::map<std::pair<std::string, std::string>, uint64_t> states;  // (endpoint, state) -> shards
  };
  std::map<std::string, Sum> clusters;
  for (const Stats& s : in.shards)
    for (const Stats::Cluster& c : s.clusters) {
      Sum& sum = clusters[c.name];
      sum.pending += c.pending;
      sum.connections += c.connections;
      sum.streams += c.streams;
      for (const Stats::Endpoint& e : c.endpoints) {
        Stats::Endpoint& t = sum.endpoints[e.address];
        t.connections += e.connections;
        t.streams += e.streams;
        t.failures += e.failures;
        t.ejections += e.ejections;
        ++sum.states[{e.address, e.state}];
      }
    }
  x.family("tlsgate_cluster_pending_streams", "gauge", "Client streams on a cluster's backend connections");
  for (const auto& [name, c] : clusters) x.sample("tlsgate_cluster_pending_streams", {{"cluster", name}}, c.pending);
  x.family("tlsgate_cluster_connections", "gauge", "Backend connections of a cluster, open or opening");
  for (const auto& [name, c] : clusters) x.sample("tlsgate_cluster_connections", {{"cluster", name}}, c.connections);
  x.family("tlsgate_cluster_streams_total", "counter", "Client streams started on a cluster's backends");
  for (const auto& [name, c] : clusters) x.sample("tlsgate_cluster_streams_total", {{"cluster", name}}, c.streams);
  x.family("tlsgate_endpoint_connections", "gauge", "Backend connections of an endpoint, open or opening");
  for (const auto& [name, c] : clusters)
    for (const auto& [addr, e] : c.endpoints)
      x.sample("tlsgate_endpoint_connections", {{"cluster", name}, {"endpoint", addr}}, e.connections);
  x.family("tlsgate_endpoint_streams_total", "counter", "Client streams started on an endpoint");
  for (const auto& [name, c] : clusters)
    for (const auto& [addr, e] : c.endpoints)
      x.sample("tlsgate_endpoint_streams_total", {{"cluster", name}, {"endpoint", addr}}, e.streams);
  x.family("tlsgate_endpoint_failures_total", "counter", "Failed streams, connects and lost connections of an endpoint");
  for (const auto& [name, c] : clusters)
    for (const auto& [addr, e] : c.endpoints)
      x.sample("tlsgate_endpoint_failures_total", {{"cluster", name}, {"endpoint", addr}}, e.failures);
  x.family("tlsgate_endpoint_ejections_total", "counter", "Outlier ejections of an endpoint");
  for (const auto& [name, c] : clusters)
    for (const auto& [addr, e] : c.endpoints)
      x.sample("tlsgate_endpoint_ejections_total", {{"cluster", name}, {"endpoint", addr}}, e.ejections);
  x.family("tlsgate_endpoint_state", "gauge",
           "Shards that see an endpoint in a state (healthy, unhealthy by health checks, ejected, removed from DNS)");
  for (const auto& [name, c] : clusters)
    for (const auto& [key, shards] : c.states)
      x.sample("tlsgate_endpoint_state", {{"cluster", name}, {"endpoint", key.first}, {"state", key.second}}, shards);
}

// /proc/self/statm's resident pages.
uint64_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

void write_process(Exposition& x, const MetricsInput& in) {
  x.family("tlsgate_info", "gauge", "The running tlsgate's version");
  x.sample("tlsgate_info", {{"version", in.version}}, uint64_t{1});
  x.family("tlsgate_ready", "gauge", "1 when /ready answers 200");
  x.sample("tlsgate_ready", {}, uint64_t{in.ready ? 1u : 0u});
  x.family("tlsgate_access_log_lost_total", "counter", "Access log lines the writer could not write");
  x.sample("tlsgate_access_log_lost_total", {}, in.access_log_lost);
  x.family("tlsgate_config_reloads_total", "counter", "SIGHUP reloads, by result");
  x.sample("tlsgate_config_reloads_total", {{"result", "success"}}, in.reloads);
  x.sample("tlsgate_config_reloads_total", {{"result", "failure"}}, in.reload_failures);
  x.family("tlsgate_process_resident_memory_bytes", "gauge", "Resident set size");
  x.sample("tlsgate_process_resident_memory_bytes", {}, resident_bytes());
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  x.family("tlsgate_process_cpu_seconds_total", "counter", "User and system CPU time of the process");
  x.sample("tlsgate_process_cpu_seconds_total", {},
           static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
  x.family("tlsgate_process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch");
  x.sample("tlsgate_process_start_time_seconds", {}, in.start_time_seconds);
  x.family("tlsgate_shard_cpu_seconds_total", "counter", "CPU time of each shard thread");
  for (const Stats& s : in.shards)
    x.sample("tlsgate_shard_cpu_seconds_total", {{"shard", std::to_string(s.shard)}},
             static_cast<double>(s.cpu_ns) / 1e9);
  x.family("tlsgate_shards_unanswered", "gauge", "Shards that did not answer this scrape in time (their numbers are missing)");
  x.sample("tlsgate_shards_unanswered", {}, in.shards_unanswered);
}

void write_gauges(Exposition& x, const MetricsInput& in) {
  uint64_t streams = 0, ups = 0, io = 0, body = 0;
  for (const Stats& s : in.shards) {
    streams += s.streams_active;
    ups += s.upstream_connections;
    io += s.io_pool_bytes;
    body += s.body_pool_bytes;
  }
  x.family("tlsgate_streams_active", "gauge", "Client streams in flight");
  x.sample("tlsgate_streams_active", {}, streams);
  x.family("tlsgate_upstream_connections", "gauge", "Backend connections, open or opening");
  x.sample("tlsgate_upstream_connections", {}, ups);
  x.family("tlsgate_io_pool_bytes", "gauge", "Connection I/O buffers in use ([limits] chunk_pool)");
  x.sample("tlsgate_io_pool_bytes", {}, io);
  x.family("tlsgate_body_pool_bytes", "gauge", "Stream body buffers in use ([limits] body_buffer)");
  x.sample("tlsgate_body_pool_bytes", {}, body);
}

}  // namespace

std::vector<std::string> counter_keys_without_metric(const std::vector<std::string>& keys) {
  std::vector<std::string> missing;
  for (const std::string& k : keys) {
    bool found = false;
    for (const CounterMetric& m : kCounterMetrics) found = found || k == m.key;
    // Families with their own rows (by listener, version and cipher, kind).
    found = found || k == "accepted" || k == "handshakes" || k == "handshake_failures" || k.rfind("ktls_tls1.", 0) == 0 ||
            k == "tls_openssl_record_errors" || k.rfind("tls_violation_", 0) == 0;
    if (!found) missing.push_back(k);
  }
  return missing;
}

std::string render_metrics(const MetricsInput& in) {
  Exposition x;
  shard::Counters total;
  for (const Stats& s : in.shards) total.add(s.counters);
  write_process(x, in);
  write_listeners(x, in);
  write_handshakes(x, in);
  write_streams(x, in);
  write_counters(x, total);
  write_gauges(x, in);
  write_clusters(x, in);
  return x.take();
}

}  // namespace tlsgate::admin
