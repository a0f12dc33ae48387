"""`make k8s-smoke`: the rendered chart running under `podman kube play`, with the local images.

    python -m tests.deploy.smoke [--keep] [--timeout 60] [--sentinel]

1. `helm template` the chart as a lab without a registry would install it: the local images
   (localhost/volte-*:dev from `make images`), Redis standalone (localhost/volte-redis:dev),
   one replica each, userspace SCTP for the enb-agent (this kernel has no SCTP).
2. `podman kube play` each Deployment, dependencies first (redis, state, media, enb-agent,
   sbc). kube play is not Kubernetes, and the smoke bridges the differences, changing nothing
   else in the rendered objects:
   - it ignores Services: each pod gets `hostAliases` naming the Services it uses
     (volte-state, ...) with the IP of the pod behind them, which is why the pods start in
     order;
   - it publishes every containerPort on the host (Kubernetes does not): the `ports` lists are
     dropped, so the smoke cannot collide with whatever else listens on this machine; pods are
     reached on their own IPs;
   - it runs no gRPC probes: the smoke asks grpc.health.v1 itself, as the kubelet would;
   - it cannot fill in status.podIP / status.hostIP (downward API) and does not expand
     `$(VAR)` references: each pod gets a static IP on kube play's network (`--ip`), written
     where the fieldRef was (the network's gateway stands in for the node's address), and the
     references are expanded as the kubelet would;
   - its secretKeyRef reads podman secrets, not the Secret objects of the same YAML (4.3): the
     rendered Secret's value is passed as the kubelet would pass it.
3. Waits until every service answers its health check with SERVING (Redis: PING), sends SIP
   OPTIONS over UDP and over TCP to the sbc pod and expects 200, checks that the containers
   run non-root on a read-only root, then runs the chart's `helm test` Pod (loadgen provisions
   4 subscribers, they register and place 4 calls with media through the sbc; it must exit
   0), prints the timings, and tears everything down (`podman kube down`), also on failure.

With --sentinel (what `make k8s-smoke` runs too), then the chart's default Redis: the
StatefulSet's pod template run as three pods (volte-redis-0..2; kube play has no
StatefulSets, the pods get the names and headless-Service DNS names a StatefulSet would
give them): pod 0 must come up primary with two replicas, the three Sentinels must agree on
it, and after pod 0 is killed a replica must be promoted; pod 0 started again must rejoin as
a replica of the new primary (the start scripts ask the Sentinels).

Needs root (rootful podman: pod IPs are routable from the host). Exit status 0 on success.
"""

from __future__ import annotations

import argparse
import base64
import copy
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.helm_bin import ensure_helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "volte"
RELEASE = "volte"
TAG = os.environ.get("TAG", "dev")
REGISTRY = os.environ.get("REGISTRY", "localhost")
# Start order, and the Service names each component answers to.
ORDER = ("redis", "state", "media", "enb-agent", "sbc")
SERVICES = {
    "redis": ["volte-redis"],
    "state": ["volte-state"],
    "media": ["volte-media"],
    "enb-agent": ["volte-enb-agent", "volte-s1ap"],
    "sbc": ["volte-sbc", "volte-sip"],
}
GRPC_PORTS = {"state": 50051, "sbc": 50061, "media": 50071, "enb-agent": 50081}
SETS = (
    f"image.tag={TAG}",
    f"sbc.image.repository={REGISTRY}/volte-sbc",
    f"state.image.repository={REGISTRY}/volte-state",
    f"media.image.repository={REGISTRY}/volte-media",
    f"enbAgent.image.repository={REGISTRY}/volte-enb-agent",
    f"loadgen.image.repository={REGISTRY}/volte-loadgen",
    "image.pullPolicy=Never",
    "redis.mode=standalone",
    "redis.persistence.enabled=false",
    f"redis.image.repository={REGISTRY}/volte-redis",
    f"redis.image.tag={TAG}",
    "redis.image.pullPolicy=Never",
    "enbAgent.sctpTransport=userspace",
    "sbc.autoscaling.enabled=false",
    "sbc.replicas=1",
    "state.replicas=1",
    "media.replicas=1",
    "loadgen.test.enabled=true",
)


