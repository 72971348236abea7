// HTTP/2 on both sides of the gateway; nghttp2 is used only in src/h2/.
//
// A DownstreamSession is the server side of one client connection, an
// UpstreamSession the client side of one backend connection. A forwarded
// stream (src/h2/stream.hh) joins one stream of each. Sessions never do IO:
// the shard hands them plaintext with receive() and collects bytes to send
// with produce(); when a session gets something to send because of an event on
// *another* session, it calls its Owner's wake() and the shard flushes it at
// the end of the loop turn.
//
// Flow control is coupled end to end: automatic WINDOW_UPDATEs are off, and
// bytes received on one side are "consumed" only when the other side's session
// has copied them into a DATA frame. A slow reader therefore closes its peer's
// window; per-stream buffering is bounded by the stream window.
#pragma once

#include <algorithm>
#include <cstddef>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tlsgate/buffer.hh"
#include "tlsgate/config.hh"
#include "tlsgate/result.hh"
#include "tlsgate/route.hh"

namespace tlsgate::h2 {

struct Stream;
class Memory;
class Session;
class UpstreamSession;
class DownstreamSession;

// Who ended a client stream with RST_STREAM (StreamEnd::reset_by).
enum class ResetBy : uint8_t {
  None,        // the stream ended normally (END_STREAM both ways)
  Client,      // the client sent RST_STREAM
  Backend,     // the backend reset its stream and the gateway passed the code on
  Gateway,     // the gateway reset it (body it could not buffer, a protocol error, GOAWAY)
  Connection,  // the client connection closed with the stream still open
};
const char* to_string(ResetBy by);

// The end of one client stream, for the access log and the metrics
// (Owner::stream_ended). Filled without allocating: the views point into the
// stream's header fields and are valid only during the call.
struct StreamEnd {
  std::string_view authority;  // :authority (or host), empty if none
  std::string_view path;       // :path, empty if none
  int http_status = 0;         // the :status sent to the client; 0 if none was sent
  // Sent to the client in the trailers or a trailers-only response (the
  // backend's or one the gateway made: 14, 4); -1 if none.
  int grpc_status = -1;
  ResetBy reset_by = ResetBy::None;
  uint32_t reset_code = 0;     // RST_STREAM error code when reset_by != None
  uint64_t request_bytes = 0;  // DATA payload received from the client
  uint64_t response_bytes = 0; // DATA payload sent to the client
  // Microseconds of CLOCK_MONOTONIC: when its HEADERS arrived, and now.
  uint64_t start_us = 0;
  uint64_t end_us = 0;
  int cluster = -1;            // configuration cluster index; -1 if not routed (431)
  int endpoint = -1;           // pool endpoint index of the last attempt; -1 if none
  uint32_t attempts = 0;       // upstream streams opened for it
  uint32_t retries() const { return attempts > 1 ? attempts - 1 : 0; }
};

// CLOCK_MONOTONIC in microseconds (a vDSO call, no system call).
uint64_t monotonic_us();

// The connection that owns a session; implemented by the shard.
class Owner {
 public:
  // The session has frames to send; flush it at the end of this loop turn.
  virtual void wake() = 0;
  // Nothing moved for Context::kIdleReleaseMs and nothing waits to be sent:
  // the session gave back what it can; the owner may do the same.
  virtual void idle() {}
  // A client stream ended (its downstream half closed, reset, or its
  // connection went away): called exactly once per client stream, also for
  // those the gateway answered itself. Must not call back into the session.
  virtual void stream_ended(const StreamEnd&) {}

