"""Test double for the overlay drivers' QMP seam (never shipped): the monitor of
qemu-storage-daemon (``drivers.qsd.connect``).  The node's files and processes are the
executor's ``fs`` (tests/scripted.FakeFS, built by test_step_scenarios.NodeEnv).

Scenario keys (test_step_scenarios.py):
  fs    {"exists": [path], "files": {path: text}, "procs": {pid: [state, cmdline list]},
         "rdev": {path: "MAJ:MIN"}, "exit_after": {pid: n}, "files_after": {path: [n, text]}}
        ``exit_after``: the process is gone after N looks at its state (a daemon that
        quits); ``files_after``: the file reads as in ``files`` (or absent) N times, then
        as TEXT (a pid file the daemon writes).
  qmp   [{"execute", "arguments"?, "return"? | "error"?}, …] in order; the monitor is
        "down" (connect raises NotFound) when the key is absent.
"""
from __future__ import annotations

import json

import pytest

from imgstor.errors import NotFound, StepError
from imgstor.remote.drivers import qsd


class FakeQMP:
    """Answers each command from the script, checking command and arguments in order."""

    def __init__(self, script: list[dict]) -> None:
        self.script = [dict(e) for e in script]
        self.done: list[tuple[str, dict | None]] = []

    def execute(self, cmd: str, args: dict | None = None):
        if not self.script:
            raise AssertionError(f"unexpected QMP {cmd} {json.dumps(args)} (script is empty)")
        exp = self.script.pop(0)
        want = (exp["execute"], exp.get("arguments"))
        assert (cmd, args) == want, f"expected QMP {want}\n     got {(cmd, args)}"
        self.done.append((cmd, args))
        if "error" in exp:
            raise StepError(f"QMP {cmd}: {exp['error']}", command=cmd)
        return exp.get("return", {})

    def close(self) -> None:
        pass

    @property
    def mutating(self) -> list[list]:
        return [[c, a] if a else [c] for c, a in self.done if not c.startswith("query-")]

    def assert_done(self) -> None:
        if self.script:
            raise AssertionError(f"QMP commands never ran: {[e['execute'] for e in self.script]}")


def install(mp: pytest.MonkeyPatch, sc: dict) -> FakeQMP | None:
    q = FakeQMP(sc["qmp"]) if "qmp" in sc else None

    def connect(path: str):
        if q is None:
            raise NotFound(f"no QMP socket {path}", path=path)
        return q
    mp.setattr(qsd, "connect", connect)
    return q
