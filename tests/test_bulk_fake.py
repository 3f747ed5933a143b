"""The bulk engine against FakeRDStation over real sockets: faults, limits, tokens, cancellation.

Every change in these tests is told apart by its owner (``owner-<input index>@example.com``), so
the fake's applied-PUT log (``fake.puts``) says exactly which input item each applied PUT was.

What the fake does with a faulty request decides what a test may assert. HTML 5xx answers and
dropped connections happen in its gate, *before* the PUT body is read or applied, so such a failed
attempt never changes a contact. A slow answer waits in the gate and only *then* reads and
applies the PUT: the 10,000-change test holds slow answers for longer than the whole run, so
none of them lands while it runs (aiohttp.web does not cancel a handler whose client left; in
practice the late read then fails on the closed connection, but the test does not lean on that).
What no client can rule out is an answer lost *after* the PUT was applied (its timeout firing on
a busy machine): the retry then applies the same change again, right after itself. Hence the
ordering rule checked below: per contact, applied changes never go backwards in input order, and
a change may repeat only back to back.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import aiohttp
import pytest

from rdfunnel import BulkResult, BulkRun, FunnelUpdate, LifecycleStage, RetryPolicy
from rdfunnel.errors import (
    InvalidRefreshTokenError,
    NotAttemptedError,
    QuotaExceededError,
)
from rdfunnel.testing import FakeRDStation, Faults, Limits

from .conftest import VirtualClock


@pytest.fixture(autouse=True)
def _quiet_fake_server(caplog: pytest.LogCaptureFixture) -> None:
    """A slow answer whose client gave up fails reading the PUT body; aiohttp.web logs that."""
    caplog.set_level(logging.CRITICAL, logger="aiohttp.server")


FAST = RetryPolicy(max_retries=8, backoff_base=0.001, backoff_cap=0.01)
STAGES = tuple(LifecycleStage)

Change = tuple[str, FunnelUpdate]


def email(contact: int) -> str:
    """The fake's seeded contacts are ``contact-<n>@example.com``."""
    return f"contact-{contact}@example.com"


def change(index: int, contact: int) -> Change:
    """Input item ``index`` for ``contact``: every field set, the owner naming the index."""
    update = FunnelUpdate(
        lifecycle_stage=STAGES[index % 3],
        opportunity=index % 2 == 0,
        contact_owner_email=f"owner-{index}@example.com",
    )
    return email(contact), update


def index_of(put: Mapping[str, Any]) -> int:
    """The input index an applied PUT body came from."""
    owner = str(put["contact_owner_email"])
    return int(owner.removeprefix("owner-").partition("@")[0])


def shuffled_changes(count: int, contacts: int, seed: int) -> list[Change]:
    """``count`` changes spread evenly over ``contacts``, contacts in a seeded random order."""
    who = [i % contacts for i in range(count)]
    random.Random(seed).shuffle(who)
    return [change(index, contact) for index, contact in enumerate(who)]


def fields(update: FunnelUpdate) -> tuple[str, bool, str | None]:
    stage = update.lifecycle_stage
    assert isinstance(stage, LifecycleStage)
    assert isinstance(update.opportunity, bool)
    assert isinstance(update.contact_owner_email, str)
    return stage.value, update.opportunity, update.contact_owner_email


def stored(fake: FakeRDStation, contact: str) -> tuple[str, bool, str | None]:
    state = fake.contact(contact)
    return state.lifecycle_stage, state.opportunity, state.contact_owner_email


def by_contact(changes: Sequence[Change]) -> dict[str, list[int]]:
    """Input indices per contact, in input order."""
    indices: dict[str, list[int]] = defaultdict(list)
    for index, (contact, _) in enumerate(changes):
        indices[contact.lower()].append(index)
    return indices


def assert_applied_in_input_order(
    fake: FakeRDStation, changes: Sequence[Change], *, repeats: bool
) -> dict[str, list[int]]:
    """Per contact, the applied PUTs are that contact's own changes, never going backwards in
    input order; with ``repeats`` a change may be applied again right after itself (a retry
    after a lost answer), without it every change is applied at most once. Returns them."""
    mine = by_contact(changes)
    applied: dict[str, list[int]] = {}
    for contact, puts in fake.puts.items():
        indices = [index_of(put) for put in puts]
        assert set(indices) <= set(mine[contact.lower()]), contact
        assert indices == sorted(indices), f"{contact}: applied out of input order: {indices}"
        if not repeats:
            assert len(set(indices)) == len(indices), f"{contact}: applied twice: {indices}"
        for put, index in zip(puts, indices, strict=True):
            stage, opportunity, owner = fields(changes[index][1])
            assert dict(put) == {
                "lifecycle_stage": stage,
                "opportunity": opportunity,
                "contact_owner_email": owner,
            }
        applied[contact.lower()] = indices
    return applied


