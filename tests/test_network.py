"""Proxies, TLS and the connection pool, against a real forward proxy and the fake over TLS.

The fake serves a certificate from a test CA (trustme) for ``127.0.0.1`` and ``rd.test``, a name
only the proxy resolves: a request to ``rd.test`` that succeeds went through the proxy.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import trustme

from rdfunnel import FunnelUpdate, RDStation, RetryPolicy
from rdfunnel.errors import (
    CertificateError,
    RequestTimeoutError,
    TransportError,
    ValidationError,
)
from rdfunnel.oauth import authorization_url, exchange_code
from rdfunnel.testing import FakeRDStation, Faults

from .proxy import ForwardProxy

FAST = RetryPolicy(max_retries=3, backoff_base=0.001, backoff_cap=0.01)
CONTACT = "contact-0@example.com"


@pytest.fixture
async def tls_fake(server_ssl: ssl.SSLContext) -> AsyncIterator[FakeRDStation]:
    async with FakeRDStation(contacts=3, ssl=server_ssl) as fake:
        yield fake


def behind_proxy(fake: FakeRDStation) -> str:
    """The fake's URL under the name only the proxy knows."""
    return fake.url.replace("127.0.0.1", "rd.test")


# -- TLS -------------------------------------------------------------------------------------


async def test_api_and_token_requests_verify_against_the_given_ca(
    tls_fake: FakeRDStation, trusting: ssl.SSLContext
) -> None:
    assert tls_fake.url.startswith("https://127.0.0.1:")
    async with tls_fake.client(ssl=trusting) as rd:
        assert (await rd.funnels.get(CONTACT)).fit == 0
    assert tls_fake.stats.count("auth.token", 200) == 1
    assert tls_fake.stats.count("funnels.get", 200) == 1


@pytest.mark.parametrize("trust", ["another CA", "the system's CAs"])
async def test_a_certificate_from_an_untrusted_ca_fails_at_once_saying_so(
    tls_fake: FakeRDStation, trust: str
) -> None:
    context = None
    if trust == "another CA":
        context = ssl.create_default_context()
        trustme.CA().configure_trust(context)
    token = tls_fake.issue_access_token()
    async with RDStation(access_token=token, base_url=tls_fake.url, ssl=context, retry=FAST) as rd:
        with pytest.raises(CertificateError) as caught:
            await rd.funnels.get(CONTACT)
    error = caught.value
    assert isinstance(error, TransportError)
    assert "certificate" in str(error)
    assert "could not be verified" in str(error)
    assert "ssl.create_default_context(cafile=" in str(error)
    assert CONTACT not in str(error) and "c***@example.com" in str(error)
    assert error.attempts == 1  # no retry can help
    assert error.terminal  # a bulk run stops on it
    assert tls_fake.stats.count() == 0  # no request got past the handshake


async def test_token_requests_meet_the_same_certificate_check(tls_fake: FakeRDStation) -> None:
    async with tls_fake.client(retry=FAST) as rd:
        with pytest.raises(CertificateError, match="certificate") as caught:
            await rd.funnels.get(CONTACT)
    assert "/auth/token" in str(caught.value)
    assert tls_fake.client_secret not in str(caught.value)


async def test_ssl_false_skips_the_checks_for_a_loopback_host(tls_fake: FakeRDStation) -> None:
    async with tls_fake.client(ssl=False) as rd:
        assert (await rd.funnels.get(CONTACT)).fit == 0


@pytest.mark.parametrize(
    "settings",
    [
        {"base_url": "https://api.rd.services"},
        {"base_url": "http://127.0.0.1:9", "token_url": "https://accounts.rd.example/token"},
    ],
)
def test_ssl_false_is_refused_for_any_other_host(settings: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="only for loopback hosts"):
        RDStation(access_token="t", ssl=False, **settings)


@pytest.mark.parametrize("value", ["yes", 1, "/etc/ssl/ca.pem"])
def test_ssl_must_be_a_context_or_false(value: object) -> None:
    with pytest.raises(ValidationError, match=r"ssl must be an ssl\.SSLContext"):
        RDStation(access_token="t", ssl=value)  # type: ignore[arg-type]


# -- proxies ---------------------------------------------------------------------------------


