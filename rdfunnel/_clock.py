"""The one clock rdfunnel reads and sleeps on, passed in (``RDStation(clock=...)``), never patched.

Wall time dates tokens; monotonic time spaces requests and times quotas; ``sleep`` is every wait
rdfunnel makes (backoffs, rate slots, pauses). A test or a simulation passes a virtual one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    """Where rdfunnel reads the time, and how it waits."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch: when tokens were issued and expire."""
        ...

    def monotonic(self) -> float:
        """Seconds that never run backwards: rate slots, pauses, spent quotas."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock: :func:`time.time`, :func:`time.monotonic` and :func:`asyncio.sleep`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SystemClock()"

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
