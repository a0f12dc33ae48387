"""loadgen on Kubernetes: the workers run as an Indexed Job in each of one or more clusters.

`loadgen SCENARIO --kube [--kube-context CTX ...]` is the controller. For each kube context it
creates one Indexed Job (completionMode Indexed, completions = parallelism = --kube-workers)
whose pods run the loadgen image as one worker each: pod `i` of context `k` is worker
`k * N + i` of all `len(contexts) * N`, and takes that worker's share of the subscribers and
of the rate exactly as a local `--workers` process does (`LoadConfig.share`). Its arguments
are the run's own options (`agent_args`) plus `--shard K/T` (its context's first worker, and
the total) and `--start-at` (a common wall-clock start: cluster clocks are NTP-synced); the
pod adds `$JOB_COMPLETION_INDEX` to K. Each context's pods call that cluster's sbc (its SIP
Service, or `--kube-target CTX=HOST:PORT`).

A pod prints JSON lines on stdout (its log): `ready` once its UEs are registered, `progress`
about every second (its snapshot for the display and, for scale-out, the per-second buckets
completed since the last line, from which the controller finds the saturated step while the
run goes on), and last `result`: its whole `Results` (`loadgen.stats.to_jsonable`). The
controller polls the pods and reads their logs through the API server
(`read_namespaced_pod_log`), merges the results as local workers' are merged, and deletes the
Jobs (propagation Background: the pods go too) unless --kube-keep. A failed pod, or a run past
its time limit, ends the run with an error naming the pod(s) and their last log lines.

Scenario events on Kubernetes (in the first context): failover deletes one sbc pod (selected by
the chart's app.kubernetes.io labels; grace period 0 for --kill-signal KILL) at --event-at;
scale-out patches the sbc Deployment's scale subresource to one more replica when a step
saturates, and the steps go on.

The kubernetes client is an optional dependency (`pip install 'volte[kube]'`); it is imported
only here, and only for --kube.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from loadgen.config import LoadConfig, Mix
from loadgen.engine import (
    Display,
    LoadError,
    Outcome,
    Snapshot,
    Worker,
    _sum_snapshots,
    run_async,
)
from loadgen.stats import Results, Second, from_jsonable, merge_all, results_from_json, to_jsonable
from services import __version__
from services.sip.transport import Address

CHART = "volte"
DEFAULT_RELEASE = "volte"
DEFAULT_IMAGE = f"localhost/volte-loadgen:{__version__}"
SIP_PORT = 5060  # the chart's sbc.sipPort
ENB_SCTP_PORT = 36412  # the chart's enbAgent.sctpPort
ENB_GRPC_PORT = 50081  # the chart's enbAgent.grpcPort
STATE_PORT = 50051  # the chart's state.grpcPort
RUN_LABEL = "volte.io/loadgen-run"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
LINE_KEY = "loadgen"  # a pod's JSON lines: {"loadgen": "ready" | "progress" | "result", ...}
POLL_INTERVAL = 1.0  # seconds between looks at the pods
PROGRESS_EVERY = 1.0  # seconds between a pod's progress lines
LOG_TAIL = 15  # log lines quoted in an error
# The chart's pod and container security contexts (charts/volte/values.yaml): non-root, no
# privilege, read-only root file system (the image writes only to /tmp, an emptyDir).
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
RESOURCES = {"requests": {"cpu": "500m", "memory": "128Mi"},
             "limits": {"cpu": "1", "memory": "512Mi"}}


# -- the chart's names ---------------------------------------------------------------------------


def chart_fullname(release: str) -> str:
    """The chart's `volte.fullname` for a release (without nameOverride/fullnameOverride)."""
    name = release if CHART in release else f"{release}-{CHART}"
    return name[:63].rstrip("-")


