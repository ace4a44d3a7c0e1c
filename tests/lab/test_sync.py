"""Sync mode end to end on the userspace lab (zfs-fuse file volumes, tgtd, libiscsi, a
qcow2 overlay in qemu-storage-daemon exported over NBD): the VM (qemu-io through the
export) writes during the copy, the merge and after; the NAS gets every byte back."""
from __future__ import annotations

import glob
import json
import os
import re
import time
import uuid

import pytest

from imgstor.state import Store
from imgstor.workflows.storagemap import target_iqn
from tests.conftest import Lab
from tests.lab.test_direct import NAS, cli, maps, nas_file, opts, read_through, targets
from tests.lab.test_overlay import SIZE, Image, nbd, pattern_writer, put

pytestmark = pytest.mark.lab
NODE, OTHER = "compute-0-0", "compute-0-1"
MiB = 1 << 20


def prefilled(lab: Lab, tag: str) -> tuple[str, Image]:
    """A SIZE volume full of random data, written over direct mode from OTHER, unmapped."""
    vol = f"{tag}-{uuid.uuid4().hex[:6]}"
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, OTHER, f"{SIZE // MiB}M")
    data = os.urandom(SIZE)
    path = f"/tmp/prefill-{vol}.bin"
    with open(path, "wb") as f:
        f.write(data)
    try:
        lab.ssh(OTHER, f"qemu-img convert -n -f raw {path} --target-image-opts "
                       f"'{opts(lab, vol, OTHER)}'")
    finally:
        os.unlink(path)
    cli(lab, "remove", "host", "storagemap", NAS, vol)
    return vol, Image(data)


def wait_state(lab: Lab, vol: str, want: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        row = maps(lab)[vol]
        if row["state"] == want:
            return row
        assert time.monotonic() < deadline, f"{vol} still {row['state']}, not {want}"
        time.sleep(0.3)


def job_logs(lab: Lab) -> str:
    return "".join(open(p).read() for p in sorted(glob.glob(str(lab.dir / "jobs" / "*.log"))))


def node_sha(lab: Lab, vol: str) -> str:
    mp = lab.mountpoint(NODE, f"tank/{vol}")
    return lab.out(NODE, f"sha256sum < {mp}/disk.raw").split()[0]


def nothing_left_on_node(lab: Lab, vol: str) -> None:
    ds = lab.out(NODE, "zfs list -H -o name -t all")
    assert f"tank/{vol}" not in ds.split() and f"tank/{vol}-temp-write" not in ds
    assert vol not in lab.out(NODE, "ps -eo args | grep [q]emu-storage-daemon || true")
    assert lab.ssh(NODE, f"test -e /run/imgstor/nbd/{vol}.sock", check=False).returncode != 0


def test_sync_walkthrough(lab: Lab) -> None:
    vol, img = prefilled(lab, "sync")
    out = cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M",
              "img_sync=yes").stdout
    assert out == f"mapping  {NAS} : tank / {vol}  on  {NODE}\n{nbd(vol)}\n", out
    first = maps(lab)[vol]
    assert first["state"] in ("NAS->VM", "merging", "mapped")
    assert first["state"] == "mapped" or first["job"].startswith("sync-in-")
    # the VM writes while the copy and the merge run ...
    w = pattern_writer(lab, img, vol, 80, seed=3)
    row = wait_state(lab, vol, "mapped")
    assert w.wait(timeout=120) == 0, w.stderr.read()
    # ... and after the pivot, on the local copy alone
    put(lab, img, vol, 5 * MiB, os.urandom(MiB), "after")
    assert row["target"] is None and target_iqn(NAS, vol) not in targets(lab)
    logs = job_logs(lab)
    assert "state NAS->VM -> merging" in logs and "state merging -> mapped" in logs, logs
    assert node_sha(lab, vol) == img.sha()
    assert lab.out(NODE, f"zfs get -H -o value imgstor:role tank/{vol}") == "local-copy"
    devs = json.loads(cli(lab, "list", "host", "storagedev", NODE, "--json").stdout)["rows"]
    d = next(d for d in devs if d["zvol"] == vol)
    assert (d["lvm"], d["status"], d["is_started"]) == (nbd(vol), "linear", 1), d
    assert cli(lab, "list", "host", "storagemap", NAS, "--verify").returncode == 0

    # unmap: returns at once; NAS<-VM, then unmapped with the NAS holding every write
    out = cli(lab, "remove", "host", "storagemap", NAS, vol,
              env={"IMGSTOR_PAUSE": "job:quiesce:6"}).stdout   # hold NAS<-VM a moment
    assert out == f"unmapping   {NAS} : {vol}\nSuccess\n", out
    assert maps(lab)[vol]["state"] == "NAS<-VM"
    # a map while the sync back runs is "busy" (exit 5), with the reason
    p = cli(lab, "add", "host", "storagemap", NAS, "tank", vol, OTHER, "32M", check=False)
    assert p.returncode == 5 and "being synced back" in p.stderr, p.stderr
    wait_state(lab, vol, "unmapped")
    assert maps(lab)[vol]["host"] is None
    assert lab.out(NAS, f"sha256sum < {nas_file(lab, vol)}").split()[0] == img.sha()
    nothing_left_on_node(lab, vol)

    # mapped direct elsewhere: the same bytes
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, OTHER, "32M")
    assert read_through(lab, OTHER, vol, SIZE) == img.sha()
    cli(lab, "remove", "host", "storagemap", NAS, vol)
    assert cli(lab, "list", "host", "storagemap", NAS, "--verify").returncode == 0
    cli(lab, "remove", "host", "storageimg", NAS, "tank", vol)


