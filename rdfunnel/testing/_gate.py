"""What stands before the fake's API, as before RD's: faults, rate limits, the bearer token.

:class:`Gate` meets them in the real stack's order; :class:`FaultInjector` and :class:`Throttle`
each keep one kind of trouble, reconfigurable while the fake runs.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from typing import Literal

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from . import _bodies as B
from ._config import Faults, Limits
from ._contacts import ContactRecord
from ._oauth import TokenBook
from ._stats import Counters

__all__ = ["ExpiredHeader", "FaultInjector", "Gate", "Throttle"]

ExpiredHeader = Literal["www-authenticate", "x-amzn-remapped-www-authenticate"] | None


def _json_headers(**extra: str) -> CIMultiDictProxy[str]:
    headers = CIMultiDict(B.JSON)
    headers.update(extra)
    return CIMultiDictProxy(headers)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class FaultInjector:
    """Draws each API request's fault from :class:`Faults`, repeatably (seeded), and meets it."""

    def __init__(self, faults: Faults, tokens: TokenBook, counters: Counters) -> None:
        self._tokens = tokens
        self._counters = counters
        self._sleepers: set[asyncio.Future[None]] = set()
        self.configure(faults)

    def configure(self, faults: Faults) -> None:
        """New faults; the random source restarts from their seed."""
        self.config = faults
        self.active = faults.active
        self._thresholds = faults.thresholds()
        self._rng = random.Random(faults.seed)  # repeatable faults, not secrets

    async def meet(self, request: web.Request, route: str) -> web.StreamResponse | bool:
        """Meet this request's fault: an answer to send, or whether the token expires early."""
        faults = self.config
        if faults.latency:
            await self.pause(faults.latency)
        draw = self._rng.random()
        kind = next((kind for bound, kind in self._thresholds if draw < bound), None)
        if kind is None:
            return False
        counters = self._counters
        if kind in B.FAULT_ANSWERS:
            counters.faults[kind] += 1
            status, headers, body = B.FAULT_ANSWERS[kind]
            return counters.answer(route, status, body, headers)
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
        # early_expiry: only a good token can expire early
        header = request.headers.get("Authorization", "")
        if self._tokens.live_access(header[7:].strip()) is not None:
            counters.faults[kind] += 1
            return True
        return False

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


class _Window:
    """A quota window that opens on its first request, as RD's do, not on the clock's hour."""

    __slots__ = ("start", "used")

    def __init__(self) -> None:
        self.start = float("-inf")
        self.used = 0

    def hit(self, now: float, length: float) -> int:
        """Count one request (opening a new window once this one is over); the count so far."""
        if now >= self.start + length:
            self.start = now
            self.used = 0
        self.used += 1
        return self.used


class Throttle:
    """The :class:`Limits`: the account's requests per second and per window, each contact's
    funnel calls per window; a request past one gets that limit's 429."""

    def __init__(self, limits: Limits, clock: Callable[[], float], counters: Counters) -> None:
        self._clock = clock
        self._counters = counters
        self.configure(limits)

    def configure(self, limits: Limits) -> None:
        """New limits start from fresh windows."""
        self.config = limits
        self._rps_second = -1
        self._rps_count = 0
        self._rps_headers = _json_headers(
            **{"ratelimit-limit-quotas": str(limits.account_rps), "retry-after-quotas": "1"}
        )
        self._account_window = _Window()
        self._contact_windows: dict[str, _Window] = {}

    def account(self, route: str) -> web.Response | None:
        """The gateway's 429 when this request is past the account's rate or quota."""
        limits = self.config
        if limits.account_rps is not None:
            second = math.floor(self._clock())
            if second != self._rps_second:
                self._rps_second = second
                self._rps_count = 0
            self._rps_count += 1
            if self._rps_count > limits.account_rps:
                self._counters.rate_limited["account"] += 1
                return self._counters.answer(route, 429, B.ACCOUNT_429, self._rps_headers)
        if limits.account_quota is not None:
            return self._account_quota(limits.account_quota, route)
        return None

    def _account_quota(self, quota: int, route: str) -> web.Response | None:
        """The account's quota per window, as the gateway answers it: hours to wait."""
        now = self._clock()
        window = self._account_window
        if window.hit(now, self.config.window) <= quota:
            return None
        self._counters.rate_limited["account"] += 1
        left = math.ceil(window.start + self.config.window - now)
        headers = _json_headers(
            **{"ratelimit-limit-quotas": str(quota), "retry-after-quotas": str(left)}
        )
        return self._counters.answer(route, 429, B.ACCOUNT_429, headers)

    def contact(self, record: ContactRecord, route: str) -> web.Response | None:
        """The per-contact quota: GET and PUT share one counter per contact per window."""
        limit = self.config.per_contact
        if limit is None:
            return None
        now = self._clock()
        length = self.config.window
        window = self._contact_windows.get(record.uuid)
        if window is None:
            window = self._contact_windows[record.uuid] = _Window()
        used = window.hit(now, length)
        if used <= limit:
            return None
        self._counters.rate_limited["contact"] += 1
        body = B.contact_429(length, record.email, limit, used, window.start + length - now)
        return self._counters.answer(route, 429, body)


class Gate:
    """Faults, the account's limits and the bearer token, in the order RD's stack meets them."""

    def __init__(
        self,
        *,
        tokens: TokenBook,
        clock: Callable[[], float],
        counters: Counters,
        faults: Faults,
        limits: Limits,
        expired_header: ExpiredHeader,
    ) -> None:
        self._tokens = tokens
        self._clock = clock
        self._counters = counters
        self.faults = FaultInjector(faults, tokens, counters)
        self.throttle = Throttle(limits, clock, counters)
        self._expired_headers = (
            _json_headers(**{expired_header: B.EXPIRED_CHALLENGE}) if expired_header else B.JSON
        )

    async def check(self, request: web.Request, route: str) -> web.StreamResponse | None:
        """The answer that stops this request before the API, or None to let it through."""
        early = False
        if self.faults.active:
            outcome = await self.faults.meet(request, route)
            if isinstance(outcome, web.StreamResponse):
                return outcome
            early = outcome
        limited = self.throttle.account(route)
        if limited is not None:
            return limited
        answer = self._counters.answer
        header = request.headers.get("Authorization")
        if not header or header[:7].lower() != "bearer " or not header[7:].strip():
            return answer(route, 401, B.MISSING_TOKEN)
        entry = self._tokens.live_access(header[7:].strip())
        if entry is None:
            return answer(route, 401, B.INVALID_TOKEN)
        if early or entry.expires_at <= self._clock():
            return answer(route, 401, B.INVALID_TOKEN, self._expired_headers)
        return None
