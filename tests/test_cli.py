from __future__ import annotations

from collections.abc import Callable, Sequence

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
