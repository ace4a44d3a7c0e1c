"""The copy engine of sync mode on the userspace lab (zfs-fuse: no resume tokens, no
``send -P``): NAS -> compute node over imgstor's own trust path, sha256 checked.

The lab pre-trusts NAS -> node ssh (root's key and known_hosts are bind-mounted): these
tests never use them.  ``synctrust.ensure`` makes imgstor's key, pins the node's host key
and installs the gate; the lab's sshd reads ``$LAB_DIR/authorized_keys``, so that is where
the restricted line goes (and is removed again at the end).  The lab's hosts also share
one /root/.ssh, so each sender gets its own key directory there (``_kd``); on a real
cluster every host has its own /root/.ssh/imgstor-sync.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from imgstor import synctrust
from imgstor.config import load_config
from imgstor.transport import Cluster
from tests.conftest import Lab

pytestmark = pytest.mark.lab
NAS, NODE, NODE2 = "nas-0-0", "compute-0-0", "compute-0-1"
MiB = 1 << 20


def _kd(sender: str) -> str:
    return f"/root/.ssh/imgstor-sync.{sender}"


@pytest.fixture(scope="module")
def env(lab: Lab):
    cfg = load_config(str(lab.config_path))
    ak = lab.dir / "authorized_keys"
    before = ak.read_text()
    with Cluster(cfg) as c:
        for sender, receiver in ((NAS, NODE), (NODE, NAS)):
            synctrust.ensure(c, sender, receiver, authorized_keys=str(ak), key_dir=_kd(sender),
                             gate_path=str(lab.dir / "hosts" / receiver / "sync-gate.py"))
        yield c
    ak.write_text(before)


def _dataset(lab: Lab, host: str, ds: str, *, mib: int = 32, source: str = "/dev/urandom",
             snap: str = "s1") -> str:
    """A fresh dataset holding file ``f`` of MIB MiB from SOURCE, snapshot @SNAP; its sha256."""
    lab.destroy(host, ds)
    lab.ssh(host, f"zfs create {ds}")
    mp = lab.mountpoint(host, ds)
    if source == "text":
        lab.ssh(host, f"yes 'imgstor copies volumes' | head -c {mib * MiB} > {mp}/f")
    else:
        lab.ssh(host, f"head -c {mib * MiB} {source} > {mp}/f")
    lab.ssh(host, f"zfs snapshot {ds}@{snap}")
    return _sha(lab, host, ds)


def _sha(lab: Lab, host: str, ds: str) -> str:
    return lab.out(host, f"sha256sum {lab.mountpoint(host, ds)}/f").split()[0]


def _start(c: Cluster, ds: str, *, sender: str = NAS, receiver: str = NODE, snap: str = "s1",
           to: str | None = None, **kw):
    """Announce the copy to the receiver's gate (issue 18), then start it."""
    args = synctrust.copy_args(c.config, sender, receiver, snapshot=f"{ds}@{snap}",
                               to_dataset=to or ds, key_dir=_kd(sender), **kw)
    return synctrust.start_copy(c, sender, receiver, args, objtype="filesystem")


def _status(c: Cluster, ds: str, *, sender: str = NAS, receiver: str = NODE) -> dict:
    return c.step(sender, "copy.status", to_alias=receiver, to_dataset=ds).facts


def _wait(c: Cluster, ds: str, *, timeout: float = 120, **kw) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = _status(c, ds, **kw)
        if st["state"] != "running":
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.3)


def _wait_bytes(c: Cluster, ds: str, n: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = _status(c, ds)
        if (st.get("bytes_done") or 0) >= n or st["state"] != "running":
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.2)


def _receives(lab: Lab, ds: str) -> int:
    """`zfs receive DS` processes on this machine (the lab shares one pid namespace)."""
    out = lab.out(NODE, "ps -eo args", check=False)
    return sum(1 for ln in out.splitlines() if ln.split()[:2] == ["zfs", "receive"]
               and ln.split()[-1] == ds)


def test_trust_is_imgstors_own_and_restricted(lab: Lab, env: Cluster) -> None:
    kd = _kd(NAS)
    ssh = (f"ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i {kd}/id_ed25519 "
           f"-o UserKnownHostsFile={kd}/known_hosts -o HostKeyAlias=imgstor-{NODE} "
           f"{lab.host(NODE)['address']}")
    # the key runs the gate and nothing else
    p = lab.ssh(NAS, f"{ssh} id", check=False)
    assert p.returncode == 2 and b"not an imgstor-sync-gate request" in p.stderr
    # only from the NAS's address: the same key and pin from another node are refused
    p = lab.ssh(NODE2, f"{ssh} imgstor-sync-gate state tank/x", check=False)
    assert p.returncode == 255, p.stderr
    # only the configured pool
    p = lab.ssh(NAS, f"{ssh} imgstor-sync-gate state other/x", check=False)
    assert p.returncode == 2 and b"not in an allowed pool" in p.stderr
    # a NAS key creates datasets on a node, nothing else: no incremental, no rollback
    p = lab.ssh(NAS, f"{ssh} imgstor-sync-gate receive --incremental --rollback=s1 tank/cp1 "
                     "< /dev/null", check=False)
    assert p.returncode == 2 and b"not allowed for this key" in p.stderr, p.stderr
    assert lab.out(NAS, f"stat -c %a {kd} {kd}/id_ed25519 {kd}/known_hosts").split() == \
        ["700", "600", "600"]
    # idempotent: a second ensure changes nothing
    r = synctrust.ensure(env, NAS, NODE, authorized_keys=str(lab.dir / "authorized_keys"),
                         key_dir=kd,
                         gate_path=str(lab.dir / "hosts" / NODE / "sync-gate.py"))
    assert r["changed"] is False


def test_copy_to_node_sha256_and_done_is_done(lab: Lab, env: Cluster) -> None:
    ds = "tank/cp1"
    lab.destroy(NODE, ds)
    sha = _dataset(lab, NAS, ds)
    o = _start(env, ds)
    assert o.changed and o.facts["started"]
    st = _wait(env, ds)
    assert st["state"] == "done", st
    first = st["attempt"]
    assert [s["rc"] for s in st["stages"]] == [0, 0]
    assert st["bytes_done"] >= 32 * MiB and st["bytes_total"] >= 32 * MiB
    assert _sha(lab, NODE, ds) == sha
    _start(env, ds)                               # the job finds it there: nothing sent
    st = _wait(env, ds)
    assert st["state"] == "done" and st["already"] is True and st["attempt"] == first + 1


def test_receiver_killed_mid_stream_then_restart_converges(lab: Lab, env: Cluster) -> None:
    ds = "tank/cp2"
    lab.destroy(NODE, ds)
    sha = _dataset(lab, NAS, ds, mib=48)
    _start(env, ds, bwlimit=4 * MiB)          # 12 s: the kill lands mid-stream on a busy box
    st = _wait_bytes(env, ds, 8 * MiB)
    assert st["state"] == "running", st
    lock = "/run/imgstor/recv/" + ds.replace("/", "%") + ".lock"
    gate = int(lab.out(NODE, f"cat '{lock}'"))
    lab.ssh(NODE, f"pkill -9 -P {gate} -x zfs")          # the gate's `zfs receive` only
    st = _wait(env, ds)
    assert st["state"] == "failed", st
    failed_attempt = st["attempt"]
    assert any(s["rc"] for s in st["stages"]), st
    assert st["error"]
    o = _start(env, ds)                                   # the monitor's restart
    assert o.facts["started"] and o.facts["attempt"] == failed_attempt + 1
    assert o.facts["previous"]["state"] == "failed"
    st = _wait(env, ds)
    assert st["state"] == "done", st
    assert _sha(lab, NODE, ds) == sha


def test_second_start_while_running_starts_no_second_receive(lab: Lab, env: Cluster) -> None:
    ds = "tank/cp3"
    lab.destroy(NODE, ds)
    sha = _dataset(lab, NAS, ds)
    # 16 s: the second start (announcement and start step) comes while the first runs
    first = _start(env, ds, bwlimit=2 * MiB)
    _wait_bytes(env, ds, 1 * MiB)
    second = _start(env, ds, bwlimit=2 * MiB)
    assert second.changed is False and second.facts["started"] is False
    assert second.facts["state"] == "running" and second.facts["pid"] == first.facts["pid"]
    assert _receives(lab, ds) == 1
    # and the receiving side refuses a second receive into the dataset by itself (another
    # sender, a stale job): the gate's lock, exit 3
    kd = _kd(NAS)
    p = lab.ssh(NAS, f"ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes "
                     f"-i {kd}/id_ed25519 -o UserKnownHostsFile={kd}/known_hosts "
                     f"-o HostKeyAlias=imgstor-{NODE} {lab.host(NODE)['address']} "
                     f"imgstor-sync-gate receive {ds} < /dev/null", check=False)
    assert p.returncode == 3 and b"running already" in p.stderr, p.stderr
    assert _wait(env, ds)["state"] == "done"
    assert _sha(lab, NODE, ds) == sha


