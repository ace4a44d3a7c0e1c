"""A VM's whole life on imgstor's disk (issue 27), on the userspace lab with the ``qemu``
runner: the lab's Linux guest (lab/guest/build: the Debian kernel, busybox, acpid) boots
with its root filesystem on the volume, writes files with a sha256 manifest, and every
later boot checks every file of it.  Direct mode on compute-0-0, moved to compute-0-1 in
sync mode (the copy, merge and pivot under the writing guest, the sync back after the
powerdown), moved back: the manifest intact each time, e2fsck clean on the NAS.  A guest
that ignores the powerdown: exit 8, disk mapped; --force stops it hard and unmaps.  A
failing pre-start hook: nothing mapped.  The guests' CPU time goes to the summary."""
from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import GUEST_CPU, Lab
from tests.lab.test_direct import NAS, cli, maps, nas_file, opts

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
DIRECT, SYNC = "compute-0-0", "compute-0-1"
TICK = os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def guest() -> dict:
    p = subprocess.run([str(ROOT / "lab" / "guest" / "build")], capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    out = Path(p.stdout.strip().splitlines()[-1])
    return json.loads((out / "manifest.json").read_text())


class CpuMeter:
    """Polls a qemu's /proc/PID/stat until it exits: its user+system CPU seconds."""

    def __init__(self, pid: int) -> None:
        self.pid, self.seconds = pid, 0.0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            try:
                f = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                return
            if f[0] == "Z":
                return
            self.seconds = (int(f[11]) + int(f[12])) / TICK
            time.sleep(0.2)

    def done(self, label: str) -> float:
        self._t.join(timeout=30)
        GUEST_CPU[label] = self.seconds
        return self.seconds


def vm_row(lab: Lab, vm: str) -> dict:
    return json.loads(cli(lab, "list", "host", "vm", vm, "--json").stdout)["rows"][0]


def console(lab: Lab, node: str, vm: str) -> str:
    return lab.out(node, f"cat /run/imgstor/vm/{vm}/console.log 2>/dev/null || true")


def wait_console(lab: Lab, node: str, vm: str, pattern: str, timeout: float = 180) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        text = console(lab, node, vm)
        m = None
        for m in re.finditer(pattern, text):
            pass
        if m is not None:
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"{vm} on {node}: no {pattern!r} on the console:\n{text}")
        time.sleep(0.5)


def wrote(lab: Lab, node: str, vm: str) -> int:
    found = re.findall(r"labguest: wrote (\d+)", console(lab, node, vm))
    return int(found[-1]) if found else 0


def seed(lab: Lab, vol: str, rootfs: str, size_mb: int) -> None:
    """The guest's root image on a new volume, written over a direct map, unmapped."""
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, DIRECT, f"{size_mb}M")
    lab.ssh(DIRECT, f"qemu-img convert -n -f raw {rootfs} --target-image-opts "
                    f"'{opts(lab, vol, DIRECT)}'")
    cli(lab, "remove", "host", "storagemap", NAS, vol)


def fsck_clean(lab: Lab, vol: str) -> str:
    p = lab.ssh(NAS, f"e2fsck -fn {nas_file(lab, vol)}", check=False)
    out = p.stdout.decode() + p.stderr.decode()
    assert p.returncode == 0, out
    return out


def new_guest_vm(lab: Lab, guest: dict, tag: str, append: str = "", **keys: str) -> str:
    vm = f"{tag}-{uuid.uuid4().hex[:6]}"
    cmdline = f"console=ttyS0 quiet panic=-1 labguest.max=40 {append}".strip()
    cli(lab, "add", "host", "vm", DIRECT, f"name={vm}", "mem=96", "cpus=1",
        f"kernel={guest['vmlinux']}", f"initrd={guest['initramfs']}", f"append={cmdline}",
        *[f"{k}={v}" for k, v in keys.items()])
    cli(lab, "set", "host", "vm", "nas", vm, f"nas={NAS}", "zpool=tank")
    return vm


@pytest.fixture
def runners(lab: Lab):
    """Both containers run guests with qemu, compute-0-1 in sync mode; put back after."""
    for h in (DIRECT, SYNC):
        cli(lab, "set", "host", "attr", h, "vm_runner", "qemu")
    cli(lab, "set", "host", "attr", SYNC, "img_sync", "true")
    yield
    for h in (DIRECT, SYNC):
        cli(lab, "remove", "host", "attr", h, "vm_runner", check=False)
    cli(lab, "remove", "host", "attr", SYNC, "img_sync", check=False)


def cleanup(lab: Lab, vm: str) -> None:
    cli(lab, "stop", "host", "vm", vm, "--force", "--timeout", "0", "--wait", check=False)
    cli(lab, "remove", "host", "vm", vm, check=False)
    cli(lab, "remove", "host", "storageimg", NAS, "tank", f"{vm}-vol", check=False)


def boot(lab: Lab, vm: str, node: str, *, env: dict | None = None) -> CpuMeter:
    out = cli(lab, "start", "host", "vm", vm, env=env).stdout
    assert f"guest started on {node} (qemu, pid" in out, out
    row = vm_row(lab, vm)
    assert (row["guest"], row["guest_host"], row["container"]) == ("running", node, node), row
    return CpuMeter(row["guest_pid"])


