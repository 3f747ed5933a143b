"""FakeRDStation's wire surface over real sockets: OAuth, tokens, funnel routes, views.

Raw aiohttp requests, so every status, header and body byte is checked as RD sends it, and every
error body is fed to rdfunnel.errors.error_from_response to prove the SDK reads it as intended.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import warnings
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest
from yarl import URL

from rdfunnel.errors import (
    AuthenticationError,
    BadRequestError,
    ExpiredCodeGrantError,
    InvalidCredentialsError,
    InvalidRefreshTokenError,
    NotFoundError,
    TokenExpiredError,
    error_from_response,
)
from rdfunnel.testing import FakeContact, FakeRDStation, Faults, Limits
from rdfunnel.testing.plugin import rdstation_fake, rdstation_fake_options  # noqa: F401

CLIENT: dict[str, Any] = {"client_id": "app-id", "client_secret": "app-secret"}
EXPIRED_CHALLENGE = (
    'Bearer realm="https://api.rd.services/", error="expired_token", '
    'error_description="The access token expired"'
)
EXPIRED_BODY = {"errors": {"error_type": "UNAUTHORIZED", "error_message": "Invalid token."}}
NOT_FOUND_BODY = {
    "errors": {"error_type": "RESOURCE_NOT_FOUND", "error_message": "Lead not found."}
}
FUNNEL = "/platform/contacts/{}/funnels/default"


class Clock:
    """A clock the test moves by hand: nothing in these tests sleeps for token expiry."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Reply:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> Exception:
        return error_from_response(self.status, self.headers, self.body)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeRDStation]:
    async with FakeRDStation(**CLIENT, refresh_token="first-refresh", clock=clock) as server:
        server.add_contact("ana@example.com", "5f0c1c4e-0000-4000-8000-000000000001")
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    encoded: bool = False,
    **kwargs: Any,
) -> Reply:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    target = URL(url, encoded=True) if encoded else url
    async with http.request(method, target, headers=headers, **kwargs) as response:
        return Reply(response.status, response.headers, await response.read())


async def refresh(
    fake: FakeRDStation, http: aiohttp.ClientSession, refresh_token: str | None = None
) -> dict[str, Any]:
    reply = await send(
        http,
        "POST",
        fake.url + "/auth/token",
        json={**CLIENT, "refresh_token": refresh_token or fake.refresh_token},
    )
    assert reply.status == 200, reply.body
    body: dict[str, Any] = reply.json()
    return body


async def access(fake: FakeRDStation, http: aiohttp.ClientSession) -> str:
    token: str = (await refresh(fake, http))["access_token"]
    return token


async def authorize(fake: FakeRDStation, http: aiohttp.ClientSession, **params: str) -> str:
    query = {"client_id": fake.client_id, "redirect_uri": "https://app.example/cb", **params}
    async with http.get(fake.url + "/auth/dialog", params=query, allow_redirects=False) as reply:
        assert reply.status == 302
        location = reply.headers["Location"]
    return parse_qs(urlsplit(location).query)["code"][0]


# -- OAuth -----------------------------------------------------------------------------------


async def test_dialog_redirects_with_code_and_state(fake: FakeRDStation, http: Any) -> None:
    for name in ("redirect_uri", "redirect_url"):
        query = {"client_id": "app-id", name: "https://app.example/cb?x=1", "state": "s t"}
        url = fake.url + "/auth/dialog"
        async with http.get(url, params=query, allow_redirects=False) as reply:
            assert reply.status == 302
            location = urlsplit(reply.headers["Location"])
        assert location.netloc == "app.example"
        assert location.path == "/cb"
        params = parse_qs(location.query)
        assert params["x"] == ["1"]
        assert params["state"] == ["s t"]
        assert params["code"][0]
    assert fake.stats.count("auth.dialog", 302) == 2


