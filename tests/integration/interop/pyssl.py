#!/usr/bin/python3
"""Python's ssl module as tlsgate's client, HTTP/2 by h2raw.py.

    /usr/bin/python3 pyssl.py --port PORT --ca CA --scenario NAME

OpenSSL underneath, like `openssl s_client` and grpc++, but another client
code path: CPython's _ssl over a non-blocking socket, certificate and host
name checked by ssl.create_default_context(). It cannot send a KeyUpdate:
the ssl module does not expose OpenSSL's SSL_key_update(), so this driver has
no key-update scenario (gnutls_cli.py covers it).

Scenarios:
  transfer  one connection: a 1 MiB echo (1 MiB each way), then a small one
  resume    a call; the connection closed with close_notify; a second
            connection offering the first one's session (session=)

Prints facts, one "name value" per line, which the C++ test checks
(interop_test.cc); exits 1 with the reason on stderr if the exchange broke.
"""

import argparse
import socket
import ssl
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h2raw  # noqa: E402

ECHO = "/tlsgate.test.Echo/Unary"
MIB = 1 << 20


class SslTransport(h2raw.Transport):
    def __init__(self, sock):
        self.sock = sock

    def fds(self):
        return self.sock.fileno(), self.sock.fileno()

    def buffered(self):
        # Decrypted bytes OpenSSL holds are invisible to select().
        return self.sock.pending() > 0

    def write_some(self, data):
        try:
            return self.sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            return 0

    def read_some(self):
        try:
            return self.sock.recv(1 << 18)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return None
        except ssl.SSLZeroReturnError:
            return b""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--scenario", choices=["transfer", "resume"], required=True)
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()

    deadline = time.monotonic() + args.timeout
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["h2"])
    facts = []
    n = 0

    def connect(index, session=None):
        raw = socket.create_connection(("127.0.0.1", args.port), timeout=10)
        sock = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        facts.extend([(f"conn{index}.version", sock.version()), (f"conn{index}.cipher", sock.cipher()[0]),
                      (f"conn{index}.alpn", sock.selected_alpn_protocol() or "<none>"),
                      (f"conn{index}.resumed", "yes" if sock.session_reused else "no")])
        sock.setblocking(False)
        return sock

    def call(h2, size, seed):
        nonlocal n
        n += 1
        payload = h2raw.pattern(size, seed)
        c = h2.unary(ECHO, h2raw.echo_request(payload), deadline)
        facts.extend(h2raw.call_facts(f"call{n}", c, payload))

    def close(sock):
        sock.settimeout(5)
        try:
            sock.unwrap()  # close_notify both ways
        except (OSError, ssl.SSLError):
            pass
        sock.close()

    error = None
    try:
        sock = connect(1)
        h2 = h2raw.H2Client(SslTransport(sock))
        if args.scenario == "transfer":
            call(h2, MIB, 1)
            call(h2, 1000, 2)
            close(sock)
        else:
            call(h2, 64 << 10, 1)
            # TLS 1.3 tickets come after the handshake; reading the reply took them in.
            session = sock.session
            facts.append(("conn1.ticket", "yes" if session is not None and session.has_ticket else "no"))
            close(sock)
            sock = connect(2, session)
            call(h2raw.H2Client(SslTransport(sock)), 64 << 10, 2)
            close(sock)
    except (h2raw.H2Error, OSError, ssl.SSLError) as e:
        error = f"{type(e).__name__}: {e}"
    for name, value in facts:
        print(f"{name} {value}")
    if error:
        print(f"pyssl.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
