#pragma once
// The backend pool without sockets: a real upstream::ClusterManager and real
// h2 sessions, whose Transport is this fixture. Each connection the manager
// opens faces an in-memory nghttp2 backend (tests/unit/h2/forward_fixture.hh's
// Peer); client connections face an in-memory nghttp2 client. pump() carries
// bytes both ways until nothing moves, as the shard's loop does.
#include <gtest/gtest.h>
#include <nghttp2/nghttp2.h>

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "../h2/forward_fixture.hh"
#include "tlsgate/buffer.hh"
#include "tlsgate/cluster_manager.hh"
#include "tlsgate/config.hh"
#include "tlsgate/h2.hh"

namespace tlsgate::upstream::pooltest {

using h2::fwdtest::Body;
using h2::fwdtest::Headers;
using h2::fwdtest::Peer;
using h2::fwdtest::PeerStream;

inline config::SocketAddress address(const std::string& text) { return config::parse_address(text, false); }

// A cluster "echo" with the given numeric endpoints; settings the tests change.
inline std::shared_ptr<config::Config> one_cluster(std::vector<std::string> endpoints, const std::string& name = "echo") {
  auto cfg = std::make_shared<config::Config>();
  config::Cluster c;
  c.name = name;
  for (const std::string& e : endpoints) {
    c.endpoints.push_back(address(e));
    c.endpoint_name.push_back(-1);
  }
  c.lb = config::LbPolicy::RoundRobin;  // deterministic choice for the tests
  cfg->clusters.push_back(std::move(c));
  return cfg;
}

// The shard's part: a connection object with its session, and its backend.
struct FakeConnection final : Connection, h2::Owner {
  std::unique_ptr<h2::UpstreamSession> h2;
  std::unique_ptr<Peer> backend;
  std::string address;
  bool closed = false;
  std::string close_why;
  bool woken = false;
  void wake() override { woken = true; }
};

class PoolTest : public ::testing::Test, public Transport {
 protected:
  PoolTest() : manager_(0, *this, 1), ctx_(pool_, manager_) { manager_.set_now(now_); }

  ~PoolTest() override {
    clients_.clear();
    downs_.clear();
    for (auto& c : conns_) c->h2.reset();
  }

  // Transport
  Connection* open(uint32_t cluster, uint32_t endpoint, const config::SocketAddress& addr, const char*& why) override {
    if (refuse_open_) {
      why = "cannot create upstream socket";
      return nullptr;
    }
    auto c = std::make_unique<FakeConnection>();
    c->h2 = std::make_unique<h2::UpstreamSession>(ctx_, *c, cluster, static_cast<int>(endpoint));
    c->session = c->h2.get();
    c->backend = std::make_unique<Peer>(Peer::Role::Backend, false, backend_max_streams_);
    c->address = addr.text;
    conns_.push_back(std::move(c));
    return conns_.back().get();
  }
  void close(Connection& c, const char* why, bool nothing_sent) override {
    auto& f = static_cast<FakeConnection&>(c);
    if (f.closed) return;
    f.closed = true;
    f.close_why = why;
    manager_.connection_closed(c, why, nothing_sent);
    f.h2.reset();
  }

  // A client connection on the given snapshot's cluster policies.
  size_t connect_client(const std::vector<h2::ClusterPolicy>* clusters) {
    h2::DownstreamSettings ds;
    ds.cluster = 0;
    ds.clusters = clusters;
    ds.max_concurrent_streams = 100;
    ds.client_ip = "203.0.113.9";
    downs_.push_back(std::make_unique<h2::DownstreamSession>(ctx_, down_owner_, ds));
    clients_.push_back(std::make_unique<Peer>(Peer::Role::Client));
    pump();
    return clients_.size() - 1;
  }

  static Headers request(const std::string& timeout = "") {
    Headers h{{":method", "POST"},         {":scheme", "https"}, {":authority", "localhost:8443"},
              {":path", "/echo.Echo/Unary"}, {"content-type", "application/grpc"}, {"te", "trailers"}};
    if (!timeout.empty()) h.emplace_back("grpc-timeout", timeout);
    return h;
  }

  // A request from client `i`; its stream id there.
  int32_t call(size_t i, const std::string& timeout = "") {
    Body* body = &bodies_.emplace_back(h2::fwdtest::grpc_frame("ping"));
    const int32_t id = clients_[i]->request(request(timeout), body);
    pump();
    return id;
  }

  void answer(FakeConnection& c, int32_t id) {
    Body* resp = &bodies_.emplace_back(h2::fwdtest::grpc_frame("pong"), true, Headers{{"grpc-status", "0"}});
    c.backend->respond(id, {{":status", "200"}, {"content-type", "application/grpc"}}, resp);
  }

  // Streams the backends have, over all open connections.
  size_t backend_streams(const FakeConnection& c) const { return c.backend->streams.size(); }

  bool pump() {
    for (int round = 0; round < 10000; ++round) {
      bool moved = false;
      for (size_t i = 0; i < downs_.size(); ++i) {
        if (!downs_[i]) continue;
        moved |= carry(*clients_[i], *downs_[i]);
      }
      for (auto& c : conns_) {
        if (c->closed || !c->h2 || c->h2->failed()) continue;
        if (!c->ready) manager_.connected(*c);  // the socket "connected"
        moved |= carry(*c->backend, *c->h2);
      }
      if (!moved) return true;
    }
    ADD_FAILURE() << "the sessions never went quiet";
    return false;
  }

  void advance(uint64_t ms) {
    now_ += ms;
    manager_.set_now(now_);
  }

  ChunkPool pool_;
  ChunkPool wire_pool_;
  ClusterManager manager_;
  h2::Context ctx_;
  uint64_t now_ = 1'000'000;
  uint32_t backend_max_streams_ = 0;  // 0: nghttp2's default (unlimited)
  bool refuse_open_ = false;
  std::vector<std::unique_ptr<FakeConnection>> conns_;
  h2::fwdtest::TestOwner down_owner_;
  std::vector<std::unique_ptr<h2::DownstreamSession>> downs_;
  std::vector<std::unique_ptr<Peer>> clients_;
  std::deque<Body> bodies_;  // a peer's data provider reads its Body until the stream ends

 private:
  // Peer → gateway session, then gateway session → peer.
  bool carry(Peer& peer, h2::Session& s) {
    bool moved = false;
    for (;;) {
      const uint8_t* p = nullptr;
      const ssize_t n = nghttp2_session_mem_send(peer.session(), &p);
      if (n <= 0) break;
      moved = true;
      s.receive(p, static_cast<size_t>(n));
    }
    ByteQueue q(&wire_pool_);
    s.produce(q, SIZE_MAX);
    if (!q.empty()) {
      moved = true;
      std::vector<uint8_t> bytes(q.size());
      q.read(bytes.data(), bytes.size());
      nghttp2_session_mem_recv(peer.session(), bytes.data(), bytes.size());
    }
    return moved;
  }
};

}  // namespace tlsgate::upstream::pooltest
