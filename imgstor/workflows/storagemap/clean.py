"""``clean host storagemap NAS VOL [--yes] [--discard-node-data]``: the roll's reset of a
sync volume to the NAS's last copy, discarding the node's.

Applies to a sync volume held on a node and not being worked on:

- ``mapped`` (on its local copy, or still on its overlay) whose VM is stopped;
- ``error`` (set by hand or by a rebuild the facts contradicted);
- ``NAS<-VM`` whose sync back failed and has no live monitor (the roll's "failed
  download": the volume otherwise waits for `imgstor monitor --resume` forever).

Refused: direct volumes (``remove host storagemap`` is their reset), NAS->VM and merging
(unmap cancels or finishes them), a live busy marker or a live monitor, and a node whose
overlay device has a user (the one-writer check: dm holders/openers of ``VOL-snap``, as
the unmap's; qcow2: NBD clients on the export).  The NAS is never written: its volume
stays what it is, which is its last snapshot's data (only imgstor's receives change it
while a node holds the volume).

What is lost is said first: the node's snapshots the NAS does not have, the bytes written
on the local copy after the last common snapshot (``written@SNAP``; zfs-fuse cannot tell),
and the temp-write's used bytes (writes never merged).  If there is any -- or it cannot
be known -- the clean is refused (Conflict, exit 8) unless ``--discard-node-data``.  It
then asks on a terminal (``--yes`` for scripts; no terminal and no ``--yes``: exit 2).
Then: the overlay goes, the iSCSI session and target if there still is one, the
temp-write and the local copy are destroyed (imgstor's marked datasets only, by name),
the NAS's mapping properties are cleared and the record is unmapped, its jobs dropped.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from imgstor import jobs as jobmod
from imgstor import validate
from imgstor.errors import BusyError, Conflict, NotFound, UsageError
from imgstor.output import Message, Output
from imgstor.state import transitions
from imgstor.state.model import State, Volume, volume_key
from imgstor.state.store import Store, pid_alive, this_host
from imgstor.workflows.context import Ctx
from imgstor.workflows.storagemap.common import CLEAR_MAPPING, portal_of

__all__ = ["clean_map", "CLEANABLE", "loss"]

CLEANABLE = ("mapped", "error", "NAS<-VM")


def _gib(n: int | None) -> str:
    return "?" if n is None else (f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB")


def loss(nas_snaps: list[dict], node: Mapping[str, Any]) -> dict[str, Any]:
    """What the node holds beyond the NAS's last copy (pure).  ``nas_snaps``/``node
    ["snapshots"]``: [{"name", "guid"}] oldest first.  ``common``: the newest NAS
    snapshot the node has with the same guid; ``newer``: True when the node holds (or may
    hold: unknown counts) data the NAS does not."""
    have = {(s["name"], s["guid"]) for s in node.get("snapshots", ())}
    common = next((s["name"] for s in reversed(nas_snaps) if (s["name"], s["guid"]) in have),
                  None)
    names = [s["name"] for s in node.get("snapshots", ())]
    after = names[names.index(common) + 1:] if common in names else names
    tw = node.get("temp_write")
    tw_used = tw.get("used") if tw else None
    written = node.get("written") if common else None
    local = node.get("exists", False)
    lines = []
    if tw is not None:
        lines.append(f"the overlay's temp-write: {_gib(tw_used)} used (writes never merged)")
    if local:
        if common is None:
            lines.append(f"the local copy, {_gib(node.get('referenced'))}: it shares no "
                         "snapshot with the NAS")
        elif written is None:
            lines.append(f"what the local copy got after @{common}: this zfs cannot tell "
                         "how much (no written@ property)")
        elif written:
            lines.append(f"{_gib(written)} written on the local copy after @{common}")
        if after:
            lines.append("node snapshots the NAS does not have: " + ", ".join(after))
    newer = bool(tw is not None or after
                 or (local and (common is None or written is None or written > 0)))
    return {"common": common, "after": after, "written": written, "temp_write": tw_used,
            "newer": newer, "lines": lines}


def _check(store: Store, st: State, v: Volume | None, key: str) -> tuple[Volume, str]:
    """The volume, checked cleanable, and the node that holds it."""
    if v is None:
        raise NotFound(f"no volume {key} in the state store")
    if v.mode != "sync" or not v.host:
        raise Conflict(f"{key} is not a sync volume held on a node ({v.state}, mode "
                       f"{v.mode}): nothing to clean; a direct mapping is undone with "
                       f"`remove host storagemap {v.nas} {v.vol}`")
    if v.state not in CLEANABLE:
        raise Conflict(f"{key} is {v.state}: clean applies to {', '.join(CLEANABLE)}; "
                       f"`remove host storagemap {v.nas} {v.vol}` cancels a copy or lets a "
                       "merge finish and brings the VM's writes to the NAS")
    b = v.busy
    if b is not None and (b.host != this_host() or pid_alive(b.pid, b.starttime)):
        raise BusyError(Store.busy_message(key, b), key=key)
    live = [j for j in st.jobs_of(key) if jobmod.running(store, j.id)]
    if live:
        raise BusyError(f"{key}: job {live[0].id} ({live[0].kind} {live[0].phase}) has a "
                        "live monitor; wait for it or stop it first", key=key)
    if v.state == "NAS<-VM" and not any(j.state == "failed" for j in st.jobs_of(key)) \
            and st.jobs_of(key):
        raise Conflict(f"{key} is NAS<-VM and its job has not failed: `imgstor monitor "
                       "--resume` finishes it (the VM's writes reach the NAS)")
    return v, v.host


def _confirm(ctx: Ctx, text: str) -> None:
    if not sys.stdin.isatty():
        raise UsageError("clean host storagemap discards the node's copy: confirm on a "
                         "terminal, or pass --yes")
    print(text, file=sys.stderr)
    ans = input("Discard the node's copy and go back to the NAS's? [y/N] ").strip().lower()
    if ans not in ("y", "yes"):
        raise UsageError("not confirmed: nothing done")


def clean_map(ctx: Ctx, nas: str, vol: str, yes: bool = False,
              discard_node_data: bool = False) -> Message | Output | str:
    """Reset sync volume NAS:VOL to the NAS's last copy (see the module docstring)."""
    nas, vol = validate.host(nas, "NAS"), validate.volume(vol)
    nas_cfg = ctx.config.host(nas, role="nas")
    key = volume_key(nas, vol)
    st = ctx.store.read()
    v, host = _check(ctx.store, st, st.volumes.get(key), key)
    hc = ctx.config.host(host, role="compute")
    pool = v.extra.get("local_pool") or hc.vm_container_zpool
    driver = v.extra.get("overlay") or hc.overlay
    cl = ctx.cluster
    cl.warm([nas, host])
    nas_f = cl.step(nas, "node.sync_facts", pool=v.zpool, vol=vol).facts
    nas_snaps = nas_f.get("snapshots", [])
    first = cl.step(host, "node.sync_facts", pool=pool, vol=vol, overlay=driver).facts
    common = loss(nas_snaps, first)["common"]
    node = (cl.step(host, "node.sync_facts", pool=pool, vol=vol, since=common,
                    overlay=driver).facts if common else first)
    lost = loss(nas_snaps, node)
    if node.get("users"):
        raise Conflict(f"{key}: the overlay on {host} is in use: "
                       f"{'; '.join(node['users'])}; stop the VM first")
    last = nas_snaps[-1]["name"] if nas_snaps else None
    head = (f"{key}: discard {host}'s copy; the volume stays as the NAS has it"
            + (f" (its last snapshot @{last})" if last else " (it has no snapshot)"))
    what = [head] + [f"  lost: {ln}" for ln in lost["lines"]] + \
        ([] if lost["lines"] else ["  lost: nothing (the node holds no data the NAS lacks)"])
    text = "\n".join(what)
    if lost["newer"] and not discard_node_data:
        raise Conflict(text + f"\nrefused: {host} holds (or may hold) data newer than the "
                       "NAS's last snapshot; to bring it to the NAS instead, `remove host "
                       f"storagemap {nas} {vol}`; to throw it away, --discard-node-data",
                       key=key, lost=lost)
    if ctx.dry_run:
        return _result(ctx, text + "\ndry run: nothing done", key, host, lost,
                        "dry run: nothing done")
    if not yes:
        _confirm(ctx, text)
    with ctx.store.busy(key, "clean") as v:
        _teardown(ctx, v, host, hc, nas_cfg, pool, driver)
        with ctx.store.transaction() as st2:
            vv = st2.volumes[key]
            for j in st2.jobs_of(key):
                del st2.jobs[j.id]
                jobmod.forget(ctx.store, j.id)
            transitions.move(vv, "unmapped", now=time.time())   # from mapped, error, NAS<-VM
            vv.host = vv.target = vv.mode = vv.device = vv.error = None
            for k in ("origin", "overlay", "local_pool", "intent", "unmap"):
                vv.extra.pop(k, None)
    return _result(ctx, text + "\nSuccess", key, host, lost,
                   f"reset to the NAS's copy; {host}'s copy discarded")


