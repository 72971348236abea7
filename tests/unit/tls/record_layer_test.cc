// The detached TLS 1.3 record layer (src/tls/record.*, Session::read /
// write / shutdown once Session::detached()) against records no TLS library
// would send, built by a hand-made client (raw_client.hh): the handshake is
// an in-memory OpenSSL client's, every record after it is sealed and opened
// by the test with OpenSSL's EVP AEAD and TLS13-KDF.
//
// Each case feeds crafted bytes to Session::read, opens what the server
// appended to its output, and checks the exact alert (RFC 8446 5, 6), the
// error read returned, Session::violation(), that nothing follows the alert
// and that the session stays dead (write and read fail, nothing appended).
// Every case runs for the three TLS 1.3 cipher suites; the fatal-record
// table also with the bytes trickled in small pieces. The AEAD-limit tests
// move both sides' sequence numbers with Session::advance_sequence_for_test.
#include <gtest/gtest.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "cert_env.hh"
#include "raw_client.hh"
#include "tls_client.hh"
#include "tlsgate/buffer.hh"
#include "tlsgate/config.hh"
#include "tlsgate/tls.hh"

namespace tlsgate::tls {
namespace {
using namespace tlsgate::tls::tlstest;

std::string violation_name(const Session& s) { return to_string(s.violation()); }

// The violation each alert stands for (the floods and peer alerts are named
// by the tests).
const char* violation_for(uint8_t alert) {
  switch (alert) {
    case kBadRecordMac:
      return "bad_record_mac";
    case kDecodeError:
      return "decode_error";
    case kUnexpectedMessage:
      return "unexpected_message";
    case kRecordOverflow:
      return "record_overflow";
    case kIllegalParameter:
      return "illegal_parameter";
    default:
      return "?";
  }
}

// ------------------------------------------------------------ helpers

Bytes pattern(size_t len, uint32_t seed = 7) {
  Bytes v(len);
  uint32_t x = seed;
  for (size_t i = 0; i < len; ++i) {
    x = x * 1103515245u + 12345u;
    v[i] = static_cast<uint8_t>(x >> 16);
  }
  return v;
}

std::string alert_names(const std::vector<uint8_t>& alerts) {
  std::string s;
  for (uint8_t a : alerts) {
    if (!s.empty()) s += " or ";
    s += std::to_string(a) + " (" + alert_name(a) + ")";
  }
  return s;
}

// Concatenated application data of `recs`.
std::string app_data(const std::vector<Received>& recs) {
  std::string s;
  for (const Received& r : recs)
    if (r.is_application_data()) s += as_string(r.content);
  return s;
}

struct Suite {
  const char* name;
  const char* openssl;  // TLS 1.3 suite name
  bool aes_gcm;         // the AEAD limits of RFC 8446 5.5 apply
};

void PrintTo(const Suite& s, std::ostream* os) { *os << s.name; }

const Suite kSuites[] = {
    {"Aes128Gcm", "TLS_AES_128_GCM_SHA256", true},
    {"Aes256Gcm", "TLS_AES_256_GCM_SHA384", true},
    {"Chacha20Poly1305", "TLS_CHACHA20_POLY1305_SHA256", false},
};

// What one feed() did.
struct Step {
  Result<void> result;
  Bytes delivered;  // everything the sink got
  size_t sink_calls = 0;
  std::vector<Received> sent;  // the server's records, opened by the client
};

// Feeding the bytes in one read() call, or trickled in pieces of 1, 2, 5
// and 13 bytes (one read each).
enum class Feed { Whole, Trickle };
const std::vector<size_t> kTrickle = {1, 2, 5, 13};

// ------------------------------------------------------------ fixture

// A server Session (no kTLS: TLS 1.3 detaches) and a RawClient on an
// in-memory OpenSSL client, handshake done, one application record read so
// that the session has detached.
class RecordLayerBase : public ::testing::Test {
 protected:
  void TearDown() override { disconnect(); }

  void disconnect() {
    session_.reset();
    out_.clear();
    raw_.reset();
    client_.reset();
    ctx_.reset();
    EXPECT_EQ(pool_.in_use(), 0u) << "the session kept pool chunks";
  }

  // `warm_up`: read one record first, so that the session detaches.
  void connect(const Suite& suite, config::TlsSettings ts = settings(), bool warm_up = true) {
    disconnect();
    suite_ = suite;
    ctx_ = std::make_unique<Context>(ts);
    session_ = std::make_unique<Session>(*ctx_, pool_);
    client_ = std::make_unique<Client>();
    raw_ = std::make_unique<RawClient>();
    ASSERT_TRUE(raw_->attach(client_->ssl(), suite.openssl)) << raw_->error();
    Outcome o = run_handshake(*session_, *client_, out_);
    ASSERT_EQ(o.server, HandshakeState::Done) << session_->failure();
    ASSERT_EQ(o.client, 1) << client_->last_error();
    ASSERT_TRUE(out_.empty());
    ASSERT_TRUE(raw_->start()) << raw_->error();
    ASSERT_STREQ(session_->cipher(), suite.openssl);
    ASSERT_EQ(raw_->suite(), suite.openssl);
    EXPECT_EQ(raw_->tickets(), ts.session_tickets) << "the client opened the server's tickets";
    if (!warm_up) return;
    // The first read after the handshake is still OpenSSL's (it also checks
    // the client's keys); the session detaches at its end.
    Step s = feed(raw_->app("warm-up"));
    ASSERT_TRUE(s.result.has_value()) << to_string(s.result.error()) << ": " << session_->failure();
    ASSERT_EQ(as_string(s.delivered), "warm-up");
    ASSERT_TRUE(s.sent.empty()) << describe(s.sent);
    ASSERT_TRUE(session_->detached())
        << "the session did not detach: the tlsgate record layer is not under test";
  }

  // Feeds `wire` to Session::read from a scratch buffer overwritten after
  // every call (the session must not keep pointers into it), then opens
  // what the server wrote. Stops at the first failing call.
  Step feed(const Bytes& wire, Feed how = Feed::Whole) {
    Step s;
    auto sink = [&](const uint8_t* p, size_t n) {
      ++s.sink_calls;
      s.delivered.insert(s.delivered.end(), p, p + n);
    };
    Bytes scratch;
    size_t off = 0, i = 0;
    do {
      const size_t n =
          how == Feed::Whole ? wire.size() : std::min(kTrickle[i++ % kTrickle.size()], wire.size() - off);
      scratch.assign(wire.begin() + long(off), wire.begin() + long(off + n));
      off += n;
      s.result = session_->read(scratch, out_, sink);
      std::fill(scratch.begin(), scratch.end(), 0xEE);
    } while (s.result.has_value() && off < wire.size());
    s.sent = raw_->receive(out_);
    return s;
  }

  Step feed_records(const std::vector<Bytes>& records, Feed how = Feed::Whole) {
    Bytes wire;
    for (const Bytes& r : records) wire.insert(wire.end(), r.begin(), r.end());
    return feed(wire, how);
  }