def test_bwlimit_is_roughly_honoured(lab: Lab, env: Cluster) -> None:
    ds = "tank/cp4"
    lab.destroy(NODE, ds)
    _dataset(lab, NAS, ds, mib=40)
    limit = 4 * MiB
    _start(env, ds, bwlimit=limit)
    a = _wait_bytes(env, ds, 2 * MiB)
    t_a = time.monotonic()
    time.sleep(4)
    b = _status(env, ds)
    t_b = time.monotonic()
    rate = (b["bytes_done"] - a["bytes_done"]) / (t_b - t_a)
    assert rate < 2 * limit, rate
    env.step(NAS, "copy.cancel", to_alias=NODE, to_dataset=ds)


def test_zstd_in_transit(lab: Lab, env: Cluster) -> None:
    ds = "tank/cp5"
    lab.destroy(NODE, ds)
    sha = _dataset(lab, NAS, ds, source="text")
    _start(env, ds, compress="zstd")
    st = _wait(env, ds)
    assert st["state"] == "done", st
    assert [s["argv"][0] for s in st["stages"]] == ["zfs", "zstd", "ssh"]
    assert st["stages"][-1]["argv"][-1].startswith("imgstor-sync-gate receive --zstd ")
    assert st["wire_bytes"] * 4 < st["bytes_done"], st
    assert _sha(lab, NODE, ds) == sha


def test_cancel_leaves_no_partial_dataset(lab: Lab, env: Cluster) -> None:
    ds = "tank/cp6"
    lab.destroy(NODE, ds)
    _dataset(lab, NAS, ds)
    _start(env, ds, bwlimit=4 * MiB)
    _wait_bytes(env, ds, 2 * MiB)
    o = env.step(NAS, "copy.cancel", to_alias=NODE, to_dataset=ds)
    assert o.changed and o.facts["state"] == "cancelled", o.facts
    assert _receives(lab, ds) == 0
    time.sleep(0.5)
    assert lab.ssh(NODE, f"zfs list {ds}", check=False).returncode != 0
    assert _status(env, ds)["state"] == "cancelled"


def test_existing_destination_is_never_overwritten(lab: Lab, env: Cluster) -> None:
    """Audit L15: no receive -F; the node's own data stays."""
    ds = "tank/cp7"
    _dataset(lab, NAS, ds, mib=2)
    theirs = _dataset(lab, NODE, ds, mib=1, snap="mine")
    _start(env, ds)
    st = _wait(env, ds)
    assert st["state"] == "failed" and "never overwrites" in st["error"], st
    assert _sha(lab, NODE, ds) == theirs


