"""zfs driver backends: libzfs_core (a fake pyzfs module injected into sys.modules,
tests/unit/fake_lzc.py) or the zfs CLI; the choice, the calls, dry runs, error mapping."""
from __future__ import annotations

import errno
import json
import sys

import fake_lzc
import pytest
import samples
from fake_lzc import FakeLzc

from imgstor.errors import AlreadyExists, Conflict, NotFound, RemoteCommandError
from imgstor.remote.drivers import _lzc, zfs
from imgstor.remote.executor import DryRunExecutor
from tests.scripted import Expect, ScriptedExecutor

SNAP = "tank/v@imgstor-1"
REAL_IMPORT = _lzc._import          # before the autouse fixture replaces it


@pytest.fixture
def lzc(monkeypatch) -> FakeLzc:
    fake = FakeLzc(datasets=["tank", "tank/v", SNAP])
    fake_lzc.install(monkeypatch, fake)
    return fake


@pytest.fixture
def no_lzc(monkeypatch) -> None:
    fake_lzc.install(monkeypatch, None)


# ---------------------------------------------------------------- which backend
def test_backend_lzc_when_pyzfs_imports_and_dev_zfs_exists(lzc):
    assert zfs.backend() == "lzc"
    assert _lzc.module() is lzc


def test_real_import_path_finds_an_installed_module(monkeypatch):
    fake = FakeLzc()
    monkeypatch.setattr(_lzc, "_import", REAL_IMPORT)
    monkeypatch.setattr(_lzc, "DEV_ZFS", fake_lzc.__file__)
    monkeypatch.setitem(sys.modules, "libzfs_core", fake)
    assert _lzc.module() is fake and _lzc.loaded() is fake and zfs.backend() == "lzc"


def test_backend_cli_without_dev_zfs_even_if_pyzfs_imports(monkeypatch, tmp_path):
    # a userspace-lab node: the host's pyzfs is importable, zfs-fuse has no /dev/zfs
    monkeypatch.setattr(_lzc, "_import", REAL_IMPORT)
    monkeypatch.setitem(sys.modules, "libzfs_core", FakeLzc())
    monkeypatch.setattr(_lzc, "DEV_ZFS", str(tmp_path / "zfs"))
    assert zfs.backend() == "cli" and _lzc.loaded() is None
    assert _lzc.status() == "no /dev/zfs"


def test_backend_cli_when_pyzfs_does_not_import(monkeypatch, tmp_path):
    (tmp_path / "zfs").touch()
    monkeypatch.setattr(_lzc, "_import", REAL_IMPORT)
    monkeypatch.setattr(_lzc, "DEV_ZFS", str(tmp_path / "zfs"))
    monkeypatch.setitem(sys.modules, "libzfs_core", None)
    assert zfs.backend() == "cli"
    assert _lzc.status() == "no"


