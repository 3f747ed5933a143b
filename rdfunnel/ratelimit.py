"""The client-side rate gate: a requests-per-second cap and the account-wide 429 pause.

Both are shared by everything that uses one limiter, so a bulk run, a web handler and a retry loop
on the same client never add up to more than the cap, and one account-wide 429 holds them all.
"""

from __future__ import annotations

from asyncio import sleep
from time import monotonic
from typing import Protocol

from .errors import ValidationError

__all__ = ["LocalRateLimiter", "RateLimiter"]


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
    """

    __slots__ = ("_interval", "_next_slot", "_paused_until")

    def __init__(self, max_rate: float | None = None) -> None:
        if max_rate is not None and max_rate <= 0:
            raise ValidationError(
                f"max_rate must be a positive number per second, got {max_rate!r}"
            )
        self._interval = 1.0 / max_rate if max_rate else 0.0
        self._next_slot = 0.0
        self._paused_until = 0.0

    def __repr__(self) -> str:
        rate = f"{1 / self._interval:g}/s" if self._interval else "unlimited"
        return f"LocalRateLimiter({rate})"

    async def acquire(self) -> None:
        while True:
            now = monotonic()
            if self._paused_until > now:
                await sleep(self._paused_until - now)
                continue
            if not self._interval:
                return
            slot = max(self._next_slot, now)
            self._next_slot = slot + self._interval
            if slot > now:
                await sleep(slot - now)
                if self._paused_until > monotonic():
                    continue  # a pause began while we slept: wait it out and take a new slot
            return

    async def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, monotonic() + seconds)