def test_unmap_during_copy_merges_into_the_nas(lab: Lab) -> None:
    """Unmap while NAS->VM: the copy is cancelled and the VM's writes go to the origin."""
    vol, img = prefilled(lab, "cancel")
    env = {"IMGSTOR_PAUSE": "job:trust:30"}     # the monitor waits before its copy
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
        env=env)
    put(lab, img, vol, 3 * MiB, os.urandom(2 * MiB), "during")
    assert maps(lab)[vol]["state"] == "NAS->VM"
    out = json.loads(cli(lab, "remove", "host", "storagemap", NAS, vol, "--json").stdout)
    assert "NAS<-VM (cancel" in out["message"], out
    wait_state(lab, vol, "unmapped")
    assert lab.out(NAS, f"sha256sum < {nas_file(lab, vol)}").split()[0] == img.sha()
    nothing_left_on_node(lab, vol)
    assert target_iqn(NAS, vol) not in targets(lab)
    cli(lab, "remove", "host", "storageimg", NAS, "tank", vol)


def test_unmap_during_merging_waits_for_the_merge(lab: Lab) -> None:
    vol, img = prefilled(lab, "mrg")
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
        env={"IMGSTOR_PAUSE": "job:merge:8"})      # the monitor rests once merging
    wait_state(lab, vol, "merging")
    put(lab, img, vol, 7 * MiB, os.urandom(MiB), "merging")
    out = json.loads(cli(lab, "remove", "host", "storagemap", NAS, vol, "--json").stdout)
    assert "merge finishes first" in out["message"], out
    wait_state(lab, vol, "unmapped")
    assert lab.out(NAS, f"sha256sum < {nas_file(lab, vol)}").split()[0] == img.sha()
    nothing_left_on_node(lab, vol)
    cli(lab, "remove", "host", "storageimg", NAS, "tank", vol)


SYNC_IN = ("trust", "copy", "merge", "merged", "pivot")
SYNC_BACK = ("quiesce", "trust", "send", "cleanup")


def prefilled_then_removed(lab: Lab, tag: str):
    """Fixture body: a prefilled volume (``prefilled``), unmapped and removed afterwards."""
    vol, img = prefilled(lab, tag)
    yield vol, img
    cli(lab, "remove", "host", "storagemap", NAS, vol, "--wait", check=False)
    cli(lab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)


@pytest.fixture
def crash_vol(lab: Lab):
    yield from prefilled_then_removed(lab, "crash")


def resume_after_death(lab: Lab, vol: str, *, last: bool) -> None:
    """Wait until the volume's monitor died (its job owned by a dead pid; with ``last``
    the job may be done already), then `imgstor monitor --resume` (cron's refresh)."""
    deadline = time.monotonic() + 90
    while True:
        st = Store(str(lab.dir / "state.json")).read().to_dict()
        js = [j for j in st["jobs"].values() if j["volume"] == f"{NAS}/{vol}"]
        if last and not js:
            break
        if js and js[0]["owner"] and not os.path.exists(f"/proc/{js[0]['owner']['pid']}"):
            break
        assert time.monotonic() < deadline, (vol, js, maps(lab)[vol])
        time.sleep(0.3)
    cli(lab, "monitor", "--resume")


