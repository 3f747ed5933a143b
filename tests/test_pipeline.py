"""One pipeline for every request: token requests meet the same gate, pause and retry decision.

Wire checks with aioresponses (``wire``) and the virtual ``clock`` from conftest.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from rdfunnel import RDStation, RetryPolicy
from rdfunnel.errors import (
    APIError,
    ExpiredCodeGrantError,
    InvalidCredentialsError,
    InvalidRefreshTokenError,
    QuotaExceededError,
    RateLimitError,
    RDStationError,
    ServerError,
    TokenRefusedError,
    TransportError,
    UnexpectedStatusError,
)

from .conftest import VirtualClock

BASE = "https://api.rd.services"
TOKEN_URL = URL(f"{BASE}/auth/token")
INFO_URL = URL(f"{BASE}/marketing/account_info")
FAST = RetryPolicy(max_retries=3, backoff_base=0.5, jitter=False)


def app_client(clock: VirtualClock, **kwargs: Any) -> RDStation:
    return RDStation(
        client_id="c", client_secret="s", refresh_token="r", retry=FAST, clock=clock, **kwargs
    )


def token_answer(n: int = 1) -> CallbackResult:
    return CallbackResult(payload={"access_token": f"access-{n}", "expires_in": 86400})


async def test_an_account_429_on_a_token_request_pauses_the_client(
    wire: aioresponses, clock: VirtualClock
) -> None:
    seen: list[tuple[str, float]] = []

    def token(url: URL, **_: Any) -> CallbackResult:
        seen.append(("token", clock.now))
        if len(seen) == 1:
            return CallbackResult(
                status=429,
                payload={"message": "API rate limit exceeded"},
                headers={"retry-after-quotas": "2"},
            )
        return token_answer()

    def info(url: URL, **kwargs: Any) -> CallbackResult:
        seen.append(("info", clock.now))
        return CallbackResult(payload={"name": "x"})

    wire.post(TOKEN_URL, callback=token, repeat=True)
    wire.get(INFO_URL, callback=info, repeat=True)
    async with app_client(clock) as rd, RDStation(clock=clock, access_token="t") as other:
        start = clock.now
        await rd.account_info()
        assert seen == [("token", start), ("token", start + 2), ("info", start + 2)]
        assert clock.sleeps == [2.0]  # the limiter's pause, once
        await other.account_info()  # another client is not held back
    assert seen[-1] == ("info", start + 2)


async def test_token_requests_pass_the_clients_rate_cap(
    wire: aioresponses, clock: VirtualClock
) -> None:
    sent_at: dict[str, list[float]] = {"token": [], "info": []}

    def token(url: URL, **_: Any) -> CallbackResult:
        sent_at["token"].append(clock.now)
        return token_answer()

    def info(url: URL, **_: Any) -> CallbackResult:
        sent_at["info"].append(clock.now)
        return CallbackResult(payload={})

    wire.post(TOKEN_URL, callback=token, repeat=True)
    wire.get(INFO_URL, callback=info, repeat=True)
    async with app_client(clock, max_rate=2) as rd:
        start = clock.now
        await rd.account_info()
        await rd.account_info()
    # Three requests at two per second, the token request first; the third waits for the
    # limiter's 1.01 s guard window (never more than a second's worth within it).
    assert sent_at["token"] == [start]
    assert sent_at["info"] == [start + 0.5, pytest.approx(start + 1.01)]


async def test_token_request_retries_follow_the_policy_and_say_so(
    wire: aioresponses, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="rdfunnel")
    wire.post(TOKEN_URL, status=503, body="<html>down</html>")
    wire.post(TOKEN_URL, status=503, body="<html>down</html>")
    wire.post(TOKEN_URL, callback=lambda url, **_: token_answer())
    wire.get(INFO_URL, payload={"name": "x"})
    async with app_client(clock) as rd:
        assert await rd.account_info() == {"name": "x"}
    assert clock.sleeps == [0.5, 1.0]  # RetryPolicy.decide: backoff(1), backoff(2)
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying")]
    assert retries == [
        "retrying POST /auth/token in 0.50 s (retry 1 of 3) after HTTP 503",
        "retrying POST /auth/token in 1.00 s (retry 2 of 3) after HTTP 503",
    ]


async def test_token_requests_map_network_errors_as_every_request_does(
    wire: aioresponses, clock: VirtualClock
) -> None:
    import aiohttp

    for _ in range(4):
        wire.post(TOKEN_URL, exception=aiohttp.ClientConnectionError("reset"))
    async with app_client(clock) as rd:
        with pytest.raises(TransportError) as caught:
            await rd.account_info()
    assert str(caught.value) == "POST /auth/token failed: ClientConnectionError: reset"
    assert len(wire.requests[("POST", TOKEN_URL)]) == 4  # retried as any request is
    assert caught.value.attempts == 0  # the call itself was never sent


async def test_the_token_request_carries_the_user_agent_and_a_compact_body(
    wire: aioresponses, clock: VirtualClock
) -> None:
    wire.post(TOKEN_URL, callback=lambda url, **_: token_answer())
    wire.get(INFO_URL, payload={})
    async with app_client(clock) as rd:
        await rd.account_info()
    [call] = wire.requests[("POST", TOKEN_URL)]
    assert call.kwargs["headers"]["User-Agent"].startswith("rdfunnel/")
    assert call.kwargs["data"] == b'{"client_id":"c","client_secret":"s","refresh_token":"r"}'
    assert json.loads(call.kwargs["data"]) == {
        "client_id": "c",
        "client_secret": "s",
        "refresh_token": "r",
    }


async def test_a_body_that_is_not_json_counts_its_attempts(
    wire: aioresponses, clock: VirtualClock
) -> None:
    wire.get(INFO_URL, status=503)
    wire.get(INFO_URL, status=200, body="<html>ok?</html>")
    async with RDStation(access_token="t", retry=FAST, clock=clock) as rd:
        with pytest.raises(UnexpectedStatusError, match="not JSON") as caught:
            await rd.account_info()
    assert caught.value.attempts == 2


def test_retry_decisions() -> None:
    policy = RetryPolicy(max_retries=2, backoff_base=0.5, jitter=False, max_wait=60)
    assert policy.decide(ServerError(503), 0) == 0.5
    assert policy.decide(ServerError(503), 1) == 1.0
    assert policy.decide(ServerError(503), 2) is None  # out of retries
    assert policy.decide(TransportError("reset"), 0) == 0.5
    assert policy.decide(APIError(400), 0) is None  # not retryable
    assert policy.decide(RateLimitError(429, retry_after=7.0), 0) == 7.0  # the hint, obeyed
    assert policy.decide(RateLimitError(429), 1) == 1.0  # no hint: backoff
    spent = QuotaExceededError(429, retry_after=3600.0, scope="contact")
    assert not spent.retryable and policy.decide(spent, 0) is None


def test_authorize_again_is_one_trait() -> None:
    def subclasses(cls: type) -> set[type]:
        found = set(cls.__subclasses__())
        return found.union(*(subclasses(sub) for sub in found))

    reauthorize = {cls for cls in subclasses(RDStationError) if cls.reauthorize}
    assert reauthorize == {
        InvalidCredentialsError,
        InvalidRefreshTokenError,
        TokenRefusedError,
        ExpiredCodeGrantError,
    }
    assert all(cls.terminal for cls in reauthorize)
    # The hint is added where RD's answer names the error, on the wire and off it alike.
    assert all(cls.hint for cls in reauthorize - {TokenRefusedError})


async def test_a_closed_client_sends_nothing_and_says_so(clock: VirtualClock) -> None:
    rd = RDStation(access_token="t", clock=clock)
    await rd.close()
    with pytest.raises(RDStationError, match="closed") as caught:
        await rd.account_info()
    assert caught.value.attempts == 0
    await asyncio.sleep(0)
