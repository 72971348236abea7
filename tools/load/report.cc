#include "report.hh"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <string_view>

namespace tlsgate::load {

const char* to_string(ErrorKind k) {
  switch (k) {
    case ErrorKind::Connect:
      return "connect";
    case ErrorKind::Tls:
      return "tls";
    case ErrorKind::H2:
      return "h2";
    case ErrorKind::Closed:
      return "closed";
    case ErrorKind::HttpStatus:
      return "http_status";
    case ErrorKind::GrpcStatus:
      return "grpc_status";
    case ErrorKind::Timeout:
      return "timeout";
    case ErrorKind::Length:
      return "length";
    case ErrorKind::Count_:
      break;
  }
  return "?";
}

void Stats::merge(const Stats& o) {
  conns_started += o.conns_started;
  conns_ok += o.conns_ok;
  conns_failed += o.conns_failed;
  handshakes_full += o.handshakes_full;
  handshakes_resumed += o.handshakes_resumed;
  calls_ok += o.calls_ok;
  calls_failed += o.calls_failed;
  held_closed += o.held_closed;
  for (size_t i = 0; i < kGrpcCodes; ++i) grpc_codes[i] += o.grpc_codes[i];
  grpc_other += o.grpc_other;
  for (size_t i = 0; i < kErrorKinds; ++i) errors[i] += o.errors[i];
  latency_us.merge(o.latency_us);
  last_start_ns = std::max(last_start_ns, o.last_start_ns);
  last_done_ns = std::max(last_done_ns, o.last_done_ns);
  max_lag_ns = std::max(max_lag_ns, o.max_lag_ns);
  if (first_error.empty()) first_error = o.first_error;
  if (cipher.empty()) cipher = o.cipher;
  if (group.empty()) group = o.group;
}

uint64_t Stats::error_total() const {
  uint64_t n = 0;
  for (uint64_t e : errors) n += e;
  return n;
}

bool all_ok(const Stats& s) { return s.error_total() == 0 && s.calls_failed == 0 && s.conns_failed == 0; }

namespace {

struct Rates {
  double conns = 0;     // connections started per second (rate mode)
  double conns_ok = 0;  // connections that ended OK per second (rate mode)
  double calls = 0;     // calls answered OK per second
};

// Achieved rates over the measured period as it really ran: connections up
// to the last one started (one interval after it, so a run that kept its
// schedule reports the asked rate); what ended OK (connections, calls) up to
// the last answer: the throughput a server above its capacity really gave.
Rates achieved(const Options& o, const RunInfo& run, const Stats& s) {
  Rates r;
  if (o.mode == Mode::Rate && s.last_start_ns > run.measured_start_ns && s.conns_started > 0) {
    // One interval after the last start (none in a closed loop).
    const double interval = o.rate > 0 ? 1.0 / o.rate : 0.0;
    const double span = static_cast<double>(s.last_start_ns - run.measured_start_ns) * 1e-9 + interval;
    r.conns = static_cast<double>(s.conns_started) / span;
  }
  if (s.last_done_ns > run.measured_start_ns) {
    const double span = static_cast<double>(s.last_done_ns - run.measured_start_ns) * 1e-9;
    r.calls = static_cast<double>(s.calls_ok) / span;
    if (o.mode == Mode::Rate) r.conns_ok = static_cast<double>(s.conns_ok) / span;
  }
  return r;
}

void appendf(std::string& out, const char* fmt, auto... args) {
  char buf[512];
  const int n = std::snprintf(buf, sizeof buf, fmt, args...);
  if (n > 0) out.append(buf, std::min(static_cast<size_t>(n), sizeof buf - 1));
}

std::string ms(uint64_t us) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f ms", static_cast<double>(us) / 1000.0);
  return buf;
}

void json_string(std::string& out, std::string_view s) {
  out.push_back('"');
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      appendf(out, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
}

constexpr std::array<std::pair<const char*, double>, 5> kPercentiles{
    {{"p50", 50.0}, {"p90", 90.0}, {"p99", 99.0}, {"p99.9", 99.9}, {"max", 100.0}}};

}  // namespace

std::string text_report(const Options& o, const RunInfo& run, const Stats& s, const Stats& warm) {
  const Rates r = achieved(o, run, s);
  std::string out;
  if (o.mode == Mode::Hold) {
    appendf(out, "tlsgate-load: %s %s, hold %" PRIu64 " connections", o.target.c_str(), o.path.c_str(),
            o.hold);
    if (o.concurrency > 0) appendf(out, " (at most %" PRIu64 " opening at a time)", o.concurrency);
    appendf(out, ", one call each, %u threads\n", run.threads);
  } else if (o.mode == Mode::Rate) {
    appendf(out, "tlsgate-load: %s %s, ", o.target.c_str(), o.path.c_str());
    if (o.rate > 0) {
      appendf(out, "rate %g connections/s", o.rate);
    } else {
      out += "connections as fast as possible";
    }
    if (o.concurrency > 0) appendf(out, " (at most %" PRIu64 " in flight)", o.concurrency);
    appendf(out, " x %" PRIu64 " calls%s%s, %u threads, ", o.calls, o.resume ? ", resume" : "",
            o.tickets_from.empty() ? "" : (" tickets from " + o.tickets_from).c_str(), run.threads);
    if (o.connections_total != 0) {
      appendf(out, "%" PRIu64 " connections measured after %gs warm-up\n", o.connections_total, o.warmup);
    } else {
      appendf(out, "%gs measured after %gs warm-up\n", o.duration, o.warmup);
    }
  } else {
    appendf(out, "tlsgate-load: %s %s, %" PRIu64 " connections x %" PRIu64 " streams, ", o.target.c_str(),
            o.path.c_str(), o.connections, o.streams);
    if (o.calls_per_second > 0) {
      appendf(out, "%g calls/s", o.calls_per_second);
    } else {
      out += "as fast as possible";
    }
    appendf(out, ", %u threads, %gs measured after %gs warm-up\n", run.threads, o.duration, o.warmup);
  }
  if (run.interrupted) out += "interrupted  the schedule was cut short by a signal\n";
  appendf(out, "connections  %" PRIu64 " started, %" PRIu64 " ok, %" PRIu64 " failed", s.conns_started,
          s.conns_ok, s.conns_failed);
  if (o.mode == Mode::Rate && o.rate > 0)
    appendf(out, "; %.1f/s started (asked %g/s), %.1f/s ok", r.conns, o.rate, r.conns_ok);
  if (o.mode == Mode::Rate && o.rate == 0) appendf(out, "; %.1f/s ok", r.conns_ok);
  out += "\n";
  if (o.mode == Mode::Hold)
    appendf(out,
            "held         %" PRIu64 " with their call answered OK, %" PRIu64
            " closed by the server while held\n",
            s.calls_ok, s.held_closed);
  appendf(out, "handshakes   %" PRIu64 " full, %" PRIu64 " resumed", s.handshakes_full, s.handshakes_resumed);
  if (!s.cipher.empty()) out += "; " + s.cipher + ", " + (s.group.empty() ? "?" : s.group);
  out += "\n";
  appendf(out, "calls        %" PRIu64 " ok, %" PRIu64 " failed; %.1f/s ok", s.calls_ok, s.calls_failed,
          r.calls);
  if (o.mode == Mode::Persistent && o.calls_per_second > 0) appendf(out, " (asked %g/s)", o.calls_per_second);
  out += "\n";
  out += "latency     ";
  for (const auto& [name, p] : kPercentiles)
    out += std::string(" ") + name + " " + ms(s.latency_us.percentile(p));
  appendf(out, "  (%" PRIu64 " calls, from each call's intended time)\n", s.latency_us.count());
  out += "grpc-status ";
  bool any = false;
  for (size_t c = 0; c < kGrpcCodes; ++c) {
    if (s.grpc_codes[c] == 0) continue;
    appendf(out, " %zu: %" PRIu64, c, s.grpc_codes[c]);
    any = true;
  }
  if (s.grpc_other != 0) appendf(out, " other: %" PRIu64, s.grpc_other);
  out += any || s.grpc_other != 0 ? "\n" : " none\n";
  out += "errors      ";
  if (s.error_total() == 0) {
    out += " none\n";
  } else {
    for (size_t k = 0; k < kErrorKinds; ++k)
      if (s.errors[k] != 0) appendf(out, " %s: %" PRIu64, to_string(static_cast<ErrorKind>(k)), s.errors[k]);
    out += "\n";
    out += "first error  " + s.first_error + "\n";
  }
  appendf(
      out,
      "generator    cpu %.2f s in %.2f s (%.0f%% of %u threads), started work up to %s after it was due\n",
      run.cpu_s, run.wall_s, run.wall_s > 0 ? 100.0 * run.cpu_s / (run.wall_s * run.threads) : 0.0,
      run.threads, ms(std::max(s.max_lag_ns, warm.max_lag_ns) / 1000).c_str());
  if (o.warmup > 0 || warm.error_total() != 0) {
    appendf(out,
            "warm-up      %" PRIu64 " connections, %" PRIu64 " calls ok, %" PRIu64 " failed, %" PRIu64
            " errors\n",
            warm.conns_started, warm.calls_ok, warm.calls_failed, warm.error_total());
    if (!warm.first_error.empty()) out += "warm-up error " + warm.first_error + "\n";
  }
  return out;
}

std::string json_report(const Options& o, const RunInfo& run, const Stats& s, const Stats& warm) {
  const Rates r = achieved(o, run, s);
  std::string out = "{";
  out += "\"target\":";
  json_string(out, o.target);
  out += ",\"path\":";
  json_string(out, o.path);
  appendf(out, ",\"mode\":\"%s\",\"threads\":%u,\"duration_s\":%g,\"warmup_s\":%g",
          o.mode == Mode::Rate   ? "rate"
          : o.mode == Mode::Hold ? "hold"
                                 : "persistent",
          run.threads, o.connections_total != 0 ? 0.0 : o.duration,
          o.warmup);  // 0: bounded by connections_total
  if (o.mode == Mode::Hold) {
    appendf(out, ",\"asked\":{\"hold\":%" PRIu64 ",\"concurrency\":%" PRIu64 "}", o.hold, o.concurrency);
    appendf(out, ",\"held\":{\"ok\":%" PRIu64 ",\"closed_by_server\":%" PRIu64 "}", s.calls_ok,
            s.held_closed);
  } else if (o.mode == Mode::Rate) {
    // connections_per_s 0: --rate max (a closed loop); concurrency 0: no cap.
    appendf(out,
            ",\"asked\":{\"connections_per_s\":%g,\"concurrency\":%" PRIu64
            ",\"calls_per_connection\":%" PRIu64 ",\"connections_total\":%" PRIu64
            ",\"resume\":%s,\"tickets_from\":",
            o.rate, o.concurrency, o.calls, o.connections_total, o.resume ? "true" : "false");
    json_string(out, o.tickets_from);
    out += "}";
  } else {
    appendf(out, ",\"asked\":{\"connections\":%" PRIu64 ",\"streams\":%" PRIu64 ",\"calls_per_s\":%g}",
            o.connections, o.streams, o.calls_per_second);
  }
  appendf(out,
          ",\"connections\":{\"started\":%" PRIu64 ",\"ok\":%" PRIu64 ",\"failed\":%" PRIu64
          ",\"started_per_s\":%.3f,\"ok_per_s\":%.3f}",
          s.conns_started, s.conns_ok, s.conns_failed, r.conns, r.conns_ok);
  appendf(out, ",\"handshakes\":{\"full\":%" PRIu64 ",\"resumed\":%" PRIu64 ",\"cipher\":", s.handshakes_full,
          s.handshakes_resumed);
  json_string(out, s.cipher);
  out += ",\"group\":";
  json_string(out, s.group);
  out += "}";
  appendf(out, ",\"calls\":{\"ok\":%" PRIu64 ",\"failed\":%" PRIu64 ",\"ok_per_s\":%.3f}", s.calls_ok,
          s.calls_failed, r.calls);
  appendf(out, ",\"latency_us\":{\"count\":%" PRIu64, s.latency_us.count());
  for (const auto& [name, p] : kPercentiles)
    appendf(out, ",\"%s\":%" PRIu64, name, s.latency_us.percentile(p));
  out += "},\"grpc_status\":{";
  bool first = true;
  for (size_t c = 0; c < kGrpcCodes; ++c) {
    if (s.grpc_codes[c] == 0) continue;
    appendf(out, "%s\"%zu\":%" PRIu64, first ? "" : ",", c, s.grpc_codes[c]);
    first = false;
  }
  if (s.grpc_other != 0) appendf(out, "%s\"other\":%" PRIu64, first ? "" : ",", s.grpc_other);
  out += "},\"errors\":{";
  for (size_t k = 0; k < kErrorKinds; ++k)
    appendf(out, "%s\"%s\":%" PRIu64, k == 0 ? "" : ",", to_string(static_cast<ErrorKind>(k)), s.errors[k]);
  out += "},\"first_error\":";
  json_string(out, s.first_error);
  appendf(out,
          ",\"warmup\":{\"connections\":%" PRIu64 ",\"calls_ok\":%" PRIu64 ",\"calls_failed\":%" PRIu64
          ",\"errors\":%" PRIu64 "}",
          warm.conns_started, warm.calls_ok, warm.calls_failed, warm.error_total());
  appendf(out, ",\"generator\":{\"cpu_s\":%.3f,\"wall_s\":%.3f,\"max_lag_us\":%" PRIu64 "}", run.cpu_s,
          run.wall_s, std::max(s.max_lag_ns, warm.max_lag_ns) / 1000);
  appendf(out, ",\"interrupted\":%s", run.interrupted ? "true" : "false");
  appendf(out, ",\"ok\":%s}\n", all_ok(s) && all_ok(warm) ? "true" : "false");
  return out;
}

}  // namespace tlsgate::load
