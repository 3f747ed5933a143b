"""The fake's contacts: their funnels, found by email or UUID, and the changes a PUT makes."""

from __future__ import annotations

import uuid as _uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal

import attrs

from ..models import check_email
from ._bodies import dumps

__all__ = ["ContactBook", "ContactRecord", "FakeContact", "contact_uuid"]

_NAMESPACE: Final = _uuid.UUID("8f4a2c56-3b1e-5d7a-9c0f-2e6b1d4a7c93")

#: A contact created on first touch, or seeded: RD's defaults for a new lead.
_NEW_CONTACT: Final[dict[str, Any]] = {
    "stage": "Lead",
    "opportunity": False,
    "owner": None,
    "fit": 0,
    "interest": 0,
    "extra": {},
}


def contact_uuid(email: str) -> str:
    """The UUID the fake gives ``email`` when none is chosen: the same on every run."""
    return str(_uuid.uuid5(_NAMESPACE, email.lower()))


@attrs.frozen
class FakeContact:
    """A contact as the fake holds it, frozen at the moment you looked."""

    email: str
    uuid: str
    lifecycle_stage: str
    opportunity: bool
    contact_owner_email: str | None
    fit: int | str
    interest: int | str


class ContactRecord:
    """The fake's mutable contact, with its funnel answer cached as bytes between changes."""

    __slots__ = (
        "body",
        "email",
        "extra",
        "fit",
        "interest",
        "opportunity",
        "owner",
        "puts",
        "stage",
        "uuid",
    )

    def __init__(
        self,
        email: str,
        uuid: str,
        *,
        stage: str,
        opportunity: bool,
        owner: str | None,
        fit: int | str,
        interest: int | str,
        extra: Mapping[str, Any],
    ) -> None:
        self.email = email
        self.uuid = uuid
        self.stage = stage
        self.opportunity = opportunity
        self.owner = owner
        self.fit = fit
        self.interest = interest
        self.extra = dict(extra)
        self.puts: list[Mapping[str, Any]] = []
        self.body = b""

    def render(self, missing_owner: Literal["null", "omit"]) -> None:
        """Rebuild the cached funnel body after a change."""
        payload: dict[str, Any] = {
            "lifecycle_stage": self.stage,
            "opportunity": self.opportunity,
            "contact_owner_email": self.owner,
            "fit": self.fit,
            "interest": self.interest,
        }
        if self.owner is None and missing_owner == "omit":
            del payload["contact_owner_email"]
        payload.update(self.extra)
        self.body = dumps(payload)

    def snapshot(self) -> FakeContact:
        return FakeContact(
            self.email,
            self.uuid,
            self.stage,
            self.opportunity,
            self.owner,
            self.fit,
            self.interest,
        )


class ContactBook:
    """Every contact, by lower-cased email and by UUID (the same records in both)."""

    def __init__(self, *, auto_create: bool, missing_owner: Literal["null", "omit"]) -> None:
        self.auto_create = auto_create
        self.missing_owner = missing_owner
        self.by_email: dict[str, ContactRecord] = {}
        self.by_uuid: dict[str, ContactRecord] = {}

    def add(self, email: str, uuid: str | None, **funnel: Any) -> ContactRecord:
        check_email(email, "contact email")
        key = email.lower()
        uuid = (uuid or contact_uuid(email)).lower()
        if key in self.by_email or uuid in self.by_uuid:
            raise ValueError(f"the fake already has a contact {email!r} or uuid {uuid!r}")
        record = ContactRecord(email, uuid, **funnel)
        record.render(self.missing_owner)
        self.by_email[key] = record
        self.by_uuid[uuid] = record
        return record

    def seed(self, count: int) -> None:
        """``contact-0@example.com`` ... at stage Lead; fast, as benchmarks seed many."""
        template = self.add("contact-0@example.com", None, **_NEW_CONTACT)
        for index in range(1, count):
            email = f"contact-{index}@example.com"
            uuid = contact_uuid(email)
            if email in self.by_email or uuid in self.by_uuid:
                raise ValueError(f"the fake already has a contact {email!r}")
            record = ContactRecord(email, uuid, **_NEW_CONTACT)
            record.body = template.body
            self.by_email[email] = self.by_uuid[uuid] = record

    def touch(self, email: str) -> ContactRecord | None:
        """The contact ``email`` names; with ``auto_create``, a new Lead on first touch."""
        record = self.by_email.get(email.lower())
        if record is None and self.auto_create:
            try:
                record = self.add(email, None, **_NEW_CONTACT)
            except ValueError:  # not an email RD would accept: no such contact
                return None
        return record

    def apply(
        self, record: ContactRecord, changes: Mapping[str, Any], payload: dict[str, Any]
    ) -> None:
        """Make a valid PUT's ``changes`` and remember its ``payload`` as sent."""
        if "lifecycle_stage" in changes:
            record.stage = changes["lifecycle_stage"]
        if "opportunity" in changes:
            record.opportunity = changes["opportunity"]
        if "contact_owner_email" in changes:
            record.owner = changes["contact_owner_email"]
        record.puts.append(MappingProxyType(payload))
        record.render(self.missing_owner)
