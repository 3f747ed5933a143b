"""The fake's wire protocol: aiohttp.web handlers over the state in :mod:`._state`.

Hot paths (a valid token, a known contact, faults off) do dictionary lookups and send cached
bytes; nothing is logged.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Callable, Collection
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..models import check_email
from . import _bodies as B
from ._config import Faults, Limits
from ._funnel import validate_update
from ._state import ContactRecord, Counters, TokenBook, contact_uuid

__all__ = ["Backend", "ExpiredHeader"]

ExpiredHeader = Literal["www-authenticate", "x-amzn-remapped-www-authenticate"] | None
_CONTACTS: Final = "/platform/contacts/"


#: A contact created on first touch, or seeded: RD's defaults for a new lead.
_NEW_CONTACT: Final[dict[str, Any]] = {
    "stage": "Lead",
    "opportunity": False,
    "owner": None,
    "fit": 0,
    "interest": 0,
    "extra": {},
}


def _headers(**extra: str) -> CIMultiDictProxy[str]:
    headers = CIMultiDict(B.JSON)
    headers.update(extra)
    return CIMultiDictProxy(headers)


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


class Backend:
    """Everything the fake knows and every handler that reads or changes it."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        token_lifetime: float,
        rotate_refresh_tokens: bool,
        auto_create: bool,
        users: Collection[str] | None,
        account_name: str,
        missing_owner: Literal["null", "omit"],
        expired_header: ExpiredHeader,
        clock: Callable[[], float],
        faults: Faults,
        limits: Limits,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.clock = clock
        self.auto_create = auto_create
        self.users = None if users is None else frozenset(u.lower() for u in users)
        self.missing_owner = missing_owner
        self.tokens = TokenBook(token_lifetime, rotate_refresh_tokens)
        self.counters = Counters()
        self.by_email: dict[str, ContactRecord] = {}
        self.by_uuid: dict[str, ContactRecord] = {}
        self._sleepers: set[asyncio.Future[None]] = set()
        self._account_body = B.dumps({"name": account_name})
        self._expired_headers = (
            _headers(**{expired_header: B.EXPIRED_CHALLENGE}) if expired_header else B.JSON
        )
        self.set_faults(faults)
        self.set_limits(limits)

    # -- configuration -----------------------------------------------------------------------

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._faults_on = faults.active
        self._thresholds = faults.thresholds()
        self._rng = random.Random(faults.seed)  # repeatable faults, not secrets

    def set_limits(self, limits: Limits) -> None:
        """New limits start from fresh windows."""
        self.limits = limits
        self._per_contact = limits.per_contact
        self._window = limits.window
        self._account_rps = limits.account_rps
        self._rps_second = -1
        self._rps_count = 0
        self._rps_headers = _headers(
            **{"ratelimit-limit-quotas": str(limits.account_rps), "retry-after-quotas": "1"}
        )
        self._quota_start = float("-inf")
        self._quota_used = 0
        for record in self.by_uuid.values():
            record.quota_start = float("-inf")
            record.quota_used = 0

    def add_contact(self, email: str, uuid: str | None, **funnel: Any) -> ContactRecord:
        check_email(email, "contact email")
        key = email.lower()
        uuid = (uuid or contact_uuid(email)).lower()
        if key in self.by_email or uuid in self.by_uuid:
            raise ValueError(f"the fake already has a contact {email!r} or uuid {uuid!r}")
        record = ContactRecord(email, uuid, **funnel)
        record.render(self.missing_owner)
        self.by_email[key] = record
        self.by_uuid[uuid] = record
        return record

    def seed(self, count: int) -> None:
        """``contact-0@example.com`` ... at stage Lead; fast, as benchmarks seed many."""
        template = self.add_contact("contact-0@example.com", None, **_NEW_CONTACT)
        for index in range(1, count):
            email = f"contact-{index}@example.com"
            uuid = contact_uuid(email)
            if email in self.by_email or uuid in self.by_uuid:
                raise ValueError(f"the fake already has a contact {email!r}")
            record = ContactRecord(email, uuid, **_NEW_CONTACT)
            record.body = template.body
            self.by_email[email] = self.by_uuid[uuid] = record

    def app(self) -> web.Application:
        app = web.Application()
        router = app.router
        router.add_get("/auth/dialog", self.dialog)
        router.add_post("/auth/token", self.token)
        router.add_post("/auth/revoke", self.revoke)
        router.add_get("/marketing/account_info", self.account_info)
        router.add_route("*", _CONTACTS + "{tail:.+}", self.contacts)
        router.add_route("*", "/{tail:.*}", self.unknown)
        return app

    # -- helpers -----------------------------------------------------------------------------

    def _answer(
        self,
        route: str,
        status: int,
        body: bytes,
        headers: CIMultiDictProxy[str] = B.JSON,
    ) -> web.Response:
        self.counters.requests[(route, status)] += 1
        return web.Response(body=body, status=status, headers=headers)

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the fake closes (:meth:`wake_all`), so shutdown never
        waits on a fault. A bare timer and future: this runs for every request with latency."""
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _settle, wake)
        self._sleepers.add(wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._sleepers.discard(wake)

    def wake_all(self) -> None:
        """End every pause now (the fake is closing)."""
        for wake in self._sleepers:
            _settle(wake)

    async def _gate(self, request: web.Request, route: str) -> web.StreamResponse | None:
        """Faults, the account-wide cap and the bearer token, as the real stack meets them."""
        early = False
        if self._faults_on:
            outcome = await self._fault(request, route)
            if isinstance(outcome, web.StreamResponse):
                return outcome
            early = outcome
        if self._account_rps is not None:
            now = self.clock()
            second = math.floor(now)
            if second != self._rps_second:
                self._rps_second = second
                self._rps_count = 0
            self._rps_count += 1
            if self._rps_count > self._account_rps:
                self.counters.rate_limited["account"] += 1
                return self._answer(route, 429, B.ACCOUNT_429, self._rps_headers)
        if self.limits.account_quota is not None:
            spent = self._account_quota(route)
            if spent is not None:
                return spent
        header = request.headers.get("Authorization")
        if not header or header[:7].lower() != "bearer " or not header[7:].strip():
            return self._answer(route, 401, B.MISSING_TOKEN)
        entry = self.tokens.access.get(header[7:].strip())
        if entry is None or not entry.grant.alive:
            return self._answer(route, 401, B.INVALID_TOKEN)
        if early or entry.expires_at <= self.clock():
            return self._answer(route, 401, B.INVALID_TOKEN, self._expired_headers)
        return None

    async def _fault(self, request: web.Request, route: str) -> web.StreamResponse | bool:
        """Meet this request's fault: an answer to send, or whether the token expires early."""
        faults = self.faults
        if faults.latency:
            await self.pause(faults.latency)
        draw = self._rng.random()
        kind = next((kind for bound, kind in self._thresholds if draw < bound), None)
        if kind is None:
            return False
        counters = self.counters
        if kind in B.FAULT_ANSWERS:
            counters.faults[kind] += 1
            status, headers, body = B.FAULT_ANSWERS[kind]
            return self._answer(route, status, body, headers)
        if kind == "drop":
            counters.faults[kind] += 1
            counters.requests[(route, 0)] += 1
            if request.transport is not None:
                request.transport.close()
            return web.Response()
        if kind == "slow":
            counters.faults[kind] += 1
            await self.pause(faults.slow_seconds)
            return False
        header = request.headers.get("Authorization", "")
        entry = self.tokens.access.get(header[7:].strip())
        if entry is not None and entry.grant.alive:  # only a good token can expire early
            counters.faults[kind] += 1
            return True
        return False

    def _account_quota(self, route: str) -> web.Response | None:
        """The account's quota per window, as the gateway answers it: hours to wait."""
        now = self.clock()
        if now >= self._quota_start + self._window:
            self._quota_start = now
            self._quota_used = 0
        self._quota_used += 1
        quota = self.limits.account_quota
        assert quota is not None
        if self._quota_used <= quota:
            return None
        self.counters.rate_limited["account"] += 1
        left = math.ceil(self._quota_start + self._window - now)
        headers = _headers(
            **{"ratelimit-limit-quotas": str(quota), "retry-after-quotas": str(left)}
        )
        return self._answer(route, 429, B.ACCOUNT_429, headers)

    def _quota(self, record: ContactRecord, route: str) -> web.Response | None:
        """The per-contact quota: GET and PUT share one counter per contact per window."""
        limit = self._per_contact
        if limit is None:
            return None
        now = self.clock()
        if now >= record.quota_start + self._window:
            record.quota_start = now
            record.quota_used = 0
        record.quota_used += 1
        if record.quota_used <= limit:
            return None
        self.counters.rate_limited["contact"] += 1
        remaining = record.quota_start + self._window - now
        body = B.contact_429(self._window, record.email, limit, record.quota_used, remaining)
        return self._answer(route, 429, body)

    def _find(self, segment: str) -> ContactRecord | None:
        """The contact a path segment names: ``email:<v>``, ``uuid:<v>`` or a bare (legacy) uuid."""
        kind, colon, value = segment.partition(":")
        if not colon:
            kind, value = "uuid", segment
        value = unquote(value)  # percent-decoding only: '+' stays '+'
        if kind == "uuid":
            return self.by_uuid.get(value.lower())
        if kind != "email":
            return None
        record = self.by_email.get(value.lower())
        if record is None and self.auto_create:
            try:
                record = self.add_contact(value, None, **_NEW_CONTACT)
            except ValueError:
                return None
        return record

    # -- API routes --------------------------------------------------------------------------

    async def contacts(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        parts = path[len(_CONTACTS) :].split("/")
        method = request.method
        if len(parts) == 3 and parts[1] == "funnels":
            route = "funnels.get" if method == "GET" else "funnels.put" if method == "PUT" else ""
        elif len(parts) == 1:
            route = "contacts.get" if method == "GET" else ""
        else:
            return self._answer("unknown", 404, B.UNKNOWN_ROUTE)
        if not route:
            return self._answer("unknown", 405, B.NOT_ALLOWED)
        denied = await self._gate(request, route)
        if denied is not None:
            return denied
        record = self._find(parts[0])
        if record is None:
            return self._answer(route, 404, B.NOT_FOUND)
        if route == "contacts.get":
            body = B.dumps({"uuid": record.uuid, "email": record.email})
            return self._answer(route, 200, body)
        if parts[2] != "default":
            return self._answer(route, 404, B.NO_FUNNEL)
        limited = self._quota(record, route)
        if limited is not None:
            return limited
        if route == "funnels.put":
            return await self._put(request, record)
        return self._answer(route, 200, record.body)

    async def _put(self, request: web.Request, record: ContactRecord) -> web.Response:
        route = "funnels.put"
        if not request.headers.get("Content-Type", "").lower().startswith("application/json"):
            return self._answer(route, 415, B.UNSUPPORTED_MEDIA_TYPE)
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return self._answer(route, 400, B.BAD_JSON)
        if not isinstance(payload, dict):
            return self._answer(route, 400, B.NOT_AN_OBJECT)
        errors, changes = validate_update(payload, self.users)
        if errors:
            return self._answer(route, 400, B.dumps({"errors": errors}))
        if not changes:
            return self._answer(route, 400, B.EMPTY_UPDATE)
        if "lifecycle_stage" in changes:
            record.stage = changes["lifecycle_stage"]
        if "opportunity" in changes:
            record.opportunity = changes["opportunity"]
        if "contact_owner_email" in changes:
            record.owner = changes["contact_owner_email"]
        record.puts.append(MappingProxyType(payload))
        record.render(self.missing_owner)
        return self._answer(route, 200, record.body)

    async def account_info(self, request: web.Request) -> web.StreamResponse:
        denied = await self._gate(request, "account_info")
        return denied or self._answer("account_info", 200, self._account_body)

    async def unknown(self, request: web.Request) -> web.StreamResponse:
        return self._answer("unknown", 404, B.UNKNOWN_ROUTE)

    # -- OAuth -------------------------------------------------------------------------------

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
            return self._answer(route, 401, B.ACCESS_DENIED)
        code = self.tokens.new_code(self.client_id, redirect, self.clock())
        params = {"code": code}
        if "state" in query:
            params["state"] = query["state"]
        location = str(target.update_query(params))
        self.counters.requests[(route, 302)] += 1
        return web.Response(status=302, headers={"Location": location})

    async def token(self, request: web.Request) -> web.StreamResponse:
        route = "auth.token"
        fields = await _read_fields(request)
        if fields is None:
            return self._answer(route, 400, B.BAD_JSON)
        if (
            fields.get("client_id") != self.client_id
            or fields.get("client_secret") != self.client_secret
        ):
            return self._answer(route, 401, B.ACCESS_DENIED)
        kind = request.query.get("token_by") or fields.get("token_by") or fields.get("grant_type")
        if kind is None:
            kind = "code" if "code" in fields else "refresh_token"
        now = self.clock()
        if kind in ("code", "authorization_code"):
            code = self.tokens.codes.pop(str(fields.get("code", "")), None)
            if code is None or code.expires_at <= now:
                return self._answer(route, 401, B.EXPIRED_CODE)
            redirect = fields.get("redirect_uri") or fields.get("redirect_url")
            if code.client_id != self.client_id or (redirect and redirect != code.redirect_uri):
                return self._answer(route, 401, B.ACCESS_DENIED)
            grant = self.tokens.new_grant()
            pair = (self.tokens.issue_access(grant, now), grant.refresh_token)
            self.counters.grants["code"] += 1
        elif kind == "refresh_token":
            issued = self.tokens.use_refresh(str(fields.get("refresh_token", "")), now)
            if issued is None:
                return self._answer(route, 401, B.INVALID_REFRESH)
            pair = issued
            self.counters.grants["refresh"] += 1
        else:
            return self._answer(route, 400, B.NO_GRANT)
        body = {
            "access_token": pair[0],
            "expires_in": math.ceil(self.tokens.lifetime),
            "refresh_token": pair[1],
        }
        return self._answer(route, 200, B.dumps(body))

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        """Revoke a token's whole grant; unknown tokens are "revoked" too (RFC 7009)."""
        route = "auth.revoke"
        fields = await _read_fields(request)
        token = (fields or {}).get("token")
        if not isinstance(token, str) or not token:
            return self._answer(route, 400, B.NO_REVOKE_TOKEN)
        self.tokens.revoke(token)
        return self._answer(route, 200, B.EMPTY_OBJECT)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
