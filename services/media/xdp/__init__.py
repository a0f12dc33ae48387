"""The media relay's kernel fast path: an XDP program that relays latched RTP/RTCP flows.

    from services.media.xdp import XdpFastPath, XdpUnavailable

    try:
        fast = XdpFastPath(["eth1"])          # raises XdpUnavailable with the reason
    except XdpUnavailable as exc:
        log.warning("XDP fast path off: %s", exc)   # once; relay in userspace
    ...
    fast.install(flow)   # True: the kernel relays it now; False: it stays in userspace
    fast.counters()      # {flow_id: (packets, payload bytes)} relayed in the kernel
    fast.remove(flow_id)
    fast.close()         # detaches; every flow goes back to userspace

The media relay itself goes through `create(options)` (media.py), which adapts this to the
FastPath interface of services.media.fastpath (whole flows, per-direction counters).

See loader.py for the layers, relay.bpf.c for the data path, maps.py for the flow fields.
"""

from services.media.xdp.loader import XdpFastPath, XdpProgram, XdpUnavailable
from services.media.xdp.maps import Endpoint, XdpFlow
from services.media.xdp.media import XdpRelayFastPath, create

__all__ = [
    "Endpoint",
    "XdpFastPath",
    "XdpFlow",
    "XdpProgram",
    "XdpRelayFastPath",
    "XdpUnavailable",
    "create",
]
