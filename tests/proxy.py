"""A real forward proxy on 127.0.0.1, for tests: CONNECT tunnels and plain HTTP, each counted.

``hosts`` are names only the proxy resolves (``{"rd.test": "127.0.0.1"}``): a client reaches them
through the proxy or not at all, so a request that succeeds went through it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Mapping
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["ForwardProxy"]

_HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "upgrade")
)


class ForwardProxy:
    """``tunnels``: the ``host:port`` of each CONNECT let through; ``requests``: ``METHOD URL`` of
    each plain HTTP request forwarded; ``refused``: requests answered 407."""

    def __init__(
        self, *, hosts: Mapping[str, str] | None = None, credentials: tuple[str, str] | None = None
    ) -> None:
        self.hosts = dict(hosts or {})
        self.tunnels: list[str] = []
        self.requests: list[str] = []
        self.refused = 0
        self._expected = (
            None
            if credentials is None
            else "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        )
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        line, *header_lines = head.split("\r\n")[:-2]
        method, target, _ = line.split(" ", 2)
        headers = [tuple(part.strip() for part in h.split(":", 1)) for h in header_lines]
        named = {name.lower(): value for name, value in headers}
        if self._expected is not None and named.get("proxy-authorization") != self._expected:
            self.refused += 1
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                b"Connection: close\r\n\r\n"
            )
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.hosts.get(host, host), int(port)
            )
            self.tunnels.append(target)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await self._pipe_both(reader, writer, upstream_reader, upstream_writer)
            return
        # A plain HTTP request in absolute form: forward it alone, then close both sides.
        url = urlsplit(target)
        body = await reader.readexactly(int(named.get("content-length", "0")))
        self.requests.append(f"{method} {target}")
        upstream_reader, upstream_writer = await asyncio.open_connection(
            self.hosts.get(url.hostname or "", url.hostname), url.port or 80
        )
        path = url.path + (f"?{url.query}" if url.query else "")
        kept = "".join(
            f"{name}: {value}\r\n" for name, value in headers if name.lower() not in _HOP_BY_HOP
        )
        upstream_writer.write(
            f"{method} {path} HTTP/1.1\r\n{kept}Connection: close\r\n\r\n".encode("latin-1") + body
        )
        await upstream_writer.drain()
        await self._pipe(upstream_reader, writer)
        upstream_writer.close()

    async def _pipe_both(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream_writer: asyncio.StreamWriter,
    ) -> None:
        self._writers.add(upstream_writer)
        try:
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        finally:
            self._writers.discard(upstream_writer)
            upstream_writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
