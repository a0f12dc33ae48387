"""The compiled call path (services/native.py): code mypyc would compile wrongly, and the
stale-build check."""

from __future__ import annotations

import ast
import importlib.machinery
import os
from pathlib import Path

import pytest

from services import native


def _handler_names(function: ast.AST) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.ExceptHandler) and node.name and node.type is not None:
            names.setdefault(node.name, set()).add(ast.unparse(node.type))
    return names


@pytest.mark.parametrize("module", native.MODULES)
def test_no_except_name_serves_two_exception_types(module: str) -> None:
    """mypyc gives a name one type per function: `except A as exc` then `except B as exc`
    compiles into a TypeError when B is raised (the sbc answered nothing when Redis stopped)."""
    tree = ast.parse(native.source(module).read_text())
    reused = [
        f"{function.name} (line {function.lineno}): {name} for {sorted(types)}"
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for name, types in _handler_names(function).items()
        if len(types) > 1
    ]
    assert not reused


def test_an_extension_older_than_its_source_is_stale(tmp_path: Path) -> None:
    module = "services.sip.grammar"
    src = native.source(module, tmp_path)
    src.parent.mkdir(parents=True)
    src.write_text("")
    assert native.stale(tmp_path) == []  # nothing compiled: nothing stale
    extension = src.with_name(src.stem + importlib.machinery.EXTENSION_SUFFIXES[0])
    extension.write_bytes(b"")
    os.utime(src, (0, 1_000))
    os.utime(extension, (0, 2_000))
    assert native.extensions(module, tmp_path) == [extension]
    assert native.stale(tmp_path) == []  # compiled after the last edit
    os.utime(src, (0, 3_000))
    assert native.stale(tmp_path) == [module]