def test_backend_cli_when_pyzfs_import_breaks(monkeypatch, tmp_path):
    """cffi missing or libzfs_core.so unloadable raise other errors than ImportError."""
    (tmp_path / "zfs").touch()
    (tmp_path / "libzfs_core.py").write_text("raise OSError('libzfs_core.so.2: cannot open')\n")
    monkeypatch.setattr(_lzc, "DEV_ZFS", str(tmp_path / "zfs"))
    monkeypatch.setattr(_lzc, "_import", REAL_IMPORT)
    monkeypatch.delitem(sys.modules, "libzfs_core", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert zfs.backend() == "cli"
    assert _lzc.status() == "no"


def test_status_reports_the_version(lzc, monkeypatch):
    import importlib.metadata as md
    monkeypatch.setattr(md, "version", lambda dist: {"pyzfs": "2.1.11"}[dist])
    assert _lzc.status() == "2.1.11"


# ---------------------------------------------------------------- create
def test_create_zvol_lzc_sparse_128k_with_user_props(lzc):
    ex = ScriptedExecutor()
    assert zfs.create(ex, "tank/vm1-vol", kind="volume", size=1000000,
                      props={"imgstor:role": "volume"}) == "lzc"
    assert lzc.calls == [("lzc_create", "tank/vm1-vol")]
    # no refreservation: sparse, as `zfs create -s`; volsize rounded up to 128K
    assert lzc.props["tank/vm1-vol"] == {"volsize": 1048576, "volblocksize": 131072,
                                         "imgstor:role": b"volume"}
    assert ex.log == ['lzc_create tank/vm1-vol zvol '
                      '{"volsize": 1048576, "volblocksize": 131072, "imgstor:role": "volume"}']


def test_create_zvol_string_size(lzc):
    zfs.create(ScriptedExecutor(), "tank/x", kind="volume", size="10G")
    assert lzc.props["tank/x"]["volsize"] == 10 << 30


def test_create_filesystem_lzc_is_mounted_like_zfs_create(lzc):
    ex = ScriptedExecutor([
        Expect(["zfs", "get", "-H", "-p", "-o", "name,property,value,source",
                "canmount,mountpoint", "tank/fs"],
               stdout="tank/fs\tcanmount\ton\tdefault\ntank/fs\tmountpoint\t/tank/fs\tdefault\n"),
        Expect(["zfs", "mount", "tank/fs"])])
    assert zfs.create(ex, "tank/fs", kind="filesystem", props={"imgstor:role": "x"}) == "lzc"
    ex.assert_done()


def test_create_filesystem_lzc_not_mounted_when_canmount_off(lzc):
    ex = ScriptedExecutor([
        Expect(["zfs", "get", "-H", "-p", "-o", "name,property,value,source",
                "canmount,mountpoint", "tank/fs"],
               stdout="tank/fs\tcanmount\toff\tlocal\ntank/fs\tmountpoint\t/tank/fs\tdefault\n")])
    zfs.create(ex, "tank/fs", kind="filesystem")
    ex.assert_done()


def test_create_cli_argv(no_lzc):
    ex = ScriptedExecutor([
        Expect(["zfs", "create", "-s", "-o", "volblocksize=128K", "-o", "imgstor:role=volume",
                "-V", "1048576", "tank/v2"]),
        Expect(["zfs", "create", "-o", "imgstor:role=local-copy", "tank/fs"])])
    assert zfs.create(ex, "tank/v2", kind="volume", size=1000000,
                      props={"imgstor:role": "volume"}) == "cli"
    assert zfs.create(ex, "tank/fs", kind="filesystem",
                      props={"imgstor:role": "local-copy"}) == "cli"
    ex.assert_done()


def test_create_cli_exists_is_already_exists(no_lzc):
    ex = ScriptedExecutor([Expect(["zfs", "create", "tank/fs"], rc=1,
                                  stderr=samples.userspace("zfs_create_exists", "err"))])
    with pytest.raises(AlreadyExists):
        zfs.create(ex, "tank/fs", kind="filesystem")


@pytest.mark.parametrize("kw", [dict(kind="zvol", size=1), dict(kind="volume"),
                                dict(kind="volume", size=1, props={"Bad Prop": "x"}),
                                dict(kind="volume", size=1, props={"refreservation": "1G"}),
                                dict(kind="filesystem", props={"imgstor:role": "a\nb"})])
def test_create_refuses_bad_arguments(lzc, kw):
    with pytest.raises(ValueError):
        zfs.create(ScriptedExecutor(), "tank/x", **kw)
    assert lzc.calls == []


# ---------------------------------------------------------------- dry run
def test_dry_run_makes_no_lzc_change_and_logs_skip(lzc):
    ex = DryRunExecutor()
    zfs.create(ex, "tank/new", kind="volume", size=1 << 20)
    zfs.create_snapshot(ex, "tank/v@imgstor-2", props={"imgstor:role": "snapshot"})
    zfs.hold(ex, SNAP, "imgstor")
    zfs.release(ex, SNAP, "imgstor")
    zfs.destroy_snapshots(ex, [SNAP])
    assert lzc.calls == []                      # nothing called, nothing changed
    assert lzc.datasets == {"tank", "tank/v", SNAP} and lzc.holds == {}
    assert ex.log == [
        'SKIP> lzc_create tank/new zvol {"volsize": 1048576, "volblocksize": 131072}',
        'SKIP> lzc_snapshot tank/v@imgstor-2 {"imgstor:role": "snapshot"}',
        f"SKIP> lzc_hold {SNAP} imgstor", f"SKIP> lzc_release {SNAP} imgstor",
        f"SKIP> lzc_destroy_snaps {SNAP}"]
    assert ex.skipped == [line[6:] for line in ex.log]


def test_dry_run_still_reads_through_lzc(lzc):
    _lzc.module()                               # loaded (by a change, the probe…)
    ex = DryRunExecutor()
    assert zfs.exists(ex, SNAP) and not zfs.exists(ex, "tank/nope")
    assert zfs.holds(ex, SNAP) == []
    assert [c[0] for c in lzc.calls] == ["lzc_exists", "lzc_exists", "lzc_get_holds"]
    assert not ex.skipped


def test_dry_run_filesystem_mount_is_skipped_too(lzc):
    ex = DryRunExecutor()
    zfs.create(ex, "tank/fs", kind="filesystem")
    assert ex.log[-1] == "SKIP> zfs mount tank/fs" and lzc.calls == []


# ---------------------------------------------------------------- snapshots, holds
def test_snapshot_hold_release_destroy_lzc(lzc):
    _lzc.module()
    ex = ScriptedExecutor()
    zfs.create_snapshot(ex, "tank/v@imgstor-2", props={"imgstor:role": "snapshot"})
    assert lzc.props["tank/v@imgstor-2"] == {"imgstor:role": b"snapshot"}
    zfs.hold(ex, "tank/v@imgstor-2", "imgstor")
    assert zfs.holds(ex, "tank/v@imgstor-2") == ["imgstor"]
    with pytest.raises(AlreadyExists):
        zfs.hold(ex, "tank/v@imgstor-2", "imgstor")
    with pytest.raises(Conflict, match="SnapshotIsHeld"):
        zfs.destroy_snapshots(ex, ["tank/v@imgstor-2"])
    zfs.release(ex, "tank/v@imgstor-2", "imgstor")
    with pytest.raises(NotFound, match="no hold imgstor"):
        zfs.release(ex, "tank/v@imgstor-2", "imgstor")
    zfs.destroy_snapshots(ex, ["tank/v@imgstor-2", "tank/v@imgstor-gone"])
    assert "tank/v@imgstor-2" not in lzc.datasets
    with pytest.raises(NotFound):
        zfs.hold(ex, "tank/v@imgstor-nope", "imgstor")
    with pytest.raises(AlreadyExists):
        zfs.create_snapshot(ex, SNAP)


def test_snapshot_functions_refuse_dataset_names(lzc):
    for fn in (lambda: zfs.destroy_snapshots(ScriptedExecutor(), ["tank/v"]),
               lambda: zfs.create_snapshot(ScriptedExecutor(), "tank/v"),
               lambda: zfs.hold(ScriptedExecutor(), "tank/v", "imgstor"),
               lambda: zfs.hold(ScriptedExecutor(), SNAP, "-r")):
        with pytest.raises(ValueError):
            fn()
    assert lzc.calls == []


def test_snapshot_destroy_hold_cli(no_lzc):
    ex = ScriptedExecutor([
        Expect(["zfs", "snapshot", "-o", "imgstor:role=snapshot", SNAP]),
        Expect(["zfs", "hold", "imgstor", SNAP]),
        Expect(["zfs", "holds", "-H", SNAP], stdout=f"{SNAP}\timgstor\tTue Dec  1 2026\n"),
        Expect(["zfs", "release", "imgstor", SNAP]),
        Expect(["zfs", "destroy", SNAP]),
        Expect(["zfs", "destroy", "tank/v@imgstor-gone"], rc=1,
               stderr="could not find any snapshots to destroy; check snapshot names.\n"),
    ])
    assert zfs.create_snapshot(ex, SNAP, props={"imgstor:role": "snapshot"}) == "cli"
    zfs.hold(ex, SNAP, "imgstor")
    assert zfs.holds(ex, SNAP) == ["imgstor"]
    zfs.release(ex, SNAP, "imgstor")
    zfs.destroy_snapshots(ex, [SNAP, "tank/v@imgstor-gone"])
    ex.assert_done()


def test_holds_cli_zfs_fuse_cannot_list(no_lzc):
    # seen in the userspace lab: zfs-fuse's `zfs holds` needs a helper it does not ship
    ex = ScriptedExecutor([Expect(["zfs", "holds", "-H", SNAP], rc=255,
                                  stdout="internal error: /usr/lib/zfs/pyzfs.py not found\n")])
    assert zfs.holds(ex, SNAP) is None


@pytest.mark.parametrize("stderr,cls", [
    (f"cannot hold '{SNAP}': tag already exists on this dataset\n", AlreadyExists),
    (f"cannot release 'imgstor' from '{SNAP}': no such tag on this dataset\n", NotFound),
    (f"cannot hold '{SNAP}': dataset does not exist\n", NotFound)])
def test_hold_cli_texts_classified(no_lzc, stderr, cls):
    ex = ScriptedExecutor([Expect(["zfs", "hold", "imgstor", SNAP], rc=1, stderr=stderr)])
    with pytest.raises(cls):
        zfs.hold(ex, SNAP, "imgstor")


def test_reads_do_not_import_pyzfs_but_use_it_once_loaded(lzc):
    ex = ScriptedExecutor([Expect(["zfs", "list", "-H", "-o", "name", "tank/v"],
                                  stdout="tank/v\n"),
                           Expect(["zfs", "holds", "-H", SNAP])])
    assert zfs.exists(ex, "tank/v") is True and zfs.holds(ex, SNAP) == []
    assert not lzc.imported and lzc.calls == []
    zfs.create_snapshot(ex, "tank/v@imgstor-2")      # a change imports it
    assert zfs.exists(ex, "tank/v") is True
    assert zfs.exists(ex, "tank/nope") is False
    assert zfs.holds(ex, SNAP) == []
    assert ex.log[-3:] == ["lzc_exists tank/v", "lzc_exists tank/nope", f"lzc_get_holds {SNAP}"]
    ex.assert_done()


# ---------------------------------------------------------------- lzc errors
E = fake_lzc


@pytest.mark.parametrize("exc,cls", [
    (E.FilesystemExists("tank/x"), AlreadyExists),
    (E.SnapshotExists(SNAP), AlreadyExists),
    (E.HoldExists(SNAP), AlreadyExists),
    (E.FilesystemNotFound("tank/x"), NotFound),
    (E.SnapshotNotFound(SNAP), NotFound),
    (E.ParentNotFound("tank/a/b"), NotFound),
    (E.PoolNotFound("nope"), NotFound),             # errno EXDEV: by class name
    (E.SnapshotIsHeld(SNAP), Conflict),
    (E.SnapshotIsCloned(SNAP), Conflict),           # errno EEXIST, yet not "exists"
    (E.SnapshotFailure([E.SnapshotExists(SNAP)]), AlreadyExists),
    (E.SnapshotDestructionFailure([E.SnapshotIsHeld(SNAP)]), Conflict),
    (E.ZFSGenericError(errno.ENOENT, "tank/x", "Failed"), NotFound),
    (E.ZFSGenericError(errno.EBUSY, "tank/x", "Failed"), Conflict),
])
def test_lzc_errors_mapped(exc, cls):
    err = _lzc.classify("nas-0-0", "lzc_create", "tank/x", exc)
    assert type(err) is cls
    assert err.message.startswith("nas-0-0: lzc_create tank/x: ")
    assert json.dumps(err.to_wire())


@pytest.mark.parametrize("exc", [E.PropertyInvalid("tank/x"), E.ZFSInitializationFailed(2),
                                 E.ZFSGenericError(errno.EIO, "tank/x", "Failed")])
def test_other_lzc_errors_are_remote_command_errors(exc):
    err = _lzc.classify("nas-0-0", "lzc_create", "tank/x", exc)
    assert type(err) is RemoteCommandError
    assert err.argv == ["lzc_create", "tank/x"] and err.rc == exc.errno
    assert type(exc).__name__ in err.message


def test_lzc_error_raised_through_the_driver(lzc):
    lzc.fail["lzc_snapshot"] = E.SnapshotFailure([E.FilesystemNotFound("tank/nope@imgstor-1")])
    with pytest.raises(NotFound, match="lzc_snapshot tank/nope@imgstor-1: FilesystemNotFound"):
        zfs.create_snapshot(ScriptedExecutor(), "tank/nope@imgstor-1")


def test_non_zfs_exceptions_are_bugs_not_mapped(lzc):
    _lzc.module()
    lzc.fail["lzc_exists"] = TypeError("a bug")
    with pytest.raises(TypeError):
        zfs.exists(ScriptedExecutor(), "tank/v")


# ---------------------------------------------------------------- Executor.call
def test_executor_call_logs_and_skips_changes_on_dry_run():
    seen = []
    live, dry = ScriptedExecutor(), ScriptedExecutor(dry_run=True)
    assert live.call("f x", lambda v: seen.append(v) or 7, 1) == 7
    assert dry.call("f y", seen.append, 2) is None
    assert dry.call("g z", lambda: seen.append(3) or 8, read_only=True) == 8
    assert seen == [1, 3]
    assert live.log == ["f x"] and dry.log == ["SKIP> f y", "g z"] and dry.skipped == ["f y"]
