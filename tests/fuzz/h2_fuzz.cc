// Fuzz target for the downstream HTTP/2 session (src/h2/session.cc through
// include/tlsgate/h2.hh only): a stranger's bytes, once TLS is off them, go
// straight into nghttp2 and tlsgate's callbacks, routing, stream joining and
// flow-control coupling. Two in-memory nghttp2 servers play the gRPC
// backends, each behind an UpstreamSession, so requests are forwarded and
// the response paths (headers, bodies, trailers, resets, GOAWAY, a lost
// connection, retries, deadlines) run too.
//
// Per input: one fresh DownstreamSession and two fresh UpstreamSessions on
// a Context that lives as long as the process, as a shard's does.
// The input is three option bytes, then the client's bytes:
//   byte 0  backend behaviour
//           bits 0-1  0 = answer at END_STREAM (echo body, grpc-status 0)
//                     1 = answer at once, stream the echo as it arrives
//                     2 = REFUSED_STREAM each backend's first stream, then as 0
//                     3 = RST_STREAM INTERNAL_ERROR every request
//           bit 2     backends send GOAWAY after their first request
//           bit 3     backend 0's connection is lost after the first piece
//           bit 4     the router has no upstream (grpc-status 14 path)
//           bit 5     the gateway's output to the client is taken 97 bytes
//                     at a time (a slow reader: WOULDBLOCK, deferred data)
//           bit 6     the target sends the client preface and an empty
//                     SETTINGS first (so mutations need not keep them)
//           bit 7     graceful shutdown() of the downstream session midway
//   byte 1  piece size: the client bytes are fed in pieces of this many
//           bytes (0 = all at once); between pieces both sides are drained,
//           the backends answer and the clock moves
//   byte 2  bits 0-1 retries, bit 2 max_grpc_timeout 50 ms, bit 3 routes,
//           bit 4 a chunk pool of 6 chunks (bytes refused), bits 5-7 the
//           clock step per piece (x 40 ms)
//
// Invariants (a violation traps):
//  - whatever the client sends, the gateway never makes a backend see a
//    connection error (GOAWAY with an error code, or a frame nghttp2 calls
//    invalid): a client's mistake stays on the client's connection;
//  - every exchange goes quiet (no busy loop between the sessions);
//  - once the sessions are gone no Stream and no pool chunk is left, and
//    the router was told of as many streams finished as started (the
//    shard's circuit breakers count on it).
//
// H2_FUZZ_TRACE=1 in the environment prints the frames and fields the
// backends receive (to read a reproducer).
#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tlsgate/buffer.hh"
#include "tlsgate/config.hh"
#include "tlsgate/h2.hh"

namespace {

using namespace tlsgate;
using namespace tlsgate::h2;

constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr uint8_t kEmptySettings[9] = {0, 0, 0, 0x04, 0, 0, 0, 0, 0};
constexpr size_t kSlowReaderBudget = 97;
constexpr int kMaxPumpRounds = 20000;
constexpr uint32_t kCluster = 1;
constexpr uint32_t kRoutedCluster = 2;

struct Options {
  int answer = 0;
  bool goaway = false;
  bool lose_backend = false;
  bool no_upstream = false;
  bool slow_reader = false;
  bool preface = false;
  bool shutdown = false;
  size_t piece = 0;
  ClusterPolicy policy;
  bool routes = false;
  bool small_pool = false;
  uint64_t clock_step_ms = 0;
};

Options parse_options(const uint8_t* d) {
  Options o;
  o.answer = d[0] & 3;
  o.goaway = (d[0] & 4) != 0;
  o.lose_backend = (d[0] & 8) != 0;
  o.no_upstream = (d[0] & 16) != 0;
  o.slow_reader = (d[0] & 32) != 0;
  o.preface = (d[0] & 64) != 0;
  o.shutdown = (d[0] & 128) != 0;
  o.piece = d[1];
  o.policy.retries = d[2] & 3;
  o.policy.retry_buffer = 64 * 1024;
  o.policy.max_grpc_timeout_ms = (d[2] & 4) ? 50 : 0;
  o.routes = (d[2] & 8) != 0;
  o.small_pool = (d[2] & 16) != 0;
  o.clock_step_ms = static_cast<uint64_t>(d[2] >> 5) * 40;
  return o;
}

// --------------------------------------------------------------- backend

// One request as a backend saw it, and the echo it sends back.
struct BackendStream {
  std::string body;
  size_t sent = 0;
  bool request_done = false;
  bool answered = false;
};

// An in-memory gRPC backend: an nghttp2 server that echoes request bodies.
class Backend {
 public:
  Backend(int answer, bool goaway) : answer_(answer), goaway_(goaway) {
    nghttp2_session_callbacks* cb = nullptr;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    if (std::getenv("H2_FUZZ_TRACE") != nullptr) {
      nghttp2_session_callbacks_set_on_header_callback(cb, trace_header);
      nghttp2_session_callbacks_set_on_begin_frame_callback(cb, trace_frame);
    }
    nghttp2_session_server_new(&s_, cb, this);
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(s_, NGHTTP2_FLAG_NONE, nullptr, 0);
  }
  ~Backend() { nghttp2_session_del(s_); }
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  nghttp2_session* session() { return s_; }

