// The HTTP/2 forwarding core without sockets; the fixture is in forward_fixture.hh.
#include "forward_fixture.hh"

namespace tlsgate::h2 {
namespace {
using namespace tlsgate::h2::fwdtest;

// ------------------------------------------------------------ tests

TEST_F(ForwardTest, SettingsAreAdvertised) {
  start();
  EXPECT_EQ(nghttp2_session_get_remote_settings(client_->session(), NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS),
            100u);
  EXPECT_EQ(nghttp2_session_get_remote_settings(client_->session(), NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE),
            kStreamWindow);
  EXPECT_EQ(nghttp2_session_get_remote_settings(client_->session(), NGHTTP2_SETTINGS_ENABLE_PUSH), 0u);
  EXPECT_EQ(nghttp2_session_get_remote_settings(backend_->session(), NGHTTP2_SETTINGS_ENABLE_PUSH), 0u);
  EXPECT_TRUE(up_->can_take_stream());
  EXPECT_EQ(down_errors_, 0);
  EXPECT_EQ(up_errors_, 0);
}

TEST_F(ForwardTest, GrpcRequestReachesBackendWithForwardingHeaders) {
  start();
  Headers h = grpc_request();
  h.emplace_back("x-forwarded-for", "6.6.6.6");  // a client must not choose these
  h.emplace_back("x-forwarded-proto", "http");
  h.emplace_back("forwarded", "for=6.6.6.6;proto=http");  // nor these (RFC 7239, nginx's)
  h.emplace_back("x-real-ip", "6.6.6.6");
  h.emplace_back("x-req-meta", "kept");
  Body req{grpc_frame("hello")};
  const int32_t cid = send_request(h, &req);
  ASSERT_EQ(down_errors_, 0);
  EXPECT_EQ(router_.calls, 1);
  EXPECT_EQ(router_.last_cluster, 3u) << "the DownstreamSettings route is used";
  EXPECT_GT(up_owner_.wakes, 0) << "the upstream owner must be woken to flush the new stream";

  ASSERT_EQ(backend_->streams.size(), 1u);
  const PeerStream& b = backend_->streams.begin()->second;
  EXPECT_EQ(value(b.headers, ":method"), "POST");
  EXPECT_EQ(value(b.headers, ":scheme"), "http") << "the backend hop is cleartext";
  EXPECT_EQ(value(b.headers, ":authority"), "localhost:8443");
  EXPECT_EQ(value(b.headers, ":path"), "/echo.Echo/Unary");
  EXPECT_EQ(value(b.headers, "content-type"), "application/grpc");
  EXPECT_EQ(value(b.headers, "te"), "trailers");
  EXPECT_EQ(value(b.headers, "grpc-timeout"), "5S");
  EXPECT_EQ(value(b.headers, "x-req-meta"), "kept");
  EXPECT_EQ(values(b.headers, "x-forwarded-for"), std::vector<std::string>{kClientIp});
  EXPECT_EQ(values(b.headers, "x-forwarded-proto"), std::vector<std::string>{"https"});
  EXPECT_TRUE(values(b.headers, "forwarded").empty()) << "a client-chosen Forwarded reached the backend";
  EXPECT_TRUE(values(b.headers, "x-real-ip").empty()) << "a client-chosen X-Real-IP reached the backend";
  EXPECT_EQ(b.body, grpc_frame("hello"));
  EXPECT_TRUE(b.end_stream);
  EXPECT_EQ(ctx_->counters().streams_forwarded, 1u);
  EXPECT_EQ(ctx_->streams_in_use(), 1u);
  EXPECT_EQ(down_->active_streams(), 1u);
  EXPECT_EQ(up_->active_streams(), 1u);

  // Finish it so nothing is left.
  backend_->respond(backend_->last_stream, {{":status", "200"}, {"grpc-status", "0"}}, nullptr);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->streams[cid].closed);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, ResponseHeadersDataAndTrailersReachClientUnchanged) {
  start();
  Body req{grpc_frame("ping")};
  const int32_t cid = send_request(grpc_request(), &req);
  const int32_t bid = backend_->last_stream;
  ASSERT_GT(bid, 0);

  const Headers resp_headers = grpc_response_headers();
  const std::string body = grpc_frame("pong") + grpc_frame(std::string(40000, 'z'));  // > one DATA frame
  const Headers trailers = {{"grpc-status", "0"}, {"grpc-message", ""}, {"x-custom-trailer", "yes"}};
  Body resp{body, true, trailers};
  backend_->respond(bid, resp_headers, &resp);
  ASSERT_TRUE(pump());

  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(c.headers, resp_headers);
  EXPECT_FALSE(c.headers_end_stream);
  EXPECT_EQ(c.body.size(), body.size());
  EXPECT_TRUE(c.body == body);
  EXPECT_EQ(c.trailers, trailers);
  EXPECT_TRUE(c.end_stream);
  EXPECT_TRUE(c.closed);
  EXPECT_EQ(c.close_code, NGHTTP2_NO_ERROR);
  EXPECT_FALSE(c.rst);
  EXPECT_TRUE(backend_->streams[bid].closed);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(down_->active_streams(), 0u);
  EXPECT_EQ(up_->active_streams(), 0u);
  EXPECT_EQ(down_errors_ + up_errors_, 0);
}

// Sends `pieces` one at a time on `from`'s stream `id`, whose `body` waits
// between them, and checks after each that `far()` (the stream at the other
// end) holds everything sent so far and has not ended; then ends the body.
template <class Pump, class Far>
void send_pieces(Peer& from, int32_t id, Body& body, std::initializer_list<const char*> pieces, Pump pump, Far far) {
  for (const char* piece : pieces) {
    body.data += grpc_frame(piece);
    from.resume(id);
    ASSERT_TRUE(pump());
    EXPECT_EQ(far().body, body.data) << "after " << piece;
    EXPECT_FALSE(far().end_stream) << "after " << piece;
  }
  body.complete = true;
  from.resume(id);
  ASSERT_TRUE(pump());
}

// A request body that arrives in pieces: the gateway's upstream data source
// runs dry and waits (NGHTTP2_ERR_DEFERRED) between them, and each piece,
// then the end, must start it again.
TEST_F(ForwardTest, RequestBodyInPiecesReachesBackendAsItArrives) {
  start();
  Body req{grpc_frame("first"), false};
  const int32_t cid = send_request(grpc_request(), &req);
  const int32_t bid = backend_->last_stream;
  ASSERT_GT(bid, 0);
  EXPECT_EQ(backend_->streams[bid].body, grpc_frame("first"));
  EXPECT_FALSE(backend_->streams[bid].end_stream);

  send_pieces(*client_, cid, req, {"second", "third"}, [this] { return pump(); },
              [&]() -> const PeerStream& { return backend_->streams[bid]; });
  EXPECT_TRUE(backend_->streams[bid].end_stream) << "the end of the request must reach the backend";

  backend_->respond(bid, {{":status", "200"}, {"grpc-status", "0"}}, nullptr);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->streams[cid].closed);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(down_errors_ + up_errors_, 0);
}

// The same for a response body (server streaming): each message reaches the
// client as the backend sends it, then the trailers.
TEST_F(ForwardTest, ResponseBodyInPiecesReachesClientAsItArrives) {
  start();
  Body req{grpc_frame("subscribe")};
  const int32_t cid = send_request(grpc_request(), &req);
  const int32_t bid = backend_->last_stream;
  ASSERT_GT(bid, 0);
  Body resp{grpc_frame("update 1"), false, {{"grpc-status", "0"}}};
  backend_->respond(bid, grpc_response_headers(), &resp);
  ASSERT_TRUE(pump());
  EXPECT_EQ(client_->streams[cid].body, grpc_frame("update 1"));
  EXPECT_FALSE(client_->streams[cid].end_stream);

  send_pieces(*backend_, bid, resp, {"update 2", "update 3"}, [this] { return pump(); },
              [&]() -> const PeerStream& { return client_->streams[cid]; });
  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(c.trailers, (Headers{{"grpc-status", "0"}}));
  EXPECT_TRUE(c.end_stream);
  EXPECT_TRUE(c.closed);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(down_errors_ + up_errors_, 0);
}

