// A forwarded stream: one downstream (client) stream joined to one upstream
// (backend) stream. Private to src/h2/.
//
// Lifetime: created on the client's HEADERS, freed when both halves are
// released (down == nullptr and up == nullptr). Each half is released by its
// session's on_stream_close, or when its connection dies.
#pragma once

#include <nghttp2/nghttp2.h>

#include <cstdint>

#include "tlsgate/buffer.hh"
#include "tlsgate/h2.hh"

namespace tlsgate::h2 {

// Header fields kept by reference to nghttp2's refcounted buffers, or to
// static / stream-owned text for fields the gateway makes itself.
//
// The first kInlineFields fields live in the list; a list that grows past
// them moves to spill storage of kMaxFields fields, allocated the first time
// and kept with the (recycled) stream. Why: 256 streams in flight each
// holding three lists of 64 fields spread every stream over three pages and
// cost cache and TLB misses per call; gRPC requests rarely carry more than a
// dozen fields.
class HeaderList {
 public:
  static constexpr uint32_t kMaxFields = 64;
  static constexpr uint32_t kInlineFields = 16;
  static constexpr size_t kMaxBytes = 64 * 1024;

  HeaderList() = default;
  HeaderList(const HeaderList&) = delete;
  HeaderList& operator=(const HeaderList&) = delete;
  ~HeaderList();

  // Returns false when a limit is reached (the field is not added).
  bool add_rc(nghttp2_rcbuf* name, nghttp2_rcbuf* value);
  bool add_static(const char* name, const char* value, size_t value_len);
  void clear();
  uint32_t size() const { return count_; }
  bool empty() const { return count_ == 0; }
  // Fills `nva` (capacity kMaxFields + extra) with the fields.
  size_t to_nv(nghttp2_nv* nva) const;
  // Value of the first field named `name`, or empty.
  bool find(const char* name, const uint8_t** value, size_t* len) const;

 private:
  // 24 bytes, so that clearing a list reads half the cache lines a field of
  // pointers and lengths for both forms took: an nghttp2 buffer's bytes are
  // found through the buffer (its header shares a line with them), a literal
  // (add_static) is marked by kLiteral in its length.
  struct Field {
    const void* name;   // nghttp2_rcbuf*, or the bytes if name_len has kLiteral
    const void* value;  // likewise
    uint32_t name_len;
    uint32_t value_len;
  };
  static constexpr uint32_t kLiteral = 1u << 31;
  static nghttp2_vec bytes_of(const void* p, uint32_t len);
  static nghttp2_rcbuf* buffer(const void* p) { return static_cast<nghttp2_rcbuf*>(const_cast<void*>(p)); }
  // Room for one more field within the limits, or nullptr.
  Field* next_slot(size_t bytes);
  // Past kInlineFields the fields are in spill_ (moved there by next_slot).
  const Field* fields() const { return count_ > kInlineFields ? spill_ : inline_; }

  uint32_t count_ = 0;
  size_t bytes_ = 0;
  Field* spill_ = nullptr;
  Field inline_[kInlineFields];
};

struct Stream {
  // Downstream half.
  DownstreamSession* down = nullptr;
  int32_t down_id = 0;
  // Upstream half.
  UpstreamSession* up = nullptr;
  int32_t up_id = -1;

  // Request (client → backend); its header fields are at the end.
  ByteQueue req_body;
  bool req_eof = false;
  size_t req_unconsumed = 0;  // downstream bytes not yet given back to the client's window

  // Response (backend → client).
  ByteQueue resp_body;
  bool resp_started = false;  // response HEADERS submitted downstream
  bool resp_eof = false;      // nothing more will be appended to resp_body
  size_t resp_unconsumed = 0;
  // The body's data source last answered NGHTTP2_ERR_DEFERRED and was not
  // resumed since: only then does nghttp2_session_resume_data do anything
  // (each call is a look-up in nghttp2's stream map).
  bool req_deferred = false;   // request body, on the upstream session
  bool resp_deferred = false;  // response body, on the downstream session

