// Configuration loading and validation. The only file that sees toml++.
// Over 600 lines on purpose: toml++ may be included here only (check-includes
// holds it to this module, and its header costs seconds per translation
// unit), and the walk is one table of keys with their checks.
//
// Flow: toml++ parses the text (syntax errors carry its position), then one
// pass walks the tree table by table. In each table unknown keys are reported
// before missing ones (a misspelt required key then reads "unknown key", not
// "missing"), then every known key is converted and range-checked. Checks that
// touch the file system (certificate and key readable) run last, after the
// document is known to be well-formed; the first failure is thrown as a
// ConfigError with one line: "<file>:<line>:<column>: <key>: <problem>".
#include "tlsgate/config.hh"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>

// toml++ is included here and nowhere else.
#include <toml++/toml.h>

namespace tlsgate::config {

namespace {

using std::chrono::milliseconds;

constexpr uint64_t max_duration_ms = 8760ull * 3600 * 1000;  // 365 days
constexpr size_t max_file_size = 16 << 20;                   // a config, not a data set
constexpr size_t max_quoted = 64;                            // bytes of a value echoed back
constexpr unsigned max_workers = 256;

bool valid_host_name(std::string_view host);

std::string errno_text(int err) { return std::generic_category().message(err); }

// Error messages are one line: control bytes become escapes. Applied to the
// whole message, so file names and toml++ descriptions are covered too.
std::string one_line(std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

// A user value echoed in a message: double-quoted, escaped, truncated.
std::string quote(std::string_view s) {
  std::string out = "\"";
  size_t n = std::min(s.size(), max_quoted);
  for (size_t i = 0; i < n; ++i) {
    char c = s[i];
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  if (n < s.size()) out += "...";
  out += '"';
  return one_line(out);
}

bool is_bare_key(std::string_view k) {
  if (k.empty()) return false;
  return std::all_of(k.begin(), k.end(), [](unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

bool is_name(std::string_view k) {
  if (k.empty()) return false;
  return std::all_of(k.begin(), k.end(), [](unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
  });
}

// "listeners[0]" + "tls" -> "listeners[0].tls"; odd keys are quoted as in TOML.
std::string join(const std::string& path, std::string_view key) {
  std::string k = is_bare_key(key) ? std::string(key) : quote(key);
  return path.empty() ? k : path + "." + k;
}

std::string index(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }

struct Pos {
  uint32_t line = 0;
  uint32_t column = 0;
};

Pos pos_of(const toml::source_region& r, Pos fallback) {
  if (r.begin.line == 0) return fallback;
  return {r.begin.line, r.begin.column};
}

const char* type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::none: break;
  }
  return "nothing";
}

std::string format_error(const std::string& file, Pos pos, const std::string& key,
                         const std::string& problem) {
  std::string msg = file;
  if (pos.line != 0) msg += ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column);
  msg += ": ";
  if (!key.empty()) msg += key + ": ";
  msg += problem;
  return one_line(msg);
}

// A value being read: where it is and what it is called.
struct Value {
  const toml::node* node;
  std::string key;
  Pos pos;
};

// One TOML table being read; knows its name and position for messages.
class Table {
 public:
  Table(const std::string& file, const toml::table& table, std::string path, Pos pos)
      : file_(file), table_(table), path_(std::move(path)), pos_(pos) {}

  const std::string& path() const { return path_; }
  Pos pos() const { return pos_; }
  const std::string& file() const { return file_; }

  [[noreturn]] void fail(Pos pos, const std::string& key, const std::string& problem) const {
    throw ConfigError(format_error(file_, pos, key, problem));
  }
  [[noreturn]] void fail(const Value& v, const std::string& problem) const { fail(v.pos, v.key, problem); }

  // Reports the unknown key that comes first in the document.
  void check_keys(std::initializer_list<std::string_view> allowed) const {
    const toml::key* first = nullptr;
    Pos first_pos{};
    for (auto&& [k, v] : table_) {
      (void)v;
      if (std::find(allowed.begin(), allowed.end(), k.str()) != allowed.end()) continue;
      Pos p = pos_of(k.source(), pos_);
      if (first == nullptr || p.line < first_pos.line ||
          (p.line == first_pos.line && p.column < first_pos.column)) {
        first = &k;
        first_pos = p;
      }
    }
    if (first != nullptr) fail(first_pos, join(path_, first->str()), "unknown key");
  }

  std::optional<Value> get(std::string_view key) const {
    const toml::node* n = table_.get(key);
    if (n == nullptr) return std::nullopt;
    return Value{n, join(path_, key), pos_of(n->source(), pos_)};
  }

  Value require(std::string_view key) const {
    if (auto v = get(key)) return *v;
    fail(pos_, join(path_, key), "required key is missing");
  }

  Origin origin(const Value& v) const { return Origin{file_, v.key, v.pos.line, v.pos.column}; }

  Table sub(const Value& v) const {
    const toml::table* t = v.node->as_table();
    if (t == nullptr) fail(v, std::string("expected a table, got ") + type_name(*v.node));
    return Table(file_, *t, v.key, v.pos);
  }

  std::string string(const Value& v) const {
    const auto* s = v.node->as_string();
    if (s == nullptr) fail(v, std::string("expected a string, got ") + type_name(*v.node));
    return s->get();
  }

  int64_t integer(const Value& v, int64_t lo, int64_t hi) const {
    std::string expected = "expected an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
    const auto* i = v.node->as_integer();
    if (i == nullptr) fail(v, expected + ", got " + type_name(*v.node));
    int64_t n = i->get();
    if (n < lo || n > hi) fail(v, expected + ", got " + std::to_string(n));
    return n;
  }

  template <typename E>
  E choice(const Value& v, std::initializer_list<std::pair<std::string_view, E>> choices) const {
    std::string expected = "expected one of";
    bool first = true;
    for (const auto& c : choices) {
      expected += first ? " " : ", ";
      expected += quote(c.first);
      first = false;
    }
    const auto* s = v.node->as_string();
    if (s == nullptr) fail(v, expected + ", got " + type_name(*v.node));
    for (const auto& c : choices) {
      if (c.first == s->get()) return c.second;
    }
    fail(v, expected + ", got " + quote(s->get()));
  }

  // A duration that may be "0s".
  milliseconds duration_or_zero(const Value& v) const {
    const auto* s = v.node->as_string();
    if (s == nullptr) {
      fail(v, std::string("expected a duration string such as \"10s\", got ") + type_name(*v.node));
    }
    try {
      return parse_duration(s->get());
    } catch (const std::invalid_argument& e) {
      fail(v, e.what());
    }
  }

  // A duration that must be > 0.
  milliseconds duration(const Value& v) const {
    const auto* s = v.node->as_string();
    if (s == nullptr) {
      fail(v, std::string("expected a duration string such as \"10s\", got ") + type_name(*v.node));
    }
    milliseconds d;
    try {
      d = parse_duration(s->get());
    } catch (const std::invalid_argument& e) {
      fail(v, e.what());
    }
    if (d.count() <= 0) fail(v, "must be greater than zero, got " + quote(s->get()));
    return d;
  }

  SocketAddress address(const Value& v, bool allow_names) const {
    std::string text = string(v);
    try {
      return parse_address(text, allow_names);
    } catch (const std::invalid_argument& e) {
      fail(v, e.what());
    }
  }

  const toml::array& array(const Value& v) const {
    const auto* a = v.node->as_array();
    if (a == nullptr) fail(v, std::string("expected an array, got ") + type_name(*v.node));
    return *a;
  }

  Value element(const Value& parent, const toml::array& a, size_t i) const {
    const toml::node& n = a[i];
    return Value{&n, index(parent.key, i), pos_of(n.source(), parent.pos)};
  }

 private:
  const std::string& file_;
  const toml::table& table_;
  std::string path_;
  Pos pos_;
};

// A file that must be readable, checked once the whole document is valid.
struct FileCheck {
  enum Kind { Plain, PrivateKey, TicketKeys };
  std::string path;
  Origin origin;
  Kind kind = Plain;
};

constexpr size_t kMaxCertificates = 10000;
constexpr size_t kMaxTicketFile = 64 << 10;  // 64 keys are 7 KiB

std::optional<std::string> readable_problem(const std::string& path) {
  if (path.empty()) return std::string("must not be empty");
  if (path.find('\0') != std::string::npos) return std::string("contains a NUL character");
  // O_NONBLOCK: naming a FIFO must not hang the check.
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    return "cannot read '" + path + "': " + errno_text(err);
  }
  struct stat st {};
  int rc = ::fstat(fd, &st);
  int err = errno;
  ::close(fd);
  if (rc != 0) return "cannot read '" + path + "': " + errno_text(err);
  if (S_ISDIR(st.st_mode)) return "cannot read '" + path + "': " + errno_text(EISDIR);
  if (!S_ISREG(st.st_mode)) return "'" + path + "' is not a regular file";
  return std::nullopt;
}

// Secrets others can read: a private key is a warning (some deployments
// share a group on purpose), ticket keys readable by everyone an error (they
// decrypt every resumed session's traffic until rotated).
void check_file_mode(const std::string& config_name, const FileCheck& f, std::vector<std::string>& warnings) {
  if (f.kind == FileCheck::Plain) return;
  struct stat st {};
  if (::stat(f.path.c_str(), &st) != 0) return;  // readable_problem() just opened it
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  if (f.kind == FileCheck::PrivateKey && (st.st_mode & 077) != 0)
    warnings.push_back(format_error(config_name, {f.origin.line, f.origin.column}, f.origin.key,
                                    "private key '" + f.path + "' is readable by group or others (mode " + mode +
                                        "); chmod 600 it"));
  if (f.kind == FileCheck::TicketKeys && (st.st_mode & S_IROTH) != 0)
    throw ConfigError(format_error(config_name, {f.origin.line, f.origin.column}, f.origin.key,
                                   "'" + f.path + "' is readable by others (mode " + mode +
                                       "): whoever reads it can decrypt resumed sessions; chmod 600 (or 640)"));
}

std::vector<TicketKey> load_ticket_keys(const std::string& config_name, const TlsSettings& tls) {
  const Origin& o = tls.ticket_keys_origin;
  auto fail = [&](const std::string& problem) {
    return ConfigError(format_error(config_name, {o.line, o.column}, o.key, problem));
  };
  int fd = ::open(tls.ticket_keys.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) throw fail("cannot read '" + tls.ticket_keys + "': " + errno_text(errno));
  std::string text(kMaxTicketFile + 1, '\0');
  size_t got = 0;
  while (got < text.size()) {
    ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (got > kMaxTicketFile) throw fail("'" + tls.ticket_keys + "' is larger than 64 KiB; not a ticket key file");
  text.resize(got);
  try {
    std::vector<TicketKey> keys = parse_ticket_keys(text, tls.ticket_keys);
    explicit_bzero(text.data(), text.size());
    return keys;
  } catch (const std::invalid_argument& e) {
    explicit_bzero(text.data(), text.size());
    throw fail(e.what());
  }
}

bool same_address(const SocketAddress& a, const SocketAddress& b) {
  if (a.family() != b.family()) return false;
  if (a.family() == AF_INET) {
    const auto& x = reinterpret_cast<const sockaddr_in&>(a.storage);
    const auto& y = reinterpret_cast<const sockaddr_in&>(b.storage);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  if (a.family() == AF_INET6) {
    const auto& x = reinterpret_cast<const sockaddr_in6&>(a.storage);
    const auto& y = reinterpret_cast<const sockaddr_in6&>(b.storage);
    return x.sin6_port == y.sin6_port && x.sin6_scope_id == y.sin6_scope_id &&
           std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof x.sin6_addr) == 0;
  }
  return false;
}

unsigned online_cpus() {
  unsigned n = std::thread::hardware_concurrency();
  if (n == 0) {
    long c = ::sysconf(_SC_NPROCESSORS_ONLN);
    n = c > 0 ? static_cast<unsigned>(std::min<long>(c, max_workers)) : 1;
  }
  return std::clamp(n, 1u, max_workers);
}

void read_workers(const Table& root, Config& cfg) {
  auto v = root.get("workers");
  if (!v) return;
  const std::string expected = "expected \"auto\" or an integer from 1 to " + std::to_string(max_workers);
  if (const auto* s = v->node->as_string()) {
    if (s->get() != "auto") root.fail(*v, expected + ", got " + quote(s->get()));
    cfg.workers = online_cpus();
    cfg.workers_auto = true;
    return;
  }
  const auto* i = v->node->as_integer();
  if (i == nullptr) root.fail(*v, expected + ", got " + type_name(*v->node));
  if (i->get() < 1 || i->get() > static_cast<int64_t>(max_workers)) {
    root.fail(*v, expected + ", got " + std::to_string(i->get()));
  }
  cfg.workers = static_cast<unsigned>(i->get());
  cfg.workers_auto = false;
}

void read_admin(const Table& root, Config& cfg) {
  auto v = root.get("admin");
  if (!v) return;
  Table t = root.sub(*v);
  t.check_keys({"listen"});
  Value listen = t.require("listen");
  cfg.admin.listen = t.address(listen, false);
  cfg.admin.listen_origin = t.origin(listen);
  cfg.admin.enabled = true;
}

void read_drain(const Table& root, Config& cfg) {
  auto v = root.get("drain");
  if (!v) return;
  Table t = root.sub(*v);
  t.check_keys({"delay", "timeout"});
  if (auto d = t.get("delay")) cfg.drain.delay = t.duration_or_zero(*d);
  if (auto d = t.get("timeout")) cfg.drain.timeout = t.duration(*d);
}

bool has_control(std::string_view s);

// A path the gateway opens for appending: "-" or a file name.
void read_access_log(const Table& root, Config& cfg) {
  auto v = root.get("access_log");
  if (!v) return;
  Table t = root.sub(*v);
  t.check_keys({"path", "format"});
  Value path = t.require("path");
  cfg.access_log.path = t.string(path);
  if (cfg.access_log.path.empty()) t.fail(path, "expected \"-\" (standard output) or a file path, got \"\"");
  if (has_control(cfg.access_log.path)) t.fail(path, "a control character in the path");
  cfg.access_log.path_origin = t.origin(path);
  if (auto f = t.get("format"))
    cfg.access_log.format = t.choice<AccessLogFormat>(*f, {{"json", AccessLogFormat::Json}, {"text", AccessLogFormat::Text}});
  cfg.access_log.enabled = true;
}

void read_limits(const Table& root, Config& cfg) {
  auto v = root.get("limits");
  if (!v) return;
  Table t = root.sub(*v);
  t.check_keys({"body_buffer", "chunk_pool"});
  // At least one chunk each, at most 1 TiB: a typo, not a bound, beyond.
  constexpr int64_t lo = 16 * 1024, hi = int64_t{1} << 40;
  if (auto b = t.get("body_buffer")) cfg.limits.body_buffer = static_cast<uint64_t>(t.integer(*b, lo, hi));
  if (auto c = t.get("chunk_pool")) cfg.limits.chunk_pool = static_cast<uint64_t>(t.integer(*c, lo, hi));
}

// No OpenSSL name has a control character; a NUL would cut the C string OpenSSL reads short,
// and a line break would split the one-line error that echoes an entry.
bool has_control(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](unsigned char c) { return c < 0x20 || c == 0x7f; });
}

// One OpenSSL list (ciphers, ciphersuites, groups): a string in OpenSSL's
// syntax, passed on as written, or an array with one entry per string, joined
// with ':' here (the form alpn uses, and a long list can take a line per
// entry). Only the shape is checked here; OpenSSL judges the names when the
// tls::Context is made.
std::string read_openssl_list(const Table& t, const Value& v) {
  if (const auto* s = v.node->as_string()) {
    const std::string& list = s->get();
    if (list.empty()) t.fail(v, "must not be empty");
    if (has_control(list)) t.fail(v, "contains a control character");
    return list;
  }
  const auto* a = v.node->as_array();
  if (a == nullptr)
    t.fail(v, std::string("expected a string or an array of strings, got ") + type_name(*v.node));
  if (a->empty()) t.fail(v, "must not be empty");
  std::string list;
  for (size_t i = 0; i < a->size(); ++i) {
    Value e = t.element(v, *a, i);
    std::string entry = t.string(e);
    if (entry.empty()) t.fail(e, "must not be empty");
    if (has_control(entry)) t.fail(e, "contains a control character");
    // In the array form the array separates entries; a ':' inside one would
    // silently make it two.
    if (entry.find(':') != std::string::npos) t.fail(e, "one entry per string, got " + quote(entry));
    if (i > 0) list += ':';
    list += entry;
  }
  return list;
}

// The keys shared by [listeners.tls] and [clusters.tls]. A key that is not
// written keeps its default and the table's position, so a message about it
// still points somewhere useful.
void read_cipher_policy(const Table& t, CipherPolicy& p) {
  struct Key {
    std::string_view name;
    std::string& list;
    Origin& origin;
  };
  for (const Key& k : {Key{"ciphers", p.ciphers, p.ciphers_origin},
                       Key{"ciphersuites", p.ciphersuites, p.ciphersuites_origin},
                       Key{"groups", p.groups, p.groups_origin}}) {
    if (auto v = t.get(k.name)) {
      k.list = read_openssl_list(t, *v);
      k.origin = t.origin(*v);
    } else {
      k.origin = Origin{t.file(), join(t.path(), k.name), t.pos().line, t.pos().column};
    }
  }
}

// mTLS from clients: client_ca turns it on, client_auth only says how strict
// it is, so it is refused alone rather than silently meaning nothing.
void read_client_auth(const Table& t, TlsSettings& tls, std::vector<FileCheck>& files) {
  auto ca = t.get("client_ca");
  auto mode = t.get("client_auth");
  if (mode && !ca) t.fail(*mode, "needs client_ca (the CA file that signs the client certificates)");
  if (!ca) return;
  tls.client_ca = t.string(*ca);
  tls.client_ca_origin = t.origin(*ca);
  tls.client_auth = ClientAuth::Require;
  if (mode)
    tls.client_auth = t.choice<ClientAuth>(*mode, {{"require", ClientAuth::Require}, {"optional", ClientAuth::Optional}});
  files.push_back({tls.client_ca, tls.client_ca_origin});
}

// One certificate's keys, in [listeners.tls] itself or in an entry of its
// certificates list.
CertificateFiles read_certificate_files(const Table& t, std::vector<FileCheck>& files) {
  CertificateFiles c;
  Value cert = t.require("certificate");
  Value key = t.require("private_key");
  c.certificate = t.string(cert);
  c.certificate_origin = t.origin(cert);
  c.private_key = t.string(key);
  c.private_key_origin = t.origin(key);
  files.push_back({c.certificate, c.certificate_origin});
  files.push_back({c.private_key, c.private_key_origin, FileCheck::PrivateKey});
  if (auto v = t.get("ocsp_response")) {
    c.ocsp_response = t.string(*v);
    c.ocsp_response_origin = t.origin(*v);
    files.push_back({c.ocsp_response, c.ocsp_response_origin});
  }
  return c;
}

// Either one pair in the table or a list of them, never both: a pair beside
// a list would leave unclear which one is the default.
void read_certificates(const Table& t, TlsSettings& tls, std::vector<FileCheck>& files) {
  auto list = t.get("certificates");
  if (!list) {
    tls.certificates.push_back(read_certificate_files(t, files));
    return;
  }
  for (std::string_view single : {"certificate", "private_key", "ocsp_response"})
    if (auto v = t.get(single))
      t.fail(*v, "not allowed beside \"certificates\"; move it into the list's first entry");
  const auto* a = list->node->as_array();
  if (a == nullptr) t.fail(*list, std::string("expected an array of tables, got ") + type_name(*list->node));
  if (a->empty()) t.fail(*list, "at least one certificate is required");
  if (a->size() > kMaxCertificates)
    t.fail(*list, "at most " + std::to_string(kMaxCertificates) + " certificates, got " + std::to_string(a->size()));
  for (size_t i = 0; i < a->size(); ++i) {
    Table e = t.sub(t.element(*list, *a, i));
    e.check_keys({"certificate", "private_key", "ocsp_response"});
    tls.certificates.push_back(read_certificate_files(e, files));
  }
  tls.certificate_list = true;
}

void read_tls(const Table& t, TlsSettings& tls, std::vector<FileCheck>& files) {
  t.check_keys({"certificate", "private_key", "ocsp_response", "certificates", "ticket_keys", "alpn", "min_version",
                "ktls", "record_layer", "session_tickets", "ciphers", "ciphersuites", "groups", "client_ca",
                "client_auth"});
  read_certificates(t, tls, files);
  if (auto v = t.get("ticket_keys")) {
    tls.ticket_keys = t.string(*v);
    tls.ticket_keys_origin = t.origin(*v);
    files.push_back({tls.ticket_keys, tls.ticket_keys_origin, FileCheck::TicketKeys});
  }

  if (auto v = t.get("alpn")) {
    const toml::array& a = t.array(*v);
    tls.alpn.clear();
    for (size_t i = 0; i < a.size(); ++i) {
      Value e = t.element(*v, a, i);
      std::string proto = t.string(e);
      if (proto.empty()) t.fail(e, "must not be empty");
      if (proto.size() > 255) {
        t.fail(e, "a protocol name is at most 255 bytes, got " + std::to_string(proto.size()));
      }
      if (std::find(tls.alpn.begin(), tls.alpn.end(), proto) != tls.alpn.end()) {
        t.fail(e, "duplicate protocol " + quote(proto));
      }
      tls.alpn.push_back(std::move(proto));
    }
    if (std::find(tls.alpn.begin(), tls.alpn.end(), "h2") == tls.alpn.end()) {
      t.fail(*v, "must contain \"h2\" (gRPC runs over HTTP/2)");
    }
  }
  if (auto v = t.get("min_version")) {
    tls.min_version = t.choice<TlsVersion>(*v, {{"1.2", TlsVersion::Tls12}, {"1.3", TlsVersion::Tls13}});
  }
  if (auto v = t.get("ktls")) {
    tls.ktls = t.choice<Ktls>(*v, {{"auto", Ktls::Auto}, {"on", Ktls::On}, {"off", Ktls::Off}});
    tls.ktls_origin = t.origin(*v);
  } else {
    tls.ktls_origin = Origin{t.file(), join(t.path(), "ktls"), t.pos().line, t.pos().column};
  }
  if (auto v = t.get("record_layer")) {
    tls.record_layer =
        t.choice<RecordLayer>(*v, {{"tlsgate", RecordLayer::Tlsgate}, {"openssl", RecordLayer::Openssl}});
  }
  if (auto v = t.get("session_tickets")) tls.session_tickets = static_cast<uint32_t>(t.integer(*v, 0, 8));
  read_cipher_policy(t, tls.cipher_policy);
  read_client_auth(t, tls, files);
}

std::string read_name(const Table& t, const Value& v) {
  std::string name = t.string(v);
  if (!is_name(name)) {
    t.fail(v, "expected a name of letters, digits, '_', '.' or '-', got " + quote(name));
  }
  return name;
}

// Lower-case ASCII: authorities are compared case-insensitively.
std::string lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

void read_routes(const Table& t, const Value& v, Listener& l) {
  const auto* a = v.node->as_array();
  if (a == nullptr) t.fail(v, std::string("expected an array of tables, got ") + type_name(*v.node));
  for (size_t i = 0; i < a->size(); ++i) {
    Table r = t.sub(t.element(v, *a, i));
    r.check_keys({"authority", "path_prefix", "cluster"});
    Route route;
    auto authority = r.get("authority");
    auto prefix = r.get("path_prefix");
    if (!authority && !prefix) r.fail(r.pos(), r.path(), "a route needs \"authority\", \"path_prefix\" or both");
    if (authority) {
      route.authority = lower(r.string(*authority));
      if (route.authority.empty() || route.authority.size() > 255 ||
          route.authority.find_first_of(" \t/\\@") != std::string::npos || route.authority.find('\0') != std::string::npos)
        r.fail(*authority, "expected a host or host:port, got " + quote(route.authority));
    }
    if (prefix) {
      route.path_prefix = r.string(*prefix);
      if (route.path_prefix.empty() || route.path_prefix[0] != '/')
        r.fail(*prefix, "must start with '/', got " + quote(route.path_prefix));
    }
    Value cluster = r.require("cluster");
    route.cluster = r.string(cluster);
    route.cluster_origin = r.origin(cluster);
    l.routes.push_back(std::move(route));
  }
}

// Off when the key is left out. Below a second, an age would make clients
// reconnect in a loop and a keepalive would ping faster than the 100 ms tick
// can time it; neither serves the balancer these keys are for.
milliseconds at_least_a_second(const Table& t, const Value& v) {
  const milliseconds d = t.duration(v);
  if (d < milliseconds(1000)) t.fail(v, "must be at least 1s, got " + quote(t.string(v)));
  return d;
}

void read_rebalancing(const Table& t, Listener& l) {
  if (auto v = t.get("max_connection_age")) l.max_connection_age = at_least_a_second(t, *v);
  if (auto v = t.get("max_connection_age_grace")) {
    // A grace counts from the age GOAWAY: without an age it would never start.
    if (l.max_connection_age.count() == 0)
      t.fail(*v, "needs max_connection_age (the grace starts at its GOAWAY)");
    l.max_connection_age_grace = t.duration(*v);
  }
  if (auto v = t.get("keepalive_interval")) l.keepalive_interval = at_least_a_second(t, *v);
  if (auto v = t.get("keepalive_timeout")) l.keepalive_timeout = at_least_a_second(t, *v);
}

void read_listeners(const Table& root, Config& cfg, std::vector<Origin>& cluster_refs,
                    std::vector<FileCheck>& files) {
  Value list = root.require("listeners");
  const auto* a = list.node->as_array();
  if (a == nullptr) root.fail(list, std::string("expected an array of tables, got ") + type_name(*list.node));
  if (a->empty()) root.fail(list, "at least one listener is required");
  std::vector<Value> names;
  for (size_t i = 0; i < a->size(); ++i) {
    Table t = root.sub(root.element(list, *a, i));
    t.check_keys({"name", "listen", "proxy_protocol", "cluster", "handshake_timeout", "idle_timeout",
                  "max_concurrent_streams", "max_connections", "h2_glitch_budget", "h2_glitch_rate",
                  "h2_reset_budget", "max_connection_age", "max_connection_age_grace", "keepalive_interval",
                  "keepalive_timeout", "tls", "routes"});
    Listener l;
    Value name = t.require("name");
    l.name = read_name(t, name);
    for (size_t j = 0; j < cfg.listeners.size(); ++j) {
      if (cfg.listeners[j].name == l.name) {
        t.fail(name, "duplicate listener name " + quote(l.name) + " (also " + names[j].key + ")");
      }
    }
    Value listen = t.require("listen");
    l.listen = t.address(listen, false);
    l.listen_origin = t.origin(listen);
    // Port 0 lets the kernel choose, so two of those never clash.
    if (l.listen.port() != 0) {
      for (const Listener& other : cfg.listeners) {
        if (same_address(other.listen, l.listen)) {
          t.fail(listen,
                 "address " + quote(l.listen.text) + " is already used by " + other.listen_origin.key);
        }
      }
    }
    if (auto v = t.get("proxy_protocol")) {
      l.proxy_protocol = t.choice<ProxyProtocol>(*v, {{"off", ProxyProtocol::Off},
                                                      {"v1", ProxyProtocol::V1},
                                                      {"v2", ProxyProtocol::V2},
                                                      {"auto", ProxyProtocol::Auto}});
    }
    Value cluster = t.require("cluster");
    l.cluster = t.string(cluster);
    cluster_refs.push_back(t.origin(cluster));
    if (auto v = t.get("handshake_timeout")) l.handshake_timeout = t.duration(*v);
    if (auto v = t.get("idle_timeout")) l.idle_timeout = t.duration(*v);
    if (auto v = t.get("max_concurrent_streams")) {
      l.max_concurrent_streams = static_cast<uint32_t>(t.integer(*v, 1, std::numeric_limits<int32_t>::max()));
    }
    if (auto v = t.get("max_connections")) {
      l.max_connections = static_cast<uint32_t>(t.integer(*v, 1, std::numeric_limits<int32_t>::max()));
    }
    // Budgets of 0 would close every connection at its first glitch; the
    // upper bound (2^30) keeps the token arithmetic far from overflow.
    constexpr int64_t kMaxBudget = int64_t{1} << 30;
    if (auto v = t.get("h2_glitch_budget")) l.h2_glitch_budget = static_cast<uint32_t>(t.integer(*v, 1, kMaxBudget));
    if (auto v = t.get("h2_glitch_rate")) l.h2_glitch_rate = static_cast<uint32_t>(t.integer(*v, 0, kMaxBudget));
    if (auto v = t.get("h2_reset_budget")) l.h2_reset_budget = static_cast<uint32_t>(t.integer(*v, 1, kMaxBudget));
    read_rebalancing(t, l);
    read_tls(t.sub(t.require("tls")), l.tls, files);
    if (auto v = t.get("routes")) read_routes(t, *v, l);
    names.push_back(name);
    cfg.listeners.push_back(std::move(l));
  }
}

void read_health_check(const Table& t, HealthCheck& hc) {
  t.check_keys({"interval", "timeout", "service", "healthy_threshold", "unhealthy_threshold"});
  hc.enabled = true;
  if (auto v = t.get("interval")) hc.interval = t.duration(*v);
  if (auto v = t.get("timeout")) {
    hc.timeout = t.duration(*v);
    if (hc.timeout > hc.interval) t.fail(*v, "must not be longer than interval");
  } else {
    hc.timeout = std::min(hc.timeout, hc.interval);
  }
  if (auto v = t.get("service")) {
    hc.service = t.string(*v);
    if (hc.service.size() > 1024) t.fail(*v, "at most 1024 bytes");
  }
  if (auto v = t.get("healthy_threshold")) hc.healthy_threshold = static_cast<uint32_t>(t.integer(*v, 1, 100));
  if (auto v = t.get("unhealthy_threshold")) hc.unhealthy_threshold = static_cast<uint32_t>(t.integer(*v, 1, 100));
}

void read_outlier(const Table& t, Outlier& o) {
  t.check_keys({"consecutive_failures", "base_ejection", "max_ejection", "max_ejection_percent"});
  if (auto v = t.get("consecutive_failures")) o.consecutive_failures = static_cast<uint32_t>(t.integer(*v, 0, 1000));
  if (auto v = t.get("max_ejection_percent")) o.max_ejection_percent = static_cast<uint32_t>(t.integer(*v, 0, 100));
  if (auto v = t.get("base_ejection")) o.base_ejection = t.duration(*v);
  if (auto v = t.get("max_ejection")) {
    o.max_ejection = t.duration(*v);
    if (o.max_ejection < o.base_ejection) t.fail(*v, "must not be shorter than base_ejection");
  } else {
    o.max_ejection = std::max(o.max_ejection, o.base_ejection);
  }
}

void read_upstream_tls(const Table& t, UpstreamTls& tls, std::vector<FileCheck>& files) {
  t.check_keys({"ca", "server_name", "certificate", "private_key", "ciphers", "ciphersuites", "groups"});
  tls.enabled = true;
  tls.origin = Origin{t.file(), t.path(), t.pos().line, t.pos().column};
  Value ca = t.require("ca");
  tls.ca = t.string(ca);
  files.push_back({tls.ca, t.origin(ca)});
  if (auto v = t.get("server_name")) {
    tls.server_name = t.string(*v);
    if (tls.server_name.empty() || !valid_host_name(tls.server_name))
      t.fail(*v, "expected a host name, got " + quote(tls.server_name));
  }
  auto cert = t.get("certificate");
  auto key = t.get("private_key");
  if (cert && !key) t.fail(*cert, "needs private_key too (mTLS)");
  if (key && !cert) t.fail(*key, "needs certificate too (mTLS)");
  if (cert) {
    tls.certificate = t.string(*cert);
    tls.private_key = t.string(*key);
    files.push_back({tls.certificate, t.origin(*cert)});
    files.push_back({tls.private_key, t.origin(*key), FileCheck::PrivateKey});
  }
  read_cipher_policy(t, tls.cipher_policy);
}

// "name:port" of an endpoint that parse_address accepted with names allowed:
// numeric ones also parse without names.
std::optional<DnsName> dns_name_of(const std::string& text) {
  try {
    (void)parse_address(text, false);
    return std::nullopt;
  } catch (const std::invalid_argument&) {
  }
  size_t colon = text.rfind(':');
  DnsName n;
  n.host = text.substr(0, colon);
  n.port = static_cast<uint16_t>(std::stoul(text.substr(colon + 1)));
  n.text = text;
  return n;
}

// grpc-message travels percent-encoded (gRPC's PROTOCOL-HTTP2): done once
// here so that a call copies the bytes as they are.
std::string percent_encoded(const std::string& text) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (c >= 0x20 && c <= 0x7e && c != '%') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

// respond = "echo" | "status" and its keys. A responder has no backend, so
// the keys about reaching one are mistakes, named in the error.
void read_responder(const Table& t, Cluster& c) {
  auto respond = t.get("respond");
  if (!respond) {
    for (const char* key : {"status", "message", "response_bytes"})
      if (auto v = t.get(key)) t.fail(*v, "needs respond = \"status\"");
    if (auto v = t.get("delay")) t.fail(*v, "needs respond (it delays the gateway's own answer)");
    return;
  }
  c.respond = t.choice<Respond>(*respond, {{"echo", Respond::Echo}, {"status", Respond::Status}});
  // Every key about reaching a backend; max_grpc_timeout stays (it caps the
  // client's deadline, which a responder honours too).
  for (const char* key : {"endpoints", "health_check", "outlier", "tls", "lb", "connect_timeout", "dns_refresh",
                          "max_connections", "max_pending_streams", "retries", "retry_buffer", "keepalive_interval",
                          "keepalive_timeout", "idle_timeout", "all_unhealthy"})
    if (auto v = t.get(key)) t.fail(*v, "not allowed with respond (the gateway answers; there is no backend)");
  if (auto v = t.get("delay")) {
    // A service time to simulate, not a hold: past a minute a call only pins
    // a stream slot.
    c.respond_delay = t.duration_or_zero(*v);
    if (c.respond_delay > std::chrono::minutes(1)) t.fail(*v, "at most 1m, got " + quote(t.string(*v)));
  }
  if (c.respond == Respond::Echo) {
    for (const char* key : {"status", "message", "response_bytes"})
      if (auto v = t.get(key)) t.fail(*v, "needs respond = \"status\" (echo answers with the request's bytes)");
    return;
  }
  if (auto v = t.get("status")) c.respond_status = static_cast<uint32_t>(t.integer(*v, 0, 16));
  if (auto v = t.get("message")) {
    // Clients show grpc-message only beside a non-zero status: a message
    // with status 0 would be a setting nobody ever sees.
    if (c.respond_status == 0) t.fail(*v, "needs a non-zero status (clients ignore grpc-message with status 0)");
    c.respond_message = t.string(*v);
    if (c.respond_message.size() > 128) t.fail(*v, "at most 128 bytes");
    if (has_control(c.respond_message)) t.fail(*v, "contains a control character");
    c.respond_message_wire = percent_encoded(c.respond_message);
  }
  if (auto v = t.get("response_bytes")) {
    c.response_bytes = static_cast<uint32_t>(t.integer(*v, 0, Cluster::kMaxResponseBytes));
    // The message is a protobuf field of zeros (tag and length: 2 bytes at least).
    if (c.response_bytes == 1) t.fail(*v, "0 or at least 2 (a protobuf field takes 2 bytes), got 1");
  }
}

void read_endpoints(const Table& t, Cluster& c) {
  Value eps = t.require("endpoints");
  const toml::array& e = t.array(eps);
  if (e.empty()) t.fail(eps, "at least one endpoint is required");
  for (size_t j = 0; j < e.size(); ++j) {
    Value ev = t.element(eps, e, j);
    SocketAddress addr = t.address(ev, true);
    if (addr.port() == 0) t.fail(ev, "an endpoint needs a port from 1 to 65535, got " + quote(addr.text));
    for (const SocketAddress& other : c.endpoints)
      if (other.text == addr.text) t.fail(ev, "duplicate endpoint " + quote(addr.text));
    if (auto dns = dns_name_of(addr.text)) {
      c.endpoint_name.push_back(static_cast<int>(c.dns_names.size()));
      c.dns_names.push_back(std::move(*dns));
    } else {
      c.endpoint_name.push_back(-1);
    }
    c.endpoints.push_back(std::move(addr));
  }
}

void read_clusters(const Table& root, Config& cfg, std::vector<FileCheck>& files) {
  Value list = root.require("clusters");
  const auto* a = list.node->as_array();
  if (a == nullptr) root.fail(list, std::string("expected an array of tables, got ") + type_name(*list.node));
  if (a->empty()) root.fail(list, "at least one cluster is required");
  std::vector<Value> names;
  for (size_t i = 0; i < a->size(); ++i) {
    Table t = root.sub(root.element(list, *a, i));
    t.check_keys({"name", "endpoints", "lb", "connect_timeout", "dns_refresh", "max_connections",
                  "max_pending_streams", "max_grpc_timeout", "retries", "retry_buffer", "keepalive_interval",
                  "keepalive_timeout", "idle_timeout", "all_unhealthy", "health_check", "outlier", "tls",
                  "respond", "status", "message", "response_bytes", "delay"});
    Cluster c;
    Value name = t.require("name");
    c.name = read_name(t, name);
    for (size_t j = 0; j < cfg.clusters.size(); ++j) {
      if (cfg.clusters[j].name == c.name) {
        t.fail(name, "duplicate cluster name " + quote(c.name) + " (also " + names[j].key + ")");
      }
    }
    if (auto v = t.get("lb")) {
      c.lb = t.choice<LbPolicy>(*v, {{"p2c", LbPolicy::P2c}, {"round_robin", LbPolicy::RoundRobin}});
    }
    if (auto v = t.get("connect_timeout")) c.connect_timeout = t.duration(*v);
    if (auto v = t.get("dns_refresh")) c.dns_refresh = t.duration(*v);
    if (auto v = t.get("max_connections")) c.max_connections = static_cast<uint32_t>(t.integer(*v, 1, 1'000'000));
    if (auto v = t.get("max_pending_streams"))
      c.max_pending_streams = static_cast<uint32_t>(t.integer(*v, 1, 10'000'000));
    if (auto v = t.get("max_grpc_timeout")) c.max_grpc_timeout = t.duration(*v);
    if (auto v = t.get("retries")) c.retries = static_cast<uint32_t>(t.integer(*v, 0, 10));
    if (auto v = t.get("retry_buffer")) c.retry_buffer = static_cast<uint32_t>(t.integer(*v, 0, 16 << 20));
    if (auto v = t.get("keepalive_interval")) c.keepalive_interval = t.duration(*v);
    if (auto v = t.get("keepalive_timeout")) c.keepalive_timeout = t.duration(*v);
    if (auto v = t.get("idle_timeout")) c.idle_timeout = t.duration(*v);
    if (auto v = t.get("all_unhealthy")) {
      c.all_unhealthy = t.choice<AllUnhealthy>(*v, {{"fail", AllUnhealthy::Fail}, {"panic", AllUnhealthy::Panic}});
    }
    if (auto v = t.get("health_check")) read_health_check(t.sub(*v), c.health_check);
    if (auto v = t.get("outlier")) read_outlier(t.sub(*v), c.outlier);
    if (auto v = t.get("tls")) read_upstream_tls(t.sub(*v), c.tls, files);
    read_responder(t, c);
    if (c.respond == Respond::Off) read_endpoints(t, c);
    names.push_back(name);
    cfg.clusters.push_back(std::move(c));
  }
}

Config build(const toml::table& doc, const std::string& name) {
  Config cfg;
  cfg.path = name;
  Table root(name, doc, "", pos_of(doc.source(), Pos{1, 1}));
  root.check_keys({"workers", "admin", "drain", "access_log", "limits", "listeners", "clusters"});
  read_workers(root, cfg);
  read_admin(root, cfg);
  read_drain(root, cfg);
  read_access_log(root, cfg);
  read_limits(root, cfg);
  std::vector<Origin> cluster_refs;
  std::vector<FileCheck> files;
  read_listeners(root, cfg, cluster_refs, files);
  read_clusters(root, cfg, files);

  auto resolve = [&](const std::string& cluster, const Origin& o) -> size_t {
    for (size_t c = 0; c < cfg.clusters.size(); ++c)
      if (cfg.clusters[c].name == cluster) return c;
    throw ConfigError(format_error(name, {o.line, o.column}, o.key, "no cluster named " + quote(cluster)));
  };
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    Listener& l = cfg.listeners[i];
    l.cluster_index = resolve(l.cluster, cluster_refs[i]);
    for (Route& r : l.routes) r.cluster_index = resolve(r.cluster, r.cluster_origin);
  }
  if (cfg.admin.enabled && cfg.admin.listen.port() != 0) {
    for (const Listener& l : cfg.listeners) {
      if (same_address(l.listen, cfg.admin.listen)) {
        const Origin& o = cfg.admin.listen_origin;
        throw ConfigError(format_error(
            name, {o.line, o.column}, o.key,
            "address " + quote(cfg.admin.listen.text) + " is already used by " + l.listen_origin.key));
      }
    }
  }
  for (const FileCheck& f : files) {
    if (auto problem = readable_problem(f.path)) {
      throw ConfigError(format_error(name, {f.origin.line, f.origin.column}, f.origin.key, *problem));
    }
    check_file_mode(name, f, cfg.warnings);
  }
  for (Listener& l : cfg.listeners)
    if (!l.tls.ticket_keys.empty()) l.tls.ticket_key_set = load_ticket_keys(name, l.tls);
  return cfg;
}

// --- addresses ---

[[noreturn]] void bad_address(std::string_view text, const std::string& problem) {
  throw std::invalid_argument("invalid address " + quote(text) + ": " + problem);
}

uint16_t parse_port(std::string_view text, std::string_view port) {
  if (port.empty()) bad_address(text, "missing port after ':'");
  if (port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    bad_address(text, "port must be a number from 0 to 65535");
  }
  unsigned n = 0;
  for (char c : port) n = n * 10 + static_cast<unsigned>(c - '0');
  if (n > 65535) bad_address(text, "port must be a number from 0 to 65535");
  return static_cast<uint16_t>(n);
}

// getaddrinfo would also accept inet_aton's legacy forms ("127.1",
// "0x7f.0.0.1"); a host that looks numeric must be a dotted quad.
bool looks_numeric(std::string_view host) {
  if (host.empty() || host[0] < '0' || host[0] > '9') return false;
  return std::all_of(host.begin(), host.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == 'x' ||
           c == 'X' || c == '.';
  });
}

