#!/usr/bin/env python3
"""Writes the seed corpus of the h2 fuzz target (tests/fuzz/h2_fuzz.cc).

Each seed is three option bytes (see h2_fuzz.cc) and the bytes a client
sends: the preface, frames, HPACK blocks encoded here by hand (literal
fields without Huffman, static-table indexes, the dynamic table). The seeds
are committed; run this again only to change them:

    tests/fuzz/make_h2_corpus.py tests/fuzz/corpus/h2
"""
import os
import struct
import sys

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20

CANCEL, PROTOCOL_ERROR, NO_ERROR = 0x8, 0x1, 0x0


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name, value, indexing=False):
    """A literal field with a new name, added to the dynamic table or not."""
    name, value = name.encode(), value.encode()
    return (b"\x40" if indexing else b"\x00") + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def indexed(index):
    return hpack_int(index, 7, 0x80)


def table_size_update(size):
    return hpack_int(size, 5, 0x20)


def grpc_request(path="/echo.Echo/Unary", authority="localhost:8443", timeout="5S", extra=()):
    block = indexed(3) + indexed(7)  # :method POST, :scheme https
    block += literal(":authority", authority) + literal(":path", path)
    block += literal("content-type", "application/grpc") + literal("te", "trailers")
    if timeout:
        block += literal("grpc-timeout", timeout)
    for n, v in extra:
        block += literal(n, v)
    return block


def grpc_message(payload):
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def settings(*pairs):
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window_update(sid, increment):
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))


def rst(sid, code):
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def start():
    return PREFACE + settings() + frame(SETTINGS, ACK, 0)


def unary(sid, message=b"hello", **kw):
    return frame(HEADERS, END_HEADERS, sid, grpc_request(**kw)) + frame(DATA, END_STREAM, sid, grpc_message(message))


def opts(backend=0, piece=0, policy=0):
    return bytes([backend, piece, policy])


