"""Test doubles for the overlay drivers' seams (never shipped): the node's files and
processes (``overlays.base.FS``) and the QMP monitor of qemu-storage-daemon
(``drivers.qsd.connect``).

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
from imgstor.remote.overlays import base


class FakeFS:
    def __init__(self, spec: dict) -> None:
        self.paths = set(spec.get("exists", ()))
        self.files = dict(spec.get("files", {}))
        self.procs = {int(k): v for k, v in spec.get("procs", {}).items()}
        self.rdevs = dict(spec.get("rdev", {}))
        self.exit_after = {int(k): v for k, v in spec.get("exit_after", {}).items()}
        self.later = {k: list(v) for k, v in spec.get("files_after", {}).items()}
        self.clock = 0.0
        self.sleeps: list[float] = []

    def exists(self, path: str) -> bool:
        return path in self.paths or path in self.files

    def read_text(self, path: str) -> str | None:
        if path in self.later:           # rewritten after N reads (a daemon writes it)
            n, text = self.later[path]
            if n <= 0:
                return text
            self.later[path][0] -= 1
        return self.files.get(path)

    def rdev(self, path: str) -> str | None:
        return self.rdevs.get(path)

    def pid_state(self, pid: int) -> str | None:
        if pid in self.exit_after:
            self.exit_after[pid] -= 1
            if self.exit_after[pid] < 0:
                self.procs.pop(pid, None)
        p = self.procs.get(pid)
        return p[0] if p else None

    def pid_cmdline(self, pid: int) -> list[str]:
        p = self.procs.get(pid)
        return list(p[1]) if p else []

    def monotonic(self) -> float:      # every look at the clock is a second later
        self.clock += 1.0
        return self.clock

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


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


def install(mp: pytest.MonkeyPatch, sc: dict) -> tuple[FakeFS, FakeQMP | None]:
    fs = FakeFS(sc.get("fs", {}))
    mp.setattr(base, "FS", fs)
    q = FakeQMP(sc["qmp"]) if "qmp" in sc else None

    def connect(path: str):
        if q is None:
            raise NotFound(f"no QMP socket {path}", path=path)
        return q
    mp.setattr(qsd, "connect", connect)
    return fs, q