  // The server writes `data`; returns its records as the client opened them.
  std::vector<Received> server_writes(const std::string& data) {
    Result<void> r = session_->write(reinterpret_cast<const uint8_t*>(data.data()), data.size(), out_);
    EXPECT_TRUE(r.has_value()) << "write failed: " << session_->failure();
    return raw_->receive(out_);
  }

  // Moves the session's next send (tx) and receive (rx) sequence numbers,
  // and the client's to match.
  void advance(uint64_t tx, uint64_t rx) {
    ASSERT_TRUE(session_->advance_sequence_for_test(tx, rx)) << "the session is not detached";
    raw_->set_sequences(rx, tx);
  }

  // After a failure: the session refuses to write (appending nothing) and
  // to read (calling no sink, appending nothing).
  void expect_dead(const char* after) {
    const std::string late = "late reply";
    Result<void> w = session_->write(reinterpret_cast<const uint8_t*>(late.data()), late.size(), out_);
    EXPECT_FALSE(w.has_value()) << "write succeeded after " << after;
    EXPECT_TRUE(out_.empty()) << "write after " << after << " appended " << out_.size() << " bytes";
    out_.clear();
    Step again = feed(raw_->app("more data"));
    EXPECT_FALSE(again.result.has_value()) << "a read after " << after << " succeeded";
    EXPECT_EQ(again.sink_calls, 0u) << "a read after " << after << " delivered '"
                                    << as_string(again.delivered) << "'";
    EXPECT_TRUE(again.sent.empty()) << "a read after " << after << " made the server send "
                                    << describe(again.sent);
    Step empty = feed({});
    EXPECT_FALSE(empty.result.has_value()) << "an empty read after " << after << " succeeded";
    EXPECT_EQ(empty.sink_calls, 0u);
    EXPECT_TRUE(empty.sent.empty()) << describe(empty.sent);
  }

  // read failed with Protocol, the server sent exactly one fatal alert (one
  // of `alerts`), protected, and nothing after it; violation() names
  // `violation` (by default the alert's); the session is dead afterwards.
  void expect_fatal(const Step& s, const std::vector<uint8_t>& alerts, const char* violation = nullptr) {
    ASSERT_FALSE(s.result.has_value()) << "read accepted it (delivered " << s.delivered.size()
                                       << " bytes); the server sent " << describe(s.sent);
    EXPECT_EQ(s.result.error(), Error::Protocol) << "read returned " << to_string(s.result.error());
    ASSERT_FALSE(s.sent.empty()) << "no alert sent; expected fatal " << alert_names(alerts);
    uint8_t sent_alert = alerts.front();
    bool match = false;
    for (uint8_t a : alerts) {
      if (s.sent.front().is_alert(kFatal, a)) {
        match = true;
        sent_alert = a;
      }
    }
    EXPECT_TRUE(match) << "expected fatal alert " << alert_names(alerts) << "; the server sent "
                       << describe(s.sent);
    EXPECT_EQ(s.sent.size(), 1u) << "records follow the alert: " << describe(s.sent);
    EXPECT_EQ(raw_->partial(), 0u) << "a partial record after the alert";
    EXPECT_EQ(violation_name(*session_), violation != nullptr ? violation : violation_for(sent_alert));
    expect_dead("a fatal alert");
  }

