"""The generated `volte` package is fresh, importable, and our health.proto is the standard one."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2

import hatch_build

try:
    import volte.v1
except ModuleNotFoundError as exc:
    pytest.fail(f"generated code is missing: run `make proto`/reinstall ({exc})", pytrace=False)

GENERATED = Path(volte.v1.__file__).resolve().parent.parent
HEALTH_PROTO = Path("grpc/health/v1/health.proto")


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    hatch_build.generate(tmp_path)
    fresh, used = _tree(tmp_path / "volte"), _tree(GENERATED)
    assert sorted(used) == sorted(fresh), "generated code is stale: run `make proto`/reinstall"
    stale = [name for name in fresh if fresh[name] != used[name]]
    assert not stale, f"generated code is stale: run `make proto`/reinstall ({', '.join(stale)})"


def test_every_generated_module_imports() -> None:
    names = [m.name for m in pkgutil.iter_modules(volte.v1.__path__, "volte.v1.")]
    assert {"volte.v1.state_pb2", "volte.v1.state_pb2_grpc"} <= set(names)
    for name in names:
        importlib.import_module(name)


@pytest.mark.parametrize(
    ("module", "service", "methods"),
    [
        ("state", "StateStore", {"GetSubscriber", "SaveBinding", "LookupBindings", "PutDialog"}),
        ("media", "MediaControl", {"CreateSession", "UpdateSession", "WatchEvents"}),
        ("bearer", "BearerControl", {"SetupBearer", "ReleaseBearer", "ListUes", "WatchEvents"}),
        ("sbc_admin", "SbcAdmin", {"GetStatus", "Drain", "ListRegistrations"}),
    ],
)
def test_services_are_generated(module: str, service: str, methods: set[str]) -> None:
    pb2 = importlib.import_module(f"volte.v1.{module}_pb2")
    grpc_module = importlib.import_module(f"volte.v1.{module}_pb2_grpc")
    descriptor = pb2.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == f"volte.v1.{service}"
    assert methods <= {m.name for m in descriptor.methods}
    assert hasattr(grpc_module, f"{service}Stub")
    assert hasattr(grpc_module, f"add_{service}Servicer_to_server")


def _drop_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    # protoc fills json_name in descriptor sets, generated modules omit it; it follows from the
    # field name either way.
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _drop_json_names(message.nested_type)


def test_health_proto_is_the_standard_one(tmp_path: Path) -> None:
    out = tmp_path / "health.pb"
    hatch_build.run_protoc(hatch_build.PROTO_ROOT, [HEALTH_PROTO], [f"--descriptor_set_out={out}"])
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    ours = next(f for f in compiled if f.name == str(HEALTH_PROTO))
    _drop_json_names(ours.message_type)
    standard = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(standard)
    # File names differ (grpcio-health-checking compiles it as grpc_health/v1/health.proto);
    # everything on the wire and in generated APIs must not.
    assert ours.package == standard.package == "grpc.health.v1"
    assert [s.name for s in ours.service] == ["Health"]
    assert ours.service == standard.service
    assert ours.message_type == standard.message_type
    assert ours.enum_type == standard.enum_type
    assert ours.options == standard.options