async def collect(run: BulkRun) -> list[BulkResult]:
    async with run:
        return [result async for result in run]


def _served_by_the_fake(task: asyncio.Task[Any]) -> bool:
    """The fake shares the test's loop: its aiohttp.web connection and request tasks stay."""
    code = getattr(task.get_coro(), "cr_code", None)
    path = str(getattr(code, "co_filename", ""))
    return os.path.basename(path).startswith("web_") and f"{os.sep}aiohttp{os.sep}" in path


async def client_tasks_left() -> list[asyncio.Task[Any]]:
    """The tasks still pending that are not the fake's nor this test's, after a few loop ticks
    (no real time): a bulk run that cleaned up after itself leaves none."""
    left: list[asyncio.Task[Any]] = []
    for _ in range(10):
        left = [
            task
            for task in asyncio.all_tasks()
            if task is not asyncio.current_task() and not _served_by_the_fake(task)
        ]
        if not left:
            break
        await asyncio.sleep(0)
    return left


# -- faults ----------------------------------------------------------------------------------


async def test_ten_thousand_changes_through_faults(clock: VirtualClock) -> None:
    """5% HTML 502s, 3% dropped connections, 2% answers slower than the client waits."""
    count, contacts = 10_000, 2_000
    changes = shuffled_changes(count, contacts, seed=11)
    # The client gives up on a slow answer at 0.5 s: short enough to keep the test quick, long
    # enough that a busy 2-core machine (client and fake share one loop) does not time out
    # ordinary answers wholesale. The fake holds slow answers past the end of the run.
    faults = Faults(html_502=0.05, drop=0.03, slow=0.02, slow_seconds=120, seed=5)
    async with (
        FakeRDStation(contacts=contacts, faults=faults) as fake,
        fake.client(clock=clock, retry=FAST, timeout=0.5) as rd,
    ):
        run = rd.funnels.update_many(changes, concurrency=64)
        results = await collect(run)

        # Exactly one result per input item.
        assert len(results) == count
        assert sorted(result.index for result in results) == list(range(count))
        # Every fault kind was met, and retried through (P(9 faults in a row) ~ 1e-9).
        stats = fake.stats
        assert {"html_502", "drop", "slow"} <= set(stats.faults)
        assert stats.faults["html_502"] > 0.03 * count
        failed = [result for result in results if not result.ok]
        assert failed == []
        assert run.summary.succeeded == count
        assert run.summary.retries >= stats.faults["html_502"]

        # Every success is the state on the fake.
        applied = assert_applied_in_input_order(fake, changes, repeats=True)
        by_index = {result.index: result for result in results}
        ok_by_contact: dict[str, list[int]] = defaultdict(list)
        for result in sorted(results, key=lambda result: result.index):
            assert result.funnel is not None
            contact, update = changes[result.index]
            stage, opportunity, owner = fields(update)
            assert result.funnel.lifecycle_stage is LifecycleStage(stage)
            assert (result.funnel.opportunity, result.funnel.contact_owner_email) == (
                opportunity,
                owner,
            )
            if result.ok:
                ok_by_contact[contact].append(result.index)
        assert len(applied) == contacts
        for contact, ok in ok_by_contact.items():
            assert set(ok) <= set(applied[contact])
            last = applied[contact][-1]
            # Nothing may land after a contact's last success but a change that failed
            # after one of its attempts was applied and its answer lost.
            assert last == ok[-1] or not by_index[last].ok
            assert stored(fake, contact) == fields(changes[last][1])


async def test_repeated_contacts_end_at_their_last_change(clock: VirtualClock) -> None:
    """Faults that never apply a PUT (5xx, dropped connections) and no lost answers: each
    contact's applied PUTs are exactly its changes, in input order, each once."""
    changes = shuffled_changes(2_000, 50, seed=3)
    faults = Faults(html_502=0.1, json_503=0.05, drop=0.05, seed=9)
    async with FakeRDStation(contacts=50, faults=faults) as fake:
        async with fake.client(clock=clock, retry=FAST, timeout=10) as rd:
            results = await collect(rd.funnels.update_many(changes, concurrency=32))
        assert all(result.ok for result in results)
        assert sum(fake.stats.faults.values()) > 0.1 * len(changes)
        applied = assert_applied_in_input_order(fake, changes, repeats=False)
        for contact, indices in by_contact(changes).items():
            assert applied[contact] == indices
            assert stored(fake, contact) == fields(changes[indices[-1]][1])


# -- rate limits -----------------------------------------------------------------------------


