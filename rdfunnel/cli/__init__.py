"""The ``rdfunnel`` command: bulk updates from a file, single funnels, login, the demo.

Exit status: 0 every row succeeded; 1 some rows failed or were bad; 2 usage or configuration
error; 3 authentication failed for good (log in again); 4 the account's quota is spent (resume
with --resume once it resets); 130 interrupted (resume with --resume).
"""

from __future__ import annotations

import functools
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

try:
    import click
    import rich  # noqa: F401 - the consoles of every command
except ImportError:  # pragma: no cover - the message is the behaviour
    sys.exit("the rdfunnel command needs its extra: pip install 'rdfunnel[cli]'")

from .._network import network_settings
from ..client import DEFAULT_BASE_URL, DEFAULT_CONNECTION_LIMIT
from ..errors import ValidationError
from ._bulk import Outcome, check_file, run_bulk
from ._common import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Settings,
    err,
    fail,
    out,
    run,
)
from ._funnel import funnel
from ._report import exit_status, report
from ._rows import Journal, JournalMismatchError, check_file_shape

__all__ = ["main"]


class _Command(click.Group):
    """The root group: Ctrl-C outside a bulk run's own handling exits 130, not click's 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)


@click.group(cls=_Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--client-id", envvar="RDSTATION_CLIENT_ID", help="[env: RDSTATION_CLIENT_ID]")
@click.option(
    "--client-secret", envvar="RDSTATION_CLIENT_SECRET", help="[env: RDSTATION_CLIENT_SECRET]"
)
@click.option(
    "--refresh-token",
    envvar="RDSTATION_REFRESH_TOKEN",
    help="seeds an empty token file [env: RDSTATION_REFRESH_TOKEN]",
)
@click.option(
    "--base-url",
    envvar="RDSTATION_BASE_URL",
    default=DEFAULT_BASE_URL,
    show_default=True,
    help="[env: RDSTATION_BASE_URL]",
)
@click.option(
    "--token-file",
    envvar="RDFUNNEL_TOKEN_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(click.get_app_dir("rdfunnel")) / "token.json",
    show_default=True,
    help="[env: RDFUNNEL_TOKEN_FILE]",
)
@click.option(
    "--proxy",
    metavar="URL",
    help="send every request through this HTTP proxy, e.g. http://proxy.example:3128 "
    "[default: HTTPS_PROXY, HTTP_PROXY and NO_PROXY from the environment]",
)
@click.version_option(package_name="rdfunnel")
@click.pass_context
def cli(ctx: click.Context, /, **options: Any) -> None:
    """Drive RD Station Marketing's contact funnel from the terminal."""
    try:
        network_settings(proxy=options["proxy"])  # a bad --proxy fails before anything starts
    except ValidationError as exc:
        fail(str(exc))
    ctx.obj = Settings(**options)


