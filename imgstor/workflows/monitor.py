"""``imgstor monitor JOB`` / ``imgstor monitor --resume``: finish a job, phase by phase.

A job kind is an ordered list of phases, each a function ``fn(ctx, job) -> None`` that
ensures its phase's result (idempotent, like node steps: a re-run after a kill anywhere
inside it converges).  The monitor holds the job's lease, runs the phases from the
recorded one on, and records each completed phase in the store before the next starts;
``IMGSTOR_FAULT=job:<phase>`` kills it right after recording that phase (tests).  When the
last phase is done the job is removed.  Each phase done and a failure are audit lines
(imgstor/audit.py).  A failure records the job's ``last_error`` and
leaves the phase where it was: a later ``monitor --resume`` (or cron's refresh) retries.

The kinds and their phases: imgstor/jobkinds.py.
"""
from __future__ import annotations

import sys
import time

from imgstor import audit
from imgstor import jobs as jobmod
from imgstor.errors import BusyError, ImgstorError, NotFound, UsageError
from imgstor.faults import fault
from imgstor.jobkinds import PHASES, Phase
from imgstor.output import Output
from imgstor.state.model import Job
from imgstor.workflows.context import Ctx

__all__ = ["monitor", "run_job", "resume_all"]

DONE = "done"


def _phases(kind: str) -> list[tuple[str, Phase]]:
    try:
        return PHASES[kind]
    except KeyError:
        raise UsageError(f"no monitor for job kind {kind!r}") from None


def _advance(ctx: Ctx, job_id: str, phase: str) -> Job | None:
    with ctx.store.transaction() as st:
        job = st.jobs.get(job_id)
        if job is None:
            return None
        if phase == DONE:
            del st.jobs[job_id]
            return None
        job.phase, job.updated, job.last_error = phase, time.time(), None
        return job


def _failed(ctx: Ctx, job_id: str, e: ImgstorError) -> None:
    try:
        with ctx.store.transaction() as st:
            job = st.jobs.get(job_id)
            if job is not None:
                job.last_error, job.updated = str(e), time.time()
    except ImgstorError:
        pass


def _phase(ctx: Ctx, job_id: str) -> str:
    try:
        j = ctx.store.read().jobs.get(job_id)
    except ImgstorError:
        j = None
    return j.phase if j is not None else "?"


def run_job(ctx: Ctx, job: Job) -> None:
    """Run ``job``'s phases from its recorded phase to the end (the caller holds the
    lease)."""
    phases = _phases(job.kind)
    names = [n for n, _ in phases]
    if job.phase not in names:
        raise UsageError(f"job {job.id}: unknown phase {job.phase!r} for {job.kind}")
    i = names.index(job.phase)
    current: Job | None = job
    while current is not None and i < len(phases):
        name, fn = phases[i]
        print(f"{time.strftime('%H:%M:%S')} {job.id}: phase {name}", file=sys.stderr,
              flush=True)
        fn(ctx, current)
        nxt = names[i + 1] if i + 1 < len(names) else DONE
        current = _advance(ctx, job.id, nxt)
        audit.record(ctx, what=f"monitor {job.kind}", target=job.volume, result="ok",
                     job=job.id, message=f"phase {name} done"
                     + ("; job done" if nxt == DONE else f", next {nxt}"))
        fault(f"job:{name}")
        i += 1


def monitor(ctx: Ctx, job: str | None = None, resume: bool = False) -> str | Output:
    """Run one job to its end (JOB), or start a detached monitor for every job whose
    owner is gone (--resume)."""
    if resume:
        if job is not None:
            raise UsageError("monitor: give a JOB or --resume, not both")
        return resume_all(ctx)
    if job is None:
        raise UsageError("monitor: give a JOB id (see `imgstor list host storagemap`) or "
                         "--resume")
    job_id = jobmod.check_id(job)
    if ctx.dry_run:
        raise UsageError("monitor does not take --dry-run")
    j = jobmod.acquire(ctx.store, job_id)
    print(f"monitor {job_id} ({j.kind} of {j.volume}) from phase {j.phase}, attempt "
          f"{j.attempts}", file=sys.stderr, flush=True)
    try:
        run_job(ctx, j)
    except ImgstorError as e:
        _failed(ctx, job_id, e)
        audit.record(ctx, what=f"monitor {j.kind}", target=j.volume, result="failed",
                     exit=e.exit_code, job=job_id, message=f"phase {_phase(ctx, job_id)}: "
                     f"{e.message}")
        raise
    finally:
        jobmod.release(ctx.store, job_id)
    return f"job {job_id} done"


def resume_all(ctx: Ctx) -> Output:
    """Start ``imgstor monitor ID`` for every job that has no live owner."""
    rows: list[dict] = []
    for j in ctx.store.read().jobs.values():
        if jobmod.owner_alive(j):
            rows.append({"job": j.id, "volume": j.volume, "phase": j.phase,
                         "action": f"running (pid {j.owner.pid})" if j.owner else "running"})
            continue
        failed = False
        if ctx.dry_run:
            action = "would start a monitor"
        else:
            try:
                pid = jobmod.spawn(ctx.store, ctx.config.path, j.id, self_argv=ctx.self_argv)
                action = f"started monitor pid {pid}"
            except (OSError, BusyError, NotFound) as e:
                action, failed = f"could not start a monitor: {e}", True
        rows.append({"job": j.id, "volume": j.volume, "phase": j.phase, "action": action,
                     "failed": failed})
    return Output(rows, [("job", "JOB"), ("volume", "VOLUME"), ("phase", "PHASE"),
                         ("action", "ACTION")])
