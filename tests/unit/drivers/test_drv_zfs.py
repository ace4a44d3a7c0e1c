"""zfs driver: parsers fed real zfs-fuse output (tests/fixtures/userspace) and OpenZFS
samples (samples.py, from documentation; the kernel lab's real output is asserted in
test_drv_kernel_captures.py)."""
from __future__ import annotations

import pytest
import samples

from imgstor.errors import AlreadyExists, Conflict, NotFound, RemoteCommandError, UsageError
from imgstor.remote.drivers import zfs
from tests.scripted import Expect, ScriptedExecutor

U = samples.userspace
FUSE = zfs.Capabilities("zfs-fuse", None, 23, False, False, False, False)
OPENZFS = zfs.Capabilities("openzfs", "zfs-2.1.11-1", None, True, True, True, True)
LIST_ARGV = ["-o", "name,type,used,available,referenced,volsize,mountpoint", "-t", "all"]


def err(name: str, argv=("zfs",)) -> RemoteCommandError:
    return RemoteCommandError("nas-0-0", list(argv), samples.userspace_rc(name), U(name, "err"))


# ---------------------------------------------------------------- capabilities
def test_capabilities_zfs_fuse_from_captured_output():
    caps = zfs.parse_capabilities(samples.userspace_rc("zfs_version"), U("zfs_version"),
                                  U("zpool_upgrade_v"))
    assert caps == FUSE


def test_capabilities_openzfs_from_zfs_version():
    caps = zfs.parse_capabilities(0, samples.OPENZFS_VERSION, "")
    assert caps.flavor == "openzfs" and caps.version == "zfs-2.1.11-1"
    assert caps.parsable and caps.zvols and caps.resume


def test_capabilities_old_openzfs_by_feature_flags():
    assert zfs.parse_capabilities(2, "", samples.OPENZFS_ZPOOL_UPGRADE_V).flavor == "openzfs"


def test_probe_is_read_only_so_dry_run_still_probes():
    ex = ScriptedExecutor([Expect(["zfs", "version"], stdout=samples.OPENZFS_VERSION)],
                          dry_run=True)
    assert zfs.capabilities(ex).flavor == "openzfs"


# ---------------------------------------------------------------- sizes and lists
@pytest.mark.parametrize("text,value", [
    ("1073741824", 1073741824), ("0", 0), ("128K", 131072), ("1.5G", 1610612736),
    ("3.12M", round(3.12 * 2 ** 20)), ("468M", 468 * 2 ** 20), ("-", None), ("none", None),
])
def test_parse_size(text, value):
    assert zfs.parse_size(text) == value


def test_parse_size_rejects_garbage():
    with pytest.raises(ValueError):
        zfs.parse_size("1.00x")


def test_pools_zfs_fuse_and_openzfs():
    ex = ScriptedExecutor([Expect(["zpool", "list", "-H", "-o", "name,size,allocated,free,health"],
                                  stdout=U("zpool_list"))])
    (p,) = zfs.pools(ex, caps=FUSE)
    assert p.name == "tank" and p.health == "ONLINE" and p.size == 504 * 2 ** 20
    (p,) = zfs.parse_pools(samples.OPENZFS_ZPOOL_LIST_P, exact=True)
    assert p.free == 9074900992


# ---------------------------------------------------------------- properties
def test_get_props_user_properties_and_unset():
    props = zfs.parse_get(U("zfs_get"))
    assert props["imgstor:host"] == zfs.Property("imgstor:host", "compute-0-0", "local")
    assert props["imgstor:target"].value == "iqn.2001-04.com.nas-0-0-vm1-vol"
    assert props["imgstor:unset"].value is None and props["imgstor:unset"].source is None
    assert props["volsize"].value is None
    assert props["mountpoint"].source == "inherited from tank"


def test_get_props_runs_get_p():
    ex = ScriptedExecutor([Expect(
        ["zfs", "get", "-H", "-p", "-o", "name,property,value,source", "used", "tank/vm1-vol"],
        stdout=U("zfs_get_p"))])
    props = zfs.get_props(ex, "tank/vm1-vol", ["used"])
    assert props["used"].as_int() == 3268608


def test_mountpoint():
    ex = ScriptedExecutor([Expect(["zfs", "get", "-H", "-o", "value", "mountpoint",
                                   "tank/vm1-vol"], stdout=U("zfs_get_mountpoint"))])
    assert zfs.mountpoint(ex, "tank/vm1-vol") == "/mnt/tank/vm1-vol"


