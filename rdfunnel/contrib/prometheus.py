"""Prometheus metrics for rdfunnel: a hook that counts what the client does.

``RDStation(hooks=[PrometheusHooks()])`` exposes, in prometheus_client's default registry (or the
one given):

``rdfunnel_requests_total{method,route,status}``
    one per HTTP attempt, retries and token requests included; ``status`` is the HTTP status
    (``"200"``, ``"429"``, ``"503"``) or, when no answer came, the error's class name
    (``"TransportError"``, ``"RequestTimeoutError"``). An attempt is one of rdfunnel's sends:
    when a connection drops, aiohttp itself resends an idempotent request (GET, PUT) once over a
    fresh connection within that attempt, so the server may see one request more than counted.
``rdfunnel_request_duration_seconds{method,route}``
    a histogram of those attempts' durations (sending, waiting, reading; not the wait for a rate
    slot or a token).
``rdfunnel_retries_total{reason}``
    re-sends scheduled, by why: ``"HTTP 503"``, ``"HTTP 429"``, ``"TransportError"``, ``"HTTP 401"``
    (a replay after a token refresh) and so on.
``rdfunnel_rate_limited_total{scope}``
    429 answers, for the whole ``"account"`` or one ``"contact"``.
``rdfunnel_pause_seconds_total{scope}``
    seconds every request of a client was held after an account-wide 429 (``scope="account"``;
    a contact's 429 holds only that contact's call and shows in retries, not here).
``rdfunnel_token_refreshes_total{outcome}``
    token refreshes that ended ``"ok"``, ``"refused"`` (authorize the app again) or ``"failed"``.
``rdfunnel_bulk_items_total{outcome}``
    ``update_many`` items by result: ``"succeeded"``, ``"failed"``, ``"not_attempted"``.

Labels are low-cardinality on purpose, and never personal data (LGPD): ``route`` is the path
template (``/platform/contacts/{contact}/funnels/{funnel}``, ``/auth/token``), never the path, so
no contact or email reaches a label whatever ``log_contacts`` says; the other labels come from
short fixed sets. One caveat: ``rd.request(method, path)`` labels the path as given with only its
contact segments replaced, so a path holding other ids (``/platform/segmentations/42``) makes
one series per id.

Several ``PrometheusHooks`` on one registry (several clients in a process) share one set of
collectors, created by the first: their counts add up, as for one client. Metrics registered in
that registry by other means under the same names make the constructor raise ``ValueError``.

Needs the ``prometheus`` extra: ``pip install 'rdfunnel[prometheus]'``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Final

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rdfunnel.contrib.prometheus needs prometheus-client: pip install 'rdfunnel[prometheus]'"
    ) from error

from ..events import (
    AttemptEnded,
    BulkProgress,
    ClientPaused,
    Event,
    RateLimited,
    RetryScheduled,
    TokenRefreshed,
)

__all__ = ["DURATION_BUCKETS", "PrometheusHooks"]

#: The request duration histogram's buckets, in seconds: RD answers in tens to hundreds of
#: milliseconds; the top buckets catch slow answers up to the usual timeouts.
DURATION_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_RATE_SCOPES: Final = ("account", "contact")
_PAUSE_SCOPES: Final = ("account",)
_REFRESHES: Final = ("ok", "refused", "failed")
_BULK_OUTCOMES: Final = ("succeeded", "failed", "not_attempted")


class _Route:
    """One (method, route)'s labelled children: its duration, and its counter per status."""

    __slots__ = ("duration", "method", "requests", "route", "statuses")

    def __init__(self, requests: Counter, duration: Histogram, method: str, route: str) -> None:
        self.requests = requests
        self.method = method
        self.route = route
        self.duration = duration.labels(method, route)
        #: Keyed by the int status, or by the error class name when no answer came.
        self.statuses: dict[int | str, Counter] = {}

    def status(self, key: int | str) -> Counter:
        child = self.statuses[key] = self.requests.labels(self.method, self.route, str(key))
        return child


class _Metrics:
    """One registry's rdfunnel collectors, and their labelled children, bound once."""

    def __init__(self, registry: CollectorRegistry) -> None:
        made: list[Counter | Histogram] = []

        def counter(name: str, documentation: str, *labels: str) -> Counter:
            made.append(collector := Counter(name, documentation, labels, registry=registry))
            return collector

        try:
            self.requests = counter(
                "rdfunnel_requests",
                "HTTP attempts to RD Station, by method, route template and status (the HTTP "
                "status, or the error class name when no answer came).",
                *("method", "route", "status"),
            )
            self.duration = Histogram(
                "rdfunnel_request_duration_seconds",
                "Duration of HTTP attempts to RD Station, in seconds.",
                ("method", "route"),
                registry=registry,
                buckets=DURATION_BUCKETS,
            )
            made.append(self.duration)
            self.retries = counter(
                "rdfunnel_retries",
                "Re-sends scheduled, by reason ('HTTP 503', 'TransportError', 'HTTP 401', ...).",
                "reason",
            )
            self.rate_limited = counter(
                "rdfunnel_rate_limited",
                "429 answers from RD Station, by scope (account or contact).",
                "scope",
            )
            self.pause = counter(
                "rdfunnel_pause_seconds",
                "Seconds every request of a client was held after an account-wide 429.",
                "scope",
            )
            self.refreshes = counter(
                "rdfunnel_token_refreshes",
                "Token refreshes, by outcome (ok, refused, failed).",
                "outcome",
            )
            self.bulk = counter(
                "rdfunnel_bulk_items",
                "update_many items, by outcome (succeeded, failed, not_attempted).",
                "outcome",
            )
        except ValueError as error:  # names taken by collectors we did not make
            for collector in made:
                registry.unregister(collector)
            raise ValueError(
                f"cannot register rdfunnel's metrics in {registry!r}: {error} (metrics of these "
                "names were registered there other than by PrometheusHooks)"
            ) from error
        # Labels from fixed sets are bound now; the others (routes, reasons) on first sight.
        self.routes: dict[str, dict[str, _Route]] = {}
        self.by_reason: dict[str, Counter] = {}
        self.by_rate_scope = {scope: self.rate_limited.labels(scope) for scope in _RATE_SCOPES}
        self.by_pause_scope = {scope: self.pause.labels(scope) for scope in _PAUSE_SCOPES}
        self.by_refresh = {outcome: self.refreshes.labels(outcome) for outcome in _REFRESHES}
        self.by_bulk = {outcome: self.bulk.labels(outcome) for outcome in _BULK_OUTCOMES}

    def route(self, method: str, route: str) -> _Route:
        methods = self.routes.setdefault(route, {})
        bound = methods.get(method)
        if bound is None:
            bound = methods.setdefault(method, _Route(self.requests, self.duration, method, route))
        return bound

    def reason(self, reason: str) -> Counter:
        child = self.by_reason[reason] = self.retries.labels(reason)
        return child


_lock = threading.Lock()
#: The collectors of each registry a PrometheusHooks has used; a registry garbage-collected
#: takes its entry with it.
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    with _lock:
        metrics = _by_registry.get(registry)
        if metrics is None:
            metrics = _by_registry[registry] = _Metrics(registry)
        return metrics


class PrometheusHooks:
    """A client hook that keeps rdfunnel's Prometheus metrics (see the module docs)::

        from rdfunnel.contrib.prometheus import PrometheusHooks
        rd = RDStation(client_id=..., client_secret=..., hooks=[PrometheusHooks()])
        prometheus_client.start_http_server(9100)  # or your app's /metrics

    ``registry`` is where the metrics live: prometheus_client's default ``REGISTRY`` when None.
    Instances on one registry share its collectors, so any number of clients may each have one.
    """

    __slots__ = ("_handlers", "_metrics", "_routes", "rdfunnel_events", "registry")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry: CollectorRegistry = REGISTRY if registry is None else registry
        self._metrics = metrics = _metrics_for(self.registry)
        self._routes = metrics.routes
        handlers: dict[type[Any], Callable[[Any], None]] = {
            RetryScheduled: self._retry,
            RateLimited: self._rate_limited,
            ClientPaused: self._paused,
            TokenRefreshed: self._refreshed,
            BulkProgress: self._bulk_progress,
        }
        self._handlers = handlers
        #: The events this hook counts: the client builds no others for it.
        self.rdfunnel_events = frozenset((AttemptEnded, *handlers))

    def __repr__(self) -> str:
        return f"PrometheusHooks(registry={self.registry!r})"

    def __call__(self, event: Event) -> None:
        if type(event) is AttemptEnded:  # the hot path: once per attempt, inline
            methods = self._routes.get(event.route)
            bound = None if methods is None else methods.get(event.method)
            if bound is None:
                bound = self._metrics.route(event.method, event.route)
            status = event.status
            key = status if status is not None else (event.error or "unknown")
            counter = bound.statuses.get(key)
            if counter is None:
                counter = bound.status(key)
            counter.inc()
            bound.duration.observe(event.duration)
            return
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _retry(self, event: RetryScheduled) -> None:
        metrics = self._metrics
        child = metrics.by_reason.get(event.reason)
        if child is None:
            child = metrics.reason(event.reason)
        child.inc()

    def _rate_limited(self, event: RateLimited) -> None:
        metrics = self._metrics
        child = metrics.by_rate_scope.get(event.scope) or metrics.rate_limited.labels(event.scope)
        child.inc()

    def _paused(self, event: ClientPaused) -> None:
        if event.seconds > 0:
            metrics = self._metrics
            child = metrics.by_pause_scope.get(event.scope) or metrics.pause.labels(event.scope)
            child.inc(event.seconds)

    def _refreshed(self, event: TokenRefreshed) -> None:
        metrics = self._metrics
        child = metrics.by_refresh.get(event.outcome) or metrics.refreshes.labels(event.outcome)
        child.inc()

    def _bulk_progress(self, event: BulkProgress) -> None:
        metrics = self._metrics
        child = metrics.by_bulk.get(event.outcome) or metrics.bulk.labels(event.outcome)
        child.inc()