TEST_F(ForwardTest, TrailersOnlyResponseReachesClient) {
  start();
  Body req{grpc_frame("missing")};
  const int32_t cid = send_request(grpc_request(), &req);
  const Headers only = {{":status", "200"},
                        {"content-type", "application/grpc"},
                        {"grpc-status", "5"},
                        {"grpc-message", "no such key"}};
  backend_->respond(backend_->last_stream, only, nullptr);
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(c.headers, only);
  EXPECT_TRUE(c.headers_end_stream) << "trailers-only must stay a single HEADERS with END_STREAM";
  EXPECT_TRUE(c.trailers.empty());
  EXPECT_TRUE(c.body.empty());
  EXPECT_TRUE(c.closed);
  EXPECT_EQ(c.close_code, NGHTTP2_NO_ERROR);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, NoUpstreamAnswersUnavailableWithTheReason) {
  start();
  router_.upstream = nullptr;
  router_.why_text = "cluster echo: all 3 endpoints down";
  Body req{grpc_frame("hello")};
  const int32_t cid = send_request(grpc_request(), &req);
  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(value(c.headers, ":status"), "200");
  EXPECT_EQ(value(c.headers, "content-type"), "application/grpc");
  EXPECT_EQ(value(c.headers, "grpc-status"), "14");
  EXPECT_EQ(value(c.headers, "grpc-message"), "cluster echo: all 3 endpoints down");
  EXPECT_TRUE(c.headers_end_stream);
  EXPECT_TRUE(c.closed);
  EXPECT_EQ(c.close_code, NGHTTP2_NO_ERROR);
  EXPECT_TRUE(backend_->streams.empty());
  EXPECT_EQ(ctx_->counters().streams_unavailable, 1u);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

// ------------------------------------------------------------ end-of-stream record

TEST_F(ForwardTest, StreamEndRecordOfANormalCall) {
  start();
  const uint64_t before = monotonic_us();
  const std::string message(100, 'm');
  const PeerStream& c = unary(message);
  ASSERT_TRUE(c.closed);
  ASSERT_EQ(down_owner_.ends.size(), 1u);
  EXPECT_TRUE(up_owner_.ends.empty()) << "only the client's side reports streams";
  const EndRecord& r = down_owner_.ends[0];
  EXPECT_EQ(r.authority, "localhost:8443");
  EXPECT_EQ(r.path, "/echo.Echo/Unary");
  EXPECT_EQ(r.end.http_status, 200);
  EXPECT_EQ(r.end.grpc_status, 0);
  EXPECT_EQ(r.end.reset_by, ResetBy::None);
  EXPECT_EQ(r.end.reset_code, 0u);
  EXPECT_EQ(r.end.request_bytes, grpc_frame(message).size());
  EXPECT_EQ(r.end.response_bytes, grpc_frame("re: " + message).size());
  EXPECT_GE(r.end.start_us, before);
  EXPECT_GE(r.end.end_us, r.end.start_us);
  EXPECT_LE(r.end.end_us, monotonic_us());
  EXPECT_EQ(r.end.cluster, 3);  // the default route
  EXPECT_EQ(r.end.endpoint, 0);
  EXPECT_EQ(r.end.attempts, 1u);
  EXPECT_EQ(r.end.retries(), 0u);
}

TEST_F(ForwardTest, StreamEndRecordOfAGatewayMadeUnavailable) {
  start();
  router_.upstream = nullptr;
  Body req{grpc_frame("hello")};
  send_request(grpc_request("/echo.Echo/Nowhere"), &req);
  ASSERT_EQ(down_owner_.ends.size(), 1u);
  const StreamEnd& e = down_owner_.ends[0].end;
  EXPECT_EQ(down_owner_.ends[0].path, "/echo.Echo/Nowhere");
  EXPECT_EQ(e.http_status, 200);
  EXPECT_EQ(e.grpc_status, 14);
  EXPECT_EQ(e.reset_by, ResetBy::None);
  EXPECT_EQ(e.response_bytes, 0u);
  EXPECT_EQ(e.endpoint, -1);
  EXPECT_EQ(e.attempts, 0u);
}

TEST_F(ForwardTest, StreamEndRecordOfAClientReset) {
  start();
  Body req{grpc_frame("first"), /*complete=*/false, {}};
  const int32_t cid = send_request(grpc_request(), &req);
  Body resp{grpc_frame("ack"), false, {}};
  backend_->respond(backend_->last_stream, grpc_response_headers(), &resp);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(down_owner_.ends.empty()) << "reported before it ended";
  client_->reset(cid, NGHTTP2_CANCEL);
  ASSERT_TRUE(pump());
  ASSERT_EQ(down_owner_.ends.size(), 1u);
  const StreamEnd& e = down_owner_.ends[0].end;
  EXPECT_EQ(e.reset_by, ResetBy::Client);
  EXPECT_EQ(e.reset_code, static_cast<uint32_t>(NGHTTP2_CANCEL));
  EXPECT_EQ(e.http_status, 200);
  EXPECT_EQ(e.grpc_status, -1);
  EXPECT_EQ(e.request_bytes, grpc_frame("first").size());
  EXPECT_EQ(e.response_bytes, grpc_frame("ack").size());
  EXPECT_EQ(e.attempts, 1u);
}

TEST_F(ForwardTest, StreamEndRecordOfABackendResetAndOfADeadline) {
  router_.policy.max_grpc_timeout_ms = 500;
  start();
  Body req{grpc_frame("hello")};
  send_request(grpc_request(), &req);
  backend_->reset(backend_->last_stream, NGHTTP2_INTERNAL_ERROR);
  ASSERT_TRUE(pump());
  send_request(grpc_request(), &req);
  ctx_->expire_deadlines(router_.now + 500);
  ASSERT_TRUE(pump());
  ASSERT_EQ(down_owner_.ends.size(), 2u);
  const StreamEnd& reset = down_owner_.ends[0].end;
  EXPECT_EQ(reset.reset_by, ResetBy::Backend);
  EXPECT_EQ(reset.reset_code, static_cast<uint32_t>(NGHTTP2_INTERNAL_ERROR));
  EXPECT_EQ(reset.http_status, 0);
  EXPECT_EQ(reset.grpc_status, -1);
  const StreamEnd& late = down_owner_.ends[1].end;
  EXPECT_EQ(late.reset_by, ResetBy::None);
  EXPECT_EQ(late.grpc_status, 4);
  EXPECT_EQ(late.http_status, 200);
}

TEST_F(ForwardTest, StreamEndRecordOf431AndOfAConnectionGone) {
  start();
  Headers big = grpc_request();
  for (int i = 0; i < 70; ++i) big.emplace_back("x-field-" + std::to_string(i), "v");
  send_request(big, nullptr);
  Body req{grpc_frame("x"), false, {}};
  send_request(grpc_request(), &req);
  down_.reset();  // the client connection goes away with the second stream open
  ASSERT_EQ(down_owner_.ends.size(), 2u);
  EXPECT_EQ(down_owner_.ends[0].end.http_status, 431);
  EXPECT_EQ(down_owner_.ends[0].end.cluster, -1);
  EXPECT_EQ(down_owner_.ends[0].end.attempts, 0u);
  EXPECT_EQ(down_owner_.ends[1].end.reset_by, ResetBy::Connection);
  EXPECT_EQ(down_owner_.ends[1].end.attempts, 1u);
  pump();
}

TEST_F(ForwardTest, UnavailableMessageIsPercentEncoded) {
  start();
  router_.upstream = nullptr;
  router_.why_text = "50% of \"x\" \xc3\xa9\n";
  const int32_t cid = send_request(grpc_request(), nullptr);
  // gRPC: bytes outside 0x20..0x7e, and '%', are %XX-encoded.
  EXPECT_EQ(value(client_->streams[cid].headers, "grpc-message"), "50%25 of \"x\" %C3%A9%0A");
}

TEST_F(ForwardTest, UpstreamFailMidResponseEndsWithUnavailableTrailers) {
  start();
  Body req{grpc_frame("stream me")};
  const int32_t cid = send_request(grpc_request(), &req);
  const std::string sent = grpc_frame("part 1") + grpc_frame("part 2");
  Body resp{sent, /*complete=*/false, {}};
  backend_->respond(backend_->last_stream, grpc_response_headers(), &resp);
  ASSERT_TRUE(pump());
  ASSERT_EQ(client_->streams[cid].body, sent);
  ASSERT_FALSE(client_->streams[cid].end_stream);

  up_->fail("backend connection reset");
  EXPECT_TRUE(up_->failed());
  EXPECT_GT(down_owner_.wakes, 0);
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(c.headers, grpc_response_headers());
  EXPECT_EQ(c.body, sent) << "data already sent stays, nothing is added";
  EXPECT_EQ(value(c.trailers, "grpc-status"), "14");
  EXPECT_EQ(value(c.trailers, "grpc-message"), "backend connection reset");
  EXPECT_TRUE(c.end_stream);
  EXPECT_TRUE(c.closed);
  EXPECT_EQ(c.close_code, NGHTTP2_NO_ERROR);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(down_->active_streams(), 0u);
  EXPECT_FALSE(up_->can_take_stream());
  // The router counts the lost connection once, not this stream as a failure.
  EXPECT_EQ(router_.finished[static_cast<int>(Outcome::ConnectionLost)], 1);
  EXPECT_EQ(router_.finished[static_cast<int>(Outcome::Failure)], 0);
}

TEST_F(ForwardTest, UpstreamFailBeforeResponseIsTrailersOnlyUnavailable) {
  start();
  Body req{grpc_frame("slow")};
  const int32_t cid = send_request(grpc_request(), &req);
  up_->fail("connect timeout");
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(value(c.headers, ":status"), "200");
  EXPECT_EQ(value(c.headers, "grpc-status"), "14");
  EXPECT_EQ(value(c.headers, "grpc-message"), "connect timeout");
  EXPECT_TRUE(c.headers_end_stream);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, ClientResetCancelsBackendStream) {
  start();
  Body req{grpc_frame("first message"), /*complete=*/false, {}};  // client keeps streaming
  const int32_t cid = send_request(grpc_request(), &req);
  const int32_t bid = backend_->last_stream;
  ASSERT_EQ(backend_->streams[bid].body, grpc_frame("first message"));
  Body resp{grpc_frame("ack"), false, {}};
  backend_->respond(bid, grpc_response_headers(), &resp);
  ASSERT_TRUE(pump());
  ASSERT_EQ(client_->streams[cid].body, grpc_frame("ack"));

  client_->reset(cid, NGHTTP2_CANCEL);
  ASSERT_TRUE(pump());
  const PeerStream& b = backend_->streams[bid];
  EXPECT_TRUE(b.rst);
  EXPECT_EQ(b.rst_code, NGHTTP2_CANCEL);
  EXPECT_TRUE(b.closed);
  EXPECT_EQ(ctx_->counters().streams_reset_by_client, 1u);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(up_->active_streams(), 0u);
  EXPECT_EQ(down_->active_streams(), 0u);

  // Both connections keep working.
  const PeerStream& next = unary("after reset");
  EXPECT_EQ(next.body, grpc_frame("re: after reset"));
  EXPECT_EQ(value(next.trailers, "grpc-status"), "0");
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, ClientResetBeforeBackendAnswersCancelsBackendStream) {
  start();
  Body req{grpc_frame("x"), false, {}};
  const int32_t cid = send_request(grpc_request(), &req);
  const int32_t bid = backend_->last_stream;
  client_->reset(cid, NGHTTP2_INTERNAL_ERROR);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(backend_->streams[bid].rst);
  EXPECT_EQ(backend_->streams[bid].rst_code, NGHTTP2_CANCEL);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, BackendResetReachesClientWithItsCode) {
  start();
  Body req{grpc_frame("hello")};
  const int32_t cid = send_request(grpc_request(), &req);
  backend_->reset(backend_->last_stream, NGHTTP2_REFUSED_STREAM);
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_TRUE(c.rst);
  EXPECT_EQ(c.rst_code, NGHTTP2_REFUSED_STREAM);
  EXPECT_TRUE(c.closed);
  EXPECT_EQ(ctx_->counters().streams_reset_by_upstream, 1u);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, RefusedStreamIsRetriedWithItsBody) {
  router_.policy.retries = 1;
  router_.policy.retry_buffer = 1024;
  start();
  Body req{grpc_frame("hello")};
  const int32_t cid = send_request(grpc_request(), &req);
  const int32_t first = backend_->last_stream;
  EXPECT_EQ(value(backend_->streams[first].headers, "grpc-timeout"), "5S");  // as the client sent it
  router_.now += 1'200;
  backend_->reset(first, NGHTTP2_REFUSED_STREAM);
  ASSERT_TRUE(pump());
  // Sent again, avoiding the endpoint that refused it, with the same body.
  EXPECT_EQ(router_.calls, 2);
  EXPECT_EQ(router_.last_avoid, 0);
  const int32_t second = backend_->last_stream;
  ASSERT_NE(second, first);
  EXPECT_EQ(backend_->streams[second].body, grpc_frame("hello"));
  // The retry carries what is left of the client's 5 s.
  EXPECT_EQ(value(backend_->streams[second].headers, "grpc-timeout"), "3800m");
  Body resp{grpc_frame("world"), true, {{"grpc-status", "0"}}};
  backend_->respond(second, grpc_response_headers(), &resp);
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_FALSE(c.rst);
  EXPECT_EQ(c.body, grpc_frame("world"));
  EXPECT_EQ(ctx_->counters().retries, 1u);
  EXPECT_EQ(router_.finished[static_cast<int>(Outcome::NotProcessed)], 1);
  EXPECT_EQ(router_.finished[static_cast<int>(Outcome::Success)], 1);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

// One retry allowed; a request whose body spans several pool chunks.
class ForwardRetryTest : public ForwardTest {
 protected:
  // Sends a request with a `body_bytes` message, checks the backend got it
  // whole, then refuses that stream. The client's stream id.
  int32_t send_and_refuse(size_t body_bytes, uint32_t retry_buffer) {
    router_.policy.retries = 1;
    router_.policy.retry_buffer = retry_buffer;
    start();
    big_ = pattern(body_bytes);
    Body req{grpc_frame(big_)};
    const int32_t cid = send_request(grpc_request(), &req);
    first_ = backend_->last_stream;
    EXPECT_EQ(backend_->streams[first_].body, grpc_frame(big_));
    backend_->reset(first_, NGHTTP2_REFUSED_STREAM);
    EXPECT_TRUE(pump());
    return cid;
  }

  std::string big_;
  int32_t first_ = 0;  // the backend's stream that was refused
};

// The bytes kept for a retry stay in the request queue itself: a body over
// several pool chunks goes out again whole and in order.
TEST_F(ForwardRetryTest, RefusedStreamIsRetriedWithABodyOfSeveralChunks) {
  const int32_t cid = send_and_refuse(40 * 1024, 128 * 1024);
  const int32_t second = backend_->last_stream;
  ASSERT_NE(second, first_);
  EXPECT_EQ(backend_->streams[second].body, grpc_frame(big_));
  Body resp{grpc_frame("ok"), true, {{"grpc-status", "0"}}};
  backend_->respond(second, grpc_response_headers(), &resp);
  ASSERT_TRUE(pump());
  EXPECT_EQ(client_->streams[cid].body, grpc_frame("ok"));
  EXPECT_EQ(ctx_->counters().retries, 1u);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

// Past retry_buffer the kept bytes are dropped as the rest is sent: the
// backend still gets the whole body, and a refusal is not retried. The
// buffer is passed in the middle of the body, with bytes already kept.
TEST_F(ForwardRetryTest, BodyOverRetryBufferIsSentWholeAndNotRetried) {
  const int32_t cid = send_and_refuse(60 * 1024, 20 * 1024);
  EXPECT_EQ(backend_->last_stream, first_) << "not sent again";
  EXPECT_EQ(ctx_->counters().retries, 0u);
  EXPECT_TRUE(client_->streams[cid].closed);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, DeadlineAnswersStatus4AndCancelsTheBackend) {
  router_.policy.max_grpc_timeout_ms = 500;
  start();
  Body req{grpc_frame("hello")};
  auto headers = grpc_request();  // grpc-timeout: 5S, above the cluster's 500 ms cap
  const int32_t cid = send_request(headers, &req);
  const int32_t bid = backend_->last_stream;
  // The backend is told the capped timeout.
  EXPECT_EQ(value(backend_->streams[bid].headers, "grpc-timeout"), "500m");
  ctx_->expire_deadlines(router_.now + 499);
  ASSERT_TRUE(pump());
  EXPECT_FALSE(client_->streams[cid].closed);
  ctx_->expire_deadlines(router_.now + 500);
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_TRUE(c.closed);
  EXPECT_EQ(value(c.headers, "grpc-status"), "4");
  EXPECT_TRUE(backend_->streams[bid].rst);
  EXPECT_EQ(backend_->streams[bid].rst_code, NGHTTP2_CANCEL);
  EXPECT_EQ(ctx_->counters().deadline_exceeded, 1u);
  EXPECT_EQ(router_.finished[static_cast<int>(Outcome::Cancelled)], 1);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(ctx_->deadlines_pending(), 0u);
}

TEST_F(ForwardTest, BackendResetMidResponseReachesClient) {
  start();
  Body req{grpc_frame("hello")};
  const int32_t cid = send_request(grpc_request(), &req);
  const int32_t bid = backend_->last_stream;
  Body resp{grpc_frame("partial"), false, {}};
  backend_->respond(bid, grpc_response_headers(), &resp);
  ASSERT_TRUE(pump());
  backend_->reset(bid, NGHTTP2_INTERNAL_ERROR);
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(c.body, grpc_frame("partial"));
  EXPECT_TRUE(c.rst);
  EXPECT_EQ(c.rst_code, NGHTTP2_INTERNAL_ERROR);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, SlowClientBoundsBufferingAndBlocksBackend) {
  start(/*client_manual_window=*/true);
  client_->consume = false;  // the client reads nothing for now
  const size_t total = 2 << 20;
  Body req{grpc_frame("download")};
  const int32_t cid = send_request(grpc_request(), &req);
  const int32_t bid = backend_->last_stream;
  Body resp{pattern(total), true, {{"grpc-status", "0"}, {"x-custom-trailer", "done"}}};
  backend_->respond(bid, grpc_response_headers(), &resp);
  ASSERT_TRUE(pump());

  // The client's window (65535 by default) is all it got.
  EXPECT_EQ(client_->data_received, 65535u);
  EXPECT_FALSE(client_->streams[cid].end_stream);
  // The backend is blocked: its stream window towards the gateway is closed.
  EXPECT_EQ(nghttp2_session_get_stream_remote_window_size(backend_->session(), bid), 0);
  EXPECT_LT(resp.off, total);
  // What the gateway holds is bounded by one stream window (plus a frame and
  // chunk rounding), not by the size of the response.
  const size_t bound_chunks = (kStreamWindow + 16384) / Chunk::kCapacity + 2;
  EXPECT_LE(pool_.in_use(), bound_chunks);
  EXPECT_GT(pool_.in_use(), 0u);

  // The client starts reading: everything arrives, in order, with trailers.
  client_->consume = true;
  client_->consume_all(cid);
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(c.body.size(), total);
  EXPECT_TRUE(c.body == resp.data);
  EXPECT_EQ(value(c.trailers, "grpc-status"), "0");
  EXPECT_EQ(value(c.trailers, "x-custom-trailer"), "done");
  EXPECT_TRUE(c.end_stream);
  EXPECT_LE(peak_chunks_, bound_chunks) << "buffering exceeded one stream window during the transfer";
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(pool_.in_use(), 0u);
}

TEST_F(ForwardTest, LargeRequestBodyIsForwardedWithFlowControl) {
  start();
  const std::string big = grpc_frame(pattern(3 << 20));  // more than every window involved
  Body req{big};
  const int32_t cid = send_request(grpc_request(), &req);
  const int32_t bid = backend_->last_stream;
  EXPECT_EQ(backend_->streams[bid].body.size(), big.size());
  EXPECT_TRUE(backend_->streams[bid].body == big);
  EXPECT_TRUE(backend_->streams[bid].end_stream);
  backend_->respond(bid, {{":status", "200"}, {"content-type", "application/grpc"}, {"grpc-status", "0"}},
                    nullptr);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->streams[cid].closed);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, TooManyHeaderFieldsAnswers431OnThatStreamOnly) {
  start();
  Headers h = grpc_request();  // 7 fields
  for (int i = 0; h.size() < 65; ++i) h.emplace_back("x-field-" + std::to_string(i), "v");
  ASSERT_EQ(h.size(), 65u);
  const int32_t cid = send_request(h, nullptr);
  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(value(c.headers, ":status"), "431") << "65 fields: 431 Request Header Fields Too Large";
  EXPECT_TRUE(c.closed);
  EXPECT_FALSE(c.rst) << "a request without a body needs no reset after the 431";
  EXPECT_TRUE(backend_->streams.empty()) << "the request must not be forwarded";
  EXPECT_FALSE(client_->goaway) << "a stream error, not a connection error";
  EXPECT_EQ(ctx_->counters().header_limit_resets, 1u);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(down_errors_, 0);

  const PeerStream& next = unary("still alive");
  EXPECT_EQ(next.body, grpc_frame("re: still alive"));
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, SixtyFourHeaderFieldsAreForwarded) {
  start();
  Headers h = grpc_request();
  // append(), not "literal" + std::to_string(): GCC 12 -O3 -Wrestrict false positive.
  for (int i = 0; h.size() < 64; ++i)
    h.emplace_back(std::string("x-field-").append(std::to_string(i)), std::string("v").append(std::to_string(i)));
  const int32_t cid = send_request(h, nullptr);
  ASSERT_EQ(backend_->streams.size(), 1u);
  const PeerStream& b = backend_->streams.begin()->second;
  EXPECT_EQ(b.headers.size(), 64u + 2u);  // plus x-forwarded-for / -proto
  EXPECT_EQ(value(b.headers, "x-field-56"), "v56");
  backend_->respond(backend_->last_stream, {{":status", "200"}, {"grpc-status", "0"}}, nullptr);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->streams[cid].closed);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

// A stream whose lists outgrew their inline fields (HeaderList::kInlineFields)
// forwards every field, and the recycled stream then carries exactly the
// next call's fields: nothing of the big call is left behind.
TEST_F(ForwardTest, BigHeaderListsThenSmallOnTheRecycledStream) {
  start();
  Headers req = grpc_request();
  for (int i = 0; req.size() < 40; ++i) req.emplace_back(std::string("x-req-").append(std::to_string(i)), "r");
  Headers resp = grpc_response_headers();
  for (int i = 0; resp.size() < 30; ++i) resp.emplace_back(std::string("x-resp-").append(std::to_string(i)), "s");
  Headers trailers{{"grpc-status", "0"}};
  for (int i = 0; trailers.size() < 20; ++i)
    trailers.emplace_back(std::string("x-trailer-").append(std::to_string(i)), "t");
  Body body{grpc_frame("big")};
  const int32_t cid = send_request(req, &body);
  ASSERT_EQ(backend_->streams.size(), 1u);
  const PeerStream& b = backend_->streams[backend_->last_stream];
  EXPECT_EQ(b.headers.size(), 40u + 2u);  // plus x-forwarded-for / -proto
  EXPECT_EQ(value(b.headers, "x-req-32"), "r");
  Body answer{grpc_frame("re: big"), true, trailers};
  backend_->respond(backend_->last_stream, resp, &answer);
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  ASSERT_TRUE(c.closed);
  EXPECT_EQ(c.headers.size(), 30u);
  EXPECT_EQ(value(c.headers, "x-resp-26"), "s");
  EXPECT_EQ(c.trailers.size(), 20u);
  EXPECT_EQ(value(c.trailers, "x-trailer-18"), "t");
  EXPECT_EQ(ctx_->streams_in_use(), 0u);

  const PeerStream& next = unary("small");
  EXPECT_EQ(next.body, grpc_frame("re: small"));
  EXPECT_EQ(next.headers.size(), grpc_response_headers().size());
  EXPECT_TRUE(values(next.headers, "x-resp-0").empty());
  EXPECT_EQ(next.trailers, (Headers{{"grpc-status", "0"}}));
  const PeerStream& nb = backend_->streams[backend_->last_stream];
  EXPECT_EQ(nb.headers.size(), grpc_request().size() + 2u);
  EXPECT_TRUE(values(nb.headers, "x-req-0").empty());
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, HugeHeaderValueAnswers431OnThatStreamOnly) {
  start();
  Headers h = grpc_request();
  h.emplace_back("x-huge", std::string(70 * 1024, 'h'));
  const int32_t cid = send_request(h, nullptr);
  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(value(c.headers, ":status"), "431") << "a 70 KiB header value";
  EXPECT_TRUE(c.closed);
  EXPECT_TRUE(backend_->streams.empty());
  EXPECT_FALSE(client_->goaway) << "a stream error, not a connection error";
  EXPECT_EQ(ctx_->streams_in_use(), 0u);

  const PeerStream& next = unary("after huge header");
  EXPECT_EQ(next.body, grpc_frame("re: after huge header"));
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, HeaderListOverSixtyFourKiBAnswers431OnThatStreamOnly) {
  start();
  Headers h = grpc_request();
  // Each field is under nghttp2's own per-field limit; together they pass 64 KiB.
  for (int i = 0; i < 5; ++i) h.emplace_back("x-big-" + std::to_string(i), std::string(14 * 1024, 'b'));
  Body req{grpc_frame("unwanted"), false};
  const int32_t cid = send_request(h, &req);
  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(value(c.headers, ":status"), "431");
  EXPECT_TRUE(c.headers_end_stream);
  req.complete = true;  // the rest of the body is dropped
  client_->resume(cid);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->streams[cid].closed);
  EXPECT_TRUE(backend_->streams.empty());
  EXPECT_FALSE(client_->goaway);
  EXPECT_EQ(ctx_->counters().header_limit_resets, 1u);
  const PeerStream& next = unary("after big list");
  EXPECT_EQ(next.body, grpc_frame("re: after big list"));
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

// A header block that arrives in two receive() calls while another stream
// ends in between keeps every field: the block's stream was found through
// the session's recent-stream cache, which the other stream's close had
// cleared, and the rest of the block was dropped — the request reached the
// backend without :path and its later fields (found by the h2 fuzz target).
TEST_F(ForwardTest, HeaderBlockSplitAcrossReceivesKeepsEveryField) {
  start();
  Body req1{grpc_frame("first")};
  const int32_t c1 = send_request(grpc_request(), &req1);
  const int32_t b1 = backend_->last_stream;
  Body resp1{grpc_frame("re: first"), false};
  backend_->respond(b1, grpc_response_headers(), &resp1);
  ASSERT_TRUE(pump());

  Headers h = grpc_request("/echo.Echo/Second");
  h.emplace_back("x-late-field", "must-arrive");
  const int32_t c2 = client_->request(h, nullptr);
  std::vector<uint8_t> wire;
  for (;;) {
    const uint8_t* p = nullptr;
    const ssize_t n = nghttp2_session_mem_send(client_->session(), &p);
    if (n <= 0) break;
    wire.insert(wire.end(), p, p + n);
  }
  const size_t cut = 9 + 3;  // the HEADERS frame's header and its first fields
  ASSERT_GT(wire.size(), cut + 20);
  ASSERT_TRUE(down_->receive(wire.data(), cut));

  // Stream 1 ends meanwhile; the client's bytes (a WINDOW_UPDATE...) must
  // not enter the middle of its header block, so only the gateway moves.
  resp1.complete = true;
  resp1.trailers = {{"grpc-status", "0"}};
  backend_->resume(b1);
  for (int i = 0; i < 10; ++i) {
    backend_to_gateway();
    flush_up();
    flush_down();
  }
  ASSERT_TRUE(client_->streams[c1].closed);

  ASSERT_TRUE(down_->receive(wire.data() + cut, wire.size() - cut));
  down_dirty_ = true;
  ASSERT_TRUE(pump());
  const PeerStream& b2 = backend_->streams[backend_->last_stream];
  EXPECT_EQ(value(b2.headers, ":path"), "/echo.Echo/Second");
  EXPECT_EQ(value(b2.headers, ":authority"), "localhost:8443");
  EXPECT_EQ(value(b2.headers, "x-late-field"), "must-arrive");
  backend_->respond(backend_->last_stream, grpc_response_headers(), nullptr);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->streams[c2].closed);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, ManyConcurrentStreamsAllCompleteAndNothingLeaks) {
  start();
  constexpr int kStreams = 20;
  std::vector<std::unique_ptr<Body>> reqs, resps;
  std::vector<int32_t> cids;
  for (int i = 0; i < kStreams; ++i) {
    reqs.push_back(std::make_unique<Body>(Body{grpc_frame("req " + std::to_string(i))}));
    cids.push_back(client_->request(grpc_request(), reqs.back().get()));
  }
  ASSERT_TRUE(pump());
  ASSERT_EQ(backend_->streams.size(), static_cast<size_t>(kStreams));
  EXPECT_EQ(ctx_->streams_in_use(), static_cast<size_t>(kStreams));
  // Answer in reverse order, each echoing its own request.
  for (auto it = backend_->streams.rbegin(); it != backend_->streams.rend(); ++it) {
    const std::string msg = it->second.body.substr(5);
    resps.push_back(std::make_unique<Body>(Body{grpc_frame("re: " + msg), true, {{"grpc-status", "0"}}}));
    backend_->respond(it->first, grpc_response_headers(), resps.back().get());
  }
  ASSERT_TRUE(pump());
  for (int i = 0; i < kStreams; ++i) {
    const PeerStream& c = client_->streams[cids[i]];
    EXPECT_EQ(c.body, grpc_frame("re: req " + std::to_string(i))) << "stream " << cids[i];
    EXPECT_EQ(value(c.trailers, "grpc-status"), "0");
    EXPECT_TRUE(c.closed);
  }
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(down_->active_streams(), 0u);
  EXPECT_EQ(up_->active_streams(), 0u);
  EXPECT_EQ(ctx_->counters().streams_forwarded, static_cast<uint64_t>(kStreams));
}

TEST_F(ForwardTest, ShutdownSendsGoawayAndRunningStreamsFinish) {
  start();
  Body req{grpc_frame("in flight")};
  const int32_t cid = send_request(grpc_request(), &req);
  down_->shutdown();
  down_dirty_ = true;  // the shard flushes the session it drained
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->goaway);
  EXPECT_EQ(client_->goaway_last_stream, cid);
  Body resp{grpc_frame("finished"), true, {{"grpc-status", "0"}}};
  backend_->respond(backend_->last_stream, grpc_response_headers(), &resp);
  ASSERT_TRUE(pump());
  EXPECT_EQ(client_->streams[cid].body, grpc_frame("finished"));
  EXPECT_TRUE(client_->streams[cid].closed);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, DownstreamDestroyedMidStreamCancelsBackendAndFreesStreams) {
  start();
  Body req{grpc_frame("abandon"), false, {}};
  send_request(grpc_request(), &req);
  const int32_t bid = backend_->last_stream;
  down_.reset();  // the client connection is gone
  EXPECT_GT(up_owner_.wakes, 0);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(backend_->streams[bid].rst);
  EXPECT_EQ(backend_->streams[bid].rst_code, NGHTTP2_CANCEL);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, BackendResetNoErrorBeforeResponseEndsClientStream) {
  start();
  Body req{grpc_frame("hello")};
  const int32_t cid = send_request(grpc_request(), &req);
  // Legal, if unusual: the backend ends the stream without any response.
  backend_->reset(backend_->last_stream, NGHTTP2_NO_ERROR);
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_TRUE(c.closed) << "the client's stream must end (reset or grpc-status), not wait forever";
  EXPECT_TRUE(c.rst || value(c.headers, "grpc-status") == "14" || value(c.trailers, "grpc-status") == "14");
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, HeadersAndResetInOneReadLeaveNoStream) {
  start();
  const int32_t cid = client_->request(grpc_request(), nullptr);
  // HEADERS leaves the client, then the client cancels at once: the gateway
  // reads both in one receive(), before the upstream HEADERS was flushed.
  std::string flight;
  const uint8_t* p = nullptr;
  for (ssize_t n; (n = nghttp2_session_mem_send(client_->session(), &p)) > 0;)
    flight.append(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  client_->reset(cid, NGHTTP2_CANCEL);
  for (ssize_t n; (n = nghttp2_session_mem_send(client_->session(), &p)) > 0;)
    flight.append(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  ASSERT_TRUE(down_->receive(reinterpret_cast<const uint8_t*>(flight.data()), flight.size()));
  down_dirty_ = true;
  ASSERT_TRUE(pump());
  for (const auto& [id, b] : backend_->streams) {
    EXPECT_TRUE(b.closed) << "backend stream " << id << " left open";
  }
  EXPECT_EQ(up_->active_streams(), 0u);
  EXPECT_EQ(ctx_->streams_in_use(), 0u) << "the forwarded stream leaked";
  // The upstream connection still works.
  const PeerStream& next = unary("after cancel");
  EXPECT_EQ(next.body, grpc_frame("re: after cancel"));
}

TEST_F(ForwardTest, SlowBackendBoundsRequestBufferingAndBlocksClient) {
  start(/*client_manual_window=*/false, /*backend_manual_window=*/true);
  backend_->consume = false;  // the backend reads nothing for now
  const std::string upload = grpc_frame(pattern(2 << 20));
  Body req{upload};
  const int32_t cid = send_request(grpc_request(), &req);
  const int32_t bid = backend_->last_stream;
  EXPECT_EQ(backend_->data_received, 65535u) << "the backend's default window";
  EXPECT_EQ(nghttp2_session_get_stream_remote_window_size(client_->session(), cid), 0)
      << "client must be blocked";
  EXPECT_LT(req.off, upload.size());
  const size_t bound_chunks = (kStreamWindow + 16384) / Chunk::kCapacity + 2;
  EXPECT_LE(pool_.in_use(), bound_chunks);

  backend_->consume = true;
  backend_->consume_all(bid);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(backend_->streams[bid].body == upload) << "got " << backend_->streams[bid].body.size();
  EXPECT_TRUE(backend_->streams[bid].end_stream);
  EXPECT_LE(peak_chunks_, bound_chunks);
  backend_->respond(bid, {{":status", "200"}, {"content-type", "application/grpc"}, {"grpc-status", "0"}},
                    nullptr);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->streams[cid].closed);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, NoUpstreamStillDrainsTheRequestBody) {
  start();
  router_.upstream = nullptr;
  // More than the client's stream window: the gateway must keep giving the
  // window back or the client can never finish sending.
  const std::string upload = grpc_frame(pattern(1 << 20));
  Body req{upload};
  const int32_t cid = send_request(grpc_request(), &req);
  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(value(c.headers, "grpc-status"), "14");
  EXPECT_TRUE(c.closed);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(pool_.in_use(), 0u) << "nothing is buffered for a stream nobody forwards";
  // The connection window was given back too: the next stream can send.
  router_.upstream = up_.get();
  const PeerStream& next = unary("next");
  EXPECT_EQ(next.body, grpc_frame("re: next"));
}

TEST_F(ForwardTest, BackendGoawayStopsNewStreams) {
  start();
  EXPECT_TRUE(up_->can_take_stream());
  EXPECT_FALSE(up_->going_away());
  nghttp2_submit_goaway(backend_->session(), NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, nullptr, 0);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(up_->going_away());
  EXPECT_FALSE(up_->can_take_stream());
}

// A cluster with [clusters.tls]: the backend hop is TLS, and the request
// says so (it said http before).
TEST_F(ForwardTest, TlsBackendHopSaysSchemeHttps) {
  start();
  backend_ = std::make_unique<Peer>(Peer::Role::Backend, false);  // a fresh connection
  up_ = std::make_unique<UpstreamSession>(*ctx_, up_owner_, 3, 0, /*tls=*/true);
  router_.upstream = up_.get();
  up_dirty_ = true;
  ASSERT_TRUE(pump());
  Body req{grpc_frame("over tls")};
  const int32_t cid = send_request(grpc_request(), &req);
  ASSERT_EQ(backend_->streams.size(), 1u);
  EXPECT_EQ(value(backend_->streams.begin()->second.headers, ":scheme"), "https");
  backend_->respond(backend_->last_stream, {{":status", "200"}, {"grpc-status", "0"}}, nullptr);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->streams[cid].closed);
}

