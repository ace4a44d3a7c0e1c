"""The state store's journal and its in-memory side: what lets a transaction cost what it
changes, not what the store holds (issue 25).

``state.json.journal`` beside the state file holds the transactions not yet folded into
it, one line each, appended under the store's lock::

    CRC32 {"imgstor_journal": 1, "base": [SIZE, CRC32]}       the header: the state file
    CRC32 {"schema": 2, "ops": [[SECTION, KEY, RECORD], …]}    it extends (its bytes),
    CRC32 {"schema": 2, "ops": [["vms", "vm7", null]]}         then transactions: a record
    CRC32 {"folded": [SIZE, CRC32]}                            whole, or null (deleted)

Each line starts with the CRC32 of the JSON after it (8 hex digits), so a line a killed
writer left half-written is seen as such: a reader stops at the first line that is not
whole; the next writer (under the lock) cuts it off before it appends.  A record is the
entry's ``to_dict()`` whole, so applying a journal twice gives the same state: a fold
killed between replacing the state file and removing the journal loses nothing.  The
``folded`` line, written just before the fold replaces the state file, names the file the
journal went into; the header names the file it extends.  A state file that is neither
(edited or restored by hand) wins: the journal is set aside (``…journal.set-aside-TIME``).

This module is the format and the pure parts: encoding and reading lines, applying
operations, the copy-on-access view a transaction works on, and the state file's layout
(one record per line, written by the C JSON encoder: ``indent=1`` ran Python's).
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, MutableMapping
from dataclasses import fields

from imgstor.errors import StateError
from imgstor.state.model import State, natural_key

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = ["SECTIONS", "FORMAT", "crc_of", "line", "header", "read_lines", "apply_raw",
           "records_of", "View", "view_of", "changes", "clone", "dump", "order", "sort_section"]

FORMAT = 1
SECTIONS = tuple(f.name for f in fields(State) if f.name != "schema")


def crc_of(data: bytes) -> list[int]:
    """[size, crc32] of a state file's bytes: what a journal header names."""
    return [len(data), zlib.crc32(data)]


def line(obj: Any) -> bytes:
    text = json.dumps(obj, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(text), text)


def header(base: list[int]) -> bytes:
    return line({"imgstor_journal": FORMAT, "base": base})


def read_lines(data: bytes, start: int = 0) -> tuple[list[dict], int]:
    """The whole lines of ``data`` from ``start`` on, decoded, and where the last whole one
    ends (a half-written or damaged line and everything after it are left out)."""
    out: list[dict] = []
    pos = start
    n = len(data)
    while pos < n:
        end = data.find(b"\n", pos)
        if end < 0 or end - pos < 10 or data[pos + 8:pos + 9] != b" ":
            break
        text = data[pos + 9:end]
        try:
            if int(data[pos:pos + 8], 16) != zlib.crc32(text):
                break
            obj = json.loads(text)
        except ValueError:
            break
        if type(obj) is not dict:
            break
        out.append(obj)
        pos = end + 1
    return out, pos


def records_of(lines: list[dict], schema: int | None) -> Iterator[list]:
    """The operations of each transaction line (header and fold lines skipped); a line of
    another schema or shape is a StateError (another imgstor wrote it)."""
    for obj in lines:
        if "ops" not in obj:
            continue
        ops = obj["ops"]
        if obj.get("schema") != schema or type(ops) is not list or not all(
                type(op) is list and len(op) == 3 and op[0] in SECTIONS
                and type(op[1]) is str and (op[2] is None or type(op[2]) is dict)
                for op in ops):
            raise StateError(f"journal line of schema {obj.get('schema')!r} or of an "
                             "unknown shape (another imgstor version wrote it?)")
        yield ops


def apply_raw(raw: dict, ops: list, unsorted: set[str]) -> None:
    """Apply one transaction's operations to a parsed state file (``raw``: sections of
    plain dicts).  A key added out of the file's order marks its section in ``unsorted``."""
    for section, key, rec in ops:
        d = raw.get(section)
        if d is None:
            d = raw[section] = {}
        elif type(d) is not dict:
            raise StateError(f"{section}: expected an object")
        if rec is None:
            d.pop(key, None)
            continue
        if key not in d and d and section not in unsorted \
                and order(section, key) < order(section, next(reversed(d))):
            unsorted.add(section)
        d[key] = rec


