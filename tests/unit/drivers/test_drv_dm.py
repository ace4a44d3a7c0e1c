"""dm driver.  Parser input: samples.py (kernel snapshot.rst examples, FROM DOCUMENTATION)
and dmsetup's real "no device-mapper" error here; the kernel lab's real tables are asserted
in test_drv_kernel_captures.py."""
from __future__ import annotations

import pytest
import samples

from imgstor.errors import AlreadyExists, Conflict, NotFound, RemoteCommandError, UsageError
from imgstor.remote.drivers import dm
from tests.scripted import Expect, ScriptedExecutor


def test_parse_table_named():
    devs = dm.parse_table(samples.DMSETUP_TABLE)
    by = {d.name: d for d in devs}
    snap = by["volumeGroup-snap"]
    assert snap.target == "snapshot" and snap.sectors == 2097152
    assert snap.segments[0].args == ("254:11", "254:12", "P", "16")
    assert by["volumeGroup-base-real"].segments[0] == dm.Segment(0, 2097152, "linear",
                                                                  ("8:19", "384"))


def test_parse_table_single_device_and_empty():
    (d,) = dm.parse_table("0 2097152 linear 8:19 384\n")
    assert d.name is None and d.target == "linear"
    assert dm.parse_table("No devices found\n") == []


def test_snapshot_status_and_merge_progress():
    st = dm.parse_snapshot_status(samples.DMSETUP_STATUS_SNAPSHOT)
    assert st == dm.SnapshotStatus(397896, 2097152, 1560) and st.ok
    merging = dm.parse_snapshot_status(samples.DMSETUP_STATUS_MERGING)
    assert not dm.merge_done(merging)
    assert dm.merge_done(dm.parse_snapshot_status(samples.DMSETUP_STATUS_MERGED))


def test_invalid_and_merge_failed():
    inv = dm.parse_snapshot_status(samples.DMSETUP_STATUS_INVALID)
    assert inv.invalid and not inv.ok
    with pytest.raises(Conflict):
        dm.merge_done(inv)
    failed = dm.parse_snapshot_status(samples.DMSETUP_STATUS_MERGE_FAILED)
    assert failed.merge_failed
    with pytest.raises(Conflict, match="merge failed"):
        dm.merge_done(failed)


def test_status_of_linear_is_not_a_snapshot():
    (d,) = dm.parse_status("vm1: 0 2097152 linear \n")
    assert d.target == "linear"
    with pytest.raises(ValueError):
        dm.parse_snapshot_status(d.segments[0])


def test_readers_run_expected_commands():
    ex = ScriptedExecutor([
        Expect(["dmsetup", "status", "vm1-overlay"], stdout=samples.DMSETUP_STATUS_MERGED),
        Expect(["dmsetup", "table"], stdout=samples.DMSETUP_TABLE),
    ])
    (d,) = dm.status(ex, "vm1-overlay")
    assert dm.merge_done(dm.parse_snapshot_status(d.segments[0]))
    assert dm.table(ex)
    ex.assert_done()


def test_no_device_mapper_here_is_hinted():
    s = samples.userspace
    ex = ScriptedExecutor([Expect(["dmsetup", "status"], rc=samples.userspace_rc("dmsetup_no_kernel"),
                                  stderr=s("dmsetup_no_kernel", "err"))])
    with pytest.raises(RemoteCommandError, match="no device-mapper"):
        dm.status(ex)


def test_builders():
    assert dm.create_snapshot("vm1-overlay", "/dev/sdb", "/dev/zvol/local/vm1-vol-temp-write",
                              2097152) == [
        "dmsetup", "create", "vm1-overlay", "--table",
        "0 2097152 snapshot /dev/sdb /dev/zvol/local/vm1-vol-temp-write P 16"]
    assert dm.start_merge("vm1-overlay", "/dev/zvol/local/vm1-vol",
                          "/dev/zvol/local/vm1-vol-temp-write", 2097152) == [
        ["dmsetup", "suspend", "vm1-overlay"],
        ["dmsetup", "reload", "vm1-overlay", "--table",
         "0 2097152 snapshot-merge /dev/zvol/local/vm1-vol /dev/zvol/local/vm1-vol-temp-write P 16"],
        ["dmsetup", "resume", "vm1-overlay"]]
    assert dm.switch_to_linear("vm1-overlay", "/dev/zvol/local/vm1-vol", 2097152)[1] == [
        "dmsetup", "reload", "vm1-overlay", "--table", "0 2097152 linear /dev/zvol/local/vm1-vol 0"]
    assert dm.remove("vm1-overlay") == ["dmsetup", "remove", "vm1-overlay"]
    assert dm.remove("vm1-overlay", retry=True) == ["dmsetup", "remove", "--retry", "vm1-overlay"]


@pytest.mark.parametrize("origin", ["/dev/sdb 0 linear /dev/sda", "-x", "/dev/a\n1 2 linear"])
def test_table_values_cannot_inject(origin):
    with pytest.raises(UsageError):
        dm.snapshot_table(origin, "/dev/c", 8)


def test_sectors_positive():
    with pytest.raises(ValueError):
        dm.linear_table("/dev/a", 0)


def test_classify():
    e = RemoteCommandError("c", ["dmsetup", "create", "vm1-overlay", "--table", "x"], 1,
                           "device-mapper: create ioctl on vm1-overlay  failed: Device or resource busy\nCommand failed.")
    assert type(dm.classify(e)) is AlreadyExists
    e = RemoteCommandError("c", ["dmsetup", "remove", "vm1-overlay"], 1,
                           "device-mapper: remove ioctl on vm1-overlay  failed: Device or resource busy\nCommand failed.")
    assert type(dm.classify(e)) is Conflict
    e = RemoteCommandError("c", ["dmsetup", "status", "nope"], 1,
                           "Device does not exist.\nCommand failed.")
    assert type(dm.classify(e)) is NotFound
