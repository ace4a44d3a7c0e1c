"""Trust II (issue 21) on the kernel lab (dm overlay, OpenZFS zvols, LIO, iscsiadm), one
sync cycle and one reboot for both dm cases, to keep the slow lab short:

- the monitor killed right after ``overlay.merge`` started (``IMGSTOR_FAULT=job:merge-
  started``; before issue 21 the state was still NAS->VM there), the VM writes during
  the merge, then its node is reset: ``refresh`` rebuilds the dm overlay over the *local
  copy* (part of the COW has merged into it), the VM's device reads every write it made
  (sha256), and the job then reaches ``mapped``;
- a process holding ``/dev/mapper/VOL-snap`` open: the unmap exits 8 naming it;
  ``--force`` goes on (the device's table then fails every I/O), and the NAS gets every
  byte the VM wrote.
The lab is shared: the state file found at the start is put back at the end."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from imgstor.state import Store
from tests.lab_kernel.conftest import LAB_KERNEL
from tests.lab_kernel.test_imgstor_kernel import NAS, cli
from tests.lab_kernel.test_sync_kernel import NODE, SIZE, MiB, dd_in, prefilled, row, sha

pytestmark = pytest.mark.kernel_lab


def wait_mapped(klab, vol: str, timeout: float = 900) -> None:
    """Until VOL is mapped on its local copy, starting dead monitors as cron would."""
    deadline = time.monotonic() + timeout
    while row(klab, vol)["state"] != "mapped":
        assert time.monotonic() < deadline, row(klab, vol)
        cli(klab, "refresh", check=False)
        time.sleep(5)


def test_merge_started_then_reboot_and_unmap_in_use_dm(kernel_lab) -> None:
    klab = kernel_lab
    state = klab.dir / "state.json"
    pristine = klab.dir / f"state.json.pristine-{os.getpid()}"
    if state.exists():
        Store(str(state)).fold()                       # the copy is then whole
        shutil.copy2(state, pristine)
    vol = None
    holder = None
    try:
        vol, img = prefilled(klab, "kh1")
        dev = f"/dev/mapper/{vol}-snap"
        cli(klab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "64M", "img_sync=yes",
            env={"IMGSTOR_FAULT": "job:merge-started"})
        dd_in(klab, NODE, dev, 3, os.urandom(4 * MiB), img)           # into the COW
        deadline = time.monotonic() + 600
        while "snapshot-merge" not in klab.out(NODE, f"dmsetup table {vol}-snap"):
            assert time.monotonic() < deadline, "the merge did not start"
            time.sleep(2)
        dd_in(klab, NODE, dev, 40, os.urandom(2 * MiB), img)          # during the merge
        # the node is reset: no dm device, the pool (local copy, COW zvol) kept
        p = subprocess.run([str(LAB_KERNEL), "reboot", NODE], capture_output=True, text=True,
                           timeout=900)
        assert p.returncode == 0, p.stderr[-4000:]
        assert vol not in klab.out(NODE, "dmsetup ls")
        rows = []
        deadline = time.monotonic() + 300
        while f"{vol}-snap" not in klab.out(NODE, "dmsetup ls"):
            assert time.monotonic() < deadline, rows
            rows.append(cli(klab, "refresh", "--json", check=False).stdout)
        table = klab.out(NODE, f"dmsetup table {vol}-snap")
        local = klab.out(NODE, f"stat -L -c %t:%T /dev/zvol/tank/{vol}").split(":")
        assert f"{int(local[0], 16)}:{int(local[1], 16)}" in table, table   # over local
        assert sha(klab, NODE, dev) == img.sha()        # every write the VM made
        wait_mapped(klab, vol)
        assert sha(klab, NODE, dev) == img.sha()
        dd_in(klab, NODE, dev, 60, os.urandom(MiB), img)

        # the VM holds its device: the unmap is refused, naming it; --force goes on
        holder = subprocess.Popen(["ssh", "-F", str(klab.ssh_config), NODE,
                                   f"exec sleep 600 < {dev}"])
        deadline = time.monotonic() + 60
        while klab.ssh(NODE, "pgrep -x -f 'sleep 600'").returncode != 0:
            assert time.monotonic() < deadline, "the holder did not open the device"
            time.sleep(0.5)
        p = cli(klab, "remove", "host", "storagemap", NAS, vol, check=False)
        assert p.returncode == 8 and "in use" in p.stderr and "(sleep)" in p.stderr, p
        assert row(klab, vol)["state"] == "mapped"
        p = cli(klab, "remove", "host", "storagemap", NAS, vol, "--force", "--wait")
        assert "Success" in p.stdout, p
        assert sha(klab, NAS, f"/dev/zvol/tank/{vol}") == img.sha()
        assert len(img.data) == SIZE
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        if vol:
            klab.ssh(NODE, f"dmsetup remove {vol}-snap")    # a forced remove's leftover
            cli(klab, "remove", "host", "storagemap", NAS, vol, "--force", "--wait",
                check=False)
            cli(klab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)
        if pristine.exists():
            Store(str(state)).fold()                   # no journal left to extend it
            os.replace(pristine, state)
        elif state.exists():
            os.unlink(state)