 protected:
  ~Owner() = default;
};

// How an upstream stream ended, for the endpoint's health record.
enum class Outcome {
  Success,       // any answer from the backend other than grpc-status 14
  Failure,       // reset by the backend, grpc-status 14
  NotProcessed,  // refused (REFUSED_STREAM, above a GOAWAY's last stream id) or never sent
  Cancelled,     // the gateway or the client ended it: says nothing about the backend
  // The connection went away under it (UpstreamSession::fail): the owner
  // counts that loss once for the endpoint, not once per stream.
  ConnectionLost,
};

// What a cluster's streams apply, from the configuration snapshot their
// client connection started with (a stream keeps it to its end, whatever
// snapshot the shard adopts meanwhile).
struct ClusterPolicy {
  uint32_t pool_id = 0;              // the cluster in the shard's pool (Pool::pick)
  uint32_t retries = 0;
  uint32_t retry_buffer = 0;
  // A responder cluster (config respond): the stream is answered in the
  // session, no backend is picked (src/h2/README.md, "Responder clusters").
  // Ordered with the other 32-bit fields: a Stream keeps a copy per call.
  uint32_t response_bytes = 0;       // respond = "status": message size
  uint32_t respond_delay_ms = 0;     // the answer is submitted this much later
  config::Respond respond = config::Respond::Off;
  uint8_t respond_status = 0;        // respond = "status": its grpc-status
  uint64_t max_grpc_timeout_ms = 0;  // 0 = no cap
  const char* respond_message = nullptr;  // percent-encoded grpc-message, or null;
                                          // owned by the snapshot's configuration
};

// The backend pool as the stream layer sees it; implemented by
// upstream::ClusterManager (tests: a fake).
class Pool {
 public:
  // The upstream session for a new stream of cluster `pool_id`, or nullptr
  // when no backend can take it; `why` (static or long-lived text) then says
  // so. `avoid` is the endpoint that just failed this stream (a retry), or -1.
  virtual UpstreamSession* pick(uint32_t pool_id, int avoid, const char*& why) = 0;
  // A stream the backend never processed (Outcome::NotProcessed, or its
  // connection never opened) has been sent `attempts` times: may it go again?
  virtual bool may_retry(const ClusterPolicy& policy, uint32_t attempts) = 0;
  virtual uint64_t now_ms() = 0;
  // A client stream was put on / taken off an upstream session.
  virtual void stream_started(UpstreamSession& u) = 0;
  virtual void stream_finished(UpstreamSession& u, Outcome outcome) = 0;

 protected:
  ~Pool() = default;
};

// Receives the result of a health-check stream (see UpstreamSession::submit_probe).
class ProbeSink {
 public:
  // ok: HTTP 200, grpc-status 0 and a HealthCheckResponse saying SERVING.
  // Otherwise `why` says what was wrong.
  virtual void probe_done(bool ok, const char* why) = 0;

 protected:
  ~ProbeSink() = default;
};

struct Counters {
  uint64_t streams_forwarded = 0;
  uint64_t streams_responded = 0;        // answered by a responder cluster (respond = echo | status)
  uint64_t streams_unavailable = 0;      // answered grpc-status 14 by the gateway
  uint64_t streams_reset_by_client = 0;
  uint64_t streams_reset_by_upstream = 0;
  uint64_t header_limit_resets = 0;
  uint64_t deadline_exceeded = 0;        // answered grpc-status 4 by the gateway
  uint64_t retries = 0;                  // streams sent again after the backend never processed them
  uint64_t bad_grpc_timeout = 0;         // malformed grpc-timeout values (ignored)
  uint64_t body_buffer_resets = 0;       // streams reset: body bytes the shard could not buffer
  // Client abuse (src/h2/README.md, "Budgets"): glitches seen, by kind...
  uint64_t glitch_empty_data = 0;       // DATA without payload nor END_STREAM
  uint64_t glitch_priority = 0;         // PRIORITY frames (ignored by the gateway)
  uint64_t glitch_unknown_frames = 0;   // frames of types the gateway does not use
  uint64_t glitch_pings = 0;            // PINGs asking for an ACK beyond one per DATA frame sent
  uint64_t glitch_settings = 0;         // SETTINGS asking for an ACK
  uint64_t glitch_window_updates = 0;   // WINDOW_UPDATEs beyond the DATA frames sent
  uint64_t glitch_invalid_frames = 0;   // frames nghttp2 answered with a stream or connection error
  uint64_t glitch_stale_resets = 0;     // RST_STREAM for streams already closed
  uint64_t streams_cancelled = 0;       // reset (either side) while the backend worked on them
  // ...and the connections closed with GOAWAY for them.
  uint64_t closed_glitch_budget = 0;    // ENHANCE_YOUR_CALM: glitch budget spent
  uint64_t closed_reset_budget = 0;     // ENHANCE_YOUR_CALM: too many cancelled streams (rapid reset)
  uint64_t closed_shard_reset_budget = 0;  // ENHANCE_YOUR_CALM: the shard's budget of unearned cancels spent
  uint64_t closed_flood = 0;            // ENHANCE_YOUR_CALM: nghttp2's own flood limits
  uint64_t closed_bad_preface = 0;      // PROTOCOL_ERROR: not the HTTP/2 client preface
};

// nghttp2's memory in this shard (src/h2/memory.hh).
struct MemoryStats {
  uint64_t spans = 0;           // 256 KiB spans mapped: flat in steady state
  uint64_t large_maps = 0;      // mappings made for blocks over 64 KiB
  uint64_t allocations = 0;     // blocks handed to nghttp2, ever
  uint64_t blocks_in_use = 0;
  uint64_t bytes_in_use = 0;    // by size class (frame buffers: their full size)
  uint64_t frame_buffers = 0;   // sessions' outbound frame buffers in use
  uint64_t pages_released = 0;  // idle sessions' frame buffers handed back to the kernel
  uint64_t zero_pages_released = 0;  // idle sessions' all-zero pages (empty stream maps) handed back
  uint64_t spans_trimmed = 0;   // wholly free spans handed back to the kernel after a burst (Memory::trim)
};

// Per-shard HTTP/2 state: stream objects, deadlines, nghttp2's memory, counters.
class Context {
 public:
  Context(ChunkPool& chunks, Pool& pool);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  ChunkPool& chunks() { return chunks_; }
  Pool& pool() { return pool_; }
  Counters& counters() { return counters_; }
  size_t streams_in_use() const { return streams_in_use_; }
  Memory& memory() { return *memory_; }
  MemoryStats memory_stats() const;

