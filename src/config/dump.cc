// The running configuration as TOML, after defaults (the admin's /config).
// Every key the loader reads is written; a test loads the output again and
// compares. Files are named by path: nothing here reads a key file.
#include <cstdio>
#include <string>

#include "tlsgate/config.hh"

namespace tlsgate::config {

namespace {

std::string quoted(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

// The largest unit that divides the value exactly.
std::string duration(std::chrono::milliseconds d) {
  const auto ms = d.count();
  if (ms != 0 && ms % 3'600'000 == 0) return quoted(std::to_string(ms / 3'600'000) + "h");
  if (ms != 0 && ms % 60'000 == 0) return quoted(std::to_string(ms / 60'000) + "m");
  if (ms % 1000 == 0) return quoted(std::to_string(ms / 1000) + "s");
  return quoted(std::to_string(ms) + "ms");
}

struct Writer {
  std::string out;
  void line(std::string_view key, const std::string& value) {
    out += key;
    out += " = ";
    out += value;
    out += '\n';
  }
  void str(std::string_view key, std::string_view v) { line(key, quoted(v)); }
  void num(std::string_view key, uint64_t v) { line(key, std::to_string(v)); }
  void dur(std::string_view key, std::chrono::milliseconds v) { line(key, duration(v)); }
  void flag(std::string_view key, bool v) { line(key, v ? "true" : "false"); }
  void header(std::string_view h) {
    out += '\n';
    out += h;
    out += '\n';
  }
};

void write_ciphers(Writer& w, const CipherPolicy& p) {
  w.str("ciphers", p.ciphers);
  w.str("ciphersuites", p.ciphersuites);
  w.str("groups", p.groups);
}

void write_certificate(Writer& w, const CertificateFiles& c) {
  w.str("certificate", c.certificate);
  w.str("private_key", c.private_key);
  if (!c.ocsp_response.empty()) w.str("ocsp_response", c.ocsp_response);
}

void write_listener(Writer& w, const Listener& l) {
  w.header("[[listeners]]");
  w.str("name", l.name);
  w.str("listen", l.listen.text);
  w.str("proxy_protocol", to_string(l.proxy_protocol));
  w.str("cluster", l.cluster);
  w.dur("handshake_timeout", l.handshake_timeout);
  w.dur("idle_timeout", l.idle_timeout);
  w.num("max_concurrent_streams", l.max_concurrent_streams);
  w.num("max_connections", l.max_connections);
  w.num("h2_glitch_budget", l.h2_glitch_budget);
  w.num("h2_glitch_rate", l.h2_glitch_rate);
  w.num("h2_reset_budget", l.h2_reset_budget);
  // 0 = off: the key unset (the loader refuses "0s" for these).
  if (l.max_connection_age.count() > 0) w.dur("max_connection_age", l.max_connection_age);
  if (l.max_connection_age_grace.count() > 0) w.dur("max_connection_age_grace", l.max_connection_age_grace);
  if (l.keepalive_interval.count() > 0) w.dur("keepalive_interval", l.keepalive_interval);
  w.dur("keepalive_timeout", l.keepalive_timeout);
  w.header("[listeners.tls]");
  if (!l.tls.certificate_list) write_certificate(w, l.tls.certificates.front());
  if (!l.tls.ticket_keys.empty()) w.str("ticket_keys", l.tls.ticket_keys);  // the path, never a key
  std::string alpn = "[";
  for (size_t i = 0; i < l.tls.alpn.size(); ++i) alpn += (i ? ", " : "") + quoted(l.tls.alpn[i]);
  w.line("alpn", alpn + "]");
  w.str("min_version", to_string(l.tls.min_version));
  w.str("ktls", to_string(l.tls.ktls));
  w.str("record_layer", to_string(l.tls.record_layer));
  w.num("session_tickets", l.tls.session_tickets);
  write_ciphers(w, l.tls.cipher_policy);
  if (!l.tls.client_ca.empty()) {  // a path: the CA's certificates are public, but /config shows paths only
    w.str("client_ca", l.tls.client_ca);
    w.str("client_auth", to_string(l.tls.client_auth));
  }
  if (l.tls.certificate_list) {
    for (const CertificateFiles& c : l.tls.certificates) {
      w.header("[[listeners.tls.certificates]]");
      write_certificate(w, c);
    }
  }
  for (const Route& r : l.routes) {
    w.header("[[listeners.routes]]");
    if (!r.authority.empty()) w.str("authority", r.authority);
    if (!r.path_prefix.empty()) w.str("path_prefix", r.path_prefix);
    w.str("cluster", r.cluster);
  }
}

// A responder has no backend: its keys only (the others would not parse
// beside `respond`, and the dump must read back).
void write_responder(Writer& w, const Cluster& c) {
  w.str("respond", to_string(c.respond));
  w.dur("delay", c.respond_delay);
  if (c.max_grpc_timeout.count() > 0) w.dur("max_grpc_timeout", c.max_grpc_timeout);
  if (c.respond != Respond::Status) return;
  w.num("status", c.respond_status);
  if (!c.respond_message.empty()) w.str("message", c.respond_message);
  w.num("response_bytes", c.response_bytes);
}

void write_cluster(Writer& w, const Cluster& c) {
  w.header("[[clusters]]");
  w.str("name", c.name);
  if (c.respond != Respond::Off) {
    write_responder(w, c);
    return;
  }
  std::string eps = "[";
  for (size_t i = 0; i < c.endpoints.size(); ++i) {
    const int name = i < c.endpoint_name.size() ? c.endpoint_name[i] : -1;
    eps += (i ? ", " : "") + quoted(name >= 0 ? c.dns_names[static_cast<size_t>(name)].text : c.endpoints[i].text);
  }
  w.line("endpoints", eps + "]");
  w.str("lb", to_string(c.lb));
  w.dur("connect_timeout", c.connect_timeout);
  w.dur("dns_refresh", c.dns_refresh);
  w.num("max_connections", c.max_connections);
  w.num("max_pending_streams", c.max_pending_streams);
  if (c.max_grpc_timeout.count() > 0) w.dur("max_grpc_timeout", c.max_grpc_timeout);  // 0: no cap, the key unset
  w.num("retries", c.retries);
  w.num("retry_buffer", c.retry_buffer);
  w.dur("keepalive_interval", c.keepalive_interval);
  w.dur("keepalive_timeout", c.keepalive_timeout);
  w.dur("idle_timeout", c.idle_timeout);
  w.str("all_unhealthy", to_string(c.all_unhealthy));
  if (c.health_check.enabled) {
    w.header("[clusters.health_check]");
    w.dur("interval", c.health_check.interval);
    w.dur("timeout", c.health_check.timeout);
    w.str("service", c.health_check.service);
    w.num("healthy_threshold", c.health_check.healthy_threshold);
    w.num("unhealthy_threshold", c.health_check.unhealthy_threshold);
  }
  w.header("[clusters.outlier]");
  w.num("consecutive_failures", c.outlier.consecutive_failures);
  w.dur("base_ejection", c.outlier.base_ejection);
  w.dur("max_ejection", c.outlier.max_ejection);
  w.num("max_ejection_percent", c.outlier.max_ejection_percent);
  if (c.tls.enabled) {
    w.header("[clusters.tls]");
    w.str("ca", c.tls.ca);
    if (!c.tls.server_name.empty()) w.str("server_name", c.tls.server_name);
    if (!c.tls.certificate.empty()) w.str("certificate", c.tls.certificate);
    if (!c.tls.private_key.empty()) w.str("private_key", c.tls.private_key);
    write_ciphers(w, c.tls.cipher_policy);
  }
}

}  // namespace

std::string to_toml(const Config& cfg) {
  Writer w;
  w.out = "# " + cfg.path + " as tlsgate runs it, defaults included\n";
  if (cfg.workers_auto) w.str("workers", "auto");
  else w.num("workers", cfg.workers);
  if (cfg.admin.enabled) {
    w.header("[admin]");
    w.str("listen", cfg.admin.listen.text);
  }
  if (cfg.access_log.enabled) {
    w.header("[access_log]");
    w.str("path", cfg.access_log.path);
    w.str("format", to_string(cfg.access_log.format));
  }
  w.header("[drain]");
  w.dur("delay", cfg.drain.delay);
  w.dur("timeout", cfg.drain.timeout);
  w.header("[limits]");
  w.num("body_buffer", cfg.limits.body_buffer);
  w.num("chunk_pool", cfg.limits.chunk_pool);
  for (const Listener& l : cfg.listeners) write_listener(w, l);
  for (const Cluster& c : cfg.clusters) write_cluster(w, c);
  return w.out;
}

}  // namespace tlsgate::config
