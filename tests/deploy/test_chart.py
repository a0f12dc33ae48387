"""The Helm chart, checked offline: helm lint/template, Kubernetes schemas, and the rendered objects
for what users of telecom charts most often get wrong (SCTP, UDP+TCP SIP, probes, non-root,
SR-IOV only where it belongs, capabilities only on the media relay)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from kubernetes_validate.utils import latest_version  # type: ignore[import-untyped]

from tests.deploy.chart import (
    CHART,
    FULLNAME,
    NAMESPACE,
    PROFILES,
    RELEASE,
    VALUES_FILES,
    Obj,
    component,
    containers,
    env,
    helm_run,
    load_values,
    named,
    of_kind,
    pod_specs,
    render,
    render_error,
    render_profile,
)

ALL = sorted(PROFILES)
SIP_PORT = 5060
S1AP_PORT = 36412
VOLTE_COMPONENTS = {"sbc", "state", "media", "enb-agent"}
# Component -> the dataclass of its flags (flag --x-y <-> VOLTE_X_Y).
CONFIGS = {
    "sbc": ("services.sbc.config", "SbcConfig"),
    "state": ("services.state.service", "StateConfig"),
    "media": ("services.media.config", "MediaConfig"),
    "enb-agent": ("services.enb.service", "EnbConfig"),
}
KUBE_VERSIONS = ("1.29.0", latest_version())


# --- helm itself ----------------------------------------------------------------------------

@pytest.mark.parametrize("values", VALUES_FILES)
def test_helm_lint_strict(values):
    proc = helm_run("lint", "--strict", str(CHART), "-f", str(CHART / values),
                    "--namespace", NAMESPACE, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", VALUES_FILES)
def test_helm_template_each_values_file(values):
    objs = render((values,))
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget"} <= kinds


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("profile", ALL)
def test_kubernetes_validate_strict(profile, version):
    """Every built-in object against the bundled OpenAPI schemas, unknown fields rejected."""
    checked = 0
    for obj in render_profile(profile):
        if obj["apiVersion"].startswith("k8s.cni.cncf.io/"):
            continue  # a CRD: test_network_attachment_definition checks it
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked > 10


def test_two_different_kubernetes_versions():
    oldest, newest = ((int(x) for x in v.split(".")[:2]) for v in KUBE_VERSIONS)
    assert tuple(newest) > tuple(oldest)


# --- Services ---------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ALL)
def test_sip_service_udp_and_tcp_with_affinity(profile):
    svc = named(render_profile(profile), "Service", "sip")
    ports = {(p["port"], p["protocol"]) for p in svc["spec"]["ports"]}
    assert ports == {(SIP_PORT, "UDP"), (SIP_PORT, "TCP")}
    assert svc["spec"]["sessionAffinity"] == "ClientIP"
    if svc["spec"]["type"] in ("LoadBalancer", "NodePort"):
        assert svc["spec"]["externalTrafficPolicy"] == "Local"
    # The ports lead to the sbc pods' SIP ports of the same protocol.
    sbc = named(render_profile(profile), "Deployment", "sbc")
    declared = {(p["name"], p["protocol"]) for p in sbc["spec"]["template"]["spec"]
                ["containers"][0]["ports"]}
    for p in svc["spec"]["ports"]:
        assert (p["targetPort"], p["protocol"]) in declared


@pytest.mark.parametrize("profile", ALL)
def test_enb_service_is_sctp_36412(profile):
    objs = render_profile(profile)
    svc = named(objs, "Service", "s1ap")
    transport = env(named(objs, "Deployment", "enb-agent")["spec"]["template"]["spec"]
                    ["containers"][0])["VOLTE_SCTP_TRANSPORT"]
    protocols = {p["protocol"] for p in svc["spec"]["ports"] if p["port"] == S1AP_PORT}
    if transport == "userspace":
        assert protocols == {"UDP"}  # SCTP over UDP (RFC 6951), by choice
    else:
        assert "SCTP" in protocols
    assert all(p["port"] == S1AP_PORT for p in svc["spec"]["ports"])


def test_default_enb_transport_is_kernel_sctp():
    svc = named(render_profile("default"), "Service", "s1ap")
    assert [(p["port"], p["protocol"]) for p in svc["spec"]["ports"]] == [(S1AP_PORT, "SCTP")]


def test_sbc_bearer_policy_reaches_the_sbc_and_bad_ones_are_refused():
    def sbc_env(sets: tuple[str, ...]) -> dict[str, Any]:
        spec = named(render((), sets), "Deployment", "sbc")["spec"]["template"]["spec"]
        (sbc,) = [c for c in containers(spec) if c["name"] == "sbc"]
        return env(sbc)

    assert sbc_env(())["VOLTE_BEARER_POLICY"] == "best-effort"
    assert sbc_env(("sbc.bearerPolicy=required",))["VOLTE_BEARER_POLICY"] == "required"
    assert "bearerPolicy" in render_error((), ("sbc.bearerPolicy=strict",))


def test_sbc_on_redis_directly_by_default_and_the_redis_policy_follows():
    """sbc.stateVia=redis (default): the sbc gets the Redis URL and the Redis NetworkPolicy
    admits sbc pods; grpc: neither (the sbc reaches the store through the state service)."""
    def sbc_env_and_redis_peers(sets: tuple[str, ...]) -> tuple[dict[str, Any], list[Obj]]:
        objs = render((), sets)
        spec = named(objs, "Deployment", "sbc")["spec"]["template"]["spec"]
        (sbc,) = [c for c in containers(spec) if c["name"] == "sbc"]
        peers = named(objs, "NetworkPolicy", "redis")["spec"]["ingress"][0]["from"]
        return env(sbc), peers

    def admits_sbc(peers: list[Obj]) -> bool:
        return any(p.get("podSelector", {}).get("matchLabels", {}).get(
            "app.kubernetes.io/component") == "sbc" for p in peers)

    direct, peers = sbc_env_and_redis_peers(())
    assert direct["VOLTE_STATE_REDIS"].startswith("redis+sentinel://") and admits_sbc(peers)
    hop, peers = sbc_env_and_redis_peers(("sbc.stateVia=grpc",))
    assert "VOLTE_STATE_REDIS" not in hop and not admits_sbc(peers)
    assert "stateVia" in render_error((), ("sbc.stateVia=memcached",))


@pytest.mark.parametrize("profile", ALL)
def test_services_select_pods_and_named_ports_exist(profile):
    objs = render_profile(profile)
    pods = [(o, spec, o["spec"]["template"]["metadata"]["labels"])
            for o, spec in pod_specs(objs) if o["kind"] != "Pod" and o["kind"] != "Job"]
    for svc in of_kind(objs, "Service"):
        selector = svc["spec"]["selector"]
        matches = [(o, spec) for o, spec, labels in pods
                   if all(labels.get(k) == v for k, v in selector.items())]
        if "statefulset.kubernetes.io/pod-name" in selector:
            assert selector["statefulset.kubernetes.io/pod-name"].startswith(f"{FULLNAME}-")
            continue
        assert matches, f"Service {svc['metadata']['name']} selects no workload"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                names = {p["name"] for _, spec in matches for c in spec["containers"]
                         for p in c.get("ports", [])}
                assert target in names, f"{svc['metadata']['name']}: no port named {target}"


# --- workloads --------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ALL)
def test_every_container_has_probes(profile):
    for owner, spec in pod_specs(render_profile(profile)):
        if owner["kind"] in ("Job", "Pod"):
            continue  # run-to-completion loadgen
        for c in spec["containers"]:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert probe in c, f"{owner['metadata']['name']}/{c['name']}: no {probe}"
            if component(owner) in VOLTE_COMPONENTS:
                # Native gRPC probes on the service's declared gRPC port.
                grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    assert c[probe]["grpc"]["port"] == grpc_port


def _effective(spec: Obj, c: Obj, key: str) -> Any:
    sc = c.get("securityContext", {})
    return sc[key] if key in sc else spec.get("securityContext", {}).get(key)


@pytest.mark.parametrize("profile", ALL)
def test_security_context_non_root_read_only(profile):
    for owner, spec in pod_specs(render_profile(profile)):
        assert spec.get("hostPID") is not True and spec.get("hostIPC") is not True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in containers(spec):
            where = f"{owner['metadata']['name']}/{c['name']}"
            sc = c["securityContext"]
            assert _effective(spec, c, "runAsNonRoot") is True, where
            assert (_effective(spec, c, "runAsUser") or 1) != 0, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc.get("privileged") is not True, where
            if component(owner) != "media":
                assert sc["allowPrivilegeEscalation"] is False, where


@pytest.mark.parametrize("profile", ALL)
def test_capabilities_only_on_media_and_only_for_xdp(profile):
    objs = render_profile(profile)
    for owner, spec in pod_specs(objs):
        for c in containers(spec):
            added = c["securityContext"]["capabilities"].get("add", [])
            if component(owner) != "media":
                assert not added, f"{owner['metadata']['name']}/{c['name']} adds {added}"
                continue
            if env(c).get("VOLTE_FASTPATH") == "xdp":
                assert sorted(added) == ["BPF", "NET_ADMIN"]
                assert "python3-xdp" in c["command"]  # the file-capable interpreter
            else:
                assert not added
                assert c["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("profile", ALL)
def test_writable_tmp_and_nothing_else(profile):
    for owner, spec in pod_specs(render_profile(profile)):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{owner['metadata']['name']}/{c['name']}: no /tmp"
            assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


@pytest.mark.parametrize("profile", ALL)
def test_resources_on_every_container(profile):
    for owner, spec in pod_specs(render_profile(profile)):
        for c in containers(spec):
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]), owner["metadata"]["name"]
            assert {"cpu", "memory"} <= set(res["limits"]), owner["metadata"]["name"]


@pytest.mark.parametrize("profile", ALL)
def test_env_vars_are_flags_of_the_service(profile):
    """Each VOLTE_* variable set on a volte container is one of that service's flags."""
    import importlib

    for owner, spec in pod_specs(render_profile(profile)):
        name = component(owner)
        if name not in CONFIGS:
            continue
        module_name, cls_name = CONFIGS[name]
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except ImportError as exc:  # a service still being built
            pytest.skip(f"{module_name}: {exc}")
        flags = {f"VOLTE_{f.name.upper()}" for f in dataclasses.fields(cls)}
        for c in spec["containers"]:
            used = {k for k in env(c) if k.startswith("VOLTE_")}
            assert used <= flags, f"{name}: not flags of the service: {sorted(used - flags)}"


