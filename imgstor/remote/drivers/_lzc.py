"""libzfs_core (pyzfs) for the zfs driver: when to use it, how to call it, its errors.

The zfs driver calls libzfs_core in-process when ``module()`` returns it: pyzfs imports
**and** ``/dev/zfs`` exists.  The import alone proves nothing: pyzfs 2.1 loads
libzfs_core.so lazily and calls ``libzfs_core_init()`` (which opens /dev/zfs) on the first
call, so a node without kernel ZFS imports it fine and fails later with
``ZFSInitializationFailed``.  A userspace-lab node shares the host's root filesystem (and
so its pyzfs, if installed) but runs zfs-fuse, which has no /dev/zfs: it must use the CLI.

pyzfs (2.1.11, Debian's python3-pyzfs) takes names and property names as bytes; ints
become uint64 nvpairs.  Its exceptions (``libzfs_core.exceptions``) are matched here by
class name through the MRO, so tests can inject a fake module with the same names.

Standard library only: shipped to nodes in the zipapp.
"""
from __future__ import annotations

import errno as _errno
import os
import sys
from typing import Any, Mapping

from imgstor.errors import AlreadyExists, Conflict, ImgstorError, NotFound, RemoteCommandError

__all__ = ["DEV_ZFS", "module", "loaded", "status", "classify", "encode_props", "b"]

DEV_ZFS = "/dev/zfs"
MODULE = "libzfs_core"


def _import():
    try:
        return __import__(MODULE)
    except Exception:           # ImportError; cffi missing or broken: no pyzfs either way
        return None


def module():
    """The ``libzfs_core`` module when it is usable on this node, else None."""
    if not os.path.exists(DEV_ZFS):
        return None
    return _import()


def loaded():
    """The module if pyzfs is already imported in this process (and /dev/zfs exists), else
    None.  Reads use libzfs_core only then: its import costs more than a ``zfs`` command
    (cffi parses the C declarations: 0.13-0.28 s here against 0.02 s for ``python3 -c
    pass``, 5-7 s in a TCG guest), so a step that only reads -- a re-run that finds
    everything done, the map path's "volume exists" -- never pays it."""
    lib = sys.modules.get(MODULE)
    if lib is None or not os.path.exists(DEV_ZFS):
        return None
    return lib


def status() -> str:
    """For ``probe``/``imgstor ping``: pyzfs's version, ``"no"`` (not importable) or
    ``"no /dev/zfs"`` (importable, but no kernel ZFS: the CLI is used)."""
    lib = _import()
    if lib is None:
        return "no"
    if not os.path.exists(DEV_ZFS):
        return "no /dev/zfs"
    try:
        from importlib.metadata import version
        return version("pyzfs")
    except Exception:
        return str(getattr(lib, "__version__", "yes"))


def b(name: str) -> bytes:
    return name.encode()


def encode_props(props: Mapping[str, Any]) -> dict[bytes, Any]:
    """Property names and string values as bytes; ints stay ints (uint64)."""
    return {k.encode(): (v if isinstance(v, int) and not isinstance(v, bool)
                         else str(v).encode()) for k, v in props.items()}


# Class names from pyzfs's exceptions.py (2.1.11); the first name found in an error's MRO
# decides.  Note SnapshotIsCloned and SnapshotNotLatest carry errno EEXIST: by errno alone
# they would read as "exists".
_BY_NAME: dict[str, type[ImgstorError] | None] = {
    # errno ENOENT when /dev/zfs cannot be opened: not "not found", a broken node
    "ZFSInitializationFailed": None,
    "DatasetNotFound": NotFound,            # FilesystemNotFound, SnapshotNotFound
    "ParentNotFound": NotFound,
    "PoolNotFound": NotFound,
    "HoldNotFound": NotFound,
    "BookmarkNotFound": NotFound,
    "DatasetExists": AlreadyExists,         # FilesystemExists, SnapshotExists
    "HoldExists": AlreadyExists,
    "BookmarkExists": AlreadyExists,
    "SnapshotIsCloned": Conflict,
    "SnapshotIsHeld": Conflict,
    "SnapshotNotLatest": Conflict,
    "DatasetBusy": Conflict,
    "DestinationModified": Conflict,
}
_BY_ERRNO: dict[int, type[ImgstorError]] = {
    _errno.ENOENT: NotFound, _errno.EEXIST: AlreadyExists, _errno.EBUSY: Conflict,
}


def _text(e: BaseException) -> str:
    try:
        return str(e)
    except Exception:
        return repr(e)


def classify(host: str, fn: str, target: str, e: BaseException) -> ImgstorError:
    """A libzfs_core exception as imgstor's NotFound / AlreadyExists / Conflict, like
    ``zfs.classify`` does for the CLI's stderr; anything else is a ``RemoteCommandError``
    whose "command" is the call (``lzc_create tank/x``) and whose rc is the errno."""
    errors = getattr(e, "errors", None)           # MultipleOperationsFailure: the first
    first = errors[0] if errors else e
    code = getattr(first, "errno", None)
    known = next((c.__name__ for c in type(first).__mro__ if c.__name__ in _BY_NAME), None)
    cls = _BY_NAME[known] if known else None
    if known is None and isinstance(code, int):
        cls = _BY_ERRNO.get(code)
    text = f"{type(first).__name__}: {_text(first)}"
    if first is not e:
        text += f" ({type(e).__name__})"
    if cls is not None:
        return cls(f"{host}: {fn} {target}: {text}", host=host, call=fn, name=target,
                   errno=code, error=type(first).__name__)
    return RemoteCommandError(host, [fn, target], code if isinstance(code, int) else -1, text)
