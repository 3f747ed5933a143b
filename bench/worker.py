"""One benchmark measurement in a fresh process: ``python bench/worker.py SCENARIO IMPL JSON``.

Prints one JSON line: the client process's CPU seconds and wall seconds spent on the workload
(set-up and a warm-up excluded), plus what the scenario counts. ``run.py`` drives it.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from rdfunnel import FunnelUpdate, LifecycleStage, RDStation, RetryPolicy, Token

STAGES = list(LifecycleStage)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def path(i: int) -> str:
    return f"/platform/contacts/email:contact-{i}@example.com/funnels/default"


async def workers(count: int, n: int, one: Callable[[int], Awaitable[Any]]) -> None:
    """``count`` tasks sharing the indices 0..n-1: the same driver for every implementation."""
    indices = iter(range(n))

    async def work() -> None:
        for i in indices:
            await one(i)

    await asyncio.gather(*(work() for _ in range(count)))


async def access_token(session: aiohttp.ClientSession, cfg: dict[str, Any]) -> str:
    body = {
        "client_id": cfg["client_id"],
        "client_secret": cfg["client_secret"],
        "refresh_token": cfg["refresh_token"],
    }
    async with session.post(cfg["url"] + "/auth/token", json=body) as response:
        return str((await response.json())["access_token"])


async def measure(workload: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    start_cpu, start = cpu(), time.perf_counter()
    extra = await workload()
    result = {"cpu": cpu() - start_cpu, "wall": time.perf_counter() - start}
    result.update(extra or {})
    return result


# -- raw aiohttp: the floor ------------------------------------------------------------------


async def raw(cfg: dict[str, Any]) -> dict[str, Any]:
    method, n, c = cfg["method"], cfg["n"], cfg["concurrency"]
    connector = aiohttp.TCPConnector(limit=max(c, 100))
    async with aiohttp.ClientSession(connector=connector) as session:
        token = await access_token(session, cfg)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        base = cfg["url"]
        limited = 0

        async def one(i: int) -> None:
            nonlocal limited
            if method == "GET":
                request = session.get(base + path(i), headers=headers)
            else:
                body = json.dumps({"lifecycle_stage": STAGES[i % 3].value}).encode()
                request = session.put(base + path(i), headers=headers, data=body)
            async with request as response:
                await response.json()
                limited += response.status == 429

        await workers(c, c, one)  # warm-up: every connection opened
        return await measure(lambda: _with(workers(c, n, one), lambda: {"429s": limited}))


async def _with(job: Awaitable[Any], extra: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    await job
    return extra()


# -- rdfunnel --------------------------------------------------------------------------------


def client(cfg: dict[str, Any], **kwargs: Any) -> RDStation:
    kwargs.setdefault("refresh_token", cfg["refresh_token"])
    return RDStation(
        client_id=cfg["client_id"],
        client_secret=cfg["client_secret"],
        base_url=cfg["url"],
        retry=RetryPolicy(max_retries=5, backoff_base=0.05, backoff_cap=1.0),
        **kwargs,
    )


async def rdfunnel(cfg: dict[str, Any]) -> dict[str, Any]:
    method, n, c = cfg["method"], cfg["n"], cfg["concurrency"]
    hooks = cfg.get("hooks", ())
    async with _session(c) as session, client(cfg, session=session, hooks=hooks) as rd:

        async def one(i: int) -> None:
            email = f"contact-{i}@example.com"
            if method == "GET":
                await rd.funnels.get(email)
            else:
                await rd.funnels.update(email, FunnelUpdate(lifecycle_stage=STAGES[i % 3]))

        await workers(c, c, one)
        return await measure(lambda: workers(c, n, one))


def _session(concurrency: int, counts: dict[str, int] | None = None) -> aiohttp.ClientSession:
    """A session with room for ``concurrency`` connections; ``counts`` tallies answers by status."""
    traces = []
    if counts is not None:

        async def on_end(_: Any, __: Any, params: aiohttp.TraceRequestEndParams) -> None:
            counts["requests"] += 1
            counts["429s"] += params.response.status == 429

        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(on_end)
        traces.append(trace)
    connector = aiohttp.TCPConnector(limit=max(concurrency, 100))
    return aiohttp.ClientSession(connector=connector, trace_configs=traces)


def changes(n: int, offset: int = 0) -> Iterator[tuple[str, FunnelUpdate]]:
    for i in range(n):
        yield (
            f"contact-{(i + offset) % 1_000_000}@example.com",
            FunnelUpdate(lifecycle_stage=STAGES[i % 3]),
        )


def by_contact(contacts: int, each: int, grouped: bool) -> Iterator[tuple[str, FunnelUpdate]]:
    """``each`` changes to each of ``contacts`` contacts, grouped by contact (aa..bb..) or
    interleaved (ab..ab..): the same changes in either order."""
    for i in range(contacts * each):
        contact = i // each if grouped else i % contacts
        yield f"contact-{contact}@example.com", FunnelUpdate(lifecycle_stage=STAGES[i % 3])


async def bulk(cfg: dict[str, Any]) -> dict[str, Any]:
    n, c = cfg["n"], cfg["concurrency"]
    if "order" in cfg:
        contacts = cfg["contacts"]
        source = by_contact(contacts, n // contacts, cfg["order"] == "grouped")
    else:
        source = changes(n)
    counts = {"requests": 0, "429s": 0}
    session = _session(c, counts if cfg.get("count") else None)  # tracing costs CPU
    async with client(cfg, session=session) as rd:
        await asyncio.gather(
            *(rd.funnels.get(f"contact-{i}@example.com") for i in range(min(c, n)))
        )
        await asyncio.sleep(1.1)  # the warm-up must not count in the fake's first rate window
        counts.update(requests=0, **{"429s": 0})

        async def job() -> dict[str, Any]:
            async with rd.funnels.update_many(
                source, concurrency=c, max_rate=cfg.get("max_rate"), lookahead=cfg.get("lookahead")
            ) as run:
                failed = sum([not result.ok async for result in run])
            summary = run.summary
            return {
                "failed": failed,
                "retries": summary.retries,
                "errors": summary.errors,
                **counts,
            }

        result = await measure(job)
    await session.close()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# -- instrumented: rdfunnel's hooks against raw aiohttp with OpenTelemetry's own instrumentor --


def otel_providers() -> tuple[Any, Any]:
    """An SDK tracer and meter whose exporter does nothing: the SDK's cost, not an exporter's."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class NoExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(NoExporter()))
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