async def test_per_contact_quota_fails_those_items_fast(clock: VirtualClock) -> None:
    hot = range(10)  # contacts whose daily quota is spent before the run
    changes = [change(index, index % 100) for index in range(300)]
    async with FakeRDStation(
        contacts=100, limits=Limits(per_contact=3), clock=clock.monotonic
    ) as fake:
        async with fake.client(clock=clock, retry=FAST) as rd:
            for contact in hot:
                for _ in range(3):
                    await rd.funnels.get(email(contact))
            started_at, started = clock.now, time.monotonic()
            run = rd.funnels.update_many(changes, concurrency=8)
            results = await collect(run)
            real_seconds = time.monotonic() - started
        # Nobody waited for the quota: no virtual time passed, no sleep was even asked for.
        assert clock.now == started_at and clock.sleeps == []
        assert real_seconds < 10  # loose: a wait for the hint would be ~a day
        assert sorted(result.index for result in results) == list(range(300))
        for result in results:
            if result.index % 100 in hot:
                error = result.error
                assert isinstance(error, QuotaExceededError), result
                assert error.scope == "contact"
                assert error.retry_after is not None and error.retry_after > 86_000
                # The first change is sent once, never retried; the contact's later ones are
                # never sent: the client remembers the spent quota.
                assert result.attempts == (1 if result.index < 100 else 0)
            else:
                assert result.ok, result
        assert run.summary.errors == {"QuotaExceededError": 30}
        assert fake.stats.rate_limited == {"contact": 10}
        assert not {email(contact) for contact in hot} & set(fake.puts)


async def test_account_cap_pauses_and_everything_lands(clock: VirtualClock) -> None:
    count, rps, concurrency = 1_000, 100, 16
    changes = [change(index, index % 250) for index in range(count)]
    async with FakeRDStation(
        contacts=250, limits=Limits(account_rps=rps), clock=clock.monotonic
    ) as fake:
        async with fake.client(clock=clock, retry=FAST) as rd:
            started_at = clock.now
            results = await collect(rd.funnels.update_many(changes, concurrency=concurrency))
        assert all(result.ok for result in results)
        assert len(results) == count
        limited = fake.stats.rate_limited.get("account", 0)
        assert limited > 0  # the cap was met
        # Each 429 pauses every worker until the next window, once: at most the requests
        # already in flight are refused per window, and no item is refused twice.
        windows = clock.now - started_at + 1
        assert limited <= concurrency * windows
        assert limited < 0.2 * count
        assert max(result.attempts for result in results) <= 2
        assert fake.stats.count("funnels.put", 200) == count
        assert_applied_in_input_order(fake, changes, repeats=False)


@pytest.mark.parametrize("html_502", [0.0, 0.5], ids=["no-faults", "half-502s"])
async def test_max_rate_caps_the_run(clock: VirtualClock, html_502: float) -> None:
    """The run's ``max_rate`` counts every request it sends, retries included, in virtual time
    (the fake and the rate gate share the ``clock``; nothing sleeps for real)."""
    count, rate = 41, 20.0
    sent_at: list[float] = []

    async def on_request_start(*_: Any) -> None:
        sent_at.append(clock.now)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    changes = [change(index, index % 10) for index in range(count)]
    faults = Faults(html_502=html_502, seed=2)
    async with (
        FakeRDStation(contacts=10, clock=clock.monotonic, faults=faults) as fake,
        aiohttp.ClientSession(trace_configs=[trace]) as session,
        fake.client(clock=clock, retry=FAST, session=session) as rd,
    ):
        await rd.request("GET", "/marketing/account_info")  # the token first
        sent_at.clear()
        fake.reset_stats()
        started_at = clock.now
        results = await collect(rd.funnels.update_many(changes, concurrency=8, max_rate=rate))
        assert all(result.ok for result in results)
        sent = fake.stats.count("funnels.put")
    assert len(sent_at) == sent == count + sum(result.attempts - 1 for result in results)
    if html_502:
        assert sent > 1.5 * count  # retries were a good part of the traffic
    # Evenly spaced slots: the first at once, then one every 1 / rate, retries taking theirs.
    assert sent_at[0] == started_at
    assert sent_at[-1] - sent_at[0] >= (sent - 1) / rate - 1e-6
    for start in sent_at:  # never more than the rate in any one second
        assert sum(start <= when < start + 1 - 1e-6 for when in sent_at) <= rate


# -- laziness and cancellation ---------------------------------------------------------------


