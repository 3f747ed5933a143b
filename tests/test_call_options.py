"""Per-call options: ``timeout=`` (a deadline for the whole call) and ``headers=``, and RD's request
id on errors and results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses
from multidict import CIMultiDict
from yarl import URL

from rdfunnel import Funnel, FunnelUpdate, RDStation, RetryPolicy
from rdfunnel.errors import (
    NotFoundError,
    RequestTimeoutError,
    ServerError,
    ValidationError,
)
from rdfunnel.events import CallEnded, Event
from rdfunnel.testing import FakeRDStation, Faults

from .conftest import VirtualClock

BASE = "https://api.rd.services"
EMAIL = "ana@example.com"
FUNNEL_URL = URL(f"{BASE}/platform/contacts/email:{EMAIL}/funnels/default", encoded=True)
TOKEN_URL = f"{BASE}/auth/token"
FUNNEL = {"lifecycle_stage": "Lead", "opportunity": False, "fit": 1, "interest": 2}
STEADY = RetryPolicy(max_retries=5, backoff_base=1.0, backoff_cap=60.0, jitter=False)


@pytest.fixture
async def rd(clock: VirtualClock) -> AsyncIterator[RDStation]:
    async with RDStation(access_token="tok", clock=clock, retry=STEADY) as client:
        yield client


def headers_sent(wire: aioresponses, method: str, url: URL | str) -> list[CIMultiDict[str]]:
    return [CIMultiDict(call.kwargs["headers"]) for call in wire.requests[(method, URL(url))]]


# -- timeout= --------------------------------------------------------------------------------


async def test_a_deadline_covers_retries_and_their_backoff(
    rd: RDStation, wire: aioresponses, clock: VirtualClock
) -> None:
    wire.get(FUNNEL_URL, status=503, payload={"error": "down"}, repeat=True)
    with pytest.raises(RequestTimeoutError) as caught:
        await rd.funnels.get(EMAIL, timeout=2.5)
    error = caught.value
    # Backoffs of 1 s then 2 s: the second retry could only start at 3 s, past the deadline, so
    # the call ends at once instead of waiting to be cut.
    assert clock.sleeps == [1.0]
    assert error.attempts == 2
    assert isinstance(error.__cause__, ServerError)
    message = str(error)
    assert "within the call's timeout of 2.5 s" in message
    assert "the last attempt met HTTP 503" in message
    assert EMAIL not in message and "a***@example.com" in message
    assert error.contact is not None and error.contact.value == EMAIL


async def test_without_a_deadline_the_same_call_retries_to_the_end(
    rd: RDStation, wire: aioresponses, clock: VirtualClock
) -> None:
    wire.get(FUNNEL_URL, status=503, payload={"error": "down"}, repeat=True)
    with pytest.raises(ServerError):
        await rd.funnels.get(EMAIL)
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0]


async def test_a_deadline_cuts_a_slow_answer_in_real_time() -> None:
    async with (
        FakeRDStation(contacts=1) as fake,
        fake.client(timeout=30.0) as rd,
    ):
        await rd.funnels.get("contact-0@example.com")
        fake.faults = Faults(slow=1.0, slow_seconds=10.0)
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError, match=r"call's timeout of 0\.2 s"):
            await rd.funnels.get("contact-0@example.com", timeout=0.2)
        assert time.monotonic() - started < 2.0
        fake.faults = Faults()
        assert (await rd.funnels.get("contact-0@example.com")).fit == 0  # the client goes on


async def test_one_callers_deadline_never_cancels_the_token_refresh(wire: aioresponses) -> None:
    release = asyncio.Event()

    async def slow_token(url: URL, **kwargs: Any) -> CallbackResult:
        await release.wait()
        return CallbackResult(payload={"access_token": "fresh", "expires_in": 86400})

    wire.post(TOKEN_URL, callback=slow_token)
    wire.get(FUNNEL_URL, payload=FUNNEL, repeat=True)
    async with RDStation(client_id="id", client_secret="secret", refresh_token="r") as rd:
        with pytest.raises(RequestTimeoutError, match="call's timeout"):
            await rd.funnels.get(EMAIL, timeout=0.05)  # waits for the refresh, then gives up
        patient = asyncio.create_task(rd.funnels.get(EMAIL))
        await asyncio.sleep(0.01)
        release.set()
        assert (await patient).fit == 1
    assert len(wire.requests[("POST", URL(TOKEN_URL))]) == 1  # the same refresh served both
    [call] = wire.requests[("GET", FUNNEL_URL)]
    assert call.kwargs["headers"]["Authorization"] == "Bearer fresh"


async def test_a_deadline_met_ends_the_call_event_with_the_timeout(wire: aioresponses) -> None:
    seen: list[Event] = []
    wire.get(FUNNEL_URL, status=503, repeat=True)
    clock = VirtualClock()
    async with RDStation(access_token="t", clock=clock, retry=STEADY, hooks=[seen.append]) as rd:
        with pytest.raises(RequestTimeoutError):
            await rd.funnels.get(EMAIL, timeout=1.5)
    [ended] = [event for event in seen if isinstance(event, CallEnded)]
    assert ended.error == "RequestTimeoutError" and ended.attempts == 2


async def test_update_and_request_take_a_deadline(
    rd: RDStation, wire: aioresponses, clock: VirtualClock
) -> None:
    wire.put(FUNNEL_URL, status=502, repeat=True)
    wire.get(f"{BASE}/marketing/account_info", status=500, repeat=True)
    with pytest.raises(RequestTimeoutError):
        await rd.funnels.update(EMAIL, opportunity=True, timeout=0.5)
    with pytest.raises(RequestTimeoutError, match="GET /marketing/account_info"):
        await rd.request("GET", "/marketing/account_info", timeout=0.5)
    assert clock.sleeps == []  # the first backoff (1 s) was already past each deadline


async def test_update_many_gives_each_change_its_own_deadline() -> None:
    async with FakeRDStation(contacts=20) as fake, fake.client() as rd:
        await rd.funnels.get("contact-0@example.com")
        fake.faults = Faults(slow=0.5, slow_seconds=10.0, seed=7)
        update = FunnelUpdate(opportunity=True)
        work = [(f"contact-{i}@example.com", update) for i in range(20)]
        started = time.monotonic()
        async with rd.funnels.update_many(work, concurrency=20, timeout=0.2) as run:
            results = [result async for result in run]
        assert time.monotonic() - started < 3.0
        slow = fake.stats.faults["slow"]
    timed_out = [r for r in results if isinstance(r.error, RequestTimeoutError)]
    assert 0 < len(timed_out) == slow < 20  # one item's deadline stops neither the run nor others
    assert sum(r.ok for r in results) == 20 - slow
    assert run.stopped_by is None


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf"), "1", True])
async def test_a_bad_timeout_is_refused_before_anything_is_sent(
    rd: RDStation, wire: aioresponses, seconds: Any
) -> None:
    with pytest.raises(ValidationError, match="timeout must be a finite number of seconds > 0"):
        await rd.funnels.get(EMAIL, timeout=seconds)
    with pytest.raises(ValidationError, match="timeout"):
        rd.funnels.update_many([], timeout=seconds)
    assert wire.requests == {}


# -- headers= --------------------------------------------------------------------------------


async def test_headers_go_with_the_calls_requests_not_the_token_requests(
    wire: aioresponses,
) -> None:
    wire.post(TOKEN_URL, payload={"access_token": "fresh", "expires_in": 86400})
    wire.get(FUNNEL_URL, payload=FUNNEL)
    wire.put(FUNNEL_URL, payload=FUNNEL)
    wire.post(f"{BASE}/platform/events", payload={})
    async with RDStation(client_id="id", client_secret="secret", refresh_token="r") as rd:
        await rd.funnels.get(EMAIL, headers={"X-Trace-Id": "t-1"})
        await rd.funnels.update(EMAIL, opportunity=True, headers={"X-Trace-Id": "t-2"})
        await rd.request("POST", "/platform/events", json={}, headers={"X-Trace-Id": "t-3"})
    [token] = headers_sent(wire, "POST", TOKEN_URL)
    assert "X-Trace-Id" not in token
    for method, url, trace in (
        ("GET", FUNNEL_URL, "t-1"),
        ("PUT", FUNNEL_URL, "t-2"),
        ("POST", f"{BASE}/platform/events", "t-3"),
    ):
        [sent] = headers_sent(wire, method, url)
        assert sent["X-Trace-Id"] == trace
        assert sent["Authorization"] == "Bearer fresh"
        assert sent["Content-Type"] == "application/json"


async def test_a_header_of_rdfunnels_own_is_replaced_once_whatever_its_case(
    rd: RDStation, wire: aioresponses
) -> None:
    wire.get(FUNNEL_URL, payload=FUNNEL)
    await rd.funnels.get(EMAIL, headers={"user-agent": "my-service/2.0"})
    [sent] = headers_sent(wire, "GET", FUNNEL_URL)
    assert sent.getall("User-Agent") == ["my-service/2.0"]


async def test_update_many_sends_the_headers_with_every_change(
    rd: RDStation, wire: aioresponses
) -> None:
    wire.put(FUNNEL_URL, payload=FUNNEL, repeat=True)
    update = FunnelUpdate(opportunity=True)
    async with rd.funnels.update_many([(EMAIL, update)] * 3, headers={"X-Job": "j-9"}) as run:
        assert all([result.ok async for result in run])
    assert [sent["X-Job"] for sent in headers_sent(wire, "PUT", FUNNEL_URL)] == ["j-9"] * 3


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Authorization": "Bearer mine"}, "may not set Authorization"),
        ({"authorization": "Bearer mine"}, "may not set authorization"),
        ({"CONTENT-TYPE": "text/plain"}, "may not set CONTENT-TYPE"),
        ({"Host": "evil.example"}, "may not set Host"),
        ({"X-Bad Name": "v"}, "is not an HTTP header name"),
        ({"": "v"}, "is not an HTTP header name"),
        ({"X-Secret": 42}, "header X-Secret must be a str, got int"),
        ({"X-Secret": "a\r\nInjected: yes"}, "must be one line"),
        ({"X-A": "1", "x-a": "2"}, "name x-a twice"),
        ([("X-A", "1")], "headers must be a mapping"),
    ],
)
async def test_bad_headers_are_refused_before_anything_is_sent(
    rd: RDStation, wire: aioresponses, headers: Any, message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        await rd.funnels.get(EMAIL, headers=headers)
    assert "Injected" not in str(caught.value) and "mine" not in str(caught.value)
    with pytest.raises(ValidationError, match=message):
        await rd.request("GET", "/marketing/account_info", headers=headers)
    with pytest.raises(ValidationError, match=message):
        rd.funnels.update_many([], headers=headers)
    assert wire.requests == {}


# -- request ids -----------------------------------------------------------------------------


async def test_errors_and_funnels_carry_rds_request_id() -> None:
    async with FakeRDStation(contacts=1) as fake, fake.client() as rd:
        first = await rd.funnels.get("contact-0@example.com")
        second = await rd.funnels.update("contact-0@example.com", opportunity=False)
        with pytest.raises(NotFoundError) as caught:
            await rd.funnels.get("nobody@example.com")
    assert first.request_id and second.request_id and caught.value.request_id
    assert len({first.request_id, second.request_id, caught.value.request_id}) == 3
    assert first == second  # the same funnel, whatever answer it came in
    assert hash(first) == hash(second)
    assert "request_id" not in repr(first)


@pytest.mark.parametrize("header", ["X-Request-Id", "x-amzn-RequestId"])
async def test_the_request_id_is_read_from_either_header(
    rd: RDStation, wire: aioresponses, header: str
) -> None:
    wire.get(FUNNEL_URL, payload=FUNNEL, headers={header: "req-1"})
    wire.put(FUNNEL_URL, status=404, headers={header: "req-2"})
    assert (await rd.funnels.get(EMAIL)).request_id == "req-1"
    with pytest.raises(NotFoundError) as caught:
        await rd.funnels.update(EMAIL, opportunity=True)
    assert caught.value.request_id == "req-2"


async def test_no_request_id_when_rd_sends_none(rd: RDStation, wire: aioresponses) -> None:
    wire.get(FUNNEL_URL, payload={**FUNNEL, "request_id": "from-the-body"})
    funnel = await rd.funnels.get(EMAIL)
    assert funnel.request_id is None  # never read from the body
    assert funnel == Funnel("Lead", False, None, 1, 2)
