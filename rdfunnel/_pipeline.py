"""The one path every request takes, API and token requests alike, one layer per concern:

``Pipeline.send``
    reads the answer and records the attempts, on the result or on the error, in one place;
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

import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

from .__about__ import __version__
from ._clock import Clock
from ._quota import SpentQuotas
from ._transport import Answer, Request, Transport
from .errors import APIError, QuotaExceededError, RateLimitError, RDStationError
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

    __slots__ = ("attempts", "auth", "replayed", "request", "resend_limiter", "retries", "token")

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


class Pipeline:
    """Sends one client's requests until each succeeds or fails for good."""

    __slots__ = (
        "_bearer",
        "_clock",
        "_limiter",
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
        user_agent: str = USER_AGENT,
    ) -> None:
        self._transport = transport
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
        sends itself.
        """
        self._transport.session  # a closed client fails here, unsent  # noqa: B018
        call = _Call(request, auth, resend_limiter)
        try:
            return read(await self._send_handling_retries(call)), call.attempts
        except RDStationError as error:
            error.attempts = call.attempts
            raise

    async def _send_handling_retries(self, call: _Call) -> Answer:
        while True:
            outcome = await self._send_handling_auth(call)
            if isinstance(outcome, Answer):
                return outcome
            wait = self._retry.decide(outcome, call.retries)
            if wait is None:
                raise outcome
            call.retries += 1
            logger.info(
                "retrying %s %s in %.2f s (retry %d of %d) after %s",
                call.request.method,
                call.request.url.path,
                wait,
                call.retries,
                self._retry.max_retries,
                _reason(outcome),
            )
            if isinstance(outcome, RateLimitError) and outcome.scope == "account":
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

    async def _send_single(self, call: _Call) -> Answer | RDStationError:
        request, auth = call.request, call.auth
        if auth is not None:  # RD's quotas count API requests, not token requests
            self._quotas.check(request.contact)  # fail at once, without waiting for a slot
        if call.attempts and call.resend_limiter is not None:
            await call.resend_limiter.acquire()
        if auth is not None:
            # The token first: a refresh it waits for takes a rate slot of its own before ours.
            call.token = await auth.access_token()
            await self._limiter.acquire()
            self._quotas.check(request.contact)  # spent while this request waited: never send it
            headers = self._bearer_headers(call.token)
        else:
            await self._limiter.acquire()
            headers = {**(request.headers or {}), "User-Agent": self._user_agent}
        call.attempts += 1
        outcome = await self._transport.attempt(request, headers, self._retry.max_wait)
        if auth is not None and isinstance(outcome, QuotaExceededError):
            self._quotas.note(outcome, request.contact)
        return outcome

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


def _past_auth(status: int) -> bool:
    """Whether an answer shows the token was accepted: RD checks it before a 404 or a 400, but
    its gateway may answer 5xx and 429 without looking at it."""
    return status < 500 and status not in (401, 429)


def _reason(error: RDStationError) -> str:
    if isinstance(error, APIError):
        return f"HTTP {error.status}"
    return type(error).__name__
