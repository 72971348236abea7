// HTTP/2 sessions on both sides and the joining of their streams.
//
// Over 600 lines on purpose: nghttp2's callbacks (Callbacks), the joining of
// a client stream to a backend stream (Forward) and the sessions are the path
// of every frame, and the build has no LTO: split into files, the calls
// between them that the compiler now inlines would become calls across
// translation units on the per-call path that bench/README.md counts in
// instructions. Sections, in order: HeaderList, Context, Forward, Callbacks,
// Session / DownstreamSession / UpstreamSession.
#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cassert>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <new>
#include <string_view>

#include "memory.hh"
#include "stream.hh"
#include "tlsgate/grpc.hh"
#include "tlsgate/h2.hh"
#include "tlsgate/log.hh"

namespace tlsgate::h2 {

namespace {

// The opaque data of the drain PING (DownstreamSession::drain).
constexpr uint8_t kDrainPing[8] = {'t', 'l', 's', 'g', 'd', 'r', 'a', 'i'};
// The opaque data of the keepalive PING (DownstreamSession::keepalive_ping):
// its ACK is told apart from the drain's and from ACKs the client owes nobody.
constexpr uint8_t kKeepalivePing[8] = {'t', 'l', 's', 'g', 'k', 'e', 'e', 'p'};

constexpr int32_t kStreamWindow = 256 * 1024;
constexpr int32_t kDownstreamConnectionWindow = 1 << 20;
constexpr int32_t kUpstreamConnectionWindow = 16 << 20;
constexpr uint32_t kMaxHeaderListSize = HeaderList::kMaxBytes;

nghttp2_session* ng(void* p) { return static_cast<nghttp2_session*>(p); }

// `name` is a lower-case string literal: nghttp2 neither copies nor
// lower-cases it (NO_COPY_NAME); the value is copied.
nghttp2_nv make_nv(const char* name, const char* value, size_t value_len) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name)),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value)), std::strlen(name), value_len,
                    NGHTTP2_NV_FLAG_NO_COPY_NAME};
}

// Name and value both string literals: nothing is copied.
nghttp2_nv literal_nv(const char* name, const char* value) {
  nghttp2_nv nv = make_nv(name, value, std::strlen(value));
  nv.flags |= NGHTTP2_NV_FLAG_NO_COPY_VALUE;
  return nv;
}

bool is(const nghttp2_vec& v, std::string_view want) {
  return std::memcmp(v.base, want.data(), want.size()) == 0;
}

// Request fields the gateway does not forward: hop-by-hop ones, its own
// x-forwarded-* (x-forwarded-client-cert on every listener, mTLS or not: a
// backend must never take a client's claim for a verified certificate), and
// the other fields a client could use to claim another address or scheme (`forwarded`, RFC 7239; `x-real-ip`): a backend behind
// tlsgate trusts only what the gateway set. Called for every field of every
// request, so it looks at the length first; pseudo-headers and most names
// match no length.
bool dropped_request_field(nghttp2_rcbuf* name) {
  const nghttp2_vec v = nghttp2_rcbuf_get_buf(name);
  switch (v.len) {
    case 7: return is(v, "upgrade");
    case 9: return is(v, "forwarded") || is(v, "x-real-ip");
    case 10: return is(v, "connection") || is(v, "keep-alive");
    case 15: return is(v, "x-forwarded-for");
    case 16: return is(v, "proxy-connection");
    case 17: return is(v, "x-forwarded-proto") || is(v, "transfer-encoding");
    case 23: return is(v, "x-forwarded-client-cert");
    default: return false;
  }
}

// Hop-by-hop response fields (the same test for trailers).
bool dropped_response_field(nghttp2_rcbuf* name) {
  const nghttp2_vec v = nghttp2_rcbuf_get_buf(name);
  switch (v.len) {
    case 10: return is(v, "connection") || is(v, "keep-alive");
    case 17: return is(v, "transfer-encoding");
    default: return false;
  }
}

// grpc-message is percent-encoded: bytes outside printable ASCII and '%'.
void percent_encode(const char* in, char* out, size_t cap) {
  static const char* hex = "0123456789ABCDEF";
  size_t o = 0;
  for (const unsigned char* p = reinterpret_cast<const unsigned char*>(in); *p && o + 4 < cap; ++p) {
    if (*p >= 0x20 && *p <= 0x7e && *p != '%') {
      out[o++] = static_cast<char>(*p);
    } else {
      out[o++] = '%';
      out[o++] = hex[*p >> 4];
      out[o++] = hex[*p & 15];
    }
  }
  out[o] = 0;
}

// A grpc-status value: decimal digits, else -1.
int parse_status(const uint8_t* v, size_t len) {
  if (len == 0 || len > 4) return -1;
  int n = 0;
  for (size_t i = 0; i < len; ++i) {
    if (v[i] < '0' || v[i] > '9') return -1;
    n = n * 10 + (v[i] - '0');
  }
  return n;
}

std::string_view view(const uint8_t* v, size_t len) {
  return std::string_view(reinterpret_cast<const char*>(v), len);
}

}  // namespace

uint64_t monotonic_us() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

const char* to_string(ResetBy by) {
  switch (by) {
    case ResetBy::None: return "none";
    case ResetBy::Client: return "client";
    case ResetBy::Backend: return "backend";
    case ResetBy::Gateway: return "gateway";
    case ResetBy::Connection: return "connection";
  }
  return "?";
}

// ---------------------------------------------------------------- HeaderList

HeaderList::~HeaderList() {
  clear();
  std::free(spill_);
}

HeaderList::Field* HeaderList::next_slot(size_t bytes) {
  if (count_ == kMaxFields || bytes_ + bytes > kMaxBytes) return nullptr;
  if (count_ == kInlineFields) {
    // Once per recycled stream at most: the storage stays for its next uses.
    if (spill_ == nullptr) spill_ = static_cast<Field*>(std::malloc(sizeof(Field) * kMaxFields));
    if (spill_ == nullptr) return nullptr;
    std::memcpy(spill_, inline_, sizeof(inline_));
  }
  bytes_ += bytes;
  Field* f = (count_ >= kInlineFields ? spill_ : inline_) + count_;
  ++count_;
  return f;
}

nghttp2_vec HeaderList::bytes_of(const void* p, uint32_t len) {
  if (len & kLiteral) return nghttp2_vec{static_cast<uint8_t*>(const_cast<void*>(p)), len & ~kLiteral};
  return nghttp2_rcbuf_get_buf(buffer(p));
}

bool HeaderList::add_rc(nghttp2_rcbuf* name, nghttp2_rcbuf* value) {
  nghttp2_vec n = nghttp2_rcbuf_get_buf(name);
  nghttp2_vec v = nghttp2_rcbuf_get_buf(value);
  Field* f = next_slot(n.len + v.len + 32);  // the byte limit keeps both lengths below kLiteral
  if (f == nullptr) return false;
  nghttp2_rcbuf_incref(name);
  nghttp2_rcbuf_incref(value);
  *f = Field{name, value, static_cast<uint32_t>(n.len), static_cast<uint32_t>(v.len)};
  return true;
}

bool HeaderList::add_static(const char* name, const char* value, size_t value_len) {
  size_t nl = std::strlen(name);
  Field* f = next_slot(nl + value_len + 32);
  if (f == nullptr) return false;
  *f = Field{name, value, static_cast<uint32_t>(nl) | kLiteral, static_cast<uint32_t>(value_len) | kLiteral};
  return true;
}

void HeaderList::clear() {
  const Field* f = fields();
  for (uint32_t i = 0; i < count_; ++i) {
    if (!(f[i].name_len & kLiteral)) nghttp2_rcbuf_decref(buffer(f[i].name));
    if (!(f[i].value_len & kLiteral)) nghttp2_rcbuf_decref(buffer(f[i].value));
  }
  count_ = 0;
  bytes_ = 0;
}

size_t HeaderList::to_nv(nghttp2_nv* nva) const {
  const Field* fs = fields();
  for (uint32_t i = 0; i < count_; ++i) {
    const Field& f = fs[i];
    // A submitted frame may wait in nghttp2's queue after this list is
    // cleared, so nghttp2 copies the fields, except what lives for ever:
    // add_static()'s literal names and HPACK static-table strings (lower
    // case, as NO_COPY_NAME requires). The copy lower-cased every name.
    uint8_t flags = NGHTTP2_NV_FLAG_NONE;
    if ((f.name_len & kLiteral) || nghttp2_rcbuf_is_static(buffer(f.name))) flags |= NGHTTP2_NV_FLAG_NO_COPY_NAME;
    if (!(f.value_len & kLiteral) && nghttp2_rcbuf_is_static(buffer(f.value))) flags |= NGHTTP2_NV_FLAG_NO_COPY_VALUE;
    const nghttp2_vec n = bytes_of(f.name, f.name_len);
    const nghttp2_vec v = bytes_of(f.value, f.value_len);
    nva[i] = nghttp2_nv{n.base, v.base, n.len, v.len, flags};
  }
  return count_;
}