async def test_api_and_token_requests_go_through_the_proxy_over_tls(
    tls_fake: FakeRDStation, trusting: ssl.SSLContext, proxy: ForwardProxy
) -> None:
    base = behind_proxy(tls_fake)
    async with tls_fake.client(base_url=base, proxy=proxy.url, ssl=trusting) as rd:
        await rd.funnels.get(CONTACT)
        await rd.funnels.update(CONTACT, lifecycle_stage="Client")
    assert tls_fake.stats.count("auth.token", 200) == 1
    assert tls_fake.stats.count("funnels.put", 200) == 1
    assert proxy.tunnels and set(proxy.tunnels) == {base.removeprefix("https://")}


async def test_plain_http_requests_go_through_the_proxy(proxy: ForwardProxy) -> None:
    async with FakeRDStation(contacts=1) as fake, fake.client(proxy=proxy.url) as rd:
        await rd.funnels.get(CONTACT)
        url = fake.url
    assert proxy.requests == [
        f"POST {url}/auth/token",
        f"GET {url}/platform/contacts/email:{CONTACT}/funnels/default",
    ]


async def test_a_proxy_with_credentials_in_its_url(
    tls_fake: FakeRDStation, trusting: ssl.SSLContext
) -> None:
    async with ForwardProxy(hosts={"rd.test": "127.0.0.1"}, credentials=("ana", "s3cret")) as px:
        host = px.url.removeprefix("http://")
        base = behind_proxy(tls_fake)
        async with tls_fake.client(
            base_url=base, proxy=f"http://ana:s3cret@{host}", ssl=trusting
        ) as rd:
            await rd.funnels.get(CONTACT)
        assert px.tunnels
        async with tls_fake.client(
            base_url=base, proxy=f"http://ana:wrong@{host}", ssl=trusting, retry=FAST
        ) as rd:
            with pytest.raises(TransportError, match="proxy") as caught:
                await rd.funnels.get(CONTACT)
        assert "407" in str(caught.value)
        assert "wrong" not in str(caught.value) and "ana:" not in str(caught.value)
        assert px.refused >= 1


async def test_an_unreachable_proxy_is_a_transport_error_naming_it() -> None:
    async with FakeRDStation(contacts=1) as fake:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        async with fake.client(proxy=f"http://u:pw@127.0.0.1:{port}", retry=FAST) as rd:
            with pytest.raises(TransportError, match="cannot connect to the proxy") as caught:
                await rd.funnels.get(CONTACT)
        assert ":pw@" not in str(caught.value)


