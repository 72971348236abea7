#!/usr/bin/env python3
"""kTLS smoke test for the tests/vm guest.

Run it on a kernel with kTLS, e.g. inside the VM:
    tests/vm/run -- /usr/bin/python3 tests/vm/ktls_smoke.py

It connects two TCP sockets over 127.0.0.1, attaches the "tls" ULP to both, installs
a TLS 1.3 AES-128-GCM key as TLS_TX on the sender and the same key as TLS_RX on
the receiver, sends a message (kernel encrypts) and receives it back (kernel
decrypts), checks the wire bytes really are TLS records, and checks that
TlsTxSw and TlsRxSw in /proc/net/tls_stat went up. Exit 0 on success, 1 on
failure, 77 when the kernel has no kTLS (skip).
"""
import os
import socket
import struct
import sys

SOL_TCP = 6
TCP_ULP = getattr(socket, "TCP_ULP", 31)
SOL_TLS = getattr(socket, "SOL_TLS", 282)
TLS_TX = 1
TLS_RX = 2
TLS_1_3_VERSION = 0x0304
TLS_CIPHER_AES_GCM_128 = 51


def tls_stat():
    with open("/proc/net/tls_stat") as f:
        return {k: int(v) for k, v in (line.split() for line in f if line.strip())}


def crypto_info(key, iv, salt, rec_seq):
    # struct tls12_crypto_info_aes_gcm_128 (include/uapi/linux/tls.h)
    return struct.pack("=HH8s16s4s8s", TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128,
                       iv, key, salt, rec_seq)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise RuntimeError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def main():
    print(f"kernel: {os.uname().release}")
    key = bytes(range(16))
    iv = bytes(range(100, 108))
    salt = b"\x01\x02\x03\x04"
    seq = bytes(8)
    info = crypto_info(key, iv, salt, seq)

    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    tx = socket.create_connection(lst.getsockname())
    rx, _ = lst.accept()
    lst.close()

    # Plain TCP first: a sniffer pair to see what the kTLS sender puts on the wire.
    lst2 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst2.bind(("127.0.0.1", 0))
    lst2.listen(1)
    tx2 = socket.create_connection(lst2.getsockname())
    wire, _ = lst2.accept()
    lst2.close()

    try:
        for s in (tx, rx, tx2):
            s.setsockopt(SOL_TCP, TCP_ULP, b"tls")
    except OSError as e:
        print(f"SKIP: TCP_ULP tls not available: {e}")
        return 77

    before = tls_stat()
    print("tls_stat before:", {k: before[k] for k in ("TlsTxSw", "TlsRxSw")})
    tx.setsockopt(SOL_TLS, TLS_TX, info)
    rx.setsockopt(SOL_TLS, TLS_RX, info)
    tx2.setsockopt(SOL_TLS, TLS_TX, info)

    msg = b"hello kTLS from tests/vm " + os.urandom(1000)
    tx.sendall(msg)
    got = recv_exact(rx, len(msg))
    if got != msg:
        print("FAIL: received bytes differ from the sent bytes")
        return 1
    print(f"round trip: {len(msg)} bytes through kernel TLS TX -> RX OK")

    # The same message through a kTLS sender to a plain receiver: a TLS 1.3
    # record (outer type 23 application_data, version 0x0303, len = data + 1 + 16).
    tx2.sendall(msg)
    hdr = recv_exact(wire, 5)
    rtype, ver, rlen = struct.unpack("!BHH", hdr)
    body = recv_exact(wire, rlen)
    if (rtype, ver, rlen) != (23, 0x0303, len(msg) + 1 + 16) or msg in body:
        print(f"FAIL: unexpected record on the wire: type={rtype} "
              f"version={ver:#06x} length={rlen}")
        return 1
    print(f"wire: TLS record type={rtype} version={ver:#06x} length={rlen} (ciphertext)")

    # A few more records through the TX -> RX pair.
    for i in range(3):
        m = f"record {i}".encode() * 100
        tx.sendall(m)
        if recv_exact(rx, len(m)) != m:
            print(f"FAIL: record {i} differs")
            return 1

    after = tls_stat()
    for s in (tx, rx, tx2, wire):
        s.close()

    print("/proc/net/tls_stat:")
    with open("/proc/net/tls_stat") as f:
        sys.stdout.write(f.read())
    d_tx = after["TlsTxSw"] - before["TlsTxSw"]
    d_rx = after["TlsRxSw"] - before["TlsRxSw"]
    print(f"TlsTxSw +{d_tx}, TlsRxSw +{d_rx}")
    if d_tx < 2 or d_rx < 1:
        print("FAIL: TlsTxSw/TlsRxSw did not go up")
        return 1
    print("PASS: kTLS TLS 1.3 AES-128-GCM software TX and RX work")
    return 0


if __name__ == "__main__":
    sys.exit(main())
