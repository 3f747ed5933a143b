"""Where the transport gets its access token, and what it does when one is refused."""

from __future__ import annotations

from typing import Protocol

import aiohttp

__all__ = ["StaticToken", "TokenSource"]


class TokenSource(Protocol):
    """The transport's view of authentication: a token to send, and a way to replace one."""

    async def access_token(self, session: aiohttp.ClientSession) -> str:
        """A token believed valid now (refreshing first if it is about to expire)."""
        ...

    async def refresh(self, session: aiohttp.ClientSession, rejected: str) -> bool:
        """The API refused ``rejected`` with a 401: get a new token if that one is still current.

        Returns True when a token other than ``rejected`` is now available (worth one replay).
        """
        ...


class StaticToken:
    """An access token the caller manages: sent as is, never refreshed."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(<masked>)"

    async def access_token(self, session: aiohttp.ClientSession) -> str:
        return self._token

    async def refresh(self, session: aiohttp.ClientSession, rejected: str) -> bool:
        return False
