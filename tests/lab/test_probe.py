"""refresh's probe of every host over one bounded connection pool, on the userspace lab:
every lab host answers with its boot id, a host that refuses connections is reported
down (rows, the record, the metrics file), and the pool never holds more live SSH
connections than ``[ssh] max_connections``."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Lab
from tests.unit.test_refresh import parse_prom

pytestmark = pytest.mark.lab

DOWN = "compute-9-0"        # a configured host whose port refuses connections


def bench_config(lab: Lab, tmp_path: Path, *, limit: int) -> Path:
    """The lab's config with its own state and metrics files, ``max_connections = limit``
    and one more host, DOWN: a lab address on a port nothing listens on."""
    text = lab.config_path.read_text()
    text = re.sub(r'(?m)^path = ".*"$', f'path = "{tmp_path / "state.json"}"\n'
                  f'metrics_path = "{tmp_path / "imgstor.prom"}"', text, count=1)
    text = text.replace("[ssh]\n", f"[ssh]\nmax_connections = {limit}\n", 1)
    text += (f'\n[hosts.{DOWN}]\nrole = "compute"\naddress = "{lab.hosts[0]["address"]}"\n'
             "port = 1\n")
    p = tmp_path / "imgstor.toml"
    p.write_text(text)
    return p


def test_refresh_probes_every_host_and_reports_the_one_it_cannot_reach(lab: Lab,
                                                                      tmp_path) -> None:
    cfg = bench_config(lab, tmp_path, limit=2)
    p = subprocess.run([sys.executable, "-m", "imgstor", "--config", str(cfg), "refresh",
                        "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = {r["host"]: r for r in json.loads(p.stdout)["rows"] if r["what"] == "host"}
    assert set(rows) == set(lab.names()) | {DOWN}
    boot = {h: lab.out(h, "cat /proc/sys/kernel/random/boot_id") for h in lab.names()}
    for h in lab.names():
        assert rows[h]["up"] is True and rows[h]["boot_id"] == boot[h], rows[h]
        assert rows[h]["role"] == lab.host(h)["role"] and rows[h]["error"] is None
    assert rows[DOWN]["up"] is False and "refused" in rows[DOWN]["error"], rows[DOWN]
    assert rows[DOWN]["action"].startswith("DOWN since ")
    fams = parse_prom((tmp_path / "imgstor.prom").read_text())
    up = {ls["host"]: (ls["role"], v) for ls, v in fams["imgstor_host_up"]["samples"]}
    assert up == {**{h: (lab.host(h)["role"], 1) for h in lab.names()}, DOWN: ("compute", 0)}
    secs = {ls["host"] for ls, v in fams["imgstor_host_probe_seconds"]["samples"] if v > 0}
    assert secs == set(up)
    rec = json.loads((tmp_path / "state.json.hosts.json").read_text())
    assert rec[DOWN]["up"] is False and all(rec[h]["up"] for h in lab.names())


def test_the_pool_holds_at_most_max_connections_live(lab: Lab, tmp_path) -> None:
    """In-process, so the live TCP connections of this very process can be counted (ss):
    at most 2 to port 22 at any time while 33 hosts are probed, every lab host answered,
    and a later command on the last host probed reuses its connection."""
    from imgstor.workflows import probe
    from imgstor.workflows.context import Ctx
    ctx = Ctx(config_path=str(bench_config(lab, tmp_path, limit=2)))
    seen: list[int] = []
    real = probe.probe_one

    def counting(cluster, host, role, timeout):
        r = real(cluster, host, role, timeout)
        seen.append(_live_ssh_connections())
        return r
    probe.probe_one = counting
    try:
        got = probe.start(ctx).wait()
    finally:
        probe.probe_one = real
    cl = ctx.cluster
    try:
        assert {p.host for p in got if p.up} == set(lab.names())
        assert seen and max(seen) <= 2 and cl.peak <= 2, (seen, cl.peak)
        last = [p.host for p in got if p.up][-1]
        opened = cl.opened
        if last in cl._conns:
            assert cl.exec(last, ["true"]).rc == 0 and cl.opened == opened
    finally:
        cl.close()
    assert _live_ssh_connections() == 0


def _live_ssh_connections() -> int:
    out = subprocess.run(["ss", "-Htnp", "state", "established", "( dport = :22 )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(1 for ln in out.splitlines() if f"pid={os.getpid()}," in ln)
