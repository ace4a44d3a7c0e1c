"""Transport and node steps on the lab's real sshd: ping, zipapp upload, host keys."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imgstor.config import load_config
from imgstor.errors import HostKeyError, NotFound, TransportError, UsageError
from imgstor.transport import Cluster
from imgstor.zipapp import node_app
from tests.conftest import Lab

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]


def imgstor(lab: Lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgstor", "--config", str(lab.config_path),
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_ping_shows_every_host_and_its_tools(lab: Lab) -> None:
    p = imgstor(lab, "ping", "--json")
    assert p.returncode == 0, p.stderr
    rows = {r["host"]: r for r in json.loads(p.stdout)}
    assert set(rows) == set(lab.names())
    for name, r in rows.items():
        assert r["status"] == "ok"
        for tool in ("zfs", "zpool", "tgtadm", "qemu-img", "iscsi-inq"):
            assert tool in r["tools"].split(","), (name, r["tools"])
        assert r["pools"] == "tank(ONLINE)"
        assert r["initiator"] == lab.host(name)["initiator"]
        assert r["pyzfs"] in ("no", "no /dev/zfs")      # zfs-fuse: no /dev/zfs, the CLI
    table = imgstor(lab, "ping").stdout
    assert table.splitlines()[0].split()[:5] == ["HOST", "ROLE", "STATUS", "TOOLS", "PYZFS"]


def test_zipapp_uploaded_once_then_reused(lab: Lab) -> None:
    host = lab.names("compute")[-1]
    app = node_app()
    lab.ssh(host, f"rm -f {app.remote_path}")
    cfg = load_config(str(lab.config_path))
    with Cluster(cfg) as c:
        assert c.step(host, "probe").facts["hostname"] == host
        assert host in c._uploaded
    mtime = lab.out(host, f"stat -c %Y:%s:%a {app.remote_path}")
    assert mtime.endswith(f":{len(app.data)}:600")
    with Cluster(cfg) as c:
        assert c.upload_node_app(host) is False          # present: not sent again
        c.step(host, "probe")
    assert lab.out(host, f"stat -c %Y:%s:%a {app.remote_path}") == mtime
    assert lab.out(host, "stat -c %a /run/imgstor") == "700"


def test_unknown_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    cfgtext = lab.config_path.read_text()
    kh = tmp_path / "known_hosts"
    # every lab host but the NAS
    kh.write_text("".join(l + "\n" for l in (lab.dir / "known_hosts").read_text().splitlines()
                          if not l.startswith(lab.names("nas")[0] + ",")))
    cfgfile = tmp_path / "imgstor.toml"
    cfgfile.write_text(cfgtext.replace(str(lab.dir / "known_hosts"), str(kh))
                       .replace(str(lab.dir / "state.json"), str(tmp_path / "state.json")))
    cfg = load_config(str(cfgfile))
    with Cluster(cfg) as c:
        with pytest.raises(HostKeyError, match="not in"):
            c.step(lab.names("nas")[0], "probe")
        assert c.step(lab.names("compute")[0], "probe").facts["pools"]
    # a wrong key under the NAS's name and address
    other = (lab.dir / "known_hosts").read_text().splitlines()[1].split(" ", 1)[1]
    nas = lab.host(lab.names("nas")[0])
    kh.write_text(kh.read_text() + f"{nas['name']},{nas['address']} {other}\n")
    with Cluster(load_config(str(cfgfile))) as c:
        with pytest.raises(HostKeyError, match="does not match"):
            c.step(nas["name"], "probe")
    p = subprocess.run([sys.executable, "-m", "imgstor", "--config", str(cfgfile), "ping"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 11 and "does not match" in p.stdout + p.stderr


def test_unreachable_and_unknown_hosts(lab: Lab, tmp_path: Path) -> None:
    cfgfile = tmp_path / "imgstor.toml"
    text = lab.config_path.read_text().replace(str(lab.dir / "state.json"),
                                               str(tmp_path / "state.json"))
    text = text.replace("connect_timeout = 10", "connect_timeout = 2")
    text += '\n[hosts.nas-9-9]\nrole = "nas"\naddress = "127.42.0.250"\n'
    cfgfile.write_text(text)
    cfg = load_config(str(cfgfile))
    with Cluster(cfg) as c:
        with pytest.raises(TransportError, match="nas-9-9"):
            c.step("nas-9-9", "probe")
    p = imgstor(lab, "--config", str(cfgfile), "ping", "no-such-host")
    assert p.returncode == NotFound.exit_code and "unknown host" in p.stderr
    p = imgstor(lab, "ping", "bad;host")
    assert p.returncode == UsageError.exit_code


def test_dry_run_step_reports_and_runs_nothing(lab: Lab) -> None:
    from imgstor.remote.steps import STEPS  # noqa: F401  (registry import works frontend-side)
    cfg = load_config(str(lab.config_path))
    with Cluster(cfg, dry_run=True) as c:
        out = c.step(lab.names("nas")[0], "probe")
        assert out.facts["pools"]       # read-only commands still run in a dry run
