// Fuzz target for a server tls::Session after the TLS 1.3 handshake, at the
// Session::read / write level: what the detached record layer (src/tls/
// record.*, tls.cc) does with any sequence of records a client can send.
//
// Per input: a fresh server Session, handshaken in memory with an OpenSSL
// client (certificates made once per process by tools/gen-cert in a temporary
// folder, deleted as soon as they are loaded), then a hand-made client
// (tests/unit/tls/raw_client.hh) that seals records itself. The input is a
// small program:
//   byte 0       cipher suite (bits 0-1), skip the warm-up read (bit 2: the
//                first records then go through OpenSSL, and the session
//                detaches mid-program)
//   then ops     an opcode byte and its arguments (see run()); every op
//                appends records to a pending wire, or feeds that wire to
//                Session::read in input-chosen pieces, or calls write,
//                shutdown, release_idle_memory, advance_sequence_for_test.
// Work per input is bounded: kMaxOps ops, kMaxWire bytes of records,
// kMaxReads read() calls, kMaxWrite bytes written.
//
// TLS_SESSION_FUZZ_TRACE=1 in the environment prints the ops, reads and
// the server's records (to read a reproducer).
//
// Invariants (a violation traps):
//  - every byte the server sends opens under the client's tracked keys; it
//    sends only alerts, KeyUpdates and (from write) application data; nothing
//    after an alert; a read that returns success sent no alert;
//  - the plaintext reaching the sink is the application data the client
//    sealed, in order: always a common prefix, never more than that when
//    every record sent so far was either valid or one the server must refuse
//    (bad tag, wrong sequence number, oversize, wrong inner type, any
//    alert, plaintext records, raw bytes...); exactly all of it when every
//    record was valid and every read succeeded;
//  - a detached session refuses valid records only for a limit (KeyUpdate
//    or empty-record flood, AEAD limit);
//  - after read fails, read fails again (empty or not), calls no sink and
//    appends nothing; after Protocol, write fails and appends nothing; a
//    detached session that fails with Protocol names a violation;
//  - after a write, the client gets exactly the bytes written;
//  - no pool chunk is kept once the session is gone (and no leak, under ASan).
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "raw_client.hh"
#include "tlsgate/buffer.hh"
#include "tlsgate/config.hh"
#include "tlsgate/tls.hh"

#ifndef TLSGATE_SOURCE_ROOT
#error "TLSGATE_SOURCE_ROOT must name the source tree (for tools/gen-cert)"
#endif

namespace {

using namespace tlsgate;
using namespace tlsgate::tls;
using namespace tlsgate::tls::tlstest;

constexpr size_t kMaxOps = 64;
constexpr size_t kMaxWire = 96 * 1024;
constexpr size_t kMaxReads = 4096;
constexpr size_t kMaxWrite = 128 * 1024;

[[noreturn]] void fail(const char* why, const std::string& detail = "") {
  std::fprintf(stderr, "tls_session_fuzz: %s%s%s\n", why, detail.empty() ? "" : ": ", detail.c_str());
  __builtin_trap();
}

// ------------------------------------------------------------ per process

struct Process {
  std::unique_ptr<Context> server;
  SSL_CTX* client = nullptr;
  ChunkPool pool{8};

  Process() {
    init_library();
    char tmpl[] = "/tmp/tlsgate-session-fuzz.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) fail("mkdtemp");
    const std::string dir = tmpl;
    const std::string cmd = "bash '" TLSGATE_SOURCE_ROOT "/tools/gen-cert' '" + dir + "' >/dev/null";
    if (std::system(cmd.c_str()) != 0) fail("tools/gen-cert failed", cmd);
    config::TlsSettings s;
    s.certificates.push_back({dir + "/server.crt", dir + "/server.key", "", {}, {}, {}});
    server = std::make_unique<Context>(s);
    client = SSL_CTX_new(TLS_client_method());
    if (client == nullptr || SSL_CTX_load_verify_locations(client, (dir + "/ca.crt").c_str(), nullptr) != 1)
      fail("client SSL_CTX");
    SSL_CTX_set_verify(client, SSL_VERIFY_PEER, nullptr);
    std::filesystem::remove_all(dir);  // everything is loaded
  }
};

Process& process() {
  static Process* p = new Process;  // lives as long as the process
  return *p;
}

// ------------------------------------------------------------ the client

// An OpenSSL client over two memory BIOs, for the handshake only.
struct MemoryClient {
  SSL* ssl = nullptr;
  BIO* in = nullptr;   // server -> client
  BIO* out = nullptr;  // client -> server

