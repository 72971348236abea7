#!/usr/bin/env python3
"""End-to-end benchmark: tlsgate against nginx, HAProxy and nghttpx.

Run through tools/bench-e2e (which installs and builds first). Every proxy runs
one worker pinned to CPU 0 with the same certificate, TLS 1.3 only, ALPN h2, in
front of the same fast h2c gRPC backend (tools/fastbackend/fastbackend); the
load generators (h2load; tools/load/tlsgate-load where h2load cannot do the
job) and the backend run pinned to CPU 1. Each measurement is repeated and the
median reported; the proxies are measured in turn inside each repetition, so
slow drift of the machine hits all of them alike.

Figures (bench/README.md explains each):
  1. new connections: one TLS 1.3 handshake + one unary gRPC call each, with
     ECDSA P-256 and RSA-2048 certificates (h2load) and with resumed sessions
     (tlsgate-load: h2load cannot resume); raw per second and per proxy
     core-second (the proxy's utime+stime from /proc/PID/stat, all its
     processes and threads).
  2. unary calls over persistent connections, 8 connections x 32 streams.
  3. latency (mean, p99) at one fixed request rate below every proxy's
     saturation.
  4. memory per idle TLS h2 connection (RSS growth, fresh proxy).
  5. CPU per call: user-space instructions per call (callgrind) and CPU time.
"""

import argparse
import base64
import ctypes
import datetime
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROXY_CPU = "0"
LOAD_CPU = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CIPHER = "TLS_AES_256_GCM_SHA384"  # the one TLS 1.3 suite every client offers
GRPC_PATH = "/bench.Echo/Unary"
PROXIES = ["tlsgate", "nginx", "haproxy", "nghttpx"]
LABEL = {"tlsgate": "tlsgate", "baseline": "tlsgate baseline", "nginx": "nginx", "haproxy": "HAProxy",
         "nghttpx": "nghttpx", "direct": "no proxy (h2c straight at the backend)"}
# Not a peer: another tlsgate binary (--baseline) measured in the same run.
NOT_PEERS = ("tlsgate", "baseline")

# Loads per mode. Every load is bounded by a count (-n, --connections) or a
# duration (-D, --hold-time) and by a subprocess timeout.
TESTS = ["conn", "tput", "respond", "latency", "memory", "callgrind"]

MODES = {
    "quick": dict(reps=3, burst=400, burst_rsa=200, resumed=800, tput_secs=2, lat_secs=2,
                  idle=1000, mem_reps=1, speed_secs=1, ceiling_secs=2, cg_calls=0),
    "full": dict(reps=5, burst=1200, burst_rsa=500, resumed=2000, tput_secs=4, lat_secs=4,
                 idle=5000, mem_reps=2, speed_secs=3, ceiling_secs=4, cg_calls=10000),
}


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup():
    # If the harness dies (even by SIGKILL), its children get SIGTERM: the
    # proxies' masters then stop their workers themselves.
    _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Procs:
    """Every process the harness starts; all are stopped at exit."""

    def __init__(self, work):
        self.work = work
        self.procs = []

    def start(self, name, argv, cpu, stdout=None, cwd=None):
        log = open(self.work / f"{name}.log", "ab")
        p = subprocess.Popen(["taskset", "-c", cpu] + [str(a) for a in argv], stdout=stdout or log,
                             stderr=log, stdin=subprocess.DEVNULL, preexec_fn=_child_setup,
                             cwd=cwd or self.work)
        p.bench_name = name
        p.bench_log = self.work / f"{name}.log"
        self.procs.append(p)
        return p

    def stop(self, p, timeout=8):
        if p.poll() is None:
            family = tree_pids(p.pid)
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            # Descendants (a master's workers) that outlived their master.
            for pid in family:
                if pid != p.pid and pid_alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(reversed(self.procs)):
            try:
                self.stop(p)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False


def tree_pids(root):
    """root and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root):
    """utime + stime of root and its descendants (all threads), seconds."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def rss_kib(root):
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def listening_ports():
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


_used_ports = set()


def free_port():
    """A port below the ephemeral range, free now (probed with bind)."""
    busy = listening_ports() | _used_ports
    for _ in range(2000):
        port = random.randint(20000, 32000)
        if port in busy:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _used_ports.add(port)
        return port
    raise BenchError("no free port found")


