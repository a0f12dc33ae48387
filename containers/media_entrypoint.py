"""Entry point of the media image: find the addresses the relay binds to and advertises, then exec.

The media relay reads its addresses from VOLTE_BIND, VOLTE_ADVERTISED and VOLTE_INTERFACE
(`python -m services.media --help`). On Kubernetes they are not known when the chart is
rendered, so this step, run as the container's command, fills them in and then replaces itself
with the relay (`exec`, so the relay is PID 1 and gets SIGTERM):

- SR-IOV / Multus (`--network NAME`): Multus writes the pod annotation
  `k8s.v1.cni.cncf.io/network-status` (a JSON list: name, interface, ips, mac, device-info) when
  it attaches the VF. The chart projects that annotation into a file with the downward API; the
  kubelet writes the file when it mounts the volume and refreshes it after the annotation
  appears, so this step waits for the entry of network NAME (`namespace/name` or `name`) and
  takes its first IP (bind and advertised address) and its interface (for the XDP fast path).
- Per-pod load balancers (`--addresses A,B,...`): a StatefulSet pod `<name>-N` advertises the
  N-th reserved load-balancer address.
- Host network on a public cloud (`--node-address-type ExternalIP`): the node's interface has
  a private address and the cloud maps a public one onto it; the pod asks the API server for
  its node (NODE_NAME, from the downward API) and advertises the address of that type. The
  chart gives the media pods' service account `get` on nodes for this, and nothing else.

A variable already set in the environment wins (VOLTE_ADVERTISED set by hand for NAT, say), so
the step never overrides what an operator wrote. Exit status 78 (EX_CONFIG) when the network
does not show up in time: the pod restarts and the reason is in its log.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

EX_CONFIG = 78
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_FILES = (
    "/etc/podinfo/network-status",  # k8s.v1.cni.cncf.io/network-status (Multus >= 3.7)
    "/etc/podinfo/networks-status",  # k8s.v1.cni.cncf.io/networks-status (older Multus)
)


@dataclass(frozen=True)
class Attachment:
    """One entry of the Multus network-status annotation."""

    name: str
    interface: str
    ips: tuple[str, ...]


class NotFound(Exception):
    pass


def parse_status(text: str) -> list[Attachment]:
    """The attachments listed in a network-status annotation value (JSON list)."""
    data = json.loads(text) if text.strip() else []
    if not isinstance(data, list):
        raise ValueError("network-status is not a JSON list")
    found = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        ips = tuple(str(ip) for ip in item.get("ips") or [] if isinstance(ip, str))
        found.append(Attachment(item["name"], str(item.get("interface") or ""), ips))
    return found


def find(attachments: Sequence[Attachment], network: str) -> Attachment:
    """The attachment of `network`, named `namespace/name` or just `name`."""
    wanted = network.strip()
    for att in attachments:
        if att.name == wanted or att.name.rpartition("/")[2] == wanted.rpartition("/")[2]:
            if not att.ips:
                raise NotFound(f"network {att.name} has no IP address (IPAM on the NAD?)")
            return att
    names = ", ".join(a.name for a in attachments) or "none"
    raise NotFound(f"network {wanted} not in network-status (attached: {names})")


def ordinal(hostname: str) -> int:
    """The ordinal of a StatefulSet pod from its name `<set>-<N>`."""
    match = re.search(r"-(\d+)$", hostname)
    if match is None:
        raise NotFound(f"pod name {hostname!r} has no ordinal: per-pod addresses need a "
                       "StatefulSet")
    return int(match.group(1))


def node_address(node: dict[str, object], kind: str) -> str:
    """The first address of type `kind` (ExternalIP, InternalIP, ...) of a Node object."""
    status = node.get("status")
    addresses = status.get("addresses") if isinstance(status, dict) else None
    for entry in addresses if isinstance(addresses, list) else []:
        if isinstance(entry, dict) and entry.get("type") == kind and entry.get("address"):
            return str(entry["address"])
    raise NotFound(f"node has no {kind} address")


def _ip(text: str) -> str:
    return str(ipaddress.ip_address(text.strip().split("/")[0]))


Fetch = Callable[[str], dict[str, object]]


def resolve(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    read: Callable[[str], str | None],
    fetch: Fetch | None = None,
) -> dict[str, str]:
    """The VOLTE_* variables to add, given the options, the environment, a file reader and
    an API-server getter (path -> JSON object)."""
    new: dict[str, str] = {}
    if args.network:
        text = None
        for path in args.status_file:
            text = read(path)
            if text and text.strip():
                break
        if not text or not text.strip():
            raise NotFound("the network-status annotation is empty (not written by Multus yet)")
        att = find(parse_status(text), args.network)
        address = _ip(att.ips[0])
        new["VOLTE_BIND"] = address
        new["VOLTE_ADVERTISED"] = address
        if att.interface:
            new["VOLTE_INTERFACE"] = att.interface
    if args.addresses:
        addresses = [a for a in args.addresses.split(",") if a.strip()]
        n = ordinal(environ.get("HOSTNAME", ""))
        if n >= len(addresses):
            raise NotFound(f"pod ordinal {n} but only {len(addresses)} addresses reserved")
        new["VOLTE_ADVERTISED"] = _ip(addresses[n])
    if args.node_address_type:
        name = environ.get("NODE_NAME", "")
        if not name:
            raise NotFound("NODE_NAME is not set (downward API spec.nodeName)")
        new["VOLTE_ADVERTISED"] = _ip(node_address((fetch or _api_get)(
            f"/api/v1/nodes/{name}"), args.node_address_type))
    # What the operator set by hand stays.
    return {k: v for k, v in new.items() if not environ.get(k)}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _api_get(path: str) -> dict[str, object]:
    """GET from the API server with the pod's service account token."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise NotFound("not in a Kubernetes pod (KUBERNETES_SERVICE_HOST unset)")
    if ":" in host:
        host = f"[{host}]"
    try:
        token = (SERVICE_ACCOUNT / "token").read_text().strip()
        context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
        request = urllib.request.Request(f"https://{host}:{port}{path}",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            data = json.load(response)
    except OSError as exc:
        raise NotFound(f"GET {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise NotFound(f"GET {path}: not a JSON object")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="media_entrypoint", description=(__doc__ or "").splitlines()[0],
        usage="%(prog)s [options] -- command [args...]",
    )
    parser.add_argument("--network", default="", help="Multus network (NAD) of the media VF")
    parser.add_argument("--status-file", action="append", default=None,
                        help=f"downward-API file(s) with the annotation (default: "
                             f"{', '.join(DEFAULT_FILES)})")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to wait for the network to show up (default 60)")
    parser.add_argument("--addresses", default="",
                        help="comma-separated addresses, one per StatefulSet ordinal")
    parser.add_argument("--node-address-type", default="",
                        help="advertise this address of the pod's node (e.g. ExternalIP)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    args.status_file = args.status_file or list(DEFAULT_FILES)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run after --")

    deadline = time.monotonic() + args.wait
    while True:
        try:
            found = resolve(args, os.environ, _read)
            break
        except (NotFound, ValueError) as exc:
            if time.monotonic() >= deadline:
                print(f"media_entrypoint: {exc}", file=sys.stderr)
                return EX_CONFIG
            time.sleep(0.5)
    for key, value in sorted(found.items()):
        print(f"media_entrypoint: {key}={value}", file=sys.stderr)
    os.environ.update(found)
    os.execvp(command[0], command)  # never returns


if __name__ == "__main__":
    sys.exit(main())
