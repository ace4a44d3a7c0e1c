"""Direct-mode mappings: a NAS volume exported over iSCSI to one compute node.

    add host storagemap NAS ZPOOL VOL HOST SIZE [img_sync=false]
    remove host storagemap NAS VOL [--force]
    remove host storageimg NAS ZPOOL VOL
    list host storagemap [NAS] [--verify]
    list host storagedev HOST

Each workflow validates every name first, marks the volume busy in the store, releases the
store lock, runs idempotent node steps, and records the outcome.  A crash at any step
boundary leaves a state that re-running the same command completes: the busy marker of
the dead process is stale and taken over, and every step ensures rather than creates.
``IMGSTOR_FAULT=<point>`` kills this process right after that point (tests use it).

CHAP (the NAS's ``chap = true``): the map makes the volume's credentials once
(imgstor.chap: a 0600 file beside the state file, never in the state), and hands them to
``nas.ensure_target`` and ``compute.attach`` in the JSON on stdin; the unmap names the
CHAP user to ``nas.remove_target`` (tgt accounts are global); ``remove host storageimg``
removes the file.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from imgstor import chap as chapstore
from imgstor import validate
from imgstor.errors import Conflict, ImgstorError, NotFound, TransportError, UsageError
from imgstor.output import Output, format_duration
from imgstor.state.model import Volume, volume_key

__all__ = ["map_volume", "unmap_volume", "remove_image", "list_maps", "list_devs",
           "target_iqn", "MAP_POINTS", "UNMAP_POINTS", "fault"]

FAULT_ENV = "IMGSTOR_FAULT"
# Step boundaries, in order; IMGSTOR_FAULT=<name> dies right after that one.
MAP_POINTS = ("busy", "initiator", "volume", "props", "target", "attach")
UNMAP_POINTS = ("busy", "detach", "untarget", "props", "recorded")
TRANSITIONAL = ("NAS->VM", "merging", "NAS<-VM")


def fault(point: str) -> None:
    """Fault injection: SIGKILL ourselves (no cleanup runs) right after ``point``.
    ``IMGSTOR_PAUSE=<point>:<seconds>`` sleeps there instead (to make runs overlap)."""
    pause = os.environ.get("IMGSTOR_PAUSE", "")
    if pause.partition(":")[0] == point:
        time.sleep(float(pause.partition(":")[2] or 1))
    if os.environ.get(FAULT_ENV) == point:
        print(f"{FAULT_ENV}={point}: killing this process now", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def target_iqn(nas: str, vol: str) -> str:
    """``iqn.2001-04.com.<nas>-<vol>``, as the Rocks img-storage guide names targets."""
    try:
        return validate.iqn(f"iqn.2001-04.com.{nas}-{vol}".lower())
    except UsageError:
        raise UsageError(f"volume name {vol!r} cannot form an iSCSI target name "
                         "(use letters, digits, '.', '-')") from None


def _portal(nas_cfg) -> str:
    return f"{nas_cfg.data_address}:3260"


def _record(ctx, key: str, *, extra: dict | None = None, **changes: Any) -> None:
    """Write the outcome of a step into the store (a short transaction of its own).
    ``extra`` is merged into the volume's extra facts; a None value removes that key."""
    if ctx.dry_run:
        return
    with ctx.store.transaction() as st:
        v = st.volumes[key]
        if "state" in changes and changes["state"] != v.state:
            v.since = time.time()
        for k, val in changes.items():
            setattr(v, k, val)
        for k, val in (extra or {}).items():
            if val is None:
                v.extra.pop(k, None)
            else:
                v.extra[k] = val


def _fail(ctx, key: str, e: ImgstorError) -> None:
    """Record a step's error on the volume (shown by list host storagemap).  Not for an
    unreachable host or bad input: nothing happened, so nothing changes."""
    if ctx.dry_run or isinstance(e, (TransportError, UsageError)):
        return
    try:
        with ctx.store.transaction() as st:
            if key in st.volumes:
                st.volumes[key].error = str(e)
    except ImgstorError:
        pass


