"""Issue 8 on the userspace lab: one writer per disk, and concurrent maps on one NAS.

A "VM" on a compute node is a qemu-storage-daemon holding the LUN through libiscsi with
that node's initiator name (what a VM's qemu does), exporting it on a unix socket so the
test can read through that very session with qemu-io."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from imgstor.workflows.storagemap import target_iqn
from tests.conftest import Lab
from tests.lab.test_direct import NAS, ROOT, MiB, cli, maps, read_through, targets, write_through

pytestmark = pytest.mark.lab


class Holder:
    """qemu-storage-daemon on HOST with VOL's LUN open (host's initiator name)."""

    def __init__(self, lab: Lab, host: str, vol: str) -> None:
        self.lab, self.host, self.tag = lab, host, f"ow-{uuid.uuid4().hex[:6]}"
        self.sock, self.pidfile = f"/tmp/{self.tag}.sock", f"/tmp/{self.tag}.pid"
        blockdev = (f"driver=iscsi,node-name=disk,transport=tcp,"
                    f"portal={lab.host(NAS)['address']}:3260,target={target_iqn(NAS, vol)},"
                    f"lun=1,initiator-name={lab.host(host)['initiator']}")
        lab.ssh(host, f"(nohup qemu-storage-daemon --blockdev {blockdev} "
                      f"--nbd-server addr.type=unix,addr.path={self.sock} "
                      f"--export type=nbd,id=e0,node-name=disk,writable=on "
                      f"--pidfile {self.pidfile} >/tmp/{self.tag}.log 2>&1 </dev/null &); "
                      f"for i in $(seq 50); do [ -S {self.sock} ] && exit 0; sleep 0.1; done; "
                      f"cat /tmp/{self.tag}.log; exit 1")

    def read(self, offset: int, length: int, timeout: int) -> subprocess.CompletedProcess:
        """Read through the holder's session; rc 124 if no answer within ``timeout``."""
        return self.lab.ssh(self.host, f"timeout -s KILL {timeout} qemu-io -f raw -c "
                                       f"'read -v {offset} {length}' "
                                       f"'nbd+unix:///disk?socket={self.sock}'",
                            check=False, timeout=timeout + 30)

    def stop(self) -> None:
        # SIGKILL by its own pid file: a daemon stuck reconnecting ignores SIGTERM for long
        self.lab.ssh(self.host, f"[ -f {self.pidfile} ] && kill -9 $(cat {self.pidfile}); "
                                f"rm -f {self.sock} {self.pidfile} /tmp/{self.tag}.log",
                     check=False)


def _nas_view(lab: Lab, vol: str) -> tuple:
    t = targets(lab)
    iqn = target_iqn(NAS, vol)
    acl = t.split(iqn, 1)[1].split("ACL information:", 1)[1].split("Target ", 1)[0].split() \
        if iqn in t else None
    return acl, lab.out(NAS, f"zfs get -H -o value imgstor:host tank/{vol}")


def test_one_writer_per_disk(lab: Lab) -> None:
    a, b = "compute-0-0", "compute-0-1"
    vol = f"ow-{uuid.uuid4().hex[:6]}"
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, a, "32M")
    holder = None
    try:
        want = write_through(lab, a, vol, 4, "ow")
        holder = Holder(lab, a, vol)
        assert holder.read(0, 512, 10).returncode == 0
        before = (maps(lab)[vol]["host"], _nas_view(lab, vol))
        assert before == (a, ([lab.host(a)["initiator"]], a))

        # in use on A: refused, exit 8, saying who holds it; nothing changed
        p = cli(lab, "remove", "host", "storagemap", NAS, vol, check=False)
        assert p.returncode == 8, (p.stdout, p.stderr)
        assert "in use by " + lab.host(a)["initiator"] in p.stderr
        assert lab.host(a)["address"] in p.stderr and "--force" in p.stderr
        row = maps(lab)[vol]
        assert (row["state"], row["host"], _nas_view(lab, vol)) == ("mapped", a, before[1])
        assert holder.read(MiB, 512, 10).returncode == 0         # A still works

        # --force proceeds: the target (and A's session) is gone
        cli(lab, "remove", "host", "storagemap", NAS, vol, "--force")
        assert maps(lab)[vol]["state"] == "unmapped"
        assert target_iqn(NAS, vol) not in targets(lab)

        # mapped to B: A gets no data from the target any more (its session is gone and
        # its logins are refused), B reads what was written
        cli(lab, "add", "host", "storagemap", NAS, "tank", vol, b, "32M")
        r = holder.read(2 * MiB, 4096, 10)
        assert r.returncode != 0 and b"read 4096/4096" not in r.stdout, r
        t = targets(lab).split(target_iqn(NAS, vol), 1)[1].split("Target ", 1)[0]
        nexus = t.split("I_T nexus information:", 1)[1].split("LUN information:", 1)[0]
        assert lab.host(a)["initiator"] not in nexus, t
        assert read_through(lab, b, vol, 4 * MiB) == want
        assert cli(lab, "list", "host", "storagemap", NAS, "--verify").returncode == 0
    finally:
        if holder:
            holder.stop()
        cli(lab, "remove", "host", "storagemap", NAS, vol, "--force", check=False)
        cli(lab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)


