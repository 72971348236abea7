"""A hand-built HTTP/2 client making gRPC echo calls over any plaintext pipe.

The TLS interop drivers (gnutls_cli.py, pyssl.py) use it: their TLS stack
(gnutls-cli through its stdin/stdout, or a Python ssl socket) carries the
bytes; nothing here does TLS. It exists because no HTTP/2 library for Python
is installed (Debian's python3-h2 is not in tools/deps).

What it speaks (RFC 9113, RFC 7541):
- the client preface; SETTINGS with push off and a stream receive window of
  2^31-1, and a WINDOW_UPDATE raising the connection's to the same, so the
  server never waits for this client; PING both ways; the server's SETTINGS
  and WINDOW_UPDATEs, which it obeys when sending;
- one POST per call: HEADERS with literal header fields (no Huffman, no
  indexing), then the gRPC-framed body in DATA frames as the server's windows
  allow, the last one with END_STREAM;
- the response: HEADERS and trailers decoded by a full HPACK decoder (static
  and dynamic table, Huffman), DATA; RST_STREAM and GOAWAY end calls.

Every wait has a deadline. A protocol surprise raises H2Error naming what was
seen.
"""

import select
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FRAME_NAMES = ["DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY",
               "WINDOW_UPDATE", "CONTINUATION"]
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

SETTINGS_ENABLE_PUSH = 2
SETTINGS_INITIAL_WINDOW_SIZE = 4
SETTINGS_MAX_FRAME_SIZE = 5

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
MAX_FRAME = 16384  # what this client accepts (the default; it never raises it)


class H2Error(Exception):
    pass


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


# ------------------------------------------------------------------ HPACK

# RFC 7541 Appendix A.
STATIC_TABLE = [
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
    (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
    (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
    ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""),
    ("cache-control", ""), ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""),
    ("content-length", ""), ("content-location", ""), ("content-range", ""), ("content-type", ""),
    ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""),
    ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
    ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
    ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
]

# RFC 7541 Appendix B: the code length of each symbol 0..255 (EOS, 256, has
# 30 bits). The code is canonical (codes of one length are consecutive, in
# symbol order, after all shorter ones), so the lengths determine the codes.
HUFFMAN_LENGTHS = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
]
EOS = 256


def _huffman_codes():
    lengths = HUFFMAN_LENGTHS + [30]
    order = sorted(range(257), key=lambda s: (lengths[s], s))
    codes, code, prev = {}, 0, lengths[order[0]]
    for k, sym in enumerate(order):
        if k:
            code = (code + 1) << (lengths[sym] - prev)
        prev = lengths[sym]
        codes[(lengths[sym], code)] = sym
    return codes


_HUFFMAN = _huffman_codes()


def huffman_decode(data):
    out = bytearray()
    code = bits = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            bits += 1
            sym = _HUFFMAN.get((bits, code))
            if sym is not None:
                if sym == EOS:
                    raise H2Error("HPACK: EOS inside a Huffman string")
                out.append(sym)
                code = bits = 0
            elif bits > 30:
                raise H2Error("HPACK: invalid Huffman code")
    # Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if bits >= 8 or code != (1 << bits) - 1:
        raise H2Error("HPACK: bad Huffman padding")
    return bytes(out)


