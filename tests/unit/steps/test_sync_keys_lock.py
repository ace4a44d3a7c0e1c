"""Audit L2: ``sync.install_key`` / ``sync.authorize`` / ``sync.revoke`` read, modify and
write root's authorized_keys and the sync key's known_hosts.  Two first trusts at once (a
batch mapping two volumes of one NAS to two nodes) lost one of the lines, and the copy that
lost it stuck.  They now hold the node's ``keys`` lock: here another process doing the same
read-modify-write under that lock keeps its line, and the step's line is there too."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imgstor.remote.executor import LocalExecutor
from imgstor.remote.steps import syncexpect, synckeys

ROOT = Path(__file__).resolve().parents[3]
PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
PRIV = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"

# another step's read-modify-write of PATH, under the keys lock; slow between its read
# and its write, so a step that did not wait for the lock would read before it writes
OTHER = textwrap.dedent("""
    import os, sys, time
    from imgstor.remote import locks
    path, line = sys.argv[1], sys.argv[2]
    with locks.hold([locks.SYNC_KEYS]):
        have = open(path).read()
        print("held", flush=True)
        time.sleep(2)
        with open(path + ".tmp", "w") as f:
            f.write(have + line + "\\n")
        os.replace(path + ".tmp", path)
""")


def _other(path: Path, line: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", OTHER, str(path), line], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def _authorize(tmp_path: Path) -> Path:
    ak = tmp_path / "authorized_keys"
    synckeys.authorize(LocalExecutor("compute-0-0"), public_key=PUB, sender="nas-0-0",
                       from_addresses=["10.1.1.1"], pools=["tank"], authorized_keys=str(ak),
                       gate_path=str(tmp_path / "gate.py"), python=sys.executable)
    return ak


def _install_key(tmp_path: Path) -> Path:
    d = tmp_path / "keydir"
    synckeys.install_key(LocalExecutor("nas-0-0"), private_key=PRIV,
                         pins=[{"alias": "compute-0-0", "keys": [PUB]}], key_dir=str(d))
    return d / "known_hosts"


def _revoke(tmp_path: Path) -> Path:
    ak = tmp_path / "authorized_keys"
    syncexpect.revoke(LocalExecutor("compute-0-0"), sender="nas-0-0",
                      authorized_keys=str(ak))
    return ak


@pytest.mark.parametrize("run, path, before, ours", [
    (_authorize, "authorized_keys", "ssh-rsa AAAA root@admin\n", f"{synckeys.TAG}nas-0-0"),
    (_install_key, "keydir/known_hosts", "imgstor-compute-0-9 " + PUB + "\n",
     "imgstor-compute-0-0 "),
    (_revoke, "authorized_keys",
     f"ssh-rsa AAAA root@admin\nrestrict {PUB} {synckeys.TAG}nas-0-0\n", None),
])
def test_a_concurrent_key_file_change_is_not_lost(tmp_path, run, path, before, ours) -> None:
    f = tmp_path / path
    f.parent.mkdir(mode=0o700, exist_ok=True)
    f.write_text(before)
    other = _other(f, f"imgstor-other {PUB} imgstor-sync:nas-0-1")
    try:
        run(tmp_path)
    finally:
        assert other.wait(timeout=60) == 0
    text = f.read_text()
    assert f"imgstor-other {PUB} imgstor-sync:nas-0-1" in text         # the other's line
    assert "ssh-rsa AAAA root@admin" in text or path.endswith("known_hosts")
    if ours is None:                                                    # revoked
        assert f"{synckeys.TAG}nas-0-0" not in text, text
    else:
        assert ours in text, text

