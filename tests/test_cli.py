from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from loadgen.cli import main as loadgen_main
from services import __version__
from services.cli import main as volte_main
from services.stack import Stack

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
        ["up", "--bearer-policy", "strict"],
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


# -- volte up: the media relay's flags reach its command line ---------------------------------
class _RecordingStack(Stack):
    """Stack that starts nothing: records the media relay's command line it would run."""

    started: ClassVar[list[_RecordingStack]] = []

    def preflight(self) -> None:
        pass

    def start(self, timeout: float = 30.0) -> None:
        self.media = self.media_argv(self.config.media_grpc)
        _RecordingStack.started.append(self)


def _media_argv(argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    monkeypatch.setattr("services.cli.Stack", _RecordingStack)
    _RecordingStack.started = []
    assert volte_main(["up", "--detach", "--run-dir", str(tmp_path), *argv]) == 0
    (stack,) = _RecordingStack.started
    return stack.media


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_volte_up_media_flags_reach_the_relay(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    media = _media_argv(
        ["--media-fastpath", "xdp", "--media-interface", "veth7", "--media-bind", "10.1.2.3",
         "--media-port-min", "41000", "--media-port-max", "41099"], monkeypatch, tmp_path,
    )
    assert media[1:3] == ["-m", "services.media"]
    assert _flag(media, "--fastpath") == "xdp" and _flag(media, "--interface") == "veth7"
    assert _flag(media, "--bind") == "10.1.2.3"
    assert (_flag(media, "--port-min"), _flag(media, "--port-max")) == ("41000", "41099")
    assert "fast path xdp on veth7" in capsys.readouterr().out
    # The defaults: userspace on loopback, no interface; and the environment works as a flag.
    media = _media_argv([], monkeypatch, tmp_path)
    assert _flag(media, "--fastpath") == "userspace" and _flag(media, "--bind") == "127.0.0.1"
    assert "--interface" not in media
    monkeypatch.setenv("VOLTE_MEDIA_FASTPATH", "xdp")
    assert _flag(_media_argv([], monkeypatch, tmp_path), "--fastpath") == "xdp"


def test_volte_up_bearer_policy_reaches_the_stack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The sbc gets `--bearer-policy` from StackConfig (tests/interop/test_bearer_calls.py)."""
    _media_argv([], monkeypatch, tmp_path)
    assert _RecordingStack.started[0].config.bearer_policy == "best-effort"
    _media_argv(["--bearer-policy", "required"], monkeypatch, tmp_path)
    assert _RecordingStack.started[0].config.bearer_policy == "required"
    monkeypatch.setenv("VOLTE_BEARER_POLICY", "required")
    _media_argv([], monkeypatch, tmp_path)
    assert _RecordingStack.started[0].config.bearer_policy == "required"


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["--media-fastpath", "dpdk"], 2),
        (["--media-bind", "relay.example"], 2),
        (["--media-port-min", "70000"], 2),
        (["--media-port-min", "5000", "--media-port-max", "5000"], 1),
    ],
)
def test_volte_up_bad_media_flags_are_one_line(
    argv: list[str], status: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("services.cli.Stack", _RecordingStack)
    try:
        code = volte_main(["up", "--detach", "--run-dir", str(tmp_path), *argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code == status
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "media" in err, err


@pytest.mark.interop  # runs redis-server and the services
def test_volte_up_xdp_refused_falls_back_to_userspace_and_says_so(tmp_path: Path) -> None:
    from tests.test_volte_up import Ports, volte

    run_dir = tmp_path / "run"
    ports = Ports()
    up = volte("up", "--detach", "--run-dir", str(run_dir), *ports.args(),
               "--media-fastpath", "xdp", "--media-interface", "nosuch0",
               "--media-port-min", "41100", "--media-port-max", "41199")
    try:
        assert up.returncode == 0, up.stderr
        data = json.loads((run_dir / "stack.json").read_text())
        (media,) = [p for p in data["procs"] if p["service"] == "media"]
        assert _flag(media["argv"], "--fastpath") == "xdp"
        assert _flag(media["argv"], "--interface") == "nosuch0"
        assert "fast path userspace (xdp refused: no network interface named 'nosuch0')" \
            in up.stdout
        status = volte("status", "--json", "--run-dir", str(run_dir))
        rows = {row["service"]: row for row in json.loads(status.stdout)}
        assert rows["media"]["status"] == "SERVING"
    finally:
        volte("down", "--run-dir", str(run_dir))
        leftover = Stack.load(str(run_dir))
        if leftover is not None:
            leftover.stop()
