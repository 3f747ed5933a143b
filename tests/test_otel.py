"""rdfunnel.contrib.otel against the fake RD Station: spans, metrics, and no contact in either.

Every test has its own SDK providers (an in-memory span exporter behind a simple processor, an
in-memory metric reader), never the global ones; the client runs on the virtual clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from opentelemetry import context, trace
from opentelemetry.instrumentation._semconv import (
    _OpenTelemetrySemanticConventionStability,
    _OpenTelemetryStabilitySignalType,
    _StabilityMode,
)
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from yarl import URL

from rdfunnel import Contact, FunnelUpdate, LifecycleStage, RDStation, RetryPolicy
from rdfunnel.bulk import BulkSummary
from rdfunnel.contrib.otel import OpenTelemetryHooks, url_filter
from rdfunnel.errors import (
    NotFoundError,
    RateLimitError,
    RDStationError,
    ServerError,
    TransportError,
)
from rdfunnel.events import (
    AttemptEnded,
    BulkEnded,
    BulkProgress,
    BulkStarted,
    CallEnded,
    CallStarted,
    ClientPaused,
)
from rdfunnel.testing import FakeRDStation, Faults, Limits

from .conftest import VirtualClock
from .test_fake_integration import seed_for

FAST = RetryPolicy(max_retries=3, backoff_base=0.001, backoff_cap=0.01)
ANA = "ana.secret@example.com"
BIA = "we/bia.secret@example.com"
NOBODY = "nobody.secret@example.com"
#: What no span, attribute, event or metric may hold: the local parts of the emails used.
SECRETS = ("ana.secret", "bia.secret", "nobody.secret", "bulk.secret", "query.secret")
FUNNEL = "/platform/contacts/{contact}/funnels/{funnel}"
GET_FUNNEL = f"GET {FUNNEL}"
PUT_FUNNEL = f"PUT {FUNNEL}"
TOKEN = "POST /auth/token"


class Telemetry:
    """Fresh SDK providers, what they recorded, and ways to look at it."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self._metrics: Any = None

    def hooks(self, **options: Any) -> OpenTelemetryHooks:
        return OpenTelemetryHooks(self.tracer_provider, self.meter_provider, **options)

    @property
    def spans(self) -> tuple[ReadableSpan, ...]:
        return tuple(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return sorted(
            (s for s in self.spans if s.parent is not None and s.parent.span_id == sid(parent)),
            key=lambda s: s.start_time or 0,
        )

    def collect(self) -> Any:
        self._metrics = self.reader.get_metrics_data()
        return self._metrics

    def points(self, name: str) -> list[Any]:
        data = self.collect()
        found: list[Any] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def counts(self, name: str, attribute: str) -> dict[Any, int]:
        totals: dict[Any, int] = {}
        for point in self.points(name):
            key = point.attributes.get(attribute)
            totals[key] = totals.get(key, 0) + point.value
        return totals

    def attempts_recorded(self) -> int:
        points = self.points("http.client.request.duration")
        assert all(isinstance(point, HistogramDataPoint) for point in points)
        return sum(point.count for point in points)

    def dump(self) -> str:
        """Everything recorded, as text: span names, attributes, events, statuses, metrics."""
        data = self.collect()
        spans = [span.to_json() for span in self.spans]
        return "\n".join([*spans, data.to_json() if data else ""])


def sid(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        for form in (secret, quote(secret), quote(secret, safe="")):
            assert form not in text, f"{form!r} leaked"


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    recorded = Telemetry()
    yield recorded
    recorded.tracer_provider.shutdown()
    recorded.meter_provider.shutdown()


@pytest.fixture(autouse=True)
def no_hook_failures(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No test may see a hook fail, or OpenTelemetry fail to detach a context."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        assert getattr(record, "event", None) != "hook_failed", record.getMessage()
        assert "detach" not in record.getMessage(), record.getMessage()


@pytest.fixture
async def fake(clock: VirtualClock) -> AsyncIterator[FakeRDStation]:
    async with FakeRDStation(clock=clock.monotonic) as server:
        server.add_contact(ANA, fit=60, interest=100)
        server.add_contact(BIA)
        yield server


@pytest.fixture
async def rd(
    fake: FakeRDStation, clock: VirtualClock, telemetry: Telemetry
) -> AsyncIterator[RDStation]:
    hooks = [telemetry.hooks()]
    async with fake.client(retry=FAST, timeout=0.25, clock=clock, hooks=hooks) as client:
        yield client


async def warm(rd: RDStation, telemetry: Telemetry) -> None:
    """Get the client its token (and a keep-alive connection), then forget the spans."""
    await rd.funnels.get(ANA)
    telemetry.exporter.clear()


# -- spans -----------------------------------------------------------------------------------


async def test_a_call_has_a_call_span_and_an_attempt_span(
    rd: RDStation, telemetry: Telemetry
) -> None:
    await rd.funnels.get(ANA)
    call = telemetry.one("rdfunnel funnels.get")
    assert call.kind is SpanKind.INTERNAL
    assert call.parent is None
    assert call.status.status_code is StatusCode.UNSET
    assert dict(call.attributes or {}) == {
        "rdfunnel.operation": "funnels.get",
        "rdfunnel.contact.kind": "email",
        "rdfunnel.attempts": 1,
        "http.response.status_code": 200,
    }
    refresh, attempt = telemetry.children(call)  # the token it needed first, then its request
    assert attempt.name == GET_FUNNEL
    assert attempt.kind is SpanKind.CLIENT
    assert dict(attempt.attributes or {}) == {
        "http.request.method": "GET",
        "url.template": FUNNEL,
        "http.response.status_code": 200,
    }
    assert attempt.status.status_code is StatusCode.UNSET
    assert call.start_time is not None and attempt.start_time is not None
    assert attempt.end_time is not None and call.end_time is not None
    assert call.start_time <= attempt.start_time <= attempt.end_time <= call.end_time
    # The token request is a call of its own, nested under the call that needed it.
    assert refresh.name == "rdfunnel token.refresh"
    assert refresh.kind is SpanKind.INTERNAL
    assert refresh.attributes is not None
    assert refresh.attributes["rdfunnel.operation"] == "token.refresh"
    assert "rdfunnel.contact.kind" not in refresh.attributes
    (token_attempt,) = telemetry.children(refresh)
    assert token_attempt.name == TOKEN
    assert token_attempt.kind is SpanKind.CLIENT
    assert token_attempt.attributes is not None
    assert token_attempt.attributes["http.response.status_code"] == 200
    assert {span.context.trace_id for span in telemetry.spans if span.context} == {
        call.context.trace_id if call.context else 0
    }
    assert len(telemetry.spans) == 4
    assert telemetry.counts("rdfunnel.token.refreshes", "rdfunnel.token.refresh.outcome") == {
        "ok": 1
    }


async def test_a_retried_call_has_one_span_and_a_child_per_attempt(
    fake: FakeRDStation, rd: RDStation, telemetry: Telemetry
) -> None:
    await warm(rd, telemetry)
    fake.faults = Faults(json_503=0.5, seed=seed_for(True, True, False))
    await rd.funnels.update(ANA, lifecycle_stage=LifecycleStage.CLIENT)
    call = telemetry.one("rdfunnel funnels.update")
    assert call.status.status_code is StatusCode.UNSET
    assert call.attributes is not None
    assert call.attributes["rdfunnel.attempts"] == 3
    attempts = telemetry.children(call)
    assert [a.name for a in attempts] == [PUT_FUNNEL] * 3
    assert len(telemetry.spans) == 4
    attributes = [dict(a.attributes or {}) for a in attempts]
    assert [a.get("http.request.resend_count") for a in attributes] == [None, 1, 2]
    assert [a["http.response.status_code"] for a in attributes] == [503, 503, 200]
    assert [a.get("error.type") for a in attributes] == ["503", "503", None]
    assert [a.status.status_code for a in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert [e.name for e in call.events] == ["rdfunnel.retry"] * 2
    assert [dict(e.attributes or {})["rdfunnel.retry.reason"] for e in call.events] == [
        "HTTP 503"
    ] * 2
    assert telemetry.counts("rdfunnel.retries", "rdfunnel.retry.reason") == {"HTTP 503": 2}


async def test_a_failed_call_has_error_status_and_type(
    fake: FakeRDStation, rd: RDStation, telemetry: Telemetry
) -> None:
    await warm(rd, telemetry)
    with pytest.raises(NotFoundError):
        await rd.funnels.get(NOBODY)
    call = telemetry.one("rdfunnel funnels.get")
    assert call.status.status_code is StatusCode.ERROR
    assert call.status.description == "NotFoundError"
    assert call.attributes is not None
    assert call.attributes["error.type"] == "NotFoundError"
    assert call.attributes["http.response.status_code"] == 404
    (attempt,) = telemetry.children(call)
    assert attempt.status.status_code is StatusCode.ERROR
    assert attempt.attributes is not None
    assert attempt.attributes["error.type"] == "404"

    telemetry.exporter.clear()
    fake.faults = Faults(json_500=1.0)
    with pytest.raises(ServerError):
        await rd.funnels.update(ANA, opportunity=True)
    call = telemetry.one("rdfunnel funnels.update")
    assert call.attributes is not None
    assert call.attributes["error.type"] == "ServerError"
    assert call.attributes["rdfunnel.attempts"] == FAST.max_retries + 1
    attempts = telemetry.children(call)
    assert len(attempts) == FAST.max_retries + 1
    assert {a.attributes["error.type"] for a in attempts if a.attributes} == {"500"}


async def test_an_attempt_without_an_answer_has_the_error_class(
    fake: FakeRDStation, rd: RDStation, telemetry: Telemetry
) -> None:
    await warm(rd, telemetry)
    fake.faults = Faults(drop=1.0)
    with pytest.raises(TransportError):
        await rd.funnels.get(ANA)
    call = telemetry.one("rdfunnel funnels.get")
    assert call.attributes is not None
    assert call.attributes["error.type"] == "TransportError"
    assert "http.response.status_code" not in call.attributes
    attempts = telemetry.children(call)
    assert len(attempts) == FAST.max_retries + 1
    for attempt in attempts:
        assert attempt.attributes is not None
        assert attempt.attributes["error.type"] == "TransportError"
        assert "http.response.status_code" not in attempt.attributes
        assert attempt.status.status_code is StatusCode.ERROR
    assert telemetry.counts("rdfunnel.retries", "rdfunnel.retry.reason") == {
        "TransportError": FAST.max_retries
    }


async def test_a_replay_after_a_401_refreshes_under_the_call(
    fake: FakeRDStation, rd: RDStation, telemetry: Telemetry
) -> None:
    await warm(rd, telemetry)
    fake.faults = Faults(early_expiry=0.5, seed=seed_for(True, False))
    await rd.funnels.get(ANA)
    call = telemetry.one("rdfunnel funnels.get")
    children = telemetry.children(call)
    assert [c.name for c in children] == [GET_FUNNEL, "rdfunnel token.refresh", GET_FUNNEL]
    first, refresh, replay = children
    assert first.attributes is not None and replay.attributes is not None
    assert first.attributes["error.type"] == "401"
    assert replay.attributes["http.request.resend_count"] == 1
    assert [c.name for c in telemetry.children(refresh)] == [TOKEN]
    assert telemetry.counts("rdfunnel.retries", "rdfunnel.retry.reason") == {"HTTP 401": 1}
    assert telemetry.counts("rdfunnel.token.refreshes", "rdfunnel.token.refresh.outcome") == {
        "ok": 2
    }


async def test_user_spans_nest_under_the_call_span(
    fake: FakeRDStation, clock: VirtualClock, telemetry: Telemetry
) -> None:
    seen: list[trace.Span] = []

    def current_span(event: object) -> None:
        if isinstance(event, AttemptEnded):
            seen.append(trace.get_current_span())

    tracer = telemetry.tracer_provider.get_tracer("user")
    hooks = [telemetry.hooks(), current_span]
    async with fake.client(retry=FAST, clock=clock, hooks=hooks) as rd:
        with tracer.start_as_current_span("outer") as outer:
            await rd.funnels.get(ANA)
            assert trace.get_current_span() is outer  # the call's span is current no more
        assert trace.get_current_span() is trace.INVALID_SPAN
    call = telemetry.one("rdfunnel funnels.get")
    assert parent_of(call) == sid(telemetry.one("outer"))
    refresh = telemetry.one("rdfunnel token.refresh")
    assert [span.get_span_context().span_id for span in seen] == [sid(refresh), sid(call)]


async def test_a_cancelled_call_ends_its_span(
    fake: FakeRDStation, rd: RDStation, telemetry: Telemetry
) -> None:
    await warm(rd, telemetry)
    fake.faults = Faults(slow=1.0, slow_seconds=5)
    started = asyncio.Event()

    async def call() -> None:
        started.set()
        await rd.funnels.get(ANA)

    task = asyncio.create_task(call())
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    span = telemetry.one("rdfunnel funnels.get")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "CancelledError"
    assert trace.get_current_span() is trace.INVALID_SPAN


# -- bulk runs -------------------------------------------------------------------------------


def bulk_changes(fake: FakeRDStation, n: int) -> list[tuple[str, FunnelUpdate]]:
    emails = [f"bulk.secret{i}@example.com" for i in range(n)]
    for email in emails:
        fake.add_contact(email)
    return [(email, FunnelUpdate(opportunity=True)) for email in emails]


async def test_a_bulk_run_has_a_span_and_its_items_are_its_children(
    fake: FakeRDStation, rd: RDStation, telemetry: Telemetry
) -> None:
    await warm(rd, telemetry)
    changes: list[Any] = [*bulk_changes(fake, 5), "not a pair"]
    tracer = telemetry.tracer_provider.get_tracer("user")
    with tracer.start_as_current_span("outer"):
        async with rd.funnels.update_many(changes, concurrency=3) as run:
            results = [result async for result in run]
    assert sum(result.ok for result in results) == 5
    bulk = telemetry.one("rdfunnel bulk")
    assert parent_of(bulk) == sid(telemetry.one("outer"))
    assert bulk.kind is SpanKind.INTERNAL
    assert bulk.status.status_code is StatusCode.UNSET
    number = (bulk.attributes or {})["rdfunnel.bulk.run"]  # numbered in the process
    assert isinstance(number, int) and number >= 1
    assert dict(bulk.attributes or {}) == {
        "rdfunnel.bulk.run": number,
        "rdfunnel.bulk.concurrency": 3,
        "rdfunnel.bulk.total": 6,
        "rdfunnel.bulk.succeeded": 5,
        "rdfunnel.bulk.failed": 1,
        "rdfunnel.bulk.not_attempted": 0,
        "rdfunnel.bulk.retries": 0,
        "rdfunnel.bulk.error_types": ("ValidationError",),
    }
    items = telemetry.children(bulk)
    assert [item.name for item in items] == ["rdfunnel funnels.update"] * 5
    for item in items:
        assert item.attributes is not None
        assert item.attributes["rdfunnel.bulk.run"] == number
        assert [a.name for a in telemetry.children(item)] == [PUT_FUNNEL]
    assert len(telemetry.spans) == 1 + 1 + 5 * 2


async def test_a_bulk_run_without_item_spans_has_only_its_span_and_the_metrics(
    fake: FakeRDStation, clock: VirtualClock, telemetry: Telemetry
) -> None:
    hooks = [telemetry.hooks(bulk_item_spans=False)]
    async with fake.client(retry=FAST, clock=clock, hooks=hooks) as rd:
        await warm(rd, telemetry)
        changes = bulk_changes(fake, 8)
        fake.faults = Faults(json_503=0.3, seed=3)
        async with rd.funnels.update_many(changes, concurrency=4) as run:
            async for _ in run:
                pass
        # Other calls still have their spans.
        await rd.funnels.get(ANA)
    bulk = telemetry.one("rdfunnel bulk")
    assert telemetry.children(bulk) == []
    assert {span.name for span in telemetry.spans} == {
        "rdfunnel bulk",
        "rdfunnel funnels.get",
        GET_FUNNEL,
    }
    assert bulk.attributes is not None
    retries = bulk.attributes["rdfunnel.bulk.retries"]
    assert isinstance(retries, int)
    assert retries > 0
    assert telemetry.attempts_recorded() == fake.stats.count()
    assert telemetry.counts("rdfunnel.retries", "rdfunnel.retry.reason") == {"HTTP 503": retries}


def test_bulk_items_find_their_run_from_any_context(telemetry: Telemetry) -> None:
    """Workers may not share the consumer's context: the run's number finds its span."""
    hooks = telemetry.hooks()
    item: dict[str, Any] = {"operation": "funnels.update", "method": "PUT", "route": FUNNEL}
    item["bulk_run"] = 7
    summary = BulkSummary(1, 1, 0, 0, {}, 0, 0.1)

    contextvars.Context().run(hooks, BulkStarted(bulk_run=7, concurrency=1))

    def worker() -> None:
        hooks(CallStarted(**item))
        hooks(AttemptEnded(**item, attempt=1, duration=0.01, status=200))
        hooks(CallEnded(**item, duration=0.02, attempts=1, status=200))

    contextvars.Context().run(worker)
    hooks(BulkProgress(bulk_run=7, outcome="succeeded", summary=summary))
    contextvars.Context().run(hooks, BulkEnded(bulk_run=7, summary=summary))
    bulk = telemetry.one("rdfunnel bulk")
    (call,) = telemetry.children(bulk)
    assert call.name == "rdfunnel funnels.update"
    assert [a.name for a in telemetry.children(call)] == [PUT_FUNNEL]
    assert len(telemetry.spans) == 3


def test_a_bulk_run_stopped_early_has_error_status(telemetry: Telemetry) -> None:
    hooks = telemetry.hooks()
    summary = BulkSummary(3, 1, 1, 1, {"QuotaExceededError": 1, "NotAttemptedError": 1}, 0, 1.0)
    hooks(BulkStarted(bulk_run=1, concurrency=2))
    hooks(BulkEnded(bulk_run=1, summary=summary, stop_reason="QuotaExceededError"))
    hooks(BulkEnded(bulk_run=1, summary=summary))  # a run ends once; a second end is ignored
    bulk = telemetry.one("rdfunnel bulk")
    assert bulk.status.status_code is StatusCode.ERROR
    assert bulk.attributes is not None
    assert bulk.attributes["error.type"] == "QuotaExceededError"
    assert bulk.attributes["rdfunnel.bulk.stop_reason"] == "QuotaExceededError"
    assert bulk.attributes["rdfunnel.bulk.error_types"] == (
        "NotAttemptedError",
        "QuotaExceededError",
    )


# -- the context -----------------------------------------------------------------------------

CALL: dict[str, Any] = {"operation": "funnels.get", "method": "GET", "route": FUNNEL}


def test_a_call_ended_in_another_context_breaks_nothing(telemetry: Telemetry) -> None:
    hooks = telemetry.hooks()

    def scenario() -> None:
        before = context.get_current()
        hooks(CallStarted(**CALL))
        assert trace.get_current_span().is_recording()
        contextvars.copy_context().run(hooks, CallEnded(**CALL, duration=0.1, attempts=1))
        assert telemetry.one("rdfunnel funnels.get").end_time is not None
        # Here the call is still current (it ended elsewhere), and ending it again is harmless.
        hooks(CallEnded(**CALL, duration=0.1, attempts=1))
        assert context.get_current() is before

    contextvars.Context().run(scenario)


def test_a_context_left_attached_over_the_call_is_reset(telemetry: Telemetry) -> None:
    hooks = telemetry.hooks()

    def scenario() -> None:
        before = context.get_current()
        hooks(CallStarted(**CALL))
        context.attach(context.set_value("leftover", 1))  # never detached
        hooks(CallEnded(**CALL, duration=0.1, attempts=1))
        assert context.get_current() is before
        assert telemetry.one("rdfunnel funnels.get").end_time is not None

    contextvars.Context().run(scenario)


def test_events_it_does_not_use_make_nothing(telemetry: Telemetry) -> None:
    hooks = telemetry.hooks()
    hooks(ClientPaused(scope="account", seconds=1.0))
    summary = BulkSummary(0, 0, 0, 0, {}, 0, 0.0)
    hooks(BulkProgress(bulk_run=3, outcome="succeeded", summary=summary))
    hooks(CallEnded(**CALL, duration=0.1, attempts=1))  # no call started: nothing to end
    assert telemetry.spans == ()
    assert repr(hooks) == "OpenTelemetryHooks(bulk_item_spans=True)"


async def test_the_global_providers_by_default(fake: FakeRDStation, clock: VirtualClock) -> None:
    async with fake.client(retry=FAST, clock=clock, hooks=[OpenTelemetryHooks()]) as rd:
        assert (await rd.funnels.get(ANA)).fit == 60


# -- metrics ---------------------------------------------------------------------------------


async def test_the_duration_histogram_counts_every_attempt(
    fake: FakeRDStation, rd: RDStation, telemetry: Telemetry
) -> None:
    fake.faults = Faults(json_503=0.15, html_502=0.1, seed=11)
    for _ in range(10):
        with contextlib.suppress(ServerError):  # four faults in a row fail a call
            await rd.funnels.get(ANA)
        with contextlib.suppress(ServerError):
            await rd.funnels.update(BIA, opportunity=True)
    with pytest.raises(NotFoundError):
        await rd.funnels.get(NOBODY)
    stats = fake.stats
    assert stats.count(status=503) + stats.count(status=502) > 0
    assert telemetry.attempts_recorded() == stats.count()
    points = telemetry.points("http.client.request.duration")
    by_key = {
        (p.attributes["http.request.method"], p.attributes["url.template"]): p for p in points
    }
    assert ("POST", "/auth/token") in by_key
    allowed = {"http.request.method", "url.template", "http.response.status_code", "error.type"}
    for point in points:
        assert set(point.attributes) <= allowed
        status = point.attributes["http.response.status_code"]
        assert point.attributes.get("error.type") == (str(status) if status >= 400 else None)
    calls = [s for s in telemetry.spans if s.kind is SpanKind.INTERNAL]
    retried = sum(int(str((s.attributes or {})["rdfunnel.attempts"])) - 1 for s in calls)
    assert retried > 0
    assert sum(telemetry.counts("rdfunnel.retries", "rdfunnel.retry.reason").values()) == retried


async def test_rate_limits_are_counted_by_scope(
    fake: FakeRDStation, rd: RDStation, clock: VirtualClock, telemetry: Telemetry
) -> None:
    fake.limits = Limits(account_rps=2)
    for _ in range(3):
        await rd.funnels.get(ANA)
    assert fake.stats.rate_limited == {"account": 1}
    fake.limits = Limits(per_contact=2, window=86400)
    clock.now += 10
    await rd.funnels.get(BIA)
    await rd.funnels.get(BIA)
    with pytest.raises(RateLimitError):
        await rd.funnels.get(BIA)
    assert telemetry.counts("rdfunnel.rate_limited", "rdfunnel.rate_limit.scope") == {
        "account": 1,
        "contact": 1,
    }
    assert telemetry.counts("rdfunnel.retries", "rdfunnel.retry.reason") == {"HTTP 429": 1}
    assert telemetry.attempts_recorded() == fake.stats.count()


async def test_refused_refreshes_are_counted(
    fake: FakeRDStation, rd: RDStation, telemetry: Telemetry
) -> None:
    await rd.funnels.get(ANA)
    fake.revoke_all()
    with pytest.raises(RDStationError):
        await rd.funnels.get(ANA)
    assert telemetry.counts("rdfunnel.token.refreshes", "rdfunnel.token.refresh.outcome") == {
        "ok": 1,
        "refused": 1,
    }
    refreshes = telemetry.named("rdfunnel token.refresh")
    assert [r.status.status_code for r in refreshes] == [StatusCode.UNSET, StatusCode.ERROR]


# -- privacy ---------------------------------------------------------------------------------


async def exercise(fake: FakeRDStation, rd: RDStation) -> None:
    """Calls that put contacts in paths, queries, errors, retries and bulk runs."""
    fake.faults = Faults(json_503=0.3, drop=0.1, seed=5)
    await rd.funnels.get(ANA)
    await rd.funnels.update(Contact.email(BIA), lifecycle_stage=LifecycleStage.CLIENT)
    await rd.funnels.get(Contact.uuid(fake.contact(ANA).uuid))
    with pytest.raises(NotFoundError):
        await rd.funnels.get(NOBODY)
    with contextlib.suppress(RDStationError):
        await rd.request("GET", f"/platform/contacts/email:{ANA}")
    with contextlib.suppress(RDStationError):
        await rd.request("GET", "/platform/contacts", params={"email": "query.secret@example.com"})
    async with rd.funnels.update_many(bulk_changes(fake, 4), concurrency=2) as run:
        async for _ in run:
            pass
    # Dropped connections: aiohttp's exceptions end up in the instrumentor's span events.
    fake.faults = Faults(drop=0.5, seed=seed_for(True, True, False))
    await rd.funnels.get(ANA)


async def test_no_contact_address_in_any_span_or_metric(
    fake: FakeRDStation, clock: VirtualClock, telemetry: Telemetry
) -> None:
    hooks = [telemetry.hooks(masked_contacts=True, server_address="api.rd.services")]
    # log_contacts=True puts full contacts in the events: the spans must mask them anyway.
    async with fake.client(retry=FAST, clock=clock, hooks=hooks, log_contacts=True) as rd:
        await exercise(fake, rd)
    dump = telemetry.dump()
    assert "rdfunnel bulk" in dump and "HTTP 503" in dump and "TransportError" in dump
    assert_no_secrets(dump)
    assert fake.contact(ANA).uuid not in dump
    call = telemetry.named("rdfunnel funnels.get")[0]
    assert call.attributes is not None
    assert call.attributes["rdfunnel.contact"] == "a***@example.com"
    attempt = telemetry.named(GET_FUNNEL)[0]
    assert attempt.attributes is not None
    assert attempt.attributes["server.address"] == "api.rd.services"


@pytest.mark.parametrize(
    ("url", "filtered"),
    [
        (
            "https://api.rd.services/platform/contacts/email:ana.secret@example.com/funnels/default",
            "https://api.rd.services/platform/contacts/email:a***@example.com/funnels/default",
        ),
        (
            "https://api.rd.services/platform/contacts/email:we%2Fbia.secret%40example.com/funnels/x",
            "https://api.rd.services/platform/contacts/email:w***@example.com/funnels/x",
        ),
        (
            "http://127.0.0.1:8080/platform/contacts/uuid:3f2a9c1e-0000-4000-8000-000000000000",
            "http://127.0.0.1:8080/platform/contacts/uuid:3f2a…",
        ),
        (
            "https://api.rd.services/platform/contacts?email=query.secret%40example.com&x=1",
            "https://api.rd.services/platform/contacts?email=q***@example.com&x=1",
        ),
        (
            "https://api.rd.services/platform/contacts/ana.secret@example.com#frag",
            "https://api.rd.services/platform/contacts/a***@example.com",
        ),
        ("https://api.rd.services/auth/token", "https://api.rd.services/auth/token"),
    ],
)
def test_url_filter_masks_contacts(url: str, filtered: str) -> None:
    assert url_filter(URL(url, encoded=True)) == filtered
    assert url_filter(url) == filtered
    assert_no_secrets(url_filter(URL(url, encoded=True)))


_MODES = {"default": _StabilityMode.DEFAULT, "http/dup": _StabilityMode.HTTP_DUP}


@pytest.fixture
def instrumentor(
    request: pytest.FixtureRequest, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """AioHttpClientInstrumentor on the test's providers, in the semconv mode asked for."""
    mode, filtered = request.param
    _OpenTelemetrySemanticConventionStability._initialize()  # type: ignore[no-untyped-call]
    monkeypatch.setitem(
        _OpenTelemetrySemanticConventionStability._OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING,
        _OpenTelemetryStabilitySignalType.HTTP,
        _MODES[mode],
    )
    options: dict[str, Any] = {"url_filter": url_filter} if filtered else {}
    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        **options,
    )
    try:
        yield mode
    finally:
        instrumentor.uninstrument()


def aiohttp_spans(telemetry: Telemetry) -> list[ReadableSpan]:
    scope = "opentelemetry.instrumentation.aiohttp_client"
    return [
        s
        for s in telemetry.spans
        if s.instrumentation_scope and s.instrumentation_scope.name == scope
    ]


@pytest.mark.parametrize(
    "instrumentor", [("default", True), ("http/dup", True)], indirect=True, ids=str
)
async def test_the_aiohttp_instrumentor_with_url_filter_shows_no_contact(
    fake: FakeRDStation, clock: VirtualClock, telemetry: Telemetry, instrumentor: str
) -> None:
    hooks = [telemetry.hooks()]
    async with fake.client(retry=FAST, clock=clock, hooks=hooks) as rd:
        await exercise(fake, rd)
    theirs = aiohttp_spans(telemetry)
    ours = [s for s in telemetry.spans if s not in theirs]
    calls = {sid(s) for s in ours if s.kind is SpanKind.INTERNAL and s.name != "rdfunnel bulk"}
    assert theirs
    assert {parent_of(span) for span in theirs} <= calls  # each nests under its call's span
    url_key = "url.full" if instrumentor == "http/dup" else "http.url"
    urls = [str((s.attributes or {})[url_key]) for s in theirs]
    assert any("/contacts/email:a***@example.com/" in url for url in urls)
    assert any(event.name == "exception" for span in theirs for event in span.events)
    assert_no_secrets(telemetry.dump())
    assert fake.contact(ANA).uuid not in telemetry.dump()


@pytest.mark.parametrize("instrumentor", [("default", False)], indirect=True, ids=str)
async def test_without_url_filter_the_instrumentor_would_leak(
    fake: FakeRDStation, clock: VirtualClock, telemetry: Telemetry, instrumentor: str
) -> None:
    """The check above can fail: without the filter, the email is in the instrumentor's spans."""
    async with fake.client(retry=FAST, clock=clock, hooks=[telemetry.hooks()]) as rd:
        await rd.funnels.get(ANA)
    assert "ana.secret" in json.dumps([s.to_json() for s in aiohttp_spans(telemetry)])
    assert_no_secrets("".join(s.to_json() for s in telemetry.spans if s.name.startswith("rdf")))


# -- the import ------------------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_importing_rdfunnel_does_not_import_opentelemetry() -> None:
    done = run_python(
        "import sys, rdfunnel, rdfunnel.client, rdfunnel.events, rdfunnel.bulk\n"
        "from rdfunnel import RDStation\n"
        "RDStation(access_token='x')\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_module_needs_opentelemetry_api() -> None:
    done = run_python(
        "import sys\nsys.modules['opentelemetry'] = None\nimport rdfunnel.contrib.otel"
    )
    assert done.returncode != 0
    assert "pip install 'rdfunnel[otel]'" in done.stderr
