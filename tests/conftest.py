"""Session checks: the compiled call path (services/native.py) must match its sources."""

from __future__ import annotations

import pytest

from services import native


def pytest_report_header() -> str:
    return f"call path: {native.describe()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = native.stale()
    if stale:
        raise pytest.UsageError(
            f"{', '.join(stale)} changed since `make native` compiled them, and the tests would "
            "run the old code: run `make native` (or `make clean-native` for pure Python)"
        )
