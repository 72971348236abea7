#include "tlsgate/access_log.hh"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <utility>

#include "tlsgate/log.hh"

namespace tlsgate::accesslog {

namespace {

// Appends to a fixed buffer; `ok` turns false once something did not fit.
struct Out {
  char* p;
  size_t cap;
  size_t len = 0;
  bool ok = true;

  void put(char c) {
    if (len + 1 > cap) {
      ok = false;
      return;
    }
    p[len++] = c;
  }
  void put(std::string_view s) {
    if (len + s.size() > cap) {
      ok = false;
      return;
    }
    std::memcpy(p + len, s.data(), s.size());
    len += s.size();
  }
  void num(uint64_t v) {
    char tmp[24];
    const int n = std::snprintf(tmp, sizeof tmp, "%" PRIu64, v);
    put(std::string_view(tmp, static_cast<size_t>(n)));
  }
  void signed_num(int64_t v) {
    char tmp[24];
    const int n = std::snprintf(tmp, sizeof tmp, "%" PRId64, v);
    put(std::string_view(tmp, static_cast<size_t>(n)));
  }
  // Milliseconds with three decimals: "12.345".
  void millis(uint64_t us) {
    char tmp[32];
    const int n = std::snprintf(tmp, sizeof tmp, "%" PRIu64 ".%03" PRIu64, us / 1000, us % 1000);
    put(std::string_view(tmp, static_cast<size_t>(n)));
  }
  // A quoted string whose bytes may come from a client: only printable
  // ASCII is written as is, so neither a line break nor a quote, nor bytes
  // that are not UTF-8, reach the file. Valid JSON and one text field.
  void quoted(std::string_view s) {
    static const char* hex = "0123456789abcdef";
    put('"');
    for (unsigned char c : s) {
      if (c == '"' || c == '\\') {
        put('\\');
        put(static_cast<char>(c));
      } else if (c >= 0x20 && c < 0x7f) {
        put(static_cast<char>(c));
      } else {
        const char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        put(std::string_view(esc, 6));
      }
    }
    put('"');
  }
};

void json_line(Out& o, const Record& r, std::string_view time) {
  o.put("{\"time\":\"");
  o.put(time);
  o.put("\",\"listener\":");
  o.quoted(r.listener);
  o.put(",\"client\":");
  o.quoted(r.client_ip);
  o.put(",\"client_port\":");
  o.num(r.client_port);
  o.put(",\"tls\":");
  o.quoted(r.tls_version);
  o.put(",\"resumed\":");
  o.put(r.tls_resumed ? "true" : "false");
  o.put(",\"authority\":");
  o.quoted(r.authority);
  o.put(",\"path\":");
  o.quoted(r.path);
  o.put(",\"status\":");
  o.num(static_cast<uint64_t>(r.http_status));
  o.put(",\"grpc_status\":");
  if (r.grpc_status < 0) o.put("null");
  else o.signed_num(r.grpc_status);
  o.put(",\"reset\":");
  if (r.reset_by.empty()) {
    o.put("null");
  } else {
    o.put("{\"by\":");
    o.quoted(r.reset_by);
    o.put(",\"code\":");
    o.num(r.reset_code);
    o.put('}');
  }
  o.put(",\"bytes_in\":");
  o.num(r.request_bytes);
  o.put(",\"bytes_out\":");
  o.num(r.response_bytes);
  o.put(",\"duration_ms\":");
  o.millis(r.duration_us);
  o.put(",\"cluster\":");
  if (r.cluster.empty()) o.put("null");
  else o.quoted(r.cluster);
  o.put(",\"upstream\":");
  if (r.upstream.empty()) o.put("null");
  else o.quoted(r.upstream);
  o.put(",\"retries\":");
  o.num(r.retries);
  o.put("}\n");
}

// Space-separated, "-" for what is absent; the client's fields quoted.
void text_line(Out& o, const Record& r, std::string_view time) {
  auto field = [&](std::string_view s) {
    o.put(' ');
    o.put(s.empty() ? std::string_view("-") : s);
  };
  o.put(time);
  field(r.listener);
  // "[2001:db8::7]:4242": an IPv6 address's colons would swallow the port.
  const bool v6 = r.client_ip.find(':') != std::string_view::npos;
  o.put(v6 ? " [" : " ");
  o.put(r.client_ip);
  o.put(v6 ? "]:" : ":");
  o.num(r.client_port);
  field(r.tls_version);
  o.put(r.tls_resumed ? " resumed" : " full");
  o.put(' ');
  o.quoted(r.authority);
  o.put(' ');
  o.quoted(r.path);
  o.put(' ');
  o.num(static_cast<uint64_t>(r.http_status));
  o.put(" grpc=");
  if (r.grpc_status < 0) o.put('-');
  else o.signed_num(r.grpc_status);
  o.put(" reset=");
  if (r.reset_by.empty()) {
    o.put('-');
  } else {
    o.put(r.reset_by);
    o.put('/');
    o.num(r.reset_code);
  }
  o.put(" in=");
  o.num(r.request_bytes);
  o.put(" out=");
  o.num(r.response_bytes);
  o.put(' ');
  o.millis(r.duration_us);
  o.put("ms");
  field(r.cluster);
  field(r.upstream);
  o.put(" retries=");
  o.num(r.retries);
  o.put('\n');
}

uint64_t unix_us() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

uint64_t steady_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000u + static_cast<uint64_t>(ts.tv_nsec) / 1'000'000u;
}

}  // namespace