  Suite suite_{};
  ChunkPool pool_;
  ByteQueue out_{&pool_};
  std::unique_ptr<Context> ctx_;
  std::unique_ptr<Session> session_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<RawClient> raw_;
};

class RecordLayer : public RecordLayerBase, public ::testing::WithParamInterface<Suite> {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(connect(GetParam())); }
  void reconnect() { ASSERT_NO_FATAL_FAILURE(connect(GetParam())); }
};

// ------------------------------------------------------------ fatal records

// A case: the bytes to feed after the warm-up, the alerts the server may
// answer with (one, unless the RFC leaves a choice), the violation (nullptr:
// the alert's) and the data that must reach the sink before the failure.
struct FatalCase {
  std::string name;
  std::function<Bytes(RawClient&)> build;
  std::vector<uint8_t> alerts;
  const char* violation = nullptr;
  std::string delivered;
};

Bytes sealed(RawClient& c, const Bytes& content, uint8_t inner = kApplicationData, size_t padding = 0) {
  return c.record(inner, content, padding);
}

std::vector<FatalCase> fatal_cases() {
  std::vector<FatalCase> v;
  auto add = [&](std::string name, std::function<Bytes(RawClient&)> build, std::vector<uint8_t> alerts,
                 const char* violation = nullptr, std::string delivered = "") {
    v.push_back({std::move(name), std::move(build), std::move(alerts), violation, std::move(delivered)});
  };

  // Protection (RFC 8446 5.2): anything that does not open is bad_record_mac.
  add("BadTag",
      [](RawClient& c) {
        SealSpec s;
        s.content = to_bytes("tampered");
        s.corrupt_tag = true;
        return c.seal(s);
      },
      {kBadRecordMac});
  add(
      "ReplayedRecord",
      [](RawClient& c) {
        const Bytes a = c.app("once");
        return concat({a, a});
      },
      {kBadRecordMac}, nullptr, "once");
  add(
      "ReplayedSequenceNumber",
      [](RawClient& c) {
        const Bytes a = c.app("first");
        SealSpec s;
        s.content = to_bytes("second, same nonce");
        s.seq = c.send_seq() - 1;
        return concat({a, c.seal(s)});
      },
      {kBadRecordMac}, nullptr, "first");
  add("SequenceNumberZeroAgain",
      [](RawClient& c) {
        SealSpec s;
        s.content = to_bytes("seq 0 was the warm-up");
        s.seq = 0;
        return c.seal(s);
      },
      {kBadRecordMac});
  add("SkippedSequenceNumber",
      [](RawClient& c) {
        SealSpec s;
        s.content = to_bytes("one ahead");
        s.seq = c.send_seq() + 1;
        return c.seal(s);
      },
      {kBadRecordMac});
  add("OldKeyAfterKeyUpdate",
      [](RawClient& c) {
        // The KeyUpdate is sent, but the client keeps its key.
        return concat({c.handshake_records(key_update_message(0)), c.app("old key")});
      },
      {kBadRecordMac});
  add("NewKeyWithoutKeyUpdate",
      [](RawClient& c) {
        c.update_send_keys();
        return c.app("new key, never announced");
      },
      {kBadRecordMac});
  add("PlaintextApplicationData",
      [](RawClient&) {
        return plaintext_record(kApplicationData, 0x0303, to_bytes("GET / HTTP/1.1\r\n\r\n"));
      },
      {kBadRecordMac});
  // A ciphertext body of 0..16 bytes cannot hold a tag and a content type.
  for (size_t n = 0; n <= 16; ++n) {
    add("Body" + std::to_string(n) + "Bytes",
        [n](RawClient&) { return plaintext_record(kApplicationData, 0x0303, pattern(n, uint32_t(n))); },
        {kBadRecordMac});
  }
  add("TagOnlyWithValidTag",
      [](RawClient& c) {
        SealSpec s;
        s.inner = Bytes{};  // no content type at all: 16 bytes that authenticate
        return c.seal(s);
      },
      {kBadRecordMac});

  // Sizes (RFC 8446 5.2, 5.4).
  add("CiphertextOverLimitUnsealed",
      [](RawClient&) { return plaintext_record(kApplicationData, 0x0303, pattern(kMaxCiphertext + 1)); },
      {kRecordOverflow});
  add("CiphertextOverLimitSealed",
      [](RawClient& c) {
        return c.app(pattern(kMaxCiphertext + 1 - kTag - 1));  // body 2^14 + 257
      },
      {kRecordOverflow});
  add("CiphertextLength65535",
      [](RawClient&) { return plaintext_record(kApplicationData, 0x0303, pattern(65535)); },
      {kRecordOverflow});
  add("PlaintextOneOverLimit",
      [](RawClient& c) {
        return c.app(pattern(kMaxPlaintext + 1));  // inner 2^14 + 2 bytes, body within 2^14 + 256
      },
      {kRecordOverflow});
  add("Plaintext16592", [](RawClient& c) { return c.app(pattern(16592)); }, {kRecordOverflow});
  add("PlaintextOverLimitByPadding",
      [](RawClient& c) {
        return c.app(pattern(100), kMaxPlaintext + 2 - 101);  // inner 2^14 + 2 bytes
      },
      {kRecordOverflow});
  add(
      "PlaintextOverLimitAfterData",
      [](RawClient& c) {
        return concat({c.app("fine"), c.app(pattern(16592))});
      },
      {kRecordOverflow}, nullptr, "fine");

  // Inner content types (RFC 8446 5.2, 5.4).
  add("AllPadding",
      [](RawClient& c) {
        SealSpec s;
        s.inner = Bytes(10, 0);
        return c.seal(s);
      },
      {kUnexpectedMessage});
  add("AllPaddingOneByte",
      [](RawClient& c) {
        SealSpec s;
        s.inner = Bytes{0};
        return c.seal(s);
      },
      {kUnexpectedMessage});
  add("InnerTypeUnknown", [](RawClient& c) { return sealed(c, to_bytes("x"), 99); }, {kUnexpectedMessage});
  add("InnerType255", [](RawClient& c) { return sealed(c, {1}, 255); }, {kUnexpectedMessage});
  add("InnerChangeCipherSpec", [](RawClient& c) { return sealed(c, {1}, kChangeCipherSpec); },
      {kUnexpectedMessage});
  add("InnerHeartbeat", [](RawClient& c) { return sealed(c, {1, 0, 0}, 24); }, {kUnexpectedMessage});

  // Records that are not protected application data (RFC 8446 5).
  add("PlaintextChangeCipherSpec",
      [](RawClient&) { return plaintext_record(kChangeCipherSpec, 0x0303, {1}); }, {kUnexpectedMessage});
  add("PlaintextHandshake",
      [](RawClient&) { return plaintext_record(kHandshake, 0x0303, key_update_message(0)); },
      {kUnexpectedMessage});
  add("PlaintextAlert",
      [](RawClient&) {
        return plaintext_record(kAlert, 0x0303, {kFatal, kHandshakeFailure});
      },
      {kUnexpectedMessage});
  add("PlaintextCloseNotify",
      [](RawClient&) {
        return plaintext_record(kAlert, 0x0303, {kWarning, kCloseNotify});
      },
      {kUnexpectedMessage});
  add("ProtectedBodyWithOuterTypeHandshake",
      [](RawClient& c) {
        SealSpec s;
        s.outer_type = kHandshake;
        s.inner_type = kHandshake;
        s.content = key_update_message(0);
        return c.seal(s);
      },
      {kUnexpectedMessage});
  add("OuterTypeHeartbeat",
      [](RawClient& c) {
        SealSpec s;
        s.outer_type = 24;
        s.content = to_bytes("x");
        return c.seal(s);
      },
      {kUnexpectedMessage});
  add("OuterTypeUnknown",
      [](RawClient& c) {
        SealSpec s;
        s.outer_type = 99;
        s.content = to_bytes("x");
        return c.seal(s);
      },
      {kUnexpectedMessage});

  // Post-handshake messages other than KeyUpdate (RFC 8446 4.6: a server
  // accepts none; it sent no CertificateRequest).
  struct Msg {
    const char* name;
    uint8_t type;
    Bytes body;
  };
  const Msg msgs[] = {
      {"Finished", kFinished, Bytes(32, 0xab)},
      {"NewSessionTicketFromClient", kNewSessionTicket, {0, 0, 0, 60, 0, 0, 0, 1, 0, 0, 1, 7, 0, 0}},
      {"CertificateRequest", kCertificateRequest, {0, 0, 0}},
      {"ClientHello", kClientHello, pattern(60)},
      {"ServerHello", 2, pattern(40)},
      {"EndOfEarlyData", 5, {}},
      {"EncryptedExtensions", 8, {0, 0}},
      {"Certificate", 11, {0, 0, 0, 0}},
      {"CertificateVerify", 15, {4, 3, 0, 0}},
      {"MessageHash", 254, Bytes(32, 1)},
      {"UnknownHandshakeType", 99, {1, 2, 3}},
  };
  for (const Msg& m : msgs) {
    add(std::string("PostHandshake") + m.name,
        [m](RawClient& c) { return c.handshake_records(handshake_message(m.type, m.body)); },
        {kUnexpectedMessage});
  }
  add("UnknownHandshakeTypeHugeLength",
      [](RawClient& c) {
        return sealed(c, {99, 0xff, 0xff, 0xff}, kHandshake);
      },
      {kUnexpectedMessage});

  // KeyUpdate (RFC 8446 4.6.3): length must be 1, request 0 or 1, and the
  // key changes at the record boundary, so nothing may follow it there.
  add("KeyUpdateLength0",
      [](RawClient& c) {
        return sealed(c, {kKeyUpdate, 0, 0, 0}, kHandshake);
      },
      {kDecodeError});
  add("KeyUpdateLength2",
      [](RawClient& c) {
        return sealed(c, {kKeyUpdate, 0, 0, 2, 0, 0}, kHandshake);
      },
      {kDecodeError});
  add("KeyUpdateLength65536",
      [](RawClient& c) {
        return sealed(c, {kKeyUpdate, 1, 0, 0}, kHandshake);
      },
      {kDecodeError});
  add("KeyUpdateLength2Fragmented",
      [](RawClient& c) {
        return c.handshake_records({kKeyUpdate, 0, 0, 2, 0, 0}, {2});
      },
      {kDecodeError});
  add("KeyUpdateRequest2", [](RawClient& c) { return c.handshake_records(key_update_message(2)); },
      {kIllegalParameter});
  add("KeyUpdateRequest255", [](RawClient& c) { return c.handshake_records(key_update_message(255)); },
      {kIllegalParameter});
  add("KeyUpdateRequest2Fragmented",
      [](RawClient& c) { return c.handshake_records(key_update_message(2), {4}); }, {kIllegalParameter});
  add("KeyUpdateThenOneByte",
      [](RawClient& c) {
        return sealed(c, concat({key_update_message(0), {kApplicationData}}), kHandshake);
      },
      {kUnexpectedMessage});
  add("KeyUpdateThenKeyUpdate",
      [](RawClient& c) {
        return sealed(c, concat({key_update_message(0), key_update_message(0)}), kHandshake);
      },
      {kUnexpectedMessage});
  add("RequestedKeyUpdateThenBytes",
      [](RawClient& c) {
        return sealed(c, concat({key_update_message(1), to_bytes("GET")}), kHandshake);
      },
      {kUnexpectedMessage});
  add("FragmentedKeyUpdateThenByte",
      [](RawClient& c) {
        return concat({sealed(c, {kKeyUpdate, 0, 0}, kHandshake), sealed(c, {1, 0, kKeyUpdate}, kHandshake)});
      },
      {kUnexpectedMessage});
  // RFC 8446 5.1: no other record between the fragments of a message.
  add("KeyUpdateSplitAroundData",
      [](RawClient& c) {
        return concat({sealed(c, {kKeyUpdate, 0, 0}, kHandshake), c.app("x"), sealed(c, {1, 0}, kHandshake)});
      },
      {kUnexpectedMessage});
  add("KeyUpdateSplitAroundEmptyData",
      [](RawClient& c) {
        return concat({sealed(c, {kKeyUpdate, 0, 0}, kHandshake), c.app(""), sealed(c, {1, 0}, kHandshake)});
      },
      {kUnexpectedMessage});
  add("KeyUpdateSplitAroundAlert",
      [](RawClient& c) {
        return concat({sealed(c, {kKeyUpdate, 0}, kHandshake), c.alert(kWarning, kCloseNotify),
                       sealed(c, {0, 1, 0}, kHandshake)});
      },
      {kUnexpectedMessage});
  add("EmptyHandshakeRecord", [](RawClient& c) { return sealed(c, {}, kHandshake); },
      {kUnexpectedMessage, kDecodeError});
  add("EmptyHandshakeRecordInsideKeyUpdate",
      [](RawClient& c) {
        return concat({sealed(c, {kKeyUpdate, 0}, kHandshake), sealed(c, {}, kHandshake),
                       sealed(c, {0, 1, 0}, kHandshake)});
      },
      {kUnexpectedMessage, kDecodeError});

  // Alerts (RFC 8446 6): exactly two bytes, one per record.
  add("EmptyAlertRecord", [](RawClient& c) { return sealed(c, {}, kAlert); },
      {kUnexpectedMessage, kDecodeError});
  add("AlertOneByte", [](RawClient& c) { return sealed(c, {kFatal}, kAlert); }, {kDecodeError});
  add("AlertThreeBytes",
      [](RawClient& c) {
        return sealed(c, {kFatal, kHandshakeFailure, 0}, kAlert);
      },
      {kDecodeError});
  add("TwoAlertsInOneRecord",
      [](RawClient& c) {
        return sealed(c, {kWarning, kCloseNotify, kWarning, kCloseNotify}, kAlert);
      },
      {kDecodeError});

  // Empty application data records: at most 32 in a row.
  add(
      "EmptyRecordFlood",
      [](RawClient& c) {
        Bytes w;
        for (int i = 0; i < 33; ++i) w = concat({w, c.app("")});
        return w;
      },
      {kUnexpectedMessage}, "empty_record_flood");
  add(
      "EmptyPaddedRecordFlood",
      [](RawClient& c) {
        Bytes w;
        for (int i = 0; i < 33; ++i) w = concat({w, c.app("", 5)});
        return w;
      },
      {kUnexpectedMessage}, "empty_record_flood");
  add(
      "EmptyRecordFloodAfterData",
      [](RawClient& c) {
        Bytes w = c.app("a");
        for (int i = 0; i < 33; ++i) w = concat({w, c.app("")});
        return w;
      },
      {kUnexpectedMessage}, "empty_record_flood", "a");
  return v;
}

struct FatalParam {
  Suite suite;
  FatalCase c;
  Feed feed;
};

void PrintTo(const FatalParam& p, std::ostream* os) { *os << p.suite.name << "_" << p.c.name; }

class FatalRecord : public RecordLayerBase, public ::testing::WithParamInterface<FatalParam> {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(connect(GetParam().suite)); }
};