def component_selector(release: str, component: str) -> str:
    """The label selector of a component's pods (the chart's `volte.selectorLabels`)."""
    return (f"app.kubernetes.io/name={CHART},app.kubernetes.io/instance={release},"
            f"app.kubernetes.io/component={component}")


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeOptions:
    contexts: tuple[str, ...] = ()  # () = the kubeconfig's current context
    kubeconfig: str | None = None  # None: $KUBECONFIG, else ~/.kube/config
    namespace: str | None = None  # None: each context's namespace, else "default"
    workers: int = 1  # pods per context
    image: str = DEFAULT_IMAGE
    release: str = DEFAULT_RELEASE
    targets: Mapping[str, Address] = field(default_factory=dict)  # per context
    state: str | None = None  # --provision: the pods' state address
    timeout: float | None = None  # seconds from the Jobs' creation to the results
    start_delay: float | None = None  # seconds from the Jobs' creation to the load's start
    keep: bool = False  # leave the Jobs (and their pods, logs) in place
    poll: float = POLL_INTERVAL

    def start_delay_for(self, config: LoadConfig) -> float:
        """Time for the pods to be scheduled, pull the image and register their UEs."""
        if self.start_delay is not None:
            return self.start_delay
        registering = config.subscribers / max(config.register_rate, 1.0) \
            if config.is_call_scenario else 0.0
        return 30.0 + registering

    def timeout_for(self, config: LoadConfig) -> float:
        if self.timeout is not None:
            return self.timeout
        return self.start_delay_for(config) + config.planned_seconds() + \
            config.drain_timeout + 120.0


def parse_context_target(text: str) -> tuple[str, Address]:
    """`CTX=HOST:PORT` (--kube-target)."""
    from loadgen.config import parse_address

    context, sep, address = text.partition("=")
    if not sep or not context:
        raise ValueError(f"{text!r}: expected CONTEXT=HOST:PORT")
    return context, parse_address(address)


def parse_shard(text: str) -> tuple[int, int]:
    """`K/T` (--shard): the first worker index of this Job's pods, and the total."""
    first, sep, total = text.partition("/")
    try:
        k, t = int(first), int(total)
    except ValueError:
        raise ValueError(f"{text!r}: expected FIRST/TOTAL, two integers") from None
    if not sep or k < 0 or t < 1 or k >= t:
        raise ValueError(f"{text!r}: expected FIRST/TOTAL with 0 <= FIRST < TOTAL")
    return k, t


# -- the run's options as a pod's arguments --------------------------------------------------------

# LoadConfig field -> loadgen flag, for the options a pod must run with. Not here: the scenario
# (positional), targets (per context), bind (the pod's IP), workers (a pod is one worker),
# run_dir (no stack in a pod), pair_offset and phase (the share computes them).
VALUE_FLAGS = (
    ("domain", "--domain"), ("subscribers", "--subscribers"), ("start", "--start"),
    ("password", "--password"), ("expires", "--expires"), ("reregister", "--reregister"),
    ("register_timeout", "--register-timeout"), ("register_rate", "--register-rate"),
    ("rate", "--rate"), ("ramp", "--ramp"), ("max_concurrent", "--max-concurrent"),
    ("hold", "--hold"), ("calls", "--calls"), ("duration", "--duration"), ("mix", "--mix"),
    ("ring", "--ring"), ("cancel_after", "--cancel-after"),
    ("setup_timeout", "--setup-timeout"), ("seed", "--seed"), ("event_at", "--event-at"),
    ("kill_signal", "--kill-signal"), ("steps", "--steps"), ("callee", "--callee"),
    ("step_duration", "--step-duration"), ("window", "--window"),
)
BOOLEAN_FLAGS = (("media", "media"), ("clear_bindings", "clear-bindings"),
                 ("unregister", "unregister"))  # --x / --no-x
# Passed otherwise (bearers: a plain --bearers), or not at all (the thresholds are the
# controller's to judge, on the merged report).
NOT_PASSED = ("scenario", "targets", "bind", "workers", "run_dir", "pair_offset", "phase",
              "bearers", "max_failed_ratio", "max_p99_setup_ms")


def _flag_value(value: object) -> str:
    if isinstance(value, Mix):
        return f"busy={value.busy!r},cancel={value.cancel!r}"
    if isinstance(value, tuple):
        return ",".join(repr(v) for v in value)
    return str(value)


