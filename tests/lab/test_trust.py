"""Trust I (issue 18, audit C1) on the userspace lab: a compromised node and a compromised
NAS reach nothing through imgstor's sync keys but the copies the frontend announced.

The hostile node is root on compute-0-1 after a real sync cycle (a sync map, a periodic
pull: its sync key and the NAS's gate are installed): it uses the key and pin it finds in
/root/.ssh/imgstor-sync.  Every attack is refused by the gate, nothing is created or
mounted on the NAS, and a later map of the VM it aimed at makes a fresh volume.  The
canary mountpoint is under /var/tmp (the lab hosts share this machine's tree).
"""
from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from imgstor import synctrust
from imgstor.config import load_config
from imgstor.transport import Cluster
from tests.conftest import Lab
from tests.lab.test_direct import NAS, cli, maps
from tests.lab.test_refresh import config_with, wait_no_job
from tests.lab.test_sync import wait_state

pytestmark = pytest.mark.lab
HOSTILE, VICTIM = "compute-0-1", "compute-0-0"
KD = "/root/.ssh/imgstor-sync"


def gate(lab: Lab, src: str, dst: str, request: str, stream: str) -> tuple[int, str]:
    """As root on SRC: STREAM (a shell pipeline) into DST's gate with SRC's sync key."""
    ssh = (f"ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i {KD}/id_ed25519 "
           f"-o UserKnownHostsFile={KD}/known_hosts -o HostKeyAlias=imgstor-{dst} "
           f"{lab.host(dst)['address']}")
    p = lab.ssh(src, f"set -o pipefail; {stream} | {ssh} 'imgstor-sync-gate {request}'",
                check=False)
    return p.returncode, p.stderr.decode(errors="replace")


def everything(lab: Lab, host: str) -> set[str]:
    return set(lab.out(host, "zfs list -H -o name -t all").split())


def mounts(lab: Lab, host: str) -> list[str]:
    """HOST's zfs-fuse mounts and anything under /var/tmp (other labs' netns mounts come
    and go in the same table)."""
    return sorted(ln for ln in lab.out(host, "cat /proc/mounts").splitlines()
                  if "fuse" in ln.split()[2] or "/var/tmp/" in ln)


@pytest.fixture(scope="module")
def cycle(lab: Lab, tmp_path_factory):
    """A VM mapped in sync mode on the hostile node, one periodic pull done (so the node
    holds its sync key for the NAS), and another VM mapped direct on the victim node."""
    tag = uuid.uuid4().hex[:6]
    vol, other = f"tr-{tag}", f"trv-{tag}"
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, HOSTILE, "16M", "img_sync=yes",
        "--wait")
    fast = config_with(lab, tmp_path_factory.mktemp("cfg"), sync_frequency=1)
    time.sleep(1.2)
    cli(lab, "refresh", "--json", config=fast)
    wait_no_job(lab, vol)
    assert maps(lab)[vol]["state"] == "mapped"
    cli(lab, "add", "host", "storagemap", NAS, "tank", other, VICTIM, "16M")
    yield vol, other, tag
    cli(lab, "remove", "host", "storagemap", NAS, vol, "--wait", check=False)
    cli(lab, "remove", "host", "storagemap", NAS, other, check=False)
    for v in (vol, other):
        cli(lab, "remove", "host", "storageimg", NAS, "tank", v, check=False)