bool valid_host_name(std::string_view host) {
  if (host.empty() || host.size() > 253 || host.front() == '.' || host.front() == '-') return false;
  if (host.find("..") != std::string_view::npos) return false;
  return std::all_of(host.begin(), host.end(), [](unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
  });
}

std::atomic<Resolver> current_resolver{nullptr};

}  // namespace

std::string Origin::to_string() const {
  std::string s = file;
  if (line != 0) s += ":" + std::to_string(line) + ":" + std::to_string(column);
  if (!key.empty()) s += ": " + key;
  return s;
}

uint16_t SocketAddress::port() const {
  if (storage.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(storage).sin_port);
  if (storage.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(storage).sin6_port);
  return 0;
}

bool SocketAddress::same_address(const SocketAddress& o) const {
  if (family() != o.family() || port() != o.port()) return false;
  if (family() == AF_INET)
    return reinterpret_cast<const sockaddr_in&>(storage).sin_addr.s_addr ==
           reinterpret_cast<const sockaddr_in&>(o.storage).sin_addr.s_addr;
  if (family() == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(storage);
    const auto& b = reinterpret_cast<const sockaddr_in6&>(o.storage);
    return std::memcmp(&a.sin6_addr, &b.sin6_addr, sizeof a.sin6_addr) == 0 && a.sin6_scope_id == b.sin6_scope_id;
  }
  return false;
}

