"""The roll's sync attributes and the hold on the last common snapshot, on the userspace
lab (zfs-fuse: ``zfs holds`` cannot list tags there, so a hold is checked by its
``userrefs`` count and by ``zfs hold imgstor-base`` answering "tag already exists").

A volume whose own frequency (zvolattr) is shorter than its NAS's (storageattr) gets its
periodic pull at refresh and another volume does not; the speeds reach the copy jobs'
recorded ``bwlimit`` (uploadspeed: the NAS->node copy, downloadspeed: the pull); after
the pull the sent snapshot holds ``imgstor-base`` on both sides and the previous base
(the sync-in's snapshot) no longer does; the unmap releases the NAS's holds and leaves
nothing on the node."""
from __future__ import annotations

import json
import os
import time

import pytest

from tests.conftest import Lab
from tests.lab.test_direct import NAS, cli, maps, nas_file
from tests.lab.test_overlay import put
from tests.lab.test_refresh import jobs_of, nas_snapshots, snapshot_sha, wait_no_job
from tests.lab.test_sync import NODE, MiB, node_sha, nothing_left_on_node, prefilled

pytestmark = pytest.mark.lab


def refs(lab: Lab, host: str, snap: str) -> int:
    return int(lab.out(host, f"zfs get -H -p -o value userrefs {snap}").strip())


def holds_base(lab: Lab, host: str, snap: str) -> bool:
    """SNAP holds imgstor-base (zfs-fuse: trying to hold it again says it exists)."""
    if refs(lab, host, snap) == 0:
        return False
    p = lab.ssh(host, f"zfs hold imgstor-base {snap}", check=False)
    assert p.returncode != 0, f"{host}:{snap} had a hold, but not imgstor-base"
    assert b"tag already exists" in p.stderr, p.stderr
    return True


def job_spec(lab: Lab, sender: str, receiver: str, dataset: str) -> dict:
    name = f"copy@{receiver}:{dataset.replace('/', '%')}"
    return json.loads(lab.out(sender, f"cat '/run/imgstor/jobs/{name}/spec'"))


@pytest.fixture
def two_vols(lab: Lab):
    made = [prefilled(lab, "attr"), prefilled(lab, "attr")]
    yield made
    for vol, _ in made:
        cli(lab, "remove", "host", "storagemap", NAS, vol, "--wait", check=False)
        cli(lab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)
        cli(lab, "remove", "host", "zvolattr", NAS, vol, "frequency", check=False)
        cli(lab, "remove", "host", "zvolattr", NAS, vol, "uploadspeed", check=False)
        cli(lab, "remove", "host", "zvolattr", NAS, vol, "downloadspeed", check=False)
    cli(lab, "remove", "host", "storageattr", NAS, "frequency", check=False)


def test_volume_frequency_speeds_and_the_base_hold(lab: Lab, two_vols) -> None:
    (fast, img), (slow, _) = two_vols
    cli(lab, "set", "host", "storageattr", NAS, "frequency", "1h")
    cli(lab, "set", "host", "zvolattr", NAS, fast, "frequency", "1")
    cli(lab, "set", "host", "zvolattr", NAS, fast, "uploadspeed", "64M")
    cli(lab, "set", "host", "zvolattr", NAS, fast, "downloadspeed", "48M")
    for vol in (fast, slow):
        cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
            "--wait")
    # the NAS->node copy ran with the volume's uploadspeed; the other with none
    assert job_spec(lab, NAS, NODE, f"tank/{fast}")["bwlimit"] == 64 * MiB
    assert job_spec(lab, NAS, NODE, f"tank/{slow}")["bwlimit"] == 0
    # the sync-in's snapshot is the first base, held on both sides
    (base,) = nas_snapshots(lab, fast)
    short = base.split("@")[1]
    assert short.startswith("imgstor-in-")
    assert holds_base(lab, NAS, base) and holds_base(lab, NODE, f"tank/{fast}@{short}")
    rows = {r["zvol"]: r for r in json.loads(cli(lab, "list", "host", "zvolattr", NAS,
                                                 "--json").stdout)["rows"]}
    assert rows[fast]["frequency"] == 1 and rows[slow]["frequency"] == 3600, rows
    assert rows[slow]["frequency_source"] == "storageattr"

    put(lab, img, fast, 3 * MiB, os.urandom(MiB), "pulled")
    time.sleep(1.2)
    out = json.loads(cli(lab, "refresh", "--json").stdout)["rows"]
    mine = {r["volume"]: r["action"] for r in out if r["what"] == "pull"}
    assert mine[f"{NAS}/{fast}"] == "started (NAS<-VM sched)", out
    assert mine[f"{NAS}/{slow}"].startswith("next in ") and \
        3000 < int(mine[f"{NAS}/{slow}"].split()[2].rstrip("s")) <= 3600, out
    assert not jobs_of(lab, slow)
    wait_no_job(lab, fast)
    assert maps(lab)[fast]["state"] == "mapped" and not maps(lab)[fast].get("error")
    # the pull's copy (node -> NAS) ran with the volume's downloadspeed
    spec = job_spec(lab, NODE, NAS, f"tank/{fast}")
    assert spec["bwlimit"] == 48 * MiB and "@imgstor-pull-" in spec["snapshot"], spec
    snaps = nas_snapshots(lab, fast)
    new = snaps[-1]
    assert new.split("@")[1].startswith("imgstor-pull-")
    assert snapshot_sha(lab, new) == img.sha() == node_sha(lab, fast)
    assert [s for s in nas_snapshots(lab, slow) if "@imgstor-pull-" in s] == []
    # the new base held on both sides, the previous one released on both
    nshort = new.split("@")[1]
    assert holds_base(lab, NAS, new) and holds_base(lab, NODE, f"tank/{fast}@{nshort}")
    assert refs(lab, NAS, base) == 0 and refs(lab, NODE, f"tank/{fast}@{short}") == 0
    # the unmap brings the last writes back and releases the holds it owns
    put(lab, img, fast, 7 * MiB, os.urandom(MiB), "last")
    cli(lab, "remove", "host", "storagemap", NAS, fast, "--wait")
    assert lab.out(NAS, f"sha256sum < {nas_file(lab, fast)}").split()[0] == img.sha()
    nothing_left_on_node(lab, fast)
    assert [refs(lab, NAS, s) for s in nas_snapshots(lab, fast)] == \
        [0] * len(nas_snapshots(lab, fast))
    spec = job_spec(lab, NODE, NAS, f"tank/{fast}")
    assert "@imgstor-back-" in spec["snapshot"] and spec["bwlimit"] == 48 * MiB, spec