def test_a_hostile_node_reaches_nothing_on_the_nas(lab: Lab, cycle) -> None:
    vol, other, tag = cycle
    assert lab.ssh(HOSTILE, f"test -s {KD}/id_ed25519", check=False).returncode == 0
    before, mounted = everything(lab, NAS), mounts(lab, NAS)
    canary = f"/var/tmp/imgstor-canary-{tag}"
    evil = f"tank/evil-{tag}"
    lab.destroy(HOSTILE, evil)
    lab.ssh(HOSTILE, f"zfs create {evil} && echo owned > "
                     f"$(zfs get -H -o value mountpoint {evil})/disk.raw && "
                     f"zfs snapshot {evil}@s1 && zfs set mountpoint={canary} {evil} && "
                     f"zfs set imgstor:role=volume {evil} && zfs snapshot {evil}@s2")
    future = f"tank/fut-{tag}"
    try:
        # 1. a filesystem whose mountpoint is the canary, with its properties (send -p)
        rc, err = gate(lab, HOSTILE, NAS, f"receive tank/zz-{tag}", f"zfs send -p {evil}@s2")
        assert rc == 2 and "compound stream" in err, err
        # 2. the same without -p, and a replication stream (-R), into a new name
        rc, err = gate(lab, HOSTILE, NAS, f"receive tank/zz-{tag}", f"zfs send {evil}@s2")
        assert rc == 2 and "is expected from" in err, err
        rc, err = gate(lab, HOSTILE, NAS, f"receive tank/zz-{tag}", f"zfs send -R {evil}@s2")
        assert rc == 2 and "compound stream" in err, err
        # 3. a full stream named like another VM's future volume, carrying imgstor's mark
        for how in ("", "-p "):
            rc, err = gate(lab, HOSTILE, NAS, f"receive {future}", f"zfs send {how}{evil}@s2")
            assert rc == 2, err
        # 4. an incremental into another node's volume, with or without a rollback
        for req in (f"receive --incremental tank/{other}",
                    f"receive --incremental --rollback=s1 tank/{other}"):
            rc, err = gate(lab, HOSTILE, NAS, req, f"zfs send -i {evil}@s1 {evil}@s2")
            assert rc == 2 and f"not mapped to {HOSTILE}" in err, err
        # 5. nothing to learn about datasets no copy is announced for (audit L7)
        for req in (f"state tank/{other}", f"abort tank/{other}", f"state tank/{vol}"):
            rc, err = gate(lab, HOSTILE, NAS, req, "true")
            assert rc == 2 and "is expected from" in err, err
        # 6. nested names and temp-write names are not even parsed
        rc, err = gate(lab, HOSTILE, NAS, f"receive tank/{vol}/x", "true")
        assert rc == 2 and "exactly POOL/NAME" in err, err
        # 7. with a pull announced (a live expectation for its own volume), a stream of
        # another type or a compound one with those guids is still refused
        cfg = load_config(str(lab.config_path))
        snap = f"tank/{vol}@imgstor-evil-{tag}"
        with Cluster(cfg) as c:
            f = synctrust.expect(c, HOSTILE, NAS, snapshot=snap, to_dataset=f"tank/{vol}",
                                 base="auto", rollback=True, create_snapshot=True)
        base = lab.out(HOSTILE, f"zfs list -H -o name -t snapshot -s createtxg -d 1 "
                                f"tank/{vol} | grep @imgstor-pull- | tail -1")
        assert f["fromguid"] != "0"
        as_zvol = ("python3 -c 'import sys; b = bytearray(sys.stdin.buffer.read()); "
                   "b[32] = 3; sys.stdout.buffer.write(b)'")
        rc, err = gate(lab, HOSTILE, NAS, f"receive --incremental tank/{vol}",
                       f"zfs send -i {base} {snap} | {as_zvol}")
        assert rc == 2 and "expected to be a filesystem" in err, err
        rc, err = gate(lab, HOSTILE, NAS, f"receive --incremental tank/{vol}",
                       f"zfs send -p -i {base} {snap}")
        assert rc == 2 and "compound stream" in err, err
    finally:
        lab.destroy(HOSTILE, evil)
        lab.ssh(HOSTILE, f"rmdir {canary}", check=False)    # zfs made it on the node
    # nothing created, nothing mounted; the victim's volume untouched
    assert everything(lab, NAS) == before
    assert mounts(lab, NAS) == mounted and canary not in " ".join(mounted)
    assert not os.path.exists(f"{canary}/disk.raw")
    # a later map of the VM the attacker aimed at makes a fresh volume of imgstor's own
    fut = future.split("/")[1]
    try:
        cli(lab, "add", "host", "storagemap", NAS, "tank", fut, VICTIM, "16M")
        assert lab.out(NAS, f"zfs get -H -o value,source imgstor:role {future}").split() == \
            ["volume", "local"]
        mp = lab.mountpoint(NAS, future)
        assert lab.out(NAS, f"head -c 5 {mp}/disk.raw | od -An -c").split() == ["\\0"] * 5
    finally:
        cli(lab, "remove", "host", "storagemap", NAS, fut, check=False)
        cli(lab, "remove", "host", "storageimg", NAS, "tank", fut, check=False)


def test_a_hostile_nas_reaches_nothing_on_a_node(lab: Lab, cycle) -> None:
    """The NAS's key on a node (installed by a sync map's trust phase) creates no
    temp-write and no local copy the frontend did not announce (another NAS's VM)."""
    vol, other, tag = cycle
    cfg = load_config(str(lab.config_path))
    with Cluster(cfg) as c:
        synctrust.ensure(c, NAS, VICTIM, pools=["tank"])
    src = f"tank/hn-{tag}"
    lab.destroy(NAS, src)
    lab.ssh(NAS, f"zfs create {src} && zfs snapshot {src}@s1")
    before = everything(lab, VICTIM)
    try:
        for name in (f"tank/{vol}-temp-write", f"tank/vm-of-nas-0-1-{tag}", f"tank/{other}"):
            for how in ("", "-p "):
                rc, err = gate(lab, NAS, VICTIM, f"receive {name}", f"zfs send {how}{src}@s1")
                assert rc == 2, (name, how, err)
        rc, err = gate(lab, NAS, VICTIM, f"receive --incremental tank/{other}", "true")
        assert rc == 2 and "not allowed for this key" in err, err
        assert everything(lab, VICTIM) == before
    finally:
        lab.destroy(NAS, src)
        with Cluster(cfg) as c:
            synctrust.revoke(c, NAS, VICTIM)


def test_keys_are_revoked_when_no_job_needs_them_and_check_sees_them(lab: Lab,
                                                                    cycle) -> None:
    vol, _, _ = cycle
    # the sync-in's NAS -> node hop went once the copy was there
    ak = lab.out(HOSTILE, "cat /root/.ssh/authorized_keys")
    assert f"imgstor-sync:{NAS}" not in ak
    # the node -> NAS hop stays while the VM runs (periodic pulls), and goes at the unmap
    assert f"imgstor-sync:{HOSTILE}" in lab.out(NAS, "cat /root/.ssh/authorized_keys")
    rows = json.loads(cli(lab, "check", "--json", check=False).stdout)["rows"]
    assert not [r for r in rows if "sync" in json.dumps(r) and HOSTILE in json.dumps(r)], rows
    cli(lab, "remove", "host", "storagemap", NAS, vol, "--wait")
    wait_state(lab, vol, "unmapped")
    assert f"imgstor-sync:{HOSTILE}" not in lab.out(NAS, "cat /root/.ssh/authorized_keys")
    assert lab.ssh(HOSTILE, f"test -e {KD}/id_ed25519", check=False).returncode != 0
