"""One way to replace a file atomically, on the frontend (the store, job progress, metrics,
CHAP files, sync keys, the node app cache) and on the nodes (``Executor.write_file``, copy
job files, the iscsiadm node record).  Standard library only: shipped in the zipapp.

Write a temp file beside it (``O_EXCL|O_NOFOLLOW``: never through a planted link; its
mode set on the open descriptor, never by path: audit M2), then ``os.replace``; with
``durable`` the data and the directory entry are fsynced too.  A failure leaves the old
file as it was and no temp file behind.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

__all__ = ["replace"]


def replace(path: str, data: bytes, *, mode: int = 0o600, durable: bool = True,
            tmp: str | None = None,
            before_replace: Callable[[str], None] | None = None) -> None:
    """Make ``path`` hold ``data`` (mode ``mode``) in one step.  ``tmp``: the temp file's
    name (default ``PATH.tmp-PID``); ``before_replace(tmp)``: a test hook."""
    tmp = tmp or f"{path}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            # whatever the umask, on this file: a chmod by path after the write would follow
            # whatever another account put at that name meanwhile (a link to root's key)
            os.fchmod(f.fileno(), mode)
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
