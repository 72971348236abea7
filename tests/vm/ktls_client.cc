// A TLS 1.3 client for the kTLS suite's non-data record cases: it completes
// the handshake with ALPN h2, proves both directions work (its SETTINGS must
// be acknowledged by the gateway), then sends close_notify or a KeyUpdate and
// expects the gateway to end the connection cleanly within 5 s; or sends an
// encrypted record the gateway must refuse (a NewSessionTicket from a client,
// a change_cipher_spec: "unexpected") and expects unexpected_message.
//
//   ktls_client HOST PORT close_notify|key_update|unexpected_handshake|unexpected_ccs
// Exit 0 when the gateway behaved as expected; the reason otherwise.
#include <arpa/inet.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

namespace {

int fail(const char* what) {
  std::fprintf(stderr, "ktls_client: %s\n", what);
  ERR_print_errors_fp(stderr);
  return 1;
}

// Reads HTTP/2 frames until one of `type` (with `flags` set) arrives, or EOF.
// Returns 1 found, 0 EOF / close_notify, -1 error or timeout.
int read_until_frame(SSL* ssl, int fd, uint8_t type, uint8_t flags) {
  std::string buf;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    while (buf.size() >= 9) {
      size_t len = (size_t(uint8_t(buf[0])) << 16) | (size_t(uint8_t(buf[1])) << 8) | uint8_t(buf[2]);
      if (buf.size() < 9 + len) break;
      if (uint8_t(buf[3]) == type && (uint8_t(buf[4]) & flags) == flags) return 1;
      buf.erase(0, 9 + len);
    }
    char tmp[16384];
    int n = SSL_read(ssl, tmp, sizeof tmp);
    if (n > 0) {
      buf.append(tmp, static_cast<size_t>(n));
      continue;
    }
    int err = SSL_get_error(ssl, n);
    if (err == SSL_ERROR_ZERO_RETURN) return 0;
    if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) return 0;  // EOF without close_notify
    if (err != SSL_ERROR_WANT_READ) return -1;
    int left = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
    if (left <= 0) return -1;
    pollfd p{fd, POLLIN, 0};
    poll(&p, 1, left);
  }
}

// Sends one record of content type `type` through the client's own kernel
// TLS transmit path (OpenSSL offloaded it: SSL_OP_ENABLE_KTLS), so it is
// encrypted with the right key and sequence number like any other record.
bool send_record(int fd, unsigned char type, const void* data, size_t len) {
  char cbuf[CMSG_SPACE(sizeof type)] = {};
  iovec iov{const_cast<void*>(data), len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_TLS;
  c->cmsg_type = TLS_SET_RECORD_TYPE;
  c->cmsg_len = CMSG_LEN(sizeof type);
  *CMSG_DATA(c) = type;
  return sendmsg(fd, &msg, 0) == static_cast<ssize_t>(len);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) return fail("usage: ktls_client HOST PORT close_notify|key_update|unexpected_handshake|unexpected_ccs");
  const std::string mode = argv[3];
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::atoi(argv[2])));
  inet_pton(AF_INET, argv[1], &sa.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) return fail("connect");
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  static const unsigned char alpn[] = "\x02h2";
  SSL_CTX_set_alpn_protos(ctx, alpn, 3);
  const bool unexpected = mode.rfind("unexpected_", 0) == 0;
  if (unexpected) SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);  // the client's TX in the kernel too
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  if (SSL_connect(ssl) != 1) return fail("handshake");
  // Client preface + empty SETTINGS.
  static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\4\0\0\0\0\0";
  if (SSL_write(ssl, preface, sizeof preface - 1) <= 0) return fail("write preface");
  if (read_until_frame(ssl, fd, 4, 1) != 1) return fail("no SETTINGS ACK from the gateway (kTLS RX or TX broken?)");
  if (mode == "close_notify") {
    SSL_shutdown(ssl);
    int r = read_until_frame(ssl, fd, 0xff, 0);  // no such frame: waits for the end
    if (r != 0) return fail("the gateway did not close after close_notify");
  } else if (mode == "key_update") {
    if (SSL_key_update(ssl, SSL_KEY_UPDATE_NOT_REQUESTED) != 1 || SSL_do_handshake(ssl) != 1)
      return fail("sending KeyUpdate");
    int r = read_until_frame(ssl, fd, 7, 0);  // GOAWAY
    if (r == 1) r = read_until_frame(ssl, fd, 0xff, 0);
    if (r != 0) return fail("the gateway did not send GOAWAY and close after KeyUpdate");
  } else if (unexpected) {
    if (BIO_get_ktls_send(SSL_get_wbio(ssl)) != 1) return fail("OpenSSL did not offload the client's TX (kTLS)");
    // A client's NewSessionTicket (type 4, empty body) or a change_cipher_spec.
    static const unsigned char ticket[4] = {4, 0, 0, 0};
    static const unsigned char ccs[1] = {1};
    const bool sent = mode == "unexpected_handshake" ? send_record(fd, 22, ticket, sizeof ticket)
                                                      : send_record(fd, 20, ccs, sizeof ccs);
    if (!sent) return fail("sendmsg with TLS_SET_RECORD_TYPE");
    int r = read_until_frame(ssl, fd, 0xff, 0);
    if (r != -1 || ERR_GET_REASON(ERR_peek_error()) != SSL_R_SSLV3_ALERT_UNEXPECTED_MESSAGE)
      return fail("the gateway did not answer unexpected_message");
    ERR_clear_error();
    std::printf("ktls_client: %s: the gateway answered unexpected_message\n", mode.c_str());
    return 0;
  } else {
    return fail("unknown mode");
  }
  std::printf("ktls_client: %s: the gateway closed cleanly\n", mode.c_str());
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  close(fd);
  return 0;
}
