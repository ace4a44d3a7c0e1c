"""`imgstor doctor` (issue 26): a healthy setup passes every check (exit 0); each broken
precondition fails its own check (exit 9) and says how to fix it.  The hosts answer through
a scripted cluster here; tests/lab/test_admintool.py runs doctor on the lab."""
from __future__ import annotations

import base64
import json
import os
import socket
import time
from types import SimpleNamespace

import pytest

from imgstor.errors import TransportError
from imgstor.workflows import doctor as doc

HOSTS = {"nas-0-0": "nas", "compute-0-0": "compute", "compute-0-1": "compute"}


class Hosts:
    """The cluster doctor talks to: what each host's probe says, its clock."""
    facts: dict[str, dict] = {}
    clock: dict[str, float] = {}
    down: dict[str, str] = {}

    def __init__(self, config, *, dry_run=False, debug=False):
        pass

    def close(self):
        pass

    def step(self, host, name, /, **args):
        assert (name, args) == ("probe", {"versions": True})
        if host in self.down:
            raise TransportError(f"{host} (10.0.0.1:22): {self.down[host]}")
        return SimpleNamespace(facts=self.facts[host])

    def exec(self, host, argv, *, timeout=None, stdin=None, shown=None):
        assert argv == ["date", "+%s.%N"]
        return SimpleNamespace(rc=0, stdout=f"{time.time() + self.clock.get(host, 0):.6f}\n",
                               stderr="")

    def parallel(self, hosts, fn):
        out = {}
        for h in hosts:
            try:
                out[h] = fn(h)
            except TransportError as e:
                out[h] = e
        return out


def _facts(role: str) -> dict:
    tools = {"zfs": "/sbin/zfs", "zpool": "/sbin/zpool", "tgtadm": "/usr/sbin/tgtadm",
             "iscsiadm": "/sbin/iscsiadm", "dmsetup": "/sbin/dmsetup"}
    return {"python": "3.11.2", "kernel": "6.1.0", "tools": tools, "rtslib": False,
            "pools": [{"name": "tank", "size": "9G", "free": "8G", "health": "ONLINE"}],
            "versions": {"zfs": "zfs-2.1.11-1", "tgtadm": "1.0.85",
                         "iscsiadm": "iscsiadm version 2.1.8", "dmsetup":
                         "Library version:   1.02.185 (2022-05-18)"}}