  Stream* new_stream();
  void free_stream(Stream* s);

  // Streams whose grpc-timeout passed get grpc-status 4 and their upstream
  // half is cancelled. Call on every timer tick.
  void expire_deadlines(uint64_t now_ms);
  void add_deadline(Stream* s);
  void remove_deadline(Stream* s);
  size_t deadlines_pending() const { return deadlines_.size(); }

  // Responder streams with a `delay` wait here for their answer, in the
  // order it is due. respond_due() answers those due by now_ms; the shard
  // calls it every loop turn and arms a timer for next_response_ms() (0:
  // none waits), so a delay is kept to the millisecond, not to the tick.
  void respond_due(uint64_t now_ms);
  uint64_t next_response_ms() const;
  void add_delayed(Stream* s);
  void remove_delayed(Stream* s);

  // Call about every 100 ms with a monotonic clock. Sessions that neither
  // received nor sent anything for kIdleReleaseMs hand the pages of their
  // 16 KiB outbound frame buffer back to the kernel (page faults bring them
  // back when they send again): an idle connection then holds none of it
  // (small frames touch its first page only, 16 KiB DATA frames all five).
  static constexpr uint64_t kIdleReleaseMs = 1000;
  void release_idle_memory(uint64_t now_ms);

 private:
  friend class Session;
  void sift_up(size_t i);
  void sift_down(size_t i);
  ChunkPool& chunks_;
  Pool& pool_;
  Counters counters_;
  std::vector<Stream*> free_streams_;
  std::vector<Stream*> deadlines_;  // min-heap on Stream::deadline_ms
  // Delayed responder streams by Stream::respond_at_ms (intrusive, sorted;
  // a cluster's delay is fixed, so a new one goes at or near the tail).
  Stream* delayed_head_ = nullptr;
  Stream* delayed_tail_ = nullptr;
  size_t streams_in_use_ = 0;
  std::unique_ptr<Memory> memory_;
  // Sessions by time of last activity, oldest first (intrusive).
  Session* active_head_ = nullptr;
  Session* active_tail_ = nullptr;
  uint64_t now_ms_ = 0;
};

// A token bucket on the shard's millisecond clock: `start` tokens, `rate`
// more per second up to `start` again; give() may add more, up to `cap`.
// take() fails when it is empty.
class Budget {
 public:
  Budget(uint32_t start, uint32_t cap, uint32_t rate) : tokens_(start), start_(start), cap_(cap), rate_(rate) {}
  bool take(uint64_t now_ms);
  void give(uint32_t n) { tokens_ = std::min<uint64_t>(uint64_t{cap_}, tokens_ + n); }
  uint64_t tokens() const { return tokens_; }