 private:
  static Backend& self(void* p) { return *static_cast<Backend*>(p); }

  // The gateway broke HTTP/2 towards its backend because of a client.
  [[noreturn]] static void gateway_broke_protocol() { __builtin_trap(); }

  static int on_frame_recv(nghttp2_session* s, const nghttp2_frame* f, void* u) {
    Backend& b = self(u);
    const int32_t id = f->hd.stream_id;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) b.on_request(s, id);
    const bool end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) && end) b.on_request_end(s, id);
    return 0;
  }

  void on_request(nghttp2_session* s, int32_t id) {
    streams_[id];
    ++requests_;
    if (goaway_ && requests_ == 1)
      nghttp2_submit_goaway(s, NGHTTP2_FLAG_NONE, id, NGHTTP2_NO_ERROR, nullptr, 0);
    if (answer_ == 3 || (answer_ == 2 && requests_ == 1)) {
      nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, id,
                                answer_ == 3 ? NGHTTP2_INTERNAL_ERROR : NGHTTP2_REFUSED_STREAM);
      streams_.erase(id);
      return;
    }
    if (answer_ == 1) respond(s, id);
  }

  void on_request_end(nghttp2_session* s, int32_t id) {
    auto it = streams_.find(id);
    if (it == streams_.end()) return;
    it->second.request_done = true;
    if (!it->second.answered) {
      respond(s, id);
    } else {
      nghttp2_session_resume_data(s, id);
    }
  }

  void respond(nghttp2_session* s, int32_t id) {
    BackendStream& st = streams_[id];
    st.answered = true;
    static const nghttp2_nv headers[] = {
        nv(":status", "200"),
        nv("content-type", "application/grpc"),
    };
    nghttp2_data_provider prd{};
    prd.source.ptr = this;
    prd.read_callback = read_echo;
    nghttp2_submit_response(s, id, headers, sizeof headers / sizeof headers[0], &prd);
  }

  static nghttp2_nv nv(const char* n, const char* v) {
    return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(n)),
                      reinterpret_cast<uint8_t*>(const_cast<char*>(v)), std::strlen(n), std::strlen(v),
                      NGHTTP2_NV_FLAG_NONE};
  }

  static ssize_t read_echo(nghttp2_session* s, int32_t id, uint8_t* buf, size_t len, uint32_t* flags,
                           nghttp2_data_source*, void* u) {
    Backend& b = self(u);
    auto it = b.streams_.find(id);
    if (it == b.streams_.end()) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    BackendStream& st = it->second;
    const size_t n = std::min(len, st.body.size() - st.sent);
    std::memcpy(buf, st.body.data() + st.sent, n);
    st.sent += n;
    if (st.sent < st.body.size()) return static_cast<ssize_t>(n);
    if (!st.request_done) return n > 0 ? static_cast<ssize_t>(n) : static_cast<ssize_t>(NGHTTP2_ERR_DEFERRED);
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    static const nghttp2_nv trailers[] = {nv("grpc-status", "0")};
    if (nghttp2_submit_trailer(s, id, trailers, 1) == 0) *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    return static_cast<ssize_t>(n);
  }

  static int on_data_chunk(nghttp2_session* s, uint8_t, int32_t id, const uint8_t* data, size_t len,
                           void* u) {
    Backend& b = self(u);
    auto it = b.streams_.find(id);
    if (it == b.streams_.end()) return 0;
    it->second.body.append(reinterpret_cast<const char*>(data), len);
    if (it->second.answered) nghttp2_session_resume_data(s, id);
    return 0;
  }

  static int on_stream_close(nghttp2_session*, int32_t id, uint32_t, void* u) {
    self(u).streams_.erase(id);
    return 0;
  }

  static int trace_frame(nghttp2_session*, const nghttp2_frame_hd* hd, void*) {
    std::fprintf(stderr, "h2_fuzz: backend <- frame type %u flags %#x stream %d length %zu\n", hd->type,
                 hd->flags, hd->stream_id, hd->length);
    return 0;
  }
  static int trace_header(nghttp2_session*, const nghttp2_frame* f, const uint8_t* n, size_t nlen,
                          const uint8_t* v, size_t vlen, uint8_t, void*) {
    std::fprintf(stderr, "h2_fuzz: backend <- stream %d %.*s: %.*s\n", f->hd.stream_id,
                 static_cast<int>(nlen), n, static_cast<int>(vlen), v);
    return 0;
  }

  static int on_invalid_frame(nghttp2_session*, const nghttp2_frame* f, int error, void*) {
    std::fprintf(stderr, "h2_fuzz: backend got an invalid frame from the gateway: type %u stream %d: %s\n",
                 f->hd.type, f->hd.stream_id, nghttp2_strerror(error));
    gateway_broke_protocol();
  }

  static int on_frame_send(nghttp2_session*, const nghttp2_frame* f, void*) {
    if (f->hd.type == NGHTTP2_GOAWAY && f->goaway.error_code != NGHTTP2_NO_ERROR) {
      std::fprintf(stderr, "h2_fuzz: backend sent GOAWAY %s\n", nghttp2_http2_strerror(f->goaway.error_code));
      gateway_broke_protocol();
    }
    return 0;
  }

  nghttp2_session* s_ = nullptr;
  int answer_;
  bool goaway_;
  int requests_ = 0;
  std::map<int32_t, BackendStream> streams_;
};

