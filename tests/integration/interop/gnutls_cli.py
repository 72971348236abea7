#!/usr/bin/python3
"""GnuTLS as tlsgate's client: gnutls-cli carries HTTP/2 made by h2raw.py.

    /usr/bin/python3 gnutls_cli.py --port PORT --ca CA --dir DIR --scenario NAME [--priority STR]

gnutls-cli shakes hands, then copies its stdin into TLS records and writes what
it decrypts to stdout. --logfile takes its informational lines (version and
cipher, "*** This is a resumed session", "- Rekey was completed") off stdout,
which then carries only the server's bytes. With --inline-commands a line
"^rekey^" makes it send KeyUpdate(update_requested), "^rekey1^"
KeyUpdate(update_not_requested), and "^resume^" close the connection and
connect again offering the session's ticket.

A command counts only at the start of a line, so the byte sent before it must
be "\\n": the driver first sends a PING whose 8 bytes end in "\\n" and waits
for the ACK (which also shows every earlier byte went through). HTTP/2 bytes
holding "\\n^" would be taken for a command; the driver refuses to send them.

gnutls-cli runs with -d 4: its stderr then has "received TLS 1.3 key update
(0)" for each KeyUpdate the server sends, the proof that tlsgate answered a
requested update (nothing else would show it: a client that asked keeps
decrypting with its old keys until the server's KeyUpdate arrives).

Scenarios:
  transfer   one connection: a 1 MiB echo (1 MiB each way), then a small one
  resume     a call; ^resume^; a call on the resumed connection
  keyupdate  a call, then ^rekey^, a 1 MiB echo, ^rekey1^, a call, ^rekey^,
             a 256 KiB echo, a PING: all on one connection

Prints facts, one "name value" per line, which the C++ test checks
(interop_test.cc). Exits 1 with the reason on stderr if the exchange broke,
2 if gnutls-cli is missing.
"""

import argparse
import ctypes
import os
import re
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h2raw  # noqa: E402

ECHO = "/tlsgate.test.Echo/Unary"
MIB = 1 << 20


def die_with_parent():
    # PR_SET_PDEATHSIG: gnutls-cli must not outlive a driver that was killed.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class GnutlsCli(h2raw.Transport):
    def __init__(self, argv, workdir):
        self.log = workdir / "gnutls-cli.log"
        self.err = workdir / "gnutls-cli.stderr"
        self.argv = argv + ["--logfile", str(self.log)]
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         preexec_fn=die_with_parent)
        os.set_blocking(self.proc.stdin.fileno(), False)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.last = b"\n"  # gnutls-cli starts at the start of a line

    def fds(self):
        return self.proc.stdout.fileno(), self.proc.stdin.fileno()

    def write_some(self, data):
        try:
            return os.write(self.proc.stdin.fileno(), data)
        except BlockingIOError:
            return 0
        except BrokenPipeError:
            raise h2raw.H2Error("gnutls-cli stopped reading its stdin; " + self.describe())

    def read_some(self):
        try:
            return os.read(self.proc.stdout.fileno(), 1 << 18)
        except BlockingIOError:
            return None

    def on_queue(self, data, raw):
        if raw:
            if self.last != b"\n":
                raise h2raw.H2Error(f"inline command {data!r} not at the start of a line")
        elif b"\n^" in data or (self.last == b"\n" and data[:1] == b"^"):
            raise h2raw.H2Error("HTTP/2 bytes hold \"\\n^\", which gnutls-cli would take for an inline command")
        self.last = data[-1:]

    def finish(self, timeout):
        """Closes stdin (gnutls-cli sends close_notify) and waits for the exit;
        the exit code, or None if it had to be killed."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read_some()  # never let a full stdout pipe block it
            time.sleep(0.01)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            return None
        return self.proc.returncode

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stderr_text(self):
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def describe(self):
        status = "running" if self.proc.poll() is None else f"exit code {self.proc.returncode}"
        errors = [l for l in self.stderr_text().splitlines() if not l.startswith("|<")]
        return (f"gnutls-cli {status}; its log ends:\n" + "\n".join(self.log_text().splitlines()[-8:]) +
                "\nits stderr (debug lines left out) ends:\n" + "\n".join(errors[-8:]))


def connection_facts(log):
    """Per connection, from gnutls-cli's log: version, cipher, ALPN, resumed."""
    conns = []
    for line in log.splitlines():
        m = re.match(r"- Description: \(([^)]*)\).*\(([^)]*)\)\s*$", line)
        if m:
            conns.append({"version": m.group(1).split("-")[0], "cipher": m.group(2), "alpn": "<none>",
                          "resumed": "no"})
        elif conns and line.startswith("- Application protocol: "):
            conns[-1]["alpn"] = line.split(": ", 1)[1].strip()
        elif conns and line.startswith("*** This is a resumed session"):
            conns[-1]["resumed"] = "yes"
    return [(f"conn{k + 1}.{key}", value) for k, c in enumerate(conns) for key, value in c.items()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--scenario", choices=["transfer", "resume", "keyupdate"], required=True)
    ap.add_argument("--priority", default="NORMAL")
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()

    exe = shutil.which("gnutls-cli")
    if not exe:
        print("gnutls-cli not found: install Debian's gnutls-bin (tools/deps does)", file=sys.stderr)
        return 2
    workdir = Path(args.dir)
    workdir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.timeout
    cli = GnutlsCli([exe, "-d", "4", "--inline-commands", "--x509cafile", args.ca, "--alpn", "h2",
                     "--sni-hostname", "localhost", "--verify-hostname", "localhost",
                     "--priority", args.priority, "-p", str(args.port), "127.0.0.1"], workdir)
    facts = []
    h2 = h2raw.H2Client(cli)
    n = 0

    def call(size, seed):
        nonlocal n
        n += 1
        payload = h2raw.pattern(size, seed)
        c = h2.unary(ECHO, h2raw.echo_request(payload), deadline)
        facts.extend(h2raw.call_facts(f"call{n}", c, payload))

    def command(cmd, ping):
        # The PING's last byte, "\n", puts the command at the start of a line.
        h2.ping(ping, deadline)
        h2.send_raw(cmd)
        h2.flush(deadline)

    error = None
    try:
        if args.scenario == "transfer":
            call(MIB, 1)
            call(1000, 2)
        elif args.scenario == "resume":
            call(64 << 10, 1)
            command(b"^resume^\n", b"resume1\n")
            h2.new_connection()
            call(64 << 10, 2)
        else:
            call(64 << 10, 1)
            command(b"^rekey^\n", b"rekey-1\n")
            call(MIB, 2)
            command(b"^rekey1^\n", b"rekey-2\n")
            call(64 << 10, 3)
            command(b"^rekey^\n", b"rekey-3\n")
            call(256 << 10, 4)
            h2.ping(b"final-0\n", deadline)
            facts.append(("ping_after_last_update", "acked"))
    except h2raw.H2Error as e:
        error = str(e)
    code = cli.finish(max(5.0, deadline - time.monotonic()))
    log, err = cli.log_text(), cli.stderr_text()
    facts += connection_facts(log)
    facts.append(("key_updates.sent", str(log.count("- Rekey was completed"))))
    facts.append(("key_updates.received_not_requested", str(err.count("received TLS 1.3 key update (0)"))))
    facts.append(("key_updates.received_requested", str(err.count("received TLS 1.3 key update (1)"))))
    facts.append(("gnutls_cli.exit", "killed" if code is None else str(code)))
    for name, value in facts:
        print(f"{name} {value}")
    if error:
        print(f"gnutls_cli.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
