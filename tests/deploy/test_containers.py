"""The image build's own code (containers/): the media entry step, the dependency split, the
XDP file capabilities, and what the Containerfile promises (targets, non-root, base argument)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS = ROOT / "containers"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"containers_{name}", CONTAINERS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


entry = _load("media_entrypoint")
split_requirements = _load("split_requirements")
setcap = _load("setcap_xdp")

# What Multus writes (k8s.v1.cni.cncf.io/network-status) for a pod with one SR-IOV VF.
NETWORK_STATUS = json.dumps([
    {"name": "cbr0", "interface": "eth0", "ips": ["10.244.1.7"], "mac": "0a:58:0a:f4:01:07",
     "default": True, "dns": {}},
    {"name": "telco/volte-media", "interface": "net1", "ips": ["192.0.2.17"],
     "mac": "de:ad:be:ef:00:01", "dns": {},
     "device-info": {"type": "pci", "version": "1.1.0",
                     "pci": {"pci-address": "0000:18:02.5"}}},
])


def _args(**kw: object) -> argparse.Namespace:
    defaults: dict[str, object] = {"network": "", "status_file": ["/status"], "addresses": "",
                                   "node_address_type": ""}
    return argparse.Namespace(**{**defaults, **kw})


def test_network_status_gives_bind_advertised_and_interface():
    found = entry.resolve(_args(network="telco/volte-media"), {}, lambda _: NETWORK_STATUS)
    assert found == {"VOLTE_BIND": "192.0.2.17", "VOLTE_ADVERTISED": "192.0.2.17",
                     "VOLTE_INTERFACE": "net1"}


def test_network_matched_without_namespace_and_operator_env_wins():
    environ = {"VOLTE_ADVERTISED": "203.0.113.5"}  # 1:1 NAT in front of the media network
    found = entry.resolve(_args(network="volte-media"), environ, lambda _: NETWORK_STATUS)
    assert found == {"VOLTE_BIND": "192.0.2.17", "VOLTE_INTERFACE": "net1"}


def test_older_multus_annotation_file_is_read_when_the_new_one_is_empty():
    files = {"/a": "", "/b": NETWORK_STATUS}
    found = entry.resolve(_args(network="volte-media", status_file=["/a", "/b"]), {},
                          files.get)
    assert found["VOLTE_BIND"] == "192.0.2.17"


@pytest.mark.parametrize("status, message", [
    ("", "not written by Multus yet"),
    (json.dumps([{"name": "cbr0", "interface": "eth0", "ips": ["10.0.0.1"]}]), "not in"),
    (json.dumps([{"name": "telco/volte-media", "interface": "net1", "ips": []}]), "no IP"),
])
def test_network_not_there_yet(status, message):
    with pytest.raises(entry.NotFound, match=message):
        entry.resolve(_args(network="volte-media"), {}, lambda _: status)


def test_ipv6_vf_address():
    status = json.dumps([{"name": "ns/m", "interface": "net1", "ips": ["2001:db8::17"]}])
    assert entry.resolve(_args(network="m"), {}, lambda _: status)["VOLTE_BIND"] == \
        "2001:db8::17"


def test_load_balancer_address_by_statefulset_ordinal():
    found = entry.resolve(_args(addresses="198.51.100.20,198.51.100.21"),
                          {"HOSTNAME": "volte-media-1"}, lambda _: None)
    assert found == {"VOLTE_ADVERTISED": "198.51.100.21"}
    with pytest.raises(entry.NotFound, match="only 2 addresses"):
        entry.resolve(_args(addresses="198.51.100.20,198.51.100.21"),
                      {"HOSTNAME": "volte-media-2"}, lambda _: None)
    with pytest.raises(entry.NotFound, match="no ordinal"):
        entry.ordinal("volte-media-7c9f8d-x2x")


def test_node_external_ip_from_the_api_server():
    node: dict[str, object] = {"status": {"addresses": [
        {"type": "InternalIP", "address": "10.0.0.4"},
        {"type": "ExternalIP", "address": "203.0.113.44"},
        {"type": "Hostname", "address": "node-a"}]}}
    asked: list[str] = []

    def fetch(path: str) -> dict[str, object]:
        asked.append(path)
        return node

    found = entry.resolve(_args(node_address_type="ExternalIP"), {"NODE_NAME": "node-a"},
                          lambda _: None, fetch)
    assert found == {"VOLTE_ADVERTISED": "203.0.113.44"}
    assert asked == ["/api/v1/nodes/node-a"]
    with pytest.raises(entry.NotFound, match="NODE_NAME"):
        entry.resolve(_args(node_address_type="ExternalIP"), {}, lambda _: None, fetch)


def test_entrypoint_gives_up_with_ex_config(tmp_path, capsys):
    status = tmp_path / "network-status"
    status.write_text("")
    code = entry.main(["--network", "volte-media", "--status-file", str(status),
                       "--wait", "0", "--", "true"])
    assert code == entry.EX_CONFIG
    assert "not written by Multus yet" in capsys.readouterr().err


def test_entrypoint_execs_the_relay_with_the_addresses(tmp_path):
    status = tmp_path / "network-status"
    status.write_text(NETWORK_STATUS)
    probe = "import os; print(os.environ['VOLTE_BIND'], os.environ['VOLTE_INTERFACE'])"
    proc = subprocess.run(
        [sys.executable, str(CONTAINERS / "media_entrypoint.py"), "--network",
         "telco/volte-media", "--status-file", str(status), "--", sys.executable, "-c", probe],
        capture_output=True, text=True, timeout=30, check=True)
    assert proc.stdout.split() == ["192.0.2.17", "net1"]
    assert "VOLTE_BIND=192.0.2.17" in proc.stderr


def _wheel(tmp_path: Path, requires: list[str]) -> Path:
    path = tmp_path / "volte-0.1.0-py3-none-any.whl"
    metadata = "Metadata-Version: 2.3\nName: volte\nVersion: 0.1.0\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("volte-0.1.0.dist-info/METADATA", metadata)
    return path


def test_dependency_split(tmp_path):
    wheel = _wheel(tmp_path, ["grpcio>=1.62", "redis[hiredis]>=5.0", "pycrate>=0.7",
                              "Matplotlib>=3.8", "rich>=13", "pytest; extra == 'dev'",
                              "tomli; python_version < '3.11'"])
    assert split_requirements.main([str(wheel), "--out", str(tmp_path), "--group",
                                    "s1ap=pycrate", "--group", "loadgen=matplotlib,rich"]) == 0
    read = {n: (tmp_path / f"{n}.txt").read_text().splitlines()
            for n in ("common", "s1ap", "loadgen")}
    assert read == {
        "common": ["grpcio>=1.62", "redis[hiredis]>=5.0", "tomli; python_version < '3.11'"],
        "s1ap": ["pycrate>=0.7"],
        "loadgen": ["Matplotlib>=3.8", "rich>=13"],
    }


def test_xdp_file_capabilities_blob():
    data = setcap.vfs_cap_data([setcap.CAP_NET_ADMIN, setcap.CAP_BPF])
    magic, perm_lo, inh_lo, perm_hi, inh_hi = struct.unpack("<5I", data)
    assert magic == 0x02000001  # revision 2, effective
    assert perm_lo == 1 << 12 and perm_hi == 1 << (39 - 32)
    assert inh_lo == inh_hi == 0


CONTAINERFILE = (CONTAINERS / "Containerfile").read_text()


def test_containerfile_targets_and_base_argument():
    targets = re.findall(r"^FROM \S+ AS (\S+)", CONTAINERFILE, re.M)
    assert {"sbc", "state", "media", "enb-agent", "loadgen", "redis"} <= set(targets)
    assert "ARG BASE=localhost/volte-base:bookworm" in CONTAINERFILE
    assert re.search(r"^FROM \$\{BASE\} AS runtime", CONTAINERFILE, re.M)


def test_containerfile_images_run_as_non_root():
    stages = re.split(r"^FROM ", CONTAINERFILE, flags=re.M)[1:]
    for stage in stages:
        name = stage.split()[2] if " AS " in stage.split("\n")[0] else ""
        users = re.findall(r"^USER (\S+)", stage, re.M)
        if name in ("runtime", "media", "redis"):
            assert users and users[-1].split(":")[0] not in ("0", "root"), name
        if name in ("sbc", "state", "enb-agent", "loadgen"):
            assert not users  # inherits runtime's USER 10001


def test_wheel_built_in_the_builder_stage():
    script = (CONTAINERS / "build-venv.sh").read_text()
    assert re.search(r"pip wheel .*--wheel-dir /wheels \.", script)


@pytest.mark.parametrize("script", ["base.sh", "images.sh", "build-venv.sh",
                                    "skaffold-build.sh"])
def test_shell_scripts_parse(script):
    shell = "sh" if script == "build-venv.sh" else "bash"
    proc = subprocess.run([shell, "-n", str(CONTAINERS / script)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