// --------------------------------------------------------------- gateway

struct FuzzOwner final : Owner {
  void wake() override { woken = true; }
  bool woken = true;  // the shard flushes a new connection once
};

// Two endpoints of one cluster; picks the first that can take a stream,
// the other one first when `avoid` names it (a retry).
struct FuzzRouter final : Pool {
  UpstreamSession* pick(uint32_t, int avoid, const char*& why) override {
    if (!no_upstream) {
      for (int i = 0; i < 2; ++i) {
        UpstreamSession* u = ups[(i + (avoid == 0 ? 1 : 0)) % 2];
        if (u != nullptr && u->can_take_stream()) return u;
      }
    }
    why = "no endpoint of cluster fuzz is reachable";
    return nullptr;
  }
  bool may_retry(const ClusterPolicy& p, uint32_t attempts) override { return attempts <= p.retries; }
  uint64_t now_ms() override { return now; }
  void stream_started(UpstreamSession&) override { ++started; }
  void stream_finished(UpstreamSession&, Outcome) override { ++finished; }

  UpstreamSession* ups[2] = {nullptr, nullptr};
  bool no_upstream = false;
  ClusterPolicy policy;
  uint64_t now = 1'000'000;
  uint64_t started = 0;
  uint64_t finished = 0;
};

std::vector<config::Route> make_routes() {
  std::vector<config::Route> routes(2);
  routes[0].authority = "admin.example";
  routes[0].cluster_index = kRoutedCluster;
  routes[1].path_prefix = "/grpc.health.v1.Health/";
  routes[1].cluster_index = kRoutedCluster;
  return routes;
}

// What outlives one connection, as in a shard: the Context (its stream
// objects, nghttp2's memory spans, deadlines), the chunk pool and the
// router. Made once per process: a fresh Context per input spent most of
// the time mapping and unmapping memory under ASan (16 maps per input), and
// a Context serving connection after connection is what runs in production.
struct Shard {
  Shard() : bounded_pool(8, 6), plain(pool, router), bounded(bounded_pool, router) {}
  ChunkPool pool;
  ChunkPool bounded_pool;  // 6 chunks: bytes get refused
  ChunkPool wire_pool;     // bytes between the sessions and the peers
  FuzzRouter router;
  Context plain;
  Context bounded;
};

Shard& shard() {
  static Shard* s = new Shard;  // never destroyed: no exit-time order to get wrong
  return *s;
}

class Exchange {
 public:
  explicit Exchange(const Options& o)
      : o_(o),
        pool_(o.small_pool ? shard().bounded_pool : shard().pool),
        router_(shard().router),
        ctx_(o.small_pool ? shard().bounded : shard().plain),
        routes_(kCluster, make_routes()),
        clusters_(kRoutedCluster + 1, o.policy) {
    router_.no_upstream = o.no_upstream;
    router_.policy = o.policy;
    for (uint32_t i = 0; i < clusters_.size(); ++i) clusters_[i].pool_id = i;
    DownstreamSettings ds;
    ds.cluster = kCluster;
    ds.routes = o.routes ? &routes_ : nullptr;
    ds.clusters = &clusters_;
    ds.max_concurrent_streams = 8;
    ds.client_ip = "198.51.100.9";
    down_ = std::make_unique<DownstreamSession>(ctx_, down_owner_, ds);
    for (int i = 0; i < 2; ++i) {
      backends_[i] = std::make_unique<Backend>(o.answer, o.goaway);
      ups_[i] = std::make_unique<UpstreamSession>(ctx_, up_owners_[i], kCluster, i);
      router_.ups[i] = ups_[i].get();
    }
    pump();
  }

