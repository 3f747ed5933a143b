"""The exception tree, and the mapping from an error response to the exception that names it.

Every status maps to some :class:`APIError`; every body RD is known to send (flat, list, per field,
OAuth style, both 429 shapes, HTML outage pages, nothing at all) is parsed without raising.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from multidict import CIMultiDict

from .retry import parse_wait_hint

if TYPE_CHECKING:
    from .models import Contact

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "CertificateError",
    "ExpiredCodeGrantError",
    "ForbiddenError",
    "InvalidCredentialsError",
    "InvalidRefreshTokenError",
    "NotAttemptedError",
    "NotFoundError",
    "QuotaExceededError",
    "RDStationError",
    "RateLimitError",
    "RequestTimeoutError",
    "ServerError",
    "TokenExpiredError",
    "TokenRefusedError",
    "TransportError",
    "UnexpectedStatusError",
    "ValidationError",
    "error_from_response",
]

FieldErrors = Mapping[str, tuple[Mapping[str, Any], ...]]


class RDStationError(Exception):
    """The root of every error rdfunnel raises."""

    #: Trying the same request again may succeed (read by :meth:`RetryPolicy.decide`).
    retryable: ClassVar[bool] = False
    #: The app must be authorized again: no token this client holds or can get will work.
    reauthorize: ClassVar[bool] = False
    #: No other request of this client can succeed now, so a bulk run stops on it.
    terminal: bool = False
    #: How many times the request was sent before this error was raised (0: never sent).
    attempts: int = 0
    #: The contact the request was about (a :class:`~rdfunnel.Contact`), or None. Messages
    #: never show it in full: contacts are personal data.
    contact: Contact | None = None


class ValidationError(RDStationError, ValueError):
    """Bad input, found before anything was sent."""


class NotAttemptedError(RDStationError):
    """A bulk item was never sent because the run stopped first; ``reason`` says why."""

    def __init__(self, reason: BaseException) -> None:
        self.reason = reason
        super().__init__(f"not sent: the run stopped after {type(reason).__name__}: {reason}")


class TransportError(RDStationError):
    """The request did not get an HTTP answer: connection refused or reset, DNS, TLS."""

    retryable = True


class RequestTimeoutError(TransportError):
    """The request did not get an answer in time, or the call's own ``timeout=`` passed."""


class CertificateError(TransportError):
    """The server's TLS certificate could not be verified against the CAs the client trusts.

    Not retried, and it stops a bulk run: no request to that host can succeed until the client
    trusts its CA (``RDStation(ssl=ssl.create_default_context(cafile=...))``).
    """

    retryable = False
    terminal = True


class APIError(RDStationError):
    """RD Station answered with an error status.

    Keeps everything the answer said: the status, the error types and messages, per-field details
    (for validation errors), the raw body (even an HTML outage page) and the headers.
    """

    #: What the user must do about this error, added to the messages of the answers that name it.
    hint: ClassVar[str | None] = None

    def __init__(
        self,
        status: int,
        *,
        error_types: tuple[str, ...] = (),
        messages: tuple[str, ...] = (),
        details: FieldErrors | None = None,
        body: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.error_types = error_types
        self.messages = messages
        self.details: FieldErrors = dict(details or {})
        self.body = body
        self.headers: Mapping[str, str] = CIMultiDict(headers or {})
        super().__init__(self._describe())

    @property
    def request_id(self) -> str | None:
        """RD's id for the request that got this answer (quote it to RD's support), if sent."""
        return request_id_of(self.headers)

    @property
    def error_type(self) -> str | None:
        """The first error type, the one to branch on when there is only one."""
        return self.error_types[0] if self.error_types else None

    def _describe(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.error_types:
            parts.append(", ".join(self.error_types))
        if self.messages:
            parts.append("; ".join(self.messages))
        elif not self.error_types and self.body:
            parts.append(_snippet(self.body))
        return ": ".join(parts)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.__dict__))