def _result(ctx: Ctx, text: str, key: str, host: str, lost: dict, action: str) -> Message | Output:
    if not getattr(ctx, "json", False):
        return Message(text, f"{key}: {action}")
    row = {"volume": key, "host": host, "common": lost["common"], "lost": lost["lines"],
           "newer": lost["newer"], "action": action}
    return Output([row], [(k, k.upper()) for k in row])


def _teardown(ctx: Ctx, v, host: str, hc, nas_cfg, pool: str, driver: str) -> None:
    from imgstor import chap as chapstore
    from imgstor.workflows.storagemap.common import nas_batch, state_path
    cl = ctx.cluster
    kind_tw = "zvol" if driver == "dm" else "file"
    cl.step(host, "overlay.remove", driver=driver, pool=pool, vol=v.vol)
    if v.target:
        if hc.initiator != "userspace":
            cl.step(host, "compute.detach", kind=hc.initiator,
                    portal=v.extra.get("portal") or portal_of(nas_cfg), iqn=v.target)
        creds = chapstore.load(state_path(ctx), v.nas, v.vol)
        nas_batch(cl, v.nas, [("untarget", "nas.remove_target", dict(
            driver=nas_cfg.target_driver, iqn=v.target,
            **({"chap_user": creds.user} if creds else {})))])
    cl.step(host, "nas.destroy_volume", pool=pool, vol=f"{v.vol}-temp-write", kind=kind_tw,
            driver=None, role="temp-write")
    cl.step(host, "nas.destroy_volume", pool=pool, vol=v.vol, kind=nas_cfg.volume_kind,
            driver=None, role="local-copy")
    cl.step(v.nas, "nas.set_props", pool=v.zpool, vol=v.vol, props=CLEAR_MAPPING)