@dataclass
class Started:
    component: str
    file: Path
    pod: str
    ip: str
    played: float
    ready: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def log(text: str) -> None:
    print(f"k8s-smoke: {text}", flush=True)


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120,
                          check=check)


def render() -> list[dict[str, Any]]:
    args = [str(ensure_helm()), "template", RELEASE, str(CHART), "--namespace", "default"]
    for s in SETS:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))


KUBE_NETWORK = "podman-default-kube-network"


def kube_network() -> tuple[ipaddress.IPv4Network, str]:
    """Subnet and gateway of the network kube play attaches pods to (created if missing)."""
    if podman("network", "exists", KUBE_NETWORK, check=False).returncode != 0:
        podman("network", "create", KUBE_NETWORK)
    info = json.loads(podman("network", "inspect", KUBE_NETWORK).stdout)[0]
    subnet = info["subnets"][0]
    return ipaddress.IPv4Network(subnet["subnet"]), str(subnet["gateway"])


def used_ips() -> set[str]:
    ids = podman("ps", "-q").stdout.split()
    if not ids:
        return set()
    nets = podman("inspect", *ids, "--format", "{{json .NetworkSettings.Networks}}").stdout
    return {str(n.get("IPAddress")) for line in nets.splitlines() if line.strip()
            for n in json.loads(line).values()}


def free_ips(subnet: ipaddress.IPv4Network, count: int) -> list[str]:
    """Addresses from the top of the subnet that no running container holds."""
    taken = used_ips()
    found = [str(ip) for ip in reversed(list(subnet.hosts())) if str(ip) not in taken]
    return found[1:count + 1]  # keep the very last address free


