"""``RDStation``, the client, and its ``funnels`` resource."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp
from yarl import URL

from . import _credentials
from ._clock import SYSTEM_CLOCK, Clock
from ._network import DEFAULT_CONNECTION_LIMIT, SSLSetting, network_settings
from ._observe import Hook, Observer
from ._options import call_options, check_optional_str, check_seconds
from ._pipeline import USER_AGENT, Pipeline
from ._privacy import route_of
from ._refresh import OnTokenRefresh, StaticToken, TokenManager
from ._serde import ClearOwnerAs, dumps
from ._transport import Answer, Request, Transport
from ._urls import DEFAULT_BASE_URL, check_url
from .errors import ValidationError
from .funnels import Funnels, funnel_path
from .models import Contact
from .oauth import OAuthApp, TokenEndpoint, TokenStyle
from .ratelimit import LocalRateLimiter, RateLimiter
from .retry import RetryPolicy
from .tokens import FileTokenStore, MemoryTokenStore, Token, TokenStore

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_CONNECTION_LIMIT",
    "USER_AGENT",
    "Funnels",
    "RDStation",
    "funnel_path",
]

T = TypeVar("T")


#: What :meth:`RDStation.from_env` reads: (argument, environment variable).
_ENV_SETTINGS = (
    ("client_id", "RDSTATION_CLIENT_ID"),
    ("client_secret", "RDSTATION_CLIENT_SECRET"),
    ("refresh_token", "RDSTATION_REFRESH_TOKEN"),
    ("base_url", "RDSTATION_BASE_URL"),
)


def _env_report(overrides: Mapping[str, object]) -> str:
    """Which variables :meth:`RDStation.from_env` read and whether each was set: names only, as
    the values are secrets."""
    names = [name for _, name in _ENV_SETTINGS] + ["RDFUNNEL_TOKEN_FILE"]
    states = []
    for name in names:
        value = os.environ.get(name)
        state = "set" if value else "not set" if value is None else "empty, so not used"
        states.append(f"{name} ({state})")
    report = f"RDStation.from_env() read {', '.join(states)}"
    if overrides:
        given = ", ".join(sorted(overrides))
        report += f"; keyword arguments given, which take precedence: {given}"
    return report


class RDStation:
    """An RD Station Marketing client: one per application, shared by every task.

    Use it as ``async with RDStation(...) as rd:`` or call :meth:`close` when done. The aiohttp
    session is created on first use, inside the running event loop, with ``proxy=``,
    ``trust_env=``, ``ssl=`` and ``connection_limit=``; pass ``session=`` to use your own instead
    (rdfunnel never closes it).
    """

    def __init__(
        self,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        refresh_token: str | None = None,
        access_token: str | None = None,
        token: Token | None = None,
        token_store: TokenStore | None = None,
        on_token_refresh: OnTokenRefresh | None = None,
        base_url: str = DEFAULT_BASE_URL,
        token_url: str | None = None,
        token_style: TokenStyle = "json",
        refresh_leeway: float = 300.0,
        session: aiohttp.ClientSession | None = None,
        proxy: str | None = None,
        trust_env: bool | None = None,
        ssl: SSLSetting = None,
        connection_limit: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = 30.0,
        max_rate: float | None = None,
        rate_limiter: RateLimiter | None = None,
        clear_owner_as: ClearOwnerAs = "string",
        clock: Clock = SYSTEM_CLOCK,
        hooks: Iterable[Hook] = (),
        log_contacts: bool = False,
    ) -> None:
        check_optional_str("token_url", token_url)
        _check_type("session", session, aiohttp.ClientSession)
        _check_type("retry", retry, RetryPolicy)
        if on_token_refresh is not None and not callable(on_token_refresh):
            raise ValidationError(f"on_token_refresh must be callable, got {on_token_refresh!r}")
        if rate_limiter is not None and not callable(getattr(rate_limiter, "acquire", None)):
            raise ValidationError(f"rate_limiter must be a RateLimiter, got {rate_limiter!r}")
        if not callable(getattr(clock, "sleep", None)):
            raise ValidationError(f"clock must be a Clock, got {clock!r}")
        hooks = _checked_hooks(hooks)
        if timeout is not None:
            timeout = check_seconds("timeout", timeout, zero=False)
        refresh_leeway = check_seconds("refresh_leeway", refresh_leeway)
        if not isinstance(base_url, str):
            raise ValidationError(f"base_url must be a str, got {base_url!r}")
        base_url = check_url(base_url, "base_url")
        network = network_settings(
            proxy=proxy,
            trust_env=trust_env,
            ssl=ssl,
            connection_limit=connection_limit,
            session=session,
            urls=(base_url, *([token_url] if token_url else [])),
        )
        if token_style not in ("json", "form"):
            raise ValidationError(f"token_style must be 'json' or 'form', got {token_style!r}")
        if clear_owner_as not in ("string", "null"):
            raise ValidationError(
                f"clear_owner_as must be 'string' or 'null', got {clear_owner_as!r}"
            )
        if rate_limiter is not None and max_rate is not None:
            raise ValidationError("pass either max_rate or rate_limiter, not both")
        credentials = _credentials.resolve(
            client_id=client_id,
            client_secret=client_secret,
            refresh_token=refresh_token,
            access_token=access_token,
            token=token,
            token_store=token_store,
        )
        self._base_url = base_url.rstrip("/")
        self._transport = Transport(timeout=timeout, session=session, network=network)
        self._pipeline = Pipeline(
            self._transport,
            retry=retry or RetryPolicy(),
            limiter=rate_limiter or LocalRateLimiter(max_rate, clock=clock),
            clock=clock,
            observer=Observer(hooks, log_contacts=log_contacts),
        )
        self._tokens = _token_source(
            credentials,
            self._pipeline,
            base_url=base_url,
            token_url=token_url,
            token_style=token_style,
            timeout=timeout,
            on_token_refresh=on_token_refresh,
            refresh_leeway=refresh_leeway,
        )
        self.funnels = Funnels(self, clear_owner_as)

    @classmethod
    def from_env(cls, **overrides: Any) -> RDStation:
        """A client configured from the environment; keyword arguments take precedence.

        Reads ``RDSTATION_CLIENT_ID``, ``RDSTATION_CLIENT_SECRET``, ``RDSTATION_REFRESH_TOKEN``,
        ``RDSTATION_BASE_URL`` and ``RDFUNNEL_TOKEN_FILE`` (a :class:`FileTokenStore`); an empty
        variable counts as unset. Settings that do not add up raise :class:`ValidationError`
        naming those variables and whether each is set (never their values).
        """
        settings: dict[str, Any] = {}
        for key, name in _ENV_SETTINGS:
            if os.environ.get(name):
                settings[key] = os.environ[name]
        if os.environ.get("RDFUNNEL_TOKEN_FILE"):
            settings["token_store"] = FileTokenStore(os.environ["RDFUNNEL_TOKEN_FILE"])
        settings.update(overrides)
        try:
            return cls(**settings)
        except ValidationError as error:
            raise ValidationError(f"{str(error).rstrip('.')}. {_env_report(overrides)}") from None

    def __repr__(self) -> str:
        return f"RDStation(base_url={self._base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the client's own session. Further calls raise a clear error.

        A token refresh in flight finishes first, so that a rotated refresh token is not lost.
        """
        try:
            await self._tokens.drain()
        finally:
            await self._transport.close()

    @property
    def on_token_refresh_error(self) -> Exception | None:
        """What ``on_token_refresh`` raised when last called, or None (it is logged too).

        A failing hook never fails a call: the new token is saved and used all the same.
        """
        return self._tokens.hook_error

    async def revoke(self) -> None:
        """Revoke this app's authorization at RD: the access and refresh tokens stop working."""
        await self._tokens.revoke()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's deadline, kept by the pipeline
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Call any other RD Station endpoint with the same auth, retries, limits and errors.

        ``path`` starts with ``/`` and is relative to ``base_url``; returns the decoded JSON body.
        ``timeout`` and ``headers`` are this call's own (see :meth:`Funnels.get`).
        """
        if not isinstance(method, str) or not method.isalpha():
            raise ValidationError(f"method must be an HTTP method such as 'GET', got {method!r}")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValidationError(f"path must be a str starting with '/', got {path!r}")
        if params is not None and not isinstance(params, Mapping):
            raise ValidationError(f"params must be a mapping, got {params!r}")
        deadline, extra = call_options(timeout, headers)
        payload, _ = await self._send(
            method.upper(),
            path,
            Answer.json,
            operation="request",
            route=route_of(path),
            json=json,
            params=params,
            encoded=False,
            deadline=deadline,
            headers=extra,
        )
        return payload

    async def account_info(self) -> dict[str, Any]:
        """The account's details: a cheap way to check that the credentials work."""
        payload = await self.request("GET", "/marketing/account_info")
        return payload if isinstance(payload, dict) else {}

    async def _send(
        self,
        method: str,
        path: str,
        read: Callable[[Answer], T],
        *,
        operation: str,
        route: str,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        encoded: bool = True,
        contact: Contact | None = None,
        bulk_run: int | None = None,
        resend_limiter: RateLimiter | None = None,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[T, int]:
        """One API request through the pipeline: what ``read`` makes of the answer, and how
        often it was sent.

        ``path`` is taken as already percent-encoded unless ``encoded`` is False; ``deadline``
        and ``headers`` are the call's own (checked by :func:`call_options`).
        """
        request = Request(
            method,
            URL(self._base_url + path, encoded=encoded),
            operation=operation,
            route=route,
            data=None if json is None else dumps(json),
            params=params,
            headers=headers,
            contact=contact,
            bulk_run=bulk_run,
            deadline=deadline,
        )
        return await self._pipeline.send(
            request, read, auth=self._tokens, resend_limiter=resend_limiter
        )


def _token_source(
    credentials: _credentials.Credentials,
    pipeline: Pipeline,
    *,
    base_url: str,
    token_url: str | None,
    token_style: TokenStyle,
    timeout: float | None,
    on_token_refresh: OnTokenRefresh | None,
    refresh_leeway: float,
) -> TokenManager | StaticToken:
    """Where the client's bearer tokens come from; the app's token requests share ``pipeline``."""
    if isinstance(credentials, _credentials.StaticCredentials):
        return StaticToken(credentials.access_token)
    app = OAuthApp.for_base_url(
        credentials.client_id,
        credentials.client_secret,
        base_url,
        token_url=token_url,
        style=token_style,
        timeout=timeout,
    )
    return TokenManager(
        store=credentials.token_store or MemoryTokenStore(),
        endpoint=TokenEndpoint(app, pipeline),
        clock=pipeline.clock,
        observer=pipeline.observer,
        on_token_refresh=on_token_refresh,
        leeway=refresh_leeway,
        token=credentials.token,
        refresh_token=credentials.refresh_token,
    )


def _checked_hooks(hooks: object) -> tuple[Hook, ...]:
    if isinstance(hooks, str | bytes) or not isinstance(hooks, Iterable):
        raise ValidationError(f"hooks must be a list of callables, got {hooks!r}")
    checked = tuple(hooks)
    for hook in checked:
        if not callable(hook):
            raise ValidationError(f"each hook must be callable, got {hook!r}")
    return checked


def _check_type(name: str, value: object, kind: type) -> None:
    if value is not None and not isinstance(value, kind):
        raise ValidationError(f"{name} must be a {kind.__name__}, got {value!r}")
