"""rdfunnel's benchmarks: ``python bench/run.py`` (add ``--quick`` for a smoke run of seconds).

Every figure is a ratio against raw aiohttp doing the same requests in the same run, or against
an ideal, so it means the same on any machine. The fake RD Station runs in its own process; each
measurement runs in a fresh client process, implementations interleaved, medians reported.
Results go to bench/RESULTS.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rdfunnel.bulk import default_lookahead

HERE = Path(__file__).resolve().parent
HISTORY = "## Profiling and what it changed"
WORKER = HERE / "worker.py"


@contextmanager
def fake_server(*options: str) -> Iterator[dict[str, Any]]:
    """A FakeRDStation in its own process (on uvloop, so that it is not the bottleneck)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rdfunnel.testing", "--port", "0", "--uvloop", *options],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield json.loads(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure(impl: str, cfg: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(WORKER), impl, json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def interleaved(
    impls: list[str], cfg: dict[str, Any], reps: int, few: tuple[str, ...] = ()
) -> dict[str, list[dict[str, Any]]]:
    """Each implementation ``reps`` times, taking turns, so drift hits all alike; the slow
    reference implementations in ``few`` only in the first three rounds."""
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for rep in range(reps):
        order = impls[rep % len(impls) :] + impls[: rep % len(impls)]
        for impl in order:
            if impl not in few or rep < 3:
                runs[impl].append(measure(impl, cfg))
    return runs


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.notes: list[str] = []

    def add(self, scenario: str, measure_: str, value: float, target: str, ok: bool | None) -> None:
        """A row; ``ok`` is None for a reference figure that has no target."""
        met = "" if ok is None else "yes" if ok else "**NO**"
        self.rows.append((scenario, measure_, f"{value:.3g}", target, met))
        verdict = "" if ok is None else "ok" if ok else "MISSED"
        print(f"{scenario:55} {measure_:45} {value:8.3f}  target {target:8} {verdict}")


def cpu_scenario(report: Report, cfg: dict[str, Any], method: str, reps: int, httpx: bool) -> None:
    impls = ["raw", "rdfunnel"] + (["httpx"] if httpx else [])
    runs = interleaved(impls, {**cfg, "method": method}, reps, few=("httpx",))
    raw = median(runs["raw"], "cpu")
    name = f"{cfg['n']:,} funnel {method}s, concurrency {cfg['concurrency']}"
    ratio = median(runs["rdfunnel"], "cpu") / raw
    report.add(name, "client CPU s, rdfunnel / raw aiohttp", ratio, "<= 1.25", ratio <= 1.25)
    if httpx:
        other = median(runs["httpx"], "cpu") / raw
        report.add(name, "client CPU s, httpx+authlib / raw aiohttp", other, "(reference)", None)
    report.notes.append(
        f"{name}: raw aiohttp {raw:.2f} CPU s ({cfg['n'] / raw:,.0f} requests per CPU s); "
        f"rdfunnel {median(runs['rdfunnel'], 'cpu'):.2f} CPU s"
    )


def cpu(report: Report, size: Callable[[int], int], reps: int, quick: bool) -> None:
    with fake_server("--contacts", str(size(20_000))) as fake:
        for method in ("GET", "PUT"):
            cfg = {**fake, "n": size(20_000), "concurrency": 50}
            cpu_scenario(report, cfg, method, reps, httpx=method == "GET")


def hooks(report: Report, size: Callable[[int], int], reps: int, quick: bool) -> None:
    """What instrumentation costs: each instrumented client against its peer, in the same run."""
    with fake_server("--contacts", str(size(20_000))) as fake:
        cfg = {**fake, "n": size(20_000), "concurrency": 50, "method": "GET"}
        impls = ["raw", "rdfunnel", "rdfunnel_prometheus", "raw_otel", "rdfunnel_otel"]
        runs = interleaved(impls, cfg, reps)
    cpu_of = {impl: median(runs[impl], "cpu") for impl in impls}
    name = f"{cfg['n']:,} funnel GETs, concurrency 50"
    for impl, peer, label, target in (
        ("rdfunnel", "raw", "no hooks / raw aiohttp", 1.25),
        ("rdfunnel_prometheus", "raw", "PrometheusHooks / raw aiohttp", 1.15),
        ("rdfunnel_otel", "raw_otel", "OpenTelemetryHooks / raw aiohttp + its instrumentor", 1.25),
    ):
        ratio = cpu_of[impl] / cpu_of[peer]
        report.add(name, f"client CPU s, {label}", ratio, f"<= {target}", ratio <= target)
    report.notes.append(
        f"{name}, instrumented (OpenTelemetry SDK tracer with a batch processor and an exporter "
        "that drops spans, an SDK meter never collected): "
        + ", ".join(f"{impl} {seconds:.2f} CPU s" for impl, seconds in cpu_of.items())
    )


