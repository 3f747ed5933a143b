"""How contacts show in logs, events, metrics and messages: masked, or a route's placeholder."""

from __future__ import annotations

import pytest

from rdfunnel._privacy import mask, masked_contact, masked_path, route_of, scrub

UUID = "3f2a1111-2222-3333-4444-555555555555"


def test_mask() -> None:
    assert mask("email", "ana.maria@example.com") == "a***@example.com"
    assert mask("email", "o'hara@x@example.com") == "o***@example.com"
    assert mask("uuid", UUID) == "3f2a…"
    assert masked_contact(("email", "ana@example.com"), full=False) == "a***@example.com"
    assert masked_contact(("email", "ana@example.com"), full=True) == "ana@example.com"
    assert masked_contact(None, full=False) is None


@pytest.mark.parametrize(
    ("path", "route", "masked"),
    [
        (
            "/platform/contacts/email:ana@example.com/funnels/default",
            "/platform/contacts/{contact}/funnels/default",
            "/platform/contacts/email:a***@example.com/funnels/default",
        ),
        (
            "/platform/contacts/email:we%2Fbia.secret@example.com/funnels/default",
            "/platform/contacts/{contact}/funnels/default",
            "/platform/contacts/email:w***@example.com/funnels/default",
        ),
        (
            f"/platform/contacts/uuid:{UUID}",
            "/platform/contacts/{contact}",
            "/platform/contacts/uuid:3f2a…",
        ),
        ("/platform/contacts/ana%40example.com", "/platform/contacts/{contact}", None),
        ("/marketing/account_info", "/marketing/account_info", "/marketing/account_info"),
    ],
)
def test_paths(path: str, route: str, masked: str | None) -> None:
    assert route_of(path) == route
    shown = masked_path(path)
    if masked is not None:
        assert shown == masked
    assert "ana@" not in shown and "bia.secret" not in shown and UUID not in shown


def test_scrub_masks_addresses_in_free_text() -> None:
    text = (
        "400, message='Bad', url='https://api.rd.services/platform/contacts/"
        "email:ana%40example.com/funnels/default' (and bob.x@ex.org)"
    )
    scrubbed = scrub(text)
    assert "ana" not in scrubbed and "bob.x" not in scrubbed
    assert "a***@example.com" in scrubbed and "b***@ex.org" in scrubbed
    assert scrub("no address here") == "no address here"
