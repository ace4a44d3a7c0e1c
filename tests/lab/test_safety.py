"""Data safety on the lab's real daemons (issue 8): imgstor touches only what it made,
names never collide, an interrupted map is undone by `remove host storagemap`."""
from __future__ import annotations

import re
import uuid

import pytest

from imgstor.workflows.storagemap import MAP_POINTS, target_iqn
from tests.conftest import Lab
from tests.lab.test_direct import NAS, _snapshot, cli, maps, targets

pytestmark = pytest.mark.lab


def _hand_made(lab: Lab, name: str) -> str:
    """A dataset made by hand on the NAS with a file in it; returns the file's sha256."""
    lab.ssh(NAS, f"zfs create tank/{name} && head -c 65536 /dev/urandom "
                 f"> $(zfs get -H -o value mountpoint tank/{name})/precious")
    return lab.out(NAS, f"sha256sum < $(zfs get -H -o value mountpoint tank/{name})/precious")


def _precious(lab: Lab, name: str) -> str:
    return lab.out(NAS, f"sha256sum < $(zfs get -H -o value mountpoint tank/{name})/precious")


def test_hand_made_dataset_is_never_destroyed_or_exported(lab: Lab) -> None:
    name = f"home{uuid.uuid4().hex[:6]}"
    sha = _hand_made(lab, name)
    try:
        p = cli(lab, "remove", "host", "storageimg", NAS, "tank", name, check=False)
        assert p.returncode == 8 and "is not imgstor's" in p.stderr, p.stderr
        assert _precious(lab, name) == sha
        p = cli(lab, "add", "host", "storagemap", NAS, "tank", name, "compute-0-0", "1G",
                check=False)
        assert p.returncode == 8 and "adopt=yes" in p.stderr, p.stderr
        assert target_iqn(NAS, name) not in targets(lab)
        assert lab.out(NAS, f"zfs get -H -o value imgstor:role tank/{name}") == "-"
        # nothing was recorded either: the map left the store as it was
        assert name not in maps(lab)
        assert cli(lab, "list", "host", "storagemap", NAS, "--verify").returncode == 0
        # another pool than the NAS's img_zpools is refused before anything runs
        p = cli(lab, "remove", "host", "storageimg", NAS, "rpool", name, check=False)
        assert p.returncode == 2 and "img_zpools" in p.stderr
    finally:
        lab.destroy(NAS, f"tank/{name}")


def test_adopt_marks_and_exports_then_remove_keeps_child_data(lab: Lab) -> None:
    name = f"adopt{uuid.uuid4().hex[:6]}"
    lab.ssh(NAS, f"zfs create tank/{name}")
    try:
        out = cli(lab, "add", "host", "storagemap", NAS, "tank", name, "compute-0-0", "16M",
                  "adopt=yes").stdout
        assert re.fullmatch(rf"mapping  {NAS} : tank / {name}  on  compute-0-0\niscsi://\S+\n",
                            out), out
        assert lab.out(NAS, f"zfs get -H -o value imgstor:role tank/{name}") == "volume"
        cli(lab, "remove", "host", "storagemap", NAS, name)
        # a child dataset made by hand inside imgstor's volume: destroy is refused, the
        # child's data survives
        sha = _hand_made(lab, f"{name}/child")
        p = cli(lab, "remove", "host", "storageimg", NAS, "tank", name, check=False)
        assert p.returncode == 8 and f"tank/{name}/child" in p.stderr, p.stderr
        assert _precious(lab, f"{name}/child") == sha
        # a snapshot imgstor did not make is in the way too
        lab.destroy(NAS, f"tank/{name}/child")
        lab.ssh(NAS, f"zfs snapshot tank/{name}@backup")
        p = cli(lab, "remove", "host", "storageimg", NAS, "tank", name, check=False)
        assert p.returncode == 8 and f"tank/{name}@backup" in p.stderr, p.stderr
        lab.ssh(NAS, f"zfs destroy tank/{name}@backup")
        # imgstor's own snapshots go with the volume
        lab.ssh(NAS, f"zfs snapshot tank/{name}@imgstor-1")
        assert cli(lab, "remove", "host", "storageimg", NAS, "tank", name).stdout \
            == f"removing   {NAS} : tank / {name}\nSuccess\n"
        assert lab.ssh(NAS, f"zfs list tank/{name}", check=False).returncode != 0
    finally:
        cli(lab, "remove", "host", "storagemap", NAS, name, check=False)
        if lab.ssh(NAS, f"zfs list tank/{name}", check=False).returncode == 0:
            lab.destroy(NAS, f"tank/{name}")