 private:
  void refill(uint64_t now_ms);
  uint64_t tokens_;
  uint32_t start_;
  uint32_t cap_;
  uint32_t rate_;
  uint64_t last_ms_ = 0;
};

struct DownstreamSettings {
  uint32_t cluster = 0;  // default route (a configuration cluster index)
  const route::Table* routes = nullptr;  // checked first; null: the default only
  // Indexed by configuration cluster index: what the connection's snapshot
  // says of each cluster. Null: ClusterPolicy{pool_id = index} for all.
  const std::vector<ClusterPolicy>* clusters = nullptr;
  uint32_t max_concurrent_streams = 1000;
  std::string client_ip;  // for x-forwarded-for
  // x-forwarded-client-cert for every request (the client certificate the
  // TLS handshake verified, tls::Session::client_cert_header()); empty: none
  // is added. A client's own is dropped either way.
  std::string client_cert;
  // Abuse budgets (config::Listener's h2_* keys).
  uint32_t glitch_budget = 1000;
  uint32_t glitch_rate = 100;  // per second
  uint32_t reset_budget = 100;
  // Shared by the listener's connections on this shard: streams cancelled on
  // connections that completed fewer than they cancelled. Null: no such limit.
  Budget* shard_resets = nullptr;
};


// Common part: an nghttp2 session driven by bytes.
class Session {
 public:
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Processes received plaintext. Protocol errors queue a GOAWAY and return
  // Error::Protocol: flush, then close the connection.
  Result<void> receive(const uint8_t* data, size_t len);
  // Appends frames to `out`, at most about `budget` bytes. Returns the number
  // of bytes appended.
  size_t produce(ByteQueue& out, size_t budget);
  bool want_read() const;
  bool want_write() const;
  // Neither side wants anything more: the connection can close.
  bool finished() const { return !want_read() && !want_write(); }
  size_t active_streams() const { return active_streams_; }
  // A GOAWAY ending the connection is queued or sent.
  bool terminating() const { return terminating_; }

 protected:
  Session(Context& ctx, Owner& owner) : ctx_(ctx), owner_(owner) {}
  ~Session();
  // nghttp2 gave up on the received bytes (a fatal library error): queue
  // whatever the peer should be told before the connection closes.
  virtual void receive_failed(int) {}
  // A GOAWAY that ends the connection is queued: receive() fails from now on
  // so that the owner flushes it and closes.
  bool terminating_ = false;

  friend struct Callbacks;
  friend class Context;
  ssize_t take_output(const uint8_t* data, size_t len);
  // After nghttp2_session_*_new3: remember the session's frame buffer.
  void adopt_session(void* session);
  // Before nghttp2_session_del.
  void drop_session();
  // Bytes moved: (re)start the idle clock.
  void touch();
  void unlink_active();

  Context& ctx_;
  Owner& owner_;
  ByteQueue* out_ = nullptr;  // set only during produce()
  size_t budget_left_ = 0;
  size_t produced_ = 0;
  void* session_ = nullptr;  // nghttp2_session*
  size_t active_streams_ = 0;
  Stream* streams_ = nullptr;  // intrusive list of this session's streams
  // The stream the callbacks looked up last: a call's frames come in runs
  // for one stream, and each lookup in nghttp2's stream map was a cache miss
  // more; a header block's fields find their stream here without a lookup.
  // Valid while that stream is linked to this session (unlink_down/_up
  // forget it), so it never names a freed or reused Stream.
  int32_t recent_id_ = 0;
  Stream* recent_ = nullptr;
  // nghttp2 keeps bytes in its frame buffer between calls only after our send
  // callback said WOULDBLOCK; otherwise the buffer's contents are dead.
  bool blocked_ = false;
  void* frame_buffer_ = nullptr;  // nghttp2's outbound frame buffer, from ctx_.memory()
  bool frame_buffer_released_ = false;
  void* map_page_ = nullptr;  // nghttp2's stream map (one page), if it took one; see Memory::discard_zero_page
  bool listed_ = false;  // in ctx_'s activity list
  uint64_t touched_ms_ = 0;
  Session* active_prev_ = nullptr;
  Session* active_next_ = nullptr;
};

class DownstreamSession final : public Session {
 public:
  DownstreamSession(Context& ctx, Owner& owner, DownstreamSettings settings);
  ~DownstreamSession();
  // GOAWAY with the last stream id at once; running streams finish.
  void shutdown();
  // Graceful drain, RFC 9113 §6.8: a GOAWAY with the largest stream id and a
  // PING; when the PING's ACK is back (one round trip: every request the
  // client sent before it saw the first GOAWAY has arrived) or on
  // finish_drain(), the GOAWAY with the real last stream id.
  void drain();
  void finish_drain();
  // drain() was called and its final GOAWAY is not queued yet.
  bool drain_pending() const { return drain_ping_pending_; }
  // A PING of the gateway's own (the listener's keepalive_interval). Its
  // ACK is told apart from the drain's; ACKs are never glitches. False when
  // the session is ending and sends nothing more.
  bool keepalive_ping();
  // Frames whose header the session read, and of them the ACKs of
  // keepalive_ping(): a receive that carried only those ACKs is no request
  // activity (the shard's idle timer ignores it).
  uint64_t frames_seen() const { return frames_seen_; }
  uint64_t keepalive_acks() const { return keepalive_acks_; }
  const DownstreamSettings& settings() const { return settings_; }

