"""OpenTelemetry: a span per call and per HTTP attempt, a span per bulk run, and metrics.

:class:`OpenTelemetryHooks` is a client hook (``RDStation(hooks=[...])``) that turns
:mod:`rdfunnel.events` into telemetry through the OpenTelemetry API, on the providers you give
it (the global ones by default)::

    from rdfunnel import RDStation
    from rdfunnel.contrib.otel import OpenTelemetryHooks

    rd = RDStation(..., hooks=[OpenTelemetryHooks(tracer_provider, meter_provider)])

Spans:

``rdfunnel <operation>`` (``rdfunnel funnels.get``, ``rdfunnel funnels.update``, ``rdfunnel
request``, ``rdfunnel token.refresh``, ...), kind INTERNAL
    One per public call, from its start to its end, whatever its retries; current while the call
    runs, so your own spans and other instrumentation made meanwhile nest under it. A token
    request triggered by a call is a call of its own, nested under that call. Attributes
    ``rdfunnel.operation``, ``rdfunnel.contact.kind`` (``email`` or ``uuid``),
    ``rdfunnel.bulk.run``, ``rdfunnel.attempts``, ``http.response.status_code``; on failure an
    error status and ``error.type`` (the exception's class name).
``{method} {url.template}`` (``PUT /platform/contacts/{contact}/funnels/{funnel}``), kind CLIENT
    One per HTTP attempt, a child of its call, with the stable HTTP client semantic-convention
    attributes: ``http.request.method``, ``url.template``, ``http.response.status_code``,
    ``http.request.resend_count`` (from the second attempt on), ``error.type`` (the status code
    from 400 on, or the class of the error that left no answer) and ``server.address`` when
    given.
``rdfunnel bulk``, kind INTERNAL
    One per ``update_many`` run, from its first read to its end, with the run's totals at the
    end (``rdfunnel.bulk.total``, ``.succeeded``, ``.failed``, ``.not_attempted``, ``.retries``,
    ``.stop_reason``); its items' call spans are its children, or, with
    ``bulk_item_spans=False``, are not made at all (the metrics still count them).

Metrics:

``http.client.request.duration`` (histogram, s)
    Every attempt, by ``http.request.method``, ``url.template``, ``http.response.status_code``,
    ``error.type`` (and ``server.address`` when given), as the HTTP semantic conventions say.
``rdfunnel.retries`` (counter)
    Retries scheduled, by ``rdfunnel.operation`` and ``rdfunnel.retry.reason`` (``HTTP 503``,
    ``HTTP 429``, ``HTTP 401`` for a replay after a refresh, ``TransportError``, ...).
``rdfunnel.rate_limited`` (counter)
    429 answers, by ``rdfunnel.operation`` and ``rdfunnel.rate_limit.scope`` (``account`` or
    ``contact``).
``rdfunnel.token.refreshes`` (counter)
    Token refreshes, by ``rdfunnel.token.refresh.outcome`` (``ok``, ``refused``, ``failed``).

No span name, attribute or metric attribute ever holds a contact's address: routes hold a
placeholder, and contacts show at most masked (``masked_contacts=True``), even on a client made
with ``log_contacts=True``. If you also run opentelemetry-instrumentation-aiohttp-client, give it
:func:`url_filter`, or its spans hold the contact's email in the URL::

    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from rdfunnel.contrib import otel

    AioHttpClientInstrumentor().instrument(url_filter=otel.url_filter)

Its spans then nest under rdfunnel's call spans, next to rdfunnel's own attempt spans.

Needs the ``otel`` extra (``opentelemetry-api`` only): ``pip install 'rdfunnel[otel]'``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextvars import Token
from time import time_ns
from typing import Any

from yarl import URL

from ..__about__ import __version__
from .._privacy import mask, masked_path, scrub
from ..events import (
    AttemptEnded,
    BulkEnded,
    BulkStarted,
    CallEnded,
    CallStarted,
    Event,
    RateLimited,
    RetryScheduled,
    TokenRefreshed,
)

try:
    from opentelemetry import context, metrics, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rdfunnel.contrib.otel needs the opentelemetry-api package: pip install 'rdfunnel[otel]'"
    ) from error

__all__ = ["OpenTelemetryHooks", "url_filter"]

#: The semantic conventions the attribute names follow.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"
#: The HTTP semantic conventions' advice for ``http.client.request.duration``.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)

_KNOWN_METHODS = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE")
)
#: Where the call in progress keeps its span, in the context it makes current.
_CALL_KEY = context.create_key("rdfunnel.call")
#: Span names cached per (method, route); routes of ``rd.request`` are open-ended, so bounded.
_MAX_NAMES = 512
_ERROR = Status(StatusCode.ERROR)


class _Call:
    """A call in progress: its span, the context that makes it current, and the one before."""

    __slots__ = ("context", "previous", "span", "token")

    def __init__(self, span: Span, previous: Context) -> None:
        self.span = span
        self.previous = previous
        self.context = previous
        self.token: Token[Context] | None = None


class OpenTelemetryHooks:
    """A client hook that makes OpenTelemetry spans and metrics of what the client does.

    ::

        from opentelemetry.sdk.trace import TracerProvider
        from rdfunnel import RDStation
        from rdfunnel.contrib.otel import OpenTelemetryHooks

        provider = TracerProvider()  # plus your span processor and exporter
        async with RDStation(..., hooks=[OpenTelemetryHooks(provider)]) as rd:
            await rd.funnels.get("ana@example.com")  # spans "rdfunnel funnels.get", "GET ..."

    ``tracer_provider`` and ``meter_provider`` default to the global ones. With
    ``bulk_item_spans=False`` a bulk run makes only its ``rdfunnel bulk`` span, none per item.
    ``masked_contacts=True`` adds the masked contact (``a***@example.com``) to call spans as
    ``rdfunnel.contact``. ``server_address`` (RD's host, ``api.rd.services``) goes on attempt
    spans and the duration metric as ``server.address``. Bulk runs are told apart by their
    number, which is per client: give each client its own hooks.
    """

    __slots__ = (
        "_bulk_item_spans",
        "_call_names",
        "_duration",
        "_handlers",
        "_masked_contacts",
        "_names",
        "_rate_limited",
        "_refreshes",
        "_retries",
        "_runs",
        "_server_address",
        "_tracer",
        "rdfunnel_events",
    )

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        bulk_item_spans: bool = True,
        masked_contacts: bool = False,
        server_address: str | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(
            "rdfunnel", __version__, tracer_provider=tracer_provider, schema_url=SCHEMA_URL
        )
        meter = metrics.get_meter(
            "rdfunnel", __version__, meter_provider=meter_provider, schema_url=SCHEMA_URL
        )
        self._duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of HTTP client requests.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._retries = meter.create_counter(
            "rdfunnel.retries", unit="{retry}", description="Retries scheduled, by reason."
        )
        self._rate_limited = meter.create_counter(
            "rdfunnel.rate_limited",
            unit="{response}",
            description="429 answers from RD Station, by scope (account or contact).",
        )
        self._refreshes = meter.create_counter(
            "rdfunnel.token.refreshes",
            unit="{refresh}",
            description="Access token refreshes, by outcome.",
        )
        self._bulk_item_spans = bulk_item_spans
        self._masked_contacts = masked_contacts
        self._server_address = server_address
        self._call_names: dict[str, str] = {}
        self._names: dict[tuple[str, str], str] = {}
        #: Open bulk runs by number: their span, and the context that makes it a parent.
        self._runs: dict[int, tuple[Span, Context]] = {}
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            CallStarted: self._call_started,
            CallEnded: self._call_ended,
            AttemptEnded: self._attempt_ended,
            RetryScheduled: self._retry_scheduled,
            RateLimited: self._rate_limited_answer,
            TokenRefreshed: self._token_refreshed,
            BulkStarted: self._bulk_started,
            BulkEnded: self._bulk_ended,
        }
        #: The events this hook uses: the client builds no others for it.
        self.rdfunnel_events = frozenset(self._handlers)

    def __repr__(self) -> str:
        return f"OpenTelemetryHooks(bulk_item_spans={self._bulk_item_spans})"

    def __call__(self, event: Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    # -- calls -------------------------------------------------------------------------------

    def _call_started(self, event: CallStarted) -> None:
        run = event.bulk_run
        parent: Context | None = None
        attributes: dict[str, Any] = {"rdfunnel.operation": event.operation}
        if run is not None:
            if not self._bulk_item_spans:
                return
            attributes["rdfunnel.bulk.run"] = run
            # Workers need not run in the consumer's context: the run's span is the parent.
            opened = self._runs.get(run)
            if opened is not None:
                parent = opened[1]
        kind = event.contact_kind
        if kind is not None:
            attributes["rdfunnel.contact.kind"] = kind
            if self._masked_contacts and event.contact is not None:
                # mask() of a masked contact is itself: safe under log_contacts=True too.
                attributes["rdfunnel.contact"] = mask(kind, event.contact)
        name = self._call_names.get(event.operation)
        if name is None:
            name = self._call_names[event.operation] = f"rdfunnel {event.operation}"
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.INTERNAL, attributes=attributes
        )
        previous = context.get_current()
        call = _Call(span, previous)
        call.context = context.set_value(_CALL_KEY, call, trace.set_span_in_context(span, previous))
        call.token = context.attach(call.context)

    def _call_ended(self, event: CallEnded) -> None:
        if event.bulk_run is not None and not self._bulk_item_spans:
            return
        current = context.get_current()
        call = current.get(_CALL_KEY)
        if not isinstance(call, _Call):
            return
        span = call.span
        attributes: dict[str, Any] = {"rdfunnel.attempts": event.attempts}
        if event.status is not None:
            attributes["http.response.status_code"] = event.status
        if event.error is not None:
            attributes["error.type"] = event.error
            span.set_status(Status(StatusCode.ERROR, event.error))
        span.set_attributes(attributes)
        span.end()
        _restore(call, current)

    def _attempt_ended(self, event: AttemptEnded) -> None:
        end = time_ns()
        method, route, status = event.method, event.route, event.status
        attributes: dict[str, Any]
        if method in _KNOWN_METHODS:
            attributes = {"http.request.method": method, "url.template": route}
        else:
            attributes = {
                "http.request.method": "_OTHER",
                "http.request.method_original": method,
                "url.template": route,
            }
        error: str | None = None
        if status is not None:
            attributes["http.response.status_code"] = status
            if status >= 400:
                error = str(status)
        if error is None and event.error is not None:
            error = event.error
        if error is not None:
            attributes["error.type"] = error
        if self._server_address is not None:
            attributes["server.address"] = self._server_address
        self._duration.record(event.duration, attributes)
        if event.bulk_run is not None and not self._bulk_item_spans:
            return
        call = context.get_current().get(_CALL_KEY)
        parent = call.context if isinstance(call, _Call) else None
        if event.attempt > 1:  # a new dict: the histogram may keep the one it was given
            attributes = {**attributes, "http.request.resend_count": event.attempt - 1}
        span = self._tracer.start_span(
            self._attempt_name(method, route),
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=end - int(event.duration * 1e9),
        )
        if error is not None:
            span.set_status(_ERROR)
        span.end(end_time=end)

    def _attempt_name(self, method: str, route: str) -> str:
        key = (method, route)
        name = self._names.get(key)
        if name is None:
            shown = method if method in _KNOWN_METHODS else "HTTP"
            name = f"{shown} {route}" if route else shown
            if len(self._names) < _MAX_NAMES:
                self._names[key] = name
        return name

    def _retry_scheduled(self, event: RetryScheduled) -> None:
        self._retries.add(
            1, {"rdfunnel.operation": event.operation, "rdfunnel.retry.reason": event.reason}
        )
        if event.bulk_run is not None and not self._bulk_item_spans:
            return
        call = context.get_current().get(_CALL_KEY)
        if isinstance(call, _Call):
            call.span.add_event(
                "rdfunnel.retry",
                {
                    "rdfunnel.retry": event.retry,
                    "rdfunnel.retry.reason": event.reason,
                    "rdfunnel.retry.wait": event.wait,
                },
            )

    def _rate_limited_answer(self, event: RateLimited) -> None:
        self._rate_limited.add(
            1, {"rdfunnel.operation": event.operation, "rdfunnel.rate_limit.scope": event.scope}
        )

    def _token_refreshed(self, event: TokenRefreshed) -> None:
        self._refreshes.add(1, {"rdfunnel.token.refresh.outcome": event.outcome})

    # -- bulk runs ---------------------------------------------------------------------------

    def _bulk_started(self, event: BulkStarted) -> None:
        span = self._tracer.start_span(
            "rdfunnel bulk",
            kind=SpanKind.INTERNAL,
            attributes={
                "rdfunnel.bulk.run": event.bulk_run,
                "rdfunnel.bulk.concurrency": event.concurrency,
            },
        )
        self._runs[event.bulk_run] = (span, trace.set_span_in_context(span))

    def _bulk_ended(self, event: BulkEnded) -> None:
        opened = self._runs.pop(event.bulk_run, None)
        if opened is None:
            return
        span, summary = opened[0], event.summary
        attributes: dict[str, Any] = {
            "rdfunnel.bulk.total": summary.total,
            "rdfunnel.bulk.succeeded": summary.succeeded,
            "rdfunnel.bulk.failed": summary.failed,
            "rdfunnel.bulk.not_attempted": summary.not_attempted,
            "rdfunnel.bulk.retries": summary.retries,
        }
        if summary.errors:
            attributes["rdfunnel.bulk.error_types"] = sorted(summary.errors)
        if event.stop_reason is not None:
            attributes["rdfunnel.bulk.stop_reason"] = event.stop_reason
            attributes["error.type"] = event.stop_reason
            span.set_status(Status(StatusCode.ERROR, event.stop_reason))
        span.set_attributes(attributes)
        span.end()


def _restore(call: _Call, current: Context) -> None:
    """Make current again what was before ``call``, without ever failing the call."""
    if current is call.context:
        # What detaching its token does, but safe even if this is not the context it was
        # attached in (a token from another context would make the detach fail).
        context.attach(call.previous)
        return
    # Something made a context of its own current over the call's and left it there: the
    # token resets past it. (The API's detach logs, never raises, a token from elsewhere.)
    if call.token is not None:
        with contextlib.suppress(Exception):  # detach already guards itself; belt and braces
            context.detach(call.token)


def url_filter(url: URL | str) -> str:
    """``url`` as text with every contact in it masked, for aiohttp instrumentation.

    Pass it as ``AioHttpClientInstrumentor().instrument(url_filter=url_filter)``: the
    instrumentor puts the URL it returns on its spans, and rdfunnel's URLs hold contacts
    (``/platform/contacts/email:ana@example.com/...`` becomes ``.../email:a***@example.com/...``;
    an address in the query string is masked too; the fragment is dropped).
    """
    if isinstance(url, str):
        url = URL(url)
    path = url.raw_path
    masked = masked_path(path)
    query = url.raw_query_string
    if masked == path and not url.raw_fragment and "@" not in query and "%40" not in query:
        return str(url)
    text = str(url.with_path(masked, encoded=True))  # also drops the query and fragment
    return f"{text}?{scrub(query)}" if query else text
