"""Operations on the kernel lab (issue 11; one sync cycle for two features, to keep the
slow lab short): the state file lost while a direct volume (a kernel session, /dev/sdX)
and a sync volume (dm linear on its local OpenZFS zvol) are mapped -> ``imgstor rebuild``
gives the same listing and devices; then the sync volume's compute guest is reset -> it
comes back with its pool imported and no dm device -> ``imgstor refresh`` makes the VM's
device again, its data intact; both unmaps work, the NAS holds every byte (sha256).
The lab is shared: the state file found at the start is put back at the end."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import uuid

import pytest

from imgstor.state import Store
from tests.lab_kernel.conftest import LAB_KERNEL
from tests.lab_kernel.test_imgstor_kernel import NAS, cli, sessions
from tests.lab_kernel.test_sync_kernel import (
    NODE,
    OTHER,
    SIZE,
    MiB,
    dd_in,
    nothing_left,
    prefilled,
    sha,
)

pytestmark = pytest.mark.kernel_lab
COLS = ("zvol", "host", "zpool", "target", "state", "mode")


def listing(klab, vols) -> dict:
    rows = json.loads(cli(klab, "list", "host", "storagemap", NAS, "--json").stdout)["rows"]
    return {r["zvol"]: {c: r[c] for c in COLS} for r in rows if r["zvol"] in vols}


def devices(state) -> dict:
    return {k: v["device"] for k, v in Store(str(state)).read().to_dict()["volumes"].items()}


def test_rebuild_then_reboot_recovery_dm_zvol_lio_iscsiadm(kernel_lab) -> None:
    klab = kernel_lab
    state = klab.dir / "state.json"
    pristine = klab.dir / f"state.json.pristine-{os.getpid()}"
    if state.exists():
        Store(str(state)).fold()                       # the copy is then whole
        shutil.copy2(state, pristine)
    direct = f"krbd-{uuid.uuid4().hex[:6]}"
    svol = None
    try:
        svol, img = prefilled(klab, "kops")
        dev = f"/dev/mapper/{svol}-snap"
        out = cli(klab, "add", "host", "storagemap", NAS, "tank", direct, OTHER, "16M").stdout
        ddev = re.search(r"\n(/dev/sd[a-z]+)\n", out).group(1)
        data = os.urandom(16 * MiB)
        dd_in(klab, OTHER, ddev, 0, data, None)
        cli(klab, "add", "host", "storagemap", NAS, "tank", svol, NODE, "64M", "img_sync=yes",
            "--wait")
        dd_in(klab, NODE, dev, 21, os.urandom(2 * MiB), img)       # the VM's writes

        # rebuild: the state file lost
        mine = (direct, svol)
        before, devs = listing(klab, mine), devices(state)
        assert before[direct]["state"] == before[svol]["state"] == "mapped"
        Store(str(state)).fold()
        os.unlink(state)
        p = cli(klab, "rebuild", "--json", check=False)
        assert p.returncode in (0, 9), p
        assert listing(klab, mine) == before
        got = devices(state)
        for vol in mine:
            assert got[f"{NAS}/{vol}"] == devs[f"{NAS}/{vol}"], (got, devs)
        p = cli(klab, "rebuild", check=False)
        assert p.returncode == 8 and "--force" in p.stderr, p

        # reboot recovery: the sync volume's node reset
        p = subprocess.run([str(LAB_KERNEL), "reboot", NODE], capture_output=True, text=True,
                           timeout=900)
        assert p.returncode == 0, p.stderr[-4000:]
        assert svol not in klab.out(NODE, "dmsetup ls")            # the reboot lost it
        assert f"tank/{svol}" in klab.out(NODE, "zfs list -H -o name").split()  # pool kept
        assert cli(klab, "check", check=False).returncode == 9
        rows = json.loads(cli(klab, "refresh", "--json").stdout)["rows"]
        back = [r for r in rows if r["volume"] == f"{NAS}/{svol}" and r["what"] == "overlay"]
        assert back and "failed" not in back[0]["action"], rows
        assert "linear" in klab.out(NODE, f"dmsetup table {svol}-snap")
        assert sha(klab, NODE, dev) == img.sha()
        dd_in(klab, NODE, dev, 50, os.urandom(MiB), img)          # the VM goes on

        # both unmaps from the rebuilt state; the NAS holds the data
        cli(klab, "remove", "host", "storagemap", NAS, direct)
        assert direct not in sessions(klab, OTHER)
        assert klab.out(NAS, f"head -c {16 * MiB} /dev/zvol/tank/{direct} | sha256sum"
                        ).split()[0] == hashlib.sha256(data).hexdigest()
        cli(klab, "remove", "host", "storagemap", NAS, svol, "--wait")
        assert sha(klab, NAS, f"/dev/zvol/tank/{svol}") == img.sha()
        assert len(img.data) == SIZE
        nothing_left(klab, svol)
    finally:
        for vol in (direct, svol):
            if vol:
                cli(klab, "remove", "host", "storagemap", NAS, vol, "--wait", check=False)
                cli(klab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)
        if pristine.exists():
            os.replace(pristine, state)                    # the shared lab as it was found
        elif state.exists():
            os.unlink(state)
