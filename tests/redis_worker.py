"""One worker process for tests/test_redis.py: an RDStation on a shared Redis store and limiter.

``python -m tests.redis_worker '<json config>'``. With ``warm_up``, sends one call first (loading
the token from Redis) and prints ``ready``. With ``wait_for_go``, then waits for a ``go`` line on
stdin. Then sends ``calls`` funnel GETs at once and prints a JSON summary as its last line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from typing import Any

import redis.asyncio as aioredis

from rdfunnel import RDStation, Token
from rdfunnel.contrib.redis import RedisRateLimiter, RedisTokenStore


async def main(config: dict[str, Any]) -> dict[str, Any]:
    redis = aioredis.from_url(config["redis_url"])
    refreshed: list[Token] = []
    options: dict[str, Any] = {}
    if config.get("token_url"):
        options["token_url"] = config["token_url"]
    rd = RDStation(
        client_id=config["client_id"],
        client_secret=config["client_secret"],
        base_url=config["base_url"],
        token_store=RedisTokenStore(
            redis, key=config["token_key"], lock_ttl=config.get("lock_ttl", 10.0)
        ),
        rate_limiter=RedisRateLimiter(
            redis,
            key=config["rate_key"],
            max_rate=config.get("max_rate"),
            burst=config.get("burst", 1),
        ),
        on_token_refresh=refreshed.append,
        **options,
    )
    email = config["email"]
    try:
        if config.get("warm_up", True):
            await rd.funnels.get(email)
            print("ready", flush=True)
        if config.get("wait_for_go", True):
            line = await asyncio.to_thread(sys.stdin.readline)
            if line.strip() != "go":
                raise SystemExit(f"expected 'go', got {line!r}")
        outcomes = await asyncio.gather(
            *(rd.funnels.get(email) for _ in range(config["calls"])), return_exceptions=True
        )
    finally:
        await rd.close()
        await redis.aclose()
    errors = Counter(
        f"{type(outcome).__name__}: {outcome}"
        for outcome in outcomes
        if isinstance(outcome, BaseException)
    )
    return {
        "ok": sum(not isinstance(outcome, BaseException) for outcome in outcomes),
        "errors": dict(errors),
        "refreshed": len(refreshed),
    }


if __name__ == "__main__":
    summary = asyncio.run(main(json.loads(sys.argv[1])))
    print(json.dumps(summary), flush=True)
