from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.config import MISSING, add_options, env_name, flag_name, load, option, resolve


@dataclass(frozen=True, kw_only=True)
class Sample:
    sip_port: int = option(5060, "SIP port")
    redis_url: str = option("redis://localhost:6379/0", "state store")
    load_factor: float = option(0.75, "100% means full")
    tls: bool = option(False, "serve TLS")
    cert: Path | None = option(None, "certificate file")
    zone: str = option("a", "zone", parse=str.lower)


@dataclass(frozen=True, kw_only=True)
class WithRequired:
    instance_id: str = option(MISSING, "instance name")
    port: int = option(1, "port")


def test_names_follow_the_convention() -> None:
    assert flag_name("sip_port") == "--sip-port"
    assert env_name("sip_port") == "VOLTE_SIP_PORT"


def test_defaults() -> None:
    assert load(Sample, [], environ={}) == Sample()


def test_environment_overrides_default() -> None:
    env = {
        "VOLTE_SIP_PORT": "5070",
        "VOLTE_LOAD_FACTOR": "0.5",
        "VOLTE_TLS": "yes",
        "VOLTE_CERT": "/etc/volte/cert.pem",
        "VOLTE_ZONE": "B",
        "OTHER_SIP_PORT": "1",
    }
    config = load(Sample, [], environ=env)
    assert config == Sample(
        sip_port=5070, load_factor=0.5, tls=True, cert=Path("/etc/volte/cert.pem"), zone="b"
    )


def test_flag_overrides_environment() -> None:
    env = {"VOLTE_SIP_PORT": "5070", "VOLTE_TLS": "true"}
    config = load(Sample, ["--sip-port", "5080", "--no-tls"], environ=env)
    assert (config.sip_port, config.tls) == (5080, False)


def test_bad_environment_value_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load(Sample, [], prog="sbc", environ={"VOLTE_SIP_PORT": "fifty"})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sbc: error: environment variable VOLTE_SIP_PORT='fifty': invalid int value" in err


def test_bad_boolean_in_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load(Sample, [], environ={"VOLTE_TLS": "maybe"})
    assert exit_info.value.code == 2
    assert "VOLTE_TLS='maybe': expected one of" in capsys.readouterr().err


def test_bad_flag_value_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load(Sample, ["--load-factor", "high"], environ={})
    assert exit_info.value.code == 2
    assert "argument --load-factor: invalid float value: 'high'" in capsys.readouterr().err


def test_required_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert load(WithRequired, [], environ={"VOLTE_INSTANCE_ID": "sbc-0"}).instance_id == "sbc-0"
    assert load(WithRequired, ["--instance-id", "sbc-1"], environ={}).instance_id == "sbc-1"
    with pytest.raises(SystemExit):
        load(WithRequired, [], environ={})
    assert "--instance-id or environment variable VOLTE_INSTANCE_ID is required" in (
        capsys.readouterr().err
    )


def test_help_shows_environment_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load(Sample, ["--help"], environ={})
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--sip-port SIP_PORT SIP port (env VOLTE_SIP_PORT; default: 5060)" in out
    assert "100% means full" in out
    assert "--tls, --no-tls" in out


def test_composes_with_other_arguments() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    add_options(parser, Sample)
    namespace = parser.parse_args(["up", "--sip-port", "5090"])
    assert namespace.command == "up"
    assert resolve(parser, Sample, namespace, environ={}).sip_port == 5090


def test_unsupported_type_needs_a_parser() -> None:
    @dataclass(frozen=True)
    class Bad:
        pair: tuple[int, int] = option((1, 2), "pair")

    with pytest.raises(TypeError, match="no converter"):
        load(Bad, [], environ={})
