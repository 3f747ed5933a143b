"""Redis: one token and one rate budget shared by every worker process, on every host.

Several processes acting for one RD Station account must share two things. The token: with
rotating refresh tokens, two workers refreshing at once lock the account out, so the refresh runs
under a lock in Redis and a worker that waited for a peer's refresh uses the peer's token. And the
rate budget: the account-wide requests-per-second cap and the account-wide 429 pause hold for all
workers together. So::

    import redis.asyncio as aioredis
    from rdfunnel import RDStation
    from rdfunnel.contrib.redis import RedisRateLimiter, RedisTokenStore

    redis = aioredis.from_url("redis://redis.internal:6379/0", socket_timeout=5)
    rd = RDStation(
        client_id=..., client_secret=...,
        token_store=RedisTokenStore(redis, key="rdfunnel:acme:token"),
        rate_limiter=RedisRateLimiter(redis, key="rdfunnel:acme:rate", max_rate=10),
    )

When Redis cannot be reached, both raise a clear error naming Redis and where it is
(:class:`RedisTokenStoreError`, a :class:`~rdfunnel.tokens.TokenStoreError`, and
:class:`RedisUnavailableError`): they never fall back to a process-local token or limit, which
would refresh twice or overrun the account's budget. Every clock reading is the Redis server's
(``TIME`` inside scripts, key expiries), so hosts with skewed clocks agree.

Needs the ``redis`` extra: ``pip install 'rdfunnel[redis]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import secrets
from collections.abc import AsyncIterator

from ..errors import RDStationError, ValidationError
from ..tokens import Token, TokenStoreError, _decode_token

try:
    import redis.asyncio as aioredis
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rdfunnel.contrib.redis needs the redis package: pip install 'rdfunnel[redis]'"
    ) from error

from ._redis_base import MAX_IN_FLIGHT as MAX_IN_FLIGHT
from ._redis_base import REDIS_FAILURES, RedisUser

__all__ = [
    "RedisRateLimiter",
    "RedisTokenStore",
    "RedisTokenStoreError",
    "RedisUnavailableError",
]

logger = logging.getLogger("rdfunnel")

# Release and extend the lock only while we still own it (its value is our random owner token).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# GCRA, in microseconds of the Redis server's clock. KEYS[1] holds the theoretical arrival time
# (TAT), KEYS[2] exists while the account is paused. ARGV[1] is the emission interval (0: no rate
# cap), ARGV[2] the burst tolerance. Admits the request now and returns 0, or returns how many
# microseconds to wait before asking again (nothing is reserved: a caller that wakes up late is
# admitted late, so late callers never bunch up at the server).
_ADMIT = """
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then
  return paused * 1000
end
local interval = tonumber(ARGV[1])
if interval <= 0 then
  return 0
end
if redis.replicate_commands then
  redis.replicate_commands()  -- Redis < 5: writes after TIME need effects replication
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then
  tat = now
end
local wait = tat - tonumber(ARGV[2]) - now
if wait > 0 then
  return wait
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
           'PX', math.ceil((new_tat - now) / 1000) + 1000)
return 0
"""

# The account-wide pause: a key that expires when the pause ends. It only ever grows.
_PAUSE = """
local want = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < want then
  redis.call('SET', KEYS[1], '1', 'PX', want)
