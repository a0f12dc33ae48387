"""`python -m services.state`: the state service (options: --help, or VOLTE_* variables)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from services.common.config import load
from services.common.telemetry import setup_logging
from services.sip.transport import install_event_loop_policy
from services.state.service import StateConfig, serve


def main(argv: Sequence[str] | None = None) -> int:
    config = load(
        StateConfig,
        argv,
        prog="python -m services.state",
        description="volte state store: gRPC volte.v1.StateStore on Redis",
    )
    setup_logging("state", config.log_level)
    install_event_loop_policy()  # uvloop: less CPU per RPC and per Redis reply
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
