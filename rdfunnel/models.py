"""What the funnel API reads and writes: contacts, stages, funnels and partial updates."""

from __future__ import annotations

import enum
import re
import unicodedata
import uuid as _uuid
from typing import Final, Literal, TypeAlias
from urllib.parse import quote

import attrs

from .errors import ValidationError

__all__ = [
    "NOT_SET",
    "Contact",
    "Funnel",
    "FunnelUpdate",
    "LifecycleStage",
    "NotSet",
]

#: How a contact is told apart for ordering and quotas: its kind, and its value in lower case.
ContactKey: TypeAlias = tuple[str, str]


class LifecycleStage(enum.StrEnum):
    """Where a contact stands in the funnel. The values are RD's, to the letter."""

    LEAD = "Lead"
    QUALIFIED_LEAD = "Qualified Lead"
    CLIENT = "Client"


class _NotSetType(enum.Enum):
    NOT_SET = "NOT_SET"

    def __repr__(self) -> str:
        return "NOT_SET"

    def __bool__(self) -> bool:
        return False


#: "Leave this field as it is": the default of every :class:`FunnelUpdate` field. Not ``None``,
#: because ``None`` for the owner means "clear the owner".
NOT_SET: Final = _NotSetType.NOT_SET
NotSet: TypeAlias = Literal[_NotSetType.NOT_SET]

MAX_OWNER_EMAIL_LENGTH: Final = 100

# RFC 5322 dot-atom (unquoted local parts) widened by RFC 6531 to any non-ASCII character.
_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+"
_LABEL = (
    r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
)
_EMAIL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*")
#: What a path segment carries literally: ``quote(value, safe="@+")`` leaves these as they are.
_PATH_SAFE = re.compile(r"[A-Za-z0-9_.\-~@+]*")


def _email_problem(value: str) -> str | None:
    """Why ``value`` cannot be an email address, or None when it can."""
    # The common case in one regex match (on the hot path of every call); the slow checks below
    # run only for non-ASCII addresses and to explain a refusal.
    if _EMAIL.fullmatch(value) and len(value) <= 254 and value.isascii():
        return "it is too long" if len(value.rpartition("@")[0]) > 64 else None
    if "@" not in value:
        return "it has no '@'"
    local, _, domain = value.rpartition("@")
    if not local or not domain:
        return "one side of the '@' is empty"
    if any(unicodedata.category(char)[0] in "CZ" for char in value):
        return "it holds a space or a control character"
    if len(local) > 64 or len(value) > 254:
        return "it is too long"
    if not _EMAIL.fullmatch(value):
        return "it is not an unquoted RFC 5322 address"
    return None


def check_email(value: object, what: str = "email") -> str:
    """Return ``value`` if it is an address RD can store, else raise a ValidationError naming it."""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {value!r}")
    problem = _email_problem(value)
    if problem:
        raise ValidationError(f"{what} {value!r} is not a valid email address: {problem}")
    return value