def _rebuild(cls: type[APIError], state: dict[str, Any]) -> APIError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error._describe())
    return error


class BadRequestError(APIError):
    """The request was refused as invalid (400, 413-415, 422); ``details`` says why, per field."""


class AuthenticationError(APIError):
    """The access token or the app's credentials were refused (401)."""


class TokenExpiredError(AuthenticationError):
    """The access token has expired; rdfunnel refreshes and replays once before raising this."""


class InvalidCredentialsError(AuthenticationError):
    """The client id, client secret or redirect URI was refused (``ACCESS_DENIED``)."""

    reauthorize = terminal = True
    hint = (
        "the client id, client secret or redirect URI was refused: check them, then authorize "
        "the app again if the refresh token belongs to another app"
    )


class InvalidRefreshTokenError(AuthenticationError):
    """The refresh token is invalid or revoked: the user must authorize the app again."""

    reauthorize = terminal = True
    hint = (
        "the refresh token is invalid or revoked: authorize the app again "
        "(rdfunnel.oauth.authorization_url, then exchange_code) to get a new one"
    )


class TokenRefusedError(AuthenticationError):
    """The API refused several new access tokens in a row, none of which it ever accepted.

    Refreshing again cannot help: the authorization itself is broken (revoked, another account).
    """

    reauthorize = terminal = True


class ExpiredCodeGrantError(AuthenticationError):
    """The authorization code was already used or is older than 60 minutes."""

    reauthorize = terminal = True
    hint = "the code was already used or is over 60 minutes old: authorize again"


class ForbiddenError(APIError):
    """The account may not do this, e.g. its plan lacks the feature (403)."""


class NotFoundError(APIError):
    """The contact (or other resource) does not exist (404)."""


class RateLimitError(APIError):
    """Too many requests (429).

    ``scope`` is ``"contact"`` for a per-contact quota (often hours away: not worth waiting for in a
    bulk run) and ``"account"`` for the account-wide limit. ``retry_after`` is the wait the server
    asked for, in seconds, when it said.
    """

    retryable = True

    def __init__(
        self,
        status: int,
        *,
        retry_after: float | None = None,
        scope: Literal["contact", "account"] = "account",
        limit: int | None = None,
        usage: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.retry_after = retry_after
        self.scope = scope
        self.limit = limit
        self.usage = usage
        super().__init__(status, **kwargs)

    def _describe(self) -> str:
        text = super()._describe()
        if self.retry_after is not None:
            text += f" (scope: {self.scope}, retry after {self.retry_after:g} s)"
        return text


class QuotaExceededError(RateLimitError):
    """A quota is spent for longer than the retry policy waits (``RetryPolicy.max_wait``).

    The client sends nothing more into it until ``retry_after`` has passed: later calls fail at
    once with this error, unsent (``attempts == 0``). A spent account quota stops a bulk run.
    """

    retryable = False  # its wait is longer than the retry policy's, by definition

    def __init__(self, status: int, **kwargs: Any) -> None:
        super().__init__(status, **kwargs)
        self.terminal = self.scope == "account"


class ServerError(APIError):
    """RD Station failed (5xx), often with an HTML outage page; retried."""

    retryable = True


class UnexpectedStatusError(APIError):
    """A status rdfunnel has no better name for."""


#: Where an answer names its request: RD's application (``X-Request-Id``), else the AWS API
#: gateway in front of it (``x-amzn-RequestId``). Which one RD sends is unconfirmed: both are read.
REQUEST_ID_HEADERS = ("X-Request-Id", "x-amzn-RequestId")


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The request id an answer's headers carry (case-insensitive ``headers``), or None."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    413: BadRequestError,
    414: BadRequestError,
    415: BadRequestError,
    422: BadRequestError,
    429: RateLimitError,
}
_BY_TYPE: dict[str, type[AuthenticationError]] = {
    "ACCESS_DENIED": InvalidCredentialsError,
    "INVALID_REFRESH_TOKEN": InvalidRefreshTokenError,
    "EXPIRED_CODE_GRANT": ExpiredCodeGrantError,
}


