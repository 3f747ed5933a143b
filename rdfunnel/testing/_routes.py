"""The fake's URL map, and the API's handlers over its contacts, behind its gate.

Hot paths (a valid token, a known contact, faults off) do dictionary lookups and send cached
bytes; nothing is logged.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import Final
from urllib.parse import unquote

from aiohttp import web

from . import _bodies as B
from ._contacts import ContactBook, ContactRecord
from ._funnel import validate_update
from ._gate import Gate
from ._oauth import OAuthRoutes
from ._stats import Counters

__all__ = ["ApiRoutes", "application"]

_CONTACTS: Final = "/platform/contacts/"


#: The header each answer names its request in (RD's own is unconfirmed: the client also reads
#: the API gateway's ``x-amzn-RequestId``).
REQUEST_ID_HEADER: Final = "X-Request-Id"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def application(api: ApiRoutes, oauth: OAuthRoutes, counters: Counters) -> web.Application:
    """Every route the fake serves; anything else is RD's 404."""

    @web.middleware
    async def track(request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Count the requests in flight, and give every answer a request id, as RD does."""
        counters.started()
        try:
            response = await handler(request)
        finally:
            counters.finished()
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = str(uuid.uuid4())
        return response

    app = web.Application(middlewares=[track])
    router = app.router
    router.add_get("/auth/dialog", oauth.dialog)
    router.add_post("/auth/token", oauth.token)
    router.add_post("/auth/revoke", oauth.revoke)
    router.add_get("/marketing/account_info", api.account_info)
    router.add_route("*", _CONTACTS + "{tail:.+}", api.contacts)
    router.add_route("*", "/{tail:.*}", api.unknown)
    return app


class ApiRoutes:
    """The ``/platform/...`` and ``/marketing/...`` handlers: each request through the gate, then
    to its contact.

    ``users`` are the account's users, the only owners a PUT may set (None: any valid email).
    """

    def __init__(
        self,
        *,
        contacts: ContactBook,
        gate: Gate,
        counters: Counters,
        users: Collection[str] | None,
        account_name: str,
    ) -> None:
        self._contacts = contacts
        self._gate = gate
        self._counters = counters
        self._users = None if users is None else frozenset(u.lower() for u in users)
        self._account_body = B.dumps({"name": account_name})

    async def contacts(self, request: web.Request) -> web.StreamResponse:
        answer = self._counters.answer
        path = request.raw_path.partition("?")[0]
        parts = path[len(_CONTACTS) :].split("/")
        method = request.method
        if len(parts) == 3 and parts[1] == "funnels":
            route = "funnels.get" if method == "GET" else "funnels.put" if method == "PUT" else ""
        elif len(parts) == 1:
            route = "contacts.get" if method == "GET" else ""
        else:
            return answer("unknown", 404, B.UNKNOWN_ROUTE)
        if not route:
            return answer("unknown", 405, B.NOT_ALLOWED)
        denied = await self._gate.check(request, route)
        if denied is not None:
            return denied
        record = self._find(parts[0])
        if record is None:
            return answer(route, 404, B.NOT_FOUND)
        if route == "contacts.get":
            return answer(route, 200, B.dumps({"uuid": record.uuid, "email": record.email}))
        if parts[2] != "default":
            return answer(route, 404, B.NO_FUNNEL)
        limited = self._gate.throttle.contact(record, route)
        if limited is not None:
            return limited
        if route == "funnels.put":
            return await self._put(request, record)
        return answer(route, 200, record.body)

    def _find(self, segment: str) -> ContactRecord | None:
        """The contact a path segment names: ``email:<v>``, ``uuid:<v>`` or a bare (legacy) uuid."""
        kind, colon, value = segment.partition(":")
        if not colon:
            kind, value = "uuid", segment
        value = unquote(value)  # percent-decoding only: '+' stays '+'
        if kind == "uuid":
            return self._contacts.by_uuid.get(value.lower())
        if kind == "email":
            return self._contacts.touch(value)
        return None

    async def _put(self, request: web.Request, record: ContactRecord) -> web.Response:
        route = "funnels.put"
        answer = self._counters.answer
        if not request.headers.get("Content-Type", "").lower().startswith("application/json"):
            return answer(route, 415, B.UNSUPPORTED_MEDIA_TYPE)
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return answer(route, 400, B.BAD_JSON)
        if not isinstance(payload, dict):
            return answer(route, 400, B.NOT_AN_OBJECT)
        errors, changes = validate_update(payload, self._users)
        if errors:
            return answer(route, 400, B.dumps({"errors": errors}))
        if not changes:
            return answer(route, 400, B.EMPTY_UPDATE)
        self._contacts.apply(record, changes, payload)
        return answer(route, 200, record.body)

    async def account_info(self, request: web.Request) -> web.StreamResponse:
        denied = await self._gate.check(request, "account_info")
        return denied or self._counters.answer("account_info", 200, self._account_body)

    async def unknown(self, request: web.Request) -> web.StreamResponse:
        return self._counters.answer("unknown", 404, B.UNKNOWN_ROUTE)