@pytest.mark.parametrize("profile", ALL)
def test_grpc_addresses_name_services_of_this_release(profile):
    """VOLTE_STATE / VOLTE_MEDIA / VOLTE_ENB and the Redis URL point at rendered Services."""
    objs = render_profile(profile)
    ports = {(svc["metadata"]["name"], p["port"]) for svc in of_kind(objs, "Service")
             for p in svc["spec"]["ports"]}
    sbc = env(named(objs, "Deployment", "sbc")["spec"]["template"]["spec"]["containers"][0])
    for key in ("VOLTE_STATE", "VOLTE_MEDIA", "VOLTE_ENB"):
        host, _, port = sbc[key].rpartition(":")
        assert (host, int(port)) in ports, f"{key}={sbc[key]}: no such Service port"
    state = env(named(objs, "Deployment", "state")["spec"]["template"]["spec"]["containers"][0])
    match = re.match(r"redis(?:\+sentinel)?://([^:/]+):(\d+)/", state["VOLTE_REDIS"])
    assert match and (match.group(1), int(match.group(2))) in ports, state["VOLTE_REDIS"]
    # The sbc runs the store's operations on the same Redis (sbc.stateVia: redis, the default).
    assert sbc["VOLTE_STATE_REDIS"] == state["VOLTE_REDIS"]


