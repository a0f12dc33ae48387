"""`make bench`: every benchmark in turn, figures printed; non-zero exit when a target is missed."""

from __future__ import annotations

from tests.bench import (
    enb_bearers,
    loadgen_vs_sipp,
    sbc_vs_kamailio,
    sip_parser,
    uas_vs_sipp,
)


def main() -> int:
    failures = 0
    for bench in (sip_parser, uas_vs_sipp, sbc_vs_kamailio, loadgen_vs_sipp, enb_bearers):
        failures += bench.main() != 0
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
