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
from imgstor import names, validate
from imgstor.errors import (AlreadyExists, Conflict, ImgstorError, NotFound, TransportError,
                            UsageError)
from imgstor.names import target_iqn
from imgstor.output import Output, format_duration
from imgstor.state.model import State, Volume, volume_key

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


def _connect_error(e: ImgstorError) -> bool:
    return isinstance(e, TransportError) and e.details.get("stage") == "connect"


def _fail(ctx, key: str, e: ImgstorError) -> None:
    """Record a step's error on the volume (shown by list host storagemap).  Not for a
    host that could not be reached or bad input: nothing happened, so nothing changes.  A
    command that timed out or lost its connection may have changed the host: recorded."""
    if ctx.dry_run or isinstance(e, UsageError) or _connect_error(e):
        return
    try:
        with ctx.store.transaction() as st:
            if key in st.volumes:
                st.volumes[key].error = str(e)
    except ImgstorError:
        pass


# ------------------------------------------------------------------ map
def _store_owns(v: Volume | None) -> bool:
    """A volume the store knew before this operation as mapped once by imgstor: made by a
    version before the ``imgstor:role`` mark, it gets the mark at its next operation.  A
    record a map created and nothing else (an interrupted first map) does not count: it
    proves nothing about a dataset of that name."""
    return v is not None and bool(v.extra.get("initiator") or v.extra.get("marked"))


def map_volume(ctx, nas: str, zpool: str, vol: str, host: str, size: str,
               img_sync: bool | None = None, adopt: bool = False, *,
               note_size: bool = True) -> str:
    """Map NAS:ZPOOL/VOL to HOST; SIZE is used only if the volume must be created.
    ``adopt``: export an existing dataset imgstor did not make (it gets imgstor's mark)."""
    nas, host = validate.host(nas, "NAS"), validate.host(host, "host")
    zpool, vol = validate.zpool(zpool), validate.volume(vol)
    names.check_name(vol)
    nbytes = validate.parse_size(size)
    nas_cfg = ctx.config.host(nas, role="nas")
    host_cfg = ctx.config.host(host, role="compute")
    sync = host_cfg.img_sync if img_sync is None else img_sync
    if sync:
        raise UsageError(f"{host} uses img_sync (sync mode), which this version does not "
                         "provide yet; map with img_sync=false for direct mode")
    iqn = target_iqn(nas, vol)
    key = volume_key(nas, vol)
    st = ctx.store.read()
    v0 = st.volumes.get(key)
    _check_pool(nas_cfg, zpool, v0)
    if v0 is None or v0.busy is None:      # a busy one: "busy" is the answer, below
        _check_map(v0, key, zpool, host)
    names.check_collisions(st.volumes.values(), nas, vol, host)
    owned = _store_owns(v0)
    cl = ctx.cluster
    cl.warm([nas, host])          # connect while the store is being updated
    chap = _chap_args(ctx, nas, vol, nas_cfg)
    chap_user = chap["chap"]["user"] if chap else None
    if ctx.dry_run:
        return _map_steps(ctx, cl, key, nas, nas_cfg, zpool, vol, host, host_cfg, nbytes,
                          iqn, note_size, chap, owned=owned, adopt=adopt, done={})
    created: list[bool] = []

    def new() -> Volume:
        created.append(True)
        return Volume(nas=nas, zpool=zpool, vol=vol, size=nbytes, since=time.time())

    def intent(st: State, v: Volume) -> None:
        # Checked again under the store's lock (a concurrent map of a colliding name or
        # to another host), and the intent recorded before any host is touched: a kill
        # from here on leaves a record that `remove host storagemap` undoes.
        _check_map(v, key, zpool, host)
        names.check_collisions(st.volumes.values(), nas, vol, host, chap_user)
        done["had_host"] = bool(v.host)
        v.host, v.target = host, iqn
        v.extra["intent"] = "map"

    done: dict[str, bool] = {}
    with ctx.store.busy(key, "map", create=new, update=intent) as v:
        fault("busy")
        try:
            return _map_steps(ctx, cl, key, nas, nas_cfg, zpool, vol, host, host_cfg, nbytes,
                              iqn, note_size, chap, owned=owned or _store_owns(v),
                              adopt=adopt, done=done)
        except ImgstorError as e:
            if not done.get("nas") and not done.get("had_host"):
                # Only the node's initiator name was read: nothing changed on any host, so
                # the store goes back to what it was (no record if this run made it).
                with ctx.store.transaction() as st2:
                    rec = st2.volumes.get(key)
                    if rec is not None and created and rec.state == "unmapped":
                        del st2.volumes[key]
                    elif rec is not None and rec.state == "unmapped":
                        rec.host = rec.target = None
                        rec.extra.pop("intent", None)
            _fail(ctx, key, e)
            raise


def _check_pool(nas_cfg, zpool: str, v: Volume | None) -> None:
    """Volumes live only on the NAS's img_zpools (a volume the store records elsewhere,
    from a changed config, is still reachable)."""
    if zpool not in nas_cfg.img_zpools and not (v is not None and v.zpool == zpool):
        raise UsageError(f"zpool {zpool!r} is not one of {nas_cfg.name}'s img_zpools "
                         f"({', '.join(nas_cfg.img_zpools)}): imgstor keeps volumes only "
                         "there", field="zpool")