async def raw_otel(cfg: dict[str, Any]) -> dict[str, Any]:
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

    tracer_provider, meter_provider = otel_providers()
    AioHttpClientInstrumentor().instrument(
        tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    return await raw(cfg)


async def rdfunnel_otel(cfg: dict[str, Any]) -> dict[str, Any]:
    from rdfunnel.contrib.otel import OpenTelemetryHooks

    tracer_provider, meter_provider = otel_providers()
    hooks = OpenTelemetryHooks(tracer_provider=tracer_provider, meter_provider=meter_provider)
    return await rdfunnel({**cfg, "hooks": [hooks]})


async def rdfunnel_prometheus(cfg: dict[str, Any]) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from rdfunnel.contrib.prometheus import PrometheusHooks

    return await rdfunnel({**cfg, "hooks": [PrometheusHooks(registry=CollectorRegistry())]})


# -- httpx + authlib: what a user would otherwise pick ---------------------------------------


async def httpx_authlib(cfg: dict[str, Any]) -> dict[str, Any]:
    import httpx
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    n, c = cfg["n"], cfg["concurrency"]
    async with aiohttp.ClientSession() as session:
        token = await access_token(session, cfg)
    limits = httpx.Limits(max_connections=max(c, 100), max_keepalive_connections=max(c, 100))
    async with AsyncOAuth2Client(
        cfg["client_id"],
        cfg["client_secret"],
        token={"access_token": token, "token_type": "Bearer"},
        limits=limits,
    ) as oauth:
        base = cfg["url"]

        async def one(i: int) -> None:
            response = await oauth.get(base + path(i))
            response.json()

        await workers(c, min(n, 50), one)
        return await measure(lambda: workers(c, n, one))


# -- 1,000 calls on an expired token -----------------------------------------------------------


async def expired(cfg: dict[str, Any]) -> dict[str, Any]:
    """Bursts of ``n`` concurrent calls with a fresh token and with one the client knows expired.

    One shared, warm session, pairs interleaved. Requests are traced, so the stall the refresh
    puts on the calls' path is read off the clock: from the token request leaving to the first
    call going out again with the new token.
    """
    n, reps = cfg["n"], cfg.get("reps", 5)
    sent: list[tuple[float, str]] = []  # (when a request left, its path)
    answered: list[tuple[float, str]] = []

    async def on_start(_: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
        sent.append((time.perf_counter(), params.url.path))

    async def on_end(_: Any, __: Any, params: aiohttp.TraceRequestEndParams) -> None:
        answered.append((time.perf_counter(), params.url.path))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    trace.on_request_end.append(on_end)
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        body = {key: cfg[key] for key in ("client_id", "client_secret", "refresh_token")}

        async def token_trip() -> tuple[Token, float]:
            start = time.perf_counter()
            async with session.post(cfg["url"] + "/auth/token", json=body) as response:
                token = Token.from_response(await response.json())
            return token, time.perf_counter() - start

        fresh, _ = await token_trip()
        stale = Token(
            access_token=fresh.access_token,
            refresh_token=fresh.refresh_token,
            expires_at=datetime.now(UTC) - timedelta(seconds=1),
        )

        async def burst(token: Token) -> dict[str, float]:
            sent.clear()
            answered.clear()
            async with client(cfg, token=token, session=session) as rd:
                start = time.perf_counter()
                await asyncio.gather(
                    *(rd.funnels.get(f"contact-{i}@example.com") for i in range(n))
                )
                result = {"wall": time.perf_counter() - start}
            tokens = [when for when, path in sent if path == "/auth/token"]
            result["token_requests"] = len(tokens)
            if tokens:
                back = next(when for when, path in answered if path == "/auth/token")
                resumed = min(when for when, path in sent if when > back)
                result.update(
                    token_sent=tokens[0] - start,
                    trip=back - tokens[0],
                    stall=resumed - tokens[0],
                )
            return result

        await burst(fresh)  # warm: connections open
        trips = [(await token_trip())[1] for _ in range(reps)]
        pairs = [(await burst(fresh), await burst(stale)) for _ in range(reps)]
    differences = sorted(stale["wall"] - fresh["wall"] for fresh, stale in pairs)
    low, high = _median_interval(len(differences))
    stale_runs = [stale for _, stale in pairs]
    return {
        "fresh": statistics.median(fresh["wall"] for fresh, _ in pairs),
        "expired": statistics.median(run["wall"] for run in stale_runs),
        "added": statistics.median(differences),
        "added_low": differences[low],
        "added_high": differences[high],
        "token_requests_per_burst": statistics.mean(run["token_requests"] for run in stale_runs),
        "fresh_token_requests": sum(fresh["token_requests"] for fresh, _ in pairs),
        "token_sent": statistics.median(run["token_sent"] for run in stale_runs),
        "trip_in_burst": statistics.median(run["trip"] for run in stale_runs),
        "stall": statistics.median(run["stall"] for run in stale_runs),
        "token_round_trip": statistics.median(trips),
        "cpu": 0.0,
        "wall": 0.0,
    }


def _median_interval(count: int) -> tuple[int, int]:
    """Indices of a sorted sample bounding its median with about 95% confidence (the binomial
    order-statistic interval: no assumption about the noise's shape)."""
    k = max(int((count - 1.96 * count**0.5) / 2), 0)
    return k, count - 1 - k


# -- the round trip one request takes, alone ---------------------------------------------------


async def round_trip(cfg: dict[str, Any]) -> dict[str, Any]:
    """Median time of one PUT at a time through raw aiohttp: the latency a client really sees."""
    async with aiohttp.ClientSession() as session:
        token = await access_token(session, cfg)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = json.dumps({"lifecycle_stage": STAGES[0].value}).encode()
        trips = []
        for i in range(cfg.get("trips", 40) + 1):
            start = time.perf_counter()
            async with session.put(cfg["url"] + path(i), headers=headers, data=body) as response:
                await response.read()
            trips.append(time.perf_counter() - start)
    return {"round_trip": statistics.median(trips[1:]), "cpu": 0.0, "wall": 0.0}


IMPLS: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "raw": raw,
    "rdfunnel": rdfunnel,
    "bulk": bulk,
    "grouped": lambda cfg: bulk({**cfg, "order": "grouped"}),
    "interleaved": lambda cfg: bulk({**cfg, "order": "interleaved"}),
    "httpx": httpx_authlib,
    "raw_otel": raw_otel,
    "rdfunnel_otel": rdfunnel_otel,
    "rdfunnel_prometheus": rdfunnel_prometheus,
    "expired": expired,
    "round_trip": round_trip,
}


def main() -> None:
    impl, cfg = sys.argv[1], json.loads(sys.argv[2])
    if cfg.get("uvloop"):
        import uvloop

        uvloop.install()
    result = asyncio.run(IMPLS[impl](cfg))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
