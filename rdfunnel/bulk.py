"""The bulk engine: many funnel updates in parallel, every one accounted for.

Generic over an "apply one change" coroutine that the client hands it, so it never imports the
client. ``concurrency`` workers share one scheduler that reads the input lazily, in input order,
at most a bounded window ahead of what has finished, so memory is bounded however long the input
is. Changes to one contact never overlap and land in input order: a change whose contact already
has one in flight is parked, without holding a worker, until that one finishes, and workers go on
with other contacts' changes meanwhile.
"""

from __future__ import annotations

import asyncio
import heapq
import weakref
from collections import Counter, deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from time import monotonic
from types import TracebackType
from typing import Any, Literal, Self

import attrs

from ._observe import Observer
from .errors import NotAttemptedError, RDStationError, ValidationError
from .events import BulkEnded, BulkProgress, BulkStarted
from .models import Contact, ContactKey, Funnel, FunnelUpdate
from .ratelimit import RateLimiter

__all__ = ["BulkResult", "BulkRun", "BulkSummary"]

Apply = Callable[[Contact, FunnelUpdate], Awaitable[tuple[Funnel, int]]]
Changes = (
    Iterable[tuple[Contact | str, FunnelUpdate]] | AsyncIterable[tuple[Contact | str, FunnelUpdate]]
)

#: How many changes beyond ``concurrency`` the run reads ahead by default (the larger of the
#: two): room to find other contacts' changes when the input is grouped by contact.
LOOKAHEAD_PER_WORKER = 8
MIN_LOOKAHEAD = 1024


@attrs.frozen
class BulkResult:
    """What became of one input item. ``index`` is its position in the input."""

    index: int
    contact: Contact | Any
    update: FunnelUpdate | Any
    ok: bool
    funnel: Funnel | None = None
    error: RDStationError | None = None
    attempts: int = 0


@attrs.frozen
class BulkSummary:
    """Totals for a run: ``total == succeeded + failed + not_attempted``.

    Once iteration has finished, ``total`` is also how many items were read from the input: after
    a stop, continue from there (``changes[summary.total:]``, or the same iterator).
    """

    total: int
    succeeded: int
    failed: int
    not_attempted: int
    errors: dict[str, int]
    retries: int
    elapsed: float


