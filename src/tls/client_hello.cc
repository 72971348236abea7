// The server name of a ClientHello, read before OpenSSL sees it, so that the
// SSL object is made from the context of the certificate that carries the
// name: switching contexts later (SSL_set_SSL_CTX in the servername
// callback) copies the certificate set per handshake. Only a selection: what
// this parser cannot read falls back to OpenSSL's own parse and the
// callback, which also checks every choice made here.
#include "tlsgate/tls.hh"

#include <algorithm>

namespace tlsgate::tls {

namespace {

// Bounds-checked reads over one record; a read past the end makes every
// later read fail too.
class Cursor {
 public:
  explicit Cursor(std::span<const uint8_t> b) : b_(b) {}
  bool ok() const { return ok_; }
  size_t left() const { return ok_ ? b_.size() : 0; }
  uint32_t u8() { return take(1) ? b_[at_ - 1] : 0; }
  uint32_t u16() { return take(2) ? static_cast<uint32_t>(b_[at_ - 2]) << 8 | b_[at_ - 1] : 0; }
  uint32_t u24() {
    return take(3) ? static_cast<uint32_t>(b_[at_ - 3]) << 16 | static_cast<uint32_t>(b_[at_ - 2]) << 8 | b_[at_ - 1]
                   : 0;
  }
  void skip(size_t n) { take(n); }
  // The next n bytes as a cursor of their own (this one moves past them).
  Cursor sub(size_t n) {
    if (!take(n)) return Cursor({});
    Cursor c(b_.subspan(at_ - n, n));
    return c;
  }
  std::span<const uint8_t> bytes(size_t n) { return take(n) ? b_.subspan(at_ - n, n) : std::span<const uint8_t>(); }

 private:
  bool take(size_t n) {
    if (!ok_ || b_.size() - at_ < n) {
      ok_ = false;
      return false;
    }
    at_ += n;
    return true;
  }
  std::span<const uint8_t> b_;
  size_t at_ = 0;
  bool ok_ = true;
};

constexpr uint32_t kHandshakeRecord = 22;
constexpr uint32_t kClientHello = 1;
constexpr uint32_t kServerNameExtension = 0;
constexpr uint32_t kHostName = 0;

// RFC 6066 3: ServerNameList, the first host_name entry.
std::string_view host_name_of(Cursor ext) {
  Cursor list = ext.sub(ext.u16());
  while (list.ok() && list.left() > 0) {
    const uint32_t type = list.u8();
    std::span<const uint8_t> name = list.bytes(list.u16());
    if (!list.ok()) break;
    if (type == kHostName) return {reinterpret_cast<const char*>(name.data()), name.size()};
  }
  return {};
}

}  // namespace

std::string_view server_name_of(std::span<const uint8_t> record) {
  Cursor r(record);
  if (r.u8() != kHandshakeRecord) return {};
  r.skip(2);  // legacy_record_version
  Cursor rec = r.sub(r.u16());
  if (rec.u8() != kClientHello) return {};
  // A ClientHello longer than its record continues in the next one: read
  // what is here (the server_name extension usually comes early).
  const size_t hello_len = rec.u24();
  Cursor h = rec.sub(std::min<size_t>(hello_len, rec.left()));
  h.skip(2 + 32);     // legacy_version, random
  h.skip(h.u8());     // legacy_session_id
  h.skip(h.u16());    // cipher_suites
  h.skip(h.u8());     // legacy_compression_methods
  const size_t exts_len = h.u16();
  Cursor exts = h.sub(std::min<size_t>(exts_len, h.left()));
  while (exts.ok() && exts.left() >= 4) {
    const uint32_t type = exts.u16();
    Cursor ext = exts.sub(exts.u16());
    if (!ext.ok()) break;
    if (type == kServerNameExtension) return host_name_of(ext);
  }
  return {};
}

}  // namespace tlsgate::tls
