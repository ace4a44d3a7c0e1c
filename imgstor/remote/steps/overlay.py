"""The sync-mode building blocks on a compute node (dm) and the copy from the NAS.

The life of an overlay, as the kernel lab proves it (tests/lab_kernel/test_overlay.py):

1. ``compute.ensure_zvol``  a sparse local ``POOL/VOL-temp-write`` zvol;
2. ``overlay.create``       ``VOL-snap`` = dm ``snapshot`` of the iSCSI disk (origin, never
                            written again) with the temp-write zvol as COW: the VM runs on
                            /dev/mapper/VOL-snap at once;
3. ``nas.send_volume``      ``zfs send POOL/VOL@snap | ssh NODE zfs receive -F POOL/VOL``:
                            the local copy equals the origin (which nobody writes);
4. ``overlay.merge``        suspend, reload as ``snapshot-merge`` onto the local copy, resume;
5. ``overlay.status``       poll until merged (allocated == metadata sectors);
6. ``overlay.linear``       suspend, reload as ``linear`` on the local copy, resume: the iSCSI
                            disk and the temp-write volume are no longer used.
7. ``overlay.remove``       ``dmsetup remove`` when the VM is gone.
Each step reads ``dmsetup table`` first and does only what is missing.
"""
from __future__ import annotations

import shlex

from imgstor.errors import Conflict, NotFound, RemoteCommandError, UsageError
from imgstor.remote.drivers import dm, zfs
from imgstor.remote.executor import Executor
from imgstor.remote.steps import StepResult, step
from imgstor.remote.steps._util import run_mapped, wait_path
from imgstor.remote.steps.snapshot import ROLE_PROP, SNAP_ROLE

__all__ = ["ensure_zvol", "create", "merge", "status", "linear", "remove", "send_volume"]

SECTOR = 512


def _sectors(ex: Executor, dev: str) -> int:
    r = ex.run(["blockdev", "--getsz", dev], read_only=True)
    return int(r.stdout.strip())


def _table(ex: Executor, name: str) -> dm.Device | None:
    try:
        found = dm.table(ex, name)
    except (NotFound, RemoteCommandError) as e:
        if isinstance(e, NotFound) or "No such device" in str(e) or "not exist" in str(e):
            return None
        raise
    return found[0] if found else None


def _run_all(ex: Executor, argvs: list[list[str]]) -> None:
    for argv in argvs:
        run_mapped(ex, argv, dm.classify)


@step("compute.ensure_zvol")
def ensure_zvol(ex: Executor, *, pool: str, vol: str, size: int) -> StepResult:
    """Ensure a sparse zvol POOL/VOL of SIZE bytes (kept as it is if it exists)."""
    name = f"{pool}/{vol}"
    dev = zfs.zvol_device(pool, vol)
    if zfs.exists(ex, name):
        wait_path(ex, dev)
        return StepResult(False, {"device": dev}, f"zvol {name} exists")
    run_mapped(ex, zfs.create_zvol(pool, vol, size), zfs.classify)
    wait_path(ex, dev)
    return StepResult(True, {"device": dev}, f"created zvol {name}")


@step("overlay.create")
def create(ex: Executor, *, name: str, origin: str, cow: str) -> StepResult:
    """Ensure dm device NAME = snapshot of ORIGIN (the iSCSI disk) with COW as its store."""
    t = _table(ex, name)
    if t is not None:
        seg = t.segments[0] if t.segments else None
        if seg is None or seg.target not in ("snapshot", "snapshot-merge", "linear"):
            raise Conflict(f"{ex.host}: dm device {name} exists with table "
                           f"{seg.target if seg else 'empty'}; not an imgstor overlay")
        return StepResult(False, {"device": f"/dev/mapper/{name}", "target": seg.target},
                          f"{name} exists ({seg.target})")
    sectors = _sectors(ex, origin)
    _run_all(ex, [dm.create_snapshot(name, origin, cow, sectors)])
    wait_path(ex, f"/dev/mapper/{name}")
    return StepResult(True, {"device": f"/dev/mapper/{name}", "target": "snapshot",
                             "sectors": sectors}, f"created overlay {name} over {origin}")


