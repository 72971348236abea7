// echo_server: a real grpc++ backend for tlsgate's integration tests and demo.
//
//   echo_server --listen HOST:PORT [--id NAME] [--max-message-size BYTES]
//               [--max-concurrent-streams N] [--health-service NAME]...
//               [--tls-cert PEM --tls-key PEM [--client-ca PEM]]
//
// Serves tlsgate.test.Echo over h2c (the gateway's upstream protocol), or over
// TLS with --tls-cert/--tls-key; with --client-ca it requires a client
// certificate signed by that CA (mTLS). Its first stdout line is
// "listening on HOST:PORT" with the port actually bound, flushed, so a harness
// can pass port 0 and read the port back; a fixed port can be reused at once
// after the previous server on it was killed (SO_REUSEADDR).
//
// It also serves the standard grpc.health.v1.Health service: the overall
// status ("") and every --health-service NAME start SERVING; the test RPC
// Echo/SetServing flips any of them. --max-concurrent-streams sets
// SETTINGS_MAX_CONCURRENT_STREAMS (default 10000).
// SIGTERM / SIGINT shut it down (in-flight calls get one second).
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "echo.grpc.pb.h"

namespace {

using tlsgate::test::EchoReply;
using tlsgate::test::EchoRequest;
using tlsgate::test::SetServingRequest;
using tlsgate::test::StatsReply;
using tlsgate::test::StatsRequest;

std::string to_string(grpc::string_ref s) { return std::string(s.data(), s.size()); }

// Counters shared by all handler threads. Plain mutex: this is a test peer.
class Stats {
 public:
  void start(grpc::ServerContext* ctx) {
    std::string xff, xfp;
    std::map<std::string, std::string> md;
    for (const auto& [k, v] : ctx->client_metadata()) {
      auto key = to_string(k);
      auto val = to_string(v);
      auto [it, fresh] = md.emplace(key, val);
      if (!fresh) it->second += "," + val;
    }
    if (auto it = md.find("x-forwarded-for"); it != md.end()) xff = it->second;
    if (auto it = md.find("x-forwarded-proto"); it != md.end()) xfp = it->second;
    std::lock_guard lock(mu_);
    ++active_;
    if (active_ > max_active_) max_active_ = active_;
    last_xff_ = std::move(xff);
    last_xfp_ = std::move(xfp);
    last_authority_ = to_string(ctx->ExperimentalGetAuthority());
    last_metadata_ = std::move(md);
  }

  void received(const EchoRequest& req) {
    std::lock_guard lock(mu_);
    ++messages_;
    bytes_ += req.payload().size();
  }

  void finish(const char* method, grpc::ServerContext* ctx) {
    bool cancelled = ctx->IsCancelled();
    std::lock_guard lock(mu_);
    --active_;
    ++calls_[method];
    if (cancelled) ++cancelled_;
  }

  void snapshot(StatsReply* out, bool reset) {
    std::lock_guard lock(mu_);
    for (const auto& [k, v] : calls_) (*out->mutable_calls())[k] = v;
    out->set_cancelled(cancelled_);
    out->set_messages_received(messages_);
    out->set_bytes_received(bytes_);
    out->set_last_x_forwarded_for(last_xff_);
    out->set_last_x_forwarded_proto(last_xfp_);
    out->set_last_authority(last_authority_);
    for (const auto& [k, v] : last_metadata_) (*out->mutable_last_metadata())[k] = v;
    out->set_active(active_);
    out->set_max_active(max_active_);
    if (reset) {
      calls_.clear();
      cancelled_ = messages_ = bytes_ = max_active_ = 0;
      last_xff_.clear();
      last_xfp_.clear();
      last_authority_.clear();
      last_metadata_.clear();
    }
  }

 private:
  std::mutex mu_;
  std::map<std::string, uint64_t> calls_;
  uint64_t cancelled_ = 0;
  uint64_t messages_ = 0;
  uint64_t bytes_ = 0;
  uint64_t active_ = 0;
  uint64_t max_active_ = 0;
  std::string last_xff_, last_xfp_, last_authority_;
  std::map<std::string, std::string> last_metadata_;
};

// Sleeps up to ms milliseconds; returns false early if the call is cancelled.
bool cancellable_sleep(grpc::ServerContext* ctx, uint32_t ms) {
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < until) {
    if (ctx->IsCancelled()) return false;
    auto left = until - std::chrono::steady_clock::now();
    std::this_thread::sleep_for(
        std::min<std::chrono::steady_clock::duration>(left, std::chrono::milliseconds(5)));
  }
  return !ctx->IsCancelled();
}

