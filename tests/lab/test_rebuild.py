"""`imgstor rebuild` on the userspace lab: the state file lost, made again from the hosts
(the NAS volumes' imgstor: properties, the node's local copy and overlay, live targets);
the listing is the same, a second rebuild refuses, and both unmaps work from it."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from imgstor.state import Store
from tests.conftest import Lab
from tests.lab.test_direct import NAS, cli, maps, nas_sha, read_through, write_through
from tests.lab.test_overlay import put
from tests.lab.test_sync import NODE, OTHER, MiB, node_sha, nothing_left_on_node, prefilled

pytestmark = pytest.mark.lab
COLS = ("zvol", "host", "zpool", "target", "state", "mode")


def devs(state) -> dict[str, tuple]:
    """Each volume's device and qemu spec, as the state file records them."""
    vols = Store(str(state)).read().to_dict()["volumes"]
    return {k: (v["device"], v.get("extra", {}).get("qemu_json")) for k, v in vols.items()}


def test_rebuild_after_the_state_file_is_lost(lab: Lab) -> None:
    tag = os.urandom(2).hex()
    direct, free = f"rbd-{tag}", f"rbf-{tag}"
    svol, img = prefilled(lab, f"rbs-{tag}")
    state = lab.dir / "state.json"
    saved = lab.dir / f"state.json.test-{tag}"
    try:
        cli(lab, "add", "host", "storagemap", NAS, "tank", direct, OTHER, "16M")
        dsha = write_through(lab, OTHER, direct, 16, f"rb-{direct}")
        cli(lab, "add", "host", "storagemap", NAS, "tank", free, OTHER, "8M")
        cli(lab, "remove", "host", "storagemap", NAS, free)
        cli(lab, "add", "host", "storagemap", NAS, "tank", svol, NODE, "32M", "img_sync=yes",
            "--wait")
        put(lab, img, svol, 3 * MiB, os.urandom(MiB), "before-rebuild")
        mine = (direct, free, svol)
        before = {k: {c: r[c] for c in COLS} for k, r in maps(lab).items() if k in mine}
        devices = devs(state)
        assert [before[k]["state"] for k in mine] == ["mapped", "unmapped", "mapped"]
        assert before[svol]["target"] is None and before[direct]["target"]
        # the state file is lost (its journal folded in first, so the copy is whole)
        Store(str(state)).fold()
        shutil.move(state, saved)
        plan = cli(lab, "rebuild", "--dry-run", check=False)
        assert plan.returncode in (0, 9) and "dry run: would write" in plan.stdout, plan
        assert not state.exists()
        p = cli(lab, "rebuild", "--json", check=False)
        assert p.returncode in (0, 9), p
        rows = {r["subject"]: r for r in json.loads(p.stdout)["rows"]}
        for vol in mine:
            assert rows[f"{NAS}/{vol}"]["what"] == "volume", rows
        after = {k: {c: r[c] for c in COLS} for k, r in maps(lab).items() if k in mine}
        assert after == before
        # the devices; the qemu spec of the mapped direct volume (an unmapped one's is
        # a stale leftover of its last map, not restored)
        got = devs(state)
        assert {k: d[0] for k, d in got.items()} == {k: d[0] for k, d in devices.items()}
        assert got[f"{NAS}/{direct}"] == devices[f"{NAS}/{direct}"] and got[f"{NAS}/{direct}"][1]
        p = cli(lab, "check", check=False)          # the live targets agree with it
        assert p.returncode == 0, p.stdout
        # a second rebuild without --force refuses and changes nothing
        text = state.read_bytes()
        p = cli(lab, "rebuild", check=False)
        assert p.returncode == 8 and "--force" in p.stderr, p
        assert state.read_bytes() == text
        # --force: rebuilt again, the old file kept beside it
        p = cli(lab, "rebuild", "--force", check=False)
        assert p.returncode in (0, 9) and "the old file is kept as" in p.stdout, p
        kept = p.stdout.split("the old file is kept as ")[1].split()[0]
        assert open(kept, "rb").read() == text
        os.unlink(kept)
        assert {k: {c: r[c] for c in COLS} for k, r in maps(lab).items() if k in mine} == before
        # both unmaps work from the rebuilt state; the data is intact
        assert read_through(lab, OTHER, direct, 16 * MiB) == dsha
        cli(lab, "remove", "host", "storagemap", NAS, direct)
        assert nas_sha(lab, direct, 16 * MiB) == dsha
        put(lab, img, svol, 7 * MiB, os.urandom(MiB), "after-rebuild")
        assert node_sha(lab, svol) == img.sha()
        cli(lab, "remove", "host", "storagemap", NAS, svol, "--wait")
        assert nas_sha(lab, svol, len(img.data)) == img.sha()
        nothing_left_on_node(lab, svol)
        assert {maps(lab)[v]["state"] for v in mine} == {"unmapped"}
    finally:
        if saved.exists():
            saved.unlink()
        for vol in (direct, svol, free):
            cli(lab, "remove", "host", "storagemap", NAS, vol, "--wait", check=False)
            cli(lab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)