size_t format(Mode mode, const Record& r, std::string_view time, char* out, size_t cap) {
  Out o{out, cap};
  if (mode == Mode::Json) json_line(o, r, time);
  else if (mode == Mode::Text) text_line(o, r, time);
  else return 0;
  return o.ok ? o.len : 0;
}

// ------------------------------------------------------------ Buffer

Buffer::Buffer() {
  for (Half& h : halves_) h.data = std::make_unique<char[]>(kHalf);
}

// "2026-12-06T23:41:35.123Z": the date part is made once a second.
std::string_view Buffer::time_text(uint64_t now_us) {
  const uint64_t sec = now_us / 1'000'000u;
  if (sec != text_sec_) {
    const time_t t = static_cast<time_t>(sec);
    tm parts{};
    gmtime_r(&t, &parts);
    text_len_ = std::strftime(text_, sizeof text_, "%Y-%m-%dT%H:%M:%S", &parts);
    text_sec_ = sec;
  }
  std::snprintf(text_ + text_len_, sizeof text_ - text_len_, ".%03uZ",
                static_cast<unsigned>(now_us / 1000 % 1000));
  return std::string_view(text_, text_len_ + 5);
}

Buffer::Half* Buffer::current() {
  Half& h = halves_[cur_];
  if (h.state.load(std::memory_order_acquire) == Free) return &h;
  Half& other = halves_[cur_ ^ 1];
  if (other.state.load(std::memory_order_acquire) != Free) return nullptr;
  cur_ ^= 1;
  return &other;
}

void Buffer::hand_over(Half& h) {
  h.seq = ++seq_;
  h.state.store(Ready, std::memory_order_release);
  if (wake_ != nullptr) wake_->notify_one();
}

bool Buffer::append(const Record& r) {
  const Mode m = mode();
  if (m == Mode::Off) return true;
  Half* h = current();
  if (h == nullptr) return false;
  const std::string_view time = time_text(unix_us());
  size_t n = format(m, r, time, h->data.get() + h->len, kHalf - h->len);
  if (n == 0) {
    if (h->len == 0) return false;  // longer than a half: cannot be written whole
    hand_over(*h);
    h = current();
    if (h == nullptr) return false;
    n = format(m, r, time, h->data.get() + h->len, kHalf - h->len);
    if (n == 0) return false;
  }
  h->len += n;
  ++h->lines;
  return true;
}

void Buffer::flush() {
  Half& h = halves_[cur_];
  if (h.state.load(std::memory_order_acquire) != Free || h.len == 0) return;  // acquire: the writer may just have emptied it
  if (halves_[cur_ ^ 1].state.load(std::memory_order_acquire) != Free) return;  // keep filling this one
  hand_over(h);
  cur_ ^= 1;
}

// ------------------------------------------------------------ Writer

Writer::Writer(unsigned shards) {
  for (unsigned i = 0; i < shards; ++i) {
    buffers_.push_back(std::make_unique<Buffer>());
    buffers_.back()->wake_ = &cv_;
  }
}

Writer::~Writer() {
  stop();
  close_fd();
  std::lock_guard<std::mutex> lock(mu_);
  if (pending_fd_ > STDERR_FILENO) ::close(pending_fd_);
}

