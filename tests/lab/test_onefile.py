"""The one-file build (scripts/build-onefile -> dist/imgstor, a shiv zipapp) drives the lab
from outside any venv: `env -i /usr/bin/python3 -I dist/imgstor`, started in an empty
directory.  A direct map whose data is written and read back on the node by sha256, then a
sync map and unmap (their detached monitors are started from the same file), and
`imgstorageadmin` through its symlink.  The build is cached (dist/imgstor.key): it is
redone only when the sources or the pinned dependencies change (about 30 s, from PyPI)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import Lab
from tests.lab.test_direct import NAS, ROOT, MiB, read_through, targets, write_through

pytestmark = pytest.mark.lab
SYSTEM_PYTHON = "/usr/bin/python3"
NODE = "compute-0-0"


@pytest.fixture(scope="module")
def onefile() -> Path:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} is missing: the one-file build targets the system Python")
    p = subprocess.run([str(ROOT / "scripts" / "build-onefile")], capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, f"build-onefile failed:\n{p.stdout}\n{p.stderr}"
    return ROOT / "dist" / "imgstor"


def run(lab: Lab, exe: Path, shiv_root: Path, *args: str,
        check: bool = True) -> subprocess.CompletedProcess:
    """``/usr/bin/python3 -I EXE --config CFG ARGS`` with an empty environment (no venv, no
    PYTHONPATH), in a directory without imgstor's sources."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "SHIV_ROOT": str(shiv_root)}
    p = subprocess.run([SYSTEM_PYTHON, "-I", str(exe), "--config", str(lab.config_path), *args],
                       capture_output=True, text=True, cwd=shiv_root, env=env, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{exe.name} {' '.join(args)} -> {p.returncode}\n{p.stdout}\n"
                             f"{p.stderr}")
    return p


def test_onefile_drives_the_lab_with_the_system_python(lab: Lab, onefile: Path,
                                                       tmp_path: Path) -> None:
    root = tmp_path / "shiv"
    root.mkdir()
    from imgstor import __version__
    assert run(lab, onefile, root, "--version").stdout == f"imgstor {__version__}\n"

    out = run(lab, onefile, root, "ping").stdout
    for h in (NAS, NODE):
        assert h in out, out
    # everything came from the file: its dependencies unpacked under SHIV_ROOT, and the node
    # app on the NAS carries this checkout's node code
    assert list(root.glob("imgstor_*/site-packages/paramiko/__init__.py")), list(root.iterdir())
    want_node = hashlib.sha256((ROOT / "imgstor" / "remote" / "node.py").read_bytes()).hexdigest()
    read = ("import hashlib, sys, zipfile; print(hashlib.sha256(zipfile.ZipFile(sys.argv[1])"
            ".read('imgstor/remote/node.py')).hexdigest())")
    apps = [a for a in lab.out(NAS, "ls /run/imgstor").split() if a.endswith(".pyz")]
    assert want_node in [lab.out(NAS, f'python3 -c "{read}" /run/imgstor/{a}') for a in apps]

    # direct mode: map, write through the node's initiator, read back by sha256 on the node
    vol = f"onefile-{uuid.uuid4().hex[:6]}"
    out = run(lab, onefile, root, "add", "host", "storagemap", NAS, "tank", vol, NODE,
              "16M").stdout
    assert re.search(rf"mapping\s+{NAS} : tank / {vol}\s+on\s+{NODE}", out), out
    want = write_through(lab, NODE, vol, 4, f"onefile-{vol}")
    assert read_through(lab, NODE, vol, 4 * MiB) == want
    assert vol in targets(lab)
    rows = json.loads(run(lab, onefile, root, "--json", "list", "host", "storagemap",
                          NAS).stdout)["rows"]
    assert [(r["host"], r["state"]) for r in rows if r["zvol"] == vol] == [(NODE, "mapped")]
    run(lab, onefile, root, "remove", "host", "storagemap", NAS, vol)
    assert vol not in targets(lab)

    # sync mode: the copy and merge run in a monitor started from the same file
    run(lab, onefile, root, "add", "host", "storagemap", NAS, "tank", vol, NODE, "16M",
        "img_sync=yes", "--wait")
    mp = lab.out(NODE, f"zfs get -H -o value mountpoint tank/{vol}")
    got = lab.out(NODE, f"head -c {4 * MiB} {mp}/disk.raw | sha256sum").split()[0]
    assert got == want                        # the node's local copy has the data
    admin = onefile.parent / "imgstorageadmin"
    rows = json.loads(run(lab, admin, root, "--json", "list").stdout)["rows"]
    assert [r["state"] for r in rows if r["vol"] == vol] == ["mapped"]
    run(lab, onefile, root, "remove", "host", "storagemap", NAS, vol, "--wait")
    run(lab, onefile, root, "remove", "host", "storageimg", NAS, "tank", vol)
    assert vol not in lab.out(NAS, "zfs list -H -o name")
