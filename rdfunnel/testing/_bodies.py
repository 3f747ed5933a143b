"""Every answer body the fake sends, to the byte, built once where it never changes."""

from __future__ import annotations

import json
import math
from typing import Any, Final

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "ACCESS_DENIED",
    "ACCOUNT_429",
    "BAD_JSON",
    "EMPTY_OBJECT",
    "EMPTY_UPDATE",
    "EXPIRED_CHALLENGE",
    "EXPIRED_CODE",
    "FAULT_ANSWERS",
    "HTML",
    "INVALID_REFRESH",
    "INVALID_TOKEN",
    "JSON",
    "MISSING_TOKEN",
    "NOT_ALLOWED",
    "NOT_AN_OBJECT",
    "NOT_FOUND",
    "NO_FUNNEL",
    "NO_GRANT",
    "NO_REVOKE_TOKEN",
    "UNKNOWN_ROUTE",
    "UNSUPPORTED_MEDIA_TYPE",
    "contact_429",
    "dumps",
    "field_error",
    "flat_error",
    "oauth_error",
]


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, the way RD sends it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def flat_error(error_type: str, message: str) -> bytes:
    return dumps({"errors": {"error_type": error_type, "error_message": message}})


def oauth_error(error_type: str, message: str) -> bytes:
    """The token endpoint's 401 body (``ACCESS_DENIED``, ``INVALID_REFRESH_TOKEN``, ...)."""
    return flat_error(error_type, message)


def field_error(error_type: str, message: str) -> dict[str, str]:
    return {"error_type": error_type, "error_message": message}


def _headers(content_type: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({"Content-Type": content_type}))


JSON: Final = _headers("application/json; charset=utf-8")
HTML: Final = _headers("text/html; charset=utf-8")

EMPTY_OBJECT: Final = b"{}"
MISSING_TOKEN: Final = dumps(
    {"error": "invalid_request", "error_description": "The access token is missing"}
)
INVALID_TOKEN: Final = flat_error("UNAUTHORIZED", "Invalid token.")
EXPIRED_CHALLENGE: Final = (
    'Bearer realm="https://api.rd.services/", error="expired_token", '
    'error_description="The access token expired"'
)
NOT_FOUND: Final = flat_error("RESOURCE_NOT_FOUND", "Lead not found.")
UNKNOWN_ROUTE: Final = flat_error("RESOURCE_NOT_FOUND", "Resource not found.")
UNSUPPORTED_MEDIA_TYPE: Final = flat_error(
    "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json."
)
BAD_JSON: Final = flat_error("BAD_REQUEST", "The request body is not valid JSON.")
NOT_AN_OBJECT: Final = flat_error("BAD_REQUEST", "The request body must be a JSON object.")
EMPTY_UPDATE: Final = flat_error(
    "BAD_REQUEST",
    "At least one of lifecycle_stage, opportunity, contact_owner_email is required.",
)
ACCOUNT_429: Final = dumps({"message": "API rate limit exceeded"})


def contact_429(window: float, key: str, limit: int, usage: int, remaining: float) -> bytes:
    """The account service's per-contact 429, numbers computed from the configured window."""
    period = int(window) if float(window).is_integer() else window
    return dumps(
        {
            "error": f"'lead_limiter' rate limit exceeded for {period} second(s) period "
            f"for key '{key}'",
            "max": limit,
            "usage": usage,
            "remaining_time": max(1, math.ceil(remaining)),
        }
    )


def _outage_page(status: int, reason: str) -> bytes:
    return (
        '<!DOCTYPE html>\n<html lang="pt-BR">\n<head><meta charset="utf-8">'
        f"<title>{status} {reason} | RD Station</title></head>\n"
        "<body><h1>RD Station fora do ar</h1>"
        "<p>Estamos trabalhando para resolver o problema o mais rápido possível.</p>"
        f"<p>Erro {status}</p></body>\n</html>\n"
    ).encode()


#: What each answering fault sends: status, headers, body.
FAULT_ANSWERS: Final[dict[str, tuple[int, CIMultiDictProxy[str], bytes]]] = {
    "html_502": (502, HTML, _outage_page(502, "Bad Gateway")),
    "html_504": (504, HTML, _outage_page(504, "Gateway Timeout")),
    "json_500": (
        500,
        JSON,
        flat_error("SERVICE_UNAVAILABLE", "The service is unavailable, try again later."),
    ),
    "json_503": (
        503,
        JSON,
        flat_error("SERVICE_UNAVAILABLE", "Service temporarily unavailable."),
    ),
}

# OAuth and routing answers.
ACCESS_DENIED: Final = oauth_error("ACCESS_DENIED", "Wrong credentials provided.")
INVALID_REFRESH: Final = oauth_error(
    "INVALID_REFRESH_TOKEN", "The refresh token is invalid or was revoked."
)
EXPIRED_CODE: Final = oauth_error(
    "EXPIRED_CODE_GRANT", "The authorization code was already used or has expired."
)
NO_GRANT: Final = flat_error(
    "BAD_REQUEST", "Send a code or a refresh_token (or token_by/grant_type naming one)."
)
NO_REVOKE_TOKEN: Final = dumps(
    {"error": "invalid_request", "error_description": "The token parameter is missing"}
)
NOT_ALLOWED: Final = flat_error("METHOD_NOT_ALLOWED", "Method not allowed.")
NO_FUNNEL: Final = flat_error("RESOURCE_NOT_FOUND", "Funnel not found.")
