"""Shared pytest fixtures: the userspace lab, started once per test session.

The lab needs root and the lab packages (`lab/lab install`).  If a healthy lab is already
up (a developer's), it is reused and left running; otherwise the fixture starts one and
takes it down at the end of the session.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "lab" / "lab"


LAB_TIMES: dict[str, float] = {}
# CPU seconds of each QEMU guest a lab test booted (tests/lab/test_vmlife.py), by label
GUEST_CPU: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter):
    if LAB_TIMES:
        terminalreporter.write_line("userspace lab: " + ", ".join(
            f"{k} {v:.1f}s" for k, v in LAB_TIMES.items()))
    if GUEST_CPU:
        terminalreporter.write_line("guest CPU (qemu TCG, user+system): " + ", ".join(
            f"{k} {v:.1f}s" for k, v in GUEST_CPU.items())
            + f"; total {sum(GUEST_CPU.values()):.1f}s")


def pytest_configure(config):
    config.addinivalue_line("markers", "lab: needs the userspace lab (root, namespaces)")
    config.addinivalue_line("markers", "kernel_lab: needs the QEMU kernel lab")


@dataclass
class Lab:
    dir: Path
    config_path: Path
    hosts: list[dict] = field(default_factory=list)

    def names(self, role: str | None = None) -> list[str]:
        return [h["name"] for h in self.hosts if role is None or h["role"] == role]

    def host(self, name: str) -> dict:
        return next(h for h in self.hosts if h["name"] == name)

    def ssh(self, host: str, command: str, *, check: bool = True,
            input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a shell command on a lab host over ssh (host keys verified)."""
        p = subprocess.run(["ssh", "-F", str(self.dir / "ssh_config"), host, command],
                           input=input, capture_output=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{host}: {command!r} failed rc={p.returncode}\n"
                                 f"{p.stderr.decode(errors='replace')}")
        return p

    def out(self, host: str, command: str, **kw) -> str:
        return self.ssh(host, command, **kw).stdout.decode().strip()

    def destroy(self, host: str, dataset: str) -> None:
        """zfs-fuse quirk: `zfs destroy` of a freshly created dataset fails "dataset is
        busy" for a second or two; an explicit `zfs umount` first makes it succeed, and a
        destroy that said "busy" may still complete a moment later ("does not exist")."""
        for _ in range(20):
            p = self.ssh(host, f"zfs umount -f {dataset} 2>/dev/null; zfs destroy -r {dataset}",
                         check=False)
            if p.returncode == 0 or b"does not exist" in p.stderr:
                return
            time.sleep(0.5)
        raise AssertionError(f"{host}: could not destroy {dataset}: {p.stderr!r}")

    def mountpoint(self, host: str, dataset: str) -> str:
        return self.out(host, f"zfs get -H -o value mountpoint {dataset}")


def _lab_cmd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAB), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def lab() -> Lab:
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network and mount namespaces)")
    labdir = Path(os.environ.get("LAB_DIR", "/var/lib/imgstor-lab"))
    st = _lab_cmd("status", "--json")
    reuse = st.returncode == 0 and json.loads(st.stdout).get("up")
    if not reuse:
        t0 = time.monotonic()
        p = _lab_cmd("up")
        if p.returncode != 0:
            pytest.fail(f"lab/lab up failed:\n{p.stdout}\n{p.stderr}")
        LAB_TIMES[f"up ({len(json.loads((labdir / 'lab.json').read_text())['hosts'])} hosts)"] = \
            time.monotonic() - t0
    state = json.loads((labdir / "lab.json").read_text())
    yield Lab(dir=labdir, config_path=labdir / "imgstor.toml", hosts=state["hosts"])
    if not reuse and not os.environ.get("LAB_KEEP"):
        t0 = time.monotonic()
        p = _lab_cmd("down")
        LAB_TIMES["down"] = time.monotonic() - t0
        assert p.returncode == 0, f"lab/lab down failed:\n{p.stderr}"
