"""nas.snapshot / nas.prune_snapshots on the userspace lab: zfs-fuse has no /dev/zfs, so
the zfs driver uses the CLI (``zfs_backend: cli``) even where pyzfs would import."""
from __future__ import annotations

import io
import uuid

import pytest

from imgstor.config import load_config
from imgstor.errors import Conflict
from imgstor.transport import Cluster
from tests.conftest import Lab

pytestmark = pytest.mark.lab
NAS = "nas-0-0"


def test_snapshot_steps_use_the_cli_on_zfs_fuse(lab: Lab) -> None:
    vol = f"snap-{uuid.uuid4().hex[:6]}"
    name, snapname = f"tank/{vol}", "imgstor-u1"
    snap = f"{name}@{snapname}"
    args = dict(pool="tank", vol=vol, snapshot=snapname)
    cfg = load_config(str(lab.config_path))
    def snaps():
        return lab.out(NAS, f"zfs list -H -t snapshot -o name -r {name}").split()
    try:
        with Cluster(cfg) as c:
            assert c.step(NAS, "probe").facts["pyzfs"] in ("no", "no /dev/zfs")
            r = c.step(NAS, "nas.ensure_volume", pool="tank", vol=vol, size=1 << 20,
                       kind="file")
            assert r.changed and r.facts["zfs_backend"] == "cli"
            lab.ssh(NAS, f"head -c 65536 /dev/urandom > {r.facts['path']}")
        with Cluster(cfg, dry_run=True, err=io.StringIO()) as c:
            r = c.step(NAS, "nas.snapshot", **args, hold=True)
            assert "SKIP> zfs snapshot -o imgstor:role=snapshot " + snap in r.commands
            assert snaps() == []
        with Cluster(cfg) as c:
            r = c.step(NAS, "nas.snapshot", **args, hold=True)
            assert r.changed and r.facts == {"snapshot": snap, "created": True, "held": True,
                                             "zfs_backend": "cli"}
            assert snaps() == [snap]
            assert lab.out(NAS, f"zfs get -H -o value,source imgstor:role {snap}").split() \
                == ["snapshot", "local"]
            # zfs-fuse cannot list holds: the second run finds the hold by trying
            assert not c.step(NAS, "nas.snapshot", **args, hold=True).changed
            assert lab.ssh(NAS, f"zfs destroy {snap}", check=False).returncode != 0  # held
            # a newer one: the prune releases the old one's hold (by trying) and destroys it
            c.step(NAS, "nas.snapshot", pool="tank", vol=vol, snapshot="imgstor-u2")
            r = c.step(NAS, "nas.prune_snapshots", pool="tank", vol=vol, keep=1)
            assert r.changed and r.facts["destroyed"] == [snap]
            assert snaps() == [f"{name}@imgstor-u2"]
            assert not c.step(NAS, "nas.prune_snapshots", pool="tank", vol=vol, keep=1).changed
            lab.ssh(NAS, f"zfs snapshot {name}@imgstor-byhand")
            with pytest.raises(Conflict, match="not made by imgstor"):
                c.step(NAS, "nas.snapshot", pool="tank", vol=vol, snapshot="imgstor-byhand")
            assert snaps() == [f"{name}@imgstor-u2", f"{name}@imgstor-byhand"]
    finally:
        lab.destroy(NAS, name)
