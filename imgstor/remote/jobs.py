"""Detached jobs on a node: a long pipeline that outlives the SSH request that started it.

A job is a directory ``JOBS_DIR/<name>/`` (0700) holding

* ``lock``      an ``flock`` taken by the job process for its whole life and inherited by
                every stage it starts (``pass_fds``), so the lock is free only when nothing
                of the job runs any more.  It is the liveness test: a second start while
                it is held returns the running job instead of starting another one, and no
                pid can be mistaken for it.
* ``pid``       ``{"pid", "pgid", "start_time", "started"}``; start_time is field 22 of
                /proc/PID/stat (clock ticks since boot), so a reused pid is not mistaken
                for the job when cancelling.
* ``spec``      what the job was asked to do (JSON), for status, cancel and restarts.
* ``progress``  small JSON, replaced atomically (temp file + rename): state, phase, bytes,
                per-stage exit status, the tail of the last error.
* ``log``       the job's stdout/stderr.

The job is started by a double fork: the step process forks, the child calls ``setsid``
and forks the job, then exits; the job makes itself a process group leader, points
stdin at /dev/null and stdout/stderr at ``log``, closes every other descriptor (the SSH
channel of the request among them, so the request returns at once) and takes the lock.

``status`` reads ``progress``; a job whose lock is free but whose progress never reached a
final state is reported as ``died`` (the caller restarts it).  ``cancel`` sends SIGTERM to
the job's process group (then SIGKILL) and waits until the lock is free.

Standard library only: shipped to nodes in the zipapp.  ``JOBS_DIR`` is per boot
(/run/imgstor/jobs): a job cannot survive a reboot, and after one its directory is gone.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import threading
import time
from typing import Any, Callable

from imgstor.errors import UsageError
from imgstor.remote import atomicfile, procfs
from imgstor.remote.flocks import lock_held

__all__ = ["JOBS_DIR", "FINAL", "Job", "job_dir", "start", "status", "cancel", "ours", "lock_held",
           "write_json", "read_json"]

JOBS_DIR = os.environ.get("IMGSTOR_JOBS_DIR", "/run/imgstor/jobs")
FINAL = ("done", "failed", "cancelled")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:%@+-]{0,250}$", re.ASCII)


def job_dir(name: str, base: str | None = None) -> str:
    if not _NAME.fullmatch(name) or ".." in name:
        raise UsageError(f"bad job name {name!r}")
    return os.path.join(base or JOBS_DIR, name)


# ------------------------------------------------------------------ small file helpers
def write_json(path: str, data: dict) -> None:
    """Replace ``path`` atomically with ``data`` (0600): readers see old or new, never half."""
    atomicfile.replace(path, json.dumps(data, sort_keys=True).encode(), durable=False,
                       tmp=f"{path}.tmp-{os.getpid()}-{threading.get_ident()}")


def read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    return d if isinstance(d, dict) else None


# ------------------------------------------------------------------ the job process side
class Job:
    """What a job body gets: its directory, the lock fd to pass on to its stages, and a
    throttled, atomic progress writer."""

    def __init__(self, name: str, dir: str, lock_fd: int, spec: dict, base: dict) -> None:
        self.name, self.dir, self.lock_fd, self.spec = name, dir, lock_fd, spec
        self.progress: dict = dict(base)
        self._last_write = 0.0

    def update(self, *, force: bool = False, **fields: Any) -> None:
        self.progress.update(fields)
        now = time.monotonic()
        if force or now - self._last_write >= 0.5:
            self.progress["updated"] = time.time()
            write_json(os.path.join(self.dir, "progress"), self.progress)
            self._last_write = now


def _job_main(name: str, d: str, spec: dict, body: Callable[[Job], dict],
              report_w: int) -> None:
    """Runs in the detached grandchild; never returns."""
    rc = 0
    try:
        os.setpgid(0, 0)
        lock_fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                          0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.write(report_w, b"busy")
            os._exit(0)
        # fixed high descriptors for the two we keep; then 0/1/2 and nothing else: the
        # SSH channel of the step that started us must close so the request returns
        rw = os.dup2(report_w, 1000, inheritable=False)
        lock_fd = os.dup2(lock_fd, 1001)            # inheritable: the stages keep the lock
        devnull = os.open(os.devnull, os.O_RDONLY)
        log = os.open(os.path.join(d, "log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 1000)
        os.closerange(1002, 65536)
        report_w = rw
        pid = os.getpid()
        old = read_json(os.path.join(d, "progress")) or {}
        write_json(os.path.join(d, "spec"), spec)
        write_json(os.path.join(d, "pid"), {"pid": pid, "pgid": os.getpgid(0),
                                            "start_time": procfs.start_time(pid),
                                            "started": time.time()})
        previous = {k: old[k] for k in ("state", "phase", "bytes_done", "bytes_total",
                                        "error", "snapshot") if k in old} or None
        job = Job(name, d, lock_fd, spec, {
            "job": name, "state": "running", "phase": "start", "pid": pid,
            "started": time.time(), "attempt": int(old.get("attempt", 0)) + 1,
            "previous": previous, "bytes_done": 0, "bytes_total": None, "error": None})
        job.update(force=True)
        os.write(report_w, b"ok")
        os.close(report_w)
        # SIGTERM (cancel) ends the job through an exception, so it can record it
        signal.signal(signal.SIGTERM, _on_term)
        try:
            final = body(job)
        except _Cancelled:
            final = {"state": "cancelled", "error": "cancelled (SIGTERM)"}
        except Exception as e:          # noqa: BLE001 - the job must record any failure
            import traceback
            traceback.print_exc()
            final = {"state": "failed", "error": f"{type(e).__name__}: {e}"}
        final.setdefault("state", "done")
        final["phase"] = final.get("phase", final["state"])
        final["finished"] = time.time()
        job.update(force=True, **final)
    except BaseException:               # noqa: BLE001
        rc = 70
    os._exit(rc)


class _Cancelled(Exception):
    pass


def _on_term(signum, frame):            # noqa: ARG001
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Cancelled()


# ------------------------------------------------------------------ the caller's side
def start(name: str, spec: dict, body: Callable[[Job], dict], *, base: str | None = None,
          wait: float = 10.0) -> tuple[bool, dict]:
    """Start ``body(job)`` detached as job ``name``; return (started, status).

    If the job's lock is held (it runs), nothing is started and (False, its status) comes
    back; this also holds when two starts race (the loser's grandchild finds the lock
    taken and exits)."""
    d = job_dir(name, base)
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    if lock_held(os.path.join(d, "lock")):
        return False, status(name, base=base)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                        # child: new session, fork the job, leave
        try:
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                _job_main(name, d, spec, body, w)
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    answer = _read_with_timeout(r, wait)
    os.close(r)
    if answer == b"busy":
        return False, status(name, base=base)
    if answer != b"ok":
        st = status(name, base=base)
        st.setdefault("error", "the job did not report that it started")
        return False, st
    return True, status(name, base=base)


def _read_with_timeout(fd: int, wait: float) -> bytes:
    import select
    deadline = time.monotonic() + wait
    out = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 16)
        if not chunk:
            break
        out += chunk
        if out in (b"ok", b"busy"):
            break
    return out


def status(name: str, *, base: str | None = None) -> dict:
    """The job's progress plus ``state``: running | done | failed | cancelled | died |
    none (never started on this boot)."""
    d = job_dir(name, base)
    prog = read_json(os.path.join(d, "progress"))
    pid = read_json(os.path.join(d, "pid")) or {}
    held = lock_held(os.path.join(d, "lock"))
    out = dict(prog or {})
    out["job"] = name
    if held:
        out["state"] = "running"
        if pid.get("pid") and procfs.start_time(pid["pid"]) != pid.get("start_time"):
            # the job process is gone but one of its stages still holds the lock
            out["orphaned_stages"] = True
    elif prog is None:
        out["state"] = "none"
    elif prog.get("state") not in FINAL:
        out["state"] = "died"
        out["error"] = prog.get("error") or "the job process ended without a result"
    out["pid"] = pid.get("pid")
    return out


def ours(pgid: int, start_time: int | None) -> bool:
    """Whether process group PGID is the job whose pid file recorded START_TIME: its
    leader (pid = pgid: the job called setpgid(0, 0)) runs with that start time, or is
    gone while members remain -- Linux does not hand out a number still in use as a
    process group id, so a group whose leader is gone is still the job's.  A live
    process with that pid and another start time is someone else's (pid reused)."""
    now = procfs.start_time(int(pgid))
    return now is None or start_time is None or now == start_time


