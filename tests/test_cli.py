from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from loadgen.cli import main as loadgen_main
from services import __version__
from services.cli import main as volte_main

Main = Callable[[Sequence[str] | None], int]


@pytest.mark.parametrize(("name", "main"), [("volte", volte_main), ("loadgen", loadgen_main)])
def test_version(name: str, main: Main, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"{name} {__version__}\n"


def test_volte_without_a_command_shows_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert volte_main([]) == 2
    assert capsys.readouterr().out.startswith("usage: volte")


# -- volte: argument handling and the commands that need no running stack --------------------
def test_volte_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        volte_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("up", "down", "status", "subscribers"):
        assert command in out
    assert "VOLTE_SIP_PORT" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--sip-port", "abc"],
        ["up", "--sip-port", "70000"],
        ["up", "--workers", "0"],
        ["up", "--state-grpc", "nohostport"],
        ["up", "--redis", "http://example"],
        ["subscribers", "provision"],  # --count is required
        ["subscribers", "add", "100"],  # --password is required
        ["subscribers", "add", "100", "--password", "x", "--imsi", "12"],
        ["subscribers"],
        ["bogus"],
    ],
)
def test_volte_usage_errors_are_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VOLTE_PASSWORD", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        volte_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "error:" in err


def test_volte_bad_environment_value_names_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOLTE_SIP_PORT", "five")
    with pytest.raises(SystemExit) as exit_info:
        volte_main(["up", "--run-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "VOLTE_SIP_PORT='five'" in capsys.readouterr().err


def test_volte_status_and_down_with_nothing_running(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOLTE_RUN_DIR", str(tmp_path))  # the environment sets --run-dir
    assert volte_main(["status"]) == 3
    assert "nothing running" in capsys.readouterr().err
    assert volte_main(["status", "--json"]) == 3
    assert json.loads(capsys.readouterr().out) == []
    assert volte_main(["down"]) == 0
    assert "nothing running" in capsys.readouterr().out


def test_volte_stale_stack_json_never_signals_a_recycled_pid(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # stack.json names a pid that now runs something else: it counts as dead, is not killed.
    other = subprocess.Popen(["sleep", "30"])
    try:
        proc = {"service": "redis", "pid": other.pid, "argv": ["redis-server", "--port", "1"],
                "grpc": "", "address": "redis://127.0.0.1:1/0", "log": ""}
        stack_json = tmp_path / "stack.json"
        stack_json.write_text(json.dumps({"config": {"run_dir": str(tmp_path)}, "procs": [proc]}))
        assert volte_main(["status", "--run-dir", str(tmp_path)]) == 1
        assert "DEAD" in capsys.readouterr().out
        assert volte_main(["down", "--run-dir", str(tmp_path)]) == 0
        assert "nothing running" in capsys.readouterr().out
        assert not stack_json.exists()
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_volte_unreadable_stack_json_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "stack.json").write_text("{not json")
    assert volte_main(["status", "--run-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("volte: cannot read") and len(err.splitlines()) == 1
