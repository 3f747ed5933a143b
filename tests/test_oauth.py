"""OAuth requests on the wire (aioresponses): exact bodies in both styles, URLs, error mapping."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from rdfunnel.errors import (
    APIError,
    ExpiredCodeGrantError,
    InvalidCredentialsError,
    InvalidRefreshTokenError,
    RequestTimeoutError,
    ServerError,
    TransportError,
    ValidationError,
)
from rdfunnel.oauth import OAuthApp, authorization_url, exchange_code
from rdfunnel.tokens import Token

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
BASE = "https://api.rd.services"
TOKEN_URL = f"{BASE}/auth/token"
SECRET = "client-secret-xyz"
ANSWER = {"access_token": "access-1", "expires_in": 86400, "refresh_token": "refresh-1"}
TOKEN = Token(
    access_token="access-1", refresh_token="refresh-1", expires_at=NOW + timedelta(days=1)
)


class FrozenClock:
    """Always ``NOW``: the tokens these tests get expire at a known time."""

    def time(self) -> float:
        return NOW.timestamp()

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("a single token request never waits")


FROZEN = FrozenClock()


@pytest.fixture
def mocked(wire: aioresponses) -> aioresponses:
    """conftest's ``wire``: aioresponses, patched for the installed aiohttp."""
    return wire


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def app(style: Any = "json") -> OAuthApp:
    return OAuthApp.for_base_url("my-client", SECRET, style=style)


def sent(m: aioresponses, url: str, method: str = "POST") -> list[dict[str, Any]]:
    return [call.kwargs for call in m.requests[(method, URL(url))]]


class TestAuthorizationUrl:
    def test_contents(self) -> None:
        url, state = authorization_url("my-client", "https://app.example/cb?x=1", "st4te")
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc, parts.path) == (
            "https",
            "api.rd.services",
            "/auth/dialog",
        )
        assert parse_qs(parts.query) == {
            "response_type": ["code"],
            "client_id": ["my-client"],
            "redirect_uri": ["https://app.example/cb?x=1"],
            "state": ["st4te"],
        }
        assert state == "st4te"

    def test_generates_an_unguessable_state(self) -> None:
        url1, state1 = authorization_url("c", "https://app.example/cb")
        _, state2 = authorization_url("c", "https://app.example/cb")
        assert len(state1) >= 30
        assert state1 != state2
        assert parse_qs(urlsplit(url1).query)["state"] == [state1]

    def test_endpoint_derives_from_base_url_or_is_overridden(self) -> None:
        url, _ = authorization_url("c", "https://a/cb", "s", base_url="http://127.0.0.1:8080/")
        assert url.startswith("http://127.0.0.1:8080/auth/dialog?")
        url, _ = authorization_url(
            "c", "https://a/cb", "s", authorize_url="https://accounts.rdstation.com/oauth/authorize"
        )
        assert url.startswith("https://accounts.rdstation.com/oauth/authorize?response_type=code&")
        url, _ = app().authorization_url("https://a/cb", "s")
        assert url.startswith(f"{BASE}/auth/dialog?")

    def test_plain_http_only_for_loopback(self) -> None:
        with pytest.raises(ValidationError, match="https"):
            authorization_url("c", "https://a/cb", base_url="http://example.com")
        for base in ("http://localhost:1", "http://[::1]:2", "http://127.0.0.5"):
            OAuthApp.for_base_url("c", "s", base)
        with pytest.raises(ValidationError, match="token_url"):
            OAuthApp.for_base_url("c", "s", token_url="http://evil.example/token")


class TestOAuthApp:
    def test_urls_derive_from_base_url_and_can_be_overridden(self) -> None:
        a = OAuthApp.for_base_url("c", "s", "https://rd.example/")
        assert (a.token_url, a.revoke_url, a.authorize_url, a.style) == (
            "https://rd.example/auth/token",
            "https://rd.example/auth/revoke",
            "https://rd.example/auth/dialog",
            "json",
        )
        b = OAuthApp.for_base_url(
            "c", "s", token_url="https://accounts.example/oauth2/token", style="form"
        )
        assert b.token_url == "https://accounts.example/oauth2/token"
        assert b.revoke_url == f"{BASE}/auth/revoke"
        with pytest.raises(ValueError, match="style"):
            OAuthApp.for_base_url("c", "s", style="xml")  # type: ignore[arg-type]

    def test_repr_hides_the_secret(self) -> None:
        assert SECRET not in repr(app())
        assert "my-client" in repr(app())


