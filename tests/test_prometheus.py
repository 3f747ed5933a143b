"""PrometheusHooks against FakeRDStation: its counters equal what the fake counted, and no label
ever holds a contact.

Each test has its own ``CollectorRegistry``; the ``clock`` fixture makes every wait virtual.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter

from rdfunnel import BulkResult, BulkSummary, FunnelUpdate, LifecycleStage, RDStation, RetryPolicy
from rdfunnel.contrib.prometheus import PrometheusHooks
from rdfunnel.errors import QuotaExceededError, RateLimitError, TransportError
from rdfunnel.events import (
    AttemptEnded,
    BulkStarted,
    CallStarted,
    ClientPaused,
    Event,
    RetryScheduled,
    TokenRefreshed,
)
from rdfunnel.testing import FakeRDStation, Faults, Limits, Stats

from .conftest import VirtualClock

E = TypeVar("E")

FUNNEL = "/platform/contacts/{contact}/funnels/{funnel}"
TOKEN = "/auth/token"
PATIENT = RetryPolicy(max_retries=12, backoff_base=0.001, backoff_cap=0.01)
EMAILS = ("ana@example.com", "bo+tag@example.com", "we/ird@example.com", "josé@exämple.com")

#: The fake's route names, as (method, route template) on the client's side.
ROUTES = {
    "funnels.get": ("GET", FUNNEL),
    "funnels.put": ("PUT", FUNNEL),
    "auth.token": ("POST", TOKEN),
}


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    """Every sample called ``name`` (e.g. ``rdfunnel_requests_total``), by its label values."""
    found: dict[tuple[str, ...], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sample.labels.values())] = sample.value
    return found


def nonzero(values: Mapping[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    return {labels: value for labels, value in values.items() if value}


def requests_the_fake_answered(stats: Stats) -> dict[tuple[str, ...], float]:
    """The fake's request counts in the metric's labels: a dropped connection (0) is a
    ``TransportError`` on the client's side."""
    expected: dict[tuple[str, ...], float] = {}
    for (route, status), count in stats.requests.items():
        method, template = ROUTES[route]
        expected[(method, template, str(status) if status else "TransportError")] = count
    return expected


