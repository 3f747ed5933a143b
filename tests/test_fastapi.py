"""rdfunnel.contrib.fastapi and examples/fastapi_app.py: the real app, its lifespan, the fake.

The app runs as uvicorn would run it: its ASGI lifespan is driven by :func:`running` (startup
before the requests, shutdown after), and requests go through httpx's ASGI transport to handlers
that call a FakeRDStation on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import json
import logging
import socket
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI
from starlette.types import ASGIApp, Message

from rdfunnel import RDStation, RetryPolicy
from rdfunnel.contrib.fastapi import (
    RDStationDep,
    error_response,
    get_rdstation,
    install_exception_handlers,
    rdstation_lifespan,
)
from rdfunnel.contrib.redis import (
    RedisRateLimiter,
    RedisTokenStore,
    RedisTokenStoreError,
    RedisUnavailableError,
)
from rdfunnel.errors import (
    AuthenticationError,
    BadRequestError,
    ExpiredCodeGrantError,
    ForbiddenError,
    InvalidCredentialsError,
    InvalidRefreshTokenError,
    NotFoundError,
    RateLimitError,
    RDStationError,
    RequestTimeoutError,
    ServerError,
    TokenExpiredError,
    TokenRefusedError,
    TransportError,
    UnexpectedStatusError,
    ValidationError,
)
from rdfunnel.testing import FakeRDStation, Faults, Limits
from rdfunnel.tokens import TokenStoreError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"
NO_RETRY = RetryPolicy(max_retries=0)


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rdfunnel_fastapi_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


example = _load_example()


# -- harness -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """Run ``app``'s ASGI lifespan as a server does; yields the lifespan state."""
    limit = 5.0  # seconds for startup and for shutdown: a hang fails the test instead
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}

    async def send(message: Message) -> None:
        await outbox.put(message)

    task: asyncio.Task[None] = asyncio.ensure_future(app(scope, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    message = await asyncio.wait_for(outbox.get(), limit)
    if message["type"] == "lifespan.startup.failed":
        with contextlib.suppress(Exception):
            await task
        raise RuntimeError(f"startup failed: {message.get('message')}")
    assert message["type"] == "lifespan.startup.complete"
    try:
        yield state
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        message = await asyncio.wait_for(outbox.get(), limit)
        await asyncio.wait_for(task, limit)
        assert message["type"] == "lifespan.shutdown.complete", message


@contextlib.asynccontextmanager
async def http(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app), http(app) as client:
        yield client


def example_app(fake: FakeRDStation, **client_options: Any) -> FastAPI:
    app: FastAPI = example.create_app(lambda: fake.client(**client_options))
    return app


def assert_no_secrets(response: httpx.Response, fake: FakeRDStation) -> None:
    """No credential in the answer: not the app's, not a refresh token, not a (JWT) access token."""
    text = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
    assert fake.client_secret not in text
    assert fake.refresh_token not in text
    assert "eyJ" not in text  # the fake's access tokens are JWTs
    assert "Bearer" not in text


@pytest.fixture
async def fake() -> AsyncIterator[FakeRDStation]:
    async with FakeRDStation(contacts=30, users=["owner@example.com"]) as server:
        yield server


# -- the example's endpoints -------------------------------------------------------------------


async def test_get_funnel_by_email_and_uuid(fake: FakeRDStation) -> None:
    fake.add_contact("ana@example.com", lifecycle_stage="Qualified Lead", opportunity=True, fit=7)
    async with serve(example_app(fake)) as client:
        by_email = await client.get("/contacts/ana@example.com/funnel")
        by_uuid = await client.get(f"/contacts/{fake.contact('ana@example.com').uuid}/funnel")
    assert by_email.status_code == 200
    assert by_email.json() == {
        "lifecycle_stage": "Qualified Lead",
        "opportunity": True,
        "contact_owner_email": None,
        "fit": 7,
        "interest": 0,
    }
    assert by_uuid.json() == by_email.json()


async def test_put_funnel_sends_only_the_fields_given(fake: FakeRDStation) -> None:
    async with serve(example_app(fake)) as client:
        response = await client.put(
            "/contacts/contact-1@example.com/funnel",
            json={"lifecycle_stage": "Client", "opportunity": True},
        )
    assert response.status_code == 200
    assert response.json()["lifecycle_stage"] == "Client"
    assert response.json()["opportunity"] is True
    assert fake.puts["contact-1@example.com"] == (
        {"lifecycle_stage": "Client", "opportunity": True},
    )


async def test_put_null_owner_clears_it_and_absent_owner_keeps_it(fake: FakeRDStation) -> None:
    fake.add_contact("bia@example.com", contact_owner_email="owner@example.com")
    async with serve(example_app(fake)) as client:
        kept = await client.put("/contacts/bia@example.com/funnel", json={"opportunity": True})
        cleared = await client.put(
            "/contacts/bia@example.com/funnel", json={"contact_owner_email": None}
        )
    assert kept.json()["contact_owner_email"] == "owner@example.com"
    assert cleared.status_code == 200
    assert cleared.json()["contact_owner_email"] is None
    assert fake.contact("bia@example.com").contact_owner_email is None
    assert fake.contact("bia@example.com").opportunity is True


#: What a message for the app's users must not hold: Python's words and the example's classes.
PYTHON_WORDS = (
    "None",
    "True",
    "False",
    "FunnelUpdate",
    "FunnelChange",
    "ContactChange",
    "JobRequest",
    "Value error",
    "dict",
)


def assert_422_shape(response: httpx.Response) -> dict[str, Any]:
    """Every 422 of the example: ``{"detail": str, "error": code, "errors": {field: [item]}}``,
    each item ``{"error_type": str, "error_message": str}``, as rdfunnel answers RD's refusals."""
    assert response.status_code == 422, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"detail", "error", "errors"}, body
    assert isinstance(body["detail"], str)
    assert body["error"] in ("invalid_input", "rejected_by_rdstation")
    assert isinstance(body["errors"], dict)
    assert body["errors"]
    for field, items in body["errors"].items():
        assert isinstance(field, str)
        assert field
        assert isinstance(items, list)
        assert items
        for item in items:
            assert set(item) == {"error_type", "error_message"}, item
            assert isinstance(item["error_type"], str)
            assert isinstance(item["error_message"], str)
    for word in PYTHON_WORDS:
        assert word not in response.text, (word, body)
    return body


BAD_CHANGES = [
    pytest.param({}, "body", "EMPTY_CHANGE", id="empty"),
    pytest.param({"lifecycle_stage": None}, "lifecycle_stage", "CANNOT_BE_NULL", id="null-stage"),
    pytest.param({"opportunity": None}, "opportunity", "CANNOT_BE_NULL", id="null-opportunity"),
    pytest.param(
        {"contact_owner_email": "not an email"}, "contact_owner_email", "INVALID_EMAIL", id="owner"
    ),
    pytest.param(
        {"contact_owner_email": "o" * 95 + "@example.com"},
        "contact_owner_email",
        "STRING_TOO_LONG",
        id="long-owner",
    ),
    pytest.param({"lifecycle_stage": "Prospect"}, "lifecycle_stage", "ENUM", id="bad-stage"),
    pytest.param({"opportunity": "maybe"}, "opportunity", "BOOL_PARSING", id="bad-bool"),
    pytest.param({"stage": "Client"}, "stage", "EXTRA_FORBIDDEN", id="unknown-field"),
    pytest.param([1], "body", "MODEL_ATTRIBUTES_TYPE", id="not-an-object"),
]


@pytest.mark.parametrize(("body", "field", "error_type"), BAD_CHANGES)
async def test_put_invalid_change_is_422_before_anything_is_sent(
    fake: FakeRDStation, body: Any, field: str, error_type: str
) -> None:
    async with serve(example_app(fake)) as client:
        response = await client.put("/contacts/contact-1@example.com/funnel", json=body)
    answer = assert_422_shape(response)
    assert answer["error"] == "invalid_input"
    assert [item["error_type"] for item in answer["errors"][field]] == [error_type]
    assert answer["detail"].startswith(f"invalid request: {field}: ")
    assert fake.stats.count() == 0


async def test_a_body_that_is_not_json_is_422_in_the_same_shape(fake: FakeRDStation) -> None:
    async with serve(example_app(fake)) as client:
        response = await client.put(
            "/contacts/contact-1@example.com/funnel",
            content=b'{"opportunity": tru',
            headers={"content-type": "application/json"},
        )
    answer = assert_422_shape(response)
    assert answer["errors"] == {
        "body": [{"error_type": "JSON_INVALID", "error_message": "is not valid JSON"}]
    }
    assert "tru" not in response.text  # the input is never echoed back
    assert fake.stats.count() == 0


async def test_the_readme_shows_a_422_as_the_example_answers_it(fake: FakeRDStation) -> None:
    readme = (EXAMPLE.parent.parent / "README.md").read_text(encoding="utf-8")
    shown = json.loads(
        readme.split("Its 422s all have one shape")[1].split("```json")[1].split("```")[0]
    )
    async with serve(example_app(fake)) as client:
        response = await client.put(
            "/contacts/contact-1@example.com/funnel", json={"lifecycle_stage": None}
        )
    assert assert_422_shape(response) == shown


async def test_a_422_names_every_problem_and_sums_them_up(fake: FakeRDStation) -> None:
    body = {"lifecycle_stage": None, "opportunity": "maybe", "owner": 1, "extra": 2}
    async with serve(example_app(fake)) as client:
        response = await client.put("/contacts/contact-1@example.com/funnel", json=body)
    answer = assert_422_shape(response)
    assert set(answer["errors"]) == {"lifecycle_stage", "opportunity", "owner", "extra"}
    assert answer["detail"].startswith("invalid request: lifecycle_stage: cannot be null")
    assert answer["detail"].endswith("; and 1 more")


# -- error mappings, driven through the fake ---------------------------------------------------


async def test_bad_contact_is_422(fake: FakeRDStation) -> None:
    async with serve(example_app(fake)) as client:
        got = await client.get("/contacts/not-a-contact/funnel")
        put = await client.put("/contacts/ana@exa mple.com/funnel", json={"opportunity": True})
    answer = assert_422_shape(got)
    assert answer["error"] == "invalid_input"
    assert "neither an email address nor a UUID" in answer["detail"]
    assert answer["errors"]["contact"][0]["error_type"] == "INVALID_CONTACT"
    assert assert_422_shape(put)["errors"]["contact"][0]["error_type"] == "INVALID_CONTACT"
    assert fake.stats.count() == 0


async def test_unknown_contact_is_404(fake: FakeRDStation) -> None:
    async with serve(example_app(fake)) as client:
        response = await client.get("/contacts/nobody@example.com/funnel")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert_no_secrets(response, fake)


async def test_change_refused_by_rd_is_422_with_field_details(fake: FakeRDStation) -> None:
    async with serve(example_app(fake)) as client:
        response = await client.put(
            "/contacts/contact-1@example.com/funnel",
            json={"contact_owner_email": "stranger@example.com"},
        )
    body = assert_422_shape(response)  # RD's refusal, in the same shape as the app's own
    assert body["error"] == "rejected_by_rdstation"
    assert "stranger@example.com was not found" in body["detail"]
    assert body["errors"]["contact_owner_email"][0]["error_type"] == "INVALID_USER"


async def test_per_contact_quota_is_429_with_retry_after(fake: FakeRDStation) -> None:
    fake.limits = Limits(per_contact=1, window=3600)
    async with serve(example_app(fake)) as client:
        first = await client.get("/contacts/contact-1@example.com/funnel")
        second = await client.get("/contacts/contact-1@example.com/funnel")
    assert first.status_code == 200
    assert second.status_code == 429
    retry_after = int(second.headers["Retry-After"])
    assert 3500 < retry_after <= 3600
    assert second.json() | {"detail": ""} == {
        "detail": "",
        "error": "rate_limited",
        "scope": "contact",
        "retry_after": retry_after,
    }
    assert_no_secrets(second, fake)


async def test_revoked_authorization_is_503_without_secrets(fake: FakeRDStation) -> None:
    async with serve(example_app(fake)) as client:
        assert (await client.get("/contacts/contact-1@example.com/funnel")).status_code == 200
        fake.revoke_all()
        response = await client.get("/contacts/contact-1@example.com/funnel")
    assert response.status_code == 503
    assert response.json()["error"] == "rdstation_unauthorized"
    assert "authorize the app again" in response.json()["detail"]
    assert_no_secrets(response, fake)


async def test_wrong_app_credentials_are_503_without_secrets(fake: FakeRDStation) -> None:
    async with serve(example_app(fake, client_secret="wrong-" + fake.client_secret)) as client:
        response = await client.get("/contacts/contact-1@example.com/funnel")
    assert response.status_code == 503
    assert response.json()["error"] == "rdstation_unauthorized"
    assert_no_secrets(response, fake)
    assert "wrong-" not in response.text


@pytest.mark.parametrize(
    ("faults", "status", "code"),
    [
        pytest.param(Faults(json_500=1.0), 502, "rdstation_error", id="json-500"),
        pytest.param(Faults(html_502=1.0), 502, "rdstation_error", id="html-502"),
        pytest.param(Faults(json_503=1.0), 502, "rdstation_error", id="json-503"),
        pytest.param(Faults(drop=1.0), 502, "rdstation_unreachable", id="dropped"),
        pytest.param(Faults(slow=1.0, slow_seconds=5), 504, "rdstation_timeout", id="slow"),
    ],
)
async def test_upstream_failures_are_5xx(
    fake: FakeRDStation, faults: Faults, status: int, code: str
) -> None:
    app = example_app(fake, retry=NO_RETRY, timeout=0.2)
    async with serve(app) as client:
        fake.faults = faults
        response = await client.get("/contacts/contact-1@example.com/funnel")
    assert response.status_code == status
    assert response.json()["error"] == code
    assert "<html" not in response.text.lower()  # RD's outage page stays in the log
    assert_no_secrets(response, fake)


@pytest.fixture
async def dead_redis() -> AsyncIterator[aioredis.Redis]:
    """A Redis client for a port nothing listens on, with a password that must never show."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = aioredis.from_url(f"redis://user:hunter2@127.0.0.1:{port}/0")
    yield client
    await client.aclose()


@pytest.mark.parametrize("component", ["token store", "rate limiter"])
async def test_a_redis_outage_is_503_whichever_component_meets_it(
    fake: FakeRDStation,
    dead_redis: aioredis.Redis,
    component: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if component == "token store":
        options: dict[str, Any] = {"token_store": RedisTokenStore(dead_redis, key="t")}
    else:
        options = {"rate_limiter": RedisRateLimiter(dead_redis, key="r", max_rate=10)}
    caplog.set_level(logging.DEBUG, logger="rdfunnel.contrib.fastapi")
    async with serve(example_app(fake, **options)) as client:
        response = await client.get("/contacts/contact-1@example.com/funnel")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "redis_unavailable"
    assert "try again later" in body["detail"]
    assert "hunter2" not in response.text
    assert_no_secrets(response, fake)
    assert fake.stats.count(route="funnels.get") == 0
    answered = [r for r in caplog.records if getattr(r, "event", None) == "answered_error"]
    assert len(answered) == 1
    record = answered[0]
    assert record.levelno == logging.WARNING
    assert "Redis at 127.0.0.1" in record.getMessage()
    assert "hunter2" not in caplog.text
    assert not any(r.exc_info for r in caplog.records)  # an expected outage: no traceback
    assert "Traceback" not in caplog.text


def test_the_fastapi_integration_does_not_need_redis() -> None:
    code = (
        "import sys; sys.modules['redis'] = None; import rdfunnel.contrib.fastapi as f; "
        "from rdfunnel.errors import RDStationError; "
        "assert f.error_response(RDStationError('x')).status_code == 500"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# -- error mappings, every one -----------------------------------------------------------------


def _api(cls: type[Any], status: int, **kwargs: Any) -> Any:
    return cls(status, body='{"secret": "eyJhbGciOi..."}', headers={"X-Token": "t0k3n"}, **kwargs)


MAPPINGS: list[Any] = [
    pytest.param(ValidationError("bad input"), 422, "invalid_input", id="validation"),
    pytest.param(
        _api(BadRequestError, 400, messages=("nope",)), 422, "rejected_by_rdstation", id="bad"
    ),
    pytest.param(_api(NotFoundError, 404), 404, "not_found", id="not-found"),
    pytest.param(_api(RateLimitError, 429, retry_after=2.2), 429, "rate_limited", id="429"),
    pytest.param(_api(RateLimitError, 429), 429, "rate_limited", id="429-no-hint"),
    pytest.param(
        _api(InvalidRefreshTokenError, 401), 503, "rdstation_unauthorized", id="refresh-token"
    ),
    pytest.param(
        _api(InvalidCredentialsError, 401), 503, "rdstation_unauthorized", id="credentials"
    ),
    pytest.param(_api(ExpiredCodeGrantError, 401), 503, "rdstation_unauthorized", id="code"),
    pytest.param(_api(TokenRefusedError, 401), 503, "rdstation_unauthorized", id="refused"),
    pytest.param(_api(TokenExpiredError, 401), 502, "rdstation_auth_failed", id="expired"),
    pytest.param(_api(AuthenticationError, 401), 502, "rdstation_auth_failed", id="auth"),
    pytest.param(_api(ForbiddenError, 403), 502, "rdstation_forbidden", id="forbidden"),
    pytest.param(_api(ServerError, 500), 502, "rdstation_error", id="server"),
    pytest.param(_api(UnexpectedStatusError, 418), 502, "rdstation_error", id="unexpected"),
    pytest.param(TransportError("reset"), 502, "rdstation_unreachable", id="transport"),
    pytest.param(RequestTimeoutError("slow"), 504, "rdstation_timeout", id="timeout"),
    pytest.param(TokenStoreError("disk full"), 503, "token_store_unavailable", id="store"),
    pytest.param(RedisTokenStoreError("Redis down"), 503, "redis_unavailable", id="redis-store"),
    pytest.param(RedisUnavailableError("Redis down"), 503, "redis_unavailable", id="redis-limit"),
    pytest.param(RDStationError("client is closed"), 500, "internal_error", id="other"),
]


@pytest.mark.parametrize(("error", "status", "code"), MAPPINGS)
async def test_every_error_mapping(error: RDStationError, status: int, code: str) -> None:
    app = FastAPI()
    install_exception_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise error

    async with http(app) as client:
        response = await client.get("/boom")
    assert response.status_code == status
    assert response.json()["error"] == code
    assert isinstance(response.json()["detail"], str)
    assert "eyJ" not in response.text
    assert "t0k3n" not in response.text
    assert "t0k3n" not in str(response.headers)
    if status == 429:
        assert response.headers["Retry-After"] == ("3" if error.retry_after else "60")  # type: ignore[attr-defined]
    else:
        assert "Retry-After" not in response.headers
    direct = error_response(error)
    assert direct.status_code == status


# -- one client per app: lifecycle, tokens, concurrency ----------------------------------------


async def test_200_concurrent_requests_with_an_expired_token_refresh_once(
    fake: FakeRDStation,
) -> None:
    async with serve(example_app(fake)) as client:
        assert (await client.get("/contacts/contact-0@example.com/funnel")).status_code == 200
        fake.expire_tokens()
        before = fake.stats.grants.get("refresh", 0)
        responses = await asyncio.gather(
            *(client.get(f"/contacts/contact-{i % 30}@example.com/funnel") for i in range(200))
        )
    assert [r.status_code for r in responses] == [200] * 200
    assert fake.stats.grants.get("refresh", 0) - before == 1


async def test_the_client_is_shared_and_closed_at_shutdown(fake: FakeRDStation) -> None:
    app = FastAPI(lifespan=rdstation_lifespan(fake.client))
    seen: list[RDStation] = []

    @app.get("/who")
    async def who(rd: RDStationDep) -> dict[str, str]:
        seen.append(rd)
        await rd.funnels.get("contact-0@example.com")
        return {"client": repr(rd)}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with serve(app) as client:
            await asyncio.gather(*(client.get("/who") for _ in range(5)))
            opened = app.state.rdstation
        assert all(rd is opened for rd in seen)
        assert len(seen) == 5
        assert not hasattr(app.state, "rdstation")
        with pytest.raises(RDStationError, match="closed"):
            await opened.funnels.get("contact-0@example.com")
        seen.clear()
        del opened
        gc.collect()
        await asyncio.sleep(0)
    unclosed = [w for w in caught if "nclosed" in str(w.message)]
    assert unclosed == []


async def test_requests_without_the_lifespan_fail_loudly(fake: FakeRDStation) -> None:
    app = FastAPI(lifespan=rdstation_lifespan(fake.client))

    @app.get("/rd")
    async def handler(rd: Annotated[RDStation, Depends(get_rdstation)]) -> None:
        pass  # pragma: no cover

    async with http(app) as client:
        with pytest.raises(RuntimeError, match="rdstation_lifespan"):
            await client.get("/rd")


async def test_the_app_lifespan_runs_inside_with_the_client_open(fake: FakeRDStation) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        rd: RDStation = app.state.rdstation
        events.append(f"startup {(await rd.funnels.get('contact-0@example.com')).opportunity}")
        yield {"greeting": "hi"}
        events.append(f"shutdown {(await rd.funnels.get('contact-0@example.com')).opportunity}")

    app = FastAPI(lifespan=rdstation_lifespan(fake.client, app_lifespan=own))
    async with running(app) as state:
        assert state == {"greeting": "hi"}  # the app's own state, passed on
        events.append("serving")
    assert events == ["startup False", "serving", "shutdown False"]


async def test_a_failing_startup_still_closes_the_client(fake: FakeRDStation) -> None:
    opened: list[RDStation] = []

    def factory() -> RDStation:
        opened.append(fake.client())
        return opened[-1]

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        await app.state.rdstation.funnels.get("contact-0@example.com")
        raise OSError("cannot reach the job database")
        yield  # pragma: no cover

    app = FastAPI(lifespan=rdstation_lifespan(factory, app_lifespan=own))
    with pytest.raises(RuntimeError, match="job database"):
        async with running(app):
            pass  # pragma: no cover
    with pytest.raises(RDStationError, match="closed"):
        await opened[0].funnels.get("contact-0@example.com")


async def test_installing_the_lifespan_twice_fails_the_startup(fake: FakeRDStation) -> None:
    inner = rdstation_lifespan(fake.client)
    app = FastAPI(lifespan=rdstation_lifespan(fake.client, app_lifespan=inner))
    with pytest.raises(RuntimeError, match="installed twice"):
        async with running(app):
            pass  # pragma: no cover
    assert not hasattr(app.state, "rdstation")


@contextlib.contextmanager
def fake_env(fake: FakeRDStation, monkeypatch: pytest.MonkeyPatch, **extra: str) -> Iterator[None]:
    monkeypatch.setenv("RDSTATION_CLIENT_ID", fake.client_id)
    monkeypatch.setenv("RDSTATION_CLIENT_SECRET", fake.client_secret)
    monkeypatch.setenv("RDSTATION_REFRESH_TOKEN", fake.refresh_token)
    monkeypatch.setenv("RDSTATION_BASE_URL", fake.url)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    yield


async def test_the_client_comes_from_the_environment_by_default(
    fake: FakeRDStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fake_env(fake, monkeypatch):
        app: FastAPI = example.create_app()
        async with serve(app) as client:
            response = await client.get("/contacts/contact-2@example.com/funnel")
    assert response.status_code == 200


ENVIRONMENT = (
    "RDSTATION_CLIENT_ID",
    "RDSTATION_CLIENT_SECRET",
    "RDSTATION_REFRESH_TOKEN",
    "RDSTATION_BASE_URL",
    "RDFUNNEL_TOKEN_FILE",
)


async def test_a_missing_environment_fails_the_startup_naming_what_it_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    app = FastAPI(lifespan=rdstation_lifespan())
    with pytest.raises(RuntimeError, match="needs credentials") as caught:
        async with running(app):
            pass  # pragma: no cover
    message = str(caught.value)
    assert "RDStation.from_env() read" in message
    for name in ENVIRONMENT:
        assert f"{name} (not set)" in message


@pytest.mark.parametrize(
    ("environment", "problem"),
    [
        pytest.param({}, "needs credentials", id="nothing"),
        pytest.param(
            {"RDSTATION_CLIENT_SECRET": "s3cr3t-value", "RDSTATION_REFRESH_TOKEN": "r3fr3sh-value"},
            "client_id and client_secret go together",
            id="no-client-id",
        ),
        pytest.param(
            {"RDSTATION_CLIENT_ID": "app", "RDSTATION_CLIENT_SECRET": "s3cr3t-value"},
            "needs a token to start from",
            id="no-token",
        ),
    ],
)
def test_from_env_names_the_variables_it_read_and_never_their_values(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], problem: str
) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RDSTATION_BASE_URL", "")  # empty counts as unset
    with pytest.raises(ValidationError, match=problem) as caught:
        RDStation.from_env(max_rate=5)
    message = str(caught.value)
    for name in ENVIRONMENT:
        state = "set" if name in environment else "not set"
        if name == "RDSTATION_BASE_URL":
            state = "empty, so not used"
        assert f"{name} ({state})" in message
    assert "keyword arguments given, which take precedence: max_rate" in message
    assert "s3cr3t" not in message
    assert "r3fr3sh" not in message
    assert caught.value.__cause__ is None


async def test_explicit_settings(fake: FakeRDStation) -> None:
    lifespan = rdstation_lifespan(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        refresh_token=fake.refresh_token,
        base_url=fake.url,
        max_rate=1000,
    )
    app = FastAPI(lifespan=lifespan)

    @app.get("/stage")
    async def stage(rd: RDStationDep) -> str | None:
        return str((await rd.funnels.get("contact-3@example.com")).lifecycle_stage)

    async with serve(app) as client:
        assert (await client.get("/stage")).json() == "Lead"


def test_settings_are_checked_when_the_lifespan_is_made(fake: FakeRDStation) -> None:
    with pytest.raises(TypeError, match="client_sercet"):
        rdstation_lifespan(client_id="x", client_sercet="y")
    with pytest.raises(TypeError, match="not both"):
        rdstation_lifespan(fake.client, max_rate=3)


async def test_a_factory_must_return_a_client() -> None:
    app = FastAPI(lifespan=rdstation_lifespan(lambda: "not a client"))  # type: ignore[arg-type,return-value]
    with pytest.raises(RuntimeError, match="must return an RDStation"):
        async with running(app):
            pass  # pragma: no cover


async def test_worker_processes_share_tokens_through_the_token_file(
    fake: FakeRDStation, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two apps stand for two worker processes: each opens its own client from the environment;
    the token file makes them refresh once between them."""
    with fake_env(fake, monkeypatch, RDFUNNEL_TOKEN_FILE=str(tmp_path / "token.json")):
        one: FastAPI = example.create_app()
        two: FastAPI = example.create_app()
        async with serve(one) as first, serve(two) as second:
            assert one.state.rdstation is not two.state.rdstation
            assert (await first.get("/contacts/contact-1@example.com/funnel")).status_code == 200
            assert (await second.get("/contacts/contact-1@example.com/funnel")).status_code == 200
            assert fake.stats.grants == {"refresh": 1}  # the second found the first's token

            fake.expire_tokens()
            responses = await asyncio.gather(
                *(
                    client.get(f"/contacts/contact-{i}@example.com/funnel")
                    for i in range(20)
                    for client in (first, second)
                )
            )
    assert {r.status_code for r in responses} == {200}
    assert fake.stats.grants == {"refresh": 2}


# -- bulk jobs ---------------------------------------------------------------------------------


async def wait_for_job(
    client: httpx.AsyncClient, job_id: str, seen: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    for _ in range(1000):
        report: dict[str, Any] = (await client.get(f"/funnel-jobs/{job_id}")).json()
        if seen is not None:
            seen(report)
        if report["status"] != "running":
            return report
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} still running")  # pragma: no cover


async def test_a_bulk_job_reports_progress_and_per_item_failures(fake: FakeRDStation) -> None:
    changes: list[dict[str, Any]] = [
        {"contact": f"contact-{i}@example.com", "lifecycle_stage": "Client"} for i in range(10)
    ]
    changes.insert(3, {"contact": "NoBody@Example.com", "opportunity": True})
    changes.insert(7, {"contact": "contact-20@example.com", "contact_owner_email": "x@example.com"})
    fake.faults = Faults(latency=0.1)  # a job that takes some polls to finish
    reports: list[dict[str, Any]] = []
    async with serve(example_app(fake)) as client:
        started = await client.post("/funnel-jobs", json={"changes": changes, "concurrency": 2})
        assert started.status_code == 202
        job = started.json()
        assert started.headers["Location"] == f"http://testserver/funnel-jobs/{job['id']}"
        assert job["status"] == "running"
        assert (job["total"], job["done"]) == (12, 0)
        final = await wait_for_job(client, job["id"], reports.append)

    assert final["status"] == "finished"
    assert final["total"] == final["done"] == 12
    assert (final["succeeded"], final["failed"], final["not_attempted"]) == (10, 2, 0)
    assert [(f["index"], f["contact"], f["error"]) for f in final["failures"]] == [
        (3, "NoBody@Example.com", "NotFoundError"),  # as the client wrote it
        (7, "contact-20@example.com", "BadRequestError"),
    ]
    assert "x@example.com was not found" in final["failures"][1]["detail"]
    assert all(
        fake.contact(f"contact-{i}@example.com").lifecycle_stage == "Client" for i in range(10)
    )
    # progress only moves forward, and every report adds up
    done = [r["done"] for r in reports]
    assert done == sorted(done)
    assert any(0 < d < 12 for d in done)
    for r in reports:
        assert r["done"] == r["succeeded"] + r["failed"] + r["not_attempted"]
        assert len(r["failures"]) == r["failed"]


async def test_a_job_with_a_bad_change_is_refused_whole(fake: FakeRDStation) -> None:
    changes = [
        {"contact": "contact-1@example.com", "opportunity": True},
        {"contact": "not-a-contact", "opportunity": True},
        {"contact": "contact-2@example.com"},
        {"contact": "contact-3@example.com", "lifecycle_stage": "Prospect"},
        {"contact": "contact-4@example.com", "opportunity": None},
        7,
    ]
    async with serve(example_app(fake)) as client:
        response = await client.post("/funnel-jobs", json={"changes": changes})
        empty = await client.post("/funnel-jobs", json={"changes": []})
        missing = await client.get("/funnel-jobs/no-such-job")
    answer = assert_422_shape(response)
    assert {
        field: [i["error_type"] for i in items] for field, items in answer["errors"].items()
    } == {
        "changes.1.contact": ["INVALID_CONTACT"],
        "changes.2": ["EMPTY_CHANGE"],
        "changes.3.lifecycle_stage": ["ENUM"],
        "changes.4.opportunity": ["CANNOT_BE_NULL"],
        "changes.5": ["MODEL_ATTRIBUTES_TYPE"],
    }
    assert "changes" in assert_422_shape(empty)["errors"]
    assert fake.stats.count() == 0
    assert missing.status_code == 404


async def test_a_job_stops_when_the_authorization_is_revoked(fake: FakeRDStation) -> None:
    changes = [{"contact": f"contact-{i}@example.com", "opportunity": True} for i in range(20)]
    async with serve(example_app(fake)) as client:
        fake.revoke_all()
        started = await client.post("/funnel-jobs", json={"changes": changes, "concurrency": 4})
        final = await wait_for_job(client, started.json()["id"])
    assert final["status"] == "stopped"
    assert final["error"].startswith("InvalidRefreshTokenError")
    assert final["succeeded"] == 0
    assert final["failed"] + final["not_attempted"] == 20
    assert final["not_attempted"] > 0
    assert fake.refresh_token not in str(final)


async def test_shutdown_cancels_running_jobs_before_closing_the_client(
    fake: FakeRDStation,
) -> None:
    fake.faults = Faults(slow=1.0, slow_seconds=30)
    changes = [{"contact": f"contact-{i}@example.com", "opportunity": True} for i in range(5)]
    app = example_app(fake)
    loop = asyncio.get_running_loop()
    async with serve(app) as client:
        job_id = (await client.post("/funnel-jobs", json={"changes": changes})).json()["id"]
        jobs = app.state.jobs
        await asyncio.sleep(0.05)
        stopping = loop.time()
    assert loop.time() - stopping < 2
    job = jobs.get(job_id)
    assert job.status == "cancelled"
    assert job.task.done()
    report = job.view()
    assert (report.total, report.done, report.not_attempted) == (5, 5, 5)