# ------------------------------------------------------------------ map
def map_volume(ctx, nas: str, zpool: str, vol: str, host: str, size: str,
               img_sync: bool | None = None, *, note_size: bool = True) -> str:
    """Map NAS:ZPOOL/VOL to HOST; SIZE is used only if the volume must be created."""
    nas, host = validate.host(nas, "NAS"), validate.host(host, "host")
    zpool, vol = validate.zpool(zpool), validate.volume(vol)
    nbytes = validate.parse_size(size)
    nas_cfg = ctx.config.host(nas, role="nas")
    host_cfg = ctx.config.host(host, role="compute")
    sync = host_cfg.img_sync if img_sync is None else img_sync
    if sync:
        raise UsageError(f"{host} uses img_sync (sync mode), which this version does not "
                         "provide yet; map with img_sync=false for direct mode")
    iqn = target_iqn(nas, vol)
    key = volume_key(nas, vol)
    _check_map(ctx.store.read().volumes.get(key), key, zpool, host)
    cl = ctx.cluster
    cl.warm([nas, host])          # connect while the store is being updated
    if ctx.dry_run:
        return _map_steps(ctx, cl, key, nas, nas_cfg, zpool, vol, host, host_cfg, nbytes,
                          iqn, note_size)
    created: list[bool] = []

    def new() -> Volume:
        created.append(True)
        return Volume(nas=nas, zpool=zpool, vol=vol, size=nbytes, since=time.time())

    with ctx.store.busy(key, "map", create=new) as v:
        _check_map(v, key, zpool, host)
        fault("busy")
        try:
            return _map_steps(ctx, cl, key, nas, nas_cfg, zpool, vol, host, host_cfg, nbytes,
                              iqn, note_size)
        except ImgstorError as e:
            if created and isinstance(e, TransportError) and e.details.get("stage") == "connect":
                # A host could not be reached, so nothing was made: leave no record.  (The
                # node is read with `cat` before the NAS is first contacted, and a
                # connection, once open, stays open for the whole command.)
                with ctx.store.transaction() as st:
                    rec = st.volumes.get(key)
                    if rec is not None and rec.state == "unmapped" and not rec.host:
                        del st.volumes[key]
            _fail(ctx, key, e)
            raise


def _check_map(v: Volume | None, key: str, zpool: str, host: str) -> None:
    if v is None:
        return
    if v.host and v.host != host and v.state != "unmapped":
        raise Conflict(f"{key} is mapped to {v.host} ({v.state}); unmap it first "
                       f"(imgstor remove host storagemap {v.nas} {v.vol})")
    if v.zpool != zpool:
        raise Conflict(f"{key} lives on zpool {v.zpool}, not {zpool}")


def _initiator(cl, host: str) -> str:
    """The compute node's initiator name, read with a plain `cat` (no node Python start)."""
    from imgstor.remote.drivers.iscsiadm import read_initiator_name
    from imgstor.remote.steps.probe import INITIATOR_NAME_FILE
    r = cl.run(host, ["cat", INITIATOR_NAME_FILE], read_only=True, check=False)
    try:
        name = read_initiator_name(r.stdout) if r.rc == 0 else None
    except NotFound:
        name = None
    if not name:
        raise NotFound(f"{host}: no initiator name in {INITIATOR_NAME_FILE} (install "
                       "open-iscsi or write InitiatorName=iqn.… there)")
    return validate.iqn(name, f"{host}'s initiator name")


def _nas_batch(cl, nas: str, steps: list[tuple[str, str, dict]]):
    """Run (point, step, args) on the NAS in one round trip; honour IMGSTOR_FAULT at each
    point by stopping the batch there, then dying."""
    at = os.environ.get(FAULT_ENV)
    idx = next((i for i, (p, _, _) in enumerate(steps) if p == at), None)
    res = cl.steps(nas, [(n, a) for _, n, a in steps], stop_after=idx)
    for (p, _, _), _r in zip(steps, res):
        fault(p)
    return res


