"""``add host storagemap NAS ZPOOL VOL HOST SIZE [img_sync=…] [adopt=yes]``: create the
volume if needed and map it to HOST (direct mode: an iSCSI target for HOST's initiator)."""
from __future__ import annotations

import sys
import time

from imgstor import names, validate
from imgstor.errors import AlreadyExists, Conflict, ImgstorError, NotFound, UsageError
from imgstor.faults import fault
from imgstor.names import target_iqn
from imgstor.output import Message
from imgstor.remote.protocol import Portal
from imgstor.state.model import State, Volume, volume_key
from imgstor.workflows.context import Ctx
from imgstor.workflows.storagemap.common import (
    chap_args,
    check_map,
    check_pool,
    mapping_props,
    nas_batch,
    portal_of,
    read_initiator,
    record,
    record_error,
    store_owns,
    vm_of,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from imgstor.transport import Cluster

__all__ = ["map_volume"]


def map_volume(ctx: Ctx, nas: str, zpool: str, vol: str, host: str, size: str,
               img_sync: bool | None = None, adopt: bool = False, wait: bool = False, *,
               note_size: bool = True) -> Message | str:
    """Map NAS:ZPOOL/VOL to HOST; SIZE is used only if the volume must be created.
    ``img_sync`` overrides the host's: sync mode (workflows/storagemap/sync.py) returns as
    soon as the VM can boot on the overlay; ``wait``: until the copy and merge are done.
    ``adopt``: export an existing dataset imgstor did not make (it gets imgstor's mark)."""
    nas, host = validate.host(nas, "NAS"), validate.host(host, "host")
    zpool, vol = validate.zpool(zpool), validate.volume(vol)
    names.check_name(vol)
    nbytes = validate.parse_size(size)
    nas_cfg = ctx.config.host(nas, role="nas")
    host_cfg = ctx.config.host(host, role="compute")
    sync = host_cfg.img_sync if img_sync is None else img_sync
    iqn = target_iqn(nas, vol)
    key = volume_key(nas, vol)
    cl = ctx.cluster
    cl.warm([nas, host])          # connect while the store is read and updated
    st = ctx.store.read()
    v0 = st.volumes.get(key)
    if v0 is not None and v0.mode == "sync" and v0.state != "unmapped":
        return _sync_again(ctx, st, v0, host, wait=wait)
    check_pool(nas_cfg, zpool, v0)
    if v0 is None or v0.busy is None:      # a busy one: "busy" is the answer, below
        check_map(v0, key, zpool, host)
    names.check_collisions(st.volumes.values(), nas, vol, host)
    owned = store_owns(v0)
    vm = vm_of(st, nas, vol)
    # the node apps start now, while the store is updated and the initiator read: they
    # run nothing until their request comes (or are cancelled)
    pre = _Started(cl, nas, host, sync=sync)
    try:
        return _map_volume(ctx, cl, pre, key, nas, nas_cfg, zpool, vol, host, host_cfg,
                           nbytes, iqn, note_size, owned=owned, adopt=adopt, sync=sync,
                           vm=vm, wait=wait)
    finally:
        pre.cancel()


class _Started:
    """The map's node steps started ahead (``Cluster.prepare``): the NAS batch, the
    attach, in sync mode the overlay."""

    def __init__(self, cl: Cluster, nas: str, host: str, *, sync: bool) -> None:
        self.nas = cl.prepare_steps(nas)
        self.attach = cl.prepare(host, "compute.attach")
        self.overlay = cl.prepare(host, "overlay.create") if sync else None

    def cancel(self) -> None:
        for p in (self.nas, self.attach, self.overlay):
            if p is not None:
                p.cancel()


def _map_volume(ctx: Ctx, cl: Cluster, pre: _Started, key, nas, nas_cfg, zpool, vol, host, host_cfg,
                nbytes, iqn, note_size: bool, *, owned: bool, adopt: bool, sync: bool, vm,
                wait: bool) -> Message | str:
    chap = chap_args(ctx, nas, vol, nas_cfg)
    chap_user = chap["chap"]["user"] if chap else None
    if ctx.dry_run:
        return _map_steps(ctx, cl, key, nas, nas_cfg, zpool, vol, host, host_cfg, nbytes,
                          iqn, note_size, chap, owned=owned, adopt=adopt, done={}, sync=sync,
                          vm=vm, pre=pre)
    created: list[bool] = []

    def new() -> Volume:
        created.append(True)
        return Volume(nas=nas, zpool=zpool, vol=vol, size=nbytes, since=time.time())

    def intent(st: State, v: Volume) -> None:
        # Checked again under the store's lock (a concurrent map of a colliding name or
        # to another host), and the intent recorded before any host is touched: a kill
        # from here on leaves a record that `remove host storagemap` undoes.
        check_map(v, key, zpool, host)
        # the store as committed, read under the lock: every other volume, none of them
        # copied into this transaction (its own record is skipped)
        names.check_collisions(ctx.store.read().volumes.values(), nas, vol, host, chap_user)
        done["had_host"] = bool(v.host)
        v.host, v.target = host, iqn
        v.extra["intent"] = "map-sync" if sync else "map"

    done: dict[str, bool] = {}
    with ctx.store.busy(key, "map", create=new, update=intent) as v:
        fault("busy")
        try:
            out = _map_steps(ctx, cl, key, nas, nas_cfg, zpool, vol, host, host_cfg, nbytes,
                             iqn, note_size, chap, owned=owned or store_owns(v),
                             adopt=adopt, done=done, sync=sync, vm=vm, pre=pre)
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
            record_error(ctx, key, e)
            raise
    if sync and wait and not ctx.dry_run:
        from imgstor.workflows.storagemap.sync import wait_for_jobs
        wait_for_jobs(ctx, key)
    return out


def _sync_again(ctx: Ctx, st, v, host: str, *, wait: bool) -> str:
    """A map of a sync volume that is already mapped (or on its way): the same host gets
    the same answer (and its job a monitor again if its monitor is gone); the sync back
    running is "busy"; another host must wait for the unmap."""
    from imgstor import jobs as jobmod
    from imgstor.errors import BusyError
    if v.state == "NAS<-VM":
        js = st.jobs_of(v.key)
        raise BusyError(f"{v.key} is being synced back to {v.nas} (NAS<-VM"
                        + (f", job {js[0].id} {js[0].phase}" if js else "")
                        + "); map it again when that is done", key=v.key)
    check_map(v, v.key, v.zpool, host)
    idle = [j for j in st.jobs_of(v.key) if not jobmod.running(ctx.store, j.id)]
    if idle and not ctx.dry_run:
        from imgstor.workflows.storagemap.sync import start_jobs
        jobmod.restart(ctx.store, [j.id for j in idle])     # a failed one: from its phase
        start_jobs(ctx, idle)
    if wait and not ctx.dry_run:
        from imgstor.workflows.storagemap.sync import wait_for_jobs
        wait_for_jobs(ctx, v.key)
    return f"{v.nas}:{v.vol} mapped to {v.host}:{v.device} ({v.state})"


def _map_steps(ctx: Ctx, cl: Cluster, key, nas, nas_cfg, zpool, vol, host, host_cfg, nbytes, iqn,
               note_size: bool, chap: dict, *, owned: bool, adopt: bool, done: dict,
               sync: bool = False, vm=None, pre: _Started) -> Message | str:
    portal = portal_of(nas_cfg)
    vol_args = dict(pool=zpool, vol=vol, kind=nas_cfg.volume_kind)
    # Three exchanges: the node's initiator name (a plain `cat`), one NAS batch (volume,
    # its imgstor properties, the target), the attach on the node; the two node apps
    # were started ahead (``pre``) and wait for their requests.
    initiator = read_initiator(cl, host)
    fault("initiator")
    cl.connection(nas)            # a NAS that cannot be reached: nothing asked of it yet
    done["nas"] = True
    try:
        volf, _props, _target = nas_batch(cl, nas, _map_batch(
            nas_cfg, zpool, vol, host, nbytes, iqn, initiator, portal, chap, vol_args,
            owned=owned, adopt=adopt, mode="sync" if sync else "direct", vm=vm),
            prepared=pre.nas)
    except (Conflict, NotFound, AlreadyExists, UsageError) as e:
        if e.details.get("batch_index") == 0:
            # The volume step refused (not imgstor's, wrong type, no room, no pool)
            # before it made anything: the NAS is as it was.
            done["nas"] = False
        raise
    if volf.facts.get("size_differs") and note_size:
        print(f"note: {volf.message}", file=sys.stderr)
    lun = int(_target.facts.get("lun", 1))          # tgt: 1 (0 is the controller); LIO: 0
    att = pre.attach.run(kind=host_cfg.initiator, portal=portal, iqn=iqn, lun=lun, **chap)
    if sync:
        from imgstor.workflows.storagemap.sync import map_sync
        fault("attach")
        return map_sync(ctx, cl, key, nas, nas_cfg, zpool, vol, host, host_cfg, iqn,
                        (volf, att, initiator, lun, chap), portal=portal,
                        overlay=pre.overlay)
    return _mapped(ctx, key, nas, vol, host, iqn, initiator, lun, chap, volf, att, nbytes,
                   zpool=zpool, portal=portal)


def _map_batch(nas_cfg, zpool, vol, host, nbytes, iqn, initiator, portal, chap, vol_args,
               *, owned: bool, adopt: bool, mode: str, vm=None) -> list[tuple[str, str, dict]]:
    """The map's NAS batch: the volume, its imgstor properties (what rebuild reads back),
    the target."""
    return [
        ("volume", "nas.ensure_volume", dict(vol_args, size=nbytes, owned=owned,
                                             adopt=adopt, overcommit=nas_cfg.overcommit)),
        ("props", "nas.set_props", dict(pool=zpool, vol=vol,
                                        props=mapping_props(
                                            host=host, target=iqn, mode=mode,
                                            initiator=initiator, portal=portal, vm=vm))),
        ("target", "nas.ensure_target", dict(vol_args, driver=nas_cfg.target_driver, iqn=iqn,
                                             initiator=initiator, portal=portal, **chap))]


def _mapped(ctx: Ctx, key, nas, vol, host, iqn, initiator, lun, chap, volf, att, nbytes, *,
            zpool: str, portal: Portal) -> Message | str:
    """Record a finished map (clears the intent and the busy marker).  The portal is
    recorded: an ib_net changed later applies to the next map, not to this one's unmap."""
    device = att.facts.get("device")
    extra = {"initiator": initiator, "lun": lun, "intent": None, "marked": True,
             "portal": str(portal),
             # the CHAP user only: the password stays in its 0600 file
             "chap_user": chap["chap"]["user"] if chap else None}
    if "qemu_json" in att.facts:
        extra["qemu_json"] = att.facts["qemu_json"]
    record(ctx, key, host=host, target=iqn, state="mapped", mode="direct", device=device,
            size=volf.facts.get("size") or nbytes, error=None, busy=None, extra=extra)
    fault("attach")
    if ctx.dry_run:
        return f"dry run: {nas}:{vol} would be mapped to {host}"
    # The guide's `rocks add host storagemap` output (Python 2 `print a, b` spacing);
    # --json and `start host vm` keep the one-line message.
    return Message(f"mapping  {nas} : {zpool} / {vol}  on  {host}\n{device}",
                   f"{nas}:{vol} mapped to {host}:{device}")


