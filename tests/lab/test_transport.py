"""Transport and node steps on the lab's real sshd: ping, zipapp upload, host keys."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imgstor.config import load_config
from imgstor.errors import HostKeyError, NotFound, StepError, TransportError, UsageError
from imgstor.hostkeys import UNCONFIRMED
from imgstor.state import Store
from imgstor.transport import Cluster
from tests.conftest import Lab

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]


def imgstor(lab: Lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgstor", "--config", str(lab.config_path),
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_ping_shows_every_host_and_its_tools(lab: Lab) -> None:
    p = imgstor(lab, "ping", "--json")
    assert p.returncode == 0, p.stderr
    rows = {r["host"]: r for r in json.loads(p.stdout)["rows"]}
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
    cfg = load_config(str(lab.config_path))
    # the app the CLI uses: built once into the state directory's cache (two builds of the
    # same sources may differ byte for byte: marshal's output is not deterministic)
    app = Cluster(cfg)._app()
    lab.ssh(host, f"rm -f {app.remote_path}")
    with Cluster(cfg) as c:
        assert c.step(host, "probe").facts["hostname"] == host
        assert host in c._uploaded
    mtime = lab.out(host, f"stat -c %i:%Y:%s:%a {app.remote_path}")   # a new file: new inode
    assert mtime.endswith(f":{len(app.data)}:600")
    with Cluster(cfg) as c:
        c.step(host, "probe")                            # present: not sent again
    assert lab.out(host, f"stat -c %i:%Y:%s:%a {app.remote_path}") == mtime
    assert lab.out(host, "stat -c %a /run/imgstor") == "700"
    # same size, other content: replaced before it runs (not trusted on size alone)
    with Cluster(cfg) as c:
        lab.ssh(host, f"head -c {len(app.data)} /dev/zero > {app.remote_path}")
        assert c.step(host, "probe").facts["hostname"] == host
    assert lab.out(host, f"sha256sum {app.remote_path}").split()[0] == app.sha256
    assert lab.out(host, "ls /run/imgstor | grep -c tmp- || true") == "0"


def test_unsafe_node_app_dir_is_refused(lab: Lab) -> None:
    host = lab.names("compute")[-1]
    cfg = load_config(str(lab.config_path))
    app = Cluster(cfg)._app()
    before = lab.out(host, f"sha256sum {app.remote_path} || true")
    try:
        lab.ssh(host, "chmod 755 /run/imgstor")
        with Cluster(cfg) as c:
            with pytest.raises(StepError, match="not safe to run"):
                c.step(host, "probe")
            with pytest.raises(StepError, match="mode 40755"):   # the upload's own check
                c._check_dir(host, c.connection(host).sftp())
        lab.ssh(host, "chmod 700 /run/imgstor && mv /run/imgstor /run/imgstor.real && "
                      "ln -s /run/imgstor.real /run/imgstor")
        with Cluster(cfg) as c:
            with pytest.raises(StepError, match="not safe to run"):
                c.step(host, "probe")
            with pytest.raises(StepError, match="not safe"):
                c._check_dir(host, c.connection(host).sftp())
    finally:
        lab.ssh(host, "if [ -L /run/imgstor ]; then rm /run/imgstor; "
                      "mv /run/imgstor.real /run/imgstor; fi; chmod 700 /run/imgstor")
    assert lab.out(host, f"sha256sum {app.remote_path} || true") == before


def test_unknown_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    cfgtext = lab.config_path.read_text()
    kh = tmp_path / "known_hosts"
    # every lab host but the NAS
    kh.write_text("".join(it + "\n" for it in (lab.dir / "known_hosts").read_text().splitlines()
                          if not it.startswith(lab.names("nas")[0] + ",")))
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


# ------------------------------------------------------------ host keys through the CLI
def _copy_config(lab: Lab, tmp_path: Path, known_hosts: Path, *, pin: bool = False) -> Path:
    text = lab.config_path.read_text()
    text = text.replace(str(lab.dir / "known_hosts"), str(known_hosts))
    text = text.replace(str(lab.dir / "state.json"), str(tmp_path / "state.json"))
    if pin:
        text = text.replace("[ssh]\n", "[ssh]\naccept_unknown_host_keys = true\n", 1)
    cfgfile = tmp_path / "imgstor.toml"
    cfgfile.write_text(text)
    return cfgfile


def _lab_key(lab: Lab, name: str) -> str:
    """``TYPE BASE64`` of a lab host's key, from the lab's known_hosts."""
    for line in (lab.dir / "known_hosts").read_text().splitlines():
        if line.split(" ", 1)[0].split(",")[0] == name:
            return line.split(" ", 1)[1].strip()
    raise AssertionError(f"no key for {name}")


def _nas_state(lab: Lab, nas: str) -> str:
    return lab.out(nas, "zfs list -H -o name -r tank; tgtadm --lld iscsi --mode target "
                        "--op show | grep -c ^Target || true")


@pytest.mark.parametrize("case", ["unknown", "changed", "changed-with-pinning"])
def test_cli_refuses_untrusted_nas_key_before_any_command(lab: Lab, tmp_path: Path,
                                                         case: str) -> None:
    nas, node = lab.names("nas")[0], lab.names("compute")[0]
    kh = tmp_path / "known_hosts"
    lines = [ln for ln in (lab.dir / "known_hosts").read_text().splitlines()
             if not ln.startswith(nas + ",")]
    if case != "unknown":     # the NAS's name and address with another host's key
        lines.append(f"{nas},{lab.host(nas)['address']} {_lab_key(lab, node)}")
    kh.write_text("\n".join(lines) + "\n")
    kh_before = kh.read_text()
    cfgfile = _copy_config(lab, tmp_path, kh, pin=case == "changed-with-pinning")
    nas_before = _nas_state(lab, nas)
    vol = f"hk-{case[:7]}"
    p = imgstor(lab, "--config", str(cfgfile), "add", "host", "storagemap", nas, "tank", vol,
                node, "64M")
    assert p.returncode == HostKeyError.exit_code, (p.stdout, p.stderr)
    assert ("not in" if case == "unknown" else "does not match") in p.stderr
    assert "accept_unknown_host_keys" not in p.stderr
    assert "trusted on first use" not in p.stderr
    assert kh.read_text() == kh_before                       # nothing pinned
    assert _nas_state(lab, nas) == nas_before                # nothing made on the NAS
    st = Store(str(tmp_path / "state.json")).read().to_dict()
    assert not st.get("volumes"), st                         # and no record


def test_trust_on_first_use_pins_then_refuses_a_changed_key(lab: Lab, tmp_path: Path) -> None:
    nas, node = lab.names("nas")[0], lab.names("compute")[0]
    kh = tmp_path / "ssh" / "known_hosts"                    # does not exist yet
    cfgfile = _copy_config(lab, tmp_path, kh, pin=True)
    p = imgstor(lab, "--config", str(cfgfile), "ping")       # every host at once
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("trusted on first use") == len(lab.names()), p.stderr
    assert p.stderr.count("SHA256:") == len(lab.names())
    # pinned, and marked as nobody's confirmation yet (the sync hop will not use them)
    assert sorted(kh.read_text().splitlines()) == sorted(
        f"{lab.host(h)['address']} {_lab_key(lab, h)} {UNCONFIRMED}" for h in lab.names())
    assert oct(kh.stat().st_mode & 0o777) == "0o600"
    p = imgstor(lab, "--config", str(cfgfile), "ping")       # pinned: accepted, silently
    assert p.returncode == 0 and "trusted on first use" not in p.stderr, p.stderr
    p = imgstor(lab, "--config", str(cfgfile), "ping", "--trust", *lab.names())  # admin checked
    assert p.returncode == 0, p.stderr
    assert sorted(kh.read_text().splitlines()) == sorted(
        f"{lab.host(h)['address']} {_lab_key(lab, h)}" for h in lab.names())
    # the NAS "changed" its key: refused although accept_unknown_host_keys is on
    text = kh.read_text().replace(_lab_key(lab, nas), _lab_key(lab, node))
    kh.write_text(text)
    nas_before = _nas_state(lab, nas)
    p = imgstor(lab, "--config", str(cfgfile), "add", "host", "storagemap", nas, "tank",
                "hk-tofu", node, "64M")
    assert p.returncode == HostKeyError.exit_code and "does not match" in p.stderr, p.stderr
    assert kh.read_text() == text
    assert _nas_state(lab, nas) == nas_before
