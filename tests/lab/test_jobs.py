"""The job runtime on the userspace lab: a restore during the merge (audit M1), a job
that fails for good and is started again by `repair`, and a small boot storm run by one
monitor process (bench/bench_storm.py is the big one)."""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from imgstor.state import Store
from tests.conftest import Lab
from tests.lab.test_direct import NAS, cli, maps, nas_file
from tests.lab.test_overlay import put
from tests.lab.test_restore import refresh_rows, restart
from tests.lab.test_sync import NODE, MiB, node_sha, prefilled_then_removed, wait_state

pytestmark = pytest.mark.lab


def state(lab: Lab) -> dict:
    """The store as a command sees it (the state file and its journal: issue 25)."""
    return Store(str(lab.dir / "state.json")).read().to_dict()


def jobs_of(lab: Lab, vol: str) -> list[dict]:
    return [j for j in state(lab)["jobs"].values() if j["volume"] == f"{NAS}/{vol}"]


def monitor_died(lab: Lab, vol: str, timeout: float = 90) -> dict:
    """The volume's job once the monitor that took it is dead (IMGSTOR_FAULT)."""
    deadline = time.monotonic() + timeout
    while True:
        js = jobs_of(lab, vol)
        if js and js[0]["owner"] and not os.path.exists(f"/proc/{js[0]['owner']['pid']}"):
            return js[0]
        assert time.monotonic() < deadline, (vol, js, maps(lab)[vol])
        time.sleep(0.3)


def config_with(lab: Lab, tmp_path: Path, jobs: str) -> Path:
    p = tmp_path / "imgstor.toml"
    p.write_text(lab.config_path.read_text().replace("[defaults]", f"[jobs]\n{jobs}\n\n"
                                                     "[defaults]", 1))
    return p


@pytest.fixture
def svol(lab: Lab):
    yield from prefilled_then_removed(lab, "jbs")


def test_restore_during_the_merge_reaches_mapped_with_the_data(lab: Lab, svol) -> None:
    """Audit M1: the node's overlay daemon dies while the volume merges; refresh restores
    the overlay (unmerged: `snapshot`) and restarts the job, which merges again, pivots
    and maps the volume on its local copy with every write (on 6f4fae1 the job waited for
    `merged` forever, or its monitor gave up with the overlay gone)."""
    vol, img = svol
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
        env={"IMGSTOR_FAULT": "job:merge"})      # the monitor dies once merging is recorded
    job = monitor_died(lab, vol)
    assert job["phase"] == "merged" and maps(lab)[vol]["state"] == "merging", job
    put(lab, img, vol, 3 * MiB, os.urandom(MiB), "merging")      # the VM writes meanwhile
    restart(NODE, f"qsd:{vol}")                                   # the overlay is gone
    rows = refresh_rows(lab, vol)
    assert [r["what"] for r in rows] == ["overlay"] and "failed" not in rows[0]["action"], rows
    wait_state(lab, vol, "mapped", timeout=240)
    assert node_sha(lab, vol) == img.sha()
    logs = (lab.dir / "jobs" / f"{job['id']}.log").read_text()
    assert "merging into the local again" in logs or "is gone" in logs, logs
    put(lab, img, vol, 11 * MiB, os.urandom(MiB), "mapped")
    cli(lab, "remove", "host", "storagemap", NAS, vol, "--wait")
    assert lab.out(NAS, f"sha256sum < {nas_file(lab, vol)}").split()[0] == img.sha()


