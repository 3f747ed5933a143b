"""Whether and how long to wait before trying again: the retry policy and the server's wait hints.

The policy only decides; the pipeline (``_pipeline.py``) obeys, for API and token requests alike.
"""

from __future__ import annotations

import email.utils
import random
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from .errors import RDStationError

__all__ = ["LONGEST_HINT", "RetryPolicy", "parse_wait_hint"]


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When and how long to retry a failed request.

    Retried: server errors, connection failures, timeouts and 429s whose wait hint is at most
    ``max_wait`` seconds. A longer hint (a per-contact daily quota) fails at once with that hint.
    """

    max_retries: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    backoff_base: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    backoff_cap: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    jitter: bool = True
    max_wait: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based) when the server gave no hint.

        Full jitter (a random point below the exponential bound) keeps a crowd of clients that
        failed together from coming back together.
        """
        bound = min(self.backoff_cap, self.backoff_base * 2 ** (retry - 1))
        return random.uniform(0, bound) if self.jitter else bound

    def decide(self, error: RDStationError, retries: int) -> float | None:
        """Seconds to wait before retrying after ``error``, ``retries`` retries in; None: give up.

        A server's wait hint is obeyed when it is at most ``max_wait``; a longer one (a contact's
        daily quota, hours away) fails at once, carrying the hint.
        """
        if not error.retryable or retries >= self.max_retries:
            return None
        hint: float | None = getattr(error, "retry_after", None)  # only rate limits carry one
        if hint is None:
            return self.backoff(retries + 1)
        return hint if hint <= self.max_wait else None


#: The longest wait a hint is taken to ask for: RD's quotas are daily, and a larger (or absurd,
#: 400-digit) hint must not overflow a float or a datetime anywhere downstream.
LONGEST_HINT = 7 * 86400.0

_WINDOW = re.compile(r"for (\d+) second")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_wait_hint(headers: Mapping[str, str], payload: Any) -> float | None:
    """Seconds the server asks us to wait, from whichever hint it sent, or None.

    Reads ``Retry-After`` (seconds or an HTTP date), the gateway's ``retry-after-quotas`` and the
    account service's ``remaining_time``. RD documents ``remaining_time`` as milliseconds but sends
    seconds; it is read as seconds unless it exceeds the window the message names. The result is
    clamped to ``[0, LONGEST_HINT]``.
    """
    seconds = _hint_seconds(headers, payload)
    if seconds is None or seconds != seconds:  # NaN: no usable hint
        return None
    return min(max(seconds, 0.0), LONGEST_HINT)


def _hint_seconds(headers: Mapping[str, str], payload: Any) -> float | None:
    for name in ("retry-after-quotas", "retry-after"):
        value = headers.get(name)
        if value:
            seconds = _header_seconds(value)
            if seconds is not None:
                return seconds
    if isinstance(payload, Mapping):
        remaining = payload.get("remaining_time")
        if isinstance(remaining, int | float) and not isinstance(remaining, bool):
            seconds = float(min(remaining, 1e300))  # a huge int would overflow float()
            message = payload.get("error")
            window = _WINDOW.search(message) if isinstance(message, str) else None
            if window and seconds > float(window.group(1)):
                seconds /= 1000
            return seconds
    return None


def _header_seconds(value: str) -> float | None:
    number = _NUMBER.match(value.strip())
    if number:
        return float(number.group())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - datetime.now(UTC)).total_seconds()