@pytest.mark.parametrize("phase", SYNC_IN)
def test_map_monitor_killed_after_each_phase_then_resumed(lab: Lab, crash_vol, phase) -> None:
    """The monitor SIGKILLed right after recording each phase: `monitor --resume` (what
    cron's refresh runs) continues from it, and the data is intact."""
    vol, img = crash_vol
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
        env={"IMGSTOR_FAULT": f"job:{phase}"})
    put(lab, img, vol, MiB, os.urandom(MiB), "before")
    resume_after_death(lab, vol, last=phase == SYNC_IN[-1])
    wait_state(lab, vol, "mapped")
    put(lab, img, vol, 9 * MiB, os.urandom(MiB), "after")
    assert node_sha(lab, vol) == img.sha()


@pytest.mark.parametrize("phase", SYNC_BACK)
def test_unmap_monitor_killed_after_each_phase_then_resumed(lab: Lab, crash_vol,
                                                            phase) -> None:
    vol, img = crash_vol
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
        "--wait")
    put(lab, img, vol, 2 * MiB, os.urandom(MiB), "mapped")
    cli(lab, "remove", "host", "storagemap", NAS, vol, env={"IMGSTOR_FAULT": f"job:{phase}"})
    resume_after_death(lab, vol, last=phase == SYNC_BACK[-1])
    wait_state(lab, vol, "unmapped")
    assert lab.out(NAS, f"sha256sum < {nas_file(lab, vol)}").split()[0] == img.sha()
    nothing_left_on_node(lab, vol)


def test_copy_receiver_killed_mid_stream_is_started_again(lab: Lab, crash_vol,
                                                           tmp_path) -> None:
    """`zfs receive` killed on the node during the copy (sync_bwlimit slows the copy so
    the kill lands mid-stream): the monitor starts the copy again and converges."""
    vol, img = crash_vol
    cfg = tmp_path / "imgstor.toml"
    cfg.write_text(lab.config_path.read_text().replace(
        "overcommit = 100.0", 'overcommit = 100.0\nsync_bwlimit = "4M"'))
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
        config=cfg)
    deadline = time.monotonic() + 30
    while lab.ssh(NODE, "pkill -KILL -f '^zfs (receive|recv) '", check=False).returncode != 0:
        assert time.monotonic() < deadline, "no zfs receive ran on the node"
        time.sleep(0.2)
    wait_state(lab, vol, "mapped", timeout=180)
    assert "starting it again" in job_logs(lab)
    assert node_sha(lab, vol) == img.sha()


def test_storage_network_carries_the_iscsi_session_and_the_copy(lab: Lab, tmp_path) -> None:
    """ib_net: the lab's second network (each host's data_address in the config): the
    node's iSCSI session to the NAS and the NAS's copy to the node use it (`ss` on the
    node), never the management addresses."""
    nas_data, node_data = lab.host(NAS)["data_address"], lab.host(NODE)["data_address"]
    nas_mgmt = lab.host(NAS)["address"]
    vol, img = prefilled(lab, "ibnet")
    cfg = tmp_path / "imgstor.toml"
    cfg.write_text(lab.config_path.read_text().replace(
        "overcommit = 100.0", 'overcommit = 100.0\nsync_bwlimit = "2M"'))   # a slow copy
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
        config=cfg)
    iscsi = copy = False
    deadline = time.monotonic() + 60
    while not (iscsi and copy):
        ss = lab.out(NODE, "ss -Htn state established")
        iscsi |= f"{nas_data}:3260" in ss
        copy |= bool(re.search(rf"{re.escape(node_data)}:22\s+{re.escape(nas_data)}:\d+", ss))
        assert f"{nas_mgmt}:3260" not in ss, ss
        assert time.monotonic() < deadline, (iscsi, copy, ss)
        time.sleep(0.2)
    wait_state(lab, vol, "mapped", timeout=180)
    assert node_sha(lab, vol) == img.sha()
    cli(lab, "remove", "host", "storagemap", NAS, vol, "--wait")
    cli(lab, "remove", "host", "storageimg", NAS, "tank", vol)