  explicit MemoryClient(SSL_CTX* ctx) {
    ssl = SSL_new(ctx);
    in = BIO_new(BIO_s_mem());
    out = BIO_new(BIO_s_mem());
    if (ssl == nullptr || in == nullptr || out == nullptr) fail("SSL_new / BIO_new");
    BIO_set_mem_eof_return(in, -1);
    SSL_set_bio(ssl, in, out);
    SSL_set_connect_state(ssl);
    SSL_set_tlsext_host_name(ssl, "localhost");
    SSL_set1_host(ssl, "localhost");
  }
  ~MemoryClient() {
    SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(ssl);
  }
  MemoryClient(const MemoryClient&) = delete;
  MemoryClient& operator=(const MemoryClient&) = delete;
};

bool handshake(Session& server, MemoryClient& c, ByteQueue& out) {
  HandshakeState st = HandshakeState::InProgress;
  bool client_done = false;
  for (int round = 0; round < 10; ++round) {
    if (!client_done) {
      const int rc = SSL_do_handshake(c.ssl);
      client_done = rc == 1;
      if (!client_done) {
        const int e = SSL_get_error(c.ssl, rc);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) return false;
      }
    }
    Bytes sent(static_cast<size_t>(BIO_ctrl_pending(c.out)));
    if (!sent.empty()) BIO_read(c.out, sent.data(), static_cast<int>(sent.size()));
    if (st == HandshakeState::InProgress) {
      st = server.handshake(sent, out);
    } else if (!sent.empty()) {
      return false;
    }
    const Bytes back = drain(out);
    if (!back.empty()) BIO_write(c.in, back.data(), static_cast<int>(back.size()));
    if (st == HandshakeState::Failed) return false;
    if (st == HandshakeState::Done && client_done) return true;
  }
  return false;
}

// ------------------------------------------------------------ the program

class Input {
 public:
  Input(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  bool empty() const { return n_ == 0; }
  uint8_t u8() {
    if (n_ == 0) return 0;
    --n_;
    return *p_++;
  }
  uint16_t u16() { return static_cast<uint16_t>(u8() << 8 | u8()); }
  Bytes take(size_t k) {
    k = std::min(k, n_);
    Bytes b(p_, p_ + k);
    p_ += k;
    n_ -= k;
    return b;
  }

 private:
  const uint8_t* p_;
  size_t n_;
};

// What the client's records so far entitle the sink to (see the header).
enum class Model {
  Clean,     // every record valid: `expected` is exactly what must arrive
  Poisoned,  // a record the server must refuse: nothing past `expected`
  Dirty,     // a record the server may accept or refuse: only a common prefix
};

const char* const kSuites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                               "TLS_CHACHA20_POLY1305_SHA256"};

class Run {
 public:
  Run(Process& p, Input& in) : p_(p), in_(in), out_(&p.pool) {}

  void go() {
    const uint8_t head = in_.u8();
    const char* suite = kSuites[(head & 3) % 3];
    const bool warm_up = (head & 4) == 0;
    session_ = std::make_unique<Session>(*p_.server, p_.pool);
    client_ = std::make_unique<MemoryClient>(p_.client);
    if (!raw_.attach(client_->ssl, suite)) fail("attach", raw_.error());
    if (!handshake(*session_, *client_, out_)) fail("handshake failed", session_->failure());
    if (!raw_.start()) fail("RawClient::start", raw_.error());
    // The model's strict rules are for tlsgate's own record layer; records
    // OpenSSL reads first only get the generic ones.
    strict_ = warm_up;
    if (warm_up) {
      seal_app(to_bytes("warm-up"));
      if (!feed_all({0}) || !session_->detached())
        fail("no detach after the warm-up read", session_->failure());
    }
    for (size_t op = 0; op < kMaxOps && !in_.empty() && !ended_; ++op) step();
    if (!ended_) {
      feed_all({0});
      if (!ended_ && model_ == Model::Clean && !any_failure_ && !shut_ && delivered_ != expected_)
        fail("valid records, every read succeeded, yet the sink got something else",
             std::to_string(delivered_.size()) + " of " + std::to_string(expected_.size()) + " bytes");
    }
    session_.reset();
    out_.clear();
    client_.reset();
    if (p_.pool.in_use() != 0) fail("the session kept pool chunks");
  }

