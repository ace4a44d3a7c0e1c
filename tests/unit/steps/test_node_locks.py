"""Node-side locks (imgstor.remote.locks, audit M3/M11) with real processes: a step of a
volume waits for another process holding that volume's lock, a bounded wait ends in
BusyError naming the holder, and the lock dies with its holder."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from scn_common import NAME, zfs_get

from imgstor.errors import BusyError
from imgstor.remote import locks, node
from tests.scripted import Expect, ScriptedExecutor

ROOT = Path(__file__).resolve().parents[3]
VOLLOCK = "vol%tank%vm1-vol"

HOLDER = textwrap.dedent("""
    import sys, time
    from imgstor.remote import locks
    with locks.hold([sys.argv[1]]):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _holder(name: str, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, name, str(seconds)], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert p.stdout.readline().strip() == "held"
    return p


def _set_props(monkeypatch, capsys, script) -> tuple[int, dict, float]:
    ex = ScriptedExecutor([Expect(**c) for c in script])
    monkeypatch.setattr(node, "LocalExecutor", lambda: ex)
    req = {"args": {"pool": "tank", "vol": "vm1-vol", "props": {"host": "compute-0-0"}}}
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(req)))
    capsys.readouterr()
    t0 = time.monotonic()
    rc = node.main(["node", "nas.set_props"])
    took = time.monotonic() - t0
    ex.assert_done()
    return rc, json.loads(capsys.readouterr().out), took


GET = {"argv": zfs_get("imgstor:host"), "stdout": f"{NAME}\timgstor:host\tcompute-0-0\tlocal\n"}


def test_step_waits_for_the_volume_lock_of_another_process(monkeypatch, capsys):
    p = _holder(VOLLOCK, 1.5)        # e.g. an orphaned step of a killed frontend
    try:
        rc, out, took = _set_props(monkeypatch, capsys, [GET])
    finally:
        p.wait(10)
    assert rc == 0 and out["ok"], out
    assert took >= 1.0, "the step ran while the other process held the volume"


def test_bounded_wait_names_the_holder(monkeypatch, capsys):
    monkeypatch.setattr(locks, "VOLUME_WAIT", 0.5)
    p = _holder(VOLLOCK, 5)
    try:
        rc, out, _ = _set_props(monkeypatch, capsys, [])      # nothing may run
    finally:
        p.kill()
        p.wait(10)
    assert rc == 1 and out["error"]["code"] == "BusyError", out
    assert f"pid {p.pid}" in out["error"]["message"]
    # the kernel dropped the lock with its (killed) holder: the step runs now
    rc, out, _ = _set_props(monkeypatch, capsys, [GET])
    assert rc == 0, out


def test_other_volume_and_read_only_steps_do_not_wait(monkeypatch, capsys):
    monkeypatch.setattr(locks, "VOLUME_WAIT", 0.2)
    p = _holder("vol%tank%other-vol", 5)
    try:
        rc, out, _ = _set_props(monkeypatch, capsys, [GET])
    finally:
        p.kill()
        p.wait(10)
    assert rc == 0, out


def test_lock_names_of_requests():
    batch = {"steps": [
        {"step": "nas.ensure_volume", "args": {"pool": "tank", "vol": "v1", "size": 1, "kind": "file"}},
        {"step": "nas.set_props", "args": {"pool": "tank", "vol": "v1", "props": {}}},
        {"step": "nas.ensure_target", "args": {"driver": "tgt", "iqn": "iqn.2001-04.com.n-v1",
                                               "initiator": "iqn.x:y", "portal": "a:3260",
                                               "pool": "tank", "vol": "v1", "kind": "file"}}]}
    assert sorted(set(node.lock_names("batch", batch))) == ["vol%tank%v1"]
    assert node.lock_names("compute.detach", {"kind": "iscsiadm", "portal": "a:1",
                                              "iqn": "iqn.2001-04.com.N-v1"}) == ["iqn%iqn.2001-04.com.n-v1"]
    assert node.lock_names("nas.target_facts", {"driver": "tgt", "iqn": "iqn.x"}) == []
    assert node.lock_names("compute.devices", {"kind": "userspace", "targets": []}) == []
    with pytest.raises(Exception):
        locks.volume_lock_names({"pool": "tank", "vol": "../../etc"})


def test_lock_dir_must_be_private(tmp_path, monkeypatch):
    d = tmp_path / "open"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    monkeypatch.setenv(locks.LOCK_DIR_ENV, str(d))
    with pytest.raises(BusyError, match="0700"):
        with locks.hold(["targets"]):
            pass


def test_sync_key_files_are_changed_under_one_lock(monkeypatch, tmp_path):
    """Audit L2: two first trusts at once each wrote back the authorized_keys they had
    read, and one sender's line was lost (a 20-VM storm on the lab: "Permission
    denied"). sync.authorize and sync.install_key take the node's sync-keys lock."""
    from imgstor.remote.executor import HostFS
    from imgstor.remote.steps import syncexpect, synckeys
    monkeypatch.setattr(locks, "TARGETS_WAIT", 0.3)
    p = _holder(locks.SYNC_KEYS, 5)
    try:
        ex = ScriptedExecutor([], fs=HostFS())
        with pytest.raises(BusyError, match="the sync keys is locked by pid"):
            synckeys.authorize(ex, public_key="ssh-ed25519 AAAAC3Nz", sender="nas-0-0",
                               from_addresses=["10.1.1.1"], pools=["tank"],
                               authorized_keys=str(tmp_path / "ak"),
                               gate_path=str(tmp_path / "gate"), python="/usr/bin/python3")
        with pytest.raises(BusyError, match="the sync keys"):
            synckeys.install_key(ex, private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nx\n",
                                 pins=[], key_dir=str(tmp_path / "k"))
        with pytest.raises(BusyError, match="the sync keys"):
            syncexpect.revoke(ex, sender="nas-0-0", authorized_keys=str(tmp_path / "ak"))
        assert not (tmp_path / "ak").exists()
    finally:
        p.kill()
        p.wait()
