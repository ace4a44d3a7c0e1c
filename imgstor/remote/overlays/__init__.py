"""Overlay drivers of sync mode: ``dm`` (production: device-mapper snapshot, snapshot-merge,
linear) and ``qcow2`` (qemu-storage-daemon: a qcow2 overlay exported over NBD, merged by an
active block-commit).  ``get(driver, ex, pool=, vol=)`` picks one; see ``base.Overlay``."""
from __future__ import annotations

from imgstor.remote.overlays import dm as _dm  # noqa: F401  (register)
from imgstor.remote.overlays import qcow2 as _qcow2  # noqa: F401  (register)
from imgstor.remote.overlays.base import INTO, PHASES, Outcome, Overlay, Status, drivers, get

__all__ = ["get", "drivers", "Overlay", "Outcome", "Status", "PHASES", "INTO"]