def test_vm_life_direct_sync_and_moves(lab: Lab, guest: dict, runners, tmp_path) -> None:
    hooklog = Path(f"/var/tmp/vmlife-hook-{uuid.uuid4().hex[:6]}.log")
    hook = Path(f"/var/tmp/vmlife-hook-{uuid.uuid4().hex[:6]}")
    hook.write_text("#!/bin/sh\necho \"$1 $2 $IMGSTOR_PHASE $IMGSTOR_NODE $IMGSTOR_MODE "
                    f"$IMGSTOR_RUNNER $IMGSTOR_DEVICE\" >> {hooklog}\n")
    hook.chmod(0o755)
    vm = new_guest_vm(lab, guest, "vml", "labguest.interval=1", hook=str(hook))
    vol = f"{vm}-vol"
    try:
        seed(lab, vol, guest["rootfs"], 64)
        # 1. direct mode on compute-0-0: boots, writes files
        cpu = boot(lab, vm, DIRECT)
        assert maps(lab)[vol]["state"] == "mapped"
        wait_console(lab, DIRECT, vm, r"labguest: acpid on")
        wait_console(lab, DIRECT, vm, r"labguest: no manifest")
        wait_console(lab, DIRECT, vm, r"labguest: wrote 6\b")
        out = cli(lab, "stop", "host", "vm", vm).stdout
        assert f"guest {vm} shut down on {DIRECT}" in out, out
        n1 = int(wait_console(lab, DIRECT, vm, r"clean shutdown \((\d+) files\)").group(1))
        cpu.done("direct boot+run")
        assert n1 >= 6 and maps(lab)[vol]["state"] == "unmapped"
        assert vm_row(lab, vm)["guest"] == "stopped"
        fsck_clean(lab, vol)
        # 2. moved to compute-0-1, sync mode: the copy waits 20 s (IMGSTOR_PAUSE in the
        # monitor) so the guest boots and writes on the overlay before the merge and pivot
        assert "moved" in cli(lab, "move", "host", "vm", vm, SYNC).stdout
        cpu = boot(lab, vm, SYNC, env={"IMGSTOR_PAUSE": "job:copy:20"})
        row = maps(lab)[vol]
        assert row["host"] == SYNC and row["state"] in ("NAS->VM", "merging"), row
        m = wait_console(lab, SYNC, vm, r"labguest: manifest (OK (\d+) files|FAILED.*)")
        assert m.group(2) and int(m.group(2)) == n1, m.group(0)
        wait_console(lab, SYNC, vm, rf"labguest: wrote {n1 + 2}\b")
        assert maps(lab)[vol]["state"] in ("NAS->VM", "merging")     # before the merge
        at_copy = wrote(lab, SYNC, vm)
        deadline = time.monotonic() + 240
        while maps(lab)[vol]["state"] != "mapped":                   # merged, pivoted
            assert time.monotonic() < deadline, maps(lab)[vol]
            time.sleep(0.5)
        at_pivot = wrote(lab, SYNC, vm)
        wait_console(lab, SYNC, vm, rf"labguest: wrote {at_pivot + 3}\b")   # after it
        assert at_copy < at_pivot or at_pivot < wrote(lab, SYNC, vm)
        out = cli(lab, "stop", "host", "vm", vm, "--wait").stdout
        assert f"guest {vm} shut down on {SYNC}" in out, out
        n2 = int(wait_console(lab, SYNC, vm, r"clean shutdown \((\d+) files\)").group(1))
        cpu.done("sync boot+run")
        assert n2 > at_pivot > n1
        assert maps(lab)[vol]["state"] == "unmapped"                 # the sync back is done
        assert vol not in lab.out(SYNC, "zfs list -H -o name")
        fsck_clean(lab, vol)
        # 3. back to compute-0-0: every file of both runs is there
        cli(lab, "move", "host", "vm", vm, DIRECT)
        cpu = boot(lab, vm, DIRECT)
        m = wait_console(lab, DIRECT, vm, r"labguest: manifest (OK (\d+) files|FAILED.*)")
        assert m.group(2) and int(m.group(2)) == n2, m.group(0)
        cli(lab, "stop", "host", "vm", vm)
        wait_console(lab, DIRECT, vm, r"clean shutdown")
        cpu.done("verify boot")
        fsck_clean(lab, vol)
        phases = [ln.split()[2:5] for ln in hooklog.read_text().splitlines()]
        assert phases[:4] == [["pre-start", DIRECT, "direct"], ["post-start", DIRECT, "direct"],
                              ["pre-stop", DIRECT, "direct"], ["post-stop", DIRECT, "direct"]]
        assert ["post-start", SYNC, "sync"] in phases, phases
        assert "nbd+unix:///" in hooklog.read_text()
    finally:
        cleanup(lab, vm)
        hook.unlink(missing_ok=True)
        hooklog.unlink(missing_ok=True)