async def test_dialog_refuses_unknown_app(fake: FakeRDStation, http: Any) -> None:
    query = {"client_id": "someone-else", "redirect_uri": "https://app.example/cb"}
    reply = await send(http, "GET", fake.url + "/auth/dialog", params=query)
    assert reply.status == 401
    assert reply.json()["errors"]["error_type"] == "ACCESS_DENIED"
    assert isinstance(reply.error(), InvalidCredentialsError)


@pytest.mark.parametrize(
    ("query", "body", "form"),
    [
        ({"token_by": "code"}, {}, False),
        ({}, {}, False),
        ({}, {"grant_type": "authorization_code"}, True),
    ],
)
async def test_code_exchange_is_single_use(
    fake: FakeRDStation, http: Any, query: dict[str, str], body: dict[str, str], form: bool
) -> None:
    code = await authorize(fake, http)
    fields = {**CLIENT, "code": code, **body}
    payload: dict[str, Any] = {"data": fields} if form else {"json": fields}
    first = await send(http, "POST", fake.url + "/auth/token", params=query, **payload)
    assert first.status == 200
    tokens = first.json()
    assert set(tokens) == {"access_token", "expires_in", "refresh_token"}
    assert tokens["expires_in"] == 86400
    assert tokens["access_token"].count(".") == 2  # JWT-looking, opaque
    info = await send(
        http, "GET", fake.url + "/marketing/account_info", token=tokens["access_token"]
    )
    assert info.status == 200
    again = await send(http, "POST", fake.url + "/auth/token", params=query, **payload)
    assert again.status == 401
    assert again.json() == {
        "errors": {
            "error_type": "EXPIRED_CODE_GRANT",
            "error_message": "The authorization code was already used or has expired.",
        }
    }
    assert isinstance(again.error(), ExpiredCodeGrantError)
    assert fake.stats.grants == {"code": 1}


async def test_code_expires_after_an_hour(fake: FakeRDStation, http: Any, clock: Clock) -> None:
    code = await authorize(fake, http)
    clock.advance(3600)
    reply = await send(http, "POST", fake.url + "/auth/token", json={**CLIENT, "code": code})
    assert reply.status == 401
    assert reply.json()["errors"]["error_type"] == "EXPIRED_CODE_GRANT"


async def test_code_exchange_checks_redirect_uri(fake: FakeRDStation, http: Any) -> None:
    code = await authorize(fake, http)
    fields = {**CLIENT, "code": code, "redirect_uri": "https://evil.example/cb"}
    reply = await send(http, "POST", fake.url + "/auth/token?token_by=code", json=fields)
    assert reply.status == 401
    assert reply.json()["errors"]["error_type"] == "ACCESS_DENIED"


@pytest.mark.parametrize(
    ("query", "extra", "form"),
    [
        ({}, {}, False),
        ({"token_by": "refresh_token"}, {}, False),
        ({}, {"grant_type": "refresh_token"}, True),
        ({}, {"grant_type": "refresh_token"}, False),
        ({}, {}, True),
    ],
)
async def test_refresh_in_every_body_style(
    fake: FakeRDStation, http: Any, query: dict[str, str], extra: dict[str, str], form: bool
) -> None:
    fields = {**CLIENT, "refresh_token": "first-refresh", **extra}
    payload: dict[str, Any] = {"data": fields} if form else {"json": fields}
    reply = await send(http, "POST", fake.url + "/auth/token", params=query, **payload)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    tokens = reply.json()
    assert tokens["refresh_token"] == "first-refresh"  # not rotating: the same one comes back
    assert fake.stats.grants == {"refresh": 1}


@pytest.mark.parametrize(
    "fields",
    [
        {"client_id": "app-id", "client_secret": "wrong"},
        {"client_id": "wrong", "client_secret": "app-secret"},
        {"client_secret": "app-secret"},
    ],
)
async def test_wrong_credentials_are_access_denied(
    fake: FakeRDStation, http: Any, fields: dict[str, str]
) -> None:
    body = {**fields, "refresh_token": "first-refresh"}
    reply = await send(http, "POST", fake.url + "/auth/token", json=body)
    assert reply.status == 401
    assert reply.json() == {
        "errors": {"error_type": "ACCESS_DENIED", "error_message": "Wrong credentials provided."}
    }
    assert isinstance(reply.error(), InvalidCredentialsError)


async def test_unknown_refresh_token(fake: FakeRDStation, http: Any) -> None:
    body = {**CLIENT, "refresh_token": "never-issued"}
    reply = await send(http, "POST", fake.url + "/auth/token", json=body)
    assert reply.status == 401
    assert reply.json() == {
        "errors": {
            "error_type": "INVALID_REFRESH_TOKEN",
            "error_message": "The refresh token is invalid or was revoked.",
        }
    }
    assert isinstance(reply.error(), InvalidRefreshTokenError)


async def test_rotating_refresh_tokens_are_single_use(http: Any, clock: Clock) -> None:
    async with FakeRDStation(**CLIENT, rotate_refresh_tokens=True, clock=clock) as fake:
        first = await refresh(fake, http)
        assert first["refresh_token"] != fake.refresh_token
        reused = await send(
            http,
            "POST",
            fake.url + "/auth/token",
            json={**CLIENT, "refresh_token": fake.refresh_token},
        )
        assert reused.status == 401
        assert reused.json()["errors"]["error_type"] == "INVALID_REFRESH_TOKEN"
        second = await refresh(fake, http, first["refresh_token"])
        assert second["refresh_token"] not in (first["refresh_token"], fake.refresh_token)
        # Access tokens from earlier refreshes stay valid until they expire.
        info = await send(
            http, "GET", fake.url + "/marketing/account_info", token=first["access_token"]
        )
        assert info.status == 200
        assert fake.stats.grants == {"refresh": 2}


async def test_token_lifetime_and_expiry(http: Any, clock: Clock) -> None:
    async with FakeRDStation(**CLIENT, token_lifetime=120, clock=clock) as fake:
        tokens = await refresh(fake, http)
        assert tokens["expires_in"] == 120
        url = fake.url + "/marketing/account_info"
        clock.advance(119)
        assert (await send(http, "GET", url, token=tokens["access_token"])).status == 200
        clock.advance(1)
        reply = await send(http, "GET", url, token=tokens["access_token"])
        assert reply.status == 401
        assert reply.headers["WWW-Authenticate"] == EXPIRED_CHALLENGE
        assert reply.json() == EXPIRED_BODY
        assert isinstance(reply.error(), TokenExpiredError)


async def test_missing_and_unknown_tokens(fake: FakeRDStation, http: Any) -> None:
    url = fake.url + "/marketing/account_info"
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
        reply = await send(http, "GET", url, headers=headers)
        assert reply.status == 401
        assert reply.json() == {
            "error": "invalid_request",
            "error_description": "The access token is missing",
        }
        assert isinstance(reply.error(), AuthenticationError)
    unknown = await send(http, "GET", url, token="not-a-token")
    assert unknown.status == 401
    assert unknown.json() == EXPIRED_BODY
    assert "WWW-Authenticate" not in unknown.headers
    assert type(unknown.error()) is AuthenticationError


async def test_expired_header_behind_the_gateway(http: Any, clock: Clock) -> None:
    async with FakeRDStation(
        **CLIENT, expired_header="x-amzn-remapped-www-authenticate", clock=clock
    ) as fake:
        token = await access(fake, http)
        fake.expire_tokens()
        reply = await send(http, "GET", fake.url + "/marketing/account_info", token=token)
        assert reply.status == 401
        assert "WWW-Authenticate" not in reply.headers
        assert reply.headers["x-amzn-remapped-www-authenticate"] == EXPIRED_CHALLENGE
        assert isinstance(reply.error(), TokenExpiredError)


