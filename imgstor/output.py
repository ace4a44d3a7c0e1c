"""Tables and JSON for command results, in the Rocks layout.

A handler returns ``Output(rows, columns)``, a ``Message``, ``Lines``, a message string or
None; ``emit`` prints it.  Tables are tabulate's ``plain`` format with upper-case headers,
every cell left-aligned and a missing value shown as dashes the width of its column (as
Rocks prints: ``---------------`` under HOST).

A row holds what a script wants (numbers as numbers: bytes, seconds, percent; a time as a
``When``, an epoch float); a column ``(key, HEADER, text)`` whose third element is a
function of the row gives the cell a person reads (``0:01:23``, ``Tue 14:05.33``,
``(3600)``); a plain ``(key, HEADER)`` column shows ``row[key]``.

``--json`` prints one object, ``{"version": JSON_VERSION, "command": …, "exit_code": …}``
and ``"rows"`` (every key of every row, the columns' first; a ``When`` as ISO 8601 local
time with its offset) and ``"messages"`` (the lines the text prints under the table), or
``"message"`` (a one-line message; a ``Message`` adds ``"text"``, what the text shows), or
``"lines"``; an error is ``"error": {"type",
"message", "exit_code", "details"}`` (``error_json``).  Scripts check ``version``: a key
may be added within a version, never renamed or removed.

For speed (``list host vm nas`` on 10,000 VMs) plain ASCII tables are laid out here with the
exact rules of tabulate's plain format (column width = max(header + 2, widest cell), cells
joined by two spaces, lines right-stripped); anything else goes through tabulate itself.
tests/unit/test_output.py checks the two agree.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TYPE_CHECKING = False            # typing's import is ~2 ms of a command's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, TextIO, Union
    # (key, HEADER) or (key, HEADER, text): text(row) is the cell shown, None a missing one
    Column = Union[tuple[str, str], tuple[str, str, Callable[[dict], Any]]]
    Columns = Sequence[Column]

__all__ = ["Output", "Message", "Lines", "Printed", "When", "print_rows", "format_table",
           "format_duration", "format_when", "emit", "error_json", "json_value", "MISSING",
           "printable", "JSON_VERSION", "duration_cell", "when_cell"]

MISSING = "-"                 # a missing cell: this, repeated to the column's width
JSON_VERSION = 1              # of --json's shape: keys are added within it, never removed


class When(float):
    """A point in time (epoch seconds): a number in the row, ISO 8601 in ``--json``, the
    column's own format in the table."""
    __slots__ = ()


@dataclass
class Output:
    """A table result: ``rows`` are dicts, ``columns`` are ``(key, HEADER)`` pairs."""
    rows: list[dict[str, Any]]
    columns: Sequence[Column]
    footer: list[str] = field(default_factory=list)   # extra lines after the table
    exit_code: int = 0        # non-zero: the command printed its table but did not succeed
    json_extra: list[str] = field(default_factory=list)  # (--json has every key of a row)


@dataclass
class Message:
    """A result whose text differs from its ``--json`` form: the Rocks guide's lines for a
    person (``mapping  nas-0-0 : tank / vol1  on  compute-0-3`` then the device) and the
    one-line ``message`` scripts already read (``{"message": "nas-0-0:vol1 mapped to …"}``)."""
    text: str
    message: str

    def __str__(self) -> str:
        return self.text