 private:
  // ---------------------------------------------------------------- model

  void poison() {
    if (model_ == Model::Clean) model_ = strict_ ? Model::Poisoned : Model::Dirty;
  }
  void dirty() { model_ = Model::Dirty; }

  void append(const Bytes& r) {
    if (!raw_.error().empty()) fail("RawClient", raw_.error());
    wire_.insert(wire_.end(), r.begin(), r.end());
    wire_total_ += r.size();
  }
  bool room(size_t n) const { return wire_total_ + n <= kMaxWire; }

  void seal_app(const Bytes& content, size_t padding = 0) {
    append(raw_.app(content, padding));
    if (content.size() > kMaxPlaintext || content.size() + 1 + padding > kMaxPlaintext + 1) {
      poison();  // record_overflow (RFC 8446 5.2, 5.4)
    } else if (model_ == Model::Clean) {
      expected_.insert(expected_.end(), content.begin(), content.end());
    }
  }

  // ---------------------------------------------------------------- ops

  void step() {
    const uint8_t op = in_.u8();
    if (trace_)
      std::fprintf(stderr, "op %d: detached %d, delivered %zu, expected %zu, model %d\n", op % 14,
                   session_->detached(), delivered_.size(), expected_.size(), int(model_));
    switch (op % 14) {
      case 0:
        op_seal();
        break;
      case 1:
        op_big();
        break;
      case 2:
        op_raw();
        break;
      case 3:
        op_plaintext();
        break;
      case 4:
        op_key_update();
        break;
      case 5:
        op_alert();
        break;
      case 6:
        op_empty_run();
        break;
      case 7:
        op_key_update_burst();
        break;
      case 8:
        op_feed();
        break;
      case 9:
        op_write();
        break;
      case 10:
        session_->release_idle_memory();
        break;
      case 11:
        op_shutdown();
        break;
      case 12:
        op_advance();
        break;
      case 13:
        op_handshake_message();
        break;
    }
  }

  // A sealed record: outer type, version, inner type, content, padding, tag,
  // sequence number all chosen by the input.
  void op_seal() {
    const uint8_t flags = in_.u8();
    SealSpec s;
    if (flags & 1) s.outer_type = in_.u8();
    static const uint8_t inner[] = {kApplicationData, kApplicationData, kApplicationData,
                                    kAlert,           kHandshake,       0};
    const uint8_t t = in_.u8();
    s.inner_type = (flags & 2) ? t : inner[t % sizeof inner];
    s.content = in_.take(in_.u16() % 2048);
    if (flags & 4) s.padding = in_.u8();
    s.corrupt_tag = (flags & 8) != 0;
    if (flags & 16) {
      const int8_t delta = static_cast<int8_t>(in_.u8() | 1);  // never 0: a wrong sequence number
      s.seq = raw_.send_seq() + static_cast<uint64_t>(static_cast<int64_t>(delta));
    }
    if (flags & 32) s.version = in_.u16();
    if (!room(s.content.size() + s.padding + 32)) return;
    append(raw_.seal(s));
    const bool valid_app = s.outer_type == kApplicationData && s.inner_type == kApplicationData &&
                           !s.corrupt_tag && !s.seq && s.version == 0x0303;
    if (s.outer_type != kApplicationData || s.corrupt_tag || s.seq) {
      poison();
    } else if (s.inner_type == 0 || s.version != 0x0303) {
      dirty();  // the content's own last non-zero byte is the type / the version is to be ignored
    } else if (!valid_app) {
      poison();  // alert or handshake content: no data may follow it, or it is refused
    } else if (model_ == Model::Clean) {
      expected_.insert(expected_.end(), s.content.begin(), s.content.end());
    }
  }

