"""The store's volumes by hand: the handlers of ``imgstorageadmin list|unbusy|set-state|fold``
and ``imgstor unbusy``.  They change only the store, never a host; the guide's dialogue
(imgstor.workflows.admin_dialogue) uses ``unbusy`` too."""
from __future__ import annotations

import time

from imgstor import validate
from imgstor.errors import NotFound, UsageError
from imgstor.output import Output, When, duration_cell, format_duration
from imgstor.state import transitions
from imgstor.state.model import VOLUME_STATES, volume_key
from imgstor.workflows.context import Ctx

__all__ = ["list_volumes", "unbusy", "set_state", "fold"]


def list_volumes(ctx: Ctx) -> Output:
    """Columns NAS ZPOOL VOLUME HOST STATE TIME BUSY."""
    st = ctx.store.read()
    now = time.time()
    rows = []
    for v in st.volumes.values():          # natural key order, as the store writes them
        busy = None
        if v.busy:
            busy = {"op": v.busy.op, "pid": v.busy.pid, "host": v.busy.host,
                    "since": When(v.busy.since), "seconds": round(now - v.busy.since)}
        rows.append({"nas": v.nas, "zpool": v.zpool, "vol": v.vol, "host": v.host,
                     "state": v.state, "time": round(now - v.since) if v.since else None,
                     "since": When(v.since) if v.since else None, "busy": busy,
                     "error": v.error})
    return Output(rows, [("nas", "NAS"), ("zpool", "ZPOOL"), ("vol", "VOLUME"),
                         ("host", "HOST"), ("state", "STATE"),
                         ("time", "TIME", duration_cell("time")),
                         ("busy", "BUSY", _busy_cell), ("error", "ERROR")])


def _busy_cell(row: dict) -> str | None:
    b = row["busy"]
    return b and f"{b['op']} pid {b['pid']}@{b['host']} {format_duration(b['seconds'])}"


def unbusy(ctx: Ctx, nas: str, vol: str) -> str:
    """Clear the busy marker of NAS/VOL, whoever set it."""
    key = volume_key(validate.host(nas, "nas"), validate.volume(vol))
    if ctx.dry_run:
        v = ctx.store.read().volumes.get(key)
        if v is None:
            raise NotFound(f"no volume {key} in the state store {ctx.store.path}")
        return f"dry run, nothing saved: would clear busy marker of {key}: {v.busy}"
    old = ctx.store.unbusy(key)
    if old is None:
        return f"{key} was not busy"
    return f"{key}: cleared busy marker ({old.op} by pid {old.pid} on {old.host})"


def set_state(ctx: Ctx, nas: str, vol: str, state: str) -> str:
    """Force the state of NAS/VOL (clears the error text unless the state is error)."""
    key = volume_key(validate.host(nas, "nas"), validate.volume(vol))
    if state not in VOLUME_STATES:
        raise UsageError(f"invalid state {state!r:.40}: must be one of "
                         f"{', '.join(VOLUME_STATES)}")
    with ctx.transaction() as st:
        v = st.volumes.get(key)
        if v is None:
            raise NotFound(f"no volume {key} in the state store {ctx.store.path}")
        old = v.state
        transitions.move(v, state, force=True)     # the admin's override of the table
        if state != "error":
            v.error = None
        if state == "unmapped":
            v.host = v.target = v.device = v.mode = None
    msg = f"{key}: state {old} -> {state}"
    return f"dry run, nothing saved: {msg}" if ctx.dry_run else msg


def fold(ctx: Ctx) -> str:
    """Fold the state file's journal into it: the file alone then holds everything (before
    a hand edit or a copy of the file alone; refresh does it every run)."""
    path = ctx.store.path
    if ctx.dry_run:
        return f"dry run, nothing saved: would fold {ctx.store.journal_path} into {path}"
    if ctx.store.fold():
        return f"{path}: journal folded in; the file holds every transaction"
    return f"{path}: no journal; the file holds every transaction"
