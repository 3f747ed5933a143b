"""rdfunnel.contrib.redis against a real redis-server: the shared token, its lock, shared limits.

A session fixture starts its own ``redis-server`` on a free 127.0.0.1 port (or uses ``REDIS_URL``).
Without redis-server these tests skip locally, and fail in CI (``CI=true``): there they must run.
The multi-process tests run ``tests/redis_worker.py`` in 4 OS processes against a FakeRDStation in
this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import ClientSession, web
from yarl import URL

from rdfunnel import RDStation, Token, TokenStoreError
from rdfunnel.contrib.redis import (
    RedisRateLimiter,
    RedisTokenStore,
    RedisTokenStoreError,
    RedisUnavailableError,
)
from rdfunnel.errors import ValidationError
from rdfunnel.testing import FakeRDStation, Limits

REPO = str(Path(__file__).resolve().parent.parent)
EMAIL = "ana@example.com"
WORKERS = 4


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis to test against: ``REDIS_URL``, or a redis-server of our own, stopped afterwards."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin")
    if server is None:
        if _in_ci():
            pytest.fail("redis-server is not installed: CI must install it (see .ci/run)")
        pytest.skip("redis-server is not installed (apt-get install redis-server; or REDIS_URL)")
    workdir = tmp_path_factory.mktemp("redis")
    port = _free_port()
    log = workdir / "redis.log"
    process = subprocess.Popen(
        [
            server,
            *("--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"),
            *("--dir", str(workdir), "--logfile", str(log)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        probe = redis.Redis.from_url(url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    detail = log.read_text() if log.exists() else "no log"
                    pytest.fail(f"redis-server did not start on port {port}:\n{detail}")
                time.sleep(0.05)
        probe.close()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def rclient(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def key(rclient: aioredis.Redis) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"rdfunnel-test:{uuid.uuid4().hex}"
    yield prefix
    stale = [name async for name in rclient.scan_iter(f"{prefix}*")]
    if stale:
        await rclient.delete(*stale)


def _token(**changes: Any) -> Token:
    fields: dict[str, Any] = {
        "access_token": "access-secret",
        "refresh_token": "refresh-secret",
        "expires_at": datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1),
    }
    fields.update(changes)
    return Token(**fields)


# -- the store ---------------------------------------------------------------------------------


async def test_store_round_trip(rclient: aioredis.Redis, key: str) -> None:
    store = RedisTokenStore(rclient, key=f"{key}:token")
    assert await store.load() is None
    token = _token()
    await store.save(token)
    assert await store.load() == token
    assert "secret" not in repr(store)


async def test_store_works_with_decoded_responses(redis_url: str, key: str) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        store = RedisTokenStore(client, key=f"{key}:token")
        await store.save(_token(expires_at=None))
        assert await store.load() == _token(expires_at=None)
        async with store.lock():
            assert await client.get(store.lock_key)
        assert await client.get(store.lock_key) is None
    finally:
        await client.aclose()


async def test_store_corrupt_token_is_a_clear_error(rclient: aioredis.Redis, key: str) -> None:
    store = RedisTokenStore(rclient, key=f"{key}:token")
    await rclient.set(store.key, '{"access_token": "access-secret", "refresh_token": 7')
    with pytest.raises(TokenStoreError, match="corrupt") as caught:
        await store.load()
    assert "secret" not in str(caught.value)
    await rclient.set(store.key, "[1]")
    with pytest.raises(TokenStoreError, match="expected a JSON object"):
        await store.load()


async def test_lock_expires_and_is_released(rclient: aioredis.Redis, key: str) -> None:
    store = RedisTokenStore(rclient, key=f"{key}:token", lock_ttl=5.0)
    async with store.lock():
        ttl = await rclient.pttl(store.lock_key)
        assert 0 < ttl <= 5000  # a crashed holder's lock expires
    assert await rclient.exists(store.lock_key) == 0


async def test_slow_holder_keeps_its_lock(rclient: aioredis.Redis, key: str) -> None:
    """The holder outlives its TTL four times over; the peer still waits for the release."""
    holder = RedisTokenStore(rclient, key=f"{key}:token", lock_ttl=0.3)
    peer = RedisTokenStore(rclient, key=f"{key}:token", lock_ttl=0.3, poll_interval=0.02)
    events: list[str] = []

    async def slow() -> None:
        async with holder.lock():
            events.append("holder in")
            await asyncio.sleep(1.2)
            events.append("holder out")

    async def waiting() -> None:
        await asyncio.sleep(0.1)
        async with peer.lock():
            events.append("peer in")

    await asyncio.gather(slow(), waiting())
    assert events == ["holder in", "holder out", "peer in"]


async def test_release_checks_the_owner(rclient: aioredis.Redis, key: str) -> None:
    store = RedisTokenStore(rclient, key=f"{key}:token", lock_ttl=5.0)
    async with store.lock():
        await rclient.set(store.lock_key, "someone-else", px=5000)  # our lock expired, theirs now
    assert await rclient.get(store.lock_key) == b"someone-else"


async def test_lock_wait_gives_up_clearly(rclient: aioredis.Redis, key: str) -> None:
    holder = RedisTokenStore(rclient, key=f"{key}:token")
    peer = RedisTokenStore(rclient, key=f"{key}:token", lock_wait=0.3)
    async with holder.lock():
        with pytest.raises(TokenStoreError, match=r"waited 0\.3 s for the token refresh lock") as e:
            async with peer.lock():
                pytest.fail("the peer took a lock that is held")
    assert not isinstance(e.value, RedisUnavailableError)  # Redis is fine: a peer is stuck


def test_validation() -> None:
    client = aioredis.Redis()  # never connects
    with pytest.raises(ValidationError):
        RedisTokenStore(client, key="")
    with pytest.raises(ValidationError):
        RedisTokenStore(client, lock_ttl=0)
    with pytest.raises(ValidationError):
        RedisRateLimiter(client, max_rate=0)
    with pytest.raises(ValidationError):
        RedisRateLimiter(client, max_rate=10, burst=0)
    assert repr(RedisRateLimiter(client, key="k", max_rate=4)) == (
        "RedisRateLimiter(key='k', 4/s, Redis at localhost:6379 db 0)"
    )


# -- the limiter -------------------------------------------------------------------------------


async def test_limiters_share_one_rate(rclient: aioredis.Redis, key: str) -> None:
    limiters = [RedisRateLimiter(rclient, key=key, max_rate=20) for _ in range(2)]
    started = time.monotonic()
    await asyncio.gather(*(limiters[i % 2].acquire() for i in range(21)))
    elapsed = time.monotonic() - started
    assert 0.95 <= elapsed < 3.0  # 20 intervals of 50 ms, whichever limiter asked


async def test_burst(rclient: aioredis.Redis, key: str) -> None:
    limiter = RedisRateLimiter(rclient, key=key, max_rate=5, burst=5)
    started = time.monotonic()
    await asyncio.gather(*(limiter.acquire() for _ in range(5)))
    assert time.monotonic() - started < 0.15
    await limiter.acquire()
    assert time.monotonic() - started >= 0.15


async def test_pause_is_shared_and_never_shortens(rclient: aioredis.Redis, key: str) -> None:
    pauser, other = (RedisRateLimiter(rclient, key=key) for _ in range(2))
    await pauser.pause(0.5)
    await pauser.pause(0.05)  # shorter: ignored
    assert await rclient.pttl(f"{key}:pause") > 300
    started = time.monotonic()
    await other.acquire()
    assert time.monotonic() - started >= 0.35


async def test_pause_during_a_reserved_wait(rclient: aioredis.Redis, key: str) -> None:
    limiter = RedisRateLimiter(rclient, key=key, max_rate=5)
    await limiter.acquire()
    started = time.monotonic()
    waiting = asyncio.ensure_future(limiter.acquire())  # its slot is 200 ms away
    await asyncio.sleep(0.05)
    await RedisRateLimiter(rclient, key=key).pause(0.5)
    await waiting
    assert time.monotonic() - started >= 0.5


# -- Redis unavailable -------------------------------------------------------------------------


@pytest.fixture
async def dead_redis() -> AsyncIterator[tuple[aioredis.Redis, int]]:
    port = _free_port()  # nothing listens there
    client = aioredis.from_url(f"redis://user:hunter2@127.0.0.1:{port}/0")
    yield client, port
    await client.aclose()


async def test_redis_down_store_is_a_clear_error(
    dead_redis: tuple[aioredis.Redis, int],
) -> None:
    client, port = dead_redis
    store = RedisTokenStore(client, key="rdfunnel:token")
    async with FakeRDStation() as fake:
        fake.add_contact(EMAIL)
        async with fake.client(token_store=store) as rd:
            with pytest.raises(TokenStoreError) as caught:
                await rd.funnels.get(EMAIL)
        stats = fake.stats
    assert isinstance(caught.value, RedisTokenStoreError)
    message = str(caught.value)
    assert f"Redis at 127.0.0.1:{port} db 0" in message
    assert "ConnectionError" in message
    assert "does not fall back" in message
    for text in (message, repr(store)):
        assert "hunter2" not in text
        assert "user" not in text
    assert stats.grants == {}  # no fallback refresh on a private token
    assert stats.count() == 0  # nothing sent at all


async def test_redis_down_limiter_is_a_clear_error(
    dead_redis: tuple[aioredis.Redis, int],
) -> None:
    client, port = dead_redis
    async with FakeRDStation() as fake:
        fake.add_contact(EMAIL)
        limiter = RedisRateLimiter(client, key="rdfunnel:rate", max_rate=10)
        async with fake.client(rate_limiter=limiter) as rd:
            with pytest.raises(RedisUnavailableError, match=f"Redis at 127.0.0.1:{port}") as caught:
                await rd.funnels.get(EMAIL)
            with pytest.raises(RedisUnavailableError, match="set the account pause"):
                await limiter.pause(1)
        assert fake.stats.count(route="funnels.get") == 0
    assert "hunter2" not in str(caught.value)


# -- several processes -------------------------------------------------------------------------


async def _spawn(config: dict[str, Any]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.redis_worker",
        json.dumps(config),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )


async def _line(worker: asyncio.subprocess.Process, within: float = 30) -> str:
    assert worker.stdout is not None
    line = await asyncio.wait_for(worker.stdout.readline(), within)
    if not line:
        assert worker.stderr is not None
        error = await worker.stderr.read()
        pytest.fail(f"worker {worker.pid} ended early:\n{error.decode()}")
    return line.decode().strip()


async def _run_workers(configs: list[dict[str, Any]], on_ready: Any) -> list[dict[str, Any]]:
    """Start every worker, wait until all are ready, call ``on_ready()``, say go, collect."""
    workers = [await _spawn(config) for config in configs]
    try:
        for worker in workers:
            assert await _line(worker) == "ready"
        on_ready()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
        summaries = [json.loads(await _line(worker, 60)) for worker in workers]
        for worker in workers:
            assert await asyncio.wait_for(worker.wait(), 30) == 0
        return summaries
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()


def _config(fake: FakeRDStation, redis_url: str, key: str, **options: Any) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "token_key": f"{key}:token",
        "rate_key": f"{key}:rate",
        "base_url": fake.url,
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "email": EMAIL,
        **options,
    }


async def _seed(fake: FakeRDStation, store: RedisTokenStore) -> Token:
    """One refresh in this process puts the first token in Redis."""
    async with fake.client(token_store=store) as rd:
        await rd.funnels.get(EMAIL)
    token = await store.load()
    assert token is not None
    return token


async def test_four_processes_one_refresh(
    redis_url: str, rclient: aioredis.Redis, key: str
) -> None:
    """4 processes x 200 concurrent calls meet an expired token: one refresh grant between them."""
    async with FakeRDStation(rotate_refresh_tokens=True) as fake:
        fake.add_contact(EMAIL)
        store = RedisTokenStore(rclient, key=f"{key}:token")
        first = await _seed(fake, store)

        def expire() -> None:  # every worker now holds an access token the fake refuses
            fake.expire_tokens()
            fake.reset_stats()

        config = _config(fake, redis_url, key, calls=200)
        summaries = await _run_workers([config] * WORKERS, expire)
        stats = fake.stats

        assert [s["errors"] for s in summaries] == [{}] * WORKERS  # no 401 reached a caller
        assert sum(s["ok"] for s in summaries) == WORKERS * 200
        assert stats.grants == {"refresh": 1}
        assert sum(s["refreshed"] for s in summaries) == 1  # one worker refreshed, 3 re-read
        assert stats.count("funnels.get", 401) >= WORKERS  # each met the expired token
        assert stats.count("funnels.get", 200) == WORKERS * 200

        latest = await store.load()
        assert latest is not None
        assert latest.access_token != first.access_token
        assert latest.refresh_token not in (None, first.refresh_token)
        # Tokens rotate: only the latest refresh token works. The one in Redis does.
        fake.expire_tokens()
        async with RDStation(
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            base_url=fake.url,
            token_store=RedisTokenStore(rclient, key=f"{key}:token"),
        ) as rd:
            await rd.funnels.get(EMAIL)
        assert fake.stats.grants == {"refresh": 2}


async def _hanging_token_endpoint(arrived: asyncio.Event, release: asyncio.Event) -> web.AppRunner:
    async def token(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.json_response({}, status=503)

    app = web.Application()
    app.router.add_post("/auth/token", token)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def test_killed_lock_holder(redis_url: str, rclient: aioredis.Redis, key: str) -> None:
    """A worker dies mid-refresh holding the lock: another refreshes once the lock expires."""
    arrived, release = asyncio.Event(), asyncio.Event()
    hanging = await _hanging_token_endpoint(arrived, release)
    host, port = hanging.addresses[0][:2]
    try:
        async with FakeRDStation(rotate_refresh_tokens=True) as fake:
            fake.add_contact(EMAIL)
            store = RedisTokenStore(rclient, key=f"{key}:token", lock_ttl=1.0)
            await _seed(fake, store)
            fake.expire_tokens()
            fake.reset_stats()
            config = _config(
                fake,
                redis_url,
                key,
                calls=1,
                warm_up=False,
                wait_for_go=False,
                lock_ttl=1.0,
                token_url=f"http://{host}:{port}/auth/token",  # its refresh never completes
            )
            doomed = await _spawn(config)
            try:
                await asyncio.wait_for(arrived.wait(), 30)  # it holds the lock, mid-refresh
                owner = await rclient.get(store.lock_key)
                assert owner is not None
            finally:
                doomed.kill()
                await doomed.wait()
            left_ms = await rclient.pttl(store.lock_key)
            assert left_ms > 0  # the dead worker's lock is still there

            started = time.monotonic()
            async with RDStation(
                client_id=fake.client_id,
                client_secret=fake.client_secret,
                base_url=fake.url,
                token_store=store,
            ) as rd:
                await rd.funnels.get(EMAIL)  # 401, then waits out the lock, then refreshes
            waited = time.monotonic() - started
            assert waited >= left_ms / 1000 - 0.05
            assert waited < 5
            assert fake.stats.grants == {"refresh": 1}
            assert await rclient.exists(store.lock_key) == 0
    finally:
        release.set()
        await hanging.cleanup()


class CountingProxy:
    """Stands between the workers and the fake and notes when each API request arrives."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.arrivals: list[float] = []
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> CountingProxy:
        self._session = ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        if request.path.startswith("/platform/"):
            self.arrivals.append(time.monotonic())
        assert self._session is not None
        hop = {"host", "content-length", "transfer-encoding", "connection"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        async with self._session.request(
            request.method,
            URL(self.target + request.raw_path, encoded=True),
            data=await request.read(),
            headers=headers,
        ) as answer:
            body = await answer.read()
            back = {
                k: v
                for k, v in answer.headers.items()
                if k.lower() not in hop | {"content-encoding", "date", "server"}
            }
            return web.Response(status=answer.status, body=body, headers=back)


def _busiest_second(arrivals: list[float]) -> int:
    """The most arrivals in any sliding one-second window."""
    times = sorted(arrivals)
    most = start = 0
    for end, moment in enumerate(times):
        while moment - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_four_processes_share_the_rate_cap(
    redis_url: str, rclient: aioredis.Redis, key: str
) -> None:
    """4 processes, 125 calls each at once, one 100 req/s cap: the server sees <= 105 in any 1 s."""
    cap, calls = 100, 125
    async with (
        FakeRDStation(limits=Limits(account_rps=cap + cap // 20)) as fake,
        CountingProxy(fake.url) as proxy,
    ):
        fake.add_contact(EMAIL)
        await _seed(fake, RedisTokenStore(rclient, key=f"{key}:token"))

        def start() -> None:
            proxy.arrivals.clear()
            fake.reset_stats()

        config = _config(fake, redis_url, key, calls=calls, max_rate=cap, base_url=proxy.url)
        summaries = await _run_workers([config] * WORKERS, start)
        arrivals, stats = proxy.arrivals, fake.stats

    assert [s["errors"] for s in summaries] == [{}] * WORKERS
    assert len(arrivals) == WORKERS * calls
    span = max(arrivals) - min(arrivals)
    rate = (len(arrivals) - 1) / span
    busiest = _busiest_second(arrivals)
    print(
        f"\nshared cap {cap}/s: {len(arrivals)} requests in {span:.2f} s = {rate:.1f}/s, "
        f"busiest 1 s window {busiest}"
    )
    assert busiest <= cap * 1.05
    assert rate <= cap * 1.05
    assert rate > cap / 2  # the cap is shared by the four, not divided between them
    assert stats.rate_limited == {}  # the fake, at cap + 5 %, never had to push back
