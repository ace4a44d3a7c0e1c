"""The scripted executor: a test double for node code (kept out of the zipapp).

Commands must come in the scripted order with the scripted argv; each is answered with
its canned rc/stdout/stderr.  ``files`` keeps what ``write_file`` wrote."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from imgstor.remote.executor import Executor, Result

__all__ = ["Expect", "ScriptedExecutor", "FakeFS"]


class FakeFS:
    """A node as a test describes it, read through ``ex.fs`` (HostFS's methods).

    ``files`` {path: text}; ``sizes`` {path: bytes} (regular files and block devices);
    ``paths`` [path] (exist, nothing more known); ``links`` {link: target}; ``procs``
    {pid: [state, argv]}; ``rdev`` {path: "MAJ:MIN"}; ``tools`` {name: path}.  ``exit_after``
    {pid: n}: the process is gone after N looks at its state; ``files_after`` {path: [n,
    text]}: the file reads as in ``files`` (or absent) N times, then as TEXT.  Every look at
    the clock is a second later; sleeps are recorded, not slept."""

    def __init__(self, *, files: dict | None = None, sizes: dict | None = None,
                 paths: Any = (), links: dict | None = None, procs: dict | None = None,
                 rdev: dict | None = None, tools: dict | None = None,
                 exit_after: dict | None = None, files_after: dict | None = None) -> None:
        self.files = dict(files or {})
        self.sizes = dict(sizes or {})
        self.paths = set(paths)
        self.links = dict(links or {})
        self.procs = {int(k): v for k, v in (procs or {}).items()}
        self.rdevs = dict(rdev or {})
        self.tools = dict(tools or {})
        self.exit_after = {int(k): v for k, v in (exit_after or {}).items()}
        self.later = {k: list(v) for k, v in (files_after or {}).items()}
        self.modes: dict[str, int] = {}
        self.clock = 0.0
        self.sleeps: list[float] = []

    def exists(self, path: str) -> bool:
        return (path in self.paths or path in self.files or path in self.sizes
                or path in self.links)

    def is_link(self, path: str) -> bool:
        return path in self.links

    def realpath(self, path: str) -> str:
        return self.links.get(path, path)

    def read_text(self, path: str) -> str | None:
        if path in self.later:           # rewritten after N reads (a daemon writes it)
            n, text = self.later[path]
            if n <= 0:
                return text
            self.later[path][0] -= 1
        return self.files.get(path)

    def read_bytes(self, path: str) -> bytes | None:
        text = self.read_text(path)
        return None if text is None else text.encode()

    def mode(self, path: str) -> int | None:
        return self.modes.get(path, 0o600 if self.exists(path) else None)

    def is_dir(self, path: str) -> bool:
        return path in self.paths and path not in self.files

    def listdir(self, path: str) -> list[str]:
        pre = path.rstrip("/") + "/"
        names = {k[len(pre):].split("/", 1)[0] for k in (*self.paths, *self.files, *self.sizes)
                 if k.startswith(pre)}
        return sorted(names)

    def size(self, path: str) -> int | None:
        return self.sizes.get(self.realpath(path))

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

    def which(self, tool: str) -> str | None:
        return self.tools.get(tool)

    def monotonic(self) -> float:
        self.clock += 1.0
        return self.clock

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


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
    fs: Any = None          # what the steps read of the node; default: an empty FakeFS

    def __post_init__(self) -> None:
        Executor.__init__(self, "scripted", fs=self.fs if self.fs is not None else FakeFS())
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

    def assert_done(self) -> None:
        if self.script:
            left = "\n".join(shlex.join(e.argv) for e in self.script)
            raise AssertionError(f"scripted commands never ran:\n{left}")
