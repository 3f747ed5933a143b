"""The one path every request takes, API and token requests alike, one layer per concern:

``Pipeline.send``
    reads the answer and records the attempts, on the result or on the error, in one place;
    a call's own deadline (``timeout=``) holds everything below it;
``_send_handling_retries``
    obeys :meth:`RetryPolicy.decide`, waiting
    (an account-wide 429 pauses every request of the client) and logging each retry.
``_send_handling_auth``
    API requests only: the bearer token, and a refresh and replay after a 401.
``_send_single``
    the gate (spent quotas, a bulk run's cap on re-sends, the client's rate cap), then
    :meth:`Transport.attempt`, which sends once over aiohttp and names what came back.

A layer *returns* the errors the layers above may act on (an error answer, a lost connection) and
*raises* those that must surface at once (a refused refresh, a spent quota, a closed client).
Auth and retries live here rather than in aiohttp client middlewares so that aioresponses (which
patches inside them) sees every attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from multidict import CIMultiDict

from .__about__ import __version__
from ._clock import Clock
from ._observe import Observer
from ._privacy import masked_path
from ._quota import SpentQuotas
from ._transport import Answer, Request, Transport
from .errors import (
    APIError,
    QuotaExceededError,
    RateLimitError,
    RDStationError,
    RequestTimeoutError,
)
from .events import AttemptEnded, CallEnded, CallStarted, ClientPaused, RateLimited, RetryScheduled
from .ratelimit import RateLimiter
from .retry import RetryPolicy

__all__ = ["USER_AGENT", "Pipeline", "TokenSource"]

logger = logging.getLogger("rdfunnel")

T = TypeVar("T")

USER_AGENT = f"rdfunnel/{__version__}"


class TokenSource(Protocol):
    """The pipeline's view of authentication: a token to send, and a way to replace one."""

    async def access_token(self) -> str:
        """A token believed valid now (refreshing first if it is about to expire)."""
        ...

    async def refresh(self, rejected: str) -> bool:
        """The API refused ``rejected`` with a 401: get a new token if that one is still current.

        Returns True when a token other than ``rejected`` is now available (worth a replay).
        """
        ...

    def accepted(self, token: str) -> None:
        """The API answered a request made with ``token``: it works."""
        ...


class _Call:
    """One logical call's progress through the layers."""

    __slots__ = (
        "attempts",
        "auth",
        "deadline",
        "replayed",
        "request",
        "resend_limiter",
        "retries",
        "status",
        "token",
    )

    def __init__(
        self, request: Request, auth: TokenSource | None, resend_limiter: RateLimiter | None
    ) -> None:
        self.request = request
        self.auth = auth
        self.resend_limiter = resend_limiter
        self.attempts = 0
        self.retries = 0
        self.replayed = False
        self.token = ""
        self.status: int | None = None  # the last answer's
        #: When the call's own ``timeout=`` passes, on the client's clock (None: never).
        self.deadline: float | None = None


