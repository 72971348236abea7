// OpenSSL's error queue as one line of text, for test failure messages.
// No gtest here: the fuzz targets include it too (through raw_client.hh).
#pragma once

#include <openssl/err.h>

#include <string>

namespace tlsgate::tls::tlstest {

// Every queued error, oldest first, separated by "; " (the queue is emptied).
inline std::string openssl_errors() {
  std::string s;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!s.empty()) s += "; ";
    s += buf;
  }
  return s;
}

}  // namespace tlsgate::tls::tlstest
