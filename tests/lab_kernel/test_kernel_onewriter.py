"""Issue 8 on the kernel lab (LIO, open-iscsi): concurrent maps of different volumes on one
NAS all succeed (the node's targets lock around rtslib's saveconfig), and an unmap is
refused while a process on the compute node holds the disk open."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from imgstor.workflows.storagemap import target_iqn

pytestmark = pytest.mark.kernel_lab
ROOT = Path(__file__).resolve().parents[2]
NAS = "nas-0-0"


def test_concurrent_lio_maps_and_unmap_refused_while_in_use(kernel_lab, tmp_path: Path) -> None:
    klab = kernel_lab
    cfg = tmp_path / "imgstor.toml"          # a store of its own: other runs' rows stay out
    cfg.write_text(re.sub(r'(?m)^path = ".*"$', f'path = "{tmp_path / "state.json"}"',
                          klab.config_path.read_text(), count=1))

    def run(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "imgstor", "--config", str(cfg), *args],
                                cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def done(*args: str) -> subprocess.CompletedProcess:
        p = run(*args)
        out, err = p.communicate(timeout=600)
        return subprocess.CompletedProcess(args, p.returncode, out, err)

    tag = uuid.uuid4().hex[:4]
    vols = [f"kc{i}-{tag}" for i in range(3)]
    hosts = ["compute-0-0", "compute-0-1", "compute-0-0"]
    holder = "/tmp/imgstor-holder.pid"
    try:
        procs = [run("add", "host", "storagemap", NAS, "tank", v, h, "32M")
                 for v, h in zip(vols, hosts)]
        outs = [p.communicate(timeout=600) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outs
        assert done("list", "host", "storagemap", NAS, "--verify").returncode == 0
        # rtslib's saveconfig.json is whole and has all three targets
        saved = json.loads(klab.out(NAS, "cat /etc/rtslib-fb-target/saveconfig.json"))
        wwns = {t["wwn"] for t in saved["targets"]}
        assert {target_iqn(NAS, v) for v in vols} <= wwns

        # a process on compute-0-0 holds vol0's disk open (as a VM's qemu would)
        dev = re.search(r"on  compute-0-0\n(/dev/sd[a-z]+)\n", outs[0][0]).group(1)
        klab.out("compute-0-0", f"(nohup sleep 600 < {dev} >/dev/null 2>&1 & echo $! > {holder})")
        p = done("remove", "host", "storagemap", NAS, vols[0])
        assert p.returncode == 8, (p.stdout, p.stderr)
        assert "in use" in p.stderr and "(sleep) has " + dev in p.stderr, p.stderr
        assert target_iqn(NAS, vols[0]) in klab.out("compute-0-0", "iscsiadm -m session")
        klab.out("compute-0-0", f"kill $(cat {holder}); rm -f {holder}")
        assert done("remove", "host", "storagemap", NAS, vols[0]).returncode == 0
        assert target_iqn(NAS, vols[0]) not in klab.ssh("compute-0-0",
                                                        "iscsiadm -m session").stdout.decode()
    finally:
        klab.ssh("compute-0-0", f"[ -f {holder} ] && kill $(cat {holder}); rm -f {holder}")
        for v in vols:
            done("remove", "host", "storagemap", NAS, v, "--force")
            done("remove", "host", "storageimg", NAS, "tank", v)
