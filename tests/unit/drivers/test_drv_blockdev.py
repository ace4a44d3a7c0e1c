"""drivers.blockdev on a fake /sys/block tree (holders, dm names); the process scan and
the O_EXCL claim are proven on the kernel lab (tests/lab_kernel)."""
from __future__ import annotations

from imgstor.remote.drivers import blockdev


def test_holders_of_disk_and_partitions_with_dm_names(tmp_path, monkeypatch):
    sysb = tmp_path / "block"
    (sysb / "sdb" / "holders" / "dm-0").mkdir(parents=True)
    (sysb / "sdb" / "sdb1" / "holders" / "dm-1").mkdir(parents=True)
    (sysb / "sdc" / "holders").mkdir(parents=True)
    (sysb / "dm-0" / "dm").mkdir(parents=True)
    (sysb / "dm-0" / "dm" / "name").write_text("vm1-overlay\n")
    monkeypatch.setattr(blockdev, "SYS_BLOCK", str(sysb))
    monkeypatch.setattr(blockdev, "openers", lambda devs: [])
    monkeypatch.setattr(blockdev, "claimed", lambda dev: False)
    assert blockdev.holders("/dev/sdb") == ["dm-0", "dm-1"]
    assert blockdev.users("/dev/sdb") == ["dm-0 (dm vm1-overlay) is stacked on /dev/sdb",
                                         "dm-1 is stacked on /dev/sdb"]
    assert blockdev.users("/dev/sdc") == []
    monkeypatch.setattr(blockdev, "claimed", lambda dev: True)
    assert blockdev.users("/dev/sdc") == ["/dev/sdc is claimed exclusively (mounted, swap "
                                          "or in use by the kernel)"]


def test_openers_ignore_what_is_not_a_block_device():
    assert blockdev.openers(["/dev/null", "/nonexistent"]) == []
    assert blockdev.claimed("/nonexistent") is False
