"""The job kinds, each an ordered list of phases: the table ``imgstor monitor`` runs from.

A job module defines its phases (``fn(ctx, job) -> None``, idempotent) and imports nothing
of the monitor; this table names them, and imgstor.workflows.monitor imports the table:
no import circle between the monitor and the jobs it runs.
"""
from __future__ import annotations

from typing import Callable

from imgstor.workflows.storagemap import pull, sync

__all__ = ["Phase", "PHASES"]

Phase = Callable[..., None]

PHASES: dict[str, list[tuple[str, Phase]]] = {
    **sync.PHASES,                 # sync-in, sync-back, cancel
    "pull": pull.PHASES,           # the periodic pull (refresh)
}