  // Records around the size limits: 2^14 - 8 .. 2^14 + 247 bytes of content,
  // up to 1020 bytes of padding.
  void op_big() {
    const size_t len = kMaxPlaintext - 8 + in_.u8();
    const size_t padding = size_t(in_.u8()) * 4;
    if (!room(len + padding + 32)) return;
    Bytes content(len);
    for (size_t i = 0; i < len; ++i) content[i] = static_cast<uint8_t>('a' + i % 26);
    seal_app(content, padding);
  }

  void op_raw() {
    const Bytes b = in_.take(in_.u8());
    if (b.empty() || !room(b.size())) return;
    append(b);
    poison();  // cannot authenticate: misaligns or fails whatever follows
  }

  void op_plaintext() {
    const uint8_t type = in_.u8();
    const Bytes body = in_.take(in_.u8());
    if (!room(body.size() + 5)) return;
    append(plaintext_record(type, 0x0303, body));
    poison();
  }

  // A KeyUpdate in 1..5 records, request byte and trailing bytes chosen;
  // the client moves to its next key unless told not to.
  void op_key_update() {
    const uint8_t flags = in_.u8();
    uint8_t request = flags & 1;
    if (flags & 2) request = in_.u8();
    Bytes msg = key_update_message(request);
    const Bytes trailing = (flags & 4) ? in_.take(1 + in_.u8() % 4) : Bytes{};
    msg.insert(msg.end(), trailing.begin(), trailing.end());
    std::vector<size_t> fragments(in_.u8() % 5);
    for (size_t& f : fragments) f = 1 + in_.u8() % 4;
    if (!room(5 * 32 + msg.size())) return;
    append(raw_.handshake_records(msg, fragments));
    const bool update = (flags & 8) == 0;
    if (update) raw_.update_send_keys();
    // Fragments past the end of the message make empty handshake records.
    size_t covered = 0;
    bool empty_fragment = false;
    for (size_t f : fragments) {
      empty_fragment |= covered >= msg.size();
      covered += f;
    }
    empty_fragment |= covered >= msg.size() && !fragments.empty();
    if (request > 1 || !trailing.empty() || !update || empty_fragment) poison();
  }

  void op_alert() {
    const uint8_t flags = in_.u8();
    Bytes body = {in_.u8(), in_.u8()};
    if (flags & 1) body = in_.take(in_.u8() % 5);
    if (!room(64)) return;
    append(raw_.record(kAlert, body));
    poison();  // close_notify ends the data; any other alert ends the connection
  }

  void op_empty_run() {
    const size_t n = in_.u8() % 40;
    const size_t padding = in_.u8() % 4;
    if (!room(n * 32)) return;
    for (size_t i = 0; i < n; ++i) seal_app({}, padding);
  }

  void op_key_update_burst() {
    const uint8_t flags = in_.u8();
    const size_t n = flags % 12;
    if (!room(n * 32 + 64)) return;
    for (size_t i = 0; i < n; ++i) {
      append(raw_.key_update((flags & 0x80) != 0));
      if (flags & 0x40) seal_app({static_cast<uint8_t>('0' + i)});
    }
  }

  void op_handshake_message() {
    const uint8_t type = in_.u8();
    const Bytes body = in_.take(in_.u8() % 64);
    std::vector<size_t> fragments(in_.u8() % 3);
    for (size_t& f : fragments) f = 1 + in_.u8() % 8;
    if (!room(4 * 32 + body.size())) return;
    append(raw_.handshake_records(handshake_message(type, body), fragments));
    poison();
  }

  // Feeds the pending wire in pieces of input-chosen sizes (0 = the rest).
  void op_feed() {
    std::vector<size_t> pieces(1 + in_.u8() % 4);
    for (size_t& s : pieces) {
      const uint8_t b = in_.u8();
      s = b == 0 ? 0 : b < 240 ? b : size_t(b - 239) * 4096;
    }
    feed_all(pieces);
  }

