"""The userspace lab itself, proven on its real daemons (sshd, zfs-fuse, tgtd, libiscsi, qemu)."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import LAB, Lab

pytestmark = pytest.mark.lab


def test_each_host_sees_only_its_own_pool(lab: Lab) -> None:
    guids = {}
    tag = uuid.uuid4().hex[:8]
    nas = lab.names("nas")[0]
    lab.ssh(nas, f"zfs create tank/only-{tag}")
    for h in lab.names():
        pools = lab.out(h, "zpool list -H -o name,guid").splitlines()
        assert len(pools) == 1 and pools[0].startswith("tank\t"), pools
        guids[h] = pools[0].split("\t")[1]
        seen = lab.ssh(h, f"zfs list tank/only-{tag}", check=False).returncode == 0
        assert seen == (h == nas), f"{h} sees {nas}'s dataset: {seen}"
        assert lab.out(h, "hostname") == h
    assert len(set(guids.values())) == len(guids), "hosts share a pool"
    lab.destroy(nas, f"tank/only-{tag}")


def test_ssh_verifies_host_keys(lab: Lab, tmp_path: Path) -> None:
    for h in lab.names():
        assert lab.out(h, "echo ok") == "ok"
    # the same host with an empty known_hosts: refused, never accepted blindly
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    host = lab.hosts[0]
    p = subprocess.run(["ssh", "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=yes",
                        "-o", "BatchMode=yes", "-i", str(lab.dir / "id_ed25519"),
                        f"root@{host['address']}", "true"], capture_output=True, text=True)
    assert p.returncode == 255 and "Host key verification failed" in p.stderr
    # a wrong key for the host's name: refused too
    other = lab.hosts[1]
    line = (lab.dir / "known_hosts").read_text().splitlines()[1].split(" ", 1)[1]
    kh.write_text(f"{host['address']} {line}\n")
    p = subprocess.run(["ssh", "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=yes",
                        "-o", "BatchMode=yes", "-i", str(lab.dir / "id_ed25519"),
                        f"root@{host['address']}", "true"], capture_output=True, text=True)
    assert p.returncode == 255, (other, p.stderr)


def test_tgt_export_reads_for_its_initiator_only(lab: Lab) -> None:
    nas, comp = lab.names("nas")[0], lab.names("compute")[0]
    tag = uuid.uuid4().hex[:8]
    ds = f"tank/tgt-{tag}"
    iqn = f"iqn.2001-04.com.{nas}-tgt-{tag}"
    ini = lab.host(comp)["initiator"]
    lab.ssh(nas, f"zfs create {ds}")
    mnt = lab.mountpoint(nas, ds)
    want = lab.out(nas, f"truncate -s 32M {mnt}/disk.raw && "
                        f"dd if=/dev/urandom of={mnt}/disk.raw bs=1M count=3 seek=5 conv=notrunc status=none && "
                        f"sha256sum < {mnt}/disk.raw").split()[0]
    tid = 900 + int(tag, 16) % 90
    lab.ssh(nas, f"tgtadm --lld iscsi --mode target --op new --tid {tid} -T {iqn} && "
                 f"tgtadm --lld iscsi --mode logicalunit --op new --tid {tid} --lun 1 -b {mnt}/disk.raw && "
                 f"tgtadm --lld iscsi --mode target --op bind --tid {tid} -Q {ini}")
    try:
        portal = lab.host(nas)["address"]
        opts = f"driver=iscsi,transport=tcp,portal={portal}:3260,target={iqn},lun=1"
        got = lab.out(comp, f"qemu-img convert -O raw --image-opts {opts},initiator-name={ini} /tmp/{tag}.raw"
                            f" && sha256sum < /tmp/{tag}.raw; rm -f /tmp/{tag}.raw").split()[0]
        assert got == want
        # another initiator name (and qemu's default one) is refused by the ACL
        bad = lab.ssh(comp, f"iscsi-inq -i iqn.1999-01.org.example:intruder iscsi://{portal}:3260/{iqn}/1",
                      check=False)
        assert bad.returncode != 0
        bad = lab.ssh(comp, f"qemu-img info --image-opts {opts}", check=False)
        assert bad.returncode != 0 and b"Failed to log in" in bad.stderr
    finally:
        lab.ssh(nas, f"tgtadm --lld iscsi --mode target --op delete --force --tid {tid}")
        lab.destroy(nas, ds)


def test_zfs_send_over_ssh_between_hosts(lab: Lab) -> None:
    nas, comp = lab.names("nas")[0], lab.names("compute")[0]
    tag = uuid.uuid4().hex[:8]
    ds = f"tank/send-{tag}"
    lab.ssh(nas, f"zfs create {ds}")
    mnt = lab.mountpoint(nas, ds)
    want = lab.out(nas, f"dd if=/dev/urandom of={mnt}/f bs=1M count=6 status=none && sha256sum < {mnt}/f")
    lab.ssh(nas, f"zfs snapshot {ds}@s1 && set -o pipefail && zfs send {ds}@s1 | ssh {comp} zfs receive -F {ds}")
    got = lab.out(comp, f"sha256sum < {lab.mountpoint(comp, ds)}/f")
    assert got == want
    lab.destroy(comp, ds)
    lab.destroy(nas, ds)


def test_lab_down_leaves_nothing(tmp_path: Path) -> None:
    """A second, one-host lab beside the session's: up, then down, then look for leftovers."""
    env = {"LAB_DIR": str(tmp_path / "lab2"), "LAB_SUBNET": "127.42.7",
           "LAB_BRIDGE": "islbr7", "LAB_NS_PREFIX": "isl7-"}
    def run(*a):
        return subprocess.run([str(LAB), *a], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=120)
    p = run("up", "--hosts", "nas-9-9")
    assert p.returncode == 0, p.stderr
    rec = json.loads((tmp_path / "lab2" / "lab.json").read_text())["hosts"][0]
    pids = [rec[k] for k in ("anchor", "unshare", "sshd", "zfs_fuse", "tgtd")]
    assert run("status").returncode == 0
    # half broken (its sshd killed): status says so, and `up` rebuilds it
    os.kill(rec["sshd"], 9)
    time.sleep(0.5)
    assert run("status").returncode == 1
    p = run("up", "--hosts", "nas-9-9")
    assert p.returncode == 0 and "rebuilding" in p.stderr, p.stderr
    assert run("status").returncode == 0
    rec = json.loads((tmp_path / "lab2" / "lab.json").read_text())["hosts"][0]
    pids += [rec[k] for k in ("anchor", "unshare", "sshd", "zfs_fuse", "tgtd")]
    p = run("down")
    assert p.returncode == 0, p.stderr
    assert run("down").returncode == 0          # idempotent
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state == "Z", f"pid {pid} still running"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "isl7-" not in netns
    assert subprocess.run(["ip", "link", "show", "islbr7"], capture_output=True).returncode != 0
    assert str(tmp_path / "lab2") not in Path("/proc/self/mounts").read_text()
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in loops
    assert not list((tmp_path / "lab2").glob("hosts/*/*.img"))
