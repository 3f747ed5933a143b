"""OAuth 2 for RD Station on authlib and aiohttp: authorization URL, code exchange, refresh, revoke.

authlib ships no aiohttp client, so it builds what it can (the authorization URL, form-style token
and revocation bodies, the state); :class:`OAuthApp` builds the requests and reads the answers,
and :class:`TokenEndpoint` sends them through the client's one pipeline, like any other request.
By default the token requests are the ones RD documents (a JSON body, ``?token_by=code`` for
codes); ``style="form"`` sends the standard form bodies with ``grant_type`` that RD's newer OAuth
server expects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

import aiohttp
import attrs
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7009.parameters import prepare_revoke_token_request
from yarl import URL

from ._clock import SYSTEM_CLOCK, Clock
from ._network import SSLSetting, network_settings
from ._pipeline import Pipeline
from ._serde import dumps, loads
from ._transport import Answer, Request, Transport
from ._urls import DEFAULT_BASE_URL, check_url
from .errors import APIError
from .ratelimit import LocalRateLimiter
from .retry import RetryPolicy
from .tokens import Token

__all__ = [
    "DEFAULT_BASE_URL",
    "OAuthApp",
    "TokenEndpoint",
    "TokenStyle",
    "authorization_url",
    "exchange_code",
]

TokenStyle = Literal["json", "form"]

logger = logging.getLogger("rdfunnel")

_JSON = {"Content-Type": "application/json", "Accept": "application/json"}
_FORM = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}


@attrs.frozen(kw_only=True)
class OAuthApp:
    """An RD Station app's credentials and OAuth endpoints: builds its token requests and reads
    the answers. Each ``async`` method sends exactly one request, over the session given, and
    dates the token it gets by ``clock``.

    Build it with :meth:`for_base_url`; ``client_secret`` never appears in ``repr``.
    """

    client_id: str
    client_secret: str = attrs.field(repr=False)
    token_url: str
    revoke_url: str
    authorize_url: str
    style: TokenStyle = attrs.field(
        default="json", validator=attrs.validators.in_(("json", "form"))
    )
    #: Seconds each request may take (None: no limit), so a hanging endpoint cannot stall callers.
    timeout: float | None = 30.0

    @classmethod
    def for_base_url(
        cls,
        client_id: str,
        client_secret: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        token_url: str | None = None,
        revoke_url: str | None = None,
        authorize_url: str | None = None,
        style: TokenStyle = "json",
        timeout: float | None = 30.0,
    ) -> OAuthApp:
        """Endpoints derived from ``base_url`` (``/auth/token``, ``/auth/revoke``,
        ``/auth/dialog``), each of which can be overridden."""
        base = base_url.rstrip("/")
        return cls(
            client_id=client_id,
            client_secret=client_secret,
            token_url=check_url(token_url or f"{base}/auth/token", "token_url"),
            revoke_url=check_url(revoke_url or f"{base}/auth/revoke", "revoke_url"),
            authorize_url=check_url(authorize_url or f"{base}/auth/dialog", "authorize_url"),
            style=style,
            timeout=timeout,
        )

    def authorization_url(self, redirect_uri: str, state: str | None = None) -> tuple[str, str]:
        """The URL to send the user to, and the state to check on the way back."""
        return authorization_url(
            self.client_id, redirect_uri, state, authorize_url=self.authorize_url
        )

    async def exchange_code(
        self,
        session: aiohttp.ClientSession,
        code: str,
        redirect_uri: str | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Token:
        """Trade an authorization code for tokens.

        RD's JSON style takes no ``redirect_uri``; the form style sends it when given.
        """
        return await _once(self, session, clock).exchange_code(code, redirect_uri)

    async def refresh(
        self, session: aiohttp.ClientSession, refresh_token: str, *, clock: Clock = SYSTEM_CLOCK
    ) -> Token:
        """A new access token. If the answer holds no refresh token, the old one stays valid."""
        return await _once(self, session, clock).refresh(refresh_token)

    async def revoke(
        self,
        session: aiohttp.ClientSession,
        token: str,
        token_type_hint: Literal["access_token", "refresh_token"] = "refresh_token",
    ) -> None:
        """Revoke a token; RD then refuses both the access and the refresh token."""
        await _once(self, session, SYSTEM_CLOCK).revoke(token, token_type_hint)

    def code_request(self, code: str, redirect_uri: str | None = None) -> Request:
        if self.style == "json":
            url = URL(self.token_url).update_query(token_by="code")
            body = dumps({**self._credentials(), "code": code})
            return self._post("token.exchange", url, _JSON, body)
        form = prepare_token_request(
            "authorization_code", redirect_uri=redirect_uri, code=code, **self._credentials()
        )
        return self._post("token.exchange", URL(self.token_url), _FORM, form)

    def refresh_request(self, refresh_token: str) -> Request:
        if self.style == "json":
            body = dumps({**self._credentials(), "refresh_token": refresh_token})
            return self._post("token.refresh", URL(self.token_url), _JSON, body)
        form = prepare_token_request(
            "refresh_token", refresh_token=refresh_token, **self._credentials()
        )
        return self._post("token.refresh", URL(self.token_url), _FORM, form)

    def revoke_request(self, token: str, token_type_hint: str) -> Request:
        body, headers = prepare_revoke_token_request(token, token_type_hint)
        headers = {**headers, "Accept": "application/json"}
        return self._post("token.revoke", URL(self.revoke_url), headers, body)

    def token_from(self, answer: Answer, now: datetime) -> Token:
        """The token in a token endpoint's answer, stamped with this app."""
        try:
            payload = loads(answer.body)
            if not isinstance(payload, Mapping):
                raise ValueError("not a JSON object")
            token = Token.from_response(payload, now=now)
        except ValueError:
            # Never echo the body: it may hold a token.
            raise APIError(
                answer.status, messages=("the token endpoint's answer holds no access token",)
            ) from None
        return token.for_app(self.client_id, self.token_url)

    def _credentials(self) -> dict[str, str]:
        return {"client_id": self.client_id, "client_secret": self.client_secret}

    def _post(
        self, operation: str, url: URL, headers: Mapping[str, str], body: bytes | str
    ) -> Request:
        return Request(
            "POST",
            url,
            operation=operation,
            route=url.path,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            redirects=False,
        )


