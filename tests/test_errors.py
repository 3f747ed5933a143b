"""Every error body RD is known to send maps to the right exception with its details."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from rdfunnel.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ExpiredCodeGrantError,
    ForbiddenError,
    InvalidCredentialsError,
    InvalidRefreshTokenError,
    NotFoundError,
    RateLimitError,
    RDStationError,
    ServerError,
    TokenExpiredError,
    UnexpectedStatusError,
    error_from_response,
)
from rdfunnel.retry import RetryPolicy, parse_wait_hint


def _error(status: int, body: Any, headers: dict[str, str] | None = None) -> APIError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return error_from_response(status, headers or {}, raw)


def test_flat_body() -> None:
    error = _error(
        404, {"errors": {"error_type": "RESOURCE_NOT_FOUND", "error_message": "Lead not found."}}
    )
    assert type(error) is NotFoundError
    assert error.error_types == ("RESOURCE_NOT_FOUND",)
    assert error.error_type == "RESOURCE_NOT_FOUND"
    assert error.messages == ("Lead not found.",)
    assert not error.retryable
    assert str(error) == "HTTP 404: RESOURCE_NOT_FOUND: Lead not found."


def test_list_body() -> None:
    body = {
        "errors": [
            {
                "error_type": "INVALID_DATA_TYPE",
                "error_message": "bad tags",
                "path": "$.payload.tags",
            },
            {"error_type": "CANNOT_BE_NULL", "error_message": "name"},
        ]
    }
    error = _error(422, body)
    assert type(error) is BadRequestError
    assert error.error_types == ("INVALID_DATA_TYPE", "CANNOT_BE_NULL")
    assert error.messages == ("bad tags", "name")
    assert json.loads(error.body) == body


def test_per_field_body() -> None:
    item = {
        "error_type": "MUST_BE_VALID_OPTION",
        "error_message": "invalid options for lifecycle_stage, the valid options are: "
        "'Lead', 'Qualified Lead', 'Client'",
    }
    owner = {
        "error_type": "INVALID_USER",
        "error_message": "The user x was not found in your account.",
    }
    error = _error(400, {"errors": {"lifecycle_stage": [item], "contact_owner_email": [owner]}})
    assert type(error) is BadRequestError
    assert error.details["lifecycle_stage"][0]["error_type"] == "MUST_BE_VALID_OPTION"
    assert error.details["contact_owner_email"][0]["error_type"] == "INVALID_USER"
    assert error.error_types == ("MUST_BE_VALID_OPTION", "INVALID_USER")


def test_oauth_style_missing_token() -> None:
    error = _error(
        401, {"error": "invalid_request", "error_description": "The access token is missing"}
    )
    assert type(error) is AuthenticationError
    assert error.error_types == ("invalid_request",)
    assert error.messages == ("The access token is missing",)


@pytest.mark.parametrize("header", ["WWW-Authenticate", "x-amzn-remapped-www-authenticate"])
def test_expired_token_from_either_header(header: str) -> None:
    challenge = (
        'Bearer realm="https://api.rd.services/", error="expired_token", '
        'error_description="The access token expired"'
    )
    body = {"errors": {"error_type": "UNAUTHORIZED", "error_message": "Invalid token."}}
    assert type(_error(401, body, {header: challenge})) is TokenExpiredError
    assert type(_error(401, body)) is AuthenticationError


@pytest.mark.parametrize(
    ("error_type", "cls"),
    [
        ("ACCESS_DENIED", InvalidCredentialsError),
        ("INVALID_REFRESH_TOKEN", InvalidRefreshTokenError),
        ("EXPIRED_CODE_GRANT", ExpiredCodeGrantError),
    ],
)
def test_token_endpoint_errors(error_type: str, cls: type[APIError]) -> None:
    error = _error(401, {"errors": {"error_type": error_type, "error_message": "nope"}})
    assert type(error) is cls
    assert isinstance(error, AuthenticationError)


def test_per_contact_rate_limit() -> None:
    body = {
        "error": "'lead_limiter' rate limit exceeded for 86400 second(s) period for key "
        "'lead@example.org'",
        "max": 24,
        "usage": 25,
        "remaining_time": 43067,
    }
    error = _error(429, body)
    assert isinstance(error, RateLimitError)
    assert (error.scope, error.retry_after, error.limit, error.usage) == ("contact", 43067, 24, 25)
    assert error.messages == (body["error"],)


def test_per_contact_remaining_time_in_milliseconds() -> None:
    body = {"error": "rate limit exceeded for 86400 second(s) period", "remaining_time": 43_067_000}
    error = _error(429, body)
    assert isinstance(error, RateLimitError)
    assert error.retry_after == pytest.approx(43_067)


def test_gateway_rate_limit() -> None:
    error = _error(
        429,
        {"message": "API rate limit exceeded"},
        {"ratelimit-limit-quotas": "1000", "retry-after-quotas": "2"},
    )
    assert isinstance(error, RateLimitError)
    assert (error.scope, error.retry_after) == ("account", 2.0)
    assert error.messages == ("API rate limit exceeded",)


def test_documented_rate_limit_body() -> None:
    error = _error(
        429,
        {
            "errors": {
                "error_type": "RATE_LIMIT_EXCEDDED",
                "error_message": "API usage limit exceeded",
            }
        },
    )
    assert isinstance(error, RateLimitError)
    assert error.scope == "account" and error.retry_after is None
    assert error.error_types == ("RATE_LIMIT_EXCEDDED",)


@pytest.mark.parametrize("status", [502, 504])
def test_html_outage_page(status: int) -> None:
    page = b"<!DOCTYPE html><html><body><h1>RD Station fora do ar</h1></body></html>"
    error = _error(status, page)
    assert type(error) is ServerError and error.retryable
    assert error.body == page.decode()
    assert "RD Station fora do ar" in str(error)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (403, ForbiddenError),
        (414, BadRequestError),
        (415, BadRequestError),
        (500, ServerError),
        (503, ServerError),
        (409, UnexpectedStatusError),
        (418, UnexpectedStatusError),
        (302, UnexpectedStatusError),
    ],
)
def test_every_status_maps_to_some_error(status: int, cls: type[APIError]) -> None:
    for body in (b"", b"not json", b"[1, 2]", b"null", b'{"errors": 3}', b"\xff\xfe"):
        error = _error(status, body, {"X-Request-Id": "r1"})
        assert type(error) is cls
        assert error.status == status
        assert error.headers["X-Request-Id"] == "r1"


def test_errors_pickle_with_their_details() -> None:
    error = _error(429, {"error": "x", "max": 24, "usage": 25, "remaining_time": 10})
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, RateLimitError)
    assert (copy.status, copy.retry_after, copy.scope, str(copy)) == (
        429,
        10,
        "contact",
        str(error),
    )


def test_the_tree() -> None:
    for cls in (APIError, ServerError, RateLimitError, InvalidRefreshTokenError):
        assert issubclass(cls, RDStationError)
    assert issubclass(TokenExpiredError, AuthenticationError)


@pytest.mark.parametrize(
    ("headers", "payload", "seconds"),
    [
        ({"retry-after": "7"}, None, 7.0),
        ({"retry-after-quotas": "3"}, None, 3.0),
        ({"retry-after-quotas": "1.5, 3600"}, None, 1.5),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None, 0.0),
        ({}, {"remaining_time": 12}, 12.0),
        ({}, {"remaining_time": 90_000, "error": "for 86400 second(s) period"}, 90.0),
        ({}, {"remaining_time": 90_000}, 90_000.0),
        ({}, {"remaining_time": "soon"}, None),
        ({"retry-after": "garbage"}, None, None),
        ({}, None, None),
    ],
)
def test_wait_hints(headers: dict[str, str], payload: Any, seconds: float | None) -> None:
    assert parse_wait_hint(headers, payload) == seconds


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(backoff_base=1, backoff_cap=5, jitter=False)
    assert [policy.backoff(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    jittered = RetryPolicy(backoff_base=1, backoff_cap=5)
    assert all(0 <= jittered.backoff(4) <= 5 for _ in range(100))


def test_retry_policy_rejects_negative_values() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
