"""Shared fixtures: a virtual clock, so no test waits on a real one, and the wire mock."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any
from unittest.mock import Mock

import aiohttp
import aioresponses.core
import pytest
from aioresponses import aioresponses as Aioresponses

import rdfunnel._transport
import rdfunnel.ratelimit


class VirtualClock:
    """Stands in for ``monotonic`` and ``asyncio.sleep``: sleeping advances time instantly.

    Sleeps begun before the sleeper yields overlap, as real ones would: time moves to the latest
    wake-up, not to the sum of the sleeps.
    """

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wake = self.now + max(seconds, 0.0)
        await asyncio.sleep(0)
        self.now = max(self.now, wake)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    virtual = VirtualClock()
    monkeypatch.setattr(rdfunnel._transport, "sleep", virtual.sleep)
    monkeypatch.setattr(rdfunnel.ratelimit, "sleep", virtual.sleep)
    monkeypatch.setattr(rdfunnel.ratelimit, "monotonic", virtual.monotonic)
    return virtual


_NEEDS_STREAM_WRITER = "stream_writer" in inspect.signature(aiohttp.ClientResponse).parameters


class _ClientResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 predates aiohttp 3.14's required ``stream_writer`` (aioresponses#289)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if _NEEDS_STREAM_WRITER:
            kwargs.setdefault("stream_writer", Mock(output_size=0))
        super().__init__(*args, **kwargs)


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aioresponses]:
    """aioresponses, for exact checks of what goes on the wire."""
    monkeypatch.setattr(aioresponses.core, "ClientResponse", _ClientResponse)
    with Aioresponses() as mocked:
        yield mocked
