"""The bounded connection pool (transport.Cluster, ``[ssh] max_connections``) and
refresh's host probe (imgstor/workflows/probe.py), over fake connections."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from imgstor.config import load_config
from imgstor.errors import ConfigError, TransportError
from imgstor.transport import Cluster
from imgstor.workflows import probe
from imgstor.workflows.probe import probe_one as real_probe_one  # conftest fakes it

HOSTS = ["nas-0-0", "nas-0-1"] + [f"compute-0-{i}" for i in range(6)]


def config(tmp_path: Path, limit: int | None = None):
    lines = ['[state]', 'path = "state.json"', '[ssh]', 'connect_timeout = 2']
    if limit is not None:
        lines.append(f"max_connections = {limit}")
    for h in HOSTS:
        lines += [f"[hosts.{h}]", f'role = "{"nas" if h.startswith("nas") else "compute"}"']
    p = tmp_path / "imgstor.toml"
    p.write_text("\n".join(lines) + "\n")
    return load_config(str(p))


class _Chan:
    """An exec channel that answers ``out`` and exits 0."""

    closed = False

    def __init__(self, out: bytes) -> None:
        self.out, self.eof_received = out, False
        self.status_event = threading.Event()
        self.status_event.set()

    def exec_command(self, cmd): self.cmd = cmd
    def sendall(self, data): pass
    def shutdown_write(self): pass
    def recv_ready(self): return bool(self.out)
    def recv_stderr_ready(self): return False
    def recv_exit_status(self): return 0
    def close(self): self.closed = True

    def recv(self, n):
        d, self.out, self.eof_received = self.out, b"", True
        return d


class _Conn:
    """An open connection; counts the hosts connected at once across all of them."""

    live: set[str] = set()
    most = 0
    guard = threading.Lock()

    def __init__(self, host: str) -> None:
        self.host, self.is_connected, self.transport = host, True, self
        with _Conn.guard:
            assert host not in _Conn.live
            _Conn.live.add(host)
            _Conn.most = max(_Conn.most, len(_Conn.live))
        time.sleep(0.01)               # a handshake: lets other threads pile up

    def is_active(self): return True

    def open_session(self, timeout=None):
        time.sleep(0.005)
        return _Chan(f"boot-{self.host}\n".encode())

    def close(self):
        with _Conn.guard:
            _Conn.live.discard(self.host)
        self.is_connected = False


@pytest.fixture
def fake_open(monkeypatch):
    _Conn.live, _Conn.most = set(), 0
    monkeypatch.setattr(Cluster, "_open", lambda self, host: _Conn(host))


def _probe_all(c: Cluster) -> list[probe.HostProbe]:
    roles = {h: c.config.host(h).role for h in HOSTS}
    got = c.parallel(HOSTS, lambda h: real_probe_one(c, h, roles[h], 2))
    return [got[h] for h in HOSTS]


# ------------------------------------------------------------ config
def test_max_connections_is_read_and_checked(tmp_path: Path) -> None:
    assert Cluster(config(tmp_path)).limit == 16
    assert Cluster(config(tmp_path, 3)).limit == 3
    for bad in ("0", "-1", "2.5", '"8"', "true"):
        with pytest.raises(ConfigError, match="ssh.max_connections"):
            config(tmp_path, bad)


# ------------------------------------------------------------ the pool
def test_never_more_connections_than_the_bound_and_every_host_answers(tmp_path,
                                                                      fake_open) -> None:
    c = Cluster(config(tmp_path, 3))
    probes = _probe_all(c)
    assert [p.host for p in probes] == HOSTS
    assert all(p.up and p.boot_id == f"boot-{p.host}" and p.error is None for p in probes)
    assert _Conn.most <= 3 and c.peak <= 3
    assert c.opened == len(HOSTS) and len(c._conns) <= 3
    c.close()
    assert not _Conn.live


def test_a_later_step_reuses_the_probed_connection(tmp_path, fake_open) -> None:
    c = Cluster(config(tmp_path))                 # 16 >= 8 hosts: none closed
    _probe_all(c)
    assert c.opened == len(HOSTS)
    r = c.exec("compute-0-3", ["true"])
    assert r.rc == 0 and c.opened == len(HOSTS)


def test_a_full_pool_closes_the_least_recently_used_idle_connection(tmp_path,
                                                                    fake_open) -> None:
    c = Cluster(config(tmp_path, 2))
    c.exec("nas-0-0", ["true"])
    c.exec("nas-0-1", ["true"])
    c.exec("nas-0-0", ["true"])                   # nas-0-1 is now the least recently used
    c.exec("compute-0-0", ["true"])
    assert set(c._conns) == {"nas-0-0", "compute-0-0"} and _Conn.live == set(c._conns)


def test_a_leased_connection_is_not_closed_a_new_host_waits(tmp_path, fake_open) -> None:
    c = Cluster(config(tmp_path, 1))
    order = []
    with c._leased("nas-0-0"):
        t = threading.Thread(target=lambda: (c.exec("nas-0-1", ["true"]),
                                             order.append("nas-0-1")))
        t.start()
        t.join(0.3)
        assert t.is_alive() and _Conn.live == {"nas-0-0"}     # waiting for the slot
        order.append("released")
    t.join(10)
    assert order == ["released", "nas-0-1"] and _Conn.live == {"nas-0-1"}


def test_a_failed_connect_gives_its_slot_back(tmp_path, monkeypatch) -> None:
    def refuse(self, host):
        raise TransportError(f"{host}: cannot connect: Connection refused", stage="connect",
                             host=host)
    monkeypatch.setattr(Cluster, "_open", refuse)
    c = Cluster(config(tmp_path, 2))
    probes = _probe_all(c)
    assert not any(p.up for p in probes)
    assert all("Connection refused" in p.error for p in probes)
    assert c._slots == set() and c.opened == 0


# ------------------------------------------------------------ record and rows
def _ctx(tmp_path: Path, *, dry_run: bool = False):
    return SimpleNamespace(store=SimpleNamespace(path=str(tmp_path / "state.json")),
                           dry_run=dry_run)


def test_record_says_since_when_a_host_is_down_back_up_and_rebooted(tmp_path) -> None:
    ctx = _ctx(tmp_path)

    def run(now, **hosts):
        ps = [probe.HostProbe(h, "compute", up, 0.01, boot_id=boot if up else None,
                              error=None if up else "refused")
              for h, (up, boot) in hosts.items()]
        probe.record(ctx, ps, now=now)
        return {p.host: p for p in ps}

    p = run(100.0, a=(True, "b1"), b=(True, "b1"))
    assert p["a"].since == 100.0 and not p["a"].changed and not p["a"].rebooted
    p = run(160.0, a=(False, None), b=(True, "b1"))
    assert p["a"].changed and p["a"].since == 160.0 and p["a"].last_up == 100.0
    assert p["b"].since == 100.0 and p["b"].last_up == 160.0
    rows = {r["host"]: r for r in probe.rows(list(p.values()))}
    assert rows["a"]["action"].startswith("DOWN since ") and "refused" in rows["a"]["action"]
    assert rows["a"]["up"] is False and rows["b"]["action"].startswith("up (10 ms)")
    p = run(220.0, a=(True, "b2"), b=(True, "b1"))
    assert p["a"].changed and p["a"].rebooted and p["a"].since == 220.0
    assert "rebooted" in probe.rows([p["a"]])[0]["action"]
    rec = json.loads((tmp_path / "state.json.hosts.json").read_text())
    assert rec["a"]["boot_id"] == "b2" and rec["a"]["up"] is True
    assert oct(os.stat(tmp_path / "state.json.hosts.json").st_mode & 0o777) == "0o600"
    # a dry run says the same and writes nothing
    p = probe.HostProbe("a", "compute", False, 0.01, error="x")
    probe.record(_ctx(tmp_path, dry_run=True), [p], now=300.0)
    assert p.changed and json.loads((tmp_path / "state.json.hosts.json").read_text()) == rec
