"""The client-side rate gate: a requests-per-second cap and the account-wide 429 pause.

Both are shared by everything that uses one limiter, so a bulk run, a web handler and a retry loop
on the same client never add up to more than the cap, and one account-wide 429 holds them all.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final, Protocol

from ._clock import SYSTEM_CLOCK, Clock
from .errors import ValidationError

__all__ = ["LocalRateLimiter", "RateLimiter"]

#: After an account-wide 429, run at this share of the rate that ran into it.
LEARNED_SHARE: Final = 0.9
#: A learned rate is forgotten after this many seconds without an account-wide 429.
FORGET_AFTER: Final = 60.0
#: Besides spacing requests, never let more than a second's worth go within this window: a loop
#: that wakes sleepers late must not bunch them into one of the server's one-second windows. The
#: 10 ms over a second absorb the network's own jitter. Applied up to 10,000 requests a second.
GUARD_WINDOW: Final = 1.01
GUARD_MAX_RATE: Final = 10_000
#: Fewer requests than this since the limit last reset say little about the quota: others on the
#: account used it up. Then the limiter only pauses.
MIN_SAMPLE: Final = 20


class RateLimiter(Protocol):
    """What the transport asks before every request; implement it to share limits across hosts."""

    async def acquire(self) -> None:
        """Return when one more request may be sent: after any pause, within the rate cap."""
        ...

    async def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (the account hit its limit). Pauses never shorten."""
        ...


class LocalRateLimiter:
    """An in-process limiter: evenly spaced slots at ``max_rate`` per second, plus the pause.

    Each caller reserves the next free slot and sleeps until it, so waiting callers are served in
    arrival order and no burst exceeds the cap. ``max_rate=None`` only applies pauses.

    An account-wide 429 this client ran into (after at least 20 requests) also teaches it the
    account's pace: until a minute passes without another one, requests are spaced at 90% of the
    rate that hit the limit (requests since the limit last reset, over the longer of that time and
    the wait asked for), so the client settles just under the quota instead of bursting into it and
    pausing again and again.
    """

    __slots__ = (
        "_active_since",
        "_admitted",
        "_clock",
        "_interval",
        "_last_limited",
        "_learned",
        "_next_slot",
        "_paused_until",
        "_recent",
    )

    def __init__(self, max_rate: float | None = None, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if max_rate is not None and (
            isinstance(max_rate, bool)
            or not isinstance(max_rate, int | float)
            or not math.isfinite(max_rate)
            or max_rate <= 0
        ):
            raise ValidationError(
                f"max_rate must be a positive number per second, got {max_rate!r}"
            )
        self._clock = clock
        self._interval = 1.0 / max_rate if max_rate else 0.0
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._learned = 0.0  # seconds between requests learned from a 429; 0: none
        self._last_limited = 0.0
        self._admitted = 0
        self._active_since: float | None = None
        self._recent: deque[float] = deque()  # when recent requests went, for the guard

    def __repr__(self) -> str:
        rate = f"{1 / self._interval:g}/s" if self._interval else "unlimited"
        return f"LocalRateLimiter({rate})"

    async def acquire(self) -> None:
        monotonic, sleep = self._clock.monotonic, self._clock.sleep
        while True:
            now = monotonic()
            if self._paused_until > now:
                await sleep(self._paused_until - now)
                continue
            if self._active_since is None:
                self._active_since = now
            interval = self._interval
            if self._learned:
                if now - self._last_limited > FORGET_AFTER:
                    self._learned = 0.0
                else:
                    interval = max(interval, self._learned)
            if interval:
                slot = max(self._next_slot, now)
                self._next_slot = slot + interval
                if slot > now:
                    await sleep(slot - now)
                    if self._paused_until > monotonic():
                        continue  # a pause began while we slept: wait it out, take a new slot
                while True:  # a late wake-up waits until the guard window has room
                    crowded = self._crowded(interval)
                    if crowded <= 0:
                        break
                    await sleep(crowded)
                if self._paused_until > monotonic():
                    continue
            self._admitted += 1  # counted when it goes, not while it waits for its slot
            return

    def _crowded(self, interval: float) -> float:
        """Seconds until one more request fits the guard window (0: it fits now, and is noted)."""
        if interval < 1 / GUARD_MAX_RATE:
            return 0.0
        now = self._clock.monotonic()
        recent = self._recent
        expired = now - GUARD_WINDOW + 1e-9  # the nanosecond absorbs float rounding
        while recent and recent[0] <= expired:
            recent.popleft()
        excess = len(recent) - max(round(1 / interval), 1) + 1
        if excess > 0:
            return max(recent[excess - 1] - expired, 1e-9)
        recent.append(now)
        return 0.0

    async def pause(self, seconds: float) -> None:
        now = self._clock.monotonic()
        if self._paused_until <= now:  # the first 429 of this episode: learn the pace
            # What ran into the limit since it last reset, over the quota's window as best seen:
            # the time we ran, or the wait it asks for (a burst that hit it at once).
            active = now - (self._active_since if self._active_since is not None else now)
            window = max(active, seconds)
            if window > 0 and self._admitted >= MIN_SAMPLE:
                self._learned = max(self._learned, window / (self._admitted * LEARNED_SHARE))
            self._last_limited = now
            self._admitted = 0
            self._active_since = now + seconds
        self._paused_until = max(self._paused_until, now + seconds)
