"""What the Redis token store and rate limiter share: how they send a command to Redis.

A bounded number of commands in flight, and failures that name the server but never its
credentials. Imported by :mod:`rdfunnel.contrib.redis`, which checks that redis-py is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..errors import RDStationError

REDIS_FAILURES = (RedisError, OSError)  # OSError: socket errors redis-py lets through

#: Redis commands one store or limiter has in flight at once. redis-py's pool refuses (rather than
#: queues) the 101st concurrent command by default, and hundreds of callers may want a slot at once.
MAX_IN_FLIGHT = 16


def _describe(redis: Any) -> str:
    """Where ``redis`` points, for messages: host, port and db, never a username or password."""
    pool = getattr(redis, "connection_pool", None)
    options = getattr(pool, "connection_kwargs", None)
    if not isinstance(options, dict):
        return "Redis"
    if options.get("path"):
        return f"Redis at unix socket {options['path']} db {options.get('db', 0)}"
    host = options.get("host", "localhost")
    host = f"[{host}]" if ":" in str(host) else host
    return f"Redis at {host}:{options.get('port', 6379)} db {options.get('db', 0)}"


class RedisUser:
    """The base of a class that talks to Redis, raising ``error`` when Redis fails."""

    __slots__ = ("_error", "_gate", "_redis", "_where")

    def __init__(self, redis: aioredis.Redis, error: type[RDStationError]) -> None:
        self._redis = redis
        self._where = _describe(redis)
        self._error = error
        self._gate = asyncio.Semaphore(MAX_IN_FLIGHT)

    def _fail(self, action: str, error: BaseException) -> NoReturn:
        # Not chained: the message says everything, and a traceback of redis-py internals
        # must not be the first thing an operator reads.
        reason = str(error) or "no details"
        raise self._error(
            f"{self._where} failed while trying to {action}: {type(error).__name__}: {reason}. "
            "rdfunnel does not fall back to local state; check that Redis is up and reachable"
        ) from None

    @contextlib.asynccontextmanager
    async def _talking(self, action: str) -> AsyncIterator[None]:
        """One Redis command: within the in-flight bound, its failures made clear."""
        async with self._gate:
            try:
                yield
            except REDIS_FAILURES as error:
                self._fail(action, error)
