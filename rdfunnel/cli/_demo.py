"""``rdfunnel demo``: the whole job against an embedded fake RD Station, no account needed.

A fake with realistic latency and a sprinkling of faults; a login through the real OAuth flow; a
change file with a few bad rows and a few contacts pushed past their daily quota; the same bulk
run as ``rdfunnel bulk``, with its progress bar, summary and results file.
"""

from __future__ import annotations

import csv
import random
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
from rich.console import Console

from ..client import RDStation
from ..models import LifecycleStage
from ..oauth import authorization_url, exchange_code
from ..retry import RetryPolicy
from ..testing import FakeRDStation, Faults, Limits
from ..tokens import FileTokenStore, Token

__all__ = ["DemoSetup", "prepare_demo"]

OWNERS = ("ana@rdfunnel.example", "bruno@rdfunnel.example", "carla@rdfunnel.example")
STAGES = tuple(LifecycleStage)
QUOTA = 24  # funnel calls per contact per day, as RD allows
OVER_QUOTA_CONTACTS = 3
BAD_ROWS = (
    {"email": "not-an-email", "lifecycle_stage": LifecycleStage.CLIENT},
    {"email": "contact-1@example.com", "lifecycle_stage": "Customer"},
    {"email": "contact-2@example.com", "opportunity": "maybe"},
    {"email": "contact-3@example.com", "contact_owner_email": "nobody"},
    {"email": "", "lifecycle_stage": LifecycleStage.LEAD},
)


def demo_fake(contacts: int) -> FakeRDStation:
    """A fake RD Station that behaves like a busy real one."""
    return FakeRDStation(
        contacts=contacts,
        users=OWNERS,
        rotate_refresh_tokens=True,
        faults=Faults(html_502=0.01, json_503=0.005, drop=0.005, early_expiry=0.002, latency=0.02),
        limits=Limits(per_contact=QUOTA),
    )


async def authorize(fake: FakeRDStation, store: FileTokenStore) -> Token:
    """The real OAuth flow: consent page, redirect with a code, code exchange, token saved."""
    redirect_uri = "http://127.0.0.1:8976/callback"
    url, state = authorization_url(fake.client_id, redirect_uri, base_url=fake.url)
    async with aiohttp.ClientSession() as session:
        async with session.get(url, allow_redirects=False) as response:
            location = response.headers["Location"]
        query = parse_qs(urlsplit(location).query)
        if query.get("state") != [state]:
            raise RuntimeError("the fake sent back another state")
        token = await exchange_code(
            query["code"][0],
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            redirect_uri=redirect_uri,
            base_url=fake.url,
            session=session,
        )
    await store.save(token)
    return token


def write_changes(path: Path, contacts: int, seed: int = 7) -> int:
    """A CSV of changes: one per contact, a few contacts changed past their quota, bad rows."""
    chooser = random.Random(seed)
    fields = ["email", "lifecycle_stage", "opportunity", "contact_owner_email"]
    rows: list[dict[str, str]] = []
    for i in range(contacts):
        rows.append(
            {
                "email": f"contact-{i}@example.com",
                "lifecycle_stage": chooser.choice(STAGES),
                "opportunity": chooser.choice(("true", "false", "")),
                "contact_owner_email": chooser.choice((*OWNERS, "", "", "null")),
            }
        )
    for i in range(OVER_QUOTA_CONTACTS):
        for step in range(QUOTA + 4):
            rows.append(
                {"email": f"contact-{i}@example.com", "lifecycle_stage": STAGES[step % len(STAGES)]}
            )
    for bad in BAD_ROWS:
        rows.insert(chooser.randrange(len(rows)), dict(bad))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


class DemoSetup:
    """Everything the demo run needs: a working folder, the change file, the token store."""

    def __init__(self, contacts: int) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rdfunnel-demo-"))
        self.changes = self.folder / "changes.csv"
        self.results = self.folder / "results.jsonl"
        self.store = FileTokenStore(self.folder / "token.json")
        self.rows = write_changes(self.changes, contacts)
        self.refreshes = 0

    def client(self, fake: FakeRDStation) -> RDStation:
        def count_refresh(_: Token) -> None:
            self.refreshes += 1

        return RDStation(
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            token_store=self.store,
            base_url=fake.url,
            on_token_refresh=count_refresh,
            retry=RetryPolicy(max_retries=4, backoff_base=0.05, backoff_cap=0.5),
            timeout=10,
        )


async def prepare_demo(fake: FakeRDStation, contacts: int, console: Console) -> DemoSetup:
    setup = DemoSetup(contacts)
    console.print(f"fake RD Station at {fake.url} with {contacts:,} contacts")
    await authorize(fake, setup.store)
    console.print("authorized through /auth/dialog and a code exchange; token saved (0600)")
    console.print(f"{setup.rows:,} changes written to {setup.changes}")
    return setup
