"""Tokens and where they live: the ``Token`` value, the ``TokenStore`` protocol and two stores.

The store is the source of truth: a token is saved before it is used, and a refresh happens under
the store's lock, so processes sharing one store refresh once between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import filelock

from .errors import RDStationError, ValidationError

__all__ = [
    "FileTokenStore",
    "MemoryTokenStore",
    "Token",
    "TokenAppMismatchError",
    "TokenStore",
    "TokenStoreError",
]


_STALE_AFTER = 60.0  # seconds after which a token file's temporary is a crash's leftover
_LOCK_SLICE = 0.5  # seconds a lock-waiting thread blocks before checking whether it may give up


class TokenStoreError(RDStationError):
    """The token store cannot be read or written: a corrupt or unreadable file, a full disk."""

    terminal = True


class TokenAppMismatchError(TokenStoreError):
    """The store holds a token that another app (client id or token endpoint) was given."""


#: The longest life a token endpoint's ``expires_in`` is taken to give (a larger one is clamped,
#: so that it never overflows a datetime).
LONGEST_LIFETIME = 366 * 86400.0


def _mask(value: str | None) -> str:
    return "None" if value is None else "<masked>"


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ValidationError(f"Token.expires_at must be a datetime or None, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError("Token.expires_at must be timezone-aware (UTC), got a naive datetime")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValidationError(f"Token.expires_at {value.isoformat()} is out of range") from None


def _secret(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    optional = attribute.name != "access_token"
    if (value is None and optional) or (isinstance(value, str) and value):
        return
    kind = "None or " if optional else ""
    # The type only: a wrong value may still be a secret.
    raise ValidationError(
        f"Token.{attribute.name} must be {kind}a non-empty str, got {type(value).__name__}"
    )


def _optional_str(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"Token.{attribute.name} must be None or a str, got {value!r}")


@attrs.frozen(kw_only=True)
class Token:
    """An access token, the refresh token that renews it, and when it expires (aware UTC).

    ``expires_at=None`` means unknown: the token is used until the API refuses it. ``repr`` never
    shows either token. ``client_id`` and ``token_url`` name the app the token was issued to (None:
    unknown), so a store never hands one app's token to another; they take no part in equality.
    """

    access_token: str = attrs.field(repr=_mask, validator=_secret)
    refresh_token: str | None = attrs.field(default=None, repr=_mask, validator=_secret)
    expires_at: datetime | None = attrs.field(default=None, converter=_utc)
    client_id: str | None = attrs.field(default=None, eq=False, validator=_optional_str)
    token_url: str | None = attrs.field(default=None, eq=False, validator=_optional_str)

    @classmethod
    def from_response(cls, payload: Mapping[str, Any], *, now: datetime | None = None) -> Token:
        """Build a token from a token endpoint's JSON answer.

        Reads ``expires_in`` (seconds from ``now``, clamped to ``[0, LONGEST_LIFETIME]``) or else
        ``expires_at`` (POSIX seconds). Raises ``ValueError`` (naming no secret) when the answer
        holds no access token.
        """
        access = payload.get("access_token")
        if not isinstance(access, str) or not access:
            raise ValueError("the token response holds no access_token")
        refresh = payload.get("refresh_token")
        start = now if now is not None else datetime.now(UTC)
        expires_at: datetime | None = None
        expires_in = _number(payload.get("expires_in"))
        if expires_in is not None:
            expires_at = (start + timedelta(seconds=_life(expires_in))).replace(microsecond=0)
        else:
            epoch = _number(payload.get("expires_at"))
            if epoch is not None:
                life = _life(epoch - start.timestamp())
                expires_at = start + timedelta(seconds=life)
        return cls(
            access_token=access,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_at=expires_at,
        )

    def expires_in(self, now: datetime | None = None) -> float | None:
        """Seconds until expiry (negative once expired), or None when the expiry is unknown."""
        if self.expires_at is None:
            return None
        return (self.expires_at - (now if now is not None else datetime.now(UTC))).total_seconds()

    def is_expiring(self, leeway: float = 0.0, now: datetime | None = None) -> bool:
        """True when the token expires within ``leeway`` seconds; never for an unknown expiry."""
        remaining = self.expires_in(now)
        return remaining is not None and remaining <= leeway

    def to_dict(self) -> dict[str, Any]:
        """The JSON object a store keeps: both tokens, ``expires_at`` (ISO 8601, UTC), the app."""
        expires = self.expires_at.isoformat().replace("+00:00", "Z") if self.expires_at else None
        data: dict[str, Any] = {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": expires,
        }
        if self.client_id is not None:
            data["client_id"] = self.client_id
        if self.token_url is not None:
            data["token_url"] = self.token_url
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Token:
        """The inverse of :meth:`to_dict`; raises ``ValueError`` (naming no secret) on bad data."""
        access = data.get("access_token")
        refresh = data.get("refresh_token")
        expires = data.get("expires_at")
        if not isinstance(access, str) or not access:
            raise ValueError("access_token is missing or not a string")
        if refresh is not None and not isinstance(refresh, str):
            raise ValueError("refresh_token is not a string")
        if expires is not None and not isinstance(expires, str):
            raise ValueError("expires_at is not an ISO 8601 string")
        try:
            when = datetime.fromisoformat(expires) if expires else None
        except ValueError:
            raise ValueError(f"expires_at {expires!r} is not an ISO 8601 time") from None
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        app = {key: data.get(key) for key in ("client_id", "token_url")}
        if any(value is not None and not isinstance(value, str) for value in app.values()):
            raise ValueError("client_id or token_url is not a string")
        try:
            return cls(access_token=access, refresh_token=refresh or None, expires_at=when, **app)
        except ValidationError as error:  # expires_at out of range, say
            raise ValueError(str(error).removeprefix("Token.")) from None

    def for_app(self, client_id: str, token_url: str) -> Token:
        """This token, marked as issued to the app ``client_id`` at ``token_url``."""
        return attrs.evolve(self, client_id=client_id, token_url=token_url)


def _life(seconds: float) -> float:
    return min(max(seconds, 0.0), LONGEST_LIFETIME)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(min(max(value, -1e300), 1e300))  # a huge int would overflow float()
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return None if math.isnan(number) else number
    return None


@runtime_checkable
class TokenStore(Protocol):
    """Where tokens live between runs and between processes.

    ``lock()`` is held across a whole refresh (load, token request, save); it must exclude every
    other holder that shares the store, in this process and, for shared stores, in others.
    """

    async def load(self) -> Token | None:
        """The stored token, or None when there is none yet."""
        ...

    async def save(self, token: Token) -> None:
        """Replace the stored token; done before the token is used."""
        ...

    def lock(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Exclusive access for one refresh."""
        ...


