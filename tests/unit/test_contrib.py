"""contrib/: the systemd units pass ``systemd-analyze verify`` (with the imgstor they call
at the installed path), the service has a start timeout, and the units, the cron file and
the README all call the one installed path."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from imgstor.workflows.refresh import STALE_LOCK

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib"
INSTALLED = "/usr/local/bin/imgstor"


def _unit(name: str) -> dict[str, str]:
    out = {}
    for line in (CONTRIB / name).read_text().splitlines():
        k, eq, v = line.partition("=")
        if eq and not line.startswith("#"):
            out[k.strip()] = v.strip()
    return out


def test_systemd_analyze_verify_passes_on_the_units() -> None:
    """Verified as installed: in a private mount namespace whose /usr/local/bin (a tmpfs)
    has an executable imgstor, so the real /usr/local/bin is never touched."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    units = [str(CONTRIB / n) for n in ("imgstor-refresh.service", "imgstor-refresh.timer")]
    script = (f"mount -t tmpfs imgstor-test {os.path.dirname(INSTALLED)} && "
              f"printf '#!/bin/sh\\n' > {INSTALLED} && chmod 0755 {INSTALLED} && "
              'exec systemd-analyze verify "$@"')
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                        "sh", *units], capture_output=True, text=True, timeout=120)
    if p.returncode != 0 and "Operation not permitted" in p.stderr:
        pytest.skip(f"no mount namespace here: {p.stderr.strip()}")
    # systemd-analyze warns on stderr and still exits 0 for a bad value: both count
    assert (p.returncode, p.stderr) == (0, ""), p.stderr


def test_the_service_calls_the_installed_file_with_a_start_timeout() -> None:
    svc = _unit("imgstor-refresh.service")
    assert svc["ExecStart"] == f"{INSTALLED} refresh --quiet"
    assert svc["Type"] == "oneshot"            # whose start timeout is infinite by default
    m = re.fullmatch(r"(\d+)min", svc["TimeoutStartSec"])
    assert m and int(m.group(1)) * 60 == STALE_LOCK
    assert svc["KillMode"] == "process"        # the monitors it starts outlive it


def test_one_install_path_everywhere() -> None:
    cron = [ln for ln in (CONTRIB / "imgstor.cron").read_text().splitlines()
            if ln and not ln.startswith("#") and "=" not in ln.split()[0]]
    assert cron == [f"* * * * * root {INSTALLED} refresh --quiet"]
    for f in [*CONTRIB.iterdir(), ROOT / "README.md", ROOT / "scripts" / "build-onefile"]:
        assert "/usr/bin/imgstor" not in f.read_text(), f
    readme = (ROOT / "README.md").read_text()
    assert f"install -m 0755 dist/imgstor {INSTALLED}" in readme
    assert f"ln -s /opt/imgstor/bin/imgstor {INSTALLED}" in readme     # pip: a venv
