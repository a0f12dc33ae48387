"""Run a command in a user-mode-linux guest with kernel SCTP, by hand.

    .venv/bin/python -m tests.enb.uml [--timeout 60] [--capture out.pcapng] -- CMD [ARG...]
    .venv/bin/python -m tests.enb.uml -- .venv/bin/python -m pytest -m kernel_sctp tests/enb

Prints the command's output, then the boot and total times; exits with the command's status.
"""

from __future__ import annotations

import argparse
import sys

from tests.enb.uml.guest import guest_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.enb.uml", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the command")
    parser.add_argument("--capture", help="dumpcap the guest's lo into this pcapng")
    parser.add_argument("--filter", default="sctp", help="capture filter (default: sctp)")
    parser.add_argument("--console", action="store_true", help="print the guest console too")
    parser.add_argument("cmd", nargs="+", help="command to run in the guest (after --)")
    args = parser.parse_args(argv)
    result = guest_run(args.cmd, args.timeout, capture_path=args.capture,
                       capture_filter=args.filter)
    sys.stdout.write(result.output)
    if args.console:
        sys.stdout.write("\n[guest console]\n" + result.console)
    print(f"\n[uml] exit {result.rc}; boot {result.boot_s:.2f} s, total {result.total_s:.2f} s",
          file=sys.stderr)
    return result.rc


if __name__ == "__main__":
    sys.exit(main())