def order(section: str, key: str) -> str:
    """The sort key State.to_dict writes a section's entries in."""
    return key if section == "jobs" else natural_key(key)


# ---- the view a transaction works on ----

_MISSING = object()
_GONE = object()


def clone(obj: Any) -> Any:
    """A deep copy of a model record: nothing a transaction changes reaches the command's
    shared state until it commits, nor after (a record a transaction returns is its own)."""
    d = getattr(obj, "__dict__", None)
    if d is None:
        return type(obj).from_dict(json.loads(json.dumps(obj.to_dict())))
    new = object.__new__(type(obj))
    new.__dict__ = {k: _copy(v) for k, v in d.items()}
    return new


def _copy(v: Any) -> Any:
    t = type(v)
    if t is str or t is int or t is float or t is bool or v is None:
        return v
    if t is dict:
        return {k: _copy(x) for k, x in v.items()}
    if t is list:
        return [_copy(x) for x in v]
    if hasattr(t, "__dataclass_fields__"):
        return clone(v)
    import copy
    return copy.deepcopy(v)


class View(MutableMapping):
    """One section as a transaction sees it: entries are copied from the shared state when
    first touched, changes stay here until the commit (``changes``)."""
    __slots__ = ("base", "got")

    def __init__(self, base: dict) -> None:
        self.base = base
        self.got: dict = {}

    def __getitem__(self, key: str) -> Any:
        v = self.got.get(key, _MISSING)
        if v is _MISSING:
            v = self.got[key] = clone(self.base[key])
        elif v is _GONE:
            raise KeyError(key)
        return v

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        v = self.got.get(key, _MISSING)
        return key in self.base if v is _MISSING else v is not _GONE

    def __setitem__(self, key: str, value: Any) -> None:
        self.got[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.got[key] = _GONE

    def __iter__(self) -> Iterator[str]:
        got = self.got
        for k in self.base:
            if got.get(k) is not _GONE:
                yield k
        for k, v in list(got.items()):
            if v is not _GONE and k not in self.base:
                yield k

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"View({dict(self.items())!r})"


def view_of(state: State) -> State:
    """A State whose sections are Views over ``state``'s (which it does not change)."""
    views: dict[str, Any] = {s: View(getattr(state, s)) for s in SECTIONS}
    return State(**views, schema=state.schema)


def changes(view: State) -> list[tuple[str, str, Any]]:
    """(section, key, record or None) for every entry the transaction changed: touched and
    now different from the shared state's, added, or deleted."""
    out: list[tuple[str, str, Any]] = []
    for s in SECTIONS:
        v = getattr(view, s)
        if not isinstance(v, View):
            raise StateError(f"a transaction replaced the state's {s} section; change its "
                             "entries instead")
        base = v.base
        for k, rec in v.got.items():
            old = base.get(k)
            if rec is _GONE:
                if old is not None:
                    out.append((s, k, None))
            elif old is None or old.to_dict() != rec.to_dict():
                out.append((s, k, rec))
    return out


# ---- the state file's layout ----

def dump(state: State) -> bytes:
    """The state file: ``State.to_dict()`` with each section's records one per line
    (hand-editable and quick to write); any JSON reader reads it as before."""
    d = state.to_dict()
    enc = json.dumps
    parts = []
    for k, v in d.items():
        if type(v) is dict and v and all(type(x) is dict for x in v.values()):
            body = ",\n".join(f"  {enc(ek)}: {enc(ev)}" for ek, ev in v.items())
            parts.append(f" {enc(k)}: {{\n{body}\n }}")
        else:
            parts.append(f" {enc(k)}: {enc(v)}")
    return ("{\n" + ",\n".join(parts) + "\n}\n").encode()


def sort_section(section: str, d: dict) -> dict:
    return {k: d[k] for k in sorted(d, key=lambda k: order(section, k))}