bool HeaderList::find(const char* name, const uint8_t** value, size_t* len) const {
  const size_t nl = std::strlen(name);
  const Field* f = fields();
  for (uint32_t i = 0; i < count_; ++i) {
    if ((f[i].name_len & ~kLiteral) != nl) continue;
    if (std::memcmp(bytes_of(f[i].name, f[i].name_len).base, name, nl) != 0) continue;
    const nghttp2_vec v = bytes_of(f[i].value, f[i].value_len);
    *value = v.base;
    *len = v.len;
    return true;
  }
  return false;
}

// ---------------------------------------------------------------- Context

Context::Context(ChunkPool& chunks, Pool& pool)
    : chunks_(chunks), pool_(pool), memory_(std::make_unique<Memory>()) {}

Context::~Context() {
  for (Stream* s : free_streams_) delete s;
}

Stream* Context::new_stream() {
  Stream* s;
  if (free_streams_.empty()) {
    s = new Stream;  // warm-up only: streams are recycled afterwards
    s->reset(chunks_);
  } else {
    // free_stream() reset it already; a second pass would only reload a
    // stream that has gone cold in the cache since.
    s = free_streams_.back();
    free_streams_.pop_back();
  }
  ++streams_in_use_;
  return s;
}

void Context::free_stream(Stream* s) {
  // Unlinked from both sessions first, which is where they forget it as their
  // recent stream (Session::recent_).
  assert(s->down == nullptr && s->up == nullptr);
  remove_deadline(s);
  remove_delayed(s);
  s->reset(chunks_);
  --streams_in_use_;
  free_streams_.push_back(s);
}

void Context::add_deadline(Stream* s) {
  s->heap_index = deadlines_.size();
  deadlines_.push_back(s);  // grows during warm-up only
  sift_up(s->heap_index);
}

void Context::remove_deadline(Stream* s) {
  size_t i = s->heap_index;
  if (i == Stream::kNoDeadline) return;
  s->heap_index = Stream::kNoDeadline;
  Stream* last = deadlines_.back();
  deadlines_.pop_back();
  if (last == s) return;
  deadlines_[i] = last;
  last->heap_index = i;
  sift_up(i);
  sift_down(last->heap_index);
}

void Context::sift_up(size_t i) {
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (deadlines_[parent]->deadline_ms <= deadlines_[i]->deadline_ms) break;
    std::swap(deadlines_[parent], deadlines_[i]);
    deadlines_[parent]->heap_index = parent;
    deadlines_[i]->heap_index = i;
    i = parent;
  }
}

void Context::sift_down(size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < deadlines_.size() && deadlines_[l]->deadline_ms < deadlines_[m]->deadline_ms) m = l;
    if (r < deadlines_.size() && deadlines_[r]->deadline_ms < deadlines_[m]->deadline_ms) m = r;
    if (m == i) return;
    std::swap(deadlines_[m], deadlines_[i]);
    deadlines_[m]->heap_index = m;
    deadlines_[i]->heap_index = i;
    i = m;
  }
}

// ---------------------------------------------------------------- Forward
// What happens to a forwarded stream when one side moves.

struct Forward {
  // More body bytes (or the end) for a data source that may be waiting.
  static void resume_request(Stream* s) {
    if (!s->req_deferred || s->up == nullptr) return;
    s->req_deferred = false;
    nghttp2_session_resume_data(ng(s->up->session_), s->up_id);
  }
  static void resume_response(Stream* s) {
    if (!s->resp_deferred || s->down == nullptr) return;
    s->resp_deferred = false;
    nghttp2_session_resume_data(ng(s->down->session_), s->down_id);
  }

  template <class SessionT>  // Downstream or Upstream: Forward is their friend
  static void forget_recent(SessionT& session) {
    session.recent_id_ = 0;
    session.recent_ = nullptr;
  }
  static void link_down(DownstreamSession& d, Stream* s) {
    s->down = &d;
    s->down_prev = nullptr;
    s->down_next = d.streams_;
    if (d.streams_) d.streams_->down_prev = s;
    d.streams_ = s;
    ++d.active_streams_;
  }
  static void unlink_down(Stream* s) {
    DownstreamSession& d = *s->down;
    if (s->down_prev) s->down_prev->down_next = s->down_next; else d.streams_ = s->down_next;
    if (s->down_next) s->down_next->down_prev = s->down_prev;
    s->down_prev = s->down_next = nullptr;
    --d.active_streams_;
    if (d.recent_ == s) forget_recent(d);
    s->down = nullptr;
  }
  static void link_up(UpstreamSession& u, Stream* s) {
    s->up = &u;
    s->up_prev = nullptr;
    s->up_next = u.streams_;
    if (u.streams_) u.streams_->up_prev = s;
    u.streams_ = s;
    ++u.active_streams_;
    if (!s->is_probe) u.ctx_.pool().stream_started(u);
  }
  static void unlink_up(Stream* s, Outcome outcome) {
    UpstreamSession& u = *s->up;
    if (s->up_prev) s->up_prev->up_next = s->up_next; else u.streams_ = s->up_next;
    if (s->up_next) s->up_next->up_prev = s->up_prev;
    s->up_prev = s->up_next = nullptr;
    --u.active_streams_;
    if (u.recent_ == s) forget_recent(u);
    s->up = nullptr;
    s->up_id = -1;
    if (!s->is_probe) u.ctx_.pool().stream_finished(u, outcome);
  }

  // The gateway answers the stream itself with a grpc-status: trailers-only
  // if nothing was sent yet, else trailers after the data already queued.
  static void respond_status(Stream* s, const char* code, const char* why) {
    DownstreamSession* d = s->down;
    if (d == nullptr || s->resp_eof) return;
    percent_encode(why, s->message, sizeof s->message);
    const size_t code_len = std::strlen(code);
    s->grpc_status = static_cast<int16_t>(parse_status(reinterpret_cast<const uint8_t*>(code), code_len));
    if (!s->resp_started) {
      s->http_status = 200;
      nghttp2_nv nva[4] = {literal_nv(":status", "200"), literal_nv("content-type", "application/grpc"),
                           make_nv("grpc-status", code, code_len),
                           make_nv("grpc-message", s->message, std::strlen(s->message))};
      s->resp_started = true;
      s->resp_eof = true;
      nghttp2_submit_response(ng(d->session_), s->down_id, nva, 4, nullptr);
    } else {
      s->resp_trailers.clear();
      s->resp_trailers.add_static("grpc-status", code, code_len);
      s->resp_trailers.add_static("grpc-message", s->message, std::strlen(s->message));
      s->resp_eof = true;
      resume_response(s);
    }
    d->owner_.wake();
  }

  static void respond_unavailable(Context& ctx, Stream* s, const char* why) {
    if (s->down == nullptr || s->resp_eof) return;
    ++ctx.counters().streams_unavailable;
    respond_status(s, "14", why);
  }

  // Body bytes that could not be buffered (the shard's body pool is full)
  // were refused: forwarding the rest would deliver a request or response
  // with a hole in it, so the stream ends at both sides instead. The client
  // gets ENHANCE_YOUR_CALM, which gRPC reports as RESOURCE_EXHAUSTED (a
  // status a client backs off on); the backend gets CANCEL.
  static void reset_unbuffered(Context& ctx, Stream* s) {
    if (s->gateway_cancelled) return;
    ++ctx.counters().body_buffer_resets;
    s->gateway_cancelled = true;
    s->replayable = false;
    s->req_kept = 0;
    s->req_body.clear();
    s->resp_body.clear();
    if (s->up != nullptr) {
      nghttp2_submit_rst_stream(ng(s->up->session_), NGHTTP2_FLAG_NONE, s->up_id, NGHTTP2_CANCEL);
      s->up->owner_.wake();
    }
    if (s->down != nullptr) {
      s->reset_by = ResetBy::Gateway;
      s->resp_eof = true;  // nothing more goes to the client but the reset
      nghttp2_submit_rst_stream(ng(s->down->session_), NGHTTP2_FLAG_NONE, s->down_id, NGHTTP2_ENHANCE_YOUR_CALM);
      s->down->owner_.wake();
    }
  }

  static void deadline_exceeded(Context& ctx, Stream* s) {
    if (s->resp_eof) return;  // the answer is complete; only the client still reads it
    ++ctx.counters().deadline_exceeded;
    respond_status(s, "4", "deadline exceeded at the gateway");
    if (s->up != nullptr) {
      s->gateway_cancelled = true;
      nghttp2_submit_rst_stream(ng(s->up->session_), NGHTTP2_FLAG_NONE, s->up_id, NGHTTP2_CANCEL);
      s->up->owner_.wake();
    }
  }

  // Body bytes one half received for the other: buffered, and held against
  // the receiving session's window until the other side takes them. Bytes
  // the pool refuses end the stream at both sides (never a hole): false.
  static bool buffer_body(Context& ctx, nghttp2_session* session, int32_t id, Stream* s, const uint8_t* data,
                          size_t len, ByteQueue& body, size_t& unconsumed) {
    if (!body.append(data, len)) {
      nghttp2_session_consume(session, id, len);
      reset_unbuffered(ctx, s);
      return false;
    }
    unconsumed += len;
    return true;
  }

