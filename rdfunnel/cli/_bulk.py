"""Running a change file through the bulk engine: progress bar, results journal, Ctrl-C."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import attrs
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..bulk import BulkSummary
from ..client import RDStation
from ..errors import NotAttemptedError, ValidationError
from ..models import Contact, ContactKey, FunnelUpdate
from ._common import Aborted, err
from ._rows import Journal, Row, count_rows, read_rows

__all__ = ["Outcome", "check_file", "resume_points", "run_bulk", "run_file"]

#: Rows printed one by one (bad, or refused by RD) before the rest are only counted: all are in
#: the journal.
MAX_PRINTED_PROBLEMS = 20


_NOTHING_SENT = BulkSummary(0, 0, 0, 0, {}, 0, 0.0)


@attrs.define
class Outcome:
    """What a run of a change file did: the engine's summary of the rows it sent, plus the rows
    that never reached it (bad, or already done in an earlier run)."""

    rows: int = 0
    in_file: int = 0
    bad_rows: int = 0
    skipped: int = 0
    interrupted: bool = False
    sent: BulkSummary = _NOTHING_SENT
    stopped_by: BaseException | None = None

    @property
    def failed(self) -> int:
        """Rows that did not succeed: bad, failed, or never sent because the run stopped."""
        return self.bad_rows + self.sent.failed + self.sent.not_attempted

    @property
    def errors(self) -> dict[str, int]:
        counts = Counter(self.sent.errors)
        if self.bad_rows:
            counts["ValidationError"] += self.bad_rows
        return dict(counts)

    @property
    def all_ok(self) -> bool:
        return not (self.failed or self.interrupted)


class _Problems:
    """Prints rows that failed (bad, or refused by RD) with their line, contact and reason, up
    to a limit, to the error console; then how many more, and where they all are."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.count = 0

    def report(self, row: Row, reason: str) -> None:
        self.count += 1
        if self.count <= MAX_PRINTED_PROBLEMS:
            who = f" ({row.contact})" if row.contact else ""
            self.console.print(f"[yellow]row {row.number}{who}: {reason}[/]", highlight=False)

    def close(self, journal: Path | None) -> None:
        more = self.count - MAX_PRINTED_PROBLEMS
        if more > 0:
            where = f": every one is in {journal}" if journal else ""
            self.console.print(
                f"[yellow]… and {more:,} more failed rows{where}[/]", highlight=False
            )


def resume_points(path: Path, done: set[str]) -> dict[ContactKey, int]:
    """For each contact with a row not done, the line of its first such row.

    A resumed run sends that row and every later row of the contact, in file order, so that
    the contact ends as the file says even if a later row was applied before an earlier one
    failed or was cut off.
    """
    points: dict[ContactKey, int] = {}
    for row in read_rows(path):
        if row.change is not None and row.id not in done:
            points.setdefault(row.change[0].key, row.number)
    return points


def check_file(path: Path, console: Console) -> Outcome:
    """Validate every row and report the bad ones; send nothing (``--dry-run``)."""
    outcome = Outcome()
    problems = _Problems(console)
    for row in read_rows(path):
        outcome.rows += 1
        if row.problem is not None:
            outcome.bad_rows += 1
            problems.report(row, row.problem)
    outcome.in_file = outcome.rows
    problems.close(None)
    return outcome


async def run_file(
    rd: RDStation,
    path: Path,
    *,
    journal: Journal,
    concurrency: int,
    max_rate: float | None,
    stop: asyncio.Event,
    console: Console,
) -> Outcome:
    """Send every row of ``path`` not already done in ``journal``; journal each as it completes.

    Setting ``stop`` stops reading new rows; requests in flight finish and are journaled.
    """
    outcome = Outcome(in_file=count_rows(path))
    problems = _Problems(console)
    rows_by_index: dict[int, Row] = {}
    indices = itertools.count()
    resume_from = resume_points(path, journal.done) if journal.done else None
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]:>7.1f}/s"),
        TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/]"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("updating", total=outcome.in_file, rate=0.0, ok=0, failed=0)

    def advance() -> None:
        elapsed = progress.tasks[0].elapsed or 0.0
        done = outcome.sent.total + outcome.bad_rows
        progress.update(
            task,
            advance=1,
            rate=done / elapsed if elapsed else 0.0,
            ok=outcome.sent.succeeded,
            failed=outcome.failed,
        )

    def keep_totals(summary: BulkSummary) -> None:
        outcome.sent = summary

    def changes() -> Iterator[tuple[Contact, FunnelUpdate]]:
        for row in read_rows(path):
            if stop.is_set():
                outcome.interrupted = True
                return
            outcome.rows += 1
            if row.change is None:
                outcome.bad_rows += 1
                problems.report(row, str(row.problem))
                journal.record(row, ValidationError(row.problem), 0)
                advance()
                continue
            if resume_from is not None:
                first = resume_from.get(row.change[0].key)
                if first is None or row.number < first:
                    outcome.skipped += 1  # done, and no earlier row of its contact is resent
                    progress.update(task, advance=1)
                    continue
            rows_by_index[next(indices)] = row
            yield row.change

    with progress:
        async with rd.funnels.update_many(
            changes(),
            concurrency=concurrency,
            max_rate=max_rate,
            on_progress=keep_totals,
        ) as run:
            async for result in run:
                row = rows_by_index.pop(result.index)
                if isinstance(result.error, NotAttemptedError):
                    advance()  # never sent: not journaled, so a resume sends it
                    continue
                journal.record(row, result.error, result.attempts)
                if result.error is not None:
                    problems.report(row, f"{type(result.error).__name__}: {result.error}")
                advance()
        outcome.sent = run.summary
        outcome.stopped_by = run.stopped_by
    problems.close(journal.path)
    return outcome


async def run_bulk(
    connect: Callable[[], RDStation],
    path: Path,
    journal: Journal,
    *,
    concurrency: int,
    max_rate: float | None,
) -> Outcome:
    """A change file's run as ``bulk`` and ``demo`` both start it, progress on stderr.

    The client is made inside the run, so that however the run ends, the journal is closed.
    """
    try:
        async with connect() as rd:
            return await run_interruptible(
                lambda stop: run_file(
                    rd,
                    path,
                    journal=journal,
                    concurrency=concurrency,
                    max_rate=max_rate,
                    stop=stop,
                    console=err,
                )
            )
    finally:
        journal.close()


async def run_interruptible(job: Callable[[asyncio.Event], Awaitable[Outcome]]) -> Outcome:
    """First Ctrl-C: stop reading rows and let requests in flight finish. Second: abort."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    aborted = False

    def interrupt() -> None:
        nonlocal aborted
        if stop.is_set():
            if task is not None and not aborted:
                aborted = True
                task.cancel()
            return
        stop.set()
        err.print("[yellow]stopping: finishing the requests in flight (Ctrl-C again to abort)[/]")

    try:
        loop.add_signal_handler(signal.SIGINT, interrupt)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows: Ctrl-C aborts
        return await job(stop)
    try:
        return await job(stop)
    except asyncio.CancelledError:
        if not aborted or task is None:
            raise
        task.uncancel()
        raise Aborted from None
    finally:
        loop.remove_signal_handler(signal.SIGINT)
