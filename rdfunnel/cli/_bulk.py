"""Running a change file through the bulk engine, with a progress bar and a results journal."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator
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
from ..errors import ValidationError
from ..models import Contact, FunnelUpdate
from ._rows import Journal, Row, count_rows, read_rows

__all__ = ["Outcome", "check_file", "run_file"]

#: Bad rows printed one by one before the rest are only counted (all are in the journal).
MAX_PRINTED_PROBLEMS = 50


_NOTHING_SENT = BulkSummary(0, 0, 0, 0, {}, 0, 0.0)


@attrs.define
class Outcome:
    """What a run of a change file did: the engine's summary of the rows it sent, plus the rows
    that never reached it (bad, or already done in an earlier run)."""

    rows: int = 0
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
    """Prints bad rows with their numbers, up to a limit, to the error console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.count = 0

    def report(self, row: Row) -> None:
        self.count += 1
        if self.count <= MAX_PRINTED_PROBLEMS:
            who = f" ({row.contact})" if row.contact else ""
            self.console.print(f"[yellow]row {row.number}{who}: {row.problem}[/]", highlight=False)
        elif self.count == MAX_PRINTED_PROBLEMS + 1:
            self.console.print("[yellow]… more bad rows: see the results file[/]")


def check_file(path: Path, console: Console) -> Outcome:
    """Validate every row and report the bad ones; send nothing (``--dry-run``)."""
    outcome = Outcome()
    problems = _Problems(console)
    for row in read_rows(path):
        outcome.rows += 1
        if row.problem is not None:
            outcome.bad_rows += 1
            problems.report(row)
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
    outcome = Outcome()
    problems = _Problems(console)
    rows_by_index: dict[int, Row] = {}
    indices = itertools.count()
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
    task = progress.add_task("updating", total=count_rows(path), rate=0.0, ok=0, failed=0)

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
            if row.number in journal.done:
                outcome.skipped += 1
                progress.update(task, advance=1)
                continue
            if row.change is None:
                outcome.bad_rows += 1
                problems.report(row)
                journal.record(row.number, row.contact, ValidationError(row.problem), 0)
                advance()
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
                journal.record(row.number, row.contact, result.error, result.attempts)
                advance()
        outcome.sent = run.summary
        outcome.stopped_by = run.stopped_by
    return outcome
