"""What a host runs and keeps of imgstor's, in one read (``imgstor check``/``repair`` and
``refresh``'s restore compare it with the store: imgstor/reconcile.py's ``node_plan``).

``host.facts`` lists, on a compute node: its iSCSI sessions (iscsiadm; the userspace
initiator keeps none), the sync overlays that run (dm devices ``VOL-snap``; qcow2: live
qemu-storage-daemons found by their pid files), and on any host the datasets carrying
imgstor's mark (``imgstor:role`` = ``temp-write``, ``local-copy`` or ``volume``) in the
pools asked for.  A temp-write store says whether it holds writes (``writes``: True,
False, or None when it cannot be told -- a dm COW zvol without its device).
"""
from __future__ import annotations

import json

from imgstor.errors import ImgstorError, NotFound
from imgstor.remote import overlays
from imgstor.remote.drivers import dm, iscsiadm, zfs
from imgstor.remote.executor import Executor
from imgstor.remote.overlays.base import ROLE_PROP
from imgstor.remote.protocol import StepResult
from imgstor.remote.steps.registry import step

__all__ = ["facts", "ROLES", "qcow2_has_writes"]

ROLES = ("temp-write", "local-copy", "volume")


@step("host.facts", read_only=True)
def facts(ex: Executor, *, pools: list[str], initiator: str | None = None,
          overlay: str | None = None) -> StepResult:
    """Read-only: ``sessions`` [{iqn, address, port}] (``initiator`` = iscsiadm only),
    ``overlays`` [{vol, driver}] (``overlay`` = dm | qcow2), ``datasets`` [{name, pool, role,
    type, writes}] (``zfs list -H -o name,imgstor:role,type -r POOL`` per pool; a missing
    pool is skipped)."""
    sessions = []
    if initiator == "iscsiadm":
        sessions = [{"iqn": s.iqn, "address": s.address, "port": s.port}
                    for s in iscsiadm.sessions(ex)]
    ovls = []
    if overlay == "dm":
        for d in dm.table(ex):
            if d.name and d.name.endswith("-snap"):
                ovls.append({"vol": d.name[:-len("-snap")], "driver": "dm"})
    elif overlay == "qcow2":
        from imgstor.remote.drivers import qsd
        from imgstor.remote.overlays.qcow2 import Qcow2Overlay
        for vol in _qsd_volumes(ex, qsd.QSD_DIR):
            o = overlays.get("qcow2", ex, pool=pools[0] if pools else "tank", vol=vol)
            if isinstance(o, Qcow2Overlay) and o._pid() is not None:
                ovls.append({"vol": vol, "driver": "qcow2"})
    datasets = []
    for pool in pools:
        try:
            rows = zfs.list_columns(ex, pool, ("name", ROLE_PROP, "type"),
                                    types="filesystem,volume")
        except NotFound:
            continue
        for r in rows:
            role = r.get(ROLE_PROP)
            if role not in ROLES or r["name"] == pool:
                continue
            ds: dict = {"name": r["name"], "pool": pool, "role": role, "type": r.get("type"),
                        "writes": None}
            if role == "temp-write" and r.get("type") == "filesystem":
                ds["writes"] = qcow2_has_writes(ex, str(r["name"]))
            datasets.append(ds)
    return StepResult(False, {"sessions": sessions, "overlays": ovls, "datasets": datasets},
                      f"{len(sessions)} sessions, {len(ovls)} overlays, "
                      f"{len(datasets)} marked datasets")


def _qsd_volumes(ex: Executor, d: str) -> list[str]:
    return sorted(n[:-4] for n in ex.fs.listdir(d) if n.endswith(".pid"))


def qcow2_has_writes(ex: Executor, dataset: str) -> bool | None:
    """Whether the qcow2 temp-write store DATASET holds writes: its ``overlay.qcow2``
    has allocated clusters (``qemu-img check -U`` of the file alone, its backing -- the
    NAS's volume over iSCSI -- not opened).  No file: False; not readable: None."""
    from imgstor.remote.overlays.qcow2 import OVERLAY_FILE
    try:
        mp = zfs.mountpoint(ex, dataset)
    except ImgstorError:
        return None
    if not mp:
        return None
    path = f"{mp}/{OVERLAY_FILE}"
    if not ex.fs.exists(path):
        return False
    spec = "json:" + json.dumps({"driver": "qcow2", "backing": None,
                                 "file": {"driver": "file", "filename": path}},
                                separators=(",", ":"))
    r = ex.run(["qemu-img", "check", "--output=json", "-U", spec], check=False,
               read_only=True)
    try:
        return int(json.loads(r.stdout).get("allocated-clusters", 0)) > 0
    except (ValueError, AttributeError):
        return None


@step("host.destroy_marked")
def destroy_marked(ex: Executor, *, name: str, role: str, force: bool = False) -> StepResult:
    """Ensure imgstor's orphan dataset NAME (``imgstor:role`` = ROLE set on it:
    ``temp-write`` or ``local-copy``) is gone: ``zfs destroy NAME`` (never ``-r``).  A
    temp-write store that holds writes, and a local copy, only with ``force``
    (``repair --destroy-orphans``).  Never a NAS volume, never a dataset without the mark."""
    from imgstor.errors import Conflict, UsageError
    from imgstor.remote.util import run_mapped
    if role not in ("temp-write", "local-copy"):
        raise UsageError(f"host.destroy_marked destroys temp-write and local-copy datasets, "
                         f"not {role!r}", field="role")
    try:
        props = zfs.get_props(ex, name, [ROLE_PROP, "type"])
    except NotFound:
        return StepResult(False, {}, f"{name} is gone already")
    p = props.get(ROLE_PROP)
    if p is None or p.value != role or p.source != "local":
        raise Conflict(f"{ex.host}: {name} does not carry {ROLE_PROP}={role}: imgstor will "
                       "not destroy it", dataset=name)
    kind = props["type"].value if props.get("type") else None
    if not force:
        if role == "local-copy":
            raise Conflict(f"{ex.host}: {name} is a local copy (it may be newer than the "
                           "NAS): only with --destroy-orphans", dataset=name)
        if kind != "filesystem" or qcow2_has_writes(ex, name) is not False:
            raise Conflict(f"{ex.host}: {name} may hold writes: only with "
                           "--destroy-orphans", dataset=name)
    if role == "temp-write":
        from imgstor.remote.overlays.base import destroy_temp_write
        gone = destroy_temp_write(ex, name, kind or "filesystem")
    else:
        run_mapped(ex, zfs.destroy(name), zfs.classify)
        gone = True
    return StepResult(gone, {}, f"destroyed {name}" if gone else f"{name} is gone already")
