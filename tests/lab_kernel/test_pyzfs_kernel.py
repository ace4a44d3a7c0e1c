"""pyzfs (libzfs_core) on the kernel lab: the guests have python3-pyzfs and /dev/zfs, so the
zfs driver's changes go through libzfs_core in the node process.  Checked with the real
`zfs` commands on the guest."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel_lab
ROOT = Path(__file__).resolve().parents[2]
NAS = "nas-0-0"
MiB = 1 << 20


def cli(klab, *args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "imgstor", "--config", str(klab.config_path),
                        *args], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env=dict(os.environ))
    assert p.returncode == 0, f"imgstor {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


# Runs on the guest with the uploaded zipapp on sys.path: the driver functions directly,
# through libzfs_core and (with /dev/zfs hidden from the driver) through the CLI.
DRIVER_PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from imgstor.errors import ImgstorError
from imgstor.remote.drivers import _lzc, zfs
from imgstor.remote.executor import LocalExecutor
snap, vol = sys.argv[2], sys.argv[3]
ex = LocalExecutor()
out = {"backend": zfs.backend(ex), "lzc_holds": zfs.holds(ex, snap)}
def err(fn, *a, **kw):
    try:
        fn(ex, *a, **kw)
    except ImgstorError as e:
        return [type(e).__name__, e.message]
    return None
out["lzc_create_exists"] = err(zfs.create, vol, kind="volume", size=1 << 20)
out["lzc_hold_missing"] = err(zfs.hold, vol + "@imgstor-nope", "imgstor")
out["lzc_destroy_held"] = err(zfs.destroy_snapshots, [snap])
_lzc.DEV_ZFS = "/nonexistent"
out["cli_backend"] = zfs.backend(ex)
out["cli_holds"] = zfs.holds(ex, snap)
out["cli_create_exists"] = err(zfs.create, vol, kind="volume", size=1 << 20)
print(json.dumps(out))
"""


def test_ping_reports_pyzfs(kernel_lab) -> None:
    rows = {r["host"]: r for r in json.loads(cli(kernel_lab, "ping", "--json").stdout)["rows"]}
    for host in kernel_lab.names():
        assert rows[host]["pyzfs"].startswith("2.1."), rows[host]
    assert "PYZFS" in cli(kernel_lab, "ping").stdout.splitlines()[0]