async def test_expire_tokens_then_refresh(fake: FakeRDStation, http: Any) -> None:
    token = await access(fake, http)
    fake.expire_tokens()
    url = fake.url + FUNNEL.format("email:ana@example.com")
    expired = await send(http, "GET", url, token=token)
    assert expired.status == 401
    assert expired.headers["WWW-Authenticate"] == EXPIRED_CHALLENGE
    fresh = await access(fake, http)
    assert (await send(http, "GET", url, token=fresh)).status == 200


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
async def test_revoke_ends_both_tokens(fake: FakeRDStation, http: Any, which: str) -> None:
    tokens = await refresh(fake, http)
    reply = await send(
        http,
        "POST",
        fake.url + "/auth/revoke",
        data={"token": tokens[which], "token_type_hint": which},
    )
    assert reply.status == 200
    assert reply.json() == {}
    info = await send(
        http, "GET", fake.url + "/marketing/account_info", token=tokens["access_token"]
    )
    assert info.status == 401
    again = await send(
        http,
        "POST",
        fake.url + "/auth/token",
        json={**CLIENT, "refresh_token": tokens["refresh_token"]},
    )
    assert again.json()["errors"]["error_type"] == "INVALID_REFRESH_TOKEN"


async def test_revoke_unknown_token_and_missing_token(fake: FakeRDStation, http: Any) -> None:
    ok = await send(http, "POST", fake.url + "/auth/revoke", data={"token": "nope"})
    assert (ok.status, ok.json()) == (200, {})
    missing = await send(http, "POST", fake.url + "/auth/revoke", data={})
    assert missing.status == 400


async def test_revoke_all_and_issue_new_tokens(fake: FakeRDStation, http: Any) -> None:
    token = await access(fake, http)
    fake.revoke_all()
    assert (
        await send(http, "GET", fake.url + "/marketing/account_info", token=token)
    ).status == 401
    reply = await send(
        http, "POST", fake.url + "/auth/token", json={**CLIENT, "refresh_token": fake.refresh_token}
    )
    assert reply.json()["errors"]["error_type"] == "INVALID_REFRESH_TOKEN"
    renewed = await refresh(fake, http, fake.issue_refresh_token())
    url = fake.url + "/marketing/account_info"
    assert (await send(http, "GET", url, token=renewed["access_token"])).status == 200
    bare = fake.issue_access_token()
    assert (await send(http, "GET", url, token=bare)).status == 200


# -- funnel and other API routes ---------------------------------------------------------------


async def test_get_funnel_by_email_uuid_and_legacy_path(fake: FakeRDStation, http: Any) -> None:
    token = await access(fake, http)
    expected = {
        "lifecycle_stage": "Lead",
        "opportunity": False,
        "contact_owner_email": None,
        "fit": 0,
        "interest": 0,
    }
    uuid = "5f0c1c4e-0000-4000-8000-000000000001"
    for segment in ("email:ana@example.com", f"uuid:{uuid}", uuid, f"uuid:{uuid.upper()}"):
        reply = await send(http, "GET", fake.url + FUNNEL.format(segment), token=token)
        assert reply.status == 200, segment
        assert reply.json() == expected
    assert fake.stats.count("funnels.get", 200) == 4


async def test_put_is_partial_and_recorded_in_order(fake: FakeRDStation, http: Any) -> None:
    token = await access(fake, http)
    url = fake.url + FUNNEL.format("email:ana@example.com")
    first = await send(http, "PUT", url, token=token, json={"lifecycle_stage": "Qualified Lead"})
    assert first.status == 200
    assert first.json()["lifecycle_stage"] == "Qualified Lead"
    second = await send(
        http, "PUT", url, token=token, json={"opportunity": True, "contact_owner_email": "o@x.com"}
    )
    assert second.json() == {
        "lifecycle_stage": "Qualified Lead",
        "opportunity": True,
        "contact_owner_email": "o@x.com",
        "fit": 0,
        "interest": 0,
    }
    assert fake.contact("ana@example.com") == FakeContact(
        "ana@example.com",
        "5f0c1c4e-0000-4000-8000-000000000001",
        "Qualified Lead",
        True,
        "o@x.com",
        0,
        0,
    )
    assert fake.puts == {
        "ana@example.com": (
            {"lifecycle_stage": "Qualified Lead"},
            {"opportunity": True, "contact_owner_email": "o@x.com"},
        )
    }