  static ssize_t read_request_body(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                                   nghttp2_data_source* source, void*) {
    auto* s = static_cast<Stream*>(source->ptr);
    const size_t n = take_request_bytes(s, buf, length);
    if (n > 0 && s->down) {
      // The backend's side took the bytes: now the client may send more.
      size_t give = std::min(n, s->req_unconsumed);
      s->req_unconsumed -= give;
      nghttp2_session_consume(ng(s->down->session_), s->down_id, give);
      s->down->owner_.wake();
    }
    if (s->req_body.size() == s->req_kept) {  // nothing left to send
      if (s->req_eof) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
      } else if (n == 0) {
        s->req_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
      }
    }
    return static_cast<ssize_t>(n);
  }

  // Copies the next request bytes into nghttp2's frame. A retryable stream
  // keeps them in req_body (no copy elsewhere) until the response starts or
  // they pass the cluster's retry_buffer; then they are dropped and the
  // stream is no longer retryable.
  static size_t take_request_bytes(Stream* s, uint8_t* buf, size_t length) {
    if (!s->replayable) return s->req_body.read(buf, length);
    const size_t n = s->req_body.peek_at(s->req_kept, buf, length);
    s->req_kept += n;
    if (s->down == nullptr || s->policy.retries == 0 || s->req_kept > s->policy.retry_buffer)
      stop_keeping(s);  // these went too
    return n;
  }

  static void stop_keeping(Stream* s) {
    s->req_body.consume(s->req_kept);
    s->req_kept = 0;
    s->replayable = false;
  }

  static ssize_t read_response_body(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                                    uint32_t* flags, nghttp2_data_source* source, void*) {
    auto* s = static_cast<Stream*>(source->ptr);
    size_t n = s->resp_body.read(buf, length);
    s->resp_bytes += n;
    if (s->down != nullptr) s->down->data_frame_sent();  // this call makes a DATA frame
    if (n > 0 && s->up) {
      size_t give = std::min(n, s->resp_unconsumed);
      s->resp_unconsumed -= give;
      nghttp2_session_consume(ng(s->up->session_), s->up_id, give);
      s->up->owner_.wake();
    }
    if (s->resp_body.empty()) {
      if (s->resp_eof) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (!s->resp_trailers.empty()) {
          nghttp2_nv nva[HeaderList::kMaxFields];
          size_t count = s->resp_trailers.to_nv(nva);
          if (nghttp2_submit_trailer(session, stream_id, nva, count) == 0) *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
      } else if (n == 0) {
        s->resp_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
      }
    }
    return static_cast<ssize_t>(n);
  }

  // The cluster for a request (src/edge route.cc), and what the client
  // connection's snapshot says of it: the stream keeps that copy to its end.
  static ClusterPolicy route(const DownstreamSession& d, Stream* s) {
    uint32_t cluster = d.settings_.cluster;
    if (d.settings_.routes != nullptr && !d.settings_.routes->empty()) {
      route::Field authority, path;
      if (!s->req_headers.find(":authority", &authority.data, &authority.len))
        s->req_headers.find("host", &authority.data, &authority.len);
      s->req_headers.find(":path", &path.data, &path.len);
      cluster = d.settings_.routes->cluster_for(authority, path);
    }
    s->cluster = static_cast<int32_t>(cluster);
    const std::vector<ClusterPolicy>* clusters = d.settings_.clusters;
    if (clusters != nullptr && cluster < clusters->size()) return (*clusters)[cluster];
    ClusterPolicy p;
    p.pool_id = cluster;
    return p;
  }

  // grpc-timeout bounds the stream, capped by the cluster's maximum (the
  // capped value is what the backend is told).
  static void start_deadline(Context& ctx, Stream* s) {
    const uint8_t* v = nullptr;
    size_t len = 0;
    if (!s->req_headers.find("grpc-timeout", &v, &len)) return;
    auto ms = grpc::parse_timeout_ms(std::string_view(reinterpret_cast<const char*>(v), len));
    if (!ms) {
      ++ctx.counters().bad_grpc_timeout;
      return;
    }
    const uint64_t cap = s->policy.max_grpc_timeout_ms;
    if (cap != 0 && *ms > cap) {
      *ms = cap;
      s->timeout_text[grpc::format_timeout(cap, s->timeout_text)] = 0;
    }
    s->deadline_ms = ctx.pool().now_ms() + *ms;
    ctx.add_deadline(s);
  }

  // The client's request headers are complete: route, pick a backend, submit
  // (or answer here, for a responder cluster).
  static void forward_request(Context& ctx, DownstreamSession& d, Stream* s) {
    s->policy = route(d, s);
    start_deadline(ctx, s);
    if (s->policy.respond != config::Respond::Off) {
      if (s->policy.respond_delay_ms == 0) {
        respond_when_read(ctx, d, s);
      } else {
        s->respond_at_ms = ctx.pool().now_ms() + s->policy.respond_delay_ms;
        ctx.add_delayed(s);  // echo buffers the request meanwhile, within its window
      }
      return;
    }
    submit_upstream(ctx, s, -1);
  }

  // ---- responder clusters: the gateway is the gRPC server.

  // Trailers after the last DATA frame of a gateway-made body.
  static void end_body(nghttp2_session* session, int32_t stream_id, Stream* s, uint32_t* flags) {
    s->resp_eof = true;
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    nghttp2_nv nva[HeaderList::kMaxFields];
    const size_t count = s->resp_trailers.to_nv(nva);
    if (nghttp2_submit_trailer(session, stream_id, nva, count) == 0) *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
  }

  // Echo: the response body is the request body byte for byte, which in
  // gRPC's framing is each request message answered with itself. Request
  // bytes are given back to the client's window only as they go out here,
  // as forwarding does once the backend took them: a client that does not
  // read its responses stops being able to send.
  static ssize_t read_echo_body(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                                uint32_t* flags, nghttp2_data_source* source, void*) {
    auto* s = static_cast<Stream*>(source->ptr);
    // resp_eof before the end of the request: the gateway answered already
    // (a deadline); what is still buffered is not echoed.
    const size_t n = s->resp_eof ? 0 : s->req_body.read(buf, length);
    s->resp_bytes += n;
    if (s->down != nullptr) s->down->data_frame_sent();
    if (n > 0) {
      const size_t give = std::min(n, s->req_unconsumed);
      s->req_unconsumed -= give;
      nghttp2_session_consume(session, stream_id, give);
    }
    if (s->req_body.empty() || s->resp_eof) {
      if (s->req_eof || s->resp_eof) {
        end_body(session, stream_id, s, flags);
      } else if (n == 0) {
        s->resp_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
      }
    }
    return static_cast<ssize_t>(n);
  }

  // The head of respond = "status"'s response message: gRPC's 5-byte
  // prefix, then the start of a protobuf message of `size` bytes that is one
  // field 1 of wire type "bytes" holding zeros. Any message type parses it
  // (as its field 1 when that is bytes or a string, else as an unknown
  // field), so typed clients take it as a reply; a plain run of zeros is no
  // protobuf. The length is a 4-byte varint past 127 (protobuf parsers read
  // redundant varint bytes), so every size from 2 up has a head. `size` 0
  // is the empty message. Returns the head's length.
  static size_t message_head(uint32_t size, uint8_t (&head)[10]) {
    head[0] = 0;
    head[1] = static_cast<uint8_t>(size >> 24);
    head[2] = static_cast<uint8_t>(size >> 16);
    head[3] = static_cast<uint8_t>(size >> 8);
    head[4] = static_cast<uint8_t>(size);
    if (size < 2) return 5;  // the config allows 0 or from 2
    head[5] = 0x0a;          // field 1, wire type 2
    if (size - 2 < 128) {
      head[6] = static_cast<uint8_t>(size - 2);
      return 7;
    }
    const uint32_t len = size - 5;  // after the tag and the 4-byte length
    head[6] = static_cast<uint8_t>(0x80 | (len & 0x7f));
    head[7] = static_cast<uint8_t>(0x80 | ((len >> 7) & 0x7f));
    head[8] = static_cast<uint8_t>(0x80 | ((len >> 14) & 0x7f));
    head[9] = static_cast<uint8_t>(len >> 21);
    return 10;
  }

  // respond = "status" with a message: its head and zeros, written into
  // nghttp2's frame buffer (resp_bytes is how far it got), then the trailers.
  static ssize_t read_status_body(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                                  uint32_t* flags, nghttp2_data_source* source, void*) {
    auto* s = static_cast<Stream*>(source->ptr);
    uint8_t head[10];
    const size_t head_len = message_head(s->policy.response_bytes, head);
    const uint64_t total = 5 + uint64_t{s->policy.response_bytes};
    const uint64_t at = s->resp_bytes;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(length, total - at));
    std::memset(buf, 0, n);
    for (uint64_t i = at; i < head_len && i < at + n; ++i) buf[i - at] = head[i];
    s->resp_bytes += n;
    if (s->down != nullptr) s->down->data_frame_sent();
    if (s->resp_bytes == total) end_body(session, stream_id, s, flags);
    return static_cast<ssize_t>(n);
  }

  // grpc-status values as text, for a responder's answers: literals, so
  // nothing is formatted per call.
  static const char* status_text(uint8_t code) {
    static const char* const kText[17] = {"0", "1", "2",  "3",  "4",  "5",  "6",  "7", "8",
                                          "9", "10", "11", "12", "13", "14", "15", "16"};
    return kText[code <= 16 ? code : 2];  // config allows 0..16; 2 = UNKNOWN
  }

  // A responder cluster's stream gets its response (echo's body then follows
  // the request as it arrives). Nothing is allocated here beyond nghttp2's
  // own frames; counted in streams_responded once answered.
  static void respond_here(Context& ctx, DownstreamSession& d, Stream* s) {
    if (s->resp_started) return;  // answered meanwhile (a deadline during a delay)
    ++ctx.counters().streams_responded;
    const ClusterPolicy& p = s->policy;
    const bool echo = p.respond == config::Respond::Echo;
    const char* code = echo ? "0" : status_text(p.respond_status);
    const char* message = echo ? nullptr : p.respond_message;
    s->http_status = 200;
    s->resp_started = true;
    nghttp2_nv nva[4] = {literal_nv(":status", "200"), literal_nv("content-type", "application/grpc")};
    size_t n = 2;
    nghttp2_data_provider prd{};
    prd.source.ptr = s;
    // A non-zero status without a message to send is trailers-only, as gRPC
    // servers answer an error; status 0 always carries a message (an empty
    // one by default): a unary call that ends OK without one is an error
    // for the client.
    if (!echo && p.respond_status != 0 && p.response_bytes == 0) {
      s->grpc_status = static_cast<int16_t>(p.respond_status);
      s->resp_eof = true;
      nva[n++] = literal_nv("grpc-status", code);
      if (message != nullptr) nva[n++] = make_nv("grpc-message", message, std::strlen(message));
      nghttp2_submit_response(ng(d.session_), s->down_id, nva, n, nullptr);
      d.owner_.wake();
      return;
    }
    s->resp_trailers.add_static("grpc-status", code, std::strlen(code));
    if (message != nullptr) s->resp_trailers.add_static("grpc-message", message, std::strlen(message));
    prd.read_callback = echo ? read_echo_body : read_status_body;
    nghttp2_submit_response(ng(d.session_), s->down_id, nva, n, &prd);
    d.owner_.wake();
  }

  static bool echoes(const Stream* s) { return s->policy.respond == config::Respond::Echo; }

  // respond = "status" answers once the request has ended, as a gRPC server
  // answers a unary or client-streaming call after reading it: a complete
  // answer before the end of the upload leaves clients such as curl waiting
  // to finish a stream the server closed (RFC 9113 §8.1 would need an
  // RST_STREAM NO_ERROR after the response; nghttp2 would send it in place
  // of the queued response). Echo answers as the request arrives.
  static void respond_when_read(Context& ctx, DownstreamSession& d, Stream* s) {
    if (!echoes(s) && !s->req_eof) {
      s->respond_at_eof = true;  // d_frame_recv, at the client's END_STREAM
      return;
    }
    respond_here(ctx, d, s);
  }

  // A delayed responder stream is due.
  static void respond_delayed(Context& ctx, Stream* s) {
    if (s->down != nullptr) respond_when_read(ctx, *s->down, s);
  }

  static void submit_upstream(Context& ctx, Stream* s, int avoid) {
    DownstreamSession& d = *s->down;
    if (s->attempts > 0 && s->deadline_ms != 0) {
      // A retry tells the backend the time that is left, not the original timeout.
      const uint64_t now = ctx.pool().now_ms();
      const uint64_t left = s->deadline_ms > now ? s->deadline_ms - now : 0;
      s->timeout_text[grpc::format_timeout(left, s->timeout_text)] = 0;
    }
    const char* why = "no upstream available";
    UpstreamSession* u = ctx.pool().pick(s->policy.pool_id, avoid, why);
    if (u == nullptr) {
      respond_unavailable(ctx, s, why);
      return;
    }
    nghttp2_nv nva[HeaderList::kMaxFields + 4];
    size_t n = s->req_headers.to_nv(nva);
    for (size_t i = 0; i < n; ++i) {
      // The backend hop's own scheme: h2c or TLS ([clusters.tls]).
      if (nva[i].namelen == 7 && std::memcmp(nva[i].name, ":scheme", 7) == 0) {
        nva[i].value = reinterpret_cast<uint8_t*>(const_cast<char*>(u->scheme_));
        nva[i].valuelen = std::strlen(u->scheme_);
        nva[i].flags |= NGHTTP2_NV_FLAG_NO_COPY_VALUE;
      } else if (s->timeout_text[0] != 0 && nva[i].namelen == 12 && std::memcmp(nva[i].name, "grpc-timeout", 12) == 0) {
        nva[i].value = reinterpret_cast<uint8_t*>(s->timeout_text);
        nva[i].valuelen = std::strlen(s->timeout_text);
        nva[i].flags &= static_cast<uint8_t>(~NGHTTP2_NV_FLAG_NO_COPY_VALUE);
      }
    }
    nva[n++] = make_nv("x-forwarded-for", d.settings_.client_ip.data(), d.settings_.client_ip.size());
    nva[n++] = literal_nv("x-forwarded-proto", "https");
    // Copied like x-forwarded-for: nghttp2 packs a request's fields into the
    // one block it allocates per request anyway (no allocation added), and
    // the HEADERS frame may be sent after the client connection is gone.
    if (!d.settings_.client_cert.empty())
      nva[n++] = make_nv("x-forwarded-client-cert", d.settings_.client_cert.data(), d.settings_.client_cert.size());
    nghttp2_data_provider prd{};
    prd.source.ptr = s;
    prd.read_callback = read_request_body;
    const bool body = !(s->req_eof && s->req_body.empty());
    int32_t id = nghttp2_submit_request(ng(u->session_), nullptr, nva, n, body ? &prd : nullptr, s);
    if (id < 0) {
      respond_unavailable(ctx, s, nghttp2_strerror(id));
      return;
    }
    s->up_id = id;
    s->req_deferred = false;  // a new data source (a retry's earlier one is gone)
    ++s->attempts;
    s->endpoint = u->endpoint_;
    link_up(*u, s);
    ++ctx.counters().streams_forwarded;
    u->owner_.wake();
  }

  // The backend never processed the stream: send it again elsewhere (the
  // pool avoids the endpoint that failed it), if the body sent so far was
  // kept and the pool's retry policy allows another attempt.
  static bool try_retry(Context& ctx, Stream* s, int failed_endpoint) {
    if (s->down == nullptr || s->resp_started || !s->replayable) return false;
    if (!ctx.pool().may_retry(s->policy, s->attempts)) return false;
    s->req_kept = 0;  // everything from the first byte again
    ++ctx.counters().retries;
    submit_upstream(ctx, s, failed_endpoint);
    return true;
  }

  static bool grpc_unavailable(const Stream* s) {
    const uint8_t* v = nullptr;
    size_t len = 0;
    const bool found = s->resp_trailers.find("grpc-status", &v, &len) || s->resp_headers.find("grpc-status", &v, &len);
    return found && len == 2 && v[0] == '1' && v[1] == '4';
  }

  static Outcome outcome_of(const Stream* s, uint32_t error_code) {
    if (s->gateway_cancelled || s->down == nullptr) return Outcome::Cancelled;
    if (error_code == NGHTTP2_REFUSED_STREAM && !s->resp_started && s->resp_headers.empty())
      return Outcome::NotProcessed;
    if (error_code != NGHTTP2_NO_ERROR) return Outcome::Failure;
    return grpc_unavailable(s) ? Outcome::Failure : Outcome::Success;
  }

  // A health-check stream ended: judge it and tell its sink.
  static void finish_probe(Stream* s, uint32_t error_code, const char* lost) {
    ProbeSink* sink = s->probe;
    s->probe = nullptr;
    const char* why = lost;
    if (why == nullptr) {
      const uint8_t* v = nullptr;
      size_t len = 0;
      static thread_local uint8_t body[512];
      size_t n = s->resp_body.read(body, sizeof body);
      if (error_code != NGHTTP2_NO_ERROR) {
        why = "health check stream reset by the backend";
      } else if (s->probe_oversize) {
        why = "health check: response larger than 512 bytes";
      } else if (!s->resp_headers.find(":status", &v, &len) || len != 3 || std::memcmp(v, "200", 3) != 0) {
        why = "health check: HTTP status is not 200";
      } else if (!(s->resp_trailers.find("grpc-status", &v, &len) || s->resp_headers.find("grpc-status", &v, &len)) ||
                 len != 1 || v[0] != '0') {
        why = "health check: grpc-status is not 0";
      } else if (auto st = grpc::parse_health_response(body, n, &why)) {
        why = *st == grpc::ServingStatus::Serving ? nullptr
              : *st == grpc::ServingStatus::NotServing ? "health check: NOT_SERVING"
              : *st == grpc::ServingStatus::ServiceUnknown ? "health check: SERVICE_UNKNOWN"
                                                            : "health check: UNKNOWN";
      }
    }
    if (sink != nullptr) sink->probe_done(why == nullptr, why);
  }

  // The backend's response headers arrived.
  static void forward_response(Context&, Stream* s, bool end_stream) {
    DownstreamSession* d = s->down;
    if (d == nullptr || s->resp_started) return;
    nghttp2_nv nva[HeaderList::kMaxFields];
    size_t n = s->resp_headers.to_nv(nva);
    nghttp2_data_provider prd{};
    prd.source.ptr = s;
    prd.read_callback = read_response_body;
    const uint8_t* status = nullptr;
    size_t status_len = 0;
    if (s->resp_headers.find(":status", &status, &status_len))
      s->http_status = static_cast<uint16_t>(std::max(0, parse_status(status, status_len)));
    s->resp_started = true;
    if (end_stream) s->resp_eof = true;
    if (s->replayable) stop_keeping(s);  // the backend answers: no retry from here
    nghttp2_submit_response(ng(d->session_), s->down_id, nva, n, end_stream ? nullptr : &prd);
    d->owner_.wake();
  }

  // The grpc-status the client was sent: the gateway's own, else the
  // backend's (trailers, or a trailers-only response) unless the stream was
  // reset before it went out.
  static int grpc_status_sent(const Stream* s) {
    if (s->grpc_status >= 0) return s->grpc_status;
    if (s->reset_by != ResetBy::None) return -1;
    const uint8_t* v = nullptr;
    size_t len = 0;
    if (s->resp_trailers.find("grpc-status", &v, &len) || s->resp_headers.find("grpc-status", &v, &len))
      return parse_status(v, len);
    return -1;
  }

  static void report_end(DownstreamSession& d, const Stream* s) {
    StreamEnd e;
    const uint8_t* v = nullptr;
    size_t len = 0;
    if (s->req_headers.find(":authority", &v, &len) || s->req_headers.find("host", &v, &len)) e.authority = view(v, len);
    if (s->req_headers.find(":path", &v, &len)) e.path = view(v, len);
    e.http_status = s->http_status;
    e.grpc_status = grpc_status_sent(s);
    e.reset_by = s->reset_by;
    e.reset_code = s->reset_code;
    e.request_bytes = s->req_bytes;
    e.response_bytes = s->resp_bytes;
    e.start_us = s->start_us;
    e.end_us = monotonic_us();
    e.cluster = s->cluster;
    e.endpoint = s->endpoint;
    e.attempts = s->attempts;
    d.owner_.stream_ended(e);
  }

  // The downstream half ended (client closed or reset it, or its connection
  // went away).
  static void release_down(Context& ctx, Stream* s, uint32_t error_code, bool session_alive) {
    DownstreamSession* d = s->down;
    if (!session_alive) {
      s->reset_by = ResetBy::Connection;
      s->reset_code = error_code;
    }
    report_end(*d, s);
    if (session_alive && s->req_unconsumed > 0)
      nghttp2_session_consume_connection(ng(d->session_), s->req_unconsumed);
    s->req_unconsumed = 0;
    ctx.remove_deadline(s);
    ctx.remove_delayed(s);
    unlink_down(s);
    if (s->up) {
      // A stream the gateway ended itself has had its upstream half cancelled.
      if (!s->gateway_cancelled && (error_code != NGHTTP2_NO_ERROR || !s->resp_eof)) {
        if (error_code != NGHTTP2_NO_ERROR) ++ctx.counters().streams_reset_by_client;
        nghttp2_submit_rst_stream(ng(s->up->session_), NGHTTP2_FLAG_NONE, s->up_id, NGHTTP2_CANCEL);
        s->up->owner_.wake();
      }
      return;
    }
    ctx.free_stream(s);
  }

  // The upstream half ended (closed or reset by the backend).
  static void release_up(Context& ctx, Stream* s, uint32_t error_code, bool session_alive) {
    UpstreamSession* u = s->up;
    if (session_alive && s->resp_unconsumed > 0)
      nghttp2_session_consume_connection(ng(u->session_), s->resp_unconsumed);
    s->resp_unconsumed = 0;
    const int endpoint = u->endpoint_;
    const bool probe = s->is_probe;
    const Outcome outcome = probe ? Outcome::Success : outcome_of(s, error_code);
    unlink_up(s, outcome);
    if (probe) {
      finish_probe(s, error_code, nullptr);
      ctx.free_stream(s);
      return;
    }
    if (s->down == nullptr) {
      ctx.free_stream(s);
      return;
    }
    if (outcome == Outcome::NotProcessed) {
      s->resp_headers.clear();
      s->resp_trailers.clear();
      s->resp_body.clear();
      if (try_retry(ctx, s, endpoint)) return;
      // No retry left: the client sees REFUSED_STREAM itself, which gRPC
      // clients may retry on their own.
    }
    if (s->gateway_cancelled) return;  // the client was answered or reset already
    if (!s->resp_eof) {
      if (error_code != NGHTTP2_NO_ERROR) {
        ++ctx.counters().streams_reset_by_upstream;
        s->reset_by = ResetBy::Backend;
        nghttp2_submit_rst_stream(ng(s->down->session_), NGHTTP2_FLAG_NONE, s->down_id, error_code);
      } else if (!s->resp_started) {
        // Closed cleanly without a response (RST_STREAM NO_ERROR first): the
        // client still needs an answer.
        respond_unavailable(ctx, s, "upstream closed the stream without a response");
        return;
      } else {
        s->resp_eof = true;
        resume_response(s);
      }
      s->down->owner_.wake();
    }
  }
};

