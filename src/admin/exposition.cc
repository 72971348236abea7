// Prometheus text exposition format 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/).
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <string>

#include "tlsgate/admin.hh"

namespace tlsgate::admin {

namespace {

// HELP text escapes backslash and newline; label values also the quote.
void append_escaped(std::string& out, std::string_view s, bool quote) {
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (c == '"' && quote) out += "\\\"";
    else out += c;
  }
}

void append_double(std::string& out, double v) {
  if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
    return;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  out += buf;
}

}  // namespace

void Exposition::family(std::string_view name, std::string_view type, std::string_view help) {
  text_ += "# HELP ";
  text_ += name;
  text_ += ' ';
  append_escaped(text_, help, false);
  text_ += "\n# TYPE ";
  text_ += name;
  text_ += ' ';
  text_ += type;
  text_ += '\n';
}

void Exposition::labels(std::initializer_list<Label> labels, std::string_view extra_name,
                        std::string_view extra_value) {
  if (labels.size() == 0 && extra_name.empty()) return;
  text_ += '{';
  bool first = true;
  auto one = [&](std::string_view n, std::string_view v) {
    if (!first) text_ += ',';
    first = false;
    text_ += n;
    text_ += "=\"";
    append_escaped(text_, v, true);
    text_ += '"';
  };
  for (const Label& l : labels) one(l.name, l.value);
  if (!extra_name.empty()) one(extra_name, extra_value);
  text_ += '}';
}

void Exposition::sample(std::string_view name, std::initializer_list<Label> l, uint64_t value) {
  text_ += name;
  labels(l);
  text_ += ' ';
  text_ += std::to_string(value);
  text_ += '\n';
}

void Exposition::sample(std::string_view name, std::initializer_list<Label> l, double value) {
  text_ += name;
  labels(l);
  text_ += ' ';
  append_double(text_, value);
  text_ += '\n';
}

void Exposition::histogram(std::string_view name, std::initializer_list<Label> l, const double* bounds,
                           const uint64_t* counts, size_t n, double sum, uint64_t count) {
  const std::string bucket = std::string(name) + "_bucket";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= n; ++i) {
    std::string le;
    if (i < n) {
      cumulative += counts[i];
      append_double(le, bounds[i]);
    } else {
      le = "+Inf";
    }
    text_ += bucket;
    labels(l, "le", le);
    text_ += ' ';
    text_ += std::to_string(i < n ? cumulative : count);
    text_ += '\n';
  }
  sample(std::string(name) + "_sum", l, sum);
  sample(std::string(name) + "_count", l, count);
}

}  // namespace tlsgate::admin