def _state_path(ctx) -> str:
    return ctx.store.path


def _chap_args(ctx, nas: str, vol: str, nas_cfg) -> dict:
    """``{"chap": {...}}`` for the node steps when the NAS wants CHAP, else {}.  A dry run
    shows the plan with throw-away credentials and keeps nothing."""
    if not nas_cfg.chap:
        return {}
    creds = chapstore.ensure(_state_path(ctx), nas, vol, write=not ctx.dry_run)
    return {"chap": creds.wire()}


def _map_steps(ctx, cl, key, nas, nas_cfg, zpool, vol, host, host_cfg, nbytes, iqn,
               note_size: bool) -> str:
    portal = _portal(nas_cfg)
    vol_args = dict(pool=zpool, vol=vol, kind=nas_cfg.volume_kind)
    chap = _chap_args(ctx, nas, vol, nas_cfg)
    # Three exchanges: the node's initiator name (a plain `cat`), one NAS batch (volume,
    # its imgstor properties, the target), the attach on the node.
    initiator = _initiator(cl, host)
    fault("initiator")
    volf, _props, _target = _nas_batch(cl, nas, [
        ("volume", "nas.ensure_volume", dict(vol_args, size=nbytes)),
        ("props", "nas.set_props", dict(pool=zpool, vol=vol,
                                        props={"host": host, "target": iqn, "mode": "direct"})),
        ("target", "nas.ensure_target", dict(vol_args, driver=nas_cfg.target, iqn=iqn,
                                             initiator=initiator, portal=portal, **chap))])
    if volf.message and "kept as it is" in volf.message and note_size:
        print(f"note: {volf.message}", file=sys.stderr)
    lun = int(_target.facts.get("lun", 1))          # tgt: 1 (0 is the controller); LIO: 0
    att = cl.step(host, "compute.attach", kind=host_cfg.initiator, portal=portal, iqn=iqn,
                  lun=lun, **chap)
    device = att.facts.get("device")
    extra = {"initiator": initiator, "lun": lun,
             # the CHAP user only: the password stays in its 0600 file
             "chap_user": chap["chap"]["user"] if chap else None}
    if "qemu_json" in att.facts:
        extra["qemu_json"] = att.facts["qemu_json"]
    _record(ctx, key, host=host, target=iqn, state="mapped", mode="direct", device=device,
            size=volf.facts.get("size") or nbytes, error=None, busy=None, extra=extra)
    fault("attach")
    if ctx.dry_run:
        return f"dry run: {nas}:{vol} would be mapped to {host}"
    return f"{nas}:{vol} mapped to {host}:{device}"


# ------------------------------------------------------------------ unmap
def unmap_volume(ctx, nas: str, vol: str, force: bool = False) -> str:
    nas, vol = validate.host(nas, "NAS"), validate.volume(vol)
    nas_cfg = ctx.config.host(nas, role="nas")
    key = volume_key(nas, vol)
    v = ctx.store.read().volumes.get(key)
    if v is None:
        raise NotFound(f"no volume {vol} on {nas} in the state store")
    if v.state == "unmapped" and not v.host and not v.busy:
        return f"{nas}:{vol} is not mapped"
    ctx.cluster.warm([nas] + ([v.host] if v.host and _needs_detach(ctx, v.host) else []))
    if ctx.dry_run:
        return _unmap_steps(ctx, key, nas, nas_cfg, v, force)
    with ctx.store.busy(key, "unmap") as v:
        fault("busy")
        try:
            return _unmap_steps(ctx, key, nas, nas_cfg, v, force)
        except ImgstorError as e:
            _fail(ctx, key, e)
            raise


