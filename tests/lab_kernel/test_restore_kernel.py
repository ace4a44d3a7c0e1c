"""Reboot recovery on the kernel lab (issue 11): a compute guest reset while a sync volume
is ``mapped`` (dm linear on its local OpenZFS zvol) comes back with its pool imported and
no dm device; ``imgstor refresh`` makes the VM's device again, its data intact."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.lab_kernel.conftest import LAB_KERNEL
from tests.lab_kernel.test_imgstor_kernel import NAS, cli
from tests.lab_kernel.test_sync_kernel import NODE, MiB, dd_in, nothing_left, prefilled, sha

pytestmark = pytest.mark.kernel_lab


def test_compute_rebooted_while_sync_mapped_refresh_brings_the_device_back(kernel_lab) -> None:
    klab = kernel_lab
    vol, img = prefilled(klab, "kboot")
    dev = f"/dev/mapper/{vol}-snap"
    try:
        cli(klab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "64M", "img_sync=yes",
            "--wait")
        dd_in(klab, NODE, dev, 21, os.urandom(2 * MiB), img)      # the VM's writes
        p = subprocess.run([str(LAB_KERNEL), "reboot", NODE], capture_output=True, text=True,
                           timeout=900)
        assert p.returncode == 0, p.stderr[-4000:]
        assert vol not in klab.out(NODE, "dmsetup ls")             # the reboot lost it
        console = subprocess.run([str(LAB_KERNEL), "console", NODE], capture_output=True,
                                 text=True).stdout
        assert "zpool tank imported" in console.split("compute-0-0 reset")[-1] or \
            f"tank/{vol}" in klab.out(NODE, "zfs list -H -o name").split(), console[-3000:]
        assert f"tank/{vol}" in klab.out(NODE, "zfs list -H -o name").split()   # pool kept
        assert cli(klab, "check", check=False).returncode == 9
        rows = json.loads(cli(klab, "refresh", "--json").stdout)
        mine = [r for r in rows if r["volume"] == f"{NAS}/{vol}" and r["what"] == "overlay"]
        assert mine and "failed" not in mine[0]["action"], rows
        assert "linear" in klab.out(NODE, f"dmsetup table {vol}-snap")
        assert sha(klab, NODE, dev) == img.sha()
        dd_in(klab, NODE, dev, 50, os.urandom(MiB), img)          # the VM goes on
        cli(klab, "remove", "host", "storagemap", NAS, vol, "--wait")
        assert sha(klab, NAS, f"/dev/zvol/tank/{vol}") == img.sha()
        nothing_left(klab, vol)
    finally:
        cli(klab, "remove", "host", "storagemap", NAS, vol, "--wait", check=False)
        cli(klab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)
