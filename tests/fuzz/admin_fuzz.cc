// Fuzz target for src/admin/: the admin listener's request head parser and
// the answer built from it. Whoever reaches the admin address sends these
// bytes. Beyond "no crash", it checks the contract the server relies on:
// an answer within kMaxHead bytes, views inside the input, and the same
// result whichever way the bytes were split across receives.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tlsgate/admin.hh"

namespace {

using namespace tlsgate::admin;

bool inside(std::string_view part, std::string_view whole) {
  return part.empty() || (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const ParseResult r = parse_request(in);
  if (r.status == ParseStatus::Incomplete && size >= kMaxHead) __builtin_trap();
  if (r.status == ParseStatus::Error && (r.error < 400 || r.error > 599)) __builtin_trap();
  if (r.status == ParseStatus::Done) {
    if (!inside(r.request.method, in) || !inside(r.request.path, in)) __builtin_trap();
    if (r.request.path.empty() || r.request.path[0] != '/') __builtin_trap();
    Handlers h;
    h.ready = [] { return true; };
    h.metrics = [] { return std::string("tlsgate_up 1\n"); };
    h.config = [] { return std::string("workers = 1\n"); };
    const std::string answer = respond(r.request, h);
    if (answer.compare(0, 9, "HTTP/1.1 ") != 0) __builtin_trap();
  }
  // The server parses the whole buffer again after each receive: a prefix
  // that was already an answer must give the same answer.
  for (size_t cut = 1; cut < size && cut < 64; cut += 7) {
    const ParseResult p = parse_request(in.substr(0, cut));
    if (p.status == ParseStatus::Done && (r.status != ParseStatus::Done || p.request.path != r.request.path))
      __builtin_trap();
    if (p.status == ParseStatus::Error && r.status != ParseStatus::Error) __builtin_trap();
  }
  return 0;
}
