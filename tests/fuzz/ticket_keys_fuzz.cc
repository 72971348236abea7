// Fuzz target for the ticket_keys file parser (src/config/ticket_keys.cc):
// an operator's file, read at start-up and on every reload. Any bytes in:
// keys out, or std::invalid_argument with one line naming a line of the file.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

#include "tlsgate/config.hh"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto keys = tlsgate::config::parse_ticket_keys(text, "t.keys");
    if (keys.empty() || keys.size() > tlsgate::config::kMaxTicketKeys) __builtin_trap();
    for (size_t i = 0; i < keys.size(); ++i)
      for (size_t j = 0; j < i; ++j)
        if (std::memcmp(keys[i].name, keys[j].name, sizeof keys[i].name) == 0) __builtin_trap();
  } catch (const std::invalid_argument& e) {
    const std::string_view what = e.what();
    if (what.rfind("t.keys:", 0) != 0 || what.find('\n') != std::string_view::npos) __builtin_trap();
  }
  return 0;
}