  char message[160] = {0};  // grpc-message of a gateway-made status
  char status_text[4] = {0};

  // Routing, retries, deadline.
  ClusterPolicy policy;       // of its cluster, from its connection's snapshot
  uint32_t attempts = 0;      // upstream streams opened for this client stream
  // The end-of-stream record (StreamEnd): what the client was sent and who reset it.
  int32_t cluster = -1;       // configuration index of its route; -1 until routed
  int32_t endpoint = -1;      // the last attempt's pool endpoint
  uint16_t http_status = 0;   // :status sent downstream
  int16_t grpc_status = -1;   // a gateway-made grpc-status (the backend's is read from its fields)
  ResetBy reset_by = ResetBy::None;
  uint32_t reset_code = 0;
  uint64_t start_us = 0;
  uint64_t req_bytes = 0;     // DATA payload from the client
  uint64_t resp_bytes = 0;    // DATA payload to the client
  bool replayable = true;     // everything sent upstream is still in req_body (req_kept)
  bool gateway_cancelled = false;  // the gateway reset the upstream half (deadline, unbufferable body)
  bool headers_rejected = false;   // past HeaderList's limits: answered 431, not forwarded
  // The first req_kept bytes of req_body were sent upstream already; they
  // stay for a retry until the response starts or retry_buffer is passed.
  size_t req_kept = 0;
  uint64_t deadline_ms = 0;   // 0 = none
  size_t heap_index = kNoDeadline;
  char timeout_text[12] = {0};  // grpc-timeout forwarded when capped
  static constexpr size_t kNoDeadline = ~size_t{0};

  // A health-check stream has no downstream half; its result goes here.
  bool is_probe = false;
  ProbeSink* probe = nullptr;  // null once cancelled
  bool probe_oversize = false;

  // Intrusive lists: the streams of each session.
  Stream* down_prev = nullptr;
  Stream* down_next = nullptr;
  Stream* up_prev = nullptr;
  Stream* up_next = nullptr;
  // A responder's answer waits until then on Context's list of delayed
  // answers (Context::add_delayed); 0 = not waiting.
  uint64_t respond_at_ms = 0;
  Stream* delay_prev = nullptr;
  Stream* delay_next = nullptr;
  // respond = "status": due, answered at the client's END_STREAM (d_frame_recv).
  bool respond_at_eof = false;

  // Last, so that the scalars above share a few cache lines (only the used
  // head of each list is touched per call).
  HeaderList req_headers;
  HeaderList resp_headers;
  HeaderList resp_trailers;

  void reset(ChunkPool& pool) {
    down = nullptr;
    down_id = 0;
    up = nullptr;
    up_id = -1;
    req_headers.clear();
    req_body.clear();
    req_body.set_pool(&pool);
    req_eof = false;
    req_unconsumed = 0;
    resp_headers.clear();
    resp_trailers.clear();
    resp_body.clear();
    resp_body.set_pool(&pool);
    resp_started = false;
    resp_eof = false;
    resp_unconsumed = 0;
    req_deferred = false;
    resp_deferred = false;
    message[0] = 0;
    policy = ClusterPolicy{};
    attempts = 0;
    cluster = -1;
    endpoint = -1;
    http_status = 0;
    grpc_status = -1;
    reset_by = ResetBy::None;
    reset_code = 0;
    start_us = 0;
    req_bytes = 0;
    resp_bytes = 0;
    replayable = true;
    gateway_cancelled = false;
    headers_rejected = false;
    req_kept = 0;
    deadline_ms = 0;
    heap_index = kNoDeadline;
    respond_at_ms = 0;
    delay_prev = delay_next = nullptr;
    respond_at_eof = false;
    is_probe = false;
    probe = nullptr;
    probe_oversize = false;
    down_prev = down_next = up_prev = up_next = nullptr;
  }
};

}  // namespace tlsgate::h2
