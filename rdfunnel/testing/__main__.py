"""``python -m rdfunnel.testing``: serve a FakeRDStation until stopped.

Prints one JSON line on start (``url``, ``client_id``, ``client_secret``, ``refresh_token``) so a
script or a benchmark can read where to connect and with what. ``--print-env`` then prints the
shell lines that point rdfunnel at it, with a throwaway token file (removed on exit), so a fake's
token never lands in a real account's token file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ._config import FAULT_KINDS, Faults, Limits
from ._server import FakeRDStation

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rdfunnel.testing",
        description="Serve a fake RD Station Marketing API until stopped.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--contacts",
        type=int,
        default=0,
        metavar="N",
        help="seed contact-0@example.com ... contact-{N-1}@example.com",
    )
    parser.add_argument("--client-id")
    parser.add_argument("--client-secret")
    parser.add_argument("--refresh-token")
    parser.add_argument("--token-lifetime", type=float, default=86400.0, metavar="SECONDS")
    parser.add_argument("--rotate-refresh-tokens", action="store_true")
    parser.add_argument("--auto-create", action="store_true", help="create contacts on first touch")
    limits = parser.add_argument_group("rate limits (off unless given)")
    limits.add_argument("--per-contact", type=int, metavar="N", help="funnel calls per contact")
    limits.add_argument("--window", type=float, default=86400.0, metavar="SECONDS")
    limits.add_argument("--account-rps", type=int, metavar="N", help="API requests per second")
    faults = parser.add_argument_group("faults (probabilities per API request, off unless given)")
    for kind in FAULT_KINDS:
        faults.add_argument("--" + kind.replace("_", "-"), type=float, default=0.0, metavar="P")
    faults.add_argument("--slow-seconds", type=float, default=30.0)
    faults.add_argument("--latency", type=float, default=0.0, metavar="SECONDS")
    faults.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--print-env",
        action="store_true",
        help="also print `export` lines for rdfunnel, with a throwaway token file",
    )
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="serve on uvloop (pip install uvloop): more requests/s",
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeRDStation(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        refresh_token=args.refresh_token,
        token_lifetime=args.token_lifetime,
        rotate_refresh_tokens=args.rotate_refresh_tokens,
        auto_create=args.auto_create,
        contacts=args.contacts,
        limits=Limits(
            per_contact=args.per_contact, window=args.window, account_rps=args.account_rps
        ),
        faults=Faults(
            slow_seconds=args.slow_seconds,
            latency=args.latency,
            seed=args.seed,
            **{kind: getattr(args, kind) for kind in FAULT_KINDS},
        ),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows
            loop.add_signal_handler(signum, stop.set)
    async with fake:
        line = {
            "url": fake.url,
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
            "refresh_token": fake.refresh_token,
        }
        print(json.dumps(line), flush=True)
        if not args.print_env:
            await stop.wait()
            return
        with tempfile.TemporaryDirectory(prefix="rdfunnel-fake-") as folder:
            print(_environment(fake, Path(folder) / "token.json"), flush=True)
            await stop.wait()


def _environment(fake: FakeRDStation, token_file: Path) -> str:
    settings = {
        "RDSTATION_BASE_URL": fake.url,
        "RDSTATION_CLIENT_ID": fake.client_id,
        "RDSTATION_CLIENT_SECRET": fake.client_secret,
        "RDSTATION_REFRESH_TOKEN": fake.refresh_token,
        "RDFUNNEL_TOKEN_FILE": str(token_file),
    }
    lines = [f"export {name}={shlex.quote(value)}" for name, value in settings.items()]
    return "\n".join(
        ["# to use this fake (its token file is a throwaway one, removed on exit):", *lines]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.uvloop:
            import uvloop

            uvloop.run(_serve(args))
        else:
            asyncio.run(_serve(args))
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C
        pass
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
