"""FastAPI integration: one shared :class:`~rdfunnel.RDStation` per process, and honest HTTP errors.

A FastAPI backend should hold one client for its whole life, not one per request: the client owns
the connection pool, the rate limiter and the token manager, and only a shared token manager can
turn N concurrent requests with an expired token into one refresh. So::

    from fastapi import FastAPI
    from rdfunnel.contrib.fastapi import (
        RDStationDep, install_exception_handlers, rdstation_lifespan,
    )

    app = FastAPI(lifespan=rdstation_lifespan())  # RDStation.from_env() at startup
    install_exception_handlers(app)

    @app.get("/contacts/{contact}/stage")
    async def stage(contact: str, rd: RDStationDep) -> str | None:
        funnel = await rd.funnels.get(contact)  # errors become 404, 422, 429, 502, ...
        return funnel.lifecycle_stage

Under several worker processes (``uvicorn --workers N``, gunicorn's ``UvicornWorker``) the lifespan
runs once in each worker, after the fork, so each process gets its own client and no connection
crosses a fork. The processes share tokens through the token store: set ``RDFUNNEL_TOKEN_FILE``
(a :class:`~rdfunnel.tokens.FileTokenStore`) or pass a shared store such as Redis, and they refresh
once between them.

Needs the ``fastapi`` extra: ``pip install 'rdfunnel[fastapi]'``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, Final, TypeVar, overload

try:
    from fastapi import Depends
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import JSONResponse, Response
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rdfunnel.contrib.fastapi needs FastAPI: pip install 'rdfunnel[fastapi]'"
    ) from error

from rdfunnel import RDStation
from rdfunnel._privacy import scrub
from rdfunnel.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    RateLimitError,
    RDStationError,
    RequestTimeoutError,
    ServerError,
    TransportError,
    ValidationError,
)
from rdfunnel.tokens import TokenStoreError

__all__ = [
    "STATE_NAME",
    "RDStationDep",
    "error_response",
    "get_rdstation",
    "install_exception_handlers",
    "rdstation_lifespan",
]

logger = logging.getLogger("rdfunnel.contrib.fastapi")

#: The ``app.state`` attribute that holds the client while the app runs.
STATE_NAME: Final = "rdstation"

#: The ``Retry-After`` sent when RD asked for no particular wait (its docs-only 429 body): a
#: minute is short for a per-contact quota and long for the account's per-second one, and a
#: client that honours it will not hammer us either way.
DEFAULT_RETRY_AFTER: Final = 60

_App = TypeVar("_App", bound=Starlette)
_State = TypeVar("_State")


@overload
def rdstation_lifespan(
    client_factory: Callable[[], RDStation] | None = None,
    *,
    app_lifespan: None = None,
    **settings: Any,
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]: ...


@overload
def rdstation_lifespan(
    client_factory: Callable[[], RDStation] | None = None,
    *,
    app_lifespan: Callable[[_App], AbstractAsyncContextManager[_State]],
    **settings: Any,
) -> Callable[[_App], AbstractAsyncContextManager[_State]]: ...


def rdstation_lifespan(
    client_factory: Callable[[], RDStation] | None = None,
    *,
    app_lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
    **settings: Any,
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """A FastAPI ``lifespan`` that opens one :class:`~rdfunnel.RDStation` at startup and closes it
    at shutdown; handlers get it with :data:`RDStationDep` (or ``Depends(get_rdstation)``).

    Where the client comes from, decided at startup (so each worker process builds its own):

    - ``rdstation_lifespan()``: :meth:`RDStation.from_env` (``RDSTATION_CLIENT_ID``, ...,
      ``RDFUNNEL_TOKEN_FILE``);
    - ``rdstation_lifespan(client_id=..., client_secret=..., refresh_token=..., ...)``: explicit
      settings, any :class:`~rdfunnel.RDStation` keyword (checked now, not at startup);
    - ``rdstation_lifespan(client_factory)``: any zero-argument callable that returns a client,
      e.g. ``lambda: RDStation.from_env(max_rate=10)``.

    Bad settings fail the startup, so a misconfigured app never starts serving (from the
    environment, with a message naming the variables read and whether each is set). ``app_lifespan``
    is the app's own lifespan; it runs inside this one, so its startup may already use the client
    and its shutdown (cancelling background work, say) runs before the client closes. Whatever it
    yields (``None`` or a state mapping) is yielded on unchanged.
    """
    if client_factory is not None and settings:
        raise TypeError("pass either client_factory or RDStation settings, not both")
    if settings:
        RDStation(**settings)  # bad settings fail here, at import; the client is never used

    def make_client() -> RDStation:
        if client_factory is not None:
            client = client_factory()
            if not isinstance(client, RDStation):
                raise TypeError(f"client_factory must return an RDStation, got {client!r}")
            return client
        if settings:
            return RDStation(**settings)
        return RDStation.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        state = app.state
        if getattr(state, STATE_NAME, None) is not None:
            raise RuntimeError(
                f"app.state.{STATE_NAME} is already set: is rdstation_lifespan installed twice?"
            )
        async with make_client() as client:
            setattr(state, STATE_NAME, client)
            try:
                if app_lifespan is None:
                    yield None
                else:
                    async with app_lifespan(app) as app_state:
                        yield app_state
            finally:
                # Gone before the client closes: a late request gets "not open", not a dead client.
                delattr(state, STATE_NAME)

    return lifespan


def get_rdstation(connection: HTTPConnection) -> RDStation:
    """The app's shared client: a FastAPI dependency for HTTP and WebSocket handlers.

    Raises ``RuntimeError`` (a 500, since it is a wiring bug) when the app was not created with
    :func:`rdstation_lifespan` or its lifespan is not running.
    """
    client = getattr(connection.app.state, STATE_NAME, None)
    if not isinstance(client, RDStation):
        raise RuntimeError(
            "no RDStation client is open on this app: create it with "
            "FastAPI(lifespan=rdstation_lifespan(...)) and serve it with its lifespan on"
        )
    return client


#: ``rd: RDStationDep`` in a handler's signature gives it the app's shared client.
RDStationDep = Annotated[RDStation, Depends(get_rdstation)]


def install_exception_handlers(app: Starlette) -> None:
    """Answer every rdfunnel error raised by a handler with the HTTP status that names it.

    ======================================================  ======  ============================
    error                                                   status  ``error`` in the JSON body
    ======================================================  ======  ============================
    ``ValidationError`` (bad input, nothing sent)           422     ``invalid_input``
    ``BadRequestError`` (RD refused the input)              422     ``rejected_by_rdstation``
    ``NotFoundError``                                       404     ``not_found``
    ``RateLimitError`` (with ``Retry-After``)               429     ``rate_limited``
    refused or revoked app authorization                    503     ``rdstation_unauthorized``
    other upstream authentication failures                  502     ``rdstation_auth_failed``
    ``ForbiddenError`` (the account may not do this)        502     ``rdstation_forbidden``
    ``ServerError`` and other unexpected statuses           502     ``rdstation_error``
    ``TransportError`` (no answer)                          502     ``rdstation_unreachable``
    ``RequestTimeoutError``                                 504     ``rdstation_timeout``
    ``RedisUnavailableError`` (Redis is down)               503     ``redis_unavailable``
    other ``TokenStoreError`` (a file store, a stuck lock)  503     ``token_store_unavailable``
    any other ``RDStationError``                            500     ``internal_error``
    ======================================================  ======  ============================

    Bodies are ``{"detail": ..., "error": ...}`` (FastAPI's ``detail``, plus a stable code to
    branch on). They never carry a token, a secret, RD's raw body or its headers: upstream
    failures get a fixed message, and the full error goes to the ``rdfunnel.contrib.fastapi``
    logger instead: at WARNING without a traceback for the expected failures (every 5xx but
    500), at ERROR with one for a 500. A Redis outage answers the same whether the Redis token
    store or the Redis rate limiter meets it first.
    """
    app.add_exception_handler(RDStationError, _handle)


async def _handle(request: Request, exc: Exception) -> Response:
    # Async on purpose: Starlette would run a plain function in its thread pool.
    if not isinstance(exc, RDStationError):  # pragma: no cover - registered for these only
        raise exc
    return error_response(exc)


def error_response(exc: RDStationError) -> JSONResponse:
    """The JSON answer :func:`install_exception_handlers` gives ``exc``: for your own handlers."""
    status, body, headers = _answer(exc)
    if status >= 500:
        log = logger.error if status == 500 else logger.warning
        log(
            "answering %d for %s: %s",
            status,
            type(exc).__name__,
            scrub(str(exc)),
            exc_info=status == 500,
            extra={"event": "answered_error", "status": status, "error": type(exc).__name__},
        )
    return JSONResponse(body, status_code=status, headers=headers)


def _answer(exc: RDStationError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and headers for ``exc``; the one place that decides what is disclosed."""
    if isinstance(exc, ValidationError):
        return 422, _body("invalid_input", str(exc)), {}
    if isinstance(exc, BadRequestError):
        body = _body("rejected_by_rdstation", _said("RD Station refused the request", exc))
        if exc.details:
            body["errors"] = {field: list(items) for field, items in exc.details.items()}
        return 422, body, {}
    if isinstance(exc, NotFoundError):
        return 404, _body("not_found", _said("not found at RD Station", exc)), {}
    if isinstance(exc, RateLimitError):
        wait = exc.retry_after
        retry_after = max(1, math.ceil(wait)) if wait is not None else DEFAULT_RETRY_AFTER
        who = "this contact" if exc.scope == "contact" else "the account"
        detail = f"RD Station's rate limit for {who} was reached; retry after {retry_after} s"
        body = _body("rate_limited", detail)
        body.update(scope=exc.scope, retry_after=retry_after)
        return 429, body, {"Retry-After": str(retry_after)}
    if exc.reauthorize:
        detail = (
            "RD Station refused this service's authorization (revoked or invalid credentials); "
            "an operator must authorize the app again"
        )
        return 503, _body("rdstation_unauthorized", detail), {}
    if isinstance(exc, AuthenticationError):
        detail = "RD Station refused this service's access token"
        return 502, _body("rdstation_auth_failed", detail), {}
    if isinstance(exc, ForbiddenError):
        detail = "RD Station does not allow this account to do that"
        return 502, _body("rdstation_forbidden", detail), {}
    if isinstance(exc, APIError):  # ServerError and statuses with no better name
        kind = "failed" if isinstance(exc, ServerError) else "answered unexpectedly"
        detail = f"RD Station {kind} (HTTP {exc.status}); try again later"
        return 502, _body("rdstation_error", detail), {}
    if isinstance(exc, RequestTimeoutError):
        return 504, _body("rdstation_timeout", "RD Station did not answer in time"), {}
    if isinstance(exc, TransportError):
        return 502, _body("rdstation_unreachable", "RD Station could not be reached"), {}
    if _is_redis_outage(exc):  # before TokenStoreError: the Redis token store's errors are both
        detail = (
            "the Redis server this service shares RD Station tokens and rate limits through "
            "cannot be reached; try again later"
        )
        return 503, _body("redis_unavailable", detail), {}
    if isinstance(exc, TokenStoreError):
        detail = "the RD Station token store cannot be read or written"
        return 503, _body("token_store_unavailable", detail), {}
    return 500, _body("internal_error", "internal error talking to RD Station"), {}


def _is_redis_outage(exc: RDStationError) -> bool:
    """Whether ``exc`` is a :class:`rdfunnel.contrib.redis.RedisUnavailableError`, raised by the
    Redis token store (``RedisTokenStoreError``) and rate limiter alike.

    Looked up rather than imported, so this module does not need redis-py: until
    ``rdfunnel.contrib.redis`` is imported, no such error can exist.
    """
    redis_module = sys.modules.get("rdfunnel.contrib.redis")
    outage = getattr(redis_module, "RedisUnavailableError", None)
    return isinstance(outage, type) and isinstance(exc, outage)


def _body(code: str, detail: str) -> dict[str, Any]:
    return {"detail": detail, "error": code}


def _said(prefix: str, exc: APIError) -> str:
    """``prefix``, plus RD's own messages: safe to pass on for 4xx answers about the input."""
    return f"{prefix}: {'; '.join(exc.messages)}" if exc.messages else prefix