const char* to_string(ProxyProtocol v) {
  switch (v) {
    case ProxyProtocol::Off: return "off";
    case ProxyProtocol::V1: return "v1";
    case ProxyProtocol::V2: return "v2";
    case ProxyProtocol::Auto: return "auto";
  }
  return "?";
}

const char* to_string(RecordLayer v) {
  switch (v) {
    case RecordLayer::Tlsgate: return "tlsgate";
    case RecordLayer::Openssl: return "openssl";
  }
  return "?";
}

const char* to_string(ClientAuth v) {
  switch (v) {
    case ClientAuth::Off: return "off";
    case ClientAuth::Require: return "require";
    case ClientAuth::Optional: return "optional";
  }
  return "?";
}

const char* to_string(Ktls v) {
  switch (v) {
    case Ktls::Auto: return "auto";
    case Ktls::On: return "on";
    case Ktls::Off: return "off";
  }
  return "?";
}

const char* to_string(TlsVersion v) {
  switch (v) {
    case TlsVersion::Tls12: return "1.2";
    case TlsVersion::Tls13: return "1.3";
  }
  return "?";
}

const char* to_string(LbPolicy v) {
  switch (v) {
    case LbPolicy::RoundRobin: return "round_robin";
    case LbPolicy::P2c: return "p2c";
  }
  return "?";
}

