"""``remove host storageimg NAS ZPOOL VOL``: destroy an unmapped volume that is imgstor's."""
from __future__ import annotations

import time

from imgstor import chap as chapstore
from imgstor import validate
from imgstor.errors import Conflict, ImgstorError
from imgstor.output import Message
from imgstor.state.model import Volume, volume_key
from imgstor.workflows.context import Ctx
from imgstor.workflows.storagemap.common import check_pool, state_path, store_owns

__all__ = ["remove_image"]


def remove_image(ctx: Ctx, nas: str, zpool: str, vol: str) -> Message | str:
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
    check_pool(nas_cfg, zpool, v)
    args = dict(pool=zpool, vol=vol, kind=nas_cfg.volume_kind, driver=nas_cfg.target_driver,
                owned=store_owns(v))
    if ctx.dry_run:
        ctx.cluster.step(nas, "nas.destroy_volume", **args)
        return f"dry run: {nas}:{zpool}/{vol} would be destroyed"
    created: list[bool] = []

    def new() -> Volume:              # a record to hold the busy marker while it runs
        created.append(True)
        return Volume(nas=nas, zpool=zpool, vol=vol, since=time.time())

    with ctx.store.busy(key, "remove", create=new):
        try:
            out = ctx.cluster.step(nas, "nas.destroy_volume", **args)
        except ImgstorError:
            if created:               # refused or failed: leave no record behind
                with ctx.store.transaction() as st:
                    st.volumes.pop(key, None)
            raise
        with ctx.store.transaction() as st:
            st.volumes.pop(key, None)
    chapstore.remove(state_path(ctx), nas, vol)       # the image is gone: its CHAP too
    # The guide's `rocks remove host storageimg` output; --json keeps {"message": "Success"}.
    if not out.changed:               # "already done" (a batch re-run): success
        return Message(f"removing   {nas} : {zpool} / {vol}\nSuccess (gone already)",
                       f"Success: {nas}:{zpool}/{vol} was gone already")
    return Message(f"removing   {nas} : {zpool} / {vol}\nSuccess", "Success")


