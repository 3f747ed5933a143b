"""The ``rdfunnel`` command, run as a real subprocess against a FakeRDStation on 127.0.0.1.

Every run goes through :class:`Cli`, which also checks that no secret (the client secret, a refresh
token, an access token) ever shows up in what the command prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import stat
import sys
import textwrap
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
import trustme

from rdfunnel.testing import FakeRDStation, Faults

from .conftest import PROXY_VARIABLES
from .proxy import ForwardProxy

OWNERS = ("ana@rdfunnel.example", "bruno@rdfunnel.example")
TIMEOUT = 30.0  # seconds any one command may take before the test gives up on it

# Exit statuses, as the command documents them.
OK, FAILED, USAGE, AUTH, INTERRUPTED = 0, 1, 2, 3, 130


@attrs.frozen
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Cli:
    """Runs ``python -m rdfunnel.cli`` configured for one fake, in its own folder."""

    def __init__(self, fake: FakeRDStation, folder: Path) -> None:
        self.fake = fake
        self.folder = folder
        self.token_file = folder / "token.json"
        self.env = {
            "RDSTATION_CLIENT_ID": fake.client_id,
            "RDSTATION_CLIENT_SECRET": fake.client_secret,
            "RDSTATION_REFRESH_TOKEN": fake.refresh_token,
            "RDSTATION_BASE_URL": fake.url,
            "RDFUNNEL_TOKEN_FILE": str(self.token_file),
        }
        self.secrets = {fake.client_secret, fake.refresh_token}

    async def start(self, *args: str, **env: str | None) -> asyncio.subprocess.Process:
        """Start the command; ``env`` overrides the fake's settings (None: leave unset)."""
        self._remember_tokens()
        settings = {**self.env, **env}
        base = {  # the command trusts its environment's proxies: none from the test machine
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RDSTATION_", "RDFUNNEL_"))
            and key.upper() not in PROXY_VARIABLES
        }
        environment = {key: value for key, value in settings.items() if value is not None}
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rdfunnel.cli",
            *args,
            cwd=self.folder,
            env={**base, **environment, "PYTHONIOENCODING": "utf-8", "TMPDIR": str(self.folder)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def finish(self, process: asyncio.subprocess.Process) -> Result:
        """Wait for the command; check that it printed no secret."""
        stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
        assert process.returncode is not None
        result = Result(process.returncode, stdout.decode(), stderr.decode())
        self._remember_tokens()
        for secret in self.secrets:
            assert secret not in result.output, "a secret was printed"
        return result

    async def __call__(self, *args: str, **env: str | None) -> Result:
        return await self.finish(await self.start(*args, **env))

    def _remember_tokens(self) -> None:
        if self.token_file.exists():
            saved = json.loads(self.token_file.read_text())
            self.secrets |= {saved["access_token"], saved["refresh_token"]} - {None}


@pytest.fixture
async def fake() -> AsyncIterator[FakeRDStation]:
    async with FakeRDStation(contacts=20, users=OWNERS) as server:
        yield server


@pytest.fixture
def cli(fake: FakeRDStation, tmp_path: Path) -> Cli:
    return Cli(fake, tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def journal(path: Path, *, keep_ids: bool = False) -> list[dict[str, Any]]:
    """The journal's row records (after its header line), without their content ids."""
    header, *entries = (json.loads(line) for line in path.read_text().splitlines())
    assert header["rdfunnel_journal"] == 2 and "row" not in header
    if keep_ids:
        return entries
    return [{key: value for key, value in entry.items() if key != "id"} for entry in entries]


def by_row(entries: list[dict[str, Any]]) -> Mapping[int, dict[str, Any]]:
    rows = {entry["row"]: entry for entry in entries}
    assert len(rows) == len(entries), "a row was journaled twice"
    return rows


def sent(fake: FakeRDStation) -> int:
    """Funnel PUTs the fake answered, whatever the answer."""
    return fake.stats.count("funnels.put")


# A change file whose bad rows sit on known lines (the header is line 1).
CHANGES_WITH_BAD_ROWS = """\
    email,lifecycle_stage,opportunity,contact_owner_email
    contact-1@example.com,Client,true,ana@rdfunnel.example
    not-an-email,Lead,,
    contact-2@example.com,Customer,,
    contact-3@example.com,,maybe,
    contact-4@example.com,Qualified Lead,,
    ,Lead,,
    contact-5@example.com,,,nobody
    contact-6@example.com,,false,null
"""
BAD_LINES = {3: "not-an-email", 4: "contact-2", 5: "contact-3", 7: "", 8: "contact-5"}


# -- bulk ------------------------------------------------------------------------------------


async def test_bulk_reports_bad_rows_by_number_and_applies_the_rest(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes = write(tmp_path / "changes.csv", CHANGES_WITH_BAD_ROWS)

    result = await cli("bulk", str(changes))

    assert result.code == FAILED
    for line in BAD_LINES:
        assert f"row {line}" in result.stderr
    assert "row 2" not in result.stderr and "row 6" not in result.stderr
    assert set(fake.puts) == {
        "contact-1@example.com",
        "contact-4@example.com",
        "contact-6@example.com",
    }
    assert fake.contacts["contact-1@example.com"].lifecycle_stage == "Client"
    assert fake.contacts["contact-1@example.com"].contact_owner_email == "ana@rdfunnel.example"
    assert fake.contacts["contact-4@example.com"].lifecycle_stage == "Qualified Lead"
    assert fake.contacts["contact-2@example.com"].lifecycle_stage == "Lead"  # its row was bad
    assert "rdfunnel bulk run" in result.stdout


async def test_bulk_journals_one_line_per_row(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes = write(
        tmp_path / "changes.csv",
        """
        email,lifecycle_stage
        contact-1@example.com,Client
        not-an-email,Lead
        stranger@example.com,Lead
        """,
    )
    results = tmp_path / "out" / "results.jsonl"

    result = await cli("bulk", str(changes), "--results", str(results))

    assert result.code == FAILED
    rows = by_row(journal(results))
    assert rows[2] == {"row": 2, "contact": "contact-1@example.com", "ok": True, "attempts": 1}
    assert rows[3]["contact"] == "not-an-email"
    assert rows[3]["ok"] is False
    assert rows[3]["error"] == "ValidationError"
    assert rows[3]["attempts"] == 0
    assert "not-an-email" in rows[3]["message"]
    assert rows[4]["contact"] == "stranger@example.com"
    assert rows[4]["ok"] is False
    assert rows[4]["error"] == "NotFoundError"
    assert rows[4]["attempts"] == 1
    assert rows[4]["message"]
    assert set(rows) == {2, 3, 4}
    assert f"results: {results}" in result.stdout


async def test_bulk_reads_jsonl_where_null_clears_the_owner(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    fake.add_contact("owned@example.com", contact_owner_email="bruno@rdfunnel.example")
    by_uuid = {
        "uuid": fake.contacts["contact-2@example.com"].uuid,
        "contact_owner_email": "ana@rdfunnel.example",
    }
    lines = [
        '{"email": "owned@example.com", "contact_owner_email": null}',
        '{"email": "contact-1@example.com", "opportunity": true, "lifecycle_stage": "Client"}',
        "",  # a blank line is no row, but it keeps its line number
        json.dumps(by_uuid),
    ]
    changes = write(tmp_path / "changes.jsonl", "\n".join(lines) + "\n")

    result = await cli("bulk", str(changes))

    assert result.code == OK, result.stderr
    assert fake.contacts["owned@example.com"].contact_owner_email is None
    assert fake.contacts["contact-1@example.com"].opportunity is True
    assert fake.contacts["contact-1@example.com"].lifecycle_stage == "Client"
    assert fake.contacts["contact-2@example.com"].contact_owner_email == "ana@rdfunnel.example"
    beside_the_file = tmp_path / "changes.jsonl.results.jsonl"  # the default journal
    assert [entry["row"] for entry in journal(beside_the_file)] == [1, 2, 4]


async def test_bulk_reports_bad_jsonl_lines_by_number(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes = write(
        tmp_path / "changes.jsonl",
        """
        {"email": "contact-1@example.com", "lifecycle_stage": "Client"}
        {"email": "contact-2@example.com",
        ["not", "an", "object"]
        {"email": "contact-3@example.com", "contact_owner_email": "null"}
        {"email": "contact-4@example.com", "stage": "Client"}
        """,
    )

    result = await cli("bulk", str(changes))

    assert result.code == FAILED
    assert "row 2: not valid JSON" in result.stderr
    assert "row 3: each line must be a JSON object" in result.stderr
    assert "row 4 (contact-3@example.com)" in result.stderr  # "null" is a string in JSONL
    assert "row 5 (contact-4@example.com): unknown field 'stage'" in result.stderr
    assert set(fake.puts) == {"contact-1@example.com"}


async def test_bulk_reads_semicolon_separated_csv(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes = write(
        tmp_path / "changes.csv",
        """
        email;lifecycle_stage;opportunity
        contact-1@example.com;Client;sim
        contact-2@example.com;Qualified Lead;não
        """,
    )

    result = await cli("bulk", str(changes))

    assert result.code == OK, result.stderr
    assert fake.contacts["contact-1@example.com"].lifecycle_stage == "Client"
    assert fake.contacts["contact-1@example.com"].opportunity is True
    assert fake.contacts["contact-2@example.com"].lifecycle_stage == "Qualified Lead"


async def test_bulk_refuses_a_file_with_an_unknown_column_before_sending(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes = write(tmp_path / "changes.csv", "email,stage\ncontact-1@example.com,Client\n")

    result = await cli("bulk", str(changes))

    assert result.code == USAGE
    assert "unknown column 'stage'" in result.stderr
    assert fake.stats.count() == 0


async def test_bulk_refuses_a_file_not_in_utf8_before_sending(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes = tmp_path / "changes.csv"
    rows = "email,lifecycle_stage\ncontact-1@example.com,Client\njosé@example.com,Lead\n"
    changes.write_bytes(rows.encode("latin-1"))

    result = await cli("bulk", str(changes))

    assert result.code == USAGE
    assert "not UTF-8" in result.stderr
    assert fake.stats.count() == 0


async def test_dry_run_reports_bad_rows_and_sends_nothing(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes = write(tmp_path / "changes.csv", CHANGES_WITH_BAD_ROWS)

    result = await cli("bulk", str(changes), "--dry-run")

    assert result.code == FAILED
    for line in BAD_LINES:
        assert f"row {line}" in result.stderr
    assert "8 rows checked, 5 bad; nothing was sent" in result.stdout
    assert fake.stats.count() == 0  # not even a token request
    assert not (tmp_path / "changes.csv.results.jsonl").exists()


async def test_dry_run_of_a_clean_file_exits_0(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes = write(tmp_path / "changes.csv", "email,lifecycle_stage\ncontact-1@example.com,Lead\n")

    result = await cli("bulk", str(changes), "--dry-run")

    assert result.code == OK
    assert "1 rows checked, 0 bad" in result.stdout
    assert fake.stats.count() == 0


async def test_bulk_refuses_to_overwrite_a_journal_without_resume(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes = write(tmp_path / "changes.csv", "email,lifecycle_stage\ncontact-1@example.com,Lead\n")
    results = tmp_path / "changes.csv.results.jsonl"
    results.write_text('{"row": 2, "contact": "contact-1@example.com", "ok": true}\n')

    result = await cli("bulk", str(changes))

    assert result.code == USAGE
    assert "--resume" in result.stderr
    assert results.read_text() == '{"row": 2, "contact": "contact-1@example.com", "ok": true}\n'
    assert fake.stats.count() == 0


async def test_resume_sends_only_the_rows_not_done(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes = write(
        tmp_path / "changes.csv",
        """
        email,lifecycle_stage
        contact-1@example.com,Client
        latecomer@example.com,Client
        contact-2@example.com,Client
        """,
    )
    first = await cli("bulk", str(changes))
    assert first.code == FAILED  # latecomer is not in the account yet
    fake.add_contact("latecomer@example.com")

    second = await cli("bulk", str(changes), "--resume")

    assert second.code == OK
    assert "already done (skipped)" in second.stdout
    assert {email: len(bodies) for email, bodies in fake.puts.items()} == {
        "contact-1@example.com": 1,
        "contact-2@example.com": 1,
        "latecomer@example.com": 1,
    }
    assert fake.contacts["latecomer@example.com"].lifecycle_stage == "Client"


async def test_interrupted_bulk_run_resumes_without_sending_a_row_twice(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    total = 300
    for index in range(20, total):
        fake.add_contact(f"contact-{index}@example.com")
    lines = [f"contact-{index}@example.com,Client" for index in range(total)]
    changes = write(tmp_path / "changes.csv", "email,lifecycle_stage\n" + "\n".join(lines) + "\n")
    results = tmp_path / "changes.csv.results.jsonl"
    fake.faults = Faults(latency=0.05)

    process = await cli.start("bulk", str(changes), "--concurrency", "4")
    await wait_for_lines(results, 8)
    process.send_signal(signal.SIGINT)
    first = await cli.finish(process)

    assert first.code == INTERRUPTED
    assert "--resume" in first.stderr
    done = by_row(journal(results))
    assert all(entry["ok"] for entry in done.values())
    assert sorted(done) == list(range(2, 2 + len(done)))  # a prefix: rows in flight finished
    assert len(done) < total
    assert set(fake.puts) == {entry["contact"] for entry in done.values()}

    fake.faults = Faults()
    second = await cli("bulk", str(changes), "--resume", "--concurrency", "4")

    assert second.code == OK, second.stderr
    assert sorted(by_row(journal(results))) == list(range(2, total + 2))
    assert len(fake.puts) == total
    assert all(len(bodies) == 1 for bodies in fake.puts.values())
    assert all(contact.lifecycle_stage == "Client" for contact in fake.contacts.values())


async def test_second_interrupt_aborts_with_130(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    lines = [f"contact-{index}@example.com,Client" for index in range(20)]
    changes = write(tmp_path / "changes.csv", "email,lifecycle_stage\n" + "\n".join(lines) + "\n")
    results = tmp_path / "changes.csv.results.jsonl"
    fake.faults = Faults(latency=0.5)

    process = await cli.start("bulk", str(changes), "--concurrency", "2")
    await wait_for_lines(results, 2)
    process.send_signal(signal.SIGINT)
    await asyncio.sleep(0.05)
    process.send_signal(signal.SIGINT)
    result = await cli.finish(process)

    assert result.code == INTERRUPTED
    assert "aborted" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(journal(results)) < len(lines)


async def test_bulk_stops_with_exit_3_when_the_refresh_token_is_revoked(
    cli: Cli, fake: FakeRDStation, tmp_path: Path
) -> None:
    changes = write(
        tmp_path / "changes.csv",
        "email,lifecycle_stage\ncontact-1@example.com,Client\ncontact-2@example.com,Client\n",
    )
    fake.revoke_all()

    result = await cli("bulk", str(changes))

    assert result.code == AUTH
    assert "rdfunnel auth login" in result.stderr
    assert sent(fake) == 0
    assert all(not entry["ok"] for entry in journal(tmp_path / "changes.csv.results.jsonl"))


# -- funnel get / set ------------------------------------------------------------------------


async def test_funnel_get_prints_the_funnel(cli: Cli) -> None:
    result = await cli("funnel", "get", "contact-1@example.com")

    assert result.code == OK
    assert result.stdout.strip() == (
        "contact-1@example.com: Lead, opportunity no, owner none, fit 0, interest 0"
    )


async def test_funnel_get_json(cli: Cli, fake: FakeRDStation) -> None:
    uuid = fake.contacts["contact-1@example.com"].uuid

    result = await cli("funnel", "get", uuid, "--json")

    assert result.code == OK
    assert json.loads(result.stdout) == {
        "contact": uuid,
        "lifecycle_stage": "Lead",
        "opportunity": False,
        "contact_owner_email": None,
        "fit": 0,
        "interest": 0,
    }


async def test_funnel_get_of_an_unknown_contact_exits_1(cli: Cli) -> None:
    result = await cli("funnel", "get", "stranger@example.com")

    assert result.code == FAILED
    assert "NotFoundError" in result.stderr


async def test_funnel_get_of_something_not_a_contact_is_a_usage_error(
    cli: Cli, fake: FakeRDStation
) -> None:
    result = await cli("funnel", "get", "nobody")

    assert result.code == USAGE
    assert "neither an email address nor a UUID" in result.stderr
    assert fake.stats.count() == 0


async def test_funnel_set_changes_only_the_given_fields(cli: Cli, fake: FakeRDStation) -> None:
    result = await cli(
        "funnel", "set", "contact-1@example.com", "--stage", "Client", "--owner", OWNERS[0]
    )

    assert result.code == OK
    assert result.stdout.strip() == (
        f"contact-1@example.com: Client, opportunity no, owner {OWNERS[0]}, fit 0, interest 0"
    )
    assert fake.puts["contact-1@example.com"] == (
        {"lifecycle_stage": "Client", "contact_owner_email": OWNERS[0]},
    )


async def test_funnel_set_json_clears_the_owner(cli: Cli, fake: FakeRDStation) -> None:
    fake.add_contact("owned@example.com", contact_owner_email=OWNERS[1])

    result = await cli(
        "funnel", "set", "owned@example.com", "--clear-owner", "--opportunity", "true", "--json"
    )

    assert result.code == OK
    assert json.loads(result.stdout)["contact_owner_email"] is None
    assert json.loads(result.stdout)["opportunity"] is True
    assert fake.contacts["owned@example.com"].contact_owner_email is None


async def test_funnel_set_refuses_owner_with_clear_owner(cli: Cli, fake: FakeRDStation) -> None:
    result = await cli(
        "funnel", "set", "contact-1@example.com", "--owner", OWNERS[0], "--clear-owner"
    )

    assert result.code == USAGE
    assert fake.stats.count() == 0


async def test_funnel_set_with_nothing_to_change_is_a_usage_error(
    cli: Cli, fake: FakeRDStation
) -> None:
    result = await cli("funnel", "set", "contact-1@example.com")

    assert result.code == USAGE
    assert fake.stats.count() == 0


# -- configuration ---------------------------------------------------------------------------


async def test_missing_app_credentials_are_a_usage_error(cli: Cli) -> None:
    result = await cli("funnel", "get", "contact-1@example.com", RDSTATION_CLIENT_ID=None)

    assert result.code == USAGE
    assert "RDSTATION_CLIENT_ID" in result.stderr


async def test_no_token_at_all_is_a_usage_error(cli: Cli) -> None:
    result = await cli("funnel", "get", "contact-1@example.com", RDSTATION_REFRESH_TOKEN=None)

    assert result.code == USAGE
    assert "rdfunnel auth login" in result.stderr


async def test_a_plain_http_base_url_is_refused(cli: Cli) -> None:
    result = await cli(
        "funnel", "get", "contact-1@example.com", RDSTATION_BASE_URL="http://example.com"
    )

    assert result.code == USAGE
    assert "https://" in result.stderr


async def test_a_revoked_refresh_token_exits_3(cli: Cli, fake: FakeRDStation) -> None:
    fake.revoke_all()

    result = await cli("funnel", "get", "contact-1@example.com")

    assert result.code == AUTH
    assert "rdfunnel auth login" in result.stderr


# -- auth ------------------------------------------------------------------------------------


async def test_auth_login_through_the_browser_flow(cli: Cli, fake: FakeRDStation) -> None:
    process = await cli.start(
        "auth", "login", "--no-open", "--port", "0", "--timeout", "20", RDSTATION_REFRESH_TOKEN=None
    )
    assert process.stdout is not None
    url = (await asyncio.wait_for(process.stdout.readline(), TIMEOUT)).decode().strip()
    assert url.startswith(f"{fake.url}/auth/dialog?")

    async with aiohttp.ClientSession() as browser, browser.get(url) as page:
        assert page.status == 200
        assert page.url.host == "127.0.0.1"
        assert "rdfunnel is authorized" in await page.text()
    result = await cli.finish(process)

    assert result.code == OK, result.stderr
    assert "logged in" in result.stdout
    callback = f"http://127.0.0.1:{page.url.port}/callback"
    assert f"listening for RD's answer on {callback}" in result.stderr
    assert "registered as a redirect URI" in result.stderr
    assert stat.S_IMODE(cli.token_file.stat().st_mode) == 0o600
    assert fake.stats.count("auth.token", 200) == 1
    check = await cli("funnel", "get", "contact-1@example.com", RDSTATION_REFRESH_TOKEN=None)
    assert check.code == OK
    assert fake.stats.count("auth.token") == 1  # the saved access token was used as is


async def test_auth_login_gives_up_when_no_answer_arrives(cli: Cli) -> None:
    result = await cli("auth", "login", "--no-open", "--port", "0", "--timeout", "0.2")

    assert result.code == AUTH
    assert "no authorization arrived" in result.stderr


async def test_auth_status_shows_a_masked_token(cli: Cli) -> None:
    assert (await cli("funnel", "get", "contact-1@example.com")).code == OK
    access_token = json.loads(cli.token_file.read_text())["access_token"]

    result = await cli("auth", "status")

    assert result.code == OK
    assert f"…{access_token[-4:]} (masked)" in result.stdout
    assert "RD accepts it" in result.stdout
    assert access_token not in result.output  # and Cli checks every other secret


async def test_auth_status_without_a_token_exits_3(cli: Cli) -> None:
    result = await cli("auth", "status", RDSTATION_REFRESH_TOKEN=None)

    assert result.code == AUTH
    assert "rdfunnel auth login" in result.stderr


async def test_auth_revoke_ends_the_authorization(cli: Cli, fake: FakeRDStation) -> None:
    assert (await cli("funnel", "get", "contact-1@example.com")).code == OK

    result = await cli("auth", "revoke")

    assert result.code == OK
    assert fake.stats.count("auth.revoke", 200) == 1
    assert not cli.token_file.exists()
    after = await cli("funnel", "get", "contact-1@example.com")  # the old refresh token
    assert after.code == AUTH


# -- demo ------------------------------------------------------------------------------------


async def demo(tmp_path: Path, *args: str) -> tuple[int | None, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rdfunnel.cli",
        "demo",
        "--contacts",
        "300",
        *args,
        cwd=tmp_path,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", "TMPDIR": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    return process.returncode, stdout.decode(), stderr.decode()


async def test_demo_runs_the_whole_job_and_prints_its_summary(tmp_path: Path) -> None:
    code, summary, stderr = await demo(tmp_path, "--keep")

    assert code == OK, stderr
    assert "rdfunnel bulk run" in summary
    assert "updated" in summary
    assert "failed: ValidationError" in summary
    results = Path(summary.split("results: ")[1].split()[0])
    assert results.is_relative_to(tmp_path)
    assert len(journal(results)) > 300


async def test_demo_leaves_no_files_behind(tmp_path: Path) -> None:
    code, summary, stderr = await demo(tmp_path)

    assert code == OK, stderr
    assert "rdfunnel bulk run" in summary
    assert os.listdir(tmp_path) == []


# -- helpers ---------------------------------------------------------------------------------


async def wait_for_lines(path: Path, count: int) -> None:
    """Wait until ``path`` holds at least ``count`` lines (a running job's journal)."""
    async with asyncio.timeout(TIMEOUT):
        # Another process writes the file: polling is the only way to see it grow.
        while lines_in(path) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def lines_in(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


# -- proxies ---------------------------------------------------------------------------------


async def test_proxy_flag_sends_token_and_api_requests_through_it(
    cli: Cli, fake: FakeRDStation, proxy: ForwardProxy
) -> None:
    result = await cli("--proxy", proxy.url, "funnel", "get", "contact-1@example.com")

    assert result.code == OK, result.stderr
    assert proxy.requests == [
        f"POST {fake.url}/auth/token",
        f"GET {fake.url}/platform/contacts/email:contact-1@example.com/funnels/default",
    ]


async def test_the_environments_proxy_is_used_unless_no_proxy_exempts_the_host(
    cli: Cli, proxy: ForwardProxy
) -> None:
    result = await cli("funnel", "get", "contact-1@example.com", HTTP_PROXY=proxy.url)
    assert result.code == OK, result.stderr
    assert len(proxy.requests) == 2

    result = await cli(
        "funnel", "get", "contact-2@example.com", HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1"
    )
    assert result.code == OK, result.stderr
    assert len(proxy.requests) == 2  # nothing more went through it


async def test_a_bulk_run_goes_through_the_proxy(
    cli: Cli, fake: FakeRDStation, proxy: ForwardProxy
) -> None:
    changes = write(cli.folder / "changes.csv", "email,opportunity\ncontact-1@example.com,true\n")

    result = await cli("--proxy", proxy.url, "bulk", str(changes), "--concurrency", "300")

    assert result.code == OK, result.stderr
    assert [line.split(" ")[0] for line in proxy.requests] == ["POST", "PUT"]


async def test_auth_login_exchanges_the_code_through_the_proxy(
    cli: Cli, fake: FakeRDStation, proxy: ForwardProxy
) -> None:
    process = await cli.start(
        "auth",
        "login",
        "--no-open",
        "--port",
        "0",
        RDSTATION_REFRESH_TOKEN=None,
        HTTPS_PROXY=None,
        HTTP_PROXY=proxy.url,
    )
    assert process.stdout is not None
    url = (await asyncio.wait_for(process.stdout.readline(), TIMEOUT)).decode().strip()
    async with aiohttp.ClientSession() as browser, browser.get(url) as page:
        assert page.status == 200
    result = await cli.finish(process)

    assert result.code == OK, result.stderr
    assert proxy.requests == [f"POST {fake.url}/auth/token?token_by=code"]


@pytest.mark.parametrize("value", ["ftp://proxy.example", "http://ana:s3cret@:3128"])
async def test_a_bad_proxy_is_a_usage_error(cli: Cli, fake: FakeRDStation, value: str) -> None:
    result = await cli("--proxy", value, "funnel", "get", "contact-1@example.com")

    assert result.code == USAGE
    assert "proxy must be an http:// or https:// URL" in result.stderr
    assert "s3cret" not in result.output
    assert fake.stats.count() == 0


async def test_ssl_cert_file_makes_the_command_trust_a_ca_of_ones_own(
    tmp_path: Path, ca: trustme.CA, server_ssl: ssl.SSLContext
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with FakeRDStation(contacts=2, ssl=server_ssl) as fake:
        cli = Cli(fake, tmp_path)
        refused = await cli("funnel", "get", "contact-1@example.com")
        assert refused.code == FAILED
        assert "CertificateError" in refused.stderr and "SSL_CERT_FILE" in refused.stderr

        result = await cli("funnel", "get", "contact-1@example.com", SSL_CERT_FILE=str(bundle))
        assert result.code == OK, result.stderr
        assert fake.stats.count("funnels.get", 200) == 1
