"""The token manager: refresh ahead and on 401, one refresh in flight, terminal errors.

The token endpoint is aioresponses (``wire`` from conftest), except for the cross-process test,
which runs a tiny aiohttp.web token endpoint on 127.0.0.1 that counts grants.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import traceback
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import filelock
import pytest
from aiohttp import web
from aioresponses import CallbackResult, aioresponses
from yarl import URL

import rdfunnel
from rdfunnel._pipeline import Pipeline
from rdfunnel._refresh import TokenManager, TokenSource
from rdfunnel._transport import Transport
from rdfunnel.errors import (
    BadRequestError,
    InvalidCredentialsError,
    InvalidRefreshTokenError,
    RDStationError,
    ServerError,
    TransportError,
)
from rdfunnel.oauth import OAuthApp, TokenEndpoint
from rdfunnel.ratelimit import LocalRateLimiter
from rdfunnel.retry import RetryPolicy
from rdfunnel.tokens import FileTokenStore, MemoryTokenStore, Token, TokenStoreError

BASE = "https://api.rd.services"
TOKEN_URL = f"{BASE}/auth/token"
SECRET = "client-secret-xyz"
START = 1_800_000_000.0
APP = OAuthApp.for_base_url("my-client", SECRET)
RETRY = RetryPolicy(max_retries=3, backoff_base=0.5, jitter=False)


class Clock:
    """A :class:`rdfunnel.Clock` moved by hand (wall and monotonic time alike); ``sleep`` only
    records."""

    def __init__(self) -> None:
        self.now = START
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Endpoint:
    """RD's token endpoint: every grant rotates both tokens; scripted failures come first."""

    def __init__(self, wire: aioresponses, life: int = 86400) -> None:
        self.grants = 0
        self.life = life
        self.bodies: list[dict[str, Any]] = []
        self.timeouts: list[aiohttp.ClientTimeout] = []
        self.failures: list[CallbackResult | Exception] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        wire.post(TOKEN_URL, callback=self.handle, repeat=True)

    async def handle(self, url: URL, **kwargs: Any) -> CallbackResult:
        self.bodies.append(json.loads(kwargs["data"]))
        self.timeouts.append(kwargs["timeout"])
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        self.grants += 1
        n = self.grants
        return CallbackResult(
            payload={
                "access_token": f"access-{n}",
                "refresh_token": f"refresh-{n}",
                "expires_in": self.life,
            }
        )


def rd_error(status: int, error_type: str) -> CallbackResult:
    return CallbackResult(
        status=status, payload={"errors": {"error_type": error_type, "error_message": "Refused."}}
    )