def wait_listening(p, ports, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if p.poll() is not None:
            raise BenchError(f"{p.bench_name} exited with {p.returncode} at start:\n{tail(p.bench_log)}")
        if set(ports) <= listening_ports():
            return
        time.sleep(0.05)
    raise BenchError(f"{p.bench_name} not listening on {ports} after {timeout}s:\n{tail(p.bench_log)}")


def tail(path, n=15):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_load(procs, name, argv, timeout, on_line=None):
    """Runs a load generator on LOAD_CPU; returns (stdout text, its CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen(["taskset", "-c", LOAD_CPU] + [str(a) for a in argv], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                         preexec_fn=_child_setup, cwd=procs.work)
    p.bench_name = name
    p.bench_log = None
    procs.procs.append(p)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if on_line:
                on_line(line.rstrip("\n"), p)
        p.wait()
    finally:
        timer.cancel()
        procs.procs.remove(p)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = "".join(lines)
    with open(procs.work / "loads.log", "a") as f:
        f.write(f"$ {' '.join(str(a) for a in argv)}\n{out}\n")
    if p.returncode == -signal.SIGKILL:
        raise BenchError(f"{name} did not finish within {timeout}s: {' '.join(map(str, argv))}\n{out[-2000:]}")
    return out, cpu


# ---------------------------------------------------------------- parsing

def parse_h2load(out):
    r = {}
    m = re.search(r"finished in ([\d.]+)(m?s),", out)
    if m:
        r["secs"] = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    if m:
        for k, v in zip(["total", "started", "done", "succeeded", "failed", "errored", "timeout"], m.groups()):
            r[k] = int(v)
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["2xx"], r["3xx"], r["4xx"], r["5xx"] = map(int, m.groups())
    m = re.search(r"Cipher: (\S+)", out)
    r["cipher"] = m.group(1) if m else "?"
    if "secs" not in r or "succeeded" not in r:
        raise BenchError("cannot parse h2load output:\n" + out[-2000:])
    return r


def load_argv(env, port, *args, sni=()):
    """tlsgate-load on one thread (it runs pinned to LOAD_CPU), every call
    the benchmark's message, TLS as the other clients offer it."""
    return [env.load, "--target", f"127.0.0.1:{port}", "--path", GRPC_PATH, "--threads", 1,
            "--data", env.msg, "--tls13-ciphers", CIPHER, *sni, *args]


def load_report(out):
    """tlsgate-load --json's report: the last line of its output."""
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError("cannot parse tlsgate-load's report:\n" + out[-2000:])


# ---------------------------------------------------------------- proxies

class Env:
    def __init__(self, args, work, procs):
        self.args = args
        self.work = work
        self.procs = procs
        self.build = Path(args.build_dir)
        self.tlsgate = self.build / "src" / "tlsgate"
        self.baseline = Path(args.baseline) if args.baseline else None
        self.fastbackend = self.build / "tools" / "fastbackend" / "fastbackend"
        self.load = self.build / "tools" / "load" / "tlsgate-load"
        self.echo_client = self.build / "tools" / "echo" / "echo_client"
        self.certs = work / "certs"
        self.msg = work / "msg.bin"
        self.backend_port = None
        self.backend = None
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    def start_backend(self):
        """The backend every proxy forwards to, on CPU 1 with the load."""
        if self.backend_port is None:
            self.backend_port = free_port()
        self.backend = self.procs.start("fastbackend", [self.fastbackend, "--listen",
                                                        f"127.0.0.1:{self.backend_port}"], LOAD_CPU)
        wait_listening(self.backend, [self.backend_port])

    def cert(self, kind):
        pre = "server" if kind == "ecdsa" else "rsa-server"
        return self.certs / f"{pre}.crt", self.certs / f"{pre}.key", self.certs / f"{pre}.pem"

    MANY = 100          # certificates on one listener for the memory figure
    MANY_SNI = "host57.fleet.test"

    def many_certs(self):
        """MANY ECDSA certificates signed by the test CA, the first the usual
        server certificate (localhost), then host1..host99.fleet.test; made
        once. Returns [(crt, key)]."""
        d = self.work / "certs-many"
        out = [(self.certs / "server.crt", self.certs / "server.key")]
        if not d.exists():
            d.mkdir()
            ca, ca_key = self.certs / "ca.crt", self.certs / "ca.key"
            script = (f"set -e; umask 077; cd {d}; for i in $(seq 1 {self.MANY - 1}); do "
                      "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out host$i.key 2>/dev/null; "
                      "openssl req -new -key host$i.key -subj /CN=host$i.fleet.test -out host$i.csr; "
                      "printf 'subjectAltName=DNS:host%s.fleet.test\\n' $i > host$i.ext; "
                      f"openssl x509 -req -in host$i.csr -CA {ca} -CAkey {ca_key} -CAcreateserial "
                      "-CAserial ca.srl -days 30 -sha256 -extfile host$i.ext -out host$i.crt 2>/dev/null; "
                      "done")
            subprocess.run(["bash", "-c", script], check=True, capture_output=True)
        out += [(d / f"host{i}.crt", d / f"host{i}.key") for i in range(1, self.MANY)]
        return out


# What the responder figures ask each proxy to answer by itself, with no
# backend: "ok" a unary call's success (one empty message, then trailers with
# grpc-status 0), "status" a trailers-only error (grpc-status 12 and a message).
RESPOND_STATUS, RESPOND_MESSAGE = 12, "answered at the proxy"
# The gRPC frame of an empty message: flag 0, length 0.
EMPTY_MESSAGE = b"\x00" * 5


def start_proxy(env, proxy, kind, port, tag, valgrind=None, ticket_keys=None, cert_list=None, respond=None):
    """Starts one instance of `proxy` serving `kind`'s certificate on port.
    valgrind: argv prefix to run it under (single-process mode then).
    ticket_keys: tlsgate only, a ticket_keys file shared with other instances.
    cert_list: tlsgate only, [(crt, key)] served by SNI instead of `kind`'s.
    respond: "ok" or "status": answer every call at the proxy (see RESPOND_*;
    nghttpx cannot: BenchError)."""
    crt, key, pem = env.cert(kind)
    d = env.work / f"{proxy}-{tag}"
    d.mkdir(exist_ok=True)
    bp = env.backend_port
    pre = list(valgrind or [])
    if proxy in ("tlsgate", "baseline"):
        conf = d / "tlsgate.toml"
        certs_toml = "" if cert_list else f'  certificate = "{crt}"\n  private_key = "{key}"'
        cert_entries = "".join(f'[[listeners.tls.certificates]]\ncertificate = "{c}"\nprivate_key = "{k}"\n'
                               for c, k in cert_list or ())
        conf.write_text(f"""workers = 1
[[listeners]]
name = "public"
listen = "127.0.0.1:{port}"
cluster = "{'target' if respond else 'backend'}"
  [listeners.tls]
{certs_toml}
  alpn = ["h2"]
  min_version = "1.3"
{f'  ticket_keys = "{ticket_keys}"' if ticket_keys else ""}
{cert_entries}
[[clusters]]
name = "backend"
endpoints = ["127.0.0.1:{bp}"]
{tlsgate_responder(respond)}""")
        argv = pre + [env.tlsgate if proxy == "tlsgate" else env.baseline, "--config", conf]
    elif proxy == "nginx":
        for sub in ("logs", "tmp"):
            (d / sub).mkdir(exist_ok=True)
        master = "off" if valgrind else "on"
        conns = max(1024, min(30000, env.nofile - 100))
        (d / "nginx.conf").write_text(f"""daemon off;
master_process {master};
worker_processes 1;
worker_cpu_affinity 0001;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections {conns}; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  http2_max_concurrent_streams 1000;
  upstream backend {{
    server 127.0.0.1:{bp};
    keepalive 1024;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{port} ssl http2 backlog=4096;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    location / {{ {nginx_location(respond)} }}
  }}
}}
""".replace("@EMPTY_MESSAGE@", "\0" * 5))
        argv = pre + ["nginx", "-p", d, "-c", d / "nginx.conf", "-e", d / "logs" / "error.log"]
    elif proxy == "haproxy":
        maxconn = max(1000, min(20000, (env.nofile - 200) // 2))
        (d / "haproxy.cfg").write_text(f"""global
  nbthread 1
  cpu-map 1/1 0
  maxconn {maxconn}
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend fe
  bind 127.0.0.1:{port} ssl crt {pem} alpn h2 ssl-min-ver TLSv1.3 backlog 4096
{haproxy_frontend(respond)}
backend be
  http-reuse always
  server s1 127.0.0.1:{bp} proto h2
""")
        argv = pre + ["haproxy", "-db", "-f", d / "haproxy.cfg"]
    elif proxy == "nghttpx":
        if respond:
            raise CannotRespond("nghttpx cannot answer calls itself (Debian builds it without mruby)")
        argv = pre + ["nghttpx", "--conf=/dev/null", "--workers=1", "--no-ocsp", "--no-via",
                      f"--frontend=127.0.0.1,{port}", f"--backend=127.0.0.1,{bp};;proto=h2",
                      "--backlog=4096", "--frontend-http2-max-concurrent-streams=1000",
                      f"--errorlog-file={d}/error.log", key, crt]
        if valgrind:
            argv.insert(len(pre) + 1, "--single-process")
    else:
        raise BenchError(proxy)
    p = env.procs.start(f"{proxy}-{tag}", argv, PROXY_CPU, cwd=d)
    wait_listening(p, [port], timeout=90 if valgrind else 20)
    p.bench_port = port
    p.bench_proxy = proxy
    return p


def tlsgate_responder(respond):
    if not respond:
        return ""
    if respond == "ok":
        return '[[clusters]]\nname = "target"\nrespond = "status"\n'
    return (f'[[clusters]]\nname = "target"\nrespond = "status"\nstatus = {RESPOND_STATUS}\n'
            f'message = "{RESPOND_MESSAGE}"\n')


def nginx_location(respond):
    """nginx's `return` with a body and add_trailer is a valid gRPC success
    (grpc++ accepts it; without the trailer it reports UNKNOWN "Stream
    removed"). The body holds NUL bytes, written raw into the file: nginx's
    configuration strings are counted, not NUL-terminated."""
    if not respond:
        return "grpc_pass grpc://backend;"
    if respond == "ok":
        return 'default_type application/grpc; add_trailer grpc-status 0; return 200 "@EMPTY_MESSAGE@";'
    return (f'default_type application/grpc; add_header grpc-status {RESPOND_STATUS} always; '
            f'add_header grpc-message "{RESPOND_MESSAGE}" always; return 200;')


def haproxy_frontend(respond):
    """HAProxy 2.6's `http-request return` sends no trailers: it can give a
    trailers-only error but no unary success (with a body grpc++ reports
    UNKNOWN "Stream removed", without one UNIMPLEMENTED "No message returned")."""
    if not respond:
        return "  default_backend be"
    if respond == "ok":
        raise CannotRespond("HAProxy cannot answer a unary gRPC call with success itself (no trailers)")
    # `content-type` is ignored without a body: the header is set with hdr.
    return (f"  http-request return status 200 hdr content-type application/grpc hdr grpc-status {RESPOND_STATUS} "
            f"hdr grpc-message \"{RESPOND_MESSAGE}\"")


class CannotRespond(BenchError):
    """The proxy has no way to give that answer by itself."""


class ProxyDied(BenchError):
    def __init__(self, p, what):
        rc = p.returncode
        how = f"was killed by signal {-rc} ({signal.Signals(-rc).name})" if rc < 0 else f"exited with {rc}"
        super().__init__(f"{p.bench_name} {how} during {what}; its log ends:\n{tail(p.bench_log)}")
        self.proc = p


def check_alive(p, what):
    if p.poll() is not None:
        raise ProxyDied(p, what)


# ---------------------------------------------------------------- measurements

H2LOAD_GRPC = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


class Bench:
    def __init__(self, env, mode):
        self.env = env
        self.m = mode
        self.res = {}          # (figure, proxy) -> list of values
        self.rounds = {}       # (figure, proxy) -> round of each value in res (same length)
        self.round = 0         # the round being measured: its values are compared with each other
        self.anomalies = []    # text lines: what went wrong in the proxies
        self.harness = []      # text lines: what went wrong around them
        self.inst = {}         # (proxy, kind) -> running instance
        self.fleet = None      # (A, B): two tlsgate instances sharing a ticket_keys file
        self.info = {}         # misc facts for the notes

    def add(self, fig, proxy, value):
        self.res.setdefault((fig, proxy), []).append(value)
        self.rounds.setdefault((fig, proxy), []).append(self.round)

    def drop_since(self, snap):
        """Forgets the values added since snap ({key: count}): a rerun replaces them."""
        for k in list(self.res):
            del self.res[k][snap.get(k, 0):]
            del self.rounds[k][snap.get(k, 0):]

    def paired(self, fig, higher, against=None):
        """tlsgate's value ÷ the best peer's (or `against`'s) in the same round,
        for each round where both were measured. Rounds are minutes apart and this host's
        speed drifts over minutes, so comparing within a round removes the
        drift that a ratio of medians over all rounds keeps."""
        def by_round(proxy):
            return dict(zip(self.rounds.get((fig, proxy), []), self.res.get((fig, proxy), [])))
        others = [by_round(p) for p in PROXIES if ((p == against) if against else (p not in NOT_PEERS))]
        out = []
        for rnd, v in sorted(by_round("tlsgate").items()):
            peers = [o[rnd] for o in others if o.get(rnd) is not None and o[rnd] == o[rnd]]
            if peers and v == v and v:
                best = max(peers) if higher else min(peers)
                out.append(v / best if best else float("nan"))
        return out

    def med(self, fig, proxy):
        v = self.res.get((fig, proxy))
        return statistics.median(v) if v else None

    def anomaly(self, text):
        print(f"  ! {text}", file=sys.stderr)
        self.anomalies.append(text)

    def guarded(self, what, fn, *args):
        """Runs one measurement; if the backend stopped meanwhile (on this
        shared machine a stray signal from another process has hit it), its
        figures are dropped, the backend restarted and the measurement rerun."""
        for attempt in range(3):
            snap = {k: len(v) for k, v in self.res.items()}
            n_anom = len(self.anomalies)
            try:
                fn(*args)
            except ProxyDied as e:
                # A crash is the most important thing a run can find: report it
                # in full, start that instance again, and go on.
                self.drop_since(snap)
                self.anomaly(f"CRASH: {e}".replace("\n", "\n  "))
                for key, q in self.inst.items():
                    if q is e.proc:
                        self.env.procs.stop(q)
                        kind, respond = key[1], None
                        if kind.startswith("respond-"):
                            kind, respond = "ecdsa", kind[len("respond-"):]
                        self.inst[key] = start_proxy(self.env, key[0], kind, free_port(), key[1], respond=respond)
                continue
            if self.env.backend.poll() is None:
                return
            cause = tail(self.env.backend.bench_log, 1)
            m = re.search(r"from pid (\d+)", cause)
            if m:
                try:
                    cmd = Path(f"/proc/{m.group(1)}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    cause += f" [pid {m.group(1)} is now: {cmd.strip() or '?'}]"
                except OSError:
                    cause += f" [pid {m.group(1)} is gone]"
            self.harness.append(f"the backend stopped during {what} (exit {self.env.backend.returncode}; "
                                f"its last words: {cause!r}); that measurement was discarded and rerun")
            print(f"  ! harness: {self.harness[-1]}", file=sys.stderr)
            self.drop_since(snap)
            del self.anomalies[n_anom:]
            self.env.procs.stop(self.env.backend)
            self.env.start_backend()
            time.sleep(1.0)  # let the proxies notice and reconnect on the next call
        raise BenchError(f"the backend kept stopping during {what}")

    def url(self, port):
        return f"https://127.0.0.1:{port}{GRPC_PATH}"

    # -- checks ------------------------------------------------------------
    def verify(self, proxy, p, kind):
        """A few connections, each with one gRPC call whose :status and
        grpc-status tlsgate-load checks, before anything is measured."""
        out, _ = run_load(self.env.procs, "load-verify",
                          load_argv(self.env, p.bench_port, "--rate", "max", "--concurrency", 4,
                                    "--connections-total", 20, "--json"), 60)
        r = load_report(out)
        self.info[f"verify-{proxy}-{kind}"] = {"ok": r["calls"]["ok"], "failed": r["calls"]["failed"],
                                               "cipher": r["handshakes"]["cipher"] or "?",
                                               "group": r["handshakes"]["group"] or "?",
                                               "first_error": r["first_error"]}
        if r["calls"]["ok"] != 20 or not r["ok"]:
            raise BenchError(f"{proxy} ({kind}): calls through it fail: {out.strip()}")

    # -- 1. new connections (h2load) -----------------------------------------
    def conn_burst(self, proxy, kind, n):
        env = self.env
        p = self.inst[(proxy, kind)]
        c0 = cpu_seconds(p.pid)
        out, client_cpu = run_load(env.procs, "h2load-conn",
                                   ["h2load", "-n", n, "-c", n, "-m", 1, "--tls13-ciphers", CIPHER,
                                    *H2LOAD_GRPC, "-d", env.msg, self.url(p.bench_port)], 120)
        c1 = cpu_seconds(p.pid)
        check_alive(p, f"{kind} connection test")
        r = parse_h2load(out)
        ok = r["succeeded"]
        if ok != n or r.get("2xx") != n:
            self.anomaly(f"{LABEL[proxy]}: h2load {n} new {kind} connections, one call each: "
                         f"{ok} succeeded, {r.get('2xx')} 2xx, {r['failed']} failed, {r['errored']} errored, "
                         f"{r['timeout']} timeout (`h2load -n {n} -c {n} ...`)")
        if ok == 0:
            return
        cpu = c1 - c0
        self.add(f"conn_{kind}", proxy, ok / r["secs"])
        self.add(f"conn_{kind}_core", proxy, ok / cpu if cpu > 0 else float("nan"))
        self.add(f"conn_{kind}_util", proxy, cpu / r["secs"])
        self.add(f"conn_{kind}_client_us", proxy, client_cpu / ok * 1e6)

    # -- 1c. resumed connections (tlsgate-load) --------------------------------
    def resumed_load(self, proxy, p, how, n, fig, warmup=0.5):
        """tlsgate-load resuming on instance p (`how`: its resumption
        arguments): a closed loop of 64 connections in flight, a warm-up that
        fills the ticket pool, then n measured connections; p's CPU between
        tlsgate-load's "measuring" and "done" marks (the measured part starts
        once the warm-up's connections have ended). Adds figures <fig>,
        <fig>_core and <fig>_frac (share of handshakes resumed)."""
        env = self.env
        marks = {}

        def on_line(line, _proc):
            if line == '{"mark":"measuring"}':
                marks["c0"] = cpu_seconds(p.pid)
            elif line == '{"mark":"done"}':
                marks["c1"] = cpu_seconds(p.pid)

        argv = load_argv(env, p.bench_port, "--rate", "max", "--concurrency", 64, *how, "--warmup", warmup,
                         "--connections-total", n, "--marks", "--json")
        out, _ = run_load(env.procs, f"load-{fig}", argv, 120, on_line)
        check_alive(p, f"{fig} test")
        r = load_report(out)
        conns, hs = r["connections"], r["handshakes"]
        if conns["failed"] != 0 or conns["ok"] != n or not r["ok"]:
            self.anomaly(f"{LABEL[proxy]}: tlsgate-load {' '.join(map(str, how))}, {n} connections: "
                         f"{conns['ok']} ok, {conns['failed']} failed, errors {r['errors']}, "
                         f"first error {r['first_error']!r}, warm-up {r['warmup']}")
        if hs["resumed"] < 0.95 * n:
            self.anomaly(f"{LABEL[proxy]}: only {hs['resumed']} of {n} handshakes were resumptions "
                         f"(tlsgate-load {' '.join(map(str, how))}, warm-up {warmup} s)")
        if not conns["ok"] or "c0" not in marks or "c1" not in marks:
            return
        cpu = marks["c1"] - marks["c0"]
        self.add(fig, proxy, conns["ok_per_s"])
        self.add(f"{fig}_core", proxy, conns["ok"] / cpu if cpu > 0 else float("nan"))
        self.add(f"{fig}_frac", proxy, hs["resumed"] / n)

    def conn_resumed(self, proxy, n):
        self.resumed_load(proxy, self.inst[(proxy, "ecdsa")], ["--resume"], n, "conn_resumed")

    # -- 1d. resumed on another instance (tlsgate only) --------------------------
    def conn_resumed_cross(self, proxy, n):
        """Tickets instance A sealed, each resumed once on instance B: two
        tlsgate processes sharing a ticket_keys file (issue 19); B's CPU."""
        if proxy != "tlsgate" or not self.fleet:
            return
        a, b = self.fleet
        # The warm-up's full handshakes on A must leave a ticket (one each)
        # for every measured connection: A makes ~1,000 a second here, so
        # n / 400 s leaves a wide margin (fewer would show as full
        # handshakes, an anomaly).
        self.resumed_load(proxy, b, ["--tickets-from", f"127.0.0.1:{a.bench_port}"], n, "conn_resumed_cross",
                          warmup=max(1.0, n / 400))
        check_alive(a, "resumed-across-instances test (instance A)")

    # -- 2. persistent throughput ---------------------------------------------
    def persistent_load(self, proxy, p, what):
        """h2load -D tput_secs, 8 connections x 32 streams at instance p.
        Returns (h2load's figures, succeeded calls, p's CPU seconds, the
        backend's CPU seconds); an anomaly for any call that did not succeed."""
        env = self.env
        secs = self.m["tput_secs"]
        c0, b0 = cpu_seconds(p.pid), cpu_seconds(env.backend.pid)
        out, _ = run_load(env.procs, "h2load-persistent",
                          ["h2load", "-D", secs, "-c", 8, "-m", 32, "--tls13-ciphers", CIPHER,
                           *H2LOAD_GRPC, "-d", env.msg, self.url(p.bench_port)], secs + 60)
        c1, b1 = cpu_seconds(p.pid), cpu_seconds(env.backend.pid)
        check_alive(p, f"{what} test")
        r = parse_h2load(out)
        ok = r["succeeded"]
        # h2load counts a 2xx when the headers arrive and a success when the
        # stream ends, so at the end of -D a few answers in flight are 2xx
        # but not yet successes: 2xx >= succeeded is normal.
        bad = r["failed"] + r["errored"] + r["timeout"] + max(0, ok - r.get("2xx", 0))
        if bad or ok == 0:
            self.anomaly(f"{LABEL[proxy]}, {what}: h2load -D {secs} -c 8 -m 32: {ok} succeeded, {r.get('2xx')} 2xx, "
                         f"{r['failed']} failed, {r['errored']} errored, {r['timeout']} timeout")
        return r, ok, c1 - c0, b1 - b0

    def throughput(self, proxy):
        r, ok, cpu, backend_cpu = self.persistent_load(proxy, self.inst[(proxy, "ecdsa")], "throughput")
        if ok == 0:
            return
        self.add("tput", proxy, ok / r["secs"])
        self.add("tput_us", proxy, cpu / ok * 1e6)
        self.add("tput_util", proxy, cpu / r["secs"])
        self.add("tput_backend_us", proxy, backend_cpu / ok * 1e6)

    # -- 2b. answered at the proxy (responder) ---------------------------------
    def start_responders(self):
        """One instance per proxy and kind of answer it can give by itself,
        each checked with a real gRPC client (grpc++ echo_client) first: the
        answer must be what a gRPC client takes as that status."""
        for proxy in PROXIES:
            for respond in ("ok", "status"):
                try:
                    p = start_proxy(self.env, proxy, "ecdsa", free_port(), f"respond-{respond}", respond=respond)
                except CannotRespond as e:
                    cannot = self.info.setdefault("respond_cannot", [])
                    if str(e) not in cannot:
                        cannot.append(str(e))
                    continue
                self.inst[(proxy, f"respond-{respond}")] = p
                want = "status: 0 OK" if respond == "ok" else f"status: {RESPOND_STATUS} UNIMPLEMENTED"
                o = subprocess.run([str(self.env.echo_client), "--target", f"127.0.0.1:{p.bench_port}",
                                    "--ca", str(self.env.certs / "ca.crt"), "--server-name", "localhost",
                                    "unary", "hello"], capture_output=True, text=True, timeout=30)
                if want not in o.stdout or (respond == "status" and RESPOND_MESSAGE not in o.stdout):
                    raise BenchError(f"{proxy} answering {respond} itself: a gRPC client saw "
                                     f"{(o.stdout + o.stderr).strip()!r}, not {want!r}")

    def responder(self, proxy, respond):
        """The 8 x 32 load at a proxy that answers every call itself: the
        proxy's CPU per call with no backend behind it."""
        p = self.inst.get((proxy, f"respond-{respond}"))
        if p is None:
            return
        r, ok, cpu, _ = self.persistent_load(proxy, p, f"answering {respond} itself")
        if ok == 0:
            return
        self.add(f"respond_{respond}", proxy, ok / r["secs"])
        self.add(f"respond_{respond}_core", proxy, ok / cpu if cpu > 0 else float("nan"))

    # -- 3. latency at a fixed rate -------------------------------------------
    def latency(self, proxy, rate):
        """proxy "direct": h2load h2c straight at the backend, no proxy and no
        TLS: the latency this host gives at that rate with nothing between."""
        env = self.env
        p = None if proxy == "direct" else self.inst[(proxy, "ecdsa")]
        secs = self.m["lat_secs"]
        log = env.work / f"latency-{proxy}.log"
        if log.exists():
            log.unlink()
        target = ([f"http://127.0.0.1:{env.backend_port}{GRPC_PATH}"] if p is None
                  else ["--tls13-ciphers", CIPHER, self.url(p.bench_port)])
        out, _ = run_load(env.procs, "h2load-latency",
                          ["h2load", "-D", secs, "-c", 8, "-m", 32, "--rps", max(1, rate // 8),
                           f"--log-file={log}", *H2LOAD_GRPC, "-d", env.msg, *target], secs + 60)
        if p is not None:
            check_alive(p, "latency test")
        r = parse_h2load(out)
        lat = []
        bad = 0
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                if parts[1] != "200":
                    bad += 1
                lat.append(int(parts[2]))
        if bad or r["failed"] or r["errored"] or r["timeout"]:
            self.anomaly(f"{LABEL[proxy]}: latency run at {rate}/s: {bad} non-200, {r['failed']} failed, "
                         f"{r['errored']} errored, {r['timeout']} timeout")
        if not lat:
            return
        lat.sort()
        self.add("lat_mean", proxy, statistics.fmean(lat) / 1000)
        self.add("lat_p99", proxy, lat[min(len(lat) - 1, int(0.99 * len(lat)))] / 1000)
        self.add("lat_rate", proxy, len(lat) / r["secs"])

    # -- 4. memory per idle connection ----------------------------------------
    def memory(self, proxy, n, many=False):
        """many: tlsgate with Env.MANY certificates, the connections asking
        for one in the middle of the list (figure mem_kib_many)."""
        env = self.env
        if many and proxy != "tlsgate":
            return
        p = start_proxy(env, proxy, "ecdsa", free_port(), "mem-many" if many else "mem",
                        cert_list=env.many_certs() if many else None)
        sni = ["--sni", env.MANY_SNI] if many else []
        fig = "mem_kib_many" if many else "mem_kib"
        try:
            # Warm-up: a few connections and calls (upstream connection,
            # lazily built state), closed again.
            run_load(env.procs, "load-warm",
                     load_argv(env, p.bench_port, "--rate", "max", "--concurrency", 8, "--connections-total", 50,
                               sni=sni), 60)
            time.sleep(1.0)
            rss0 = rss_kib(p.pid)
            marks = {}

            def on_line(line, proc):
                if line.startswith('{"ready"'):
                    time.sleep(2.0)  # let it settle
                    marks["rss1"] = rss_kib(p.pid)
                    marks["ready"] = json.loads(line)["ready"]
                    proc.send_signal(signal.SIGTERM)

            out, _ = run_load(env.procs, "load-hold",
                              load_argv(env, p.bench_port, "--hold", n, "--concurrency", 128, "--duration", 30,
                                        "--json", sni=sni), 240, on_line)
            check_alive(p, "idle-connection test")
            r = load_report(out)
            ready = marks.get("ready", {})
            if ready.get("ok") != n or r["held"]["closed_by_server"]:
                self.anomaly(f"{LABEL[proxy]}: {n} idle connections: ready={ready}, held {r['held']}, "
                             f"errors {r['errors']}, first error {r['first_error']!r}")
            if "rss1" in marks and ready.get("ok"):
                self.add(fig, proxy, (marks["rss1"] - rss0) / ready["ok"])
                self.info.setdefault("mem_rss_many" if many else "mem_rss", {})[proxy] = (rss0, marks["rss1"])
        finally:
            env.procs.stop(p)

    # -- 5. instructions per call (callgrind) ---------------------------------
    def instructions(self, proxy, calls):
        env = self.env
        d = env.work / f"callgrind-{proxy}"
        d.mkdir(exist_ok=True)
        vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out.%p"]
        p = start_proxy(env, proxy, "ecdsa", free_port(), "callgrind", valgrind=vg)
        try:
            def h2load(n):
                out, _ = run_load(env.procs, "h2load-cg",
                                  ["h2load", "-n", n, "-c", 8, "-m", 32, "--tls13-ciphers", CIPHER,
                                   *H2LOAD_GRPC, "-d", env.msg, self.url(p.bench_port)], 600)
                r = parse_h2load(out)
                if r["succeeded"] != n:
                    self.anomaly(f"{LABEL[proxy]} under callgrind: h2load -n {n}: {r['succeeded']} succeeded")
                return r

            def measured(n):
                subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, timeout=60)
                h2load(n)
                before = set(d.glob("cg.out.*"))
                subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, timeout=60)
                deadline = time.time() + 60
                while time.time() < deadline:
                    new = [f for f in set(d.glob("cg.out.*")) - before if f.stat().st_size > 0]
                    if new:
                        time.sleep(0.5)
                        m = re.search(r"^totals:\s*(\d+)", new[0].read_text(errors="replace"), re.M)
                        if m:
                            return int(m.group(1))
                    time.sleep(0.2)
                raise BenchError(f"no callgrind dump from {proxy}")

            h2load(max(1000, calls // 5))  # warm-up
            small, large = calls // 5, calls
            ir_small = measured(small)
            ir_large = measured(large)
            check_alive(p, "callgrind run")
            # The difference cancels the 8 handshakes and the start-up of
            # each h2load run: what is left is the cost of the extra calls.
            self.add("instr", proxy, (ir_large - ir_small) / (large - small))
        finally:
            # Under valgrind 3.19 tlsgate does not act on SIGTERM while its
            # shard sleeps in io_uring_enter (natively it stops at once), so do
            # not wait long; the dumps are already written.
            env.procs.stop(p, timeout=5)


# ---------------------------------------------------------------- ceilings

def crypto_ceiling(env, secs):
    out = subprocess.run(["taskset", "-c", PROXY_CPU, "openssl", "speed", "-seconds", str(secs),
                          "ecdsap256", "ecdhx25519", "rsa2048"], capture_output=True, text=True,
                         timeout=30 * secs + 60, preexec_fn=_child_setup).stdout
    r = {}
    m = re.search(r"rsa 2048 bits\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", out)
    if m:
        r["rsa_sign"] = float(m.group(1))
    m = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", out)
    if m:
        r["ecdsa_sign"] = float(m.group(1))
    m = re.search(r"253 bits ecdh \(X25519\)\s+\S+\s+([\d.]+)", out)
    if m:
        r["x25519"] = float(m.group(1))
    if len(r) != 3:
        raise BenchError("cannot parse openssl speed output:\n" + out)
    r["hs_ecdsa"] = 1 / (1 / r["ecdsa_sign"] + 1 / r["x25519"])
    r["hs_rsa"] = 1 / (1 / r["rsa_sign"] + 1 / r["x25519"])
    return r


def backend_ceiling(env, secs):
    """fastbackend alone on the proxies' core, h2load h2c straight at it."""
    port = free_port()
    p = env.procs.start("fastbackend-alone", [env.fastbackend, "--listen", f"127.0.0.1:{port}"], PROXY_CPU)
    try:
        wait_listening(p, [port])
        c0 = cpu_seconds(p.pid)
        out, _ = run_load(env.procs, "h2load-backend",
                          ["h2load", "-D", secs, "-c", 8, "-m", 32, *H2LOAD_GRPC, "-d", env.msg,
                           f"http://127.0.0.1:{port}{GRPC_PATH}"], secs + 60)
        c1 = cpu_seconds(p.pid)
        r = parse_h2load(out)
        ok = r["succeeded"]
        if ok == 0 or ok != r.get("2xx"):
            raise BenchError("the backend alone fails:\n" + out)
        return {"raw": ok / r["secs"], "core": ok / (c1 - c0) if c1 > c0 else float("nan"),
                "util": (c1 - c0) / r["secs"]}
    finally:
        env.procs.stop(p)


# ---------------------------------------------------------------- report

def rotated(seq, k):
    k %= len(seq)
    return list(seq[k:]) + list(seq[:k])


def fmt(v, digits=0):
    if v is None:
        return "n/m"
    if v != v:  # nan
        return "?"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


# figure key, label, higher-is-better, digits, extra (key, format) in parentheses
ROWS = [
    ("conn_ecdsa", "New connections/s, ECDSA P-256 (h2load; load-generator bound)", True, 0, None),
    ("conn_ecdsa_core", "**Connections per proxy core-second, ECDSA P-256** (proxy CPU µs per connection)",
     True, 0, "inv_us"),
    ("conn_rsa", "New connections/s, RSA-2048 (h2load)", True, 0, None),
    ("conn_rsa_core", "**Connections per proxy core-second, RSA-2048** (µs per connection)", True, 0, "inv_us"),
    ("conn_resumed", "Resumed connections/s, TLS 1.3 PSK-(EC)DHE (tlsgate-load)", True, 0, None),
    ("conn_resumed_core", "**Resumed connections per proxy core-second** (µs per connection)", True, 0,
     "inv_us"),
    ("conn_resumed_cross_core", "**Resumed across two instances**, per proxy core-second (tlsgate only: "
     "tickets of instance A resumed on B, one ticket_keys file; µs per connection)", True, 0, "inv_us"),
    ("tput", "Unary calls/s, 8 connections × 32 streams (h2load)", True, 0, None),
    ("tput_core", "**Calls per proxy core-second** (proxy CPU µs per call)", True, 0, "tput_us"),
    ("respond_ok_core", "**Calls per proxy core-second, responder**: the proxy answers each call itself "
     "(one empty message + trailers grpc-status 0; 8 × 32 streams; µs per call)", True, 0, "inv_us"),
    ("respond_status_core", "Calls per proxy core-second, responder answering a trailers-only grpc-status 12 "
     "(µs per call)", True, 0, "inv_us"),
    ("lat_mean", "Latency at {rate} calls/s: mean, ms", False, 2, None),
    ("lat_p99", "Latency at {rate} calls/s: p99, ms", False, 2, None),
    ("mem_kib", "**Memory per idle TLS h2 connection**, KiB RSS ({idle} connections)", False, 1, None),
    ("mem_kib_many", "Memory per idle connection with 100 certificates on the listener (tlsgate only; "
     "SNI picks the 58th), KiB RSS", False, 1, None),
    ("instr", "**User-space instructions per call** (callgrind, 8 × 32 streams)", False, 0, None),
]


def same_round(bench, key, higher, against=None):
    """The per-round ratios of one figure: median (min–max)."""
    if key == "tput_core":  # derived from the µs per call, lower is better
        rounds = [1 / r for r in bench.paired("tput_us", False, against) if r == r and r]
    else:
        rounds = [r for r in bench.paired(key, higher, against) if r == r]
    if len(rounds) > 1:
        return f"{statistics.median(rounds):.2f} ({min(rounds):.2f}–{max(rounds):.2f})"
    return f"{rounds[0]:.2f}" if rounds else "n/m"


def build_report(bench, env, mode_name, ceil_crypto, ceil_backend, rate, started, machine, versions):
    m = bench.m
    # derived
    for proxy in PROXIES:
        us = bench.med("tput_us", proxy)
        if us:
            bench.res[("tput_core", proxy)] = [1e6 / us]
    lines = []
    lines.append(f"### tlsgate vs nginx, HAProxy, nghttpx — end-to-end (`tools/bench-e2e"
                 f"{' --quick' if mode_name == 'quick' else ''}`)")
    lines.append("")
    lines.append(f"{started:%Y-%m-%d %H:%M} UTC · {machine} · median of {m['reps']} runs "
                 f"(memory: {m['mem_reps']}) · proxies pinned to CPU {PROXY_CPU}, one worker each; "
                 f"h2load/tlsgate-load + backend pinned to CPU {LOAD_CPU} · TLS 1.3 {CIPHER}, X25519, ALPN h2")
    lines.append("")
    lines.append(f"Ceilings on this machine: crypto (`openssl speed`, one core): ECDSA P-256 sign "
                 f"{fmt(ceil_crypto['ecdsa_sign'])}/s, X25519 {fmt(ceil_crypto['x25519'])}/s, RSA-2048 sign "
                 f"{fmt(ceil_crypto['rsa_sign'])}/s → **{fmt(ceil_crypto['hs_ecdsa'])} ECDSA handshakes/s, "
                 f"{fmt(ceil_crypto['hs_rsa'])} RSA handshakes/s per core** (sign + X25519 only). "
                 f"Backend alone (h2load h2c straight at fastbackend): {fmt(ceil_backend['raw'])} calls/s "
                 f"(load-generator bound; backend core {ceil_backend['util'] * 100:.0f}% busy) = "
                 f"**{fmt(ceil_backend['core'])} calls per backend core-second**.")
    lines.append("")
    head = ["Figure"] + [LABEL[p] for p in PROXIES] + ["tlsgate ÷ best peer",
                                                       "same round: median (min–max)"]
    if "baseline" in PROXIES:
        head.append("tlsgate ÷ " + LABEL["baseline"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for key, label, higher, digits, extra in ROWS:
        label = label.format(rate=fmt(rate), idle=fmt(m["idle"]))
        cells = []
        for proxy in PROXIES:
            v = bench.med(key, proxy)
            s = fmt(v, digits)
            if extra and v:
                if extra == "inv_us":
                    s += f" ({1e6 / v:,.0f} µs)"
                else:
                    e = bench.med(extra, proxy)
                    if e is not None:
                        s += f" ({e:,.1f} µs)"
            cells.append(s)
        mine = bench.med(key, "tlsgate")
        peers = [bench.med(key, p) for p in PROXIES if p not in NOT_PEERS]
        peers = [v for v in peers if v is not None and v == v]

        def ratio_to(other):
            if mine is None or other is None or mine != mine or other != other or not other:
                return "n/m"
            r = mine / other
            better = r >= 1 if higher else r <= 1
            return f"{r:.2f} ({'better' if better else 'worse'})"
        ratios = [ratio_to((max(peers) if higher else min(peers)) if peers else None)]
        ratios.append(same_round(bench, key, higher))
        if "baseline" in PROXIES:
            ratios.append(ratio_to(bench.med(key, "baseline")) + "; same round " +
                          same_round(bench, key, higher, "baseline"))
        lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    lines.append("")
    la = bench.info.get("loadavg")
    if la:
        busy = la[2] > 2.5
        lines.append(f"Load average of the machine during the run (1 min; min / median / max): "
                     f"{la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f}" +
                     (" — **other work shared these 2 cores during the run: raw rates and latencies are "
                      "depressed and noisy; the per-core-second and per-call CPU figures hold up better**"
                      if busy else " (quiet)") + ".")
        lines.append("")
    lines.append("Ratio: tlsgate's figure divided by the best peer's (highest rate, lowest cost); "
                 "for rates above 1 is better, for latency, memory and instructions below 1 is better. "
                 "n/m = not measured. \"tlsgate ÷ best peer\" divides the medians over all rounds; "
                 "\"same round\" divides tlsgate's value by the best peer's in the same round (one round "
                 "measures a figure for every proxy back to back, in an order that rotates), then gives "
                 "the median and range of those per-round ratios: the host's speed drifts over minutes, "
                 "and within a round it has had less time to.")
    lines.append("")
    # spread
    lines.append("Spread of the runs behind each median, (max − min) / median:")
    lines.append("")
    lines.append("| Figure | " + " | ".join(LABEL[p] for p in PROXIES) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * len(PROXIES)) + "|")
    for key, label, _h, _d, _e in ROWS:
        key_runs = "tput_us" if key == "tput_core" else key
        cells = []
        for proxy in PROXIES:
            v = [x for x in bench.res.get((key_runs, proxy), []) if x == x]
            cells.append(f"{(max(v) - min(v)) / statistics.median(v) * 100:.0f}% (n={len(v)})"
                         if len(v) > 1 and statistics.median(v) else ("1 run" if v else "n/m"))
        short = re.sub(r"\*\*|\s*\(.*?\)", "", label.format(rate=fmt(rate), idle=fmt(m["idle"])))
        lines.append(f"| {short} | " + " | ".join(cells) + " |")
    lines.append("")
    # context
    ctx = []

    def per(key, fmt_s, scale=1.0):
        return ", ".join(f"{LABEL[p]} {fmt_s.format(bench.med(key, p) * scale)}"
                         for p in PROXIES if bench.med(key, p) is not None)
    ctx.append(f"- Proxy core busy during the ECDSA connection test: {per('conn_ecdsa_util', '{:.0f}%', 100)}; "
               f"h2load's own CPU per new ECDSA connection: {per('conn_ecdsa_client_us', '{:.0f} µs')} "
               f"(the client, not the proxy, is the limit of the raw rate).")
    ctx.append(f"- Proxy core busy during the 8 × 32 throughput test: {per('tput_util', '{:.0f}%', 100)}; "
               f"backend CPU per call behind each proxy: {per('tput_backend_us', '{:.1f} µs')}.")
    cannot = bench.info.get("respond_cannot")
    if cannot:
        ctx.append("- Responder rows: each proxy answers with no backend, checked first with grpc++'s client "
                   "(tlsgate `respond = \"status\"`, nginx `return 200` + `add_trailer`, HAProxy "
                   "`http-request return`); not measured where the proxy cannot give that answer: " +
                   "; ".join(cannot) + ".")
    ctx.append(f"- Resumed: share of handshakes that were resumptions: {per('conn_resumed_frac', '{:.0f}%', 100)}.")
    one, many = bench.med("mem_kib", "tlsgate"), bench.med("mem_kib_many", "tlsgate")
    if one and many:
        r0 = bench.info.get("mem_rss", {}).get("tlsgate", (0, 0))[0]
        r1 = bench.info.get("mem_rss_many", {}).get("tlsgate", (0, 0))[0]
        ctx.append(f"- Many certificates (tlsgate): {many:.1f} KiB per idle connection with "
                   f"{bench.env.MANY} certificates against {one:.1f} KiB with one "
                   f"({many / one:.2f}×); what the certificates cost once, RSS after the warm-up: "
                   f"{r1 / 1024:.1f} MiB against {r0 / 1024:.1f} MiB.")
    cross = [c / o for c, o, rc, ro in zip(bench.res.get(("conn_resumed_cross_core", "tlsgate"), []),
                                           bench.res.get(("conn_resumed_core", "tlsgate"), []),
                                           bench.rounds.get(("conn_resumed_cross_core", "tlsgate"), []),
                                           bench.rounds.get(("conn_resumed_core", "tlsgate"), []))
             if rc == ro and o and c == c]
    if cross:
        frac = bench.med("conn_resumed_cross_frac", "tlsgate")
        ctx.append(f"- Resumed across two instances (tlsgate): {frac * 100:.0f}% of the handshakes on instance "
                   f"B resumed a ticket instance A sealed; per core-second against resumptions on one "
                   f"instance in the same round: median {statistics.median(cross):.2f} "
                   f"({min(cross):.2f}–{max(cross):.2f}); 1.00 = the same cost.")
    ctx.append(f"- Latency test: h2load -c 8 -m 32 --rps {rate // 8} for {m['lat_secs']} s "
               f"(achieved {per('lat_rate', '{:,.0f}/s')}).")
    if bench.med("lat_p99", "direct") is not None:
        p99s = bench.res[("lat_p99", "direct")]
        ctx.append(f"- The host's own latency at that rate, in the same rounds: h2load h2c straight at the "
                   f"backend (no proxy, no TLS) mean {bench.med('lat_mean', 'direct'):.2f} ms, p99 "
                   f"{bench.med('lat_p99', 'direct'):.2f} ms (p99 of single rounds {min(p99s):.2f}–"
                   f"{max(p99s):.2f} ms). With four proxies whose tails were alike, any one of them would "
                   f"have a p99 at or below the best of the other three in one run out of four.")
    if m["cg_calls"] == 0:
        ctx.append("- Instructions per call: not measured in this run (--quick skips callgrind). "
                   "`perf stat -e instructions` is not supported on this machine (no hardware counters "
                   "in the VM); the CPU µs per call above is the steady-state CPU figure.")
    else:
        ctx.append(f"- Instructions per call: callgrind, user space only (kernel work — syscalls, "
                   f"io_uring — is not counted), (Ir after {m['cg_calls']} calls − Ir after "
                   f"{m['cg_calls'] // 5}) / difference; under valgrind every proxy runs ~50× slower, so "
                   f"it batches more calls per read than at full speed.")
    neg = {p: bench.info.get(f"verify-{p}-ecdsa", {}) for p in PROXIES}
    ctx.append("- Checked before measuring, for each proxy and certificate: 20 calls, each on a new "
               "connection, answered `:status 200` + `grpc-status: 0`; negotiated: " +
               ", ".join(f"{LABEL[p]} {v.get('cipher', '?')}/{v.get('group', '?')}" for p, v in neg.items()) + ".")
    ctx.append("- Versions: " + versions + ".")
    lines.extend(ctx)
    lines.append("")
    if bench.anomalies:
        lines.append("**Anomalies seen during the run** (errors, failed calls, non-2xx, resumption misses):")
        lines.append("")
        for a in bench.anomalies:
            lines.append(f"- {a}")
    else:
        lines.append("No errors, failed calls, non-2xx answers or crashes in any run.")
    if bench.harness:
        lines.append("")
        lines.append("Harness notes (not the proxies' doing):")
        lines.append("")
        for h in bench.harness:
            lines.append(f"- {h}")
    return "\n".join(lines) + "\n"


def machine_line():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Linux {os.uname().release}"


def versions_line(env):
    def first(argv, pat=None):
        try:
            o = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            text = (o.stdout + o.stderr).strip()
        except OSError:
            return "?"
        if pat:
            m = re.search(pat, text)
            return m.group(1) if m else "?"
        return text.splitlines()[0] if text else "?"
    return ", ".join([
        "tlsgate " + first([str(env.tlsgate), "--version"], r"(\d+\.\d+\.\d+\S*)"),
        "nginx " + first(["nginx", "-v"], r"nginx/(\S+)"),
        "HAProxy " + first(["haproxy", "-v"], r"version (\S+)"),
        "nghttpx " + first(["nghttpx", "--version"], r"nghttp2/(\S+)"),
        "h2load " + first(["h2load", "--version"], r"nghttp2/(\S+)"),
        "OpenSSL " + first(["openssl", "version"], r"OpenSSL (\S+)"),
    ])


# ---------------------------------------------------------------- main

def main():
    global PROXIES
    ap = argparse.ArgumentParser(description="tlsgate end-to-end benchmark against nginx, HAProxy, nghttpx")
    ap.add_argument("--quick", action="store_true", help="short loads, fewer repetitions (~3 min)")
    ap.add_argument("--build-dir", default="/tmp/build-bench")
    ap.add_argument("--reps", type=int, help="repetitions per measurement (default 5, --quick 3)")
    ap.add_argument("--idle", type=int, help="idle connections for the memory figure "
                    "(default 5000, --quick 1000)")
    ap.add_argument("--rate", type=int, help="calls/s for the latency test (default: 40%% of the "
                    "slowest throughput run of any proxy, rounded down to a multiple of 800)")
    ap.add_argument("--callgrind-calls", type=int, help="calls measured under callgrind "
                    "(default 10000; --quick 0 = not measured)")
    ap.add_argument("--proxies", default=",".join(PROXIES), help="comma-separated subset (tlsgate always)")
    ap.add_argument("--baseline", help="another tlsgate binary (e.g. a build of the previous commit), "
                    "measured in the same run as the proxy 'tlsgate baseline'")
    ap.add_argument("--baseline-label", help="the baseline column's name in the table (default: tlsgate baseline)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "e2e" / "results-latest.md"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    ap.add_argument("--only", default=",".join(TESTS), help="comma-separated subset of the tests "
                    f"({', '.join(TESTS)}); figures of the others are n/m")
    args = ap.parse_args()

    mode_name = "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    if args.reps:
        mode["reps"] = args.reps
    if args.idle:
        mode["idle"] = args.idle
    if args.callgrind_calls is not None:
        mode["cg_calls"] = args.callgrind_calls
    only = {t for t in args.only.split(",") if t}
    if only - set(TESTS):
        raise SystemExit(f"bench-e2e: --only: unknown test(s) {', '.join(sorted(only - set(TESTS)))}")
    if "callgrind" not in only:
        mode["cg_calls"] = 0
    chosen = [p for p in args.proxies.split(",") if p]
    PROXIES = [p for p in ["tlsgate", "nginx", "haproxy", "nghttpx"] if p in chosen or p == "tlsgate"]
    if args.baseline:
        PROXIES.insert(1, "baseline")
        if args.baseline_label:
            LABEL["baseline"] = args.baseline_label

    if os.cpu_count() < 2:
        raise BenchError("needs 2 CPUs (proxies on CPU 0, load on CPU 1)")
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Each side holds one descriptor per idle connection (+ upstream, logs).
    max_idle = (nofile[0] - 300) // 2 if nofile[0] != resource.RLIM_INFINITY else mode["idle"]
    if mode["idle"] > max_idle:
        print(f"bench-e2e: RLIMIT_NOFILE {nofile[0]}: idle connections lowered from {mode['idle']} "
              f"to {max_idle}", file=sys.stderr)
        mode["idle"] = max_idle

    work = Path(tempfile.mkdtemp(prefix="bench-e2e."))
    procs = Procs(work)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    started = datetime.datetime.utcnow()
    loads = []  # 1-minute load average at each step: other work on the machine
    t_start = time.time()
    ok = False
    try:
        env = Env(args, work, procs)
        for exe in (env.tlsgate, env.fastbackend, env.load, env.echo_client) + ((env.baseline,) if env.baseline else ()):
            if not exe.exists():
                raise BenchError(f"{exe} missing: build first (tools/bench-e2e does)")
        subprocess.run(["bash", str(ROOT / "tools" / "gen-cert"), str(env.certs)], check=True,
                       capture_output=True)
        for kind in ("ecdsa", "rsa"):
            crt, key, pem = env.cert(kind)
            pem.write_text(crt.read_text() + key.read_text())
        env.msg.write_bytes(b"\x00\x00\x00\x00\x07\x0a\x05hello")  # gRPC frame: 7-byte message

        def log(msg):
            loads.append(os.getloadavg()[0])
            print(f"[{time.time() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

        log(f"mode {mode_name}: {mode}; work dir {work}")
        log("crypto ceiling (openssl speed)")
        ceil_crypto = crypto_ceiling(env, mode["speed_secs"])
        log("backend ceiling (fastbackend alone)")
        ceil_backend = backend_ceiling(env, mode["ceiling_secs"])

        env.start_backend()

        bench = Bench(env, mode)
        inst = bench.inst
        for proxy in PROXIES:
            for kind in ("ecdsa", "rsa"):
                inst[(proxy, kind)] = start_proxy(env, proxy, kind, free_port(), kind)
                bench.verify(proxy, inst[(proxy, kind)], kind)
        log("all proxies answer gRPC calls with grpc-status 0")
        if "conn" in only and "tlsgate" in PROXIES:
            keys = work / "ticket.keys"
            keys.write_bytes(base64.b64encode(os.urandom(80)) + b"\n")
            keys.chmod(0o600)
            bench.fleet = tuple(start_proxy(env, "tlsgate", "ecdsa", free_port(), tag, ticket_keys=keys)
                                for tag in ("fleet-a", "fleet-b"))
            for p in bench.fleet:
                bench.verify("tlsgate", p, "ecdsa")
            log("two more tlsgate instances share a ticket_keys file (resumed across instances)")

        # One round measures one figure for every proxy back to back, so the
        # values compared with each other are seconds apart, not minutes; the
        # order rotates each round so no proxy always goes first.
        tests = []
        if "conn" in only:
            tests += [("ECDSA connections", bench.conn_burst, ("ecdsa", mode["burst"])),
                      ("RSA connections", bench.conn_burst, ("rsa", mode["burst_rsa"])),
                      ("resumed connections", bench.conn_resumed, (mode["resumed"],)),
                      ("resumed across two instances", bench.conn_resumed_cross, (mode["resumed"],))]
        if "tput" in only:
            tests.append(("throughput", bench.throughput, ()))
        if "respond" in only:
            bench.start_responders()
            log("responders answer gRPC calls themselves: " +
                ", ".join(f"{p} {k[8:]}" for p, k in inst if k.startswith("respond-")))
            tests += [("responder, success", bench.responder, ("ok",)),
                      ("responder, status", bench.responder, ("status",))]
        for rep in range(mode["reps"] if tests else 0):
            bench.round = rep
            order = rotated(PROXIES, rep)
            for what, fn, extra in tests:
                log(f"run {rep + 1}/{mode['reps']} {what}: {', '.join(order)}")
                for proxy in order:
                    bench.guarded(f"{proxy} {what}", fn, proxy, *extra)

        rate = args.rate
        if not rate:
            # 40% of the slowest proxy's slowest run: below saturation for
            # every proxy even when the machine is slower for a while.
            lows = [min(bench.res[("tput", p)]) for p in PROXIES if bench.res.get(("tput", p))]
            low = min(lows) * 0.4 if lows else 1000
            rate = max(800, int(low // 800) * 800)  # a multiple of 8 clients x 100/s
        for rep in range(mode["reps"] if "latency" in only else 0):
            bench.round = rep
            for proxy in rotated(PROXIES + ["direct"], rep):
                log(f"run {rep + 1}/{mode['reps']} {proxy}: latency at {rate} calls/s")
                bench.guarded(f"{proxy} latency", bench.latency, proxy, rate)

        for (proxy, kind), p in inst.items():
            check_alive(p, "the run")
            procs.stop(p)
        for p in bench.fleet or ():
            check_alive(p, "the run")
            procs.stop(p)
        for rep in range(mode["mem_reps"] if "memory" in only else 0):
            bench.round = rep
            for proxy in rotated(PROXIES, rep):
                log(f"run {rep + 1}/{mode['mem_reps']} {proxy}: memory, {mode['idle']} idle connections "
                    f"(fresh proxy)")
                bench.guarded(f"{proxy} memory", bench.memory, proxy, mode["idle"])
                if proxy == "tlsgate":
                    log(f"run {rep + 1}/{mode['mem_reps']} tlsgate: memory with {env.MANY} certificates")
                    bench.guarded("tlsgate memory, many certificates", bench.memory, proxy, mode["idle"], True)

        if mode["cg_calls"]:
            bench.round = 0
            for proxy in PROXIES:
                log(f"{proxy}: instructions per call (callgrind)")
                try:
                    bench.guarded(f"{proxy} callgrind", bench.instructions, proxy, mode["cg_calls"])
                except BenchError as e:
                    bench.anomaly(f"{LABEL[proxy]}: callgrind measurement failed: {e}")

        loads.append(os.getloadavg()[0])
        bench.info["loadavg"] = (min(loads), statistics.median(loads), max(loads))
        report = build_report(bench, env, mode_name, ceil_crypto, ceil_backend, rate, started, machine_line(),
                              versions_line(env))
        print(report)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        raw = {"mode": mode_name, "settings": mode, "started": f"{started:%Y-%m-%dT%H:%M:%SZ}",
               "machine": machine_line(), "rate": rate, "crypto": ceil_crypto, "backend": ceil_backend,
               "loadavg_min_median_max": bench.info["loadavg"],
               "runs": {f"{fig}/{proxy}": vals for (fig, proxy), vals in sorted(bench.res.items())},
               "rounds": {f"{fig}/{proxy}": r for (fig, proxy), r in sorted(bench.rounds.items())},
               "anomalies": bench.anomalies, "harness": bench.harness}
        out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
        log(f"done in {time.time() - t_start:.0f} s; table written to {out}")
        ok = True
    except BenchError as e:
        print(f"bench-e2e: FAILED: {e}", file=sys.stderr)
    except KeyboardInterrupt as e:
        print(f"bench-e2e: interrupted ({e})", file=sys.stderr)
    finally:
        procs.stop_all()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"bench-e2e: logs and configs kept in {work}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
