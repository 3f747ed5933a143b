"""`FakeRDStation`: the fake assembled from its parts, its lifecycle on 127.0.0.1, and the controls
a test drives it with."""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from ..models import LifecycleStage
from ._config import Faults, Limits
from ._contacts import ContactBook, FakeContact
from ._funnel import STAGES
from ._gate import ExpiredHeader, Gate
from ._oauth import OAuthRoutes, TokenBook
from ._routes import ApiRoutes, application
from ._stats import Counters, Stats

if TYPE_CHECKING:
    from rdfunnel import RDStation

__all__ = ["FakeRDStation"]

#: Connections waiting to be accepted: room for a burst of a few hundred new ones at once
#: (aiohttp's default, 128, makes the rest of such a burst retry its SYN a second later).
_BACKLOG = 1024


class FakeRDStation:
    """A faithful RD Station Marketing server on aiohttp.web, for tests, demos and benchmarks.

    Serves OAuth (``/auth/dialog``, ``/auth/token``, ``/auth/revoke``), the funnel endpoints,
    ``GET /platform/contacts/...`` and ``GET /marketing/account_info``, with RD's exact error
    bodies, optional rate limits and seeded faults. Use ``async with FakeRDStation() as fake:``.

    ``clock`` (default :func:`time.monotonic`) drives token and code expiry and the rate-limit
    windows, so tests move time instead of sleeping. ``ssl`` (a server-side
    :class:`ssl.SSLContext` holding its certificate) serves it over TLS, at an ``https://`` URL.
    Every answer carries an ``X-Request-Id``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str | None = None,
        client_secret: str | None = None,
        refresh_token: str | None = None,
        token_lifetime: float = 86400.0,
        rotate_refresh_tokens: bool = False,
        auto_create: bool = False,
        contacts: int = 0,
        users: Collection[str] | None = None,
        account_name: str = "rdfunnel fake account",
        faults: Faults | None = None,
        limits: Limits | None = None,
        missing_owner: Literal["null", "omit"] = "null",
        expired_header: ExpiredHeader = "www-authenticate",
        clock: Callable[[], float] = time.monotonic,
        ssl: ssl.SSLContext | None = None,
    ) -> None:
        if token_lifetime <= 0:
            raise ValueError(f"token_lifetime must be > 0, got {token_lifetime!r}")
        self._host = host
        self._port = port
        self._ssl = ssl
        self._clock = clock
        self._counters = Counters()
        self._tokens = TokenBook(token_lifetime, rotate_refresh_tokens)
        self._contacts = ContactBook(auto_create=auto_create, missing_owner=missing_owner)
        self._gate = Gate(
            tokens=self._tokens,
            clock=clock,
            counters=self._counters,
            faults=faults or Faults(),
            limits=limits or Limits(),
            expired_header=expired_header,
        )
        self._oauth = OAuthRoutes(
            client_id=client_id or "rdfunnel-fake-" + secrets.token_hex(6),
            client_secret=client_secret or secrets.token_urlsafe(24),
            tokens=self._tokens,
            clock=clock,
            counters=self._counters,
        )
        self._api = ApiRoutes(
            contacts=self._contacts,
            gate=self._gate,
            counters=self._counters,
            users=users,
            account_name=account_name,
        )
        self._refresh_token = self._tokens.new_grant(refresh_token).refresh_token
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        if contacts:
            self._contacts.seed(contacts)

    def __repr__(self) -> str:
        return f"<FakeRDStation url={self._url or 'not started'}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0: any free port; see :attr:`url`)."""
        if self._runner is not None:
            raise RuntimeError("this FakeRDStation is already running")
        runner = web.AppRunner(
            application(self._api, self._oauth, self._counters),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=0.5,
        )
        await runner.setup()
        try:
            await web.TCPSite(
                runner, self._host, self._port, ssl_context=self._ssl, backlog=_BACKLOG
            ).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        scheme = "http" if self._ssl is None else "https"
        self._url = (
            f"{scheme}://{host}:{port}" if ":" not in host else f"{scheme}://[{host}]:{port}"
        )

    async def close(self) -> None:
        """Stop listening; answers held back by slow faults are released first."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._gate.faults.wake_all()
        await runner.cleanup()
        self._url = None

    async def __aenter__(self) -> FakeRDStation:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- what a client needs -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321`` (``https://`` with ``ssl``), once
        started."""
        if self._url is None:
            raise RuntimeError("the FakeRDStation is not running: use `async with` or start()")
        return self._url

    @property
    def client_id(self) -> str:
        return self._oauth.client_id

    @property
    def client_secret(self) -> str:
        return self._oauth.client_secret

    @property
    def refresh_token(self) -> str:
        """The refresh token the fake started with (single-use when refresh tokens rotate)."""
        return self._refresh_token

    def client(self, **kwargs: Any) -> RDStation:
        """An :class:`~rdfunnel.RDStation` wired to this fake; ``kwargs`` go to its constructor."""
        from rdfunnel import RDStation

        options: dict[str, Any] = {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "base_url": self.url,
        }
        if "access_token" not in kwargs and "token" not in kwargs:
            options["refresh_token"] = self.refresh_token
        options.update(kwargs)
        return RDStation(**options)

    def issue_refresh_token(self) -> str:
        """A new valid refresh token, as if a user authorized the app again."""
        return self._tokens.new_grant().refresh_token

    def issue_access_token(self, lifetime: float | None = None) -> str:
        """A new valid access token (of its own grant), for clients given a bare token."""
        return self._tokens.issue_access(self._tokens.new_grant(), self._clock(), lifetime)

    # -- contacts ----------------------------------------------------------------------------

    def add_contact(
        self,
        email: str,
        uuid: str | None = None,
        *,
        lifecycle_stage: LifecycleStage | str = LifecycleStage.LEAD,
        opportunity: bool = False,
        contact_owner_email: str | None = None,
        fit: int | str = 0,
        interest: int | str = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> FakeContact:
        """Add a contact (its UUID derived from the email unless given) and return it.

        ``extra`` fields are sent in every funnel answer, to prove clients ignore what they
        do not know; ``fit``/``interest`` may be letter grades for the same reason.
        """
        stage = str(getattr(lifecycle_stage, "value", lifecycle_stage))
        if stage not in STAGES:
            raise ValueError(f"lifecycle_stage {stage!r} is not one of {sorted(STAGES)}")
        record = self._contacts.add(
            email,
            uuid,
            stage=stage,
            opportunity=bool(opportunity),
            owner=contact_owner_email,
            fit=fit,
            interest=interest,
            extra=extra or {},
        )
        return record.snapshot()

    @property
    def contacts(self) -> Mapping[str, FakeContact]:
        """Every contact's funnel now, by email as added (a read-only snapshot)."""
        return MappingProxyType(
            {record.email: record.snapshot() for record in self._contacts.by_uuid.values()}
        )

    def contact(self, key: str) -> FakeContact:
        """One contact's funnel now, by email (any case) or UUID; KeyError when unknown."""
        contacts = self._contacts
        record = contacts.by_email.get(key.lower()) or contacts.by_uuid.get(key.lower())
        if record is None:
            raise KeyError(key)
        return record.snapshot()

    @property
    def puts(self) -> Mapping[str, tuple[Mapping[str, Any], ...]]:
        """The PUT bodies applied to each contact, in order, by email (contacts with any only)."""
        return MappingProxyType(
            {
                record.email: tuple(record.puts)
                for record in self._contacts.by_uuid.values()
                if record.puts
            }
        )

    # -- counters and controls ---------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        """Requests by route and status, token grants, 429s and faults (a snapshot)."""
        return self._counters.snapshot()

    def reset_stats(self) -> None:
        """Zero every counter (e.g. after a warm-up)."""
        self._counters.clear()

    def expire_tokens(self) -> None:
        """Make every access token issued so far expired (refresh tokens stay valid)."""
        self._tokens.expire_all()

    def revoke_all(self) -> None:
        """Revoke every token and code, the initial refresh token included."""
        self._tokens.revoke_all()

    @property
    def faults(self) -> Faults:
        return self._gate.faults.config

    @faults.setter
    def faults(self, faults: Faults) -> None:
        """Change faults, even while running; the random source restarts from the new seed."""
        self._gate.faults.configure(faults)

    @property
    def limits(self) -> Limits:
        return self._gate.throttle.config

    @limits.setter
    def limits(self, limits: Limits) -> None:
        """Change rate limits, even while running; every window starts afresh."""
        self._gate.throttle.configure(limits)
