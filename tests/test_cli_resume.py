"""``rdfunnel bulk --resume`` leaves RD as the file says, and the messages a user reads.

Subprocesses against a FakeRDStation, through :class:`tests.test_cli.Cli` (which also checks that
no secret is ever printed).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rdfunnel.cli._rows import read_rows
from rdfunnel.testing import FakeRDStation, Faults, Limits

from .test_cli import (
    AUTH,
    FAILED,
    INTERRUPTED,
    OK,
    OWNERS,
    USAGE,
    Cli,
    journal,
    wait_for_lines,
    write,
)

QUOTA = 4


@pytest.fixture
async def fake() -> AsyncIterator[FakeRDStation]:
    async with FakeRDStation(contacts=20, users=OWNERS) as server:
        yield server


@pytest.fixture
def cli(fake: FakeRDStation, tmp_path: Path) -> Cli:
    return Cli(fake, tmp_path)


def results_of(changes: Path) -> Path:
    return changes.with_name(changes.name + ".results.jsonl")


def write_journal(changes: Path, entries: list[dict[str, Any]]) -> Path:
    """A journal as an earlier run would have left it."""
    path = results_of(changes)
    header = {"rdfunnel_journal": 2, "file": str(changes.resolve())}
    path.write_text("".join(json.dumps(line) + "\n" for line in [header, *entries]))
    return path


def ids(changes: Path) -> dict[int, str]:
    return {row.number: row.id for row in read_rows(changes) if row.id is not None}


def stage(fake: FakeRDStation, email: str) -> str:
    return fake.contact(email).lifecycle_stage


# -- the resume invariant --------------------------------------------------------------------


async def test_a_resume_never_leaves_an_older_row_over_a_newer_one(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    ana, bob = "contact-1@example.com", "contact-2@example.com"
    changes = write(tmp_path / "changes.csv", f"email,lifecycle_stage\n{ana},Client\n{bob},Lead\n")
    with changes.open("a") as handle:
        handle.write(f"{ana},Lead\n")
    row = ids(changes)
    # As a first run leaves it: ana's first change failed (a 429), her second one landed.
    write_journal(
        changes,
        [
            {"row": 2, "id": row[2], "contact": ana, "ok": False, "error": "RateLimitError"},
            {"row": 3, "id": row[3], "contact": bob, "ok": True, "attempts": 1},
            {"row": 4, "id": row[4], "contact": ana, "ok": True, "attempts": 1},
        ],
    )
    result = await cli("bulk", str(changes), "--resume")

    assert result.code == OK, result.stderr
    assert stage(fake, ana) == "Lead"  # her rows again, in file order: the last one wins
    assert [put["lifecycle_stage"] for put in fake.puts[ana]] == ["Client", "Lead"]
    assert bob not in fake.puts  # done, and nothing of his before it was resent


async def test_a_contact_refused_by_its_quota_is_resent_in_file_order(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    ana, bob = "contact-1@example.com", "contact-2@example.com"
    changes = write(
        tmp_path / "changes.csv", f"email,lifecycle_stage\n{ana},Client\n{bob},Lead\n{ana},Lead\n"
    )
    fake.limits = Limits(per_contact=0)  # every contact's daily quota is spent
    first = await cli("bulk", str(changes))
    assert first.code == FAILED
    assert f"row 2 ({ana}): QuotaExceededError" in first.stderr  # refused rows are listed
    assert f"row 3 ({bob}): QuotaExceededError" in first.stderr

    fake.limits = Limits()
    second = await cli("bulk", str(changes), "--resume")

    assert second.code == OK, second.stderr
    assert stage(fake, ana) == "Lead" and stage(fake, bob) == "Lead"


async def test_kill_9_at_random_points_then_resume_leaves_every_contact_as_the_file_says(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    rng = random.Random(14)
    contacts = [f"contact-{index}@example.com" for index in range(20)]
    stages = ("Lead", "Qualified Lead", "Client")
    lines = [
        f"{rng.choice(contacts)},{rng.choice(stages)},{rng.choice(['true', 'false', ''])}"
        for _ in range(240)
    ]
    changes = write(
        tmp_path / "changes.csv", "email,lifecycle_stage,opportunity\n" + "\n".join(lines) + "\n"
    )
    results = results_of(changes)
    before = {email: fake.contact(email) for email in contacts}
    fake.faults = Faults(json_503=0.03, early_expiry=0.02, latency=0.01, seed=3)

    for attempt in range(5):
        args = ["bulk", str(changes), "--concurrency", "4"]
        process = await cli.start(*args, *(["--resume"] if attempt else []))
        target = len(journal_lines(results)) + rng.randint(1, 30)
        async with asyncio.timeout(30):
            # Another process writes the journal: polling is the only way to see it grow.
            while len(journal_lines(results)) < target and process.returncode is None:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
    final = await cli("bulk", str(changes), "--resume", "--concurrency", "4")
    assert final.code in (OK, FAILED), final.stderr

    last = {entry["id"]: entry for entry in journal(results, keep_ids=True) if "id" in entry}
    for email in contacts:
        rows = [row for row in read_rows(changes) if row.change and row.contact == email]
        intent = {"lifecycle_stage": before[email].lifecycle_stage}
        intent["opportunity"] = before[email].opportunity
        for row in rows:
            assert row.change is not None
            update = row.change[1]
            intent["lifecycle_stage"] = str(update.lifecycle_stage)
            if isinstance(update.opportunity, bool):
                intent["opportunity"] = update.opportunity
        state = fake.contact(email)
        matches = (state.lifecycle_stage, state.opportunity) == tuple(intent.values())
        failed = [row.number for row in rows if not last.get(row.id, {"ok": False})["ok"]]
        assert matches or failed, f"{email}: silently left as {state} against {intent}"


def journal_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


# -- rows known by their content -------------------------------------------------------------


async def test_editing_the_file_then_resuming_sends_exactly_the_rows_not_applied(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    original = (
        "email,lifecycle_stage\n"
        "contact-1@example.com,Client\n"
        "contact-2@example.com,Customer\n"  # bad: fixed below
        "contact-3@example.com,Client\n"  # deleted below
        "contact-4@example.com,Client\n"
    )
    changes = write(tmp_path / "changes.csv", original)
    first = await cli("bulk", str(changes))
    assert first.code == FAILED
    sent_before = {email: len(puts) for email, puts in fake.puts.items()}

    edited = (
        "email,lifecycle_stage\n"
        "contact-1@example.com,Client\n"
        "contact-2@example.com,Client\n"
        "contact-4@example.com,Client\n"
        "contact-5@example.com,Lead\n"
    )
    changes.write_text(edited)
    second = await cli("bulk", str(changes), "--resume")

    assert second.code == OK, second.stderr
    resent = {email: len(puts) - sent_before.get(email, 0) for email, puts in fake.puts.items()}
    assert {email: count for email, count in resent.items() if count} == {
        "contact-2@example.com": 1,
        "contact-5@example.com": 1,
    }


async def test_a_journal_of_another_file_is_refused(cli: Cli, tmp_path: Path) -> None:
    one = write(tmp_path / "one.csv", "email,lifecycle_stage\ncontact-1@example.com,Client\n")
    other = write(tmp_path / "other.csv", "email,lifecycle_stage\ncontact-2@example.com,Client\n")
    assert (await cli("bulk", str(one), "--results", str(tmp_path / "r.jsonl"))).code == OK

    result = await cli("bulk", str(other), "--results", str(tmp_path / "r.jsonl"), "--resume")

    assert result.code == USAGE
    assert "holds the results of" in result.stderr and "one.csv" in result.stderr
    assert "--results" in result.stderr


# -- a journal that survives crashes ---------------------------------------------------------


def first_row_done(tmp_path: Path) -> tuple[Path, Path]:
    """A two-row change file, and its journal with the first row done."""
    changes = write(
        tmp_path / "changes.csv",
        "email,lifecycle_stage\ncontact-1@example.com,Client\ncontact-2@example.com,Client\n",
    )
    done = {"row": 2, "id": ids(changes)[2], "contact": "contact-1@example.com", "ok": True}
    return changes, write_journal(changes, [done])


async def test_a_journal_cut_short_is_repaired_before_appending(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes, path = first_row_done(tmp_path)
    with path.open("ab") as handle:
        handle.write(b'{"row": 3, "contact"')  # the crash came mid-line

    result = await cli("bulk", str(changes), "--resume")

    assert result.code == OK, result.stderr
    entries = journal(path)  # every line parses: the cut one is gone
    assert [entry["row"] for entry in entries] == [2, 3]
    assert list(fake.puts) == ["contact-2@example.com"]


async def test_undecodable_journal_bytes_are_reported_and_skipped(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes, path = first_row_done(tmp_path)
    with path.open("ab") as handle:
        handle.write(b"\xff\xfe not utf-8\n")
        handle.write('{"row": 3, "message": "não'.encode()[:-1])  # cut inside "ã"

    result = await cli("bulk", str(changes), "--resume")

    assert result.code == OK, result.stderr
    assert "Traceback" not in result.output
    assert "skipped 1 unreadable line" in result.stderr
    assert list(fake.puts) == ["contact-2@example.com"]


# -- files and flags in the user's terms -----------------------------------------------------


async def test_a_csv_row_with_more_cells_than_the_header_is_refused(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes = write(
        tmp_path / "changes.csv",
        "email,lifecycle_stage\ncontact-1@example.com,Client,oops\ncontact-2@example.com,Lead\n",
    )
    dry = await cli("bulk", str(changes), "--dry-run")
    assert dry.code == FAILED
    assert "row 2 (contact-1@example.com): 1 more cell(s) than the header" in dry.stderr

    result = await cli("bulk", str(changes))
    assert result.code == FAILED
    assert list(fake.puts) == ["contact-2@example.com"]


async def test_a_spent_account_quota_exits_4_and_journals_nothing_unsent(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    lines = "".join(f"contact-{index}@example.com,Client\n" for index in range(20))
    changes = write(tmp_path / "changes.csv", "email,lifecycle_stage\n" + lines)
    fake.limits = Limits(account_quota=5)

    first = await cli("bulk", str(changes), "--concurrency", "2")

    assert first.code == QUOTA
    assert "the account's API quota is spent" in first.stderr and "--resume" in first.stderr
    entries = journal(results_of(changes))
    assert all(entry["attempts"] >= 1 for entry in entries)  # nothing journaled that was unsent
    assert sum(entry["ok"] for entry in entries) == 5

    fake.limits = Limits()
    second = await cli("bulk", str(changes), "--resume")
    assert second.code == OK, second.stderr
    assert all(
        fake.contact(f"contact-{i}@example.com").lifecycle_stage == "Client" for i in range(20)
    )


async def test_funnel_set_speaks_in_flags(cli: Cli, fake: FakeRDStation) -> None:
    nothing = await cli("funnel", "set", "contact-1@example.com")
    assert nothing.code == USAGE
    assert "--stage, --opportunity, --owner, --clear-owner" in nothing.stderr
    assert "FunnelUpdate" not in nothing.output and "lifecycle_stage" not in nothing.output

    bad_owner = await cli("funnel", "set", "contact-1@example.com", "--owner", "nobody")
    assert bad_owner.code == USAGE and "--owner 'nobody'" in bad_owner.stderr

    said = await cli(
        "funnel", "set", "contact-1@example.com", "--stage", "client", "--opportunity", "sim"
    )
    assert said.code == OK, said.stderr
    state = fake.contact("contact-1@example.com")
    assert (state.lifecycle_stage, state.opportunity) == ("Client", True)

    refused = await cli("funnel", "set", "contact-1@example.com", "--opportunity", "talvez")
    assert refused.code == USAGE and "true/false, yes/no, sim/não, 1/0" in refused.stderr


async def test_help_shows_the_environment_variables(cli: Cli) -> None:
    result = await cli("--help")
    for name in (
        "RDSTATION_CLIENT_ID",
        "RDSTATION_CLIENT_SECRET",
        "RDSTATION_REFRESH_TOKEN",
        "RDSTATION_BASE_URL",
        "RDFUNNEL_TOKEN_FILE",
    ):
        assert f"[env: {name}]" in " ".join(result.stdout.split()), name


async def test_an_interrupted_run_counts_the_whole_file(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    for index in range(20, 1001):
        fake.add_contact(f"contact-{index}@example.com")
    lines = "".join(f"contact-{index}@example.com,Client\n" for index in range(1001))
    changes = write(tmp_path / "changes.csv", "email,lifecycle_stage\n" + lines)
    fake.faults = Faults(latency=0.05)
    process = await cli.start("bulk", str(changes), "--concurrency", "4")
    await wait_for_lines(results_of(changes), 6)
    process.send_signal(signal.SIGINT)
    result = await cli.finish(process)

    assert result.code == INTERRUPTED
    summary = " ".join(result.stdout.split())
    assert "rows in the file │ 1,001" in summary or "rows in the file 1,001" in summary
    assert "rows read" in summary


# -- the token file knows its app ------------------------------------------------------------


async def test_a_token_file_of_another_app_is_named_with_the_setting_to_change(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    assert (await cli("funnel", "get", "contact-1@example.com")).code == OK
    async with FakeRDStation(contacts=2) as other:
        cli.secrets |= {other.client_secret, other.refresh_token}
        result = await cli(
            "funnel",
            "get",
            "contact-1@example.com",
            RDSTATION_CLIENT_ID=other.client_id,
            RDSTATION_CLIENT_SECRET=other.client_secret,
            RDSTATION_REFRESH_TOKEN=other.refresh_token,
            RDSTATION_BASE_URL=other.url,
        )
    assert result.code == USAGE
    message = " ".join(result.stderr.split())
    assert str(cli.token_file) in message
    assert fake.client_id in message and other.client_id in message
    assert "RDFUNNEL_TOKEN_FILE" in message
    assert "is not used" in message  # the refresh token given is ignored, and it says so
    assert message.count("holds a token issued to another app") == 1


async def test_fake_server_prints_an_environment_with_a_throwaway_token_file(cli: Cli) -> None:
    process = await cli.start("fake-server", "--port", "0")
    assert process.stdout is not None
    lines = [
        (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip() for _ in range(7)
    ]
    process.send_signal(signal.SIGINT)
    await process.wait()
    exports = dict(line.removeprefix("export ").split("=", 1) for line in lines[2:])
    assert set(exports) == {
        "RDSTATION_BASE_URL",
        "RDSTATION_CLIENT_ID",
        "RDSTATION_CLIENT_SECRET",
        "RDSTATION_REFRESH_TOKEN",
        "RDFUNNEL_TOKEN_FILE",
    }
    token_file = Path(exports["RDFUNNEL_TOKEN_FILE"])
    assert token_file.name == "token.json" and token_file.parent.name.startswith("rdfunnel-fake-")
    assert not token_file.parent.exists()  # removed when the fake stopped


async def test_a_refused_token_file_is_explained_once_with_the_ignored_refresh_token(
    cli: Cli, fake: FakeRDStation
) -> None:
    assert (await cli("funnel", "get", "contact-1@example.com")).code == OK
    fake.revoke_all()
    fake.expire_tokens()
    fresh = fake.issue_refresh_token()
    cli.secrets.add(fresh)

    result = await cli("funnel", "get", "contact-1@example.com", RDSTATION_REFRESH_TOKEN=fresh)

    assert result.code == AUTH
    assert "INVALID_REFRESH_TOKEN" in result.stderr
    assert result.stderr.count("The refresh token is invalid or was revoked") == 1
    assert (
        f"{cli.token_file} already holds a token" in result.stderr
        and "is not used" in result.stderr
    )
    assert "rdfunnel auth login" in result.stderr and "rdfunnel.oauth" not in result.stderr
