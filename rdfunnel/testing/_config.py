"""What can go wrong on the fake (:class:`Faults`) and how hard it pushes back (:class:`Limits`)."""

from __future__ import annotations

from typing import Final

import attrs

__all__ = ["FAULT_KINDS", "Faults", "Limits"]

#: Fault kinds drawn per request, in the order their probabilities are stacked.
FAULT_KINDS: Final = (
    "html_502",
    "html_504",
    "json_500",
    "json_503",
    "drop",
    "slow",
    "early_expiry",
)


def _probability(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"Faults.{attribute.name} must be between 0 and 1, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Faults:
    """How often the fake misbehaves like the real RD Station does; all off by default.

    Each probability is the chance that one API request (``/platform/...``,
    ``/marketing/...``; never ``/auth/...``) meets that fault. They are exclusive (one draw per
    request), so they must sum to at most 1. ``seed`` makes the sequence of faults repeatable.
    """

    html_502: float = attrs.field(default=0.0, validator=_probability)
    html_504: float = attrs.field(default=0.0, validator=_probability)
    json_500: float = attrs.field(default=0.0, validator=_probability)
    json_503: float = attrs.field(default=0.0, validator=_probability)
    #: Close the connection without answering (the client sees a disconnect).
    drop: float = attrs.field(default=0.0, validator=_probability)
    #: Answer normally, but only after ``slow_seconds`` (for client timeouts).
    slow: float = attrs.field(default=0.0, validator=_probability)
    slow_seconds: float = attrs.field(default=30.0, validator=_non_negative)
    #: Seconds added to every API answer.
    latency: float = attrs.field(default=0.0, validator=_non_negative)
    #: Treat a valid access token as expired (401 with the expired-token header).
    early_expiry: float = attrs.field(default=0.0, validator=_probability)
    seed: int | None = 0

    def __attrs_post_init__(self) -> None:
        if self.total > 1.0 + 1e-9:
            raise ValueError(f"Faults probabilities sum to {self.total:g}; at most 1 is possible")

    @property
    def total(self) -> float:
        """The chance that a request meets some fault."""
        return float(sum(getattr(self, kind) for kind in FAULT_KINDS))

    @property
    def active(self) -> bool:
        """Whether the fake has any per-request fault work to do at all."""
        return self.total > 0 or self.latency > 0

    def thresholds(self) -> tuple[tuple[float, str], ...]:
        """Cumulative probabilities: a draw below a bound (and above the last) picks its kind."""
        bound = 0.0
        stacked: list[tuple[float, str]] = []
        for kind in FAULT_KINDS:
            chance = float(getattr(self, kind))
            if chance > 0:
                bound += chance
                stacked.append((bound, kind))
        return tuple(stacked)


def _optional_count(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"Limits.{attribute.name} must be None or an int >= 0, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value <= 0:
        raise ValueError(f"Limits.{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Limits:
    """The fake's rate limits, off by default (``None``).

    ``per_contact``: funnel GETs and PUTs allowed per contact per ``window`` seconds (RD: 24 per
    86,400 s, one counter for both methods), answered with the account service's 429 body.
    ``account_rps``: API requests per second for the whole account, answered with the gateway's 429.
    ``account_quota``: API requests per ``window`` for the whole account (RD: 1,000,000 a day),
    answered with the gateway's 429 and ``retry-after-quotas`` set to the seconds left.
    """

    per_contact: int | None = attrs.field(default=None, validator=_optional_count)
    window: float = attrs.field(default=86400.0, validator=_positive)
    account_rps: int | None = attrs.field(default=None, validator=_optional_count)
    account_quota: int | None = attrs.field(default=None, validator=_optional_count)
