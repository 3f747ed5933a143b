"""The bulk engine on its own, driven by a stand-in "apply one change" coroutine."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from rdfunnel import (
    BulkResult,
    BulkRun,
    Contact,
    Funnel,
    FunnelUpdate,
    LifecycleStage,
    LocalRateLimiter,
)
from rdfunnel.errors import (
    InvalidRefreshTokenError,
    NotAttemptedError,
    NotFoundError,
    RDStationError,
    ServerError,
    ValidationError,
)

from .conftest import VirtualClock

CLIENT = FunnelUpdate(lifecycle_stage=LifecycleStage.CLIENT)


class StandIn:
    """Applies changes in memory, with a little shuffling so completions interleave."""

    def __init__(self, seed: int = 0) -> None:
        self.random = random.Random(seed)
        self.applied: dict[str, list[FunnelUpdate]] = defaultdict(list)
        self.in_flight: set[str] = set()
        self.overlaps = 0
        self.calls = 0
        self.fail: dict[str, RDStationError] = {}

    async def __call__(self, contact: Contact, update: FunnelUpdate) -> tuple[Funnel, int]:
        self.calls += 1
        key = contact.value.lower()
        if key in self.in_flight:
            self.overlaps += 1
        self.in_flight.add(key)
        try:
            for _ in range(self.random.randrange(4)):
                await asyncio.sleep(0)
            if key in self.fail:
                error = self.fail[key]
                error.attempts = 2
                raise error
            self.applied[key].append(update)
            stage = update.lifecycle_stage
            return Funnel(lifecycle_stage=stage or None), 1
        finally:
            self.in_flight.discard(key)


def changes(n: int, contacts: int | None = None) -> Iterator[tuple[str, FunnelUpdate]]:
    stages = list(LifecycleStage)
    for i in range(n):
        who = i % contacts if contacts else i
        yield f"c{who}@example.com", FunnelUpdate(lifecycle_stage=stages[i % 3])


async def no_task_left() -> bool:
    """True when, within a few loop ticks (no real time), only the test's own task is left."""
    for _ in range(10):
        if not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
            return True
        await asyncio.sleep(0)
    return False


async def collect(run: BulkRun) -> list[BulkResult]:
    async with run:
        return [result async for result in run]


async def test_exactly_one_result_per_item_whatever_fails() -> None:
    apply = StandIn()
    apply.fail["c3@example.com"] = NotFoundError(404)
    apply.fail["c7@example.com"] = ServerError(502)
    items: list[Any] = list(changes(50))
    items[10] = ("not a contact", CLIENT)
    items[11] = ("c11@example.com", {"lifecycle_stage": "Client"})
    items[12] = "just a string"
    results = await collect(BulkRun(items, apply, concurrency=8))
    assert sorted(r.index for r in results) == list(range(50))
    by_index = {r.index: r for r in results}
    assert isinstance(by_index[3].error, NotFoundError) and by_index[3].attempts == 2
    assert isinstance(by_index[7].error, ServerError)
    for bad in (10, 11, 12):
        assert isinstance(by_index[bad].error, ValidationError) and by_index[bad].attempts == 0
    assert by_index[10].contact == "not a contact"
    assert by_index[0].contact == Contact.email("c0@example.com") and by_index[0].ok
    assert apply.calls == 47  # the three bad items were never sent


async def test_summary_adds_up(clock: VirtualClock) -> None:
    apply = StandIn()
    apply.fail["c1@example.com"] = ServerError(503)
    progress: list[int] = []
    run = BulkRun(
        [*changes(5), ("bad", CLIENT)],
        apply,
        concurrency=2,
        on_progress=lambda summary: progress.append(summary.total),
    )
    await collect(run)
    summary = run.summary
    assert (summary.total, summary.succeeded, summary.failed, summary.not_attempted) == (6, 4, 2, 0)
    assert summary.errors == {"ServerError": 1, "ValidationError": 1}
    assert summary.retries == 1
    assert progress == [1, 2, 3, 4, 5, 6]


async def test_changes_to_one_contact_never_overlap_and_keep_input_order() -> None:
    apply = StandIn(seed=3)
    items = list(changes(3000, contacts=37))
    results = await collect(BulkRun(items, apply, concurrency=32))
    assert len(results) == 3000 and all(r.ok for r in results)
    assert apply.overlaps == 0
    expected: dict[str, list[FunnelUpdate]] = defaultdict(list)
    for contact, update in items:
        expected[contact.lower()].append(update)
    assert apply.applied == expected


async def test_emails_differing_in_case_are_one_contact() -> None:
    apply = StandIn(seed=1)
    items = [("Ana@Example.com", CLIENT), ("ana@example.com", CLIENT)] * 50
    await collect(BulkRun(items, apply, concurrency=10))
    assert apply.overlaps == 0