def _check_map(v: Volume | None, key: str, zpool: str, host: str) -> None:
    if v is None:
        return
    if v.host and v.host != host:
        what = v.state if v.state != "unmapped" else "a map that did not finish"
        raise Conflict(f"{key} is mapped to {v.host} ({what}); unmap it first "
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
               note_size: bool, chap: dict, *, owned: bool, adopt: bool, done: dict) -> str:
    portal = _portal(nas_cfg)
    vol_args = dict(pool=zpool, vol=vol, kind=nas_cfg.volume_kind)
    # Three exchanges: the node's initiator name (a plain `cat`), one NAS batch (volume,
    # its imgstor properties, the target), the attach on the node.
    initiator = _initiator(cl, host)
    fault("initiator")
    cl.connection(nas)            # a NAS that cannot be reached: nothing asked of it yet
    done["nas"] = True
    try:
        volf, _props, _target = _nas_batch(cl, nas, _map_batch(
            nas_cfg, zpool, vol, host, nbytes, iqn, initiator, portal, chap, vol_args,
            owned=owned, adopt=adopt))
    except (Conflict, NotFound, AlreadyExists, UsageError) as e:
        if e.details.get("batch_index") == 0:
            # The volume step refused (not imgstor's, wrong type, no room, no pool)
            # before it made anything: the NAS is as it was.
            done["nas"] = False
        raise
    if volf.facts.get("size_differs") and note_size:
        print(f"note: {volf.message}", file=sys.stderr)
    lun = int(_target.facts.get("lun", 1))          # tgt: 1 (0 is the controller); LIO: 0
    att = cl.step(host, "compute.attach", kind=host_cfg.initiator, portal=portal, iqn=iqn,
                  lun=lun, **chap)
    return _mapped(ctx, key, nas, vol, host, iqn, initiator, lun, chap, volf, att, nbytes)


def _map_batch(nas_cfg, zpool, vol, host, nbytes, iqn, initiator, portal, chap, vol_args,
               *, owned: bool, adopt: bool) -> list[tuple[str, str, dict]]:
    """The map's NAS batch: the volume, its imgstor properties, the target."""
    return [
        ("volume", "nas.ensure_volume", dict(vol_args, size=nbytes, owned=owned,
                                             adopt=adopt, overcommit=nas_cfg.overcommit)),
        ("props", "nas.set_props", dict(pool=zpool, vol=vol,
                                        props={"host": host, "target": iqn, "mode": "direct"})),
        ("target", "nas.ensure_target", dict(vol_args, driver=nas_cfg.target, iqn=iqn,
                                             initiator=initiator, portal=portal, **chap))]


def _mapped(ctx, key, nas, vol, host, iqn, initiator, lun, chap, volf, att, nbytes) -> str:
    """Record a finished map (clears the intent and the busy marker)."""
    device = att.facts.get("device")
    extra = {"initiator": initiator, "lun": lun, "intent": None, "marked": True,
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
    # A record with a host but state unmapped is a map that did not finish (its intent):
    # undone like a mapping, since the node may hold a session and the NAS a target.
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
                    portal=_portal(nas_cfg), iqn=iqn)
        except ImgstorError as e:
            if not force:
                raise
            errors.append(e)           # os-brick style: --force goes on, reports at the end
    fault("detach")
    creds = chapstore.load(_state_path(ctx), nas, v.vol)
    _nas_batch(cl, nas, [
        ("untarget", "nas.remove_target", dict(driver=nas_cfg.target, iqn=iqn,
                                               **({"chap_user": creds.user} if creds else {}))),
        ("props", "nas.set_props", dict(pool=v.zpool, vol=v.vol,
                                        props={"host": None, "target": None, "mode": None}))])
    _record(ctx, key, host=None, target=None, state="unmapped", mode=None, device=None,
            error=None, busy=None, extra={"intent": None})
    fault("recorded")
    if ctx.dry_run:
        return f"dry run: {nas}:{v.vol} would be unmapped from {host}"
    msg = f"{nas}:{v.vol} unmapped from {host}"
    if errors:
        msg += "\nwarning: --force went past: " + "; ".join(str(e) for e in errors)
    return msg


# ------------------------------------------------------------------ remove image
def remove_image(ctx, nas: str, zpool: str, vol: str) -> str:
    """Destroy volume NAS:ZPOOL/VOL if it is imgstor's (its mark, or the store's record of
    a past map) and unmapped; anything else on the NAS is refused and left alone."""
    nas, zpool, vol = validate.host(nas, "NAS"), validate.zpool(zpool), validate.volume(vol)
    nas_cfg = ctx.config.host(nas, role="nas")
    key = volume_key(nas, vol)
    v = ctx.store.read().volumes.get(key)
    if v is not None and (v.state != "unmapped" or v.host):
        raise Conflict(f"{nas}:{vol} is mapped to {v.host} ({v.state}); "
                       f"unmap it first (imgstor remove host storagemap {nas} {vol})")
    if v is not None and v.zpool != zpool:
        raise Conflict(f"{key} lives on zpool {v.zpool}, not {zpool}")
    _check_pool(nas_cfg, zpool, v)
    args = dict(pool=zpool, vol=vol, kind=nas_cfg.volume_kind, driver=nas_cfg.target,
                owned=_store_owns(v))
    if ctx.dry_run:
        ctx.cluster.step(nas, "nas.destroy_volume", **args)
        return f"dry run: {nas}:{zpool}/{vol} would be destroyed"
    created: list[bool] = []

    def new() -> Volume:              # a record to hold the busy marker while it runs
        created.append(True)
        return Volume(nas=nas, zpool=zpool, vol=vol, since=time.time())

    with ctx.store.busy(key, "remove", create=new):
        try:
            ctx.cluster.step(nas, "nas.destroy_volume", **args)
        except ImgstorError:
            if created:               # refused or failed: leave no record behind
                with ctx.store.transaction() as st:
                    st.volumes.pop(key, None)
            raise
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