class Pipeline:
    """Sends one client's requests until each succeeds or fails for good."""

    __slots__ = (
        "_bearer",
        "_clock",
        "_limiter",
        "_observer",
        "_proven",
        "_quotas",
        "_retry",
        "_transport",
        "_user_agent",
    )

    def __init__(
        self,
        transport: Transport,
        *,
        retry: RetryPolicy,
        limiter: RateLimiter,
        clock: Clock,
        observer: Observer | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        self._transport = transport
        self._observer = observer or Observer()
        self._retry = retry
        self._limiter = limiter
        self._clock = clock
        self._quotas = SpentQuotas(clock)
        self._user_agent = user_agent
        self._bearer: tuple[str | None, dict[str, str]] = (None, {})
        self._proven: str | None = None  # the last token the API answered

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def observer(self) -> Observer:
        return self._observer

    async def send(
        self,
        request: Request,
        read: Callable[[Answer], T],
        *,
        auth: TokenSource | None,
        resend_limiter: RateLimiter | None = None,
    ) -> tuple[T, int]:
        """Send ``request`` until it succeeds or fails for good: what ``read`` makes of the answer,
        and how many times it was sent (also on any error raised, reading's included).

        ``auth`` (None for token requests) supplies the bearer token. ``resend_limiter`` is a
        further limiter every re-send must pass: a bulk run's own cap, whose engine admits first
        sends itself. A ``request.deadline`` ends the call, wherever it is, in a
        :class:`RequestTimeoutError`.
        """
        self._transport.session  # a closed client fails here, unsent  # noqa: B018
        call = _Call(request, auth, resend_limiter)
        observer = self._observer
        if observer.wants(CallStarted):
            observer.emit(CallStarted(**observer.request_fields(request)))
        timed = observer.wants(CallEnded)
        started = self._clock.monotonic() if timed else 0.0
        try:
            if request.deadline is None:
                answer = await self._send_handling_retries(call)
            else:
                answer = await self._send_within_deadline(call, request.deadline)
            value = read(answer)
        except BaseException as error:
            if isinstance(error, RDStationError):
                error.attempts = call.attempts
                error.contact = request.contact
            if timed:
                self._call_ended(call, started, error)
            raise
        if timed:
            self._call_ended(call, started, None)
        return value, call.attempts

    async def _send_within_deadline(self, call: _Call, seconds: float) -> Answer:
        """The call, cut at its deadline wherever it is: waiting for a token, a rate slot, a
        connection, a backoff or an answer. A token refresh it waits for goes on for the others:
        the refresh is a task of its own, which the call only waits on."""
        call.deadline = self._clock.monotonic() + seconds
        try:
            async with asyncio.timeout(seconds) as scope:
                return await self._send_handling_retries(call)
        except TimeoutError:
            if not scope.expired():
                raise  # not ours
            raise self._deadline_passed(call, seconds) from None

    def _deadline_passed(
        self, call: _Call, seconds: float, last: RDStationError | None = None
    ) -> RequestTimeoutError:
        request = call.request
        where = masked_path(request.url.raw_path)  # never a contact's address in a message
        after = f"; the last attempt met {_reason(last)}" if last is not None else ""
        error = RequestTimeoutError(
            f"{request.method} {where} did not finish within the call's timeout of {seconds:g} s "
            f"(retries and waits included){after}"
        )
        error.__cause__ = last
        return error

    async def _send_handling_retries(self, call: _Call) -> Answer:
        while True:
            outcome = await self._send_handling_auth(call)
            if isinstance(outcome, Answer):
                return outcome
            wait = self._retry.decide(outcome, call.retries)
            if wait is None:
                raise outcome
            deadline = call.deadline
            if deadline is not None and self._clock.monotonic() + wait >= deadline:
                # The retry could not start in time: say so now rather than wait to be cut.
                assert call.request.deadline is not None
                raise self._deadline_passed(call, call.request.deadline, outcome)
            call.retries += 1
            self._retrying(call, _reason(outcome), wait)
            if isinstance(outcome, RateLimitError) and outcome.scope == "account":
                if self._observer.wants(ClientPaused):
                    self._observer.emit(ClientPaused(scope="account", seconds=wait))
                await self._limiter.pause(wait)  # hold every request of this client, not just ours
            elif wait > 0:
                await self._clock.sleep(wait)

    async def _send_handling_auth(self, call: _Call) -> Answer | RDStationError:
        auth = call.auth
        while True:
            outcome = await self._send_single(call)
            if auth is None:
                return outcome
            token = call.token
            status = outcome.status if isinstance(outcome, _ANSWERED) else 500
            if token is not self._proven and _past_auth(status):
                self._proven = token
                auth.accepted(token)
            if status != 401 or (call.replayed and call.retries >= self._retry.max_retries):
                return outcome
            # RD's advice: any 401 means "refresh, then replay". Tokens can expire early, so a
            # replay refused again is replayed again, each time as one of the retries.
            if not await auth.refresh(token):
                return outcome
            call.retries += call.replayed
            call.replayed = True
            if self._observer.wants(RetryScheduled):
                self._observer.emit(
                    RetryScheduled(
                        **self._observer.request_fields(call.request),
                        retry=call.retries,
                        reason="HTTP 401",
                        wait=0.0,
                    )
                )

    async def _send_single(self, call: _Call) -> Answer | RDStationError:
        request, auth = call.request, call.auth
        if auth is not None:  # RD's quotas count API requests, not token requests
            self._quotas.check(request.key)  # fail at once, without waiting for a slot
        if call.attempts and call.resend_limiter is not None:
            await call.resend_limiter.acquire()
        if auth is not None:
            # The token first: a refresh it waits for takes a rate slot of its own before ours.
            call.token = await auth.access_token()
            await self._limiter.acquire()
            self._quotas.check(request.key)  # spent while this request waited: never send it
            headers: Mapping[str, str] = self._bearer_headers(call.token)
            if request.headers:  # the call's own, checked not to replace the bearer's
                headers = _merged(headers, request.headers)
        else:
            await self._limiter.acquire()
            headers = {**(request.headers or {}), "User-Agent": self._user_agent}
        call.attempts += 1
        observed = self._observer.wants(AttemptEnded)
        started = self._clock.monotonic() if observed else 0.0
        try:
            outcome = await self._transport.attempt(request, headers, self._retry.max_wait)
        except BaseException as error:  # cancelled mid-attempt: it went out all the same
            if observed:
                self._attempt_ended(call, error, self._clock.monotonic() - started)
            raise
        call.status = outcome.status if isinstance(outcome, _ANSWERED) else None
        if observed:
            self._attempt_ended(call, outcome, self._clock.monotonic() - started)
        if auth is not None and isinstance(outcome, QuotaExceededError):
            self._quotas.note(outcome, request.key)
        return outcome

    def _retrying(self, call: _Call, reason: str, wait: float) -> None:
        observer, request = self._observer, call.request
        if observer.wants(RetryScheduled):
            fields = observer.request_fields(request)
            observer.emit(RetryScheduled(**fields, retry=call.retries, reason=reason, wait=wait))
        if logger.isEnabledFor(logging.INFO):
            where = masked_path(request.url.raw_path)  # LGPD: never a contact's address in a log
            logger.info(
                "retrying %s %s in %.2f s (retry %d of %d) after %s",
                request.method,
                where,
                wait,
                call.retries,
                self._retry.max_retries,
                reason,
                extra={
                    "event": "retry_scheduled",
                    **observer.request_fields(request),
                    "retry": call.retries,
                    "reason": reason,
                    "wait": wait,
                },
            )

    def _attempt_ended(self, call: _Call, outcome: Answer | BaseException, duration: float) -> None:
        observer = self._observer
        fields = observer.request_fields(call.request)
        error = None if isinstance(outcome, Answer) else type(outcome).__name__
        observer.emit(
            AttemptEnded(
                **fields,
                attempt=call.attempts,
                duration=duration,
                status=call.status,
                error=error,
            )
        )
        if isinstance(outcome, RateLimitError) and observer.wants(RateLimited):
            observer.emit(
                RateLimited(**fields, scope=outcome.scope, retry_after=outcome.retry_after)
            )

    def _call_ended(self, call: _Call, started: float, error: BaseException | None) -> None:
        observer = self._observer
        observer.emit(
            CallEnded(
                **observer.request_fields(call.request),
                duration=self._clock.monotonic() - started,
                attempts=call.attempts,
                status=call.status,
                error=None if error is None else type(error).__name__,
            )
        )

    def _bearer_headers(self, token: str) -> dict[str, str]:
        cached_token, headers = self._bearer
        if cached_token != token:
            headers = {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": self._user_agent,
            }
            self._bearer = (token, headers)
        return headers


#: What came back with a status: an answer, or an error answer.
_ANSWERED = (Answer, APIError)


def _merged(headers: Mapping[str, str], extra: Mapping[str, str]) -> CIMultiDict[str]:
    """``headers`` with ``extra`` added, each name once whatever its case."""
    merged = CIMultiDict(headers)
    merged.update(extra)
    return merged


def _past_auth(status: int) -> bool:
    """Whether an answer shows the token was accepted: RD checks it before a 404 or a 400, but
    its gateway may answer 5xx and 429 without looking at it."""
    return status < 500 and status not in (401, 429)


def _reason(error: RDStationError) -> str:
    if isinstance(error, APIError):
        return f"HTTP {error.status}"
    return type(error).__name__