def for_kube_play(deployment: dict[str, Any], aliases: dict[str, str], ip: str,
                  host_ip: str, secrets: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The Deployment with Services replaced by hostAliases, no host-published ports, and the
    downward API's pod and node addresses written in."""
    d = copy.deepcopy(deployment)
    spec = d["spec"]["template"]["spec"] if d["kind"] != "Pod" else d["spec"]
    fields = {"status.podIP": ip, "status.hostIP": host_ip,
              "metadata.name": d["metadata"]["name"] + ("-pod-0" if d["kind"] != "Pod" else ""),
              "spec.nodeName": socket.gethostname()}
    for c in spec["containers"]:
        c.pop("ports", None)
        known: dict[str, str] = {}
        for e in c.get("env", []):
            path = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            if path in fields:
                e.pop("valueFrom")
                e["value"] = fields[path]
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                e.pop("valueFrom")
                e["value"] = secrets[ref["name"]][ref["key"]]
            if "value" in e:
                e["value"] = expand(str(e["value"]), known)
                known[e["name"]] = e["value"]
        for key in ("command", "args"):
            if key in c:
                c[key] = [expand(str(a), known) for a in c[key]]
    by_ip: dict[str, list[str]] = {}
    for name, ip in aliases.items():
        by_ip.setdefault(ip, []).append(name)
    if by_ip:
        spec["hostAliases"] = [{"ip": ip, "hostnames": names} for ip, names in by_ip.items()]
    return d


def expand(text: str, known: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, others kept as written."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: known.get(m.group(1), m.group(0)), text)


def pod_ip(pod: str) -> str:
    infra = podman("pod", "inspect", pod, "--format", "{{.InfraContainerID}}").stdout.strip()
    networks = json.loads(podman("inspect", infra, "--format",
                                 "{{json .NetworkSettings.Networks}}").stdout)
    for net in networks.values():
        if net.get("IPAddress"):
            return str(net["IPAddress"])
    raise RuntimeError(f"pod {pod} has no IP address")


def grpc_serving(address: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    return False


def redis_pong(ip: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, 6379), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def options(ip: str, transport: str) -> tuple[str, float]:
    """Send SIP OPTIONS to the sbc; (status line, seconds)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    kind = socket.SOCK_DGRAM if transport == "UDP" else socket.SOCK_STREAM
    with socket.socket(family, kind) as s:
        s.settimeout(5.0)
        s.connect((ip, 5060))
        local, port = s.getsockname()[:2]
        call_id = uuid.uuid4().hex
        message = (
            "OPTIONS sip:ims.local SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {local}:{port};branch=z9hG4bK{call_id[:12]};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:smoke@ims.local>;tag={call_id[:8]}\r\n"
            "To: <sip:ims.local>\r\n"
            f"Call-ID: {call_id}@k8s-smoke\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        start = time.monotonic()
        s.sendall(message)
        data = s.recv(65535)
        return data.split(b"\r\n", 1)[0].decode(errors="replace"), time.monotonic() - start


def sentinel_check(subnet: ipaddress.IPv4Network, timeout: float) -> bool:
    """The Sentinel StatefulSet's pods: replication, agreement, failover, rejoin."""
    sets = [x for x in SETS if not x.startswith(("redis.mode=", "loadgen."))]
    args = [str(ensure_helm()), "template", RELEASE, str(CHART), "--namespace", "default"]
    for x in sets:
        args += ["--set", x]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    objs = [d for d in yaml.safe_load_all(out) if d]
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    config = next(o for o in objs if o["kind"] == "ConfigMap"
                  and o["metadata"]["name"] == sts["metadata"]["name"])
    headless = f"{sts['spec']['serviceName']}.default.svc.cluster.local"
    replicas = int(sts["spec"]["replicas"])
    ips = free_ips(subnet, replicas)
    names = [f"{sts['metadata']['name']}-{i}" for i in range(replicas)]
    aliases = [{"ip": ip, "hostnames": [f"{n}.{headless}"]} for n, ip in zip(names, ips,
                                                                              strict=True)]
    workdir = Path(tempfile.mkdtemp(prefix="volte-k8s-smoke-sentinel-"))
    files = []
    for name in names:
        spec = copy.deepcopy(sts["spec"]["template"]["spec"])
        spec.pop("affinity", None)
        spec["hostAliases"] = aliases
        for c in spec["containers"]:
            c.pop("ports", None)
            c.setdefault("env", []).append({"name": "HOSTNAME", "value": name})
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "labels": sts["spec"]["template"]["metadata"]
                            ["labels"]}, "spec": spec}
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all([config, pod], sort_keys=False))
        files.append(path)

    def cli(pod: str, container: str, *args: str) -> str:
        return podman("exec", f"{pod}-{container}", "redis-cli", *args, check=False).stdout

    def primary(pod: str) -> str:
        return cli(pod, "sentinel", "-p", "26379", "sentinel", "get-master-addr-by-name",
                   "volte").split("\n")[0].strip()

    def wait(what: str, check: Any) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.25)
        log(f"sentinel: {what} did not happen in {timeout:.0f} s")
        return False

    t0 = time.monotonic()
    try:
        for ip, path in zip(ips, files, strict=True):
            # OrderedReady, as the StatefulSet: each pod answers PING before the next starts.
            podman("kube", "play", "--replace", "--ip", ip, str(path))
            if not redis_pong(ip, time.monotonic() + timeout):
                return False
        first = f"{names[0]}.{headless}"
        if not wait("replication from pod 0", lambda: "connected_slaves:2" in cli(
                names[0], "redis", "info", "replication")):
            return False
        if not wait("Sentinel agreement on pod 0", lambda: all(
                primary(n) == first for n in names)):
            return False
        log(f"sentinel: {names[0]} primary, {replicas - 1} replicas, {replicas} Sentinels agree "
            f"({time.monotonic() - t0:.1f} s)")
        # The state service as the chart wires it: redis+sentinel://<release>-redis-sentinel.
        state = next(o for o in objs if o["kind"] == "Deployment" and component(o) == "state")
        state_aliases = {f"{n}.{headless}": ip for n, ip in zip(names, ips, strict=True)}
        state_aliases["volte-redis-sentinel"] = ips[1]
        state_ip = free_ips(subnet, replicas + 1)[-1]
        state_file = workdir / "state.yaml"
        state_file.write_text(yaml.safe_dump(
            for_kube_play(state, state_aliases, state_ip, state_ip, {}), sort_keys=False))
        files.append(state_file)
        proc = podman("kube", "play", "--replace", "--ip", state_ip, str(state_file), check=False)
        if proc.returncode != 0:
            log(f"sentinel: kube play of state failed:\n{proc.stdout}{proc.stderr}")
            return False
        if not grpc_serving(f"{state_ip}:{GRPC_PORTS['state']}", time.monotonic() + timeout):
            log("sentinel: the state service did not become SERVING through Sentinel")
            return False
        log("sentinel: state SERVING with redis+sentinel://volte-redis-sentinel:26379/volte/0")
        t1 = time.monotonic()
        podman("pod", "kill", names[0])
        if not wait("failover", lambda: primary(names[1]) not in ("", first)):
            return False
        promoted = primary(names[1])
        log(f"sentinel: {names[0]} killed, {promoted.split('.')[0]} promoted in "
            f"{time.monotonic() - t1:.1f} s")
        if not grpc_serving(f"{state_ip}:{GRPC_PORTS['state']}", time.monotonic() + timeout):
            log("sentinel: the state service is not SERVING after the failover")
            return False
        log(f"sentinel: state SERVING again {time.monotonic() - t1:.1f} s after the kill")
        podman("pod", "rm", "--force", names[0])
        podman("kube", "play", "--replace", "--ip", ips[0], str(files[0]))
        if not wait("rejoin", lambda: f"master_host:{promoted}" in cli(
                names[0], "redis", "info", "replication")):
            return False
        log(f"sentinel: {names[0]} restarted and rejoined as a replica of "
            f"{promoted.split('.')[0]}")
        return True
    finally:
        for path in files:
            podman("kube", "down", str(path), check=False)
        for pod_name in (*names, f"{RELEASE}-state-pod-0"):
            if podman("pod", "exists", pod_name, check=False).returncode == 0:
                podman("pod", "rm", "--force", pod_name, check=False)
        name = config["metadata"]["name"]
        if podman("volume", "exists", name, check=False).returncode == 0:
            podman("volume", "rm", "--force", name, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def logs(started: Sequence[Started]) -> None:
    for st in started:
        out = podman("pod", "logs", "--tail", "20", st.pod, check=False)
        log(f"--- logs of {st.pod}\n{out.stdout}{out.stderr}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy.smoke",
                                     description="the chart under podman kube play")
    parser.add_argument("--keep", action="store_true", help="leave the pods running")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds each component has to become SERVING")
    parser.add_argument("--sentinel", action="store_true",
                        help="then run the Redis + Sentinel StatefulSet's pods, fail over")
    args = parser.parse_args(argv)
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "containers" / "containers.conf"))
    if shutil.which("podman") is None:
        log("podman is missing: `make images` installs it")
        return 2
    for name in ("sbc", "state", "media", "enb-agent", "redis"):
        image = f"{REGISTRY}/volte-{name}:{TAG}"
        if podman("image", "exists", image, check=False).returncode != 0:
            log(f"{image} is missing: run `make images` first")
            return 2

    t0 = time.monotonic()
    objs = render()
    log(f"rendered {len(objs)} objects in {time.monotonic() - t0:.1f} s")
    deployments = {component(o): o for o in objs if o["kind"] == "Deployment"}
    extras = [o for o in objs if o["kind"] == "ConfigMap"]
    secrets = {o["metadata"]["name"]: {k: base64.b64decode(v).decode()
                                        for k, v in o.get("data", {}).items()}
               for o in objs if o["kind"] == "Secret"}
    subnet, gateway = kube_network()
    ips = dict(zip(ORDER, free_ips(subnet, len(ORDER)), strict=True))
    workdir = Path(tempfile.mkdtemp(prefix="volte-k8s-smoke-"))
    started: list[Started] = []
    aliases: dict[str, str] = {}
    ok = False
    try:
        for name in ORDER:
            docs = [*extras, for_kube_play(deployments[name], aliases, ips[name], gateway,
                                                secrets)]
            path = workdir / f"{name}.yaml"
            path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            played = time.monotonic()
            proc = podman("kube", "play", "--replace", "--ip", ips[name], str(path),
                          check=False)
            if proc.returncode != 0:
                log(f"kube play {name} failed:\n{proc.stdout}{proc.stderr}")
                return 1
            pod = f"{deployments[name]['metadata']['name']}-pod-0"
            st = Started(name, path, pod, pod_ip(pod), played)
            started.append(st)
            deadline = time.monotonic() + args.timeout
            if name == "redis":
                up = redis_pong(st.ip, deadline)
            else:
                up = grpc_serving(f"{st.ip}:{GRPC_PORTS[name]}", deadline)
            st.ready = time.monotonic()
            if not up:
                log(f"{name} did not answer its health check in {args.timeout:.0f} s")
                logs(started)
                return 1
            log(f"{name:9} pod {pod} at {st.ip}: SERVING {st.ready - played:.2f} s after "
                "kube play")
            for service in SERVICES[name]:
                aliases[service] = st.ip
        sbc = started[-1]
        for transport in ("UDP", "TCP"):
            status, rtt = options(sbc.ip, transport)
            log(f"OPTIONS over {transport} -> {status!r} in {rtt * 1000:.1f} ms")
            if not status.startswith("SIP/2.0 200"):
                logs(started)
                return 1
        # Every service still healthy after the others came up.
        for st in started[1:]:
            if not grpc_serving(f"{st.ip}:{GRPC_PORTS[st.component]}",
                                time.monotonic() + 5):
                log(f"{st.component} is no longer SERVING")
                logs(started)
                return 1
        # What the securityContext asked for, as the runtime applied it.
        for st in started:
            first = deployments[st.component]["spec"]["template"]["spec"]["containers"][0]
            ctr = f"{st.pod}-{first['name']}"
            out = podman("inspect", ctr, "--format",
                         "{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}").stdout.split()
            read_only, user = out[0], (out[1] if len(out) > 1 else "")
            if read_only != "true" or user.split(":")[0] in ("", "0", "root"):
                log(f"{ctr}: read-only root {read_only}, user {user!r}")
                return 1
        log("every container runs non-root on a read-only root file system")
        # The chart's `helm test` hook, as helm would run it: loadgen calls through the sbc.
        test_pod = next(o for o in objs if o["kind"] == "Pod")
        test_ip = free_ips(subnet, len(ORDER) + 1)[-1]
        path = workdir / "helm-test.yaml"
        path.write_text(yaml.safe_dump(for_kube_play(test_pod, aliases, test_ip, gateway,
                                                     secrets), sort_keys=False))
        t1 = time.monotonic()
        proc = podman("kube", "play", "--ip", test_ip, str(path), check=False)
        if proc.returncode != 0:
            log(f"kube play of the helm test pod failed:\n{proc.stdout}{proc.stderr}")
            return 1
        started.append(Started("helm-test", path, test_pod["metadata"]["name"], test_ip, t1))
        ctr = f"{test_pod['metadata']['name']}-{test_pod['spec']['containers'][0]['name']}"
        status = ""
        while time.monotonic() < t1 + args.timeout:
            status = podman("inspect", ctr, "--format", "{{.State.Status}} {{.State.ExitCode}}",
                            check=False).stdout.strip()
            if status.startswith("exited"):
                break
            time.sleep(0.2)
        output = podman("logs", ctr, check=False)
        summary = [line for line in (output.stdout + output.stderr).splitlines() if line.strip()]
        log(f"helm test (loadgen) {status or 'did not finish'} after "
            f"{time.monotonic() - t1:.1f} s; last lines:\n  " + "\n  ".join(summary[-8:]))
        if status != "exited 0":
            logs(started)
            return 1
        ok = True
        log(f"passed in {time.monotonic() - t0:.1f} s (render, 5 pods up one after the other, "
            "health, OPTIONS, helm test calls)")
    finally:
        if not args.keep or not ok:
            t1 = time.monotonic()
            for st in reversed(started):
                # A short grace period: draining is not what this smoke is about.
                podman("pod", "stop", "--time", "3", st.pod, check=False)
                podman("kube", "down", str(st.file), check=False)
            # kube play keeps a volume per ConfigMap it mounted.
            for cm in extras:
                name = cm["metadata"]["name"]
                if podman("volume", "exists", name, check=False).returncode == 0:
                    podman("volume", "rm", "--force", name, check=False)
            log(f"torn down in {time.monotonic() - t1:.1f} s")
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"pods left running; `podman kube down` the files in {workdir}")
    if args.sentinel:
        t2 = time.monotonic()
        if not sentinel_check(subnet, args.timeout):
            return 1
        log(f"sentinel: passed in {time.monotonic() - t2:.1f} s")
    return 0

if __name__ == "__main__":
    sys.exit(main())
