"""What the fake remembers: contacts and their funnels, tokens and codes, and what it counted."""

from __future__ import annotations

import base64
import secrets
import uuid as _uuid
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal

import attrs

from ._bodies import dumps

__all__ = ["FakeContact", "Stats", "TokenBook", "contact_uuid"]

_NAMESPACE: Final = _uuid.UUID("8f4a2c56-3b1e-5d7a-9c0f-2e6b1d4a7c93")


def contact_uuid(email: str) -> str:
    """The UUID the fake gives ``email`` when none is chosen: the same on every run."""
    return str(_uuid.uuid5(_NAMESPACE, email.lower()))


@attrs.frozen
class FakeContact:
    """A contact as the fake holds it, frozen at the moment you looked."""

    email: str
    uuid: str
    lifecycle_stage: str
    opportunity: bool
    contact_owner_email: str | None
    fit: int | str
    interest: int | str


class ContactRecord:
    """The fake's mutable contact, with its funnel answer cached as bytes between changes."""

    __slots__ = (
        "body",
        "email",
        "extra",
        "fit",
        "interest",
        "opportunity",
        "owner",
        "puts",
        "quota_start",
        "quota_used",
        "stage",
        "uuid",
    )

    def __init__(
        self,
        email: str,
        uuid: str,
        *,
        stage: str,
        opportunity: bool,
        owner: str | None,
        fit: int | str,
        interest: int | str,
        extra: Mapping[str, Any],
    ) -> None:
        self.email = email
        self.uuid = uuid
        self.stage = stage
        self.opportunity = opportunity
        self.owner = owner
        self.fit = fit
        self.interest = interest
        self.extra = dict(extra)
        self.puts: list[Mapping[str, Any]] = []
        self.quota_start = float("-inf")
        self.quota_used = 0
        self.body = b""

    def render(self, missing_owner: Literal["null", "omit"]) -> None:
        """Rebuild the cached funnel body after a change."""
        payload: dict[str, Any] = {
            "lifecycle_stage": self.stage,
            "opportunity": self.opportunity,
            "contact_owner_email": self.owner,
            "fit": self.fit,
            "interest": self.interest,
        }
        if self.owner is None and missing_owner == "omit":
            del payload["contact_owner_email"]
        payload.update(self.extra)
        self.body = dumps(payload)

    def snapshot(self) -> FakeContact:
        return FakeContact(
            self.email,
            self.uuid,
            self.stage,
            self.opportunity,
            self.owner,
            self.fit,
            self.interest,
        )


@attrs.frozen
class Stats:
    """What the fake counted, frozen at the moment you looked.

    ``requests`` is keyed by ``(route, status)``; routes are ``funnels.get``, ``funnels.put``,
    ``contacts.get``, ``account_info``, ``auth.dialog``, ``auth.token``, ``auth.revoke`` and
    ``unknown``; a dropped connection counts with status 0. ``grants`` is keyed by ``code`` and
    ``refresh``, ``rate_limited`` by ``contact`` and ``account``, ``faults`` by fault kind.
    """

    requests: Mapping[tuple[str, int], int]
    grants: Mapping[str, int]
    rate_limited: Mapping[str, int]
    faults: Mapping[str, int]

    def count(self, route: str | None = None, status: int | None = None) -> int:
        """Requests answered on ``route`` (any when None) with ``status`` (any when None)."""
        return sum(
            n
            for (r, s), n in self.requests.items()
            if (route is None or r == route) and (status is None or s == status)
        )


class Counters:
    """The live counters behind :class:`Stats`: plain Counters, one increment per event."""

    __slots__ = ("faults", "grants", "rate_limited", "requests")

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.grants: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()

    def snapshot(self) -> Stats:
        return Stats(
            MappingProxyType(dict(self.requests)),
            MappingProxyType(dict(self.grants)),
            MappingProxyType(dict(self.rate_limited)),
            MappingProxyType(dict(self.faults)),
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_JWT_HEADER: Final = _b64(b'{"alg":"HS256","typ":"JWT"}')


def new_access_token() -> str:
    """An opaque token that looks like RD's JWTs, so nobody's code assumes a shorter string."""
    claims = _b64(dumps({"jti": secrets.token_hex(8), "iss": "rdfunnel-fake"}))
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