def memory(report: Report, size: Callable[[int], int], reps: int, quick: bool) -> None:
    small, big = size(10_000), size(200_000)
    with fake_server("--contacts", str(big)) as fake:
        peak = {n: measure("bulk", {**fake, "n": n, "concurrency": 50}) for n in (small, big)}
    growth = peak[big]["peak_rss_mb"] - peak[small]["peak_rss_mb"]
    name = f"{big:,} changes from a generator vs {small:,}"
    report.add(name, "peak RSS difference, MB", growth, "<= 20", growth <= 20)
    report.notes.append(
        f"{name}: peak RSS {peak[small]['peak_rss_mb']:.1f} MB and "
        f"{peak[big]['peak_rss_mb']:.1f} MB"
    )


def latency(report: Report, size: Callable[[int], int], reps: int, quick: bool) -> None:
    delay, n, c = 0.05, size(5_000), 100
    rounds = n / c  # each worker's requests, one after another
    with fake_server("--contacts", str(n), "--latency", str(delay)) as fake:
        for loop in ("asyncio", "uvloop"):
            cfg = {**fake, "n": n, "concurrency": c, "method": "PUT", "uvloop": loop == "uvloop"}
            trip = measure("round_trip", cfg)["round_trip"]
            runs = interleaved(["bulk", "raw"], cfg, reps)
            wall, raw_wall = median(runs["bulk"], "wall"), median(runs["raw"], "wall")
            vs_ideal = wall / (rounds * delay)
            vs_raw = wall / raw_wall
            name = f"{n:,} updates via update_many, {delay * 1000:.0f} ms latency, C={c}, {loop}"
            report.add(
                name, "wall / (N / C x latency)", vs_ideal, "<= 1.15", vs_ideal <= 1.15 or quick
            )
            report.add(name, "wall / raw aiohttp wall", vs_raw, "<= 1.05", vs_raw <= 1.05 or quick)
            per_trip = wall / (rounds * trip)
            report.add(
                name, "wall / (N / C x one request's round trip)", per_trip, "(reference)", None
            )
            report.notes.append(
                f"{name}: update_many {wall:.2f} s, raw aiohttp {raw_wall:.2f} s "
                f"({raw_wall / (rounds * delay):.2f} x N / C x latency), ideal "
                f"{rounds * delay:.2f} s; one PUT alone takes {trip * 1000:.1f} ms"
            )


def grouped(report: Report, size: Callable[[int], int], reps: int, quick: bool) -> None:
    delay, each = 0.05, 4 if quick else 16
    # (contacts, concurrency, whether the look-ahead covers the whole input): the case, a
    # larger one, one whose grouped input the default look-ahead does not cover, and that one
    # with a look-ahead that does
    for contacts, c, whole in ((8, 16, False), (32, 32, False), (128, 64, False), (128, 64, True)):
        n = contacts * each
        lookahead = n - c if whole else None
        with fake_server("--contacts", str(max(n, c)), "--latency", str(delay)) as fake:
            cfg = {**fake, "n": n, "concurrency": c, "contacts": contacts, "lookahead": lookahead}
            runs = interleaved(["grouped", "interleaved"], cfg, reps)
        wall, mixed = median(runs["grouped"], "wall"), median(runs["interleaved"], "wall")
        ratio = wall / mixed
        ahead = "default look-ahead" if lookahead is None else f"lookahead={lookahead}"
        name = (
            f"{contacts} contacts x {each} changes via update_many, {delay * 1000:.0f} ms "
            f"latency, C={c}, {ahead}"
        )
        measure_ = "wall, grouped by contact / interleaved"
        report.add(name, measure_, ratio, "<= 1.25", ratio <= 1.25 or quick)
        window = c + (default_lookahead(c) if lookahead is None else lookahead)
        failed = sum(run["failed"] for order in runs.values() for run in order)
        report.notes.append(
            f"{name}: grouped (aa..bb..) {wall:.2f} s, interleaved (ab..ab..) {mixed:.2f} s, "
            f"{failed} failed; at most {window} changes are read and unfinished at once (in "
            f"grouped input, {min(window, n) / each:.0f} of the {contacts} contacts), and one "
            f"contact's {each} changes, one after another, take at least {each * delay:.2f} s"
        )