def test_doctor_reads_the_real_tools_versions(kernel_lab) -> None:
    """`imgstor doctor` on OpenZFS, LIO and open-iscsi (issue 26): each guest reachable,
    the tools its role needs with their versions, its pools, its clock."""
    p = subprocess.run([sys.executable, "-m", "imgstor", "--config",
                        str(kernel_lab.config_path), "--json", "doctor"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    rows = {(r["check"], r["subject"]): r for r in json.loads(p.stdout)["rows"]}
    for host in kernel_lab.names():
        for check in ("reachable", "tools", "pools", "clock"):
            assert rows[(check, host)]["ok"], rows[(check, host)]
    assert rows[("tools", NAS)]["detail"].startswith("zfs 2.1."), rows[("tools", NAS)]
    assert "targetcli" in rows[("tools", NAS)]["detail"] or \
        "rtslib" in rows[("tools", NAS)]["detail"]
    computes = [h for h in kernel_lab.names() if h != NAS]
    assert any(rows[("tools", h)]["detail"].startswith("iscsiadm 2.") for h in computes)


def test_volume_snapshot_and_destroy_through_libzfs_core(kernel_lab) -> None:
    from imgstor.config import load_config
    from imgstor.transport import Cluster
    klab = kernel_lab
    vol = f"lzc-{uuid.uuid4().hex[:6]}"
    name, snapname = f"tank/{vol}", "imgstor-k1"
    snap = f"{name}@{snapname}"
    args = dict(pool="tank", vol=vol, snapshot=snapname)
    cfg = load_config(str(klab.config_path))
    def snaps():
        return klab.out(NAS, ["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-r",
                              name]).split()
    try:
        with Cluster(cfg) as c:
            r = c.step(NAS, "nas.ensure_volume", pool="tank", vol=vol, size=64 * MiB,
                       kind="zvol")
            assert r.changed and r.facts["zfs_backend"] == "lzc", r
            assert any(x.startswith(f"lzc_create {name} zvol") for x in r.commands), r.commands
            # sparse (no refreservation), volblocksize 128K, as `zfs create -s -o volblocksize=128K`
            assert klab.out(NAS, ["zfs", "get", "-H", "-p", "-o", "value",
                                  "volsize,volblocksize,refreservation", name]).split() == \
                [str(64 * MiB), "131072", "0"]
            klab.out(NAS, f"head -c {MiB} /dev/urandom | dd of=/dev/zvol/{name} bs=1M "
                          "oflag=direct status=none")
        with Cluster(cfg, dry_run=True, err=io.StringIO()) as c:
            r = c.step(NAS, "nas.snapshot", **args, hold=True)
            assert r.facts["zfs_backend"] == "lzc"
            assert f"SKIP> lzc_snapshot {snap} " + json.dumps({"imgstor:role": "snapshot"}) \
                in r.commands, r.commands
            assert snaps() == []                        # the dry run changed nothing
        with Cluster(cfg) as c:
            r = c.step(NAS, "nas.snapshot", **args, hold=True)
            assert r.changed and r.facts == {"snapshot": snap, "created": True, "held": True,
                                             "zfs_backend": "lzc"}
            # reads take the CLI until a change has loaded pyzfs, then libzfs_core
            assert r.commands[0] == f"zfs list -H -o name {snap}", r.commands
            assert [x for x in r.commands if x.startswith("lzc_")] == [
                f"lzc_snapshot {snap} " + json.dumps({"imgstor:role": "snapshot"}),
                f"lzc_get_holds {snap}", f"lzc_hold {snap} imgstor"]
            assert snaps() == [snap]
            assert klab.out(NAS, ["zfs", "get", "-H", "-o", "value,source", "imgstor:role",
                                  snap]).split() == ["snapshot", "local"]
            assert klab.out(NAS, ["zfs", "holds", "-H", snap]).split()[:2] == [snap, "imgstor"]
            r = c.step(NAS, "nas.snapshot", **args, hold=True)
            assert not r.changed and r.facts["zfs_backend"] is None
            assert not any(x.startswith("lzc_") for x in r.commands), r.commands
            # held: a plain `zfs destroy` is refused
            assert klab.ssh(NAS, ["zfs", "destroy", snap]).returncode != 0

            # the driver itself on the guest: both backends, and lzc errors mapped
            app = c._app().remote_path      # the app this Cluster uploaded (its cache)
            out = json.loads(klab.out(NAS, ["python3", "-I", "-c", DRIVER_PROBE, app, snap,
                                            name]))
            assert out["backend"] == "lzc" and out["cli_backend"] == "cli"
            assert out["lzc_holds"] == out["cli_holds"] == ["imgstor"]
            assert out["lzc_create_exists"][0] == "AlreadyExists", out
            assert "FilesystemExists" in out["lzc_create_exists"][1]
            assert out["cli_create_exists"][0] == "AlreadyExists", out
            assert out["lzc_hold_missing"][0] == "NotFound", out
            assert out["lzc_destroy_held"][0] == "Conflict", out
            assert "SnapshotIsHeld" in out["lzc_destroy_held"][1]

            # a newer one: the prune releases the old one's hold and destroys it
            c.step(NAS, "nas.snapshot", pool="tank", vol=vol, snapshot="imgstor-k2")
            r = c.step(NAS, "nas.prune_snapshots", pool="tank", vol=vol, keep=1)
            assert r.changed and r.facts["destroyed"] == [snap]
            assert [x for x in r.commands if x.startswith("lzc_")] == [
                f"lzc_release {snap} imgstor", f"lzc_destroy_snaps {snap}"], r.commands
            assert snaps() == [f"{name}@imgstor-k2"]
            assert not c.step(NAS, "nas.prune_snapshots", pool="tank", vol=vol,
                              keep=1).changed

            # a snapshot with an imgstor name that imgstor did not make is left alone
            klab.out(NAS, ["zfs", "snapshot", f"{name}@imgstor-byhand"])
            from imgstor.errors import Conflict
            with pytest.raises(Conflict, match="not made by imgstor"):
                c.step(NAS, "nas.snapshot", pool="tank", vol=vol, snapshot="imgstor-byhand")
            assert snaps() == [f"{name}@imgstor-k2", f"{name}@imgstor-byhand"]
    finally:
        klab.ssh(NAS, f"zfs release imgstor {snap} 2>/dev/null; zfs destroy -r {name}")