@pytest.mark.parametrize("profile", ALL)
def test_anti_affinity_and_pdbs(profile):
    objs = render_profile(profile)
    pdbs = of_kind(objs, "PodDisruptionBudget")
    for owner, spec in pod_specs(objs):
        if owner["kind"] in ("Job", "Pod"):
            continue
        assert "podAntiAffinity" in spec["affinity"], owner["metadata"]["name"]
        labels = owner["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if all(labels.get(k) == v for k, v in
                                           p["spec"]["selector"]["matchLabels"].items())]
        if owner["kind"] == "Deployment" and owner["spec"].get("replicas") == 1 \
                and component(owner) == "redis":
            continue  # standalone Redis: nothing to keep available
        if owner["kind"] != "StatefulSet" or component(owner) == "redis":
            assert covering, f"no PodDisruptionBudget for {owner['metadata']['name']}"


@pytest.mark.parametrize("profile", ALL)
def test_labels(profile):
    for obj in render_profile(profile):
        labels = obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of",
                    "app.kubernetes.io/version", "helm.sh/chart"):
            assert key in labels, f"{obj['kind']} {obj['metadata']['name']}: no {key}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
    for owner, _ in pod_specs(render_profile(profile)):
        tpl = owner["spec"]["template"]["metadata"]["labels"] if owner["kind"] != "Pod" \
            else owner["metadata"]["labels"]
        assert tpl.get("app.kubernetes.io/component")


