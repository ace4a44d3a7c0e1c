"""Jobs: sync mode's long work, recorded in the store and finished by detached monitors.

A job (``state.model.Job``) belongs to one volume and has a kind and a phase.  The
workflow that starts it records it in the same transaction as the volume's new state,
then ``spawn`` starts ``imgstor monitor ID`` detached (own session, stdin closed, output
to ``<state dir>/jobs/ID.log``) and returns at once.  The monitor takes the job's lease
(``acquire``: only one live owner, checked by pid + /proc start time), runs the kind's
phase functions from the recorded phase on, and records each phase as it completes.  A
monitor that dies leaves its phase: ``imgstor monitor --resume`` (and cron's refresh)
starts a new one that continues from there.

Progress (bytes done/total of a copy, a merge's counters) changes often: it goes to a
small side file ``jobs/ID.progress`` (atomic replace, no fsync), never through the
store's lock.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from typing import Any, Sequence

from imgstor import atomicfile
from imgstor.errors import BusyError, NotFound, UsageError
from imgstor.state.model import JOB_KINDS, Job, Lease, State
from imgstor.state.store import Store, pid_alive, proc_starttime, this_host

__all__ = ["JOB_ID_RE", "new_job", "job_dir", "progress_path", "log_path", "write_progress",
           "read_progress", "acquire", "release", "owner_alive", "spawn", "check_id",
           "prune_logs"]

JOB_ID_RE = re.compile(r"[a-z-]+-[0-9a-f]{12}", re.ASCII)


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


def job_dir(store: Store) -> str:
    return os.path.join(os.path.dirname(store.path), "jobs")


def progress_path(store: Store, job_id: str) -> str:
    return os.path.join(job_dir(store), f"{check_id(job_id)}.progress")


def log_path(store: Store, job_id: str) -> str:
    return os.path.join(job_dir(store), f"{check_id(job_id)}.log")


def _ensure_dir(store: Store) -> str:
    d = job_dir(store)
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def write_progress(store: Store, job_id: str, **facts: Any) -> None:
    """Replace the job's progress file (small JSON; no fsync: losing it costs a display)."""
    _ensure_dir(store)
    atomicfile.replace(progress_path(store, job_id),
                       json.dumps({"time": time.time(), **facts}).encode(), durable=False)


def read_progress(store: Store, job_id: str) -> dict:
    try:
        with open(progress_path(store, job_id)) as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def owner_alive(job: Job) -> bool:
    """The job's owner runs (on this frontend; another frontend's owner counts as alive:
    it cannot be checked from here)."""
    o = job.owner
    if o is None:
        return False
    return o.host != this_host() or pid_alive(o.pid, o.starttime)


def acquire(store: Store, job_id: str) -> Job:
    """Take the job's lease for this process: BusyError if a live monitor owns it,
    NotFound if the job is gone (done)."""
    with store.transaction() as st:
        job = st.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id} in the state store (finished?)")
        if job.owner is not None and job.owner.pid != os.getpid() and owner_alive(job):
            raise BusyError(f"job {job_id} is run by pid {job.owner.pid} on "
                            f"{job.owner.host}", job=job_id, pid=job.owner.pid)
        job.owner = Lease(pid=os.getpid(), host=this_host(), since=time.time(),
                          starttime=proc_starttime(os.getpid()))
        job.attempts += 1
        job.updated = time.time()
        return job


def release(store: Store, job_id: str) -> None:
    """Give the lease back (the job stays, for the next monitor to continue)."""
    with store.transaction() as st:
        job = st.jobs.get(job_id)
        if job is not None and job.owner is not None and job.owner.pid == os.getpid():
            job.owner = None


def spawn(store: Store, config_path: str, job_id: str, *, self_argv: Sequence[str]) -> int:
    """Start ``imgstor monitor JOB`` detached: a new session, stdin from /dev/null, output
    appended to the job's log (0600).  ``self_argv`` starts this imgstor again
    (``Ctx.self_argv``: ``python -m imgstor``, or the one-file build).  Returns the
    monitor's pid; does not wait."""
    check_id(job_id)
    _ensure_dir(store)
    log = os.open(log_path(store, job_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND
                  | os.O_NOFOLLOW, 0o600)
    try:
        p = subprocess.Popen([*self_argv, "--config", os.path.abspath(config_path), "monitor",
                              job_id],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, close_fds=True,
                             cwd="/", env={**os.environ, "IMGSTOR_MONITOR": job_id})
    finally:
        os.close(log)
    from imgstor import audit
    audit.job_started(job_id)            # the audit line of the command names the job
    return p.pid


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
