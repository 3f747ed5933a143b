"""The client on the wire (aioresponses): exact requests, error mapping, retries and limits."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from rdfunnel import (
    Contact,
    Funnel,
    FunnelUpdate,
    LifecycleStage,
    LocalRateLimiter,
    RDStation,
    RetryPolicy,
)
from rdfunnel.errors import (
    BadRequestError,
    NotFoundError,
    RateLimitError,
    RDStationError,
    RequestTimeoutError,
    ServerError,
    TransportError,
    ValidationError,
)

from .conftest import VirtualClock

BASE = "https://api.rd.services"
TOKEN = "secret-access-token-123"
FUNNEL = {
    "lifecycle_stage": "Client",
    "opportunity": True,
    "contact_owner_email": "o@x.org",
    "fit": 60,
    "interest": 100,
}
FAST = RetryPolicy(max_retries=3, backoff_base=0.01, backoff_cap=0.05)


def funnel_url(segment: str) -> URL:
    return URL(f"{BASE}/platform/contacts/{segment}/funnels/default", encoded=True)


@pytest.fixture
async def rd(clock: VirtualClock) -> AsyncIterator[RDStation]:
    async with RDStation(clock=clock, access_token=TOKEN, retry=FAST) as client:
        yield client


def sent(wire: aioresponses) -> list[tuple[str, str, Any]]:
    """(method, raw path, decoded body) of every request, in order of URL then time."""
    out = []
    for (method, url), calls in wire.requests.items():
        for call in calls:
            data = call.kwargs.get("data")
            out.append((method, url.raw_path, json.loads(data) if data else None))
    return out


@pytest.mark.parametrize(
    ("email", "raw_path"),
    [
        ("ana+tag@example.com", "email:ana+tag@example.com"),
        ("a/b@example.com", "email:a%2Fb@example.com"),
        ("a?b@example.com", "email:a%3Fb@example.com"),
        ("a#b@example.com", "email:a%23b@example.com"),
        ("a%b@example.com", "email:a%25b@example.com"),
        ("josé@exämple.com", "email:jos%C3%A9@ex%C3%A4mple.com"),
        ("o'hara=1!@example.com", "email:o%27hara%3D1%21@example.com"),
    ],
)
async def test_exact_path_for_awkward_emails(
    rd: RDStation, wire: aioresponses, email: str, raw_path: str
) -> None:
    wire.get(funnel_url(raw_path), payload=FUNNEL)
    funnel = await rd.funnels.get(email)
    assert funnel == Funnel(LifecycleStage.CLIENT, True, "o@x.org", 60, 100)
    [(method, path, _)] = sent(wire)
    assert (method, path) == ("GET", f"/platform/contacts/{raw_path}/funnels/default")


async def test_uuid_contact_and_headers(rd: RDStation, wire: aioresponses) -> None:
    uuid = "5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
    wire.get(funnel_url(f"uuid:{uuid}"), payload=FUNNEL)
    await rd.funnels.get(Contact.uuid(uuid.upper()))
    [call] = next(iter(wire.requests.values()))
    headers = call.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("rdfunnel/")


@pytest.mark.parametrize(
    ("kwargs", "body"),
    [
        ({"lifecycle_stage": "Client"}, {"lifecycle_stage": "Client"}),
        ({"opportunity": False}, {"opportunity": False}),
        ({"contact_owner_email": "o@x.org"}, {"contact_owner_email": "o@x.org"}),
        (
            {"lifecycle_stage": "Lead", "opportunity": True},
            {"lifecycle_stage": "Lead", "opportunity": True},
        ),
        (
            {"lifecycle_stage": "Lead", "contact_owner_email": "o@x.org"},
            {"lifecycle_stage": "Lead", "contact_owner_email": "o@x.org"},
        ),
        (
            {"opportunity": True, "contact_owner_email": "o@x.org"},
            {"opportunity": True, "contact_owner_email": "o@x.org"},
        ),
        (
            {
                "lifecycle_stage": "Qualified Lead",
                "opportunity": True,
                "contact_owner_email": "o@x.org",
            },
            {
                "lifecycle_stage": "Qualified Lead",
                "opportunity": True,
                "contact_owner_email": "o@x.org",
            },
        ),
        ({"contact_owner_email": None}, {"contact_owner_email": "null"}),
    ],
)
async def test_exact_put_body(
    rd: RDStation, wire: aioresponses, kwargs: dict[str, Any], body: dict[str, Any]
) -> None:
    wire.put(funnel_url("email:ana@example.com"), payload=FUNNEL, repeat=True)
    await rd.funnels.update("ana@example.com", FunnelUpdate(**kwargs))
    await rd.funnels.update("ana@example.com", **kwargs)
    assert (
        sent(wire)
        == [("PUT", "/platform/contacts/email:ana@example.com/funnels/default", body)] * 2
    )


async def test_clearing_the_owner_as_json_null(clock: VirtualClock, wire: aioresponses) -> None:
    wire.put(funnel_url("email:ana@example.com"), payload={"lifecycle_stage": "Lead"})
    async with RDStation(clock=clock, access_token=TOKEN, clear_owner_as="null") as rd:
        funnel = await rd.funnels.update("ana@example.com", contact_owner_email=None)
    assert funnel.contact_owner_email is None
    assert sent(wire)[0][2] == {"contact_owner_email": None}


async def test_html_502_then_200_succeeds_after_one_retry(
    rd: RDStation, wire: aioresponses, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    url = funnel_url("email:ana@example.com")
    wire.get(
        url,
        status=502,
        body="<!DOCTYPE html><h1>RD Station fora do ar</h1>",
        content_type="text/html",
    )
    wire.get(url, payload=FUNNEL)
    with caplog.at_level(logging.INFO, logger="rdfunnel"):
        assert (await rd.funnels.get("ana@example.com")).fit == 60
    assert len(sent(wire)) == 2
    assert len(clock.sleeps) == 1 and 0 <= clock.sleeps[0] <= 0.01
    [record] = caplog.records
    assert "HTTP 502" in record.getMessage() and "retry 1 of 3" in record.getMessage()
    assert TOKEN not in record.getMessage()


async def test_404_is_tried_once(rd: RDStation, wire: aioresponses) -> None:
    wire.get(
        funnel_url("email:ana@example.com"),
        status=404,
        repeat=True,
        payload={
            "errors": {"error_type": "RESOURCE_NOT_FOUND", "error_message": "Lead not found."}
        },
    )
    with pytest.raises(NotFoundError) as info:
        await rd.funnels.get("ana@example.com")
    assert len(sent(wire)) == 1
    assert info.value.attempts == 1
    assert info.value.messages == ("Lead not found.",)


async def test_400_is_never_retried_and_keeps_field_details(
    rd: RDStation, wire: aioresponses
) -> None:
    wire.put(
        funnel_url("email:ana@example.com"),
        status=400,
        repeat=True,
        payload={
            "errors": {
                "contact_owner_email": [
                    {"error_type": "INVALID_USER", "error_message": "The user x was not found."}
                ]
            }
        },
    )
    with pytest.raises(BadRequestError) as info:
        await rd.funnels.update("ana@example.com", contact_owner_email="x@y.com")
    assert info.value.details["contact_owner_email"][0]["error_type"] == "INVALID_USER"
    assert len(sent(wire)) == 1


async def test_server_errors_surface_after_max_retries(rd: RDStation, wire: aioresponses) -> None:
    wire.get(
        funnel_url("email:ana@example.com"),
        status=503,
        repeat=True,
        payload={"errors": {"error_type": "SERVICE_UNAVAILABLE", "error_message": "down"}},
    )
    with pytest.raises(ServerError) as info:
        await rd.funnels.get("ana@example.com")
    assert len(sent(wire)) == 4 and info.value.attempts == 4


async def test_account_429_pauses_every_call_of_the_client(
    rd: RDStation, wire: aioresponses, clock: VirtualClock
) -> None:
    seen: list[tuple[str, float]] = []
    first_429 = asyncio.Event()

    def answer(who: str, status: int) -> Any:
        def callback(url: URL, **_: Any) -> CallbackResult:
            seen.append((who, clock.now))
            if status == 429:
                first_429.set()
                return CallbackResult(
                    status=429,
                    payload={"message": "API rate limit exceeded"},
                    headers={"retry-after-quotas": "2"},
                )
            return CallbackResult(payload=FUNNEL)

        return callback

    wire.get(funnel_url("email:a@example.com"), callback=answer("a", 429))
    wire.get(funnel_url("email:a@example.com"), callback=answer("a", 200))
    wire.get(funnel_url("email:b@example.com"), callback=answer("b", 200))

    async def second_call() -> Funnel:
        await first_429.wait()
        return await rd.funnels.get("b@example.com")

    start = clock.now
    results = await asyncio.gather(rd.funnels.get("a@example.com"), second_call())
    assert all(result.fit == 60 for result in results)
    assert seen[0] == ("a", start)
    # Both later requests wait out the 2 s pause, the one that never saw a 429 included.
    assert sorted(seen[1:]) == [("a", start + 2), ("b", start + 2)]
    assert clock.sleeps == [2.0, 2.0]


async def test_per_contact_quota_fails_at_once_with_its_hint(
    rd: RDStation, wire: aioresponses, clock: VirtualClock
) -> None:
    wire.put(
        funnel_url("email:lead@example.org"),
        status=429,
        repeat=True,
        payload={
            "error": "'lead_limiter' rate limit exceeded for 86400 second(s) period for key "
            "'lead@example.org'",
            "max": 24,
            "usage": 25,
            "remaining_time": 43067,
        },
    )
    with pytest.raises(RateLimitError) as info:
        await rd.funnels.update("lead@example.org", opportunity=True)
    assert (info.value.scope, info.value.retry_after) == ("contact", 43067)
    assert len(sent(wire)) == 1
    assert clock.sleeps == []


async def test_short_per_contact_hint_is_waited_for(
    rd: RDStation, wire: aioresponses, clock: VirtualClock
) -> None:
    url = funnel_url("email:lead@example.org")
    wire.get(url, status=429, payload={"error": "x", "max": 24, "usage": 25, "remaining_time": 5})
    wire.get(url, payload=FUNNEL)
    await rd.funnels.get("lead@example.org")
    assert clock.sleeps == [5]


@pytest.mark.parametrize(
    ("exception", "cls"),
    [
        (aiohttp.ServerDisconnectedError(), TransportError),
        (aiohttp.ClientConnectionResetError("reset"), TransportError),
        (TimeoutError(), RequestTimeoutError),
    ],
)
async def test_network_failures_are_retried_then_surface(
    rd: RDStation, wire: aioresponses, exception: Exception, cls: type[Exception]
) -> None:
    url = funnel_url("email:ana@example.com")
    wire.get(url, exception=exception)
    wire.get(url, payload=FUNNEL)
    assert (await rd.funnels.get("ana@example.com")).fit == 60
    wire.get(url, exception=exception, repeat=True)
    with pytest.raises(cls) as info:
        await rd.funnels.get("ana@example.com")
    assert info.value.attempts == 4
    assert len(sent(wire)) == 6


async def test_a_callers_session_stays_open(clock: VirtualClock, wire: aioresponses) -> None:
    wire.get(funnel_url("email:ana@example.com"), payload=FUNNEL)
    async with aiohttp.ClientSession() as session:
        async with RDStation(clock=clock, access_token=TOKEN, session=session) as rd:
            await rd.funnels.get("ana@example.com")
        assert not session.closed
        with pytest.raises(RDStationError, match="closed"):
            await rd.funnels.get("ana@example.com")


async def test_a_closed_client_says_so(wire: aioresponses) -> None:
    rd = RDStation(access_token=TOKEN)
    await rd.close()
    with pytest.raises(RDStationError, match="client is closed"):
        await rd.funnels.get("ana@example.com")
    assert sent(wire) == []


@pytest.mark.parametrize(
    "call",
    [
        lambda rd: rd.funnels.get("not an email"),
        lambda rd: rd.funnels.get("ana@example.com", funnel=""),
        lambda rd: rd.funnels.update("ana@example.com"),
        lambda rd: rd.funnels.update("ana@example.com", lifecycle_stage="Customer"),
        lambda rd: rd.funnels.update("ana@example.com", opportunity="yes"),
        lambda rd: rd.funnels.update("ana@example.com", contact_owner_email="nobody"),
        lambda rd: rd.funnels.update(
            "ana@example.com", FunnelUpdate(opportunity=True), opportunity=False
        ),
        lambda rd: rd.request("GET", "marketing/account_info"),
    ],
)
async def test_bad_input_sends_nothing(rd: RDStation, wire: aioresponses, call: Any) -> None:
    with pytest.raises(ValidationError):
        await call(rd)
    assert sent(wire) == []


async def test_request_escape_hatch_and_account_info(rd: RDStation, wire: aioresponses) -> None:
    wire.get(f"{BASE}/marketing/account_info", payload={"name": "ACME"})
    wire.post(f"{BASE}/platform/contacts", payload={"uuid": "u1"})
    wire.get(f"{BASE}/platform/contacts/email:a@b.com?fields=name", payload={"name": "A"})
    assert await rd.account_info() == {"name": "ACME"}
    assert await rd.request("post", "/platform/contacts", json={"email": "a@b.com"}) == {
        "uuid": "u1"
    }
    assert await rd.request(
        "GET", "/platform/contacts/email:a@b.com", params={"fields": "name"}
    ) == {"name": "A"}
    assert ("POST", "/platform/contacts", {"email": "a@b.com"}) in sent(wire)


@pytest.mark.parametrize(
    "url",
    ["http://api.rd.services", "ftp://127.0.0.1", "http://10.0.0.1:8000", "not a url", "https://"],
)
def test_base_url_must_be_https_unless_loopback(url: str) -> None:
    with pytest.raises(ValidationError, match="base_url"):
        RDStation(access_token=TOKEN, base_url=url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8765", "http://localhost:1", "http://[::1]:80/", "https://x.test/api"]
)
def test_loopback_http_is_fine(url: str) -> None:
    assert url.rstrip("/") in repr(RDStation(access_token=TOKEN, base_url=url))


def test_secrets_stay_out_of_repr() -> None:
    rd = RDStation(access_token=TOKEN)
    assert TOKEN not in repr(rd) and TOKEN not in str(rd)
    assert TOKEN not in repr(rd._tokens)


def test_credentials_are_required() -> None:
    with pytest.raises(ValidationError, match="credentials"):
        RDStation()


async def test_the_limiter_learns_the_accounts_pace_from_a_429(clock: VirtualClock) -> None:
    limiter = LocalRateLimiter(clock=clock)
    for _ in range(250):  # a burst that ran into a 200-per-second quota
        await limiter.acquire()
    clock.now += 0.05
    await limiter.pause(1.0)
    await limiter.pause(1.0)  # the other requests of the burst: one episode, learned once
    start = clock.now
    for _ in range(11):
        await limiter.acquire()
    # 250 requests over the 1 s window: now spaced at 90% of that, 225 per second.
    assert clock.now - start == pytest.approx(1.0 + 10 / 225)
    clock.now += 61  # a minute without a 429: the pace is forgotten
    before = clock.now
    for _ in range(100):
        await limiter.acquire()
    assert clock.now == before


async def test_a_few_requests_teach_the_limiter_nothing(clock: VirtualClock) -> None:
    limiter = LocalRateLimiter(clock=clock)
    for _ in range(3):  # others on the account used the quota up
        await limiter.acquire()
    await limiter.pause(2.0)
    start = clock.now
    for _ in range(50):
        await limiter.acquire()
    assert clock.now - start == pytest.approx(2.0)  # the pause, then no pacing


class LateClock(VirtualClock):
    """A busy loop's clock: it wakes sleepers up to 40 ms late."""

    def __init__(self) -> None:
        super().__init__()
        self.oversleep = random.Random(4)

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds + self.oversleep.uniform(0, 0.04))


async def test_late_wake_ups_never_bunch_past_the_cap() -> None:
    clock = LateClock()
    limiter, sent = LocalRateLimiter(50, clock=clock), []

    async def caller() -> None:
        for _ in range(40):
            await limiter.acquire()
            sent.append(clock.now)

    await asyncio.gather(*(caller() for _ in range(10)))
    for start in sent:
        assert sum(start <= when < start + 1.01 for when in sent) <= 50
    assert 400 / (max(sent) - min(sent)) > 0.9 * 50  # and still close to the cap
