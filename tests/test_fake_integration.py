"""The SDK core against FakeRDStation over real sockets: routes, faults, limits, tokens.

The fake's counters prove what the client really sent. The project's ``clock`` fixture (see
conftest), passed to the client, makes its sleeps virtual; handing the same clock to the fake
keeps both sides on one timeline, so a 1-second ``retry-after-quotas`` costs no real second.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rdfunnel import Contact, Funnel, FunnelUpdate, LifecycleStage, RDStation, RetryPolicy
from rdfunnel.errors import (
    BadRequestError,
    InvalidRefreshTokenError,
    NotFoundError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)
from rdfunnel.testing import FakeRDStation, Faults, Limits, plugin
from rdfunnel.testing.plugin import (  # noqa: F401
    rdstation,
    rdstation_fake,
    rdstation_fake_options,
)

from .conftest import VirtualClock

FAST = RetryPolicy(max_retries=3, backoff_base=0.001, backoff_cap=0.01)
ANA = "ana@example.com"


@pytest.fixture
async def fake(clock: VirtualClock) -> AsyncIterator[FakeRDStation]:
    async with FakeRDStation(clock=clock.monotonic) as server:
        server.add_contact(ANA, fit=60, interest=100)
        yield server


@pytest.fixture
async def rd(fake: FakeRDStation, clock: VirtualClock) -> AsyncIterator[RDStation]:
    async with fake.client(retry=FAST, timeout=0.25, clock=clock) as client:
        yield client


def seed_for(*faulty: bool, chance: float = 0.5) -> int:
    """A Faults seed whose first draws meet a fault (True) or not (False) in this order."""
    for seed in range(10_000):
        rng = random.Random(seed)
        if all((rng.random() < chance) == want for want in faulty):
            return seed
    raise AssertionError("no such seed")  # pragma: no cover


# -- routes ----------------------------------------------------------------------------------


async def test_get_update_and_request(fake: FakeRDStation, rd: RDStation) -> None:
    funnel = await rd.funnels.get(ANA)
    assert funnel == Funnel(LifecycleStage.LEAD, False, None, 60, 100)
    update = FunnelUpdate(lifecycle_stage=LifecycleStage.CLIENT, opportunity=True)
    updated = await rd.funnels.update(Contact.email(ANA), update)
    assert updated.lifecycle_stage is LifecycleStage.CLIENT
    assert updated.opportunity is True
    assert await rd.request("GET", "/marketing/account_info") == {"name": "rdfunnel fake account"}
    uuid = fake.contact(ANA).uuid
    by_uuid = await rd.funnels.get(Contact.uuid(uuid))
    assert by_uuid.lifecycle_stage is LifecycleStage.CLIENT
    assert fake.puts[ANA] == ({"lifecycle_stage": "Client", "opportunity": True},)
    stats = fake.stats
    assert stats.count("funnels.get", 200) == 2
    assert stats.count("funnels.put", 200) == 1
    assert stats.grants == {"refresh": 1}  # one token for everything


@pytest.mark.parametrize(("clear_owner_as", "sent"), [("string", "null"), ("null", None)])
async def test_clearing_the_owner(
    fake: FakeRDStation, clear_owner_as: str, sent: str | None
) -> None:
    fake.add_contact("owned@example.com", contact_owner_email="boss@example.com")
    async with fake.client(retry=FAST, clear_owner_as=clear_owner_as) as rd:
        funnel = await rd.funnels.update("owned@example.com", contact_owner_email=None)
    assert funnel.contact_owner_email is None
    assert fake.puts["owned@example.com"] == ({"contact_owner_email": sent},)


async def test_404_is_tried_once(fake: FakeRDStation, rd: RDStation) -> None:
    with pytest.raises(NotFoundError) as info:
        await rd.funnels.get("nobody@example.com")
    assert info.value.error_type == "RESOURCE_NOT_FOUND"
    assert info.value.attempts == 1
    assert fake.stats.count("funnels.get") == 1


async def test_invalid_user_is_a_bad_request_tried_once(clock: VirtualClock) -> None:
    async with FakeRDStation(users=["boss@example.com"], clock=clock.monotonic) as fake:
        fake.add_contact(ANA)
        async with fake.client(retry=FAST, clock=clock) as rd:
            with pytest.raises(BadRequestError) as info:
                await rd.funnels.update(ANA, contact_owner_email="stranger@example.com")
        assert info.value.details["contact_owner_email"][0]["error_type"] == "INVALID_USER"
        assert fake.stats.count("funnels.put") == 1


@pytest.mark.parametrize(
    "email", ["a+tag@example.com", "we/ird@example.com", "josé.ñandú@exämple.com", "x%y?z#w@e.com"]
)
async def test_emails_round_trip(fake: FakeRDStation, rd: RDStation, email: str) -> None:
    fake.add_contact(email)
    await rd.funnels.update(email, opportunity=True)
    assert (await rd.funnels.get(email)).opportunity is True
    assert fake.puts[email] == ({"opportunity": True},)
    assert fake.stats.count("funnels.get", 404) == 0


async def test_bulk_applies_each_contacts_changes_in_order(
    fake: FakeRDStation, rd: RDStation
) -> None:
    emails = [f"c{i}@example.com" for i in range(5)]
    for email in emails:
        fake.add_contact(email)
    stages = [LifecycleStage.QUALIFIED_LEAD, LifecycleStage.CLIENT, LifecycleStage.LEAD]
    changes = [(email, FunnelUpdate(lifecycle_stage=s)) for s in stages for email in emails]
    async with rd.funnels.update_many(changes, concurrency=8) as run:
        results = [result async for result in run]
    assert all(result.ok for result in results)
    for email in emails:
        assert [put["lifecycle_stage"] for put in fake.puts[email]] == [s.value for s in stages]
        assert fake.contact(email).lifecycle_stage == "Lead"


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["html_502", "html_504", "json_500", "json_503"])
async def test_server_faults_retried_then_surface(
    fake: FakeRDStation, rd: RDStation, kind: str
) -> None:
    fake.faults = Faults(**{kind: 1.0})  # type: ignore[arg-type]
    with pytest.raises(ServerError) as info:
        await rd.funnels.get(ANA)
    assert info.value.attempts == FAST.max_retries + 1
    assert fake.stats.faults == {kind: FAST.max_retries + 1}


@pytest.mark.parametrize("kind", ["html_502", "html_504", "json_500", "json_503", "slow"])
async def test_one_fault_then_success(fake: FakeRDStation, rd: RDStation, kind: str) -> None:
    fake.faults = Faults(**{kind: 0.5}, slow_seconds=5, seed=seed_for(True, False))
    funnel = await rd.funnels.update(ANA, lifecycle_stage="Client")
    assert funnel.lifecycle_stage is LifecycleStage.CLIENT
    assert fake.stats.faults == {kind: 1}
    assert fake.stats.count("funnels.put", 200) == 1
    assert fake.puts[ANA] == ({"lifecycle_stage": "Client"},)


async def test_dropped_connections_surface_as_transport_errors(
    fake: FakeRDStation, rd: RDStation
) -> None:
    fake.faults = Faults(drop=1.0)
    with pytest.raises(TransportError) as info:
        await rd.funnels.get(ANA)
    assert info.value.attempts == FAST.max_retries + 1
    # aiohttp itself resends an idempotent request once on a dropped keep-alive connection.
    assert fake.stats.faults["drop"] >= FAST.max_retries + 1


async def test_a_dropped_connection_is_retried(fake: FakeRDStation, rd: RDStation) -> None:
    await rd.funnels.get(ANA)  # warm the keep-alive connection and the token
    fake.faults = Faults(drop=0.5, seed=seed_for(True, True, False))
    assert (await rd.funnels.get(ANA)).fit == 60
    assert fake.stats.faults == {"drop": 2}


async def test_slow_answers_time_out(fake: FakeRDStation) -> None:
    fake.faults = Faults(slow=1.0, slow_seconds=5)
    async with fake.client(retry=RetryPolicy(max_retries=1, backoff_base=0), timeout=0.05) as rd:
        with pytest.raises(RequestTimeoutError) as info:
            await rd.funnels.get(ANA)
    assert info.value.attempts == 2


async def test_early_expiry_refreshes_once_and_replays(fake: FakeRDStation, rd: RDStation) -> None:
    await rd.funnels.get(ANA)
    fake.faults = Faults(early_expiry=0.5, seed=seed_for(True, False))
    assert (await rd.funnels.get(ANA)).fit == 60
    assert fake.stats.grants == {"refresh": 2}
    assert fake.stats.count("funnels.get", 401) == 1


# -- tokens ----------------------------------------------------------------------------------


async def test_expired_tokens_are_refreshed(fake: FakeRDStation, rd: RDStation) -> None:
    await rd.funnels.get(ANA)
    fake.expire_tokens()
    await rd.funnels.get(ANA)
    assert fake.stats.grants == {"refresh": 2}
    assert fake.stats.count("funnels.get", 401) <= 1  # proactive refresh may avoid the 401


async def test_rotating_refresh_tokens(clock: VirtualClock) -> None:
    async with FakeRDStation(rotate_refresh_tokens=True, clock=clock.monotonic) as fake:
        fake.add_contact(ANA)
        async with fake.client(retry=FAST, clock=clock) as rd:
            for _ in range(3):
                await rd.funnels.get(ANA)
                fake.expire_tokens()
            await rd.funnels.get(ANA)
        assert fake.stats.grants == {"refresh": 4}
        assert fake.stats.count("auth.token", 401) == 0


async def test_revoked_tokens_stop_the_client(fake: FakeRDStation, rd: RDStation) -> None:
    await rd.funnels.get(ANA)
    fake.revoke_all()
    with pytest.raises(InvalidRefreshTokenError):
        await rd.funnels.get(ANA)
    assert fake.stats.count("auth.token", 401) == 1


async def test_a_bare_access_token(fake: FakeRDStation) -> None:
    async with fake.client(access_token=fake.issue_access_token(), retry=FAST) as rd:
        assert (await rd.funnels.get(ANA)).interest == 100
    assert fake.stats.grants == {}


# -- rate limits -----------------------------------------------------------------------------


async def test_per_contact_quota_fails_at_once(
    fake: FakeRDStation, rd: RDStation, clock: VirtualClock
) -> None:
    fake.limits = Limits(per_contact=24, window=86400)
    for _ in range(24):
        await rd.funnels.get(ANA)
    clock.now += 43333
    with pytest.raises(RateLimitError) as info:
        await rd.funnels.update(ANA, opportunity=True)
    error = info.value
    assert (error.scope, error.retry_after, error.limit, error.usage) == ("contact", 43067, 24, 25)
    assert error.attempts == 1
    assert fake.stats.rate_limited == {"contact": 1}


async def test_account_cap_pauses_then_succeeds(
    fake: FakeRDStation, rd: RDStation, clock: VirtualClock
) -> None:
    fake.limits = Limits(account_rps=2)
    for _ in range(3):
        await rd.funnels.get(ANA)
    assert fake.stats.rate_limited == {"account": 1}
    assert fake.stats.count("funnels.get", 200) == 3


async def test_account_cap_longer_than_max_wait_surfaces(fake: FakeRDStation) -> None:
    fake.limits = Limits(account_rps=1)
    policy = RetryPolicy(max_retries=3, backoff_base=0.001, max_wait=0.5)
    async with fake.client(retry=policy) as rd:
        await rd.funnels.get(ANA)
        with pytest.raises(RateLimitError) as info:
            await rd.funnels.get(ANA)
    assert (info.value.scope, info.value.retry_after) == ("account", 1.0)
    assert info.value.attempts == 1


# -- the pytest plugin -----------------------------------------------------------------------


async def test_rdstation_fixture(rdstation: RDStation, rdstation_fake: FakeRDStation) -> None:  # noqa: F811
    rdstation_fake.add_contact("fixture@example.com")
    result: Any = await rdstation.funnels.get("fixture@example.com")
    assert isinstance(result, Funnel)
    assert rdstation_fake.stats.count("funnels.get", 200) == 1


@pytest.mark.rdstation_fake(faults=Faults(json_503=1.0))
async def test_rdstation_fixture_retries_with_short_backoffs(
    rdstation: RDStation,  # noqa: F811
    rdstation_fake: FakeRDStation,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    rdstation_fake.add_contact(ANA)
    caplog.set_level(logging.INFO, logger="rdfunnel")
    with pytest.raises(ServerError) as info:
        await rdstation.funnels.get(ANA)
    assert info.value.attempts == 4  # the default policy's 3 retries, all made
    waits = [r.wait for r in caplog.records if getattr(r, "event", None) == "retry_scheduled"]
    assert len(waits) == 3
    assert all(0 <= wait <= plugin.BACKOFF_CAP for wait in waits)  # the default: up to 2 s each