def test_guest_ignoring_powerdown(lab: Lab, guest: dict, runners) -> None:
    vm = new_guest_vm(lab, guest, "vmdeaf", "labguest.acpid=0")
    vol = f"{vm}-vol"
    try:
        seed(lab, vol, guest["rootfs"], 64)
        cpu = boot(lab, vm, DIRECT)
        wait_console(lab, DIRECT, vm, r"labguest: acpid off")
        wait_console(lab, DIRECT, vm, r"labguest: wrote 4\b")
        t0 = time.monotonic()
        p = cli(lab, "stop", "host", "vm", vm, "--timeout", "5", check=False)
        assert p.returncode == 8, (p.stdout, p.stderr)
        assert "did not shut down within 5s" in p.stderr and "--force" in p.stderr, p.stderr
        assert time.monotonic() - t0 < 60
        assert maps(lab)[vol]["state"] == "mapped"                   # the disk stays
        assert vm_row(lab, vm)["guest"] == "running"
        assert "labguest: powerdown" not in console(lab, DIRECT, vm)
        assert wrote(lab, DIRECT, vm) >= 4
        rows = json.loads(cli(lab, "refresh", "--json").stdout)["rows"]  # list host vm's
        mine = [r for r in rows if r["what"] == "guest" and r["volume"] == vm]
        assert len(mine) == 1 and mine[0]["action"].startswith("running (pid "), rows
        out = cli(lab, "stop", "host", "vm", vm, "--force", "--timeout", "2").stdout
        assert f"guest {vm} stopped hard on {DIRECT}" in out, out
        cpu.done("deaf guest")
        assert maps(lab)[vol]["state"] == "unmapped"
        assert vm_row(lab, vm)["guest"] == "stopped"
        # what the guest had flushed is on the NAS: replay the journal on a copy, then
        # every file of its manifest has its sha256
        img = f"/var/tmp/{vm}.img"
        d = f"/var/tmp/{vm}.d"
        try:
            lab.ssh(NAS, f"cp --sparse=always {nas_file(lab, vol)} {img}")
            p = lab.ssh(NAS, f"e2fsck -fy {img}", check=False)
            assert p.returncode in (0, 1), p.stdout.decode() + p.stderr.decode()
            lab.ssh(NAS, f"mkdir -p {d} && debugfs -R 'rdump /files /manifest {d}' {img}")
            lines = Path(f"{d}/manifest").read_text().splitlines()
            assert len(lines) >= 4
            p = subprocess.run(["sha256sum", "-c", "--quiet", "manifest"], cwd=d,
                               capture_output=True, text=True)
            assert p.returncode == 0, p.stdout + p.stderr
        finally:
            subprocess.run(["rm", "-rf", img, d])
    finally:
        cleanup(lab, vm)


def test_failing_hook_maps_nothing_failing_guest_keeps_the_disk(lab: Lab, guest: dict, runners) -> None:
    hook = Path(f"/var/tmp/vmlife-nohook-{uuid.uuid4().hex[:6]}")
    hook.write_text("#!/bin/sh\n[ \"$2\" = pre-start ] && { echo 'maintenance window' >&2; "
                    "exit 3; }\nexit 0\n")
    hook.chmod(0o755)
    vm = new_guest_vm(lab, guest, "vmhook", hook=str(hook))
    try:
        p = cli(lab, "start", "host", "vm", vm, "size=64M", check=False)
        assert p.returncode == 8, (p.stdout, p.stderr)
        assert "pre-start hook" in p.stderr and "exited 3" in p.stderr, p.stderr
        assert "maintenance window" in p.stderr and "nothing was done" in p.stderr
        assert f"{vm}-vol" not in maps(lab)                           # never mapped
        assert f"{vm}-vol" not in lab.out(NAS, "zfs list -H -o name")
        assert vm_row(lab, vm)["guest"] is None
        assert lab.ssh(DIRECT, f"test -e /run/imgstor/vm/{vm}", check=False).returncode != 0
        # a guest qemu cannot start: the error says why, the disk stays mapped
        cli(lab, "set", "host", "vm", vm, "hook=", "kernel=/var/tmp/no-such-vmlinux")
        p = cli(lab, "start", "host", "vm", vm, "size=64M", check=False)
        assert p.returncode == 13, (p.stdout, p.stderr)
        assert "its guest did not start on" in p.stderr and "no-such-vmlinux" in p.stderr
        assert "its disk stays mapped" in p.stderr, p.stderr
        assert maps(lab)[f"{vm}-vol"]["state"] == "mapped"
        assert vm_row(lab, vm)["guest"] == "failed"
        out = cli(lab, "stop", "host", "vm", vm).stdout
        assert maps(lab)[f"{vm}-vol"]["state"] == "unmapped", out
    finally:
        cli(lab, "stop", "host", "vm", vm, "--force", "--timeout", "0", check=False)
        cli(lab, "remove", "host", "vm", vm, check=False)
        cli(lab, "remove", "host", "storageimg", NAS, "tank", f"{vm}-vol", check=False)
        hook.unlink(missing_ok=True)