def test_a_job_that_fails_for_good_is_shown_and_repair_starts_it_again(lab: Lab, svol,
                                                                        tmp_path) -> None:
    """A stray dataset where the copy must go: every try of the copy fails; after the
    [jobs] policy's tries the job is failed -- on the job, not the volume -- `list` shows
    it, `check` exits 9, refresh leaves it; once the dataset is gone `repair` starts the
    job again from its phase and the volume gets mapped."""
    vol, img = svol
    cfg = config_with(lab, tmp_path, "retry_attempts = 2\nretry_backoff = 1\n"
                                     "retry_backoff_max = 1")
    stray = f"tank/{vol}"
    lab.ssh(NODE, f"zfs create {stray}")
    try:
        cli(lab, "add", "host", "storagemap", NAS, "tank", vol, NODE, "32M", "img_sync=yes",
            config=cfg)
        deadline = time.monotonic() + 240
        while not (js := jobs_of(lab, vol)) or js[0].get("state") != "failed":
            assert time.monotonic() < deadline, js
            time.sleep(1)
        (job,) = js
        assert job["phase"] == "copy" and job["attempts"] == 2 and job["last_error"], job
        rows = json.loads(cli(lab, "list", "host", "storagemap", NAS, "--json").stdout)["rows"]
        row = next(r for r in rows if r["zvol"] == vol)
        assert row["state"] == "NAS->VM (job failed)" and row["job_state"] == "failed", row
        assert state(lab)["volumes"][f"{NAS}/{vol}"]["error"] is None   # not the volume
        p = cli(lab, "check", config=cfg, check=False)
        assert p.returncode == 9 and job["id"] in p.stdout and "failed after 2" in p.stdout
        again = json.loads(cli(lab, "refresh", "--json", config=cfg).stdout)["rows"]
        mine = [r for r in again if r.get("job") == job["id"]]
        assert mine and "not restarted" in mine[0]["action"], again
    finally:
        lab.destroy(NODE, stray)
    p = cli(lab, "repair", config=cfg, check=False)
    assert job["id"] in p.stdout, p.stdout
    wait_state(lab, vol, "mapped", timeout=240)
    assert node_sha(lab, vol) == img.sha()


STORM = 20


def test_small_boot_storm_one_batch_one_monitor(lab: Lab) -> None:
    """20 sync maps in one `imgstor batch` over the lab's NAS and nodes: all mapped, run
    by one monitor process; 20 unmaps in one batch: all unmapped, check exits 0, nothing
    left.  Counts only (bench/bench_storm.py measures a 100-VM storm)."""
    nases, nodes = lab.names("nas"), lab.names("compute")
    tag = uuid.uuid4().hex[:4]
    items = [(nases[i % len(nases)], f"st{tag}-{i}", nodes[(i // len(nases)) % len(nodes)])
             for i in range(STORM)]
    d = Path(tempfile.mkdtemp(prefix="storm-", dir="/var/tmp"))
    (d / "maps").write_text("".join(f"add host storagemap {n} tank {v} {h} 8M img_sync=yes\n"
                                    for n, v, h in items))
    (d / "unmaps").write_text("".join(f"remove host storagemap {n} {v}\n" for n, v, _ in items))
    (d / "rms").write_text("".join(f"remove host storageimg {n} tank {v}\n"
                                   for n, v, _ in items))
    try:
        p = cli(lab, "batch", str(d / "maps"), check=False)
        assert p.returncode == 0 and f"{STORM} items: {STORM} ok" in p.stdout, p.stdout
        owners: set[int] = set()
        deadline = time.monotonic() + 600
        while True:
            st = state(lab)
            owners |= {j["owner"]["pid"] for j in st["jobs"].values() if j.get("owner")}
            vols = {k.split("/")[1]: v for k, v in st["volumes"].items()}
            done = sum(vols[v]["state"] == "mapped" for _, v, _ in items)
            if done == STORM and not st["jobs"]:
                break
            assert time.monotonic() < deadline, (done, st["jobs"])
            time.sleep(1)
        assert len(owners) == 1, owners             # one monitor process ran them all
        p = cli(lab, "batch", str(d / "unmaps"), check=False)
        assert p.returncode == 0 and f"{STORM} items: {STORM} ok" in p.stdout, p.stdout
        while True:
            st = state(lab)
            vols = {k.split("/")[1]: v for k, v in st["volumes"].items()}
            done = sum(vols[v]["state"] == "unmapped" for _, v, _ in items)
            if done == STORM and not st["jobs"]:
                break
            assert time.monotonic() < deadline, (done, st["jobs"])
            time.sleep(1)
        assert cli(lab, "check", check=False).returncode == 0
        for node in nodes:
            left = lab.out(node, "zfs list -H -o name -t all; ps -eo args | "
                                 "grep [q]emu-storage-daemon || true")
            assert not re.search(rf"st{tag}-", left), left
    finally:
        cli(lab, "batch", str(d / "unmaps"), check=False)
        cli(lab, "batch", str(d / "rms"), check=False)
