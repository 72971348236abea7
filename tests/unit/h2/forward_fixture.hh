#pragma once
// The HTTP/2 forwarding core without sockets. A DownstreamSession faces an
// in-memory nghttp2 *client* (the gRPC client), an UpstreamSession faces an
// in-memory nghttp2 *server* (the gRPC backend), and the test carries bytes
// between them the way the shard does: a session is flushed after it received
// bytes, or when its Owner was woken — never otherwise, so a missing wake()
// shows up as a stream that stops moving.
//
// Also included by bench/h2_forward_bench.cc, which drives the same harness
// without a running test (its EXPECTs then only print).
#include <gtest/gtest.h>
#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tlsgate/buffer.hh"
#include "tlsgate/h2.hh"

namespace tlsgate::h2::fwdtest {

using Headers = std::vector<std::pair<std::string, std::string>>;

// True while the gateway's own code runs (its sessions' receive/produce), so
// a counting allocator can tell the gateway's allocations from the peers'.
inline thread_local bool g_in_gateway = false;
struct GatewayScope {
  GatewayScope() { g_in_gateway = true; }
  ~GatewayScope() { g_in_gateway = false; }
  GatewayScope(const GatewayScope&) = delete;
  GatewayScope& operator=(const GatewayScope&) = delete;
};

constexpr const char* kClientIp = "203.0.113.7";
constexpr size_t kStreamWindow = 256 * 1024;  // the gateway's SETTINGS_INITIAL_WINDOW_SIZE

inline std::string grpc_frame(const std::string& message) {
  std::string f(5, '\0');
  const uint32_t len = static_cast<uint32_t>(message.size());
  f[1] = static_cast<char>(len >> 24);
  f[2] = static_cast<char>(len >> 16);
  f[3] = static_cast<char>(len >> 8);
  f[4] = static_cast<char>(len);
  return f + message;
}

inline std::string pattern(size_t len) {
  std::string s(len, '\0');
  uint32_t x = 99;
  for (size_t i = 0; i < len; ++i) {
    x = x * 1103515245u + 12345u;
    s[i] = static_cast<char>(x >> 16);
  }
  return s;
}

// All values of `name` in `h`.
inline std::vector<std::string> values(const Headers& h, const std::string& name) {
  std::vector<std::string> out;
  for (const auto& [n, v] : h)
    if (n == name) out.push_back(v);
  return out;
}

inline std::string value(const Headers& h, const std::string& name) {
  auto v = values(h, name);
  if (v.size() == 1) return v[0];
  // append(), not "<" + std::to_string(): GCC 12 -O3 -Wrestrict false positive.
  return std::string("<").append(std::to_string(v.size())).append(" values>");
}

inline std::vector<nghttp2_nv> to_nv(const Headers& h) {
  std::vector<nghttp2_nv> nv;
  for (const auto& [n, v] : h)
    nv.push_back(nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(n.data())),
                            reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(),
                            NGHTTP2_NV_FLAG_NONE});
  return nv;
}

// ------------------------------------------------------------ test peers

// What one side saw of one stream.
struct PeerStream {
  Headers headers;   // first HEADERS block (request or response)
  Headers trailers;  // a later HEADERS block
  std::string body;
  bool headers_end_stream = false;  // END_STREAM on the first HEADERS (trailers-only)
  bool end_stream = false;          // END_STREAM received
  bool rst = false;
  uint32_t rst_code = 0;
  bool closed = false;
  uint32_t close_code = 0;
};

// A body the peer sends: `data`, then EOF (with trailers) once `complete`.
struct Body {
  explicit Body(std::string d, bool complete_ = true, Headers trailers_ = {})
      : data(std::move(d)), complete(complete_), trailers(std::move(trailers_)) {}
  std::string data;
  size_t off = 0;
  bool complete;
  Headers trailers;
};

// An nghttp2 session in the role of the gRPC client or the gRPC backend.
class Peer {
 public:
  enum class Role { Client, Backend };