TEST_P(FatalRecord, SendsTheAlertAndStaysDead) {
  const FatalParam& p = GetParam();
  const Bytes wire = p.c.build(*raw_);
  ASSERT_TRUE(raw_->error().empty()) << raw_->error();
  Step s = feed(wire, p.feed);
  EXPECT_EQ(as_string(s.delivered), p.c.delivered) << "plaintext of a refused record reached the sink";
  expect_fatal(s, p.c.alerts, p.c.violation);
}

std::vector<FatalParam> fatal_params() {
  std::vector<FatalParam> v;
  for (const FatalCase& c : fatal_cases())
    for (const Suite& s : kSuites)
      for (Feed f : {Feed::Whole, Feed::Trickle}) v.push_back({s, c, f});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Cases, FatalRecord, ::testing::ValuesIn(fatal_params()),
                         [](const ::testing::TestParamInfo<FatalParam>& i) {
                           return std::string(i.param.suite.name) + "_" + i.param.c.name +
                                  (i.param.feed == Feed::Trickle ? "_Trickled" : "");
                         });

// ------------------------------------------------------------ accepted records

TEST_P(RecordLayer, RawClientAndServerAgree) {
  Step s = feed(concat({raw_->app("plain"), raw_->app("padded", 100), raw_->app(""), raw_->app("end")}));
  ASSERT_TRUE(s.result.has_value()) << session_->failure();
  EXPECT_EQ(as_string(s.delivered), "plainpaddedend");
  EXPECT_TRUE(s.sent.empty()) << describe(s.sent);
  // Two full records and a short one from the server, in order.
  const std::string big = as_string(pattern(2 * kMaxPlaintext + 100, 3));
  std::vector<Received> recs = server_writes(big);
  ASSERT_GE(recs.size(), 3u) << describe(recs);
  EXPECT_TRUE(app_data(recs) == big) << describe(recs);
  for (const Received& r : recs) EXPECT_EQ(r.generation, 0u) << describe(r);
}

