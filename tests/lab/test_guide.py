"""The img-storage guide's transcripts (shared/reference/guide/: the current guide and its
2014 version), replayed command by command through ``bin/rocks`` on the lab, each line as
printed in the guide with the lab's host names in place of the guide's (nas-0-0 stays;
vm-container-0-14 and compute-0-3 become compute-0-1 and compute-0-0), checking each
output's shape and the states in between.  Not replayed: `rocks add appliance attr`,
`ssh`, `zfs list` (not imgstor's)."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from imgstor.names import target_iqn
from tests.conftest import Lab
from tests.lab.test_direct import NAS

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
DASHES = re.compile(r"-+")


def rocks(lab: Lab, line: str, *, rc: int = 0) -> subprocess.CompletedProcess:
    """Run one guide line (``rocks ...`` exactly as printed) through bin/rocks."""
    argv = shlex.split(line)
    assert argv[0] == "rocks", line
    p = subprocess.run([sys.executable, str(ROOT / "bin" / "rocks"), *argv[1:]],
                       capture_output=True, text=True, timeout=300, cwd="/",
                       env={**os.environ, "IMGSTOR_CONFIG": str(lab.config_path)})
    assert p.returncode == rc, f"{line} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def table(out: str) -> tuple[list[str], dict[str, list[str]]]:
    """Headers and rows (by first cell) of a Rocks table whose cells have no spaces."""
    lines = out.splitlines()
    return lines[0].split(), {ln.split()[0]: ln.split() for ln in lines[1:]}


def storagemap(lab: Lab) -> dict[str, list[str]]:
    head, rows = table(rocks(lab, f"rocks list host storagemap {NAS}").stdout)
    assert head == ["ZVOL", "HOST", "ZPOOL", "TARGET", "STATE", "TIME"]
    for r in rows.values():
        assert len(r) == 6 and DASHES.fullmatch(r[5]), r        # TIME: direct mode has none
    return rows


def _clean(lab: Lab, vol: str) -> None:
    """Leftovers of an earlier interrupted run of this test."""
    st = json.loads(subprocess.run(
        [sys.executable, "-m", "imgstor", "--config", str(lab.config_path), "--json", "list",
         "host", "storagemap", NAS], capture_output=True, text=True, cwd=ROOT).stdout
        or '{"rows": []}')
    if any(r["zvol"] == vol for r in st.get("rows", [])):
        rocks(lab, f"rocks remove host storagemap {NAS} {vol}")
        rocks(lab, f"rocks remove host storageimg {NAS} tank {vol}")


@pytest.fixture
def extra_pools(lab: Lab):
    """tank1 and tank2 on the NAS (the guide's img_zpools example), gone afterwards."""
    for p in ("tank1", "tank2"):
        lab.ssh(NAS, f"truncate -s 128M /var/lib/zfs/{p}.img && "
                     f"zpool create -f -m none {p} /var/lib/zfs/{p}.img")
    yield
    for p in ("tank1", "tank2"):
        lab.ssh(NAS, f"zpool destroy -f {p}; rm -f /var/lib/zfs/{p}.img", check=False)


def test_guide_direct_mode_transcript(lab: Lab, extra_pools) -> None:
    _clean(lab, "vol1")
    made: list[str] = []
    try:
        _transcript(lab, made)
    finally:
        # the lab is shared with the other tests: its attributes and VMs as they were
        for line in ("rocks remove host attr nas-0-0 img_zpools",
                     "rocks remove host attr compute-0-1 img_sync",
                     "rocks remove host attr compute-0-1 IB_net"):
            rocks(lab, line)
        for vm in made:
            for line in (f"rocks stop host vm {vm}", f"rocks remove host vm {vm}",
                         f"rocks remove host storageimg nas-0-0 tank {vm}-vol"):
                subprocess.run([sys.executable, str(ROOT / "bin" / "rocks"),
                                *shlex.split(line)[1:]], capture_output=True, timeout=300,
                               env={**os.environ, "IMGSTOR_CONFIG": str(lab.config_path)})
        _clean(lab, "vol1")


def _transcript(lab: Lab, made: list[str]) -> None:
    # ---- "Enable remote virtual disk": add host vm CONTAINER MEMBERSHIP
    out = rocks(lab, "rocks add host vm compute-0-1 compute").stdout
    m = re.fullmatch(r"added VM (compute-0-1-[0-9]+) on physical node compute-0-1\n", out)
    assert m, out
    vm, vol = m.group(1), f"{m.group(1)}-vol"
    made.append(vm)
    rocks(lab, f"rocks set host vm nas {vm} nas=nas-0-0 zpool=tank")
    # the disk before start: assigned, not made yet (DISKSIZE empty); a VM without a NAS
    # keeps its local disks
    out = rocks(lab, "rocks list host vm showdisks=1").stdout
    head, rows = table(out)
    assert head == ["VM", "CONTAINER", "NAS", "ZPOOL", "MODE", "DISK", "DISKSIZE"]
    assert rows[vm] == [vm, "compute-0-1", NAS, "tank", "direct", f"{NAS}:tank/{vol}",
                        rows[vm][6]] and DASHES.fullmatch(rows[vm][6])
    out = rocks(lab, f"rocks start host vm {vm}").stdout
    assert re.fullmatch(rf"{NAS}:{vol} mapped to compute-0-1:iscsi://\S+/{re.escape(target_iqn(NAS, vol))}/1\n",
                        out), out
    # "The virtual disks are saved on the NAS specified in rocks list host vm nas"
    head, rows = table(rocks(lab, "rocks list host vm nas").stdout)
    assert head == ["VM-HOST", "NAS", "ZPOOL"] and rows[vm] == [vm, NAS, "tank"]
    assert lab.ssh(NAS, f"zfs list tank/{vol}").returncode == 0
    head, rows = table(rocks(lab, "rocks list host vm showdisks=1").stdout)
    assert rows[vm][4:] == ["direct", f"{NAS}:tank/{vol}", "10G"]

    # ---- img_zpools: only pools that exist on the NAS; then used for the next assignment
    p = rocks(lab, 'rocks set host attr nas-0-0 img_zpools value="tank1,tank3"', rc=6)
    assert "nas-0-0 has no zpool tank3" in p.stderr and "tank1" in p.stderr, p.stderr
    out = rocks(lab, 'rocks set host attr nas-0-0 img_zpools value="tank1,tank2"').stdout
    assert out.startswith("nas-0-0: img_zpools = tank1,tank2"), out
    out = rocks(lab, "rocks list host attr nas-0-0").stdout
    assert re.search(r"(?m)^nas-0-0 +img_zpools +tank1,tank2 +set by command$", out), out
    out = rocks(lab, "rocks add host vm compute-0-0 compute").stdout
    other = re.fullmatch(r"added VM (compute-0-0-[0-9]+) on physical node compute-0-0\n",
                         out).group(1)
    made.append(other)
    rocks(lab, f"rocks set host vm nas {other} nas=nas-0-0")             # no zpool=
    assert table(rocks(lab, "rocks list host vm nas").stdout)[1][other][2] in ("tank1", "tank2")
    # volumes are made only on img_zpools: tank again, colon-separated as the guide says
    p = rocks(lab, "rocks add host storagemap nas-0-0 tank vol1 compute-0-0 10", rc=2)
    assert "zpool 'tank' is not one of nas-0-0's img_zpools (tank1, tank2)" in p.stderr
    rocks(lab, "rocks set host attr nas-0-0 img_zpools value=tank:tank1:tank2")

    # ---- "the manual commands": the live map, by hand
    rows = storagemap(lab)
    assert rows[vol][:5] == [vol, "compute-0-1", "tank", target_iqn(NAS, vol), "mapped"]
    head, rows = table(rocks(lab, "rocks list host storagedev compute-0-1").stdout
                       .replace("SIZE (GB)", "SIZE(GB)").replace("BLOCK DEV", "BLOCK-DEV")
                       .replace("IS STARTED", "IS-STARTED"))
    assert head == ["ZVOL", "LVM", "STATUS", "SIZE(GB)", "BLOCK-DEV", "IS-STARTED", "SYNCED",
                    "TIME", "DEVICE", "NAS", "STATE"]
    assert rows[vol][2:4] == ["ok", "10.0"] and rows[vol][-2:] == [NAS, "mapped"]
    assert all(DASHES.fullmatch(c) for c in rows[vol][1:2] + rows[vol][4:8]), rows[vol]

    out = rocks(lab, "rocks add host storagemap nas-0-0 tank vol1 compute-0-0 10").stdout
    assert re.fullmatch(r"mapping  nas-0-0 : tank / vol1  on  compute-0-0\niscsi://\S+\n",
                        out), out
    rows = storagemap(lab)
    assert rows["vol1"][:5] == ["vol1", "compute-0-0", "tank", target_iqn(NAS, "vol1"), "mapped"]
    assert rocks(lab, "rocks remove host storagemap nas-0-0 vol1").stdout == \
        "unmapping   nas-0-0 : vol1\nSuccess\n"
    r = storagemap(lab)["vol1"]
    assert r[0] == "vol1" and DASHES.fullmatch(r[1]) and r[2] == "tank" \
        and DASHES.fullmatch(r[3]) and r[4] == "unmapped", r
    assert target_iqn(NAS, "vol1") not in lab.out(NAS, "tgtadm --lld iscsi --mode target --op show")
    assert rocks(lab, "rocks remove host storageimg nas-0-0 tank vol1").stdout == \
        "removing   nas-0-0 : tank / vol1\nSuccess\n"
    assert "vol1" not in storagemap(lab)
    assert lab.ssh(NAS, "zfs list tank/vol1", check=False).returncode != 0

    # ---- the 2014 guide: start, then the manual remove of the VM's mapping
    out = rocks(lab, f"rocks remove host storagemap nas-0-0 {vol}").stdout
    assert out == f"unmapping   nas-0-0 : {vol}\nSuccess\n", out
    r = storagemap(lab)[vol]
    assert DASHES.fullmatch(r[1]) and r[4] == "unmapped"
    out = rocks(lab, f"rocks start host vm {vm}").stdout
    assert out.startswith(f"{NAS}:{vol} mapped to compute-0-1:iscsi://"), out

    # ---- IB_net (the guide's spelling), kept per host; the live mapping keeps its portal
    rocks(lab, "rocks set host attr compute-0-1 IB_net value=ibnet")
    out = rocks(lab, "rocks list host attr compute-0-1 IB_net").stdout
    assert re.search(r"(?m)^compute-0-1 +ib_net +ibnet +set by command$", out), out
    rocks(lab, "rocks remove host attr compute-0-1 IB_net")

    # ---- img_sync on the container: the next start is sync mode (its own test below)
    out = rocks(lab, f"rocks stop host vm {vm}").stdout
    assert out == f"{NAS}:{vol} unmapped from compute-0-1\n", out
    rocks(lab, "rocks set host attr compute-0-1 img_sync value=true")
    head, rows = table(rocks(lab, "rocks list host vm").stdout)
    assert rows[vm][4] == "sync"
    rocks(lab, "rocks remove host attr compute-0-1 img_sync")
    assert table(rocks(lab, "rocks list host vm").stdout)[1][vm][4] == "direct"

    # ---- tidy up: the VMs and the disk
    for v in (vm, other):
        assert rocks(lab, f"rocks remove host vm {v}").stdout == f"removed VM {v}\n"
    rocks(lab, f"rocks remove host storageimg nas-0-0 tank {vol}")
    assert vol not in storagemap(lab)
    made.clear()


# The guide's sync-mode lines: the states NAS->VM, NAS<-VM, storagedev of an overlay.
def _wait(lab: Lab, vol: str, state: str, timeout: float = 180) -> list[str]:
    import time
    deadline = time.monotonic() + timeout
    while True:
        head, rows = table(rocks(lab, f"rocks list host storagemap {NAS}").stdout)
        if rows[vol][4] == state:
            return rows[vol]
        assert time.monotonic() < deadline, (vol, rows[vol])
        time.sleep(0.5)


def test_guide_sync_mode_transcript(lab: Lab) -> None:
    """The guide's "VM boot workflow with image sync", line by line through bin/rocks."""
    _clean(lab, "vol1")
    out = rocks(lab, "rocks add host vm compute-0-1 compute").stdout
    vm = re.fullmatch(r"added VM (compute-0-1-[0-9]+) on physical node compute-0-1\n",
                      out).group(1)
    vol = f"{vm}-vol"
    try:
        rocks(lab, f"rocks set host vm nas {vm} nas=nas-0-0 zpool=tank")
        rocks(lab, "rocks set host attr compute-0-1 img_sync value=true")
        out = rocks(lab, f"rocks start host vm {vm}").stdout
        nbd = f"nbd+unix:///{vol}?socket=/run/imgstor/nbd/{vol}.sock"
        assert out == f"{NAS}:{vol} mapped to compute-0-1:{nbd}\n", out
        head, rows = table(rocks(lab, f"rocks list host storagemap {NAS}").stdout)
        assert head[:6] == ["ZVOL", "HOST", "ZPOOL", "TARGET", "STATE", "TIME"]
        assert rows[vol][4] in ("NAS->VM", "merging", "mapped"), rows[vol]
        head, rows = table(rocks(lab, "rocks list host storagedev compute-0-1").stdout.replace(
            "SIZE (GB)", "SIZE_(GB)").replace("BLOCK DEV", "BLOCK_DEV").replace(
            "IS STARTED", "IS_STARTED"))
        assert head[:8] == ["ZVOL", "LVM", "STATUS", "SIZE_(GB)", "BLOCK_DEV", "IS_STARTED",
                            "SYNCED", "TIME"]
        assert rows[vol][1] == nbd and rows[vol][2] in ("snapshot", "snapshot-merge", "linear")

        out = rocks(lab, "rocks add host storagemap nas-0-0 tank vol1 compute-0-1 10").stdout
        assert out == ("mapping  nas-0-0 : tank / vol1  on  compute-0-1\n"
                       "nbd+unix:///vol1?socket=/run/imgstor/nbd/vol1.sock\n"), out
        r = _wait(lab, "vol1", "mapped")
        assert r[1:4] == ["compute-0-1", "tank", r[3]] and DASHES.fullmatch(r[3]), r   # no TARGET
        assert rocks(lab, "rocks remove host storagemap nas-0-0 vol1").stdout == \
            "unmapping   nas-0-0 : vol1\nSuccess\n"
        r = table(rocks(lab, f"rocks list host storagemap {NAS}").stdout)[1]["vol1"]
        assert r[4] in ("NAS<-VM", "unmapped"), r
        _wait(lab, "vol1", "unmapped")
        assert rocks(lab, "rocks remove host storageimg nas-0-0 tank vol1").stdout == \
            "removing   nas-0-0 : tank / vol1\nSuccess\n"
        _wait(lab, vol, "mapped")
        rocks(lab, f"rocks stop host vm {vm} --wait")
        assert table(rocks(lab, f"rocks list host storagemap {NAS}").stdout)[1][vol][4] == \
            "unmapped"
    finally:
        rocks(lab, "rocks remove host attr compute-0-1 img_sync")
        for line in (f"rocks stop host vm {vm} --wait", f"rocks remove host vm {vm}",
                     f"rocks remove host storageimg nas-0-0 tank {vol}"):
            subprocess.run([sys.executable, str(ROOT / "bin" / "rocks"),
                            *shlex.split(line)[1:]], capture_output=True, timeout=300,
                           env={**os.environ, "IMGSTOR_CONFIG": str(lab.config_path)})
        _clean(lab, "vol1")
