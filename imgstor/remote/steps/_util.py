"""Small helpers the node steps share."""
from __future__ import annotations

import os
import time
from typing import Callable

from imgstor.errors import ImgstorError, NotFound, RemoteCommandError
from imgstor.remote.executor import Executor

__all__ = ["run_mapped", "wait_path"]


def run_mapped(ex: Executor, argv: list[str],
               classify: Callable[[RemoteCommandError], ImgstorError], **kw):
    """``ex.run(argv)``; a failure is re-raised as the tool's classified error
    (NotFound / AlreadyExists / Conflict …) by that tool driver's ``classify``."""
    try:
        return ex.run(argv, **kw)
    except RemoteCommandError as e:
        raise classify(e) from e


def wait_path(ex: Executor, path: str, *, timeout: float = 30.0, why: str = "") -> None:
    """Wait (bounded) for a device node or link that udev makes asynchronously: zvols after
    `zfs create -V` / `zfs receive`, /dev/mapper after `dmsetup create`, iSCSI by-path
    links after a login.  `udevadm settle` first; nothing to wait for in a dry run."""
    if ex.dry_run:
        return
    ex.run(["udevadm", "settle", f"--timeout={int(timeout)}"], read_only=True, check=False)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise NotFound(f"{ex.host}: {why}{path} did not appear within {timeout:.0f}s")
        time.sleep(0.1)
