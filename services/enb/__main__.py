"""`python -m services.enb`: the enb-agent (options: --help, or VOLTE_* variables)."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Sequence

from services.common.config import load
from services.common.telemetry import setup_logging
from services.enb.service import EnbConfig, serve
from services.sip.transport import install_event_loop_policy


def main(argv: Sequence[str] | None = None) -> int:
    config = load(
        EnbConfig,
        argv,
        prog="python -m services.enb",
        description="volte enb-agent: S1AP (TS 36.413) over SCTP towards eNodeBs, "
        "gRPC volte.v1.BearerControl for the sbc",
    )
    setup_logging("enb-agent", config.log_level)
    install_event_loop_policy()  # uvloop: less CPU per SCTP message and per RPC
    # pycrate's compiled S1AP/NAS modules are a large object graph that never dies: keep it out
    # of the collector's way, so full collections (latency spikes) stay short.
    gc.collect()
    gc.freeze()
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