  void op_write() {
    const size_t n = std::min<size_t>(in_.u16() % 40000, kMaxWrite - std::min(kMaxWrite, written_));
    Bytes data(n);
    for (size_t i = 0; i < n; ++i) data[i] = static_cast<uint8_t>(i * 7 + written_);
    written_ += n;
    const bool was_failed = failed_protocol_;
    Result<void> r = session_->write(data.data(), data.size(), out_);
    if (was_failed && (r.has_value() || !out_.empty())) fail("write after a fatal error sent something");
    if (!r.has_value()) {  // e.g. after shutdown(), or a sequence number that would wrap
      take_output();
      return;
    }
    const std::vector<Received> recs = take_output();
    std::string got;
    for (const Received& rec : recs) {
      if (rec.is_application_data()) {
        got.append(rec.content.begin(), rec.content.end());
      } else if (!rec.is_key_update(0) && !rec.is_key_update(1)) {
        fail("write sent something else than data and KeyUpdates", describe(rec));
      }
    }
    if (got != std::string(data.begin(), data.end())) fail("the client did not get what was written");
  }

  void op_shutdown() {
    session_->shutdown(out_);
    for (const Received& r : take_output())
      if (!r.is_alert(kWarning, kCloseNotify))
        fail("shutdown sent something else than close_notify", describe(r));
    shut_ = true;
  }

  // Jumps both sequence numbers near the AEAD or 64-bit limits (a detached
  // session, the wire fed first so that no record is in flight).
  void op_advance() {
    static const uint64_t points[] = {uint64_t{1} << 24, (uint64_t{1} << 24) - 2, 23726566 - 2,
                                      23726566,          ~uint64_t{0} - 3,        ~uint64_t{0} - 1};
    const uint8_t a = in_.u8(), b = in_.u8();
    feed_all({0});
    if (ended_ || !session_->detached() || session_->pending_input() != 0 || raw_.partial() != 0) return;
    const uint64_t tx = (a & 0x80) ? points[a % 6] : raw_.recv_seq() + (a & 0x7f);
    const uint64_t rx = (b & 0x80) ? points[b % 6] : raw_.send_seq();
    if (!session_->advance_sequence_for_test(tx, rx))
      fail("advance_sequence_for_test refused a detached session");
    advanced_ = true;
    raw_.set_sequences(rx, tx);
  }

  // ---------------------------------------------------------------- reading

  // Opens everything the server appended; checks what may be there.
  std::vector<Received> take_output() {
    std::vector<Received> recs = raw_.receive(out_);
    for (const Received& r : recs) {
      if (trace_) std::fprintf(stderr, "  server sent %s\n", describe(r).c_str());
      if (!r.opened) fail("the server sent a record the client cannot open", describe(r));
      if (alert_seen_) {
        // OpenSSL (a session not detached yet) answers a KeyUpdate request
        // even after its own close_notify (OpenSSL 3.0); tlsgate's layer must not.
        if (!(alert_by_openssl_ && r.is_key_update(0)))
          fail("the server sent a record after an alert", describe(r));
      }
      if (r.inner_type == kAlert) {
        if (r.content.size() != 2) fail("malformed alert from the server", describe(r));
        alert_seen_ = true;
        alert_by_openssl_ = !session_->detached();
      } else if (r.inner_type == kHandshake) {
        if (!r.is_key_update(0) && !r.is_key_update(1))
          fail("the server sent a handshake message", describe(r));
      } else if (r.inner_type != kApplicationData) {
        fail("the server sent an unknown content type", describe(r));
      }
    }
    return recs;
  }

  void check_delivered() {
    const size_t common = std::min(delivered_.size(), expected_.size());
    if (!std::equal(delivered_.begin(), delivered_.begin() + long(common), expected_.begin()))
      fail("the sink got bytes the client did not send there");
    if (model_ != Model::Dirty && delivered_.size() > expected_.size())
      fail("the sink got the content of a record the server had to refuse",
           std::to_string(delivered_.size()) + " > " + std::to_string(expected_.size()) + " bytes");
  }

  Result<void> read_once(const uint8_t* p, size_t n, size_t* sink_calls) {
    Bytes scratch(p, p + n);  // overwritten after the call: the session must not keep pointers into it
    Result<void> r = session_->read(scratch, out_, [&](const uint8_t* d, size_t len) {
      ++*sink_calls;
      delivered_.insert(delivered_.end(), d, d + len);
    });
    std::fill(scratch.begin(), scratch.end(), 0xEE);
    ++reads_;
    return r;
  }