@attrs.frozen
class Contact:
    """A contact, named by email or by UUID. Build one with :meth:`email`, :meth:`uuid` or
    :meth:`parse`."""

    kind: Literal["email", "uuid"]
    value: str

    def __attrs_post_init__(self) -> None:
        # The shape only (the constructors check the value itself): never a Contact that breaks
        # a path or a bulk run's bookkeeping.
        if self.kind not in ("email", "uuid"):
            raise ValidationError(f"Contact.kind must be 'email' or 'uuid', got {self.kind!r}")
        if not isinstance(self.value, str) or not self.value:
            raise ValidationError(f"Contact.value must be a non-empty str, got {self.value!r}")

    @classmethod
    def email(cls, value: str) -> Contact:
        return cls("email", check_email(value, "contact email"))

    @classmethod
    def uuid(cls, value: str | _uuid.UUID) -> Contact:
        """A contact by UUID, canonicalised to lower-case hyphenated form."""
        if isinstance(value, _uuid.UUID):
            return cls("uuid", str(value))
        try:
            return cls("uuid", str(_uuid.UUID(value)))
        except (TypeError, ValueError, AttributeError):
            raise ValidationError(f"contact uuid {value!r} is not a UUID") from None

    @classmethod
    def parse(cls, value: str | Contact) -> Contact:
        """A contact from a plain string: one with ``@`` is an email, a UUID is a uuid."""
        if isinstance(value, Contact):
            return value
        if not isinstance(value, str):
            raise ValidationError(f"contact must be a Contact or a string, got {value!r}")
        if "@" in value:
            return cls.email(value)
        try:
            return cls("uuid", str(_uuid.UUID(value)))
        except ValueError:
            raise ValidationError(
                f"contact {value!r} is neither an email address nor a UUID"
            ) from None

    @property
    def key(self) -> ContactKey:
        """Who this is, for ordering and quotas: emails compare case-insensitively."""
        return (self.kind, self.value.lower())

    @property
    def path_segment(self) -> str:
        """``email:<value>`` as RD's path wants it: ``@`` and ``+`` literal, the rest encoded."""
        value = self.value
        if not _PATH_SAFE.fullmatch(value):  # most addresses need no encoding: skip quote()
            value = quote(value, safe="@+")
        return f"{self.kind}:{value}"

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def _to_stage(value: LifecycleStage | str | NotSet) -> LifecycleStage | NotSet:
    if value is NOT_SET or isinstance(value, LifecycleStage):
        return value
    try:
        return LifecycleStage(value)
    except ValueError:
        options = ", ".join(repr(stage.value) for stage in LifecycleStage)
        raise ValidationError(f"lifecycle_stage {value!r} is not one of {options}") from None


def _check_opportunity(_: object, __: object, value: object) -> None:
    if value is not NOT_SET and not isinstance(value, bool):
        raise ValidationError(f"opportunity must be True or False, got {value!r}")


def _check_owner(_: object, __: object, value: object) -> None:
    if value is NOT_SET or value is None:
        return
    check_email(value, "contact_owner_email")
    assert isinstance(value, str)
    if len(value) > MAX_OWNER_EMAIL_LENGTH:
        raise ValidationError(
            f"contact_owner_email {value!r} is {len(value)} characters long; "
            f"RD accepts at most {MAX_OWNER_EMAIL_LENGTH}"
        )


@attrs.frozen(kw_only=True)
class FunnelUpdate:
    """A partial change to a contact's funnel: only the fields you set are sent.

    ``contact_owner_email=None`` clears the owner; leaving it out leaves the owner alone.
    """

    lifecycle_stage: LifecycleStage | NotSet = attrs.field(default=NOT_SET, converter=_to_stage)
    opportunity: bool | NotSet = attrs.field(default=NOT_SET, validator=_check_opportunity)
    contact_owner_email: str | NotSet | None = attrs.field(default=NOT_SET, validator=_check_owner)

    def __attrs_post_init__(self) -> None:
        if (
            self.lifecycle_stage is NOT_SET
            and self.opportunity is NOT_SET
            and self.contact_owner_email is NOT_SET
        ):
            raise ValidationError(
                "a FunnelUpdate needs at least one of lifecycle_stage, opportunity, "
                "contact_owner_email"
            )


@attrs.frozen
class Funnel:
    """A contact's place in the funnel, as RD reports it.

    ``lifecycle_stage`` is a :class:`LifecycleStage`, or the raw string if RD adds a stage this
    version does not know. ``fit`` and ``interest`` are scores (RD sometimes sends a letter grade).
    """

    lifecycle_stage: LifecycleStage | str | None = None
    opportunity: bool | None = None
    contact_owner_email: str | None = None
    fit: int | str | None = None
    interest: int | str | None = None
    #: RD's id for the request that answered (quote it to RD's support), when RD sent one. It
    #: describes the answer, not the funnel: equality, hashing and ``repr`` leave it out.
    request_id: str | None = attrs.field(default=None, eq=False, repr=False, kw_only=True)
