"""Sync mode's qcow2 overlay on the userspace lab: a real qemu-storage-daemon in a compute
node's namespaces over a real direct map (tgtd + libiscsi) of a NAS file volume.

A VM is played by qemu-io / qemu-img writing through the NBD export.  The expected image
is built here, write by write, in order; sha256 compares it with the local copy (merge)
or the NAS volume (cancel).  A writer keeps writing while the commit runs."""
from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid

import pytest

from imgstor.config import load_config
from imgstor.errors import Conflict
from imgstor.state import Store
from imgstor.transport import Cluster
from imgstor.workflows.storagemap import target_iqn
from tests.conftest import Lab
from tests.lab.test_direct import NAS, cli, nas_file

pytestmark = pytest.mark.lab
NODE = "compute-0-0"
MiB = 1 << 20
SIZE = 32 * MiB
CHUNK = 64 * 1024


class Image:
    """The bytes the volume must hold: the prefill, then every write in order."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)

    def write(self, off: int, data: bytes) -> None:
        self.data[off:off + len(data)] = data

    def sha(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def qemu_json(lab: Lab, vol: str) -> str:
    state = Store(str(lab.dir / "state.json")).read().to_dict()
    return state["volumes"][f"{NAS}/{vol}"]["extra"]["qemu_json"]


def nbd(vol: str) -> str:
    return f"nbd+unix:///{vol}?socket=/run/imgstor/nbd/{vol}.sock"


def put(lab: Lab, img: Image, vol: str, off: int, data: bytes, tag: str) -> None:
    """One write of DATA at OFF through the NBD export (qemu-img convert -n of a file)."""
    path = f"/tmp/ovl-{vol}-{tag}.bin"
    with open(path, "wb") as f:
        f.write(data)
    try:
        lab.ssh(NODE, f"qemu-io -f raw -c 'write -s {path} {off} {len(data)}' '{nbd(vol)}'")
    finally:
        os.unlink(path)
    img.write(off, data)


def pattern_writer(lab: Lab, img: Image, vol: str, n: int, seed: int) -> subprocess.Popen:
    """A background qemu-io writing N 64 KiB pattern chunks, 30 ms apart; the writes
    are applied to IMG now (they are in order and the test waits for the writer)."""
    cmds = []
    for i in range(n):
        off = ((seed * 7919 + i * 37) % (SIZE // CHUNK)) * CHUNK
        pat = (seed * 31 + i) % 255 + 1
        cmds += ["-c", f"write -P {pat} {off} {CHUNK}", "-c", "sleep 30"]
        img.write(off, bytes([pat]) * CHUNK)
    argv = ["qemu-io", "-f", "raw", *cmds, nbd(vol)]
    return subprocess.Popen(["ssh", "-F", str(lab.dir / "ssh_config"), NODE,
                             " ".join(f"'{a}'" for a in argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(p: subprocess.Popen) -> None:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and b"failed" not in out + err, (out, err)


def sha_on(lab: Lab, host: str, path: str) -> str:
    return lab.out(host, f"sha256sum < {path}").split()[0]


def qsd_pids(lab: Lab, vol: str) -> str:
    return lab.ssh(NODE, f"pgrep -f '[q]emu-storage-daemon.*/run/imgstor/qsd/{vol}[.]pid'",
                   check=False).stdout.decode().strip()


def sessions_to(lab: Lab, vol: str) -> int:
    """I_T nexus lines (logged-in initiators) under VOL's target on the NAS's tgtd."""
    text = lab.out(NAS, "tgtadm --lld iscsi --mode target --op show")
    iqn, n, inside = target_iqn(NAS, vol), 0, False
    for line in text.splitlines():
        if line.startswith("Target "):
            inside = line.split(": ", 1)[-1].strip() == iqn
        elif inside and "I_T nexus:" in line:
            n += 1
    return n


@pytest.fixture
def mapped(lab: Lab):
    """A 32 MiB NAS volume, prefilled with random data, mapped directly to NODE."""
    vol = f"ovq-{uuid.uuid4().hex[:6]}"
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M")
    prefill = os.urandom(SIZE)
    path = f"/tmp/ovl-{vol}-pre.bin"
    with open(path, "wb") as f:
        f.write(prefill)
    lab.ssh(NAS, f"cp {path} {nas_file(lab, vol)} && sync")
    os.unlink(path)
    assert lab.out(NAS, f"sha256sum < {nas_file(lab, vol)}").split()[0] == \
        hashlib.sha256(prefill).hexdigest()
    try:
        yield vol, Image(prefill)
    finally:
        with Cluster(load_config(str(lab.config_path))) as c:
            c.step(NODE, "overlay.remove", driver="qcow2", pool="tank", vol=vol)
        for ds in (f"tank/{vol}-temp-write", f"tank/{vol}"):
            if lab.ssh(NODE, f"zfs list {ds}", check=False).returncode == 0:
                lab.destroy(NODE, ds)
        cli(lab, "remove", "host", "storagemap", NAS, vol, check=False)
        cli(lab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)


def wait_merged(c: Cluster, vol: str) -> list[str]:
    seen = []
    deadline = time.monotonic() + 120
    while True:
        st = c.step(NODE, "overlay.status", driver="qcow2", pool="tank", vol=vol).facts
        seen.append(st["phase"])
        if st["phase"] == "merged":
            # "ready": the commit converged once; a writer still writing moves len ahead
            # of offset until the mirror catches up again (QEMU's active commit)
            assert st["done"] <= st["total"] and st["synced"] == f"{st['done']}/{st['total']}"
            return seen
        assert st["phase"] == "merging" and time.monotonic() < deadline, st
        time.sleep(0.2)


def test_qcow2_overlay_merge_into_local_copy(lab: Lab, mapped) -> None:
    vol, img = mapped
    args = {"driver": "qcow2", "pool": "tank", "vol": vol}
    with Cluster(load_config(str(lab.config_path))) as c:
        r = c.step(NODE, "overlay.create", origin=qemu_json(lab, vol), **args)
        assert r.changed and r.facts["device"] == nbd(vol) and r.facts["phase"] == "snapshot"
        pid = r.facts["pid"]
        # idempotent: a second create finds the same daemon (pid file + QMP socket)
        again = c.step(NODE, "overlay.create", origin=qemu_json(lab, vol), **args)
        assert not again.changed and again.facts["pid"] == pid and qsd_pids(lab, vol) == str(pid)
        assert lab.out(NODE, f"zfs get -H -o value imgstor:role tank/{vol}-temp-write") == \
            "temp-write"
        assert lab.out(NODE, "stat -c %a /run/imgstor/nbd") == "700"
        # the VM writes: the writes land in the overlay, the NAS volume stays as it was
        put(lab, img, vol, 3 * MiB + 4096, os.urandom(5 * MiB), "w1")
        put(lab, img, vol, 20 * MiB, os.urandom(MiB), "w2")
        assert sessions_to(lab, vol) == 1
        # the local copy: the origin as it is (nobody writes it), into <pool>/<vol>/disk.raw
        lab.ssh(NODE, f"zfs create tank/{vol}")
        local = f"{lab.mountpoint(NODE, f'tank/{vol}')}/disk.raw"
        lab.ssh(NODE, f"qemu-img convert -O raw '{qemu_json(lab, vol)}' {local}")
        assert sha_on(lab, NODE, local) == sha_on(lab, NAS, nas_file(lab, vol))
        # merge while a writer writes
        w = pattern_writer(lab, img, vol, 60, seed=1)
        time.sleep(0.3)
        r = c.step(NODE, "overlay.merge", into="local", local=local, **args)
        assert r.changed and r.facts["phase"] == "merging"
        assert w.poll() is None, "the writer must still be writing while the commit runs"
        assert not c.step(NODE, "overlay.merge", into="local", local=local, **args).changed
        phases = wait_merged(c, vol)
        finish(w)
        assert w.returncode == 0
        # cancel is refused now: the overlay merges into the local copy
        with pytest.raises(Conflict):
            c.step(NODE, "overlay.merge", into="origin", **args)
        r = c.step(NODE, "overlay.linear", **args)
        assert r.changed and r.facts["phase"] == "pivoted" and r.facts["temp_write_destroyed"]
        assert not c.step(NODE, "overlay.linear", **args).changed
        st = c.step(NODE, "overlay.status", **args).facts
        assert (st["phase"], st["into"], st["status"]) == ("pivoted", "local", "linear")
        assert st["nodes"] == ["local", "local-file"]
        # the iSCSI session is gone, the VM's device keeps working on the local copy
        assert sessions_to(lab, vol) == 0
        put(lab, img, vol, 30 * MiB, os.urandom(MiB), "w3")
        assert lab.ssh(NODE, f"zfs list tank/{vol}-temp-write", check=False).returncode != 0
        r = c.step(NODE, "overlay.remove", **args)
        assert r.changed and not r.facts["temp_write_kept"]
        assert not c.step(NODE, "overlay.remove", **args).changed
    assert sha_on(lab, NODE, local) == img.sha(), phases
    assert qsd_pids(lab, vol) == ""
    assert lab.out(NODE, f"ls /run/imgstor/nbd /run/imgstor/qsd | grep -c {vol} || true") == "0"


def test_qcow2_overlay_cancel_merges_into_the_nas_volume(lab: Lab, mapped) -> None:
    vol, img = mapped
    args = {"driver": "qcow2", "pool": "tank", "vol": vol}
    with Cluster(load_config(str(lab.config_path))) as c:
        c.step(NODE, "overlay.create", origin=qemu_json(lab, vol), **args)
        put(lab, img, vol, 0, os.urandom(6 * MiB), "c1")
        before = sha_on(lab, NAS, nas_file(lab, vol))
        assert before != img.sha()
        w = pattern_writer(lab, img, vol, 40, seed=2)
        time.sleep(0.3)
        r = c.step(NODE, "overlay.merge", into="origin", **args)
        assert r.changed and r.facts["into"] == "origin"
        assert w.poll() is None, "the writer must still be writing while the commit runs"
        wait_merged(c, vol)
        finish(w)
        r = c.step(NODE, "overlay.linear", **args)
        assert r.facts["phase"] == "pivoted" and r.facts["into"] == "origin"
        # the VM now runs on the NAS volume over iSCSI alone
        put(lab, img, vol, 31 * MiB, os.urandom(MiB), "c2")
        st = c.step(NODE, "overlay.status", **args).facts
        assert st["nodes"] == ["origin", "origin-file"] and sessions_to(lab, vol) == 1
        c.step(NODE, "overlay.remove", **args)
    assert sessions_to(lab, vol) == 0
    assert sha_on(lab, NAS, nas_file(lab, vol)) == img.sha()
    assert qsd_pids(lab, vol) == ""


def test_qcow2_overlay_survives_its_daemon(lab: Lab, mapped) -> None:
    """The daemon killed (a node's OOM killer, a reboot of /run): overlay.create starts a
    new one on the same overlay file, and the VM's writes are all still there."""
    vol, img = mapped
    args = {"driver": "qcow2", "pool": "tank", "vol": vol}
    with Cluster(load_config(str(lab.config_path))) as c:
        pid = c.step(NODE, "overlay.create", origin=qemu_json(lab, vol), **args).facts["pid"]
        put(lab, img, vol, 7 * MiB, os.urandom(3 * MiB), "k1")
        lab.ssh(NODE, f"kill -9 {pid}")
        st = c.step(NODE, "overlay.status", **args).facts
        assert not st["exists"]
        r = c.step(NODE, "overlay.create", origin=qemu_json(lab, vol), **args)
        assert r.changed and r.facts["pid"] != pid and not r.facts["overlay_created"]
        got = lab.out(NODE, f"qemu-img convert -O raw '{nbd(vol)}' /tmp/ovl-{vol}-r.raw && "
                            f"sha256sum < /tmp/ovl-{vol}-r.raw; rm -f /tmp/ovl-{vol}-r.raw")
        assert got.split()[0] == img.sha()