class BulkRun:
    """A running ``update_many``: iterate it for one :class:`BulkResult` per input item read.

    Use ``async with rd.funnels.update_many(...) as run: async for result in run: ...``, or a bare
    ``async for``. Leaving early cancels the workers; ``run.summary`` has the totals so far. A
    terminal error (``error.terminal``: a spent account quota, a refused authorization, a broken
    token store) stops the run: nothing more is read, and items read but not sent come back as
    :class:`NotAttemptedError`.
    """

    def __init__(
        self,
        changes: Changes,
        apply: Apply,
        *,
        concurrency: int = 16,
        limiter: RateLimiter | None = None,
        on_progress: Callable[[BulkSummary], object] | None = None,
        lookahead: int | None = None,
        observer: Observer | None = None,
        bulk_run: int = 0,
    ) -> None:
        _check_count("concurrency", concurrency, 1)
        if lookahead is None:
            lookahead = default_lookahead(concurrency)
        _check_count("lookahead", lookahead, 0)
        self._apply = apply
        self._concurrency = concurrency
        self._window = concurrency + lookahead
        self._limiter = limiter
        self._on_progress = on_progress
        #: The client's instrumentation, and this run's number for it.
        self._observer = observer or Observer()
        self._bulk_run = bulk_run
        self._input: Iterator[Any] | AsyncIterator[Any] = (
            aiter(changes) if isinstance(changes, AsyncIterable) else iter(changes)
        )
        self._pull_lock = asyncio.Lock()
        # Bounded, so a slow consumer holds the workers back instead of piling up results.
        self._results: asyncio.Queue[BulkResult | None] = asyncio.Queue(maxsize=concurrency)
        self._workers: list[asyncio.Task[None]] = []
        self._running = 0
        self._next_index = 0
        self._unfinished = 0  # read, without a result yet: in flight, ready or parked
        self._ready: list[tuple[int, _Item]] = []  # released by their contact's previous change
        self._parked: dict[ContactKey, deque[_Item]] = {}  # a contact with a change under way
        self._room = asyncio.Event()  # set when a change finishes
        self._ended = False  # no more input will be read
        self._stopped_by: RDStationError | None = None
        self._failure: BaseException | None = None
        self._iterator: weakref.ref[AsyncGenerator[BulkResult, None]] | None = None
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._succeeded = self._failed = self._not_attempted = self._retries = 0
        self._errors: Counter[str] = Counter()

    @property
    def stopped_by(self) -> RDStationError | None:
        """The terminal error that stopped the run early, or None."""
        return self._stopped_by

    @property
    def summary(self) -> BulkSummary:
        """Totals of the results delivered so far (all of them, once iteration has finished)."""
        end = self._finished_at or monotonic()
        return BulkSummary(
            total=self._succeeded + self._failed + self._not_attempted,
            succeeded=self._succeeded,
            failed=self._failed,
            not_attempted=self._not_attempted,
            errors=dict(self._errors),
            retries=self._retries,
            elapsed=end - self._started_at if self._started_at is not None else 0.0,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        iterator = self._iterator() if self._iterator is not None else None
        if iterator is not None:
            await iterator.aclose()  # runs its cleanup now, not whenever it is collected
        await self._shutdown()

    def __aiter__(self) -> AsyncGenerator[BulkResult, None]:
        if self._iterator is not None:
            raise RuntimeError("a bulk run can be iterated only once")
        iterator = self._iterate()
        # Weak, so that breaking out of a bare ``async for`` lets the loop close it at once.
        self._iterator = weakref.ref(iterator)
        return iterator

    async def _iterate(self) -> AsyncGenerator[BulkResult, None]:
        self._start()
        try:
            while (result := await self._results.get()) is not None:
                self._count(result)
                yield result
            if self._failure is not None:
                raise self._failure
        finally:
            await self._shutdown()

    def _start(self) -> None:
        if self._observer.wants(BulkStarted):
            event = BulkStarted(bulk_run=self._bulk_run, concurrency=self._concurrency)
            self._observer.emit(event)
        self._started_at = monotonic()
        self._running = self._concurrency
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._concurrency)]

    async def _shutdown(self) -> None:
        for task in self._workers:
            task.cancel()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._finished_at is None and self._started_at is not None:
            self._finished_at = monotonic()
            if self._observer.wants(BulkEnded):
                stopped = self._stopped_by or self._failure
                reason = None if stopped is None else type(stopped).__name__
                self._observer.emit(
                    BulkEnded(bulk_run=self._bulk_run, summary=self.summary, stop_reason=reason)
                )

    def _count(self, result: BulkResult) -> None:
        outcome: Literal["succeeded", "failed", "not_attempted"]
        if result.ok:
            self._succeeded += 1
            outcome = "succeeded"
        elif isinstance(result.error, NotAttemptedError):
            self._not_attempted += 1
            outcome = "not_attempted"
        else:
            self._failed += 1
            outcome = "failed"
        if result.error is not None:
            self._errors[type(result.error).__name__] += 1
        self._retries += max(result.attempts - 1, 0)
        if self._on_progress is not None:
            self._on_progress(self.summary)
        if self._observer.wants(BulkProgress):
            summary = self.summary
            event = BulkProgress(bulk_run=self._bulk_run, outcome=outcome, summary=summary)
            self._observer.emit(event)

    async def _work(self) -> None:
        try:
            while (item := await self._next()) is not None:
                result = await self._run_one(item)
                self._finish(item)
                await self._results.put(result)
        except Exception as exc:  # a bug here must end the run loudly, never hang the consumer
            self._fail(exc)
        self._running -= 1
        if self._running == 0:
            await self._results.put(None)

    async def _next(self) -> _Item | None:
        """The next change a worker may send now, or None when there will be none for it.

        A worker that gets None may stop: a parked change is released to the worker that
        finishes its contact's previous change.
        """
        async with self._pull_lock:
            while True:
                if self._ready:
                    return heapq.heappop(self._ready)[1]
                if self._ended:
                    return None
                if self._unfinished >= self._window:  # read far enough ahead: wait for room
                    self._room.clear()
                    await self._room.wait()
                    continue
                item = await self._read()
                if item is None:
                    continue
                if item.key is None:
                    return item  # bad input: its result is its error
                waiting = self._parked.get(item.key)
                if waiting is None:
                    self._parked[item.key] = deque()
                    return item
                waiting.append(item)  # behind its contact's change under way, holding no worker

    async def _read(self) -> _Item | None:
        """One more input item, validated; None when the input has ended (or broke)."""
        try:
            if isinstance(self._input, AsyncIterator):
                raw = await anext(self._input)
            else:
                raw = next(self._input)
        except (StopIteration, StopAsyncIteration):
            self._ended = True
            return None
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the run itself is being cancelled
            self._fail(exc)  # the input raised it: the input's failure, like any other
            return None
        except Exception as exc:  # the caller's input broke: stop, and raise it at the end
            self._fail(exc)
            return None
        item = _Item(self._next_index, raw)
        self._next_index += 1
        self._unfinished += 1
        try:
            item.contact, item.update = _validate(raw)
            item.key = item.contact.key
        except Exception as exc:  # whatever the item is, it fails alone
            item.error = (
                exc
                if isinstance(exc, ValidationError)
                else ValidationError(f"cannot read change {item.index}: {type(exc).__name__}")
            )
        return item

    def _fail(self, exc: BaseException) -> None:
        self._failure = self._failure or exc
        self._ended = True

    def _finish(self, item: _Item) -> None:
        """``item`` has its result: release its contact's next change, make room to read."""
        self._unfinished -= 1
        if item.key is not None:
            waiting = self._parked[item.key]
            if waiting:
                follower = waiting.popleft()
                heapq.heappush(self._ready, (follower.index, follower))
            else:
                del self._parked[item.key]
        self._room.set()

    async def _run_one(self, item: _Item) -> BulkResult:
        index, contact, update = item.index, item.contact, item.update
        if item.error is not None:
            return BulkResult(index, contact, update, ok=False, error=item.error)
        if self._limiter is not None and self._stopped_by is None:
            await self._limiter.acquire()
        if self._stopped_by is not None:
            return self._not_attempted_result(item)
        try:
            funnel, attempts = await self._apply(contact, update)
        except RDStationError as exc:
            if exc.terminal and self._stopped_by is None:
                self._stopped_by = exc
                self._ended = True  # read nothing more
            if self._stopped_by is not None and exc.attempts == 0:
                return self._not_attempted_result(item)  # never sent: the run has stopped
            return BulkResult(index, contact, update, ok=False, error=exc, attempts=exc.attempts)
        except Exception as exc:  # a bug must not lose the item: report it as its result
            unexpected = RDStationError(f"unexpected {type(exc).__name__}: {exc}")
            unexpected.__cause__ = exc
            return BulkResult(index, contact, update, ok=False, error=unexpected, attempts=1)
        return BulkResult(index, contact, update, ok=True, funnel=funnel, attempts=attempts)

    def _not_attempted_result(self, item: _Item) -> BulkResult:
        assert self._stopped_by is not None
        error = NotAttemptedError(self._stopped_by)
        return BulkResult(item.index, item.contact, item.update, ok=False, error=error)


class _Item:
    """One input item read, on its way to its result."""

    __slots__ = ("contact", "error", "index", "key", "update")

    def __init__(self, index: int, raw: Any) -> None:
        self.index = index
        pair = _is_pair(raw)
        self.contact: Any = raw[0] if pair else raw
        self.update: Any = raw[1] if pair else None
        self.error: ValidationError | None = None
        self.key: ContactKey | None = None


def default_lookahead(concurrency: int) -> int:
    """How far past ``concurrency`` a run reads ahead unless told otherwise."""
    return max(MIN_LOOKAHEAD, LOOKAHEAD_PER_WORKER * concurrency)


def _check_count(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValidationError(f"{name} must be a whole number >= {least}, got {value!r}")


def _is_pair(raw: Any) -> bool:
    return isinstance(raw, tuple | list) and len(raw) == 2


def _validate(raw: Any) -> tuple[Contact, FunnelUpdate]:
    if not _is_pair(raw):
        raise ValidationError(f"each change must be a (contact, FunnelUpdate) pair, got {raw!r}")
    contact, update = raw
    if not isinstance(update, FunnelUpdate):
        raise ValidationError(f"update must be a FunnelUpdate, got {update!r}")
    return Contact.parse(contact), update