class TestJsonStyle:
    async def test_exchange_code(
        self, mocked: aioresponses, session: aiohttp.ClientSession
    ) -> None:
        mocked.post(f"{TOKEN_URL}?token_by=code", payload=ANSWER)
        got = await app().exchange_code(
            session, "the-code", redirect_uri="https://a/cb", clock=FROZEN
        )
        assert got == TOKEN
        [call] = sent(mocked, f"{TOKEN_URL}?token_by=code")
        assert json.loads(call["data"]) == {
            "client_id": "my-client",
            "client_secret": SECRET,
            "code": "the-code",
        }
        assert call["headers"]["Content-Type"] == "application/json"
        assert call.get("json") is None

    async def test_refresh(self, mocked: aioresponses, session: aiohttp.ClientSession) -> None:
        mocked.post(TOKEN_URL, payload=ANSWER)
        assert await app().refresh(session, "refresh-0", clock=FROZEN) == TOKEN
        [call] = sent(mocked, TOKEN_URL)
        assert json.loads(call["data"]) == {
            "client_id": "my-client",
            "client_secret": SECRET,
            "refresh_token": "refresh-0",
        }

    async def test_refresh_keeps_the_old_refresh_token_when_none_is_returned(
        self, mocked: aioresponses, session: aiohttp.ClientSession
    ) -> None:
        mocked.post(TOKEN_URL, payload={"access_token": "access-2", "expires_in": 86400})
        got = await app().refresh(session, "refresh-0", clock=FROZEN)
        assert (got.access_token, got.refresh_token) == ("access-2", "refresh-0")

    async def test_existing_query_in_token_url_is_kept(
        self, mocked: aioresponses, session: aiohttp.ClientSession
    ) -> None:
        a = OAuthApp.for_base_url("c", "s", token_url=f"{TOKEN_URL}?tenant=7")
        mocked.post(f"{TOKEN_URL}?tenant=7&token_by=code", payload=ANSWER)
        assert await a.exchange_code(session, "code", clock=FROZEN) == TOKEN


