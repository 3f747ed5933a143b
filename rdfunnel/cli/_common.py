"""What every ``rdfunnel`` command shares: settings, the consoles, exit statuses, failing."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import attrs
from rich.console import Console

from .._credentials import app_credentials
from ..client import RDStation
from ..errors import AuthenticationError, RDStationError, ValidationError
from ..tokens import FileTokenStore, TokenStoreError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_QUOTA, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
NO_APP = "set RDSTATION_CLIENT_ID and RDSTATION_CLIENT_SECRET (or --client-id and --client-secret)"

LOGIN_AGAIN = "run `rdfunnel auth login` to authorize again"

T = TypeVar("T")
# soft_wrap: a message stays on one line however narrow the terminal, so it can be grepped.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class Aborted(Exception):
    """A second Ctrl-C cancelled the requests in flight."""


@attrs.frozen
class Settings:
    """Where to reach RD Station and with which credentials (flags, else the environment).

    Requests go through ``proxy`` when given, else through the environment's (``HTTPS_PROXY``,
    ``HTTP_PROXY``, ``NO_PROXY``): the command trusts its environment, as curl does.
    """

    client_id: str | None
    client_secret: str | None = attrs.field(repr=False)
    refresh_token: str | None = attrs.field(repr=False)
    base_url: str
    token_file: Path
    proxy: str | None = None

    @property
    def network(self) -> dict[str, Any]:
        """The proxy settings every session the command opens takes."""
        return {"proxy": self.proxy, "trust_env": True}

    def store(self) -> FileTokenStore:
        return FileTokenStore(self.token_file)

    def app(self) -> tuple[str, str]:
        """The app's client id and secret, or the error that says where to set them."""
        try:
            app = app_credentials(self.client_id, self.client_secret)
        except ValidationError:
            app = None
        return app or fail(NO_APP)

    def client(self, **kwargs: Any) -> RDStation:
        client_id, client_secret = self.app()
        if not self.token_file.exists() and not self.refresh_token:
            fail(f"not logged in: no token in {self.token_file}; run `rdfunnel auth login`")
        self._warn_if_refresh_token_ignored()
        return RDStation(
            client_id=client_id,
            client_secret=client_secret,
            refresh_token=self.refresh_token,
            token_store=self.store(),
            base_url=self.base_url,
            **self.network,
            **kwargs,
        )

    def _warn_if_refresh_token_ignored(self) -> None:
        """The token file wins over a refresh token given: say so, or the new one seems lost."""
        if not self.refresh_token or not self.token_file.exists():
            return
        try:
            stored = json.loads(self.token_file.read_text(encoding="utf-8")).get("refresh_token")
        except (OSError, ValueError, AttributeError):
            return  # the store itself reports an unreadable file
        if stored != self.refresh_token:
            err.print(
                f"[yellow]note:[/] the refresh token given (--refresh-token or "
                f"RDSTATION_REFRESH_TOKEN) is not used: {self.token_file} already holds a token, "
                "and the token file wins. To start from the new refresh token, delete that file "
                "or point --token-file (RDFUNNEL_TOKEN_FILE) at another one",
                highlight=False,
            )


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(f"[red]error:[/] {message}", highlight=False)
    sys.exit(code)


def refused(error: AuthenticationError) -> str:
    """What RD said, without the library's hint (``rdfunnel.oauth``): the CLI gives its own."""
    said = error.messages[0] if error.messages else ""
    what = " ".join(part for part in (f"HTTP {error.status}", error.error_type) if part)
    return f"RD Station refused the authorization ({what}: {said})"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning rdfunnel errors into a message and an exit status."""
    try:
        return asyncio.run(coroutine)
    except AuthenticationError as exc:
        fail(f"{refused(exc)}; {LOGIN_AGAIN}", EXIT_AUTH)
    except (ValidationError, TokenStoreError) as exc:
        fail(str(exc))  # a setting to change: the message says which
    except RDStationError as exc:
        fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED)
    except Aborted:
        fail(
            "aborted: rows in flight may not be in the results file; run again with --resume",
            EXIT_INTERRUPTED,
        )
