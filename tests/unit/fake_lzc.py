"""A stand-in for pyzfs's ``libzfs_core`` module (2.1.11) in unit tests.

Same function names, argument shapes (bytes names, dict props, lists of snapshots) and
exception class names as pyzfs (libzfs_core/exceptions.py), over a small in-memory pool:
``datasets`` (names), ``props`` {name: {prop: value}}, ``holds`` {snap: {tag}}.  Every
call is recorded in ``calls`` as (function name, first argument).  ``fail`` {function name:
exception} makes that function raise.  ``install(monkeypatch, fake)`` puts it in
sys.modules and makes /dev/zfs "exist" for the zfs driver.
"""
from __future__ import annotations

import errno
import types


class ZFSError(Exception):
    errno = None
    message = None
    name = None

    def __init__(self, name=None):
        self.name = name

    def __str__(self):
        return f"[Errno {self.errno}] {self.message}: '{self.name}'"


class ZFSGenericError(ZFSError):
    def __init__(self, errno_, name, message):
        self.errno, self.name, self.message = errno_, name, message


class ZFSInitializationFailed(ZFSError):
    message = "Failed to initialize libzfs_core"

    def __init__(self, errno_):
        self.errno = errno_


class MultipleOperationsFailure(ZFSError):
    def __init__(self, errors, suppressed_count=0):
        self.errno = errors[0].errno
        self.errors = errors
        self.suppressed_count = suppressed_count


def _exc(name, base, code, message):
    return type(name, (base,), {"errno": code, "message": message})


DatasetNotFound = _exc("DatasetNotFound", ZFSError, errno.ENOENT, "Dataset not found")
DatasetExists = _exc("DatasetExists", ZFSError, errno.EEXIST, "Dataset already exists")
FilesystemExists = _exc("FilesystemExists", DatasetExists, errno.EEXIST,
                        "Filesystem already exists")
FilesystemNotFound = _exc("FilesystemNotFound", DatasetNotFound, errno.ENOENT,
                          "Filesystem not found")
ParentNotFound = _exc("ParentNotFound", ZFSError, errno.ENOENT, "Parent not found")
SnapshotExists = _exc("SnapshotExists", DatasetExists, errno.EEXIST, "Snapshot already exists")
SnapshotNotFound = _exc("SnapshotNotFound", DatasetNotFound, errno.ENOENT, "Snapshot not found")
SnapshotIsCloned = _exc("SnapshotIsCloned", ZFSError, errno.EEXIST, "Snapshot is cloned")
SnapshotIsHeld = _exc("SnapshotIsHeld", ZFSError, errno.EBUSY, "Snapshot is held")
HoldExists = _exc("HoldExists", ZFSError, errno.EEXIST,
                  "Hold with a given tag already exists on snapshot")
PoolNotFound = _exc("PoolNotFound", ZFSError, errno.EXDEV, "No such pool")
PropertyInvalid = _exc("PropertyInvalid", ZFSError, errno.EINVAL, "Property is invalid")
SnapshotFailure = type("SnapshotFailure", (MultipleOperationsFailure,), {
    "message": "Creation of snapshot(s) failed for one or more reasons"})
SnapshotDestructionFailure = type("SnapshotDestructionFailure", (MultipleOperationsFailure,), {
    "message": "Destruction of snapshot(s) failed for one or more reasons"})
HoldFailure = type("HoldFailure", (MultipleOperationsFailure,), {
    "message": "Placement of hold(s) failed for one or more reasons"})

EXCEPTIONS = types.SimpleNamespace(**{k: v for k, v in dict(globals()).items()
                                      if isinstance(v, type) and issubclass(v, ZFSError)})


def _s(x) -> str:
    assert isinstance(x, bytes), f"pyzfs takes bytes, got {x!r}"
    return x.decode()


