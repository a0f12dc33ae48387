"""The `volte` command: runs and inspects the whole stack on one machine.

Subcommands (up, status, provision, ...) are added to `build_parser` as they are built; each
sets `handler`, a function from the parsed arguments to the exit status.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from services import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volte", description="Cloud-native VoLTE/IMS signalling: run and inspect the stack."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
