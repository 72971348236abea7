#!/usr/bin/python3
"""grpcio (Debian's python3-grpcio) as tlsgate's client.

    /usr/bin/python3 grpcio_client.py --port PORT --ca CA [--big N] [--small N]

gRPC core's own HTTP/2 and its TLS wrapper (TSI over OpenSSL in Debian's
build): another client than grpc++'s tests only in the language binding, but
not the code path of openssl s_client or CPython's ssl. One secure channel
with the test CA; on it, `big` unary calls of 1 MiB each way one after the
other, then `small` small calls in flight together. Calls go through the
generic API (bytes in, bytes out), the messages built by h2raw.py, so no
generated code is needed. grpcio cannot send a KeyUpdate (no API for it).

Prints facts, one "name value" per line, which the C++ test checks
(interop_test.cc); exits 1 with the reason on stderr if a call broke.
"""

import argparse
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h2raw  # noqa: E402

ECHO = "/tlsgate.test.Echo/Unary"
MIB = 1 << 20


def verdict(sent, reply):
    got = h2raw.proto_fields(reply).get(1, b"")
    if got == sent:
        return "intact"
    return f"length {len(got)}, sent {len(sent)}" if len(got) != len(sent) else "differs"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--big", type=int, default=8)
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()

    creds = grpc.ssl_channel_credentials(root_certificates=Path(args.ca).read_bytes())
    options = [("grpc.ssl_target_name_override", "localhost"), ("grpc.use_local_subchannel_pool", 1),
               ("grpc.max_receive_message_length", 16 * MIB), ("grpc.max_send_message_length", 16 * MIB)]
    facts, error = [], None
    with grpc.secure_channel(f"127.0.0.1:{args.port}", creds, options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
            facts.append(("channel", "ready"))
            unary = channel.unary_unary(ECHO)
            # One after the other: each 1 MiB each way.
            verdicts = {}
            for k in range(args.big):
                payload = h2raw.pattern(MIB, k)
                v = verdict(payload, unary(h2raw.echo_request(payload), timeout=args.timeout))
                verdicts[v] = verdicts.get(v, 0) + 1
            facts.append(("big.calls", str(args.big)))
            facts += [(f"big.echo.{v.replace(' ', '_')}", str(c)) for v, c in sorted(verdicts.items())]
            # Together: many streams on the one connection at once.
            payloads = [f"small-{k}".encode() * 100 for k in range(args.small)]
            futures = [unary.future(h2raw.echo_request(p), timeout=args.timeout) for p in payloads]
            verdicts = {}
            for p, f in zip(payloads, futures):
                v = verdict(p, f.result())
                verdicts[v] = verdicts.get(v, 0) + 1
            facts.append(("small.calls", str(args.small)))
            facts += [(f"small.echo.{v.replace(' ', '_')}", str(c)) for v, c in sorted(verdicts.items())]
        except grpc.RpcError as e:
            error = f"RPC failed: {e.code()} {e.details()}"
        except grpc.FutureTimeoutError:
            error = "the channel did not become ready within 10 s"
    for name, value in facts:
        print(f"{name} {value}")
    if error:
        print(f"grpcio_client.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
