"""The volume states and the one table of moves between them; every writer goes through
``move`` (the workflows' ``record``, monitors, ``imgstorageadmin set-state`` with force).

    unmapped --map (direct)--> mapped --unmap (direct)--> unmapped
    unmapped --map (sync)----> NAS->VM --copy done--> merging --merged, pivoted--> mapped
    mapped (sync) --unmap--> NAS<-VM --last snapshot on the NAS, local copy gone--> unmapped
    NAS->VM --unmap (cancel: the overlay merged into the origin)--> NAS<-VM
    any --a step failed--> error --repair / admin--> any

A move to the same state is no move (idempotent re-runs).  Pure: no I/O.
"""
from __future__ import annotations

import time

from imgstor.errors import StateError
from imgstor.state.model import VOLUME_STATES, Volume

__all__ = ["ALLOWED", "allowed", "move"]

ALLOWED: dict[str, frozenset[str]] = {
    "unmapped": frozenset({"mapped", "NAS->VM"}),
    "mapped": frozenset({"unmapped", "NAS<-VM"}),
    "NAS->VM": frozenset({"merging", "NAS<-VM"}),
    "merging": frozenset({"mapped"}),
    "NAS<-VM": frozenset({"unmapped"}),
    "error": frozenset(VOLUME_STATES),
}


def allowed(old: str, new: str) -> bool:
    return new == old or new == "error" or new in ALLOWED.get(old, frozenset())


def move(v: Volume, new: str, *, force: bool = False, now: float | None = None) -> bool:
    """Set ``v.state`` to ``new`` (and ``since`` when it changes); True if it changed.
    An illegal move is a StateError (exit 4) unless ``force`` (the admin's override)."""
    if new not in VOLUME_STATES:
        raise StateError(f"{v.key}: unknown state {new!r}")
    if new == v.state:
        return False
    if not force and not allowed(v.state, new):
        raise StateError(f"{v.key}: cannot go from {v.state} to {new} (allowed: "
                         f"{', '.join(sorted(ALLOWED[v.state])) or 'none'}, error)")
    v.state, v.since = new, time.time() if now is None else now
    return True