// ---------------------------------------------------------------- Callbacks

struct Callbacks {
  // The Stream nghttp2 holds for `id` (see Session::recent_): the one
  // remembered, or nghttp2's, remembered if it is this session's stream `id`
  // (its `Side` half is linked to `self` under that id).
  template <class SessionT, SessionT* Stream::*Side, int32_t Stream::*Id>
  static Stream* stream_of(SessionT& self, nghttp2_session* session, int32_t id) {
    if (id == self.recent_id_ && id != 0) return self.recent_;
    auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, id));
    if (s != nullptr && s->*Side == &self && s->*Id == id) {
      self.recent_id_ = id;
      self.recent_ = s;
    }
    return s;
  }
  static Stream* down_stream(DownstreamSession& d, nghttp2_session* session, int32_t id) {
    return stream_of<DownstreamSession, &Stream::down, &Stream::down_id>(d, session, id);
  }
  static Stream* up_stream(UpstreamSession& u, nghttp2_session* session, int32_t id) {
    return stream_of<UpstreamSession, &Stream::up, &Stream::up_id>(u, session, id);
  }

  // ---- downstream (server) side
  static int d_begin_headers(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
    auto* d = static_cast<DownstreamSession*>(user);
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    d->stream_opened();
    Stream* s = d->ctx_.new_stream();
    s->start_us = monotonic_us();
    s->down_id = frame->hd.stream_id;
    Forward::link_down(*d, s);
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s);
    d->recent_id_ = frame->hd.stream_id;
    d->recent_ = s;
    return 0;
  }

  // The header block's stream: its begin callback made it the session's
  // recent stream, so its fields find it without a lookup — unless the block
  // spans several receive() calls (CONTINUATION frames, a block cut by a
  // TLS record or a read) and a produce() or another stream's event between
  // them looked up another stream: then it is looked up again. Answering
  // "not ours" there dropped the rest of the block's fields and forwarded
  // the request (or response, or trailers) without them (found by the h2
  // fuzz target).
  template <typename SessionT, SessionT* Stream::*Side, int32_t Stream::*Id>
  static Stream* block_stream(SessionT& self, nghttp2_session* session, const nghttp2_frame* frame) {
    if (self.recent_id_ == frame->hd.stream_id) return self.recent_;
    Stream* s = stream_of<SessionT, Side, Id>(self, session, frame->hd.stream_id);
    return s != nullptr && s->*Side == &self && s->*Id == frame->hd.stream_id ? s : nullptr;
  }

  static int d_header(nghttp2_session* session, const nghttp2_frame* frame, nghttp2_rcbuf* name,
                      nghttp2_rcbuf* value, uint8_t, void* user) {
    auto* d = static_cast<DownstreamSession*>(user);
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    Stream* s = block_stream<DownstreamSession, &Stream::down, &Stream::down_id>(*d, session, frame);
    if (s == nullptr) return 0;
    if (s->headers_rejected || dropped_request_field(name)) return 0;
    if (!s->req_headers.add_rc(name, value)) {
      // Answered 431 once the block ends (d_frame_recv): the client can tell
      // its request was too large, which an INTERNAL_ERROR reset did not say.
      // The rest of the block is still decoded (HPACK state) but not kept.
      s->headers_rejected = true;
      s->req_headers.clear();
    }
    return 0;
  }

  // The request's header fields went past the gateway's limits: 431 Request
  // Header Fields Too Large (RFC 6585), the stream ended by the response.
  static void reject_headers(DownstreamSession& d, nghttp2_session* session, Stream* s) {
    d.glitch(d.ctx_.counters().header_limit_resets);
    s->http_status = 431;
    s->resp_started = true;
    s->resp_eof = true;
    const nghttp2_nv nva[] = {literal_nv(":status", "431")};
    // A body still to come is dropped as it arrives (d_data_chunk gives its
    // window back). No RST_STREAM NO_ERROR after the response: nghttp2 would
    // send it in place of the queued HEADERS.
    nghttp2_submit_response(session, s->down_id, nva, 1, nullptr);
    d.owner_.wake();
  }

  // Every frame header the session reads (frames nghttp2 ignores without
  // parsing excepted): what serves no request is a glitch.
  static int d_begin_frame(nghttp2_session* session, const nghttp2_frame_hd* hd, void* user) {
    auto* d = static_cast<DownstreamSession*>(user);
    Counters& c = d->ctx_.counters();
    ++d->frames_seen_;
    switch (hd->type) {
      case NGHTTP2_DATA:
        if (hd->length == 0 && !(hd->flags & NGHTTP2_FLAG_END_STREAM)) d->glitch(c.glitch_empty_data);
        break;
      case NGHTTP2_PRIORITY: d->glitch(c.glitch_priority); break;
      case NGHTTP2_PING:
        // gRPC's BDP estimation pings as the response data arrives: those
        // PINGs are paid for by DATA frames, the others are glitches. ACKs
        // never are: they answer the gateway's own (drain, keepalive).
        if (hd->flags & NGHTTP2_FLAG_ACK) break;
        if (d->ping_credit_ > 0) --d->ping_credit_;
        else d->glitch(c.glitch_pings);
        break;
      case NGHTTP2_SETTINGS:
        if (hd->flags & NGHTTP2_FLAG_ACK) break;
        if (!d->preface_settings_seen_) d->preface_settings_seen_ = true;
        else d->glitch(c.glitch_settings);
        break;
      case NGHTTP2_WINDOW_UPDATE:
        if (d->window_update_credit_ > 0) --d->window_update_credit_;
        else d->glitch(c.glitch_window_updates);
        break;
      case NGHTTP2_RST_STREAM:
        // For a stream already closed, nghttp2 drops it without a word (a
        // reset racing the end of a response is rare; a flood of them free).
        if (nghttp2_session_get_stream_user_data(session, hd->stream_id) == nullptr) d->glitch(c.glitch_stale_resets);
        break;
      case NGHTTP2_HEADERS:
      case NGHTTP2_GOAWAY:
      case NGHTTP2_CONTINUATION:
      case NGHTTP2_PUSH_PROMISE:  // a connection error, answered by nghttp2
        break;
      default: d->glitch(c.glitch_unknown_frames); break;
    }
    return 0;
  }

  // Frames of unknown types reach d_begin_frame only through the extension
  // path (make_option); their contents are dropped here.
  static int d_extension_chunk(nghttp2_session*, const nghttp2_frame_hd*, const uint8_t*, size_t, void*) {
    return 0;
  }
  static int d_unpack_extension(nghttp2_session*, void** payload, const nghttp2_frame_hd*, void*) {
    *payload = nullptr;
    return NGHTTP2_ERR_CANCEL;
  }

  // nghttp2 answered a frame with RST_STREAM or GOAWAY. A reset the client
  // provokes (MadeYouReset, CVE-2025-8671) also cancels a stream: counted
  // here, when nghttp2 queues the RST_STREAM, since it may never be sent
  // (nor the stream closed) if a GOAWAY overtakes it.
  static int d_invalid_frame(nghttp2_session* session, const nghttp2_frame* frame, int, void* user) {
    auto* d = static_cast<DownstreamSession*>(user);
    d->glitch(d->ctx_.counters().glitch_invalid_frames);
    if (frame->hd.stream_id != 0) {
      Stream* s = down_stream(*d, session, frame->hd.stream_id);
      if (s != nullptr && s->reset_by == ResetBy::None) s->reset_by = ResetBy::Gateway;
      if (s != nullptr && s->up != nullptr) d->stream_cancelled();
    }
    return 0;
  }

  // The ACK of DownstreamSession::drain()'s PING.
  static bool is_drain_ack(const DownstreamSession& d, const nghttp2_frame* frame) {
    return d.drain_ping_pending_ && is_ping_ack(frame, kDrainPing);
  }
  static bool is_ping_ack(const nghttp2_frame* frame, const uint8_t (&opaque)[8]) {
    return frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK) != 0 &&
           std::memcmp(frame->ping.opaque_data, opaque, sizeof opaque) == 0;
  }

  static int d_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
    auto* d = static_cast<DownstreamSession*>(user);
    if (frame->hd.stream_id == 0) {
      if (is_drain_ack(*d, frame)) d->finish_drain();
      else if (is_ping_ack(frame, kKeepalivePing)) ++d->keepalive_acks_;
      return 0;
    }
    Stream* s = down_stream(*d, session, frame->hd.stream_id);
    if (s == nullptr) return 0;
    // Rapid reset (CVE-2023-44487): each cancelled stream cost the backend one.
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
      s->reset_by = ResetBy::Client;
      if (s->up != nullptr) d->stream_cancelled();
      return 0;
    }
    const bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      s->req_eof = end_stream;
      if (s->headers_rejected) {
        reject_headers(*d, session, s);
        return 0;
      }
      Forward::forward_request(d->ctx_, *d, s);
      return 0;
    }
    if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) && end_stream) {
      s->req_eof = true;
      if (s->up) {
        Forward::resume_request(s);
        s->up->owner_.wake();
      } else if (Forward::echoes(s)) {
        Forward::resume_response(s);  // the trailers can go
        d->owner_.wake();
      } else if (s->respond_at_eof) {
        s->respond_at_eof = false;
        Forward::respond_here(d->ctx_, *d, s);
      }
    }
    return 0;
  }

  static int d_data_chunk(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data, size_t len,
                          void* user) {
    auto* d = static_cast<DownstreamSession*>(user);
    Stream* s = down_stream(*d, session, stream_id);
    if (s != nullptr) s->req_bytes += len;
    if (s != nullptr && Forward::echoes(s) && !s->resp_eof) {
      // Echoed: held against the client's window until it goes out in the
      // response (read_echo_body).
      if (!Forward::buffer_body(d->ctx_, session, stream_id, s, data, len, s->req_body, s->req_unconsumed)) return 0;
      Forward::resume_response(s);
      d->owner_.wake();
      return 0;
    }
    if (s == nullptr || s->up == nullptr || s->gateway_cancelled) {
      // Nobody will forward these bytes: give the window back at once.
      nghttp2_session_consume(session, stream_id, len);
      return 0;
    }
    if (!Forward::buffer_body(d->ctx_, session, stream_id, s, data, len, s->req_body, s->req_unconsumed)) return 0;
    Forward::resume_request(s);
    s->up->owner_.wake();
    return 0;
  }

  static int d_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code, void* user) {
    auto* d = static_cast<DownstreamSession*>(user);
    Stream* s = down_stream(*d, session, stream_id);
    if (s == nullptr) return 0;
    nghttp2_session_set_stream_user_data(session, stream_id, nullptr);
    // Reset by nobody who said so (a reset nghttp2 sent itself, a GOAWAY's
    // refused stream): the gateway's doing.
    if (error_code == NGHTTP2_NO_ERROR) s->reset_by = ResetBy::None;
    else if (s->reset_by == ResetBy::None) s->reset_by = ResetBy::Gateway;
    s->reset_code = error_code;
    // A stream answered in full pays for one cancelled stream (the resets
    // themselves are counted as they arrive: d_frame_recv, d_invalid_frame).
    if (error_code == NGHTTP2_NO_ERROR && s->resp_eof) {
      ++d->completed_;
      d->resets_.give(1);
    }
    Forward::release_down(d->ctx_, s, error_code, true);
    return 0;
  }

  // ---- upstream (client) side
  static int u_begin_headers(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
    auto* u = static_cast<UpstreamSession*>(user);
    up_stream(*u, session, frame->hd.stream_id);  // becomes the recent stream: block_stream()
    return 0;
  }

  static int u_header(nghttp2_session* session, const nghttp2_frame* frame, nghttp2_rcbuf* name,
                      nghttp2_rcbuf* value, uint8_t, void* user) {
    auto* u = static_cast<UpstreamSession*>(user);
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    Stream* s = block_stream<UpstreamSession, &Stream::up, &Stream::up_id>(*u, session, frame);
    if (s == nullptr) return 0;
    if (dropped_response_field(name)) return 0;
    HeaderList& list = frame->headers.cat == NGHTTP2_HCAT_RESPONSE ? s->resp_headers : s->resp_trailers;
    if (!list.add_rc(name, value)) {
      ++u->ctx_.counters().header_limit_resets;
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return 0;
  }

  static int u_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
    auto* u = static_cast<UpstreamSession*>(user);
    if (frame->hd.type == NGHTTP2_GOAWAY) {
      u->going_away_ = true;
      u->goaway_last_id_ = std::min(u->goaway_last_id_, frame->goaway.last_stream_id);
      return 0;
    }
    if (frame->hd.stream_id == 0) return 0;
    Stream* s = up_stream(*u, session, frame->hd.stream_id);
    if (s == nullptr) return 0;
    const bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
      const uint8_t* status = nullptr;
      size_t len = 0;
      if (s->resp_headers.find(":status", &status, &len) && len == 3 && status[0] == '1') {
        s->resp_headers.clear();  // 1xx: not the final response
        return 0;
      }
      Forward::forward_response(u->ctx_, s, end_stream);
      return 0;
    }
    if (end_stream && (frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS)) {
      s->resp_eof = true;
      if (s->down) {
        Forward::resume_response(s);
        s->down->owner_.wake();
      }
    }
    return 0;
  }

  static int u_data_chunk(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data, size_t len,
                          void* user) {
    auto* u = static_cast<UpstreamSession*>(user);
    Stream* s = up_stream(*u, session, stream_id);
    if (s != nullptr && s->is_probe) {
      // A health answer is a few bytes; a larger one fails the check.
      if (s->resp_body.size() + len > 512 || !s->resp_body.append(data, len)) s->probe_oversize = true;
      nghttp2_session_consume(session, stream_id, len);
      return 0;
    }
    // resp_eof before the backend's END_STREAM: the gateway answered the
    // client itself (deadline) and the rest of the backend's body is moot.
    if (s == nullptr || s->down == nullptr || !s->resp_started || s->resp_eof || s->gateway_cancelled) {
      nghttp2_session_consume(session, stream_id, len);
      return 0;
    }
    if (!Forward::buffer_body(u->ctx_, session, stream_id, s, data, len, s->resp_body, s->resp_unconsumed)) return 0;
    Forward::resume_response(s);
    s->down->owner_.wake();
    return 0;
  }

  static int u_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code, void* user) {
    auto* u = static_cast<UpstreamSession*>(user);
    Stream* s = up_stream(*u, session, stream_id);
    if (s == nullptr || s->up != u || s->up_id != stream_id) return 0;
    Forward::release_up(u->ctx_, s, error_code, true);
    return 0;
  }

  // A request nghttp2 could not send (the backend's GOAWAY arrived first):
  // the backend never saw it, so it may go elsewhere.
  static int u_frame_not_send(nghttp2_session*, const nghttp2_frame* frame, int, void* user) {
    auto* u = static_cast<UpstreamSession*>(user);
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    for (Stream* s = u->streams_; s != nullptr; s = s->up_next) {
      if (s->up_id != frame->hd.stream_id) continue;
      Forward::release_up(u->ctx_, s, NGHTTP2_REFUSED_STREAM, true);
      break;
    }
    return 0;
  }

  static ssize_t d_send(nghttp2_session*, const uint8_t* data, size_t len, int, void* user) {
    return static_cast<DownstreamSession*>(user)->take_output(data, len);
  }
  static ssize_t u_send(nghttp2_session*, const uint8_t* data, size_t len, int, void* user) {
    return static_cast<UpstreamSession*>(user)->take_output(data, len);
  }

  static nghttp2_session_callbacks* make(bool server) {
    nghttp2_session_callbacks* cb = nullptr;
    if (nghttp2_session_callbacks_new(&cb) != 0) throw std::bad_alloc();
    if (server) {
      nghttp2_session_callbacks_set_on_begin_headers_callback(cb, d_begin_headers);
      nghttp2_session_callbacks_set_on_header_callback2(cb, d_header);
      nghttp2_session_callbacks_set_on_frame_recv_callback(cb, d_frame_recv);
      nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, d_data_chunk);
      nghttp2_session_callbacks_set_on_stream_close_callback(cb, d_stream_close);
      nghttp2_session_callbacks_set_send_callback(cb, d_send);
      nghttp2_session_callbacks_set_on_begin_frame_callback(cb, d_begin_frame);
      nghttp2_session_callbacks_set_on_extension_chunk_recv_callback(cb, d_extension_chunk);
      nghttp2_session_callbacks_set_unpack_extension_callback(cb, d_unpack_extension);
      nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, d_invalid_frame);
    } else {
      nghttp2_session_callbacks_set_on_begin_headers_callback(cb, u_begin_headers);
      nghttp2_session_callbacks_set_on_header_callback2(cb, u_header);
      nghttp2_session_callbacks_set_on_frame_recv_callback(cb, u_frame_recv);
      nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, u_data_chunk);
      nghttp2_session_callbacks_set_on_stream_close_callback(cb, u_stream_close);
      nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, u_frame_not_send);
      nghttp2_session_callbacks_set_send_callback(cb, u_send);
    }
    return cb;
  }
};