def agent_args(config: LoadConfig, target: Address, shard: tuple[int, int], start_at: float,
               *, provision_state: str | None = None) -> list[str]:
    """The arguments of a pod of the Job (the image's entrypoint is `loadgen`)."""
    args = [config.scenario]
    for name, flag in VALUE_FLAGS:
        value = getattr(config, name)
        if value not in (None, (), ""):
            args.append(f"{flag}={_flag_value(value)}")
    for name, flag in BOOLEAN_FLAGS:
        args.append(f"--{flag}" if getattr(config, name) else f"--no-{flag}")
    if config.bearers is not None:  # the cluster's enb-agent (run_kube puts its Services here)
        b = config.bearers
        args += ["--bearers", f"--enbs={b.enbs}", f"--enb-failures={b.failures!r}",
                 f"--sctp-transport={b.transport}", f"--enb-sctp={format_address(b.sctp)}",
                 f"--enb-grpc={b.grpc}"]
    if provision_state:
        args += ["--provision", f"--state={provision_state}"]
    # $(POD_IP) is expanded by the kubelet from the container's env.
    args += [f"--target={format_address(target)}", "--bind=$(POD_IP)",
             f"--shard={shard[0]}/{shard[1]}", f"--start-at={start_at:.3f}", "--progress=none"]
    return args


def job_manifest(*, name: str, run_id: str, config: LoadConfig, options: KubeOptions,
                 args: list[str], context: str) -> dict[str, Any]:
    """The Indexed Job of one context: N pods, one loadgen worker each, no retries (a worker
    run twice would offer its load twice)."""
    labels = {
        "app.kubernetes.io/name": CHART,
        "app.kubernetes.io/instance": options.release,
        "app.kubernetes.io/component": "loadgen",
        "app.kubernetes.io/part-of": "volte",
        "app.kubernetes.io/managed-by": "loadgen",
        RUN_LABEL: run_id,
    }
    n = options.workers
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"volte.io/loadgen-scenario": config.scenario,
                                     "volte.io/kube-context": context}},
        "spec": {
            "completionMode": "Indexed",
            "completions": n,
            "parallelism": n,
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, int(options.timeout_for(config))),
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": POD_SECURITY,
                    "containers": [{
                        "name": "loadgen",
                        "image": options.image,
                        "args": args,
                        "env": [{"name": "POD_IP", "valueFrom": {
                            "fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"}],
                        "resources": RESOURCES,
                        "securityContext": CONTAINER_SECURITY,
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
                },
            },
        },
    }


# -- a pod's side --------------------------------------------------------------------------------


def agent_share(config: LoadConfig, shard: tuple[int, int],
                env: Mapping[str, str] = os.environ) -> tuple[int, LoadConfig]:
    """This pod's worker index (its Job's first + $JOB_COMPLETION_INDEX) and share."""
    first, total = shard
    try:
        index = int(env["JOB_COMPLETION_INDEX"])
    except (KeyError, ValueError):
        raise LoadError("--shard runs in a pod of an Indexed Job: JOB_COMPLETION_INDEX is "
                        "not set (or not a number)") from None
    worker = first + index
    if not 0 <= worker < total:
        raise LoadError(f"--shard {first}/{total} with JOB_COMPLETION_INDEX {index}: worker "
                        f"{worker} is not below {total}")
    share = config.share(worker, total)
    return worker, replace(share, targets=tuple(_resolve(t) for t in share.targets))


def _resolve(address: Address) -> Address:
    """A Service name to an address (the UEs' UDP transport does not resolve names)."""
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise LoadError(f"cannot resolve the target {host}: {exc}") from None
    return str(infos[0][4][0]), port


def _emit(out: TextIO, kind: str, **fields: Any) -> None:
    out.write(json.dumps({LINE_KEY: kind, **fields}, separators=(",", ":")) + "\n")
    out.flush()


def run_agent(config: LoadConfig, worker: int, start_at: float, out: TextIO = sys.stdout) -> int:
    """A pod's run: register, start at `start_at` (at once if late), print the result line."""
    _emit(out, "start", worker=worker, start=config.start, subscribers=config.subscribers,
          rate=config.rate, targets=[format_address(t) for t in config.targets])
    results, info = run_async(_agent(config, worker, start_at, out))
    _emit(out, "result", worker=worker, **info, results=to_jsonable(results))
    return 0