@pytest.mark.parametrize("clear", [None, "null"])
async def test_owner_cleared_by_null_or_the_string(
    fake: FakeRDStation, http: Any, clear: str | None
) -> None:
    fake.add_contact("owned@example.com", contact_owner_email="boss@example.com")
    token = await access(fake, http)
    url = fake.url + FUNNEL.format("email:owned@example.com")
    reply = await send(http, "PUT", url, token=token, json={"contact_owner_email": clear})
    assert reply.status == 200
    assert reply.json()["contact_owner_email"] is None
    assert fake.contact("owned@example.com").contact_owner_email is None
    assert fake.puts["owned@example.com"] == ({"contact_owner_email": clear},)


async def test_missing_owner_can_be_omitted(http: Any, clock: Clock) -> None:
    async with FakeRDStation(**CLIENT, missing_owner="omit", clock=clock) as fake:
        fake.add_contact("a@example.com", fit="A", extra={"name": "Ana", "origin": "x"})
        token = await access(fake, http)
        reply = await send(
            http, "GET", fake.url + FUNNEL.format("email:a@example.com"), token=token
        )
        assert reply.json() == {
            "lifecycle_stage": "Lead",
            "opportunity": False,
            "fit": "A",
            "interest": 0,
            "name": "Ana",
            "origin": "x",
        }


STAGE_OPTIONS = (
    "invalid options for lifecycle_stage, the valid options are: 'Lead', 'Qualified Lead', 'Client'"
)


@pytest.mark.parametrize(
    ("body", "field", "error_type"),
    [
        ({"lifecycle_stage": None}, "lifecycle_stage", "CANNOT_BE_NULL"),
        ({"lifecycle_stage": 3}, "lifecycle_stage", "MUST_BE_STRING"),
        ({"lifecycle_stage": "L" * 51}, "lifecycle_stage", "MUST_BE_LESS_THAN_OR_EQUAL"),
        ({"lifecycle_stage": "lead"}, "lifecycle_stage", "MUST_BE_VALID_OPTION"),
        ({"opportunity": None}, "opportunity", "CANNOT_BE_NULL"),
        ({"opportunity": "true"}, "opportunity", "MUST_BE_BOOLEAN"),
        ({"contact_owner_email": 7}, "contact_owner_email", "MUST_BE_STRING"),
        (
            {"contact_owner_email": "a" * 90 + "@example.com"},
            "contact_owner_email",
            "MUST_BE_LESS_THAN_OR_EQUAL",
        ),
        ({"contact_owner_email": "not an email"}, "contact_owner_email", "INVALID_EMAIL_FORMAT"),
    ],
)
async def test_put_validation_errors(
    fake: FakeRDStation, http: Any, body: dict[str, Any], field: str, error_type: str
) -> None:
    token = await access(fake, http)
    reply = await send(
        http, "PUT", fake.url + FUNNEL.format("email:ana@example.com"), token=token, json=body
    )
    assert reply.status == 400
    errors = reply.json()["errors"]
    assert list(errors) == [field]
    assert [e["error_type"] for e in errors[field]] == [error_type]
    error = reply.error()
    assert isinstance(error, BadRequestError)
    assert error.details[field][0]["error_type"] == error_type
    assert fake.contact("ana@example.com").lifecycle_stage == "Lead"
    assert fake.puts == {}