class FakeLzc(types.ModuleType):
    def __init__(self, datasets=(), props=None, holds=None, fail=None) -> None:
        super().__init__("libzfs_core")
        self.exceptions = EXCEPTIONS
        self.datasets = set(datasets)
        self.props = {k: dict(v) for k, v in (props or {}).items()}
        self.holds = {k: set(v) for k, v in (holds or {}).items()}
        self.fail = dict(fail or {})
        self.calls: list[tuple[str, object]] = []
        self.imported = False

    def _enter(self, fn: str, arg) -> None:
        self.calls.append((fn, arg))
        if fn in self.fail:
            raise self.fail[fn]

    def lzc_exists(self, name):
        self._enter("lzc_exists", _s(name))
        return _s(name) in self.datasets

    def lzc_create(self, name, ds_type="zfs", props=None, key=None):
        n = _s(name)
        self._enter("lzc_create", n)
        assert ds_type in ("zfs", "zvol")
        if n in self.datasets:
            raise FilesystemExists(n)
        if n.rsplit("/", 1)[0] not in self.datasets:
            raise ParentNotFound(n)
        self.datasets.add(n)
        self.props[n] = {_s(k): v for k, v in (props or {}).items()}

    def lzc_snapshot(self, snaps, props=None):
        names = [_s(s) for s in snaps]
        self._enter("lzc_snapshot", names)
        for n in names:
            if n in self.datasets:
                raise SnapshotFailure([SnapshotExists(n)])
            if n.split("@")[0] not in self.datasets:
                raise SnapshotFailure([FilesystemNotFound(n)])
        for n in names:
            self.datasets.add(n)
            self.props[n] = {_s(k): v for k, v in (props or {}).items()}

    def lzc_destroy_snaps(self, snaps, defer):
        names = [_s(s) for s in snaps]
        self._enter("lzc_destroy_snaps", names)
        for n in names:
            if self.holds.get(n):
                raise SnapshotDestructionFailure([SnapshotIsHeld(n)])
        for n in names:
            self.datasets.discard(n)

    def lzc_hold(self, holds, fd=None):
        self._enter("lzc_hold", {_s(k): _s(v) for k, v in holds.items()})
        missing = []
        for k, v in holds.items():
            n = _s(k)
            if n not in self.datasets:
                missing.append(k)
            elif _s(v) in self.holds.get(n, ()):
                raise HoldFailure([HoldExists(n)])
        for k, v in holds.items():
            if _s(k) in self.datasets:
                self.holds.setdefault(_s(k), set()).add(_s(v))
        return missing

    def lzc_release(self, holds):
        self._enter("lzc_release", {_s(k): [_s(t) for t in v] for k, v in holds.items()})
        missing = []
        for k, tags in holds.items():
            have = self.holds.get(_s(k))
            if _s(k) not in self.datasets:
                missing.append(k)
                continue
            for t in tags:
                if have and _s(t) in have:
                    have.discard(_s(t))
                else:
                    missing.append(k + b"#" + t)
        return missing

    def lzc_get_holds(self, snapname):
        n = _s(snapname)
        self._enter("lzc_get_holds", n)
        if n not in self.datasets:
            raise SnapshotNotFound(n)
        return {t.encode(): 1700000000 for t in sorted(self.holds.get(n, ()))}


def install(monkeypatch, fake: FakeLzc | None) -> None:
    """Make the zfs driver see ``fake`` as an importable pyzfs with /dev/zfs present or,
    with None, no pyzfs and no /dev/zfs (the CLI), whatever this machine has.  The fake is
    not loaded until the driver imports it (``_lzc._import``), as on a node, where a fresh
    step process has not imported pyzfs yet (``_lzc.loaded``); ``fake.imported`` says
    whether it was."""
    import sys

    from imgstor.remote.drivers import _lzc
    monkeypatch.setattr(_lzc, "DEV_ZFS", __file__ if fake is not None
                        else "/nonexistent-imgstor-test/dev/zfs")
    monkeypatch.delitem(sys.modules, _lzc.MODULE, raising=False)

    def _import():
        if fake is None:
            return None
        fake.imported = True
        monkeypatch.setitem(sys.modules, _lzc.MODULE, fake)
        return fake
    monkeypatch.setattr(_lzc, "_import", _import)
