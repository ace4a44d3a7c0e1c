"""Fault injection for the tests: a frontend process that kills itself at a named point.

``IMGSTOR_FAULT=<point>`` SIGKILLs this process (no cleanup, no ``finally``) right after
that point: the step boundaries of a map and an unmap (workflows/storagemap/common.py's
``MAP_POINTS``, ``UNMAP_POINTS``, and ``overlay``, ``recorded`` of a sync map), a
monitor's recorded phase (``job:<phase>``), ``refresh``.  ``IMGSTOR_PAUSE=<point>:<seconds>``
sleeps there instead (to make two runs overlap).  The node's own fault point is the
``stop_after`` of a step batch (imgstor.remote.node).
"""
from __future__ import annotations

import os
import signal
import sys
import time

__all__ = ["FAULT_ENV", "PAUSE_ENV", "fault"]

FAULT_ENV = "IMGSTOR_FAULT"
PAUSE_ENV = "IMGSTOR_PAUSE"


def fault(point: str) -> None:
    """SIGKILL ourselves right after ``point`` when ``IMGSTOR_FAULT`` names it; sleep
    when ``IMGSTOR_PAUSE`` names it."""
    pause = os.environ.get(PAUSE_ENV, "")
    where, _, secs = pause.rpartition(":")          # points may hold ':' (job:copy)
    if pause and (where or pause) == point:
        time.sleep(float(secs if where else 1))
    if os.environ.get(FAULT_ENV) == point:
        print(f"{FAULT_ENV}={point}: killing this process now", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