async def test_put_validation_reports_every_field(fake: FakeRDStation, http: Any) -> None:
    token = await access(fake, http)
    body = {"lifecycle_stage": "Customer", "opportunity": 1}
    reply = await send(
        http, "PUT", fake.url + FUNNEL.format("email:ana@example.com"), token=token, json=body
    )
    assert reply.json() == {
        "errors": {
            "lifecycle_stage": [
                {"error_type": "MUST_BE_VALID_OPTION", "error_message": STAGE_OPTIONS}
            ],
            "opportunity": [
                {"error_type": "MUST_BE_BOOLEAN", "error_message": "opportunity must be a boolean"}
            ],
        }
    }


async def test_invalid_user_when_users_are_known(http: Any, clock: Clock) -> None:
    async with FakeRDStation(**CLIENT, users=["Boss@Example.com"], clock=clock) as fake:
        fake.add_contact("a@example.com")
        token = await access(fake, http)
        url = fake.url + FUNNEL.format("email:a@example.com")
        bad = await send(
            http, "PUT", url, token=token, json={"contact_owner_email": "x@example.com"}
        )
        assert bad.json() == {
            "errors": {
                "contact_owner_email": [
                    {
                        "error_type": "INVALID_USER",
                        "error_message": "The user x@example.com was not found in your account.",
                    }
                ]
            }
        }
        good = await send(
            http, "PUT", url, token=token, json={"contact_owner_email": "boss@example.com"}
        )
        assert good.status == 200


async def test_put_body_problems(fake: FakeRDStation, http: Any) -> None:
    token = await access(fake, http)
    url = fake.url + FUNNEL.format("email:ana@example.com")
    as_text = await send(http, "PUT", url, token=token, data=b'{"opportunity": true}')
    assert as_text.status == 415
    assert as_text.json()["errors"]["error_type"] == "UNSUPPORTED_MEDIA_TYPE"
    json_type = {"Content-Type": "application/json"}
    broken = await send(http, "PUT", url, token=token, data=b"{nope", headers=json_type)
    assert broken.status == 400
    for body in (b"[]", b"{}", b'{"name": "x"}'):
        reply = await send(http, "PUT", url, token=token, data=body, headers=json_type)
        assert reply.status == 400, body
    assert fake.puts == {}


async def test_unknown_contact_is_404_and_tried_once(fake: FakeRDStation, http: Any) -> None:
    token = await access(fake, http)
    for segment in ("email:nobody@example.com", "uuid:5f0c1c4e-0000-4000-8000-0000000000ff"):
        calls: list[tuple[str, dict[str, Any]]] = [
            ("GET", {}),
            ("PUT", {"json": {"opportunity": True}}),
        ]
        for method, kwargs in calls:
            url = fake.url + FUNNEL.format(segment)
            reply = await send(http, method, url, token=token, **kwargs)
            assert reply.status == 404
            assert reply.json() == NOT_FOUND_BODY
            assert isinstance(reply.error(), NotFoundError)
    assert fake.stats.count("funnels.get", 404) == 2
    assert fake.stats.count("funnels.put", 404) == 2
    assert "nobody@example.com" not in fake.contacts


async def test_auto_create_on_first_touch(http: Any, clock: Clock) -> None:
    async with FakeRDStation(**CLIENT, auto_create=True, clock=clock) as fake:
        token = await access(fake, http)
        url = fake.url + FUNNEL.format("email:new@example.com")
        reply = await send(http, "PUT", url, token=token, json={"lifecycle_stage": "Client"})
        assert reply.status == 200
        assert fake.contact("new@example.com").lifecycle_stage == "Client"
        by_uuid = fake.url + FUNNEL.format("uuid:5f0c1c4e-0000-4000-8000-0000000000ff")
        assert (await send(http, "GET", by_uuid, token=token)).status == 404
        not_email = fake.url + FUNNEL.format("email:no-at-sign")
        assert (await send(http, "GET", not_email, token=token)).status == 404


