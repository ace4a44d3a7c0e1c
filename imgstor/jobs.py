"""Jobs: sync mode's long work, recorded in the store and run by detached monitors.

A job (``state.model.Job``) belongs to one volume and has a kind, a phase, the failed
tries of that phase (``attempts``), the last one's error and what it waits for (``state``
ready | retry | failed, ``next_try``).  Beside the store, each job has files in
``<state dir>/jobs/`` (0700), modelled on the node's copy jobs (imgstor/remote/jobs.py):

* ``ID.lock``      an ``flock`` held by the monitor that runs the job, for as long as it
                   runs it: the liveness test (``running``).  The kernel drops it when the
                   monitor dies, so a job can never be run twice at once nor be thought
                   running by a dead or recycled pid.
* ``ID.stop``      the stop flag: an unmap that replaces the job (a cancel during the copy)
                   creates it; the job's monitor sees it at its next wait (a ``stat``, not
                   a parse of the whole store per poll) and lets the job go.
* ``ID.progress``  bytes done/total of a copy, a merge's counters: replaced atomically,
                   never through the store's lock.
* ``ID.log``       what the job did, line by line (``log``).

Monitors multiplex: one monitor process (``imgstor monitor``, workflows/monitor.py) runs
any number of jobs, one thread each; imgstor/jobpool.py hands jobs to one.  A monitor that
dies takes its jobs' locks with it: cron's ``imgstor refresh`` (``monitor.resume_all``)
hands them to a new one, which continues each from its phase.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import time
import uuid
from typing import Any, Callable

from imgstor import atomicfile
from imgstor.errors import UsageError
from imgstor.remote.flocks import lock_held
from imgstor.state.model import JOB_KINDS, Job, Lease, State
from imgstor.state.store import Store, proc_starttime, this_host

__all__ = ["JOB_ID_RE", "DONE", "new_job", "check_id", "job_dir", "progress_path",
           "log_path", "lock_path", "stop_path", "write_progress", "read_progress", "log",
           "running", "shown_state", "request_stop", "stop_requested", "acquire",
           "advance_in", "failure_in", "start_try_in", "release_in", "advance",
           "record_failure", "release", "restart", "forget", "ensure_dir", "prune_logs"]

JOB_ID_RE = re.compile(r"[a-z-]+-[0-9a-f]{12}", re.ASCII)
DONE = "done"


def check_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise UsageError(f"invalid job id {job_id!r:.60}: expected KIND-<12 hex digits>",
                         field="job")
    return job_id


def new_job(st: State, kind: str, key: str, phase: str, **extra: Any) -> Job:
    """Add a job for volume ``key`` to ``st`` (inside the caller's transaction)."""
    if kind not in JOB_KINDS:
        raise UsageError(f"unknown job kind {kind!r}")
    now = time.time()
    job = Job(id=f"{kind}-{uuid.uuid4().hex[:12]}", kind=kind, volume=key, phase=phase,
              created=now, updated=now, extra=dict(extra))
    st.jobs[job.id] = job
    return job


# ------------------------------------------------------------------ files
def job_dir(store: Store) -> str:
    return os.path.join(os.path.dirname(store.path), "jobs")


def _path(store: Store, job_id: str, suffix: str) -> str:
    return os.path.join(job_dir(store), f"{check_id(job_id)}.{suffix}")


def progress_path(store: Store, job_id: str) -> str:
    return _path(store, job_id, "progress")


def log_path(store: Store, job_id: str) -> str:
    return _path(store, job_id, "log")


def lock_path(store: Store, job_id: str) -> str:
    return _path(store, job_id, "lock")


def stop_path(store: Store, job_id: str) -> str:
    return _path(store, job_id, "stop")


def ensure_dir(store: Store) -> str:
    d = job_dir(store)
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def write_progress(store: Store, job_id: str, **facts: Any) -> None:
    """Replace the job's progress file (small JSON; no fsync: losing it costs a display)."""
    ensure_dir(store)
    atomicfile.replace(progress_path(store, job_id),
                       json.dumps({"time": time.time(), **facts}).encode(), durable=False)


def read_progress(store: Store, job_id: str) -> dict:
    try:
        with open(progress_path(store, job_id)) as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def log(store: Store, job_id: str, text: str) -> None:
    """Append ``HH:MM:SS ID: text`` to the job's log (0600)."""
    ensure_dir(store)
    fd = os.open(log_path(store, job_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND
                 | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, f"{time.strftime('%H:%M:%S')} {job_id}: {text}\n".encode())
    finally:
        os.close(fd)


def forget(store: Store, job_id: str) -> None:
    """A finished or removed job's side files go (its log stays).  Its lock file too: a
    process that opened it meanwhile and takes the lock finds no job in the store."""
    for suffix in ("progress", "stop", "lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_path(store, job_id, suffix))


# ------------------------------------------------------------------ liveness and stop
def running(store: Store, job_id: str) -> bool:
    """A monitor runs the job now (it holds the job's lock)."""
    return lock_held(lock_path(store, job_id))


def shown_state(store: Store, job: Job) -> str:
    """running | ready (no monitor yet, or its monitor is gone) | retry | failed."""
    if job.state != "failed" and running(store, job.id):
        return "running"
    return job.state


def request_stop(store: Store, job_id: str) -> None:
    """Tell the monitor that runs the job to let it go (the job was replaced)."""
    ensure_dir(store)
    os.close(os.open(stop_path(store, job_id), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW,
                     0o600))


def stop_requested(store: Store, job_id: str) -> bool:
    return os.path.exists(stop_path(store, job_id))


def _take_lock(store: Store, job_id: str) -> int | None:
    """The job's lock for this process (its fd), or None when another holds it."""
    ensure_dir(store)
    fd = os.open(lock_path(store, job_id), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


# ------------------------------------------------------------------ the records
def _me() -> Lease:
    return Lease(pid=os.getpid(), host=this_host(), since=time.time(),
                 starttime=proc_starttime(os.getpid()))


def acquire(store: Store, ids: list[str], *, policy: Any,
            restart_failed: bool = False) -> list[tuple[Job, int]]:
    """Take the jobs ``ids`` that no monitor runs, for this process, in one transaction:
    (the job as recorded, its lock fd) each.  A failed job is taken only with
    ``restart_failed`` (and starts again with no attempts).  A job whose last monitor took
    it and never let it go died in it: that counts as a failed try (a crash loop ends
    ``failed`` after ``policy.attempts``, like any other failure)."""
    taken: list[tuple[Job, int]] = []
    try:
        with store.transaction() as st:
            for job_id in dict.fromkeys(ids):
                job = st.jobs.get(job_id)
                if job is None or (job.state == "failed" and not restart_failed):
                    continue
                fd = _take_lock(store, job_id)
                if fd is None:
                    continue
                taken.append((job, fd))
                if job.state == "failed":
                    job.state, job.attempts, job.next_try = "ready", 0, None
                elif job.owner is not None:
                    job.attempts += 1
                    job.last_error = (f"its monitor (pid {job.owner.pid}) ended in phase "
                                      f"{job.phase} without a result")
                    if job.attempts >= policy.attempts:
                        job.state, job.next_try = "failed", None
                        job.owner = None
                        continue
                job.owner = _me()
    except BaseException:
        for _, fd in taken:                  # nothing recorded: nothing taken
            os.close(fd)
        raise
    out = []
    for job, fd in taken:
        if job.state == "failed":            # its crash loop ended here: not run
            os.close(fd)
        else:
            out.append((copy.deepcopy(job), fd))
    taken = out
    for job, _ in taken:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stop_path(store, job.id))        # a stale flag of an earlier run
    return taken


# Each change of a job record is a function of the State (``*_in``), so that a monitor
# can apply those of many jobs in one transaction (jobrun.Committer: group commit); the
# plain names run one in a transaction of its own.
def advance_in(st: State, job_id: str, phase: str) -> Job | None:
    """Record that the job's current phase is done and ``phase`` is next (DONE: the job
    is removed).  None when the job is gone (done, or removed by an unmap)."""
    job = st.jobs.get(job_id)
    if job is None:
        return None
    if phase == DONE:
        del st.jobs[job_id]
        return None
    job.phase, job.updated = phase, time.time()
    job.attempts, job.last_error, job.state, job.next_try = 0, None, "ready", None
    return job


def failure_in(st: State, job_id: str, error: str, *, policy: Any,
               now: float | None = None) -> Job | None:
    """A try of the job's phase failed: ``attempts`` + 1, ``last_error``; then either its
    next try (``retry`` at now + the policy's backoff) or, after ``policy.attempts``,
    ``failed``.  Recorded on the job, never on the volume (restore and pulls skip a volume
    in error: marking it would strand the VM's writes)."""
    now = time.time() if now is None else now
    job = st.jobs.get(job_id)
    if job is None:
        return None
    job.attempts += 1
    job.last_error, job.updated = error, now
    if job.attempts >= policy.attempts:
        job.state, job.next_try = "failed", None
    else:
        job.state, job.next_try = "retry", now + policy.backoff_after(job.attempts)
    return job


def start_try_in(st: State, job_id: str) -> Job | None:
    """The retry is due: the job is ``ready`` (running) again, its phase as recorded."""
    job = st.jobs.get(job_id)
    if job is not None:
        job.state, job.next_try = "ready", None
    return job


def release_in(st: State, job_id: str, pid: int) -> bool:
    """Monitor PID lets the job go: its owner cleared (the job, if not done, stays for
    the next monitor).  True when the job is no longer in the store."""
    job = st.jobs.get(job_id)
    if job is not None and job.owner is not None and job.owner.pid == pid:
        job.owner = None
    return job is None


def advance(store: Store, job_id: str, phase: str) -> Job | None:
    with store.transaction() as st:
        return advance_in(st, job_id, phase)


def record_failure(store: Store, job_id: str, error: str, *, policy: Any,
                   now: float | None = None) -> Job | None:
    with store.transaction() as st:
        return failure_in(st, job_id, error, policy=policy, now=now)


def release(store: Store, job_id: str, fd: int, *,
            commit: Callable[[Callable[[State], Any]], Any] | None = None) -> None:
    """``release_in`` (through COMMIT, a monitor's group commit, if given), then the
    job's lock; a job no longer in the store loses its files."""
    gone = False
    pid = os.getpid()
    try:
        if commit is not None:
            gone = commit(lambda st: release_in(st, job_id, pid))
        else:
            with store.transaction() as st:
                gone = release_in(st, job_id, pid)
    finally:
        if gone:
            forget(store, job_id)
        os.close(fd)


def restart(store: Store, ids: list[str]) -> None:
    """Failed jobs back to ``ready`` with no attempts (`monitor --resume`, `repair`)."""
    with store.transaction() as st:
        for job_id in ids:
            job = st.jobs.get(job_id)
            if job is not None and job.state == "failed":
                job.state, job.attempts, job.next_try = "ready", 0, None


def prune_logs(store: Store, max_age_days: float, keep: set[str] | frozenset[str] = frozenset(),
               *, now: float | None = None) -> list[str]:
    """Remove the job files (``jobs/ID.log``, ``jobs/ID.progress``) not changed for
    ``max_age_days`` of jobs not in ``keep`` (the store's jobs); their names, sorted."""
    d = job_dir(store)
    limit = (time.time() if now is None else now) - max_age_days * 86400
    gone = []
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    for name in names:
        job_id, dot, ext = name.rpartition(".")
        if not dot or ext not in ("log", "progress") or not JOB_ID_RE.fullmatch(job_id) \
                or job_id in keep:
            continue
        path = os.path.join(d, name)
        try:
            if os.lstat(path).st_mtime < limit:
                os.unlink(path)
                gone.append(name)
        except FileNotFoundError:
            pass
    return sorted(gone)
