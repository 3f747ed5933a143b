"""The aiohttp session and one HTTP attempt: the only code that touches aiohttp.

Every aiohttp exception becomes a :class:`TransportError` (or :class:`RequestTimeoutError`) here,
and every error answer the :class:`APIError` that names it. Nothing here retries or waits: that is
the pipeline's job (``_pipeline.py``).
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Mapping
from typing import Any

import aiohttp
from yarl import URL

from ._network import Network, environment_proxy, masked_url
from ._privacy import masked_path, scrub
from ._serde import loads
from .errors import (
    CertificateError,
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
        "deadline",
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
        deadline: float | None = None,
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
        #: A token request's headers; an API request's own (``headers=``), added to the bearer's.
        self.headers = headers
        #: Whom the request is about, and the key of the quota it counts against (besides the
        #: account's).
        self.contact = contact
        self.key: ContactKey | None = contact.key if contact is not None else None
        self.bulk_run = bulk_run
        #: What instrumentation events say of this request, made once when first needed.
        self.fields: dict[str, Any] | None = None
        #: Each attempt's limit (None: the transport's own).
        self.timeout = timeout
        #: Seconds the whole call may take, retries and waits included (None: no limit).
        self.deadline = deadline
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
    """Owns (or borrows) the aiohttp session, and sends single attempts over it.

    The session it opens follows ``network`` (proxy, TLS, pool size). Its pool is gated here, not
    in aiohttp, so the time an attempt waits for a connection does not count against its
    timeout: a crowd larger than the pool queues, and none of it times out for queueing.

    ``trust_env`` is read here too, once per host, rather than by aiohttp, which would look the
    proxy and ``~/.netrc`` up in a thread on every request (and fail every one whose host has a
    netrc entry, next to the bearer token).
    """

    __slots__ = (
        "_closed",
        "_env_proxies",
        "_network",
        "_owns_session",
        "_proxy",
        "_session",
        "_slots",
        "_timeout",
    )

    def __init__(
        self,
        *,
        timeout: float | None,
        session: aiohttp.ClientSession | None = None,
        network: Network | None = None,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None
        self._network = network or Network()
        self._proxy = self._network.proxy if self._owns_session else None
        #: The environment's proxy for each (scheme, host, port), once read.
        self._env_proxies: dict[tuple[str, str, int | None], str | None] | None = (
            {} if self._owns_session and self._network.trust_env and self._proxy is None else None
        )
        self._slots = (
            asyncio.Semaphore(self._network.connection_limit) if self._owns_session else None
        )
        self._closed = False

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session, created on first use so that it belongs to the running event loop."""
        if self._closed:
            raise RDStationError(
                "this RDStation client is closed; create a new one to send requests"
            )
        if self._session is None:
            network = self._network
            # The pool's limit is the gate's: aiohttp itself never makes an attempt wait.
            connector = aiohttp.TCPConnector(limit=network.connection_limit, ssl=network.ssl)
            self._session = aiohttp.ClientSession(connector=connector)
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
        slots = self._slots
        if slots is None:
            return await self._attempt(request, headers, max_wait)
        async with slots:  # waiting here is outside the attempt's timeout
            return await self._attempt(request, headers, max_wait)

    async def _attempt(
        self, request: Request, headers: Mapping[str, str] | None, max_wait: float
    ) -> Answer | RDStationError:
        timeout = request.timeout or self._timeout
        proxy = self._proxy if self._env_proxies is None else self._env_proxy(request.url)
        try:
            async with self.session.request(
                request.method,
                request.url,
                data=request.data,
                params=request.params,
                headers=headers,
                timeout=timeout,
                allow_redirects=request.redirects,
                proxy=proxy,
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
            return _transport_error(request, exc)

    def _env_proxy(self, url: URL) -> str | None:
        """The proxy ``HTTPS_PROXY``/``HTTP_PROXY`` name for ``url``, unless ``NO_PROXY``
        exempts its host."""
        assert self._env_proxies is not None
        key = (url.scheme, url.host or "", url.explicit_port)
        if key not in self._env_proxies:
            proxies = urllib.request.getproxies_environment()
            proxy = proxies.get(url.scheme)
            if proxy is not None:
                proxy = environment_proxy(f"{url.scheme.upper()}_PROXY", proxy)
            exempt = _no_proxy(proxies.get("no", ""), url.host or "", url.port)
            self._env_proxies[key] = None if exempt else proxy
        return self._env_proxies[key]


def _no_proxy(rule: str, host: str, port: int | None) -> bool:
    """Whether ``NO_PROXY`` (``rule``: ``*``, or names and domains, a port optional) exempts
    ``host``, as curl and Python's urllib read it."""
    host = host.lower()
    for entry in rule.lower().split(","):
        entry = entry.strip().lstrip(".")
        if entry == "*":
            return True
        name, colon, only_port = entry.rpartition(":") if entry.count(":") == 1 else ("", "", "")
        if colon and only_port.isdigit():
            if port is None or int(only_port) != port:
                continue
            entry = name
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def _transport_error(request: Request, exc: aiohttp.ClientError) -> TransportError:
    """What ``exc`` means for ``request``, said without a contact's address or a password."""
    where = f"{request.method} {masked_path(request.url.raw_path)}"
    host = request.url.host
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc.certificate_error, "verify_message", None) or exc.certificate_error
        return CertificateError(
            f"{where} failed: the TLS certificate of {host} could not be verified ({reason}): "
            "if your own CA signs it, pass ssl=ssl.create_default_context(cafile=...) "
            "(the rdfunnel command: set SSL_CERT_FILE)"
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return TransportError(f"{where} failed: TLS with {host} failed: {scrub(str(exc))}")
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return TransportError(
            f"{where} failed: cannot connect to the proxy {exc.host}:{exc.port}: "
            f"{scrub(str(exc.os_error))}"
        )
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        proxy = masked_url(str(exc.request_info.real_url))
        return TransportError(
            f"{where} failed: the proxy {proxy} refused it: HTTP {exc.status} {exc.message}"
        )
    reason = scrub(str(exc))  # aiohttp may quote the URL
    return TransportError(f"{where} failed: {type(exc).__name__}: {reason}")