# -- bulk ------------------------------------------------------------------------------------


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(1, 512))
@click.option("--max-rate", type=click.FloatRange(min=0, min_open=True), help="requests/second")
@click.option(
    "--results",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL journal, one line per row [default: FILE.results.jsonl]",
)
@click.option("--resume", is_flag=True, help="skip rows the journal already records as done")
@click.option("--dry-run", is_flag=True, help="validate every row and send nothing")
@click.pass_obj
def bulk(
    settings: Settings,
    file: Path,
    concurrency: int,
    max_rate: float | None,
    results: Path | None,
    resume: bool,
    dry_run: bool,
) -> None:
    """Apply the changes in FILE (CSV, comma or semicolon separated, or JSONL) to the funnels.

    Columns (or JSON keys): email or uuid, lifecycle_stage, opportunity, contact_owner_email. An
    empty cell leaves a field unchanged; an owner of `null` (JSON null in JSONL) clears it.
    """
    try:
        problem = check_file_shape(file)
    except UnicodeDecodeError as exc:
        fail(f"{file} is not UTF-8 text ({exc.reason}): save it as UTF-8")
    if problem is not None:
        fail(f"{file}: {problem}")
    if dry_run:
        outcome = check_file(file, err)
        out.print(f"{outcome.rows} rows checked, {outcome.bad_rows} bad; nothing was sent")
        sys.exit(EXIT_FAILED if outcome.bad_rows else EXIT_OK)
    journal_path = results or file.with_name(file.name + ".results.jsonl")
    try:
        journal = Journal(journal_path, source=file, resume=resume)
    except (FileExistsError, JournalMismatchError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot open the results file {journal_path}: {exc.strerror or exc}")
    if journal.unreadable:
        err.print(
            f"[yellow]{journal_path}: skipped {journal.unreadable} unreadable line(s) (cut short "
            "or not UTF-8 JSON); their rows count as not done[/]",
            highlight=False,
        )
    # Room in the pool for every worker: none waits for a connection.
    limit = max(DEFAULT_CONNECTION_LIMIT, concurrency)
    connect = functools.partial(settings.client, connection_limit=limit)
    outcome = run(run_bulk(connect, file, journal, concurrency=concurrency, max_rate=max_rate))
    report(outcome, journal_path)
    sys.exit(exit_status(outcome))


# -- funnel get / set ------------------------------------------------------------------------

cli.add_command(funnel)


# -- auth ------------------------------------------------------------------------------------


@cli.group()
def auth() -> None:
    """Authorize rdfunnel with RD Station, check or revoke the saved token."""


@auth.command("login")
@click.option(
    "--port",
    default=8976,
    show_default=True,
    help="local callback port (0: any); the RD app must list http://127.0.0.1:PORT/callback",
)
@click.option("--open/--no-open", "open_browser", default=True, help="open the browser")
@click.option("--timeout", default=300.0, show_default=True, help="seconds to wait")
@click.pass_obj
def auth_login(settings: Settings, port: int, open_browser: bool, timeout: float) -> None:
    """Authorize in the browser; the token is saved to the token file.

    rdfunnel listens on http://127.0.0.1:PORT/callback (8976 by default) for RD's answer: that
    URL must be registered as a redirect URI of your app in RD Station.
    """
    from ._login import LoginError, login

    client_id, client_secret = settings.app()

    def show(url: str, callback: str) -> None:
        err.print(
            f"listening for RD's answer on {callback}: your RD app must have it registered as "
            "a redirect URI",
            highlight=False,
        )
        err.print("[yellow]Open this URL to authorize rdfunnel:[/]")
        click.echo(url)

    try:
        run(
            login(
                client_id=client_id,
                client_secret=client_secret,
                base_url=settings.base_url,
                store=settings.store(),
                network=settings.network,
                port=port,
                open_browser=open_browser,
                show=show,
                wait=timeout,
            )
        )
    except LoginError as exc:
        fail(str(exc), EXIT_AUTH)
    out.print(f"logged in; token saved to {settings.token_file}", highlight=False)


@auth.command("status")
@click.pass_obj
def auth_status(settings: Settings) -> None:
    """Show the saved token (masked), its expiry, and whether RD accepts it now."""

    async def status() -> None:
        token = await settings.store().load()
        out.print(f"token file: {settings.token_file}", highlight=False)
        if token is None:
            if not settings.refresh_token:
                fail(f"no token in {settings.token_file}; run `rdfunnel auth login`", EXIT_AUTH)
            out.print("no token saved yet: the refresh token given will be used")
        else:
            # The last characters tell tokens apart; RD's JWTs all begin alike.
            out.print(f"access token: …{token.access_token[-4:]} (masked)", highlight=False)
            expiry = token.expires_at.isoformat() if token.expires_at else "unknown"
            out.print(f"expires at: {expiry}", highlight=False)
        async with settings.client() as rd:
            info = await rd.account_info()
        out.print(f"[green]RD accepts it:[/] account {info.get('name', '?')!r}", highlight=False)

    run(status())


@auth.command("revoke")
@click.pass_obj
def auth_revoke(settings: Settings) -> None:
    """Revoke the saved authorization at RD and delete the token file."""

    async def revoke() -> None:
        async with settings.client() as rd:
            await rd.revoke()

    run(revoke())
    settings.token_file.unlink(missing_ok=True)
    out.print("authorization revoked; token file removed")


# -- demo and fake server --------------------------------------------------------------------


@cli.command()
@click.option("--contacts", default=3000, show_default=True, type=click.IntRange(10, 100_000))
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1, 512))
@click.option("--keep", is_flag=True, help="keep the demo's folder (changes, results, token)")
def demo(contacts: int, concurrency: int, keep: bool) -> None:
    """Run the whole job against an embedded fake RD Station: no account needed.

    Its files live in a temporary folder, removed at the end unless --keep is given.
    """
    from ._demo import demo_fake, prepare_demo

    async def main() -> tuple[Outcome, Path, int]:
        async with demo_fake(contacts) as fake:
            setup = await prepare_demo(fake, contacts, err)
            folders.append(setup.folder)
            journal = Journal(setup.results, source=setup.changes, resume=False)
            outcome = await run_bulk(
                lambda: setup.client(fake),
                setup.changes,
                journal,
                concurrency=concurrency,
                max_rate=None,
            )
            return outcome, setup.results, setup.refreshes

    folders: list[Path] = []
    try:
        outcome, results, refreshes = run(main())
        report(outcome, results if keep else None, refreshes)
        if not keep:
            out.print("(the demo's files were removed; pass --keep to keep them)")
    finally:
        if not keep:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
    sys.exit(EXIT_INTERRUPTED if outcome.interrupted else EXIT_OK)


@cli.command(
    "fake-server", context_settings={"ignore_unknown_options": True}, add_help_option=False
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def fake_server(args: tuple[str, ...]) -> None:
    """Serve the fake RD Station and print the environment that points rdfunnel at it.

    The environment names a throwaway token file, so the fake's token never lands in your real
    account's token file. Options: rdfunnel fake-server --help.
    """
    from ..testing.__main__ import main as serve

    sys.exit(serve(["--print-env", *args]))


def main() -> None:
    """The console script's entry point."""
    # The command says what went wrong itself; the library's records would say it a second time.
    logging.getLogger("rdfunnel").addHandler(logging.NullHandler())
    cli(prog_name="rdfunnel")