async def _agent(config: LoadConfig, worker: int, start_at: float,
                 out: TextIO) -> tuple[Results, dict[str, Any]]:
    w = Worker(config, worker)
    try:
        await w.prepare()
    except BaseException:
        await w.close()
        raise
    info = {
        "usable": len(w.pairs) if config.is_call_scenario else len(w.ues),
        "registered": sum(ue.registered_at is not None for ue in w.ues),
        "late_s": round(max(0.0, time.time() - start_at), 3),
    }
    _emit(out, "ready", worker=worker, **info)
    sent = 0  # seconds of the load already sent in progress lines
    last = 0.0

    def progress(snapshot: Snapshot) -> None:
        nonlocal sent, last
        now = time.monotonic()
        if now - last < PROGRESS_EVERY:
            return
        last = now
        fields: dict[str, Any] = {"snapshot": snapshot}
        if config.scenario == "scale-out":  # the controller looks for the saturated step
            done = max(0, int(w.elapsed()))  # seconds 0 .. done-1 are over
            fields["seconds"] = {str(k): to_jsonable(w.results.seconds[k])
                                 for k in range(sent, done) if k in w.results.seconds}
            sent = max(sent, done)
        _emit(out, "progress", worker=worker, **fields)

    results = await w.run(max(start_at, time.time()), progress)
    return results, info


# -- the controller's side -----------------------------------------------------------------------


class ApiError(LoadError):
    """A Kubernetes API call failed (an error status, or no answer)."""


API_RETRIES = 5  # consecutive failed looks at the pods before the run gives up


def _kubernetes() -> Any:
    try:
        import kubernetes
    except ImportError:
        raise LoadError("--kube needs the kubernetes client: pip install 'volte[kube]'") from None
    return kubernetes


@dataclass
class PodLog:
    """What one pod printed, read again from the start at each look (bounded: about one line
    per second of load)."""

    name: str
    lines_seen: int = 0
    snapshot: Snapshot = field(default_factory=dict)
    ready: dict[str, Any] | None = None
    result: dict[str, Any] | None = None

    def feed(self, text: str, live: Results | None) -> None:
        lines = text.splitlines()
        if len(lines) < self.lines_seen:  # the kubelet rotated the log: all of it is new
            self.lines_seen = 0
        for line in lines[self.lines_seen:]:
            if not line.startswith(f'{{"{LINE_KEY}":'):
                continue
            try:
                message = json.loads(line)
            except ValueError:
                continue  # a line cut short: the next look has it whole
            kind = message.get(LINE_KEY)
            if kind == "ready":
                self.ready = message
            elif kind == "progress":
                self.snapshot = message.get("snapshot", {})
                if live is not None:
                    for k, second in message.get("seconds", {}).items():
                        live.second(int(k)).merge(from_jsonable(Second, second))
            elif kind == "result":
                self.result = message
        complete = len(lines) if text.endswith("\n") else max(0, len(lines) - 1)
        self.lines_seen = max(self.lines_seen, complete)


