"""What a call may say for itself: its ``timeout=`` and ``headers=``, checked before anything is
sent (and the seconds rule every timeout follows)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from .errors import ValidationError

__all__ = ["call_options", "check_optional_str", "check_seconds"]

#: What a header name may hold (RFC 9110 ``token``).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Headers a call may not set: the bearer token and the body's type are rdfunnel's, the rest
#: aiohttp's.
_RESERVED_HEADERS = frozenset(
    ("authorization", "content-type", "content-length", "host", "transfer-encoding")
)


def check_optional_str(name: str, value: object) -> None:
    """``value`` is None or a str; the error names the type only: the value may be a secret."""
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{name} must be a str, got {type(value).__name__}")


def check_seconds(name: str, value: object, *, zero: bool = True) -> float:
    """``value`` as seconds: a finite number, >= 0 (or > 0 unless ``zero``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        bound = ">= 0" if zero else "> 0"
        raise ValidationError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


def call_options(timeout: object, headers: object) -> tuple[float | None, Mapping[str, str] | None]:
    """A call's own ``timeout=`` (seconds > 0) and ``headers=``, checked before anything is sent."""
    deadline = None if timeout is None else check_seconds("timeout", timeout, zero=False)
    if headers is None:
        return deadline, None
    if not isinstance(headers, Mapping):
        raise ValidationError(
            f"headers must be a mapping of header names to values, got {type(headers).__name__}"
        )
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValidationError(f"{name!r} is not an HTTP header name")
        folded = name.lower()
        if folded in _RESERVED_HEADERS:
            raise ValidationError(
                f"headers may not set {name}: rdfunnel sends its own (the bearer token, the "
                "JSON body's type and length)"
            )
        if any(other.lower() == folded for other in checked):
            raise ValidationError(f"headers name {name} twice (header names ignore case)")
        # Never the value in a message: a header may carry a secret.
        if not isinstance(value, str):
            raise ValidationError(f"header {name} must be a str, got {type(value).__name__}")
        if "\r" in value or "\n" in value or "\0" in value:
            raise ValidationError(f"header {name} must be one line: it holds a line break")
        checked[name] = value
    return deadline, checked or None
