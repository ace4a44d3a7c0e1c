"""imgstorageadmin driven in a real terminal (pexpect) through the guide's NAS and VM
container dialogues on the userspace lab: the store is updated, the targets are really gone
from tgtd's live listing (no I_T nexus left), the initiators can no longer log in, and the
data on the NAS is intact (sha256)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pexpect
import pytest

from imgstor.state import Store
from imgstor.workflows.admin_dialogue import SEPARATOR
from imgstor.workflows.storagemap import target_iqn
from tests.conftest import Lab
from tests.lab.test_direct import NAS, MiB, cli, nas_sha, read_through, targets, write_through

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
ADMIN = [str(ROOT / "bin" / "imgstorageadmin")]


def spawn(lab: Lab, *args: str) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, [*ADMIN, "--config", str(lab.config_path), *args],
                         cwd=str(ROOT), encoding="utf-8", timeout=120,
                         dimensions=(50, 200))


def rec(lab: Lab, vol: str) -> dict:
    # through the store: the file alone may lack its journal's transactions (issue 25)
    return Store(str(lab.dir / "state.json")).read().to_dict()["volumes"][f"{NAS}/{vol}"]


def number_of(text: str, pattern: str) -> str:
    m = re.search(rf"^(?:Target )?(\d+):? {pattern}", text, re.M)
    assert m, f"{pattern!r} not listed in:\n{text}"
    return m.group(1)


def gone(lab: Lab, host: str, vol: str) -> None:
    """No target for vol on the NAS, no initiator logged in, and host can no longer read."""
    live = targets(lab)
    assert target_iqn(NAS, vol) not in live
    assert "I_T nexus: " not in live
    assert not isinstance(read_through(lab, host, vol, MiB, check=False), str)


def test_guide_nas_dialogue(lab: Lab) -> None:
    tag = uuid.uuid4().hex[:6]
    a, b, c = f"adm-a{tag}", f"adm-b{tag}", f"adm-c{tag}"
    cli(lab, "add", "host", "storagemap", NAS, "tank", a, "compute-0-0", "64M")
    cli(lab, "add", "host", "storagemap", NAS, "tank", b, "compute-0-1", "64M")
    want = write_through(lab, "compute-0-0", a, 3, f"adm{tag}")
    # a map killed right after marking its volume busy: the stale marker the guide unbusies
    p = cli(lab, "add", "host", "storagemap", NAS, "tank", c, "compute-0-1", "64M",
            env={"IMGSTOR_FAULT": "busy"}, check=False)
    assert p.returncode != 0 and rec(lab, c)["busy"]
    try:
        s = spawn(lab)
        s.expect_exact("Which host? (number or name) ")
        s.sendline(number_of(s.before, r"nas-0-0 \(nas\)"))
        s.expect_exact("Unmap iSCSI target? [y]|n: ")
        s.sendline("")                                         # the guide's default: y
        s.expect_exact("Which target number would you like to delete? (number) ")
        listing = s.before
        assert f"Target {number_of(listing, re.escape(target_iqn(NAS, b)))}: " in listing
        s.sendline("x")                                        # bad input: asked again
        s.expect_exact("Which target number would you like to delete? (number) ")
        s.sendline(number_of(listing, re.escape(target_iqn(NAS, a))))
        s.expect_exact("Remove zvol mapping to VM in DB? [y]|n: ")
        assert f"{NAS}:{a} unmapped from compute-0-0" in s.before
        s.sendline("y")
        s.expect_exact("Which zvol? (number) ")
        s.sendline(number_of(s.before, rf"{b} tank {re.escape(target_iqn(NAS, b))} "
                                       "compute-0-1"))
        s.expect_exact("Unbusy the zvol? [y]|n: ")
        assert f"{NAS}:{b} unmapped from compute-0-1" in s.before
        s.sendline("y")
        s.expect_exact("Which zvol? (number) ")
        s.sendline(number_of(s.before, rf"{c} map pid \d+@"))
        s.expect(pexpect.EOF)
        assert "cleared busy marker" in s.before
        s.close()
        assert s.exitstatus == 0, s.before

        # the store: a and b unmapped (ZPOOL kept: the roll nulled it), c no longer busy
        for v in (a, b):
            r = rec(lab, v)
            assert (r["state"], r["host"], r["target"], r["zpool"]) == \
                ("unmapped", None, None, "tank")
        assert rec(lab, c)["busy"] is None
        # live: the targets are gone, nobody logged in, the nodes cannot read; data intact
        gone(lab, "compute-0-0", a)
        gone(lab, "compute-0-1", b)
        assert nas_sha(lab, a, 3 * MiB) == want
    finally:
        for v in (a, b, c):
            cli(lab, "remove", "host", "storagemap", NAS, v, check=False)
            cli(lab, "remove", "host", "storageimg", NAS, "tank", v, check=False)


def test_guide_container_dialogue(lab: Lab) -> None:
    tag = uuid.uuid4().hex[:6]
    d, e = f"adm-d{tag}", f"adm-e{tag}"
    cli(lab, "add", "host", "storagemap", NAS, "tank", d, "compute-0-0", "64M")
    cli(lab, "add", "host", "storagemap", NAS, "tank", e, "compute-0-0", "64M")
    want = write_through(lab, "compute-0-0", d, 2, f"adm{tag}")
    try:
        # Ctrl-C at the first question: nothing is done
        s = spawn(lab, "--host", "compute-0-0")
        s.expect_exact("From which NAS? (Don't forget .ibnet if used) [all]: ")
        s.sendline("")
        s.expect_exact("Unmap iSCSI target? [y]|n: ")
        s.sendintr()
        s.expect(pexpect.EOF)
        s.close()
        assert s.exitstatus == 130 and "interrupted" in s.before
        assert rec(lab, d)["state"] == rec(lab, e)["state"] == "mapped"

        s = spawn(lab, "--host", "compute-0-0")
        s.expect_exact("From which NAS? (Don't forget .ibnet if used) [all]: ")
        s.sendline(f"{NAS}.ibnet")                            # as the guide tells
        s.expect_exact("Unmap iSCSI target? [y]|n: ")
        s.sendline("y")
        s.expect_exact("Which target would you like to delete? (number) ")
        assert re.search(rf"^\d+ \S+:3260,1 {re.escape(target_iqn(NAS, d))} \({d}: ok\)",
                         s.before, re.M), s.before
        s.sendline(number_of(s.before, rf"\S+ {re.escape(target_iqn(NAS, d))}"))
        s.expect_exact("Destroy lvm? [y]|n: ")
        assert f"{NAS}:{d} unmapped from compute-0-0" in s.before
        assert SEPARATOR in s.before
        s.sendline("y")                                       # direct mode: no overlay
        s.expect_exact("Remove zvol? [y]|n: ")
        assert "nothing to choose from" in s.before
        s.sendline("n")
        s.expect(pexpect.EOF)
        s.close()
        assert s.exitstatus == 0, s.before

        r = rec(lab, d)
        assert (r["state"], r["host"], r["target"]) == ("unmapped", None, None)
        assert rec(lab, e)["state"] == "mapped"                # not chosen: untouched
        assert target_iqn(NAS, d) not in targets(lab)
        assert not isinstance(read_through(lab, "compute-0-0", d, MiB, check=False), str)
        assert isinstance(read_through(lab, "compute-0-0", e, MiB), str)
        assert nas_sha(lab, d, 2 * MiB) == want

        # scripted: the same question by flag, refused without a terminal unless --yes
        p = subprocess.run([sys.executable, *ADMIN, "--config", str(lab.config_path),
                            "--host", "compute-0-0", "--unmap-target", e],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert p.returncode == 2 and "not a terminal" in p.stderr
        assert rec(lab, e)["state"] == "mapped"
        p = subprocess.run([sys.executable, *ADMIN, "--config", str(lab.config_path),
                            "--json", "--host", "compute-0-0", "--yes", "--unmap-target", e],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert [x["ok"] for x in json.loads(p.stdout)["rows"]] == [True]
        assert rec(lab, e)["state"] == "unmapped"
        gone(lab, "compute-0-0", e)
    finally:
        for v in (d, e):
            cli(lab, "remove", "host", "storagemap", NAS, v, check=False)
            cli(lab, "remove", "host", "storageimg", NAS, "tank", v, check=False)


def test_sync_volume_cleaned_on_its_node_then_on_the_nas(lab: Lab) -> None:
    """The guide's order for a sync VM: the container's dialogue stops its overlay (the
    qcow2 daemon) and destroys its local copy (record: error), then the NAS's dialogue
    removes the mapping; scripted with --yes and the choice flags."""
    vol = f"adm-s{uuid.uuid4().hex[:6]}"
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, "compute-0-0", "64M",
        "img_sync=yes", "--wait")
    run = [sys.executable, *ADMIN, "--config", str(lab.config_path), "--json", "--yes"]
    try:
        assert rec(lab, vol)["state"] == "mapped"
        p = subprocess.run([*run, "--host", "compute-0-0", "--destroy-lvm", vol,
                            "--remove-zvol", f"tank/{vol}"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        assert [x["question"] for x in json.loads(p.stdout)["rows"]] == ["destroy-lvm",
                                                                    "remove-zvol"]
        assert "WARNING: the data in these volumes is destroyed" in p.stderr
        r = rec(lab, vol)
        assert r["state"] == "error" and "destroyed its local copy" in r["error"]
        # live: no daemon for the volume, no local dataset
        assert lab.ssh("compute-0-0", f"test -e /run/imgstor/qsd/{vol}.pid",
                       check=False).returncode != 0
        assert lab.ssh("compute-0-0", f"zfs list tank/{vol}", check=False).returncode != 0

        p = subprocess.run([*run, "--host", NAS, "--remove-mapping", vol],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        r = rec(lab, vol)
        assert (r["state"], r["host"], r["target"], r["zpool"]) == \
            ("unmapped", None, None, "tank")
        assert target_iqn(NAS, vol) not in targets(lab)
        assert lab.out(NAS, f"zfs get -H -o value imgstor:host tank/{vol}") == "-"
    finally:
        cli(lab, "remove", "host", "storagemap", NAS, vol, check=False)
        cli(lab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)
