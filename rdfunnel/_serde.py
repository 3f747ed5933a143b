"""The one cattrs converter: strict going out, tolerant coming in.

Going out, a :class:`FunnelUpdate` becomes only the fields that were set. Coming in, a
:class:`Funnel` is read from whatever RD sends: unknown fields ignored, a missing or null owner,
``fit``/``interest`` as numbers or letter grades, and stages RD may add later.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from .errors import ValidationError
from .models import NOT_SET, Funnel, FunnelUpdate, LifecycleStage

__all__ = ["ClearOwnerAs", "converter", "dumps", "funnel_from_json", "loads", "update_to_json"]

#: How "clear the owner" goes on the wire: the string ``"null"`` (what RD's own client sends) or
#: JSON ``null`` (what RD's docs describe).
ClearOwnerAs = Literal["string", "null"]

try:  # orjson is optional (extra "fast"): same results, less CPU.
    import orjson
except ImportError:  # pragma: no cover - exercised when the extra is absent
    orjson = None  # type: ignore[assignment]


def dumps(value: Any) -> bytes:
    """Compact JSON bytes for a request body; a ValidationError when ``value`` is not JSON."""
    try:
        if orjson is not None:
            return orjson.dumps(value)
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except (TypeError, ValueError) as error:
        raise ValidationError(f"json cannot be sent as JSON: {error}") from None


def loads(data: bytes) -> Any:
    """Decode a JSON body; raises ValueError when it is not JSON.

    What orjson refuses but the standard library reads (integers past 64 bits, ``NaN``) is read
    all the same, so the result never depends on the extra being installed.
    """
    if orjson is not None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


converter = cattrs.Converter()

_STAGES = {stage.value: stage for stage in LifecycleStage}


def _stage(value: Any, _: Any) -> LifecycleStage | str | None:
    if value is None:
        return None
    text = str(value)
    return _STAGES.get(text, text)


def _score(value: Any, _: Any) -> int | str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return str(value)


def _optional_bool(value: Any, _: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _optional_str(value: Any, _: Any) -> str | None:
    return None if value is None else str(value)


converter.register_structure_hook(LifecycleStage | str | None, _stage)
converter.register_structure_hook(int | str | None, _score)
converter.register_structure_hook(bool | None, _optional_bool)
converter.register_structure_hook(str | None, _optional_str)
# The request id comes from the answer's headers, never from its body.
converter.register_structure_hook(
    Funnel, make_dict_structure_fn(Funnel, converter, request_id=override(omit=True))
)


def _unstructure_update(update: FunnelUpdate) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if update.lifecycle_stage is not NOT_SET:
        body["lifecycle_stage"] = update.lifecycle_stage.value
    if update.opportunity is not NOT_SET:
        body["opportunity"] = update.opportunity
    if update.contact_owner_email is not NOT_SET:
        body["contact_owner_email"] = update.contact_owner_email
    return body


converter.register_unstructure_hook(FunnelUpdate, _unstructure_update)


def funnel_from_json(payload: Any, request_id: str | None = None) -> Funnel:
    """A :class:`Funnel` from a decoded body (one that is not an object reads as empty), and
    the request id of the answer it came in."""
    funnel = converter.structure(payload if isinstance(payload, dict) else {}, Funnel)
    return funnel if request_id is None else attrs.evolve(funnel, request_id=request_id)


def update_to_json(update: FunnelUpdate, clear_owner_as: ClearOwnerAs = "string") -> dict[str, Any]:
    """The PUT body for ``update``: only the fields it sets, the owner clear in the chosen form."""
    body: dict[str, Any] = converter.unstructure(update)
    if "contact_owner_email" in body and body["contact_owner_email"] is None:
        body["contact_owner_email"] = "null" if clear_owner_as == "string" else None
    return body