TEST_P(RecordLayer, RecordsAtTheSizeLimitsAreAccepted) {
  const Bytes full = pattern(kMaxPlaintext, 11);
  const Bytes small = pattern(100, 12);
  for (Feed how : {Feed::Whole, Feed::Trickle}) {
    SCOPED_TRACE(how == Feed::Whole ? "whole" : "trickled");
    // 2^14 bytes of content; an inner plaintext of 2^14 + 1 bytes made of
    // padding mostly (RFC 8446 5.4 counts the padding in). No valid record
    // reaches the ciphertext limit of 2^14 + 256 with a 16-byte tag.
    Step s = feed(concat({raw_->app(full), raw_->app(small, kMaxPlaintext - small.size())}), how);
    ASSERT_TRUE(s.result.has_value()) << session_->failure() << "; sent " << describe(s.sent);
    EXPECT_TRUE(s.delivered == concat({full, small})) << s.delivered.size() << " bytes delivered";
    EXPECT_TRUE(s.sent.empty()) << describe(s.sent);
  }
}

TEST_P(RecordLayer, ThirtyTwoEmptyRecordsThenDataAreFine) {
  Bytes wire;
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 32; ++i) wire = concat({wire, raw_->app("", size_t(i % 3))});
    wire = concat({wire, raw_->app(std::string(1, char('x' + round)))});
  }
  Step s = feed(wire);
  ASSERT_TRUE(s.result.has_value()) << session_->failure() << "; sent " << describe(s.sent);
  EXPECT_EQ(as_string(s.delivered), "xyz");
  EXPECT_TRUE(s.sent.empty()) << describe(s.sent);
  // Across reads, too.
  wire.clear();
  for (int i = 0; i < 32; ++i) wire = concat({wire, raw_->app("")});
  Step t = feed(wire, Feed::Trickle);
  ASSERT_TRUE(t.result.has_value()) << session_->failure();
  Step u = feed(raw_->app("!"));
  ASSERT_TRUE(u.result.has_value()) << session_->failure() << "; sent " << describe(u.sent);
  EXPECT_EQ(as_string(u.delivered), "!");
}

// RFC 8446 5.1: legacy_record_version "MUST be ignored for all purposes" (it
// is authenticated as part of the header, though). OpenSSL answers a TLS 1.3
// record that is not 0x0303 with decode_error. Either is fine: accepted, or
// refused with a fatal alert.
TEST_P(RecordLayer, LegacyRecordVersionIsIgnoredOrRefusedWithAnAlert) {
  for (uint16_t version : {uint16_t(0x0301), uint16_t(0x0304), uint16_t(0x0000), uint16_t(0xfefd)}) {
    ASSERT_NO_FATAL_FAILURE(reconnect());
    SCOPED_TRACE("legacy_record_version " + std::to_string(version));
    SealSpec spec;
    spec.version = version;
    spec.content = to_bytes("odd version");
    Step s = feed(raw_->seal(spec));
    if (s.result.has_value()) {
      EXPECT_EQ(as_string(s.delivered), "odd version");
      EXPECT_TRUE(s.sent.empty()) << describe(s.sent);
    } else {
      EXPECT_TRUE(s.delivered.empty());
      expect_fatal(s, {kDecodeError, kProtocolVersion, kUnexpectedMessage, kBadRecordMac},
                   violation_name(*session_).c_str());
    }
  }
}

// KeyUpdates that OpenSSL handles before the session detaches (in the
// first read after the handshake) change both traffic secrets: a session
// that detaches then must protect with the updated keys (or stay with
// OpenSSL).
TEST_P(RecordLayer, KeyUpdatesBeforeTheDetachKeepTheConnectionWorking) {
  for (bool requested : {false, true}) {
    ASSERT_NO_FATAL_FAILURE(connect(GetParam(), settings(), /*warm_up=*/false));
    SCOPED_TRACE(requested ? "update_requested" : "update_not_requested");
    Step s = feed(concat({raw_->app("first"), raw_->key_update(requested), raw_->app("second")}));
    ASSERT_TRUE(s.result.has_value()) << session_->failure() << "; sent " << describe(s.sent);
    EXPECT_EQ(as_string(s.delivered), "firstsecond");
    for (const Received& r : s.sent) EXPECT_TRUE(r.is_key_update(0)) << describe(s.sent);
    const bool detached = session_->detached();
    Step t = feed(raw_->app("third"));
    ASSERT_TRUE(t.result.has_value()) << (detached ? "detached after the KeyUpdate: " : "")
                                      << session_->failure() << "; sent " << describe(t.sent);
    EXPECT_EQ(as_string(t.delivered), "third");
    std::vector<Received> reply = server_writes("reply");
    EXPECT_EQ(app_data(reply), "reply")
        << (detached ? "detached after the KeyUpdate: " : "") << describe(reply);
  }
}

// A KeyUpdate fragmented across records (RFC 8446 5.1), the first
// fragments read by OpenSSL before the session could detach: their bytes
// wait in OpenSSL's buffer, so the session must not leave OpenSSL while the
// message is incomplete (it did, and the last fragment was refused with
// unexpected_message; found by the tls_session fuzz target).
TEST_P(RecordLayer, KeyUpdateFragmentedAcrossTheDetachPointKeepsTheConnectionWorking) {
  for (uint8_t requested : {0, 1}) {
    ASSERT_NO_FATAL_FAILURE(connect(GetParam(), settings(), /*warm_up=*/false));
    SCOPED_TRACE(requested ? "update_requested" : "update_not_requested");
    const Bytes head =
        concat({raw_->app("first"), raw_->record(kHandshake, {kKeyUpdate}), raw_->record(kHandshake, {0})});
    const Bytes tail = raw_->record(kHandshake, {0, 1, requested});
    raw_->update_send_keys();
    const Bytes after = raw_->app("second");
    Step s = feed(head);
    ASSERT_TRUE(s.result.has_value()) << session_->failure() << "; sent " << describe(s.sent);
    EXPECT_EQ(as_string(s.delivered), "first");
    Step t = feed(concat({tail, after}));
    ASSERT_TRUE(t.result.has_value()) << (session_->detached() ? "detached mid-KeyUpdate: " : "")
                                      << session_->failure() << "; sent " << describe(t.sent);
    EXPECT_EQ(as_string(t.delivered), "second");
    for (const Received& r : t.sent) EXPECT_TRUE(r.is_key_update(0)) << describe(t.sent);
    std::vector<Received> reply = server_writes("reply");
    EXPECT_EQ(app_data(reply), "reply") << describe(reply);
  }
}

// ------------------------------------------------------------ alerts from the client

TEST_P(RecordLayer, CloseNotifyIsClosedAndShutdownAnswersWithCloseNotify) {
  for (Feed how : {Feed::Whole, Feed::Trickle}) {
    ASSERT_NO_FATAL_FAILURE(reconnect());
    Step s = feed(concat({raw_->app("last words"), raw_->alert(kWarning, kCloseNotify)}), how);
    ASSERT_FALSE(s.result.has_value()) << "close_notify was not noticed";
    EXPECT_EQ(s.result.error(), Error::Closed) << to_string(s.result.error());
    EXPECT_EQ(as_string(s.delivered), "last words");
    EXPECT_TRUE(s.sent.empty()) << "the server answered close_notify on its own: " << describe(s.sent);
    session_->shutdown(out_);
    std::vector<Received> bye = raw_->receive(out_);
    ASSERT_EQ(bye.size(), 1u) << describe(bye);
    EXPECT_TRUE(bye[0].is_alert(kWarning, kCloseNotify)) << describe(bye);
    EXPECT_EQ(bye[0].outer_type, kApplicationData) << "close_notify not protected";
  }
}