async def test_an_abandoned_million_change_generator(clock: VirtualClock) -> None:
    concurrency, wanted = 64, 2_000
    pulled = 0

    def million() -> Iterator[Change]:
        nonlocal pulled
        for index in range(1_000_000):
            pulled += 1
            yield change(index, index % 5_000)

    async with FakeRDStation(contacts=5_000) as fake, fake.client(clock=clock, retry=FAST) as rd:
        seen = 0
        run = rd.funnels.update_many(million(), concurrency=concurrency)
        async with run:
            async for result in run:
                assert result.ok
                seen += 1
                # Pulled ahead: at most one per worker and one per queued result.
                assert pulled - seen <= 2 * concurrency + 1
                if seen == wanted:
                    break
        assert seen == wanted
        assert pulled - seen <= 2 * concurrency + 1
        assert await client_tasks_left() == []
        sent = fake.stats.count("funnels.put")
        assert wanted <= sent <= pulled
        await asyncio.sleep(0.05)  # real time: nothing keeps sending behind our back
        assert fake.stats.count("funnels.put") == sent
        assert pulled - seen <= 2 * concurrency + 1


async def test_cancelling_the_consumer_leaves_nothing_behind(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    changes = [change(index, index % 500) for index in range(5_000)]
    got: list[BulkResult] = []
    halfway = asyncio.Event()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with FakeRDStation(contacts=500) as fake:
            async with fake.client(clock=clock, retry=FAST) as rd:

                async def consume() -> None:
                    async with rd.funnels.update_many(changes, concurrency=32) as run:
                        async for result in run:
                            got.append(result)
                            if len(got) == 500:
                                halfway.set()

                task = asyncio.create_task(consume())
                await halfway.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert 500 <= len(got) < len(changes)
                assert await client_tasks_left() == []

                # The client is still good, for one change and for a whole run.
                funnel = await rd.funnels.update(email(7), lifecycle_stage="Client")
                assert funnel.lifecycle_stage is LifecycleStage.CLIENT
                again = [change(index, index % 500) for index in range(200)]
                results = await collect(rd.funnels.update_many(again, concurrency=16))
                assert sorted(r.index for r in results) == list(range(200))
                assert all(result.ok for result in results)
            assert await client_tasks_left() == []
        gc.collect()
    complaints = [str(warning.message) for warning in caught]
    complaints += [record.getMessage() for record in caplog.records]
    assert not [text for text in complaints if "Unclosed" in text or "destroyed" in text]
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


# -- tokens ----------------------------------------------------------------------------------


async def test_revoking_the_refresh_token_stops_the_run(clock: VirtualClock) -> None:
    pulled = 0

    def source() -> Iterator[Change]:
        nonlocal pulled
        for index in range(20_000):
            pulled += 1
            yield change(index, index % 8)  # chains: most pulled items wait behind another

    async with FakeRDStation(contacts=8) as fake, fake.client(clock=clock, retry=FAST) as rd:
        run = rd.funnels.update_many(source(), concurrency=16)
        results: list[BulkResult] = []
        async with run:
            async for result in run:
                results.append(result)
                if len(results) == 300:
                    fake.revoke_all()
        stopped_by = run.stopped_by
        assert isinstance(stopped_by, InvalidRefreshTokenError)
        assert pulled < 20_000  # it stopped pulling the input
        # Every item pulled has exactly one result.
        assert sorted(result.index for result in results) == list(range(pulled))
        assert all(result.ok for result in results[:300])
        for result in results[300:]:
            if result.ok:
                continue  # answered before the revocation reached it
            error = result.error
            if isinstance(error, NotAttemptedError):
                assert error.reason is stopped_by and result.attempts == 0
            else:
                assert isinstance(error, InvalidRefreshTokenError), result
        summary = run.summary
        assert summary.total == pulled
        # 16 workers over 8 contacts: the changes in flight meet the refusal, and those waiting
        # behind them are reported as never sent.
        assert summary.failed >= 1 and summary.not_attempted >= 1
        assert summary.succeeded + summary.failed + summary.not_attempted == pulled
        assert fake.stats.count("auth.token", 401) == 1  # the refused token is not asked again
        # Afterwards the client fails at once with the same clear error.
        with pytest.raises(InvalidRefreshTokenError):
            await rd.funnels.get(email(0))
        assert fake.stats.count("auth.token", 401) == 1


async def test_an_expired_token_storm_costs_one_refresh(clock: VirtualClock) -> None:
    changes = [change(index, index % 300) for index in range(3_000)]
    async with FakeRDStation(contacts=300) as fake:
        async with fake.client(clock=clock, retry=FAST) as rd:
            run = rd.funnels.update_many(changes, concurrency=64)
            results: list[BulkResult] = []
            async with run:
                async for result in run:
                    results.append(result)
                    if len(results) == 1_000:
                        fake.expire_tokens()
        assert len(results) == len(changes) and all(result.ok for result in results)
        stats = fake.stats
        assert stats.grants == {"refresh": 2}  # the first token, and one for the storm
        assert 1 <= stats.count("funnels.put", 401) <= 64  # at most one per request in flight
        assert_applied_in_input_order(fake, changes, repeats=False)