class Cluster:
    """One kube context: its API clients, namespace, target and Job."""

    def __init__(self, k8s: Any, context: str | None, options: KubeOptions, first: int) -> None:
        try:
            contexts, current = k8s.config.list_kube_config_contexts(
                config_file=options.kubeconfig)
            name = context or current["name"]
            entry = next((c for c in contexts if c["name"] == name), None)
            if entry is None:
                known = ", ".join(c["name"] for c in contexts)
                raise LoadError(f"no kube context {name!r} in the kubeconfig (it has: {known})")
            api = k8s.config.new_client_from_config(config_file=options.kubeconfig,
                                                    context=name)
        except k8s.config.ConfigException as exc:
            raise LoadError(f"kubeconfig: {exc}") from None
        import urllib3

        self.http_errors = urllib3.exceptions.HTTPError
        self.k8s = k8s
        self.context: str = name
        self.namespace: str = options.namespace or entry["context"].get("namespace") \
            or "default"
        self.core = k8s.client.CoreV1Api(api)
        self.batch = k8s.client.BatchV1Api(api)
        self.apps = k8s.client.AppsV1Api(api)
        fullname = chart_fullname(options.release)
        self.target: Address = options.targets.get(name) or (
            f"{fullname}-sip.{self.namespace}.svc", SIP_PORT)
        # The release's enb-agent: S1AP on the s1ap Service, BearerControl on its own.
        self.enb_sctp: Address = (f"{fullname}-s1ap.{self.namespace}.svc", ENB_SCTP_PORT)
        self.enb_grpc = f"{fullname}-enb-agent.{self.namespace}.svc:{ENB_GRPC_PORT}"
        self.first = first  # the worker index of this context's pod 0
        self.job = ""

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """An API call; its failure as a LoadError saying what and where."""
        try:
            return fn(*args, **kwargs)
        except self.k8s.client.ApiException as exc:
            raise ApiError(f"{what} in context {self.context} (namespace {self.namespace}): "
                            f"{exc.status} {exc.reason}: {_api_message(exc)}") from None
        except (OSError, self.http_errors) as exc:  # no API server there, TLS, ...
            raise ApiError(f"{what} in context {self.context}: the API server did not "
                            f"answer: {getattr(exc, 'reason', None) or exc}") from None

    def pods(self, selector: str) -> list[Any]:
        found = self.call("listing pods", self.core.list_namespaced_pod, self.namespace,
                          label_selector=selector)
        return sorted(found.items, key=lambda p: p.metadata.name)

    def log(self, pod: str, tail: int | None = None) -> str:
        response = self.call(f"reading the log of pod {pod}", self.core.read_namespaced_pod_log,
                             pod, self.namespace, container="loadgen", tail_lines=tail,
                             _preload_content=False)
        return bytes(response.data).decode("utf-8", "replace")

    def tail(self, pod: str) -> str:
        """The pod's last log lines, for an error message (best effort)."""
        try:
            lines = self.log(pod, LOG_TAIL).splitlines()
        except LoadError as exc:
            return f"    (no log: {exc})"
        lines = [line if len(line) < 300 else line[:300] + " ..." for line in lines]
        return "\n".join(f"    {line}" for line in lines) or "    (empty log)"


def _api_message(exc: Any) -> str:
    """The message of the API server's Status (its body, cut short, if it sent none)."""
    try:
        message = str(json.loads(exc.body).get("message", exc.body))
    except (TypeError, ValueError, AttributeError):
        message = str(exc.body)
    return message if len(message) <= 300 else message[:300] + " ..."


def _pod_state(pod: Any) -> str:
    """`Failed (Error, exit 3)`, `Pending (ImagePullBackOff)`: the phase and why."""
    phase = pod.status.phase if pod.status else "Unknown"
    reasons = []
    for status in (pod.status.container_statuses or []) if pod.status else []:
        state = status.state
        if state is not None and state.waiting is not None:
            reasons.append(state.waiting.reason or "waiting")
        elif state is not None and state.terminated is not None:
            reasons.append(f"{state.terminated.reason or 'terminated'}, "
                           f"exit {state.terminated.exit_code}")
    return f"{phase} ({'; '.join(reasons)})" if reasons else str(phase)


class DeleteSbcPod:
    """failover on Kubernetes: delete one running sbc pod (KILL: grace period 0)."""

    def __init__(self, at: float, cluster: Cluster, release: str, signal_name: str) -> None:
        self.at = at
        self.cluster = cluster
        self.selector = component_selector(release, "sbc")
        self.signal_name = signal_name

    def running(self) -> list[Any]:
        return [p for p in self.cluster.pods(self.selector)
                if p.status and p.status.phase == "Running" and
                p.metadata.deletion_timestamp is None]

    def check(self) -> int:
        pods = self.running()
        if len(pods) < 2:
            c = self.cluster
            raise LoadError(f"failover needs at least 2 running sbc pods (found {len(pods)} "
                            f"with {self.selector} in context {c.context}, namespace "
                            f"{c.namespace})")
        return len(pods)

    def fire(self) -> dict[str, Any]:
        c = self.cluster
        pods = self.running()
        if not pods:
            return {"kind": "kill", "what": "no running sbc pod to delete", "pod": None}
        victim = pods[0].metadata.name
        grace = 0 if self.signal_name == "KILL" else None
        c.call(f"deleting sbc pod {victim}", c.core.delete_namespaced_pod, victim, c.namespace,
               grace_period_seconds=grace)
        return {"kind": "kill", "target": "sbc-pod", "pod": victim, "context": c.context,
                "namespace": c.namespace, "node": pods[0].spec.node_name if pods[0].spec
                else None, "pid": None, "signal": f"SIG{self.signal_name}",
                "pods_before": len(pods),
                "what": f"deleted sbc pod {victim} in context {c.context}"
                        f"{' (grace period 0)' if grace == 0 else ''}"}


