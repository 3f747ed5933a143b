"""Where rdfunnel sends requests: RD's default base URL, and the rule every URL must pass."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .errors import ValidationError

__all__ = ["DEFAULT_BASE_URL", "check_url", "is_loopback"]

DEFAULT_BASE_URL = "https://api.rd.services"


def check_url(url: str, what: str) -> str:
    """Secrets travel to these URLs: https only, except to this machine."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return url
    raise ValidationError(f"{what} must be an https:// URL (http:// only for loopback): {url!r}")


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine: ``localhost`` or a loopback address."""
    if not host:
        return False
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
