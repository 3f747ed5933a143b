"""Quotas known to be spent: nothing more is sent into one until its wait has passed.

RD's quotas are daily. Once a 429 asks for a wait longer than the retry policy's ``max_wait``
(a :class:`QuotaExceededError`), every further request into that quota would only be refused
again, so the client fails such requests at once, locally, without sending them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from ._clock import Clock
from .errors import QuotaExceededError
from .models import ContactKey

__all__ = ["SpentQuotas"]

#: Contacts whose spent quota is remembered at most; the oldest is forgotten first.
MAX_CONTACTS: Final = 10_000


class SpentQuotas:
    """The account's spent quota, and those of recently refused contacts (bounded in memory)."""

    __slots__ = ("_account", "_clock", "_contacts")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._account: tuple[float, QuotaExceededError] | None = None
        self._contacts: OrderedDict[ContactKey, tuple[float, QuotaExceededError]] = OrderedDict()

    def note(self, error: QuotaExceededError, contact: ContactKey | None) -> None:
        """Remember ``error``'s quota as spent for the wait it asked for."""
        until = self._clock.monotonic() + (error.retry_after or 0.0)
        if error.scope == "account":
            if self._account is None or self._account[0] < until:
                self._account = (until, error)
        elif contact is not None:
            self._contacts[contact] = (until, error)
            self._contacts.move_to_end(contact)
            while len(self._contacts) > MAX_CONTACTS:
                self._contacts.popitem(last=False)

    def check(self, contact: ContactKey | None) -> None:
        """Raise a :class:`QuotaExceededError` (unsent) if the request would meet a spent quota."""
        if self._account is not None:
            until, error = self._account
            left = until - self._clock.monotonic()
            if left > 0:
                raise _unsent(error, left)
            self._account = None
        if contact is not None and self._contacts:
            entry = self._contacts.get(contact)
            if entry is not None:
                left = entry[0] - self._clock.monotonic()
                if left > 0:
                    raise _unsent(entry[1], left)
                del self._contacts[contact]


def _unsent(error: QuotaExceededError, left: float) -> QuotaExceededError:
    # RD's own message is left out: the per-contact one names the contact's email.
    whose = "the account's" if error.scope == "account" else "this contact's"
    return QuotaExceededError(
        error.status,
        retry_after=left,
        scope=error.scope,
        limit=error.limit,
        usage=error.usage,
        error_types=error.error_types,
        messages=(f"not sent: {whose} quota is spent",),
        body=error.body,
        headers=error.headers,
    )
