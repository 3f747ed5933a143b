"""Which credentials were given: the one decision the client, the CLI and FastAPI share."""

from __future__ import annotations

from typing import Any

import pytest

from rdfunnel._credentials import AppCredentials, StaticCredentials, app_credentials, resolve
from rdfunnel.errors import ValidationError
from rdfunnel.tokens import MemoryTokenStore, Token

STORE = MemoryTokenStore()
TOKEN = Token(access_token="a-secret-token", refresh_token="r-secret")


def test_an_app_with_a_refresh_token() -> None:
    got = resolve(client_id="c", client_secret="s", refresh_token="r")
    assert got == AppCredentials("c", "s", refresh_token="r")


def test_an_app_with_a_token_or_a_store() -> None:
    assert resolve(client_id="c", client_secret="s", token=TOKEN) == AppCredentials(
        "c", "s", token=TOKEN
    )
    assert resolve(client_id="c", client_secret="s", token_store=STORE) == AppCredentials(
        "c", "s", token_store=STORE
    )


def test_an_apps_access_token_becomes_its_starting_token() -> None:
    got = resolve(client_id="c", client_secret="s", access_token="a", refresh_token="r")
    assert got == AppCredentials(
        "c", "s", token=Token(access_token="a", refresh_token="r"), refresh_token="r"
    )


def test_an_access_token_alone_is_static() -> None:
    assert resolve(access_token="a") == StaticCredentials("a")
    assert resolve(token=TOKEN) == StaticCredentials("a-secret-token")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs credentials"),
        ({"client_id": "c"}, "client_id and client_secret go together"),
        ({"client_secret": "s", "refresh_token": "r"}, "client_id and client_secret go together"),
        ({"client_id": "c", "client_secret": "s"}, "needs a token to start from"),
        ({"access_token": "a", "token": TOKEN}, "either token or access_token"),
        ({"access_token": "a", "refresh_token": "r"}, "needs the app's client_id"),
        ({"token": TOKEN, "token_store": STORE}, "needs the app's client_id"),
        ({"refresh_token": "r"}, "needs credentials"),
        ({"client_id": 7, "client_secret": "s"}, "client_id must be a str, got int"),
        ({"access_token": b"secret"}, "access_token must be a str, got bytes"),
        ({"token": "a-secret-token"}, "token must be a Token"),
        ({"client_id": "c", "client_secret": "s", "token_store": {}}, "must be a TokenStore"),
    ],
)
def test_what_does_not_add_up_is_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        resolve(**kwargs)
    assert "secret" not in str(caught.value).replace("client_secret", "")


def test_app_credentials_both_or_neither() -> None:
    assert app_credentials(None, None) is None
    assert app_credentials("", "") is None
    assert app_credentials("c", "s") == ("c", "s")
    with pytest.raises(ValidationError, match="go together"):
        app_credentials("c", None)


def test_reprs_hide_the_secrets() -> None:
    shown = repr(resolve(client_id="c", client_secret="s3cr3t", token=TOKEN))
    shown += repr(resolve(access_token="a-secret-token"))
    assert "s3cr3t" not in shown and "a-secret-token" not in shown and "r-secret" not in shown