def _needs_detach(ctx, host: str) -> bool:
    """The userspace initiator keeps no session on the node (a VM's qemu logs in itself),
    so unmapping it needs only the NAS; the kernel initiator must log out."""
    try:
        return ctx.config.host(host).initiator != "userspace"
    except ImgstorError:
        return True


def _unmap_steps(ctx, key, nas, nas_cfg, v: Volume, force: bool) -> str:
    cl = ctx.cluster
    iqn = v.target or target_iqn(nas, v.vol)
    errors: list[ImgstorError] = []
    host = v.host
    if host and _needs_detach(ctx, host):
        try:
            cl.step(host, "compute.detach", kind=ctx.config.host(host).initiator,
                    portal=_portal(nas_cfg), iqn=iqn, force=force)
        except ImgstorError as e:
            if not force:
                raise
            errors.append(e)           # os-brick style: --force goes on, reports at the end
    fault("detach")
    creds = chapstore.load(_state_path(ctx), nas, v.vol)
    _nas_batch(cl, nas, [
        ("untarget", "nas.remove_target", dict(driver=nas_cfg.target, iqn=iqn, force=force,
                                               **({"chap_user": creds.user} if creds else {}))),
        ("props", "nas.set_props", dict(pool=v.zpool, vol=v.vol,
                                        props={"host": None, "target": None, "mode": None}))])
    _record(ctx, key, host=None, target=None, state="unmapped", mode=None, device=None,
            error=None, busy=None)
    fault("recorded")
    if ctx.dry_run:
        return f"dry run: {nas}:{v.vol} would be unmapped from {host}"
    msg = f"{nas}:{v.vol} unmapped from {host}"
    if errors:
        msg += "\nwarning: --force went past: " + "; ".join(str(e) for e in errors)
    return msg


# ------------------------------------------------------------------ remove image
def remove_image(ctx, nas: str, zpool: str, vol: str) -> str:
    nas, zpool, vol = validate.host(nas, "NAS"), validate.zpool(zpool), validate.volume(vol)
    nas_cfg = ctx.config.host(nas, role="nas")
    key = volume_key(nas, vol)
    v = ctx.store.read().volumes.get(key)
    if v is not None and (v.state != "unmapped" or v.host):
        raise Conflict(f"{nas}:{vol} is mapped to {v.host} ({v.state}); "
                       f"unmap it first (imgstor remove host storagemap {nas} {vol})")
    if v is not None and v.zpool != zpool:
        raise Conflict(f"{key} lives on zpool {v.zpool}, not {zpool}")
    args = dict(pool=zpool, vol=vol, kind=nas_cfg.volume_kind, driver=nas_cfg.target)
    if ctx.dry_run:
        ctx.cluster.step(nas, "nas.destroy_volume", **args)
        return f"dry run: {nas}:{zpool}/{vol} would be destroyed"
    new = lambda: Volume(nas=nas, zpool=zpool, vol=vol, since=time.time())
    with ctx.store.busy(key, "remove", create=new):
        ctx.cluster.step(nas, "nas.destroy_volume", **args)
        with ctx.store.transaction() as st:
            st.volumes.pop(key, None)
    chapstore.remove(_state_path(ctx), nas, vol)       # the image is gone: its CHAP too
    return "Success"


# ------------------------------------------------------------------ listings
_MAP_COLUMNS = [("zvol", "ZVOL"), ("host", "HOST"), ("zpool", "ZPOOL"), ("target", "TARGET"),
                ("state", "STATE"), ("time", "TIME")]