void reply_payload(const EchoRequest& req, EchoReply* reply) {
  if (req.response_size() > 0)
    reply->set_payload(std::string(req.response_size(), 'x'));
  else
    reply->set_payload(req.payload());
}

// Custom headers and trailers requested by the client.
void apply_metadata(grpc::ServerContext* ctx, const EchoRequest& req) {
  for (const auto& [k, v] : req.headers()) ctx->AddInitialMetadata(k, v);
  for (const auto& [k, v] : req.trailers()) ctx->AddTrailingMetadata(k, v);
}

grpc::Status requested_status(const EchoRequest& req) {
  if (req.status_code() == 0) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(req.status_code()), req.status_message());
}

grpc::Status cancelled_status() { return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"); }

class EchoService final : public tlsgate::test::Echo::Service {
 public:
  void set_id(std::string id) {
    std::lock_guard lock(id_mu_);
    id_ = std::move(id);
  }

  grpc::Status Unary(grpc::ServerContext* ctx, const EchoRequest* req, EchoReply* reply) override {
    stats_.start(ctx);
    stats_.received(*req);
    auto st = unary(ctx, *req, reply);
    stats_.finish("Unary", ctx);
    return st;
  }

  grpc::Status ServerStream(grpc::ServerContext* ctx, const EchoRequest* req,
                            grpc::ServerWriter<EchoReply>* writer) override {
    stats_.start(ctx);
    stats_.received(*req);
    auto st = server_stream(ctx, *req, writer);
    stats_.finish("ServerStream", ctx);
    return st;
  }

  grpc::Status ClientStream(grpc::ServerContext* ctx, grpc::ServerReader<EchoRequest>* reader,
                            EchoReply* reply) override {
    stats_.start(ctx);
    auto st = client_stream(ctx, reader, reply);
    stats_.finish("ClientStream", ctx);
    return st;
  }

  grpc::Status Bidi(grpc::ServerContext* ctx,
                    grpc::ServerReaderWriter<EchoReply, EchoRequest>* stream) override {
    stats_.start(ctx);
    auto st = bidi(ctx, stream);
    stats_.finish("Bidi", ctx);
    return st;
  }

  grpc::Status Stats(grpc::ServerContext*, const StatsRequest* req, StatsReply* reply) override {
    stats_.snapshot(reply, req->reset());
    reply->set_server_id(id());
    return grpc::Status::OK;
  }

  grpc::Status SetServing(grpc::ServerContext*, const SetServingRequest* req, StatsReply* reply) override {
    grpc::HealthCheckServiceInterface* health = health_.load();
    if (health == nullptr) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "health service not started");
    health->SetServingStatus(req->service(), req->serving());
    std::fprintf(stderr, "echo_server: health \"%s\" set to %s\n", req->service().c_str(),
                 req->serving() ? "SERVING" : "NOT_SERVING");
    stats_.snapshot(reply, false);
    reply->set_server_id(id());
    return grpc::Status::OK;
  }

  // The server's default health service; set once the server is built.
  void set_health(grpc::HealthCheckServiceInterface* h) { health_.store(h); }

 private:
  grpc::Status unary(grpc::ServerContext* ctx, const EchoRequest& req, EchoReply* reply) {
    apply_metadata(ctx, req);
    if (!cancellable_sleep(ctx, req.delay_ms())) return cancelled_status();
    reply_payload(req, reply);
    reply->set_server_id(id());
    reply->set_message_count(1);
    return requested_status(req);
  }

  grpc::Status server_stream(grpc::ServerContext* ctx, const EchoRequest& req,
                             grpc::ServerWriter<EchoReply>* writer) {
    apply_metadata(ctx, req);
    if (!cancellable_sleep(ctx, req.delay_ms())) return cancelled_status();
    uint32_t count = req.response_count() == 0 ? 1 : req.response_count();
    for (uint32_t i = 0; i < count; ++i) {
      if (i > 0 && req.interval_ms() > 0 && !cancellable_sleep(ctx, req.interval_ms()))
        return cancelled_status();
      EchoReply reply;
      reply_payload(req, &reply);
      reply.set_sequence(i);
      reply.set_server_id(id());
      if (!writer->Write(reply)) return cancelled_status();
    }
    return requested_status(req);
  }

  grpc::Status client_stream(grpc::ServerContext* ctx, grpc::ServerReader<EchoRequest>* reader,
                             EchoReply* reply) {
    EchoRequest req, first;
    uint64_t n = 0;
    std::string all;
    while (reader->Read(&req)) {
      stats_.received(req);
      if (n == 0) first = req;
      all += req.payload();
      ++n;
    }
    if (ctx->IsCancelled()) return cancelled_status();
    apply_metadata(ctx, first);
    if (!cancellable_sleep(ctx, first.delay_ms())) return cancelled_status();
    if (first.response_size() > 0)
      reply->set_payload(std::string(first.response_size(), 'x'));
    else
      reply->set_payload(std::move(all));
    reply->set_message_count(n);
    reply->set_server_id(id());
    return requested_status(first);
  }

  grpc::Status bidi(grpc::ServerContext* ctx, grpc::ServerReaderWriter<EchoReply, EchoRequest>* stream) {
    EchoRequest req;
    uint64_t seq = 0;
    bool metadata_applied = false;
    while (stream->Read(&req)) {
      stats_.received(req);
      if (!metadata_applied) {
        apply_metadata(ctx, req);
        metadata_applied = true;
      }
      if (req.status_code() != 0) return requested_status(req);
      if (!cancellable_sleep(ctx, req.delay_ms())) return cancelled_status();
      EchoReply reply;
      reply_payload(req, &reply);
      reply.set_sequence(seq++);
      reply.set_server_id(id());
      if (!stream->Write(reply)) return cancelled_status();
    }
    if (ctx->IsCancelled()) return cancelled_status();
    return grpc::Status::OK;
  }

  std::string id() {
    std::lock_guard lock(id_mu_);
    return id_;
  }

  std::mutex id_mu_;
  std::string id_;
  std::atomic<grpc::HealthCheckServiceInterface*> health_{nullptr};
  class Stats stats_;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "echo_server: %s\n"
               "usage: echo_server --listen HOST:PORT [--id NAME] [--max-message-size BYTES]\n"
               "                   [--max-concurrent-streams N] [--health-service NAME]...\n"
               "                   [--tls-cert PEM --tls-key PEM [--client-ca PEM]]\n",
               msg);
  std::exit(2);
}