namespace {

// nghttp2 copies the callbacks into each session, so one set per process is
// read-only shared state.
const nghttp2_session_callbacks* server_callbacks() {
  static nghttp2_session_callbacks* cb = Callbacks::make(true);
  return cb;
}
const nghttp2_session_callbacks* client_callbacks() {
  static nghttp2_session_callbacks* cb = Callbacks::make(false);
  return cb;
}

nghttp2_option* make_option(bool server) {
  nghttp2_option* opt = nullptr;
  if (nghttp2_option_new(&opt) != 0) throw std::bad_alloc();
  nghttp2_option_set_no_auto_window_update(opt, 1);
  // Closed streams are not kept for the (deprecated) priority tree.
  nghttp2_option_set_no_closed_streams(opt, 1);
  if (server) {
    // CVE-2023-44487 (rapid reset): bound how fast a client may reset
    // streams. The session's reset budget (DownstreamSession::resets_) is
    // the first, tighter limit; this one stays as nghttp2's own backstop.
    nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 100);
    nghttp2_option_set_max_continuations(opt, 16);
    // Frames of types nghttp2 does not know are handed to the extension
    // callbacks instead of being skipped unseen, so that they are counted
    // as glitches (d_begin_frame). Types below 10 are the core ones.
    for (int type = 10; type < 256; ++type)
      nghttp2_option_set_user_recv_extension_type(opt, static_cast<uint8_t>(type));
  }
  return opt;
}

}  // namespace

