"""The fake's OAuth: codes, refresh and access tokens, and the ``/auth/...`` endpoints."""

from __future__ import annotations

import base64
import json
import math
import secrets
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import parse_qsl

from aiohttp import web
from yarl import URL

from . import _bodies as B
from ._stats import Counters

__all__ = ["AccessEntry", "OAuthRoutes", "TokenBook"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_JWT_HEADER: Final = _b64(b'{"alg":"HS256","typ":"JWT"}')


def new_access_token() -> str:
    """An opaque token that looks like RD's JWTs, so nobody's code assumes a shorter string."""
    claims = _b64(B.dumps({"jti": secrets.token_hex(8), "iss": "rdfunnel-fake"}))
    return f"{_JWT_HEADER}.{claims}.{secrets.token_urlsafe(32)}"


class Grant:
    """One authorization: its current refresh token and every access token it produced.

    Revoking any of its tokens ends the whole grant, as RD does ("both tokens answer 401").
    """

    __slots__ = ("alive", "refresh_token")

    def __init__(self, refresh_token: str) -> None:
        self.alive = True
        self.refresh_token = refresh_token


class AccessEntry:
    __slots__ = ("expires_at", "grant")

    def __init__(self, expires_at: float, grant: Grant) -> None:
        self.expires_at = expires_at
        self.grant = grant


class CodeEntry:
    __slots__ = ("client_id", "expires_at", "redirect_uri")

    def __init__(self, client_id: str, redirect_uri: str, expires_at: float) -> None:
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.expires_at = expires_at


class TokenBook:
    """Access tokens, refresh tokens and authorization codes, with their lifetimes."""

    CODE_LIFETIME: Final = 3600.0

    def __init__(self, lifetime: float, rotate: bool) -> None:
        self.lifetime = lifetime
        self.rotate = rotate
        self.access: dict[str, AccessEntry] = {}
        self.refresh: dict[str, Grant] = {}
        self.codes: dict[str, CodeEntry] = {}

    def new_grant(self, refresh_token: str | None = None) -> Grant:
        grant = Grant(refresh_token or secrets.token_urlsafe(32))
        self.refresh[grant.refresh_token] = grant
        return grant

    def issue_access(self, grant: Grant, now: float, lifetime: float | None = None) -> str:
        token = new_access_token()
        life = self.lifetime if lifetime is None else lifetime
        self.access[token] = AccessEntry(now + life, grant)
        return token

    def live_access(self, token: str) -> AccessEntry | None:
        """An access token whose grant still stands (expired or not); None for any other."""
        entry = self.access.get(token)
        return entry if entry is not None and entry.grant.alive else None

    def use_refresh(self, refresh_token: str, now: float) -> tuple[str, str] | None:
        """A new (access, refresh) pair for a valid refresh token, rotating it if configured."""
        grant = self.refresh.get(refresh_token)
        if grant is None or not grant.alive:
            return None
        if self.rotate:
            del self.refresh[refresh_token]
            grant.refresh_token = secrets.token_urlsafe(32)
            self.refresh[grant.refresh_token] = grant
        return self.issue_access(grant, now), grant.refresh_token

    def new_code(self, client_id: str, redirect_uri: str, now: float) -> str:
        code = secrets.token_urlsafe(24)
        self.codes[code] = CodeEntry(client_id, redirect_uri, now + self.CODE_LIFETIME)
        return code

    def revoke(self, token: str) -> bool:
        """End the grant ``token`` belongs to (access or refresh); False when it is unknown."""
        entry = self.access.get(token)
        grant = entry.grant if entry is not None else self.refresh.get(token)
        if grant is None:
            return False
        self.end(grant)
        return True

    def end(self, grant: Grant) -> None:
        grant.alive = False
        if self.refresh.get(grant.refresh_token) is grant:
            del self.refresh[grant.refresh_token]

    def revoke_all(self) -> None:
        for grant in list(self.refresh.values()):
            self.end(grant)
        for entry in self.access.values():
            entry.grant.alive = False
        self.codes.clear()

    def expire_all(self) -> None:
        for entry in self.access.values():
            entry.expires_at = float("-inf")


async def _read_fields(request: web.Request) -> dict[str, Any] | None:
    """A JSON or form body as a dict (None when it is neither), the token endpoint's tolerance."""
    text = (await request.read()).decode("utf-8", "replace")
    if "json" in request.content_type or text.lstrip().startswith("{"):
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
    return dict(parse_qsl(text, keep_blank_values=True))


class OAuthRoutes:
    """The ``/auth/...`` handlers for one app (client id and secret) over a :class:`TokenBook`.

    Never behind the gate: RD's faults and limits are the API's, not the token endpoint's.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        tokens: TokenBook,
        clock: Callable[[], float],
        counters: Counters,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self._tokens = tokens
        self._clock = clock
        self._counters = counters

    async def dialog(self, request: web.Request) -> web.StreamResponse:
        """Approve at once: redirect to the app with a single-use code (and its ``state``)."""
        route = "auth.dialog"
        query = request.query
        redirect = query.get("redirect_uri") or query.get("redirect_url") or ""
        try:
            target = URL(redirect)
        except ValueError:
            target = URL()
        if query.get("client_id") != self.client_id or not target.absolute:
            return self._counters.answer(route, 401, B.ACCESS_DENIED)
        code = self._tokens.new_code(self.client_id, redirect, self._clock())
        params = {"code": code}
        if "state" in query:
            params["state"] = query["state"]
        location = str(target.update_query(params))
        self._counters.requests[(route, 302)] += 1
        return web.Response(status=302, headers={"Location": location})

    async def token(self, request: web.Request) -> web.StreamResponse:
        route = "auth.token"
        answer = self._counters.answer
        fields = await _read_fields(request)
        if fields is None:
            return answer(route, 400, B.BAD_JSON)
        if (
            fields.get("client_id") != self.client_id
            or fields.get("client_secret") != self.client_secret
        ):
            return answer(route, 401, B.ACCESS_DENIED)
        kind = request.query.get("token_by") or fields.get("token_by") or fields.get("grant_type")
        if kind is None:
            kind = "code" if "code" in fields else "refresh_token"
        now = self._clock()
        if kind in ("code", "authorization_code"):
            code = self._tokens.codes.pop(str(fields.get("code", "")), None)
            if code is None or code.expires_at <= now:
                return answer(route, 401, B.EXPIRED_CODE)
            redirect = fields.get("redirect_uri") or fields.get("redirect_url")
            if code.client_id != self.client_id or (redirect and redirect != code.redirect_uri):
                return answer(route, 401, B.ACCESS_DENIED)
            grant = self._tokens.new_grant()
            pair = (self._tokens.issue_access(grant, now), grant.refresh_token)
            self._counters.grants["code"] += 1
        elif kind == "refresh_token":
            issued = self._tokens.use_refresh(str(fields.get("refresh_token", "")), now)
            if issued is None:
                return answer(route, 401, B.INVALID_REFRESH)
            pair = issued
            self._counters.grants["refresh"] += 1
        else:
            return answer(route, 400, B.NO_GRANT)
        body = {
            "access_token": pair[0],
            "expires_in": math.ceil(self._tokens.lifetime),
            "refresh_token": pair[1],
        }
        return answer(route, 200, B.dumps(body))

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        """Revoke a token's whole grant; unknown tokens are "revoked" too (RFC 7009)."""
        route = "auth.revoke"
        fields = await _read_fields(request)
        token = (fields or {}).get("token")
        if not isinstance(token, str) or not token:
            return self._counters.answer(route, 400, B.NO_REVOKE_TOKEN)
        self._tokens.revoke(token)
        return self._counters.answer(route, 200, B.EMPTY_OBJECT)
