"""Contacts, stages, updates and the converter: what goes on the wire and what is read back."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rdfunnel import NOT_SET, Contact, Funnel, FunnelUpdate, LifecycleStage
from rdfunnel._serde import funnel_from_json, update_to_json
from rdfunnel.errors import ValidationError

VALID_EMAILS = [
    "ana@example.com",
    "ana+tag@example.com",
    "a/b?c#d%e'f=g!h@example.com",
    "{x}|~^`*$&@example.com",
    "first.last@sub.example.co",
    "josé@exämple.com",
    "用户@例子.广告",
    "ana@localhost",
]
INVALID_EMAILS = [
    "ana.example.com",
    "@example.com",
    "ana@",
    "an a@example.com",
    "ana@exa mple.com",
    "ana\x00@example.com",
    "ana\t@example.com",
    "ana\u2028@example.com",
    ".ana@example.com",
    "ana..b@example.com",
    "ana@-example.com",
    "ana@example..com",
    'a"b@example.com',
    "a(b)@example.com",
]


@pytest.mark.parametrize("email", VALID_EMAILS)
def test_valid_emails_are_accepted(email: str) -> None:
    assert Contact.parse(email) == Contact("email", email)
    assert Contact.email(email).value == email


@pytest.mark.parametrize("email", INVALID_EMAILS)
def test_invalid_emails_name_the_value(email: str) -> None:
    with pytest.raises(ValidationError) as info:
        Contact.parse(email) if "@" in email else Contact.email(email)
    assert repr(email) in str(info.value)


def test_uuids_are_canonicalised() -> None:
    raw = "5F0C1A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B"
    assert Contact.parse(raw) == Contact("uuid", raw.lower())
    assert Contact.uuid("{" + raw + "}").value == raw.lower()
    assert Contact.uuid(uuid.UUID(raw)).value == raw.lower()


@pytest.mark.parametrize("value", ["ana", "", "12345", "not-a-uuid-at-all"])
def test_a_string_that_is_neither_email_nor_uuid_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="neither an email address nor a UUID"):
        Contact.parse(value)


def test_bad_uuid_is_refused() -> None:
    with pytest.raises(ValidationError, match="'nope' is not a UUID"):
        Contact.uuid("nope")


def test_validation_error_is_a_value_error() -> None:
    assert issubclass(ValidationError, ValueError)


def test_lifecycle_stage_values_are_rds_exactly() -> None:
    assert [stage.value for stage in LifecycleStage] == ["Lead", "Qualified Lead", "Client"]


@pytest.mark.parametrize(
    ("kwargs", "body"),
    [
        ({"lifecycle_stage": LifecycleStage.CLIENT}, {"lifecycle_stage": "Client"}),
        ({"opportunity": True}, {"opportunity": True}),
        ({"contact_owner_email": "o@x.com"}, {"contact_owner_email": "o@x.com"}),
        (
            {"lifecycle_stage": "Qualified Lead", "opportunity": False},
            {"lifecycle_stage": "Qualified Lead", "opportunity": False},
        ),
        (
            {"lifecycle_stage": "Lead", "contact_owner_email": "o@x.com"},
            {"lifecycle_stage": "Lead", "contact_owner_email": "o@x.com"},
        ),
        (
            {"opportunity": True, "contact_owner_email": "o@x.com"},
            {"opportunity": True, "contact_owner_email": "o@x.com"},
        ),
        (
            {"lifecycle_stage": "Client", "opportunity": True, "contact_owner_email": "o@x.com"},
            {"lifecycle_stage": "Client", "opportunity": True, "contact_owner_email": "o@x.com"},
        ),
    ],
)
def test_only_set_fields_are_serialised(kwargs: dict[str, Any], body: dict[str, Any]) -> None:
    assert update_to_json(FunnelUpdate(**kwargs)) == body


def test_clearing_the_owner_has_two_wire_forms() -> None:
    update = FunnelUpdate(contact_owner_email=None)
    assert update_to_json(update) == {"contact_owner_email": "null"}
    assert update_to_json(update, "string") == {"contact_owner_email": "null"}
    assert update_to_json(update, "null") == {"contact_owner_email": None}


def test_unset_fields_are_not_none() -> None:
    update = FunnelUpdate(opportunity=True)
    assert update.lifecycle_stage is NOT_SET
    assert update.contact_owner_email is NOT_SET
    assert "contact_owner_email" not in update_to_json(update, "null")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "at least one of"),
        ({"lifecycle_stage": "Customer"}, "'Customer' is not one of 'Lead'"),
        ({"lifecycle_stage": "client"}, "'client' is not one of"),
        ({"opportunity": "yes"}, "opportunity must be True or False, got 'yes'"),
        ({"opportunity": 1}, "opportunity must be True or False, got 1"),
        ({"contact_owner_email": "owner"}, "'owner' is not a valid email"),
        (
            {"contact_owner_email": "o" * 40 + "@" + "x" * 56 + ".com"},
            "101 characters long; RD accepts",
        ),
        ({"contact_owner_email": 7}, "contact_owner_email must be a string"),
    ],
)
def test_bad_updates_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FunnelUpdate(**kwargs)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {
                "lifecycle_stage": "Client",
                "opportunity": True,
                "contact_owner_email": "o@x.org",
                "fit": 60,
                "interest": 100,
            },
            Funnel(LifecycleStage.CLIENT, True, "o@x.org", 60, 100),
        ),
        ({"lifecycle_stage": "Lead", "opportunity": False}, Funnel(LifecycleStage.LEAD, False)),
        (
            {
                "lifecycle_stage": "Qualified Lead",
                "opportunity": False,
                "contact_owner_email": None,
                "fit": "A",
                "interest": None,
                "name": "Ana",
                "origin": "x",
            },
            Funnel(LifecycleStage.QUALIFIED_LEAD, False, None, "A", None),
        ),
        ({"lifecycle_stage": "Customer Success"}, Funnel("Customer Success")),
        ({"fit": 12.0, "interest": [1]}, Funnel(fit=12, interest="[1]")),
        ({"opportunity": "true"}, Funnel(opportunity=True)),
        ({}, Funnel()),
        ([], Funnel()),
        (None, Funnel()),
    ],
)
def test_funnels_are_read_tolerantly(payload: Any, expected: Funnel) -> None:
    assert funnel_from_json(payload) == expected


@given(st.emails())
def test_email_path_segments_decode_back_to_the_value(email: str) -> None:
    segment = Contact.email(email).path_segment
    assert segment.startswith("email:")
    encoded = segment.removeprefix("email:")
    assert "/" not in encoded and "?" not in encoded and "#" not in encoded and " " not in encoded
    assert unquote(encoded) == email


@given(
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp")
        ),
        min_size=1,
        max_size=30,
    ).filter(lambda local: "@" not in local)
)
def test_any_printable_local_part_keeps_the_path_intact(local: str) -> None:
    segment = Contact("email", local + "@example.com").path_segment
    assert segment.count("/") == 0 and "?" not in segment and "#" not in segment
    assert unquote(segment.removeprefix("email:")) == local + "@example.com"


@given(
    st.tuples(
        st.sampled_from([NOT_SET, *LifecycleStage]),
        st.sampled_from([NOT_SET, True, False]),
        st.sampled_from([NOT_SET, None, "owner@example.com"]),
    ).filter(lambda fields: any(value is not NOT_SET for value in fields))
)
def test_update_round_trips_through_the_wire_body(fields: Any) -> None:
    stage, opportunity, owner = fields
    update = FunnelUpdate(lifecycle_stage=stage, opportunity=opportunity, contact_owner_email=owner)
    body = update_to_json(update, "null")
    read_back = FunnelUpdate(**body)
    assert read_back == update