def error_from_response(
    status: int, headers: Mapping[str, str], body: bytes, *, max_wait: float = math.inf
) -> APIError:
    """Build the exception that names this error response. Never raises anything else.

    A 429 asking for a wait longer than ``max_wait`` seconds is a :class:`QuotaExceededError`.
    """
    text = body.decode("utf-8", "replace")
    try:
        payload: Any = json.loads(text) if text.strip() else None
    except ValueError:
        payload = None
    types, messages, details = _parse_errors(payload)
    cls = _error_class(status, headers, types)
    if cls.hint is not None:
        messages = (*messages, cls.hint)
    common: dict[str, Any] = {
        "error_types": types,
        "messages": messages,
        "details": details,
        "body": text,
        "headers": headers,
    }
    if status == 429:
        return _rate_limit_error(status, headers, payload, common, max_wait)
    return cls(status, **common)


def _error_class(status: int, headers: Mapping[str, str], types: tuple[str, ...]) -> type[APIError]:
    if status == 401:
        return _auth_error_class(headers, types)
    return _BY_STATUS.get(status) or (ServerError if 500 <= status < 600 else UnexpectedStatusError)


def _parse_errors(payload: Any) -> tuple[tuple[str, ...], tuple[str, ...], FieldErrors]:
    """Error types, messages and per-field details from any of RD's error body shapes."""
    if not isinstance(payload, Mapping):
        return (), (), {}
    errors = payload.get("errors")
    if isinstance(errors, Mapping) and "error_type" not in errors and "error_message" not in errors:
        details = {
            str(field): tuple(item for item in _as_list(items) if isinstance(item, Mapping))
            for field, items in errors.items()
        }
        entries = [item for items in details.values() for item in items]
        return _strings(entries, "error_type"), _strings(entries, "error_message"), details
    if isinstance(errors, Mapping | list):
        entries = [item for item in _as_list(errors) if isinstance(item, Mapping)]
        return _strings(entries, "error_type"), _strings(entries, "error_message"), {}
    # OAuth style ({"error", "error_description"}), the gateway's {"message"}, the account service's
    # {"error": "'lead_limiter' rate limit exceeded ..."}.
    description = payload.get("error_description") or payload.get("message")
    error = payload.get("error")
    if description is not None:
        return _strings([payload], "error"), (str(description),), {}
    return (), ((str(error),) if error is not None else ()), {}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _strings(entries: list[Mapping[str, Any]], key: str) -> tuple[str, ...]:
    return tuple(str(entry[key]) for entry in entries if entry.get(key) is not None)


def _auth_error_class(headers: Mapping[str, str], types: tuple[str, ...]) -> type[APIError]:
    for error_type in types:
        if error_type in _BY_TYPE:
            return _BY_TYPE[error_type]
    challenge = headers.get("WWW-Authenticate") or headers.get("x-amzn-remapped-www-authenticate")
    if challenge and "expired_token" in challenge:
        return TokenExpiredError
    return AuthenticationError


def _rate_limit_error(
    status: int,
    headers: Mapping[str, str],
    payload: Any,
    common: dict[str, Any],
    max_wait: float,
) -> RateLimitError:
    mapping = payload if isinstance(payload, Mapping) else {}
    # The account service's per-contact body names its limit and usage; the gateway's does not.
    per_contact = "remaining_time" in mapping or "max" in mapping
    retry_after = parse_wait_hint(headers, payload)
    spent = retry_after is not None and retry_after > max_wait
    return (QuotaExceededError if spent else RateLimitError)(
        status,
        retry_after=retry_after,
        scope="contact" if per_contact else "account",
        limit=_int_or_none(mapping.get("max")),
        usage=_int_or_none(mapping.get("usage")),
        **common,
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _snippet(body: str, limit: int = 200) -> str:
    text = " ".join(body.split())
    return text if len(text) <= limit else text[:limit] + "…"
