"""``remove host storagemap NAS VOL [--force]``: undo a mapping (or an interrupted map):
log the node out, remove the target, clear the NAS's properties, record unmapped."""
from __future__ import annotations

from imgstor import chap as chapstore
from imgstor import validate
from imgstor.errors import ImgstorError
from imgstor.faults import fault
from imgstor.names import target_iqn
from imgstor.output import Message
from imgstor.state.model import Volume, volume_key
from imgstor.workflows.context import Ctx
from imgstor.workflows.storagemap.common import (
    CLEAR_MAPPING,
    nas_batch,
    portal_of,
    record,
    record_error,
    state_path,
)

__all__ = ["unmap_volume"]


def unmap_volume(ctx: Ctx, nas: str, vol: str, force: bool = False,
                 wait: bool = False) -> Message | str:
    """Unmap NAS:VOL.  Direct mode: at once.  Sync mode: returns at once, a job brings the
    VM's last writes to the NAS (NAS<-VM) and removes the volume from the node; ``wait``
    blocks until it is done."""
    nas, vol = validate.host(nas, "NAS"), validate.volume(vol)
    nas_cfg = ctx.config.host(nas, role="nas")
    key = volume_key(nas, vol)
    v = ctx.store.read().volumes.get(key)
    if v is None:
        # "already done" (a batch re-run after its remove host storageimg): success
        return f"{nas}:{vol} is not mapped (no record of it in the state store)"
    if v.state == "unmapped" and not v.host and not v.busy:
        return f"{nas}:{vol} is not mapped"
    if v.mode == "sync" and v.state != "unmapped":
        from imgstor.workflows.storagemap import sync
        if ctx.dry_run:
            return sync.unmap_sync(ctx, key, v, force)
        with ctx.store.busy(key, "unmap"):
            msg = sync.unmap_sync(ctx, key, v, force)
        if wait:
            sync.wait_for_jobs(ctx, key)
        return msg
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
            record_error(ctx, key, e)
            raise


def _needs_detach(ctx: Ctx, host: str) -> bool:
    """The userspace initiator keeps no session on the node (a VM's qemu logs in itself),
    so unmapping it needs only the NAS; the kernel initiator must log out."""
    try:
        return ctx.config.host(host).initiator != "userspace"
    except ImgstorError:
        return True


def _unmap_steps(ctx: Ctx, key, nas, nas_cfg, v: Volume, force: bool) -> Message | str:
    cl = ctx.cluster
    iqn = v.target or target_iqn(nas, v.vol)
    portal = v.extra.get("portal") or portal_of(nas_cfg)     # what the map used
    errors: list[ImgstorError] = []
    host = v.host
    if host and v.extra.get("intent") == "map-sync":
        # a sync map that did not finish may have made the overlay (the VM never got it)
        hc = ctx.config.host(host)
        cl.step(host, "overlay.remove", driver=hc.overlay, pool=hc.vm_container_zpool,
                vol=v.vol)
    if host and _needs_detach(ctx, host):
        try:
            cl.step(host, "compute.detach", kind=ctx.config.host(host).initiator,
                    portal=portal, iqn=iqn, force=force)
        except ImgstorError as e:
            if not force:
                raise
            errors.append(e)           # os-brick style: --force goes on, reports at the end
    fault("detach")
    creds = chapstore.load(state_path(ctx), nas, v.vol)
    nas_batch(cl, nas, [
        ("untarget", "nas.remove_target", dict(driver=nas_cfg.target_driver, iqn=iqn, force=force,
                                               **({"chap_user": creds.user} if creds else {}))),
        ("props", "nas.set_props", dict(pool=v.zpool, vol=v.vol,
                                        props=CLEAR_MAPPING))])
    record(ctx, key, host=None, target=None, state="unmapped", mode=None, device=None,
            error=None, busy=None, extra={"intent": None})
    fault("recorded")
    if ctx.dry_run:
        return f"dry run: {nas}:{v.vol} would be unmapped from {host}"
    msg = f"{nas}:{v.vol} unmapped from {host}"
    warn = ("\nwarning: --force went past: " + "; ".join(str(e) for e in errors)
            if errors else "")
    # The guide's `rocks remove host storagemap` output; --json keeps the one-line message.
    return Message(f"unmapping   {nas} : {v.vol}\nSuccess{warn}", msg + warn)


