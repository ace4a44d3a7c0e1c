"""Many volumes at once on the lab (issue 13): concurrent `add host storagemap` processes,
and `imgstor batch` -- bad lines, a SIGKILL halfway and a re-run, teardown.

Needs a lab with two NAS: `lab/lab up --hosts nas-0-0,nas-0-1,compute-0-0,compute-0-1`
(skipped on a lab with one NAS)."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from imgstor.names import target_iqn
from tests.conftest import Lab
from tests.lab.test_direct import ROOT, cli

pytestmark = pytest.mark.lab
NASES = ("nas-0-0", "nas-0-1")
COMPUTES = ("compute-0-0", "compute-0-1")


@pytest.fixture
def lab2(lab: Lab) -> Lab:
    if not all(n in lab.names() for n in NASES + COMPUTES):
        pytest.skip("needs `lab/lab up --hosts nas-0-0,nas-0-1,compute-0-0,compute-0-1`")
    return lab


def batch(lab: Lab, text: str, *args: str, env: dict | None = None,
          tmp: Path) -> subprocess.CompletedProcess:
    f = tmp / f"batch-{uuid.uuid4().hex[:6]}.txt"
    f.write_text(text)
    return cli(lab, "batch", str(f), *args, env=env, check=False)


def records(lab: Lab) -> dict[str, dict]:
    return {f"{r['nas']}/{r['zvol']}": r for nas in NASES for r in
            [dict(x, nas=nas) for x in json.loads(
                cli(lab, "list", "host", "storagemap", nas, "--json").stdout)["rows"]]}


def acls(lab: Lab, nas: str) -> dict[str, list[str]]:
    """target IQN -> the initiator names of its ACL, from tgtadm on the NAS."""
    out = lab.out(nas, "tgtadm --lld iscsi --mode target --op show")
    res: dict[str, list[str]] = {}
    for block in out.split("Target ")[1:]:
        iqn = block.split(":", 1)[1].split()[0]
        res[iqn] = block.split("ACL information:", 1)[1].split() if "ACL information:" \
            in block else []
    return res


def plan(vols: list[str]) -> list[tuple[str, str, str]]:
    """(nas, vol, host) spread over both NAS and both computes."""
    return [(NASES[i % 2], v, COMPUTES[(i // 2) % 2]) for i, v in enumerate(vols)]


def check_mapped(lab: Lab, items: list[tuple[str, str, str]]) -> None:
    recs = records(lab)
    acl = {nas: acls(lab, nas) for nas in NASES}
    for nas, vol, host in items:
        r = recs[f"{nas}/{vol}"]
        assert (r["state"], r["host"]) == ("mapped", host), r
        assert acl[nas][target_iqn(nas, vol)] == [lab.host(host)["initiator"]], (nas, vol)
    assert cli(lab, "list", "host", "storagemap", "--verify", check=False).returncode == 0


def teardown(lab: Lab, items, tmp: Path) -> None:
    text = "".join(f"remove host storagemap {n} {v}\nremove host storageimg {n} tank {v}\n"
                   for n, v, _ in items)
    p = batch(lab, text, tmp=tmp)
    assert p.returncode == 0, p.stdout + p.stderr
    recs = records(lab)
    assert not [k for k in recs if k.split("/", 1)[1] in {v for _, v, _ in items}]


def test_50_concurrent_map_processes_over_two_nas(lab2: Lab, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:5]
    items = plan([f"c{tag}-{i}" for i in range(50)])
    procs = [subprocess.Popen([sys.executable, "-m", "imgstor", "--config",
                               str(lab2.config_path), "add", "host", "storagemap", nas,
                               "tank", vol, host, "8M"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for nas, vol, host in items]
    try:
        outs = [(*p.communicate(timeout=600), p.returncode) for p in procs]
        bad = [(items[i], o) for i, o in enumerate(outs) if o[2] != 0]
        assert not bad, bad[:3]
        check_mapped(lab2, items)
        recs = records(lab2)
        assert sum(1 for k in recs if f"c{tag}-" in k) == 50
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        teardown(lab2, items, tmp_path)


def test_batch_bad_lines_kill_and_rerun(lab2: Lab, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:5]
    first = plan([f"b{tag}-{i}" for i in range(20)])
    lines = [f"add host storagemap {n} tank {v} {h} 8M" for n, v, h in first]
    lines[3:3] = ["add host storagemap nas-0-0 tank 'x;reboot' compute-0-0 8M"]
    lines[9:9] = [f"add host storagemap nas-9-9 tank b{tag}-x compute-0-0 8M"]
    lines[15:15] = [f"add host storagemap nas-0-0 tank b{tag}\0y compute-0-0 8M"]
    more: list[tuple[str, str, str]] = []
    try:
        p = batch(lab2, "# 20 maps, 3 bad lines\n" + "\n".join(lines) + "\n", "--json",
                  tmp=tmp_path)
        assert p.returncode == 1, p.stdout + p.stderr
        res = sorted((json.loads(line) for line in p.stdout.splitlines()[:-1]),
                     key=lambda r: r["item"])           # JSON lines, as items finish
        assert len(res) == 23
        assert [r["item"] for r in res if r["exit_code"]] == [4, 10, 16], res
        assert [r["line"] for r in res][:2] == [2, 3]
        check_mapped(lab2, first)

        # 10 new maps + 10 unmaps, killed (SIGKILL) when the first map attaches, run again
        more = plan([f"m{tag}-{i}" for i in range(10)])
        text = "".join(f"add host storagemap {n} tank {v} {h} 8M\n" for n, v, h in more)
        text += "".join(f"remove host storagemap {n} {v}\n" for n, v, _ in first[:10])
        p = batch(lab2, text, env={"IMGSTOR_FAULT": "attach"}, tmp=tmp_path)
        assert p.returncode == -9, p.stdout + p.stderr
        p = batch(lab2, text, tmp=tmp_path)
        assert p.returncode == 0, p.stdout + p.stderr
        assert p.stdout.splitlines()[-1] == "20 items: 20 ok, 0 failed"
        check_mapped(lab2, more + first[10:])
        recs = records(lab2)
        assert all(recs[f"{n}/{v}"]["state"] == "unmapped" for n, v, _ in first[:10])
        p = batch(lab2, text, tmp=tmp_path)          # and again: all already done
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        teardown(lab2, first + more, tmp_path)
