"""The bulk engine: many funnel updates in parallel, every one accounted for.

Generic over an "apply one change" coroutine that the client hands it, so it never imports the
client. Workers pull the input themselves, one item at a time and in input order, so memory is
bounded by the concurrency however long the input is. Changes to one contact are chained: each
waits for the one before it, so they never overlap and land in input order.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import Counter
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
from typing import Any, Self

import attrs

from .errors import (
    InvalidCredentialsError,
    InvalidRefreshTokenError,
    NotAttemptedError,
    RDStationError,
    ValidationError,
)
from .models import Contact, Funnel, FunnelUpdate
from .ratelimit import RateLimiter
from .tokens import TokenStoreError

__all__ = ["BulkResult", "BulkRun", "BulkSummary"]

Apply = Callable[[Contact, FunnelUpdate], Awaitable[tuple[Funnel, int]]]
Changes = (
    Iterable[tuple[Contact | str, FunnelUpdate]] | AsyncIterable[tuple[Contact | str, FunnelUpdate]]
)

#: Errors after which no other request can succeed: the run stops pulling input.
_TERMINAL = (InvalidRefreshTokenError, InvalidCredentialsError, TokenStoreError)


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
    """Totals for a run: ``total == succeeded + failed + not_attempted``."""

    total: int
    succeeded: int
    failed: int
    not_attempted: int
    errors: dict[str, int]
    retries: int
    elapsed: float


class BulkRun:
    """A running ``update_many``: iterate it for one :class:`BulkResult` per input item.

    Use ``async with rd.funnels.update_many(...) as run: async for result in run: ...``, or a bare
    ``async for``. Leaving early cancels the workers; ``run.summary`` has the totals so far.
    """

    def __init__(
        self,
        changes: Changes,
        apply: Apply,
        *,
        concurrency: int = 16,
        limiter: RateLimiter | None = None,
        on_progress: Callable[[BulkSummary], object] | None = None,
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValidationError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
        self._apply = apply
        self._concurrency = concurrency
        self._limiter = limiter
        self._on_progress = on_progress
        self._input: Iterator[Any] | AsyncIterator[Any] = (
            aiter(changes) if isinstance(changes, AsyncIterable) else iter(changes)
        )
        self._pull_lock = asyncio.Lock()
        # Bounded, so a slow consumer holds the workers back instead of piling up results.
        self._results: asyncio.Queue[BulkResult | None] = asyncio.Queue(maxsize=concurrency)
        self._workers: list[asyncio.Task[None]] = []
        self._running = 0
        self._next_index = 0
        self._tails: dict[tuple[str, str], asyncio.Event] = {}
        self._stopped_by: BaseException | None = None
        self._failure: BaseException | None = None
        self._iterator: weakref.ref[AsyncGenerator[BulkResult, None]] | None = None
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._succeeded = self._failed = self._not_attempted = self._retries = 0
        self._errors: Counter[str] = Counter()

    @property
    def stopped_by(self) -> BaseException | None:
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

    def _count(self, result: BulkResult) -> None:
        if result.ok:
            self._succeeded += 1
        elif isinstance(result.error, NotAttemptedError):
            self._not_attempted += 1
        else:
            self._failed += 1
        if result.error is not None:
            self._errors[type(result.error).__name__] += 1
        self._retries += max(result.attempts - 1, 0)
        if self._on_progress is not None:
            self._on_progress(self.summary)

    async def _work(self) -> None:
        try:
            while (item := await self._pull()) is not None:
                await self._results.put(await self._run_one(item))
        except Exception as exc:  # a bug here must end the run loudly, never hang the consumer
            self._failure = self._failure or exc
        self._running -= 1
        if self._running == 0:
            await self._results.put(None)

    async def _pull(self) -> _Item | None:
        """The next input item, validated and chained behind its contact's last change."""
        async with self._pull_lock:
            if self._stopped_by is not None or self._failure is not None:
                return None
            try:
                if isinstance(self._input, AsyncIterator):
                    raw = await anext(self._input)
                else:
                    raw = next(self._input)
            except (StopIteration, StopAsyncIteration):
                return None
            except Exception as exc:  # the caller's input broke: stop, and raise it at the end
                self._failure = exc
                return None
            item = _Item(self._next_index, raw)
            self._next_index += 1
            try:
                item.contact, item.update = _validate(raw)
            except ValidationError as exc:
                item.error = exc
                return item
            # Registered under the lock, so each contact's chain follows input order.
            item.key = (item.contact.kind, item.contact.value.lower())
            item.before = self._tails.get(item.key)
            item.done = self._tails[item.key] = asyncio.Event()
            return item

    async def _run_one(self, item: _Item) -> BulkResult:
        index, contact, update = item.index, item.contact, item.update
        if item.error is not None:
            return BulkResult(index, contact, update, ok=False, error=item.error)
        assert item.done is not None
        assert item.key is not None
        try:
            if item.before is not None:
                await item.before.wait()  # the contact's previous change goes first
            if self._limiter is not None and self._stopped_by is None:
                await self._limiter.acquire()
            if self._stopped_by is not None:
                error = NotAttemptedError(self._stopped_by)
                return BulkResult(index, contact, update, ok=False, error=error)
            try:
                funnel, attempts = await self._apply(contact, update)
            except RDStationError as exc:
                if isinstance(exc, _TERMINAL) and self._stopped_by is None:
                    self._stopped_by = exc
                return BulkResult(
                    index, contact, update, ok=False, error=exc, attempts=exc.attempts
                )
            except Exception as exc:  # a bug must not lose the item: report it as its result
                unexpected = RDStationError(f"unexpected {type(exc).__name__}: {exc}")
                unexpected.__cause__ = exc
                return BulkResult(index, contact, update, ok=False, error=unexpected, attempts=1)
            return BulkResult(index, contact, update, ok=True, funnel=funnel, attempts=attempts)
        finally:
            item.done.set()
            if self._tails.get(item.key) is item.done:
                del self._tails[item.key]


class _Item:
    """One pulled input item on its way through a worker."""

    __slots__ = ("before", "contact", "done", "error", "index", "key", "update")

    def __init__(self, index: int, raw: Any) -> None:
        self.index = index
        pair = _is_pair(raw)
        self.contact: Any = raw[0] if pair else raw
        self.update: Any = raw[1] if pair else None
        self.error: ValidationError | None = None
        self.key: tuple[str, str] | None = None
        self.before: asyncio.Event | None = None
        self.done: asyncio.Event | None = None


def _is_pair(raw: Any) -> bool:
    return isinstance(raw, tuple | list) and len(raw) == 2


def _validate(raw: Any) -> tuple[Contact, FunnelUpdate]:
    if not _is_pair(raw):
        raise ValidationError(f"each change must be a (contact, FunnelUpdate) pair, got {raw!r}")
    contact, update = raw
    if not isinstance(update, FunnelUpdate):
        raise ValidationError(f"update must be a FunnelUpdate, got {update!r}")
    return Contact.parse(contact), update
