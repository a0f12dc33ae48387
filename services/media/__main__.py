"""`python -m services.media`: the media relay (options: --help, or VOLTE_* variables)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from services.common.config import load
from services.common.telemetry import setup_logging
from services.media.config import MediaConfig
from services.media.service import serve

PROG = "python -m services.media"


def install_event_loop_policy() -> str:
    """Use uvloop when it is installed; say which loop runs."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def main(argv: Sequence[str] | None = None) -> int:
    config = load(
        MediaConfig,
        argv,
        prog=PROG,
        description="volte media relay: gRPC volte.v1.MediaControl, RTP/RTCP relay with latching",
    )
    problems = config.problems()
    if problems:
        for problem in problems:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    setup_logging("media", config.log_level)
    install_event_loop_policy()
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
