"""The scripted executor: a test double for node code (kept out of the zipapp).

Commands must come in the scripted order with the scripted argv; each is answered with
its canned rc/stdout/stderr.  ``files`` keeps what ``write_file`` wrote."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from imgstor.remote.executor import Executor, Result

__all__ = ["Expect", "ScriptedExecutor"]


@dataclass
class Expect:
    """One expected command in a scripted scenario."""
    argv: list[str]
    rc: int = 0
    stdout: str = ""
    stderr: str = ""


@dataclass
class ScriptedExecutor(Executor):
    """Test executor: commands must come in the scripted order with the scripted argv."""
    script: list[Expect] = field(default_factory=list)
    dry_run: bool = False

    def __post_init__(self) -> None:
        Executor.__init__(self, "scripted")
        self.calls: list[list[str]] = []
        self.files: dict[str, bytes] = {}       # what write_file wrote

    def _next(self, argv: list[str]) -> Result:
        self.calls.append(argv)
        if not self.script:
            raise AssertionError(f"unexpected command (script is empty): {shlex.join(argv)}")
        exp = self.script.pop(0)
        if list(exp.argv) != argv:
            raise AssertionError(f"expected {shlex.join(exp.argv)}\n     got {shlex.join(argv)}")
        return Result(argv, exp.rc, exp.stdout, exp.stderr)

    def _run(self, argv, *, input, timeout, env):
        return self._next(argv)

    def _write_file(self, argv, data, mode):
        self._next(argv)
        self.files[argv[1]] = data

    def _pipe(self, stages, *, timeout):
        return [self._next(s) for s in stages]

    def assert_done(self) -> None:
        if self.script:
            left = "\n".join(shlex.join(e.argv) for e in self.script)
            raise AssertionError(f"scripted commands never ran:\n{left}")
