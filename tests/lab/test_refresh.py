"""`imgstor refresh` on the userspace lab: a dead monitor restarted, the periodic pull
(the NAS's newest snapshot holds exactly the VM's data), one refresh at a time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgstor.state import Store
from tests.conftest import Lab
from tests.lab.test_direct import NAS, ROOT, cli, maps, nas_file
from tests.lab.test_overlay import put
from tests.lab.test_sync import (
    NODE,
    MiB,
    node_sha,
    nothing_left_on_node,
    prefilled_then_removed,
    wait_state,
)

pytestmark = pytest.mark.lab


def jobs_of(lab: Lab, vol: str) -> list[dict]:
    st = Store(str(lab.dir / "state.json")).read().to_dict()
    return [j for j in st["jobs"].values() if j["volume"] == f"{NAS}/{vol}"]


def wait_no_job(lab: Lab, vol: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while jobs_of(lab, vol):
        assert time.monotonic() < deadline, jobs_of(lab, vol)
        time.sleep(0.3)


def config_with(lab: Lab, tmp_path: Path, **defaults) -> Path:
    text = lab.config_path.read_text()
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in defaults.items())
    p = tmp_path / "imgstor.toml"
    p.write_text(text.replace("[defaults]\n", "[defaults]\n" + extra, 1))
    return p


def nas_snapshots(lab: Lab, vol: str) -> list[str]:
    out = lab.out(NAS, f"zfs list -H -o name -t snapshot -s createtxg -d 1 tank/{vol}")
    return [n for n in out.split() if "@imgstor-" in n]


def snapshot_sha(lab: Lab, snap: str) -> str:
    """sha256 of disk.raw in NAS snapshot SNAP, read from a clone (zfs-fuse has no
    .zfs/snapshot directory)."""
    clone = f"tank/chk-{os.getpid()}"
    lab.ssh(NAS, f"zfs clone {snap} {clone}")
    try:
        mp = lab.mountpoint(NAS, clone)
        return lab.out(NAS, f"sha256sum < {mp}/disk.raw").split()[0]
    finally:
        for _ in range(20):
            if lab.ssh(NAS, f"zfs destroy {clone}", check=False).returncode == 0:
                break
            time.sleep(0.5)


@pytest.fixture
def svol(lab: Lab):
    yield from prefilled_then_removed(lab, "rfr")


def test_refresh_restarts_a_killed_monitor(lab: Lab, svol) -> None:
    vol, img = svol
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
        env={"IMGSTOR_FAULT": "job:copy"})
    put(lab, img, vol, MiB, os.urandom(MiB), "before")
    deadline = time.monotonic() + 90
    while True:                        # the monitor killed itself after the copy phase
        js = jobs_of(lab, vol)
        if js and js[0]["owner"] and not os.path.exists(f"/proc/{js[0]['owner']['pid']}"):
            break
        assert time.monotonic() < deadline, js
        time.sleep(0.3)
    rows = json.loads(cli(lab, "refresh", "--json").stdout)["rows"]
    mine = [r for r in rows if r["volume"] == f"{NAS}/{vol}"]
    assert mine and mine[0]["what"] == "job" and "started monitor" in mine[0]["action"], rows
    wait_state(lab, vol, "mapped")
    put(lab, img, vol, 9 * MiB, os.urandom(MiB), "after")
    assert node_sha(lab, vol) == img.sha()


def test_periodic_pull_sends_the_vms_data_to_the_nas(lab: Lab, svol, tmp_path) -> None:
    vol, img = svol
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
        "--wait")
    row = maps(lab)[vol]
    assert row["state"] == "mapped" and row["nextsync"], row
    fast = config_with(lab, tmp_path, sync_frequency=1, sync_keep=2)
    for i in range(3):
        put(lab, img, vol, (2 + 3 * i) * MiB, os.urandom(MiB), f"pull{i}")
        time.sleep(1.2)
        env = {"IMGSTOR_PAUSE": "job:trust:3"} if i == 0 else {}
        rows = json.loads(cli(lab, "refresh", "--json", config=fast, env=env).stdout)["rows"]
        mine = [r for r in rows if r["volume"] == f"{NAS}/{vol}"]
        assert mine and mine[0]["action"] == "started (NAS<-VM sched)", rows
        if i == 0:                     # the monitor rests after its trust phase
            assert maps(lab)[vol]["state"] == "NAS<-VM sched"
            # a refresh meanwhile starts no second pull
            again = json.loads(cli(lab, "refresh", "--json", config=fast).stdout)["rows"]
            assert not [r for r in again if r["what"] == "pull"
                        and r["volume"] == f"{NAS}/{vol}"], again
        wait_no_job(lab, vol)
        row = maps(lab)[vol]
        assert row["state"] == "mapped" and not row.get("error"), row
        snaps = nas_snapshots(lab, vol)
        assert snaps[-1].split("@")[1].startswith("imgstor-pull-"), snaps
        assert snapshot_sha(lab, snaps[-1]) == img.sha() == node_sha(lab, vol)
    # sync_keep=2 on each side; the newest (the last common one) is among them
    assert len(nas_snapshots(lab, vol)) == 2, nas_snapshots(lab, vol)
    node_snaps = lab.out(NODE, f"zfs list -H -o name -t snapshot -r tank/{vol}").split()
    assert len([s for s in node_snaps if "@imgstor-" in s]) == 2, node_snaps
    assert nas_snapshots(lab, vol)[-1].split("@")[1] in " ".join(node_snaps)
    # the unmap still brings every write back
    put(lab, img, vol, 20 * MiB, os.urandom(MiB), "last")
    cli(lab, "remove", "host", "storagemap", NAS, vol, "--wait")
    assert lab.out(NAS, f"sha256sum < {nas_file(lab, vol)}").split()[0] == img.sha()
    nothing_left_on_node(lab, vol)


def test_a_second_refresh_during_one_exits_quietly(lab: Lab) -> None:
    first = subprocess.Popen([sys.executable, "-m", "imgstor", "--config",
                              str(lab.config_path), "refresh"], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "IMGSTOR_PAUSE": "refresh:4"})
    try:
        time.sleep(1.5)
        assert first.poll() is None
        t0 = time.monotonic()
        p = cli(lab, "refresh")
        assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
        assert time.monotonic() - t0 < 3          # it did not wait for the first
    finally:
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err


# ------------------------------------------------------------- check / repair
def test_check_and_repair_lost_and_orphan_targets(lab: Lab) -> None:
    from imgstor.workflows.storagemap import target_iqn
    from tests.lab.test_direct import read_through, targets, write_through
    from tests.lab.test_sync import OTHER
    vol = f"chk-{os.urandom(3).hex()}"
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, OTHER, "16M")
    try:
        sha = write_through(lab, OTHER, vol, 16, f"chk-{vol}")
        assert cli(lab, "check").returncode == 0
        iqn = target_iqn(NAS, vol)
        # tgtd's target deleted by hand: check names it (exit 9), repair puts it back
        tid = next(line.split()[1].rstrip(":") for line in targets(lab).splitlines()
                   if line.startswith("Target ") and line.endswith(iqn))
        lab.ssh(NAS, f"tgtadm --lld iscsi --mode target --op delete --force --tid {tid}")
        assert iqn not in targets(lab)
        p = cli(lab, "check", check=False)
        assert p.returncode == 9 and f"{NAS}/{vol}" in p.stdout \
            and "no target on the NAS" in p.stdout, p.stdout
        plan = cli(lab, "repair", "--dry-run").stdout
        assert "would:" in plan and iqn not in targets(lab), plan
        out = cli(lab, "repair").stdout
        assert f"{NAS}/{vol}" in out, out
        assert iqn in targets(lab)
        assert read_through(lab, OTHER, vol, 16 * MiB) == sha
        assert cli(lab, "check").returncode == 0
        # a target made by hand, named like imgstor's: an orphan, removed
        ghost = f"iqn.2001-04.com.{NAS}-ghost-{os.urandom(2).hex()}"
        lab.ssh(NAS, f"tgtadm --lld iscsi --mode target --op new --tid 900 -T {ghost}")
        p = cli(lab, "check", check=False)
        assert p.returncode == 9 and ghost in p.stdout and "orphan" in p.stdout, p.stdout
        out = cli(lab, "repair").stdout
        assert ghost in out and ghost not in targets(lab), out
        assert cli(lab, "check").returncode == 0
        # idempotent: nothing left to do
        p = cli(lab, "repair", "--json")
        assert p.returncode == 0 and json.loads(p.stdout)["rows"] == []
    finally:
        cli(lab, "remove", "host", "storagemap", NAS, vol, check=False)
        cli(lab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)


def test_unmap_during_a_pull_waits_for_it_then_syncs_back(lab: Lab, svol, tmp_path) -> None:
    vol, img = svol
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
        "--wait")
    put(lab, img, vol, 4 * MiB, os.urandom(MiB), "pulled")
    fast = config_with(lab, tmp_path, sync_frequency=1)
    time.sleep(1.2)
    cli(lab, "refresh", config=fast, env={"IMGSTOR_PAUSE": "job:trust:4"})
    assert maps(lab)[vol]["state"] == "NAS<-VM sched"
    put(lab, img, vol, 6 * MiB, os.urandom(MiB), "after-pull-snapshot")
    out = json.loads(cli(lab, "remove", "host", "storagemap", NAS, vol, "--json").stdout)
    assert "periodic pull finishes first" in out["message"], out
    wait_state(lab, vol, "unmapped", timeout=180)
    assert lab.out(NAS, f"sha256sum < {nas_file(lab, vol)}").split()[0] == img.sha()
    nothing_left_on_node(lab, vol)