def seeds():
    s = {}
    s["unary"] = opts() + start() + unary(1)
    s["unary_in_pieces_streamed_echo"] = opts(backend=1, piece=7) + start() + unary(1)
    s["unary_preface_by_target"] = opts(backend=0x40) + settings((4, 65535)) + unary(1)
    s["streaming_with_window_updates"] = (
        opts(backend=1, piece=64) + start() + frame(HEADERS, END_HEADERS, 1, grpc_request("/echo.Echo/Stream"))
        + frame(DATA, 0, 1, grpc_message(b"a" * 300)) + window_update(0, 100000) + window_update(1, 100000)
        + frame(DATA, 0, 1, grpc_message(b"b" * 1000)) + frame(DATA, END_STREAM, 1, b""))
    s["client_trailers"] = (
        opts() + start() + frame(HEADERS, END_HEADERS, 1, grpc_request())
        + frame(DATA, 0, 1, grpc_message(b"x")) + frame(HEADERS, END_HEADERS | END_STREAM, 1, literal("x-trailer", "1")))
    s["headers_only_get"] = opts() + start() + frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                                     indexed(2) + indexed(7) + indexed(4) + literal(":authority", "a"))
    s["reset_by_client"] = (
        opts(backend=1, piece=20) + start() + frame(HEADERS, END_HEADERS, 1, grpc_request())
        + frame(DATA, 0, 1, grpc_message(b"partial")) + rst(1, CANCEL) + unary(3))
    s["reset_before_headers_end"] = opts() + start() + frame(HEADERS, 0, 1, grpc_request()) + rst(1, CANCEL)
    block = grpc_request(extra=[("x-meta-%d" % i, "v" * 20) for i in range(6)])
    s["continuation"] = (
        opts() + start() + frame(HEADERS, 0, 1, block[:20]) + frame(CONTINUATION, 0, 1, block[20:60])
        + frame(CONTINUATION, END_HEADERS, 1, block[60:]) + frame(DATA, END_STREAM, 1, grpc_message(b"c")))
    s["continuation_without_end"] = (
        opts(piece=40) + start() + frame(HEADERS, 0, 1, block[:10])
        + b"".join(frame(CONTINUATION, 0, 1, literal("x-c", "y" * 30)) for _ in range(30)))
    s["continuation_wrong_stream"] = (
        opts() + start() + frame(HEADERS, 0, 1, block[:10]) + frame(CONTINUATION, END_HEADERS, 3, block[10:]))
    s["ping"] = (
        opts() + start() + frame(PING, 0, 0, b"12345678") + frame(PING, ACK, 0, b"87654321")
        + unary(1) + frame(PING, 0, 0, b"abcdefgh"))
    s["ping_bad_length"] = opts() + start() + frame(PING, 0, 0, b"123")
    s["window_update_zero_and_overflow"] = (
        opts() + start() + unary(1) + window_update(0, 0x7FFFFFFF) + window_update(0, 0x7FFFFFFF))
    s["window_update_zero_stream"] = (
        opts(backend=1) + start() + frame(HEADERS, END_HEADERS, 1, grpc_request()) + window_update(1, 0))
    s["settings_changes"] = (
        opts(backend=1, piece=30) + PREFACE + settings((1, 0), (3, 2), (4, 10), (5, 16384), (6, 100))
        + frame(SETTINGS, ACK, 0) + unary(1) + settings((4, 70000), (1, 4096)) + unary(3))
    s["settings_bad_enable_push"] = opts() + PREFACE + settings((2, 2))  # must be 0 or 1
    s["settings_bad_window"] = opts() + PREFACE + settings((4, 0x80000000))
    s["priority"] = (
        opts() + start() + frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 16))
        + frame(PRIORITY, 0, 5, struct.pack(">IB", 0x80000003, 200))
        + frame(HEADERS, END_HEADERS | PRIO, 3, struct.pack(">IB", 1, 32) + grpc_request())
        + frame(DATA, END_STREAM, 3, grpc_message(b"p")) + frame(PRIORITY, 0, 7, struct.pack(">IB", 7, 1)))
    s["padded"] = (
        opts() + start() + frame(HEADERS, END_HEADERS | PADDED, 1, b"\x05" + grpc_request() + b"\0" * 5)
        + frame(DATA, END_STREAM | PADDED, 1, b"\x03" + grpc_message(b"pad") + b"\0" * 3))
    dyn = (literal(":authority", "localhost:8443", indexing=True) + literal("x-tenant", "t1", indexing=True))
    s["hpack_dynamic_table"] = (
        opts() + start()
        + frame(HEADERS, END_HEADERS, 1, indexed(3) + indexed(7) + dyn + literal(":path", "/a/B")
                + literal("content-type", "application/grpc"))
        + frame(DATA, END_STREAM, 1, grpc_message(b"1"))
        + frame(HEADERS, END_HEADERS, 3, table_size_update(0) + table_size_update(4096) + indexed(3) + indexed(7)
                + literal(":authority", "x") + literal(":path", "/a/B") + indexed(62))
        + frame(DATA, END_STREAM, 3, grpc_message(b"2")))
    s["hpack_bad_index"] = opts() + start() + frame(HEADERS, END_HEADERS, 1, indexed(3) + indexed(120))
    s["many_streams"] = opts(backend=1, piece=50) + start() + b"".join(unary(2 * i + 1, b"m%d" % i) for i in range(6))
    s["streams_past_max_concurrent"] = (
        opts() + start() + b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, grpc_request()) for i in range(10)))
    s["stream_id_not_increasing"] = opts() + start() + unary(5) + unary(3)
    s["data_on_idle_stream"] = opts() + start() + frame(DATA, 0, 9, b"zz")
    s["data_full_frames_then_oversized"] = (
        opts() + start() + frame(HEADERS, END_HEADERS, 1, grpc_request())
        + frame(DATA, 0, 1, b"w" * 4000) + frame(DATA, 0, 1, b"w" * 16385))
    s["headers_past_limit"] = (
        opts() + start() + frame(HEADERS, END_HEADERS, 1, grpc_request(extra=[("x-f%d" % i, "v") for i in range(70)])))
    s["header_uppercase"] = opts() + start() + frame(HEADERS, END_HEADERS, 1, grpc_request(extra=[("X-Up", "1")]))
    s["spoofed_forwarding_headers"] = opts() + start() + frame(HEADERS, END_HEADERS | END_STREAM, 1, grpc_request(
        extra=[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4"), ("x-real-ip", "1.2.3.4"),
               ("connection", "close"), ("te", "gzip")]))
    s["unknown_frame"] = opts() + start() + frame(0x42, 0xff, 0, b"unknown") + frame(0x43, 0, 1, b"") + unary(1)
    s["push_promise_from_client"] = opts() + start() + frame(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\2" + indexed(2))
    s["goaway_from_client"] = (
        opts(backend=1) + start() + frame(HEADERS, END_HEADERS, 1, grpc_request())
        + frame(GOAWAY, 0, 0, struct.pack(">II", 1, NO_ERROR)) + frame(DATA, END_STREAM, 1, b""))
    s["bad_preface"] = opts() + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    s["deadline_expires"] = (
        opts(backend=1, piece=16, policy=0xE0) + start()
        + frame(HEADERS, END_HEADERS, 1, grpc_request(timeout="100m")) + frame(DATA, 0, 1, grpc_message(b"d"))
        + frame(PING, 0, 0, b"........") + frame(PING, 0, 0, b"........") + frame(PING, 0, 0, b"........"))
    s["deadline_capped_bad_timeout"] = (
        opts(policy=0x04 | 0x20) + start() + unary(1, timeout="99999999H") + unary(3, timeout="1x") + unary(5, timeout=""))
    s["routes"] = (
        opts(policy=0x08) + start() + unary(1, authority="ADMIN.example") + unary(3, path="/grpc.health.v1.Health/Check")
        + unary(5, authority="admin.example:443"))
    s["retry_after_refused"] = opts(backend=2, policy=0x02) + start() + unary(1) + unary(3)
    s["backend_resets"] = opts(backend=3) + start() + unary(1) + unary(3)
    s["backend_goaway"] = opts(backend=0x04 | 1, piece=30) + start() + unary(1) + unary(3) + unary(5)
    s["backend_lost_streams_in_flight"] = (
        opts(backend=0x08 | 1, piece=120, policy=0x01) + start()
        + b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, grpc_request()) for i in range(3))
        + b"".join(frame(DATA, END_STREAM, 2 * i + 1, grpc_message(b"late")) for i in range(3)))
    s["no_upstream"] = opts(backend=0x10) + start() + unary(1) + frame(HEADERS, END_HEADERS, 3, grpc_request())
    s["slow_reader"] = (
        opts(backend=0x20 | 1, piece=200) + start()
        + frame(HEADERS, END_HEADERS, 1, grpc_request()) + frame(DATA, END_STREAM, 1, grpc_message(b"s" * 3000)))
    s["shutdown_midway"] = opts(backend=0x80 | 1, piece=40) + start() + unary(1) + unary(3) + unary(5)
    s["small_pool_many_bodies"] = (
        opts(backend=0, policy=0x10) + start()
        + b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, grpc_request()) + frame(DATA, 0, 2 * i + 1, b"b" * 10)
                   for i in range(8)))
    s["small_pool_responses"] = (
        opts(backend=1 | 0x20, piece=100, policy=0x10) + start()
        + b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, grpc_request()) + frame(DATA, 0, 2 * i + 1, b"r" * 100)
                   for i in range(8)))
    return s


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "h2")
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(seeds().items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print("%d seeds in %s" % (len(seeds()), out))


if __name__ == "__main__":
    main()
