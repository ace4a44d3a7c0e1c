"""Tables and JSON for command results, in the Rocks layout.

A handler returns ``Output(rows, columns)``, a ``Message``, a message string or None;
``emit`` prints it.  Tables are tabulate's ``plain`` format with upper-case headers, every
cell left-aligned and a missing value shown as dashes the width of its column (as Rocks
prints: ``---------------`` under HOST).  ``--json`` prints the same rows as a JSON list of
objects whose keys are the column keys (None stays null); a message is ``{"message": …}``.

For speed (``list host vm nas`` on 10,000 VMs) plain ASCII tables are laid out here with the
exact rules of tabulate's plain format (column width = max(header + 2, widest cell), cells
joined by two spaces, lines right-stripped); anything else goes through tabulate itself.
tests/unit/test_output.py checks the two agree.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

TYPE_CHECKING = False            # typing's import is ~2 ms of a command's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, TextIO

__all__ = ["Output", "Message", "print_rows", "format_table", "format_duration", "emit",
           "MISSING", "printable"]

MISSING = "-"                 # a missing cell: this, repeated to the column's width
Columns = Sequence[tuple[str, str]]


@dataclass
class Output:
    """A table result: ``rows`` are dicts, ``columns`` are ``(key, HEADER)`` pairs."""
    rows: list[dict[str, Any]]
    columns: list[tuple[str, str]]
    footer: list[str] = field(default_factory=list)   # extra lines after the table
    exit_code: int = 0        # non-zero: the command printed its table but did not succeed
    json_extra: list[str] = field(default_factory=list)  # keys --json adds to the columns


@dataclass
class Message:
    """A result whose text differs from its ``--json`` form: the Rocks guide's lines for a
    person (``mapping  nas-0-0 : tank / vol1  on  compute-0-3`` then the device) and the
    one-line ``message`` scripts already read (``{"message": "nas-0-0:vol1 mapped to …"}``)."""
    text: str
    message: str

    def __str__(self) -> str:
        return self.text


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
    headers = [h.upper() for _, h in columns]
    raw = [[r.get(k) for r in rows] for k, _ in columns]
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


def print_rows(rows: Sequence[dict[str, Any]], columns: Columns, *, json: bool,
               file: TextIO | None = None, json_extra: Sequence[str] = ()) -> None:
    """Print ``rows`` as a Rocks-style table, or as a JSON list with ``json=True`` (the
    columns' keys, then ``json_extra``'s)."""
    out = file or sys.stdout
    if json:
        import json as _json
        keys = [k for k, _ in columns] + [k for k in json_extra
                                          if k not in {c for c, _ in columns}]
        out.write(_json.dumps([{k: r.get(k) for k in keys} for r in rows], indent=2) + "\n")
    else:
        out.write(format_table(rows, columns) + "\n")


def emit(result: Output | str | None, *, json: bool, file: TextIO | None = None) -> None:
    """Print what a handler returned: a table, a message, or nothing."""
    out = file or sys.stdout
    if result is None:
        return
    if isinstance(result, Message):
        result = result.message if json else result.text
    if isinstance(result, Output):
        print_rows(result.rows, result.columns, json=json, file=out,
                   json_extra=result.json_extra)
        if not json:
            for line in result.footer:
                out.write(printable(line) + "\n")
        return
    if json:
        import json as _json
        out.write(_json.dumps({"message": str(result)}) + "\n")
    else:
        out.write(printable(str(result)).rstrip("\n") + "\n")


def format_duration(seconds: float | None) -> str | None:
    """``83`` -> ``"0:01:23"`` (hours grow past 24); None stays None."""
    if seconds is None:
        return None
    s = max(0, int(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