TEST_F(ForwardTest, BackendMaxConcurrentStreamsIsHonoured) {
  start();
  backend_ = std::make_unique<Peer>(Peer::Role::Backend, false, /*max_concurrent_streams=*/1);
  up_ = std::make_unique<UpstreamSession>(*ctx_, up_owner_, 3, 0);
  router_.upstream = up_.get();
  up_dirty_ = true;
  ASSERT_TRUE(pump());
  EXPECT_TRUE(up_->can_take_stream());
  Body req{grpc_frame("one")};
  const int32_t cid = send_request(grpc_request(), &req);
  EXPECT_FALSE(up_->can_take_stream()) << "one stream open, backend allows one";
  backend_->respond(backend_->last_stream, {{":status", "200"}, {"grpc-status", "0"}}, nullptr);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->streams[cid].closed);
  EXPECT_TRUE(up_->can_take_stream());
}

TEST_F(ForwardTest, UpstreamDestroyedMidStreamAnswersUnavailable) {
  start();
  Body req{grpc_frame("hello")};
  const int32_t cid = send_request(grpc_request(), &req);
  up_.reset();  // the shard dropped the backend connection
  router_.upstream = nullptr;
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(value(c.headers, "grpc-status"), "14");
  EXPECT_TRUE(c.closed);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

TEST_F(ForwardTest, ProduceIntoAFullQueueLosesNoFrames) {
  start();
  Body req{grpc_frame("big answer please")};
  const int32_t cid = send_request(grpc_request(), &req);
  Body resp{grpc_frame(pattern(48 * 1024)), true, {{"grpc-status", "0"}}};
  backend_->respond(backend_->last_stream, grpc_response_headers(), &resp);
  // Carry the response to the gateway, but do not flush the downstream yet.
  while (backend_to_gateway() || (up_owner_.woken && flush_up())) {
  }
  // The downstream output queue sits on a pool of two chunks (any one frame
  // fits): produce() must stop when the queue is full and continue where it
  // stopped on the next call.
  ChunkPool two(2, 2);
  std::string wire;
  for (int turn = 0; turn < 100; ++turn) {
    ByteQueue q(&two);
    down_->produce(q, SIZE_MAX);
    if (q.empty()) break;
    std::string part(q.size(), '\0');
    q.read(part.data(), part.size());
    wire += part;
  }
  down_owner_.woken = down_dirty_ = false;
  ssize_t rv = nghttp2_session_mem_recv(client_->session(), reinterpret_cast<const uint8_t*>(wire.data()),
                                        wire.size());
  EXPECT_EQ(rv, static_cast<ssize_t>(wire.size())) << nghttp2_strerror(static_cast<int>(rv));
  EXPECT_FALSE(client_->goaway) << "the client saw a corrupt frame sequence";
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_TRUE(c.body == resp.data) << "client got " << c.body.size() << " of " << resp.data.size()
                                   << " bytes";
  EXPECT_EQ(value(c.trailers, "grpc-status"), "0");
}

// Issue 16: body bytes the pool refuses must never leave a hole in what is
// forwarded. The pool holds 4 chunks (~64 KiB) while a stream window lets
// 256 KiB in flight, so a peer that does not read makes the gateway run out.
TEST_F(ForwardTest, RequestBodyThePoolRefusesResetsTheStreamAtBothSides) {
  pool_.set_max_chunks(4);
  start(/*client_manual_window=*/false, /*backend_manual_window=*/true);
  backend_->consume = false;  // the backend reads nothing: the gateway must buffer
  const std::string big = grpc_frame(pattern(1 << 20));
  Body req{big.substr(0, 1000), /*complete=*/false};  // the backend sees the stream start
  const int32_t cid = send_request(grpc_request(), &req);
  const int32_t bid = backend_->last_stream;
  ASSERT_GT(bid, 0);
  EXPECT_EQ(ctx_->counters().body_buffer_resets, 0u);
  req.data = big;  // then the rest, more than the gateway may hold
  req.complete = true;
  client_->resume(cid);
  ASSERT_TRUE(pump());
  EXPECT_EQ(ctx_->counters().body_buffer_resets, 1u);
  // The client is told at once; the backend's half is cancelled.
  EXPECT_TRUE(client_->streams[cid].rst);
  EXPECT_EQ(client_->streams[cid].rst_code, NGHTTP2_ENHANCE_YOUR_CALM);
  EXPECT_TRUE(backend_->streams[bid].rst);
  EXPECT_EQ(backend_->streams[bid].rst_code, NGHTTP2_CANCEL);
  // Even once the backend reads again, it never sees the end of a request
  // with a hole: what it got is a prefix of what the client sent, unfinished.
  backend_->consume = true;
  backend_->consume_all(bid);
  ASSERT_TRUE(pump());
  const PeerStream& b = backend_->streams[bid];
  EXPECT_FALSE(b.end_stream);
  EXPECT_LT(b.body.size(), big.size());
  EXPECT_TRUE(big.compare(0, b.body.size(), b.body) == 0) << "the backend got bytes out of order or with a gap";
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(pool_.in_use(), 0u);
  // The connection and the pool serve the next call.
  const PeerStream& next = unary("after the reset");
  EXPECT_EQ(next.body, grpc_frame("re: after the reset"));
  EXPECT_EQ(value(next.trailers, "grpc-status"), "0");
}

TEST_F(ForwardTest, ResponseBodyThePoolRefusesResetsTheStreamAtBothSides) {
  pool_.set_max_chunks(4);
  start(/*client_manual_window=*/true);
  client_->consume = false;  // the client reads nothing: the gateway must buffer
  Body req{grpc_frame("download")};
  const int32_t cid = send_request(grpc_request(), &req);
  const int32_t bid = backend_->last_stream;
  const std::string big = pattern(1 << 20);
  Body resp{big, true, {{"grpc-status", "0"}}};
  backend_->respond(bid, grpc_response_headers(), &resp);
  ASSERT_TRUE(pump());
  EXPECT_EQ(ctx_->counters().body_buffer_resets, 1u);
  EXPECT_TRUE(backend_->streams[bid].rst);
  EXPECT_EQ(backend_->streams[bid].rst_code, NGHTTP2_CANCEL);
  client_->consume = true;
  client_->consume_all(cid);
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_TRUE(c.rst);
  EXPECT_EQ(c.rst_code, NGHTTP2_ENHANCE_YOUR_CALM);
  EXPECT_FALSE(c.end_stream) << "the client saw a complete response with bytes missing";
  EXPECT_TRUE(c.trailers.empty());
  EXPECT_TRUE(big.compare(0, c.body.size(), c.body) == 0) << "the client got bytes out of order or with a gap";
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  EXPECT_EQ(pool_.in_use(), 0u);
  const PeerStream& next = unary("after the reset");
  EXPECT_EQ(value(next.trailers, "grpc-status"), "0");
}

// ------------------------------------------------------------ the gateway's own PINGs (issue 18)

// A PING ACK as a client sends it, with `opaque` (8 bytes).
std::vector<uint8_t> ping_ack(const std::string& opaque) {
  std::vector<uint8_t> f = {0, 0, 8, NGHTTP2_PING, NGHTTP2_FLAG_ACK, 0, 0, 0, 0};
  for (char c : opaque) f.push_back(static_cast<uint8_t>(c));
  return f;
}

// The connection preface's SETTINGS is required, not a glitch: a client that
// connects and makes a call has none (each connection used to count one, so
// tlsgate_h2_glitches_total{kind="settings"} moved with every connection).
TEST_F(ForwardTest, PrefaceSettingsIsNoGlitch) {
  start();
  const PeerStream& c = unary("hello");
  EXPECT_EQ(value(c.trailers, "grpc-status"), "0");
  EXPECT_EQ(ctx_->counters().glitch_settings, 0u);
  EXPECT_EQ(ctx_->counters().glitch_window_updates, 0u);
}

TEST_F(ForwardTest, KeepalivePingIsAnsweredCountedAndNoGlitch) {
  start();
  const uint64_t frames_before = down_->frames_seen();
  down_owner_.woken = false;
  ASSERT_TRUE(down_->keepalive_ping());
  EXPECT_TRUE(down_owner_.woken) << "the shard must flush the PING";
  ASSERT_TRUE(pump());
  EXPECT_EQ(down_->keepalive_acks(), 1u);
  EXPECT_EQ(down_->frames_seen() - frames_before, 1u) << "the client sent the ACK and nothing else";
  EXPECT_EQ(ctx_->counters().glitch_pings, 0u);
  EXPECT_EQ(down_errors_, 0);
}

// The drain's final GOAWAY waits for the drain PING's ACK: a keepalive ACK
// arriving meanwhile is not it.
TEST_F(ForwardTest, KeepaliveAckDoesNotEndTheDrain) {
  start();
  down_->drain();
  ASSERT_TRUE(down_->drain_pending());
  GatewayScope scope;
  const auto keep = ping_ack("tlsgkeep");
  ASSERT_TRUE(down_->receive(keep.data(), keep.size()));
  EXPECT_TRUE(down_->drain_pending()) << "a keepalive ACK ended the drain";
  EXPECT_EQ(down_->keepalive_acks(), 1u);
  const auto drain = ping_ack("tlsgdrai");
  ASSERT_TRUE(down_->receive(drain.data(), drain.size()));
  EXPECT_FALSE(down_->drain_pending()) << "the drain PING's ACK brings the final GOAWAY";
  EXPECT_EQ(down_->keepalive_acks(), 1u);
}

// A connection that already got its final GOAWAY (an idle close, or an age
// drain that finished) and is then drained at stop gets no second notice:
// the last stream id the client was given never rises (RFC 9113 6.8).
TEST_F(ForwardTest, DrainAfterTheFinalGoawayAddsNoNotice) {
  start();
  down_->shutdown();
  down_->drain();
  EXPECT_FALSE(down_->drain_pending());
  down_dirty_ = true;
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->goaway);
  EXPECT_EQ(client_->goaway_last_stream, 0) << "a GOAWAY with the largest stream id came after the final one";
}

