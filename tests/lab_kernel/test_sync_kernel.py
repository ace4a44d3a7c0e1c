"""Sync mode on the kernel lab (issue 10): dm overlay over the iSCSI disk (LIO +
open-iscsi), OpenZFS zvols copied NAS -> node by imgstor's copy jobs, the merge into the
local copy and the pivot to dm linear, then the sync back; and an unmap during NAS->VM
(the writes merge into the NAS volume over iSCSI).  The VM is played by dd on the overlay
device; the bytes it must hold are kept here and compared by sha256."""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid

import pytest

from imgstor.workflows.storagemap import target_iqn
from tests.lab_kernel.test_imgstor_kernel import NAS, cli, sessions

pytestmark = pytest.mark.kernel_lab
NODE, OTHER = "compute-0-0", "compute-0-1"
MiB = 1 << 20
SIZE = 64 * MiB


class Image:
    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)

    def sha(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def dd_in(klab, host: str, dev: str, off_mib: int, data: bytes, img: Image | None) -> None:
    klab.out(host, f"dd of={dev} bs=1M seek={off_mib} conv=notrunc,fsync oflag=direct "
                   "status=none", input=data)
    if img is not None:
        img.data[off_mib * MiB:off_mib * MiB + len(data)] = data


def sha(klab, host: str, dev: str) -> str:
    return klab.out(host, f"head -c {SIZE} {dev} | sha256sum").split()[0]


def row(klab, vol: str) -> dict:
    rows = json.loads(cli(klab, "list", "host", "storagemap", NAS, "--json").stdout)["rows"]
    return next(r for r in rows if r["zvol"] == vol)


def wait_state(klab, vol: str, want: str, timeout: float = 400) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = row(klab, vol)
        if r["state"] == want:
            return r
        assert time.monotonic() < deadline, f"{vol}: still {r['state']}, not {want}"
        time.sleep(2)


def prefilled(klab, tag: str) -> tuple[str, Image]:
    vol = f"{tag}-{uuid.uuid4().hex[:6]}"
    out = cli(klab, "add", "host", "storagemap", NAS, "tank", vol, OTHER, "64M").stdout
    dev = re.search(r"\n(/dev/sd[a-z]+)\n", out).group(1)
    img = Image(os.urandom(SIZE))
    dd_in(klab, OTHER, dev, 0, bytes(img.data), None)
    cli(klab, "remove", "host", "storagemap", NAS, vol)
    return vol, img


def nothing_left(klab, vol: str) -> None:
    assert f"tank/{vol}" not in klab.out(NODE, "zfs list -H -o name -t all").split()
    assert f"{vol}-temp-write" not in klab.out(NODE, "zfs list -H -o name -t all")
    assert vol not in klab.out(NODE, "dmsetup ls")
    assert target_iqn(NAS, vol) not in sessions(klab, NODE)
    assert target_iqn(NAS, vol) not in klab.out(NAS, "targetcli ls /iscsi")


def tags(klab, host: str, snap: str) -> list[str]:
    out = klab.out(host, f"zfs holds -H {snap}")
    return sorted(line.split("\t")[1] for line in out.splitlines() if line.strip())


def snaps(klab, host: str, ds: str) -> list[str]:
    out = klab.out(host, f"zfs list -H -o name -t snapshot -s createtxg -d 1 {ds}")
    return [s for s in out.split() if "@imgstor-" in s]


def test_sync_walkthrough_dm_zvol_lio(kernel_lab) -> None:
    """Map with img_sync: writes during the copy, on the local copy, a periodic pull (holds
    on OpenZFS), writes after it, the unmap's sync back: the NAS has every byte."""
    klab = kernel_lab
    vol, img = prefilled(klab, "ksync")
    out = cli(klab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "64M",
              "img_sync=yes").stdout
    dev = f"/dev/mapper/{vol}-snap"
    assert out == f"mapping  {NAS} : tank / {vol}  on  {NODE}\n{dev}\n", out
    dd_in(klab, NODE, dev, 3, os.urandom(2 * MiB), img)          # during the copy
    r = wait_state(klab, vol, "mapped")
    assert r["target"] is None
    dd_in(klab, NODE, dev, 40, os.urandom(MiB), img)             # on the local copy
    assert sha(klab, NODE, f"/dev/zvol/tank/{vol}") == img.sha()
    assert "linear" in klab.out(NODE, f"dmsetup table {vol}-snap")
    assert target_iqn(NAS, vol) not in sessions(klab, NODE)

    # the periodic pull on OpenZFS: the last common snapshot holds ``imgstor-base`` on both
    # sides (``zfs holds``, which zfs-fuse cannot run); a pull moves the hold to its own
    # snapshot and releases the previous base.  Due at once through the volume's frequency.
    ds = f"tank/{vol}"
    (base,) = snaps(klab, NAS, ds)
    short = base.split("@")[1]
    assert short.startswith("imgstor-in-")
    assert tags(klab, NAS, base) == tags(klab, NODE, f"{ds}@{short}") == ["imgstor-base"]
    try:
        cli(klab, "set", "host", "zvolattr", NAS, vol, "frequency", "1")
        time.sleep(1.5)
        out = json.loads(cli(klab, "refresh", "--json").stdout)["rows"]
        mine = [r for r in out if r["volume"] == f"{NAS}/{vol}" and r["what"] == "pull"]
        assert mine and mine[0]["action"] == "started (NAS<-VM sched)", out
        deadline = time.monotonic() + 400
        while row(klab, vol)["state"] != "mapped" or row(klab, vol)["job"]:
            assert time.monotonic() < deadline, row(klab, vol)
            time.sleep(2)
    finally:
        cli(klab, "remove", "host", "zvolattr", NAS, vol, "frequency", check=False)
    new = snaps(klab, NAS, ds)[-1]
    nshort = new.split("@")[1]
    assert nshort.startswith("imgstor-pull-"), new
    assert tags(klab, NAS, new) == tags(klab, NODE, f"{ds}@{nshort}") == ["imgstor-base"]
    assert tags(klab, NAS, base) == tags(klab, NODE, f"{ds}@{short}") == []
    dd_in(klab, NODE, dev, 50, os.urandom(MiB), img)             # after the pull
    hostile_stream_refused(klab, vol)

    cli(klab, "remove", "host", "storagemap", NAS, vol, "--wait")
    assert row(klab, vol)["state"] == "unmapped"
    assert sha(klab, NAS, f"/dev/zvol/tank/{vol}") == img.sha()
    # no hold left on the NAS, nothing on the node
    assert [tags(klab, NAS, s) for s in snaps(klab, NAS, ds)] == \
        [[] for _ in snaps(klab, NAS, ds)]
    nothing_left(klab, vol)
    cli(klab, "remove", "host", "storageimg", NAS, "tank", vol)


def test_unmap_during_copy_merges_into_the_nas_dm(kernel_lab) -> None:
    klab = kernel_lab
    vol, img = prefilled(klab, "kcancel")
    cli(klab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "64M", "img_sync=yes",
        env={"IMGSTOR_PAUSE": "job:trust:60"})
    dev = f"/dev/mapper/{vol}-snap"
    dd_in(klab, NODE, dev, 10, os.urandom(3 * MiB), img)
    assert row(klab, vol)["state"] == "NAS->VM"
    cli(klab, "remove", "host", "storagemap", NAS, vol, "--wait")
    assert sha(klab, NAS, f"/dev/zvol/tank/{vol}") == img.sha()
    nothing_left(klab, vol)
    cli(klab, "remove", "host", "storageimg", NAS, "tank", vol)


def hostile_stream_refused(klab, vol: str) -> None:
    """Issue 18 on OpenZFS: root on the node, with the sync key the pull left there, pipes
    a filesystem with its properties (send -p, a canary mountpoint) into the NAS's gate,
    named like a zvol: refused before zfs receive, nothing created or mounted."""
    evil, kd = f"tank/{vol}-evil", "/root/.ssh/imgstor-sync"
    klab.out(NODE, f"zfs create -o mountpoint=/var/tmp/{vol}-canary {evil} && "
                   f"zfs snapshot {evil}@s")
    before = klab.out(NAS, "zfs list -H -o name -t all")
    ssh = (f"ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i {kd}/id_ed25519 "
           f"-o UserKnownHostsFile={kd}/known_hosts -o HostKeyAlias=imgstor-{NAS} "
           f"{klab.host(NAS)['address']}")
    try:
        for how in ("-p ", ""):
            p = klab.ssh(NODE, f"zfs send {how}{evil}@s | {ssh} "
                               f"'imgstor-sync-gate receive tank/{vol}-x'")
            assert p.returncode == 2, p.stderr
            assert (b"compound stream" if how else b"is expected from") in p.stderr, p.stderr
    finally:
        klab.out(NODE, f"zfs destroy -r {evil}")
    assert klab.out(NAS, "zfs list -H -o name -t all") == before
    assert f"{vol}-canary" not in klab.out(NAS, "cat /proc/mounts")