const char* to_string(Respond v) {
  switch (v) {
    case Respond::Off: return "off";
    case Respond::Echo: return "echo";
    case Respond::Status: return "status";
  }
  return "?";
}

const char* to_string(AllUnhealthy v) {
  switch (v) {
    case AllUnhealthy::Fail: return "fail";
    case AllUnhealthy::Panic: return "panic";
  }
  return "?";
}

const char* to_string(AccessLogFormat v) {
  switch (v) {
    case AccessLogFormat::Json: return "json";
    case AccessLogFormat::Text: return "text";
  }
  return "?";
}

const Cluster* Config::find_cluster(std::string_view name) const {
  for (const Cluster& c : clusters) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

Resolver set_resolver(Resolver resolver) { return current_resolver.exchange(resolver); }

std::chrono::milliseconds parse_duration(std::string_view text) {
  auto bad = [&](const std::string& problem) -> std::invalid_argument {
    return std::invalid_argument("invalid duration " + quote(text) + ": " + problem);
  };
  if (text.empty()) throw bad("empty; expected a number and a unit, e.g. \"10s\"");
  if (text[0] == '-') throw bad("must not be negative");
  size_t i = 0;
  uint64_t n = 0;
  bool too_large = false;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    if (!too_large) {
      n = n * 10 + static_cast<uint64_t>(text[i] - '0');
      if (n > max_duration_ms) too_large = true;  // stops before uint64 could overflow
    }
    ++i;
  }
  if (i == 0) throw bad("expected a number and a unit, e.g. \"10s\"");
  if (i < text.size() && (text[i] == '.' || text[i] == ',')) {
    throw bad("fractions are not allowed; use a smaller unit, e.g. \"1500ms\"");
  }
  std::string_view unit = text.substr(i);
  uint64_t scale = 0;
  if (unit == "ms") {
    scale = 1;
  } else if (unit == "s") {
    scale = 1000;
  } else if (unit == "m") {
    scale = 60 * 1000;
  } else if (unit == "h") {
    scale = 3600 * 1000;
  } else if (unit.empty()) {
    throw bad("missing unit (ms, s, m or h)");
  } else {
    throw bad("unknown unit " + quote(unit) + " (use ms, s, m or h)");
  }
  if (too_large || n > max_duration_ms / scale) throw bad("too large (at most 8760h)");
  return milliseconds(static_cast<int64_t>(n * scale));
}

