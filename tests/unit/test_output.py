"""output.py: Rocks-style plain tables (same text as tabulate's plain format), JSON rows,
durations."""
from __future__ import annotations

import io
import json
import random

import pytest
import tabulate

from imgstor.output import Message, Output, emit, format_duration, format_table, print_rows

COLS = [("vm", "VM-HOST"), ("nas", "NAS"), ("zpool", "ZPOOL")]


def test_table_layout():
    rows = [{"vm": "compute-0-0-0", "nas": "nas-0-0", "zpool": "tank"},
            {"vm": "web1", "nas": None, "zpool": None}]
    assert format_table(rows, COLS).splitlines() == [
        "VM-HOST        NAS      ZPOOL",
        "compute-0-0-0  nas-0-0  tank",
        "web1           -------  -------",
    ]


def test_missing_cells_are_dashes_as_wide_as_the_column():
    """The guide's listings: an empty HOST or TARGET cell is a run of dashes."""
    cols = [("zvol", "ZVOL"), ("host", "HOST"), ("target", "TARGET"), ("time", "TIME")]
    rows = [{"zvol": "vol1", "host": "compute-0-3", "target": "iqn.2001-04.com.nas-0-0-vol1"},
            {"zvol": "vm-hpcdev-pub03-4-vol"}]
    assert format_table(rows, cols).splitlines() == [
        "ZVOL                   HOST         TARGET                        TIME",
        "vol1                   compute-0-3  iqn.2001-04.com.nas-0-0-vol1  ------",
        "vm-hpcdev-pub03-4-vol  -----------  ----------------------------  ------"]
    rows[0]["host"] = "compute-0-3 \u00e9"          # the tabulate path pads the same way
    assert format_table(rows, cols).splitlines()[2].split() == ["vm-hpcdev-pub03-4-vol",
                                                                "-" * 13, "-" * 28, "-" * 6]


def test_headers_upper_cased_and_empty_table():
    assert format_table([], [("a", "zvol"), ("b", "host")]) == "ZVOL    HOST"


def _tabulate(rows, cols):
    """tabulate's plain table, a missing cell shown as dashes the column's width."""
    table = [[None if r.get(k) is None else str(r.get(k)).strip() for k, _ in cols]
             for r in rows]
    widths = [max([len(h) + 2] + [len(row[i]) for row in table if row[i] is not None])
              for i, (_, h) in enumerate(cols)]
    table = [["-" * w if c is None else c for w, c in zip(widths, row)] for row in table]
    return tabulate.tabulate(table, headers=[h.upper() for _, h in cols], tablefmt="plain",
                             disable_numparse=True)


@pytest.mark.parametrize("seed", range(30))
def test_fast_path_matches_tabulate(seed):
    rnd = random.Random(seed)
    alphabet = "abz019-.:/ "
    cols = [(f"k{i}", rnd.choice(["ZVOL", "host", "STATE", "T", "VM-HOST"]))
            for i in range(rnd.randint(1, 6))]
    rows = []
    for _ in range(rnd.randint(0, 12)):
        row = {}
        for k, _ in cols:
            c = rnd.random()
            row[k] = (None if c < 0.2 else rnd.randint(0, 10**rnd.randint(0, 8)) if c < 0.35
                      else "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 15))).strip())
        rows.append(row)
    assert format_table(rows, cols) == _tabulate(rows, cols)


def test_non_ascii_goes_through_tabulate():
    rows = [{"vm": "vm\u00e9", "nas": " padded ", "zpool": "x"}]
    assert format_table(rows, COLS) == _tabulate(rows, COLS)


def test_json_rows():
    buf = io.StringIO()
    rows = [{"vm": "a", "nas": None, "zpool": "tank", "other": 1}]
    print_rows(rows, COLS, json=True, file=buf)      # every key, the columns' first
    assert json.loads(buf.getvalue()) == [{"vm": "a", "nas": None, "zpool": "tank", "other": 1}]


def test_emit():
    buf = io.StringIO()
    emit(Output([{"vm": "a"}], COLS, footer=["1 VM"]), json=False, file=buf)
    assert buf.getvalue() == "VM-HOST    NAS    ZPOOL\na          -----  -------\n1 VM\n"
    buf = io.StringIO()
    emit("done", json=False, file=buf)
    emit(None, json=False, file=buf)
    assert buf.getvalue() == "done\n"
    buf = io.StringIO()
    emit("done", json=True, file=buf)
    assert json.loads(buf.getvalue()) == {"version": 1, "command": None, "exit_code": 0,
                                          "message": "done"}
    m = Message("mapping  nas-0-0 : tank / vol1  on  compute-0-3\n/dev/sdc",
                "nas-0-0:vol1 mapped to compute-0-3:/dev/sdc")
    buf = io.StringIO()
    emit(m, json=False, file=buf)
    assert buf.getvalue() == "mapping  nas-0-0 : tank / vol1  on  compute-0-3\n/dev/sdc\n"
    buf = io.StringIO()
    emit(m, json=True, file=buf)       # --json: the one-line message, as before
    assert json.loads(buf.getvalue())["message"] == "nas-0-0:vol1 mapped to compute-0-3:/dev/sdc"


@pytest.mark.parametrize("secs,text", [(0, "0:00:00"), (83, "0:01:23"), (3600, "1:00:00"),
                                       (90061.7, "25:01:01"), (-5, "0:00:00"), (None, None)])
def test_format_duration(secs, text):
    assert format_duration(secs) == text


def test_text_from_hosts_cannot_drive_the_terminal(capsys) -> None:
    """Audit L9: escape sequences in node messages, facts and errors are shown, not run."""
    from imgstor.cli import report_error
    from imgstor.errors import from_wire
    from imgstor.output import Output, emit, printable
    assert printable("ok\x1b]0;pwned\x07\n\tx") == "ok\\x1b]0;pwned\\x07\n\tx"
    emit(Output([{"s": "a\x1b[2Jb"}], [("s", "S")], footer=["f\x9b"]), json=False)
    emit("msg\x1b[31m", json=False)
    e = from_wire({"code": "HostKeyError", "message": "\x1b]0;pwned\x07"})
    assert report_error(e, []) == 12
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\x9b" not in out
    assert "a\\x1b[2Jb" in out and "\\x1b]0;pwned\\x07" in err


def test_from_wire_survives_crafted_details() -> None:
    from imgstor.errors import HostKeyError, RemoteCommandError, from_wire
    e = from_wire({"code": "HostKeyError", "message": "m", "details": {"message": "x"}})
    assert isinstance(e, HostKeyError) and e.message == "m"
    e = from_wire({"code": "RemoteCommandError", "message": "m",
                   "details": {"rc": "nope", "argv": "rm -rf /"}})
    assert isinstance(e, RemoteCommandError) and e.rc == -1 and e.argv == []
    assert from_wire({"code": 5, "message": 7, "details": []}).message == "7"
