"""Give a copy of the interpreter the file capabilities of the XDP fast path (media image).

Kubernetes grants no capabilities to a non-root process: `capabilities.add` only widens the
bounding set. File capabilities on the executable are what the kernel then grants at exec
(when privilege escalation is allowed). CAP_NET_ADMIN attaches XDP programs, CAP_BPF (Linux
5.8 and later) loads programs and maps. Runs as root in the media stage of the Containerfile:

    python3 setcap_xdp.py /opt/volte/bin/python3-xdp
"""

from __future__ import annotations

import os
import shutil
import struct
import sys

CAP_NET_ADMIN = 12
CAP_BPF = 39
VFS_CAP_REVISION_2 = 0x02000000
VFS_CAP_FLAGS_EFFECTIVE = 0x1


def vfs_cap_data(caps: list[int]) -> bytes:
    """struct vfs_cap_data (revision 2, effective): magic, then permitted/inheritable x 2."""
    permitted = sum(1 << c for c in caps)
    return struct.pack(
        "<5I",
        VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
        permitted & 0xFFFFFFFF, 0,
        permitted >> 32, 0,
    )


def main() -> int:
    dst = sys.argv[1]
    shutil.copy2(os.path.realpath(sys.executable), dst)
    os.setxattr(dst, "security.capability", vfs_cap_data([CAP_NET_ADMIN, CAP_BPF]))
    print(f"setcap_xdp: {dst} = cap_net_admin,cap_bpf+ep", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