def test_hpa_scales_the_sbc():
    objs = render_profile("default")
    hpa = named(objs, "HorizontalPodAutoscaler", "sbc")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": f"{FULLNAME}-sbc"}
    assert "replicas" not in named(objs, "Deployment", "sbc")["spec"]
    assert not of_kind(render_profile("standalone"), "HorizontalPodAutoscaler")


# --- media networking -------------------------------------------------------------------------

SRIOV_ANNOTATION = "k8s.v1.cni.cncf.io/networks"


def _media(objs: tuple[Obj, ...]) -> Obj:
    return next(o for o in objs if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet")
                and component(o) == "media")


@pytest.mark.parametrize("profile", ALL)
def test_sriov_only_in_the_private_profiles(profile):
    objs = render_profile(profile)
    private = profile in ("private", "site-a", "site-b")
    media = _media(objs)
    annotations = media["spec"]["template"]["metadata"].get("annotations") or {}
    text = json.dumps([o for o in objs if component(o) != "media" or o is media])
    assert (SRIOV_ANNOTATION in annotations) == private
    assert bool(of_kind(objs, "NetworkAttachmentDefinition")) == private
    assert ("sriov" in json.dumps(media)) == private
    for owner, _spec in pod_specs(objs):
        if owner is not media:
            assert SRIOV_ANNOTATION not in json.dumps(owner), owner["metadata"]["name"]
    assert ("intel.com/sriov_netdevice" in text) == private


def test_private_media_pod_sriov_pinning_hugepages():
    objs = render_profile("private")
    media = _media(objs)
    nad = of_kind(objs, "NetworkAttachmentDefinition")[0]
    values = load_values("values-private.yaml")["media"]
    resource = values["sriov"]["resourceName"]
    # The NAD names the device-plugin resource; its config is the SR-IOV CNI's.
    assert nad["apiVersion"] == "k8s.cni.cncf.io/v1"
    assert nad["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"] == resource
    config = json.loads(nad["spec"]["config"])
    assert config["type"] == "sriov" and config["name"] == nad["metadata"]["name"]
    assert "ipam" in config
    tpl = media["spec"]["template"]
    networks = json.loads(tpl["metadata"]["annotations"][SRIOV_ANNOTATION])
    assert networks == [{"name": nad["metadata"]["name"], "namespace": NAMESPACE,
                         "interface": values["sriov"]["interface"]}]
    c = tpl["spec"]["containers"][0]
    req, lim = c["resources"]["requests"], c["resources"]["limits"]
    # Guaranteed QoS, integer CPUs (the static CPU manager pins only those), the VF requested.
    assert req == lim
    assert re.fullmatch(r"[1-9][0-9]*", str(lim["cpu"]))
    assert str(lim[resource]) == "1"
    assert lim["hugepages-2Mi"] == "256Mi"
    volumes = {v["name"]: v for v in tpl["spec"]["volumes"]}
    assert volumes["hugepages"]["emptyDir"]["medium"] == "HugePages-2Mi"
    # The advertised address comes from Multus' network-status annotation (downward API file
    # read by the image's entry step).
    items = volumes["podinfo"]["downwardAPI"]["items"]
    assert {"path": "network-status", "fieldRef": {"fieldPath":
            "metadata.annotations['k8s.v1.cni.cncf.io/network-status']"}} in items
    assert c["command"][:4] == ["python3", "/opt/volte/bin/media_entrypoint.py", "--network",
                                f"{NAMESPACE}/{nad['metadata']['name']}"]
    assert "VOLTE_BIND" not in env(c) and "VOLTE_ADVERTISED" not in env(c)
    assert {"mountPath": "/etc/podinfo", "name": "podinfo", "readOnly": True} \
        in c["volumeMounts"]


