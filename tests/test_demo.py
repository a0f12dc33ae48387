"""`volte demo` (what `make demo` runs) completes its calls and leaves nothing running."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.interop


def test_demo_places_calls_through_the_sbc_and_stops() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--pairs", "2", "--rounds", "2",
         "--hold", "0.1"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "registered 4/4 UEs with digest auth" in out.stdout
    assert "4/4 calls completed through the sbc" in out.stdout
    assert out.stdout.rstrip().endswith("stack stopped")
