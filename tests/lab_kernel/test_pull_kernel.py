"""The periodic pull on OpenZFS (kernel lab, once): the last common snapshot holds
``imgstor-base`` on both sides -- checked with ``zfs holds``, which zfs-fuse cannot run --
the previous base is released after the pull, and the unmap releases the NAS's hold.  The
pull is due at once through the volume's own frequency (``set host zvolattr``)."""
from __future__ import annotations

import json
import os
import time

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
)

pytestmark = pytest.mark.kernel_lab


def tags(klab, host: str, snap: str) -> list[str]:
    out = klab.out(host, f"zfs holds -H {snap}")
    return sorted(line.split("\t")[1] for line in out.splitlines() if line.strip())


def snaps(klab, host: str, ds: str) -> list[str]:
    out = klab.out(host, f"zfs list -H -o name -t snapshot -s createtxg -d 1 {ds}")
    return [s for s in out.split() if "@imgstor-" in s]


def test_periodic_pull_holds_the_last_common_snapshot(kernel_lab) -> None:
    klab = kernel_lab
    vol, img = prefilled(klab, "khold")
    ds = f"tank/{vol}"
    try:
        cli(klab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "64M",
            "img_sync=yes", "--wait")
        dev = f"/dev/mapper/{vol}-snap"
        (base,) = snaps(klab, NAS, ds)
        short = base.split("@")[1]
        assert short.startswith("imgstor-in-")
        assert tags(klab, NAS, base) == tags(klab, NODE, f"{ds}@{short}") == ["imgstor-base"]
        dd_in(klab, NODE, dev, 20, os.urandom(2 * MiB), img)
        cli(klab, "set", "host", "zvolattr", NAS, vol, "frequency", "1")
        time.sleep(1.5)
        out = json.loads(cli(klab, "refresh", "--json").stdout)
        mine = [r for r in out if r["volume"] == f"{NAS}/{vol}" and r["what"] == "pull"]
        assert mine and mine[0]["action"] == "started (NAS<-VM sched)", out
        deadline = time.monotonic() + 400
        while row(klab, vol)["state"] != "mapped" or row(klab, vol)["job"]:
            assert time.monotonic() < deadline, row(klab, vol)
            time.sleep(2)
        new = snaps(klab, NAS, ds)[-1]
        nshort = new.split("@")[1]
        assert nshort.startswith("imgstor-pull-"), new
        assert tags(klab, NAS, new) == tags(klab, NODE, f"{ds}@{nshort}") == ["imgstor-base"]
        assert tags(klab, NAS, base) == tags(klab, NODE, f"{ds}@{short}") == []
        # the unmap: every write back on the NAS, no hold left there, nothing on the node
        dd_in(klab, NODE, dev, 50, os.urandom(MiB), img)
        cli(klab, "remove", "host", "storagemap", NAS, vol, "--wait")
        assert sha(klab, NAS, f"/dev/zvol/{ds}") == img.sha()
        assert [tags(klab, NAS, s) for s in snaps(klab, NAS, ds)] == \
            [[] for _ in snaps(klab, NAS, ds)]
        nothing_left(klab, vol)
    finally:
        cli(klab, "remove", "host", "storagemap", NAS, vol, "--wait", check=False)
        cli(klab, "remove", "host", "zvolattr", NAS, vol, "frequency", check=False)
        cli(klab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)
