"""OAuth and the token manager end to end against FakeRDStation: real sockets, real token flow."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from rdfunnel import FileTokenStore, MemoryTokenStore, RDStation, RetryPolicy, Token
from rdfunnel.errors import ExpiredCodeGrantError, InvalidRefreshTokenError
from rdfunnel.oauth import authorization_url, exchange_code
from rdfunnel.testing import FakeRDStation

from .conftest import VirtualClock

FAST = RetryPolicy(max_retries=3, backoff_base=0.001, backoff_cap=0.01)


async def consent(fake: FakeRDStation, redirect_uri: str) -> tuple[str, str]:
    """Walk the consent page as a browser would; return the code and the state sent back."""
    url, state = authorization_url(fake.client_id, redirect_uri, base_url=fake.url)
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, allow_redirects=False) as response,
    ):
        assert response.status in (302, 303)
        location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect_uri
    query = parse_qs(location.query)
    assert query["state"] == [state]
    return query["code"][0], state


async def test_code_exchange_end_to_end_through_the_dialog(tmp_path: Path) -> None:
    async with FakeRDStation(contacts=1) as fake:
        code, _ = await consent(fake, "http://127.0.0.1:9/callback")
        token = await exchange_code(
            code, client_id=fake.client_id, client_secret=fake.client_secret, base_url=fake.url
        )
        assert token.refresh_token and token.expires_at is not None
        with pytest.raises(ExpiredCodeGrantError):  # codes are single-use
            await exchange_code(
                code, client_id=fake.client_id, client_secret=fake.client_secret, base_url=fake.url
            )
        store = FileTokenStore(tmp_path / "token.json")
        await store.save(token)
        async with RDStation(
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            token_store=store,
            base_url=fake.url,
        ) as rd:
            assert (await rd.funnels.get("contact-0@example.com")).fit == 0
        assert fake.stats.grants == {"code": 1}  # the exchanged token was used, not refreshed


async def test_form_style_token_requests_work_too() -> None:
    async with FakeRDStation(contacts=1) as fake:
        code, _ = await consent(fake, "http://127.0.0.1:9/callback")
        token = await exchange_code(
            code,
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            base_url=fake.url,
            redirect_uri="http://127.0.0.1:9/callback",
            style="form",
        )
        async with fake.client(token=token, token_style="form", retry=FAST) as rd:
            fake.expire_tokens()
            await rd.funnels.get("contact-0@example.com")
        assert fake.stats.grants == {"code": 1, "refresh": 1}


async def test_500_concurrent_calls_after_every_token_expired_cause_one_refresh() -> None:
    async with FakeRDStation(contacts=500) as fake, fake.client(retry=FAST) as rd:
        await rd.funnels.get("contact-0@example.com")
        fake.expire_tokens()
        fake.reset_stats()
        results = await asyncio.gather(
            *(rd.funnels.get(f"contact-{i}@example.com") for i in range(500))
        )
        assert len(results) == 500
        assert fake.stats.grants == {"refresh": 1}
        assert fake.stats.count("funnels.get", 200) == 500


async def test_a_token_due_for_refresh_is_renewed_once_under_load_and_saved(
    clock: VirtualClock,
) -> None:
    store = MemoryTokenStore()
    async with FakeRDStation(contacts=50, rotate_refresh_tokens=True) as fake:
        async with fake.client(token_store=store, retry=FAST, clock=clock) as rd:
            await rd.funnels.get("contact-0@example.com")
            first = await store.load()
            assert first is not None and first.expires_at is not None
            # The client's clock reaches the leeway: the token is due, and still good at RD.
            due = first.expires_at.timestamp() - 60
            clock.now += due - clock.time()
            fake.reset_stats()
            await asyncio.gather(*(rd.funnels.get(f"contact-{i}@example.com") for i in range(50)))
            assert fake.stats.count("funnels.get", 200) == 50
            assert fake.stats.count("auth.token", 401) == 0
        # One refresh for the due token, and its rotated refresh token is the one stored.
        assert fake.stats.grants == {"refresh": 1}
        renewed = await store.load()
        assert renewed is not None and renewed.refresh_token != first.refresh_token
        async with fake.client(token=renewed, retry=FAST) as again:
            fake.expire_tokens()
            await again.funnels.get("contact-0@example.com")
        assert fake.stats.count("auth.token", 401) == 0


async def test_rotating_refresh_tokens_through_five_expiries_under_load() -> None:
    store = MemoryTokenStore()
    async with FakeRDStation(contacts=50, rotate_refresh_tokens=True) as fake:
        async with fake.client(token_store=store, retry=FAST) as rd:
            for _ in range(5):
                fake.expire_tokens()
                await asyncio.gather(
                    *(rd.funnels.get(f"contact-{i}@example.com") for i in range(50))
                )
            stored = await store.load()
        assert fake.stats.grants == {"refresh": 5}  # one per expiry (the first: the first use)
        assert fake.stats.count("auth.token", 401) == 0  # never locked out
        # The store holds the one refresh token the fake still accepts: it works once more.
        assert stored is not None and stored.refresh_token is not None
        async with fake.client(token=stored, retry=FAST) as again:
            fake.expire_tokens()
            await again.funnels.get("contact-0@example.com")
        assert fake.stats.count("auth.token", 401) == 0


async def test_a_revoked_refresh_token_asks_the_token_endpoint_once() -> None:
    async with FakeRDStation(contacts=20) as fake, fake.client(retry=FAST) as rd:
        await rd.funnels.get("contact-0@example.com")
        await rd.revoke()
        fake.reset_stats()
        outcomes = await asyncio.gather(
            *(rd.funnels.get(f"contact-{i}@example.com") for i in range(20)),
            return_exceptions=True,
        )
        assert all(isinstance(outcome, InvalidRefreshTokenError) for outcome in outcomes)
        assert "authorize" in str(outcomes[0])
        assert fake.stats.count("auth.token") == 1
        with pytest.raises(InvalidRefreshTokenError):
            await rd.funnels.get("contact-0@example.com")
        assert fake.stats.count("auth.token") == 1  # refused once is refused for good


async def test_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async with FakeRDStation(contacts=1) as fake:
        monkeypatch.setenv("RDSTATION_CLIENT_ID", fake.client_id)
        monkeypatch.setenv("RDSTATION_CLIENT_SECRET", fake.client_secret)
        monkeypatch.setenv("RDSTATION_REFRESH_TOKEN", fake.refresh_token)
        monkeypatch.setenv("RDSTATION_BASE_URL", fake.url)
        monkeypatch.setenv("RDFUNNEL_TOKEN_FILE", str(tmp_path / "token.json"))
        async with RDStation.from_env(retry=FAST) as rd:
            await rd.funnels.get("contact-0@example.com")
        saved = await FileTokenStore(tmp_path / "token.json").load()
        assert isinstance(saved, Token)
        assert (tmp_path / "token.json").stat().st_mode & 0o777 == 0o600


async def test_no_secret_reaches_the_logs_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    async with FakeRDStation(contacts=1) as fake:
        with caplog.at_level(logging.DEBUG):
            async with fake.client(retry=FAST) as rd:
                await rd.funnels.get("contact-0@example.com")
                fake.expire_tokens()
                await rd.funnels.get("contact-0@example.com")
                token = rd._tokens.token  # type: ignore[attr-defined]
                shown = [repr(rd), str(rd), repr(rd._tokens), repr(token)]
        secrets = [fake.client_secret, fake.refresh_token, token.access_token, token.refresh_token]
        text = "\n".join([record.getMessage() for record in caplog.records] + shown)
        assert "access token refreshed" in text
        assert not [secret for secret in secrets if secret and secret in text]


def test_credentials_must_come_in_pairs() -> None:
    with pytest.raises(ValueError, match="client_id and client_secret go together"):
        RDStation(client_id="x", refresh_token="r")
    with pytest.raises(ValueError, match="needs a token to start from"):
        RDStation(client_id="x", client_secret="y")
    with pytest.raises(ValueError, match="needs the app's client_id"):
        RDStation(access_token="a", refresh_token="r")
