"""Restore after a daemon restart (``imgstor refresh``) and orphans (``check``/``repair``)
on the userspace lab: tgtd restarted on the NAS (every target gone), a sync overlay's
qemu-storage-daemon killed before and after the pivot, orphans made by hand."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from imgstor.workflows.storagemap import target_iqn
from tests.conftest import LAB, Lab
from tests.lab.test_direct import NAS, cli, maps, nas_file, read_through, targets, write_through
from tests.lab.test_overlay import nbd, put, qemu_json, qsd_pids
from tests.lab.test_sync import NODE, OTHER, MiB, node_sha, prefilled_then_removed, wait_state

pytestmark = pytest.mark.lab


def restart(host: str, daemon: str) -> None:
    p = subprocess.run([str(LAB), "restart", host, daemon], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr


def running(pid: int) -> bool:
    """pid runs and is not a zombie (the machine's PID 1 reaps slowly)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def tgtd_pid(lab: Lab) -> int:
    hosts = json.loads((lab.dir / "lab.json").read_text())["hosts"]
    return next(h["tgtd"] for h in hosts if h["name"] == NAS)


def acl_of(lab: Lab, iqn: str) -> list[str]:
    """The initiators in IQN's ACL on the NAS's tgtd (``ACL information:`` lines)."""
    out, inside, acl = [], False, False
    for line in targets(lab).splitlines():
        if line.startswith("Target "):
            inside, acl = line.endswith(" " + iqn), False
            continue
        if inside and line.strip() == "ACL information:":
            acl = True
        elif inside and acl and line.startswith("        "):
            out.append(line.strip())
    return out


def refresh_rows(lab: Lab, vol: str) -> list[dict]:
    """refresh's restore rows about VOL (not its monitor's, not its pull's)."""
    rows = json.loads(cli(lab, "refresh", "--json").stdout)["rows"]
    return [r for r in rows if r["volume"] == f"{NAS}/{vol}" and r["what"] not in ("job", "pull")]


def nbd_sha(lab: Lab, vol: str) -> str:
    return lab.out(NODE, f"qemu-img convert -O raw '{nbd(vol)}' /tmp/rst-{vol}.raw && "
                         f"sha256sum < /tmp/rst-{vol}.raw; rm -f /tmp/rst-{vol}.raw").split()[0]


def test_tgtd_restarted_refresh_puts_every_mapping_back(lab: Lab) -> None:
    vols = {f"rst-{os.urandom(3).hex()}-{i}": host for i, host in enumerate((OTHER, NODE))}
    try:
        sha = {}
        for vol, host in vols.items():
            cli(lab, "add", "host", "storagemap", NAS, "tank", vol, host, "8M")
            sha[vol] = write_through(lab, host, vol, 8, f"rst-{vol}")
        before = tgtd_pid(lab)
        restart(NAS, "tgtd")
        after = tgtd_pid(lab)                                    # lab.json tracks the new one
        assert after != before and running(after) and not running(before)
        assert "Target " not in targets(lab)                       # every target gone
        assert cli(lab, "check", check=False).returncode == 9
        rows = json.loads(cli(lab, "refresh", "--json").stdout)["rows"]
        for vol in vols:
            mine = [r for r in rows if r["volume"] == f"{NAS}/{vol}"]
            assert [r["what"] for r in mine] == ["target"] and "no target" in mine[0]["action"] \
                and "failed" not in mine[0]["action"], rows
        for vol, host in vols.items():
            assert acl_of(lab, target_iqn(NAS, vol)) == [lab.host(host)["initiator"]]
            assert read_through(lab, host, vol, 8 * MiB) == sha[vol]
        assert cli(lab, "check").returncode == 0
        assert not [r for r in json.loads(cli(lab, "refresh", "--json").stdout)["rows"]
                    if r["what"] == "target"]                     # nothing left to do
    finally:
        for vol in vols:
            cli(lab, "remove", "host", "storagemap", NAS, vol, check=False)
            cli(lab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)


@pytest.fixture
def svol(lab: Lab):
    yield from prefilled_then_removed(lab, "rsq")


def test_overlay_daemon_killed_during_nas_to_vm_refresh_brings_it_back(lab: Lab, svol) -> None:
    vol, img = svol
    # the monitor rests after its trust phase: the volume stays NAS->VM meanwhile
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
        env={"IMGSTOR_PAUSE": "job:trust:20"})
    assert maps(lab)[vol]["state"] == "NAS->VM"
    put(lab, img, vol, 3 * MiB, os.urandom(2 * MiB), "before")
    restart(NODE, f"qsd:{vol}")
    assert not qsd_pids(lab, vol)
    p = cli(lab, "check", check=False)
    assert p.returncode == 9 and "no overlay (NAS->VM)" in p.stdout, p.stdout
    rows = refresh_rows(lab, vol)
    assert [r["what"] for r in rows] == ["overlay"] and "failed" not in rows[0]["action"], rows
    assert qsd_pids(lab, vol)
    assert nbd_sha(lab, vol) == img.sha()                          # the VM's writes kept
    put(lab, img, vol, 11 * MiB, os.urandom(MiB), "after")
    wait_state(lab, vol, "mapped", timeout=180)                   # copy, merge, pivot
    assert node_sha(lab, vol) == img.sha()
    assert cli(lab, "check").returncode == 0


