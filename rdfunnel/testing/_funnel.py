"""The funnel PUT's validation, field by field, with RD's error types and messages."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

from ..errors import ValidationError
from ..models import LifecycleStage, check_email
from ._bodies import field_error

__all__ = ["FIELDS", "STAGES", "validate_update"]

FIELDS: Final = ("lifecycle_stage", "opportunity", "contact_owner_email")
STAGES: Final = frozenset(stage.value for stage in LifecycleStage)
_OPTIONS: Final = ", ".join(f"'{stage.value}'" for stage in LifecycleStage)
_STAGE_MAX: Final = 50
_OWNER_MAX: Final = 100

#: A sentinel for "the owner is being cleared" in the changes a valid body asks for.
CLEAR: Final = None


def _stage_error(value: Any) -> dict[str, str] | None:
    if value is None:
        return field_error("CANNOT_BE_NULL", "lifecycle_stage can't be null")
    if not isinstance(value, str):
        return field_error("MUST_BE_STRING", "lifecycle_stage must be a string")
    if len(value) > _STAGE_MAX:
        return field_error(
            "MUST_BE_LESS_THAN_OR_EQUAL",
            f"lifecycle_stage must be less than or equal to {_STAGE_MAX} characters",
        )
    if value not in STAGES:
        return field_error(
            "MUST_BE_VALID_OPTION",
            f"invalid options for lifecycle_stage, the valid options are: {_OPTIONS}",
        )
    return None


def _opportunity_error(value: Any) -> dict[str, str] | None:
    if value is None:
        return field_error("CANNOT_BE_NULL", "opportunity can't be null")
    if not isinstance(value, bool):
        return field_error("MUST_BE_BOOLEAN", "opportunity must be a boolean")
    return None


def _owner_error(value: Any, users: Collection[str] | None) -> dict[str, str] | None:
    if value is None or value == "null":
        return None
    if not isinstance(value, str):
        return field_error("MUST_BE_STRING", "contact_owner_email must be a string")
    if len(value) > _OWNER_MAX:
        return field_error(
            "MUST_BE_LESS_THAN_OR_EQUAL",
            f"contact_owner_email must be less than or equal to {_OWNER_MAX} characters",
        )
    try:
        check_email(value)
    except ValidationError:
        return field_error("INVALID_EMAIL_FORMAT", "contact_owner_email has an invalid format")
    if users is not None and value.lower() not in users:
        return field_error("INVALID_USER", f"The user {value} was not found in your account.")
    return None


def validate_update(
    payload: Mapping[str, Any], users: Collection[str] | None
) -> tuple[dict[str, list[dict[str, str]]], dict[str, Any]]:
    """The per-field errors of a PUT body, and (when there are none) the changes it asks for.

    ``users`` holds the lower-cased owner emails the account knows; None accepts any valid email.
    The owner is cleared by JSON ``null`` or the string ``"null"`` (what RD's own client sends).
    """
    checks: dict[str, Callable[[Any], dict[str, str] | None]] = {
        "lifecycle_stage": _stage_error,
        "opportunity": _opportunity_error,
        "contact_owner_email": lambda value: _owner_error(value, users),
    }
    errors: dict[str, list[dict[str, str]]] = {}
    changes: dict[str, Any] = {}
    for field, check in checks.items():
        if field not in payload:
            continue
        value = payload[field]
        problem = check(value)
        if problem:
            errors[field] = [problem]
        elif field == "contact_owner_email" and value in (None, "null"):
            changes[field] = CLEAR
        else:
            changes[field] = value
    return errors, changes
