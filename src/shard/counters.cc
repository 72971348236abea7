// The shard's counters: printed on the stopped: line (main.cc), summed over
// shards with add(). The h2 and upstream modules count their own; take()
// copies theirs in when the shard stops.
#include <cstdio>
#include <string>

#include "tlsgate/cluster_manager.hh"
#include "tlsgate/h2.hh"
#include "tlsgate/shard.hh"

namespace tlsgate::shard {

std::string Counters::describe() const {
  char buf[4096];
  std::snprintf(buf, sizeof buf,
                "accepted=%lu handshakes=%lu handshake_failures=%lu handshake_timeouts=%lu http1_rejected=%lu "
                "idle_closed=%lu downstream_protocol_errors=%lu tls_userspace=%lu tls_unknown_server_name=%lu upstream_connects=%lu "
                "upstream_connect_failures=%lu upstream_lost=%lu streams_forwarded=%lu streams_responded=%lu streams_unavailable=%lu "
                "streams_reset_by_client=%lu streams_reset_by_upstream=%lu header_limit_resets=%lu "
                "deadline_exceeded=%lu retries=%lu circuit_breaker_streams=%lu circuit_breaker_connections=%lu "
                "no_healthy_endpoint=%lu endpoints_ejected=%lu endpoints_ejection_refused=%lu "
                "health_check_failures=%lu health_checks_passed=%lu upstream_idle_closed=%lu upstream_keepalive_timeouts=%lu dns_updates=%lu "
                "proxy_headers=%lu proxy_errors=%lu "
                "h2_glitch_empty_data=%lu h2_glitch_priority=%lu h2_glitch_unknown_frames=%lu h2_glitch_pings=%lu "
                "h2_glitch_settings=%lu h2_glitch_window_updates=%lu h2_glitch_invalid_frames=%lu h2_glitch_stale_resets=%lu "
                "h2_streams_cancelled=%lu h2_closed_glitch_budget=%lu h2_closed_reset_budget=%lu "
                "h2_closed_shard_reset_budget=%lu h2_closed_flood=%lu h2_closed_bad_preface=%lu",
                accepted, handshakes, handshake_failures, handshake_timeouts, http1_rejected, idle_closed,
                downstream_protocol_errors, tls_userspace, tls_unknown_server_name, upstream_connects, upstream_connect_failures, upstream_lost,
                streams_forwarded, streams_responded, streams_unavailable, streams_reset_by_client, streams_reset_by_upstream,
                header_limit_resets, deadline_exceeded, retries, circuit_breaker_streams, circuit_breaker_connections,
                no_healthy_endpoint, endpoints_ejected, endpoints_ejection_refused, health_check_failures, health_checks_passed,
                upstream_idle_closed, upstream_keepalive_timeouts, dns_updates, proxy_headers, proxy_errors,
                h2_glitch_empty_data,
                h2_glitch_priority, h2_glitch_unknown_frames, h2_glitch_pings, h2_glitch_settings,
                h2_glitch_window_updates, h2_glitch_invalid_frames, h2_glitch_stale_resets, h2_streams_cancelled, h2_closed_glitch_budget,
                h2_closed_reset_budget, h2_closed_shard_reset_budget, h2_closed_flood, h2_closed_bad_preface);
  std::string s = buf;
  static const char* versions[2] = {"tls1.2", "tls1.3"};
  for (int v = 0; v < 2; ++v)
    for (int c = 0; c < 3; ++c)
      if (ktls_offloaded[v][c] > 0)
        s += std::string(" ktls_") + versions[v] + "_" + tls::to_string(static_cast<tls::KtlsCipher>(c)) + "=" +
             std::to_string(ktls_offloaded[v][c]);
  std::snprintf(buf, sizeof buf,
                " ktls_unsupported_cipher=%lu ktls_failed=%lu ktls_close_notify=%lu ktls_alerts=%lu "
                "ktls_key_update_closed=%lu ktls_unexpected_records=%lu",
                ktls_unsupported_cipher, ktls_failed, ktls_close_notify, ktls_alerts, ktls_key_update_closed,
                ktls_unexpected_records);
  s += buf;
  std::snprintf(buf, sizeof buf,
                " body_buffer_resets=%lu accept_paused=%lu fd_exhausted=%lu send_stalled_closed=%lu"
                " access_log_lines=%lu access_log_dropped=%lu",
                body_buffer_resets, accept_paused, fd_exhausted, send_stalled_closed, access_log_lines,
                access_log_dropped);
  s += buf;
  std::snprintf(buf, sizeof buf,
                " keepalive_pings=%lu keepalive_timeouts=%lu max_age_goaways=%lu max_age_grace_closed=%lu"
                " drain_cut_connections=%lu client_certificates=%lu",
                keepalive_pings, keepalive_timeouts, max_age_goaways, max_age_grace_closed, drain_cut_connections,
                client_certificates);
  s += buf;
  std::snprintf(buf, sizeof buf, " tls_ocsp_stapled=%lu tls_ocsp_stale=%lu", tls_ocsp_stapled, tls_ocsp_stale);
  s += buf;
  // Index 0 (none): protocol errors OpenSSL's own record layer found.
  s += " tls_openssl_record_errors=" + std::to_string(tls_violations[0]);
  for (int v = 1; v < static_cast<int>(tls::TlsViolation::Count); ++v)
    s += std::string(" tls_violation_") + tls::to_string(static_cast<tls::TlsViolation>(v)) + "=" +
         std::to_string(tls_violations[v]);
  return s;
}

void Counters::add(const Counters& o) {
  accepted += o.accepted;
  handshakes += o.handshakes;
  handshake_failures += o.handshake_failures;
  for (int r = 0; r < static_cast<int>(tls::HandshakeFailure::Count); ++r)
    handshake_failure_reasons[r] += o.handshake_failure_reasons[r];
  handshake_timeouts += o.handshake_timeouts;
  http1_rejected += o.http1_rejected;
  idle_closed += o.idle_closed;
  downstream_protocol_errors += o.downstream_protocol_errors;
  upstream_connects += o.upstream_connects;
  upstream_connect_failures += o.upstream_connect_failures;
  upstream_lost += o.upstream_lost;
  streams_forwarded += o.streams_forwarded;
  streams_responded += o.streams_responded;
  streams_unavailable += o.streams_unavailable;
  streams_reset_by_client += o.streams_reset_by_client;
  streams_reset_by_upstream += o.streams_reset_by_upstream;
  header_limit_resets += o.header_limit_resets;
  deadline_exceeded += o.deadline_exceeded;
  retries += o.retries;
  circuit_breaker_streams += o.circuit_breaker_streams;
  circuit_breaker_connections += o.circuit_breaker_connections;
  no_healthy_endpoint += o.no_healthy_endpoint;
  endpoints_ejected += o.endpoints_ejected;
  endpoints_ejection_refused += o.endpoints_ejection_refused;
  health_check_failures += o.health_check_failures;
  health_checks_passed += o.health_checks_passed;
  upstream_idle_closed += o.upstream_idle_closed;
  upstream_keepalive_timeouts += o.upstream_keepalive_timeouts;
  dns_updates += o.dns_updates;
  proxy_headers += o.proxy_headers;
  proxy_errors += o.proxy_errors;
  h2_glitch_empty_data += o.h2_glitch_empty_data;
  h2_glitch_priority += o.h2_glitch_priority;
  h2_glitch_unknown_frames += o.h2_glitch_unknown_frames;
  h2_glitch_pings += o.h2_glitch_pings;
  h2_glitch_settings += o.h2_glitch_settings;
  h2_glitch_window_updates += o.h2_glitch_window_updates;
  h2_glitch_invalid_frames += o.h2_glitch_invalid_frames;
  h2_glitch_stale_resets += o.h2_glitch_stale_resets;
  h2_streams_cancelled += o.h2_streams_cancelled;
  h2_closed_glitch_budget += o.h2_closed_glitch_budget;
  h2_closed_reset_budget += o.h2_closed_reset_budget;
  h2_closed_shard_reset_budget += o.h2_closed_shard_reset_budget;
  h2_closed_flood += o.h2_closed_flood;
  h2_closed_bad_preface += o.h2_closed_bad_preface;
  tls_userspace += o.tls_userspace;
  tls_unknown_server_name += o.tls_unknown_server_name;
  for (int v = 0; v < 2; ++v)
    for (int c = 0; c < 3; ++c) ktls_offloaded[v][c] += o.ktls_offloaded[v][c];
  ktls_unsupported_cipher += o.ktls_unsupported_cipher;
  ktls_failed += o.ktls_failed;
  ktls_close_notify += o.ktls_close_notify;
  ktls_alerts += o.ktls_alerts;
  ktls_key_update_closed += o.ktls_key_update_closed;
  ktls_unexpected_records += o.ktls_unexpected_records;
  for (int v = 0; v < static_cast<int>(tls::TlsViolation::Count); ++v) tls_violations[v] += o.tls_violations[v];
  body_buffer_resets += o.body_buffer_resets;
  accept_paused += o.accept_paused;
  fd_exhausted += o.fd_exhausted;
  access_log_lines += o.access_log_lines;
  access_log_dropped += o.access_log_dropped;
  send_stalled_closed += o.send_stalled_closed;
  drain_cut_connections += o.drain_cut_connections;
  client_certificates += o.client_certificates;
  keepalive_pings += o.keepalive_pings;
  keepalive_timeouts += o.keepalive_timeouts;
  max_age_goaways += o.max_age_goaways;
  max_age_grace_closed += o.max_age_grace_closed;
  tls_ocsp_stapled += o.tls_ocsp_stapled;
  tls_ocsp_stale += o.tls_ocsp_stale;
}


void Counters::take(const h2::Counters& h) {
  streams_forwarded = h.streams_forwarded;
  streams_responded = h.streams_responded;
  streams_unavailable = h.streams_unavailable;
  streams_reset_by_client = h.streams_reset_by_client;
  streams_reset_by_upstream = h.streams_reset_by_upstream;
  header_limit_resets = h.header_limit_resets;
  deadline_exceeded = h.deadline_exceeded;
  retries = h.retries;
  body_buffer_resets = h.body_buffer_resets;
  h2_glitch_empty_data = h.glitch_empty_data;
  h2_glitch_priority = h.glitch_priority;
  h2_glitch_unknown_frames = h.glitch_unknown_frames;
  h2_glitch_pings = h.glitch_pings;
  h2_glitch_settings = h.glitch_settings;
  h2_glitch_window_updates = h.glitch_window_updates;
  h2_glitch_invalid_frames = h.glitch_invalid_frames;
  h2_glitch_stale_resets = h.glitch_stale_resets;
  h2_streams_cancelled = h.streams_cancelled;
  h2_closed_glitch_budget = h.closed_glitch_budget;
  h2_closed_reset_budget = h.closed_reset_budget;
  h2_closed_shard_reset_budget = h.closed_shard_reset_budget;
  h2_closed_flood = h.closed_flood;
  h2_closed_bad_preface = h.closed_bad_preface;
}

void Counters::take(const upstream::Counters& u) {
  upstream_connects = u.connects;
  upstream_connect_failures = u.connect_failures;
  circuit_breaker_streams = u.circuit_breaker_streams;
  circuit_breaker_connections = u.circuit_breaker_connections;
  no_healthy_endpoint = u.no_healthy_endpoint;
  endpoints_ejected = u.endpoints_ejected;
  endpoints_ejection_refused = u.endpoints_ejection_refused;
  health_check_failures = u.health_check_failures;
  health_checks_passed = u.health_checks_passed;
  upstream_idle_closed = u.idle_closed;
  upstream_keepalive_timeouts = u.keepalive_timeouts;
  upstream_lost += u.keepalive_timeouts;  // the shard counted the other losses
  dns_updates = u.dns_updates;
}

}  // namespace tlsgate::shard