@step("overlay.merge")
def merge(ex: Executor, *, name: str, local: str, cow: str) -> StepResult:
    """Ensure NAME merges its COW into LOCAL (the local copy of the origin)."""
    t = _table(ex, name)
    if t is None:
        raise NotFound(f"{ex.host}: no dm device {name}")
    target = t.segments[0].target
    if target in ("snapshot-merge", "linear"):
        return StepResult(False, {"target": target}, f"{name} is {target} already")
    if target != "snapshot":
        raise Conflict(f"{ex.host}: {name} is {target}, not a snapshot")
    _run_all(ex, dm.start_merge(name, local, cow, t.sectors))
    return StepResult(True, {"target": "snapshot-merge"}, f"{name} merging into {local}")


@step("overlay.status")
def status(ex: Executor, *, name: str) -> StepResult:
    """Read-only: the overlay's table type and, while merging, whether it is done."""
    t = _table(ex, name)
    if t is None:
        return StepResult(False, {"exists": False}, f"no dm device {name}")
    target = t.segments[0].target
    facts: dict = {"exists": True, "target": target, "sectors": t.sectors}
    if target in ("snapshot", "snapshot-merge"):
        st = dm.parse_snapshot_status(dm.status(ex, name)[0].segments[0])
        facts.update(allocated=st.allocated, total=st.total, metadata=st.metadata)
        facts["merged"] = target == "snapshot-merge" and dm.merge_done(st)
    else:
        facts["merged"] = target == "linear"
    return StepResult(False, facts, f"{name}: {target}")


@step("overlay.linear")
def linear(ex: Executor, *, name: str, local: str) -> StepResult:
    """Ensure NAME is a plain linear map of LOCAL (only once the merge is done)."""
    st = status(ex, name=name).facts
    if not st["exists"]:
        raise NotFound(f"{ex.host}: no dm device {name}")
    if st["target"] == "linear":
        return StepResult(False, {"target": "linear"}, f"{name} is linear already")
    if not st.get("merged"):
        raise Conflict(f"{ex.host}: {name} is {st['target']} and not merged yet; "
                       "wait for the merge (overlay.status) first")
    _run_all(ex, dm.switch_to_linear(name, local, st["sectors"]))
    return StepResult(True, {"target": "linear"}, f"{name} is linear on {local}")


@step("overlay.remove")
def remove(ex: Executor, *, name: str) -> StepResult:
    """Ensure dm device NAME is gone."""
    if _table(ex, name) is None:
        return StepResult(False, {}, f"no dm device {name}")
    _run_all(ex, [dm.remove(name, retry=True)])
    return StepResult(True, {}, f"removed {name}")


@step("nas.send_volume")
def send_volume(ex: Executor, *, pool: str, vol: str, snapshot: str, to_host: str,
                to_pool: str) -> StepResult:
    """Ensure snapshot POOL/VOL@SNAPSHOT exists and is on TO_HOST as TO_POOL/VOL:
    ``zfs send … | ssh TO_HOST zfs receive -F …`` with every stage's exit status kept."""
    if not snapshot.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"bad snapshot name {snapshot!r}")
    snap = f"{pool}/{vol}@{snapshot}"
    changed = False
    backend = None
    if not zfs.exists(ex, snap):
        backend = zfs.create_snapshot(ex, snap, props={ROLE_PROP: SNAP_ROLE})
        changed = True
    # copy progress: the stream's size as zfs estimates it (None where it cannot: zfs-fuse)
    estimate = None if ex.dry_run and changed else zfs.send_space(ex, snap)
    # the remote command becomes text exactly once, here (ssh would join it with spaces)
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "--", to_host,
           shlex.join(zfs.receive(f"{to_pool}/{vol}", force=True))]
    ex.pipe([zfs.send(snap), ssh])
    return StepResult(True, {"snapshot": snap, "to": f"{to_host}:{to_pool}/{vol}",
                             "snapshot_created": changed, "estimated_bytes": estimate,
                             "zfs_backend": backend}, f"sent {snap} to {to_host}")