class Recorder:
    """A second hook: what the client told, to compare with what the metrics say."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]


def assert_no_contact_anywhere(registry: CollectorRegistry, emails: tuple[str, ...]) -> None:
    text = generate_latest(registry).decode()
    for email in emails:
        for form in {email, email.lower(), quote(email, safe=""), quote(email), email[:1] + "***"}:
            assert form not in text, form
    assert "@" not in text and "%40" not in text.lower()
    for family in registry.collect():
        for sample in family.samples:
            for value in sample.labels.values():
                assert "@" not in value and "%40" not in value.lower(), (sample.name, value)
                assert not value.startswith(("email:", "uuid:")), (sample.name, value)


# -- against the fake ------------------------------------------------------------------------


async def test_requests_retries_and_refreshes_equal_the_fakes_counts(clock: VirtualClock) -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    faults = Faults(json_503=0.15, html_502=0.1, json_500=0.05, early_expiry=0.05, seed=16)
    async with FakeRDStation(faults=faults, clock=clock.monotonic) as fake:
        for email in EMAILS:
            fake.add_contact(email)
        hooks = [PrometheusHooks(registry), recorder]
        async with fake.client(retry=PATIENT, clock=clock, hooks=hooks, log_contacts=True) as rd:
            for round_ in range(4):
                for email in EMAILS:
                    await rd.funnels.get(email)
                    await rd.funnels.update(email, opportunity=round_ % 2 == 0)
                fake.expire_tokens()  # the next round starts with a 401, a refresh, a replay
        stats = fake.stats

    # The faults did happen, each kind of them.
    assert stats.count(status=503) and stats.count(status=502) and stats.count(status=500)
    assert stats.count("funnels.get", 401) + stats.count("funnels.put", 401) >= 3
    requests = nonzero(samples(registry, "rdfunnel_requests_total"))
    assert requests == requests_the_fake_answered(stats)
    assert sum(requests.values()) == len(recorder.of(AttemptEnded))

    # The histogram saw every attempt once, per method and route.
    durations = samples(registry, "rdfunnel_request_duration_seconds_count")
    per_route: Counter[tuple[str, ...]] = Counter()
    for (method, route, _), count in requests.items():
        per_route[(method, route)] += int(count)
    assert durations == per_route

    # Every failed attempt was retried (none ran out of retries), for the reason it failed.
    retries = nonzero(samples(registry, "rdfunnel_retries_total"))
    api_401 = stats.count("funnels.get", 401) + stats.count("funnels.put", 401)
    assert retries == {
        ("HTTP 503",): stats.count(status=503),
        ("HTTP 502",): stats.count(status=502),
        ("HTTP 500",): stats.count(status=500),
        ("HTTP 401",): api_401,
    }
    assert sum(retries.values()) == len(recorder.of(RetryScheduled))

    # One refresh per token the fake granted, none refused or failed.
    refreshes = samples(registry, "rdfunnel_token_refreshes_total")
    assert refreshes == {("ok",): stats.grants["refresh"], ("refused",): 0, ("failed",): 0}
    assert stats.grants["refresh"] == len(recorder.of(TokenRefreshed)) >= 5
    assert_no_contact_anywhere(registry, EMAILS)


async def test_dropped_connections(clock: VirtualClock) -> None:
    """A lost answer is a ``TransportError`` attempt. aiohttp itself resends an idempotent request
    once over a fresh connection when its connection drops (RFC 9112 section 9.3.1), inside one
    of rdfunnel's attempts: the fake sees two requests per attempt, the metric one."""
    registry = CollectorRegistry()
    policy = RetryPolicy(max_retries=3, backoff_base=0.001, backoff_cap=0.01)
    async with FakeRDStation(clock=clock.monotonic) as fake:
        fake.add_contact(EMAILS[0])
        async with fake.client(retry=policy, clock=clock, hooks=[PrometheusHooks(registry)]) as rd:
            await rd.funnels.get(EMAILS[0])
            fake.faults = Faults(drop=1.0)
            with pytest.raises(TransportError) as info:
                await rd.funnels.get(EMAILS[0])
        stats = fake.stats
    assert info.value.attempts == 4
    requests = samples(registry, "rdfunnel_requests_total")
    assert requests[("GET", FUNNEL, "TransportError")] == 4
    assert stats.count("funnels.get", 0) == 2 * 4
    assert samples(registry, "rdfunnel_retries_total") == {("TransportError",): 3}


async def test_429s_and_pauses(clock: VirtualClock) -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    async with FakeRDStation(limits=Limits(account_rps=2), clock=clock.monotonic) as fake:
        fake.add_contact(EMAILS[0])
        hooks = [PrometheusHooks(registry), recorder]
        async with fake.client(retry=PATIENT, clock=clock, hooks=hooks) as rd:
            for _ in range(5):
                await rd.funnels.get(EMAILS[0])
            fake.limits = Limits(per_contact=6)  # a fresh window: 6 more, then the quota
            for _ in range(6):
                await rd.funnels.get(EMAILS[0])
            with pytest.raises(QuotaExceededError) as info:
                await rd.funnels.get(EMAILS[0])
        stats = fake.stats

    assert isinstance(info.value, RateLimitError) and info.value.scope == "contact"
    assert stats.rate_limited["account"] >= 2 and stats.rate_limited["contact"] == 1
    assert samples(registry, "rdfunnel_rate_limited_total") == {
        ("account",): stats.rate_limited["account"],
        ("contact",): 1,
    }
    requests = nonzero(samples(registry, "rdfunnel_requests_total"))
    assert requests == requests_the_fake_answered(stats)
    assert requests[("GET", FUNNEL, "429")] == stats.count("funnels.get", 429)
    # Each account-wide 429 paused the client for the hint, and was retried; the contact's is not.
    paused = [event.seconds for event in recorder.of(ClientPaused)]
    assert len(paused) == stats.rate_limited["account"] and all(s > 0 for s in paused)
    assert samples(registry, "rdfunnel_pause_seconds_total") == {("account",): sum(paused)}
    assert nonzero(samples(registry, "rdfunnel_retries_total")) == {
        ("HTTP 429",): stats.rate_limited["account"]
    }


def bulk_change(index: int, contact: str) -> tuple[str, FunnelUpdate]:
    stage = tuple(LifecycleStage)[index % 3]
    return contact, FunnelUpdate(lifecycle_stage=stage, opportunity=index % 2 == 0)


async def collect(
    rd: RDStation, changes: list[tuple[str, FunnelUpdate]]
) -> tuple[list[BulkResult], BulkSummary]:
    run = rd.funnels.update_many(changes, concurrency=8)
    async with run:
        results = [result async for result in run]
    return results, run.summary


async def test_a_bulk_run_with_faults_and_unknown_contacts(clock: VirtualClock) -> None:
    registry = CollectorRegistry()
    known = [f"contact-{n}@example.com" for n in range(30)]
    strangers = [f"stranger-{n}@example.com" for n in range(5)]  # 404: failed items
    changes = [bulk_change(i, known[i % 30]) for i in range(120)]
    changes += [bulk_change(i, stranger) for i, stranger in enumerate(strangers)]
    faults = Faults(json_503=0.2, html_504=0.05, seed=3)
    async with FakeRDStation(contacts=30, faults=faults, clock=clock.monotonic) as fake:
        hooks = [PrometheusHooks(registry)]
        async with fake.client(retry=PATIENT, clock=clock, hooks=hooks) as rd:
            results, summary = await collect(rd, changes)
        stats = fake.stats

    assert summary.total == len(changes) == len(results)
    assert (summary.succeeded, summary.failed, summary.not_attempted) == (120, 5, 0)
    assert samples(registry, "rdfunnel_bulk_items_total") == {
        ("succeeded",): 120,
        ("failed",): 5,
        ("not_attempted",): 0,
    }
    assert nonzero(samples(registry, "rdfunnel_requests_total")) == requests_the_fake_answered(
        stats
    )
    assert stats.count("funnels.put", 404) == 5
    # The run's retries are its items' re-sends: the retries the metric counted.
    retries = samples(registry, "rdfunnel_retries_total")
    assert sum(retries.values()) == summary.retries > 0
    assert_no_contact_anywhere(registry, tuple(known + strangers))


async def test_a_bulk_run_stopped_by_the_account_quota(clock: VirtualClock) -> None:
    registry = CollectorRegistry()
    changes = [bulk_change(i, f"contact-{i % 4}@example.com") for i in range(200)]  # chains
    limits = Limits(account_quota=50)
    async with FakeRDStation(contacts=4, limits=limits, clock=clock.monotonic) as fake:
        async with fake.client(retry=PATIENT, clock=clock, hooks=[PrometheusHooks(registry)]) as rd:
            results, summary = await collect(rd, changes)
        stats = fake.stats

    # Every item read has exactly one result, those parked behind their contact's change unsent.
    assert len(results) == summary.total
    items = samples(registry, "rdfunnel_bulk_items_total")
    assert items == {
        ("succeeded",): summary.succeeded,
        ("failed",): summary.failed,
        ("not_attempted",): summary.not_attempted,
    }
    assert summary.succeeded == 50 and summary.failed >= 1 and summary.not_attempted >= 1
    assert (
        samples(registry, "rdfunnel_rate_limited_total")[("account",)]
        == stats.rate_limited["account"]
    )
    assert nonzero(samples(registry, "rdfunnel_requests_total")) == requests_the_fake_answered(
        stats
    )


async def test_two_clients_share_one_registry(clock: VirtualClock) -> None:
    registry = CollectorRegistry()
    async with FakeRDStation(clock=clock.monotonic) as fake:
        fake.add_contact(EMAILS[0])
        first = fake.client(clock=clock, hooks=[PrometheusHooks(registry)])
        second = fake.client(clock=clock, hooks=[PrometheusHooks(registry)])
        async with first, second:
            await first.funnels.get(EMAILS[0])
            await second.funnels.get(EMAILS[0])
            await second.funnels.get(EMAILS[0])
    assert samples(registry, "rdfunnel_requests_total") == {
        ("POST", TOKEN, "200"): 2,
        ("GET", FUNNEL, "200"): 3,
    }
    assert samples(registry, "rdfunnel_token_refreshes_total")[("ok",)] == 2


def test_the_default_registry_twice() -> None:
    first, second = PrometheusHooks(), PrometheusHooks(None)
    assert first.registry is REGISTRY and second.registry is REGISTRY
    assert REGISTRY.get_sample_value("rdfunnel_rate_limited_total", {"scope": "account"}) == 0


# -- the exposition --------------------------------------------------------------------------


def test_exposed_names_and_types() -> None:
    registry = CollectorRegistry()
    hooks = PrometheusHooks(registry)
    hooks(
        AttemptEnded(
            operation="funnels.get", method="GET", route=FUNNEL, attempt=1, duration=0.2, status=200
        )
    )
    hooks(
        RetryScheduled(
            operation="funnels.get",
            method="GET",
            route=FUNNEL,
            retry=1,
            reason="HTTP 503",
            wait=0.5,
        )
    )
    text = generate_latest(registry).decode()
    types = {
        line.split()[2]: line.split()[3]
        for line in text.splitlines()
        if line.startswith("# TYPE rdfunnel_") and not line.split()[2].endswith("_created")
    }
    assert types == {
        "rdfunnel_requests_total": "counter",
        "rdfunnel_request_duration_seconds": "histogram",
        "rdfunnel_retries_total": "counter",
        "rdfunnel_rate_limited_total": "counter",
        "rdfunnel_pause_seconds_total": "counter",
        "rdfunnel_token_refreshes_total": "counter",
        "rdfunnel_bulk_items_total": "counter",
    }
    assert (
        'rdfunnel_requests_total{method="GET",route="/platform/contacts/{contact}/funnels/{funnel}",'
        'status="200"} 1.0'
    ) in text
    bucket = "rdfunnel_request_duration_seconds_bucket"
    labels = {"method": "GET", "route": FUNNEL}
    assert registry.get_sample_value(bucket, {**labels, "le": "0.1"}) == 0
    assert registry.get_sample_value(bucket, {**labels, "le": "0.25"}) == 1
    assert 'rdfunnel_retries_total{reason="HTTP 503"} 1.0' in text
    assert "_total_total" not in text


def test_each_event_kind_directly() -> None:
    registry = CollectorRegistry()
    hooks = PrometheusHooks(registry)
    common: dict[str, Any] = {"operation": "funnels.update", "method": "PUT", "route": FUNNEL}
    for error in ("TransportError", "RequestTimeoutError", "TransportError"):
        hooks(AttemptEnded(**common, attempt=1, duration=0.1, error=error))
    # An error answer carries both: its status is the label.
    hooks(AttemptEnded(**common, attempt=2, duration=0.1, status=503, error="ServerError"))
    hooks(ClientPaused(scope="account", seconds=1.5))
    hooks(ClientPaused(scope="account", seconds=2.0))
    hooks(ClientPaused(scope="account", seconds=0.0))
    hooks(CallStarted(**common))  # ignored
    hooks(BulkStarted(bulk_run=1, concurrency=4))  # ignored
    hooks(
        TokenRefreshed(outcome="refused", duration=0.3, waiters=2, error="InvalidRefreshTokenError")
    )
    hooks(TokenRefreshed(outcome="failed", duration=0.3, waiters=0, error="TransportError"))
    assert samples(registry, "rdfunnel_requests_total") == {
        ("PUT", FUNNEL, "TransportError"): 2,
        ("PUT", FUNNEL, "RequestTimeoutError"): 1,
        ("PUT", FUNNEL, "503"): 1,
    }
    assert samples(registry, "rdfunnel_pause_seconds_total") == {("account",): 3.5}
    assert samples(registry, "rdfunnel_token_refreshes_total") == {
        ("ok",): 0,
        ("refused",): 1,
        ("failed",): 1,
    }
    durations = samples(registry, "rdfunnel_request_duration_seconds_sum")
    assert durations == {("PUT", FUNNEL): pytest.approx(0.4)}


def test_names_taken_by_someone_else() -> None:
    registry = CollectorRegistry()
    PromCounter("rdfunnel_retries", "not ours", registry=registry)
    with pytest.raises(ValueError, match="other than by PrometheusHooks"):
        PrometheusHooks(registry)
    # Nothing half-registered is left behind.
    names = {family.name for family in registry.collect()}
    assert names == {"rdfunnel_retries"}


# -- imports ---------------------------------------------------------------------------------


def test_importing_rdfunnel_does_not_import_prometheus_client() -> None:
    code = "import rdfunnel, sys; assert 'prometheus_client' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_prometheus_client_the_import_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n"
        "    import rdfunnel.contrib.prometheus\n"
        "except ImportError as error:\n"
        "    assert \"pip install 'rdfunnel[prometheus]'\" in str(error), error\n"
        "else:\n"
        "    raise SystemExit('imported')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
