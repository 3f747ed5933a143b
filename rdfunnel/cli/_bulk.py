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

from ..client import RDStation
from ..errors import NotAttemptedError, ValidationError
from ..models import Contact, FunnelUpdate
from ._rows import Journal, Row, count_rows, read_rows

__all__ = ["Outcome", "check_file", "run_file"]

#: Bad rows printed one by one before the rest are only counted (all are in the journal).
MAX_PRINTED_PROBLEMS = 50


@attrs.define
class Outcome:
    """What a run of a change file did, row by row, in totals."""

    rows: int = 0
    succeeded: int = 0
    failed: int = 0
    bad_rows: int = 0
    skipped: int = 0
    not_attempted: int = 0
    retries: int = 0
    elapsed: float = 0.0
    errors: Counter[str] = attrs.field(factory=Counter)
    interrupted: bool = False
    stopped_by: BaseException | None = None

    @property
    def all_ok(self) -> bool:
        return not (self.failed or self.bad_rows or self.not_attempted or self.interrupted)


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
        done = outcome.succeeded + outcome.failed + outcome.not_attempted + outcome.bad_rows
        progress.update(
            task,
            advance=1,
            rate=done / elapsed if elapsed else 0.0,
            ok=outcome.succeeded,
            failed=outcome.failed + outcome.bad_rows + outcome.not_attempted,
        )

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
                outcome.errors["ValidationError"] += 1
                problems.report(row)
                journal.record(row.number, row.contact, ValidationError(row.problem), 0)
                advance()
                continue
            rows_by_index[next(indices)] = row
            yield row.change

    with progress:
        async with rd.funnels.update_many(
            changes(), concurrency=concurrency, max_rate=max_rate
        ) as run:
            async for result in run:
                row = rows_by_index.pop(result.index)
                journal.record(row.number, row.contact, result.error, result.attempts)
                if result.ok:
                    outcome.succeeded += 1
                elif isinstance(result.error, NotAttemptedError):
                    outcome.not_attempted += 1
                else:
                    outcome.failed += 1
                if result.error is not None:
                    outcome.errors[type(result.error).__name__] += 1
                outcome.retries += max(result.attempts - 1, 0)
                advance()
        outcome.stopped_by = run.stopped_by
        outcome.elapsed = run.summary.elapsed
    return outcome
