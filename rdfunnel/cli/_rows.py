"""Reading change files (CSV or JSONL) row by row, and the results journal."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections import Counter
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
    "JournalMismatchError",
    "Row",
    "check_file_shape",
    "count_rows",
    "parse_flag",
    "read_rows",
]

#: The columns of a CSV change file, and the keys of a JSONL one.
COLUMNS = ("email", "uuid", "lifecycle_stage", "opportunity", "contact_owner_email")

#: The CSV cell that clears a contact's owner (an empty cell leaves it unchanged). In JSONL,
#: ``null`` clears it. No email address can be spelled this way.
CLEAR_OWNER = "null"

#: One vocabulary for yes/no, in files and flags alike, case-insensitive.
TRUE_WORDS = ("true", "yes", "1", "y", "t", "sim", "s")
FALSE_WORDS = ("false", "no", "0", "n", "f", "não", "nao")

#: The journal's format; a journal without this header (or of another file) is not resumed.
JOURNAL_FORMAT = 2
#: Seconds between the journal's fsyncs (and one at the end): a crash loses at most that much.
FSYNC_EVERY = 1.0


@attrs.frozen
class Row:
    """One input row: its number in the file, and either a change or what is wrong with it.

    ``id`` tells the row apart by content (its contact, its fields, and which occurrence of that
    pair it is in the file), so that a resumed run finds it again after the file was edited.
    """

    number: int
    contact: str
    change: tuple[Contact, FunnelUpdate] | None = None
    problem: str | None = None
    id: str | None = None


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson", ".json")


def read_rows(path: Path) -> Iterator[Row]:
    """Rows of ``path``, lazily, numbered by line (a CSV header is line 1), each with its id."""
    seen: Counter[str] = Counter()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = _jsonl_rows(handle) if _is_jsonl(path) else _csv_rows(handle)
        for row in rows:
            if row.change is None:
                yield row
                continue
            content = _content(*row.change)
            seen[content] += 1
            digest = hashlib.sha256(f"{content}#{seen[content]}".encode()).hexdigest()[:20]
            yield attrs.evolve(row, id=digest)


def _content(contact: Contact, update: FunnelUpdate) -> str:
    kind, value = contact.key
    fields = (update.lifecycle_stage, update.opportunity, update.contact_owner_email)
    return json.dumps([kind, value, *(repr(field) for field in fields)])


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
        extra = record.pop(None, None)
        cells = {key.strip().lower(): (value or "").strip() for key, value in record.items() if key}
        if extra:
            contact = cells.get("email") or cells.get("uuid") or ""
            problem = f"{len(extra)} more cell(s) than the header has columns"
            yield Row(reader.line_num, contact, problem=problem)
            continue
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
        opportunity=parse_flag(opportunity) if opportunity not in (None, "") else NOT_SET,
        contact_owner_email=owner,
    )


def parse_flag(value: Any) -> Any:
    """True or False from any word of the vocabulary; anything else as it is."""
    if isinstance(value, str):
        if value.strip().lower() in TRUE_WORDS:
            return True
        if value.strip().lower() in FALSE_WORDS:
            return False
    return value  # FunnelUpdate names what is wrong with it


class JournalMismatchError(Exception):
    """The journal cannot be resumed safely: it belongs to another file, or to an old format."""


class Journal:
    """The results file: a header naming the change file, then one JSON line per row.

    Opened to resume, it first repairs a last line cut short by a crash, reads which rows are
    done (by id), and reports lines it cannot read instead of failing on them.
    """

    def __init__(self, path: Path, *, source: Path, resume: bool) -> None:
        self.path = path
        self.done: set[str] = set()
        self.unreadable = 0  # journal lines skipped on resume: cut short or not UTF-8 JSON
        self._source = str(source.resolve())
        exists = path.exists() and path.stat().st_size > 0
        if exists and not resume:
            raise FileExistsError(
                f"{path} already holds results: pass --resume to continue that job, "
                "or choose another --results file"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not exists or not self._read_done()
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._synced = time.monotonic()
        if fresh:
            header = {"rdfunnel_journal": JOURNAL_FORMAT, "file": self._source}
            self._write(header)

    def record(self, row: Row, error: Exception | None, attempts: int) -> None:
        entry: dict[str, Any] = {
            "row": row.number,
            "contact": row.contact,
            "ok": error is None,
            "attempts": attempts,
        }
        if row.id is not None:
            entry["id"] = row.id
        if error is not None:
            entry["error"] = type(error).__name__
            entry["message"] = str(error)
            if isinstance(error, RDStationError) and hasattr(error, "retry_after"):
                entry["retry_after"] = error.retry_after
        self._write(entry)

    def close(self) -> None:
        self._sync()
        self._file.close()

    def _write(self, entry: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()
        if time.monotonic() - self._synced >= FSYNC_EVERY:
            self._sync()

    def _sync(self) -> None:
        os.fsync(self._file.fileno())
        self._synced = time.monotonic()

    def _read_done(self) -> bool:
        """Read the rows done; False when nothing was left, not even the header."""
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):  # a record cut short by a crash: drop it, and only it
            data = data[: data.rfind(b"\n") + 1]
            with self.path.open("r+b") as handle:
                handle.truncate(len(data))
        lines = data.splitlines()
        if not lines:
            return False
        header = _entry(lines[0])
        if header is None or header.get("rdfunnel_journal") != JOURNAL_FORMAT:
            raise JournalMismatchError(
                f"{self.path} was not written by this version of rdfunnel, so its rows cannot "
                "be matched safely: run without --resume and with another --results file"
            )
        if header.get("file") != self._source:
            raise JournalMismatchError(
                f"{self.path} holds the results of {header.get('file')}, not of "
                f"{self._source}: pass the right --results file, or run without --resume"
            )
        for line in lines[1:]:
            entry = _entry(line)
            if entry is None:
                self.unreadable += 1
            elif entry.get("ok") is True and isinstance(entry.get("id"), str):
                self.done.add(entry["id"])
        return True


def _entry(line: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        return None
    return entry if isinstance(entry, dict) else None