std::string read_pem(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) usage(("cannot read " + path).c_str());
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (s.empty()) usage((path + " is empty").c_str());
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:50051";
  std::string id;
  int max_message = 64 << 20;
  int max_streams = 10000;
  std::vector<std::string> health_services;
  std::string tls_cert, tls_key, client_ca;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + std::string(a)).c_str());
      return argv[++i];
    };
    if (a == "--listen")
      listen = value();
    else if (a == "--id")
      id = value();
    else if (a == "--max-message-size")
      max_message = std::atoi(value().c_str());
    else if (a == "--max-concurrent-streams")
      max_streams = std::atoi(value().c_str());
    else if (a == "--health-service")
      health_services.push_back(value());
    else if (a == "--tls-cert")
      tls_cert = value();
    else if (a == "--tls-key")
      tls_key = value();
    else if (a == "--client-ca")
      client_ca = value();
    else if (a == "-h" || a == "--help")
      usage("help");
    else
      usage(("unknown argument " + std::string(a)).c_str());
  }

  // Block the stop signals before grpc starts threads; one thread waits for them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto colon = listen.rfind(':');
  if (colon == std::string::npos) usage("--listen wants HOST:PORT");
  std::string host = listen.substr(0, colon);
  if (max_streams < 1) usage("--max-concurrent-streams wants a number >= 1");
  if (tls_cert.empty() != tls_key.empty()) usage("--tls-cert and --tls-key go together");
  if (!client_ca.empty() && tls_cert.empty()) usage("--client-ca needs --tls-cert and --tls-key");

  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!tls_cert.empty()) {
    grpc::SslServerCredentialsOptions o(client_ca.empty()
                                            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    o.pem_key_cert_pairs.push_back({read_pem(tls_key), read_pem(tls_cert)});
    if (!client_ca.empty()) o.pem_root_certs = read_pem(client_ca);
    creds = grpc::SslServerCredentials(o);
  }

  EchoService service;
  service.set_id(id);
  // grpc.health.v1.Health; must be enabled before the builder exists.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, creds, &port);
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  // Many concurrent streams per connection by default: the gateway multiplexes.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, max_streams);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "echo_server: cannot listen on %s\n", listen.c_str());
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  if (health == nullptr) {
    std::fprintf(stderr, "echo_server: no default health check service\n");
    return 1;
  }
  health->SetServingStatus("", true);
  for (const auto& name : health_services) health->SetServingStatus(name, true);
  service.set_health(health);
  std::string bound = host + ":" + std::to_string(port);
  if (id.empty()) service.set_id(bound);
  std::printf("listening on %s\n", bound.c_str());
  std::fflush(stdout);

  std::thread waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    std::fprintf(stderr, "echo_server: signal %d, shutting down\n", sig);
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  });
  server->Wait();
  // Wake the waiter if the server stopped for another reason.
  pthread_kill(waiter.native_handle(), SIGTERM);
  waiter.join();
  return 0;
}
