"""The kernel lab itself: guests reachable with verified host keys, tools present,
`tank` ONLINE, zvols get /dev/zvol links; and the full by-hand walkthrough (lab/kernel/verify)."""
from __future__ import annotations

import subprocess
import time
import tomllib
import uuid
from pathlib import Path

import pytest

from .conftest import TIMES, VERIFY, KernelLab

pytestmark = pytest.mark.kernel_lab


def test_config_shape(kernel_lab: KernelLab) -> None:
    cfg = tomllib.loads(kernel_lab.config_path.read_text())
    assert cfg["ssh"]["known_hosts"] == str(kernel_lab.known_hosts)
    assert cfg["ssh"]["identity"] == str(kernel_lab.identity)
    assert cfg["defaults"]["volume_kind"] == "zvol" and cfg["defaults"]["target_driver"] == "lio"
    assert cfg["defaults"]["initiator"] == "iscsiadm" and cfg["defaults"]["overlay"] == "dm"
    assert {n: h["address"] for n, h in cfg["hosts"].items()} == kernel_lab.addresses
    assert [h["role"] for h in cfg["hosts"].values()].count("nas") >= 1


def test_guests_ready(kernel_lab: KernelLab) -> None:
    iqns = set()
    for h in kernel_lab.hosts:
        name, addr = h["name"], h["address"]
        # plain ssh from the host, host key verified against the lab's known_hosts
        p = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                            "-o", f"UserKnownHostsFile={kernel_lab.known_hosts}",
                            "-o", "GlobalKnownHostsFile=/dev/null",
                            "-i", str(kernel_lab.identity), f"root@{addr}", "hostname"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == name
        tools = kernel_lab.out(name, "for t in zfs zpool targetcli iscsiadm dmsetup; do command -v $t; done")
        assert len(tools.splitlines()) == 5, tools
        assert kernel_lab.out(name, ["zpool", "list", "-H", "-o", "health", "tank"]) == "ONLINE"
        iqns.add(kernel_lab.out(name, ["cat", "/etc/iscsi/initiatorname.iscsi"]))
        mods = kernel_lab.out(name, "cut -d' ' -f1 /proc/modules")
        for m in ("zfs", "target_core_mod", "iscsi_target_mod", "crc32c_generic", "dm_snapshot"):
            assert m in mods.split(), f"{name}: module {m} not loaded"
    assert len(iqns) == len(kernel_lab.hosts), "initiator names must differ per guest"


def test_host_key_verified(kernel_lab: KernelLab, tmp_path: Path) -> None:
    addr = kernel_lab.hosts[0]["address"]
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    p = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                        "-o", f"UserKnownHostsFile={kh}", "-o", "GlobalKnownHostsFile=/dev/null",
                        "-i", str(kernel_lab.identity), f"root@{addr}", "true"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 255 and "Host key verification failed" in p.stderr


def test_zvol_gets_dev_link(kernel_lab: KernelLab) -> None:
    nas = kernel_lab.names("nas")[0]
    vol = f"tank/t-{uuid.uuid4().hex[:8]}"
    kernel_lab.out(nas, ["zfs", "create", "-s", "-V", "64M", vol])
    try:
        dev = kernel_lab.out(nas, f"udevadm settle && readlink -f /dev/zvol/{vol}")
        assert dev.startswith("/dev/zd"), dev
    finally:
        kernel_lab.ssh(nas, ["zfs", "destroy", vol])


@pytest.mark.kernel_lab_extra      # imgstor's own walkthrough covers it; this one captures
def test_verify_walkthrough(kernel_lab: KernelLab, tmp_path: Path) -> None:
    """The by-hand walkthrough: LIO export + ACL, intruder refused, iscsiadm login,
    dm snapshot -> zfs send|receive -> snapshot-merge -> linear, sha256 checks."""
    t0 = time.monotonic()
    p = subprocess.run([str(VERIFY), "--capture", str(tmp_path / "fixtures")],
                       capture_output=True, text=True, timeout=1200)
    TIMES["verify"] = time.monotonic() - t0
    assert p.returncode == 0, p.stdout[-8000:] + p.stderr[-4000:]
    assert (tmp_path / "fixtures" / "iscsiadm_login_refused.cmd").read_text().endswith("rc: 24\n")
