// One tlsgate-load thread: its own io_uring, its own TLS context and session
// tickets, its share of the schedule and its own Stats.
//
// Contracts:
// - The schedule is shared by index: connection (rate mode) or call
//   (persistent mode at --calls-per-second) i belongs to thread i mod T and is
//   due at start + i / rate, whatever happened before; latency is measured
//   from that due time. --concurrency caps this thread's share of
//   connections in flight (a due one waits, and the wait counts); --rate max
//   is a closed loop with no schedule (latency from the connection's open).
//   --connections-total bounds the measured part by count: more slots of the
//   schedule, or this thread's share of N in the closed loop.
// - --hold: this thread's share of N connections, at most its share of
//   --concurrency opening at a time, one call each; answered ones stay open
//   and idle (`settled`, `held_ok` tell main() when all are up) until main()
//   sets `release`; then they are closed. One the server closes meanwhile
//   counts in Stats::held_closed, not as an error.
// - A connection's object lives while any io_uring submission refers to it
//   (`ops`); a finished or failed one cancels its submissions and is freed
//   when the count reaches zero. user_data is slot + generation + operation.
// - Everything here runs on the worker's own thread except the atomics
//   (progress, readiness) and `start_ns`, which main() reads or sets.
#pragma once

#include <liburing.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "options.hh"
#include "report.hh"

namespace tlsgate::load {

uint64_t now_ns();

// Set by SIGINT/SIGTERM: stop scheduling, finish what is in flight.
extern std::atomic<bool> g_stop;

class Worker {
 public:
  // Thread `index` of `count`.
  Worker(const Options& o, unsigned index, unsigned count);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Sets up the ring and the TLS context; "" or why not.
  std::string init();
  // The thread body. Persistent mode: opens this thread's connections, then
  // waits for `start_ns` to be set; rate mode: `start_ns` is set before.
  void run();

  const Stats& stats() const { return stats_; }
  const Stats& warmup_stats() const { return warm_; }
  unsigned connections_here() const { return local_conns_; }

  // Shared with main().
  std::atomic<uint64_t> start_ns{0};        // t0 of the schedule (warm-up first)
  std::atomic<unsigned> settled{0};         // persistent: connections up or failed
  std::atomic<uint64_t> progress_calls{0};  // answered, warm-up included
  std::atomic<uint64_t> progress_errors{0};
  std::atomic<uint64_t> progress_conns{0};
  std::atomic<bool> finished{false};  // run() returned
  std::atomic<uint64_t> held_ok{0};   // hold: connections whose call was answered OK
  std::atomic<bool> release{false};   // hold: close the held connections and end
  // Closed loop after a warm-up: this thread's warm-up connections have all
  // ended (`drained`); main() then sets `measure_ns`, the measured start.
  std::atomic<bool> drained{false};
  std::atomic<uint64_t> measure_ns{0};

 private:
  enum class State { Connecting, Handshaking, Open, Closing, Dead };
  struct Conn;
  struct Call {
    Conn* conn = nullptr;
    bool busy = false;
    bool measured = false;
    int32_t stream_id = 0;
    uint64_t intended_ns = 0;
    size_t body_off = 0;
    int http_status = 0;
    int grpc_status = -1;
    uint32_t rst = 0;
    uint64_t data_bytes = 0;
    uint8_t head[5] = {};  // the response's first gRPC frame header
  };
  struct Due {
    uint64_t at_ns;
    bool measured;
  };
  struct Conn {
    uint32_t slot = 0;
    uint32_t gen = 0;
    int fd = -1;
    State state = State::Dead;
    SSL* ssl = nullptr;
    BIO* rbio = nullptr;  // owned by ssl
    BIO* wbio = nullptr;  // owned by ssl
    nghttp2_session* h2 = nullptr;
    int ops = 0;  // io_uring submissions that refer to this connection
    bool recv_posted = false;
    bool send_posted = false;
    std::string sending;  // bytes of the send in flight
    size_t send_off = 0;
    std::string next_out;  // bytes produced while a send was in flight
    std::vector<Call> calls;
    std::vector<Call*> finished;  // streams closed during the last mem_recv
    std::deque<Due> queue;        // persistent at a fixed rate: calls due, waiting for a stream
    uint64_t due_ns = 0;          // rate mode: when it was due
    uint64_t deadline_ns = 0;     // rate mode: due + timeout
    bool measured = true;
    bool bad = false;           // a call was not answered OK
    bool held = false;          // hold mode: its call is answered, it is kept idle
    bool goodbye_sent = false;  // GOAWAY and close_notify are out: nothing more to send
    uint64_t calls_started = 0;
    uint64_t calls_done = 0;
    std::unique_ptr<uint8_t[]> rbuf;
  };
  enum class Op : uint8_t { Connect = 1, Recv, Send, Cancel };

