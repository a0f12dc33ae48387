"""A lean Redis client for the call path: one connection, commands pipelined on it.

redis-py's asyncio client takes a pooled connection under a lock and runs a retry wrapper for
every command: on the sbc's call path that cost more CPU than the Lua scripts it runs. This
client does what RedisStore asks of a standalone Redis (redis:// and unix:// URLs) and nothing
more: commands, scripts (EVALSHA, loading the script on NOSCRIPT as redis-py does) and
non-transactional pipelines. Every caller's commands go down one connection as they come;
Redis answers in order, so replies are matched to a queue of futures (hiredis parses them).

Its errors are redis-py's exception classes, so RedisStore and its callers handle both clients
alike. When a command has waited `timeout` seconds for its reply and nothing at all came from
Redis meanwhile, the connection is aborted: every command on it fails with TimeoutError (a
hung server, as redis-py's socket timeout does), and the next command connects anew. A busy
worker whose replies queue up behind its own work does not count as a hung server; but any
command unanswered after `deadline` seconds (twice `timeout` unless told), or past the
deadline its caller set for the whole operation (`operation_deadline`), fails with
TimeoutError on its own, so a caller needs no timer of its own. One timer per connection
watches all commands, and the commands of one turn of the event loop go in one write.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hashlib
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis import exceptions as errors
from redis.asyncio.connection import parse_url

Arg = str | bytes | int | float


def _pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


# Error replies by their first word, as redis-py classifies them.
_ERRORS: dict[str, type[errors.RedisError]] = {
    "NOSCRIPT": errors.NoScriptError,
    "READONLY": errors.ReadOnlyError,
    "LOADING": errors.BusyLoadingError,
    "NOAUTH": errors.AuthenticationError,
    "WRONGPASS": errors.AuthenticationError,
    "NOPERM": errors.NoPermissionError,
    "EXECABORT": errors.ExecAbortError,
}


# The loop time by which the caller's whole operation (several round trips, maybe) must be
# answered: no command sent within it waits past it. Set by the caller around the operation
# (the sbc's state calls): cheaper than an asyncio.timeout per operation.
operation_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "redis_operation_deadline", default=None
)


def _error(reply: hiredis.ReplyError) -> errors.RedisError:
    text = str(reply)
    return _ERRORS.get(text.split(" ", 1)[0], errors.ResponseError)(text)


class _Connection(asyncio.Protocol):
    """One connection to Redis: commands written as they come (those of one turn of the loop
    in one write), replies matched to them in order, and one watchdog timer for all."""

    def __init__(self, timeout: float, deadline: float) -> None:
        self.reader = hiredis.Reader()
        # Commands sent, oldest first: (their reply, when sent, `reads` then, when it fails
        # if still unanswered).
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float, int, float]] = (
            collections.deque()
        )
        self.outbox: list[bytes] = []  # written at the end of this turn of the loop
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.loop = asyncio.get_running_loop()
        self.reads = 0  # data_received calls so far: has Redis said anything since ...?
        self.timeout = timeout
        self.deadline = deadline
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, commands: Sequence[Sequence[Arg]]) -> list[asyncio.Future[Any]]:
        """Queue `commands` for this turn's write; the futures of their replies."""
        loop = self.loop
        now = loop.time()
        futures = [loop.create_future() for _ in commands]
        reads = self.reads
        limit = now + self.deadline
        operation = operation_deadline.get()
        if operation is not None and operation < limit:
            limit = operation
        self.waiting.extend((future, now, reads, limit) for future in futures)
        if not self.outbox:
            # Written once the callbacks of this turn have run: the commands of every call
            # handled in it go in one system call (and their replies mostly come in one).
            loop.call_soon(self._flush)
        self.outbox.append(b"".join(map(_pack, commands)))
        if self._watchdog is None or limit < self._watchdog_at:
            self._arm(min(now + self._period(), limit))
        return futures

    def _flush(self) -> None:
        if self.outbox and not self.lost and self.transport is not None:
            self.transport.write(b"".join(self.outbox))
        self.outbox.clear()

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                future = self.waiting.popleft()[0]
                if future.done():  # its caller gave up, or its deadline passed: dropped
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    reply = _error(reply)
                future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply unasked for
            self.fail(errors.ConnectionError(f"Redis protocol error: {exc or 'stray reply'}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(errors.ConnectionError(f"Redis connection lost: {exc or 'closed by server'}"))

    def fail(self, error: errors.RedisError) -> None:
        self.lost = True
        self.outbox.clear()
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.transport is not None:
            self.transport.abort()

    # -- the watchdog: one timer, running while commands wait ---------------------------------
    def _period(self) -> float:
        return min(self.timeout, self.deadline) / 2

    def _arm(self, when: float) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = self.loop.call_at(when, self._check)
        self._watchdog_at = when

    def _check(self) -> None:
        """A command unanswered for `deadline`, or past its operation's deadline, fails on
        its own (the others keep their place). When the oldest has waited `timeout` and
        nothing at all came from Redis since it was sent, the server is hung; decided after
        the loop has polled I/O (twice, to be sure: the timer may have run before the loop
        read what is waiting in the socket), so a worker whose replies queue up behind its
        own work is not taken for a hung server."""
        self._watchdog = None
        if self.lost or not self.waiting:
            return
        now = self.loop.time()
        _, sent, reads, _ = self.waiting[0]
        if now - sent >= self.timeout and self.reads == reads:
            self.loop.call_soon(self._confirm_hung, reads, 2)
        due = now + self._period()
        for future, sent, _, limit in self.waiting:
            if future.done():
                continue
            if limit <= now:
                why = (
                    "by the deadline of its operation" if limit < sent + self.deadline
                    else f"within {self.deadline:g} s"
                )
                future.set_exception(errors.TimeoutError(f"no reply from Redis {why}"))
            elif limit < due:
                due = limit
        self._arm(due)

    def _confirm_hung(self, reads: int, hops: int) -> None:
        if self.lost or self.reads != reads or not self.waiting:
            return
        if hops:
            self.loop.call_soon(self._confirm_hung, reads, hops - 1)
        else:
            self.fail(errors.TimeoutError(f"no reply from Redis within {self.timeout:g} s"))


class LeanRedis:
    """The subset of redis.asyncio.Redis that RedisStore uses, on one pipelined connection."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str = "",
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 0.5,
        deadline: float | None = None,
        client_name: str | None = None,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.timeout = timeout
        self.deadline = 2 * timeout if deadline is None else deadline
        # Sent first on every new connection, in one write with the first command.
        setup: list[tuple[Arg, ...]] = []
        if password is not None:
            setup.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            setup.append(("SELECT", db))
        if client_name:
            setup.append(("CLIENT", "SETNAME", client_name))
        self._setup = setup
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def from_url(cls, url: str, *, timeout: float, client_name: str | None = None) -> LeanRedis:
        """redis://[user:password@]host:port/db or unix:///path?db=N (not TLS, Sentinel or
        cluster: redis-py serves those)."""
        scheme = url.partition("://")[0].lower()
        if scheme not in ("redis", "unix"):
            raise ValueError(f"LeanRedis takes redis:// and unix:// URLs, not {scheme}://")
        options = parse_url(url)
        return cls(
            host=options.get("host") or "127.0.0.1",
            port=int(options.get("port") or 6379),
            path=options.get("path") or "",
            db=int(options.get("db") or 0),
            username=options.get("username"),
            password=options.get("password"),
            timeout=timeout,
            client_name=client_name,
        )

    async def _connect(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.lost:
            return connection
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connect for all who wait
            connection = self._connection
            if connection is not None and not connection.lost:
                return connection
            loop = asyncio.get_running_loop()
            def protocol() -> _Connection:
                return _Connection(self.timeout, self.deadline)
            try:
                async with asyncio.timeout(self.timeout):
                    if self.path:
                        _, connection = await loop.create_unix_connection(protocol, self.path)
                    else:
                        _, connection = await loop.create_connection(
                            protocol, self.host, self.port
                        )
            except (OSError, TimeoutError) as exc:
                where = self.path or f"{self.host}:{self.port}"
                raise errors.ConnectionError(
                    f"cannot connect to Redis at {where}: {exc or 'timed out'}"
                ) from None
            if self._setup:
                replies = await self._round_trip(connection, self._setup)
                for reply in replies:
                    if isinstance(reply, Exception):
                        connection.fail(errors.ConnectionError(f"Redis refused set-up: {reply}"))
                        raise reply
            self._connection = connection
            return connection

    async def _round_trip(
        self, connection: _Connection, commands: Sequence[Sequence[Arg]]
    ) -> list[Any]:
        """Sends `commands` in one write; their replies (an error reply as its exception)."""
        futures = connection.send(commands)
        try:
            return [await future for future in futures]
        except BaseException:
            for future in futures:
                if not future.done():
                    future.cancel()  # its reply, when it comes, is dropped
                elif not future.cancelled():
                    future.exception()  # seen: asyncio would log it as never retrieved
            raise

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        return await self._round_trip(await self._connect(), commands)

    async def execute_command(self, *args: Arg) -> Any:
        (reply,) = await self.execute_many([args])
        if isinstance(reply, Exception):
            raise reply
        return reply

    # -- what RedisStore calls ------------------------------------------------------------------
    def register_script(self, script: str) -> LeanScript:
        return LeanScript(self, script)

    def pipeline(self, transaction: bool = False) -> LeanPipeline:
        if transaction:
            raise ValueError("LeanRedis pipelines are not transactions")
        return LeanPipeline(self)

    async def ping(self) -> bool:
        return bool(await self.execute_command("PING") == b"PONG")

    async def get(self, key: str) -> bytes | None:
        reply: bytes | None = await self.execute_command("GET", key)
        return reply

    async def set(self, key: str, value: Arg, px: int | None = None) -> bool:
        args: tuple[Arg, ...] = ("SET", key, value) + (("PX", px) if px is not None else ())
        return bool(await self.execute_command(*args))

    async def hget(self, key: str, field: str) -> bytes | None:
        reply: bytes | None = await self.execute_command("HGET", key, field)
        return reply

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        flat: list[bytes] = await self.execute_command("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def hvals(self, key: str) -> list[bytes]:
        reply: list[bytes] = await self.execute_command("HVALS", key)
        return reply

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Arg) -> Any:
        return await self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.fail(errors.ConnectionError("client closed"))
            self._connection = None


class LeanScript:
    """A Lua script run by its SHA1, loaded when the server does not know it (as redis-py's
    AsyncScript: after a restart or SCRIPT FLUSH)."""

    def __init__(self, client: LeanRedis, script: str) -> None:
        self.client = client
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)
        except errors.NoScriptError:
            await self.client.execute_command("SCRIPT", "LOAD", self.script)
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)


class LeanPipeline:
    """Commands sent in one write; execute() answers their replies in order."""

    def __init__(self, client: LeanRedis) -> None:
        self.client = client
        self.commands: list[tuple[Arg, ...]] = []

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Arg) -> LeanPipeline:
        self.commands.append(("EVALSHA", sha, numkeys, *keys_and_args))
        return self

    def hvals(self, key: str) -> LeanPipeline:
        self.commands.append(("HVALS", key))
        return self

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        replies = await self.client.execute_many(self.commands)
        self.commands = []
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies
