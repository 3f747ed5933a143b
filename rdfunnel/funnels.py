"""``rd.funnels``: read and change where contacts stand in the funnel, one by one or in bulk."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

from ._options import call_options
from ._privacy import FUNNEL_ROUTE
from ._serde import ClearOwnerAs, funnel_from_json, update_to_json
from ._transport import Answer
from .bulk import BulkRun, BulkSummary, Changes
from .errors import ValidationError, request_id_of
from .models import NOT_SET, Contact, Funnel, FunnelUpdate, LifecycleStage, NotSet
from .ratelimit import LocalRateLimiter, RateLimiter

if TYPE_CHECKING:
    from .client import RDStation

__all__ = ["Funnels", "funnel_path", "read_funnel"]


#: Bulk runs are numbered in the process, so hooks shared by several clients tell them apart.
_BULK_RUNS = itertools.count(1)


class Funnels:
    """``rd.funnels``: read and change where contacts stand in the funnel."""

    __slots__ = ("_clear_owner_as", "_clock", "_observer", "_send")

    def __init__(self, client: RDStation, clear_owner_as: ClearOwnerAs) -> None:
        self._send = client._send
        self._clear_owner_as = clear_owner_as
        self._clock = client._pipeline.clock
        self._observer = client._pipeline.observer

    async def get(
        self,
        contact: Contact | str,
        *,
        funnel: str = "default",
        timeout: float | None = None,  # noqa: ASYNC109 - the call's deadline, kept by the pipeline
        headers: Mapping[str, str] | None = None,
    ) -> Funnel:
        """Where ``contact`` stands in ``funnel``.

        ``timeout`` is this call's deadline in seconds, everything included (waiting for a token,
        a rate slot or a connection, every retry and its backoff); when it passes, the call ends
        in :class:`~rdfunnel.errors.RequestTimeoutError`. The client's own ``timeout`` still
        limits each attempt. ``headers`` are added to this call's requests (not to token
        requests); they may not set ``Authorization`` or ``Content-Type``.
        """
        deadline, extra = call_options(timeout, headers)
        contact = Contact.parse(contact)
        path = funnel_path(contact, funnel)
        state, _ = await self._send(
            "GET",
            path,
            read_funnel,
            operation="funnels.get",
            route=FUNNEL_ROUTE,
            contact=contact,
            deadline=deadline,
            headers=extra,
        )
        return state

    async def update(
        self,
        contact: Contact | str,
        update: FunnelUpdate | None = None,
        *,
        funnel: str = "default",
        lifecycle_stage: LifecycleStage | str | NotSet = NOT_SET,
        opportunity: bool | NotSet = NOT_SET,
        contact_owner_email: str | NotSet | None = NOT_SET,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's deadline, kept by the pipeline
        headers: Mapping[str, str] | None = None,
    ) -> Funnel:
        """Change only what is given, as a :class:`FunnelUpdate` or as its fields.

        ``contact_owner_email=None`` clears the owner. Returns the funnel as RD stored it.
        ``timeout`` and ``headers`` are this call's own, as for :meth:`get`.
        """
        deadline, extra = call_options(timeout, headers)
        fields = (lifecycle_stage, opportunity, contact_owner_email)
        if update is None:
            update = FunnelUpdate(
                lifecycle_stage=lifecycle_stage,
                opportunity=opportunity,
                contact_owner_email=contact_owner_email,
            )
        elif any(field is not NOT_SET for field in fields):
            raise ValidationError("pass either a FunnelUpdate or its fields as keywords, not both")
        funnel_state, _ = await self._apply(
            contact, update, funnel=funnel, deadline=deadline, headers=extra
        )
        return funnel_state

    def update_many(
        self,
        changes: Changes,
        *,
        concurrency: int = 16,
        max_rate: float | None = None,
        on_progress: Callable[[BulkSummary], object] | None = None,
        funnel: str = "default",
        lookahead: int | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> BulkRun:
        """Apply many ``(contact, FunnelUpdate)`` changes in parallel; one result per change read.

        ``changes`` may be any iterable or async iterable, even an endless one: it is read only as
        changes finish, at most ``concurrency + lookahead`` ahead (default lookahead: the larger
        of 1,024 and 8 per worker). Changes to one contact run one at a time, in input order,
        without holding a worker while they wait. ``max_rate`` caps this run's requests per
        second, on top of the client's own cap. ``timeout`` is each change's deadline (its
        retries included), and ``headers`` go with each change's requests, as for :meth:`get`.
        More workers than the client's ``connection_limit`` queue for connections.
        """
        deadline, extra = call_options(timeout, headers)
        # The run admits each change's first send; its retries pass the same limiter in the
        # transport, so the cap counts every request the run makes.
        limiter = LocalRateLimiter(max_rate, clock=self._clock) if max_rate is not None else None
        bulk_run = next(_BULK_RUNS)
        apply = functools.partial(
            self._apply,
            funnel=funnel,
            resend_limiter=limiter,
            bulk_run=bulk_run,
            deadline=deadline,
            headers=extra,
        )
        return BulkRun(
            changes,
            apply,
            concurrency=concurrency,
            limiter=limiter,
            on_progress=on_progress,
            lookahead=lookahead,
            observer=self._observer,
            bulk_run=bulk_run,
        )

    async def _apply(
        self,
        contact: Contact | str,
        update: FunnelUpdate,
        *,
        funnel: str = "default",
        bulk_run: int | None = None,
        resend_limiter: RateLimiter | None = None,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Funnel, int]:
        """Send one update; return the stored funnel and how many attempts it took."""
        if not isinstance(update, FunnelUpdate):
            raise ValidationError(f"update must be a FunnelUpdate, got {update!r}")
        contact = Contact.parse(contact)
        path = funnel_path(contact, funnel)
        body = update_to_json(update, self._clear_owner_as)
        return await self._send(
            "PUT",
            path,
            read_funnel,
            operation="funnels.update",
            route=FUNNEL_ROUTE,
            json=body,
            contact=contact,
            bulk_run=bulk_run,
            resend_limiter=resend_limiter,
            deadline=deadline,
            headers=headers,
        )


def read_funnel(answer: Answer) -> Funnel:
    """The funnel in a funnel endpoint's answer, with the answer's request id."""
    return funnel_from_json(answer.json(), request_id_of(answer.headers))


def funnel_path(contact: Contact | str, funnel: str) -> str:
    """``/platform/contacts/email:<value>/funnels/<funnel>``, percent-encoded as RD expects."""
    if not funnel or not isinstance(funnel, str):
        raise ValidationError(f"funnel must be a non-empty name, got {funnel!r}")
    segment = Contact.parse(contact).path_segment
    return f"/platform/contacts/{segment}/funnels/{_funnel_segment(funnel)}"


@functools.lru_cache(maxsize=64)
def _funnel_segment(funnel: str) -> str:
    """Percent-encoded once per funnel name: almost every call names ``default``."""
    return quote(funnel, safe="")