 private:
  friend struct Callbacks;
  friend struct Forward;
  void receive_failed(int lib_error) override;
  // A glitch (a frame that costs the gateway work and serves no request):
  // the connection ends with ENHANCE_YOUR_CALM once the budget is spent.
  void glitch(uint64_t& kind);
  // A stream ended by a reset while its backend stream was open.
  void stream_cancelled();
  // GOAWAY with `code` and the last stream processed; the connection closes
  // once it is sent.
  void terminate(uint32_t code);
  DownstreamSettings settings_;
  Budget glitches_;
  Budget resets_;
  // What a client has reason to send back for each DATA frame the gateway
  // sent: two WINDOW_UPDATEs (stream and connection) and a PING (gRPC's BDP
  // estimation); beyond that they are glitches.
  void data_frame_sent() {
    window_update_credit_ += 2;
    ping_credit_ += 1;
  }
  // gRPC's C core also opens its stream window ahead of each message it
  // expects (measured: ~3.4 WINDOW_UPDATEs per unary call with 1,000 in
  // flight, where the DATA frames pay for two).
  void stream_opened() { window_update_credit_ += 4; }
  // One WINDOW_UPDATE comes with the connection preface: clients (grpc++,
  // nghttp2, curl) open the connection window right after their SETTINGS.
  uint64_t window_update_credit_ = 1;
  // The preface's SETTINGS is required (RFC 9113 §3.4): only later ones can
  // be glitches.
  bool preface_settings_seen_ = false;
  uint64_t ping_credit_ = 0;
  bool drain_ping_pending_ = false;
  bool goaway_queued_ = false;  // by drain() or shutdown()
  uint64_t frames_seen_ = 0;
  uint64_t keepalive_acks_ = 0;
  uint64_t cancelled_ = 0;  // streams cancelled while their backend stream was open
  uint64_t completed_ = 0;  // streams answered in full
};

class UpstreamSession final : public Session {
 public:
  // `tls`: the connection to the backend is TLS (the cluster's [clusters.tls]),
  // so requests say :scheme https.
  UpstreamSession(Context& ctx, Owner& owner, uint32_t cluster, int endpoint, bool tls = false);
  ~UpstreamSession();
  // Can take one more stream: not going away, below the peer's
  // SETTINGS_MAX_CONCURRENT_STREAMS.
  bool can_take_stream() const;
  bool going_away() const { return going_away_; }
  // The connection failed or was lost. Streams the backend cannot have seen
  // (`nothing_sent`: the connection never opened) are retried elsewhere where
  // the cluster allows; the others end with grpc-status 14 and `why` as
  // grpc-message (or a reset where the response had already ended). The
  // session is dead afterwards.
  void fail(const char* why, bool nothing_sent = false);
  bool failed() const { return failed_; }
  uint32_t cluster() const { return cluster_; }
  int endpoint() const { return endpoint_; }

  // Starts a grpc.health.v1.Health/Check stream; `sink` gets the result once,
  // unless cancel_probe() is called first. Returns a handle, or nullptr when
  // the stream could not be submitted (sink not called).
  void* submit_probe(const std::string& service, const std::string& authority, ProbeSink* sink);
  // Resets the probe stream; its sink is not called.
  void cancel_probe(void* handle);
  // An HTTP/2 PING (keepalive); the ack arrives as ordinary received bytes.
  void ping();

 private:
  friend struct Callbacks;
  friend struct Forward;
  uint32_t cluster_;
  int endpoint_;
  const char* scheme_;  // "http" or "https": what the backend hop is
  bool going_away_ = false;
  bool failed_ = false;
  int32_t goaway_last_id_ = INT32_MAX;
};

}  // namespace tlsgate::h2
