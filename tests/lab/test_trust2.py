"""Trust II (issue 21) on the userspace lab (qcow2 overlays in qemu-storage-daemon, tgt,
zfs-fuse): never a stale view after a restore, never an unmap under a running VM, NAS
properties validated, lost records taken back, a snapshot made on the NAS named.

- the qsd killed after the pivot's job-complete while the NAS cannot remove the target:
  refresh restores the overlay on the local copy (never a new one over the NAS volume),
  the VM's device reads its last writes, and the job reaches mapped once the NAS is back;
- an NBD client on the export: a second client is not served, the unmap exits 8 naming
  it, --force goes on and the NAS gets the data;
- rebuild with a forged imgstor:portal and imgstor:target: conflicts, nothing recorded;
- a state file restored from a backup older than two maps and a sync map: check names
  the three volumes, repair --adopt takes them back, check exits 0, each unmaps intact;
- a snapshot made by hand on the NAS after a pull: the next pull stops naming it, check
  names it, and once it is gone the pull sends.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from imgstor.state import Store
from tests.conftest import LAB, Lab
from tests.lab.test_direct import NAS, cli, maps, nas_file, nas_sha, write_through
from tests.lab.test_overlay import nbd, put
from tests.lab.test_restore import nbd_sha, restart
from tests.lab.test_sync import NODE, MiB, node_sha, prefilled, wait_state

pytestmark = pytest.mark.lab


def nas_file_sha(lab: Lab, vol: str) -> str:
    return lab.out(NAS, f"sha256sum < {nas_file(lab, vol)}").split()[0]


def state(lab: Lab) -> dict:
    # through the store: the file alone may lack its journal's transactions (issue 25)
    return Store(str(lab.dir / "state.json")).read().to_dict()


def jobs_of(lab: Lab, vol: str) -> list[dict]:
    return [j for j in state(lab)["jobs"].values() if j["volume"] == f"{NAS}/{vol}"]


def wait_for(what: str, cond, timeout: float = 120.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def monitor_failed(lab: Lab, vol: str) -> bool:
    """A try of the volume's job failed: recorded on the job (the runtime retries it after
    its backoff, the volume keeps its state)."""
    js = jobs_of(lab, vol)
    return bool(js) and bool(js[0].get("last_error")) and js[0].get("state") in ("retry",
                                                                                 "failed")


def tgtd_kill(lab: Lab) -> None:
    hosts = json.loads((lab.dir / "lab.json").read_text())["hosts"]
    pid = next(h["tgtd"] for h in hosts if h["name"] == NAS)
    os.kill(pid, signal.SIGKILL)


def unmap_all(lab: Lab, *vols: str) -> None:
    for vol in vols:
        cli(lab, "remove", "host", "storagemap", NAS, vol, "--force", "--wait", check=False)
        cli(lab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)


# ------------------------------------------------------------------ H1, qcow2
def test_qsd_killed_after_job_complete_with_the_nas_down_restores_on_the_local_copy(
        lab: Lab) -> None:
    vol, img = prefilled(lab, "h1q")
    try:
        # the monitor rests right after overlay.linear (job-complete done, the overlay
        # file and temp-write gone), before it removes the target
        cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
            env={"IMGSTOR_PAUSE": "job:linear:45"})
        put(lab, img, vol, 2 * MiB, os.urandom(MiB), "copying")
        wait_for("the pivot's job-complete", lambda: lab.ssh(
            NODE, f"zfs list tank/{vol}-temp-write", check=False).returncode != 0, 180)
        put(lab, img, vol, 20 * MiB, os.urandom(2 * MiB), "after-complete")   # on local
        tgtd_kill(lab)                          # the NAS cannot remove the target now
        restart(NODE, f"qsd:{vol}")             # and the VM's daemon dies
        wait_for("the monitor to fail its untarget", lambda: monitor_failed(lab, vol), 120)
        assert maps(lab)[vol]["state"] == "merging"
        rows = json.loads(cli(lab, "refresh", "--json").stdout)["rows"]
        mine = [r for r in rows if r["volume"] == f"{NAS}/{vol}" and r["what"] == "overlay"]
        assert mine and "local copy" in mine[0]["action"] and "failed" not in mine[0]["action"], \
            rows
        # the VM's device reads the VM's last writes, from the local copy alone
        assert nbd_sha(lab, vol) == img.sha()
        assert lab.ssh(NODE, f"zfs list tank/{vol}-temp-write", check=False).returncode != 0
        put(lab, img, vol, 30 * MiB, os.urandom(MiB), "restored")
        restart(NAS, "tgtd")                    # the NAS is back
        cli(lab, "refresh")
        wait_state(lab, vol, "mapped", timeout=180)
        assert node_sha(lab, vol) == img.sha() == nbd_sha(lab, vol)
        cli(lab, "remove", "host", "storagemap", NAS, vol, "--wait")
        assert nas_file_sha(lab, vol) == img.sha()
    finally:
        if lab.ssh(NAS, "tgtadm --lld iscsi --mode sys --op show", check=False).returncode:
            subprocess.run([str(LAB), "restart", NAS, "tgtd"], capture_output=True, timeout=60)
            cli(lab, "refresh", check=False)      # the other volumes' targets back
        unmap_all(lab, vol)


# ------------------------------------------------------------------ M4, L3
def test_an_nbd_client_makes_the_sync_unmap_exit_8_and_the_export_takes_one(lab: Lab) -> None:
    vol, img = prefilled(lab, "m4q")
    holder = None
    try:
        cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
            "--wait")
        put(lab, img, vol, 4 * MiB, os.urandom(MiB), "mapped")
        holder = subprocess.Popen(["ssh", "-F", str(lab.dir / "ssh_config"), NODE,
                                   f"exec qemu-io -f raw -c 'sleep 600000' '{nbd(vol)}'"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        sock = f"/run/imgstor/nbd/{vol}.sock"
        wait_for("qemu-io to connect", lambda: any(
            ln.split()[5:6] == ["03"] and ln.endswith(sock)
            for ln in lab.out(NODE, "cat /proc/net/unix").splitlines()), 30, 0.2)
        # a second client is not served while the first is connected
        p = lab.ssh(NODE, f"timeout 5 qemu-io -f raw -c 'read 0 4k' '{nbd(vol)}'", check=False)
        assert p.returncode == 124, (p.returncode, p.stdout, p.stderr)
        # the unmap: refused, naming the user; nothing changed
        p = cli(lab, "remove", "host", "storagemap", NAS, vol, check=False)
        assert p.returncode == 8 and "in use" in p.stderr and "(qemu-io)" in p.stderr, p
        assert maps(lab)[vol]["state"] == "mapped" and not jobs_of(lab, vol)
        # --force: the VM loses its disk, the NAS gets every write
        p = cli(lab, "remove", "host", "storagemap", NAS, vol, "--force", "--wait")
        assert "Success" in p.stdout, p
        assert maps(lab)[vol]["state"] == "unmapped"
        assert nas_file_sha(lab, vol) == img.sha()
        assert lab.ssh(NODE, f"test -e {sock}", check=False).returncode != 0   # no export
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        unmap_all(lab, vol)


# ------------------------------------------------------------------ M3
def test_rebuild_reports_forged_portal_and_target_and_records_nothing_of_them(
        lab: Lab, tmp_path) -> None:
    vols = [f"m3{t}-{os.urandom(3).hex()}" for t in "pto"]
    forged_portal, forged_target, honest = vols
    path = lab.dir / "state.json"
    kept = tmp_path / "state.json"
    try:
        for vol in vols:
            cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "8M")
        lab.ssh(NAS, f"zfs set imgstor:portal=10.9.9.9:3260 tank/{forged_portal}")
        lab.ssh(NAS, f"zfs set imgstor:target={target_iqn_of(honest)} tank/{forged_target}")
        Store(str(path)).fold()                 # the copy is then whole
        shutil.copy2(path, kept)
        p = cli(lab, "rebuild", "--force", "--json", check=False)
        assert p.returncode == 9, p
        rows = json.loads(p.stdout)["rows"]
        notes = {r["subject"]: r["found"] for r in rows if r["what"] == "note"}
        assert "imgstor:portal=10.9.9.9:3260: not a portal of nas-0-0" in \
            notes[f"{NAS}/{forged_portal}"]
        assert "not this volume's target" in notes[f"{NAS}/{forged_target}"]
        got = state(lab)["volumes"]
        assert f"{NAS}/{forged_portal}" not in got and f"{NAS}/{forged_target}" not in got
        assert got[f"{NAS}/{honest}"]["state"] == "mapped"
        assert not any("10.9.9.9" in json.dumps(v) for v in got.values())
    finally:
        if kept.exists():
            Store(str(path)).fold()
            shutil.copy2(kept, path)
        for vol in vols:
            lab.ssh(NAS, f"zfs inherit imgstor:portal tank/{vol}; "
                         f"zfs set imgstor:target={target_iqn_of(vol)} tank/{vol}", check=False)
        for f in lab.dir.glob("state.json.before-rebuild-*"):
            f.unlink()
        unmap_all(lab, *vols)


def target_iqn_of(vol: str) -> str:
    from imgstor.names import target_iqn
    return target_iqn(NAS, vol)


# ------------------------------------------------------------------ re-adopt
def test_a_state_file_restored_from_an_older_backup_is_adopted_back(lab: Lab,
                                                                    tmp_path) -> None:
    path = lab.dir / "state.json"
    backup = tmp_path / "state.json"
    if not path.exists():
        cli(lab, "list", "host", "storagemap", NAS)
    cli(lab, "check")                           # the lab agrees with its store now
    Store(str(path)).fold()                     # the backup is then whole
    shutil.copy2(path, backup)
    direct = [f"rad-{os.urandom(3).hex()}" for _ in range(2)]
    svol, img = prefilled(lab, "ras")
    try:
        sha = {}
        for i, vol in enumerate(direct):
            cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "8M")
            sha[vol] = write_through(lab, NODE, vol, 4, f"rad{i}")
        cli(lab, "add", "host", "storagemap", NAS, "tank", svol, NODE, "32M", "img_sync=yes",
            "--wait")
        put(lab, img, svol, 6 * MiB, os.urandom(MiB), "synced")
        Store(str(path)).fold()                 # no journal left to extend the backup
        shutil.copy2(backup, path)              # the backup, taken before the three maps
        p = cli(lab, "check", "--json", check=False)
        assert p.returncode == 9, p
        rows = json.loads(p.stdout)["rows"]
        lost = {r["subject"]: r for r in rows if r["what"] == "orphan-volume"}
        for vol in direct + [svol]:
            assert f"{NAS}:tank/{vol}" in lost, rows
            assert "repair --adopt" in lost[f"{NAS}:tank/{vol}"]["action"]
        assert f"direct mapped to {NODE}" in lost[f"{NAS}:tank/{direct[0]}"]["found"]
        assert f"sync mapped to {NODE}" in lost[f"{NAS}:tank/{svol}"]["found"]
        # what they hold on the hosts is theirs, not orphans to remove
        for r in rows:
            assert not any(v in r["subject"] for v in direct + [svol]) \
                or r["what"] == "orphan-volume", r
        p = cli(lab, "repair", "--adopt", "--json", check=False)
        done = {r["subject"]: r["action"] for r in json.loads(p.stdout)["rows"]}
        for vol in direct + [svol]:
            assert done[f"{NAS}:tank/{vol}"].startswith("taken back: mapped on"), done
        assert cli(lab, "check").returncode == 0
        for vol in direct:
            assert maps(lab)[vol]["state"] == "mapped"
            cli(lab, "remove", "host", "storagemap", NAS, vol)
            assert nas_sha(lab, vol, 4 * MiB) == sha[vol]
        cli(lab, "remove", "host", "storagemap", NAS, svol, "--wait")
        assert nas_file_sha(lab, svol) == img.sha()
        assert cli(lab, "check").returncode == 0
    finally:
        unmap_all(lab, *direct, svol)


# ------------------------------------------------------------------ L4
def test_a_snapshot_made_by_hand_on_the_nas_stops_the_pull_named_by_check(lab: Lab) -> None:
    vol, img = prefilled(lab, "l4f")
    snap = f"tank/{vol}@by-hand"
    try:
        cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
            "--wait")
        cli(lab, "set", "host", "zvolattr", NAS, vol, "frequency", "1")
        put(lab, img, vol, 3 * MiB, os.urandom(MiB), "pull1")
        time.sleep(1.5)
        cli(lab, "refresh")                      # the first pull, due
        wait_for("the first pull", lambda: not jobs_of(lab, vol)
                 and state(lab)["volumes"][f"{NAS}/{vol}"]["extra"].get("last_pull"), 180)
        assert nas_file_sha(lab, vol) == img.sha()
        lab.ssh(NAS, f"zfs snapshot {snap}")    # zfs-auto-snapshot, sanoid, a person
        put(lab, img, vol, 9 * MiB, os.urandom(MiB), "pull2")
        time.sleep(1.5)
        cli(lab, "refresh")                      # the next pull: stops, naming it
        wait_for("the pull to stop", lambda: monitor_failed(lab, vol), 120)
        (job,) = jobs_of(lab, vol)
        assert snap in job["last_error"] and "never destroys" in job["last_error"], job
        assert state(lab)["volumes"][f"{NAS}/{vol}"]["extra"]["foreign_snapshots"] == [snap]
        assert lab.out(NAS, f"zfs list -H -o name -t snapshot {snap}") == snap   # untouched
        p = cli(lab, "check", "--json", check=False)
        rows = [r for r in json.loads(p.stdout)["rows"] if r["what"] == "foreign-snapshot"]
        assert p.returncode == 9 and len(rows) == 1 and snap in rows[0]["found"], p.stdout
        # gone by hand: the next try sends, and check has nothing to say of it
        lab.destroy(NAS, snap)
        cli(lab, "monitor", "--resume")
        wait_for("the pull", lambda: not jobs_of(lab, vol), 180)
        assert nas_file_sha(lab, vol) == img.sha() == node_sha(lab, vol)
        assert "foreign_snapshots" not in state(lab)["volumes"][f"{NAS}/{vol}"]["extra"]
        assert not [r for r in json.loads(cli(lab, "check", "--json", check=False).stdout)["rows"]
                    if r["what"] == "foreign-snapshot"]
    finally:
        cli(lab, "remove", "host", "zvolattr", NAS, vol, "frequency", check=False)
        unmap_all(lab, vol)
