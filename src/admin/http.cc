// The admin listener's HTTP/1.1: the request head parser and the answers.
// Bytes come from whoever can reach the admin address: every length is
// bounded and anything unexpected is an error status, never a crash.
#include <cstring>
#include <string>

#include "tlsgate/admin.hh"

namespace tlsgate::admin {

namespace {

// RFC 9110 tchar: what a method may be made of.
bool is_token_char(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != '\0';
}

// Visible ASCII: what a request target may be made of (no spaces, no
// control bytes, no bytes above 0x7e).
bool is_target_char(char c) { return c > 0x20 && c < 0x7f; }

ParseResult error(int status, const char* why) {
  ParseResult r;
  r.status = ParseStatus::Error;
  r.error = status;
  r.why = why;
  return r;
}

// Where the head ends (the index after the empty line), or npos. Bare LF
// line ends are accepted as RFC 9112 2.2 allows.
size_t head_end(std::string_view in) {
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '\n') continue;
    if (i + 1 < in.size() && in[i + 1] == '\n') return i + 2;
    if (i + 2 < in.size() && in[i + 1] == '\r' && in[i + 2] == '\n') return i + 3;
  }
  return std::string_view::npos;
}

std::string_view strip_cr(std::string_view line) {
  return !line.empty() && line.back() == '\r' ? line.substr(0, line.size() - 1) : line;
}

ParseResult parse_request_line(std::string_view line) {
  const size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos || sp1 == 0) return error(400, "malformed request line");
  const size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || sp2 == sp1 + 1) return error(400, "malformed request line");
  const std::string_view method = line.substr(0, sp1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  for (char c : method)
    if (!is_token_char(c)) return error(400, "bad method");
  for (char c : target)
    if (!is_target_char(c)) return error(400, "bad request target");
  if (target.front() != '/') return error(400, "request target is not a path");
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    if (version.substr(0, 5) == "HTTP/") return error(505, "HTTP version not supported");
    return error(400, "malformed request line");
  }
  ParseResult r;
  r.status = ParseStatus::Done;
  r.request.method = method;
  r.request.path = target.substr(0, target.find('?'));
  return r;
}

// A header field line: a token, a colon, a value without control bytes
// other than HTAB.
bool valid_field_line(std::string_view line) {
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  for (size_t i = 0; i < colon; ++i)
    if (!is_token_char(line[i])) return false;
  for (size_t i = colon + 1; i < line.size(); ++i) {
    const auto c = static_cast<unsigned char>(line[i]);
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  }
  return true;
}

std::string answer(int status, const char* reason, std::string_view content_type, std::string_view body,
                   bool head_only) {
  std::string r = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\n";
  r += "Content-Type: ";
  r += content_type;
  r += "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n";
  if (status == 405) r += "Allow: GET, HEAD\r\n";
  r += "\r\n";
  if (!head_only) r += body;
  return r;
}

constexpr std::string_view kText = "text/plain; charset=utf-8";
// Prometheus text exposition format 0.0.4.
constexpr std::string_view kPrometheus = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace

ParseResult parse_request(std::string_view in) {
  const size_t end = head_end(in.substr(0, std::min(in.size(), kMaxHead)));
  if (end == std::string_view::npos) {
    // A request line can be rejected before the head is complete.
    const size_t nl = in.find('\n');
    if (nl != std::string_view::npos) {
      ParseResult line = parse_request_line(strip_cr(in.substr(0, nl)));
      if (line.status == ParseStatus::Error) return line;
    } else if (in.size() >= kMaxHead) {
      return error(414, "request line too long");
    }
    if (in.size() >= kMaxHead) return error(431, "request head too large");
    return ParseResult{};
  }
  std::string_view head = in.substr(0, end);
  size_t nl = head.find('\n');
  ParseResult r = parse_request_line(strip_cr(head.substr(0, nl)));
  if (r.status != ParseStatus::Done) return r;
  for (size_t pos = nl + 1; pos < head.size();) {
    const size_t next = head.find('\n', pos);
    const std::string_view line = strip_cr(head.substr(pos, next - pos));
    pos = next + 1;
    if (line.empty()) break;
    // Obsolete line folding (a line starting with whitespace) is refused,
    // as RFC 9112 5.2 allows.
    if (!valid_field_line(line)) return error(400, "malformed header field");
  }
  return r;
}

std::string respond(const Request& req, const Handlers& h) {
  const bool head_only = req.method == "HEAD";
  const bool known = req.path == "/healthz" || req.path == "/ready" || req.path == "/metrics" || req.path == "/config";
  if (!known) return answer(404, "Not Found", kText, "not found\n", head_only);
  if (req.method != "GET" && !head_only) return answer(405, "Method Not Allowed", kText, "GET only\n", false);
  if (req.path == "/healthz") return answer(200, "OK", kText, "ok\n", head_only);
  if (req.path == "/ready") {
    if (h.ready && h.ready()) return answer(200, "OK", kText, "ready\n", head_only);
    return answer(503, "Service Unavailable", kText, "not ready\n", head_only);
  }
  if (req.path == "/metrics") return answer(200, "OK", kPrometheus, h.metrics ? h.metrics() : "", head_only);
  return answer(200, "OK", "application/toml; charset=utf-8", h.config ? h.config() : "", head_only);
}

}  // namespace tlsgate::admin
