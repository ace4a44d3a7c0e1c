"""Sync mode: the VM boots at once on an overlay, the volume is copied to its node in the
background, the overlay merges into the local copy and pivots, and the NAS gets the
volume back when it is unmapped.

The map (``map_sync``) does what direct mode does (volume, target for the node's
initiator, attach), puts the overlay over the iSCSI disk (``overlay.create``), records
``NAS->VM`` with a ``sync-in`` job in one transaction, starts the job's monitor detached
and returns the overlay's device: its time does not depend on the volume's size.

Jobs (phases run by ``imgstor monitor``, each idempotent; the table of kinds is
workflows/jobkinds.py, the runtime imgstor/jobs.py and imgstor/jobrun.py):

    sync-in    trust -> copy -> merge -> merged -> pivot
               NAS->VM until the copy is there, merging until merged, then mapped (local,
               no target).  An unmap asked for meanwhile (``extra.unmap``) chains a
               sync-back once pivoted.
    sync-back  quiesce -> trust -> send -> cleanup
               NAS<-VM: the overlay goes first (no write after the last snapshot), a last
               snapshot on the node goes to the NAS incrementally from the newest common
               one, and only then is the local copy destroyed; unmapped.
    cancel     stop -> merge -> merged -> teardown
               an unmap during NAS->VM: the copy is cancelled, the overlay's writes merge
               into the origin (the NAS volume over iSCSI), then the overlay, the session,
               the target, the temp-write and any local copy go; unmapped.

The copies run detached on the sending host (``copy.start``; imgstor/remote/copyjob.py);
a phase reads their status through the monitor's watch (one ``jobs.watch`` per host for
all of its jobs) and writes the job's progress file.  Every waiting phase has a bound:
a merge found back in ``snapshot`` (an overlay restored after a reboot or a killed
daemon) is merged again, and no progress for ``[jobs] stall_timeout`` fails the try.
The NAS<->node trust is imgstor's own (imgstor/synctrust.py), set up by the ``trust``
phases; each copy is announced to the receiver's gate before it starts
(``synctrust.start_copy``), and a hop no job needs any more is revoked (``_release``).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from imgstor import jobpool, synctrust
from imgstor import jobs as jobmod
from imgstor.errors import (
    BusyError,
    Conflict,
    NotFound,
    RemoteCommandError,
    StateError,
    StepError,
)
from imgstor.faults import fault
from imgstor.jobrun import Phase, Runtime
from imgstor.output import Message
from imgstor.remote.protocol import Portal
from imgstor.state import transitions
from imgstor.state.model import Job, Volume
from imgstor.workflows.context import Ctx
from imgstor.workflows.storagemap.common import nas_batch, portal_of

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from imgstor.transport import Cluster, Prepared

__all__ = ["map_sync", "unmap_sync", "SYNC_IN", "SYNC_BACK", "CANCEL", "wait_for_jobs",
           "hold_base", "start_jobs", "REMERGES"]

COPY_RESTARTS = 5          # a copy that died is started again this many times per try
REMERGES = 3               # an overlay found back in `snapshot` is merged again this often
REPLACED_WAIT = 120.0      # seconds a cancel waits for the replaced job's monitor to let go
LOCAL_COPY = "local-copy"  # imgstor:role of the node's copy of a volume


# ------------------------------------------------------------------ the map
def map_sync(ctx: Ctx, cl: Cluster, key: str, nas: str, nas_cfg, zpool: str, vol: str, host: str,
             host_cfg, iqn: str, attach_result: tuple, *, portal: Portal,
             overlay: Prepared | None = None) -> Message | str:
    """After the direct part of a map (volume, target, attach): the overlay, the record
    (NAS->VM and a sync-in job, one transaction) and the monitor.  ``overlay``: its step
    started ahead (``cl.prepare``)."""
    volf, att, initiator, lun, chap = attach_result
    origin = att.facts.get("qemu_json") or att.facts.get("device")
    ovl = (overlay or cl.prepare(host, "overlay.create")).run(
        driver=host_cfg.overlay, pool=host_cfg.vm_container_zpool, vol=vol, origin=origin)
    fault("overlay")
    device = ovl.facts.get("device")
    if ctx.dry_run:
        return f"dry run: {nas}:{vol} would be mapped to {host}:{device} (sync mode)"
    extra = {"initiator": initiator, "lun": lun, "intent": None, "marked": True,
             "chap_user": chap["chap"]["user"] if chap else None,
             "origin": origin, "overlay": host_cfg.overlay, "portal": str(portal),
             "local_pool": host_cfg.vm_container_zpool}
    with ctx.store.transaction() as st:
        v = st.volumes[key]
        running = [j for j in st.jobs_of(key) if j.kind == "sync-in"]
        transitions.move(v, "NAS->VM") if v.state != "NAS->VM" else None
        v.host, v.target, v.mode, v.device, v.error = host, iqn, "sync", device, None
        v.size = volf.facts.get("size") or v.size
        v.busy = None
        for k, val in extra.items():
            if val is None:
                v.extra.pop(k, None)
            else:
                v.extra[k] = val
        job = running[0] if running else jobmod.new_job(st, "sync-in", key, "trust")
    fault("recorded")
    start_jobs(ctx, [job])
    return Message(f"mapping  {nas} : {zpool} / {vol}  on  {host}\n{device}",
                   f"{nas}:{vol} mapped to {host}:{device}")


def start_jobs(ctx: Ctx, jobs: list[Job]) -> bool:
    """Hand recorded jobs to a detached monitor (imgstor/jobpool.py ``launch``: the running
    pool monitor, or a new one).  False (and a warning) when that failed: the jobs are
    recorded, `imgstor monitor --resume` (and cron's refresh) runs them."""
    if not jobs:
        return True
    ids = ", ".join(j.id for j in jobs)
    try:
        what = jobpool.launch(ctx.store, ctx.config.path, [j.id for j in jobs],
                              self_argv=ctx.self_argv)
    except OSError as e:
        print(f"warning: could not start the monitor of job {ids}: {e}; run "
              f"`imgstor monitor --resume`", file=sys.stderr)
        return False
    if ctx.debug:
        print(f"job {ids}: {what}", file=sys.stderr)
    return True


# ------------------------------------------------------------------ the unmap
def unmap_sync(ctx: Ctx, key: str, v: Volume, force: bool) -> Message | str:
    """Unmap a sync volume: returns at once; a job finishes it (NAS<-VM until done)."""
    nas, vol = v.nas, v.vol
    if ctx.dry_run:
        what = {"NAS->VM": "cancel the copy and merge the VM's writes into the NAS volume",
                "merging": "let the merge finish, then send the last snapshot to the NAS",
                "mapped": "send the last snapshot to the NAS, then destroy the local copy",
                }.get(v.state, "nothing")
        return f"dry run: {nas}:{vol} would be unmapped from {v.host}: {what}"
    with ctx.store.transaction() as st:
        v = st.volumes[key]
        jobs = st.jobs_of(key)
        if v.state == "NAS<-VM" or any(j.kind in ("sync-back", "cancel") for j in jobs):
            job = next((j for j in jobs if j.kind in ("sync-back", "cancel")), None)
            if job is None:           # NAS<-VM with no job: a lost job, made again
                job = jobmod.new_job(st, "sync-back", key, "quiesce", force=force)
            msg = f"{nas}:{vol} is being unmapped (NAS<-VM, job {job.id})"
        elif v.state == "merging" or (v.state == "NAS->VM" and _copy_done(jobs)):
            # the merge finishes first, then the sync-in job chains the sync-back (a
            # merging volume whose job was lost gets one again: merge is idempotent)
            job = next((j for j in jobs if j.kind == "sync-in"), None) or \
                jobmod.new_job(st, "sync-in", key, "merge")
            job.extra["unmap"], job.extra["force"] = True, force
            msg = (f"{nas}:{vol}: the merge finishes first, then NAS<-VM "
                   f"(job {job.id})")
        elif v.state == "NAS->VM":
            replaced = None
            for j in jobs:
                if j.kind == "sync-in":
                    # its monitor (if one runs it: the lock, checked under the store's
                    # lock that acquire takes too) lets it go at its next wait
                    if jobmod.running(ctx.store, j.id):
                        jobmod.request_stop(ctx.store, j.id)
                        replaced = j.id
                    else:
                        jobmod.forget(ctx.store, j.id)
                    del st.jobs[j.id]
            transitions.move(v, "NAS<-VM")
            job = jobmod.new_job(st, "cancel", key, "stop", force=force,
                                 **({"replaces": replaced} if replaced else {}))
            msg = f"unmapping {nas}:{vol} from {v.host}: NAS<-VM (cancel, job {job.id})"
        elif v.state == "mapped" and any(j.kind == "pull" for j in jobs):
            # a periodic pull sends to the same NAS dataset: it ends first, then chains
            # the sync-back (pull.py's last phase)
            job = next(j for j in jobs if j.kind == "pull")
            job.extra["unmap"], job.extra["force"] = True, force
            msg = (f"{nas}:{vol}: the periodic pull finishes first, then NAS<-VM "
                   f"(job {job.id})")
        elif v.state == "mapped":
            transitions.move(v, "NAS<-VM")
            job = jobmod.new_job(st, "sync-back", key, "quiesce", force=force)
            msg = f"unmapping {nas}:{vol} from {v.host}: NAS<-VM (job {job.id})"
        elif v.state == "unmapped":
            # its sync back ended between the caller's read and this transaction
            return f"{nas}:{vol} is not mapped"
        else:
            raise StateError(f"{key} is {v.state}: see `imgstorageadmin list`")
        v.busy = None
    start_jobs(ctx, [job])
    # the guide's lines (the state shows NAS<-VM until the job is done)
    return Message(f"unmapping   {nas} : {vol}\nSuccess", msg)


def _copy_done(jobs: list[Job]) -> bool:
    return any(j.kind == "sync-in" and j.phase in ("merge", "merged", "pivot") for j in jobs)


# ------------------------------------------------------------------ phase helpers
def _vol(rt: Runtime, job: Job) -> Volume:
    """The job's volume as the store has it now (read only: shared by the monitor)."""
    v = rt.read().volumes.get(job.volume)
    if v is None:
        raise NotFound(f"job {job.id}: volume {job.volume} is not in the store")
    return v


def _host(v: Volume) -> str:
    """The node a sync job's volume is on (a sync volume always records one)."""
    if v.host is None:
        raise StateError(f"{v.key}: a sync job's volume records no host")
    return v.host


def _names(ctx: Ctx, v: Volume) -> dict[str, Any]:
    host_cfg = ctx.config.host(_host(v))
    nas_cfg = ctx.config.host(v.nas)
    pool = v.extra.get("local_pool") or host_cfg.vm_container_zpool
    return {"host": v.host, "nas": v.nas, "host_cfg": host_cfg, "nas_cfg": nas_cfg,
            "driver": v.extra.get("overlay") or host_cfg.overlay, "pool": pool,
            "local": f"{pool}/{v.vol}", "nas_ds": f"{v.zpool}/{v.vol}",
            "kind": nas_cfg.volume_kind}


def _set(job: Job, rt: Runtime, *, state: str | None = None, **changes: Any) -> None:
    """The job's volume: its state moved (the transitions table) and fields set, in the
    monitor's group commit."""
    extra = changes.pop("extra", {})

    def change(st) -> str | None:
        v = st.volumes[job.volume]
        moved = None
        if state is not None:
            old = v.state
            if transitions.move(v, state):
                moved = f"{job.volume}: state {old} -> {state}"
        for k, val in changes.items():
            setattr(v, k, val)
        for k, val in extra.items():
            if val is None:
                v.extra.pop(k, None)
            else:
                v.extra[k] = val
        return moved
    moved = rt.commit(change)
    if moved:
        rt.log(job.id, moved)


def _job_extra(rt: Runtime, job: Job, **extra: Any) -> None:
    def change(st) -> None:
        j = st.jobs.get(job.id)
        if j is not None:
            j.extra.update(extra)
    rt.commit(change)
    job.extra.update(extra)


def _copy(ctx: Ctx, job: Job, rt: Runtime, sender: str, receiver: str, *, snapshot: str,
          to_dataset: str, what: str, **kw: Any) -> Mapping[str, Any]:
    """Run one copy job on SENDER to its end, reading its status through the monitor's
    watch; restart it if it died; fail the try if it makes no progress for the bound."""
    cl = ctx.cluster
    args = synctrust.copy_args(ctx.config, sender, receiver, snapshot=snapshot,
                               to_dataset=to_dataset, **kw)
    restarts = 0
    bound = rt.bound(f"{sender}: copy of {snapshot} to {receiver}:{to_dataset}")
    st: Any = synctrust.start_copy(cl, sender, receiver, args).facts
    delay = rt.policy.poll
    while True:
        state = st.get("state")
        if st.get("snapshot") not in (None, snapshot):
            # the copy job is keyed by its destination: this is another snapshot's copy
            # (a periodic pull's, say).  Its "done" is not ours: let it end, then start ours.
            if state == "running":
                bound.saw(("other", st.get("snapshot"), st.get("bytes_done")),
                          f"{st.get('snapshot')} is being copied there")
                st = rt.copy_status(job.id, sender, receiver, to_dataset, delay=delay)
                continue
            st = synctrust.start_copy(cl, sender, receiver, args).facts
            if st.get("snapshot") not in (None, snapshot) and st.get("state") != "running":
                raise StepError(f"{sender}: copy to {receiver}:{to_dataset} did not start "
                                f"for {snapshot} (its job reports {st.get('snapshot')})")
            continue
        rt.progress(job.id, phase=what, state=state, done=st.get("bytes_done"),
                    total=st.get("bytes_total"), rate=st.get("rate"),
                    exact=st.get("total_exact", True))
        if state == "done":
            return dict(st)
        if state in ("failed", "cancelled", "died", "none"):
            # a broken stream (a receiver killed, a network blip) is started again: it
            # resumes from its token where the pool has them, else from its beginning
            restarts += 1
            if state == "cancelled" or restarts > COPY_RESTARTS:
                raise RemoteCommandError(
                    sender, ["copy", snapshot, f"{receiver}:{to_dataset}"], 1,
                    str(st.get("error") or state),
                    message=f"{sender}: copy of {snapshot} to {receiver}:{to_dataset} "
                            f"{state} ({restarts} attempts): {st.get('error')}")
            rt.log(job.id, f"copy {state} ({st.get('error') or 'no result'}); starting it "
                   "again")
            rt.pause(job.id, min(rt.policy.poll * restarts, 10))
            st = synctrust.start_copy(cl, sender, receiver, args).facts
            bound.reset()
            continue
        try:
            bound.saw((state, st.get("bytes_done")),
                      f"{st.get('bytes_done')} of {st.get('bytes_total')} bytes")
        except StepError:
            # a copy that hangs is stopped (its partial receive kept: the next try
            # resumes from it), so the next try starts it again
            cl.step(sender, "copy.cancel", to_alias=receiver, to_dataset=to_dataset,
                    keep_partial=True)
            raise
        delay = rt.next_delay(st)
        st = rt.copy_status(job.id, sender, receiver, to_dataset, delay=delay)


def _wait_merged(ctx: Ctx, job: Job, rt: Runtime, n: dict, *, into: str) -> None:
    """Until the overlay is merged (or pivoted).  An overlay found in ``snapshot`` -- made
    again by a restore after a reboot or a killed daemon, or a merge that failed -- is
    merged again (``overlay.merge`` is idempotent), up to REMERGES times; a merge that
    makes no progress for the bound fails the try (audit M1: it used to wait forever)."""
    vol = job.volume.split("/", 1)[1]
    bound = rt.bound(f"{n['host']}: merge of {job.volume}'s overlay into the {into}")
    remerged = 0
    delay = 0.0
    while True:
        s = rt.overlay_status(job.id, n["host"], n["driver"], n["pool"], vol, delay=delay)
        delay = rt.policy.poll
        rt.progress(job.id, phase="merging", done=s.get("done"), total=s.get("total"),
                    synced=s.get("synced"))
        phase = s.get("phase")
        if phase in ("merged", "pivoted"):
            return
        if not s.get("exists", True):
            raise NotFound(f"{n['host']}: overlay of {job.volume} is gone (a restore puts "
                           "it back: `imgstor refresh`)")
        if phase == "snapshot":
            if remerged >= REMERGES:
                raise StepError(f"{n['host']}: the overlay of {job.volume} is back in "
                                f"snapshot after {remerged} merges into the {into}")
            remerged += 1
            rt.log(job.id, f"overlay found in snapshot (restored?): merging into the "
                   f"{into} again ({remerged}/{REMERGES})")
            _merge(ctx, n, vol, into=into)
            bound.reset()
            delay = 0.0
            continue
        bound.saw((phase, s.get("done"), s.get("total"), s.get("synced")),
                  f"{phase} {s.get('synced') or ''}".strip())


def _merge(ctx: Ctx, n: dict, vol: str, *, into: str) -> None:
    """``overlay.merge`` into the local copy or (cancel) the origin."""
    local = _local_path(ctx, n, vol) if into == "local" else None
    ctx.cluster.step(n["host"], "overlay.merge", driver=n["driver"], pool=n["pool"], vol=vol,
                     into=into, **({"local": local} if local else {}))


def _local_path(ctx: Ctx, n: dict, vol: str) -> str:
    f = ctx.cluster.step(n["host"], "nas.get_props", pool=n["pool"], vol=vol,
                         kind=n["kind"]).facts
    if not f.get("exists") or not f.get("path"):
        raise NotFound(f"{n['host']}: the local copy {n['local']} is not there")
    return f["path"]


def _untarget(ctx: Ctx, v: Volume, n: dict, *, force: bool) -> None:
    """The iSCSI origin is no longer used: log the node out, remove the target, clear the
    NAS's mapping properties (the volume stays the store's, mode sync)."""
    cl = ctx.cluster
    iqn = v.target
    if iqn and n["host_cfg"].initiator != "userspace":
        cl.step(n["host"], "compute.detach", kind=n["host_cfg"].initiator,
                portal=v.extra.get("portal") or portal_of(n["nas_cfg"]), iqn=iqn,
                force=force)
    from imgstor import chap as chapstore
    from imgstor.workflows.storagemap.common import state_path
    creds = chapstore.load(state_path(ctx), v.nas, v.vol)
    if iqn:
        nas_batch(cl, v.nas, [
            ("untarget", "nas.remove_target", dict(
                driver=n["nas_cfg"].target_driver, iqn=iqn, force=force,
                **({"chap_user": creds.user} if creds else {})))])


def _clear_nas_props(ctx: Ctx, v: Volume) -> None:
    from imgstor.workflows.storagemap.common import CLEAR_MAPPING
    ctx.cluster.step(v.nas, "nas.set_props", pool=v.zpool, vol=v.vol, props=CLEAR_MAPPING)


# ------------------------------------------------------------------ sync-in phases
def _in_trust(ctx: Ctx, job: Job, rt: Runtime) -> None:
    v = _vol(rt, job)
    synctrust.ensure(ctx.cluster, v.nas, _host(v),
                     pools=[_names(ctx, v)["pool"]])


def _snapshot_copy(ctx: Ctx, job: Job, rt: Runtime, sender: str, receiver: str, source: str,
                   dest: str, tag: str, what: str, **kw: Any) -> None:
    """A new imgstor snapshot of SOURCE on SENDER (named once, kept in the job: a restarted
    monitor copies the same one) copied to DEST on RECEIVER."""
    snap = job.extra.get("snapshot") or f"{source}@imgstor-{tag}-{int(job.created)}"
    if "snapshot" not in job.extra:
        _job_extra(rt, job, snapshot=snap)
    _copy(ctx, job, rt, sender, receiver, snapshot=snap, to_dataset=dest, what=what,
          create_snapshot=True, **kw)


def _rate(ctx: Ctx, rt: Runtime, v: Volume, direction: str) -> int:
    """The copy's limit: the volume's or its NAS's uploadspeed (``up``, NAS->node) or
    downloadspeed (``down``, node->NAS), else the sender's sync_bwlimit (syncattrs)."""
    from imgstor.workflows import syncattrs
    return syncattrs.bwlimit(rt.read(), ctx.config, v, direction)


def hold_base(ctx: Ctx, v: Volume, n: dict, short: str) -> None:
    """Snapshot SHORT, on both sides now, becomes the last common one: it is held
    (``imgstor-base``) on both sides first, and only then released from the previous base
    on both (a crash in between leaves two held bases, never none)."""
    cl = ctx.cluster
    sides = ((_host(v), n["pool"]), (v.nas, v.zpool))
    for host, pool in sides:
        cl.step(host, "nas.hold_base", pool=pool, vol=v.vol, snapshot=short)
    for host, pool in sides:
        cl.step(host, "nas.hold_base", pool=pool, vol=v.vol, snapshot=short,
                release_others=True)


def _in_copy(ctx: Ctx, job: Job, rt: Runtime) -> None:
    v = _vol(rt, job)
    n = _names(ctx, v)
    _snapshot_copy(ctx, job, rt, v.nas, _host(v), n["nas_ds"], n["local"], "in", "NAS->VM",
                   bwlimit=_rate(ctx, rt, v, "up"))
    # the copied snapshot is the base of the first periodic pull and of the sync back
    hold_base(ctx, v, n, job.extra["snapshot"].split("@", 1)[1])
    # the node's copy is imgstor's from now on (destroyed only after the NAS has it back)
    ctx.cluster.step(_host(v), "nas.set_props", pool=n["pool"], vol=v.vol,
                     props={"role": LOCAL_COPY})


def _release(ctx: Ctx, v: Volume, *, inbound: bool) -> None:
    """Revoke the NAS -> node hop (INBOUND: no other volume's sync-in copy needs it) or
    the node -> NAS one (no other sync volume of that node and NAS is on the node): the
    next copy's trust phase sets it up again (issue 18: keys with a life cycle)."""
    st = ctx.store.read()                         # read only
    for o in st.volumes.values():
        if o.key == v.key or o.nas != v.nas or o.host != v.host or o.mode != "sync":
            continue
        js = st.jobs_of(o.key)
        if inbound and any(j.kind == "sync-in" and j.phase in ("trust", "copy") for j in js):
            return
        if not inbound and o.state in ("mapped", "NAS->VM", "merging", "NAS<-VM"):
            return
    sender, receiver = (v.nas, _host(v)) if inbound else (_host(v), v.nas)
    synctrust.revoke(ctx.cluster, sender, receiver)


def _in_merge(ctx: Ctx, job: Job, rt: Runtime) -> None:
    v = _vol(rt, job)
    _release(ctx, v, inbound=True)        # the copy is there: the NAS sends nothing more
    n = _names(ctx, v)
    # recorded before the merge starts (audit H1): from its first chunk on the VM's disk
    # is the local copy plus what is left in the temp-write, never the NAS volume again
    if v.state != "merging":
        _set(job, rt, state="merging")
    _merge(ctx, n, v.vol, into="local")
    fault("job:merge-started")


def _in_merged(ctx: Ctx, job: Job, rt: Runtime) -> None:
    _wait_merged(ctx, job, rt, _names(ctx, _vol(rt, job)), into="local")


def _in_pivot(ctx: Ctx, job: Job, rt: Runtime) -> None:
    v = _vol(rt, job)
    n = _names(ctx, v)
    # a restore (a reboot, a killed daemon) may have made the overlay again, unmerged,
    # since the merged phase: merge it again first (overlay.linear refuses otherwise)
    _wait_merged(ctx, job, rt, n, into="local")
    ctx.cluster.step(_host(v), "overlay.linear", driver=n["driver"], pool=n["pool"], vol=v.vol)
    fault("job:linear")
    _untarget(ctx, v, n, force=True)      # nothing uses the origin after the pivot
    ctx.cluster.step(v.nas, "nas.set_props", pool=v.zpool, vol=v.vol,
                     props={"host": v.host, "target": None, "mode": "sync"})
    _set(job, rt, state="mapped", target=None, error=None)
    j = rt.read().jobs.get(job.id)
    if j is not None and j.extra.get("unmap"):
        # an unmap came during the merge: the NAS gets the volume back now
        force = bool(j.extra.get("force"))

        def chain(st) -> Job:
            transitions.move(st.volumes[job.volume], "NAS<-VM")
            return jobmod.new_job(st, "sync-back", job.volume, "quiesce", force=force)
        start_jobs(ctx, [rt.commit(chain)])


# ------------------------------------------------------------------ sync-back phases
def _back_quiesce(ctx: Ctx, job: Job, rt: Runtime) -> None:
    """The overlay's device goes before the last snapshot: no write can land after it.
    dm refuses while the VM holds the device open (dmsetup remove: busy)."""
    v = _vol(rt, job)
    n = _names(ctx, v)
    ctx.cluster.step(_host(v), "overlay.remove", driver=n["driver"], pool=n["pool"], vol=v.vol,
                     force=bool(job.extra.get("force")))    # --force: even while in use


def _back_trust(ctx: Ctx, job: Job, rt: Runtime) -> None:
    v = _vol(rt, job)
    synctrust.ensure(ctx.cluster, _host(v), v.nas, pools=[v.zpool])


FOREIGN = "foreign_snapshots"      # volume extra: NAS snapshots that stop the sends back


def check_nas_snapshots(ctx: Ctx, job: Job, rt: Runtime, v: Volume, n: dict) -> None:
    """Before a send back (periodic pull, sync back): the NAS volume's snapshots made
    after the last one both sides hold stop it -- ``zfs receive`` takes an incremental only
    onto the destination's newest snapshot, and the gate's rollback only to it; getting
    past them would mean destroying them (``receive -F``), and imgstor never destroys a
    snapshot it did not make (audit L4: zfs-auto-snapshot or sanoid on the NAS).  So the
    send stops here with a Conflict naming them, and the volume records them
    (``extra.foreign_snapshots``: ``check`` and the metrics show them) until they are gone;
    the next try sends."""
    cl = ctx.cluster
    nas = cl.step(v.nas, "node.sync_facts", pool=v.zpool, vol=v.vol).facts
    node = cl.step(_host(v), "node.sync_facts", pool=n["pool"], vol=v.vol).facts
    have = {(s["name"], s["guid"]) for s in node.get("snapshots", ())}
    snaps = nas.get("snapshots", ())
    common = max((i for i, s in enumerate(snaps) if (s["name"], s["guid"]) in have),
                 default=None)
    newer = [f"{v.zpool}/{v.vol}@{s['name']}" for s in snaps[common + 1:]] \
        if common is not None else []
    if newer != list(v.extra.get(FOREIGN) or []):
        _set(job, rt, extra={FOREIGN: newer or None})
    if newer:
        theirs = [s for s in newer if not s.split("@", 1)[1].startswith("imgstor-")]
        raise Conflict(
            f"{v.nas}: {', '.join(newer)} made after the last common snapshot "
            f"@{snaps[common]['name']}" + (" (not imgstor's)" if theirs == newer else "")
            + f": the NAS cannot receive {v.vol}'s data back on top of "
            f"{'it' if len(newer) == 1 else 'them'}, and imgstor never destroys a snapshot "
            "it did not make; destroy or rename "
            f"{'it' if len(newer) == 1 else 'them'} on {v.nas} (and keep snapshot tools off "
            "imgstor's volumes), then the next try sends", snapshots=newer)


def _back_send(ctx: Ctx, job: Job, rt: Runtime) -> None:
    v = _vol(rt, job)
    n = _names(ctx, v)
    check_nas_snapshots(ctx, job, rt, v, n)
    _snapshot_copy(ctx, job, rt, _host(v), v.nas, n["local"], n["nas_ds"], "back", "NAS<-VM",
                   base="auto", rollback=True, bwlimit=_rate(ctx, rt, v, "down"))


def _back_cleanup(ctx: Ctx, job: Job, rt: Runtime) -> None:
    """Only now, with the NAS holding the last snapshot, does the local copy go."""
    v = _vol(rt, job)
    n = _names(ctx, v)
    ctx.cluster.step(_host(v), "nas.destroy_volume", pool=n["pool"], vol=v.vol,
                     kind=n["kind"], driver=None, role=LOCAL_COPY)   # releases its holds
    # no next incremental: the NAS's base hold goes too
    ctx.cluster.step(v.nas, "nas.release_base", pool=v.zpool, vol=v.vol)
    _clear_nas_props(ctx, v)
    _release(ctx, v, inbound=False)
    _set(job, rt, state="unmapped", host=None, target=None, mode=None, device=None,
         error=None, extra={"origin": None, "overlay": None, "local_pool": None})


# ------------------------------------------------------------------ cancel phases
def _cancel_stop(ctx: Ctx, job: Job, rt: Runtime) -> None:
    """The sync-in job this cancel replaced lets go first (its stop flag is set; its
    monitor sees it at its next wait), so it cannot start the copy again after this
    cancels it; then the copy is cancelled."""
    replaced = job.extra.get("replaces")
    if replaced:
        end = rt.clock() + REPLACED_WAIT
        while jobmod.running(ctx.store, replaced):
            if rt.clock() > end:
                raise BusyError(f"job {replaced} (replaced by this cancel) still runs "
                                f"{REPLACED_WAIT:g}s after its stop flag was set")
            rt.pause(job.id, 0.2)
    v = _vol(rt, job)
    n = _names(ctx, v)
    # the NAS asks the node's gate about the partial receive: the hop and an expectation
    # (state and abort only) must be there, whatever was revoked or expired meanwhile
    synctrust.ensure(ctx.cluster, v.nas, _host(v), pools=[n["pool"]])
    ctx.cluster.step(_host(v), "sync.expect", dataset=n["local"], sender=v.nas, kind="cancel")
    ctx.cluster.step(v.nas, "copy.cancel", to_alias=v.host, to_dataset=n["local"])


def _cancel_merge(ctx: Ctx, job: Job, rt: Runtime) -> None:
    v = _vol(rt, job)
    _merge(ctx, _names(ctx, v), v.vol, into="origin")


def _cancel_merged(ctx: Ctx, job: Job, rt: Runtime) -> None:
    _wait_merged(ctx, job, rt, _names(ctx, _vol(rt, job)), into="origin")


def _cancel_teardown(ctx: Ctx, job: Job, rt: Runtime) -> None:
    v = _vol(rt, job)
    n = _names(ctx, v)
    cl = ctx.cluster
    ovl = dict(driver=n["driver"], pool=n["pool"], vol=v.vol)
    st = cl.step(_host(v), "overlay.status", **ovl).facts
    if st.get("exists") and st.get("phase") in ("snapshot", "merging"):
        # restored after a reboot (refresh: over the origin, from its temp-write): merge
        # what is left into the origin again before the pivot
        _cancel_merge(ctx, job, rt)
        _cancel_merged(ctx, job, rt)
    if st.get("exists"):        # gone: the node rebooted after this cancel's pivot
        cl.step(_host(v), "overlay.linear", **ovl)
    cl.step(_host(v), "overlay.remove", **ovl)
    _untarget(ctx, v, n, force=bool(job.extra.get("force")))
    # a copy that finished before the cancel is stale now (the writes went to the NAS)
    st = cl.step(v.nas, "copy.status", to_alias=v.host, to_dataset=n["local"]).facts
    if st.get("state") == "done":
        cl.step(_host(v), "nas.set_props", pool=n["pool"], vol=v.vol, props={"role": LOCAL_COPY})
    cl.step(_host(v), "nas.destroy_volume", pool=n["pool"], vol=v.vol, kind=n["kind"],
            driver=None, role=LOCAL_COPY)
    cl.step(v.nas, "nas.release_base", pool=v.zpool, vol=v.vol)
    _clear_nas_props(ctx, v)
    _release(ctx, v, inbound=True)
    _release(ctx, v, inbound=False)
    _set(job, rt, state="unmapped", host=None, target=None, mode=None, device=None,
         error=None, extra={"origin": None, "overlay": None, "local_pool": None})


# The kinds' phases (the table that names them all: workflows/jobkinds.py).
SYNC_IN: list[tuple[str, Phase]] = [
    ("trust", _in_trust), ("copy", _in_copy), ("merge", _in_merge),
    ("merged", _in_merged), ("pivot", _in_pivot)]
SYNC_BACK: list[tuple[str, Phase]] = [
    ("quiesce", _back_quiesce), ("trust", _back_trust), ("send", _back_send),
    ("cleanup", _back_cleanup)]
CANCEL: list[tuple[str, Phase]] = [
    ("stop", _cancel_stop), ("merge", _cancel_merge), ("merged", _cancel_merged),
    ("teardown", _cancel_teardown)]


# ------------------------------------------------------------------ --wait
def wait_for_jobs(ctx: Ctx, key: str, *, timeout: float | None = None) -> None:
    """Block until volume ``key`` has no job left (``--wait``), showing progress on a
    terminal (and a try that failed, with its next); a job that failed for good or whose
    monitor died is an error naming it."""
    tty = sys.stderr.isatty()
    deadline = None if timeout is None else time.monotonic() + timeout
    last = ""
    while True:
        st = ctx.store.read()
        js = st.jobs_of(key)
        if not js:
            if tty and last:
                print(file=sys.stderr)
            v = st.volumes.get(key)
            if v is not None and v.state == "error":
                raise StepError(f"{key}: {v.error}")
            return
        j = js[0]
        if j.state == "failed":
            raise StepError(f"{key}: job {j.id} failed in phase {j.phase} after "
                            f"{j.attempts} tries: {j.last_error} (`imgstor monitor "
                            "--resume` or `imgstor repair` starts it again)")
        p = jobmod.read_progress(ctx.store, j.id)
        done, total = p.get("done"), p.get("total")
        pct = f" {100 * done / total:.0f}%" if done is not None and total else ""
        if j.owner is not None and not jobmod.running(ctx.store, j.id):
            raise StepError(f"{key}: the monitor of job {j.id} (pid {j.owner.pid}) ended in "
                            f"phase {j.phase}: `imgstor monitor --resume` (or cron's "
                            "refresh) continues it")
        line = f"{key}: {st.volumes[key].state if key in st.volumes else '?'} " \
               f"({j.kind} {j.phase}){pct}"
        if j.state == "retry" and j.next_try:
            at = time.strftime("%H:%M:%S", time.localtime(j.next_try))
            line += f", try {j.attempts + 1} at {at}: {j.last_error}"
        if tty and line != last:
            print("\r" + line.ljust(70), end="", file=sys.stderr, flush=True)
            last = line
        if deadline is not None and time.monotonic() > deadline:
            raise BusyError(f"{key}: still {j.kind} {j.phase} after {timeout:g}s")
        time.sleep(0.5)
