"""What the fake counted: the live counters, and the frozen :class:`Stats` a test reads."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

import attrs
from aiohttp import web
from multidict import CIMultiDictProxy

from ._bodies import JSON

__all__ = ["Counters", "Stats"]


@attrs.frozen
class Stats:
    """What the fake counted, frozen at the moment you looked.

    ``requests`` is keyed by ``(route, status)``; routes are ``funnels.get``, ``funnels.put``,
    ``contacts.get``, ``account_info``, ``auth.dialog``, ``auth.token``, ``auth.revoke`` and
    ``unknown``; a dropped connection counts with status 0. ``grants`` is keyed by ``code`` and
    ``refresh``, ``rate_limited`` by ``contact`` and ``account``, ``faults`` by fault kind.
    ``max_in_flight`` is the most requests the fake was handling at once (any route, faults and
    latency included).
    """

    requests: Mapping[tuple[str, int], int]
    grants: Mapping[str, int]
    rate_limited: Mapping[str, int]
    faults: Mapping[str, int]
    max_in_flight: int = 0

    def count(self, route: str | None = None, status: int | None = None) -> int:
        """Requests answered on ``route`` (any when None) with ``status`` (any when None)."""
        return sum(
            n
            for (r, s), n in self.requests.items()
            if (route is None or r == route) and (status is None or s == status)
        )


class Counters:
    """The live counters behind :class:`Stats`: plain Counters, one increment per event."""

    __slots__ = ("faults", "grants", "in_flight", "max_in_flight", "rate_limited", "requests")

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.grants: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    def started(self) -> None:
        """One more request is being handled."""
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def finished(self) -> None:
        self.in_flight -= 1

    def answer(
        self, route: str, status: int, body: bytes, headers: CIMultiDictProxy[str] = JSON
    ) -> web.Response:
        """The response for ``route``, counted: answers are made here so none goes uncounted."""
        self.requests[(route, status)] += 1
        return web.Response(body=body, status=status, headers=headers)

    def clear(self) -> None:
        for counter in (self.requests, self.grants, self.rate_limited, self.faults):
            counter.clear()
        self.max_in_flight = self.in_flight  # those still in flight count from now on

    def snapshot(self) -> Stats:
        return Stats(
            MappingProxyType(dict(self.requests)),
            MappingProxyType(dict(self.grants)),
            MappingProxyType(dict(self.rate_limited)),
            MappingProxyType(dict(self.faults)),
            self.max_in_flight,
        )