class TestFormStyle:
    async def test_exchange_code(
        self, mocked: aioresponses, session: aiohttp.ClientSession
    ) -> None:
        mocked.post(TOKEN_URL, payload=ANSWER)
        got = await app("form").exchange_code(
            session, "the code", redirect_uri="https://a/cb", clock=FROZEN
        )
        assert got == TOKEN
        [call] = sent(mocked, TOKEN_URL)
        assert call["data"] == (
            "grant_type=authorization_code&redirect_uri=https%3A%2F%2Fa%2Fcb&code=the+code"
            f"&client_id=my-client&client_secret={SECRET}"
        )
        assert call["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
        assert call.get("json") is None

    async def test_refresh(self, mocked: aioresponses, session: aiohttp.ClientSession) -> None:
        mocked.post(TOKEN_URL, payload=ANSWER)
        assert await app("form").refresh(session, "refresh/0+", clock=FROZEN) == TOKEN
        [call] = sent(mocked, TOKEN_URL)
        assert call["data"] == (
            f"grant_type=refresh_token&refresh_token=refresh%2F0%2B&client_id=my-client"
            f"&client_secret={SECRET}"
        )


async def test_revoke(mocked: aioresponses, session: aiohttp.ClientSession) -> None:
    mocked.post(f"{BASE}/auth/revoke", payload={}, repeat=True)
    await app().revoke(session, "refresh-1")
    await app().revoke(session, "access-1", "access_token")
    first, second = sent(mocked, f"{BASE}/auth/revoke")
    assert first["data"] == "token=refresh-1&token_type_hint=refresh_token"
    assert second["data"] == "token=access-1&token_type_hint=access_token"
    assert first["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


def rd_error(error_type: str) -> dict[str, Any]:
    return {"errors": {"error_type": error_type, "error_message": "Refused."}}


class TestErrors:
    @pytest.mark.parametrize(
        ("error_type", "cls", "hint"),
        [
            ("INVALID_REFRESH_TOKEN", InvalidRefreshTokenError, "authorize the app again"),
            ("ACCESS_DENIED", InvalidCredentialsError, "authorize the app again"),
            ("EXPIRED_CODE_GRANT", ExpiredCodeGrantError, "authorize again"),
        ],
    )
    async def test_terminal_errors_say_to_authorize_again(
        self,
        mocked: aioresponses,
        session: aiohttp.ClientSession,
        error_type: str,
        cls: type[APIError],
        hint: str,
    ) -> None:
        mocked.post(TOKEN_URL, status=401, payload=rd_error(error_type))
        with pytest.raises(cls) as caught:
            await app().refresh(session, "refresh-0", clock=FROZEN)
        error = caught.value
        assert type(error) is cls
        assert error.status == 401
        assert error.error_type == error_type
        assert "Refused." in str(error)
        assert hint in str(error)
        assert "refresh-0" not in str(error)
        assert SECRET not in str(error)

    async def test_server_error_with_html(
        self, mocked: aioresponses, session: aiohttp.ClientSession
    ) -> None:
        mocked.post(TOKEN_URL, status=502, body="<!DOCTYPE html>RD Station fora do ar")
        with pytest.raises(ServerError) as caught:
            await app().refresh(session, "refresh-0", clock=FROZEN)
        assert caught.value.retryable
        assert "fora do ar" in caught.value.body

    async def test_network_failures(
        self, mocked: aioresponses, session: aiohttp.ClientSession
    ) -> None:
        mocked.post(TOKEN_URL, exception=aiohttp.ClientConnectionError("reset"))
        mocked.post(TOKEN_URL, exception=TimeoutError())
        mocked.post(TOKEN_URL, exception=aiohttp.ServerTimeoutError("slow"))
        with pytest.raises(TransportError) as caught:
            await app().refresh(session, "refresh-0", clock=FROZEN)
        assert not isinstance(caught.value, RequestTimeoutError)
        assert caught.value.retryable
        for _ in range(2):
            with pytest.raises(RequestTimeoutError):
                await app().refresh(session, "refresh-0", clock=FROZEN)

    async def test_every_request_carries_the_app_s_timeout(
        self, mocked: aioresponses, session: aiohttp.ClientSession
    ) -> None:
        mocked.post(TOKEN_URL, payload=ANSWER, repeat=True)
        await app().refresh(session, "refresh-0", clock=FROZEN)
        await OAuthApp.for_base_url("my-client", SECRET, timeout=7.5).refresh(
            session, "r", clock=FROZEN
        )
        timeouts = [call.kwargs["timeout"] for call in mocked.requests[("POST", URL(TOKEN_URL))]]
        assert timeouts == [aiohttp.ClientTimeout(total=30.0), aiohttp.ClientTimeout(total=7.5)]

    @pytest.mark.parametrize(
        "body", ["not json refresh-9", '["refresh-9"]', '{"refresh_token": "refresh-9"}']
    )
    async def test_an_answer_without_a_token_is_an_error_that_echoes_nothing(
        self, mocked: aioresponses, session: aiohttp.ClientSession, body: str
    ) -> None:
        mocked.post(TOKEN_URL, status=200, body=body)
        with pytest.raises(APIError, match="holds no access token") as caught:
            await app().refresh(session, "refresh-0", clock=FROZEN)
        assert "refresh-9" not in str(caught.value)
        assert caught.value.body == ""


class TestModuleExchangeCode:
    async def test_with_a_temporary_session(self, mocked: aioresponses) -> None:
        mocked.post(f"{TOKEN_URL}?token_by=code", payload=ANSWER)
        got = await exchange_code(
            "the-code", client_id="my-client", client_secret=SECRET, clock=FROZEN
        )
        assert got == TOKEN
        [call] = sent(mocked, f"{TOKEN_URL}?token_by=code")
        assert json.dumps(json.loads(call["data"]), sort_keys=True) == json.dumps(
            {"client_id": "my-client", "client_secret": SECRET, "code": "the-code"},
            sort_keys=True,
        )

    async def test_with_the_callers_session_left_open(
        self, mocked: aioresponses, session: aiohttp.ClientSession
    ) -> None:
        url = "https://accounts.example/oauth2/token"
        mocked.post(url, payload=ANSWER)
        got = await exchange_code(
            "c0de",
            client_id="my-client",
            client_secret=SECRET,
            redirect_uri="https://a/cb",
            token_url=url,
            style="form",
            session=session,
            clock=FROZEN,
        )
        assert got == TOKEN
        assert not session.closed
        [call] = sent(mocked, url)
        assert call["data"].startswith("grant_type=authorization_code&redirect_uri=")