class Printed:
    """A result the handler printed itself as it went (``batch`` streams its lines):
    ``emit`` prints nothing more, text or JSON.  (Plain classes here, not dataclasses:
    making a dataclass costs ~0.3 ms of every command's start-up.)"""
    __slots__ = ("exit_code",)

    def __init__(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code


class Lines:
    """Plain lines, no header (``dump``'s commands: what ``batch`` reads back); ``--json``:
    ``"lines": [...]``."""
    __slots__ = ("lines", "exit_code")

    def __init__(self, lines: list[str], exit_code: int = 0) -> None:
        self.lines, self.exit_code = lines, exit_code

    def __repr__(self) -> str:
        return f"Lines({self.lines!r}, exit_code={self.exit_code})"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text that may come from hosts (messages, stderr tails, facts) with control
    characters (terminal escape sequences) shown as ``\\xNN`` instead of acting on the
    terminal; newlines and tabs stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _cell(v: Any) -> str | None:
    if v is None:
        return v
    if type(v) is str:
        return printable(v) if _CONTROL.search(v) else v
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


_STR_OR_NONE = {str, type(None)}


def format_table(rows: Sequence[dict[str, Any]], columns: Columns) -> str:
    """The plain table text (no trailing newline)."""
    if not columns:
        return "\n" * len(rows)
    headers = [c[1].upper() for c in columns]
    raw = [[r.get(c[0]) for r in rows] if len(c) == 2 else [c[2](r) for r in rows]
           for c in columns]
    # Columns of strings (and None) need no _cell per value when the whole text is
    # printable ASCII (then it holds no control characters): 10,000 VMs, 30,000 calls.
    plain = all(set(map(type, col)) <= _STR_OR_NONE for col in raw)
    cols = raw if plain else [[_cell(v) for v in col] for col in raw]
    text = "".join(headers) + "".join("".join(filter(None, col)) for col in cols)
    # printable ASCII has no whitespace but the space (tabs, newlines are not printable)
    if not (text.isascii() and text.isprintable()) or " " in text:
        if plain:
            cols = [[_cell(v) for v in col] for col in raw]
        # multi-line, unicode or padded cells: let tabulate decide (wcwidth, stripping)
        import tabulate
        widths = [max(_visible(h) + 2, max((_visible(c) for c in col if c is not None),
                                           default=0)) for h, col in zip(headers, cols)]
        return tabulate.tabulate(
            [list(r) for r in zip(*[[MISSING * w if c is None else c for c in col]
                                    for w, col in zip(widths, cols)])],
            headers=headers, tablefmt="plain", disable_numparse=True)
    widths = [max(len(h) + 2, max(map(len, filter(None, col)), default=0))
              for h, col in zip(headers, cols)]
    # Padded column by column (str.ljust, then one join per line: 3x faster than a format
    # string per line); the last column is not padded, so a line has trailing spaces only
    # where its last cell is empty, and only then is it stripped.
    shown = [[MISSING * w if c is None else c for c in col] for w, col in zip(widths, cols)]
    padded = [[c.ljust(w) for c in col] for w, col in zip(widths, shown[:-1])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.extend(map("  ".join, zip(*padded, shown[-1])))
    if "" in shown[-1]:
        lines[1:] = [line.rstrip() for line in lines[1:]]
    return "\n".join(lines)


def _visible(cell: str) -> int:
    """The width tabulate gives ``cell``: its widest line, stripped (wcwidth if present)."""
    import tabulate
    return max((tabulate._visible_width(line.strip()) for line in cell.splitlines()),
               default=0)


def json_value(v: Any) -> Any:
    """``v`` as JSON: a ``When`` as ISO 8601 (local time, with its offset), containers
    walked, anything else JSON cannot hold as its text."""
    if v is None or type(v) in (str, int, bool):
        return v
    if isinstance(v, When):
        import datetime
        return datetime.datetime.fromtimestamp(v).astimezone().isoformat(timespec="seconds")
    if isinstance(v, (int, float, str)):
        return v
    if isinstance(v, dict):
        return {str(k): json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [json_value(x) for x in v]
    return str(v)


def json_rows(rows: Sequence[dict[str, Any]], columns: Columns) -> list[dict[str, Any]]:
    """Every key of every row, the columns' keys first (a column's key is there even when
    a row lacks it: null)."""
    keys = [c[0] for c in columns]
    return [{**{k: json_value(r.get(k)) for k in keys},
             **{k: json_value(v) for k, v in r.items() if k not in keys}} for r in rows]


def _document(command: str | None, exit_code: int, **body: Any) -> str:
    import json as _json
    doc = {"version": JSON_VERSION, "command": command, "exit_code": exit_code, **body}
    return _json.dumps(doc, indent=2) + "\n"


def print_rows(rows: Sequence[dict[str, Any]], columns: Columns, *, json: bool,
               file: TextIO | None = None, json_extra: Sequence[str] = ()) -> None:
    """Print ``rows`` as a Rocks-style table, or with ``json=True`` as a JSON list of
    ``json_rows`` (``emit`` wraps that list in the versioned document)."""
    out = file or sys.stdout
    if json:
        import json as _json
        out.write(_json.dumps(json_rows(rows, columns), indent=2) + "\n")
    else:
        out.write(format_table(rows, columns) + "\n")


def emit(result: Any, *, json: bool, file: TextIO | None = None,
         command: str | None = None) -> None:
    """Print what a handler returned: a table, a message, lines, or nothing (``--json``:
    the versioned document, also for nothing)."""
    out = file or sys.stdout
    if isinstance(result, Printed):
        return
    if json:
        out.write(json_document(result, command=command))
        return
    if result is None:
        return
    if isinstance(result, Message):
        result = result.text
    if isinstance(result, Output):
        out.write(format_table(result.rows, result.columns) + "\n")
        for line in result.footer:
            out.write(printable(line) + "\n")
        return
    if isinstance(result, Lines):
        for line in result.lines:
            out.write(printable(line) + "\n")
        return
    out.write(printable(str(result)).rstrip("\n") + "\n")


def json_document(result: Any, *, command: str | None = None) -> str:
    """The ``--json`` text of a handler's result (see the module docstring)."""
    rc = int(getattr(result, "exit_code", 0) or 0)
    if result is None:
        return _document(command, rc)
    if isinstance(result, Output):
        return _document(command, rc, rows=json_rows(result.rows, result.columns),
                         messages=list(result.footer))
    if isinstance(result, Lines):
        return _document(command, rc, lines=list(result.lines))
    if isinstance(result, Message):        # and the guide's lines the text shows
        return _document(command, rc, message=result.message, text=result.text)
    return _document(command, rc, message=str(result))


def error_json(e: Any, *, command: str | None = None, exit_code: int | None = None) -> str:
    """The ``--json`` document of an error (an ``ImgstorError``, or anything with a
    ``message`` and an ``exit_code``): ``"error": {type, message, exit_code, details}``."""
    rc = e.exit_code if exit_code is None else exit_code
    err = {"type": type(e).__name__, "message": e.message, "exit_code": rc,
           "details": json_value(getattr(e, "details", {}) or {})}
    return _document(command, rc, error=err)


def format_duration(seconds: float | None) -> str | None:
    """``83`` -> ``"0:01:23"`` (hours grow past 24); None stays None."""
    if seconds is None:
        return None
    s = max(0, int(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def format_when(t: float | None) -> str | None:
    """The roll's time of day, ``Tue 14:05.33`` (local time); None stays None."""
    if t is None:
        return None
    import time
    return time.strftime("%a %H:%M.%S", time.localtime(t))


def duration_cell(key: str) -> Callable[[dict], str | None]:
    """A column's text: the row's seconds under ``key`` as ``H:MM:SS``."""
    return lambda r: format_duration(r.get(key))


def when_cell(key: str) -> Callable[[dict], str | None]:
    """A column's text: the row's time under ``key`` as ``Tue 14:05.33``."""
    return lambda r: format_when(r.get(key))