  explicit Peer(Role role, bool manual_window = false, uint32_t max_concurrent_streams = 0)
      : manual_window_(manual_window) {
    nghttp2_session_callbacks* cb = nullptr;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_option* opt = nullptr;
    nghttp2_option_new(&opt);
    if (manual_window) nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_send_header_block_length(opt, 256 * 1024);  // to send oversized headers
    if (role == Role::Client)
      nghttp2_session_client_new2(&s_, cb, this, opt);
    else
      nghttp2_session_server_new2(&s_, cb, this, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_concurrent_streams}};
    nghttp2_submit_settings(s_, NGHTTP2_FLAG_NONE, iv, max_concurrent_streams ? 1 : 0);
  }
  ~Peer() { nghttp2_session_del(s_); }
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  nghttp2_session* session() { return s_; }
  std::map<int32_t, PeerStream> streams;
  int32_t last_stream = 0;
  bool goaway = false;
  int32_t goaway_last_stream = -1;
  size_t data_received = 0;
  // With a manual window: whether received DATA is handed back (consumed).
  bool consume = true;

  // Client: a request with `body` (nullptr = HEADERS with END_STREAM).
  int32_t request(const Headers& h, Body* body) {
    auto nv = to_nv(h);
    nghttp2_data_provider prd{};
    prd.source.ptr = body;
    prd.read_callback = read_body;
    int32_t id = nghttp2_submit_request(s_, nullptr, nv.data(), nv.size(), body ? &prd : nullptr, nullptr);
    EXPECT_GT(id, 0) << nghttp2_strerror(id);
    return id;
  }
  // Backend: a response with `body` (nullptr = trailers-only / no body).
  void respond(int32_t id, const Headers& h, Body* body) {
    auto nv = to_nv(h);
    nghttp2_data_provider prd{};
    prd.source.ptr = body;
    prd.read_callback = read_body;
    EXPECT_EQ(nghttp2_submit_response(s_, id, nv.data(), nv.size(), body ? &prd : nullptr), 0);
  }
  // More bytes for a body that was waiting (deferred).
  void resume(int32_t id) { nghttp2_session_resume_data(s_, id); }
  void reset(int32_t id, uint32_t code) { nghttp2_submit_rst_stream(s_, NGHTTP2_FLAG_NONE, id, code); }
  // Gives back the window for every byte received so far (manual window).
  void consume_all(int32_t id) {
    size_t n = data_received - consumed_;
    consumed_ = data_received;
    nghttp2_session_consume(s_, id, n);
  }

 private:
  static Peer& self(void* p) { return *static_cast<Peer*>(p); }

  static int on_begin_headers(nghttp2_session*, const nghttp2_frame* f, void* u) {
    Peer& p = self(u);
    p.streams[f->hd.stream_id];
    p.last_stream = std::max(p.last_stream, f->hd.stream_id);
    return 0;
  }
  static int on_header(nghttp2_session*, const nghttp2_frame* f, const uint8_t* name, size_t namelen,
                       const uint8_t* value, size_t valuelen, uint8_t, void* u) {
    PeerStream& st = self(u).streams[f->hd.stream_id];
    Headers& h = (f->headers.cat == NGHTTP2_HCAT_HEADERS) ? st.trailers : st.headers;
    h.emplace_back(std::string(reinterpret_cast<const char*>(name), namelen),
                   std::string(reinterpret_cast<const char*>(value), valuelen));
    return 0;
  }
  static int on_frame_recv(nghttp2_session*, const nghttp2_frame* f, void* u) {
    Peer& p = self(u);
    if (f->hd.type == NGHTTP2_GOAWAY) {
      p.goaway = true;
      p.goaway_last_stream = f->goaway.last_stream_id;
      return 0;
    }
    if (f->hd.stream_id == 0) return 0;
    PeerStream& st = p.streams[f->hd.stream_id];
    const bool es = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat != NGHTTP2_HCAT_HEADERS && es)
      st.headers_end_stream = true;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) && es) st.end_stream = true;
    if (f->hd.type == NGHTTP2_RST_STREAM) {
      st.rst = true;
      st.rst_code = f->rst_stream.error_code;
    }
    return 0;
  }
  static int on_data_chunk(nghttp2_session* s, uint8_t, int32_t id, const uint8_t* data, size_t len,
                           void* u) {
    Peer& p = self(u);
    p.streams[id].body.append(reinterpret_cast<const char*>(data), len);
    p.data_received += len;
    if (p.manual_window_ && p.consume) {
      nghttp2_session_consume(s, id, len);
      p.consumed_ += len;
    }
    return 0;
  }
  static int on_stream_close(nghttp2_session*, int32_t id, uint32_t code, void* u) {
    PeerStream& st = self(u).streams[id];
    st.closed = true;
    st.close_code = code;
    return 0;
  }
  static ssize_t read_body(nghttp2_session* s, int32_t id, uint8_t* buf, size_t len, uint32_t* flags,
                           nghttp2_data_source* src, void*) {
    Body& b = *static_cast<Body*>(src->ptr);
    size_t n = std::min(len, b.data.size() - b.off);
    std::memcpy(buf, b.data.data() + b.off, n);
    b.off += n;
    if (b.off == b.data.size()) {
      if (!b.complete) return n == 0 ? static_cast<ssize_t>(NGHTTP2_ERR_DEFERRED) : static_cast<ssize_t>(n);
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      if (!b.trailers.empty()) {
        auto nv = to_nv(b.trailers);
        if (nghttp2_submit_trailer(s, id, nv.data(), nv.size()) == 0)
          *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      }
    }
    return static_cast<ssize_t>(n);
  }

  nghttp2_session* s_ = nullptr;
  bool manual_window_;
  size_t consumed_ = 0;
};

