"""Rendering the volte chart for tests: helm (from the PyPI wheel), profiles, object lookups."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate.utils  # type: ignore[import-untyped]
import yaml

from tests.deploy.helm_bin import ensure_helm

# kubernetes_validate reads and parses its schema files (the definitions are megabytes) for
# every object; the files never change, so parse each once: 0.5 s per rendering -> 0.05 s.
kubernetes_validate.utils.schema_contents = functools.cache(
    kubernetes_validate.utils.schema_contents)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "volte"
RELEASE = "volte"
# Object names: <fullname>-<component>; a release named like the chart is the fullname itself.
FULLNAME = "volte"
NAMESPACE = "telco"
# Every values file the chart ships (each is linted and rendered on its own as well).
VALUES_FILES = ("values.yaml", "values-private.yaml", "values-public.yaml",
                "values-site-a.yaml", "values-site-b.yaml")

Obj = dict[str, Any]


@dataclass(frozen=True)
class Profile:
    """A way users install the chart: values files layered in order, plus --set values."""

    name: str
    files: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()


PROFILES = {
    p.name: p
    for p in (
        Profile("default"),
        Profile("private", ("values-private.yaml",)),
        Profile("public", ("values-public.yaml",)),
        Profile("site-a", ("values-private.yaml", "values-site-a.yaml")),
        Profile("site-b", ("values-private.yaml", "values-site-b.yaml")),
        # Public cloud without host networking: a load balancer per relay pod.
        Profile("public-lb", ("values-public.yaml",), (
            "media.networking=loadBalancer", "media.kind=StatefulSet", "media.replicas=2",
            "media.loadBalancer.addresses={198.51.100.20,198.51.100.21}")),
        # What `make k8s-smoke` renders: one Redis, userspace SCTP, no SR-IOV.
        Profile("standalone", (), (
            "redis.mode=standalone", "redis.persistence.enabled=false",
            "enbAgent.sctpTransport=userspace", "sbc.autoscaling.enabled=false")),
    )
}


@functools.cache
def helm() -> Path:
    return ensure_helm()


def helm_run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm()), *args], capture_output=True, text=True, timeout=120,
                          check=check)


def template_args(files: Sequence[str] = (), sets: Sequence[str] = ()) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--kube-version", "1.29.0"]
    for f in files:
        args += ["-f", str(CHART / f)]
    for s in sets:
        args += ["--set", s]
    return args


@functools.cache
def render(files: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> tuple[Obj, ...]:
    """The objects `helm template` renders (the test hook pod included)."""
    out = helm_run(*template_args(files, sets)).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def render_profile(name: str) -> tuple[Obj, ...]:
    p = PROFILES[name]
    return render(p.files, p.sets)


def render_error(files: Sequence[str] = (), sets: Sequence[str] = ()) -> str:
    """stderr of a render expected to fail ("" when it succeeds)."""
    proc = helm_run(*template_args(files, sets), check=False)
    return proc.stderr if proc.returncode else ""


def of_kind(objs: Sequence[Obj], *kinds: str) -> list[Obj]:
    return [o for o in objs if o["kind"] in kinds]


def named(objs: Sequence[Obj], kind: str, suffix: str) -> Obj:
    """The object of `kind` whose name is <fullname>-<suffix>."""
    name = f"{FULLNAME}-{suffix}"
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise LookupError(f"no {kind} {name}")


WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet", "Job")


def pod_specs(objs: Sequence[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(owner, pod spec) of every workload and bare pod."""
    for o in objs:
        if o["kind"] in WORKLOADS:
            yield o, o["spec"]["template"]["spec"]
        elif o["kind"] == "Pod":
            yield o, o["spec"]


def component(o: Obj) -> str:
    return str(o["metadata"]["labels"].get("app.kubernetes.io/component", ""))


def containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env(container: Obj) -> dict[str, Any]:
    """name -> value (or the valueFrom mapping)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def load_values(name: str) -> Obj:
    data = yaml.safe_load((CHART / name).read_text())
    assert isinstance(data, dict)
    return data