// ---------------------------------------------------------------- Session

Session::~Session() {
  drop_session();
  unlink_active();
}

Result<void> Session::receive(const uint8_t* data, size_t len) {
  if (terminating_) return Unexpected(Error::Protocol);  // the rest is not read
  touch();
  ssize_t rv = nghttp2_session_mem_recv(ng(session_), data, len);
  if (rv < 0) {
    LOG_DEBUG("h2", "receive: %s", nghttp2_strerror(static_cast<int>(rv)));
    receive_failed(static_cast<int>(rv));
    return Unexpected(Error::Protocol);
  }
  if (terminating_) return Unexpected(Error::Protocol);
  return {};
}

// ---------------------------------------------------------------- Budget

void Budget::refill(uint64_t now_ms) {
  if (last_ms_ == 0 || now_ms < last_ms_) {
    last_ms_ = now_ms;
    return;
  }
  // Time gives back up to the starting budget only: what give() added
  // beyond it (completed streams) is earned, not waited for.
  if (rate_ == 0 || tokens_ >= start_) {
    last_ms_ = now_ms;
    return;
  }
  const uint64_t earned = (now_ms - last_ms_) * rate_ / 1000;
  if (earned == 0) return;  // keep the fraction of a token for later
  last_ms_ += earned * 1000 / rate_;
  tokens_ = std::min<uint64_t>(uint64_t{start_}, tokens_ + earned);
}

