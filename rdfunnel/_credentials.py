"""Which credentials were given: one decision for the client, the CLI and FastAPI alike.

An app (client id and secret) with a token to start from gets tokens refreshed for it; an access
token alone is sent as is. Every other combination is a :class:`ValidationError` naming what is
missing or conflicting, raised before anything is sent. Messages name arguments, never values:
the values are secrets.
"""

from __future__ import annotations

import attrs

from ._options import check_optional_str
from .errors import ValidationError
from .tokens import Token, TokenStore

__all__ = ["AppCredentials", "Credentials", "StaticCredentials", "app_credentials", "resolve"]


@attrs.frozen
class AppCredentials:
    """An RD Station app and the token its refresher starts from (at least one is given)."""

    client_id: str
    client_secret: str = attrs.field(repr=False)
    token: Token | None = attrs.field(default=None, repr=False)
    refresh_token: str | None = attrs.field(default=None, repr=False)
    token_store: TokenStore | None = None


@attrs.frozen
class StaticCredentials:
    """An access token the caller manages: sent as is, never refreshed."""

    access_token: str = attrs.field(repr=False)


Credentials = AppCredentials | StaticCredentials


def app_credentials(client_id: str | None, client_secret: str | None) -> tuple[str, str] | None:
    """The app's id and secret, or None when neither is given; one without the other is an error."""
    check_optional_str("client_id", client_id)
    check_optional_str("client_secret", client_secret)
    if not (client_id or client_secret):
        return None
    if not (client_id and client_secret):
        raise ValidationError("client_id and client_secret go together: pass both")
    return client_id, client_secret


def resolve(
    *,
    client_id: str | None = None,
    client_secret: str | None = None,
    refresh_token: str | None = None,
    access_token: str | None = None,
    token: Token | None = None,
    token_store: TokenStore | None = None,
) -> Credentials:
    """What ``RDStation(...)``'s credential arguments amount to, or the error that says why not."""
    check_optional_str("refresh_token", refresh_token)
    check_optional_str("access_token", access_token)
    if token is not None and not isinstance(token, Token):
        # The type only: a string here is likely an access token.
        raise ValidationError(f"token must be a Token, got {type(token).__name__}")
    if token_store is not None and not isinstance(token_store, TokenStore):
        raise ValidationError(f"token_store must be a TokenStore, got {token_store!r}")
    if token is not None and access_token is not None:
        raise ValidationError("pass either token or access_token, not both")
    app = app_credentials(client_id, client_secret)
    if app is not None:
        if token is None and access_token is not None:
            token = Token(access_token=access_token, refresh_token=refresh_token)
        if token is None and refresh_token is None and token_store is None:
            raise ValidationError(
                "RDStation needs a token to start from: pass refresh_token=, token= or "
                "token_store= (see rdfunnel.oauth to authorize the app)"
            )
        return AppCredentials(*app, token, refresh_token, token_store)
    if access_token or token is not None:
        if refresh_token or token_store is not None:
            raise ValidationError("refreshing tokens needs the app's client_id and client_secret")
        return StaticCredentials(token.access_token if token is not None else str(access_token))
    raise ValidationError(
        "RDStation needs credentials: client_id, client_secret and refresh_token "
        "(or token/token_store), or an access_token"
    )