def list_maps(ctx, nas: str | None = None, verify: bool = False) -> Output:
    if nas is not None:
        nas = validate.host(nas, "NAS")
        ctx.config.host(nas, role="nas")
    st = ctx.store.read()
    vols = sorted((v for v in st.volumes.values() if nas is None or v.nas == nas),
                  key=lambda v: (v.nas, v.vol))
    now = time.time()
    rows = []
    for v in vols:
        state = v.state
        if v.busy:
            state += f" (busy: {v.busy.op})"
        rows.append({"nas": v.nas, "zvol": v.vol, "host": v.host, "zpool": v.zpool,
                     "target": v.target, "state": state, "raw_state": v.state,
                     "time": format_duration(now - v.since) if v.state in TRANSITIONAL else None,
                     "device": v.device, "error": v.error,
                     "initiator": v.extra.get("initiator")})
    columns = list(_MAP_COLUMNS)
    if nas is None:
        columns.insert(0, ("nas", "NAS"))
    footer = [f"{r['nas']}:{r['zvol']}: last error: {r['error']}" for r in rows if r["error"]]
    exit_code = 0
    if verify:
        columns.append(("live", "LIVE"))
        exit_code = _verify(ctx, rows)
    return Output(rows, columns, footer=footer, exit_code=exit_code)


def _verify(ctx, rows: list[dict]) -> int:
    """Compare each row with the NAS's live targets; mark rows that differ."""
    cl = ctx.cluster
    by_nas: dict[str, list[dict]] = {}
    for r in rows:
        by_nas.setdefault(r["nas"], []).append(r)

    def live(nas: str):
        return cl.step(nas, "nas.target_facts", driver=ctx.config.host(nas).target).facts["targets"]

    found = cl.parallel(list(by_nas), live)
    bad = 0
    for nas, rs in by_nas.items():
        res = found[nas]
        for r in rs:
            if isinstance(res, ImgstorError):
                r["live"] = f"unknown: {res}"
                bad += 1
                continue
            iqn = r["target"] or target_iqn(nas, r["zvol"])
            t = next((t for t in res if t["iqn"] == iqn), None)
            want_ini = r["initiator"]
            if r["raw_state"] == "unmapped":
                r["live"] = "ok" if t is None else f"DIFFERS: target {iqn} exists"
            elif t is None:
                r["live"] = "DIFFERS: no target on the NAS"
            elif want_ini and t["acls"] != [want_ini]:
                r["live"] = f"DIFFERS: ACL is {','.join(t['acls']) or 'empty'}"
            else:
                r["live"] = "ok"
            bad += r["live"] != "ok"
    return 9 if bad else 0


def list_devs(ctx, host: str) -> Output:
    host = validate.host(host, "host")
    host_cfg = ctx.config.host(host, role="compute")
    st = ctx.store.read()
    vols = sorted((v for v in st.volumes.values() if v.host == host), key=lambda v: v.vol)
    targets = []
    for v in vols:
        if not v.target:
            continue
        t = {"iqn": v.target, "portal": _portal(ctx.config.host(v.nas)),
             "lun": int(v.extra.get("lun", 1))}
        creds = chapstore.load(_state_path(ctx), v.nas, v.vol) if v.extra.get("chap_user") else None
        if creds:
            t["chap"] = creds.wire()
        targets.append(t)
    seen = {}
    if targets:
        facts = ctx.cluster.step(host, "compute.devices", kind=host_cfg.initiator,
                                 targets=targets).facts
        seen = {d["iqn"]: d for d in facts["devices"]}
    rows = []
    for v in vols:
        d = seen.get(v.target, {})
        size = d.get("size") or v.size
        rows.append({"zvol": v.vol, "device": d.get("device") or v.device,
                     "status": d.get("status", "absent") if v.target else v.state,
                     "size_gb": round(size / 2**30, 2) if size else None,
                     "block_dev": d.get("device") if host_cfg.initiator == "iscsiadm" else None,
                     "nas": v.nas, "target": v.target, "state": v.state})
    return Output(rows, [("zvol", "ZVOL"), ("device", "DEVICE/LVM"), ("status", "STATUS"),
                         ("size_gb", "SIZE(GB)"), ("block_dev", "BLOCK DEV"), ("nas", "NAS"),
                         ("state", "STATE")])