// RFC 8446 6.1: "Any data received after a closure alert has been received
// MUST be ignored."
TEST_P(RecordLayer, DataAfterCloseNotifyIsIgnored) {
  Step s = feed(concat({raw_->alert(kWarning, kCloseNotify), raw_->app("ignored")}));
  ASSERT_FALSE(s.result.has_value());
  EXPECT_EQ(s.result.error(), Error::Closed) << to_string(s.result.error());
  EXPECT_EQ(s.sink_calls, 0u) << "delivered '" << as_string(s.delivered) << "' after close_notify";
  EXPECT_TRUE(s.sent.empty()) << describe(s.sent);
  Step later = feed(raw_->app("still ignored"));
  EXPECT_FALSE(later.result.has_value()) << "a read after close_notify succeeded";
  EXPECT_EQ(later.sink_calls, 0u) << "delivered '" << as_string(later.delivered) << "' after close_notify";
  EXPECT_TRUE(later.sent.empty()) << describe(later.sent);
}

// RFC 8446 6: error alerts end the connection whatever their level; unknown
// ones are error alerts. The server answers nothing.
TEST_P(RecordLayer, ErrorAlertFromTheClientEndsTheConnectionSilently) {
  const std::pair<uint8_t, uint8_t> alerts[] = {{kFatal, kHandshakeFailure},
                                                {kFatal, 80},
                                                {kWarning, kHandshakeFailure},
                                                {kFatal, 255},
                                                {kWarning, 200}};
  for (auto [level, description] : alerts) {
    ASSERT_NO_FATAL_FAILURE(reconnect());
    SCOPED_TRACE("alert level " + std::to_string(level) + " description " + std::to_string(description));
    Step s = feed(concat({raw_->app("before"), raw_->alert(level, description), raw_->app("after")}));
    ASSERT_FALSE(s.result.has_value()) << "the alert was not noticed";
    EXPECT_EQ(s.result.error(), Error::Protocol) << to_string(s.result.error());
    EXPECT_EQ(as_string(s.delivered), "before");
    EXPECT_TRUE(s.sent.empty()) << "the server answered a peer's alert: " << describe(s.sent);
    EXPECT_EQ(violation_name(*session_), "peer_alert");
    expect_dead("an alert from the client");
  }
}

// ------------------------------------------------------------ KeyUpdate

// Fragments of 1..4 bytes in 2..5 records, whole or trickled.
TEST_P(RecordLayer, FragmentedKeyUpdateIsAccepted) {
  const std::vector<std::vector<size_t>> splits = {{1},    {2},    {3},       {4},         {1, 1},
                                                   {2, 2}, {1, 3}, {1, 1, 1}, {1, 1, 1, 1}};
  int n = 0;
  for (const std::vector<size_t>& split : splits) {
    for (Feed how : {Feed::Whole, Feed::Trickle}) {
      const bool requested = (n++ % 2) == 1;
      ASSERT_NO_FATAL_FAILURE(reconnect());
      SCOPED_TRACE(std::to_string(split.size() + 1) + " records, first fragment " + std::to_string(split[0]) +
                   (requested ? ", update_requested" : "") + (how == Feed::Trickle ? ", trickled" : ""));
      Step s = feed(concat({raw_->key_update(requested, split), raw_->app("under the new key")}), how);
      ASSERT_TRUE(s.result.has_value()) << session_->failure() << "; sent " << describe(s.sent);
      EXPECT_EQ(as_string(s.delivered), "under the new key");
      if (requested) {
        ASSERT_EQ(s.sent.size(), 1u) << describe(s.sent);
        EXPECT_TRUE(s.sent[0].is_key_update(0)) << describe(s.sent);
      } else {
        EXPECT_TRUE(s.sent.empty()) << describe(s.sent);
      }
      std::vector<Received> reply = server_writes("reply");
      EXPECT_EQ(app_data(reply), "reply") << describe(reply);
      ASSERT_FALSE(reply.empty());
      EXPECT_EQ(reply.back().generation, requested ? 1u : 0u) << describe(reply);
    }
  }
}

TEST_P(RecordLayer, KeyUpdateNotRequestedChangesOnlyTheClientsKey) {
  Step s =
      feed(concat({raw_->key_update(false), raw_->app("one"), raw_->key_update(false), raw_->app("two")}));
  ASSERT_TRUE(s.result.has_value()) << session_->failure() << "; sent " << describe(s.sent);
  EXPECT_EQ(as_string(s.delivered), "onetwo");
  EXPECT_TRUE(s.sent.empty()) << "the server answered update_not_requested: " << describe(s.sent);
  std::vector<Received> reply = server_writes("reply");
  EXPECT_EQ(app_data(reply), "reply") << describe(reply);
  for (const Received& r : reply) EXPECT_EQ(r.generation, 0u) << describe(r);
}

// RFC 8446 4.6.3: the receiver of update_requested sends its own KeyUpdate
// (update_not_requested) before its next application data, and protects its
// later records under its next secret.
TEST_P(RecordLayer, KeyUpdateRequestedIsAnsweredFirstThenTheNewKey) {
  Step s = feed(concat({raw_->key_update(true), raw_->app("after")}));
  ASSERT_TRUE(s.result.has_value()) << session_->failure() << "; sent " << describe(s.sent);
  EXPECT_EQ(as_string(s.delivered), "after");
  ASSERT_EQ(s.sent.size(), 1u) << describe(s.sent);
  EXPECT_TRUE(s.sent[0].is_key_update(0)) << describe(s.sent);
  EXPECT_EQ(s.sent[0].generation, 0u);
  std::vector<Received> reply = server_writes("reply under the server's next key");
  ASSERT_EQ(reply.size(), 1u) << describe(reply);
  EXPECT_TRUE(reply[0].is_application_data()) << describe(reply);
  EXPECT_EQ(reply[0].generation, 1u);
  EXPECT_EQ(reply[0].seq, 0u);
  // Both sides again.
  Step t = feed(concat({raw_->key_update(true), raw_->app("again")}));
  ASSERT_TRUE(t.result.has_value()) << session_->failure();
  ASSERT_EQ(t.sent.size(), 1u) << describe(t.sent);
  EXPECT_TRUE(t.sent[0].is_key_update(0));
  reply = server_writes("generation 2");
  ASSERT_EQ(reply.size(), 1u) << describe(reply);
  EXPECT_EQ(reply[0].generation, 2u);
}