# RFC 7541 C.4.1: "www.example.com", Huffman-coded. Checked once at import so
# a mistyped length cannot hide.
if huffman_decode(bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")) != b"www.example.com":
    raise AssertionError("HPACK Huffman table does not decode RFC 7541 C.4.1")


def _read_int(buf, i, prefix):
    mask = (1 << prefix) - 1
    if i >= len(buf):
        raise H2Error("HPACK: truncated integer")
    value = buf[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        if i >= len(buf) or shift > 28:
            raise H2Error("HPACK: bad integer")
        b = buf[i]
        i += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _read_string(buf, i):
    huffman = buf[i] & 0x80 if i < len(buf) else 0
    n, i = _read_int(buf, i, 7)
    if i + n > len(buf):
        raise H2Error("HPACK: truncated string")
    s = bytes(buf[i:i + n])
    return (huffman_decode(s) if huffman else s).decode("latin-1"), i + n


class HpackDecoder:
    def __init__(self):
        self.dynamic = []  # newest first
        self.size = 0
        self.max_size = 4096

    def _entry(self, index):
        if index == 0:
            raise H2Error("HPACK: index 0")
        if index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        if index - len(STATIC_TABLE) > len(self.dynamic):
            raise H2Error(f"HPACK: index {index} beyond the dynamic table ({len(self.dynamic)} entries)")
        return self.dynamic[index - len(STATIC_TABLE) - 1]

    def _evict(self):
        while self.size > self.max_size:
            name, value = self.dynamic.pop()
            self.size -= len(name) + len(value) + 32

    def decode(self, block):
        fields, i = [], 0
        while i < len(block):
            b = block[i]
            if b & 0x80:  # indexed
                index, i = _read_int(block, i, 7)
                fields.append(self._entry(index))
                continue
            if b & 0xE0 == 0x20:  # dynamic table size update
                self.max_size, i = _read_int(block, i, 5)
                self._evict()
                continue
            indexing = bool(b & 0x40)
            index, i = _read_int(block, i, 6 if indexing else 4)
            if index:
                name = self._entry(index)[0]
            else:
                name, i = _read_string(block, i)
            value, i = _read_string(block, i)
            fields.append((name, value))
            if indexing:
                self.dynamic.insert(0, (name, value))
                self.size += len(name) + len(value) + 32
                self._evict()
        return fields


def _encode_int(value, prefix, first=0):
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes([first | value])
    out = bytearray([first | mask])
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name, value):
    """Literal header field without indexing, new name, no Huffman."""
    n, v = name.encode(), value.encode()
    return b"\x00" + _encode_int(len(n), 7) + n + _encode_int(len(v), 7) + v


# ------------------------------------------------------------------ gRPC and the echo messages

def grpc_frame(message):
    return b"\x00" + struct.pack(">I", len(message)) + message


def grpc_messages(body):
    msgs, i = [], 0
    while i < len(body):
        if i + 5 > len(body):
            raise H2Error(f"gRPC: {len(body) - i} bytes after the last message, less than a prefix")
        if body[i] != 0:
            raise H2Error(f"gRPC: compressed flag {body[i]} (nothing asked for compression)")
        n = struct.unpack(">I", body[i + 1:i + 5])[0]
        if i + 5 + n > len(body):
            raise H2Error(f"gRPC: message of {n} bytes, only {len(body) - i - 5} arrived")
        msgs.append(bytes(body[i + 5:i + 5 + n]))
        i += 5 + n
    return msgs


def _varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def echo_request(payload):
    """tlsgate.test.EchoRequest{payload} (tools/echo/echo.proto, field 1, bytes)."""
    return b"\x0a" + _varint(len(payload)) + payload


def proto_fields(msg):
    """{field number: last value} of a protobuf message; bytes or int values."""
    fields, i = {}, 0

    def varint():
        nonlocal i
        value = shift = 0
        while True:
            if i >= len(msg) or shift > 63:
                raise H2Error("protobuf: bad varint")
            b = msg[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    while i < len(msg):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number] = varint()
        elif wire == 2:
            n = varint()
            if i + n > len(msg):
                raise H2Error("protobuf: truncated field")
            fields[number] = msg[i:i + n]
            i += n
        elif wire == 1:
            fields[number], i = msg[i:i + 8], i + 8
        elif wire == 5:
            fields[number], i = msg[i:i + 4], i + 4
        else:
            raise H2Error(f"protobuf: wire type {wire}")
    return fields


# _ROWS[r][j] = (j * 31 + r) % 251: the bytes of pattern() in one run of 251.
_ROWS = [bytes((j * 31 + r) % 251 for j in range(251)) for r in range(251)]


def pattern(n, seed):
    """Deterministic bytes, so corruption or reordering shows: byte i is
    (i * 31 + seed * 7 + i // 251) % 251, as pattern() in fixtures.hh. No
    "\\n^" in it (consecutive bytes differ by 31 or 32, "^" - "\\n" is 84):
    gnutls-cli would take it for an inline command (see gnutls_cli.py)."""
    return b"".join(_ROWS[(seed * 7 + q) % 251] for q in range(n // 251 + 1))[:n]


def echo_verdict(sent, reply_body):
    """('intact' or what differs, the reply's payload length) for the gRPC
    body of an EchoReply answering an EchoRequest with payload `sent`."""
    msgs = grpc_messages(reply_body)
    if len(msgs) != 1:
        return f"{len(msgs)} gRPC messages in the reply", 0
    got = proto_fields(msgs[0]).get(1, b"")
    if got == sent:
        return "intact", len(got)
    if len(got) != len(sent):
        return f"length {len(got)}, sent {len(sent)}", len(got)
    first = next(k for k in range(len(got)) if got[k] != sent[k])
    return f"differs from byte {first} of {len(sent)}", len(got)


# ------------------------------------------------------------------ transports

class Transport:
    """A plaintext byte pipe. write_some takes what it can without blocking
    (0 if nothing); read_some returns bytes, None when nothing is there yet,
    b"" at the end of the stream."""

    def fds(self):
        raise NotImplementedError

    def buffered(self):
        return False

    def write_some(self, data):
        raise NotImplementedError

    def read_some(self):
        raise NotImplementedError

    def on_queue(self, data, raw):
        """Called with every chunk the client queues, in order; raw chunks are
        not HTTP/2 (a transport's own commands)."""

    def describe(self):
        return ""


# ------------------------------------------------------------------ the client

class Call:
    def __init__(self, stream_id, body, send_window):
        self.stream_id = stream_id
        self.body = body  # what is left to send
        self.send_window = send_window
        self.headers = None
        self.trailers = None
        self.data = bytearray()
        self.ended = False  # END_STREAM received
        self.reset = None  # RST_STREAM error code

    @property
    def done(self):
        return self.ended or self.reset is not None

    def header(self, name, fields=None):
        for n, v in (fields if fields is not None else (self.headers or [])):
            if n == name:
                return v
        return None

    def grpc_status(self):
        for fields in (self.trailers, self.headers):
            v = self.header("grpc-status", fields or [])
            if v is not None:
                return v
        return None


class H2Client:
    def __init__(self, transport, authority="localhost"):
        self.t = transport
        self.authority = authority
        self.new_connection()

    def new_connection(self):
        """Fresh connection state, preface queued. Called again on the same
        transport when it has reconnected (gnutls-cli's ^resume^)."""
        self.inbuf = bytearray()
        self.out = bytearray()
        self.decoder = HpackDecoder()
        self.next_stream = 1
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = 16384
        self.conn_send_window = DEFAULT_WINDOW
        self.calls = {}
        self.sending = []  # calls with body left, in order
        self.pings_acked = []
        self.goaway = None
        self.settings_acked = False
        self.block = None  # (call, flags, bytearray) while CONTINUATION frames are due
        self.frames_in = {}
        self.eof = False
        settings = struct.pack(">HI", SETTINGS_ENABLE_PUSH, 0) + struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE,
                                                                             MAX_WINDOW)
        self._queue(PREFACE + frame(SETTINGS, 0, 0, settings) +
                    frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)))

    # -- sending

    def _queue(self, data, raw=False):
        self.t.on_queue(data, raw)
        self.out += data

    def send_raw(self, data):
        """Bytes for the transport itself, after everything queued so far."""
        self._queue(data, raw=True)

    def start_call(self, path, message):
        sid = self.next_stream
        self.next_stream += 2
        block = b"".join(hpack_literal(n, v) for n, v in [
            (":method", "POST"), (":scheme", "https"), (":path", path), (":authority", self.authority),
            ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "tlsgate-interop-h2raw"),
        ])
        self._queue(frame(HEADERS, END_HEADERS, sid, block))
        call = Call(sid, memoryview(grpc_frame(message)), self.peer_initial_window)
        self.calls[sid] = call
        self.sending.append(call)
        return call

    def _fill(self):
        # DATA within the server's windows; at most ~256 KiB queued at a time.
        for call in list(self.sending):
            while len(call.body) and len(self.out) < 262144:
                n = min(len(call.body), self.conn_send_window, call.send_window, self.peer_max_frame)
                if n <= 0:
                    break
                last = n == len(call.body)
                self._queue(frame(DATA, END_STREAM if last else 0, call.stream_id, bytes(call.body[:n])))
                call.body = call.body[n:]
                self.conn_send_window -= n
                call.send_window -= n
            if not len(call.body):
                self.sending.remove(call)

    def ping(self, data, deadline):
        """PING with 8 bytes; returns when the server's ACK with them is in."""
        if len(data) != 8:
            raise ValueError("PING data is 8 bytes")
        self._queue(frame(PING, 0, 0, data))
        self.pump(lambda: data in self.pings_acked, deadline, f"the ACK of PING {data!r}")

    def flush(self, deadline):
        self.pump(lambda: not self.out, deadline, "the transport to take what was queued")

    # -- receiving

    def _on_frame(self, ftype, flags, sid, payload):
        name = FRAME_NAMES[ftype] if ftype < len(FRAME_NAMES) else f"type{ftype}"
        self.frames_in[name] = self.frames_in.get(name, 0) + 1
        if self.block is not None and ftype != CONTINUATION:
            raise H2Error(f"{name} frame while a header block waits for CONTINUATION")
        if ftype in (DATA, HEADERS) and flags & PADDED:
            pad = payload[0]
            payload = payload[1:len(payload) - pad]
        if ftype == DATA:
            call = self._call(sid, name)
            call.data += payload
            if flags & END_STREAM:
                call.ended = True
        elif ftype == HEADERS:
            call = self._call(sid, name)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self.block = (call, flags, bytearray(payload))
            if flags & END_HEADERS:
                self._end_block()
        elif ftype == CONTINUATION:
            if self.block is None or self.block[0].stream_id != sid:
                raise H2Error(f"CONTINUATION on stream {sid} without its HEADERS")
            self.block[2].extend(payload)
            if flags & END_HEADERS:
                self._end_block()
        elif ftype == RST_STREAM:
            self._call(sid, name).reset = struct.unpack(">I", payload)[0]
        elif ftype == SETTINGS:
            if flags & ACK:
                self.settings_acked = True
                return
            for k in range(0, len(payload), 6):
                key, value = struct.unpack(">HI", payload[k:k + 6])
                if key == SETTINGS_INITIAL_WINDOW_SIZE:
                    for call in self.calls.values():
                        call.send_window += value - self.peer_initial_window
                    self.peer_initial_window = value
                elif key == SETTINGS_MAX_FRAME_SIZE:
                    self.peer_max_frame = value
            self._queue(frame(SETTINGS, ACK, 0))
        elif ftype == PING:
            if flags & ACK:
                self.pings_acked.append(payload)
            else:
                self._queue(frame(PING, ACK, 0, payload))
        elif ftype == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            self.goaway = (last & 0x7FFFFFFF, code, payload[8:])
        elif ftype == WINDOW_UPDATE:
            inc = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
            if sid == 0:
                self.conn_send_window += inc
            elif sid in self.calls:
                self.calls[sid].send_window += inc
        elif ftype == PUSH_PROMISE:
            raise H2Error("PUSH_PROMISE although SETTINGS_ENABLE_PUSH is 0")

    def _call(self, sid, what):
        if sid not in self.calls:
            raise H2Error(f"{what} on stream {sid}, which this client never opened")
        return self.calls[sid]

    def _end_block(self):
        call, flags, block = self.block
        self.block = None
        fields = self.decoder.decode(block)
        if call.headers is None:
            call.headers = fields
        else:
            call.trailers = fields
        if flags & END_STREAM:
            call.ended = True

    def _parse(self):
        while len(self.inbuf) >= 9:
            length = int.from_bytes(self.inbuf[0:3], "big")
            if length > MAX_FRAME:
                raise H2Error(f"frame of {length} bytes, above SETTINGS_MAX_FRAME_SIZE {MAX_FRAME}")
            if len(self.inbuf) < 9 + length:
                return
            ftype, flags = self.inbuf[3], self.inbuf[4]
            sid = int.from_bytes(self.inbuf[5:9], "big") & 0x7FFFFFFF
            payload = bytes(self.inbuf[9:9 + length])
            del self.inbuf[:9 + length]
            self._on_frame(ftype, flags, sid, payload)

    # -- the loop

    def pump(self, until, deadline, what):
        """Moves bytes both ways until until() holds; H2Error at the deadline,
        on the end of the stream, or on a GOAWAY with an error."""
        while True:
            self._fill()
            if until():
                return
            if self.goaway and self.goaway[1] != 0:
                raise H2Error(f"GOAWAY error {self.goaway[1]} {self.goaway[2]!r} while waiting for {what}")
            if self.eof:
                raise H2Error(f"end of stream while waiting for {what}; {self.describe()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise H2Error(f"timed out waiting for {what}; {self.describe()}")
            rfd, wfd = self.t.fds()
            if self.t.buffered():
                readable, writable = True, bool(self.out)
            else:
                r, w, _ = select.select([rfd], [wfd] if self.out else [], [], min(left, 0.2))
                readable, writable = bool(r), bool(w)
            if writable:
                n = self.t.write_some(bytes(self.out[:65536]))
                del self.out[:n]
            if readable:
                data = self.t.read_some()
                if data == b"":
                    self.eof = True
                elif data:
                    self.inbuf += data
                    self._parse()

    def unary(self, path, message, deadline):
        call = self.start_call(path, message)
        self.pump(lambda: call.done, deadline, f"stream {call.stream_id} to end")
        return call

    def describe(self):
        s = (f"frames in {self.frames_in}, {len(self.out)} bytes not yet written, "
             f"{len(self.inbuf)} unparsed, send windows conn {self.conn_send_window}")
        if self.goaway:
            s += f", GOAWAY {self.goaway}"
        extra = self.t.describe()
        return s + ("; " + extra if extra else "")


def call_facts(prefix, call, sent):
    """Fact lines (name, value) a user would check about one echo call."""
    try:
        verdict, down = echo_verdict(sent, call.data)
    except H2Error as e:
        verdict, down = f"unparsable: {e}", 0
    return [(f"{prefix}.status", call.header(":status") or "<none>"),
            (f"{prefix}.grpc_status", call.grpc_status() or "<none>"),
            (f"{prefix}.reset", "none" if call.reset is None else str(call.reset)),
            (f"{prefix}.payload_up", str(len(sent))),
            (f"{prefix}.payload_down", str(down)),
            (f"{prefix}.echo", verdict)]
