"""``rdfunnel auth login``: the browser authorization with a one-shot callback on 127.0.0.1."""

from __future__ import annotations

import asyncio
import webbrowser
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from ..oauth import authorization_url, exchange_code
from ..tokens import Token, TokenStore

__all__ = ["LoginError", "login"]

_DONE_PAGE = (
    "<!DOCTYPE html><html><body><h1>rdfunnel is authorized</h1>"
    "<p>You can close this window and go back to the terminal.</p></body></html>"
)


class LoginError(Exception):
    """The authorization did not complete: refused, state mismatch, or no answer in time."""


async def login(
    *,
    client_id: str,
    client_secret: str,
    base_url: str,
    store: TokenStore,
    network: Mapping[str, Any],
    port: int,
    open_browser: bool,
    show: Callable[[str, str], None],
    wait: float = 300.0,
) -> Token:
    """Send the user to RD's consent page, receive the code on 127.0.0.1, and save the token."""
    answer: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()

    async def callback(request: web.Request) -> web.Response:
        query = request.query
        if not answer.done():
            if "code" in query:
                answer.set_result((query["code"], query.get("state", "")))
            else:
                reason = query.get("error_description") or query.get("error") or "no code"
                answer.set_exception(LoginError(f"the authorization was refused: {reason}"))
        return web.Response(text=_DONE_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/callback", callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        try:
            await site.start()
        except OSError as exc:
            raise LoginError(
                f"cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}): "
                "pass another --port (0: any free port)"
            ) from None
        actual_port = runner.addresses[0][1]
        redirect_uri = f"http://127.0.0.1:{actual_port}/callback"
        url, state = authorization_url(client_id, redirect_uri, base_url=base_url)
        show(url, redirect_uri)
        if open_browser:
            webbrowser.open(url)
        try:
            code, returned_state = await asyncio.wait_for(answer, wait)
        except TimeoutError:
            raise LoginError(f"no authorization arrived within {wait:g} s") from None
    finally:
        await runner.cleanup()
    if returned_state != state:
        raise LoginError("the state sent back does not match: the login was not started here")
    token = await exchange_code(
        code,
        client_id=client_id,
        client_secret=client_secret,
        redirect_uri=redirect_uri,
        base_url=base_url,
        **network,
    )
    await store.save(token)
    return token