def test_overlay_daemon_killed_after_the_pivot_refresh_brings_it_back(lab: Lab, svol) -> None:
    vol, img = svol
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
        "--wait")
    put(lab, img, vol, 5 * MiB, os.urandom(MiB), "mapped")
    restart(NODE, f"qsd:{vol}")
    rows = refresh_rows(lab, vol)
    assert [r["what"] for r in rows] == ["overlay"] and "local copy" in rows[0]["action"], rows
    assert nbd_sha(lab, vol) == img.sha() == node_sha(lab, vol)
    put(lab, img, vol, 17 * MiB, os.urandom(MiB), "restored")
    cli(lab, "remove", "host", "storagemap", NAS, vol, "--wait")
    assert lab.out(NAS, f"sha256sum < {nas_file(lab, vol)}").split()[0] == img.sha()



def test_orphans_check_names_each_repair_removes_the_safe_ones(lab: Lab) -> None:
    from imgstor.config import load_config
    from imgstor.transport import Cluster
    rec = f"orr-{os.urandom(3).hex()}"         # a record whose target is gone
    ovl = f"oro-{os.urandom(3).hex()}"         # an overlay without a record
    tw = f"tank/orw-{os.urandom(3).hex()}-temp-write"     # a temp-write, no writes
    full = f"tank/orf-{os.urandom(3).hex()}-temp-write"   # a temp-write holding writes
    nasvol = f"tank/orn-{os.urandom(3).hex()}"            # a marked NAS volume, unknown
    ghost = f"iqn.2001-04.com.{NAS}-orphan-{os.urandom(2).hex()}"
    cli(lab, "add", "host", "storagemap", NAS, "tank", rec, NODE, "8M")
    try:
        sha = write_through(lab, NODE, rec, 8, f"orr-{rec}")
        assert cli(lab, "check").returncode == 0
        with Cluster(load_config(str(lab.config_path))) as c:
            c.step(NODE, "overlay.create", driver="qcow2", pool="tank", vol=ovl,
                   origin=qemu_json(lab, rec))
        assert qsd_pids(lab, ovl)
        lab.ssh(NODE, f"zfs create -o imgstor:role=temp-write {tw}")
        lab.ssh(NAS, f"tgtadm --lld iscsi --mode target --op new --tid 901 -T {ghost}")
        tid = next(line.split()[1].rstrip(":") for line in targets(lab).splitlines()
                   if line.startswith("Target ") and line.endswith(target_iqn(NAS, rec)))
        lab.ssh(NAS, f"tgtadm --lld iscsi --mode target --op delete --force --tid {tid}")
        p = cli(lab, "check", check=False)
        assert p.returncode == 9, p.stdout
        for name in (f"{NAS}/{rec}", f"{NODE}:{ovl}", f"{NODE}:{tw}", ghost):
            assert name in p.stdout, (name, p.stdout)
        plan = cli(lab, "repair", "--dry-run").stdout
        assert "would:" in plan and qsd_pids(lab, ovl), plan
        p = cli(lab, "repair", "--json")
        assert p.returncode == 0, p.stdout
        assert not qsd_pids(lab, ovl) and ghost not in targets(lab)
        assert tw not in lab.out(NODE, "zfs list -H -o name").split()
        assert read_through(lab, NODE, rec, 8 * MiB) == sha
        assert cli(lab, "check").returncode == 0
        # what may hold a VM's only data is left, and said
        mp = lab.out(NODE, f"zfs create -o imgstor:role=temp-write {full} && "
                           f"zfs get -H -o value mountpoint {full}")
        lab.ssh(NODE, f"qemu-img create -q -f qcow2 {mp}/overlay.qcow2 8M && qemu-io -c "
                      f"'write -P 7 0 64k' {mp}/overlay.qcow2")
        lab.ssh(NAS, f"zfs create -o imgstor:role=volume {nasvol}")
        p = cli(lab, "repair", check=False)
        assert p.returncode == 9 and "left:" in p.stdout and full in p.stdout \
            and nasvol in p.stdout, p.stdout
        assert full in lab.out(NODE, "zfs list -H -o name").split()
        assert nasvol in lab.out(NAS, "zfs list -H -o name").split()
        p = cli(lab, "repair", "--destroy-orphans", check=False)
        assert p.returncode == 9 and nasvol in p.stdout, p.stdout      # never a NAS volume
        assert full not in lab.out(NODE, "zfs list -H -o name").split()
        assert nasvol in lab.out(NAS, "zfs list -H -o name").split()
        lab.destroy(NAS, nasvol)                   # what repair said to do by hand
        assert cli(lab, "check").returncode == 0
    finally:
        for host, ds in ((NAS, nasvol), (NODE, full)):
            if ds in lab.out(host, "zfs list -H -o name").split():
                lab.destroy(host, ds)
        cli(lab, "remove", "host", "storagemap", NAS, rec, check=False)
        cli(lab, "remove", "host", "storageimg", NAS, "tank", rec, check=False)
