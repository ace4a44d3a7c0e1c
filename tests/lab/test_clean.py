"""`imgstor clean host storagemap` on the userspace lab: a sync volume whose node wrote
after the NAS's last snapshot is reset to it -- refused while a VM holds the export and
without --discard-node-data; then the volume reads as the NAS's last snapshot (sha256)
and the node's local copy, temp-write and overlay are gone."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import Lab
from tests.lab.test_direct import NAS, ROOT, cli, maps, nas_sha
from tests.lab.test_overlay import SIZE, nbd, put
from tests.lab.test_refresh import nas_snapshots, snapshot_sha
from tests.lab.test_sync import NODE, MiB, node_sha, nothing_left_on_node, prefilled_then_removed

pytestmark = pytest.mark.lab


@pytest.fixture
def cvol(lab: Lab):
    yield from prefilled_then_removed(lab, "cln")


def nbd_clients(lab: Lab, vol: str) -> int:
    out = lab.out(NODE, "cat /proc/net/unix")
    return sum(1 for ln in out.splitlines()
               if ln.split()[5:6] == ["03"] and ln.endswith(f"/run/imgstor/nbd/{vol}.sock"))


def test_clean_resets_a_sync_volume_to_the_nas_copy(lab: Lab, cvol) -> None:
    vol, img = cvol
    base = img.sha()
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
        "--wait")
    put(lab, img, vol, 5 * MiB, b"\x5a" * MiB, "node-only")
    assert node_sha(lab, vol) == img.sha() != base
    last = nas_snapshots(lab, vol)[-1]
    assert snapshot_sha(lab, last) == base
    # a VM holds the export: refused, whatever the flags
    holder = subprocess.Popen(["ssh", "-F", str(lab.dir / "ssh_config"), NODE,
                               f"qemu-io -f raw -c 'sleep 10000' '{nbd(vol)}'"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 8
        while nbd_clients(lab, vol) == 0:
            assert time.monotonic() < deadline, "qemu-io did not connect"
            time.sleep(0.2)
        p = cli(lab, "clean", "host", "storagemap", NAS, vol, "--yes",
                "--discard-node-data", check=False)
        assert p.returncode == 8 and "in use" in p.stderr and "NBD client" in p.stderr, p
    finally:
        holder.communicate(timeout=60)
    # the node wrote after the NAS's last snapshot: refused without --discard-node-data
    p = cli(lab, "clean", "host", "storagemap", NAS, vol, "--yes", check=False)
    assert p.returncode == 8 and "--discard-node-data" in p.stderr, p
    assert "lost:" in p.stderr and "temp-write" not in p.stderr
    assert maps(lab)[vol]["state"] == "mapped" and node_sha(lab, vol) == img.sha()
    # no terminal and no --yes: nothing done
    p = subprocess.run([sys.executable, "-m", "imgstor", "--config", str(lab.config_path), "clean",
                        "host", "storagemap", NAS, vol, "--discard-node-data"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert p.returncode == 2 and "--yes" in p.stderr, p
    # dry run: the plan, nothing changed
    p = cli(lab, "clean", "host", "storagemap", NAS, vol, "--discard-node-data", "--dry-run")
    assert "lost:" in p.stdout and "dry run" in p.stdout, p.stdout
    assert maps(lab)[vol]["state"] == "mapped"
    # the reset
    p = cli(lab, "clean", "host", "storagemap", NAS, vol, "--yes", "--discard-node-data")
    assert "Success" in p.stdout, p.stdout
    row = maps(lab)[vol]
    assert (row["state"], row["host"], row["target"]) == ("unmapped", None, None), row
    nothing_left_on_node(lab, vol)
    assert nas_sha(lab, vol, SIZE) == base == snapshot_sha(lab, last)
    assert nas_snapshots(lab, vol)[-1] == last           # the NAS's snapshots are kept
    # a second clean: nothing to clean (the volume is unmapped)
    p = cli(lab, "clean", "host", "storagemap", NAS, vol, "--yes", check=False)
    assert p.returncode == 8 and "not a sync volume held on a node" in p.stderr, p