class ScaleSbc:
    """scale-out on Kubernetes: one more sbc replica (the Deployment's scale subresource)
    after the first step that saturated, if steps remain."""

    def __init__(self, cluster: Cluster, release: str) -> None:
        self.cluster = cluster
        self.deployment = f"{chart_fullname(release)}-sbc"
        self.checked = 0  # steps looked at
        self.done = False

    def replicas(self) -> int:
        c = self.cluster
        scale = c.call(f"reading the scale of Deployment {self.deployment}",
                       c.apps.read_namespaced_deployment_scale, self.deployment, c.namespace)
        return int(scale.spec.replicas or 0)

    def check(self, config: LoadConfig, live: Results, elapsed: float,
              margin: float) -> dict[str, Any] | None:
        """After each step (and `margin` seconds for the pods' figures to arrive): scale if it
        saturated and another step follows."""
        from loadgen.report import scale_step

        if self.done:
            return None
        while self.checked < len(config.steps) - 1 and \
                elapsed >= (self.checked + 1) * config.step_duration + margin:
            i = self.checked
            self.checked += 1
            base = scale_step(config, live, 0, None)["setup_p99_ms"]
            step = scale_step(config, live, i, base)
            if step["saturated"]:
                self.done = True
                return self.scale(i, step["why"])
        return None

    def scale(self, step: int, why: list[str]) -> dict[str, Any]:
        c = self.cluster
        before = self.replicas()
        c.call(f"scaling Deployment {self.deployment}", c.apps.patch_namespaced_deployment_scale,
               self.deployment, c.namespace, {"spec": {"replicas": before + 1}},
               _content_type="application/merge-patch+json")
        return {"kind": "scale", "target": "sbc-deployment", "deployment": self.deployment,
                "context": c.context, "namespace": c.namespace, "after_step": step,
                "replicas_before": before, "replicas_after": before + 1,
                "what": f"scaled Deployment {self.deployment} in context {c.context} from "
                        f"{before} to {before + 1} replicas after step {step} saturated "
                        f"({', '.join(why)})"}


def run_kube(config: LoadConfig, options: KubeOptions, display: Display,
             say: Callable[[str], None]) -> tuple[Outcome, int | None]:
    """The controller: Jobs in each context, events, results merged; the Jobs deleted."""
    k8s = _kubernetes()
    contexts: tuple[str | None, ...] = options.contexts or (None,)
    clusters = [Cluster(k8s, ctx, options, k * options.workers)
                for k, ctx in enumerate(contexts)]
    total = options.workers * len(clusters)
    unit = config.subscribers if config.scenario == "register" else config.pairs
    if unit < total:
        raise LoadError(f"{total} pods ({options.workers} per context): not enough "
                        f"subscribers to share")
    event: DeleteSbcPod | None = None
    scaler: ScaleSbc | None = None
    sbc_replicas: int | None = None
    if config.scenario == "failover":
        event = DeleteSbcPod(config.failover_at, clusters[0], options.release,
                             config.kill_signal)
        event.check()
    if config.scenario == "scale-out":
        scaler = ScaleSbc(clusters[0], options.release)
        sbc_replicas = scaler.replicas()
    run_id = secrets.token_hex(3)
    created = time.time()
    start_at = created + options.start_delay_for(config)
    deadline = created + options.timeout_for(config)
    base = f"{chart_fullname(options.release)}-loadgen-{config.scenario}"[:55].rstrip("-")
    try:
        for c in clusters:
            name = f"{base}-{run_id}"
            pods_config = config if config.bearers is None else replace(
                config, bearers=replace(config.bearers, sctp=c.enb_sctp, grpc=c.enb_grpc))
            args = agent_args(pods_config, c.target, (c.first, total), start_at,
                              provision_state=options.state)
            manifest = job_manifest(name=name, run_id=run_id, config=config, options=options,
                                    args=args, context=c.context)
            c.call(f"creating Job {name}", c.batch.create_namespaced_job, c.namespace,
                   k8s.client.V1Job.from_dict(manifest))
            c.job = name
            say(f"Job {c.job} in context {c.context}, namespace {c.namespace}: "
                f"{options.workers} pod(s), workers {c.first}..{c.first + options.workers - 1} "
                f"of {total}, target {format_address(c.target)}")
        say(f"the load starts at {time.strftime('%H:%M:%S', time.localtime(start_at))} "
            f"(in {start_at - time.time():.0f} s)")
        return _watch(config, options, clusters, run_id, (start_at, deadline), display, event,
                      scaler, sbc_replicas)
    finally:
        if not options.keep:
            for c in clusters:
                if c.job:
                    try:
                        c.call(f"deleting Job {c.job}", c.batch.delete_namespaced_job, c.job,
                               c.namespace, propagation_policy="Background")
                    except LoadError as exc:
                        say(f"loadgen: {exc}: delete it yourself (its pods may still run)")


