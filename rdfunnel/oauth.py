"""OAuth 2 for RD Station on authlib and aiohttp: authorization URL, code exchange, refresh, revoke.

authlib ships no aiohttp client, so it builds what it can (the authorization URL, form-style token
and revocation bodies, the state) and the requests are sent here. By default the token requests
are the ones RD documents (a JSON body, ``?token_by=code`` for codes); ``style="form"`` sends the
standard form bodies with ``grant_type`` that RD's newer OAuth server expects.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import attrs
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7009.parameters import prepare_revoke_token_request
from yarl import URL

from .errors import (
    APIError,
    ExpiredCodeGrantError,
    InvalidCredentialsError,
    InvalidRefreshTokenError,
    RequestTimeoutError,
    TransportError,
    ValidationError,
    error_from_response,
)
from .tokens import Token

__all__ = ["DEFAULT_BASE_URL", "OAuthApp", "TokenStyle", "authorization_url", "exchange_code"]

DEFAULT_BASE_URL = "https://api.rd.services"
TokenStyle = Literal["json", "form"]
_STYLES = ("json", "form")

logger = logging.getLogger("rdfunnel")

_HINTS: dict[type[APIError], str] = {
    InvalidRefreshTokenError: (
        "the refresh token is invalid or revoked: authorize the app again "
        "(rdfunnel.oauth.authorization_url, then exchange_code) to get a new one"
    ),
    InvalidCredentialsError: (
        "the client id, client secret or redirect URI was refused: check them, then authorize "
        "the app again if the refresh token belongs to another app"
    ),
    ExpiredCodeGrantError: "the code was already used or is over 60 minutes old: authorize again",
}


def _now() -> datetime:
    return datetime.now(UTC)


def check_url(url: str, what: str) -> str:
    """Secrets travel to these URLs: https only, except to this machine."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return url
    raise ValidationError(f"{what} must be an https:// URL (http:// only for loopback): {url!r}")


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen(kw_only=True)
class OAuthApp:
    """An RD Station app's credentials and OAuth endpoints. Each method sends exactly one request.

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
        self, session: aiohttp.ClientSession, code: str, redirect_uri: str | None = None
    ) -> Token:
        """Trade an authorization code for tokens.

        RD's JSON style takes no ``redirect_uri``; the form style sends it when given.
        """
        if self.style == "json":
            url = str(URL(self.token_url).update_query(token_by="code"))
            return await self._token_request(session, url, {**self._credentials(), "code": code})
        form = prepare_token_request(
            "authorization_code", redirect_uri=redirect_uri, code=code, **self._credentials()
        )
        return await self._token_request(session, self.token_url, form)

    async def refresh(self, session: aiohttp.ClientSession, refresh_token: str) -> Token:
        """A new access token. If the answer holds no refresh token, the old one stays valid."""
        body: dict[str, str] | str
        if self.style == "json":
            body = {**self._credentials(), "refresh_token": refresh_token}
        else:
            body = prepare_token_request(
                "refresh_token", refresh_token=refresh_token, **self._credentials()
            )
        token = await self._token_request(session, self.token_url, body)
        if token.refresh_token is None:
            token = attrs.evolve(token, refresh_token=refresh_token)
        return token

    async def revoke(
        self,
        session: aiohttp.ClientSession,
        token: str,
        token_type_hint: Literal["access_token", "refresh_token"] = "refresh_token",
    ) -> None:
        """Revoke a token; RD then refuses both the access and the refresh token."""
        body, headers = prepare_revoke_token_request(token, token_type_hint)
        headers["Accept"] = "application/json"
        logger.debug("revoking the %s at %s", token_type_hint, self.revoke_url)
        await self._post(session, self.revoke_url, headers=headers, data=body)

    def _credentials(self) -> dict[str, str]:
        return {"client_id": self.client_id, "client_secret": self.client_secret}

    async def _token_request(
        self, session: aiohttp.ClientSession, url: str, body: dict[str, str] | str
    ) -> Token:
        logger.debug("token request (%s style) to %s", self.style, url)
        if isinstance(body, dict):
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            status, raw = await self._post(session, url, headers=headers, json=body)
        else:
            headers = {
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            }
            status, raw = await self._post(session, url, headers=headers, data=body)
        try:
            answer = json.loads(raw)
            if not isinstance(answer, Mapping):
                raise ValueError("not a JSON object")
            token = Token.from_response(answer, now=_now())
        except ValueError:
            # Never echo the body: it may hold a token.
            raise APIError(
                status, messages=("the token endpoint's answer holds no access token",)
            ) from None
        return token.for_app(self.client_id, self.token_url)

    async def _post(
        self, session: aiohttp.ClientSession, url: str, **kwargs: Any
    ) -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with session.post(
                url, allow_redirects=False, timeout=timeout, **kwargs
            ) as response:
                raw = await response.read()
                status, headers = response.status, response.headers
        except TimeoutError as error:
            raise RequestTimeoutError(f"no answer from {url} within {self.timeout} s") from error
        except aiohttp.ClientError as error:
            raise TransportError(f"request to {url} failed: {type(error).__name__}") from error
        if status >= 400:
            raise _with_hint(error_from_response(status, dict(headers), raw))
        return status, raw


def _with_hint(error: APIError) -> APIError:
    """The same error, its message also saying what the user must do."""
    hint = _HINTS.get(type(error))
    if hint is None:
        return error
    return type(error)(
        error.status,
        error_types=error.error_types,
        messages=(*error.messages, hint),
        details=error.details,
        body=error.body,
        headers=error.headers,
    )


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
) -> Token:
    """Trade the code RD sent to the redirect URI for a :class:`Token`.

    Uses ``session`` when given; otherwise opens a session for this one request and closes it.
    """
    app = OAuthApp.for_base_url(
        client_id, client_secret, base_url, token_url=token_url, style=style
    )
    if session is not None:
        return await app.exchange_code(session, code, redirect_uri)
    async with aiohttp.ClientSession() as own:
        return await app.exchange_code(own, code, redirect_uri)
