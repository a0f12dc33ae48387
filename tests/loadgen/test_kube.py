"""loadgen --kube: workers as Indexed Jobs in two clusters, against a MOCK Kubernetes API server.

No Kubernetes API server can run on this machine, so the API server is mocked: one kmock
KubernetesEmulator (PyPI `kmock`: an in-memory Kubernetes API over HTTP on loopback, speaking
the real paths and JSON) per cluster, and a kubeconfig with two contexts, `private` and
`public`, one per mock. loadgen talks to them through the real kubernetes client.

The mock stores objects but runs no controllers, so this module plays their part, and says so:
like the Job controller it creates an Indexed Job's pods (the template's labels, the
completion-index annotation); like the kubelet it runs each pod's container (the loadgen
image's entrypoint `loadgen` with the pod's args and env: JOB_COMPLETION_INDEX, POD_IP) as a
real local process and serves what it prints as the pod's log (`pods/NAME/log`); like the
garbage collector it stops a deleted Job's pods. Everything else is real: the agents register
and call through a real stack (redis-server, state, media, an sbc with two workers) on
loopback, and the cluster's "sbc pods" are that sbc's worker processes, so deleting one kills
its process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from kmock import Response  # type: ignore[attr-defined]  # kmock 0.8: public, not in __all__

from loadgen.bearers import BearerConfig
from loadgen.cli import build_parser, config_from_args, main
from loadgen.config import LoadConfig, Mix
from loadgen.kube import (
    BOOLEAN_FLAGS,
    CONTAINER_SECURITY,
    INDEX_ANNOTATION,
    NOT_PASSED,
    POD_SECURITY,
    RUN_LABEL,
    VALUE_FLAGS,
    PodLog,
    agent_args,
    agent_share,
    chart_fullname,
    component_selector,
)
from loadgen.scenarios import sbc_workers
from loadgen.stats import Results, Second, merge_all, results_from_json, to_jsonable
from services.stack import Stack, free_port, pid_alive
from services.subscribers import Provisioner
from tests.loadgen.test_scenarios import start_stack

FIRST = 610000
PROVISIONED = 610100  # the first of the subscribers the pods provision themselves
PASSWORD = "k8s-secret"
IMAGE = "registry.lab/volte-loadgen:test"
CHART_VALUES = Path(__file__).parents[2] / "charts" / "volte" / "values.yaml"
JOBS, PODS, DEPLOYMENTS = "batch/v1/jobs", "v1/pods", "apps/v1/deployments"


# -- the mock clusters ---------------------------------------------------------------------------


class FakeCluster:
    """A mock API server (kmock) plus what this test does in place of the Job controller, the
    kubelet and the garbage collector."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.api = kmock.KubernetesEmulator()
        self.server = kmock.Server(self.api)
        self.logs: dict[str, str] = {}
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.sbc_pids: dict[str, int] = {}  # sbc pod name -> the sbc worker process
        self.killed: list[tuple[str, int, int]] = []  # (pod, pid, signal)
        self.tasks: set[asyncio.Task[None]] = set()
        self.unavailable = 0  # answer so many pod lists with 503 (an API server's blip)

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        await stack.enter_async_context(self.api)
        await stack.enter_async_context(self.server)
        for resource in (JOBS, PODS, DEPLOYMENTS):
            self.api.resources[resource] = kmock.ResourceInfo(namespaced=True)
        api = self.api
        api[kmock.action.CREATE, kmock.resource(JOBS)] << self._job_created
        api[kmock.action.DELETE, kmock.resource(JOBS)] << self._job_deleted
        api[kmock.action.DELETE, kmock.resource(PODS)] << self._pod_deleted
        api["get", kmock.resource(PODS), kmock.subresource("log")] << self._log
        api[kmock.action.LIST, kmock.resource(PODS)] << self._list_pods
        api[kmock.resource(DEPLOYMENTS), kmock.subresource("scale")] << self._scale

    @property
    def url(self) -> str:
        return str(self.server.url).rstrip("/")

    def requests(self, method: str, resource: str, sub: str | None = None) -> list[Any]:
        plural = resource.rsplit("/", 1)[1]
        return [r for r in self.api if r.method == method.upper() and r.resource is not None
                and r.resource.plural == plural and getattr(r, "subresource", None) == sub]

    def objects(self, resource: str) -> list[dict[str, Any]]:
        plural = resource.rsplit("/", 1)[1]
        return [obj.raw for (res, _, _), obj in self.api.objects.items()
                if res.plural == plural and not obj.deleted]

    def add_sbc_pods(self, pids: list[int]) -> list[str]:
        names = []
        for pid in pids:
            name = f"volte-sbc-{pid}"
            labels = dict(term.split("=") for term in component_selector("volte", "sbc")
                          .split(","))
            self.api.objects[PODS, self.namespace, name] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
                "spec": {"nodeName": "node-a", "containers": [{"name": "sbc", "image": "sbc"}]},
                "status": {"phase": "Running"}}
            self.sbc_pids[name] = pid
            names.append(name)
        return names

    def add_sbc_deployment(self, replicas: int) -> None:
        self.api.objects[DEPLOYMENTS, self.namespace, "volte-sbc"] = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "volte-sbc", "namespace": self.namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {}},
                     "template": {"spec": {"containers": [{"name": "sbc", "image": "sbc"}]}}},
            "status": {"replicas": replicas}}

    # -- the API server's reactions (None: kmock's emulator answers as usual) ----------------
    def _list_pods(self, request: Any) -> dict[str, Any]:
        """The list with its labelSelector applied (kmock's emulator does not filter)."""
        if self.unavailable:
            self.unavailable -= 1
            raise kmock.KubernetesError(status=503, reason="ServiceUnavailable",
                                        message="etcd leader changed")
        terms = [t.split("=", 1) for t in request.params.get("labelSelector", "").split(",")
                 if t]
        items = [pod for pod in self.objects(PODS)
                 if all(pod["metadata"].get("labels", {}).get(k) == v for k, v in terms)]
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}

    def _log(self, request: Any) -> Response:
        """The log as the API server sends it: text/plain (kmock would send a str as JSON)."""
        text = self.logs.get(request.name, "")
        tail = request.params.get("tailLines")
        if tail:
            text = "".join(text.splitlines(keepends=True)[-int(tail):])
        return Response(payload=text.encode(),
                        headers={"Content-Type": "text/plain; charset=utf-8"})

    def _scale(self, request: Any) -> dict[str, Any]:
        deployment = self.api.objects[DEPLOYMENTS, request.namespace, request.name].raw
        replicas = deployment["spec"]["replicas"]  # PATCHed already by the emulator
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": request.name, "namespace": request.namespace},
                "spec": {"replicas": replicas}, "status": {"replicas": replicas}}

    def _job_created(self, request: Any) -> None:
        """The Job controller: the Indexed Job's pods, each run by the 'kubelet'."""
        job = request.data
        template = job["spec"]["template"]
        unpullable = "unpullable" in template["spec"]["containers"][0]["image"]
        for index in range(job["spec"]["parallelism"]):
            name = f"{job['metadata']['name']}-{index}-x{index:04d}"
            self.api.objects[PODS, request.namespace, name] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": request.namespace,
                             "labels": {**template["metadata"]["labels"],
                                        "job-name": job["metadata"]["name"]},
                             "annotations": {INDEX_ANNOTATION: str(index)}},
                "spec": {**template["spec"], "nodeName": f"node-{index}"},
                "status": {"phase": "Pending"}}
            if unpullable:  # the kubelet cannot pull the image: the pod stays Pending
                self.api.objects[PODS, request.namespace, name].patch({"status": {
                    "containerStatuses": [{
                        "name": "loadgen", "image": "x", "imageID": "", "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}})
                continue
            task = asyncio.ensure_future(self._kubelet(request.namespace, name, index,
                                                       template["spec"]["containers"][0]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _kubelet(self, namespace: str, name: str, index: int,
                       container: dict[str, Any]) -> None:
        env = {**os.environ, "JOB_COMPLETION_INDEX": str(index), "POD_IP": "127.0.0.1"}
        env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
        args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), a)
                for a in container["args"]]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadgen", *args, env=env,  # the image's entrypoint
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self.procs[name] = proc
        pod = self.api.objects[PODS, namespace, name]
        pod.patch({"status": {"phase": "Running", "podIP": "127.0.0.1"}})
        self.logs[name] = ""
        assert proc.stdout is not None
        async for line in proc.stdout:
            self.logs[name] += line.decode()
        code = await proc.wait()
        if not pod.deleted:
            pod.patch({"status": {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [{
                    "name": "loadgen", "image": container["image"], "imageID": "",
                    "ready": False, "restartCount": 0,
                    "state": {"terminated": {"exitCode": code,
                                             "reason": "Completed" if code == 0 else "Error"}},
                }]}})

    def _job_deleted(self, request: Any) -> None:
        """The garbage collector: the Job's pods go, their processes stopped."""
        for name, proc in self.procs.items():
            if name.startswith(f"{request.name}-") and proc.returncode is None:
                proc.kill()

    def _pod_deleted(self, request: Any) -> None:
        """The kubelet stops a deleted pod's container: for an sbc pod, its worker process."""
        pid = self.sbc_pids.get(request.name)
        if pid is None:
            return
        grace = request.params.get("gracePeriodSeconds")
        if grace is None and isinstance(request.data, dict):
            grace = request.data.get("gracePeriodSeconds")
        sig = signal.SIGKILL if str(grace) == "0" else signal.SIGTERM
        self.killed.append((request.name, pid, sig))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def write_kubeconfig(path: Path, clusters: dict[str, FakeCluster]) -> str:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "private",
        "clusters": [{"name": f"{n}-cluster", "cluster": {"server": c.url}}
                     for n, c in clusters.items()],
        "users": [{"name": "lab", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": n, "context": {"cluster": f"{n}-cluster", "user": "lab",
                                             "namespace": c.namespace}}
                     for n, c in clusters.items()],
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
async def clusters(tmp_path: Path) -> AsyncIterator[tuple[str, FakeCluster, FakeCluster]]:
    private, public = FakeCluster("lab-private"), FakeCluster("lab-public")
    async with contextlib.AsyncExitStack() as stack:
        for cluster in (private, public):
            await cluster.start(stack)
        try:
            yield (write_kubeconfig(tmp_path / "kubeconfig",
                                    {"private": private, "public": public}), private, public)
        finally:
            for cluster in (private, public):
                await cluster.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(str(tmp_path_factory.mktemp("stack")))
    provisioner = Provisioner(stack.config.state_grpc)
    provisioner.provision(20, FIRST, stack.config.domain, PASSWORD)  # (not those of PROVISIONED)
    provisioner.close()
    yield stack
    stack.stop()


async def loadgen_kube(tmp_path: Path, kubeconfig: str, *args: str,
                       start: int = FIRST, timeout: float = 90) -> tuple[int, dict[str, Any]]:
    """`loadgen ... --kube` (its main() in a thread: the mock API servers run on this loop)."""
    report = tmp_path / "report.json"
    code = await asyncio.to_thread(main, [
        *args, "--kube", "--kubeconfig", kubeconfig, "--image", IMAGE, "--password", PASSWORD,
        "--start", str(start), "--kube-poll", "0.3", "--kube-start-delay", "5",
        "--kube-timeout", str(timeout), "--report", str(report), "--progress", "lines",
        "--run-dir", str(tmp_path / "no-stack"),
    ])
    return code, json.loads(report.read_text()) if report.exists() else {}


def sip(stack: Stack, host: str = "127.0.0.1") -> str:
    return f"{host}:{stack.config.sip_port}"


def posted_job(cluster: FakeCluster) -> dict[str, Any]:
    posts = cluster.requests("post", JOBS)
    assert len(posts) == 1
    return dict(posts[0].data)


def pod_results(cluster: FakeCluster) -> list[dict[str, Any]]:
    """The result line each of the cluster's loadgen pods printed."""
    found = []
    for name, text in cluster.logs.items():
        lines = [json.loads(line) for line in text.splitlines()
                 if line.startswith('{"loadgen":"result"')]
        assert len(lines) == 1, (name, text[-2000:])
        found.append(lines[0])
    return found


# -- pure parts -----------------------------------------------------------------------------------


def test_every_config_field_reaches_the_pods_or_is_left_out_on_purpose() -> None:
    covered = {name for name, _ in VALUE_FLAGS} | {name for name, _ in BOOLEAN_FLAGS} | \
        set(NOT_PASSED)
    assert covered == set(LoadConfig.__dataclass_fields__)


def test_a_pods_args_parse_back_to_the_runs_config_and_its_share() -> None:
    config = LoadConfig("scale-out", subscribers=40, start=5000, password="p w", rate=7.5,
                        ramp=2, hold=0.25, mix=Mix(0.1, 0.05), seed=9, media=False,
                        clear_bindings=False, reregister=30.0,
                        bearers=BearerConfig(enbs=4, sctp=("volte-s1ap.lab.svc", 36412),
                                             grpc="volte-enb-agent.lab.svc:50081",
                                             transport="userspace", failures=0.25),
                        steps=(5.0, 10.0, 20.5), step_duration=4, event_at=None)
    args = agent_args(config, ("10.1.2.3", 5070), (2, 4), 1.5e9)
    parsed, _ = config_from_args(build_parser().parse_args([*args, "--bind", "10.9.9.9"]))
    from dataclasses import replace

    assert parsed == replace(config, targets=(("10.1.2.3", 5070),), bind="10.9.9.9",
                             run_dir=parsed.run_dir)  # not passed: no stack in a pod
    worker, share = agent_share(parsed, (2, 4), {"JOB_COMPLETION_INDEX": "1"})
    assert worker == 3 and share == replace(parsed.share(3, 4), targets=parsed.targets)
    with pytest.raises(Exception, match="JOB_COMPLETION_INDEX"):
        agent_share(parsed, (2, 4), {})


def test_a_pods_log_is_read_line_by_line_whole_lines_only() -> None:
    log = PodLog("p")
    live = Results()
    second = to_jsonable(Second(offered=3, achieved=2))
    lines = [
        "loadgen call-setup: 4 UEs ...",  # not ours
        json.dumps({"loadgen": "ready", "worker": 1, "usable": 2, "registered": 4}),
        json.dumps({"loadgen": "progress", "snapshot": {"offered": 3.0},
                    "seconds": {"0": second}}),
    ]
    text = "\n".join(lines) + "\n" + '{"loadgen":"result","wor'  # the last line not whole yet
    log.feed(text, live)
    assert log.ready is not None and log.ready["registered"] == 4
    assert log.snapshot == {"offered": 3.0} and live.second(0).achieved == 2
    result = log.result
    assert result is None
    log.feed(text + 'ker":1,"results":{}}\n', live)  # the whole log again, now complete
    assert log.result == {"loadgen": "result", "worker": 1, "results": {}}
    assert live.second(0).offered == 3  # the progress line was not counted twice


@pytest.mark.parametrize("version", ["1.29.0", "latest"])
def test_the_job_is_valid_for_kubernetes(version: str) -> None:
    """The Job against Kubernetes' own OpenAPI schema (kubernetes-validate, offline, strict)."""
    import kubernetes_validate  # type: ignore[import-untyped]
    from kubernetes_validate.utils import latest_version  # type: ignore[import-untyped]

    from loadgen.kube import KubeOptions, job_manifest

    config = LoadConfig("call-setup", subscribers=10)
    options = KubeOptions(workers=3, image=IMAGE)
    args = agent_args(config, ("volte-sip.lab.svc", 5060), (0, 3), 1.5e9)
    manifest = job_manifest(name="volte-loadgen-call-setup-abc123", run_id="abc123",
                            config=config, options=options, args=args, context="lab")
    manifest["metadata"]["namespace"] = "lab"
    kubernetes_validate.validate(manifest, latest_version() if version == "latest" else version,
                                 strict=True)


def test_chart_names() -> None:
    assert chart_fullname("volte") == "volte" and chart_fullname("lab") == "lab-volte"
    assert component_selector("lab", "sbc") == (
        "app.kubernetes.io/name=volte,app.kubernetes.io/instance=lab,"
        "app.kubernetes.io/component=sbc")


def test_the_jobs_pods_are_as_locked_down_as_the_charts() -> None:
    values = yaml.safe_load(CHART_VALUES.read_text())
    assert values["podSecurityContext"] == POD_SECURITY
    assert values["containerSecurityContext"] == CONTAINER_SECURITY


@pytest.mark.parametrize("argv", [
    ["call-setup", "--kube", "--workers", "2"],
    ["call-setup", "--kube", "--timeline", "t.jsonl"],
    ["call-setup", "--kube", "--kube-context", "a", "--kube-target", "b=1.2.3.4:5060"],
    ["call-setup", "--kube-target", "nohost"],
    ["call-setup", "--shard", "4/4", "--start-at", "1"],
    ["call-setup", "--shard", "0/4"],
])
def test_kube_usage_errors_exit_2(argv: list[str], tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--run-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


# -- against the mock API servers, with real agents and a real stack ----------------------------


@pytest.mark.slow
@pytest.mark.interop
async def test_call_setup_in_two_clusters_merges_every_pods_results(
    stack: Stack, clusters: tuple[str, FakeCluster, FakeCluster], tmp_path: Path,
    capsys: Any
) -> None:
    kubeconfig, private, public = clusters
    public.unavailable = 2  # two looks at the public cluster's pods fail: the run goes on
    code, report = await loadgen_kube(
        tmp_path, kubeconfig, "call-setup", "--subscribers", "16", "--rate", "8",
        "--duration", "3", "--hold", "0.5", "--kube-context", "private", "--kube-context",
        "public", "--kube-workers", "2", "--kube-target", f"private={sip(stack)}",
        "--kube-target", f"public={sip(stack, 'localhost')}",
        "--provision", "--state", stack.config.state_grpc,  # each pod its own share
        start=PROVISIONED)
    assert code == 0, report.get("warnings")
    out = " ".join(capsys.readouterr().out.split())
    assert "listing pods in context public (namespace lab-public): 503 " in out
    assert "etcd leader changed (looking again)" in out

    # One Indexed Job per cluster, each in its context's namespace.
    for cluster, first, target in ((private, 0, sip(stack)),
                                   (public, 2, sip(stack, "localhost"))):
        job = posted_job(cluster)
        assert cluster.requests("post", JOBS)[0].namespace == cluster.namespace
        spec = job["spec"]
        assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == \
            ("Indexed", 2, 2)
        assert spec["backoffLimit"] == 0
        labels = spec["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "loadgen"
        assert labels["app.kubernetes.io/instance"] == "volte" and RUN_LABEL in labels
        assert labels["app.kubernetes.io/name"] == "volte"  # the chart's NetworkPolicies admit it
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"]
        assert pod["automountServiceAccountToken"] is False
        container = pod["containers"][0]
        assert container["image"] == IMAGE
        assert container["securityContext"]["readOnlyRootFilesystem"]
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        args = container["args"]
        assert args[0] == "call-setup" and f"--shard={first}/4" in args
        assert f"--target={target}" in args and "--bind=$(POD_IP)" in args
        assert f"--state={stack.config.state_grpc}" in args and "--provision" in args
    # Each index's share, as its pod computes it: the 8 pairs split without overlap, the rate
    # split in four.
    shares = []
    for cluster in (private, public):
        args = posted_job(cluster)["spec"]["template"]["spec"]["containers"][0]["args"]
        config, _ = config_from_args(build_parser().parse_args(args))
        for index in range(2):
            shares.append(agent_share(config, config_shard(args),
                                      {"JOB_COMPLETION_INDEX": str(index)})[1])
    numbers = sorted(n for s in shares for n in range(s.start, s.start + s.subscribers))
    assert numbers == list(range(PROVISIONED, PROVISIONED + 16))
    assert sum(s.rate for s in shares) == pytest.approx(8)

    # The report: the four pods' results merged as local workers' are (exact histograms).
    results = [results_from_json(r["results"]) for c in (private, public)
               for r in pod_results(c)]
    merged = merge_all(results)
    calls = report["calls"]
    assert report["engine"]["workers"] == 4 and report["engine"]["ues"] == 16
    assert calls["attempted"] == sum(r.attempted for r in results) == merged.attempted
    assert calls["attempted"] == calls["succeeded"] + calls["failed"]
    assert calls["succeeded"] >= 0.9 * calls["attempted"] > 0
    assert report["latency_ms"]["invite_to_200"] == merged.latency["invite_to_200"].summary()
    assert report["latency_ms"]["invite_to_200"]["count"] == sum(
        r.latency["invite_to_200"].count for r in results)
    kube = report["kube"]
    assert [c["context"] for c in kube["contexts"]] == ["private", "public"]
    assert [c["namespace"] for c in kube["contexts"]] == ["lab-private", "lab-public"]
    assert [[p["worker"] for p in c["pods"]] for c in kube["contexts"]] == [[0, 1], [2, 3]]
    assert all(p["pod"].startswith(c["job"]) for c in kube["contexts"] for p in c["pods"])

    # Cleanup: each Job deleted, its pods with it (propagation Background).
    for cluster in (private, public):
        deletes = cluster.requests("delete", JOBS)
        assert len(deletes) == 1
        assert deletes[0].params.get("propagationPolicy") == "Background"
        assert cluster.objects(JOBS) == []


def config_shard(args: list[str]) -> tuple[int, int]:
    return build_parser().parse_args(args).shard  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.interop
async def test_a_failed_pod_ends_the_run_naming_it_with_its_last_log_lines(
    stack: Stack, clusters: tuple[str, FakeCluster, FakeCluster], tmp_path: Path,
    capsys: Any
) -> None:
    kubeconfig, private, _ = clusters
    nobody = f"127.0.0.1:{free_port()}"  # no sbc there: the pod's REGISTER gets no answer
    code, report = await loadgen_kube(
        tmp_path, kubeconfig, "call-setup", "--subscribers", "4", "--rate", "2",
        "--duration", "2", "--register-timeout", "1", "--kube-context", "private",
        "--kube-target", f"private={nobody}")
    out = " ".join(capsys.readouterr().out.split())  # as one line: the console wraps at 80
    assert code == 3 and report == {}
    pod = next(iter(private.logs))
    assert f"pod {pod} (context private) failed: Failed (Error, exit 3)" in out
    assert "loadgen: no answer to REGISTER from" in out  # the pod's last words, from its log
    assert len(private.requests("delete", JOBS)) == 1  # cleaned up all the same


async def test_a_run_past_its_time_limit_names_the_pods_that_did_not_finish(
    clusters: tuple[str, FakeCluster, FakeCluster], tmp_path: Path, capsys: Any
) -> None:
    kubeconfig, _, public = clusters
    code = await asyncio.to_thread(main, [
        "call-setup", "--kube", "--kubeconfig", kubeconfig, "--kube-context", "public",
        "--image", "registry.lab/unpullable:1", "--subscribers", "4", "--duration", "1",
        "--kube-start-delay", "0.5", "--kube-timeout", "2", "--kube-poll", "0.2",
        "--run-dir", str(tmp_path)])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 3
    pod = next(p["metadata"]["name"] for p in public.objects(PODS))
    assert "the Jobs did not finish within 2 s (--kube-timeout)" in out
    assert f"pod {pod} (context public): Pending (ImagePullBackOff)" in out
    assert len(public.requests("delete", JOBS)) == 1


@pytest.mark.slow
@pytest.mark.interop
async def test_scale_out_patches_the_sbc_deployment_at_saturation(
    stack: Stack, clusters: tuple[str, FakeCluster, FakeCluster], tmp_path: Path
) -> None:
    kubeconfig, private, _ = clusters
    private.add_sbc_deployment(2)
    # 4 UE pairs holding each call 1.5 s can carry about 2.5 calls/s: the 30 cps steps saturate.
    code, report = await loadgen_kube(
        tmp_path, kubeconfig, "scale-out", "--subscribers", "8", "--steps", "1,30,30,30",
        "--step-duration", "3", "--hold", "1.5", "--kube-context", "private",
        "--kube-workers", "2", "--kube-target", f"private={sip(stack)}")
    assert code == 0
    patches = private.requests("patch", DEPLOYMENTS, "scale")
    assert len(patches) == 1
    assert patches[0].data == {"spec": {"replicas": 3}}
    assert patches[0].headers["Content-Type"] == "application/merge-patch+json"
    scale = report["scale_out"]
    assert scale["scaled"] is True and scale["sbc_workers"] == 2
    assert "from 2 to 3 replicas" in scale["action"]
    assert set(scale["cps_by_workers"]) == {"2", "3"}
    assert scale["steps"][-1]["sbc_workers"] == 3
    event = next(e for e in report["events"] if e["kind"] == "scale")
    assert event["context"] == "private" and event["deployment"] == "volte-sbc"


@pytest.mark.slow
@pytest.mark.interop
async def test_failover_deletes_an_sbc_pod(
    stack: Stack, clusters: tuple[str, FakeCluster, FakeCluster], tmp_path: Path
) -> None:
    """Last in this module: it kills one of the stack's sbc workers (its supervisor starts
    another)."""
    kubeconfig, private, _ = clusters
    pods = private.add_sbc_pods(sbc_workers(stack.config.run_dir))
    assert len(pods) == 2
    started = time.monotonic()
    code, report = await loadgen_kube(
        tmp_path, kubeconfig, "failover", "--subscribers", "8", "--rate", "4",
        "--duration", "4", "--event-at", "1.5", "--hold", "1", "--kube-context", "private",
        "--kube-target", f"private={sip(stack)}")
    assert code in (0, 1), report
    deletes = private.requests("delete", PODS)
    assert [r.name for r in deletes] == [pods[0]]
    assert deletes[0].params.get("gracePeriodSeconds") == "0"
    victim, pid, sig = private.killed[0]
    assert (victim, sig) == (pods[0], signal.SIGKILL)
    for _ in range(50):
        if not pid_alive(pid):
            break
        await asyncio.sleep(0.1)
    assert not pid_alive(pid)
    failover = report["failover"]
    assert (failover["killed_pod"], failover["killed_in_context"]) == (pods[0], "private")
    assert failover["signal"] == "SIGKILL"
    assert 1.0 <= failover["killed_at_s"] <= 3.0
    assert time.monotonic() - started < 60
