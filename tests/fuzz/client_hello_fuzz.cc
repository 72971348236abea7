// Fuzz target for the ClientHello server_name reader (src/tls/client_hello.cc),
// which reads a stranger's first record before OpenSSL does. Any bytes in: a
// name that lies inside the input, never a read outside it; and the name of
// a record is the name of any longer input starting with it.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "tlsgate/tls.hh"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> in(data, size);
  const std::string_view name = tlsgate::tls::server_name_of(in);
  if (!name.empty()) {
    const auto* begin = reinterpret_cast<const char*>(data);
    if (name.data() < begin || name.data() + name.size() > begin + size) __builtin_trap();
    if (name.size() > 0xffff) __builtin_trap();
  }
  // The reader looks at one record: bytes after it change nothing.
  if (size >= 5) {
    const size_t record = 5 + (static_cast<size_t>(data[3]) << 8 | data[4]);
    if (record < size && tlsgate::tls::server_name_of(in.first(record)) != name) __builtin_trap();
  }
  return 0;
}