std::string Writer::configure(const config::AccessLog& cfg) {
  int fd = -1;
  if (cfg.enabled && cfg.path == "-") {
    fd = STDOUT_FILENO;
  } else if (cfg.enabled) {
    // Non-blocking: a pipe or FIFO that nobody reads must not hold the
    // writer for ever at stop (regular files ignore the flag).
    fd = ::open(cfg.path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
    if (fd < 0) return cfg.path_origin.to_string() + ": cannot open \"" + cfg.path + "\": " + std::strerror(errno);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (fd_pending_ && pending_fd_ > STDERR_FILENO) ::close(pending_fd_);
    pending_fd_ = fd;
    fd_pending_ = true;
  }
  const Mode mode = !cfg.enabled ? Mode::Off : cfg.format == config::AccessLogFormat::Json ? Mode::Json : Mode::Text;
  for (auto& b : buffers_) b->mode_.store(mode, std::memory_order_relaxed);
  cv_.notify_one();
  return "";
}

void Writer::start() {
  if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
}

void Writer::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void Writer::close_fd() {
  if (fd_ > STDERR_FILENO) ::close(fd_);
  fd_ = -1;
}

// Lines handed over before a reload go to the new file (logrotate renamed the
// old one), except when the reload turned the log off (`flush_first`, not
// while a write is waiting): those are written to the old file first.
void Writer::take_pending_fd(bool flush_first) {
  int next;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!fd_pending_) return;
    next = pending_fd_;
    pending_fd_ = -1;
    fd_pending_ = false;
  }
  if (next < 0 && flush_first) write_pass(false);
  close_fd();
  fd_ = next;
}

void Writer::run() {
  for (;;) {
    bool stopping;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(kIntervalMs));
      stopping = stopping_;
    }
    take_pending_fd(true);
    write_pass(false);
    if (stopping) break;
  }
  // The shards have stopped: what they had not handed over goes too.
  for (auto& b : buffers_)
    for (Buffer::Half& h : b->halves_)
      if (h.len > 0 && h.state.load(std::memory_order_acquire) == Buffer::Free) {
        h.seq = ++b->seq_;
        h.state.store(Buffer::Ready, std::memory_order_release);
      }
  write_pass(true);
}

// Writes every half handed over, each buffer's older half first.
void Writer::write_pass(bool final) {
  for (auto& b : buffers_) {
    Buffer::Half* ready[2];
    size_t n = 0;
    for (Buffer::Half& h : b->halves_)
      if (h.state.load(std::memory_order_acquire) == Buffer::Ready) ready[n++] = &h;
    if (n == 2 && ready[1]->seq < ready[0]->seq) std::swap(ready[0], ready[1]);
    for (size_t i = 0; i < n; ++i) {
      Buffer::Half& h = *ready[i];
      if (!write_all(h.data.get(), h.len, final)) lost_.fetch_add(h.lines, std::memory_order_relaxed);
      h.len = 0;
      h.lines = 0;
      h.state.store(Buffer::Free, std::memory_order_release);
    }
  }
}

// A pipe that is full makes the writer wait (the shards' halves stay handed
// over, so they drop lines meanwhile); a new file from configure() is taken
// while waiting. Other errors lose the batch, said once a second at most.
bool Writer::write_all(const char* data, size_t len, bool final) {
  uint64_t give_up = steady_ms() + kStopWaitMs;
  size_t off = 0;
  while (off < len) {
    if (fd_ < 0) return true;  // the log was turned off: nothing to write to
    if (final && gave_up_) return false;
    const ssize_t w = ::write(fd_, data + off, len - off);
    if (w > 0) {
      off += static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) {
      if (final && steady_ms() >= give_up) {
        gave_up_ = true;  // the rest is not waited for either
        LOG_ERROR("accesslog", "stopping: the access log file took nothing for %" PRIu64 " ms; lines left are lost",
                  kStopWaitMs);
        return false;
      }
      pollfd p{fd_, POLLOUT, 0};
      ::poll(&p, 1, static_cast<int>(kIntervalMs));
      bool stopping;
      {
        std::lock_guard<std::mutex> lock(mu_);
        stopping = stopping_;
      }
      if (stopping && !final) {
        final = true;
        give_up = steady_ms() + kStopWaitMs;
      }
      take_pending_fd(false);
      continue;
    }
    LOG_ERROR("accesslog", "write: %s: %zu bytes of access log lost", std::strerror(w < 0 ? errno : EIO), len - off);
    return false;
  }
  return true;
}

}  // namespace tlsgate::accesslog
