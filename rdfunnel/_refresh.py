"""Token refresh: where the pipeline gets its access token, and what happens when one is refused.

:class:`StaticToken` is a token the caller manages; :class:`TokenManager` keeps OAuth tokens fresh,
asking the app's :class:`~rdfunnel.oauth.TokenEndpoint` (the same pipeline as every request).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Literal
from urllib.parse import urlsplit

from ._clock import SYSTEM_CLOCK, Clock
from ._observe import Observer
from ._pipeline import TokenSource
from .errors import AuthenticationError, RDStationError, TokenRefusedError, ValidationError
from .events import TokenRefreshed
from .oauth import TokenEndpoint
from .tokens import Token, TokenAppMismatchError, TokenStore, TokenStoreError

__all__ = ["OnTokenRefresh", "StaticToken", "TokenManager", "TokenSource"]

logger = logging.getLogger("rdfunnel")

#: Seconds before a failed background refresh is tried again (the token in hand still works).
_RETRY_BACKGROUND_REFRESH = 10.0
#: New tokens refused in a row, none ever accepted, that make an authorization problem.
REFUSED_IN_A_ROW = 3


class StaticToken:
    """An access token the caller manages: sent as is, never refreshed."""

    __slots__ = ("_token",)

    #: A static token runs no ``on_token_refresh`` hook.
    hook_error: Exception | None = None

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(<masked>)"

    async def access_token(self) -> str:
        return self._token

    async def refresh(self, rejected: str) -> bool:
        return False

    def accepted(self, token: str) -> None:
        return None

    async def revoke(self) -> None:
        raise ValidationError("revoking needs the app's client_id and client_secret")

    async def drain(self) -> None:
        return None


_Outcome = Literal["ok", "refused", "failed"]

#: Called with every new token once it is saved; may be a coroutine function.
OnTokenRefresh = Callable[[Token], Awaitable[None] | None]


class TokenManager:
    """OAuth tokens that look after themselves, behind :class:`TokenSource`.

    Refreshes ahead of expiry (by ``leeway`` seconds, or half the token's life if that is shorter)
    in the background, while calls go on with the token in hand; a token that has expired, or that
    the API refuses, makes calls wait for the new one. One refresh runs at a time per manager,
    under the store's lock, after re-reading the store: another process may already have
    refreshed. Every new token is saved before it is used. The store's token wins over
    ``token``/``refresh_token``, which only seed an empty store.

    A token the API accepted and later refuses has expired, however early: it is replaced. New
    tokens refused before the API accepted any of them (three in a row) are an authorization
    problem: :class:`TokenRefusedError`, with no further token request.
    """

    __slots__ = (
        "_accepted",
        "_access",
        "_clock",
        "_dead_refresh_token",
        "_endpoint",
        "_expires_at",
        "_inflight",
        "_last_refused",
        "_leeway",
        "_observer",
        "_on_token_refresh",
        "_refresh_at",
        "_refused",
        "_seed",
        "_seed_refresh_token",
        "_store",
        "_token",
        "_waiters",
        "hook_error",
    )

    def __init__(
        self,
        *,
        store: TokenStore,
        endpoint: TokenEndpoint,
        clock: Clock = SYSTEM_CLOCK,
        observer: Observer | None = None,
        on_token_refresh: OnTokenRefresh | None = None,
        leeway: float = 300.0,
        token: Token | None = None,
        refresh_token: str | None = None,
    ) -> None:
        self._store = store
        self._endpoint = endpoint
        self._clock = clock
        self._observer = observer or Observer()
        self._waiters = 0  # calls waiting for the renewal in flight
        self._on_token_refresh = on_token_refresh
        self._leeway = leeway
        self._seed = token
        self._seed_refresh_token = refresh_token or (token.refresh_token if token else None)
        self._token: Token | None = None
        # The hot path reads only these two: the access token and when to stop trusting it.
        self._access: str | None = None
        self._refresh_at = -math.inf
        self._expires_at = -math.inf
        self._inflight: tuple[asyncio.Task[None], asyncio.Event] | None = None
        self._dead_refresh_token: tuple[str, AuthenticationError] | None = None
        self._accepted: str | None = None  # the last current token the API answered
        self._last_refused: str | None = None
        self._refused = 0  # tokens refused in a row since the API last accepted one
        #: What ``on_token_refresh`` raised the last time it was called (None: it succeeded).
        self.hook_error: Exception | None = None

    def __repr__(self) -> str:
        state = "no token yet" if self._token is None else "holding a token"
        return f"TokenManager({self._store!r}, client_id={self._endpoint.app.client_id!r}, {state})"

    @property
    def token(self) -> Token | None:
        """The token in use (None before first use)."""
        return self._token

    async def access_token(self) -> str:
        access = self._access
        if access is not None:
            now = self._clock.time()
            if now < self._refresh_at:
                return access
            if now < self._expires_at:  # due but still good: renew behind the callers' backs
                if self._inflight is None:
                    self._start_renewal(None, background=True)
                return access
        await self._renew(None)
        assert self._access is not None
        return self._access

    async def refresh(self, rejected: str) -> bool:
        if (
            self._access is not None
            and self._access != rejected
            and self._clock.time() < self._refresh_at
        ):
            return True  # already replaced: the refused token was an old one
        if rejected != self._accepted and rejected != self._last_refused:
            self._last_refused = rejected  # counted once, however many calls it failed
            self._refused += 1
        if self._refused >= REFUSED_IN_A_ROW and rejected == self._last_refused:
            raise TokenRefusedError(
                401,
                messages=(
                    f"RD Station refused {self._refused} new access tokens in a row and accepted "
                    "none: the app's authorization does not work (revoked, or another account); "
                    "authorize the app again",
                ),
            )
        await self._renew(rejected)
        return self._access is not None and self._access != rejected

    def accepted(self, token: str) -> None:
        if token == self._access:
            self._accepted = token
            self._refused = 0

    async def revoke(self) -> None:
        """Revoke the stored refresh token (or, lacking one, the access token) at RD.

        RD then refuses both; the next use of this manager fails with a clear error.
        """
        async with self._store.lock():
            token = self._checked(await self._store.load()) or self._token or self._seed
        if token is None:
            return
        if token.refresh_token is not None:
            await self._endpoint.revoke(token.refresh_token, "refresh_token")
        else:
            await self._endpoint.revoke(token.access_token, "access_token")
        logger.info("token revoked", extra={"event": "token_revoked"})

    async def _renew(self, rejected: str | None) -> None:
        """Join the renewal in flight, or start one.

        The renewal is a task no caller awaits, so a cancelled caller never cancels it (nor loses
        a token the server has already rotated); its event wakes every caller in one step.
        """
        task, finished = self._inflight or self._start_renewal(rejected)
        self._waiters += 1
        await finished.wait()
        if task.cancelled():  # the loop shutting down, say: not this caller's cancellation
            raise RDStationError("the token refresh was cancelled before it finished")
        task.result()  # the renewal's error, raised in every caller

    async def drain(self) -> None:
        inflight = self._inflight
        if inflight is not None and inflight[0] is not asyncio.current_task():
            await asyncio.wait([inflight[0]])

    def _start_renewal(
        self, rejected: str | None, *, background: bool = False
    ) -> tuple[asyncio.Task[None], asyncio.Event]:
        finished = asyncio.Event()
        self._waiters = 0
        task = asyncio.create_task(self._renew_locked(rejected))
        # A done callback, not a ``finally``: it runs even for a task cancelled before it started.
        task.add_done_callback(functools.partial(self._renewal_done, finished, background))
        self._inflight = (task, finished)
        return self._inflight

    def _renewal_done(
        self, finished: asyncio.Event, background: bool, task: asyncio.Task[None]
    ) -> None:
        self._inflight = None
        finished.set()  # callers wake to a finished task and read its outcome
        error = None if task.cancelled() else task.exception()  # retrieved, so never "lost"
        if error is None or not background:
            return  # callers have the error
        now = self._clock.time()
        if isinstance(error, AuthenticationError):
            self._refresh_at = self._expires_at  # asking again cannot help: it surfaces at expiry
        elif self._refresh_at <= now:  # the token in hand still works: try again a little later
            self._refresh_at = min(now + _RETRY_BACKGROUND_REFRESH, self._expires_at)
        logger.warning(
            "background token refresh failed: %s: %s",
            type(error).__name__,
            error,
            extra={"event": "token_refresh_failed", "error": type(error).__name__},
        )

    async def _renew_locked(self, rejected: str | None) -> None:
        async with self._store.lock():
            stored = self._checked(await self._store.load())
            current = stored or self._token or self._seed
            if current is not None and current.access_token != rejected:
                previous = self._access
                if not self._adopt(current):
                    if stored is None:  # seed an empty store
                        await self._store.save(self._stamped(current))
                    if previous is not None and previous != current.access_token:
                        logger.debug(
                            "using the access token found in the store",
                            extra={"event": "token_from_store"},
                        )
                    return
            refresh_token = (current and current.refresh_token) or self._seed_refresh_token
            if refresh_token is None:
                if current is None:
                    raise TokenStoreError(
                        f"{self._store!r} holds no token and there is no refresh token: "
                        "authorize the app (rdfunnel.oauth) first"
                    )
                self._adopt(current, until_refused=True)  # nothing to refresh it with
                return
            token = await self._request(refresh_token)
            await self._store.save(token)
            self._adopt(token)
        logger.info(
            "access token refreshed, expires at %s",
            _when(token),
            extra={"event": "token_refreshed", "expires_at": _when(token)},
        )
        if self._on_token_refresh is not None:
            await self._call_hook(self._on_token_refresh, token)

    async def _call_hook(self, hook: OnTokenRefresh, token: Token) -> None:
        """Run ``on_token_refresh``; its failure is the hook's, never the calls' waiting on it."""
        try:
            outcome = hook(token)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception as error:
            self.hook_error = error
            logger.error(
                "on_token_refresh raised %s; the new token is saved and in use",
                type(error).__name__,
                exc_info=True,
                extra={"event": "hook_failed", "hook": "on_token_refresh"},
            )
        else:
            self.hook_error = None

    def _checked(self, stored: Token | None) -> Token | None:
        """``stored``, unless it was issued to another app: then a clear error, never a 401.

        Another app is another client id, or a token endpoint on another host (another OAuth
        server: RD's newer one, or a fake); the same server through a proxy or port is the same.
        """
        app = self._endpoint.app
        if stored is None or (
            stored.client_id in (None, app.client_id)
            and (stored.token_url is None or _host(stored.token_url) == _host(app.token_url))
        ):
            return stored
        raise TokenAppMismatchError(
            f"{self._store!r} holds a token issued to another app (client id "
            f"{stored.client_id!r}, token endpoint {stored.token_url}), not to this one (client id "
            f"{app.client_id!r}, token endpoint {app.token_url}): give each app its own token "
            "store (token_store=, or RDFUNNEL_TOKEN_FILE for the CLI), or delete that one and "
            "authorize again"
        )

    def _stamped(self, token: Token) -> Token:
        app = self._endpoint.app
        if token.client_id is None:
            return token.for_app(app.client_id, app.token_url)
        return token

    def _adopt(self, token: Token, *, until_refused: bool = False) -> bool:
        """Use ``token``; True when it is already due for a refresh (it is kept all the same).

        The leeway is computed once per token, from its life when first seen, so a token seen
        again keeps its deadline instead of creeping towards expiry.
        """
        now = self._clock.time()
        if until_refused or token.expires_at is None:
            refresh_at = math.inf
        elif token.access_token == self._access:
            refresh_at = self._refresh_at
        else:
            expires = token.expires_at.timestamp()
            refresh_at = expires - min(self._leeway, max(expires - now, 0.0) / 2)
        self._token = token
        self._access = token.access_token
        self._refresh_at = refresh_at
        self._expires_at = math.inf if token.expires_at is None else token.expires_at.timestamp()
        return now >= refresh_at

    async def _request(self, refresh_token: str) -> Token:
        """One token, the endpoint retrying server errors and network failures as for any call."""
        dead = self._dead_refresh_token
        if dead is not None and dead[0] == refresh_token:
            raise copy.copy(dead[1])  # refused before: asking again cannot help
        started = self._clock.monotonic()
        try:
            token = await self._endpoint.refresh(refresh_token)
        except AuthenticationError as error:
            self._dead_refresh_token = (refresh_token, error)
            self._refreshed("refused", started, error)
            logger.error(
                "token refresh refused: %s",
                error,
                extra={"event": "token_refresh_refused", "error": type(error).__name__},
            )
            raise
        except BaseException as error:
            self._refreshed("failed", started, error)
            raise
        self._refreshed("ok", started, None)
        return token

    def _refreshed(
        self,
        outcome: Literal["ok", "refused", "failed"],
        started: float,
        error: BaseException | None,
    ) -> None:
        if self._observer.wants(TokenRefreshed):
            event = TokenRefreshed(
                outcome=outcome,
                duration=self._clock.monotonic() - started,
                waiters=self._waiters,
                error=None if error is None else type(error).__name__,
            )
            self._observer.emit(event)


def _host(url: str) -> str | None:
    return urlsplit(url).hostname


def _when(token: Token) -> str:
    return token.expires_at.isoformat() if token.expires_at else "an unknown time"