async def test_trust_env_reads_https_proxy(
    tls_fake: FakeRDStation,
    trusting: ssl.SSLContext,
    proxy: ForwardProxy,
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("HTTPS_PROXY", proxy.url)
    async with tls_fake.client(base_url=behind_proxy(tls_fake), trust_env=True, ssl=trusting) as rd:
        await rd.funnels.get(CONTACT)
    assert proxy.tunnels


async def test_trust_env_honours_no_proxy(
    proxy: ForwardProxy, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("HTTP_PROXY", proxy.url)
    clean_env.setenv("NO_PROXY", "localhost,127.0.0.1")
    async with FakeRDStation(contacts=1) as fake, fake.client(trust_env=True) as rd:
        await rd.funnels.get(CONTACT)
    assert proxy.requests == []
    assert fake.stats.count("funnels.get", 200) == 1


async def test_an_environment_proxy_without_a_scheme_is_http(
    proxy: ForwardProxy, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("HTTP_PROXY", proxy.url.removeprefix("http://"))
    async with FakeRDStation(contacts=1) as fake, fake.client(trust_env=True) as rd:
        await rd.funnels.get(CONTACT)
    assert len(proxy.requests) == 2


async def test_an_environment_proxy_that_is_not_http_is_refused_naming_the_variable(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("HTTP_PROXY", "socks5://ana:s3cret@proxy.example:1080")
    async with FakeRDStation(contacts=1) as fake, fake.client(trust_env=True) as rd:
        with pytest.raises(ValidationError, match="HTTP_PROXY must name an http") as caught:
            await rd.funnels.get(CONTACT)
        assert fake.stats.count() == 0
    assert "s3cret" not in str(caught.value)


async def test_the_environment_is_ignored_without_trust_env(
    proxy: ForwardProxy, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("HTTP_PROXY", proxy.url)
    async with FakeRDStation(contacts=1) as fake:
        async with fake.client() as rd:
            await rd.funnels.get(CONTACT)
        assert proxy.requests == []
        async with fake.client(trust_env=True) as rd:
            await rd.funnels.get(CONTACT)
        assert len(proxy.requests) == 2  # the token request and the call


async def test_an_explicit_proxy_wins_over_the_environment(
    proxy: ForwardProxy, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    async with (
        FakeRDStation(contacts=1) as fake,
        fake.client(proxy=proxy.url, trust_env=True) as rd,
    ):
        await rd.funnels.get(CONTACT)
    assert len(proxy.requests) == 2


@pytest.mark.parametrize(
    ("proxy", "shown"),
    [
        ("ftp://proxy.example:21", "'ftp://proxy.example:21'"),
        ("proxy.example:3128", "'proxy.example:3128'"),
        ("http://ana:s3cret@proxy.example:port", "'http://***@proxy.example:port'"),
    ],
)
def test_a_proxy_must_be_an_http_url(proxy: str, shown: str) -> None:
    with pytest.raises(ValidationError, match="proxy must be an http") as caught:
        RDStation(access_token="t", proxy=proxy)
    assert shown in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_a_proxy_that_is_not_a_string_is_refused_by_its_type() -> None:
    with pytest.raises(ValidationError, match="got bytes"):
        RDStation(access_token="t", proxy=b"http://ana:s3cret@proxy")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"proxy": "http://proxy.example:3128"}, "proxy="),
        ({"ssl": False}, "ssl="),
        ({"trust_env": True}, "trust_env="),
        ({"connection_limit": 500}, "connection_limit="),
        ({"proxy": "http://p.example", "trust_env": False}, "proxy=, trust_env="),
    ],
)
async def test_network_settings_conflict_with_a_session_of_your_own(
    settings: dict[str, object], named: str
) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValidationError, match="cannot go with session=") as caught:
            RDStation(access_token="t", base_url="http://127.0.0.1:9", session=session, **settings)
    assert str(caught.value).startswith(named + " ")


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_trust_env_is_a_bool(value: object) -> None:
    if value is None:
        RDStation(access_token="t", trust_env=None)
        return
    with pytest.raises(ValidationError, match="trust_env must be True or False"):
        RDStation(access_token="t", trust_env=value)  # type: ignore[arg-type]


# -- exchange_code ---------------------------------------------------------------------------


async def consent_code(fake: FakeRDStation, base_url: str | None = None) -> str:
    redirect_uri = "http://127.0.0.1:9/callback"
    url, _ = authorization_url(fake.client_id, redirect_uri, base_url=fake.url)
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, allow_redirects=False, ssl=False) as response,
    ):
        location = urlsplit(response.headers["Location"])
    return parse_qs(location.query)["code"][0]


async def test_exchange_code_uses_the_proxy_and_the_ca_of_its_own_session(
    tls_fake: FakeRDStation, trusting: ssl.SSLContext, proxy: ForwardProxy
) -> None:
    code = await consent_code(tls_fake)
    token = await exchange_code(
        code,
        client_id=tls_fake.client_id,
        client_secret=tls_fake.client_secret,
        base_url=behind_proxy(tls_fake),
        proxy=proxy.url,
        ssl=trusting,
    )
    assert token.refresh_token
    assert proxy.tunnels == [behind_proxy(tls_fake).removeprefix("https://")]
    assert tls_fake.stats.grants == {"code": 1}


async def test_exchange_code_with_an_untrusted_certificate_says_so(
    tls_fake: FakeRDStation,
) -> None:
    with pytest.raises(CertificateError, match="certificate"):
        await exchange_code(
            "a-code",
            client_id=tls_fake.client_id,
            client_secret=tls_fake.client_secret,
            base_url=tls_fake.url,
        )


async def test_exchange_code_checks_its_network_settings_before_sending() -> None:
    with pytest.raises(ValidationError, match="only for loopback hosts"):
        await exchange_code("c", client_id="i", client_secret="s", ssl=False)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValidationError, match="cannot go with session="):
            await exchange_code(
                "c", client_id="i", client_secret="s", session=session, proxy="http://p.example"
            )


