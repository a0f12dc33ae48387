"""Test helpers: a redis-server process, a fake clock, the gRPC server in-process, and
subscribers and requests as the sbc builds them (digest answers from services.sip.digest)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2_grpc

from services.sip.digest import Challenge, answer, ha1
from services.state.service import StateServer
from services.state.store import RedisStore
from volte.v1 import common_pb2, state_pb2, state_pb2_grpc

UE_A = ("192.0.2.10", 5060)
REDIS_SERVER = shutil.which("redis-server")
REALM = "ims.local"
PASSWORD = "secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisProcess:
    """redis-server on a loopback port, stoppable and restartable on the same port and dir."""

    def __init__(self, data_dir: Path, *, appendonly: bool = False, port: int = 0) -> None:
        self.port = port or free_port()
        self.dir = data_dir
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if REDIS_SERVER is None:
            pytest.skip("needs redis-server (make deps)")
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.dir)]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_ping(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def wait_for_ping(port: int, proc: subprocess.Popen[bytes]) -> None:
    with redis.Redis(port=port, socket_connect_timeout=0.2) as client:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.ResponseError):  # refused, or still loading
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"redis on port {port} did not start") from None
                time.sleep(0.02)


@dataclass
class FakeClock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Api:
    server: StateServer
    stub: state_pb2_grpc.StateStoreStub
    health: health_pb2_grpc.HealthStub


async def start_api(store: RedisStore) -> tuple[StateServer, grpc.aio.Channel]:
    server = StateServer(store, sweep_interval=0.05, health_interval=0.1)
    port = await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def subscriber(n: int, *, barred: bool = False) -> state_pb2.Subscriber:
    """Subscriber n: IMPI 00101000000000n@ims.local, IMPUs sip:+1555000000n@ims.local and
    tel:+1555000000n, password "secret"."""
    impi = f"00101{n:010d}@{REALM}"
    return state_pb2.Subscriber(
        impi=impi,
        impus=[f"sip:+1555{n:07d}@{REALM}", f"tel:+1555{n:07d}"],
        imsi=f"00101{n:010d}",
        msisdn=f"1555{n:07d}",
        credentials=state_pb2.DigestCredentials(
            realm=REALM,
            ha1_md5=ha1(impi, REALM, PASSWORD, "MD5"),
            ha1_sha256=ha1(impi, REALM, PASSWORD, "SHA-256"),
        ),
        barred=barred,
    )


def digest(
    username: str,
    *,
    password: str = PASSWORD,
    algorithm: str = "MD5",
    nonce: str = "nonce-1",
    nc: int = 1,
    realm: str = REALM,
) -> state_pb2.DigestAnswer:
    creds = answer(
        Challenge(realm=realm, nonce=nonce, algorithm=algorithm),
        username=username,
        password=password,
        method="REGISTER",
        uri=f"sip:{REALM}",
        nc=nc,
    )
    return state_pb2.DigestAnswer(
        username=creds.username,
        realm=creds.realm,
        nonce=creds.nonce,
        uri=creds.uri,
        response=creds.response,
        algorithm=creds.algorithm,
        qop=creds.qop or "",
        nc=creds.nc,
        cnonce=creds.cnonce,
        method="REGISTER",
        nonce_lifetime=Duration(seconds=300),
    )


def change(
    impu: str,
    contact: str = "sip:ue@192.0.2.10:5060",
    *,
    expires: int = 3600,
    call_id: str = "reg-call-1",
    cseq: int = 1,
    source: tuple[str, int] = UE_A,
    q_milli: int = 1000,
    instance_id: str = "",
) -> state_pb2.SaveBindingRequest:
    return state_pb2.SaveBindingRequest(
        binding=state_pb2.Binding(
            impu=impu,
            contact_uri=contact,
            call_id=call_id,
            cseq=cseq,
            q_milli=q_milli,
            instance_id=instance_id,
            received=common_pb2.SocketAddress(ip=source[0], port=source[1]),
            transport=common_pb2.SIP_TRANSPORT_UDP,
            sbc_instance="sbc-0",
        ),
        expires=Duration(seconds=expires),
    )


def register(
    sub: state_pb2.Subscriber,
    *changes: state_pb2.SaveBindingRequest,
    impu: str | None = None,
    remove_all: bool = False,
    **auth: object,
) -> state_pb2.RegisterRequest:
    aor = impu or sub.impus[0]
    return state_pb2.RegisterRequest(
        auth=digest(sub.impi, **auth),  # type: ignore[arg-type]
        impu=aor,
        changes=list(changes) if changes or remove_all else [change(aor)],
        remove_all=remove_all,
    )