  // Feeds the pending wire, cycling through `pieces`. Returns whether every
  // read succeeded; on a failure checks that the session stays dead and
  // ends the program.
  bool feed_all(const std::vector<size_t>& pieces) {
    size_t off = 0, i = 0;
    Result<void> r;
    do {
      size_t n = pieces[i++ % pieces.size()];
      if (n == 0 || reads_ + 1 >= kMaxReads) n = wire_.size() - off;
      n = std::min(n, wire_.size() - off);
      size_t calls = 0;
      r = read_once(wire_.data() + off, n, &calls);
      if (trace_)
        std::fprintf(stderr, "  read %zu bytes: %s %s\n", n, r.has_value() ? "ok" : to_string(r.error()),
                     r.has_value() ? "" : session_->failure().c_str());
      off += n;
      const std::vector<Received> sent = take_output();
      for (const Received& s : sent) {
        if (s.inner_type == kApplicationData) fail("read sent application data", describe(s));
        if (s.inner_type == kAlert && r.has_value()) fail("read succeeded but sent an alert", describe(s));
      }
      check_delivered();
    } while (r.has_value() && off < wire_.size());
    wire_.clear();
    if (r.has_value()) return true;
    any_failure_ = true;
    dead(r.error());
    return false;
  }

  // After read failed with `e`: everything stays refused.
  void dead(Error e) {
    ended_ = true;
    // After our own shutdown() every read fails: not a violation.
    if (session_->detached() && !shut_) {
      const TlsViolation v = session_->violation();
      // Valid records may only be refused for a limit on what the peer does.
      const bool limit =
          e == Error::Protocol && (v == TlsViolation::KeyUpdateFlood || v == TlsViolation::EmptyRecordFlood ||
                                   v == TlsViolation::AeadLimit);
      if (model_ == Model::Clean && !limit && !(e == Error::Resource && advanced_))
        fail("valid records were refused",
             std::string(to_string(e)) + ", " + to_string(v) + ": " + session_->failure());
    }
    if (e == Error::Protocol && session_->detached() && !shut_) {
      const TlsViolation v = session_->violation();
      if (v == TlsViolation::None) fail("Protocol error without a violation", session_->failure());
      if (v != TlsViolation::PeerAlert && !alert_seen_) fail("Protocol error without an alert", to_string(v));
      if (v == TlsViolation::PeerAlert && alert_seen_) fail("the server answered the peer's alert");
    }
    if (e == Error::Protocol) failed_protocol_ = true;
    const size_t before = delivered_.size();
    for (int k = 0; k < 2; ++k) {
      const Bytes more = k == 0 ? raw_.app("after the end") : Bytes{};
      size_t calls = 0;
      Result<void> again = read_once(more.data(), more.size(), &calls);
      if (again.has_value())
        fail(k == 0 ? "a read after a failed read succeeded" : "an empty read after a failed read succeeded");
      if (calls != 0 || delivered_.size() != before) fail("a read after a failed read called the sink");
      if (!out_.empty() && session_->detached()) fail("a read after a failed read appended bytes");
      out_.clear();
    }
    if (e == Error::Protocol && session_->detached()) {
      static const uint8_t late[] = "late";
      Result<void> w = session_->write(late, sizeof late, out_);
      if (w.has_value() || !out_.empty()) fail("write after a fatal error sent something");
    }
  }

  Process& p_;
  Input& in_;
  ByteQueue out_;
  std::unique_ptr<Session> session_;
  std::unique_ptr<MemoryClient> client_;
  RawClient raw_;
  Bytes wire_;
  size_t wire_total_ = 0;
  size_t reads_ = 0;
  size_t written_ = 0;
  Bytes expected_;
  Bytes delivered_;
  Model model_ = Model::Clean;
  bool strict_ = true;
  bool alert_seen_ = false;
  bool alert_by_openssl_ = false;
  bool any_failure_ = false;
  bool failed_protocol_ = false;
  bool shut_ = false;
  bool advanced_ = false;  // sequence numbers moved near a limit: a send may fail (Resource)
  bool ended_ = false;
  const bool trace_ = std::getenv("TLS_SESSION_FUZZ_TRACE") != nullptr;  // to read a reproducer
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Process& p = process();
  Input in(data, size);
  {
    Run run(p, in);
    run.go();
  }
  ERR_clear_error();
  return 0;
}