def test_cpu_pinning_rejects_fractional_cpus():
    err = render_error(("values-private.yaml",), ("media.resources.limits.cpu=1500m",))
    assert "integer" in err


@pytest.mark.parametrize("profile", ["public", "public-lb", "default", "standalone"])
def test_public_media_has_no_sriov_no_pinning(profile):
    media = _media(render_profile(profile))
    spec = media["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert not any("/" in k for k in c["resources"]["limits"])  # no extended resources
    assert "podinfo" not in {v["name"] for v in spec["volumes"]}


def test_public_media_host_network_advertises_node_external_ip():
    objs = render_profile("public")
    media = _media(objs)
    spec = media["spec"]["template"]["spec"]
    assert media["kind"] == "DaemonSet"
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["automountServiceAccountToken"] is True
    c = spec["containers"][0]
    assert "--node-address-type" in c["command"] and "ExternalIP" in c["command"]
    assert env(c)["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # gRPC on the node's own address, not 0.0.0.0 (host network: no NetworkPolicy there).
    assert env(c)["VOLTE_GRPC_LISTEN"].startswith("$(POD_IP):")
    role = of_kind(objs, "ClusterRole")[0]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    # Only the media pods get a token.
    for owner, pod in pod_specs(objs):
        assert pod["automountServiceAccountToken"] is (owner is media)


def test_public_media_load_balancer_per_pod():
    objs = render_profile("public-lb")
    media = _media(objs)
    assert media["kind"] == "StatefulSet"
    lbs = [s for s in of_kind(objs, "Service") if s["spec"].get("type") == "LoadBalancer"
           and component(s) == "media"]
    assert [s["spec"]["loadBalancerIP"] for s in lbs] == ["198.51.100.20", "198.51.100.21"]
    for i, svc in enumerate(lbs):
        assert svc["spec"]["selector"] == {
            "statefulset.kubernetes.io/pod-name": f"{FULLNAME}-media-{i}"}
        ports = svc["spec"]["ports"]
        assert {p["protocol"] for p in ports} == {"UDP"} and len(ports) == 200
    assert "--addresses" in media["spec"]["template"]["spec"]["containers"][0]["command"]


def test_load_balancer_mode_needs_a_statefulset_and_addresses():
    assert render_error(sets=("media.networking=loadBalancer",))
    assert "addresses" in render_error(sets=(
        "media.networking=loadBalancer", "media.kind=StatefulSet", "media.replicas=3",
        "media.loadBalancer.addresses={198.51.100.20}"))


# --- NetworkPolicy ----------------------------------------------------------------------------

def _pod_labels(owner: Obj) -> dict[str, str]:
    return dict(owner["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("profile", ALL)
def test_network_policies_open_only_sip_rtp_s1ap_outside(profile):
    objs = render_profile(profile)
    policies = of_kind(objs, "NetworkPolicy")
    outside_ports: set[tuple[str, str]] = set()
    for owner, _ in pod_specs(objs):
        if owner["kind"] in ("Job", "Pod"):
            continue
        labels = _pod_labels(owner)
        selecting = [p for p in policies if all(
            labels.get(k) == v for k, v in p["spec"]["podSelector"]["matchLabels"].items())]
        assert selecting, f"no NetworkPolicy selects {owner['metadata']['name']}"
        for policy in selecting:
            assert policy["spec"]["policyTypes"] == ["Ingress"]
            for rule in policy["spec"]["ingress"]:
                if any("ipBlock" in peer for peer in rule["from"]):
                    for port in rule["ports"]:
                        outside_ports.add((component(owner), port["protocol"]))
                    continue
                # Everything else only from pods of this release (or the scrapers).
                for peer in rule["from"]:
                    assert "ipBlock" not in peer
    assert outside_ports <= {("sbc", "UDP"), ("sbc", "TCP"), ("media", "UDP"),
                             ("enb-agent", "SCTP"), ("enb-agent", "UDP"), ("redis", "TCP")}
    assert {("sbc", "UDP"), ("sbc", "TCP")} <= outside_ports


@pytest.mark.parametrize("profile", ALL)
def test_grpc_and_redis_ports_only_from_inside(profile):
    objs = render_profile(profile)
    for policy in of_kind(objs, "NetworkPolicy"):
        for rule in policy["spec"]["ingress"]:
            ports = {p["port"] for p in rule["ports"]}
            inside_only = ports & {50051, 50061, 50071, 50081, 6379, 26379, 9090}
            if not inside_only:
                continue
            for peer in rule["from"]:
                if "ipBlock" in peer:  # only the other site's Redis, listed by CIDR
                    assert component(policy) == "redis" and profile in ("site-a", "site-b")
                else:
                    assert "podSelector" in peer


def test_rtp_range_policy_matches_relay_ports():
    objs = render_profile("default")
    policy = named(objs, "NetworkPolicy", "media")
    media_env = env(_media(objs)["spec"]["template"]["spec"]["containers"][0])
    udp = next(p for r in policy["spec"]["ingress"] for p in r["ports"] if p["protocol"] == "UDP")
    assert (udp["port"], udp["endPort"]) == (int(media_env["VOLTE_PORT_MIN"]),
                                             int(media_env["VOLTE_PORT_MAX"]))


# --- Redis, state, sites ----------------------------------------------------------------------

def test_redis_sentinel_by_default():
    objs = render_profile("default")
    sts = named(objs, "StatefulSet", "redis")
    assert sts["spec"]["replicas"] == 3
    assert [c["name"] for c in sts["spec"]["template"]["spec"]["containers"]] == \
        ["redis", "sentinel"]
    state = env(named(objs, "Deployment", "state")["spec"]["template"]["spec"]
                ["containers"][0])
    assert state["VOLTE_REDIS"] == f"redis+sentinel://{FULLNAME}-redis-sentinel:26379/volte/0"
    headless = named(objs, "Service", "redis-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    # Sentinel's start script is valid shell (sh -n) and announces stable names.
    cm = named(objs, "ConfigMap", "redis")
    assert "sentinel announce-hostnames yes" in cm["data"]["start-sentinel.sh"]


def test_redis_scripts_are_valid_shell(tmp_path):
    import subprocess

    cm = named(render_profile("site-b"), "ConfigMap", "redis")
    for name, text in cm["data"].items():
        if name.endswith(".sh"):
            (tmp_path / name).write_text(text)
            proc = subprocess.run(["sh", "-n", str(tmp_path / name)], capture_output=True,
                                  text=True)
            assert proc.returncode == 0, f"{name}: {proc.stderr}"


def test_external_redis_renders_no_redis():
    url = "redis+sentinel://10.0.0.5:26379,10.0.0.6:26379/volte/0"
    escaped = url.replace(",", "\\,")  # --set splits on commas
    objs = render(sets=("redis.mode=external", f"redis.external.url={escaped}"))
    assert not [o for o in objs if component(o) == "redis"]
    state = env(named(objs, "Deployment", "state")["spec"]["template"]["spec"]
                ["containers"][0])
    assert state["VOLTE_REDIS"] == url
    assert render_error(sets=("redis.mode=external",))


def test_two_sites_point_at_each_other():
    a, b = render_profile("site-a"), render_profile("site-b")
    site_a = named(a, "ConfigMap", "site")["data"]
    site_b = named(b, "ConfigMap", "site")["data"]
    assert (site_a["site"], site_b["site"]) == ("site-a", "site-b")
    assert site_a["peer-site"] == "site-b" and site_b["peer-site"] == "site-a"
    assert site_a["secondary-pcscf"] == site_b["primary-pcscf"]
    assert site_b["secondary-pcscf"] == site_a["primary-pcscf"]
    # Site B's Redis replicates from site A; site A replicates from nobody.
    replica_of = load_values("values-site-b.yaml")["redis"]["replicaOf"]
    for objs, expected in ((a, ""), (b, replica_of["host"])):
        sts = named(objs, "StatefulSet", "redis")
        for c in sts["spec"]["template"]["spec"]["containers"]:
            assert env(c)["REPLICA_OF_HOST"] == expected
    assert site_b["redis-replica-of"] == f"{replica_of['host']}:{replica_of['port']}"
    # Each site names its instances after itself.
    sbc = named(b, "Deployment", "sbc")["spec"]["template"]
    assert env(sbc["spec"]["containers"][0])["VOLTE_INSTANCE_ID"] == "site-b/$(POD_NAME)"
    assert sbc["metadata"]["labels"]["volte.io/site"] == "site-b"
    for ip in (site_a["primary-pcscf"], site_b["primary-pcscf"]):
        ipaddress.ip_address(ip)


# --- values, schema, hooks --------------------------------------------------------------------

@pytest.mark.parametrize("sets", [
    ("sbc.replica=3",),                       # typo of replicas
    ("media.networking=srio",),               # not a mode
    ("enbAgent.sctpTransport=tcp",),          # S1AP is SCTP
    ("logLevel=verbose",),
    ("sbc.sipPort=70000",),
    ("media.sriov.resourceName=sriov_netdevice",),  # needs prefix/name
])
def test_schema_rejects_bad_values(sets):
    assert "schema" in render_error(sets=sets)


def test_schema_is_valid_json_schema():
    import jsonschema  # type: ignore[import-untyped]

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    for values in VALUES_FILES:
        data = yaml.safe_load((CHART / values).read_text())
        if values == "values.yaml":
            jsonschema.validate(data, schema)


def test_helm_test_hook_places_calls_through_the_sbc():
    objs = render_profile("default")
    pod = named(objs, "Pod", "loadgen-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    assert c["image"].startswith("localhost/volte-loadgen:")
    assert c["args"][0] == "call-setup"
    assert "--max-failed-ratio=0" in c["args"]  # any failed call fails the test
    assert "--bind=$(POD_IP)" in c["args"]
    # --target is the SIP Service, resolved in the pod (loadgen wants an address).
    assert env(c)["SIP_SERVICE"] == f"{FULLNAME}-sip" and env(c)["SIP_PORT"] == str(SIP_PORT)
    assert c["command"][:2] == ["sh", "-c"] and 'exec loadgen "$@"' in c["command"][2]
    assert pod["spec"]["restartPolicy"] == "Never"


def test_loadgen_job_on_request():
    assert not of_kind(render_profile("default"), "Job")
    job = of_kind(render(sets=("loadgen.job.enabled=true",)), "Job")[0]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert job["spec"]["backoffLimit"] == 0


def test_images_are_containerfile_targets():
    targets = set(re.findall(r"^FROM \S+ AS (\S+)", (CHART.parents[1] / "containers" /
                                                     "Containerfile").read_text(), re.M))
    for _owner, spec in pod_specs(render_profile("default")):
        for c in spec["containers"]:
            repo = c["image"].rsplit(":", 1)[0]
            if repo.startswith("localhost/volte-"):
                assert repo.removeprefix("localhost/volte-") in targets, repo


def test_notes_render():
    proc = helm_run("install", RELEASE, str(CHART), "--dry-run=client", "--namespace",
                    NAMESPACE, "-f",
                    str(CHART / "values-private.yaml"), check=False)
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "helm test volte" in notes and "SR-IOV" in notes


def test_checksum_annotations_are_quoted() -> None:
    """A checksum that comes out all digits (or digits and one 'e') is a YAML number, which
    Kubernetes rejects in an annotation. The secret's checksum changes with every render
    (randAlphaNum), so that failed one CI run in many: each checksum goes through `quote`."""
    lines = [
        f"{path.name}: {line.strip()}"
        for path in sorted((CHART / "templates").glob("*.yaml"))
        for line in path.read_text().splitlines()
        if "checksum/" in line
    ]
    assert lines and all(line.endswith("| quote }}") for line in lines), lines
