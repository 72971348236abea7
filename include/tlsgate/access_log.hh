// The access log: one line per client stream, formatted by the shard that
// served it into its own Buffer (no lock, no allocation per line) and
// written in batches by one Writer thread per process. When the writer falls
// behind and both halves of a shard's buffer wait for it, new lines are
// dropped (Buffer::append says so; the shard counts them): a request is
// never delayed by its log line.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tlsgate/config.hh"

namespace tlsgate::accesslog {

// What a line says about one client stream (views valid during the call).
struct Record {
  std::string_view listener;
  std::string_view client_ip;  // the PROXY header's source when there was one
  uint16_t client_port = 0;
  std::string_view tls_version;  // "TLSv1.3"
  bool tls_resumed = false;
  std::string_view authority;  // from the client: escaped when written
  std::string_view path;       // likewise
  int http_status = 0;         // 0: none sent
  int grpc_status = -1;        // -1: none sent
  std::string_view reset_by;   // "" when not reset, else client / backend / gateway / connection
  uint32_t reset_code = 0;
  uint64_t request_bytes = 0;
  uint64_t response_bytes = 0;
  uint64_t duration_us = 0;
  std::string_view cluster;   // "" when not routed
  std::string_view upstream;  // "ip:port" of the last attempt, "" when none
  uint32_t retries = 0;
};

enum class Mode : uint8_t { Off, Json, Text };

// Formats one line, newline included, into out[0, cap); returns its length,
// or 0 when it does not fit. `time` is the wall-clock end of the stream as
// text (Buffer keeps it per second). Client bytes are escaped: JSON strings
// take \" \\ and \u00XX for every byte outside printable ASCII; in the text
// format the fields are quoted the same way, so no client byte can end a
// line or a field.
size_t format(Mode mode, const Record& r, std::string_view time, char* out, size_t cap);

// One shard's buffer: two halves. The shard appends to one while the writer
// writes the other; each half passes between them with one atomic store.
class Buffer {
 public:
  static constexpr size_t kHalf = 128 * 1024;

  Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  // Shard side. The mode the Writer was configured with (Off: skip the line).
  Mode mode() const { return mode_.load(std::memory_order_relaxed); }
  // Formats and appends the line; false when it was dropped (both halves
  // wait for the writer).
  bool append(const Record& r);
  // Hands the lines of the current half to the writer if the other half is
  // free: call on the shard's tick so lines age at most about 100 ms.
  void flush();

 private:
  friend class Writer;
  enum State : int { Free, Ready };
  struct Half {
    std::unique_ptr<char[]> data;
    size_t len = 0;
    uint64_t lines = 0;
    uint64_t seq = 0;  // hand-over order: the writer writes the older first
    std::atomic<int> state{Free};
  };
  Half* current();
  void hand_over(Half& h);
  std::string_view time_text(uint64_t unix_us);

  std::atomic<Mode> mode_{Mode::Off};
  Half halves_[2];
  unsigned cur_ = 0;
  uint64_t seq_ = 0;
  uint64_t text_sec_ = ~uint64_t{0};
  char text_[40] = {0};
  size_t text_len_ = 0;
  std::condition_variable* wake_ = nullptr;  // the writer's; notified once per hand-over
};

// The process's writer thread and the file it writes to.
class Writer {
 public:
  // Writes at least every kIntervalMs what the shards handed over.
  static constexpr uint64_t kIntervalMs = 100;
  // At stop, a file that takes nothing (a full pipe) gets this long.
  static constexpr uint64_t kStopWaitMs = 1000;

  explicit Writer(unsigned shards);
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  Buffer& buffer(unsigned shard) { return *buffers_[shard]; }
  // Main thread: opens cfg.path for appending ("-": standard output), or
  // turns the log off; the writer switches to the new file before its next
  // batch. Returns "" or what went wrong (the log stays as it was). The same
  // path opens the file again: logrotate moved the old one.
  std::string configure(const config::AccessLog& cfg);
  void start();
  // After the shards stopped: writes every line left, then returns.
  void stop();
  // Lines the writer could not write (write errors; at stop, a file that
  // took nothing for kStopWaitMs).
  uint64_t lines_lost() const { return lost_.load(std::memory_order_relaxed); }

 private:
  void run();
  void take_pending_fd(bool flush_first);
  void write_pass(bool final);
  bool write_all(const char* data, size_t len, bool final);
  void close_fd();

  std::vector<std::unique_ptr<Buffer>> buffers_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // under mu_
  bool fd_pending_ = false;  // under mu_
  int pending_fd_ = -1;      // under mu_
  int fd_ = -1;              // writer thread only
  bool gave_up_ = false;     // writer thread only: at stop, the file took nothing
  std::atomic<uint64_t> lost_{0};
  std::thread thread_;
};

}  // namespace tlsgate::accesslog
