"""``imgstor monitor JOB...`` / ``imgstor monitor --resume``: run jobs to their end, phase
by phase, many in one process.

A job kind is an ordered list of phases (the table: workflows/jobkinds.py), each a
function ``fn(ctx, job, rt)`` that ensures its phase's result (idempotent, like node
steps: a re-run after a kill anywhere inside it converges).  A ``Runner`` takes jobs
(their locks, imgstor/jobs.py ``acquire``) and runs each in a thread of its own: the
phases from the recorded one on, each completed phase recorded before the next starts
(``IMGSTOR_FAULT=job:<phase>`` kills the process right after recording that phase:
the lab's crash matrix).  When the last phase is done the job is removed.  Each phase
done and each failed try are audit lines (imgstor/audit.py).

A failure -- any exception: an ImgstorError, a node step's bug (RuntimeError), a bound
run out -- is recorded on the job (``attempts``, ``last_error``, ``next_try``), never on
the volume; the thread waits out the backoff of the [jobs] policy and tries the phase
again; after ``retry_attempts`` failed tries the job is ``failed`` and its thread ends
(`list host storagemap` shows it, `check` exits 9, the metrics count it; `imgstor monitor
--resume` or `imgstor repair` starts it again).  A job whose stop flag is set (an unmap
replaced it) is let go at its next wait.

``imgstor monitor --pool KEY`` is the pool monitor ``jobpool.launch`` starts: it runs the
jobs queued for KEY as they come and exits after POOL_IDLE seconds with nothing to do.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import os
import sys
import threading
import time
import traceback
from typing import Any

from imgstor import audit, jobpool
from imgstor import jobs as jobmod
from imgstor.errors import BusyError, ImgstorError, NotFound, StateError, StepError, UsageError
from imgstor.faults import fault
from imgstor.jobrun import Committer, Phase, Runtime, Stopped, Watch, describe
from imgstor.output import Output
from imgstor.state.model import Job
from imgstor.workflows import jobkinds
from imgstor.workflows.context import Ctx

__all__ = ["Runner", "run_phases", "monitor", "resume_all", "POOL_IDLE"]

POOL_IDLE = float(os.environ.get("IMGSTOR_MONITOR_IDLE", "5"))   # seconds
TICK = 0.5                      # how often a pool looks at its queue


def run_phases(ctx: Ctx, job: Job, rt: Runtime,
               kinds: dict[str, list[tuple[str, Phase]]] | None = None) -> None:
    """Run ``job``'s phases from its recorded phase to the end (the caller holds its
    lock); returns when it is done or gone."""
    phases = (kinds or jobkinds.KINDS).get(job.kind) or jobkinds.phases(job.kind)
    names = [n for n, _ in phases]
    if job.phase not in names:
        raise UsageError(f"job {job.id}: unknown phase {job.phase!r} for {job.kind}")
    i = names.index(job.phase)
    current: Job | None = job
    while current is not None and i < len(phases):
        name, fn = phases[i]
        rt.check(job.id)
        rt.log(job.id, f"phase {name}")
        fn(ctx, current, rt)
        nxt = names[i + 1] if i + 1 < len(names) else jobmod.DONE
        current = rt.commit(functools.partial(_advance, job.id, nxt))
        audit.record(ctx, what=f"monitor {job.kind}", target=job.volume, result="ok",
                     job=job.id, message=f"phase {name} done"
                     + ("; job done" if nxt == jobmod.DONE else f", next {nxt}"))
        fault(f"job:{name}")
        i += 1


def _own(job: Job | None) -> Job | None:
    """A job record out of a committed State, for the thread that goes on with it."""
    return copy.deepcopy(job)


def _advance(job_id: str, phase: str, st: Any) -> Job | None:
    return _own(jobmod.advance_in(st, job_id, phase))


class Runner:
    """Jobs run by this process, one thread each (see the module docstring)."""

    def __init__(self, ctx: Ctx, *, rt: Runtime | None = None,
                 kinds: dict[str, list[tuple[str, Phase]]] | None = None) -> None:
        self.ctx = ctx
        self.rt = rt or Runtime(ctx.store, ctx.config.jobs, Watch(ctx.cluster),
                                committer=Committer(ctx.store))
        self.kinds = kinds
        self.threads: dict[str, threading.Thread] = {}
        self.results: dict[str, str] = {}

    def take(self, ids: list[str], *, restart_failed: bool = False) -> list[str]:
        """Take those of ``ids`` no monitor runs and start their threads; their ids."""
        ids = [i for i in ids if i not in self.threads or not self.threads[i].is_alive()]
        if not ids:
            return []
        taken = jobmod.acquire(self.ctx.store, ids, policy=self.rt.policy,
                               restart_failed=restart_failed)
        for job, fd in taken:
            t = threading.Thread(target=self._thread, args=(job, fd), daemon=True,
                                 name=f"job-{job.id}")
            self.threads[job.id] = t
            t.start()
        return [j.id for j, _ in taken]

    def active(self) -> int:
        return sum(t.is_alive() for t in self.threads.values())

    def join(self) -> None:
        for t in list(self.threads.values()):
            t.join()

    def _thread(self, job: Job, fd: int) -> None:
        try:
            self.results[job.id] = self.run(job)
        except BaseException as e:              # noqa: BLE001 - recorded in the log
            self.results[job.id] = f"crashed: {describe(e)}"
            self._log_traceback(job.id)
        finally:
            try:
                jobmod.release(self.ctx.store, job.id, fd, commit=self.rt.commit)
            except ImgstorError as e:
                self.rt.log(job.id, f"could not release the job: {e}")

    def _log_traceback(self, job_id: str) -> None:
        with contextlib.suppress(OSError):
            self.rt.log(job_id, traceback.format_exc().rstrip())

    def run(self, job: Job) -> str:
        """Run ``job`` to its end (done, failed, stopped or gone): its phases, each
        failure recorded and retried as the policy says."""
        rt, policy = self.rt, self.rt.policy
        rt.log(job.id, f"taken by pid {os.getpid()} ({job.kind} of {job.volume}, phase "
               f"{job.phase}, {job.attempts} failed tries)")
        while True:
            try:
                if job.state == "retry" and job.next_try is not None:
                    rt.pause(job.id, job.next_try - time.time())
                    got = rt.commit(lambda st: _own(jobmod.start_try_in(st, job.id)))
                    if got is None:
                        return "gone"
                    job = got
                run_phases(self.ctx, job, rt, self.kinds)
                rt.log(job.id, "done")
                return "done"
            except Stopped:
                rt.log(job.id, "stop flag set (the job was replaced): letting it go")
                return "stopped"
            except Exception as e:              # noqa: BLE001 - every failure is the job's
                if not isinstance(e, ImgstorError):
                    self._log_traceback(job.id)
                why = describe(e)
                try:
                    rec = rt.commit(lambda st: _own(jobmod.failure_in(st, job.id, why,
                                                                      policy=policy)))
                except ImgstorError as e2:      # the store itself: try again later
                    rt.log(job.id, f"failed ({why}); could not record it: {e2}")
                    rt.pause(job.id, policy.backoff)
                    continue
                if rec is None:
                    return "gone"
                audit.record(self.ctx, what=f"monitor {job.kind}", target=job.volume,
                             result="failed" if rec.state == "failed" else "retry",
                             exit=getattr(e, "exit_code", 1), job=job.id,
                             message=f"phase {rec.phase} (try {rec.attempts} of "
                             f"{policy.attempts}): {why}")
                if rec.state == "failed":
                    rt.log(job.id, f"phase {rec.phase} failed ({rec.attempts} of "
                           f"{policy.attempts} tries): {why}; the job is failed: "
                           "`imgstor monitor --resume` or `imgstor repair` starts it again")
                    return f"failed in phase {rec.phase}: {why}"
                rt.log(job.id, f"phase {rec.phase} failed (try {rec.attempts} of "
                       f"{policy.attempts}): {why}; next try in "
                       f"{(rec.next_try or 0) - time.time():.0f}s")
                job = rec


# ------------------------------------------------------------------ the command
def monitor(ctx: Ctx, jobs: list[str] | None = None, resume: bool = False,
            pool: str | None = None) -> str | Output:
    """Run the jobs JOB... to their end in this process, or (--resume) hand every job that
    no monitor runs -- failed ones too -- to a detached monitor."""
    jobs = list(jobs or [])
    if resume:
        if jobs or pool:
            raise UsageError("monitor: give JOBs or --resume, not both")
        return resume_all(ctx, restart_failed=True)
    if ctx.dry_run:
        raise UsageError("monitor does not take --dry-run")
    if pool is not None:
        return _pool(ctx, pool)
    if not jobs:
        raise UsageError("monitor: give a JOB id (see `imgstor list host storagemap`) or "
                         "--resume")
    ids = [jobmod.check_id(j) for j in jobs]
    runner = Runner(ctx)
    took = runner.take(ids)
    if len(ids) == 1 and not took:
        j = ctx.store.read().jobs.get(ids[0])
        if j is None:
            raise NotFound(f"no job {ids[0]} in the state store (finished?)")
        if j.state == "failed":
            raise StateError(f"job {j.id} failed in phase {j.phase}: {j.last_error}; "
                             "`imgstor monitor --resume` starts it again")
        raise BusyError(f"job {ids[0]} is run by another monitor"
                        + (f" (pid {j.owner.pid} on {j.owner.host})" if j.owner else ""),
                        job=ids[0])
    runner.join()
    failed = [f"job {i}: {r}" for i, r in runner.results.items() if r.startswith("failed")]
    if failed:
        raise StepError("; ".join(failed))
    return "; ".join(f"job {i} {r}" for i, r in runner.results.items()) or "no job taken"


def _pool(ctx: Ctx, key: str) -> str:
    """The pool monitor of KEY: hold its lock, run what is queued, exit when idle."""
    inherited = int(os.environ.pop("IMGSTOR_MONITOR_LOCK_FD", "-1"))
    fd = inherited if inherited >= 0 else _take_pool_lock(ctx.store, key)
    if fd is None:
        return f"monitor pool {key} runs already"
    os.set_inheritable(fd, False)
    runner = Runner(ctx)
    _ = ctx.config                # built once, before the threads share it
    idle = time.monotonic()
    pending: list[str] = []
    try:
        while True:
            pending += jobpool.take_queued(ctx.store, key)
            if pending:
                try:
                    runner.take(pending)
                    pending = []
                except ImgstorError as e:      # the store busy: the jobs wait a tick
                    print(f"{time.strftime('%H:%M:%S')} monitor pool {key}: could not take "
                          f"{len(pending)} jobs yet: {e}", file=sys.stderr, flush=True)
            if runner.active() or pending:
                idle = time.monotonic()
            elif time.monotonic() - idle >= POOL_IDLE:
                os.close(fd)                   # no longer the pool: a launch starts one
                if not _queued(ctx.store, key):
                    break
                again = _take_pool_lock(ctx.store, key)
                if again is None:              # a new pool took over the queue
                    break
                fd, idle = again, time.monotonic()
            time.sleep(TICK)
    finally:
        runner.join()                          # the jobs' threads end as they do
    return f"monitor pool {key}: {len(runner.results)} jobs run"


def _take_pool_lock(store: Any, key: str) -> int | None:
    fd = os.open(jobpool.pool_lock_path(store, key), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _queued(store: Any, key: str) -> bool:
    try:
        return bool(os.listdir(jobpool.queue_dir(store, key)))
    except FileNotFoundError:
        return False


def resume_all(ctx: Ctx, *, restart_failed: bool = False) -> Output:
    """Hand every job that no monitor runs to a detached monitor (one for all of them).
    Failed jobs only with ``restart_failed`` (`monitor --resume`; cron's refresh leaves
    them, and says so)."""
    st = ctx.store.read()
    rows: list[dict] = []
    start: list[Job] = []
    for j in sorted(st.jobs.values(), key=lambda j: j.id):
        row = {"job": j.id, "volume": j.volume, "phase": j.phase}
        if jobmod.running(ctx.store, j.id):
            rows.append({**row, "action": "running"
                         + (f" (pid {j.owner.pid})" if j.owner else "")})
        elif j.state == "failed" and not restart_failed:
            rows.append({**row, "action": f"failed after {j.attempts} tries: "
                         f"{j.last_error}; not restarted (`imgstor monitor --resume` or "
                         "`imgstor repair`)"})
        else:
            start.append(j)
    if start:
        failed = False
        if ctx.dry_run:
            action = "would start a monitor"
        else:
            try:
                if restart_failed:
                    jobmod.restart(ctx.store, [j.id for j in start if j.state == "failed"])
                action = jobpool.launch(ctx.store, ctx.config.path, [j.id for j in start],
                                        self_argv=ctx.self_argv)
            except (OSError, ImgstorError) as e:
                action, failed = f"could not start a monitor: {e}", True
        rows += [{"job": j.id, "volume": j.volume, "phase": j.phase, "action": action,
                  "failed": failed} for j in start]
    rows.sort(key=lambda r: r["job"])
    return Output(rows, [("job", "JOB"), ("volume", "VOLUME"), ("phase", "PHASE"),
                         ("action", "ACTION")])
