"""Reading change files (CSV or JSONL) row by row, and the results journal."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import attrs

from ..errors import RDStationError, ValidationError
from ..models import NOT_SET, Contact, FunnelUpdate

__all__ = [
    "CLEAR_OWNER",
    "COLUMNS",
    "Journal",
    "Row",
    "check_file_shape",
    "count_rows",
    "read_rows",
]

#: The columns of a CSV change file, and the keys of a JSONL one.
COLUMNS = ("email", "uuid", "lifecycle_stage", "opportunity", "contact_owner_email")

#: The CSV cell that clears a contact's owner (an empty cell leaves it unchanged). In JSONL,
#: ``null`` clears it. No email address can be spelled this way.
CLEAR_OWNER = "null"

_TRUE = {"true", "yes", "1", "y", "t", "sim", "s"}
_FALSE = {"false", "no", "0", "n", "f", "não", "nao"}


@attrs.frozen
class Row:
    """One input row: its number in the file, and either a change or what is wrong with it."""

    number: int
    contact: str
    change: tuple[Contact, FunnelUpdate] | None = None
    problem: str | None = None


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson", ".json")


def read_rows(path: Path) -> Iterator[Row]:
    """Rows of ``path``, lazily, numbered by line (a CSV header is line 1)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        if _is_jsonl(path):
            yield from _jsonl_rows(handle)
        else:
            yield from _csv_rows(handle)


def count_rows(path: Path) -> int:
    """How many rows ``path`` holds (a quick pass, for the progress bar)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        if _is_jsonl(path):
            return sum(1 for line in handle if line.strip())
        records = csv.reader(handle, delimiter=_delimiter(handle))
        return max(sum(1 for record in records if record) - 1, 0)  # blank lines are no rows


def check_file_shape(path: Path) -> str | None:
    """What makes ``path`` unusable as a whole (its CSV header), or None.

    Reads the whole file, so that a file in another encoding than UTF-8 is refused before any
    row is sent (``UnicodeDecodeError``). A JSONL file's keys are checked row by row.
    """
    with path.open(newline="", encoding="utf-8-sig") as handle:
        if _is_jsonl(path):
            for _ in handle:
                pass
            return None
        header = next(csv.reader(handle, delimiter=_delimiter(handle)), [])
        for _ in handle:
            pass
    names = [name.strip().lower() for name in header if name.strip()]
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        return (
            f"unknown column {', '.join(map(repr, unknown))}; the columns are {', '.join(COLUMNS)}"
        )
    if not {"email", "uuid"} & set(names):
        return f"the header names no email or uuid column; the columns are {', '.join(COLUMNS)}"
    return None


def _delimiter(handle: IO[str]) -> str:
    """``;`` when the header uses it (spreadsheets set to Portuguese save so), else ``,``."""
    first = handle.readline()
    handle.seek(0)
    return ";" if first.count(";") > first.count(",") else ","


def _csv_rows(handle: IO[str]) -> Iterator[Row]:
    reader = csv.DictReader(handle, delimiter=_delimiter(handle))
    for record in reader:
        cells = {key.strip().lower(): (value or "").strip() for key, value in record.items() if key}
        yield _row(reader.line_num, cells, from_csv=True)


def _jsonl_rows(handle: IO[str]) -> Iterator[Row]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            yield Row(number, "", problem=f"not valid JSON: {exc}")
            continue
        if not isinstance(record, dict):
            yield Row(number, "", problem="each line must be a JSON object")
            continue
        yield _row(number, record, from_csv=False)


def _row(number: int, cells: Mapping[str, Any], *, from_csv: bool) -> Row:
    email, uuid = cells.get("email") or "", cells.get("uuid") or ""
    contact = str(email or uuid)
    try:
        if email and uuid:
            raise ValidationError("give either email or uuid, not both")
        if not contact:
            raise ValidationError("no email or uuid")
        unknown = sorted(set(cells) - set(COLUMNS))
        if unknown:  # a CSV's header is checked once, before any row is read
            raise ValidationError(f"unknown field {', '.join(map(repr, unknown))}")
        who = Contact.email(str(email)) if email else Contact.uuid(str(uuid))
        return Row(number, contact, change=(who, _update(cells, from_csv=from_csv)))
    except ValidationError as exc:
        return Row(number, contact, problem=str(exc))


def _update(cells: Mapping[str, Any], *, from_csv: bool) -> FunnelUpdate:
    stage = cells.get("lifecycle_stage")
    opportunity = cells.get("opportunity")
    owner: Any = cells.get("contact_owner_email", "")
    if owner == "":
        owner = NOT_SET
    elif from_csv and owner.lower() == CLEAR_OWNER:
        owner = None  # in JSONL, null already is None
    return FunnelUpdate(
        lifecycle_stage=stage if stage not in (None, "") else NOT_SET,
        opportunity=_flag(opportunity) if opportunity not in (None, "") else NOT_SET,
        contact_owner_email=owner,
    )


def _flag(value: Any) -> Any:
    if isinstance(value, str):
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
    return value  # FunnelUpdate names what is wrong with it


class Journal:
    """The results file: one JSON line per input row as it completes, flushed line by line.

    Opened to resume, it first reads which rows are already done, so that they are not sent again.
    """

    def __init__(self, path: Path, *, resume: bool) -> None:
        self.path = path
        self.done: set[int] = set()
        if resume and path.exists():
            self.done = _done_rows(path)
        elif path.exists() and path.stat().st_size > 0:
            raise FileExistsError(
                f"{path} already holds results: pass --resume to continue that job, "
                "or choose another --results file"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def record(self, row: int, contact: object, error: Exception | None, attempts: int) -> None:
        entry: dict[str, Any] = {
            "row": row,
            "contact": str(contact),
            "ok": error is None,
            "attempts": attempts,
        }
        if error is not None:
            entry["error"] = type(error).__name__
            entry["message"] = str(error)
            if isinstance(error, RDStationError) and hasattr(error, "retry_after"):
                entry["retry_after"] = error.retry_after
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _done_rows(path: Path) -> set[int]:
    done: set[int] = set()
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash: that row is simply not done
            if (
                isinstance(entry, dict)
                and entry.get("ok") is True
                and isinstance(entry.get("row"), int)
            ):
                done.add(entry["row"])
    return done
