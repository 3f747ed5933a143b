"""FakeRDStation's rate limits, faults and standalone mode, over real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import rdfunnel.testing
from rdfunnel.errors import RateLimitError, ServerError, TokenExpiredError, error_from_response
from rdfunnel.testing import FakeRDStation, Faults, Limits

CLIENT: dict[str, Any] = {"client_id": "app-id", "client_secret": "app-secret"}
URL_A = "/platform/contacts/email:lead@example.org/funnels/default"


class Clock:
    def __init__(self) -> None:
        self.now = 5_000.25

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeRDStation]:
    async with FakeRDStation(**CLIENT, clock=clock) as server:
        server.add_contact("lead@example.org")
        server.add_contact("other@example.org")
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A fresh connection per request: aiohttp would otherwise silently resend a request whose
    # reused keep-alive connection was dropped, hiding the fault from the test.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, fake: FakeRDStation, method: str, path: str, **kwargs: Any
) -> tuple[int, Any, bytes]:
    token = kwargs.pop("token", None) or fake.issue_access_token()
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, fake.url + path, headers=headers, **kwargs) as reply:
        return reply.status, reply.headers, await reply.read()


# -- rate limits -----------------------------------------------------------------------------


async def test_per_contact_quota_shared_by_get_and_put(
    fake: FakeRDStation, http: Any, clock: Clock
) -> None:
    fake.limits = Limits(per_contact=2, window=86400)
    assert (await call(http, fake, "GET", URL_A))[0] == 200
    clock.advance(43333)
    assert (await call(http, fake, "PUT", URL_A, json={"opportunity": True}))[0] == 200
    status, headers, body = await call(http, fake, "GET", URL_A)
    assert status == 429
    assert json.loads(body) == {
        "error": "'lead_limiter' rate limit exceeded for 86400 second(s) period "
        "for key 'lead@example.org'",
        "max": 2,
        "usage": 3,
        "remaining_time": 43067,
    }
    error = error_from_response(status, headers, body)
    assert isinstance(error, RateLimitError)
    assert (error.scope, error.retry_after, error.limit, error.usage) == ("contact", 43067, 2, 3)
    # Another contact has its own quota; a rejected PUT changes nothing.
    other = "/platform/contacts/email:other@example.org/funnels/default"
    assert (await call(http, fake, "GET", other))[0] == 200
    rejected = await call(http, fake, "PUT", URL_A, json={"opportunity": False})
    assert rejected[0] == 429
    assert fake.contact("lead@example.org").opportunity is True
    assert fake.stats.rate_limited == {"contact": 2}
    clock.advance(43067)
    assert (await call(http, fake, "GET", URL_A))[0] == 200


async def test_per_contact_quota_counts_uuid_and_email_as_one(
    fake: FakeRDStation, http: Any
) -> None:
    fake.limits = Limits(per_contact=1, window=60)
    uuid = fake.contact("lead@example.org").uuid
    assert (await call(http, fake, "GET", URL_A))[0] == 200
    status, _, body = await call(
        http, fake, "GET", f"/platform/contacts/uuid:{uuid}/funnels/default"
    )
    assert status == 429
    assert json.loads(body)["error"].startswith(
        "'lead_limiter' rate limit exceeded for 60 second(s)"
    )


async def test_account_rps_cap(fake: FakeRDStation, http: Any, clock: Clock) -> None:
    fake.limits = Limits(account_rps=2)
    tokens = [fake.issue_access_token() for _ in range(4)]
    statuses = [(await call(http, fake, "GET", URL_A, token=t))[0] for t in tokens[:2]]
    assert statuses == [200, 200]
    status, headers, body = await call(
        http, fake, "GET", "/marketing/account_info", token=tokens[2]
    )
    assert status == 429
    assert json.loads(body) == {"message": "API rate limit exceeded"}
    assert headers["ratelimit-limit-quotas"] == "2"
    assert headers["retry-after-quotas"] == "1"
    error = error_from_response(status, headers, body)
    assert isinstance(error, RateLimitError)
    assert (error.scope, error.retry_after) == ("account", 1.0)
    clock.advance(1)
    assert (await call(http, fake, "GET", URL_A, token=tokens[3]))[0] == 200
    assert fake.stats.rate_limited == {"account": 1}
    fake.limits = Limits()
    for _ in range(5):
        assert (await call(http, fake, "GET", URL_A))[0] == 200


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "content_type"),
    [
        ("html_502", 502, "text/html"),
        ("html_504", 504, "text/html"),
        ("json_500", 500, "application/json"),
        ("json_503", 503, "application/json"),
    ],
)
async def test_answering_faults(
    fake: FakeRDStation, http: Any, kind: str, status: int, content_type: str
) -> None:
    fake.faults = Faults(**{kind: 1.0})  # type: ignore[arg-type]
    got, headers, body = await call(http, fake, "GET", URL_A)
    assert got == status
    assert headers["Content-Type"].startswith(content_type)
    if content_type == "text/html":
        assert body.startswith(b"<!DOCTYPE html>")
        assert "RD Station fora do ar" in body.decode()
    else:
        assert json.loads(body)["errors"]["error_type"] == "SERVICE_UNAVAILABLE"
    error = error_from_response(got, headers, body)
    assert isinstance(error, ServerError)
    assert error.retryable
    assert fake.stats.faults == {kind: 1}
    assert fake.stats.count("funnels.get", status) == 1
    # The token endpoint never meets faults.
    fields = {**CLIENT, "refresh_token": fake.refresh_token}
    async with http.post(fake.url + "/auth/token", json=fields) as reply:
        assert reply.status == 200


async def test_drop_closes_the_connection(fake: FakeRDStation, http: Any) -> None:
    fake.faults = Faults(drop=1.0)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, fake, "GET", URL_A)
    # aiohttp resends an idempotent request once when the connection drops (RFC 9112 §9.3.1),
    # so one call meets the fault twice; the fake's counters show what was really sent.
    assert fake.stats.faults == {"drop": 2}
    assert fake.stats.count("funnels.get", 0) == 2
    fake.faults = Faults()
    assert (await call(http, fake, "GET", URL_A))[0] == 200


async def test_slow_answers_time_out_and_close_promptly(clock: Clock, http: Any) -> None:
    fake = FakeRDStation(**CLIENT, clock=clock, faults=Faults(slow=1.0, slow_seconds=30))
    async with fake:
        fake.add_contact("lead@example.org")
        with pytest.raises(asyncio.TimeoutError):
            await call(http, fake, "GET", URL_A, timeout=aiohttp.ClientTimeout(total=0.05))
        assert fake.stats.faults == {"slow": 1}
        started = time.monotonic()
    assert time.monotonic() - started < 5  # the held answer did not hold up close()


async def test_latency_delays_every_answer(fake: FakeRDStation, http: Any) -> None:
    fake.faults = Faults(latency=0.05)
    started = time.monotonic()
    assert (await call(http, fake, "GET", URL_A))[0] == 200
    assert time.monotonic() - started >= 0.05
    assert fake.stats.faults == {}


async def test_early_expiry(fake: FakeRDStation, http: Any) -> None:
    fake.faults = Faults(early_expiry=1.0)
    status, headers, body = await call(http, fake, "GET", URL_A)
    assert status == 401
    assert "expired_token" in headers["WWW-Authenticate"]
    assert isinstance(error_from_response(status, headers, body), TokenExpiredError)
    unknown = await call(http, fake, "GET", URL_A, token="bogus")
    assert unknown[0] == 401
    assert "WWW-Authenticate" not in unknown[1]
    assert fake.stats.faults == {"early_expiry": 1}  # only a good token can expire early


async def test_faults_are_seeded_and_repeatable(fake: FakeRDStation, http: Any) -> None:
    async def run() -> list[int]:
        fake.faults = Faults(json_500=0.3, json_503=0.3, seed=42)
        return [(await call(http, fake, "GET", URL_A))[0] for _ in range(20)]

    first = await run()
    assert set(first) == {200, 500, 503}
    assert await run() == first


async def test_faults_set_at_start(clock: Clock, http: Any) -> None:
    async with FakeRDStation(**CLIENT, clock=clock, faults=Faults(html_502=1.0)) as fake:
        fake.add_contact("lead@example.org")
        assert (await call(http, fake, "GET", URL_A))[0] == 502
        assert fake.faults == Faults(html_502=1.0)


# -- standalone ------------------------------------------------------------------------------


async def test_standalone_server_prints_its_credentials(http: Any) -> None:
    root = str(Path(rdfunnel.testing.__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    args = ["--port", "0", "--contacts", "3", "--client-id", "cli-id", "--per-contact", "5"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rdfunnel.testing", *args, stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 15)
        info = json.loads(line)
        assert set(info) == {"url", "client_id", "client_secret", "refresh_token"}
        assert info["client_id"] == "cli-id"
        fields = {
            "client_id": "cli-id",
            "client_secret": info["client_secret"],
            "refresh_token": info["refresh_token"],
        }
        async with http.post(info["url"] + "/auth/token", json=fields) as reply:
            token = (await reply.json())["access_token"]
        url = info["url"] + "/platform/contacts/email:contact-2@example.com/funnels/default"
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as reply:
            assert reply.status == 200
            assert await reply.json() == {
                "lifecycle_stage": "Lead",
                "opportunity": False,
                "contact_owner_email": None,
                "fit": 0,
                "interest": 0,
            }
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 15) == 0
