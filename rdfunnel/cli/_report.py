"""How a bulk run of a change file ends: the summary table, the exit status."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from rich.table import Table

from ..errors import AuthenticationError, QuotaExceededError
from ..tokens import TokenStoreError
from ._bulk import Outcome
from ._common import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_QUOTA,
    EXIT_USAGE,
    LOGIN_AGAIN,
    err,
    out,
    refused,
)

__all__ = ["exit_status", "report"]


def exit_status(outcome: Outcome) -> int:
    if isinstance(outcome.stopped_by, AuthenticationError):
        return EXIT_AUTH
    if isinstance(outcome.stopped_by, QuotaExceededError):
        return EXIT_QUOTA
    if isinstance(outcome.stopped_by, TokenStoreError):
        return EXIT_USAGE
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if outcome.all_ok else EXIT_FAILED


def report(outcome: Outcome, journal: Path | None, refreshes: int | None = None) -> None:
    table = Table(title="rdfunnel bulk run", show_header=False)
    table.add_row("rows in the file", f"{outcome.in_file:,}")
    if outcome.rows != outcome.in_file:
        table.add_row("rows read", f"{outcome.rows:,}")
    table.add_row("updated", f"[green]{outcome.sent.succeeded:,}[/]")
    if outcome.skipped:
        table.add_row("already done (skipped)", f"{outcome.skipped:,}")
    for name, count in sorted(outcome.errors.items(), key=lambda item: -item[1]):
        table.add_row(f"failed: {name}", f"[red]{count:,}[/]")
    table.add_row("retries", f"{outcome.sent.retries:,}")
    if refreshes is not None:
        table.add_row("token refreshes", f"{refreshes:,}")
    elapsed = outcome.sent.elapsed
    rate = (outcome.sent.succeeded + outcome.sent.failed) / elapsed if elapsed else 0.0
    table.add_row("elapsed", f"{elapsed:.1f} s")
    table.add_row("throughput", f"{rate:,.0f} updates/s")
    out.print(table)
    stopped_by = outcome.stopped_by
    if isinstance(stopped_by, QuotaExceededError):
        err.print(f"[red]stopped early:[/] {quota_spent(stopped_by)}", highlight=False)
    elif isinstance(stopped_by, AuthenticationError):
        err.print(f"[red]stopped early:[/] {refused(stopped_by)}; {LOGIN_AGAIN}", highlight=False)
    elif stopped_by is not None:
        err.print(f"[red]stopped early:[/] {stopped_by}", highlight=False)
    if outcome.interrupted:
        err.print("[yellow]interrupted: run again with --resume to finish the job[/]")
    if journal is not None:
        out.print(f"results: {journal}", highlight=False)


def quota_spent(error: QuotaExceededError) -> str:
    wait = error.retry_after or 0.0
    when = datetime.now().astimezone() + timedelta(seconds=wait)
    return (
        f"the account's API quota is spent; RD asks to wait {wait / 3600:.1f} h, until about "
        f"{when:%Y-%m-%d %H:%M %Z}. Rows not sent are not in the results file: run the same "
        "command with --resume then"
    )
