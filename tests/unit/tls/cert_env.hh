// Shared by the tls unit tests: a test CA and server certificates made once
// per test program with tools/gen-cert, and helpers around them.
#pragma once

#include "openssl_errors.hh"

#include <gtest/gtest.h>
#include <openssl/err.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "tlsgate/config.hh"
#include "tlsgate/tls.hh"

#ifndef TLSGATE_SOURCE_ROOT
#error "TLSGATE_SOURCE_ROOT must name the source tree (for tools/gen-cert)"
#endif

namespace tlsgate::tls::tlstest {

// ------------------------------------------------------------ environment

inline std::string g_cert_dir;

class CertEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    init_library();
    char tmpl[] = "/tmp/tlsgate-tls-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    g_cert_dir = tmpl;
    std::string cmd = "bash '" TLSGATE_SOURCE_ROOT "/tools/gen-cert' '" + g_cert_dir + "' >/dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  void TearDown() override {
    if (!g_cert_dir.empty()) std::filesystem::remove_all(g_cert_dir);
  }
};

inline const auto* const g_env = ::testing::AddGlobalTestEnvironment(new CertEnvironment);

inline std::string cert_path(const char* name) { return g_cert_dir + "/" + name; }

inline config::Origin origin(const char* key, uint32_t line) {
  config::Origin o;
  o.file = "gateway.toml";
  o.key = key;
  o.line = line;
  o.column = 15;
  return o;
}

inline config::TlsSettings settings(const char* cert = "server.crt", const char* key = "server.key") {
  config::TlsSettings s;
  config::CertificateFiles& c = s.certificates.emplace_back();
  c.certificate = cert_path(cert);
  c.private_key = cert_path(key);
  c.certificate_origin = origin("listeners[0].tls.certificate", 7);
  c.private_key_origin = origin("listeners[0].tls.private_key", 8);
  return s;
}


}  // namespace tlsgate::tls::tlstest