@pytest.mark.parametrize(
    "email",
    [
        "a+tag@example.com",
        "we/ird@example.com",
        "josé.ñandú@exämple.com",
        "per%cent?q#h@example.com",
    ],
)
async def test_path_values_round_trip(fake: FakeRDStation, http: Any, email: str) -> None:
    fake.add_contact(email)
    token = await access(fake, http)
    segment = "email:" + quote(email, safe="@+")
    url = fake.url + FUNNEL.format(segment)
    reply = await send(http, "PUT", url, token=token, encoded=True, json={"opportunity": True})
    assert reply.status == 200
    assert fake.contact(email).opportunity is True
    assert fake.puts[email] == ({"opportunity": True},)
    contact = await send(
        http, "GET", fake.url + "/platform/contacts/" + segment, token=token, encoded=True
    )
    assert contact.json() == {"uuid": fake.contact(email).uuid, "email": email}


async def test_plus_is_never_a_space(fake: FakeRDStation, http: Any) -> None:
    fake.add_contact("a+b@example.com")
    token = await access(fake, http)
    url = fake.url + FUNNEL.format("email:a+b@example.com")
    assert (await send(http, "GET", url, token=token, encoded=True)).status == 200
    spaced = fake.url + FUNNEL.format("email:a%20b@example.com")
    assert (await send(http, "GET", spaced, token=token, encoded=True)).status == 404


async def test_other_routes(fake: FakeRDStation, http: Any) -> None:
    token = await access(fake, http)
    info = await send(http, "GET", fake.url + "/marketing/account_info", token=token)
    assert info.json() == {"name": "rdfunnel fake account"}
    contact = await send(
        http, "GET", fake.url + "/platform/contacts/email:ana@example.com", token=token
    )
    assert contact.json() == {
        "uuid": "5f0c1c4e-0000-4000-8000-000000000001",
        "email": "ana@example.com",
    }
    other_funnel = fake.url + "/platform/contacts/email:ana@example.com/funnels/other"
    assert (await send(http, "GET", other_funnel, token=token)).status == 404
    assert (await send(http, "GET", fake.url + "/nowhere", token=token)).status == 404
    url = fake.url + FUNNEL.format("email:ana@example.com")
    assert (await send(http, "POST", url, token=token, json={})).status == 405
    stats = fake.stats
    assert stats.count("account_info", 200) == 1
    assert stats.count("contacts.get", 200) == 1
    assert stats.count("funnels.get", 404) == 1
    assert stats.count("unknown") == 2


# -- views, seeding, config ------------------------------------------------------------------


async def test_views_are_read_only_snapshots(fake: FakeRDStation, http: Any) -> None:
    contacts = fake.contacts
    with pytest.raises(TypeError):
        contacts["x"] = contacts["ana@example.com"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        contacts["ana@example.com"].opportunity = True  # type: ignore[misc]
    token = await access(fake, http)
    stats = fake.stats
    with pytest.raises(TypeError):
        stats.requests[("x", 1)] = 1  # type: ignore[index]
    url = fake.url + FUNNEL.format("email:ana@example.com")
    await send(http, "PUT", url, token=token, json={"opportunity": True})
    assert contacts["ana@example.com"].opportunity is False  # the old snapshot did not move
    assert stats.count() == 1
    assert fake.stats.count() == 2
    fake.reset_stats()
    assert fake.stats.count() == 0
    assert isinstance(fake.puts["ana@example.com"], tuple)


def test_seeded_contacts_are_deterministic() -> None:
    first = FakeRDStation(contacts=3)
    second = FakeRDStation(contacts=3)
    assert list(first.contacts) == [f"contact-{i}@example.com" for i in range(3)]
    assert first.contacts == second.contacts
    assert first.contact("contact-1@example.com") == FakeContact(
        "contact-1@example.com",
        first.contact("contact-1@example.com").uuid,
        "Lead",
        False,
        None,
        0,
        0,
    )
    assert (
        first.contact(first.contact("contact-2@example.com").uuid).email == "contact-2@example.com"
    )
    with pytest.raises(KeyError):
        first.contact("nobody@example.com")
    with pytest.raises(ValueError, match="already"):
        first.add_contact("CONTACT-0@example.com")
    with pytest.raises(ValueError, match="lifecycle_stage"):
        first.add_contact("x@example.com", lifecycle_stage="Customer")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="sum"):
        Faults(html_502=0.6, drop=0.6)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Faults(json_500=1.5)
    with pytest.raises(ValueError, match="per_contact"):
        Limits(per_contact=-1)
    with pytest.raises(ValueError, match="window"):
        Limits(window=0)
    assert not Faults().active
    assert Faults(latency=0.01).active
    with pytest.raises(RuntimeError, match="not running"):
        _ = FakeRDStation().url