// ------------------------------------------------------------ Budget

TEST(BudgetTest, EmptiesThenRefillsWithTimeUpToItsStart) {
  Budget b(3, 10, 2);  // 3 to start, 2 per second
  EXPECT_TRUE(b.take(1000));
  EXPECT_TRUE(b.take(1000));
  EXPECT_TRUE(b.take(1000));
  EXPECT_FALSE(b.take(1000)) << "three tokens, three takes";
  EXPECT_FALSE(b.take(1400)) << "0.4 s earns 0.8 of a token";
  EXPECT_TRUE(b.take(1500)) << "0.5 s earns one: the 0.8 seen at 1400 ms was not thrown away";
  EXPECT_FALSE(b.take(1500));
  EXPECT_FALSE(b.take(1750));
  EXPECT_TRUE(b.take(2000)) << "one every 500 ms";
  b.take(100000);
  EXPECT_EQ(b.tokens(), 2u) << "time refills up to the start (3), not the cap (10)";
}

TEST(BudgetTest, GiveRaisesItUpToTheCap) {
  Budget b(2, 5, 0);  // no refill with time
  b.give(10);
  EXPECT_EQ(b.tokens(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(b.take(1000 + static_cast<uint64_t>(i) * 1000));
  EXPECT_FALSE(b.take(100000)) << "a rate of 0 never refills";
}

// ---------------------------------------------------------------------------
// Responder clusters (issue 20): the stream is answered in the session.

// Echo holds the upload against the client's own window: a client that does
// not read its responses cannot send more than a stream window ahead, as a
// slow backend would hold it when forwarding. Once it reads, every byte
// comes back in order and the call ends with grpc-status 0. No backend is
// ever asked for.
TEST_F(ForwardTest, ResponderEchoIsFlowControlledByTheClientsReading) {
  router_.policy.respond = config::Respond::Echo;
  start(/*client_manual_window=*/true);
  client_->consume = false;
  const std::string upload = grpc_frame(pattern(2 << 20));
  Body req{upload};
  const int32_t cid = send_request(grpc_request(), &req);
  EXPECT_EQ(client_->data_received, 65535u) << "the client's receive window is all it got";
  EXPECT_EQ(nghttp2_session_get_stream_remote_window_size(client_->session(), cid), 0)
      << "the client must be blocked: its bytes are not echoed yet";
  EXPECT_LT(req.off, upload.size());
  const size_t bound_chunks = (kStreamWindow + 16384) / Chunk::kCapacity + 2;
  EXPECT_LE(pool_.in_use(), bound_chunks);

  client_->consume = true;
  client_->consume_all(cid);
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_EQ(value(c.headers, ":status"), "200");
  EXPECT_EQ(value(c.headers, "content-type"), "application/grpc");
  EXPECT_TRUE(c.body == upload) << "echoed " << c.body.size() << " of " << upload.size();
  EXPECT_EQ(value(c.trailers, "grpc-status"), "0");
  EXPECT_TRUE(c.end_stream);
  EXPECT_LE(peak_chunks_, bound_chunks);
  EXPECT_EQ(router_.calls, 0) << "no backend is picked for a responder";
  EXPECT_EQ(ctx_->counters().streams_responded, 1u);
  EXPECT_EQ(ctx_->counters().streams_forwarded, 0u);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  ASSERT_EQ(down_owner_.ends.size(), 1u);
  EXPECT_EQ(down_owner_.ends[0].end.grpc_status, 0);
  EXPECT_EQ(down_owner_.ends[0].end.cluster, 3);
}

// respond = "status" with a non-zero status: trailers-only, with the
// configured (already percent-encoded) message; the request body, which
// nobody reads, gives its window back.
TEST_F(ForwardTest, ResponderStatusIsTrailersOnly) {
  router_.policy.respond = config::Respond::Status;
  router_.policy.respond_status = 13;
  router_.policy.respond_message = "no%25";
  start();
  const std::string upload = grpc_frame(pattern(1 << 20));
  Body req{upload};
  const int32_t cid = send_request(grpc_request(), &req);
  ASSERT_TRUE(pump());
  const PeerStream& c = client_->streams[cid];
  EXPECT_TRUE(c.headers_end_stream);
  EXPECT_EQ(value(c.headers, "grpc-status"), "13");
  EXPECT_EQ(value(c.headers, "grpc-message"), "no%25");
  EXPECT_EQ(req.off, upload.size()) << "the whole request was sent: its window came back";
  EXPECT_EQ(router_.calls, 0);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
  ASSERT_EQ(down_owner_.ends.size(), 1u);
  EXPECT_EQ(down_owner_.ends[0].end.grpc_status, 13);
}

// respond = "status" answers when the request has ended (as a server reads
// a unary call first): an upload in pieces gets nothing until its last one.
TEST_F(ForwardTest, ResponderStatusAnswersAtTheEndOfTheRequest) {
  router_.policy.respond = config::Respond::Status;
  router_.policy.respond_status = 5;
  start();
  const std::string upload = grpc_frame(pattern(100000));
  Body req{upload.substr(0, 1000), /*complete=*/false};
  const int32_t cid = send_request(grpc_request(), &req);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->streams[cid].headers.empty()) << "answered before the request ended";
  req.data = upload;
  req.complete = true;
  client_->resume(cid);
  ASSERT_TRUE(pump());
  EXPECT_EQ(req.off, upload.size());
  EXPECT_EQ(value(client_->streams[cid].headers, "grpc-status"), "5");
  EXPECT_TRUE(client_->streams[cid].closed);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

// response_bytes: a gRPC message of exactly that size whose bytes are one
// protobuf field 1 of zeros, for sizes on both sides of the 1-byte length,
// and across DATA frames; status 0 with no size is an empty message.
TEST_F(ForwardTest, ResponderStatusMessageOfTheConfiguredSize) {
  start();
  struct Case {
    uint32_t size;
    std::string head;  // after the 5-byte gRPC prefix
  };
  const Case cases[] = {{0, ""},
                        {2, std::string("\x0a\x00", 2)},
                        {129, std::string("\x0a\x7f", 2)},
                        {130, std::string("\x0a\xfd\x80\x80\x00", 5)},
                        {100000, "\x0a" + std::string(1, static_cast<char>(0x80 | (99995 & 0x7f))) +
                                     std::string(1, static_cast<char>(0x80 | ((99995 >> 7) & 0x7f))) +
                                     std::string(1, static_cast<char>(0x80 | ((99995 >> 14) & 0x7f))) +
                                     std::string(1, '\0')}};
  for (const Case& k : cases) {
    SCOPED_TRACE(k.size);
    clusters_[3].respond = config::Respond::Status;
    clusters_[3].response_bytes = k.size;
    Body req{grpc_frame("x")};
    const int32_t cid = send_request(grpc_request(), &req);
    ASSERT_TRUE(pump());
    const PeerStream& c = client_->streams[cid];
    ASSERT_EQ(c.body.size(), 5u + k.size);
    const std::string prefix{0, static_cast<char>(k.size >> 24), static_cast<char>(k.size >> 16),
                             static_cast<char>(k.size >> 8), static_cast<char>(k.size)};
    EXPECT_EQ(c.body.substr(0, 5), prefix);
    EXPECT_EQ(c.body.substr(5, k.head.size()), k.head);
    EXPECT_EQ(c.body.find_first_not_of('\0', 5 + k.head.size()), std::string::npos) << "zeros after the head";
    EXPECT_EQ(value(c.trailers, "grpc-status"), "0");
    EXPECT_TRUE(c.end_stream);
  }
  EXPECT_EQ(router_.calls, 0);
}

// delay: the answer waits on the Context's list until respond_due() passes
// its time (the shard calls it each turn, on a timer for the first one due);
// echo holds the request meanwhile. A client that resets while it waits
// frees the stream, which leaves the list.
TEST_F(ForwardTest, ResponderDelayAnswersWhenDue) {
  router_.policy.respond = config::Respond::Echo;
  router_.policy.respond_delay_ms = 50;
  start();
  Body req{grpc_frame("later")};
  const int32_t cid = send_request(grpc_request(), &req);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->streams[cid].headers.empty()) << "nothing before the delay";
  EXPECT_EQ(ctx_->next_response_ms(), router_.now + 50);
  ctx_->respond_due(router_.now + 49);
  ASSERT_TRUE(pump());
  EXPECT_TRUE(client_->streams[cid].headers.empty());
  ctx_->respond_due(router_.now + 50);
  EXPECT_EQ(ctx_->next_response_ms(), 0u);
  ASSERT_TRUE(pump());
  EXPECT_EQ(client_->streams[cid].body, grpc_frame("later"));
  EXPECT_EQ(value(client_->streams[cid].trailers, "grpc-status"), "0");
  EXPECT_TRUE(client_->streams[cid].end_stream);

  // Three waiting, the middle one reset by its client: the others are
  // answered in order, and nothing is left waiting.
  int32_t ids[3];
  for (int i = 0; i < 3; ++i) {
    router_.now += 10;
    Body r{grpc_frame("w" + std::to_string(i))};
    ids[i] = send_request(grpc_request(), &r);
  }
  nghttp2_submit_rst_stream(client_->session(), NGHTTP2_FLAG_NONE, ids[1], NGHTTP2_CANCEL);
  ASSERT_TRUE(pump());
  EXPECT_EQ(ctx_->streams_in_use(), 2u);
  ctx_->respond_due(router_.now + 50);
  ASSERT_TRUE(pump());
  EXPECT_EQ(client_->streams[ids[0]].body, grpc_frame("w0"));
  EXPECT_EQ(client_->streams[ids[2]].body, grpc_frame("w2"));
  EXPECT_EQ(ctx_->next_response_ms(), 0u);
  EXPECT_EQ(ctx_->streams_in_use(), 0u);
}

}  // namespace
}  // namespace tlsgate::h2
