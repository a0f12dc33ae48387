"""A Redis client from a URL, set up to fail fast: short timeouts and no retry loops.

    redis://[user:password@]host:port/db     rediss://...  (TLS)     unix:///path/to/socket?db=0
    redis+sentinel://[user:password@]host1:port1,host2:port2/service_name[/db]
    redis+cluster://[user:password@]host:port[,host:port...]

Credentials in a Sentinel URL are the master's; the sentinels are asked without them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from services.state.resp import LeanRedis

RedisClient = Redis | RedisCluster | LeanRedis

MAX_CONNECTIONS = 256
SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")


def _split(url: str) -> tuple[str, str | None, str | None, list[tuple[str, int]], list[str]]:
    """scheme, username, password, [(host, port)], path segments of a multi-host URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a URL: {url!r}")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    default_port = 26379 if scheme == "redis+sentinel" else 6379
    hosts = []
    for item in netloc.split(","):
        if item.startswith("["):  # [ipv6]:port
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        if not host:
            raise ValueError(f"missing host in {url!r}")
        try:
            hosts.append((host, int(port) if port else default_port))
        except ValueError:
            raise ValueError(f"bad port {port!r} in {url!r}") from None
    return scheme, username, password, hosts, [p for p in path.split("/") if p]


def check_url(url: str) -> str:
    """Validates a Redis URL (for option parsing); returns it unchanged."""
    scheme = url.partition("://")[0].lower()
    if scheme not in SCHEMES:
        raise ValueError(f"Redis URL scheme must be one of {', '.join(SCHEMES)}: {url!r}")
    if scheme == "redis+sentinel":
        _, _, _, _, path = _split(url)
        if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            raise ValueError(f"expected redis+sentinel://host:port,.../service_name[/db]: {url!r}")
    elif scheme == "redis+cluster":
        _split(url)
    return url


def client_name(service: str, instance: str) -> str:
    """What a service's connections are called in Redis's CLIENT LIST."""
    return f"volte-{service}-" + "_".join(instance.split())


def connect(
    url: str, *, timeout: float = 0.5, client_name: str | None = None, lean: bool = False
) -> RedisClient:
    """A client for `url`; `timeout` bounds connecting and each reply (seconds). `lean`: for
    redis:// and unix:// URLs, the call path's one pipelined connection (resp.py) instead of
    redis-py's pool."""
    check_url(url)
    scheme = url.partition("://")[0].lower()
    if lean and scheme in ("redis", "unix"):
        return LeanRedis.from_url(url, timeout=timeout, client_name=client_name)
    fail_fast: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if scheme in ("redis", "rediss", "unix"):
        # Under a burst, wait (up to `timeout`) for a free connection rather than failing at
        # once with "Too many connections", which the sbc would turn into 503s.
        pool = BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout, client_name=client_name,
            **fail_fast,
        )
        return Redis.from_pool(pool)
    _, username, password, hosts, path = _split(url)
    if scheme == "redis+cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in hosts],
            username=username,
            password=password,
            client_name=client_name,
            **fail_fast,
        )
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts,
        sentinel_kwargs=dict(fail_fast),
        username=username,
        password=password,
        db=int(path[1]) if len(path) > 1 else 0,
        client_name=client_name,
        **fail_fast,
    )
    master: Redis = sentinel.master_for(path[0])
    return master
