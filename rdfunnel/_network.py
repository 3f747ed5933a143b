"""Proxy, TLS and pool settings for the sessions rdfunnel opens itself, checked once.

``RDStation``, ``rdfunnel.oauth.exchange_code`` and the CLI take the same four settings; the
transport (``_transport.py``) turns them into an aiohttp session. A caller's own ``session=``
carries its own settings, so passing any of these with it is a :class:`ValidationError`.
"""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

import attrs

from ._urls import is_loopback
from .errors import ValidationError

__all__ = [
    "DEFAULT_CONNECTION_LIMIT",
    "Network",
    "SSLSetting",
    "environment_proxy",
    "masked_url",
    "network_settings",
]

#: Connections the session rdfunnel opens keeps at most, by default: room for a bulk run of 256
#: workers (aiohttp's own default is 100). Waiting for one never counts against a timeout.
DEFAULT_CONNECTION_LIMIT: Final = 256

#: What ``ssl=`` takes: a context that says which CAs to trust, or False (loopback hosts only).
SSLSetting = _ssl.SSLContext | bool | None


@attrs.frozen
class Network:
    """How the session rdfunnel opens reaches RD Station."""

    #: Every request goes through this proxy (None: none, or the environment's with trust_env).
    proxy: str | None = None
    #: Read ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` (once per host; never ``~/.netrc``).
    trust_env: bool = False
    #: aiohttp's ``ssl=``: True (the system's CAs), an SSLContext, or False (no checks).
    ssl: _ssl.SSLContext | bool = True
    #: Connections open at once, at most.
    connection_limit: int = DEFAULT_CONNECTION_LIMIT


def network_settings(
    *,
    proxy: object = None,
    trust_env: object = None,
    ssl: object = None,
    connection_limit: object = None,
    session: object = None,
    urls: Iterable[str] = (),
) -> Network:
    """The checked settings; ``urls`` are where requests go (``ssl=False`` needs them loopback)."""
    given = {
        "proxy": proxy,
        "trust_env": trust_env,
        "ssl": ssl,
        "connection_limit": connection_limit,
    }
    named = [f"{name}=" for name, value in given.items() if value is not None]
    if session is not None and named:
        raise ValidationError(
            f"{', '.join(named)} set up the session rdfunnel opens, so they cannot go with "
            "session=: configure your own session instead (its connector's ssl= and limit=, "
            "its trust_env= and proxy=), or leave session= out"
        )
    return Network(
        proxy=None if proxy is None else _checked_proxy(proxy),
        trust_env=_checked_trust_env(trust_env),
        ssl=_checked_ssl(ssl, urls),
        connection_limit=_checked_limit(connection_limit),
    )


def _checked_proxy(proxy: object) -> str:
    if not isinstance(proxy, str):
        # The type only: a proxy URL may hold a password.
        raise ValidationError(
            f"proxy must be a URL such as 'http://proxy.example:3128', got {type(proxy).__name__}"
        )
    try:
        parts = urlsplit(proxy)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(
            f"proxy must be an http:// or https:// URL with a host, such as "
            f"'http://proxy.example:3128', got {masked_url(proxy)!r}"
        )
    return proxy


def environment_proxy(variable: str, value: str) -> str:
    """The proxy an environment variable names, ``http://`` added when it names no scheme (as
    curl reads ``HTTPS_PROXY=proxy:3128``); a ValidationError naming the variable otherwise."""
    proxy = value if "://" in value else f"http://{value}"
    try:
        return _checked_proxy(proxy)
    except ValidationError:
        raise ValidationError(
            f"{variable} must name an http:// or https:// proxy, got {masked_url(value)!r}"
        ) from None


def _checked_trust_env(trust_env: object) -> bool:
    if trust_env is None:
        return False
    if not isinstance(trust_env, bool):
        raise ValidationError(f"trust_env must be True or False, got {trust_env!r}")
    return trust_env


def _checked_ssl(value: object, urls: Iterable[str]) -> _ssl.SSLContext | bool:
    if value is None or value is True:
        return True
    if isinstance(value, _ssl.SSLContext):
        return value
    if value is not False:
        raise ValidationError(
            "ssl must be an ssl.SSLContext (e.g. ssl.create_default_context(cafile=...)), "
            f"or False for loopback hosts only, got {value!r}"
        )
    for url in urls:
        host = urlsplit(url).hostname
        if not is_loopback(host):
            raise ValidationError(
                f"ssl=False turns certificate checks off, which is allowed only for loopback "
                f"hosts, and {host} is not one: pass ssl= an ssl.SSLContext that trusts its CA "
                "(ssl.create_default_context(cafile=...))"
            )
    return False


def _checked_limit(limit: object) -> int:
    if limit is None:
        return DEFAULT_CONNECTION_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValidationError(f"connection_limit must be a whole number >= 1, got {limit!r}")
    return limit


def masked_url(url: str) -> str:
    """``url`` with any user and password in it replaced by ``***``: safe in a message."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}://{authority}{slash}{path}"
