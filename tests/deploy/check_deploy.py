#!/usr/bin/env python3
"""check_deploy: the deployment files in conf/k8s and conf/systemd agree with
each other and with tlsgate.

  TLSGATE_BIN=build/src/tlsgate [TLSGATE_GEN_CERT=tools/gen-cert] \
      python3 tests/deploy/check_deploy.py [REPO_ROOT]

Checks: the probes ask the [admin] port of the ConfigMap's TOML for /ready
and /healthz; the container port is the listener's port and the Service's
targetPort; terminationGracePeriodSeconds > [drain] delay + timeout; the NLB
annotation; tlsgate --check-config accepts the ConfigMap's TOML (certificate
paths pointed at fresh test certificates, backend names at 127.0.0.1);
systemd-analyze verify accepts the unit (ExecStart pointed at TLSGATE_BIN);
TimeoutStopSec > the drain the unit assumes and conf/tlsgate.toml's.
Exits 1 naming every failed check."""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)
    return ok


def seconds(duration):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    if not m:
        raise ValueError(f"not a duration: {duration!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def drain_seconds(cfg):
    # Defaults of src/config (conf/tlsgate.toml): delay 0s, timeout 30s.
    drain = cfg.get("drain", {})
    return seconds(drain.get("delay", "0s")) + seconds(drain.get("timeout", "30s"))


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def load_manifests(k8s_dir):
    docs = []
    for path in sorted(k8s_dir.glob("*.yaml")):
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def one(docs, kind):
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        raise SystemExit(f"check_deploy: want exactly one {kind} in conf/k8s, found {len(found)}")
    return found[0]


def check_k8s(root):
    docs = load_manifests(root / "conf/k8s")
    configmap = one(docs, "ConfigMap")
    deployment = one(docs, "Deployment")
    service = one(docs, "Service")
    secret = one(docs, "Secret")
    toml_text = configmap["data"]["tlsgate.toml"]
    cfg = tomllib.loads(toml_text)

    admin_port = port_of(cfg["admin"]["listen"])
    listener_ports = {port_of(l["listen"]) for l in cfg["listeners"]}
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path and get.get("port") == admin_port,
              f"{probe} is httpGet {path} on the admin port {admin_port} (got {get})")

    container_ports = {p["containerPort"] for p in container.get("ports", [])}
    check(listener_ports <= container_ports,
          f"container ports {sorted(container_ports)} include the listener ports {sorted(listener_ports)}")
    target_ports = {p["targetPort"] for p in service["spec"]["ports"]}
    check(target_ports == listener_ports,
          f"Service targetPorts {sorted(target_ports)} are the listener ports {sorted(listener_ports)}")
    check(admin_port not in target_ports, "the admin port is not exposed by the Service")

    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace > drain_seconds(cfg),
          f"terminationGracePeriodSeconds {grace} > drain delay + timeout {drain_seconds(cfg)}")

    annotations = service["metadata"].get("annotations", {})
    check(service["spec"].get("type") == "LoadBalancer", "Service type is LoadBalancer")
    check(annotations.get("service.beta.kubernetes.io/aws-load-balancer-type") == "nlb",
          "Service has the NLB annotation")
    check(secret.get("type") == "kubernetes.io/tls", "the Secret is of type kubernetes.io/tls")

    sc = container.get("securityContext", {})
    check(sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True
          and sc.get("capabilities") == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
          and pod.get("securityContext", {}).get("runAsNonRoot") is True,
          "securityContext: non-root, no escalation, read-only root, only NET_BIND_SERVICE")

    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for l in cfg["listeners"]:
        for key in ("certificate", "private_key"):
            path = l["tls"][key]
            mount = mounts.get(os.path.dirname(path))
            check(mount is not None and volumes[mount].get("secret", {}).get("secretName")
                  == secret["metadata"]["name"], f"{path} comes from the Secret's mount")
    return toml_text


def check_config_accepted(root, toml_text, tlsgate, tmp):
    gen_cert = os.environ.get("TLSGATE_GEN_CERT", str(root / "tools/gen-cert"))
    certs = tmp / "certs"
    subprocess.run([gen_cert, str(certs)], check=True, stdout=subprocess.DEVNULL)
    text = (toml_text.replace("/etc/tlsgate/certs/tls.crt", str(certs / "server.crt"))
                     .replace("/etc/tlsgate/certs/tls.key", str(certs / "server.key")))
    # Cluster DNS names do not resolve here and must at load time.
    text = re.sub(r'"[A-Za-z0-9.-]+\.svc\.cluster\.local:', '"127.0.0.1:', text)
    conf = tmp / "k8s.toml"
    conf.write_text(text)
    r = subprocess.run([tlsgate, "--check-config", str(conf)], capture_output=True, text=True)
    check(r.returncode == 0,
          f"tlsgate --check-config accepts the ConfigMap's TOML (exit {r.returncode}: {r.stderr.strip()})")


def check_systemd(root, tlsgate, tmp):
    unit_path = root / "conf/systemd/tlsgate.service"
    unit = unit_path.read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    for key, want in (("Type", "simple"), ("KillSignal", "SIGTERM"),
                      ("ExecReload", "/bin/kill -HUP $MAINPID"),
                      ("ExecStart", "/usr/local/bin/tlsgate --config /etc/tlsgate/tlsgate.toml"),
                      ("ExecStartPre", "/usr/local/bin/tlsgate --check-config /etc/tlsgate/tlsgate.toml"),
                      ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                      ("DynamicUser", "yes"), ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
                      ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE")):
        check(settings.get(key) == want, f"unit: {key}={want} (got {settings.get(key)!r})")

    # systemd's default is 90 s; a bare number means seconds.
    stop_text = settings.get("TimeoutStopSec", "90")
    stop = seconds(stop_text + "s" if stop_text.isdigit() else stop_text)
    m = re.search(r'delay = "(\w+)" and\s*#?\s*timeout = "(\w+)"', unit)
    if check(m is not None, "unit comment names the drain delay and timeout it assumes"):
        assumed = seconds(m.group(1)) + seconds(m.group(2))
        check(stop > assumed, f"TimeoutStopSec {stop} > the assumed drain {assumed}")
    defaults = drain_seconds(tomllib.loads((root / "conf/tlsgate.toml").read_text()))
    check(stop > defaults, f"TimeoutStopSec {stop} > conf/tlsgate.toml's drain {defaults}")

    if shutil.which("systemd-analyze") is None:
        check(False, "systemd-analyze is installed (Debian package systemd)")
        return
    copy = tmp / "tlsgate.service"
    copy.write_text(unit.replace("/usr/local/bin/tlsgate", os.path.abspath(tlsgate)))
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    # verify also reports problems of unrelated units installed on this
    # machine; only lines about our unit count.
    ours = [l for l in (r.stdout + r.stderr).splitlines() if "tlsgate.service" in l]
    check(r.returncode == 0 and not ours,
          f"systemd-analyze verify accepts the unit (exit {r.returncode}: {' | '.join(ours)})")


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1
                        else pathlib.Path(__file__).resolve().parents[2])
    tlsgate = os.environ.get("TLSGATE_BIN")
    if not tlsgate:
        raise SystemExit("check_deploy: set TLSGATE_BIN to the built tlsgate")
    with tempfile.TemporaryDirectory(prefix="check_deploy.") as d:
        tmp = pathlib.Path(d)
        toml_text = check_k8s(root)
        check_config_accepted(root, toml_text, tlsgate, tmp)
        check_systemd(root, tlsgate, tmp)
    if failures:
        print(f"check_deploy: {len(failures)} check(s) failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("check_deploy: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