def test_names_differing_only_in_case_or_dots_are_refused(lab: Lab) -> None:
    tag = uuid.uuid4().hex[:6]
    first = f"Vol{tag}"
    cli(lab, "add", "host", "storagemap", NAS, "tank", first, "compute-0-0", "16M")
    try:
        for other in (f"vol{tag}", f"VOL{tag}"):
            before = _snapshot(lab)
            p = cli(lab, "add", "host", "storagemap", NAS, "tank", other, "compute-0-1", "16M",
                    check=False)
            assert p.returncode == 8 and f"{NAS}:{first}" in p.stderr, p.stderr
            assert _snapshot(lab) == before          # no volume, no record, no target
        # '.' and ':' become the same LIO backstore name: refused too (the store knows)
        cli(lab, "add", "host", "storagemap", NAS, "tank", f"a.{tag}", "compute-0-0", "16M")
        p = cli(lab, "add", "host", "storagemap", NAS, "tank", f"a:{tag}", "compute-0-0",
                "16M", check=False)
        assert p.returncode == 8 and "LIO backstore" in p.stderr, p.stderr
        # imgstor's own derived names on a node
        p = cli(lab, "add", "host", "storagemap", NAS, "tank", f"x{tag}-temp-write",
                "compute-0-0", "16M", check=False)
        assert p.returncode == 2 and "imgstor's own" in p.stderr
        assert cli(lab, "list", "host", "storagemap", NAS, "--verify").returncode == 0
    finally:
        for v in (first, f"a.{tag}"):
            cli(lab, "remove", "host", "storagemap", NAS, v, check=False)
            cli(lab, "remove", "host", "storageimg", NAS, "tank", v, check=False)


@pytest.mark.parametrize("point", MAP_POINTS)
def test_map_killed_at_each_step_then_unmap_leaves_nothing(lab: Lab, point: str) -> None:
    """A kill at any point leaves a record (the map's intent) that `remove host storagemap`
    undoes: no target and no mapping remain; a volume the map made stays, unmapped."""
    vol = f"kill-{point}-{uuid.uuid4().hex[:4]}"
    p = cli(lab, "add", "host", "storagemap", NAS, "tank", vol, "compute-0-1", "16M",
            env={"IMGSTOR_FAULT": point}, check=False)
    assert p.returncode == -9, (point, p.stdout, p.stderr)
    row = maps(lab)[vol]
    assert row["host"] == "compute-0-1"               # the intent, recorded before acting
    # a map to another host is refused until it is undone
    p = cli(lab, "add", "host", "storagemap", NAS, "tank", vol, "compute-0-0", "16M",
            check=False)
    assert p.returncode == 8 and "unmap it first" in p.stderr, p.stderr
    cli(lab, "remove", "host", "storagemap", NAS, vol)
    row = maps(lab)[vol]
    assert (row["state"], row["host"], row["target"]) == ("unmapped", None, None)
    assert target_iqn(NAS, vol) not in targets(lab)
    assert cli(lab, "list", "host", "storagemap", NAS, "--verify").returncode == 0
    cli(lab, "remove", "host", "storageimg", NAS, "tank", vol)
    assert vol not in maps(lab)
