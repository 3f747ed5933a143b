"""What rdfunnel tells instrumentation: a frozen event for each thing that happened.

Hooks (``RDStation(hooks=[...])``) are called with these, synchronously, in the task the thing
happened in; :mod:`rdfunnel.contrib.prometheus` and :mod:`rdfunnel.contrib.otel` turn them into
metrics and spans, and the ``rdfunnel`` logger's records carry their fields in ``extra``. No
event holds a contact's address unless the client was made with ``log_contacts=True``:
``contact`` is masked (``a***@example.com``) and ``contact_kind`` says ``email`` or ``uuid``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import attrs

if TYPE_CHECKING:
    from .bulk import BulkSummary

__all__ = [
    "EVENT_TYPES",
    "AttemptEnded",
    "BulkEnded",
    "BulkProgress",
    "BulkStarted",
    "CallEnded",
    "CallStarted",
    "ClientPaused",
    "Event",
    "RateLimited",
    "RequestEvent",
    "RetryScheduled",
    "TokenRefreshed",
]


@attrs.frozen(kw_only=True)
class RequestEvent:
    """What every event about one call carries: which call, to where, about whom."""

    #: ``funnels.get``, ``funnels.update``, ``request``, ``token.refresh``, ``token.exchange``,
    #: ``token.revoke``.
    operation: str
    method: str
    #: The path with the contact (and any other address) replaced by a placeholder:
    #: ``/platform/contacts/{contact}/funnels/{funnel}``. Safe as a metric label.
    route: str
    contact: str | None = None
    contact_kind: Literal["email", "uuid"] | None = None
    #: The bulk run (numbered in the process, from 1) the call belongs to, or None.
    bulk_run: int | None = None


@attrs.frozen(kw_only=True)
class CallStarted(RequestEvent):
    """A public call (or a token request) began; its attempts follow, then :class:`CallEnded`."""


@attrs.frozen(kw_only=True)
class CallEnded(RequestEvent):
    """A call ended: its last ``status``, or ``error``, the class name of what it raised."""

    duration: float
    attempts: int
    status: int | None = None
    error: str | None = None


@attrs.frozen(kw_only=True)
class AttemptEnded(RequestEvent):
    """One HTTP attempt (``attempt`` from 1) and its outcome: a status, or the error class
    of a request that got no answer."""

    attempt: int
    duration: float
    status: int | None = None
    error: str | None = None


@attrs.frozen(kw_only=True)
class RetryScheduled(RequestEvent):
    """The call will be sent again after ``wait`` seconds; ``reason`` is ``"HTTP 503"``,
    ``"TransportError"``, ``"RequestTimeoutError"``, ``"HTTP 401"`` (a replay) and so on."""

    retry: int
    reason: str
    wait: float


@attrs.frozen(kw_only=True)
class RateLimited(RequestEvent):
    """RD answered 429 for the ``"account"`` or one ``"contact"``; ``retry_after`` is its hint."""

    scope: Literal["account", "contact"]
    retry_after: float | None


@attrs.frozen(kw_only=True)
class ClientPaused:
    """Every request of the client waits ``seconds``: an account-wide 429."""

    scope: Literal["account"]
    seconds: float


@attrs.frozen(kw_only=True)
class TokenRefreshed:
    """A token refresh ended: ``"ok"``, ``"refused"`` (authorize again) or ``"failed"`` (the
    endpoint could not be reached, say); ``waiters`` is how many calls waited for it."""

    outcome: Literal["ok", "refused", "failed"]
    duration: float
    waiters: int
    error: str | None = None


@attrs.frozen(kw_only=True)
class BulkStarted:
    """``update_many`` began its run number ``bulk_run``."""

    bulk_run: int
    concurrency: int


@attrs.frozen(kw_only=True)
class BulkProgress:
    """One more item of the run has its result: ``outcome`` is ``"succeeded"``, ``"failed"`` or
    ``"not_attempted"``; ``summary`` the totals so far."""

    bulk_run: int
    outcome: Literal["succeeded", "failed", "not_attempted"]
    summary: BulkSummary


@attrs.frozen(kw_only=True)
class BulkEnded:
    """The run ended; ``stop_reason`` is the class name of the error that stopped it early, or
    None when it read all its input (or its consumer left)."""

    bulk_run: int
    summary: BulkSummary
    stop_reason: str | None = None


#: Every kind of event, for hooks that say which they handle (``rdfunnel_events``).
EVENT_TYPES: tuple[type, ...] = (
    CallStarted,
    CallEnded,
    AttemptEnded,
    RetryScheduled,
    RateLimited,
    ClientPaused,
    TokenRefreshed,
    BulkStarted,
    BulkProgress,
    BulkEnded,
)

Event = (
    CallStarted
    | CallEnded
    | AttemptEnded
    | RetryScheduled
    | RateLimited
    | ClientPaused
    | TokenRefreshed
    | BulkStarted
    | BulkProgress
    | BulkEnded
)