def cancel(name: str, *, base: str | None = None, timeout: float = 15.0) -> dict:
    """Stop the job: SIGTERM to its process group, SIGKILL after ``timeout``/2, until the
    lock is free.  Returns its status afterwards (``cancelled`` unless it had finished)."""
    d = job_dir(name, base)
    lock = os.path.join(d, "lock")
    pid = read_json(os.path.join(d, "pid")) or {}
    if not lock_held(lock):
        return status(name, base=base)
    pgid = pid.get("pgid") or pid.get("pid")
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while lock_held(lock):
        if time.monotonic() > deadline - timeout / 2:
            sig = signal.SIGKILL
        if time.monotonic() > deadline:
            break
        if pgid is None:
            # the lock is taken before the pid file is written: read it again
            pid = read_json(os.path.join(d, "pid")) or {}
            pgid = pid.get("pgid") or pid.get("pid")
        if pgid is not None and not ours(pgid, pid.get("start_time")):
            # the pid file is an older job's (a new one holds the lock and has not written
            # its own yet) and that number is someone else's now: read it again (audit L1)
            pid = read_json(os.path.join(d, "pid")) or {}
            pgid = None
        elif pgid is not None:
            try:
                os.killpg(int(pgid), sig)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    st = status(name, base=base)
    if st["state"] in ("died", "running"):
        prog = read_json(os.path.join(d, "progress")) or {}
        if not lock_held(lock) and prog.get("state") not in FINAL:
            prog.update(state="cancelled", phase="cancelled", finished=time.time(),
                        error=prog.get("error") or "cancelled")
            write_json(os.path.join(d, "progress"), prog)
        st = status(name, base=base)
    return st
