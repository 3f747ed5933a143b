"""Shared fixtures: a virtual clock, so no test waits on a real one, the wire mock, a test CA
and a forward proxy on 127.0.0.1."""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from unittest.mock import Mock

import aiohttp
import aioresponses.core
import pytest
import trustme
from aioresponses import aioresponses as Aioresponses

from .proxy import ForwardProxy

#: Proxy variables a test must not inherit from the machine running it (either case is read).
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")


class VirtualClock:
    """A :class:`rdfunnel.Clock` (pass it as ``clock=``) whose sleeps advance time instantly.

    ``now`` is its monotonic time; its wall time moves with it, from the real time at creation.

    Sleepers wake one at a time in the order of their wake-up times, each moving the clock to its
    own, and each running before the next is woken: sleeps that overlap in real life overlap
    here, and time never runs backwards.
    """

    def __init__(self) -> None:
        self.now = 1_000.0
        self._wall_offset = time.time() - self.now
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._stepping = False

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self._wall_offset + self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), next(self._order), wake))
        if not self._stepping:
            self._stepping = True
            loop.call_soon(self._step)
        await wake

    def _step(self) -> None:
        """Wake the earliest sleeper; the next step queues behind it, so it runs first."""
        while self._sleepers:
            when, _, wake = heapq.heappop(self._sleepers)
            if not wake.done():  # a cancelled sleeper's turn passes to the next
                self.now = max(self.now, when)
                wake.set_result(None)
                break
        if self._sleepers:
            asyncio.get_running_loop().call_soon(self._step)
        else:
            self._stepping = False


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


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


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A test certificate authority."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_ssl(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate from :func:`ca` for ``127.0.0.1`` and ``rd.test``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "rd.test").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts :func:`ca`, and only it."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    """A forward proxy on 127.0.0.1 that alone resolves ``rd.test`` (to 127.0.0.1)."""
    async with ForwardProxy(hosts={"rd.test": "127.0.0.1"}) as running:
        yield running


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable from the machine running the tests."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch
