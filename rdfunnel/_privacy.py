"""Contacts are personal data (LGPD): how they appear in logs, events, metrics and messages.

By default a contact shows masked, ``a***@example.com`` for an email and ``3f2a…`` for a UUID,
and a path shows its contact masked; a route (a metric label, a span's ``url.template``) shows
a placeholder instead. ``RDStation(log_contacts=True)`` shows contacts in full in logs and
events; exception messages always mask them (the exception object keeps the contact).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from .models import ContactKey

__all__ = ["FUNNEL_ROUTE", "mask", "masked_contact", "masked_path", "route_of", "scrub"]

#: The route of every funnel call.
FUNNEL_ROUTE = "/platform/contacts/{contact}/funnels/{funnel}"

_SEGMENT = re.compile(r"[^/]+")
#: An address anywhere in free text (an aiohttp message may quote the URL), raw or %-encoded.
#: A URL's user and password (``scheme://user:password@host``).
_USERINFO = re.compile(r"(://)[^/\s@]*@")
_ADDRESS = re.compile(r"([^\s/:'\"<>(),;=?&]+)(@|%40)([^\s/'\"<>(),;?&]+)", re.IGNORECASE)


def mask(kind: str, value: str) -> str:
    """``a***@example.com`` for an email, the first 4 characters of a UUID and ``…``."""
    if kind == "email":
        local, _, domain = value.rpartition("@")
        return f"{local[:1]}***@{domain}"
    return f"{value[:4]}…"


def masked_contact(key: ContactKey | None, full: bool) -> str | None:
    """A contact's key as events show it: masked, unless ``full``."""
    if key is None:
        return None
    return key[1] if full else mask(*key)


def route_of(path: str) -> str:
    """``path`` with every segment that names a contact (or holds an address) as ``{contact}``."""
    if not _may_name_a_contact(path):
        return path
    return _SEGMENT.sub(lambda m: "{contact}" if _is_contact(m[0]) else m[0], path)


def masked_path(path: str) -> str:
    """``path`` with each contact masked: ``/platform/contacts/email:a***@example.com/...``."""
    if not _may_name_a_contact(path):
        return path
    return _SEGMENT.sub(lambda m: _masked_segment(m[0]) if _is_contact(m[0]) else m[0], path)


def _may_name_a_contact(path: str) -> bool:
    """A quick test that skips the segment-by-segment one for most paths."""
    return any(mark in path for mark in ("@", "%40", "email:", "uuid:"))


def _is_contact(segment: str) -> bool:
    decoded = unquote(segment)
    return "@" in decoded or decoded.startswith(("email:", "uuid:"))


def _masked_segment(segment: str) -> str:
    decoded = unquote(segment)
    kind, sep, value = decoded.partition(":")
    if sep and kind in ("email", "uuid"):
        return f"{kind}:{mask(kind, value)}"
    return mask("email", decoded)


def scrub(text: str) -> str:
    """``text`` with every address in it masked, and any URL's password: for messages that quote
    what others said."""
    if "@" not in text and "%40" not in text.lower():
        return text
    text = _ADDRESS.sub(lambda m: f"{m[1][:1]}***@{unquote(m[3])}", text)
    return _USERINFO.sub(r"\1***@", text)