async def test_input_is_pulled_lazily() -> None:
    pulled = 0

    def endless() -> Iterator[tuple[str, FunnelUpdate]]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield f"c{i}@example.com", CLIENT

    run = BulkRun(endless(), StandIn(), concurrency=16)
    seen = 0
    async with run:
        async for _ in run:
            seen += 1
            assert pulled - seen <= 2 * 16 + 1
            if seen == 2000:
                break
    assert seen == 2000
    assert await no_task_left()


async def test_async_iterables_work() -> None:
    async def source() -> AsyncIterator[tuple[str, FunnelUpdate]]:
        for item in changes(100):
            await asyncio.sleep(0)
            yield item

    results = await collect(BulkRun(source(), StandIn(), concurrency=4))
    assert sorted(r.index for r in results) == list(range(100))


async def test_breaking_out_of_a_bare_async_for_leaves_no_task() -> None:
    run = BulkRun(changes(1000), StandIn(), concurrency=8)
    async for result in run:
        if result.index >= 0:
            break
    assert await no_task_left()  # the abandoned iterator is closed by the loop's finalizer


async def test_cancelling_the_consumer_cancels_the_workers() -> None:
    started = asyncio.Event()

    async def slow(contact: Contact, update: FunnelUpdate) -> tuple[Funnel, int]:
        started.set()
        await asyncio.Event().wait()  # never answers
        raise AssertionError

    async def consume() -> None:
        async with BulkRun(changes(100), slow, concurrency=4) as run:
            async for _ in run:
                pass

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await no_task_left()


async def test_a_terminal_auth_error_stops_the_run() -> None:
    pulled = 0
    all_pulled = asyncio.Event()
    refused = asyncio.Event()

    async def apply(contact: Contact, update: FunnelUpdate) -> tuple[Funnel, int]:
        if contact.value == "c1@example.com":
            await all_pulled.wait()
            refused.set()
            error = InvalidRefreshTokenError(401, error_types=("INVALID_REFRESH_TOKEN",))
            error.attempts = 1  # sent, answered 401, and the refresh after it refused
            raise error
        await refused.wait()  # still in flight when the refresh token is refused
        return Funnel(), 1

    def source() -> Iterator[tuple[str, FunnelUpdate]]:
        nonlocal pulled
        for item in changes(10_000, contacts=4):
            pulled += 1
            if pulled == 8:
                all_pulled.set()
            yield item

    run = BulkRun(source(), apply, concurrency=8, lookahead=4)
    results = {r.index: r for r in await collect(run)}
    assert isinstance(run.stopped_by, InvalidRefreshTokenError)
    # Read up to the window (8 workers + 4 ahead), then nothing more after the stop:
    assert pulled == 12 and sorted(results) == list(range(12))
    assert [i for i, r in results.items() if r.ok] == [0, 2, 3]  # already sent: they finish
    assert isinstance(results[1].error, InvalidRefreshTokenError)
    # Read, parked behind their contact's previous change, never sent:
    for index in range(4, 12):
        error = results[index].error
        assert isinstance(error, NotAttemptedError) and error.reason is run.stopped_by
        assert results[index].attempts == 0
    summary = run.summary
    assert (summary.succeeded, summary.failed, summary.not_attempted, summary.total) == (
        3,
        1,
        8,
        12,
    )


async def test_a_broken_input_is_raised_after_the_results_it_gave() -> None:
    def source() -> Iterator[tuple[str, FunnelUpdate]]:
        yield from changes(5)
        raise OSError("disk went away")

    run = BulkRun(source(), StandIn(), concurrency=2)
    seen: list[int] = []

    async def consume() -> None:
        async for result in run:
            seen.append(result.index)

    with pytest.raises(OSError, match="disk went away"):
        await consume()
    assert sorted(seen) == [0, 1, 2, 3, 4]


async def test_the_limiter_spaces_the_first_sends(clock: VirtualClock) -> None:
    sent_at: list[float] = []

    async def apply(contact: Contact, update: FunnelUpdate) -> tuple[Funnel, int]:
        sent_at.append(clock.now)
        return Funnel(), 1

    await collect(
        BulkRun(changes(11), apply, concurrency=4, limiter=LocalRateLimiter(5, clock=clock))
    )
    # Spaced 0.2 s apart, and never more than 5 within 1.01 s (the limiter's guard window).
    assert sent_at[-1] - sent_at[0] == pytest.approx(2.02)


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, "8"])
def test_concurrency_must_be_a_positive_whole_number(concurrency: Any) -> None:
    with pytest.raises(ValidationError, match="concurrency"):
        BulkRun([], StandIn(), concurrency=concurrency)


async def test_a_run_is_iterated_once() -> None:
    run = BulkRun([], StandIn())
    assert [r async for r in run] == []
    with pytest.raises(RuntimeError, match="only once"):
        async for _ in run:
            pass