# -- the pool --------------------------------------------------------------------------------


def changes(count: int) -> Iterator[tuple[str, FunnelUpdate]]:
    update = FunnelUpdate(opportunity=True)
    return ((f"contact-{i}@example.com", update) for i in range(count))


async def test_a_bulk_run_of_200_workers_has_200_requests_in_flight() -> None:
    async with (
        FakeRDStation(contacts=600, faults=Faults(latency=0.05)) as fake,
        fake.client(timeout=5.0) as rd,
    ):
        await rd.funnels.get(CONTACT)  # the token first
        fake.reset_stats()
        async with rd.funnels.update_many(changes(600), concurrency=200) as run:
            results = [result async for result in run]
    assert all(result.ok for result in results), {str(r.error) for r in results if not r.ok}
    assert run.summary.retries == 0
    assert fake.stats.max_in_flight == 200  # the fake's own count: none queued for a socket
    assert fake.stats.count("funnels.put", 200) == 600


async def test_waiting_for_a_pooled_connection_does_not_count_against_the_timeout() -> None:
    # 60 requests of 20 ms through 3 connections: the last waits ~0.4 s for one, twice the
    # per-attempt timeout, and none of them times out.
    async with (
        FakeRDStation(contacts=60, faults=Faults(latency=0.02)) as fake,
        fake.client(timeout=0.2, connection_limit=3, retry=RetryPolicy(max_retries=0)) as rd,
    ):
        await rd.funnels.get(CONTACT)
        fake.reset_stats()
        async with rd.funnels.update_many(changes(60), concurrency=60) as run:
            results = [result async for result in run]
    assert all(result.ok for result in results), {str(r.error) for r in results if not r.ok}
    assert fake.stats.max_in_flight == 3


@pytest.mark.parametrize("limit", [0, -1, 2.5, True, "8"])
def test_connection_limit_is_a_whole_number(limit: object) -> None:
    with pytest.raises(ValidationError, match="connection_limit must be a whole number >= 1"):
        RDStation(access_token="t", connection_limit=limit)  # type: ignore[arg-type]


async def test_a_timeout_of_the_attempt_still_names_its_seconds() -> None:
    async with (
        FakeRDStation(contacts=1) as fake,
        fake.client(timeout=0.05, retry=RetryPolicy(max_retries=0)) as rd,
    ):
        await rd.funnels.get(CONTACT)
        fake.faults = Faults(slow=1.0, slow_seconds=5)
        with pytest.raises(RequestTimeoutError, match=r"got no answer within 0\.05 s"):
            await rd.funnels.get(CONTACT)


async def test_the_session_rdfunnel_opens_has_room_for_256_connections() -> None:
    from rdfunnel._network import DEFAULT_CONNECTION_LIMIT

    assert DEFAULT_CONNECTION_LIMIT == 256
    async with RDStation(access_token="t") as rd:
        connector = rd._transport.session.connector
        assert connector is not None and connector.limit == 256
    async with RDStation(access_token="t", connection_limit=300) as rd:
        connector = rd._transport.session.connector
        assert connector is not None and connector.limit == 300


def test_what_stops_a_bulk_run() -> None:
    from rdfunnel.errors import CertificateError, ServerError
    from rdfunnel.tokens import TokenStoreError

    assert CertificateError("bad CA").terminal
    assert TokenStoreError("store broken").terminal
    assert not ServerError(503).terminal


@pytest.mark.parametrize(
    ("rule", "host", "port", "exempt"),
    [
        ("*", "api.rd.services", 443, True),
        ("rd.services", "api.rd.services", 443, True),
        (".rd.services", "api.rd.services", 443, True),
        ("other.example, rd.services", "API.RD.Services", None, True),
        ("services.example", "api.rd.services", 443, False),
        ("d.services", "api.rd.services", 443, False),  # a suffix, not a domain
        ("api.rd.services:8443", "api.rd.services", 443, False),
        ("api.rd.services:443", "api.rd.services", 443, True),
        ("", "api.rd.services", 443, False),
    ],
)
def test_no_proxy_rules(rule: str, host: str, port: int | None, exempt: bool) -> None:
    from rdfunnel._transport import _no_proxy

    assert _no_proxy(rule, host, port) is exempt