def rates(report: Report, size: Callable[[int], int], reps: int, quick: bool) -> None:
    n = size(3_000)
    with fake_server("--contacts", str(n), "--account-rps", "200") as fake:
        cfg = {**fake, "n": n, "concurrency": 50, "count": True}
        capped = [measure("bulk", {**cfg, "max_rate": 200})]
        free = [measure("bulk", cfg) for _ in range(reps)]
    rate = n / median(capped, "wall") / 200
    name = f"{n:,} updates with max_rate=200 (fake caps at 200/s)"
    report.add(name, "achieved rate / 200", rate, ">= 0.95", rate >= 0.95 or quick)
    report.add(name, "429s", median(capped, "429s"), "0", median(capped, "429s") == 0)
    goodput = statistics.median((n - run["failed"]) / run["wall"] / 200 for run in free)
    share = statistics.median(run["429s"] / run["requests"] for run in free)
    name = f"{n:,} updates, fake caps at 200/s, no client cap"
    report.add(name, "goodput / 200", goodput, ">= 0.80", goodput >= 0.80 or quick)
    report.add(name, "429s / requests", share, "<= 0.05", share <= 0.05)


def token(report: Report, size: Callable[[int], int], reps: int, quick: bool) -> None:
    n, pairs = size(1_000), 6 * reps + 1
    with fake_server("--contacts", str(n)) as fake:
        for loop in ("asyncio", "uvloop"):
            cfg = {**fake, "n": n, "reps": pairs, "uvloop": loop == "uvloop"}
            burst = measure("expired", cfg)
            name = f"{n:,} concurrent calls on a token the client knows expired, {loop}"
            requests = burst["token_requests_per_burst"]
            ok = requests == 1 and burst["fresh_token_requests"] == 0
            report.add(name, "token requests", requests, "1", ok)
            trips = burst["stall"] / burst["trip_in_burst"]
            stalled = "calls stalled by the refresh / its round trip"
            report.add(name, stalled, trips, "about 1 (<= 2)", trips <= 2 or quick)
            ms = {key: burst[key] * 1000 for key in burst}
            added = "whole burst, added ms (median paired difference)"
            report.add(name, added, ms["added"], "(reference)", None)
            report.notes.append(
                f"{name}: the token request leaves {ms['token_sent']:.1f} ms into the burst, once "
                f"every call has reached its wait; it is answered {ms['trip_in_burst']:.1f} ms "
                f"later and the first call goes out again {ms['stall']:.1f} ms after it left (one "
                f"token round trip on an idle client: {ms['token_round_trip']:.1f} ms). Whole "
                f"bursts: {ms['fresh']:.0f} ms with a fresh token and {ms['expired']:.0f} ms with "
                f"an expired one; paired difference {ms['added']:+.1f} ms, 95% interval "
                f"[{ms['added_low']:+.0f}, {ms['added_high']:+.0f}] ms over {pairs} pairs"
            )


SCENARIOS = {
    "cpu": cpu,
    "memory": memory,
    "hooks": hooks,
    "latency": latency,
    "grouped": grouped,
    "rates": rates,
    "token": token,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    scale = 0.01 if args.quick else 1.0
    reps = 1 if args.quick else args.reps

    def size(n: int) -> int:
        return max(int(n * scale), 20)

    report = Report()
    started = time.time()
    for name in args.only.split(","):
        SCENARIOS[name](report, size, reps, args.quick)
    write(args.out, report, time.time() - started, args.quick)


def write(out: Path, report: Report, elapsed: float, quick: bool) -> None:
    versions = ", ".join(
        f"{name} {version(name)}"
        for name in ("rdfunnel", "aiohttp", "attrs", "cattrs", "orjson", "httpx", "authlib")
    )
    lines = [
        "# Benchmark results",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC{' (quick smoke run)' if quick else ''}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}",
        f"- Python {platform.python_version()}; {versions}",
        f"- took {elapsed:.0f} s; command: `python bench/run.py`",
        "",
        "| scenario | measure | value | target | met |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {' | '.join(row)} |" for row in report.rows),
        "",
        *(f"- {note}" for note in report.notes),
        "",
    ]
    kept = out.read_text(encoding="utf-8") if out.exists() else ""
    if HISTORY in kept:  # the hand-written record of what profiling found and changed stays
        lines.append(kept[kept.index(HISTORY) :].rstrip("\n") + "\n")
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
