// echo_client: command-line client for tlsgate.test.Echo (demo and manual checks).
//
//   echo_client --target HOST:PORT [--ca FILE] [--server-name NAME]
//               [--insecure-h2c] [--timeout SECONDS] COMMAND [ARGS]
//
// Commands:
//   unary TEXT                 one Unary call
//   server-stream TEXT COUNT   ServerStream with COUNT replies
//   bidi TEXT...               one Bidi message per argument
//   stats                      the backend's counters
//
// Prints each reply and the final status; exits 0 if the status is OK, 1 if
// not, 2 on a usage error.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "echo.grpc.pb.h"

namespace {

[[noreturn]] void usage(const std::string& msg) {
  std::cerr << "echo_client: " << msg << "\n"
            << "usage: echo_client --target HOST:PORT [--ca FILE] [--server-name NAME]\n"
               "                   [--insecure-h2c] [--timeout SECONDS] COMMAND [ARGS]\n"
               "commands: unary TEXT | server-stream TEXT COUNT | bidi TEXT... | stats\n";
  std::exit(2);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) usage("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

const char* code_name(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "?";
  }
}

int report(const grpc::Status& st) {
  std::cout << "status: " << static_cast<int>(st.error_code()) << " " << code_name(st.error_code());
  if (!st.error_message().empty()) std::cout << " (" << st.error_message() << ")";
  std::cout << std::endl;
  return st.ok() ? 0 : 1;
}

void print_reply(const tlsgate::test::EchoReply& r) {
  std::cout << "reply: " << r.payload() << "  [seq " << r.sequence() << ", server " << r.server_id() << "]"
            << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  std::string target, ca, server_name;
  bool insecure = false;
  int timeout_s = 10;
  std::vector<std::string> rest;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value for " + std::string(a));
      return argv[++i];
    };
    if (!rest.empty())
      rest.emplace_back(a);
    else if (a == "--target")
      target = value();
    else if (a == "--ca")
      ca = value();
    else if (a == "--server-name")
      server_name = value();
    else if (a == "--insecure-h2c")
      insecure = true;
    else if (a == "--timeout")
      timeout_s = std::atoi(value().c_str());
    else if (a == "-h" || a == "--help")
      usage("help");
    else if (a.starts_with("--"))
      usage("unknown option " + std::string(a));
    else
      rest.emplace_back(a);
  }
  if (target.empty()) usage("--target is required");
  if (rest.empty()) usage("missing command");

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (insecure) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions opts;
    if (!ca.empty()) opts.pem_root_certs = read_file(ca);
    creds = grpc::SslCredentials(opts);
    if (!server_name.empty()) args.SetSslTargetNameOverride(server_name);
  }
  auto channel = grpc::CreateCustomChannel(target, creds, args);
  auto stub = tlsgate::test::Echo::NewStub(channel);
  auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(timeout_s);

  const std::string& cmd = rest[0];
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline);
  if (cmd == "unary") {
    if (rest.size() != 2) usage("unary wants one TEXT");
    tlsgate::test::EchoRequest req;
    tlsgate::test::EchoReply reply;
    req.set_payload(rest[1]);
    auto st = stub->Unary(&ctx, req, &reply);
    if (st.ok()) print_reply(reply);
    return report(st);
  }
  if (cmd == "server-stream") {
    if (rest.size() != 3) usage("server-stream wants TEXT COUNT");
    tlsgate::test::EchoRequest req;
    req.set_payload(rest[1]);
    req.set_response_count(static_cast<uint32_t>(std::atoi(rest[2].c_str())));
    auto reader = stub->ServerStream(&ctx, req);
    tlsgate::test::EchoReply reply;
    while (reader->Read(&reply)) print_reply(reply);
    return report(reader->Finish());
  }
  if (cmd == "bidi") {
    auto stream = stub->Bidi(&ctx);
    tlsgate::test::EchoReply reply;
    for (size_t i = 1; i < rest.size(); ++i) {
      tlsgate::test::EchoRequest req;
      req.set_payload(rest[i]);
      if (!stream->Write(req)) break;
      if (!stream->Read(&reply)) break;
      print_reply(reply);
    }
    stream->WritesDone();
    while (stream->Read(&reply)) print_reply(reply);
    return report(stream->Finish());
  }
  if (cmd == "stats") {
    tlsgate::test::StatsRequest req;
    tlsgate::test::StatsReply reply;
    auto st = stub->Stats(&ctx, req, &reply);
    if (st.ok()) std::cout << reply.DebugString();
    return report(st);
  }
  usage("unknown command " + cmd);
}