// "...an implementation which receives multiple KeyUpdates while it is
// silent to respond with a single update" (RFC 8446 4.6.3).
TEST_P(RecordLayer, RequestedKeyUpdatesInOneReadAreAnsweredOnce) {
  Step s = feed(concat({raw_->key_update(true), raw_->app("a"), raw_->key_update(true), raw_->app("b"),
                        raw_->key_update(true), raw_->app("c")}));
  ASSERT_TRUE(s.result.has_value()) << session_->failure() << "; sent " << describe(s.sent);
  EXPECT_EQ(as_string(s.delivered), "abc");
  ASSERT_EQ(s.sent.size(), 1u) << "expected one KeyUpdate; the server sent " << describe(s.sent);
  EXPECT_TRUE(s.sent[0].is_key_update(0)) << describe(s.sent);
  std::vector<Received> reply = server_writes("reply");
  ASSERT_EQ(reply.size(), 1u) << describe(reply);
  EXPECT_EQ(reply[0].generation, 1u) << describe(reply);
}

TEST_P(RecordLayer, ThreeKeyUpdatesSpacedByDataAreFine) {
  for (Feed how : {Feed::Whole, Feed::Trickle}) {
    ASSERT_NO_FATAL_FAILURE(reconnect());
    Step s = feed(concat({raw_->app("1"), raw_->key_update(false), raw_->app("2"), raw_->key_update(true),
                          raw_->app("3"), raw_->key_update(false), raw_->app("4")}),
                  how);
    ASSERT_TRUE(s.result.has_value()) << session_->failure() << "; sent " << describe(s.sent);
    EXPECT_EQ(as_string(s.delivered), "1234");
    ASSERT_EQ(s.sent.size(), 1u) << describe(s.sent);
    EXPECT_TRUE(s.sent[0].is_key_update(0));
    std::vector<Received> reply = server_writes("ok");
    EXPECT_EQ(app_data(reply), "ok") << describe(reply);
  }
}

TEST_P(RecordLayer, EightKeyUpdatesInOneSecondAreFine) {
  Bytes wire;
  for (int i = 0; i < 8; ++i) wire = concat({wire, raw_->key_update(false)});
  wire = concat({wire, raw_->app("still here")});
  Step s = feed(wire);
  ASSERT_TRUE(s.result.has_value()) << session_->failure() << "; sent " << describe(s.sent);
  EXPECT_EQ(as_string(s.delivered), "still here");
  EXPECT_TRUE(s.sent.empty()) << describe(s.sent);
}

// More than 8 KeyUpdates within a second: the server closes with
// close_notify (not a fatal alert) and names the flood.
TEST_P(RecordLayer, KeyUpdateFloodClosesWithCloseNotify) {
  for (Feed how : {Feed::Whole, Feed::Trickle}) {
    for (bool requested : {false, true}) {
      ASSERT_NO_FATAL_FAILURE(reconnect());
      SCOPED_TRACE(std::string(requested ? "update_requested" : "update_not_requested") +
                   (how == Feed::Trickle ? ", trickled" : ""));
      Bytes wire = raw_->app("before");
      for (int i = 0; i < 9; ++i) wire = concat({wire, raw_->key_update(requested)});
      wire = concat({wire, raw_->app("after the flood")});
      Step s = feed(wire, how);
      ASSERT_FALSE(s.result.has_value()) << "nine KeyUpdates accepted; the server sent " << describe(s.sent);
      EXPECT_EQ(s.result.error(), Error::Protocol) << to_string(s.result.error());
      EXPECT_EQ(as_string(s.delivered), "before");
      ASSERT_FALSE(s.sent.empty()) << "no close_notify";
      // update_requested: answering KeyUpdates may come first (one per
      // read() call at most).
      size_t i = 0;
      while (requested && i < s.sent.size() && s.sent[i].is_key_update(0)) ++i;
      if (how == Feed::Whole) {
        EXPECT_LE(i, 1u) << describe(s.sent);
      }
      ASSERT_EQ(s.sent.size(), i + 1) << describe(s.sent);
      EXPECT_TRUE(s.sent[i].is_alert(kWarning, kCloseNotify)) << describe(s.sent);
      EXPECT_EQ(violation_name(*session_), "key_update_flood");
      expect_dead("a KeyUpdate flood");
    }
  }
}

// ------------------------------------------------------------ sequence limits

constexpr uint64_t k2To24 = uint64_t(1) << 24;
constexpr uint64_t kAeadLimit = 23726566;  // 2^24.5, RFC 8446 5.5

uint64_t last_seq_under_first_key(const std::vector<Received>& recs) {
  uint64_t last = 0;
  for (const Received& r : recs)
    if (r.opened && r.generation == 0) last = std::max(last, r.seq);
  return last;
}

// The server changes its key (KeyUpdate update_not_requested) before its
// record 2^24 under one AES-GCM key.
TEST_P(RecordLayer, SendsKeyUpdateBeforeItsRecord2To24) {
  ASSERT_NO_FATAL_FAILURE(advance(k2To24 - 3, raw_->send_seq()));
  std::string all;
  std::vector<Received> recs;
  for (int i = 0; i < 6; ++i) {
    const std::string m = "m" + std::to_string(i);
    all += m;
    for (Received& r : server_writes(m)) recs.push_back(std::move(r));
  }
  EXPECT_EQ(app_data(recs), all) << describe(recs);
  for (const Received& r : recs) ASSERT_TRUE(r.opened) << describe(recs);
  if (GetParam().aes_gcm) {
    EXPECT_LT(last_seq_under_first_key(recs), k2To24)
        << "record 2^24 under the first key: " << describe(recs);
  }
  if (GetParam().aes_gcm) {
    const auto ku =
        std::find_if(recs.begin(), recs.end(), [](const Received& r) { return r.is_key_update(0); });
    ASSERT_NE(ku, recs.end()) << "no KeyUpdate(update_not_requested): " << describe(recs);
    EXPECT_EQ(ku->generation, 0u);
    EXPECT_EQ(recs.back().generation, 1u) << describe(recs);
    EXPECT_EQ(std::count_if(recs.begin(), recs.end(), [](const Received& r) { return r.is_key_update(0); }),
              1)
        << describe(recs);
  }
  // The client is not asked for anything and may go on.
  Step s = feed(raw_->app("fine"));
  ASSERT_TRUE(s.result.has_value()) << session_->failure();
  EXPECT_EQ(as_string(s.delivered), "fine");
}

// The same limit inside one write() call of many records.
TEST_P(RecordLayer, OneLargeWriteDoesNotCrossRecord2To24UnderOneKey) {
  ASSERT_NO_FATAL_FAILURE(advance(k2To24 - 2, raw_->send_seq()));
  const std::string big = as_string(pattern(6 * kMaxPlaintext, 5));
  std::vector<Received> recs = server_writes(big);
  EXPECT_TRUE(app_data(recs) == big) << describe(recs);
  for (const Received& r : recs) ASSERT_TRUE(r.opened) << describe(recs);
  if (GetParam().aes_gcm) {
    EXPECT_LT(last_seq_under_first_key(recs), k2To24)
        << "record 2^24 under the first key: " << describe(recs);
  }
}