def expiring(clock: Clock, seconds: float, n: int = 0) -> Token:
    return Token(
        access_token=f"access-{n}",
        refresh_token=f"refresh-{n}",
        expires_at=datetime.fromtimestamp(clock.now + seconds, UTC),
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def manager(
    clock: Clock,
    session: aiohttp.ClientSession,
    store: Any,
    *,
    retry: RetryPolicy = RETRY,
    **kwargs: Any,
) -> TokenManager:
    """A manager whose token requests take a pipeline of their own over ``session``."""
    pipeline = Pipeline(
        Transport(timeout=APP.timeout, session=session),
        retry=retry,
        limiter=LocalRateLimiter(clock=clock),
        clock=clock,
    )
    return TokenManager(store=store, endpoint=TokenEndpoint(APP, pipeline), clock=clock, **kwargs)


async def test_is_a_token_source_and_a_fresh_token_costs_no_lock(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    store = MemoryTokenStore(expiring(clock, 3600))
    tokens: TokenSource = manager(clock, session, store)
    assert await tokens.access_token() == "access-0"
    async with store.lock():  # held: a fresh token must not wait for it
        assert await asyncio.wait_for(tokens.access_token(), 5) == "access-0"
    assert not wire.requests


async def test_concurrent_callers_with_an_expired_token_cause_one_refresh(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire)
    store = MemoryTokenStore(expiring(clock, -10))
    tokens = manager(clock, session, store)
    got = await asyncio.gather(*(tokens.access_token() for _ in range(50)))
    assert got == ["access-1"] * 50
    assert endpoint.grants == 1
    assert endpoint.bodies == [
        {"client_id": "my-client", "client_secret": SECRET, "refresh_token": "refresh-0"}
    ]


async def test_concurrent_401s_cause_one_refresh_and_all_replay(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire)
    tokens = manager(clock, session, MemoryTokenStore(expiring(clock, 3600)))
    rejected = await tokens.access_token()
    assert await asyncio.gather(*(tokens.refresh(rejected) for _ in range(20))) == [True] * 20
    assert endpoint.grants == 1
    # A late 401 for the old token finds it already replaced: no request.
    assert await tokens.refresh(rejected)
    assert endpoint.grants == 1
    assert await tokens.access_token() == "access-1"


async def test_refresh_before_expiry_by_the_leeway(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire)
    tokens = manager(clock, session, MemoryTokenStore(expiring(clock, 1000)), leeway=300)
    assert await tokens.access_token() == "access-0"
    clock.now += 699
    assert await tokens.access_token() == "access-0"
    assert endpoint.bodies == []
    clock.now += 1
    # Due but still good: callers go on with it while the refresh runs in the background.
    assert await tokens.access_token() == "access-0"
    assert await tokens.access_token() == "access-0"
    await tokens.drain()
    assert await tokens.access_token() == "access-1"
    assert endpoint.grants == 1


async def test_an_early_refresh_that_fails_keeps_the_token_and_tries_again_later(
    clock: Clock,
    wire: aioresponses,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint = Endpoint(wire)
    endpoint.failures = [rd_error(400, "BAD_REQUEST")]
    tokens = manager(clock, session, MemoryTokenStore(expiring(clock, 100)), leeway=300)
    assert await tokens.access_token() == "access-0"
    clock.now += 50  # due at half life
    assert await tokens.access_token() == "access-0"
    await tokens.drain()
    assert "background token refresh failed: BadRequestError" in caplog.text
    assert await tokens.access_token() == "access-0"  # no new attempt yet
    assert len(endpoint.bodies) == 1
    clock.now += 10
    assert await tokens.access_token() == "access-0"
    await tokens.drain()
    assert await tokens.access_token() == "access-1"
    assert endpoint.grants == 1


async def test_a_background_refresh_refused_for_good_is_not_asked_again_before_expiry(
    clock: Clock,
    wire: aioresponses,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint = Endpoint(wire)
    endpoint.failures = [rd_error(401, "INVALID_REFRESH_TOKEN")]
    tokens = manager(clock, session, MemoryTokenStore(expiring(clock, 1000)), leeway=300)
    await tokens.access_token()
    clock.now += 700
    for _ in range(30):
        assert await tokens.access_token() == "access-0"
        await tokens.drain()
        clock.now += 10
    assert len(endpoint.bodies) == 1
    assert caplog.text.count("background token refresh failed") == 1
    with pytest.raises(InvalidRefreshTokenError):  # expired now: the refusal surfaces
        await tokens.access_token()


async def test_an_on_token_refresh_error_in_a_background_refresh_is_logged(
    clock: Clock,
    wire: aioresponses,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    Endpoint(wire)

    def hook(token: rdfunnel.Token) -> None:
        raise RuntimeError("webhook down")

    tokens = manager(
        clock, session, MemoryTokenStore(expiring(clock, 1000)), leeway=300, on_token_refresh=hook
    )
    await tokens.access_token()
    clock.now += 700
    await tokens.access_token()
    await tokens.drain()
    assert "on_token_refresh raised RuntimeError" in caplog.text
    assert isinstance(tokens.hook_error, RuntimeError)
    assert await tokens.access_token() == "access-1"  # saved and in use all the same


async def test_a_refresh_cancelled_before_it_starts_does_not_wedge_the_manager(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    Endpoint(wire)
    tokens = manager(clock, session, MemoryTokenStore(expiring(clock, -1)))
    caller = asyncio.create_task(tokens.access_token())
    await asyncio.sleep(0)  # the caller has started the refresh task, which has not run yet
    (refresh,) = [
        task for task in asyncio.all_tasks() if "_renew_locked" in task.get_coro().__qualname__
    ]
    refresh.cancel()
    with pytest.raises(RDStationError, match="cancelled before it finished"):
        await asyncio.wait_for(caller, 5)  # a guard: a wedged manager would hang here
    assert await asyncio.wait_for(tokens.access_token(), 5) == "access-1"


async def test_a_token_past_its_expiry_makes_callers_wait_for_the_new_one(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire)
    endpoint.failures = [rd_error(400, "BAD_REQUEST")]
    tokens = manager(clock, session, MemoryTokenStore(expiring(clock, 100)), leeway=300)
    assert await tokens.access_token() == "access-0"
    clock.now += 100
    with pytest.raises(BadRequestError):
        await tokens.access_token()
    assert await tokens.access_token() == "access-1"


async def test_closing_lets_a_refresh_in_flight_save_the_rotated_token(
    clock: Clock, wire: aioresponses
) -> None:
    endpoint = Endpoint(wire)
    endpoint.gate = asyncio.Event()
    store = MemoryTokenStore(expiring(clock, -1))
    rd = rdfunnel.RDStation(
        client_id="my-client", client_secret=SECRET, token_store=store, retry=RETRY, clock=clock
    )
    caller = asyncio.create_task(rd.funnels.get("ana@example.com"))
    await endpoint.entered.wait()
    caller.cancel()
    closing = asyncio.create_task(rd.close())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not closing.done()  # waiting for the refresh
    endpoint.gate.set()
    await closing
    stored = await store.load()
    assert stored is not None
    assert stored.refresh_token == "refresh-1"


async def test_token_requests_keep_to_the_client_s_timeout(
    clock: Clock, wire: aioresponses
) -> None:
    endpoint = Endpoint(wire)
    wire.get(f"{BASE}/platform/contacts/email:ana@example.com/funnels/default", payload={})
    store = MemoryTokenStore(expiring(clock, -1))
    async with rdfunnel.RDStation(
        client_id="my-client", client_secret=SECRET, token_store=store, timeout=5, clock=clock
    ) as rd:
        await rd.funnels.get("ana@example.com")
    assert endpoint.timeouts == [aiohttp.ClientTimeout(total=5)]


async def test_short_lived_tokens_refresh_at_half_life_not_in_a_loop(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire, life=60)
    tokens = manager(clock, session, MemoryTokenStore(expiring(clock, -1)), leeway=300)
    assert await tokens.access_token() == "access-1"
    for _ in range(10):
        assert await tokens.access_token() == "access-1"
    clock.now += 29
    assert await tokens.access_token() == "access-1"
    clock.now += 1
    assert await tokens.access_token() == "access-1"
    await tokens.drain()
    assert await tokens.access_token() == "access-2"
    assert endpoint.grants == 2


async def test_a_stored_token_seen_again_keeps_its_deadline(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire)
    tokens = manager(clock, session, MemoryTokenStore(expiring(clock, 100)), leeway=300)
    assert await tokens.access_token() == "access-0"  # half of 100 s left: refresh at 50
    clock.now += 49
    await tokens.access_token()
    await tokens.drain()
    assert endpoint.grants == 0
    clock.now += 1
    await tokens.access_token()
    await tokens.drain()
    assert await tokens.access_token() == "access-1"
    assert endpoint.grants == 1


async def test_no_expiry_means_valid_until_refused(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire)
    tokens = manager(
        clock, session, MemoryTokenStore(Token(access_token="access-0", refresh_token="refresh-0"))
    )
    clock.now += 10**8
    assert await tokens.access_token() == "access-0"
    assert await tokens.refresh("access-0")
    assert await tokens.access_token() == "access-1"
    assert endpoint.grants == 1


async def test_starting_from_a_refresh_token_alone(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire)
    store = MemoryTokenStore()
    tokens = manager(clock, session, store, refresh_token="refresh-0")
    assert tokens.token is None
    assert await tokens.access_token() == "access-1"
    assert endpoint.bodies[0]["refresh_token"] == "refresh-0"
    assert await store.load() == tokens.token


async def test_the_store_wins_over_the_seed_and_a_seed_fills_an_empty_store(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    stored = expiring(clock, 3600, n=7)
    assert (
        await manager(clock, session, MemoryTokenStore(stored), refresh_token="old").access_token()
        == "access-7"
    )
    store = MemoryTokenStore()
    seed = expiring(clock, 3600, n=3)
    assert await manager(clock, session, store, token=seed).access_token() == "access-3"
    assert await store.load() == seed
    assert not wire.requests


async def test_no_credentials_at_all_is_a_clear_error(
    clock: Clock, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(TokenStoreError, match="authorize the app"):
        await manager(clock, session, MemoryTokenStore()).access_token()


async def test_an_access_token_without_refresh_token_is_used_until_refused(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    token = Token(access_token="access-0", expires_at=clock.datetime() - timedelta(seconds=1))
    tokens = manager(clock, session, MemoryTokenStore(token))
    assert await tokens.access_token() == "access-0"
    assert not await tokens.refresh("access-0")
    assert not wire.requests


async def test_the_refresh_uses_a_token_another_process_saved(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    store = MemoryTokenStore(expiring(clock, 3600))
    tokens = manager(clock, session, store)
    assert await tokens.access_token() == "access-0"
    await store.save(expiring(clock, 3600, n=5))  # what another process would do
    assert await tokens.refresh("access-0")
    assert await tokens.access_token() == "access-5"
    assert not wire.requests


class RecordingStore(MemoryTokenStore):
    """Remembers every save, and what the manager was using at that moment."""

    def __init__(self, token: Token, tokens_in_use: list[str | None]) -> None:
        super().__init__(token)
        self.saved: list[Token] = []
        self.in_use_at_save = tokens_in_use

    async def save(self, token: Token) -> None:
        self.saved.append(token)
        await super().save(token)


async def test_rotating_refresh_tokens_are_saved_before_use(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire, life=3600)
    in_use: list[str | None] = []
    store = RecordingStore(expiring(clock, -1), in_use)
    seen: list[Token] = []

    async def on_refresh(token: Token) -> None:
        assert await store.load() == token  # saved first, then announced
        seen.append(token)

    tokens = manager(clock, session, store, on_token_refresh=on_refresh)
    original_save = store.save

    async def save_spy(token: Token) -> None:
        in_use.append(tokens.token.access_token if tokens.token else None)
        await original_save(token)

    store.save = save_spy  # type: ignore[method-assign]
    assert await tokens.access_token() == "access-1"  # expired: proactive refresh
    for n in (2, 3):  # then 401s
        assert await tokens.refresh(f"access-{n - 1}")
        assert await tokens.access_token() == f"access-{n}"
    assert [b["refresh_token"] for b in endpoint.bodies] == ["refresh-0", "refresh-1", "refresh-2"]
    assert [t.refresh_token for t in store.saved] == ["refresh-1", "refresh-2", "refresh-3"]
    assert in_use == ["access-0", "access-1", "access-2"]  # the old one still in use at each save
    assert (await store.load()) == tokens.token
    assert tokens.token is not None
    assert tokens.token.refresh_token == "refresh-3"
    assert seen == store.saved


async def test_a_token_that_cannot_be_saved_is_not_used(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    Endpoint(wire)

    class FullDisk(MemoryTokenStore):
        async def save(self, token: Token) -> None:
            raise TokenStoreError("cannot write token file '/x': No space left on device")

    tokens = manager(clock, session, FullDisk(expiring(clock, -1)))
    with pytest.raises(TokenStoreError, match="No space"):
        await tokens.access_token()
    assert tokens.token is None or tokens.token.access_token == "access-0"


@pytest.mark.parametrize("is_async", [False, True])
async def test_on_token_refresh_errors_are_logged_and_kept_never_raised_to_callers(
    clock: Clock,
    wire: aioresponses,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    is_async: bool,
) -> None:
    Endpoint(wire)
    store = MemoryTokenStore(expiring(clock, -1))

    def sync_callback(token: Token) -> None:
        raise RuntimeError("webhook down")

    async def async_callback(token: Token) -> None:
        raise RuntimeError("webhook down")

    tokens = manager(
        clock, session, store, on_token_refresh=async_callback if is_async else sync_callback
    )
    callers = await asyncio.gather(*(tokens.access_token() for _ in range(16)))
    assert callers == ["access-1"] * 16  # every waiting call got the new token
    assert (await store.load()) == tokens.token
    assert isinstance(tokens.hook_error, RuntimeError)
    [record] = [r for r in caplog.records if "on_token_refresh" in r.getMessage()]
    assert record.levelname == "ERROR"
    assert record.exc_info is not None and "webhook down" in str(record.exc_info[1])


@pytest.mark.parametrize(
    ("error_type", "cls"),
    [
        ("INVALID_REFRESH_TOKEN", InvalidRefreshTokenError),
        ("ACCESS_DENIED", InvalidCredentialsError),
    ],
)
async def test_a_refused_refresh_token_is_terminal_and_asked_once(
    clock: Clock,
    wire: aioresponses,
    session: aiohttp.ClientSession,
    error_type: str,
    cls: type[Exception],
) -> None:
    endpoint = Endpoint(wire)
    endpoint.failures = [rd_error(401, error_type)]
    tokens = manager(clock, session, MemoryTokenStore(expiring(clock, -1)))
    results = await asyncio.gather(
        *(tokens.access_token() for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, cls) for r in results)
    assert "authorize the app again" in str(results[0])
    for _ in range(3):
        with pytest.raises(cls):
            await tokens.refresh("access-0")
        with pytest.raises(cls):
            await tokens.access_token()
    assert len(endpoint.bodies) == 1
    assert clock.sleeps == []


async def test_server_errors_and_network_failures_are_retried_with_backoff(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire)
    endpoint.failures = [
        CallbackResult(status=503, body="<html>fora do ar</html>"),
        aiohttp.ClientConnectionError("reset"),
        CallbackResult(status=500),
    ]
    tokens = manager(clock, session, MemoryTokenStore(expiring(clock, -1)))
    assert await tokens.access_token() == "access-1"
    assert clock.sleeps == [0.5, 1.0, 2.0]
    assert len(endpoint.bodies) == 4


async def test_retries_give_up_after_max_retries(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire)
    endpoint.failures = [CallbackResult(status=502)] * 3
    tokens = manager(
        clock,
        session,
        MemoryTokenStore(expiring(clock, -1)),
        retry=RetryPolicy(max_retries=2, jitter=False),
    )
    with pytest.raises(ServerError) as caught:
        await tokens.access_token()
    assert caught.value.attempts == 3
    assert len(clock.sleeps) == 2
    endpoint.failures = [aiohttp.ClientConnectionError()] * 3
    with pytest.raises(TransportError):
        await tokens.access_token()


async def test_other_client_errors_are_not_retried(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire)
    endpoint.failures = [rd_error(400, "BAD_REQUEST")]
    with pytest.raises(BadRequestError):
        await manager(clock, session, MemoryTokenStore(expiring(clock, -1))).access_token()
    assert len(endpoint.bodies) == 1
    assert clock.sleeps == []


async def test_a_cancelled_caller_does_not_lose_the_rotated_token(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire)
    endpoint.gate = asyncio.Event()
    store = MemoryTokenStore(expiring(clock, -1))
    tokens = manager(clock, session, store)
    caller = asyncio.create_task(tokens.access_token())
    await endpoint.entered.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    endpoint.gate.set()
    assert await tokens.access_token() == "access-1"
    stored = await store.load()
    assert stored is not None
    assert stored.refresh_token == "refresh-1"
    assert endpoint.grants == 1


async def test_cancelling_one_waiting_caller_leaves_the_others_waiting_for_the_token(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    endpoint = Endpoint(wire)
    endpoint.gate = asyncio.Event()
    tokens = manager(clock, session, MemoryTokenStore(expiring(clock, -1)))
    callers = [asyncio.create_task(tokens.access_token()) for _ in range(5)]
    await endpoint.entered.wait()
    callers[2].cancel()
    endpoint.gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert isinstance(results.pop(2), asyncio.CancelledError)
    assert results == ["access-1"] * 4
    assert endpoint.grants == 1


async def test_revoke(clock: Clock, wire: aioresponses, session: aiohttp.ClientSession) -> None:
    wire.post(f"{BASE}/auth/revoke", payload={})
    tokens = manager(clock, session, MemoryTokenStore(expiring(clock, 3600)))
    await tokens.revoke()
    [call] = wire.requests[("POST", URL(f"{BASE}/auth/revoke"))]
    assert call.kwargs["data"] == "token=refresh-0&token_type_hint=refresh_token"


async def test_no_secret_in_logs_reprs_or_errors(
    clock: Clock,
    wire: aioresponses,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint = Endpoint(wire)
    endpoint.failures = [CallbackResult(status=503), aiohttp.ClientConnectionError("reset")]
    store = MemoryTokenStore(expiring(clock, -1))
    tokens = manager(clock, session, store, on_token_refresh=lambda token: None)
    await tokens.access_token()
    await tokens.refresh("access-1")
    endpoint.failures = [rd_error(401, "INVALID_REFRESH_TOKEN")]
    current = await tokens.access_token()
    with pytest.raises(InvalidRefreshTokenError) as caught:
        await tokens.refresh(current)
    texts = [r.getMessage() for r in caplog.records]
    texts += [logging.Formatter().format(r) for r in caplog.records]
    texts += [repr(tokens), repr(store), repr(APP), repr(tokens.token), str(tokens.token)]
    texts += [str(caught.value), repr(caught.value)]
    texts += traceback.format_exception(caught.value)
    assert any("access token refreshed, expires at" in t for t in texts)
    secrets = [SECRET] + [f"{kind}-{n}" for kind in ("access", "refresh") for n in range(3)]
    for text in texts:
        for secret in secrets:
            assert secret not in text, (secret, text)


# --- two OS processes, one token file ------------------------------------------------------------

CHILD = """
import asyncio, contextlib, sys
import aiohttp
from rdfunnel._clock import SYSTEM_CLOCK
from rdfunnel._pipeline import Pipeline
from rdfunnel._refresh import TokenManager
from rdfunnel._transport import Transport
from rdfunnel.oauth import OAuthApp, TokenEndpoint
from rdfunnel.ratelimit import LocalRateLimiter
from rdfunnel.retry import RetryPolicy
from rdfunnel.tokens import FileTokenStore

base, path = sys.argv[1], sys.argv[2]

class AnnouncingStore(FileTokenStore):
    # Tells the test it is about to take the lock, so the test can hold it until both are here.
    @contextlib.asynccontextmanager
    async def lock(self):
        async with aiohttp.ClientSession() as s:
            await s.post(base + "/ready")
        async with super().lock():
            yield

async def main():
    app = OAuthApp.for_base_url("my-client", "client-secret-xyz", base)
    async with aiohttp.ClientSession() as session:
        pipeline = Pipeline(
            Transport(timeout=app.timeout, session=session),
            retry=RetryPolicy(max_retries=0),
            limiter=LocalRateLimiter(clock=SYSTEM_CLOCK),
            clock=SYSTEM_CLOCK,
        )
        tokens = TokenManager(store=AnnouncingStore(path), endpoint=TokenEndpoint(app, pipeline))
        print(await tokens.access_token())

asyncio.run(main())
"""


REPO = os.path.dirname(os.path.dirname(os.path.abspath(rdfunnel.__file__)))


async def test_two_processes_sharing_a_token_file_refresh_once(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    expired = Token(
        access_token="access-0",
        refresh_token="refresh-0",
        expires_at=datetime.now(UTC) - timedelta(hours=1),
    )
    await FileTokenStore(path).save(expired)
    grants: list[dict[str, Any]] = []
    ready = 0
    both_ready = asyncio.Event()

    async def token(request: web.Request) -> web.Response:
        body = await request.json()
        if body != {
            "client_id": "my-client",
            "client_secret": SECRET,
            "refresh_token": f"refresh-{len(grants)}",
        }:
            return web.json_response(
                {"errors": {"error_type": "INVALID_REFRESH_TOKEN"}}, status=401
            )
        grants.append(body)
        n = len(grants)
        return web.json_response(
            {"access_token": f"access-{n}", "refresh_token": f"refresh-{n}", "expires_in": 86400}
        )

    async def announce(request: web.Request) -> web.Response:
        nonlocal ready
        ready += 1
        if ready == 2:
            both_ready.set()
        return web.json_response({})

    server = web.Application()
    server.router.add_post("/auth/token", token)
    server.router.add_post("/ready", announce)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    env = {**os.environ, "PYTHONPATH": REPO}
    held = filelock.FileLock(f"{path}.lock")
    held.acquire()  # neither child may refresh until both are contending
    try:
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CHILD,
                f"http://127.0.0.1:{port}",
                str(path),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            for _ in range(2)
        ]
        await asyncio.wait_for(both_ready.wait(), 60)
    finally:
        held.release()
    try:
        outputs = [await asyncio.wait_for(child.communicate(), 60) for child in children]
    finally:
        await runner.cleanup()
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err.decode()
        assert out.decode().strip() == "access-1"
    assert len(grants) == 1
    assert json.loads(path.read_text())["refresh_token"] == "refresh-1"


async def test_the_hook_error_is_cleared_by_a_hook_that_succeeds(
    clock: Clock, wire: aioresponses, session: aiohttp.ClientSession
) -> None:
    Endpoint(wire, life=1000)
    calls: list[Token] = []

    def hook(token: Token) -> None:
        calls.append(token)
        if len(calls) == 1:
            raise RuntimeError("webhook down")

    tokens = manager(clock, session, MemoryTokenStore(expiring(clock, -1)), on_token_refresh=hook)
    assert await tokens.access_token() == "access-1"
    assert isinstance(tokens.hook_error, RuntimeError)
    clock.now += 2000  # the new token expired too: the next call refreshes again
    assert await tokens.access_token() == "access-2"
    assert tokens.hook_error is None and len(calls) == 2
