"""``lab/lab install`` (what ./demo and ./test run through scripts/setup, and .ci/run)
never removes or replaces what a host has: it simulates the install with ``apt-get -s``
against a made-up dpkg status (apt's ``Dir::State::status``, through APT_CONFIG) and a
made-up /etc, and refuses -- naming the packages -- where apt would remove one, or where
OpenZFS or a tgt/LIO configuration is present, unless IMGSTOR_LAB_ON_THIS_HOST=1.

Nothing real is ever installed or removed: ``apt-get`` on the PATH is a wrapper that runs
only ``apt-get -s`` (and ``apt-config``) for real; ``update`` and ``install`` are recorded
and answer 0."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "lab" / "lab"
REAL_STATUS = Path("/var/lib/dpkg/status")
LAB_PACKAGES = ("zfs-fuse", "tgt")          # taken out of the made-up status: to install

pytestmark = pytest.mark.skipif(
    not shutil.which("apt-get") or not REAL_STATUS.exists() or os.geteuid() != 0,
    reason="needs Debian's apt and dpkg status, and root (lab/lab)")

FAKE_ZFS = """\
Package: zfsutils-linux
Status: install ok installed
Priority: optional
Section: contrib/admin
Installed-Size: 1
Maintainer: nobody
Architecture: amd64
Version: 2.1.11-1+deb12u1
Conflicts: zfs, zfs-fuse
Description: made up by imgstor's test: OpenZFS on this host
"""


@pytest.fixture
def host(tmp_path: Path):
    """(run, status, root): ``run(*args, env)`` runs lab/lab with the made-up status and
    root and the recording apt-get; ``status(extra)`` writes the status."""
    paras = REAL_STATUS.read_text(errors="replace").strip().split("\n\n")
    base = [p for p in paras if not any(p.startswith(f"Package: {n}\n") for n in LAB_PACKAGES)]
    status = tmp_path / "status"
    aptconf = tmp_path / "apt.conf"
    aptconf.write_text(f'Dir::State::status "{status}";\n')
    root = tmp_path / "root"
    (root / "usr" / "sbin").mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    real = shutil.which("apt-get")
    (bindir / "apt-get").write_text(f"""#!/bin/sh
for a in "$@"; do [ "$a" = -s ] && exec {real} "$@"; done
echo "$*" >> {calls}
exit 0
""")
    (bindir / "apt-get").chmod(0o755)

    def write_status(*extra: str) -> None:
        status.write_text("\n\n".join(base + [e.strip() for e in extra]) + "\n")

    def run(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, list]:
        calls.unlink(missing_ok=True)
        e = {k: v for k, v in os.environ.items() if k != "IMGSTOR_LAB_ON_THIS_HOST"}
        e.update(APT_CONFIG=str(aptconf), LAB_HOST_ROOT=str(root),
                 PATH=f"{bindir}:{os.environ['PATH']}", **(env or {}))
        p = subprocess.run([str(LAB), "install", *args], capture_output=True, text=True,
                           env=e, timeout=600)
        done = calls.read_text().splitlines() if calls.exists() else []
        return p, done
    write_status()
    return run, write_status, root


def _installs(calls: list[str]) -> list[str]:
    return [c for c in calls if c.split()[:1] == ["install"]]


def test_a_host_without_storage_gets_the_packages_and_apt_may_remove_nothing(host) -> None:
    run, _, root = host
    if Path("/dev/zfs").exists():
        pytest.skip("this machine has OpenZFS loaded")
    p, calls = run()
    assert p.returncode == 0, p.stderr
    assert calls[0].split()[:1] == ["update"]
    (inst,) = _installs(calls)
    assert "--no-remove" in inst.split() and all(n in inst.split() for n in LAB_PACKAGES)
    assert not (root / "usr/sbin/policy-rc.d").exists()       # made for the install, removed


def test_openzfs_on_the_host_is_refused_naming_what_apt_would_remove(host) -> None:
    """Debian 12's zfsutils-linux Conflicts with zfs-fuse: `apt-get install -y zfs-fuse`
    removed OpenZFS without a question."""
    run, write_status, _ = host
    write_status(FAKE_ZFS)
    p, calls = run()
    assert p.returncode != 0 and _installs(calls) == [], (p.stderr, calls)
    assert "refusing to install" in p.stderr and "zfs-fuse" in p.stderr
    assert "apt would REMOVE: zfsutils-linux" in p.stderr
    assert "OpenZFS is installed (zfsutils-linux)" in p.stderr
    assert "IMGSTOR_LAB_ON_THIS_HOST=1" in p.stderr
    p, calls = run(env={"IMGSTOR_LAB_ON_THIS_HOST": "1"})    # said so: apt may do it
    assert p.returncode == 0, p.stderr
    (inst,) = _installs(calls)
    assert "--no-remove" not in inst.split()
    assert "installing although apt would REMOVE: zfsutils-linux" in p.stderr


def test_a_tgt_or_lio_configuration_is_refused(host) -> None:
    """Each one alone is enough; here all three, each named (one apt simulation)."""
    run, _, root = host
    made = {"etc/tgt/conf.d/cluster.conf": "<target iqn.2001-04.com.nas-0-0-vm1-vol>\n"
            "  backing-store /dev/zvol/tank/vm1-vol\n</target>\n",
            "etc/tgt/targets.conf": "# <target iqn.commented.out>\ndefault-driver iscsi\n",
            "etc/rtslib-fb-target/saveconfig.json": json.dumps(
                {"targets": [{"wwn": "iqn.x"}], "storage_objects": []}),
            "etc/target/saveconfig.json": json.dumps({"targets": [], "storage_objects": []})}
    for path, text in made.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    (root / "sys/kernel/config/target/iscsi/iqn.2003-01.org.linux-iscsi.nas:x").mkdir(
        parents=True)
    p, calls = run()
    assert p.returncode != 0 and _installs(calls) == [], (p.stderr, calls)
    assert f"tgt targets are configured in {root}/etc/tgt/conf.d/cluster.conf" in p.stderr
    assert f"an LIO configuration is saved in {root}/etc/rtslib-fb-target/" in p.stderr
    assert f"LIO targets are live in {root}/sys/kernel/config/target/iscsi" in p.stderr
    assert "targets.conf" not in p.stderr and f"{root}/etc/target/" not in p.stderr


def test_nothing_to_install_is_not_refused(host) -> None:
    """The lab's packages are there already (this machine's real status): no install, and
    no refusal either, whatever the host serves."""
    run, write_status, root = host
    REAL = REAL_STATUS.read_text(errors="replace")
    if not all(f"Package: {n}\n" in REAL for n in LAB_PACKAGES):
        pytest.skip("the lab's packages are not installed here")
    write_status()
    (root / "etc/tgt/conf.d").mkdir(parents=True)
    (root / "etc/tgt/conf.d/x.conf").write_text("<target iqn.x>\n</target>\n")
    p, calls = run("--no-update", "coreutils")
    assert p.returncode == 0 and _installs(calls) == [], p.stderr
    assert "installed already" in p.stderr