def _key_line(name: str) -> str:
    blob = b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + os.urandom(32)
    return f"{name} ssh-ed25519 {base64.b64encode(blob).decode()}\n"


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A frontend where every check passes."""
    d = tmp_path / "etc"
    d.mkdir()
    ident = d / "id_ed25519"
    ident.write_text("key")
    ident.chmod(0o600)
    kh = d / "known_hosts"
    kh.write_text("".join(_key_line(f"10.0.0.{i}") for i in range(len(HOSTS))))
    kh.chmod(0o644)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "state.json").write_text('{"schema": 1}')
    (state / "state.json").chmod(0o600)
    (state / "state.json.hosts.json").write_text("{}")
    prom = tmp_path / "textfile"
    prom.mkdir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(d / "log.sock"))
    cron = tmp_path / "cron.d"
    cron.mkdir()
    prog = tmp_path / "imgstor"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    (cron / "imgstor").write_text(f"# every minute\n* * * * * root {prog} refresh --quiet\n")
    monkeypatch.setattr(doc, "CRON_PLACES", [str(cron)])
    monkeypatch.setattr(doc, "TIMER_PLACES", [str(tmp_path / "timers" / "imgstor.timer")])
    cfg = d / "imgstor.toml"
    text = (f'[state]\npath = "{state}/state.json"\nmetrics_path = "{prom}/imgstor.prom"\n'
            f'[ssh]\nknown_hosts = "{kh}"\nidentity = "{ident}"\n'
            f'[log]\nsyslog = "{d}/log.sock"\n[defaults]\nimg_zpools = ["tank"]\n'
            'target_driver = "tgt"\n')
    for i, (h, role) in enumerate(HOSTS.items()):
        text += f'[hosts.{h}]\nrole = "{role}"\naddress = "10.0.0.{i}"\n'
    cfg.write_text(text)
    cfg.chmod(0o644)
    monkeypatch.setattr("imgstor.transport.Cluster", Hosts)
    Hosts.facts = {h: _facts(r) for h, r in HOSTS.items()}
    Hosts.clock, Hosts.down = {}, {}
    yield SimpleNamespace(cfg=cfg, ident=ident, kh=kh, state=state, prom=prom, cron=cron,
                          sock=d / "log.sock", prog=prog, tmp=tmp_path)
    sock.close()


def doctor(imgstor, setup, *argv):
    r = imgstor("--config", str(setup.cfg), "--json", "doctor", *argv)
    d = json.loads(r.out)
    assert r.rc == d["exit_code"], r
    return r.rc, {(x["check"], x["subject"]): x for x in d["rows"]}


def failed(rows) -> list[tuple[str, str]]:
    return [k for k, r in rows.items() if not r["ok"]]


def test_all_pass(imgstor, setup):
    rc, rows = doctor(imgstor, setup)
    assert (rc, failed(rows)) == (0, []), rows
    assert len(rows) == 8 + 4 * len(HOSTS)
    assert rows[("tools", "nas-0-0")]["detail"] == "zfs 2.1.11, zpool, tgtadm 1.0.85"
    assert rows[("tools", "compute-0-0")]["detail"] == "iscsiadm 2.1.8, dmsetup 1.02.185"
    text = imgstor("--config", str(setup.cfg), "doctor")
    assert text.rc == 0 and text.out.splitlines()[0].split() == ["STATUS", "CHECK", "SUBJECT",
                                                                 "DETAIL"]
    assert text.out.splitlines()[-1] == f"{len(rows)} checks: {len(rows)} ok, 0 failed"
    rc, rows = doctor(imgstor, setup, "--local")
    assert rc == 0 and len(rows) == 8
    rc, rows = doctor(imgstor, setup, "nas-0-0")
    assert rc == 0 and len(rows) == 8 + 4


def _break(setup, what: str, monkeypatch) -> None:
    cfg = setup.cfg.read_text()
    if what == "config writable by others":
        setup.cfg.chmod(0o666)
    elif what == "identity not set":
        setup.cfg.write_text(cfg.replace(f'identity = "{setup.ident}"\n', ""))
    elif what == "identity readable by others":
        setup.ident.chmod(0o644)
    elif what == "identity missing":
        setup.ident.unlink()
    elif what == "known_hosts lacks a host":
        setup.kh.write_text(_key_line("10.0.0.0"))
    elif what == "known_hosts missing":
        setup.kh.unlink()
    elif what == "known_hosts writable by others":
        setup.kh.chmod(0o666)
    elif what == "state unreadable":
        (setup.state / "state.json").write_text('{"schema": 1, "vms": [')
    elif what == "state dir writable by others":
        setup.state.chmod(0o777)
    elif what in ("state not writable", "metrics dir not writable"):
        # the tests run as root, for whom access(W_OK) is always true: this user's view
        d = str(setup.state if what == "state not writable" else setup.prom)
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if (
            os.fspath(path) == d and mode & os.W_OK) else real(path, mode, **kw))
    elif what == "no syslog socket":
        setup.sock.unlink()
    elif what == "no cron line or timer":
        (setup.cron / "imgstor").write_text("# * * * * * root imgstor refresh\n")
    elif what == "cron runs a missing program":
        setup.prog.unlink()
    elif what == "refresh never ran":
        (setup.state / "state.json.hosts.json").unlink()
    elif what == "last refresh too old":
        then = time.time() - 3600
        os.utime(setup.state / "state.json.hosts.json", (then, then))
    elif what == "metrics not .prom":
        setup.cfg.write_text(cfg.replace("imgstor.prom", "imgstor.txt"))
    elif what == "metrics dir missing":
        setup.prom.rmdir()
    elif what == "host unreachable":
        Hosts.down["compute-0-1"] = "cannot connect: Connection refused"
    elif what == "tool missing":
        del Hosts.facts["compute-0-0"]["tools"]["iscsiadm"]
    elif what == "pool missing":
        Hosts.facts["nas-0-0"]["pools"] = []
    elif what == "pool degraded":
        Hosts.facts["nas-0-0"]["pools"][0]["health"] = "DEGRADED"
    elif what == "sync node without its pool":
        setup.cfg.write_text(cfg + '[hosts.compute-0-9]\nrole = "compute"\naddress = '
                             '"10.0.0.0"\nimg_sync = true\nvm_container_zpool = "local"\n')
        Hosts.facts["compute-0-9"] = _facts("compute")
    elif what == "clock skew":
        Hosts.clock["nas-0-0"] = 60.0
    else:
        raise AssertionError(what)


@pytest.mark.parametrize("what,check,subject", [
    ("config writable by others", "config", "CFG"),
    ("identity not set", "identity", "[ssh] identity"),
    ("identity readable by others", "identity", "IDENT"),
    ("identity missing", "identity", "IDENT"),
    ("known_hosts lacks a host", "known_hosts", "KH"),
    ("known_hosts missing", "known_hosts", "KH"),
    ("known_hosts writable by others", "known_hosts", "KH"),
    ("state unreadable", "state", "STATE"),
    ("state dir writable by others", "state", "STATEDIR"),
    ("state not writable", "state", "STATE"),
    ("no syslog socket", "audit log", "SOCK"),
    ("no cron line or timer", "schedule", "refresh"),
    ("cron runs a missing program", "schedule", "CRON"),
    ("refresh never ran", "last refresh", "HOSTS"),
    ("last refresh too old", "last refresh", "HOSTS"),
    ("metrics not .prom", "config", "CFG"),           # the config refuses it
    ("metrics dir missing", "metrics", "PROM"),
    ("metrics dir not writable", "metrics", "PROM"),
    ("host unreachable", "reachable", "compute-0-1"),
    ("tool missing", "tools", "compute-0-0"),
    ("pool missing", "pools", "nas-0-0"),
    ("pool degraded", "pools", "nas-0-0"),
    ("sync node without its pool", "pools", "compute-0-9"),
    ("clock skew", "clock", "nas-0-0"),
])
def test_each_broken_precondition_fails_its_check(imgstor, setup, monkeypatch, what, check,
                                                  subject):
    _break(setup, what, monkeypatch)
    subject = {"CFG": str(setup.cfg), "IDENT": str(setup.ident), "KH": str(setup.kh),
               "STATE": f"{setup.state}/state.json", "STATEDIR": str(setup.state),
               "SOCK": str(setup.sock), "CRON": str(setup.cron / "imgstor"),
               "HOSTS": f"{setup.state}/state.json.hosts.json",
               "PROM": f"{setup.prom}/imgstor.prom"}.get(subject, subject)
    rc, rows = doctor(imgstor, setup)
    assert rc == 9
    assert failed(rows) == [(check, subject)], rows
    row = rows[(check, subject)]
    assert row["status"] == "FAIL" and row["detail"] and row["fix"], row
    if what == "metrics not .prom":
        assert ".prom" in row["detail"]
    if what == "state unreadable":
        assert "imgstor rebuild" in row["fix"]
    if what == "host unreachable":
        assert "Connection refused" in row["detail"]
        assert ("tools", "compute-0-1") not in rows      # nothing more to ask it
    if what == "clock skew":
        assert row["detail"].startswith("skew +60.0"), row


def test_a_config_that_does_not_load_is_the_one_failed_check(imgstor, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[state\n")
    r = imgstor("--config", str(bad), "doctor")
    assert r.rc == 9 and r.out.splitlines()[1].split()[:2] == ["FAIL", "config"], r
    assert "not valid TOML" in r.out


def test_unknown_host_is_refused_before_anything_runs(imgstor, setup):
    r = imgstor("--config", str(setup.cfg), "doctor", "nas-9-9")
    assert r.rc == 6 and "unknown host 'nas-9-9'" in r.err