  Stats& stats_for(bool measured) { return measured ? stats_ : warm_; }
  uint64_t user_data(const Conn& c, Op op) const;
  io_uring_sqe* sqe();

  // The schedule.
  void run_rate();
  void run_closed_loop();
  void run_hold();
  void hold_after_call(Conn& c);
  void release_held();
  void drop_late(bool measured);
  void run_persistent();
  void wait_and_dispatch(uint64_t wake_ns);
  void sweep_timeouts(uint64_t now);
  void reap();
  Conn* open_conn_for(uint64_t k);
  void set_dead(Conn& c);

  // A connection's life.
  Conn* open_conn(uint64_t due_ns, bool measured);
  void on_cqe(const io_uring_cqe* cqe);
  void on_connect(Conn& c, int res);
  void on_recv(Conn& c, int res);
  void on_send(Conn& c, int res);
  void advance(Conn& c);
  bool finish_handshake(Conn& c);
  void post_recv(Conn& c);
  void pump(Conn& c);
  void post_send(Conn& c);
  void fail(Conn& c, ErrorKind kind, const std::string& why);
  void close_gracefully(Conn& c);
  void after_goodbye(Conn& c);
  void cancel_all(Conn& c);

  // Calls.
  bool start_call(Conn& c, uint64_t intended_ns, bool measured);
  void end_call(Conn& c, Call& call);
  void after_calls(Conn& c);
  void start_persistent_calls(Conn& c);
  Call* free_call(Conn& c);
  bool accepts_calls(Conn& c);

  // nghttp2 and OpenSSL callbacks.
  static int on_header(nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t, const uint8_t*, size_t,
                       uint8_t, void*);
  static int on_data_chunk(nghttp2_session*, uint8_t, int32_t, const uint8_t*, size_t, void*);
  static int on_stream_close(nghttp2_session*, int32_t, uint32_t, void*);
  static ssize_t read_body(nghttp2_session*, int32_t, uint8_t*, size_t, uint32_t*, nghttp2_data_source*,
                           void*);
  static int on_new_session(SSL* ssl, SSL_SESSION* sess);

  const Options& o_;
  const unsigned index_, count_;
  unsigned local_conns_ = 0;   // persistent mode
  uint64_t cap_ = UINT64_MAX;  // rate and hold: this thread's share of --concurrency
  uint64_t quota_ = 0;         // closed loop: this thread's share of --connections-total
  io_uring ring_{};
  bool ring_ok_ = false;
  SSL_CTX* ctx_ = nullptr;
  nghttp2_session_callbacks* callbacks_ = nullptr;
  std::vector<std::unique_ptr<Conn>> slots_;
  std::vector<uint32_t> free_slots_;
  std::vector<Conn*> dead_;            // to free once no submission refers to them
  std::vector<Conn*> live_;            // persistent: this thread's connections, in order
  size_t open_count_ = 0;              // connections not yet freed
  std::vector<SSL_SESSION*> tickets_;  // newest last; each offered once
  uint64_t warmup_end_ns_ = 0, end_ns_ = 0;
  bool ending_ = false;  // persistent: no new calls
  uint64_t last_sweep_ns_ = 0;
  Stats stats_, warm_;
};

}  // namespace tlsgate::load
