"""Instrumentation hooks: the events of calls, attempts, retries, 429s, pauses, refreshes and bulk
runs, and no contact's address in any event, log record or message unless asked for.

The fake RD Station (with seeded faults) on 127.0.0.1 and the virtual ``clock`` from conftest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest
from aioresponses import aioresponses

from rdfunnel import Contact, FunnelUpdate, LifecycleStage, RDStation, RetryPolicy
from rdfunnel.errors import NotFoundError, TransportError
from rdfunnel.events import (
    AttemptEnded,
    BulkEnded,
    BulkProgress,
    BulkStarted,
    CallEnded,
    CallStarted,
    ClientPaused,
    RateLimited,
    RetryScheduled,
    TokenRefreshed,
)
from rdfunnel.testing import FakeRDStation, Faults, Limits

from .conftest import VirtualClock

FAST = RetryPolicy(max_retries=3, backoff_base=0.01, backoff_cap=0.05, jitter=False)
ANA = "ana.maria@example.com"
ROUTE = "/platform/contacts/{contact}/funnels/{funnel}"


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.events if type(event) is kind]


@pytest.fixture
async def fake(clock: VirtualClock) -> AsyncIterator[FakeRDStation]:
    async with FakeRDStation(clock=clock.monotonic, contacts=20) as server:
        server.add_contact(ANA)
        yield server


async def test_one_call_one_token_refresh_then_a_retried_call(
    fake: FakeRDStation, clock: VirtualClock
) -> None:
    seen = Recorder()
    async with fake.client(clock=clock, retry=FAST, hooks=[seen]) as rd:
        await rd.funnels.get(ANA)
    kinds = [type(event).__name__ for event in seen.events]
    assert kinds == [
        "CallStarted",  # funnels.get
        "CallStarted",  # its token request, in the refresh task
        "AttemptEnded",
        "CallEnded",
        "TokenRefreshed",
        "AttemptEnded",
        "CallEnded",
    ]
    get_start, token_start = seen.of(CallStarted)
    assert (get_start.operation, get_start.method, get_start.route) == ("funnels.get", "GET", ROUTE)
    assert (get_start.contact, get_start.contact_kind) == ("a***@example.com", "email")
    assert (token_start.operation, token_start.route) == ("token.refresh", "/auth/token")
    assert token_start.contact is None
    [refreshed] = seen.of(TokenRefreshed)
    assert (refreshed.outcome, refreshed.waiters, refreshed.error) == ("ok", 1, None)
    _, get_end = seen.of(CallEnded)
    assert (get_end.status, get_end.attempts, get_end.error) == (200, 1, None)
    assert get_end.duration >= 0
    assert [a.status for a in seen.of(AttemptEnded)] == [200, 200]


async def test_a_retried_call_tells_each_attempt_and_the_retry(
    clock: VirtualClock,
) -> None:
    faults = Faults(json_503=0.5, seed=_seed_with_first_draw_faulty())
    async with FakeRDStation(clock=clock.monotonic, faults=faults) as fake:
        fake.add_contact(ANA)
        seen = Recorder()
        async with fake.client(clock=clock, retry=FAST, hooks=[seen]) as rd:
            rd_token = await rd.account_info()  # the token first, before any fault matters
            assert rd_token
            seen.events.clear()
            await rd.funnels.update(ANA, FunnelUpdate(lifecycle_stage=LifecycleStage.CLIENT))
        attempts = seen.of(AttemptEnded)
        statuses = [a.status for a in attempts]
        assert len(statuses) >= 2, "the seed must make the first attempt fail"
        assert statuses[-1] == 200 and all(status == 503 for status in statuses[:-1])
        assert [a.attempt for a in attempts] == list(range(1, len(attempts) + 1))
        retries = seen.of(RetryScheduled)
        assert [r.reason for r in retries] == ["HTTP 503"] * (len(attempts) - 1)
        assert [r.retry for r in retries] == list(range(1, len(attempts)))
        assert clock.sleeps == [r.wait for r in retries]
        [end] = seen.of(CallEnded)
        assert (end.operation, end.attempts, end.status) == ("funnels.update", len(attempts), 200)
        # What the fake counted is what the events said.
        assert fake.stats.count("funnels.put", 503) == len(attempts) - 1


def _seed_with_first_draw_faulty() -> int:
    import random

    for seed in range(1000):
        rng = random.Random(seed)
        if rng.random() >= 0.5 and rng.random() < 0.5 and rng.random() >= 0.5:
            return seed
    raise AssertionError("no seed")  # pragma: no cover


async def test_an_account_429_is_told_with_the_pause(clock: VirtualClock) -> None:
    async with FakeRDStation(
        clock=clock.monotonic, contacts=5, limits=Limits(account_rps=2)
    ) as fake:
        seen = Recorder()
        async with fake.client(clock=clock, retry=FAST, hooks=[seen]) as rd:
            await asyncio.gather(*(rd.funnels.get(f"contact-{i}@example.com") for i in range(5)))
        limited = seen.of(RateLimited)
        assert limited and all(event.scope == "account" for event in limited)
        assert len(limited) == fake.stats.count(status=429)
        paused = seen.of(ClientPaused)
        assert paused and all(p.scope == "account" and p.seconds > 0 for p in paused)


async def test_bulk_runs_tell_start_progress_and_end(
    fake: FakeRDStation, clock: VirtualClock
) -> None:
    seen = Recorder()
    changes = [(f"contact-{i}@example.com", FunnelUpdate(opportunity=True)) for i in range(6)]
    changes.append(("nobody@example.com", FunnelUpdate(opportunity=True)))  # a 404
    async with fake.client(clock=clock, retry=FAST, hooks=[seen]) as rd:
        async with rd.funnels.update_many(changes, concurrency=3) as run:
            results = [result async for result in run]
        async with rd.funnels.update_many(changes[:1]) as second:
            [result async for result in second]
    [started, started_2] = seen.of(BulkStarted)
    assert started.concurrency == 3
    assert started_2.bulk_run == started.bulk_run + 1  # numbered in the process
    first = started.bulk_run
    progress = [p for p in seen.of(BulkProgress) if p.bulk_run == first]
    assert [p.summary.total for p in progress] == list(range(1, 8))
    assert sorted(p.outcome for p in progress) == ["failed"] + ["succeeded"] * 6
    ended = [e for e in seen.of(BulkEnded) if e.bulk_run == first]
    assert [e.summary for e in ended] == [run.summary] and ended[0].stop_reason is None
    calls = [c for c in seen.of(CallStarted) if c.operation == "funnels.update"]
    assert sorted(c.bulk_run for c in calls) == [first] * 7 + [first + 1]
    assert len(results) == 7


async def test_a_hook_that_raises_never_fails_a_call(
    fake: FakeRDStation, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def broken(event: Any) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("the hook broke")

    caplog.set_level(logging.DEBUG, logger="rdfunnel")
    seen = Recorder()
    async with fake.client(clock=clock, retry=FAST, hooks=[broken, seen]) as rd:
        for _ in range(3):
            await rd.funnels.get(ANA)
    assert calls == len(seen.events) > 3  # every event reached both hooks
    failures = [r for r in caplog.records if getattr(r, "event", None) == "hook_failed"]
    # The first failure with its traceback; the rest quietly, so a broken hook cannot flood logs.
    assert [r.levelno for r in failures] == [logging.ERROR] + [logging.DEBUG] * (calls - 1)
    assert failures[0].exc_info is not None and not failures[1].exc_info


async def test_an_async_hook_runs_as_a_task(fake: FakeRDStation, clock: VirtualClock) -> None:
    seen: list[str] = []

    async def hook(event: Any) -> None:
        await asyncio.sleep(0)
        seen.append(type(event).__name__)

    async with fake.client(clock=clock, retry=FAST, hooks=[hook]) as rd:
        await rd.funnels.get(ANA)
        for _ in range(5):
            await asyncio.sleep(0)
    assert "CallEnded" in seen and "AttemptEnded" in seen


@pytest.mark.parametrize("hooks", [123, "not-a-list", [object()]])
def test_hooks_must_be_callables(hooks: Any) -> None:
    with pytest.raises(ValueError, match="hook"):
        RDStation(access_token="t", hooks=hooks)


async def test_no_address_in_events_logs_or_messages_by_default(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rdfunnel")
    emails = [ANA, "nobody.here@example.com", "o'hara+x@example.com"]
    seen = Recorder()
    faults = Faults(json_503=0.3, drop=0.1, seed=3)
    async with FakeRDStation(clock=clock.monotonic, faults=faults) as fake:
        fake.add_contact(ANA)
        fake.add_contact("o'hara+x@example.com")
        async with fake.client(clock=clock, retry=FAST, timeout=5, hooks=[seen]) as rd:
            texts = []
            for email in emails:
                try:
                    await rd.funnels.update(email, lifecycle_stage="Client")
                except Exception as error:
                    texts.append(str(error))
            async with rd.funnels.update_many(
                [(email, FunnelUpdate(opportunity=True)) for email in emails]
            ) as run:
                async for result in run:
                    if result.error is not None:
                        texts.append(str(result.error))
                        assert result.contact == Contact.parse(result.contact)  # still there
    assert any("404" in text for text in texts) and len(texts) >= 2  # errors were met
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(vars(record)) for record in caplog.records]
    texts += [repr(attrs.asdict(event)) for event in seen.events]
    assert len(seen.events) > 20
    for email in emails:
        for text in texts:
            assert email not in text and email.split("@")[0] not in text, text


async def test_log_contacts_shows_them_in_full(fake: FakeRDStation, clock: VirtualClock) -> None:
    seen = Recorder()
    async with fake.client(clock=clock, retry=FAST, hooks=[seen], log_contacts=True) as rd:
        await rd.funnels.get(ANA)
    assert seen.of(CallStarted)[0].contact == ANA


async def test_errors_carry_the_contact_and_mask_it_in_messages(
    wire: aioresponses, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rdfunnel")
    url = "https://api.rd.services/platform/contacts/email:ana.maria@example.com/funnels/default"
    for _ in range(4):
        wire.get(url, exception=aiohttp.ClientConnectionError(f"reset while fetching {url}"))
    async with RDStation(access_token="t", retry=FAST, clock=clock) as rd:
        with pytest.raises(TransportError) as caught:
            await rd.funnels.get(ANA)
    assert caught.value.contact == Contact.email(ANA)
    assert ANA not in str(caught.value)
    assert "email:a***@example.com" in str(caught.value)
    [first, *_] = [r for r in caplog.records if getattr(r, "event", None) == "retry_scheduled"]
    assert ANA not in first.getMessage()
    assert (first.route, first.operation, first.retry, first.reason) == (  # type: ignore[attr-defined]
        ROUTE,
        "funnels.get",
        1,
        "TransportError",
    )


async def test_a_404s_error_carries_its_contact(fake: FakeRDStation, clock: VirtualClock) -> None:
    async with fake.client(clock=clock, retry=FAST) as rd:
        with pytest.raises(NotFoundError) as caught:
            await rd.funnels.get("nobody@example.com")
    assert caught.value.contact == Contact.email("nobody@example.com")


async def test_a_cancelled_attempt_is_still_told(clock: VirtualClock) -> None:
    async with FakeRDStation(clock=clock.monotonic) as fake:
        fake.add_contact(ANA)
        seen = Recorder()
        async with fake.client(clock=clock, retry=FAST, hooks=[seen]) as rd:
            await rd.account_info()  # the token first
            seen.events.clear()
            fake.faults = Faults(slow=1.0, slow_seconds=5)
            call = asyncio.ensure_future(rd.funnels.get(ANA))
            while not fake.stats.faults.get("slow"):  # noqa: ASYNC110 - the fake has no event
                await asyncio.sleep(0)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
    [attempt] = seen.of(AttemptEnded)
    assert (attempt.attempt, attempt.status, attempt.error) == (1, None, "CancelledError")
    [end] = seen.of(CallEnded)
    assert (end.attempts, end.error) == (1, "CancelledError")


async def test_events_no_hook_wants_are_never_built(
    fake: FakeRDStation, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    class OnlyAttempts(Recorder):
        rdfunnel_events = frozenset({AttemptEnded})

    built: list[str] = []
    original = CallStarted.__init__

    def counting_init(self: Any, **kwargs: Any) -> None:
        built.append("CallStarted")
        original(self, **kwargs)

    monkeypatch.setattr(CallStarted, "__init__", counting_init)
    seen = OnlyAttempts()
    async with fake.client(clock=clock, retry=FAST, hooks=[seen]) as rd:
        await rd.funnels.get(ANA)
    assert {type(event) for event in seen.events} == {AttemptEnded}
    assert built == []


async def test_log_contacts_shows_them_in_full_in_logs_too(
    wire: aioresponses, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rdfunnel")
    url = "https://api.rd.services/platform/contacts/email:ana.maria@example.com/funnels/default"
    wire.get(url, status=503)
    wire.get(url, payload={"lifecycle_stage": "Lead"})
    async with RDStation(access_token="t", retry=FAST, clock=clock, log_contacts=True) as rd:
        await rd.funnels.get(ANA)
    [retry] = [r for r in caplog.records if getattr(r, "event", None) == "retry_scheduled"]
    assert retry.contact == ANA  # type: ignore[attr-defined]


async def test_token_revocation_is_a_call_of_its_own(
    fake: FakeRDStation, clock: VirtualClock
) -> None:
    seen = Recorder()
    async with fake.client(clock=clock, retry=FAST, hooks=[seen]) as rd:
        await rd.funnels.get(ANA)
        await rd.revoke()
    operations = [event.operation for event in seen.of(CallEnded)]
    assert operations == ["token.refresh", "funnels.get", "token.revoke"]
    assert seen.of(CallStarted)[-1].route == "/auth/revoke"
