"""The request pipeline, the only code that sends API requests.

rate gate → token → aiohttp → classify → retry. Auth and retries live here rather than in aiohttp
client middlewares so that aioresponses (which patches inside them) sees every attempt.
"""

from __future__ import annotations

import logging
from asyncio import sleep
from collections.abc import Mapping
from typing import Any

import aiohttp
from yarl import URL

from ._auth import TokenSource
from ._quota import SpentQuotas
from ._serde import dumps, loads
from .errors import (
    APIError,
    QuotaExceededError,
    RateLimitError,
    RDStationError,
    RequestTimeoutError,
    TransportError,
    UnexpectedStatusError,
    error_from_response,
)
from .models import ContactKey
from .ratelimit import RateLimiter
from .retry import RetryPolicy

__all__ = ["Transport"]

logger = logging.getLogger("rdfunnel")


class Transport:
    """Sends one client's requests: owns (or borrows) the session; applies auth, retries, limits."""

    __slots__ = (
        "_auth_header",
        "_base_url",
        "_closed",
        "_limiter",
        "_owns_session",
        "_proven",
        "_quotas",
        "_retry",
        "_session",
        "_timeout",
        "_tokens",
        "_user_agent",
    )

    def __init__(
        self,
        *,
        base_url: str,
        tokens: TokenSource,
        retry: RetryPolicy,
        timeout: float | None,
        limiter: RateLimiter,
        user_agent: str,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._tokens = tokens
        self._retry = retry
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limiter = limiter
        self._user_agent = user_agent
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._auth_header: tuple[str, dict[str, str]] = ("", {})
        self._quotas = SpentQuotas()
        self._proven: str | None = None  # the last token the API answered

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def tokens(self) -> TokenSource:
        return self._tokens

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session, created on first use so that it belongs to the running event loop."""
        if self._closed:
            raise RDStationError(
                "this RDStation client is closed; create a new one to send requests"
            )
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Close the session if it is ours; a caller's session is left open for the caller.

        A token refresh in flight finishes first, so that a rotated refresh token is not lost.
        """
        self._closed = True
        try:
            await self._tokens.drain()
        finally:
            if self._owns_session and self._session is not None:
                await self._session.close()
            self._session = None

    def _headers(self, token: str) -> dict[str, str]:
        cached_token, headers = self._auth_header
        if cached_token != token:
            headers = {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": self._user_agent,
            }
            self._auth_header = (token, headers)
        return headers

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        encoded: bool = True,
        resend_limiter: RateLimiter | None = None,
        contact: ContactKey | None = None,
    ) -> tuple[Any, int]:
        """Send one API request until it succeeds or fails for good.

        Returns the decoded JSON body (None when empty) and how many times it was sent. ``path``
        is taken as already percent-encoded unless ``encoded`` is False. Raised errors carry
        ``attempts``. ``resend_limiter`` is a further limiter every re-send (retry or replay) must
        pass: a bulk run's own cap, whose engine admits first sends itself. ``contact`` is whose
        quota the request counts against, besides the account's.
        """
        session = self.session
        url = URL(self._base_url + path, encoded=encoded)
        data = None if json is None else dumps(json)
        attempts = retries = 0
        replayed = False
        while True:
            try:
                self._quotas.check(contact)  # fail at once, without waiting for a slot
                if attempts and resend_limiter is not None:
                    await resend_limiter.acquire()
                await self._limiter.acquire()
                token = await self._tokens.access_token(session)
                self._quotas.check(contact)  # spent while this request waited: never send it
            except RDStationError as exc:
                exc.attempts = attempts
                raise
            attempts += 1
            try:
                async with session.request(
                    method,
                    url,
                    data=data,
                    params=params,
                    headers=self._headers(token),
                    timeout=self._timeout,
                ) as response:
                    body = await response.read()
                    status = response.status
                    if token is not self._proven and _past_auth(status):
                        self._proven = token
                        self._tokens.accepted(token)
                    if status < 300:
                        return _decode(status, response.headers, body), attempts
                    error: RDStationError = error_from_response(
                        status, response.headers, body, max_wait=self._retry.max_wait
                    )
            except TimeoutError:
                error = RequestTimeoutError(
                    f"{method} {url.path} got no answer within {self._timeout.total} s"
                )
            except aiohttp.ClientError as exc:
                error = TransportError(f"{method} {url.path} failed: {type(exc).__name__}: {exc}")
            except RDStationError as exc:
                exc.attempts = attempts
                raise

            if isinstance(error, QuotaExceededError):
                self._quotas.note(error, contact)
            elif (
                isinstance(error, APIError)
                and error.status == 401
                and (not replayed or retries < self._retry.max_retries)
            ):
                # RD's advice: any 401 means "refresh, then replay". Tokens can expire early, so
                # a replay refused again is replayed again, each time as one of the retries.
                try:
                    refreshed = await self._tokens.refresh(session, token)
                except RDStationError as exc:
                    exc.attempts = attempts
                    raise
                if refreshed:
                    retries += replayed
                    replayed = True
                    continue
            wait = await self._wait_before_retry(error, retries)
            if wait is None:
                error.attempts = attempts
                raise error
            retries += 1
            logger.info(
                "retrying %s %s in %.2f s (retry %d of %d) after %s",
                method,
                url.path,
                wait,
                retries,
                self._retry.max_retries,
                _reason(error),
            )
            if wait > 0:
                await sleep(wait)

    async def _wait_before_retry(self, error: RDStationError, retries: int) -> float | None:
        """Seconds to wait before the next try, or None when ``error`` should surface now."""
        if not error.retryable or retries >= self._retry.max_retries:
            return None
        if not isinstance(error, RateLimitError):
            return self._retry.backoff(retries + 1)
        hint = error.retry_after
        if hint is not None and hint > self._retry.max_wait:
            return None  # e.g. a per-contact daily quota: hours away, fail now with the hint
        wait = hint if hint is not None else self._retry.backoff(retries + 1)
        if error.scope == "account":
            await self._limiter.pause(wait)  # hold every request of this client, not just ours
            return 0.0
        return wait


def _past_auth(status: int) -> bool:
    """Whether an answer shows the token was accepted: RD checks it before a 404 or a 400, but
    its gateway may answer 5xx and 429 without looking at it."""
    return status < 500 and status not in (401, 429)


def _decode(status: int, headers: Mapping[str, str], body: bytes) -> Any:
    if not body:
        return None
    try:
        return loads(body)
    except ValueError:
        raise UnexpectedStatusError(
            status,
            messages=("the response body is not JSON",),
            body=body.decode("utf-8", "replace"),
            headers=headers,
        ) from None


def _reason(error: RDStationError) -> str:
    if isinstance(error, APIError):
        return f"HTTP {error.status}"
    return type(error).__name__