bool Budget::take(uint64_t now_ms) {
  refill(now_ms);
  if (tokens_ == 0) return false;
  --tokens_;
  return true;
}

size_t Session::produce(ByteQueue& out, size_t budget) {
  out_ = &out;
  budget_left_ = budget;
  produced_ = 0;
  blocked_ = false;
  int rv = nghttp2_session_send(ng(session_));
  if (rv != 0) LOG_DEBUG("h2", "send: %s", nghttp2_strerror(rv));
  out_ = nullptr;
  if (produced_ > 0) touch();
  return produced_;
}

ssize_t Session::take_output(const uint8_t* data, size_t len) {
  // WOULDBLOCK keeps the frame inside nghttp2 for the next produce(): no
  // frame is lost when the budget is spent or the pool is exhausted.
  if (out_ == nullptr || budget_left_ == 0 || !out_->append(data, len)) {
    blocked_ = true;
    return NGHTTP2_ERR_WOULDBLOCK;
  }
  budget_left_ = len >= budget_left_ ? 0 : budget_left_ - len;
  produced_ += len;
  return static_cast<ssize_t>(len);
}

bool Session::want_read() const { return session_ && nghttp2_session_want_read(ng(session_)) != 0; }
bool Session::want_write() const { return session_ && nghttp2_session_want_write(ng(session_)) != 0; }

DownstreamSession::DownstreamSession(Context& ctx, Owner& owner, DownstreamSettings settings)
    : Session(ctx, owner),
      settings_(std::move(settings)),
      glitches_(settings_.glitch_budget, settings_.glitch_budget, settings_.glitch_rate),
      // Completed streams raise the reset budget up to what a client that
      // cancels every stream it has open at once needs.
      resets_(settings_.reset_budget, std::max(settings_.reset_budget, settings_.max_concurrent_streams),
              settings_.reset_budget / 10) {
  static nghttp2_option* opt = make_option(true);
  nghttp2_session* s = nullptr;
  ctx.memory().forget_last_page();  // adopt_session() takes the page new3 allocates
  if (nghttp2_session_server_new3(&s, server_callbacks(), this, opt, ctx.memory().mem()) != 0)
    throw std::bad_alloc();
  adopt_session(s);
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, settings_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, static_cast<uint32_t>(kStreamWindow)},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, kMaxHeaderListSize},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
  nghttp2_session_set_local_window_size(s, NGHTTP2_FLAG_NONE, 0, kDownstreamConnectionWindow);
}

DownstreamSession::~DownstreamSession() {
  while (streams_) Forward::release_down(ctx_, streams_, NGHTTP2_CANCEL, false);
}

void DownstreamSession::terminate(uint32_t code) {
  if (terminating_) return;
  terminating_ = true;
  nghttp2_session_terminate_session(ng(session_), code);
  owner_.wake();
}

void DownstreamSession::glitch(uint64_t& kind) {
  ++kind;
  if (terminating_ || glitches_.take(ctx_.pool().now_ms())) return;
  ++ctx_.counters().closed_glitch_budget;
  LOG_DEBUG("h2", "%s: glitch budget spent: GOAWAY ENHANCE_YOUR_CALM", settings_.client_ip.c_str());
  terminate(NGHTTP2_ENHANCE_YOUR_CALM);
}

