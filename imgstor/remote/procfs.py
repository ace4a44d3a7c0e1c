"""The one reader of ``/proc/PID/stat`` (proc(5)), for the frontend (busy markers, the
bench) and the nodes (copy jobs, qemu-storage-daemon pids) alike.

Field 2 (``comm``) is the executable's name in parentheses and may itself hold spaces and
``)``: the fields are split after the *last* ``)``.  ``Stat.starttime`` (field 22, clock
ticks since boot) is what tells a recycled pid from the process that had it: a pid plus its
start time names one process for the machine's whole uptime.

Standard library only: shipped to nodes in the zipapp.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Stat", "parse_stat", "stat", "start_time", "alive", "DEAD_STATES"]

DEAD_STATES = ("Z", "X", "x")      # zombie, dead: will never release anything


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/PID/stat`` imgstor reads."""
    state: str              # field 3: R, S, D, Z, T …
    ppid: int               # field 4
    pgrp: int               # field 5
    utime: int              # field 14, clock ticks in user mode
    stime: int              # field 15, clock ticks in kernel mode
    starttime: int          # field 22, clock ticks after boot


def parse_stat(text: str | bytes | None) -> Stat | None:
    """``/proc/PID/stat``'s text as a ``Stat``; None for an empty or truncated one."""
    if not text:
        return None
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    rest = text[text.rfind(")") + 2:].split()
    if len(rest) < 20:
        return None
    try:
        return Stat(rest[0], int(rest[1]), int(rest[2]), int(rest[11]), int(rest[12]),
                    int(rest[19]))
    except ValueError:
        return None


def stat(pid: int) -> Stat | None:
    """This host's ``/proc/PID/stat``; None if there is no such process."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            return parse_stat(f.read())
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, None if it is gone."""
    st = stat(pid)
    return st.starttime if st else None


def alive(pid: int, starttime: int | None = None) -> bool:
    """True if ``pid`` runs here, is not a zombie and (if given) started at ``starttime``:
    a recycled pid is another process.  A zombie counts as dead (PID 1 in a container may
    take long to reap it)."""
    st = stat(pid)
    if st is None or st.state in DEAD_STATES:
        return False
    return starttime is None or st.starttime == starttime