// ------------------------------------------------------------ gateway side

// A StreamEnd with its views copied (they die with the call).
struct EndRecord {
  StreamEnd end;
  std::string authority;
  std::string path;
};

struct TestOwner final : Owner {
  void wake() override {
    ++wakes;
    woken = true;
  }
  void idle() override { ++idles; }
  void stream_ended(const StreamEnd& e) override {
    ++ended;
    if (keep_ends) ends.push_back(EndRecord{e, std::string(e.authority), std::string(e.path)});
  }
  int wakes = 0;
  bool woken = false;
  int idles = 0;  // times the session told it was quiet
  int ended = 0;                // stream_ended() calls
  bool keep_ends = true;        // false: the copies would count as the gateway's allocations (alloc_test)
  std::vector<EndRecord> ends;  // what stream_ended() said, in order
};

// The pool the stream layer asks, and the policy of every cluster (the
// tests change `policy`; DownstreamSettings::clusters is filled from it).
struct TestRouter final : Pool {
  UpstreamSession* pick(uint32_t cluster, int avoid, const char*& why) override {
    ++calls;
    last_cluster = cluster;
    last_avoid = avoid;
    if (upstream == nullptr) why = why_text;
    return upstream;
  }
  bool may_retry(const ClusterPolicy& p, uint32_t attempts) override { return attempts <= p.retries; }
  uint64_t now_ms() override { return now; }
  void stream_started(UpstreamSession&) override { ++started; }
  void stream_finished(UpstreamSession&, Outcome o) override { ++finished[static_cast<int>(o)]; }
  ClusterPolicy policy;
  uint64_t now = 1'000;
  int started = 0;
  int finished[5] = {0, 0, 0, 0, 0};  // by Outcome
  int last_avoid = -2;
  UpstreamSession* upstream = nullptr;
  const char* why_text = "no endpoint of cluster echo is reachable";
  int calls = 0;
  uint32_t last_cluster = 0;
};

class ForwardTest : public ::testing::Test {
 protected:
  // Creates both peers and the two gateway sessions, exchanges SETTINGS.
  void start(bool client_manual_window = false, bool backend_manual_window = false) {
    ctx_ = std::make_unique<Context>(pool_, router_);
    DownstreamSettings ds;
    ds.cluster = 3;
    clusters_.assign(4, router_.policy);  // the connection's snapshot: what the test set
    for (uint32_t i = 0; i < clusters_.size(); ++i) clusters_[i].pool_id = i;
    ds.clusters = &clusters_;
    ds.max_concurrent_streams = 100;
    ds.client_ip = kClientIp;
    down_ = std::make_unique<DownstreamSession>(*ctx_, down_owner_, ds);
    up_ = std::make_unique<UpstreamSession>(*ctx_, up_owner_, 3, 0);
    router_.upstream = up_.get();
    client_ = std::make_unique<Peer>(Peer::Role::Client, client_manual_window);
    backend_ = std::make_unique<Peer>(Peer::Role::Backend, backend_manual_window);
    down_dirty_ = up_dirty_ = true;  // the shard flushes a new connection once
    pump();
  }

  void TearDown() override {
    client_.reset();
    backend_.reset();
    down_.reset();
    up_.reset();
    if (ctx_) {
      EXPECT_EQ(ctx_->streams_in_use(), 0u) << "streams left after both sessions closed";
    }
    ctx_.reset();
    EXPECT_EQ(pool_.in_use(), 0u) << "chunks left after both sessions closed";
  }

