"""The client's instrumentation hooks, and the one place events reach them.

A hook is any callable taking an :mod:`rdfunnel.events` event; one that returns an awaitable has
it run as a task of its own. A hook that raises is logged (with its traceback the first time)
and never fails the call it watches. A hook may say which kinds of event it handles (an
``rdfunnel_events`` attribute, a collection of event classes): events no hook wants are never built.
Callers ask :meth:`Observer.wants` first, so with no hooks nothing here runs on the hot path.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from ._privacy import masked_contact
from .events import EVENT_TYPES, Event

if TYPE_CHECKING:
    from ._transport import Request

__all__ = ["Hook", "Observer", "fields"]

logger = logging.getLogger("rdfunnel")

#: Called with every event of the client; may return an awaitable, which is run as a task.
Hook = Callable[[Event], object]


class Observer:
    """One client's hooks, and whether contacts show in full (``log_contacts``)."""

    __slots__ = ("_failed", "_tasks", "_wanted", "active", "hooks", "log_contacts")

    def __init__(self, hooks: Iterable[Hook] = (), *, log_contacts: bool = False) -> None:
        self.hooks = tuple(hooks)
        #: Whether there is anyone to tell: callers skip building events when not.
        self.active = bool(self.hooks)
        self._wanted = {
            kind: any(kind in getattr(hook, "rdfunnel_events", EVENT_TYPES) for hook in self.hooks)
            for kind in EVENT_TYPES
        }
        self.log_contacts = log_contacts
        self._failed: set[int] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def wants(self, kind: type) -> bool:
        """Whether any hook handles events of ``kind``: if not, do not build one."""
        return self._wanted[kind]

    def emit(self, event: Event) -> None:
        for index, hook in enumerate(self.hooks):
            try:
                outcome = hook(event)
                if outcome is not None and inspect.isawaitable(outcome):
                    self._run(outcome)
            except Exception as error:
                self._report(index, hook, error)

    def request_fields(self, request: Request) -> dict[str, Any]:
        """What every event about ``request`` carries (made once per request)."""
        fields = request.fields
        if fields is None:
            fields = request.fields = {
                "operation": request.operation,
                "method": request.method,
                "route": request.route,
                "contact": masked_contact(request.key, self.log_contacts),
                "contact_kind": request.key[0] if request.key is not None else None,
                "bulk_run": request.bulk_run,
            }
        return fields

    def _run(self, awaitable: Awaitable[Any]) -> None:
        async def run() -> None:
            await awaitable

        task = asyncio.ensure_future(run())
        self._tasks.add(task)  # a strong reference until it is done
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            logger.warning(
                "an async rdfunnel hook raised %s",
                type(error).__name__,
                extra={"event": "hook_failed", "error": type(error).__name__},
            )

    def _report(self, index: int, hook: Hook, error: Exception) -> None:
        first = index not in self._failed
        self._failed.add(index)
        logger.log(
            logging.ERROR if first else logging.DEBUG,
            "rdfunnel hook %r raised %s; the call goes on",
            hook,
            type(error).__name__,
            exc_info=first,
            extra={"event": "hook_failed", "error": type(error).__name__},
        )


def fields(event: Event) -> dict[str, Any]:
    """``event`` as a log record's ``extra``: its name and its fields."""
    name = "".join(f"_{c.lower()}" if c.isupper() else c for c in type(event).__name__)
    return {"event": name.lstrip("_"), **attrs.asdict(event, recurse=False)}