async def test_plugin_fixture_runs_a_fake(rdstation_fake: FakeRDStation, http: Any) -> None:  # noqa: F811
    token = rdstation_fake.issue_access_token()
    reply = await send(http, "GET", rdstation_fake.url + "/marketing/account_info", token=token)
    assert reply.status == 200


@pytest.fixture
def marked(request: pytest.FixtureRequest) -> None:
    # Applied at run time: the marker is registered only when the plugin is installed.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        request.applymarker(pytest.mark.rdstation_fake(auto_create=True, contacts=2))


async def test_plugin_marker_passes_options(
    marked: None,
    rdstation_fake: FakeRDStation,  # noqa: F811
) -> None:
    assert len(rdstation_fake.contacts) == 2
    assert rdstation_fake.url.startswith("http://127.0.0.1:")


# -- in flight, request ids, TLS -------------------------------------------------------------


async def test_max_in_flight_counts_requests_handled_at_once(http: Any) -> None:
    async with FakeRDStation(contacts=5, faults=Faults(latency=0.05)) as fake:
        token = fake.issue_access_token()
        urls = [fake.url + FUNNEL.format(f"email:contact-{i}@example.com") for i in range(5)]
        replies = await asyncio.gather(*(send(http, "GET", url, token=token) for url in urls))
        assert [reply.status for reply in replies] == [200] * 5
        assert fake.stats.max_in_flight == 5
        await send(http, "GET", urls[0], token=token)
        assert fake.stats.max_in_flight == 5  # the most at once, not the latest
        fake.reset_stats()
        assert fake.stats.max_in_flight == 0
        await send(http, "GET", urls[0], token=token)
        assert fake.stats.max_in_flight == 1


async def test_every_answer_carries_its_own_request_id(fake: FakeRDStation, http: Any) -> None:
    token = await access(fake, http)
    found = await send(http, "GET", fake.url + FUNNEL.format("email:ana@example.com"), token=token)
    missing = await send(http, "GET", fake.url + FUNNEL.format("email:no@example.com"), token=token)
    refused = await send(http, "POST", fake.url + "/auth/token", json={"refresh_token": "x"})
    ids = [reply.headers.get("X-Request-Id") for reply in (found, missing, refused)]
    assert all(ids) and len(set(ids)) == 3
    error = missing.error()
    assert isinstance(error, NotFoundError) and error.request_id == ids[1]


async def test_the_fake_serves_tls_with_the_context_given(
    server_ssl: ssl.SSLContext, trusting: ssl.SSLContext, http: Any
) -> None:
    async with FakeRDStation(ssl=server_ssl) as fake:
        assert fake.url.startswith("https://127.0.0.1:")
        async with http.get(fake.url + "/marketing/account_info", ssl=trusting) as reply:
            assert reply.status == 401  # over TLS, verified against the test CA
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.get(fake.url + "/marketing/account_info"):
                pass