class TokenEndpoint:
    """An app's token requests, sent through a pipeline: the same gate, retries and errors as
    every other request, without a bearer token."""

    __slots__ = ("_pipeline", "app")

    def __init__(self, app: OAuthApp, pipeline: Pipeline) -> None:
        self.app = app
        self._pipeline = pipeline

    async def exchange_code(self, code: str, redirect_uri: str | None = None) -> Token:
        logger.debug(
            "code exchange (%s style) at %s",
            self.app.style,
            self.app.token_url,
            extra={"event": "token_request", "operation": "token.exchange"},
        )
        return await self._token(self.app.code_request(code, redirect_uri))

    async def refresh(self, refresh_token: str) -> Token:
        logger.debug(
            "token refresh (%s style) at %s",
            self.app.style,
            self.app.token_url,
            extra={"event": "token_request", "operation": "token.refresh"},
        )
        token = await self._token(self.app.refresh_request(refresh_token))
        if token.refresh_token is None:
            token = attrs.evolve(token, refresh_token=refresh_token)
        return token

    async def revoke(self, token: str, token_type_hint: str = "refresh_token") -> None:
        logger.debug(
            "revoking the %s at %s",
            token_type_hint,
            self.app.revoke_url,
            extra={"event": "token_request", "operation": "token.revoke"},
        )
        await self._pipeline.send(
            self.app.revoke_request(token, token_type_hint), _ignored, auth=None
        )

    async def _token(self, request: Request) -> Token:
        token, _ = await self._pipeline.send(request, self._token_from, auth=None)
        return token

    def _token_from(self, answer: Answer) -> Token:
        return self.app.token_from(answer, datetime.fromtimestamp(self._pipeline.clock.time(), UTC))


def _ignored(answer: Answer) -> None:
    """A revocation's answer says nothing more than its status."""


def _once(app: OAuthApp, session: aiohttp.ClientSession, clock: Clock) -> TokenEndpoint:
    """``app``'s endpoint over ``session``, sending each request once: no retries, no rate cap."""
    return _endpoint(app, Transport(timeout=app.timeout, session=session), clock)


def _endpoint(app: OAuthApp, transport: Transport, clock: Clock) -> TokenEndpoint:
    pipeline = Pipeline(
        transport,
        retry=RetryPolicy(max_retries=0),
        limiter=LocalRateLimiter(clock=clock),
        clock=clock,
    )
    return TokenEndpoint(app, pipeline)


def authorization_url(
    client_id: str,
    redirect_uri: str,
    state: str | None = None,
    *,
    base_url: str = DEFAULT_BASE_URL,
    authorize_url: str | None = None,
) -> tuple[str, str]:
    """The URL that asks the user to authorize the app, and its ``state`` (generated if not given).

    Keep the state and compare it with the one RD sends back to the redirect URI.
    """
    endpoint = check_url(authorize_url or f"{base_url.rstrip('/')}/auth/dialog", "authorize_url")
    state = state or generate_token(32)
    url = prepare_grant_uri(endpoint, client_id, "code", redirect_uri=redirect_uri, state=state)
    return str(url), state


async def exchange_code(
    code: str,
    *,
    client_id: str,
    client_secret: str,
    redirect_uri: str | None = None,
    base_url: str = DEFAULT_BASE_URL,
    token_url: str | None = None,
    style: TokenStyle = "json",
    session: aiohttp.ClientSession | None = None,
    proxy: str | None = None,
    trust_env: bool | None = None,
    ssl: SSLSetting = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Token:
    """Trade the code RD sent to the redirect URI for a :class:`Token`.

    Uses ``session`` when given; otherwise opens a session for this one request, with ``proxy``,
    ``trust_env`` and ``ssl`` as for :class:`~rdfunnel.RDStation`, and closes it.
    """
    app = OAuthApp.for_base_url(
        client_id, client_secret, base_url, token_url=token_url, style=style
    )
    network = network_settings(
        proxy=proxy, trust_env=trust_env, ssl=ssl, session=session, urls=(app.token_url,)
    )
    if session is not None:
        return await app.exchange_code(session, code, redirect_uri, clock=clock)
    transport = Transport(timeout=app.timeout, network=network)
    try:
        return await _endpoint(app, transport, clock).exchange_code(code, redirect_uri)
    finally:
        await transport.close()
