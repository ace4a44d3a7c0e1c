"""`clean host storagemap` on the kernel lab (dm overlay pivoted to linear on an OpenZFS
zvol): refused while a process holds the dm device, and -- OpenZFS has `written@` -- the
node's writes after the last common snapshot are counted; then the NAS zvol reads as its
last snapshot (the prefill) and nothing of the volume is left on the node."""
from __future__ import annotations

import os

import pytest

from tests.lab_kernel.test_imgstor_kernel import NAS, cli
from tests.lab_kernel.test_sync_kernel import (
    NODE,
    MiB,
    dd_in,
    nothing_left,
    prefilled,
    row,
    sha,
    wait_state,
)

pytestmark = pytest.mark.kernel_lab


def test_clean_dm_zvol_counts_written_and_checks_the_writer(kernel_lab) -> None:
    klab = kernel_lab
    vol, img = prefilled(klab, "kclean")
    base = img.sha()
    holder = "/tmp/imgstor-clean-holder.pid"
    try:
        cli(klab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "64M", "img_sync=yes")
        wait_state(klab, vol, "mapped")
        dev = f"/dev/mapper/{vol}-snap"
        dd_in(klab, NODE, dev, 7, os.urandom(2 * MiB), img)        # after the NAS's snapshot
        # a process holds the device (as a VM's qemu would): refused
        klab.out(NODE, f"(nohup sleep 600 < {dev} >/dev/null 2>&1 & echo $! > {holder})")
        p = cli(klab, "clean", "host", "storagemap", NAS, vol, "--yes",
                "--discard-node-data", check=False)
        assert p.returncode == 8 and "in use" in p.stderr and "(sleep)" in p.stderr, p
        klab.out(NODE, f"kill $(cat {holder}); rm -f {holder}")
        # written@ the last common snapshot is known on OpenZFS: refused, the amount said
        p = cli(klab, "clean", "host", "storagemap", NAS, vol, "--yes", check=False)
        assert p.returncode == 8 and "written on the local copy after @imgstor-in-" in p.stderr, p
        assert row(klab, vol)["state"] == "mapped"
        cli(klab, "clean", "host", "storagemap", NAS, vol, "--yes", "--discard-node-data")
        assert row(klab, vol)["state"] == "unmapped"
        assert sha(klab, NAS, f"/dev/zvol/tank/{vol}") == base
        nothing_left(klab, vol)
    finally:
        klab.ssh(NODE, f"[ -f {holder} ] && kill $(cat {holder}); rm -f {holder}")
        cli(klab, "remove", "host", "storagemap", NAS, vol, "--wait", check=False)
        cli(klab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)