end
return 0
"""


class RedisUnavailableError(RDStationError):
    """Redis could not be reached, timed out or refused a command.

    Raised by :class:`RedisRateLimiter`; :class:`RedisTokenStore` raises the subclass
    :class:`RedisTokenStoreError`. rdfunnel never falls back to local state when Redis fails.
    """


class RedisTokenStoreError(RedisUnavailableError, TokenStoreError):
    """Redis failed while the token store read or wrote the token or took its refresh lock.

    A corrupt token in Redis, or a peer holding the lock past ``lock_wait``, raise a plain
    :class:`~rdfunnel.tokens.TokenStoreError`: Redis itself is fine then.
    """


class RedisTokenStore(RedisUser):
    """The token in Redis, refreshed under a lock in Redis: one refresh for every worker.

    ``key`` holds the token as JSON (``Token.to_dict``); ``<key>:lock`` is the refresh lock, taken
    with ``SET NX PX`` and a random owner token. While held, a background task extends it every
    ``lock_ttl / 3`` seconds (only if still the owner), so a slow refresh keeps its lock; a holder
    that dies stops extending, and the lock expires ``lock_ttl`` seconds later at most. Waiting
    workers poll every ``poll_interval`` seconds (with jitter); once they hold the lock, the token
    manager re-reads the token and uses a peer's fresh one instead of refreshing again. A waiter
    gives up with :class:`~rdfunnel.tokens.TokenStoreError` after ``lock_wait`` seconds (None:
    never).

    Redis failures raise :class:`RedisTokenStoreError` (a
    :class:`~rdfunnel.tokens.TokenStoreError`) naming the Redis server, never its credentials.
    Give each RD Station account (each client id) its own ``key``.
    """

    __slots__ = (
        "_extend",
        "_key",
        "_local",
        "_lock_key",
        "_poll",
        "_release",
        "_tasks",
        "_ttl",
        "_wait",
    )

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        key: str = "rdfunnel:token",
        lock_ttl: float = 10.0,
        lock_wait: float | None = 120.0,
        poll_interval: float = 0.05,
    ) -> None:
        super().__init__(redis, RedisTokenStoreError)
        if not key:
            raise ValidationError("RedisTokenStore needs a non-empty key")
        if not lock_ttl > 0.01:
            raise ValidationError(f"lock_ttl must be more than 0.01 s, got {lock_ttl!r}")
        if lock_wait is not None and lock_wait < 0:
            raise ValidationError(f"lock_wait must be None or >= 0, got {lock_wait!r}")
        if not poll_interval > 0:
            raise ValidationError(f"poll_interval must be > 0, got {poll_interval!r}")
        self._key = key
        self._lock_key = f"{key}:lock"
        self._ttl = lock_ttl
        self._wait = lock_wait
        self._poll = poll_interval
        self._local = asyncio.Lock()  # this process's coroutines queue here, not on Redis
        self._release = redis.register_script(_RELEASE)
        self._extend = redis.register_script(_EXTEND)
        self._tasks: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"RedisTokenStore(key={self._key!r}, {self._where})"

    @property
    def key(self) -> str:
        return self._key

    @property
    def lock_key(self) -> str:
        return self._lock_key

    async def load(self) -> Token | None:
        async with self._talking(f"read the token at key {self._key!r}"):
            raw = await self._redis.get(self._key)
        if raw is None:
            return None
        return _decode_token(raw, f"the token at key {self._key!r} in {self._where}")

    async def save(self, token: Token) -> None:
        # Unconditional: a token the server has issued is the newest truth (with rotating
        # refresh tokens the old one is already dead), even if this holder lost its lock.
        data = json.dumps(token.to_dict())
        async with self._talking(f"save the token at key {self._key!r}"):
            await self._redis.set(self._key, data)

    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        async with self._local:
            owner = secrets.token_hex(16)
            await self._acquire(owner)
            keeper = asyncio.ensure_future(self._keep(owner))
            try:
                yield
            finally:
                keeper.cancel()
                await asyncio.wait([keeper])
                release = asyncio.ensure_future(self._release_quietly(owner))
                await asyncio.shield(release)  # cancelled or not, the release goes out

    async def _acquire(self, owner: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if self._wait is None else loop.time() + self._wait
        ttl_ms = math.ceil(self._ttl * 1000)
        waited = False
        while True:
            try:
                async with self._talking(f"take the token refresh lock {self._lock_key!r}"):
                    taken = await self._redis.set(self._lock_key, owner, nx=True, px=ttl_ms)
            except asyncio.CancelledError:
                self._release_later(owner)  # the SET may have gone through before we left
                raise
            if taken:
                return
            if not waited:
                waited = True
                logger.debug(
                    "waiting for another worker's token refresh (%s)",
                    self._lock_key,
                    extra={"event": "token_lock_wait"},
                )
            if deadline is not None and loop.time() >= deadline:
                raise TokenStoreError(
                    f"waited {self._wait:g} s for the token refresh lock {self._lock_key!r} in "
                    f"{self._where}: another worker holds it and keeps it alive. Its refresh is "
                    "stuck; if no worker is refreshing, delete the lock key"
                )
            await asyncio.sleep(self._poll * (0.5 + random.random()))

    async def _keep(self, owner: str) -> None:
        """Extend the lock while it is held, so a slow holder is never robbed."""
        ttl_ms = math.ceil(self._ttl * 1000)
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                async with self._gate:
                    kept = await self._extend(keys=[self._lock_key], args=[owner, ttl_ms])
            except REDIS_FAILURES as error:
                logger.warning(
                    "could not extend the token refresh lock %r in %s: %s: %s",
                    self._lock_key,
                    self._where,
                    type(error).__name__,
                    error,
                    extra={"event": "token_lock_extend_failed", "error": type(error).__name__},
                )
                continue
            if not kept:
                logger.warning(
                    "lost the token refresh lock %r in %s: this process stalled for longer "
                    "than lock_ttl (%g s)",
                    self._lock_key,
                    self._where,
                    self._ttl,
                    extra={"event": "token_lock_lost"},
                )
                return

    async def _release_quietly(self, owner: str) -> None:
        try:
            async with self._gate:
                await self._release(keys=[self._lock_key], args=[owner])
        except REDIS_FAILURES as error:
            logger.warning(
                "could not release the token refresh lock %r in %s (it expires by itself "
                "within %g s): %s: %s",
                self._lock_key,
                self._where,
                self._ttl,
                type(error).__name__,
                error,
                extra={"event": "token_lock_release_failed", "error": type(error).__name__},
            )

    def _release_later(self, owner: str) -> None:
        task = asyncio.ensure_future(self._release_quietly(owner))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class RedisRateLimiter(RedisUser):
    """An account-wide rate cap and 429 pause, shared through Redis by every worker.

    The cap is GCRA in one Lua script on the Redis server's clock: a request is admitted when the
    account's next slot has come (slots ``1 / max_rate`` seconds apart; ``burst`` > 1 lets that
    many go at once after a lull, so any one second holds at most ``max_rate + burst - 1``),
    otherwise the script says how long to wait. Admission happens right before sending, so all
    workers together send at most ``max_rate`` requests per second, however late a busy process
    wakes up. In each process only the longest-waiting caller asks Redis; the others queue behind
    it in arrival order. ``max_rate=None`` only shares the pause. :meth:`pause` (called by the
    client on an account-wide 429) holds every worker until it ends; a pause only ever grows.

    Keys: ``<key>:tat`` and ``<key>:pause`` (for Redis Cluster, put a hash tag in ``key``, e.g.
    ``"{rdfunnel:acme}:rate"``). Give each RD Station account its own ``key``. Redis failures raise
    :class:`RedisUnavailableError`.
    """

    __slots__ = (
        "_admit",
        "_interval_us",
        "_key",
        "_pause",
        "_pause_key",
        "_queue",
        "_tat_key",
        "_tol_us",
    )

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        key: str = "rdfunnel:ratelimit",
        max_rate: float | None = None,
        burst: int = 1,
    ) -> None:
        super().__init__(redis, RedisUnavailableError)
        if not key:
            raise ValidationError("RedisRateLimiter needs a non-empty key")
        if max_rate is not None and not (max_rate > 0 and math.isfinite(max_rate)):
            raise ValidationError(
                f"max_rate must be a positive number per second, got {max_rate!r}"
            )
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValidationError(f"burst must be an int >= 1, got {burst!r}")
        self._key = key
        self._tat_key = f"{key}:tat"
        self._pause_key = f"{key}:pause"
        self._interval_us = max(1, round(1_000_000 / max_rate)) if max_rate else 0
        self._tol_us = self._interval_us * (burst - 1)
        self._queue = asyncio.Lock()  # FIFO: this process's callers wait here, not on Redis
        self._admit = redis.register_script(_ADMIT)
        self._pause = redis.register_script(_PAUSE)

    def __repr__(self) -> str:
        rate = f"{1_000_000 / self._interval_us:g}/s" if self._interval_us else "unlimited"
        return f"RedisRateLimiter(key={self._key!r}, {rate}, {self._where})"

    async def acquire(self) -> None:
        if not self._interval_us:
            await self._admitted()  # only the pause to honour: no need to queue
            return
        async with self._queue:
            await self._admitted()

    async def _admitted(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            async with self._talking(f"take a rate-limit slot at key {self._tat_key!r}"):
                wait_us = await self._admit(
                    keys=[self._tat_key, self._pause_key],
                    args=[self._interval_us, self._tol_us],
                )
            if wait_us <= 0:
                return
            # Ask again when the slot comes at the server: the wait counted from the server's
            # clock, less the round trip, so the next question arrives as the slot opens. Asking
            # a little early costs one more round trip; asking late would waste the slot.
            round_trip = loop.time() - asked
            await asyncio.sleep(max(wait_us / 1_000_000 - round_trip, 0.0))

    async def pause(self, seconds: float) -> None:
        if not seconds > 0:
            return
        async with self._talking(f"set the account pause at key {self._pause_key!r}"):
            await self._pause(keys=[self._pause_key], args=[math.ceil(seconds * 1000)])