def test_exists_true_false():
    ex = ScriptedExecutor([
        Expect(["zfs", "list", "-H", "-o", "name", "tank/vm1-vol"], stdout="tank/vm1-vol\n"),
        Expect(["zfs", "list", "-H", "-o", "name", "tank/nope"], rc=1,
               stderr=U("zfs_list_missing", "err")),
    ])
    assert zfs.exists(ex, "tank/vm1-vol") is True
    assert zfs.exists(ex, "tank/nope") is False


# ---------------------------------------------------------------- classify
@pytest.mark.parametrize("name,cls", [
    ("zfs_list_missing", NotFound), ("zfs_get_missing", NotFound),
    ("zfs_destroy_missing", NotFound), ("zfs_inherit_missing", NotFound),
    ("zfs_create_noparent", NotFound), ("zfs_create_exists", AlreadyExists),
    ("zfs_snapshot_exists", AlreadyExists), ("zfs_receive_exists", AlreadyExists),
    ("zfs_destroy_children", Conflict),
])
def test_classify_captured_errors(name, cls):
    out = zfs.classify(err(name))
    assert type(out) is cls
    assert out.details["host"] == "nas-0-0"


def test_classify_zvol_abort_keeps_rc_and_hints():
    e = err("zfs_create_zvol", zfs.create_zvol("tank", "zv", "1G"))
    assert e.rc == zfs.ZFS_FUSE_ABORT_RC
    out = zfs.classify(e)
    assert isinstance(out, RemoteCommandError) and out.rc == 134 and "zvols" in out.message


def test_classify_invalid_option_hint():
    out = zfs.classify(err("zfs_list_p"))
    assert isinstance(out, RemoteCommandError) and "list -p" in out.message


# ---------------------------------------------------------------- builders
def test_create_zvol():
    assert zfs.create_zvol("tank", "vm1-vol", "10G") == [
        "zfs", "create", "-s", "-o", "volblocksize=128K", "-V", "10G", "tank/vm1-vol"]


def test_create_zvol_rounds_bytes_up_to_volblocksize():
    assert zfs.create_zvol("tank", "v", 1)[6] == "131072"
    assert zfs.create_zvol("tank", "v", 1 << 30)[6] == str(1 << 30)


@pytest.mark.parametrize("size", ["10 G", "1G; rm", "-1", "", 0, -5])
def test_create_zvol_rejects_bad_sizes(size):
    with pytest.raises((ValueError, TypeError)):
        zfs.create_zvol("tank", "v", size)


def test_create_dataset_and_destroy():
    assert zfs.create_dataset("tank/vm1-vol", {"imgstor:kind": "file"}) == [
        "zfs", "create", "-o", "imgstor:kind=file", "tank/vm1-vol"]
    assert zfs.create_dataset("tank/a/b", parents=True) == ["zfs", "create", "-p", "tank/a/b"]
    assert zfs.destroy("tank/vm1-vol") == ["zfs", "destroy", "tank/vm1-vol"]
    assert zfs.destroy("tank/vm1-vol", recursive=True) == ["zfs", "destroy", "-r", "tank/vm1-vol"]


def test_set_props_one_command_per_property():
    assert zfs.set_props("tank/v", {"imgstor:host": "compute-0-0", "imgstor:mode": "direct"}) == [
        ["zfs", "set", "imgstor:host=compute-0-0", "tank/v"],
        ["zfs", "set", "imgstor:mode=direct", "tank/v"]]


def test_inherit_and_snapshot():
    assert zfs.inherit("imgstor:host", "tank/v") == ["zfs", "inherit", "imgstor:host", "tank/v"]
    assert zfs.snapshot("tank/v@s1") == ["zfs", "snapshot", "tank/v@s1"]


def test_snapshot_requires_at():
    with pytest.raises(ValueError):
        zfs.snapshot("tank/v")


@pytest.mark.parametrize("bad", ["-r", "", "tank/v\nx"])
def test_builders_refuse_option_like_positionals(bad):
    with pytest.raises(UsageError):
        zfs.destroy(bad)
    with pytest.raises(UsageError):
        zfs.create_dataset(bad)


def test_property_names_checked():
    with pytest.raises(ValueError):
        zfs.set_props("tank/v", {"a=b": "c"})
    with pytest.raises(ValueError):
        zfs.inherit("-r", "tank/v")


def test_zvol_device():
    assert zfs.zvol_device("tank", "vm1-vol") == "/dev/zvol/tank/vm1-vol"