  // Moves bytes until nothing moves. Returns false if it did not go quiet.
  bool pump() {
    for (int round = 0; round < 100000; ++round) {
      bool moved = false;
      if (down_) moved |= client_to_gateway();
      if (up_alive()) moved |= backend_to_gateway();
      if (down_ && (down_dirty_ || down_owner_.woken)) moved |= flush_down();
      if (up_alive() && (up_dirty_ || up_owner_.woken)) moved |= flush_up();
      peak_chunks_ = std::max(peak_chunks_, pool_.in_use());
      if (!moved) return true;
    }
    ADD_FAILURE() << "the sessions never went quiet";
    return false;
  }

  bool up_alive() const { return up_ && !up_->failed(); }

  bool client_to_gateway() {
    bool moved = false;
    for (;;) {
      const uint8_t* p = nullptr;
      ssize_t n = nghttp2_session_mem_send(client_->session(), &p);
      if (n <= 0) break;
      moved = true;
      down_dirty_ = true;
      GatewayScope scope;
      if (!down_->receive(p, static_cast<size_t>(n))) ++down_errors_;
    }
    return moved;
  }
  bool backend_to_gateway() {
    bool moved = false;
    for (;;) {
      const uint8_t* p = nullptr;
      ssize_t n = nghttp2_session_mem_send(backend_->session(), &p);
      if (n <= 0) break;
      moved = true;
      up_dirty_ = true;
      GatewayScope scope;
      if (!up_->receive(p, static_cast<size_t>(n))) ++up_errors_;
      if (!up_alive()) break;
    }
    return moved;
  }
  bool flush_down() {
    down_dirty_ = false;
    down_owner_.woken = false;
    return deliver(*down_, client_->session());
  }
  bool flush_up() {
    up_dirty_ = false;
    up_owner_.woken = false;
    return deliver(*up_, backend_->session());
  }
  bool deliver(Session& from, nghttp2_session* to) {
    ByteQueue q(&wire_pool_);
    {
      GatewayScope scope;
      from.produce(q, SIZE_MAX);
    }
    if (q.empty()) return false;
    std::vector<uint8_t> bytes(q.size());
    q.read(bytes.data(), bytes.size());
    ssize_t rv = nghttp2_session_mem_recv(to, bytes.data(), bytes.size());
    EXPECT_EQ(rv, static_cast<ssize_t>(bytes.size())) << nghttp2_strerror(static_cast<int>(rv));
    return true;
  }

  static Headers grpc_request(const std::string& path = "/echo.Echo/Unary") {
    return {{":method", "POST"},
            {":scheme", "https"},
            {":authority", "localhost:8443"},
            {":path", path},
            {"content-type", "application/grpc"},
            {"te", "trailers"},
            {"grpc-timeout", "5S"}};
  }
  static Headers grpc_response_headers() {
    return {{":status", "200"}, {"content-type", "application/grpc"}, {"x-resp-meta", "from-backend"}};
  }

  // The client sends a request (`h`, `body` as for Peer::request: the body
  // must outlive the stream) and the bytes move until nothing moves. Returns
  // the client's stream id; the backend's is then backend_->last_stream.
  // Sessions that never go quiet fail the test (pump() says so), though not
  // fatally: a helper that returns a value cannot stop the test.
  int32_t send_request(const Headers& h, Body* body) {
    const int32_t id = client_->request(h, body);
    EXPECT_TRUE(pump());
    return id;
  }

  // A complete unary exchange on a fresh stream; returns the client stream.
  PeerStream& unary(const std::string& message) {
    Body req{grpc_frame(message)};
    int32_t cid = client_->request(grpc_request(), &req);
    pump();
    const int32_t bid = backend_->last_stream;
    Body resp{grpc_frame("re: " + message), true, {{"grpc-status", "0"}}};
    backend_->respond(bid, grpc_response_headers(), &resp);
    pump();
    return client_->streams[cid];
  }

  ChunkPool pool_;
  ChunkPool wire_pool_;
  TestRouter router_;
  std::vector<ClusterPolicy> clusters_;
  TestOwner down_owner_, up_owner_;
  std::unique_ptr<Context> ctx_;
  std::unique_ptr<DownstreamSession> down_;
  std::unique_ptr<UpstreamSession> up_;
  std::unique_ptr<Peer> client_, backend_;
  bool down_dirty_ = false, up_dirty_ = false;
  int down_errors_ = 0, up_errors_ = 0;
  size_t peak_chunks_ = 0;
};

}  // namespace tlsgate::h2::fwdtest
