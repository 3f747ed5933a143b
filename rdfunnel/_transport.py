"""The aiohttp session and one HTTP attempt: the only code that touches aiohttp.

Every aiohttp exception becomes a :class:`TransportError` (or :class:`RequestTimeoutError`) here,
and every error answer the :class:`APIError` that names it. Nothing here retries or waits: that is
the pipeline's job (``_pipeline.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
from yarl import URL

from ._privacy import masked_path, scrub
from ._serde import loads
from .errors import (
    RDStationError,
    RequestTimeoutError,
    TransportError,
    UnexpectedStatusError,
    error_from_response,
)
from .models import Contact, ContactKey

__all__ = ["Answer", "Request", "Transport"]


class Request:
    """One request, as each of its attempts sends it (API requests get bearer headers added),
    and what instrumentation says of it: the operation, the route, whom it is about."""

    __slots__ = (
        "bulk_run",
        "contact",
        "data",
        "fields",
        "headers",
        "key",
        "method",
        "operation",
        "params",
        "redirects",
        "route",
        "timeout",
        "url",
    )

    def __init__(
        self,
        method: str,
        url: URL,
        *,
        operation: str,
        route: str,
        data: bytes | str | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        contact: Contact | None = None,
        bulk_run: int | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        redirects: bool = True,
    ) -> None:
        self.method = method
        self.url = url
        #: ``funnels.get``, ``token.refresh``, ...: what the caller asked for.
        self.operation = operation
        #: The path with placeholders for contacts: a metric label, never personal data.
        self.route = route
        self.data = data
        self.params = params
        self.headers = headers
        #: Whom the request is about, and the key of the quota it counts against (besides the
        #: account's).
        self.contact = contact
        self.key: ContactKey | None = contact.key if contact is not None else None
        self.bulk_run = bulk_run
        #: What instrumentation events say of this request, made once when first needed.
        self.fields: dict[str, Any] | None = None
        #: None: the transport's own.
        self.timeout = timeout
        #: Whether to follow redirects: never for token requests, whose bodies hold secrets.
        self.redirects = redirects


class Answer:
    """A successful (2xx) answer, its body not yet decoded."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        """The decoded body (None when empty); :class:`UnexpectedStatusError` if it is not JSON."""
        if not self.body:
            return None
        try:
            return loads(self.body)
        except ValueError:
            raise UnexpectedStatusError(
                self.status,
                messages=("the response body is not JSON",),
                body=self.body.decode("utf-8", "replace"),
                headers=self.headers,
            ) from None


class Transport:
    """Owns (or borrows) the aiohttp session, and sends single attempts over it."""

    __slots__ = ("_closed", "_owns_session", "_session", "_timeout")

    def __init__(
        self, *, timeout: float | None, session: aiohttp.ClientSession | None = None
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None
        self._closed = False

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
        """Close the session if it is ours; a caller's session is left open for the caller."""
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def attempt(
        self, request: Request, headers: Mapping[str, str] | None, max_wait: float
    ) -> Answer | RDStationError:
        """Send ``request`` once: its answer, or the error it met (returned, never raised).

        A 429 asking for a wait longer than ``max_wait`` is a :class:`QuotaExceededError`.
        """
        timeout = request.timeout or self._timeout
        try:
            async with self.session.request(
                request.method,
                request.url,
                data=request.data,
                params=request.params,
                headers=headers,
                timeout=timeout,
                allow_redirects=request.redirects,
            ) as response:
                body = await response.read()
                status = response.status
                if status < 300:
                    return Answer(status, response.headers, body)
                return error_from_response(status, response.headers, body, max_wait=max_wait)
        except TimeoutError:
            where = masked_path(request.url.raw_path)  # never a contact's address in a message
            return RequestTimeoutError(
                f"{request.method} {where} got no answer within {timeout.total} s"
            )
        except aiohttp.ClientError as exc:
            where = masked_path(request.url.raw_path)
            reason = scrub(str(exc))  # aiohttp may quote the URL
            return TransportError(
                f"{request.method} {where} failed: {type(exc).__name__}: {reason}"
            )
