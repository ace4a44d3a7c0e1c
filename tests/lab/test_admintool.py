"""The administrator's tool on the lab's real daemons (issue 26): the audit trail of a map,
an unmap and a refresh, received by a syslog listener of the test's own (neither lab has
journald or a syslog daemon), and `imgstor doctor` against real hosts."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import Lab

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
NAS, HOST = "nas-0-0", "compute-0-0"
FIELDS = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgstor", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.fixture
def syslog(tmp_path: Path):
    path = tmp_path / "log.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(0.5)
    yield path, s
    s.close()


def received(s: socket.socket) -> list[dict[str, str]]:
    """Every line the listener has, parsed."""
    out = []
    while True:
        try:
            raw = s.recv(65536).decode().rstrip("\0")
        except (TimeoutError, socket.timeout):
            return out
        head, _, rest = raw.partition(": ")
        assert re.fullmatch(r"<\d+>imgstor\[\d+\]", head), raw
        out.append({k: v.strip('"') for k, v in FIELDS.findall(rest)})


def config_with(lab: Lab, tmp_path: Path, extra: str) -> Path:
    cfg = tmp_path / "imgstor.toml"
    cfg.write_text(extra + lab.config_path.read_text())
    return cfg


def test_audit_lines_of_a_map_an_unmap_and_a_refresh(lab: Lab, tmp_path: Path, syslog) -> None:
    path, s = syslog
    # a host that does not answer (new to refresh's record of the hosts, which the lab's
    # state keeps between runs): the refresh has something to log, it went down
    gone = f"compute-9-{uuid.uuid4().int % 100000}"
    down = f'[hosts.{gone}]\nrole = "compute"\naddress = "{lab.host(HOST)["address"]}"\n' \
           'port = 1\n'
    cfg = config_with(lab, tmp_path, f'[log]\nsyslog = "{path}"\n')
    cfg.write_text(cfg.read_text() + down)
    vol = f"aud-{uuid.uuid4().hex[:6]}"
    try:
        p = cli(cfg, "add", "host", "storagemap", NAS, "tank", vol, HOST, "8M")
        assert p.returncode == 0, p.stderr
        (m,) = received(s)
        assert (m["what"], m["target"], m["result"], m["exit"]) == (
            "add host storagemap", f"{NAS} tank {vol} {HOST} 8M", "ok", "0"), m
        assert m["user"] == "root" and f"{NAS}:{vol} mapped to {HOST}" in m["message"], m
        assert cli(cfg, "list", "host", "storagemap", NAS).returncode == 0
        p = cli(cfg, "remove", "host", "storagemap", NAS, vol)
        assert p.returncode == 0, p.stderr
        (u,) = received(s)
        assert (u["what"], u["target"], u["result"]) == ("remove host storagemap",
                                                         f"{NAS} {vol}", "ok"), u
        assert f"unmapped from {HOST}" in u["message"]
        p = cli(cfg, "refresh")
        assert p.returncode == 0, p.stderr
        r = [x for x in received(s) if x["what"] == "refresh host" and x["target"] == gone]
        assert [x["result"] for x in r] == ["failed"], r
        assert r[0]["message"].startswith("DOWN since "), r
        p = cli(cfg, "refresh")                     # the same again: nothing new to log
        assert p.returncode == 0 and not [x for x in received(s)
                                          if x["what"] == "refresh host"
                                          and x["target"] == gone]
        p = cli(cfg, "remove", "host", "storageimg", NAS, "tank", vol)
        assert p.returncode == 0, p.stderr
        (i,) = received(s)
        assert (i["what"], i["result"]) == ("remove host storageimg", "ok")
    finally:
        cli(lab.config_path, "remove", "host", "storagemap", NAS, vol)
        cli(lab.config_path, "remove", "host", "storageimg", NAS, "tank", vol)


def test_doctor_on_the_lab(lab: Lab, tmp_path: Path, syslog) -> None:
    path, _ = syslog
    (tmp_path / "textfile").mkdir()
    cfg = config_with(lab, tmp_path, f'[log]\nsyslog = "{path}"\n')
    text = cfg.read_text().replace("[state]\n", f'[state]\nmetrics_path = "{tmp_path}/'
                                                'textfile/imgstor.prom"\n', 1)
    cfg.write_text(text + f'[hosts.compute-0-9]\nrole = "compute"\naddress = '
                          f'"{lab.host(HOST)["address"]}"\nport = 1\n')
    assert cli(cfg, "refresh").returncode == 0            # the last refresh: just now
    p = cli(cfg, "doctor", "--json")
    assert p.returncode == 9, p.stdout + p.stderr
    rows = {(r["check"], r["subject"]): r for r in json.loads(p.stdout)["rows"]}
    for name in lab.names():
        for check in ("reachable", "tools", "pools", "clock"):
            assert rows[(check, name)]["ok"], rows[(check, name)]
    assert rows[("tools", NAS)]["detail"].startswith("zfs, zpool, tgtadm 1."), rows
    assert re.fullmatch(r"skew [+-]\d+\.\d\d s \(\+/- \d+\.\d\d\)",
                        rows[("clock", HOST)]["detail"])
    bad = rows[("reachable", "compute-0-9")]
    assert not bad["ok"] and "compute-0-9" in bad["detail"], bad
    for check in ("config", "identity", "state", "audit log", "last refresh", "metrics"):
        (row,) = [r for (c, _), r in rows.items() if c == check]
        assert row["ok"], row
    p = cli(cfg, "doctor", *lab.names())                  # the lab's own hosts: all well
    lines = p.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[1:-1] if ln.split()[1] in
            ("reachable", "tools", "pools", "clock")] == ["ok"] * 4 * len(lab.names())