// RFC 8446 5.3: a sequence number must not wrap; rekey or close first.
TEST_P(RecordLayer, SendSequenceNumberNeverWraps) {
  ASSERT_NO_FATAL_FAILURE(advance(~uint64_t{0} - 3, raw_->send_seq()));
  std::string all;
  std::vector<Received> recs;
  for (int i = 0; i < 5; ++i) {
    const std::string m = "w" + std::to_string(i);
    Result<void> r = session_->write(reinterpret_cast<const uint8_t*>(m.data()), m.size(), out_);
    if (!r.has_value()) break;  // closing instead of wrapping is allowed
    all += m;
    for (Received& x : raw_->receive(out_)) recs.push_back(std::move(x));
  }
  for (Received& x : raw_->receive(out_)) recs.push_back(std::move(x));
  EXPECT_EQ(app_data(recs), all) << describe(recs);
  for (const Received& r : recs) {
    EXPECT_TRUE(r.opened) << describe(recs);
    if (r.generation == 0) {
      EXPECT_GE(r.seq, ~uint64_t{0} - 3) << "the sequence number wrapped: " << describe(recs);
    }
  }
}

TEST_P(RecordLayer, ReceiveSequenceNumberNeverWraps) {
  ASSERT_NO_FATAL_FAILURE(advance(raw_->recv_seq(), ~uint64_t{0} - 2));
  std::string delivered;
  std::vector<Received> sent;
  Result<void> last;
  for (int i = 0; i < 4 && last.has_value(); ++i) {  // 2^64 - 3, - 2, - 1, then 0 again (wrapped)
    Step s = feed(raw_->app("w" + std::to_string(i)));
    last = s.result;
    delivered += as_string(s.delivered);
    for (Received& r : s.sent) sent.push_back(std::move(r));
  }
  ASSERT_FALSE(last.has_value()) << "a wrapped sequence number was accepted; delivered '" << delivered << "'";
  EXPECT_EQ(delivered.find("w3"), std::string::npos) << "delivered '" << delivered << "'";
  ASSERT_FALSE(sent.empty()) << "no close_notify";
  EXPECT_TRUE(sent.back().is_alert(kWarning, kCloseNotify)) << describe(sent);
  EXPECT_EQ(violation_name(*session_), "aead_limit");
}

// When the client's records under one key reach 2^24 the server asks for an
// update (KeyUpdate update_requested); the client's update ends it.
TEST_P(RecordLayer, AsksTheClientForAnUpdateAtRecord2To24) {
  ASSERT_NO_FATAL_FAILURE(advance(raw_->recv_seq(), k2To24 - 2));
  std::string all;
  std::vector<Received> sent;
  for (int i = 0; i < 3; ++i) {  // records 2^24 - 2, 2^24 - 1, 2^24
    const std::string m = "r" + std::to_string(i);
    all += m;
    Step s = feed(raw_->app(m));
    ASSERT_TRUE(s.result.has_value())
        << "record " << i << ": " << session_->failure() << "; sent " << describe(s.sent);
    EXPECT_EQ(as_string(s.delivered), m);
    for (Received& r : s.sent) sent.push_back(std::move(r));
  }
  if (GetParam().aes_gcm) {
    ASSERT_EQ(sent.size(), 1u) << "expected one KeyUpdate(update_requested): " << describe(sent);
    EXPECT_TRUE(sent[0].is_key_update(1)) << describe(sent);
  } else {
    for (const Received& r : sent) EXPECT_TRUE(r.is_key_update(1)) << describe(sent);
  }
  const unsigned server_gen = raw_->recv_generation();
  // The client answers (update_not_requested) and goes on under its new key.
  Step s = feed(concat({raw_->key_update(false), raw_->app("fresh key")}));
  ASSERT_TRUE(s.result.has_value()) << session_->failure() << "; sent " << describe(s.sent);
  EXPECT_EQ(as_string(s.delivered), "fresh key");
  EXPECT_TRUE(s.sent.empty()) << describe(s.sent);
  std::vector<Received> reply = server_writes("reply");
  EXPECT_EQ(app_data(reply), "reply") << describe(reply);
  ASSERT_FALSE(reply.empty());
  EXPECT_EQ(reply.back().generation, server_gen) << describe(reply);
}

// Without an update the client's records reach 2^24.5 under one key: the
// server closes (close_notify) and names the AEAD limit. Records below the
// limit were delivered.
TEST_P(RecordLayer, ClosesWhenTheClientReachesTheAeadLimitWithoutUpdate) {
  ASSERT_NO_FATAL_FAILURE(advance(raw_->recv_seq(), kAeadLimit - 2));
  std::string delivered;
  std::vector<Received> sent;
  Result<void> last;
  int i = 0;
  for (; i < 3 && last.has_value(); ++i) {  // records 2^24.5 - 2, - 1, 2^24.5
    Step s = feed(raw_->app("q" + std::to_string(i)));
    last = s.result;
    delivered += as_string(s.delivered);
    for (Received& r : s.sent) sent.push_back(std::move(r));
  }
  if (!GetParam().aes_gcm) {
    // ChaCha20-Poly1305 has no such limit (RFC 8446 5.5).
    EXPECT_TRUE(last.has_value()) << "closed at the AES-GCM limit: " << session_->failure() << "; sent "
                                  << describe(sent);
    EXPECT_EQ(delivered, "q0q1q2");
    return;
  }
  ASSERT_FALSE(last.has_value()) << "record " << kAeadLimit << " accepted; the server sent "
                                 << describe(sent);
  EXPECT_EQ(last.error(), Error::Protocol) << to_string(last.error());
  EXPECT_TRUE(delivered == "q0" || delivered == "q0q1") << "delivered '" << delivered << "'";
  ASSERT_FALSE(sent.empty()) << "no close_notify";
  EXPECT_TRUE(sent.back().is_alert(kWarning, kCloseNotify)) << describe(sent);
  for (size_t k = 0; k + 1 < sent.size(); ++k) EXPECT_TRUE(sent[k].is_key_update(1)) << describe(sent);
  EXPECT_EQ(violation_name(*session_), "aead_limit");
  expect_dead("the AEAD limit");
}

// The same client, updating its key just before the limit: no close.
TEST_P(RecordLayer, KeyUpdateBeforeTheAeadLimitKeepsTheConnection) {
  ASSERT_NO_FATAL_FAILURE(advance(raw_->recv_seq(), kAeadLimit - 3));
  Step s = feed(
      concat({raw_->app("q0"), raw_->key_update(false), raw_->app("q1"), raw_->app("q2"), raw_->app("q3")}));
  ASSERT_TRUE(s.result.has_value()) << session_->failure() << "; sent " << describe(s.sent);
  EXPECT_EQ(as_string(s.delivered), "q0q1q2q3");
  for (const Received& r : s.sent) EXPECT_TRUE(r.is_key_update(1)) << describe(s.sent);
}

INSTANTIATE_TEST_SUITE_P(Suites, RecordLayer, ::testing::ValuesIn(kSuites),
                         [](const ::testing::TestParamInfo<Suite>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace tlsgate::tls