def _watch(config: LoadConfig, options: KubeOptions, clusters: list[Cluster], run_id: str,
           times: tuple[float, float], display: Display, event: DeleteSbcPod | None,
           scaler: ScaleSbc | None, sbc_replicas: int | None) -> tuple[Outcome, int | None]:
    """Look at the pods every --poll seconds until each context's are done; fire the events."""
    start_at, deadline = times
    selector = f"{RUN_LABEL}={run_id}"
    logs: dict[tuple[str, str], PodLog] = {}
    live = Results() if scaler is not None else None
    events: list[dict[str, Any]] = []
    started = False
    all_ready = False
    failures = 0
    finished: dict[str, list[tuple[Any, PodLog]]] = {}
    try:
        while True:
            now = time.time()
            try:
                finished = {c.context: _look(c, selector, logs, live) for c in clusters}
                failures = 0
            except ApiError as exc:  # a blip of the API server: look again, a few times
                failures += 1
                if failures >= API_RETRIES:
                    raise
                display.note(f"{exc} (looking again)")
            if not started and now >= start_at:
                started = True
                display.start(config.planned_seconds(), config.scenario)
            if started and not all_ready and \
                    sum(log.ready is not None for log in logs.values()) >= len(clusters) * \
                    options.workers:
                all_ready = True
                registered = sum(int(log.ready["registered"]) for log in logs.values()
                                 if log.ready is not None)
                display.note(f"all {len(logs)} pods ready, {registered} UEs registered")
            if started:
                display.update(_sum_snapshots({i: log.snapshot for i, log in enumerate(
                    logs.values())}))
            elapsed = now - start_at
            if event is not None and not events and elapsed >= event.at:
                events.append(_stamped(event.fire(), start_at, display))
            if scaler is not None and live is not None:
                scaled = scaler.check(config, live, elapsed, margin=2 * options.poll + 1.5)
                if scaled is not None:
                    events.append(_stamped(scaled, start_at, display))
            if all(len(finished.get(c.context, [])) >= options.workers for c in clusters):
                break
            if now > deadline:
                raise LoadError(_timeout_message(clusters, selector, finished, options,
                                                 options.timeout_for(config)))
            wait = options.poll
            if event is not None and not events:
                wait = min(wait, max(0.05, start_at + event.at - now))
            time.sleep(wait)
    finally:
        if started:
            display.stop()
    return _outcome(config, options, clusters, finished, events, start_at), sbc_replicas