  ~Exchange() {
    // The client's connection closes first (the shard's order when a client
    // goes away), then the backends finish what it cancelled.
    down_.reset();
    pump();
    for (int i = 0; i < 2; ++i) {
      router_.ups[i] = nullptr;
      ups_[i].reset();
      backends_[i].reset();
    }
    if (ctx_.streams_in_use() != 0 || ctx_.deadlines_pending() != 0) __builtin_trap();
    if (router_.started != router_.finished) __builtin_trap();
    if (pool_.in_use() != 0) __builtin_trap();
  }

  Exchange(const Exchange&) = delete;
  Exchange& operator=(const Exchange&) = delete;

  // Feeds one piece of the client's bytes; false once the gateway closed
  // the connection (a protocol error: its GOAWAY has been flushed).
  bool feed(const uint8_t* data, size_t len) {
    if (!down_->receive(data, len)) {
      flush_down(SIZE_MAX);
      return false;
    }
    down_owner_.woken = true;
    pump();
    return true;
  }

  // What the shard's timer does between receives.
  void tick() {
    router_.now += o_.clock_step_ms;
    ctx_.expire_deadlines(router_.now);
    ctx_.release_idle_memory(router_.now);
    pump();
  }

  void lose_backend0() {
    if (ups_[0]->failed()) return;
    ups_[0]->fail("fuzz: backend connection lost");
    pump();
  }

  void shutdown() {
    down_->shutdown();
    down_owner_.woken = true;
    pump();
  }

 private:
  // Moves bytes until nothing moves, flushing a session only after it
  // received bytes or was woken, as the shard does.
  void pump() {
    for (int round = 0; round < kMaxPumpRounds; ++round) {
      bool moved = false;
      for (int i = 0; i < 2; ++i) moved |= backend_to_gateway(i);
      for (int i = 0; i < 2; ++i) moved |= gateway_to_backend(i);
      if (down_ && down_owner_.woken) {
        down_owner_.woken = false;
        moved |= flush_down(o_.slow_reader ? kSlowReaderBudget : SIZE_MAX);
      }
      if (!moved) return;
    }
    __builtin_trap();  // the sessions never went quiet
  }

  bool alive(int i) const { return ups_[i] && !ups_[i]->failed(); }

  bool backend_to_gateway(int i) {
    bool moved = false;
    while (alive(i)) {
      const uint8_t* p = nullptr;
      ssize_t n = nghttp2_session_mem_send(backends_[i]->session(), &p);
      if (n <= 0) break;
      moved = true;
      up_owners_[i].woken = true;
      if (!ups_[i]->receive(p, static_cast<size_t>(n))) ups_[i]->fail("fuzz: backend protocol error");
    }
    return moved;
  }

  bool gateway_to_backend(int i) {
    if (!alive(i) || !up_owners_[i].woken) return false;
    up_owners_[i].woken = false;
    ByteQueue q(&shard().wire_pool);
    ups_[i]->produce(q, SIZE_MAX);
    if (q.empty()) return false;
    std::vector<uint8_t> bytes(q.size());
    q.read(bytes.data(), bytes.size());
    if (nghttp2_session_mem_recv(backends_[i]->session(), bytes.data(), bytes.size()) < 0) __builtin_trap();
    return true;
  }

  // The client's side: the bytes are read and dropped. With a budget the
  // session keeps the rest and must be flushed again (the shard does when
  // the socket drains).
  bool flush_down(size_t budget) {
    ByteQueue q(&shard().wire_pool);
    const size_t n = down_->produce(q, budget);
    if (budget != SIZE_MAX && n > 0) down_owner_.woken = true;
    return n > 0;
  }

  Options o_;
  ChunkPool& pool_;
  FuzzRouter& router_;
  Context& ctx_;
  route::Table routes_;
  std::vector<ClusterPolicy> clusters_;
  FuzzOwner down_owner_;
  FuzzOwner up_owners_[2];
  std::unique_ptr<DownstreamSession> down_;
  std::unique_ptr<Backend> backends_[2];
  std::unique_ptr<UpstreamSession> ups_[2];
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const Options o = parse_options(data);
  data += 3;
  size -= 3;
  Exchange ex(o);
  if (o.preface) {
    if (!ex.feed(reinterpret_cast<const uint8_t*>(kPreface), sizeof kPreface - 1)) return 0;
    if (!ex.feed(kEmptySettings, sizeof kEmptySettings)) return 0;
  }
  const size_t piece = o.piece == 0 ? size : o.piece;
  size_t pieces = 0;
  for (size_t off = 0; off < size; off += piece) {
    if (!ex.feed(data + off, std::min(piece, size - off))) break;
    ex.tick();
    if (++pieces == 1 && o.lose_backend) ex.lose_backend0();
    if (o.shutdown && off < size / 2 && off + piece >= size / 2) ex.shutdown();
  }
  // The client stays a while: deadlines expire, idle memory is released.
  for (int i = 0; i < 3; ++i) ex.tick();
  return 0;
}