SocketAddress parse_address(std::string_view text, bool allow_names) {
  const char* form = allow_names ? "host:port" : "IP:port";
  if (text.empty()) bad_address(text, std::string("empty; expected ") + form);
  std::string_view host;
  std::string_view port;
  bool bracketed = false;
  if (text[0] == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) bad_address(text, "missing ']' after an IPv6 address");
    host = text.substr(1, close - 1);
    if (close + 1 >= text.size() || text[close + 1] != ':') {
      bad_address(text, "expected ':' and a port after ']'");
    }
    port = text.substr(close + 2);
    bracketed = true;
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) bad_address(text, std::string("missing port; expected ") + form);
    if (text.find(':') != colon) bad_address(text, "write an IPv6 address in brackets, e.g. \"[::1]:8443\"");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  if (host.empty()) bad_address(text, std::string("missing host; expected ") + form);
  uint16_t p = parse_port(text, port);
  std::string h(host);
  if (h.find('\0') != std::string::npos) bad_address(text, "contains a NUL character");

  SocketAddress out;
  out.text = std::string(text);
  if (bracketed) {
    auto& sin6 = reinterpret_cast<sockaddr_in6&>(out.storage);
    if (::inet_pton(AF_INET6, h.c_str(), &sin6.sin6_addr) != 1) {
      bad_address(text, quote(h) + " is not an IPv6 address");
    }
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(p);
    out.length = sizeof(sockaddr_in6);
    return out;
  }
  auto& sin = reinterpret_cast<sockaddr_in&>(out.storage);
  if (::inet_pton(AF_INET, h.c_str(), &sin.sin_addr) == 1) {
    sin.sin_family = AF_INET;
    sin.sin_port = htons(p);
    out.length = sizeof(sockaddr_in);
    return out;
  }
  if (looks_numeric(h)) bad_address(text, quote(h) + " is not an IPv4 address (expected a.b.c.d)");
  if (!allow_names) bad_address(text, quote(h) + " is not a numeric IP address");
  if (!valid_host_name(h)) bad_address(text, quote(h) + " is not a valid host name");
  Resolver r = current_resolver.load();
  // src/config never touches the network: names go to the resolver the
  // program installed (main: upstream::resolve_first).
  if (r == nullptr) throw std::invalid_argument("cannot resolve " + quote(h) + ": no resolver installed");
  SocketAddress resolved = r(h, p);
  resolved.text = std::string(text);
  if (resolved.family() != AF_INET && resolved.family() != AF_INET6) {
    throw std::invalid_argument("cannot resolve " + quote(h) + ": no IPv4 or IPv6 address");
  }
  return resolved;
}

Config parse(std::string_view text, const std::string& name) {
  toml::table doc;
  try {
    doc = toml::parse(text, std::string_view(name));
  } catch (const toml::parse_error& e) {
    Pos pos{e.source().begin.line, e.source().begin.column};
    throw ConfigError(format_error(name, pos, "", "syntax error: " + std::string(e.description())));
  }
  return build(doc, name);
}

Config load_file(const std::string& path) {
  auto fail = [&](int err) { return ConfigError(one_line(path + ": cannot read: " + errno_text(err))); };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) throw fail(errno);
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      throw fail(err);
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > max_file_size) {
      ::close(fd);
      throw ConfigError(one_line(path + ": cannot read: larger than 16 MiB; not a configuration file"));
    }
  }
  ::close(fd);
  return parse(text, path);
}

}  // namespace tlsgate::config