class MemoryTokenStore:
    """Keeps the token in this process only: the default when no store is given."""

    __slots__ = ("_lock", "_token")

    def __init__(self, token: Token | None = None) -> None:
        self._token = token
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"MemoryTokenStore({'empty' if self._token is None else 'holding a token'})"

    async def load(self) -> Token | None:
        return self._token

    async def save(self, token: Token) -> None:
        self._token = token

    def lock(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._lock


class FileTokenStore:
    """A JSON token file shared by every process that names it.

    Written atomically (a temporary file in the same directory, then ``os.replace``) with mode 0600.
    ``lock()`` holds a cross-process lock on ``<path>.lock`` (and an asyncio lock for this
    process's coroutines), so processes sharing the file refresh once between them.
    """

    __slots__ = ("_file_lock", "_lock", "path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()
        self._file_lock = filelock.FileLock(
            f"{os.fspath(self.path)}.lock", mode=0o600, thread_local=False
        )

    def __repr__(self) -> str:
        return f"FileTokenStore({os.fspath(self.path)!r})"

    async def load(self) -> Token | None:
        return await asyncio.to_thread(self._read)

    async def save(self, token: Token) -> None:
        await asyncio.to_thread(self._write, token)

    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        async with self._lock:
            abandoned = threading.Event()
            acquiring = asyncio.ensure_future(asyncio.to_thread(self._acquire, abandoned))
            try:
                await asyncio.shield(acquiring)
            except asyncio.CancelledError:
                # The thread may still get the lock after we are cancelled: release it then.
                abandoned.set()
                acquiring.add_done_callback(self._release_if_acquired)
                raise
            try:
                yield
            finally:
                self._file_lock.release()

    def _acquire(self, abandoned: threading.Event) -> bool:
        # Waits in slices: filelock refuses an endless wait on a path another instance in this
        # process holds, and a cancelled caller's thread must be able to give up.
        while not abandoned.is_set():
            try:
                self._file_lock.acquire(timeout=_LOCK_SLICE)
            except filelock.Timeout:
                continue
            except OSError as error:
                where = os.fspath(self.path)
                raise TokenStoreError(
                    f"cannot lock token file {where!r}: {_reason(error)}"
                ) from None
            return True
        return False

    def _release_if_acquired(self, future: asyncio.Future[bool]) -> None:
        if not future.cancelled() and future.exception() is None and future.result():
            self._file_lock.release()

    def _read(self) -> Token | None:
        where = os.fspath(self.path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            raise TokenStoreError(f"cannot read token file {where!r}: {_reason(error)}") from None
        return _decode_token(text, f"token file {where!r}")

    def _write(self, token: Token) -> None:
        where = os.fspath(self.path)
        data = json.dumps(token.to_dict(), indent=2).encode()
        tmp: str | None = None
        try:
            # A first login may name a folder that does not exist yet (~/.config/rdfunnel).
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # mkstemp creates the file with mode 0600 before anything is written to it.
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
            )
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            tmp = None
            self._remove_stale_temporaries()
        except OSError as error:
            raise TokenStoreError(f"cannot write token file {where!r}: {_reason(error)}") from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _remove_stale_temporaries(self) -> None:
        """Remove what a process killed mid-write left behind (each holds a whole token).

        Only files older than a minute: a younger one may be another process's write under way.
        """
        cutoff = time.time() - _STALE_AFTER
        for leftover in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__


def _json_reason(error: ValueError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    return type(error).__name__


def _decode_token(raw: str | bytes, subject: str) -> Token:
    """The token a store keeps as JSON; a corrupt one is a TokenStoreError naming ``subject``.

    One function for every store, so none chains the JSONDecodeError, which carries the whole
    document, secrets included.
    """
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise TokenStoreError(
            f"{subject} is corrupt (not JSON: {_json_reason(error)}); fix or delete it, then "
            "authorize again if needed"
        ) from None
    if not isinstance(data, dict):
        raise TokenStoreError(f"{subject} is corrupt: expected a JSON object")
    try:
        return Token.from_dict(data)
    except ValueError as error:
        raise TokenStoreError(f"{subject} is corrupt: {error}") from None
