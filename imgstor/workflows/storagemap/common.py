"""What the storagemap workflows share: the fault points, recording outcomes and errors,
the NAS batch, CHAP arguments, and the checks every map makes.

The map records its intent before it touches a host; every writer of a volume's state
goes through ``record`` (or ``state.transitions``)."""
from __future__ import annotations

import os
from typing import Any

from imgstor import chap as chapstore
from imgstor import validate
from imgstor.errors import Conflict, ImgstorError, TransportError, UsageError
from imgstor.faults import FAULT_ENV, fault
from imgstor.remote import protocol
from imgstor.remote.protocol import Portal, StepResult
from imgstor.state import transitions
from imgstor.state.model import Volume
from imgstor.workflows.context import Ctx

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from imgstor.transport import Cluster, Prepared

__all__ = ["MAP_POINTS", "UNMAP_POINTS", "TRANSITIONAL", "portal_of",
           "record", "record_error", "connect_error", "store_owns", "check_pool",
           "check_map", "read_initiator", "nas_batch", "state_path", "chap_args",
           "mapping_props", "CLEAR_MAPPING", "vm_of"]

# Step boundaries, in order; IMGSTOR_FAULT=<name> dies right after that one (faults.py).
MAP_POINTS = ("busy", "initiator", "volume", "props", "target", "attach")
UNMAP_POINTS = ("busy", "detach", "untarget", "props", "recorded")
TRANSITIONAL = ("NAS->VM", "merging", "NAS<-VM")


def portal_of(nas_cfg) -> Portal:
    """The NAS's iSCSI portal: its storage-network address.  Sent to the node steps as
    [address, port]; a mapping records it as text (``str(portal)``)."""
    return Portal(nas_cfg.data_address, protocol.ISCSI_PORT)


def record(ctx: Ctx, key: str, *, extra: dict | None = None, **changes: Any) -> None:
    """Write the outcome of a step into the store (a short transaction of its own).
    ``extra`` is merged into the volume's extra facts; a None value removes that key."""
    if ctx.dry_run:
        return
    with ctx.store.transaction() as st:
        v = st.volumes[key]
        if "state" in changes:
            transitions.move(v, changes.pop("state"))
        for k, val in changes.items():
            setattr(v, k, val)
        for k, val in (extra or {}).items():
            if val is None:
                v.extra.pop(k, None)
            else:
                v.extra[k] = val


def connect_error(e: ImgstorError) -> bool:
    return isinstance(e, TransportError) and e.details.get("stage") == "connect"


def record_error(ctx: Ctx, key: str, e: ImgstorError) -> None:
    """Record a step's error on the volume (shown by list host storagemap).  Not for a
    host that could not be reached or bad input: nothing happened, so nothing changes.  A
    command that timed out or lost its connection may have changed the host: recorded."""
    if ctx.dry_run or isinstance(e, UsageError) or connect_error(e):
        return
    try:
        with ctx.store.transaction() as st:
            if key in st.volumes:
                st.volumes[key].error = str(e)
    except ImgstorError:
        pass


def store_owns(v: Volume | None) -> bool:
    """A volume the store knew before this operation as mapped once by imgstor: made by a
    version before the ``imgstor:role`` mark, it gets the mark at its next operation.  A
    record a map created and nothing else (an interrupted first map) does not count: it
    proves nothing about a dataset of that name."""
    return v is not None and bool(v.extra.get("initiator") or v.extra.get("marked"))


def check_pool(nas_cfg, zpool: str, v: Volume | None) -> None:
    """Volumes live only on the NAS's img_zpools (a volume the store records elsewhere,
    from a changed config, is still reachable)."""
    if zpool not in nas_cfg.img_zpools and not (v is not None and v.zpool == zpool):
        raise UsageError(f"zpool {zpool!r} is not one of {nas_cfg.name}'s img_zpools "
                         f"({', '.join(nas_cfg.img_zpools)}): imgstor keeps volumes only "
                         "there", field="zpool")


def check_map(v: Volume | None, key: str, zpool: str, host: str) -> None:
    if v is None:
        return
    if v.host and v.host != host:
        what = v.state if v.state != "unmapped" else "a map that did not finish"
        raise Conflict(f"{key} is mapped to {v.host} ({what}); unmap it first "
                       f"(imgstor remove host storagemap {v.nas} {v.vol})")
    if v.zpool != zpool:
        raise Conflict(f"{key} lives on zpool {v.zpool}, not {zpool}")


def read_initiator(cl: Cluster, host: str) -> str:
    """The compute node's initiator name, read with a plain `cat` (no node Python start)."""
    r = cl.run(host, ["cat", protocol.INITIATOR_NAME_FILE], read_only=True, check=False)
    name = protocol.parse_initiator_name(r.stdout) if r.rc == 0 else None
    if not name:
        raise protocol.no_initiator_name(host)
    return validate.iqn(name, f"{host}'s initiator name")


def nas_batch(cl: Cluster, nas: str, steps: list[tuple[str, str, dict]], *,
              prepared: Prepared | None = None) -> list[StepResult]:
    """Run (point, step, args) on the NAS in one round trip; honour IMGSTOR_FAULT at each
    point by stopping the batch there, then dying.  ``prepared``: a
    ``cl.prepare_steps(nas)`` started ahead, to run them."""
    at = os.environ.get(FAULT_ENV)
    idx = next((i for i, (p, _, _) in enumerate(steps) if p == at), None)
    if prepared is not None:
        res = prepared.run_steps([(n, a) for _, n, a in steps], stop_after=idx)
    else:
        res = cl.steps(nas, [(n, a) for _, n, a in steps], stop_after=idx)
    for (p, _, _), _r in zip(steps, res):
        fault(p)
    return res


# The ``imgstor:`` properties a map writes on the NAS volume (``nas.set_props``, one NAS
# batch with the target) so that ``imgstor rebuild`` can make the record again from the
# NAS alone; the unmap clears them all.  ``role`` and ``size`` (ownership) stay.
CLEAR_MAPPING: dict[str, None] = dict.fromkeys(
    ("host", "target", "mode", "initiator", "portal", "vm", "vm_container"))


def mapping_props(*, host: str, target: str | None, mode: str, initiator: str,
                  portal: Portal | str, vm: Any = None) -> dict[str, str | None]:
    """The NAS volume's mapping properties (None clears one: a sync volume's target after
    its pivot).  ``vm``: the store's VM whose disk this is, if any.  A property is text:
    the portal as the records keep it, ``ADDR:PORT``."""
    return {"host": host, "target": target, "mode": mode, "initiator": initiator,
            "portal": str(Portal.parse(portal)), "vm": vm.name if vm else None,
            "vm_container": vm.container if vm else None}


def vm_of(st, nas: str, vol: str):
    """The VM whose disk NAS:VOL is (``<vm>-vol`` assigned to that NAS), or None."""
    name = vol[:-len("-vol")] if vol.endswith("-vol") else None
    vm = st.vms.get(name) if name else None
    return vm if vm is not None and vm.nas == nas else None


def state_path(ctx: Ctx) -> str:
    return ctx.store.path


def chap_args(ctx: Ctx, nas: str, vol: str, nas_cfg) -> dict:
    """``{"chap": {...}}`` for the node steps when the NAS wants CHAP, else {}.  A dry run
    shows the plan with throw-away credentials and keeps nothing."""
    if not nas_cfg.chap:
        return {}
    creds = chapstore.ensure(state_path(ctx), nas, vol, write=not ctx.dry_run)
    return {"chap": creds.wire()}