def _look(c: Cluster, selector: str, logs: dict[tuple[str, str], PodLog],
          live: Results | None) -> list[tuple[Any, PodLog]]:
    """One look at a context's pods: their new log lines read; the finished ones."""
    finished = []
    for pod in c.pods(selector):
        name = pod.metadata.name
        phase = pod.status.phase if pod.status else None
        if phase == "Failed":
            raise LoadError(f"pod {name} (context {c.context}) failed: {_pod_state(pod)}; its "
                            f"last log lines:\n{c.tail(name)}")
        if phase not in ("Running", "Succeeded"):
            continue
        log = logs.setdefault((c.context, name), PodLog(name))
        if log.result is None:
            log.feed(c.log(name), live)
        if phase == "Succeeded":
            if log.result is None:
                raise LoadError(f"pod {name} (context {c.context}) succeeded without a result "
                                f"line; its last log lines:\n{c.tail(name)}")
            finished.append((pod, log))
    return finished


def _stamped(happened: dict[str, Any], start_at: float, display: Display) -> dict[str, Any]:
    happened["t_s"] = round(time.time() - start_at, 3)
    display.note(f"t={happened['t_s']:.1f}s {happened.get('what', 'event')}")
    return happened


def _timeout_message(clusters: list[Cluster], selector: str,
                     finished: dict[str, list[tuple[Any, PodLog]]],
                     options: KubeOptions, timeout: float) -> str:
    lines = [f"the Jobs did not finish within {timeout:g} s (--kube-timeout):"]
    for c in clusters:
        done = {p.metadata.name for p, _ in finished.get(c.context, [])}
        pods = c.pods(selector)
        if len(pods) < options.workers:
            lines.append(f"  context {c.context}: {len(pods)} of {options.workers} pods of Job "
                         f"{c.job} exist (quota? admission?)")
        for pod in pods:
            if pod.metadata.name not in done:
                lines.append(f"  pod {pod.metadata.name} (context {c.context}): "
                             f"{_pod_state(pod)}; its last log lines:\n"
                             f"{c.tail(pod.metadata.name)}")
    return "\n".join(lines)


def _outcome(config: LoadConfig, options: KubeOptions, clusters: list[Cluster],
             finished: dict[str, list[tuple[Any, PodLog]]], events: list[dict[str, Any]],
             start_at: float) -> Outcome:
    parts: dict[int, Results] = {}
    places: list[dict[str, Any]] = []
    for c in clusters:
        pods: list[dict[str, Any]] = []
        for pod, log in sorted(finished[c.context], key=lambda pl: int(pl[1].result["worker"])
                               if pl[1].result else 0):
            assert log.result is not None
            worker = int(log.result["worker"])
            if worker in parts:
                raise LoadError(f"two pods report worker {worker} (pod {pod.metadata.name})")
            parts[worker] = results_from_json(log.result["results"])
            annotations = pod.metadata.annotations or {}
            pods.append({"pod": pod.metadata.name, "index": annotations.get(INDEX_ANNOTATION),
                         "worker": worker, "node": pod.spec.node_name if pod.spec else None,
                         "ues": parts[worker].ues, "usable": log.result.get("usable"),
                         "registered": log.result.get("registered"),
                         "late_s": log.result.get("late_s")})
        places.append({"context": c.context, "namespace": c.namespace, "job": c.job,
                       "target": format_address(c.target), "first_worker": c.first,
                       "pods": pods})
    total = options.workers * len(clusters)
    missing = sorted(set(range(total)) - set(parts))
    if missing:
        raise LoadError(f"no result from worker(s) {missing}")
    if not any(p["usable"] for place in places for p in place["pods"]):
        what = "UE pair registered" if config.is_call_scenario else "UE socket opened"
        targets = ", ".join(f"{p['target']} ({p['context']})" for p in places)
        raise LoadError(f"no {what} in any pod: is the sbc at {targets} up, and are "
                        f"subscribers {config.start}.. provisioned in domain {config.domain} "
                        f"with this password (--provision)?")
    late = [p["pod"] for place in places for p in place["pods"] if (p["late_s"] or 0) > 0]
    merged = merge_all([parts[i] for i in range(total)])
    registered = sum(int(p["registered"] or 0) for place in places for p in place["pods"])
    kube = {"image": options.image, "release": options.release, "start_at": start_at,
            "workers_per_context": options.workers, "contexts": places,
            "late_pods": late, "jobs_kept": options.keep}
    return Outcome(merged, events, start_at, registered, kube)
