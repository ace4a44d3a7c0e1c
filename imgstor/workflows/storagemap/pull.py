"""The periodic pull of a sync volume: the NAS gets the running VM's data back on a
schedule (``imgstor refresh`` starts it when due; the volume stays ``mapped``).

    pull   trust -> send -> prune
           a snapshot on the node (``<local>@imgstor-pull-<job created>``), sent to the
           NAS incrementally from the newest common snapshot (``copy.start`` with
           base="auto", rollback=True, as the sync back does; limited by the volume's or
           NAS's downloadspeed, else the node's sync_bwlimit), then the snapshot just sent
           -- the last common one, the base of the next pull and of the sync back -- is
           held (``imgstor-base``) on both sides before the previous base is released on
           both, and the newest ``sync_keep`` imgstor snapshots are kept on each side,
           never a held base.

The volume's ``extra.last_pull`` records when the pulled snapshot was taken (the job's
creation time).  An unmap asked for while a pull runs waits for it: ``unmap_sync`` sets
``extra.unmap`` on the pull job and its last phase chains the sync-back (two copies to the
same NAS dataset must never overlap: the copy job is keyed by destination).
"""
from __future__ import annotations

from imgstor import jobs as jobmod
from imgstor import synctrust
from imgstor.errors import StepError
from imgstor.jobrun import Phase, Runtime
from imgstor.state import transitions
from imgstor.state.model import Job
from imgstor.workflows.context import Ctx
from imgstor.workflows.storagemap import sync as _sync

__all__ = ["PULL", "snapshot_name", "start_pull"]


def snapshot_name(job: Job) -> str:
    return f"imgstor-pull-{int(job.created)}"


def start_pull(st, key: str) -> Job:
    """Record a pull job for mapped sync volume ``key`` (inside the caller's
    transaction)."""
    return jobmod.new_job(st, "pull", key, "trust")


def _check(ctx: Ctx, job: Job, rt: Runtime):
    v = _sync._vol(rt, job)
    if v.state != "mapped" or v.mode != "sync" or v.target:
        raise StepError(f"job {job.id}: {job.volume} is {v.state} (mode {v.mode}); a pull "
                        "runs only on a mapped sync volume on its local copy")
    return v


def _pull_trust(ctx: Ctx, job: Job, rt: Runtime) -> None:
    v = _check(ctx, job, rt)
    synctrust.ensure(ctx.cluster, v.host, v.nas, pools=[v.zpool])


def _pull_send(ctx: Ctx, job: Job, rt: Runtime) -> None:
    v = _check(ctx, job, rt)
    n = _sync._names(ctx, v)
    _sync.check_nas_snapshots(ctx, job, rt, v, n)     # audit L4: a snapshot made on the NAS
    snap = f"{n['local']}@{snapshot_name(job)}"
    # the snapshot carries imgstor's mark (nas.snapshot); the copy sends it
    ctx.cluster.step(v.host, "nas.snapshot", pool=n["pool"], vol=v.vol,
                     snapshot=snapshot_name(job))
    _sync._copy(ctx, job, rt, v.host, v.nas, snapshot=snap, to_dataset=n["nas_ds"],
                what="NAS<-VM sched", base="auto", rollback=True,
                bwlimit=_sync._rate(ctx, rt, v, "down"))


def _pull_prune(ctx: Ctx, job: Job, rt: Runtime) -> None:
    v = _sync._vol(rt, job)
    n = _sync._names(ctx, v)
    keep = ctx.config.host(v.nas).sync_keep
    protect = [snapshot_name(job)]
    cl = ctx.cluster
    # the snapshot just sent is the new last common one: held on both sides, then the
    # previous base released on both, then the old ones pruned
    _sync.hold_base(ctx, v, n, snapshot_name(job))
    for host, pool in ((_sync._host(v), n["pool"]), (v.nas, v.zpool)):
        r = cl.step(host, "nas.prune_snapshots", pool=pool, vol=v.vol, keep=keep,
                    protect=protect)
        for why in r.facts.get("left") or ():
            rt.log(job.id, f"kept {host}:{why}")
    def record(st) -> Job | None:
        vv = st.volumes.get(job.volume)
        if vv is not None:
            vv.extra["last_pull"] = job.created
            vv.extra["last_pull_snapshot"] = snapshot_name(job)
        j = st.jobs.get(job.id)
        if j is not None and j.extra.get("unmap") and vv is not None \
                and vv.state == "mapped":
            # an unmap came during the pull: the NAS gets the volume back now
            transitions.move(vv, "NAS<-VM")
            return jobmod.new_job(st, "sync-back", job.volume, "quiesce",
                                  force=bool(j.extra.get("force")))
        return None
    nxt = rt.commit(record)
    if nxt is not None:
        _sync.start_jobs(ctx, [nxt])


# The kind's phases (the table that names every kind: workflows/jobkinds.py).
PULL: list[tuple[str, Phase]] = [("trust", _pull_trust), ("send", _pull_send),
                                 ("prune", _pull_prune)]