def test_acl_moved_under_a_live_session_ends_it(lab: Lab) -> None:
    """M2 at the node step: the NAS's target still admits A with A's session live (e.g. a
    map killed before it was recorded, then mapped elsewhere): ensure_target for B closes
    A's connection; A's reconnect is refused."""
    a, b = "compute-0-0", "compute-0-1"
    vol = f"ow-{uuid.uuid4().hex[:6]}"
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, a, "16M")
    holder = None
    try:
        holder = Holder(lab, a, vol)
        assert holder.read(0, 512, 10).returncode == 0
        assert lab.host(a)["initiator"] in targets(lab).split("I_T nexus information:", 1)[1]
        # forget the mapping in the store only (as after a map whose record was lost)
        from imgstor.state.model import volume_key
        from imgstor.state.store import Store
        with Store(str(lab.config_path.parent / "state.json")).transaction() as s:
            v = s.volumes[volume_key(NAS, vol)]
            v.state, v.host, v.target = "unmapped", None, None
        cli(lab, "add", "host", "storagemap", NAS, "tank", vol, b, "16M")
        t = targets(lab).split(target_iqn(NAS, vol), 1)[1].split("Target ", 1)[0]
        assert lab.host(a)["initiator"] not in t.split("ACL information:", 1)[0], t
        r = holder.read(MiB, 4096, 10)
        assert r.returncode != 0 and b"read 4096/4096" not in r.stdout, r
    finally:
        if holder:
            holder.stop()
        cli(lab, "remove", "host", "storagemap", NAS, vol, "--force", check=False)
        cli(lab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)


def test_concurrent_maps_of_different_volumes_on_one_nas(lab: Lab) -> None:
    """M11: 8 maps at once on one NAS (tgt tids, one targets lock) all succeed."""
    vols = [f"cc{i}-{uuid.uuid4().hex[:4]}" for i in range(8)]
    hosts = ["compute-0-0", "compute-0-1"]
    procs = [subprocess.Popen([sys.executable, "-m", "imgstor", "--config", str(lab.config_path),
                               "add", "host", "storagemap", NAS, "tank", v, hosts[i % 2], "16M"],
                              cwd=ROOT, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=dict(os.environ))
             for i, v in enumerate(vols)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0] * 8, outs
        rows = maps(lab)
        for i, v in enumerate(vols):
            assert (rows[v]["state"], rows[v]["host"]) == ("mapped", hosts[i % 2])
        v = cli(lab, "list", "host", "storagemap", NAS, "--verify", "--json", check=False)
        assert v.returncode == 0, v.stdout
        live = {r["zvol"]: r["live"] for r in json.loads(v.stdout)["rows"]}
        assert all(live[x] == "ok" for x in vols), live
        tids = [it for it in targets(lab).splitlines() if it.startswith("Target ")]
        assert len({it.split(":")[0] for it in tids}) == len(tids)
    finally:
        for v in vols:
            cli(lab, "remove", "host", "storagemap", NAS, v, "--force", check=False)
            cli(lab, "remove", "host", "storageimg", NAS, "tank", v, check=False)
