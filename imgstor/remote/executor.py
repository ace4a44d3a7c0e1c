"""Executors: the one way node code runs a command.

A step never calls subprocess itself; it gets an executor and calls ``ex.run(argv)``.

* ``LocalExecutor`` runs argv lists with subprocess on the node (never a shell).
* ``DryRunExecutor`` runs commands declared ``read_only=True`` and reports the others as
  ``SKIP> …`` without running them, so ``--dry-run`` shows the real plan.
* The test double (a script of expected commands with canned answers) lives in
  tests/scripted.py: it is not shipped to nodes.

``call()`` is the same for an in-process change (libzfs_core, rtslib, QMP, a file the
step writes itself): logged as text, and on a dry run not called but reported as
``SKIP> …`` like a skipped command.  ``run``, ``call`` and ``write_file`` decide with one
rule, ``protocol.dry_run_gate``, which the frontend's transport uses too.

``fs`` is every read a step makes of the node besides commands: files, links, sizes,
processes, tools on the PATH, the clock (``HostFS``; tests give a fake one).

Pipelines (``zfs send | … | ssh … receive``) are the copy engine's (imgstor/remote/copypipe.py,
run by a copy job): it keeps the exit status of every stage (zettarepl's idea), so a failed
``zfs send`` is never hidden by a successful ``zfs receive``.

Standard library only: this module is shipped to nodes inside the zipapp.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from typing import Any, Callable, Iterable, Sequence

from imgstor.errors import RemoteCommandError
from imgstor.remote import atomicfile, procfs
from imgstor.remote.protocol import Result, dry_run_gate

__all__ = ["Result", "Executor", "LocalExecutor", "DryRunExecutor", "HostFS", "host_name"]


def host_name() -> str:
    return os.environ.get("IMGSTOR_NODE") or os.uname().nodename


class HostFS:
    """What steps read of the node besides command output: files, links, block device
    sizes, processes, tools on the PATH, the clock.  Read-only (a dry run reads too);
    changes are commands, ``Executor.write_file`` or ``Executor.call``."""

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_link(self, path: str) -> bool:
        return os.path.islink(path)

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def read_text(self, path: str) -> str | None:
        """The file's text, None if it (or a directory on its way) does not exist."""
        try:
            with open(path) as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_bytes(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def mode(self, path: str) -> int | None:
        """Permission bits (``st_mode & 0o7777``, links followed); None if absent."""
        try:
            return os.stat(path).st_mode & 0o7777
        except (FileNotFoundError, NotADirectoryError):
            return None

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        """The names in directory PATH, sorted; [] if it is absent."""
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def size(self, path: str) -> int | None:
        """Bytes of a regular file or a block device (links followed); None if absent
        or unreadable."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)

    def rdev(self, path: str) -> str | None:
        """``MAJOR:MINOR`` of a block device (links followed), as dmsetup tables show it."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"

    def pid_state(self, pid: int) -> str | None:
        """The state letter of /proc/PID/stat (R, S, Z …), None if no such process."""
        st = procfs.parse_stat(self.read_text(f"/proc/{int(pid)}/stat"))
        return st.state if st else None

    def pid_cmdline(self, pid: int) -> list[str]:
        text = self.read_text(f"/proc/{int(pid)}/cmdline") or ""
        return [a for a in text.split("\0") if a]

    def which(self, tool: str) -> str | None:
        return shutil.which(tool)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Executor:
    """Base: subclasses implement ``_run`` and ``_write_file``."""

    dry_run = False

    def __init__(self, host: str | None = None, fs: HostFS | None = None) -> None:
        self.host = host or host_name()
        self.fs = fs if fs is not None else HostFS()
        self.log: list[str] = []          # every command, as text, for --debug
        self.skipped: list[str] = []      # commands a dry run did not run

    def _go(self, text: str, *, read_only: bool) -> bool:
        """The one dry-run rule (protocol.dry_run_gate): log, and say whether to run."""
        return dry_run_gate(text, dry_run=self.dry_run, read_only=read_only, log=self.log,
                            skipped=self.skipped)

    def run(self, argv: Sequence[str], *, read_only: bool = False, check: bool = True,
            ok_codes: Iterable[int] = (0,), input: str | None = None,
            timeout: float | None = 600, env: dict | None = None) -> Result:
        """Run one argv.  ``check``: raise RemoteCommandError unless rc in ok_codes."""
        argv = [str(a) for a in argv]
        if not self._go(shlex.join(argv), read_only=read_only):
            return Result(argv, 0, "", "", skipped=True)
        res = self._run(argv, input=input, timeout=timeout, env=env)
        if check and res.rc not in tuple(ok_codes):
            raise RemoteCommandError(self.host, argv, res.rc, res.stderr, res.stdout)
        return res

    def call(self, text: str, fn: Callable[..., Any], *args: Any, read_only: bool = False,
             **kw: Any) -> Any:
        """Call ``fn(*args, **kw)`` in this process (a library call such as libzfs_core's
        ``lzc_create``), logged as ``text``.  A dry run does not call a change
        (``read_only=False``): it logs ``SKIP> text`` and returns None."""
        if not self._go(text, read_only=read_only):
            return None
        return fn(*args, **kw)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Replace file ``path`` with ``data`` atomically (temp file, fsync, rename) with
        ``mode``; its directory is made 0700 if missing.  A change like a command: logged
        as ``write-file PATH MODE``, skipped (``SKIP> …``) in a dry run."""
        argv = ["write-file", str(path), f"{mode:04o}"]
        if self._go(shlex.join(argv), read_only=False):
            self._write_file(argv, data, mode)

    def _write_file(self, argv: list[str], data: bytes, mode: int) -> None:
        raise NotImplementedError

    def _run(self, argv: list[str], *, input: str | None, timeout: float | None,
             env: dict | None) -> Result:
        raise NotImplementedError


class LocalExecutor(Executor):
    def _write_file(self, argv, data, mode):
        path = argv[1]
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        atomicfile.replace(path, data, mode=mode)

    def _run(self, argv, *, input, timeout, env):
        full_env = None
        if env:
            full_env = dict(os.environ)
            full_env.update(env)
        try:
            p = subprocess.run(argv, input=input, capture_output=True, text=True,
                               timeout=timeout, env=full_env,
                               stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError:
            return Result(argv, 127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired as e:
            return Result(argv, 124, _text(e.stdout), _text(e.stderr) + f"\ntimed out after {timeout}s")
        return Result(argv, p.returncode, p.stdout, p.stderr)


class DryRunExecutor(LocalExecutor):
    dry_run = True


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode(errors="replace")