def test_pull_back_incremental_node_to_nas(lab: Lab, env: Cluster) -> None:
    ds = "tank/cp8"
    lab.destroy(NODE, ds)
    _dataset(lab, NAS, ds, mib=8)
    _start(env, ds)
    assert _wait(env, ds)["state"] == "done"
    # the VM writes on the node; the node sends @s2 back from the common @s1
    mp = lab.mountpoint(NODE, ds)
    lab.ssh(NODE, f"head -c {4 * MiB} /dev/urandom | dd of={mp}/f bs=1M seek=2 conv=notrunc "
                  f"status=none && zfs snapshot {ds}@s2")
    sha = _sha(lab, NODE, ds)
    # the NAS takes an incremental from the node only into a volume mapped to it
    o = _start(env, ds, sender=NODE, receiver=NAS, snap="s2", base=f"{ds}@s1")
    st = _wait(env, ds, sender=NODE, receiver=NAS)
    assert st["state"] == "failed" and "is not mapped to compute-0-0" in st["error"], st
    lab.ssh(NAS, f"zfs set imgstor:host={NODE} {ds}")
    o = _start(env, ds, sender=NODE, receiver=NAS, snap="s2", base=f"{ds}@s1")
    assert o.facts["started"]
    st = _wait(env, ds, sender=NODE, receiver=NAS)
    # reading the NAS copy (sha256sum above) touched its atime: without -F zfs refuses
    assert st["state"] == "failed" and "has been modified" in st["error"], st
    o = _start(env, ds, sender=NODE, receiver=NAS, snap="s2", base=f"{ds}@s1", rollback=True)
    st = _wait(env, ds, sender=NODE, receiver=NAS)
    assert st["state"] == "done", st
    assert st["stages"][-1]["argv"][-1] == \
        f"imgstor-sync-gate receive --incremental --rollback=s1 {ds}"
    assert _sha(lab, NAS, ds) == sha
    assert lab.out(NAS, f"zfs list -H -o name -t snapshot -r {ds}").split() == \
        [f"{ds}@s1", f"{ds}@s2"]
    # the next pull finds the last common snapshot itself (s2) and sends s4 from it (-i:
    # -I would be a compound stream, which the gate refuses)
    for s in ("s3", "s4"):
        lab.ssh(NODE, f"head -c {MiB} /dev/urandom | dd of={mp}/f bs=1M seek=5 "
                      f"conv=notrunc status=none && zfs snapshot {ds}@{s}")
    sha = _sha(lab, NODE, ds)
    _start(env, ds, sender=NODE, receiver=NAS, snap="s4", base="auto", rollback=True)
    st = _wait(env, ds, sender=NODE, receiver=NAS)
    assert st["state"] == "done" and st["base"] == f"{ds}@s2", st
    assert st["stages"][0]["argv"] == ["zfs", "send", "-i", f"{ds}@s2", f"{ds}@s4"]
    assert _sha(lab, NAS, ds) == sha
    assert lab.out(NAS, f"zfs list -H -o name -t snapshot -r {ds}").split() == \
        [f"{ds}@s{i}" for i in (1, 2, 4)]


def test_ssh_refuses_a_receiver_whose_host_key_is_not_pinned(lab: Lab, env: Cluster) -> None:
    """The pin is what the copy trusts: with the pin of another host it does not connect."""
    ds = "tank/cp9"
    lab.destroy(NODE2, ds)
    _dataset(lab, NAS, ds, mib=1)
    # compute-0-1 has no pin in the NAS's imgstor known_hosts (only compute-0-0 has)
    _start(env, ds, receiver=NODE2)
    st = _wait(env, ds, receiver=NODE2)
    assert st["state"] == "failed", st
    assert "Host key verification failed" in st["error"] or "No ED25519 host key" in \
        st["error"] or "host key" in st["error"].lower(), st["error"]
    assert lab.ssh(NODE2, f"zfs list {ds}", check=False).returncode != 0


def test_dry_run_prints_the_pipeline(lab: Lab, env: Cluster, tmp_path: Path) -> None:
    ds = "tank/cp1"
    c = Cluster(env.config, dry_run=True)
    args = synctrust.copy_args(env.config, NAS, NODE, snapshot=f"{ds}@s1", to_dataset="tank/cpx",
                               compress="zstd", key_dir=_kd(NAS))
    o = c.step(NAS, "copy.start", **args)
    c.close()
    assert o.facts["started"] is False
    skip = [x for x in o.commands if x.startswith("SKIP> ")]
    assert len(skip) == 1 and "zfs send tank/cp1@s1 | zstd -qc | ssh " in skip[0]
    assert _status(env, "tank/cpx")["state"] == "none"


def test_job_killed_is_died_and_the_restart_converges(lab: Lab, env: Cluster) -> None:
    """The job process itself SIGKILLed (no chance to write a result): its stages go with
    it (SIGPIPE / EOF), the lock comes free, status says "died", a restart finishes."""
    ds = "tank/cp10"
    lab.destroy(NODE, ds)
    sha = _dataset(lab, NAS, ds)
    o = _start(env, ds, bwlimit=4 * MiB)
    _wait_bytes(env, ds, 2 * MiB)
    lab.ssh(NAS, f"kill -9 {int(o.facts['pid'])}")
    st = _wait(env, ds)
    assert st["state"] == "died", st
    assert _receives(lab, ds) == 0
    _start(env, ds)
    st = _wait(env, ds)
    assert st["state"] == "done" and st["previous"]["phase"] == "send", st
    assert _sha(lab, NODE, ds) == sha