void DownstreamSession::stream_cancelled() {
  ++ctx_.counters().streams_cancelled;
  ++cancelled_;
  if (terminating_) return;
  const uint64_t now = ctx_.pool().now_ms();
  if (!resets_.take(now)) {
    ++ctx_.counters().closed_reset_budget;
    LOG_DEBUG("h2", "%s: reset budget spent: GOAWAY ENHANCE_YOUR_CALM", settings_.client_ip.c_str());
    terminate(NGHTTP2_ENHANCE_YOUR_CALM);
    return;
  }
  // A connection that cancelled more than it completed also draws on the
  // shard's budget: one that reconnects before its own runs out (rapid reset
  // across reconnects) finds the shard's spent and is closed at its first
  // cancel, while connections that completed more than they cancelled are
  // never judged by what others do.
  if (cancelled_ > completed_ && settings_.shard_resets != nullptr && !settings_.shard_resets->take(now)) {
    ++ctx_.counters().closed_shard_reset_budget;
    LOG_DEBUG("h2", "%s: shard reset budget spent: GOAWAY ENHANCE_YOUR_CALM", settings_.client_ip.c_str());
    terminate(NGHTTP2_ENHANCE_YOUR_CALM);
  }
}

// What nghttp2 cannot answer itself when it gives up: the GOAWAY the client
// is owed before the connection closes (RFC 9113 5.4.1).
void DownstreamSession::receive_failed(int lib_error) {
  switch (lib_error) {
    case NGHTTP2_ERR_BAD_CLIENT_MAGIC:
      ++ctx_.counters().closed_bad_preface;
      terminate(NGHTTP2_PROTOCOL_ERROR);
      break;
    case NGHTTP2_ERR_FLOODED:  // too many PING / SETTINGS ACKs queued: a client that does not read
    case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
      ++ctx_.counters().closed_flood;
      terminate(NGHTTP2_ENHANCE_YOUR_CALM);
      break;
    default:
      terminate(NGHTTP2_INTERNAL_ERROR);
      break;
  }
}

void DownstreamSession::shutdown() {
  drain_ping_pending_ = false;
  goaway_queued_ = true;
  nghttp2_submit_goaway(ng(session_), NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(ng(session_)),
                        NGHTTP2_NO_ERROR, nullptr, 0);
}

void DownstreamSession::drain() {
  // Once: a later first-step GOAWAY would raise the last stream id the
  // client was given, which RFC 9113 6.8 forbids (the shard drains a
  // connection its age already drains).
  if (goaway_queued_ || terminating_) return;
  goaway_queued_ = true;
  if (nghttp2_submit_shutdown_notice(ng(session_)) != 0 ||
      nghttp2_submit_ping(ng(session_), NGHTTP2_FLAG_NONE, kDrainPing) != 0) {
    shutdown();
    return;
  }
  drain_ping_pending_ = true;
  owner_.wake();
}

bool DownstreamSession::keepalive_ping() {
  if (terminating_ || nghttp2_submit_ping(ng(session_), NGHTTP2_FLAG_NONE, kKeepalivePing) != 0) return false;
  owner_.wake();
  return true;
}

void DownstreamSession::finish_drain() {
  if (!drain_ping_pending_) return;
  shutdown();
  owner_.wake();
}

UpstreamSession::UpstreamSession(Context& ctx, Owner& owner, uint32_t cluster, int endpoint, bool tls)
    : Session(ctx, owner), cluster_(cluster), endpoint_(endpoint), scheme_(tls ? "https" : "http") {
  static nghttp2_option* opt = make_option(false);
  nghttp2_session* s = nullptr;
  ctx.memory().forget_last_page();  // adopt_session() takes the page new3 allocates
  if (nghttp2_session_client_new3(&s, client_callbacks(), this, opt, ctx.memory().mem()) != 0)
    throw std::bad_alloc();
  adopt_session(s);
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, static_cast<uint32_t>(kStreamWindow)},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
  nghttp2_session_set_local_window_size(s, NGHTTP2_FLAG_NONE, 0, kUpstreamConnectionWindow);
}

UpstreamSession::~UpstreamSession() {
  if (!failed_) fail("upstream connection closed");
}

bool UpstreamSession::can_take_stream() const {
  if (going_away_ || failed_ || session_ == nullptr) return false;
  uint32_t max = nghttp2_session_get_remote_settings(ng(session_), NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  return active_streams_ < max;
}

void UpstreamSession::fail(const char* why, bool nothing_sent) {
  failed_ = true;
  while (streams_) {
    Stream* s = streams_;
    s->resp_unconsumed = 0;
    const bool probe = s->is_probe;
    // Not sent yet (nghttp2 opens a stream when its HEADERS go out), or above
    // the last stream id of the backend's GOAWAY: never processed.
    const bool unseen = nothing_sent || s->up_id > goaway_last_id_ ||
                        (session_ != nullptr && nghttp2_session_get_stream_user_data(ng(session_), s->up_id) == nullptr);
    Forward::unlink_up(s, unseen ? Outcome::NotProcessed : Outcome::ConnectionLost);
    if (probe) {
      Forward::finish_probe(s, NGHTTP2_NO_ERROR, why);
      ctx_.free_stream(s);
    } else if (s->down == nullptr) {
      ctx_.free_stream(s);
    } else if (!(unseen && !s->resp_started && Forward::try_retry(ctx_, s, endpoint_))) {
      Forward::respond_unavailable(ctx_, s, why);
    }
  }
  drop_session();
}

void* UpstreamSession::submit_probe(const std::string& service, const std::string& authority, ProbeSink* sink) {
  if (failed_ || session_ == nullptr) return nullptr;
  uint8_t body[1040];
  size_t len = grpc::encode_health_request(service, body, sizeof body);
  if (len == 0) return nullptr;
  Stream* s = ctx_.new_stream();
  s->probe = sink;
  s->is_probe = true;
  s->req_eof = true;
  if (!s->req_body.append(body, len)) {
    ctx_.free_stream(s);
    return nullptr;
  }
  nghttp2_nv nva[] = {
      literal_nv(":method", "POST"),
      make_nv(":scheme", scheme_, std::strlen(scheme_)),
      literal_nv(":path", "/grpc.health.v1.Health/Check"),
      make_nv(":authority", authority.data(), authority.size()),
      literal_nv("content-type", "application/grpc"),
      literal_nv("te", "trailers"),
  };
  nghttp2_data_provider prd{};
  prd.source.ptr = s;
  prd.read_callback = Forward::read_request_body;
  int32_t id = nghttp2_submit_request(ng(session_), nullptr, nva, sizeof nva / sizeof nva[0], &prd, s);
  if (id < 0) {
    ctx_.free_stream(s);
    return nullptr;
  }
  s->up_id = id;
  Forward::link_up(*this, s);
  owner_.wake();
  return s;
}

void UpstreamSession::cancel_probe(void* handle) {
  auto* s = static_cast<Stream*>(handle);
  s->probe = nullptr;  // no callback; the stream is freed when it closes
  if (session_ != nullptr && s->up == this) {
    nghttp2_submit_rst_stream(ng(session_), NGHTTP2_FLAG_NONE, s->up_id, NGHTTP2_CANCEL);
    owner_.wake();
  }
}

void UpstreamSession::ping() {
  if (session_ == nullptr) return;
  nghttp2_submit_ping(ng(session_), NGHTTP2_FLAG_NONE, nullptr);
  owner_.wake();
}

void Context::add_delayed(Stream* s) {
  Stream* after = delayed_tail_;
  while (after != nullptr && after->respond_at_ms > s->respond_at_ms) after = after->delay_prev;
  s->delay_prev = after;
  s->delay_next = after != nullptr ? after->delay_next : delayed_head_;
  if (s->delay_next != nullptr) s->delay_next->delay_prev = s; else delayed_tail_ = s;
  if (after != nullptr) after->delay_next = s; else delayed_head_ = s;
}

void Context::remove_delayed(Stream* s) {
  if (s->respond_at_ms == 0) return;
  if (s->delay_prev != nullptr) s->delay_prev->delay_next = s->delay_next; else delayed_head_ = s->delay_next;
  if (s->delay_next != nullptr) s->delay_next->delay_prev = s->delay_prev; else delayed_tail_ = s->delay_prev;
  s->delay_prev = s->delay_next = nullptr;
  s->respond_at_ms = 0;
}

uint64_t Context::next_response_ms() const { return delayed_head_ != nullptr ? delayed_head_->respond_at_ms : 0; }

void Context::respond_due(uint64_t now_ms) {
  while (delayed_head_ != nullptr && delayed_head_->respond_at_ms <= now_ms) {
    Stream* s = delayed_head_;
    remove_delayed(s);
    Forward::respond_delayed(*this, s);
  }
}

void Context::expire_deadlines(uint64_t now_ms) {
  while (!deadlines_.empty() && deadlines_.front()->deadline_ms <= now_ms) {
    Stream* s = deadlines_.front();
    remove_deadline(s);
    Forward::deadline_exceeded(*this, s);
  }
}

}  // namespace tlsgate::h2
