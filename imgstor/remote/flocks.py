"""Whether a flock is held: the frontend's job locks (imgstor/jobs.py) and the nodes' copy
jobs (imgstor/remote/jobs.py) read it alike.

Standard library only: shipped to nodes in the zipapp.
"""
from __future__ import annotations

import fcntl
import os

__all__ = ["lock_held"]


def lock_held(path: str) -> bool:
    """True if some process holds the flock on ``path`` (we take it and let go at once)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)          # closing drops our lock, if we got it
    return False
