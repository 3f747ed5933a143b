"""Every update accounted for: spent quotas, token storms, broken inputs and bad arguments.

End to end against FakeRDStation where the behaviour spans the client, the transport and the bulk
engine; on the engine alone where only its scheduling is in question.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aioresponses import aioresponses

from rdfunnel import (
    BulkResult,
    BulkRun,
    Contact,
    Funnel,
    FunnelUpdate,
    LifecycleStage,
    MemoryTokenStore,
    RDStation,
    RetryPolicy,
    Token,
)
from rdfunnel.errors import (
    AuthenticationError,
    NotAttemptedError,
    QuotaExceededError,
    TokenRefusedError,
    ValidationError,
)
from rdfunnel.testing import FakeRDStation, Faults, Limits
from rdfunnel.tokens import FileTokenStore, TokenAppMismatchError, TokenStoreError

from .conftest import VirtualClock

FAST = RetryPolicy(max_retries=3, backoff_base=0.001, backoff_cap=0.01)
LEAD = FunnelUpdate(lifecycle_stage=LifecycleStage.LEAD)


def email(contact: int) -> str:
    return f"contact-{contact}@example.com"


async def collect(run: BulkRun) -> list[BulkResult]:
    async with run:
        return [result async for result in run]


# -- a spent account quota -----------------------------------------------------------------


async def test_a_spent_account_quota_stops_the_run_and_nothing_more_is_sent(
    clock: VirtualClock,
) -> None:
    read = 0

    def source() -> Any:
        nonlocal read
        for index in range(5_000):
            read += 1
            yield email(index % 100), LEAD

    limits = Limits(account_quota=40, window=36_000)
    async with (
        FakeRDStation(contacts=100, limits=limits, clock=clock.monotonic) as fake,
        fake.client(clock=clock, retry=FAST) as rd,
    ):
        run = rd.funnels.update_many(source(), concurrency=8)
        results = await collect(run)
        stopped_by = run.stopped_by
        assert isinstance(stopped_by, QuotaExceededError) and stopped_by.scope == "account"
        assert stopped_by.retry_after is not None and stopped_by.retry_after > 35_000
        # At most the requests already in flight met the spent quota.
        assert 1 <= fake.stats.rate_limited["account"] <= 8
        assert fake.stats.count("funnels.put") <= 40 + 8
        assert read < 5_000 and run.summary.total == read
        assert sorted(result.index for result in results) == list(range(read))
        for result in results:
            if not result.ok and result.attempts == 0:
                assert isinstance(result.error, NotAttemptedError), result
                assert result.error.reason is stopped_by
        assert run.summary.succeeded == 40
        assert run.summary.failed == fake.stats.rate_limited["account"]
        # Later calls, and a second run, fail at once and send nothing while the hint lasts.
        sent = fake.stats.count()
        with pytest.raises(QuotaExceededError) as caught:
            await rd.funnels.get(email(1))
        assert caught.value.attempts == 0 and caught.value.scope == "account"
        assert caught.value.retry_after is not None and caught.value.retry_after > 35_000
        again = rd.funnels.update_many([(email(1), LEAD)] * 50, concurrency=8)
        second = await collect(again)
        assert isinstance(again.stopped_by, QuotaExceededError)
        assert all(isinstance(result.error, NotAttemptedError) for result in second)
        assert again.summary.total <= 8 + 8 * 8  # read up to one window, then stopped
        assert fake.stats.count() == sent
        # Once the quota's window has passed, requests go out again.
        clock.now += 36_001
        assert isinstance(await rd.funnels.get(email(1)), Funnel)


async def test_a_spent_contact_quota_fails_that_contacts_later_calls_unsent(
    clock: VirtualClock,
) -> None:
    limits = Limits(per_contact=2)
    async with (
        FakeRDStation(contacts=2, limits=limits, clock=clock.monotonic) as fake,
        fake.client(clock=clock, retry=FAST) as rd,
    ):
        for _ in range(2):
            await rd.funnels.get(email(0))
        with pytest.raises(QuotaExceededError) as first:
            await rd.funnels.update(email(0), LEAD)
        assert first.value.attempts == 1 and first.value.scope == "contact"
        sent = fake.stats.count()
        with pytest.raises(QuotaExceededError) as later:
            await rd.funnels.get(email(0).upper())  # the same contact, however written
        assert later.value.attempts == 0 and later.value.retry_after is not None
        assert "contact-0" not in str(later.value)  # the email stays out of the message
        assert fake.stats.count() == sent
        await rd.funnels.get(email(1))  # other contacts are not held back


# -- token storms and early expiries ---------------------------------------------------------


async def test_a_token_storm_stops_after_three_token_requests(clock: VirtualClock) -> None:
    # Every token the fake issues is refused (expired early) on every request.
    faults = Faults(early_expiry=1.0)
    async with (
        FakeRDStation(contacts=200, faults=faults, rotate_refresh_tokens=True) as fake,
        fake.client(clock=clock, retry=FAST) as rd,
    ):
        run = rd.funnels.update_many([(email(i), LEAD) for i in range(200)], concurrency=16)
        results = await collect(run)
        assert isinstance(run.stopped_by, TokenRefusedError)
        assert isinstance(run.stopped_by, AuthenticationError) and run.stopped_by.terminal
        assert fake.stats.count("auth.token") == 3
        assert fake.stats.count("funnels.put") <= 3 * 16  # each token tried by those in flight
        assert run.summary.total == len(results) < 200
        assert not any(result.ok for result in results)


async def test_early_expiries_never_fail_a_row(clock: VirtualClock) -> None:
    faults = Faults(early_expiry=0.02, seed=7)
    changes = [(email(i % 500), LEAD) for i in range(10_000)]
    async with (
        FakeRDStation(contacts=500, faults=faults, rotate_refresh_tokens=True) as fake,
        fake.client(clock=clock, retry=FAST) as rd,
    ):
        run = rd.funnels.update_many(changes, concurrency=32)
        results = await collect(run)
    assert len(results) == 10_000
    assert [result.error for result in results if not result.ok] == []
    assert fake.stats.faults["early_expiry"] >= 100  # the storm really happened
    assert fake.stats.count("auth.token", 401) == 0  # no rotated refresh token was lost


async def test_a_404_proves_the_token_so_early_expiries_do_not_add_up(
    clock: VirtualClock,
) -> None:
    faults = Faults(early_expiry=0.2, seed=5)
    async with FakeRDStation(faults=faults) as fake, fake.client(clock=clock, retry=FAST) as rd:
        unknown = [(f"nobody-{i}@example.com", LEAD) for i in range(200)]
        run = rd.funnels.update_many(unknown, concurrency=4)
        results = await collect(run)
    assert run.stopped_by is None and len(results) == 200
    assert {type(result.error).__name__ for result in results} == {"NotFoundError"}
    assert fake.stats.faults["early_expiry"] >= 10


async def test_a_failing_on_token_refresh_fails_no_call(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(token: Token) -> None:
        raise ConnectionError("webhook down")

    async with (
        FakeRDStation(contacts=16) as fake,
        fake.client(clock=clock, retry=FAST, on_token_refresh=hook) as rd,
    ):
        run = rd.funnels.update_many([(email(i), LEAD) for i in range(16)], concurrency=16)
        results = await collect(run)
        assert all(result.ok for result in results)
        assert isinstance(rd.on_token_refresh_error, ConnectionError)
    [record] = [r for r in caplog.records if "on_token_refresh" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None


# -- the engine: inputs that break, items it cannot read, slots that stay busy ---------------


async def apply_ok(contact: Contact, update: FunnelUpdate) -> tuple[Funnel, int]:
    return Funnel(), 1


async def test_an_input_raising_cancelled_error_ends_the_run_cleanly() -> None:
    async def source() -> AsyncIterator[tuple[str, FunnelUpdate]]:
        for index in range(5):
            yield email(index), LEAD
        raise asyncio.CancelledError

    run = BulkRun(source(), apply_ok, concurrency=4)
    results: list[BulkResult] = []

    async def consume() -> None:
        async with run:
            async for result in run:
                results.append(result)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(consume(), timeout=30)  # a guard against a hang, not a sleep
    assert sorted(result.index for result in results) == list(range(5))
    assert all(result.ok for result in results)


class Unreadable(str):
    """A contact whose very reading fails inside the engine."""

    def __contains__(self, other: object) -> bool:
        raise RuntimeError("cannot look inside")


async def test_an_item_the_engine_cannot_read_fails_alone() -> None:
    changes: list[Any] = [(email(0), LEAD), (Unreadable("x@example.com"), LEAD), (email(1), LEAD)]
    run = BulkRun(changes, apply_ok, concurrency=2)
    results = {result.index: result for result in await collect(run)}
    assert results[0].ok and results[2].ok and run.stopped_by is None
    assert isinstance(results[1].error, ValidationError)
    assert "change 1" in str(results[1].error)


def test_a_contact_cannot_be_built_malformed() -> None:
    with pytest.raises(ValidationError, match=r"Contact\.value"):
        Contact("email", None)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"Contact\.kind"):
        Contact("phone", "123")  # type: ignore[arg-type]


def grouped(contacts: int, each: int) -> list[tuple[str, FunnelUpdate]]:
    return [(email(c), LEAD) for c in range(contacts) for _ in range(each)]


def interleaved(contacts: int, each: int) -> list[tuple[str, FunnelUpdate]]:
    return [(email(c), LEAD) for _ in range(each) for c in range(contacts)]


@pytest.mark.parametrize("order", [grouped, interleaved])
async def test_changes_waiting_for_their_contact_hold_no_slot(
    clock: VirtualClock, order: Any
) -> None:
    in_flight: dict[str, int] = {}
    peak = 0

    async def apply(contact: Contact, update: FunnelUpdate) -> tuple[Funnel, int]:
        nonlocal peak
        assert not in_flight.get(contact.value), "two changes of one contact overlapped"
        in_flight[contact.value] = 1
        peak = max(peak, sum(in_flight.values()))
        await clock.sleep(0.05)
        in_flight[contact.value] = 0
        return Funnel(), 1

    started = clock.now
    results = await collect(BulkRun(order(8, 16), apply, concurrency=16))
    assert len(results) == 128 and all(result.ok for result in results)
    assert peak == 8  # every contact busy at once, grouped or not
    assert clock.now - started == pytest.approx(16 * 0.05)  # 16 rounds: one per change each


async def test_the_look_ahead_bounds_what_is_read() -> None:
    read = 0
    release = asyncio.Event()

    def source() -> Any:
        nonlocal read
        for _ in range(10_000):
            read += 1
            yield email(0), LEAD  # one contact: everything after the first waits

    async def apply(contact: Contact, update: FunnelUpdate) -> tuple[Funnel, int]:
        await release.wait()
        return Funnel(), 1

    run = BulkRun(source(), apply, concurrency=4, lookahead=10)
    async with run:
        iterator = aiter(run)
        first = asyncio.ensure_future(anext(iterator))
        for _ in range(50):
            await asyncio.sleep(0)
        assert read == 14  # 4 workers' worth and 10 ahead, no more
        release.set()
        assert (await first).ok


# -- bad arguments, named before anything is sent --------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"access_token": b"tok"}, "access_token must be a str"),
        ({"client_id": 1, "client_secret": "s", "refresh_token": "r"}, "client_id must be a str"),
        ({"client_id": "c", "client_secret": 2, "refresh_token": "r"}, "client_secret"),
        ({"access_token": "t", "max_rate": float("nan")}, "max_rate"),
        ({"access_token": "t", "max_rate": float("inf")}, "max_rate"),
        ({"access_token": "t", "timeout": "30"}, "timeout"),
        ({"access_token": "t", "timeout": float("nan")}, "timeout"),
        ({"access_token": "t", "retry": 3}, "retry must be a RetryPolicy"),
        ({"access_token": "t", "session": "s"}, "session must be a ClientSession"),
        ({"token": "t"}, "token must be a Token"),
        ({"access_token": "t", "on_token_refresh": 5}, "on_token_refresh must be callable"),
    ],
)
def test_bad_client_arguments_are_named(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(named)) as caught:
        RDStation(**kwargs)
    assert "b'tok'" not in str(caught.value)  # a secret's value is never echoed


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"access_token": None}, "Token.access_token must be a non-empty str"),
        ({"access_token": ""}, "Token.access_token"),
        ({"access_token": "a", "refresh_token": 5}, "Token.refresh_token"),
        ({"access_token": "a", "expires_at": "tomorrow"}, "Token.expires_at"),
    ],
)
def test_bad_tokens_are_named(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(named)):
        Token(**kwargs)


async def test_bad_request_arguments_fail_before_sending(wire: aioresponses) -> None:
    async with RDStation(access_token="t") as rd:
        with pytest.raises(ValidationError, match="method"):
            await rd.request(None, "/x")  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="path"):
            await rd.request("GET", None)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="json"):
            await rd.request("POST", "/x", json={"when": object()})
    assert wire.requests == {}


async def test_an_absurd_wait_hint_is_clamped(wire: aioresponses) -> None:
    url = "https://api.rd.services/platform/contacts/email:a@example.com/funnels/default"
    body = {"error": "rate limit exceeded", "max": 24, "usage": 25, "remaining_time": 10**400}
    wire.put(url, status=429, payload=body)
    async with RDStation(access_token="t", retry=FAST) as rd:
        with pytest.raises(QuotaExceededError) as caught:
            await rd.funnels.update("a@example.com", LEAD)
    assert caught.value.retry_after == 7 * 86400


@pytest.mark.parametrize("expires_in", [1e20, "inf", 10**400, "nan"])
async def test_absurd_token_lifetimes_are_clamped_and_the_rotated_token_saved(
    wire: aioresponses, expires_in: Any
) -> None:
    answer = json.dumps(
        {"access_token": "new", "refresh_token": "rotated", "expires_in": expires_in}
    )
    wire.post("https://api.rd.services/auth/token", status=200, body=answer)
    wire.get("https://api.rd.services/marketing/account_info", payload={"name": "x"})
    async with RDStation(client_id="c", client_secret="s", refresh_token="old") as rd:
        await rd.account_info()
        token = rd._tokens.token  # type: ignore[attr-defined]
    assert token.refresh_token == "rotated"
    assert token.expires_at is None or token.expires_in() <= 366 * 86400


def test_a_token_file_with_an_out_of_range_time_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    path.write_text(json.dumps({"access_token": "a", "expires_at": "9999-12-31T23:59:59-05:00"}))
    with pytest.raises(TokenStoreError, match="out of range") as caught:
        asyncio.run(FileTokenStore(path).load())
    assert "a" not in str(caught.value).split("token.json")[-1].split()  # no secret echoed


async def test_stale_token_temporaries_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    stale = tmp_path / ".token.json.abc123.tmp"
    stale.write_text('{"access_token": "left behind"}')
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    fresh = tmp_path / ".token.json.def456.tmp"  # another process's write under way
    fresh.write_text("{}")
    await FileTokenStore(path).save(Token(access_token="a"))
    assert not stale.exists() and fresh.exists()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


async def test_a_token_file_of_another_app_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    async with (
        FakeRDStation(contacts=1) as fake,
        fake.client(token_store=FileTokenStore(path)) as rd,
    ):
        await rd.funnels.get(email(0))
        assert json.loads(path.read_text())["client_id"] == fake.client_id
        other = RDStation(
            client_id="another-app",
            client_secret="s",
            refresh_token="r",
            token_store=FileTokenStore(path),
            base_url=fake.url,
        )
        async with other:
            with pytest.raises(TokenAppMismatchError) as caught:
                await other.funnels.get(email(0))
    message = str(caught.value)
    assert str(path) in message and "another-app" in message and fake.client_id in message
    assert "RDFUNNEL_TOKEN_FILE" in message and "token_store" in message
    assert isinstance(caught.value, TokenStoreError)


@pytest.mark.parametrize(
    ("token_url", "refused"),
    [
        ("https://accounts.rdstation.com/oauth2/token", True),  # another OAuth server
        ("https://api.rd.services:8443/proxied/auth/token", False),  # the same host
    ],
)
async def test_a_token_from_another_token_server_is_refused(
    wire: aioresponses, token_url: str, refused: bool
) -> None:
    stored = Token(access_token="a", refresh_token="r", client_id="c", token_url=token_url)
    wire.get("https://api.rd.services/marketing/account_info", payload={"name": "x"})
    async with RDStation(
        client_id="c", client_secret="s", token_store=MemoryTokenStore(stored)
    ) as rd:
        if refused:
            with pytest.raises(TokenAppMismatchError, match=r"accounts\.rdstation\.com"):
                await rd.account_info()
            assert wire.requests == {}
        else:
            assert await rd.account_info() == {"name": "x"}
