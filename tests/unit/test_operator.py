"""What broke or misled an administrator on the first day (issue 19), one section per item:
SSH without ``[ssh] identity``, the metrics file's mode and directory, the state file's
messages, the config cache's place, refresh's exit status, the example config."""
from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest

from imgstor import connections
from imgstor.config import load_config
from imgstor.errors import ConfigError, TransportError
from imgstor.transport import Cluster


# ------------------------------------------------------------ 1. no [ssh] identity
def _config_without_identity(tmp_path: Path) -> Path:
    key = paramiko.RSAKey.generate(1024)
    (tmp_path / "known_hosts").write_text(f"192.0.2.10 {key.get_name()} {key.get_base64()}\n")
    p = tmp_path / "imgstor.toml"
    p.write_text(textwrap.dedent("""\
        [state]
        path = "state.json"
        [ssh]
        known_hosts = "known_hosts"
        connect_timeout = 2
        [hosts.nas-0-0]
        role = "nas"
        address = "192.0.2.10"
        """))
    return p


def _home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """This user's passwd entry says ``home``; $HOME says somewhere else (ssh(1) takes
    the passwd entry's)."""
    monkeypatch.setattr(connections, "_home", lambda: str(home), raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")


def test_without_identity_the_default_keys_are_offered_as_openssh_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config has no [ssh] identity (its documented default): the connection offers
    ~/.ssh/id_rsa, id_ecdsa, id_ed25519 of the passwd home that exist, in OpenSSH's order,
    and never the agent.  Before: key_filename=None, Fabric's TypeError."""
    cfg = load_config(str(_config_without_identity(tmp_path)))
    assert cfg.ssh.identity == ""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    for name in ("id_ed25519", "id_rsa", "id_dsa", "id_ed25519.pub"):
        (home / ".ssh" / name).write_text("a key\n")
    _home(monkeypatch, home)
    seen: dict = {}

    def connect(self, hostname, **kw):
        seen.update(kw)
        raise TimeoutError("timed out")
    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    with Cluster(cfg) as c:
        with pytest.raises(TransportError, match="timed out"):
            c.connection("nas-0-0")
    assert seen["key_filename"] == [str(home / ".ssh" / "id_rsa"),
                                    str(home / ".ssh" / "id_ed25519")]
    assert seen["look_for_keys"] is False and seen["allow_agent"] is False


def test_without_identity_and_without_default_keys_the_error_says_what_to_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfgfile = _config_without_identity(tmp_path)
    (tmp_path / "home").mkdir()
    _home(monkeypatch, tmp_path / "home")
    monkeypatch.setattr(paramiko.SSHClient, "connect",
                        lambda *a, **k: pytest.fail("must not connect"))
    with Cluster(load_config(str(cfgfile))) as c:
        with pytest.raises(ConfigError) as ei:
            c.connection("nas-0-0")
    msg = ei.value.message
    assert str(cfgfile) in msg and "ssh.identity" in msg
    assert str(tmp_path / "home" / ".ssh" / "id_ed25519") in msg
    assert connections.default_identities(str(tmp_path / "home")) == []


def test_identity_when_set_is_the_only_key(tmp_path: Path) -> None:
    ssh = SimpleNamespace(identity="/etc/imgstor/id_ed25519")
    assert connections.identities(ssh) == ["/etc/imgstor/id_ed25519"]
    assert sys.modules["imgstor.connections"] is connections
    assert os.path.basename(connections.DEFAULT_KEYS[-1]) == "id_ed25519"


# ------------------------------------------------------------ 6. the metrics file (audit M2)
def test_the_temp_files_mode_is_set_on_the_open_file_not_by_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another account that can rename in the metrics directory swaps the temp file for a
    link to root's key between the write and the mode change: the key keeps its mode (a
    chmod by path after the write made it 0644)."""
    from imgstor import metrics
    from imgstor.remote import atomicfile
    victim = tmp_path / "id_ed25519"
    victim.write_text("secret\n")
    victim.chmod(0o600)
    d = tmp_path / "textfile"
    d.mkdir(mode=0o755)
    prom = d / "imgstor.prom"
    real_fsync = os.fsync

    def swap(fd: int) -> None:
        real_fsync(fd)
        for name in os.listdir(d):
            if name.startswith(".imgstor.prom.tmp-"):
                os.unlink(d / name)
                os.symlink(victim, d / name)
    monkeypatch.setattr(atomicfile.os, "fsync", swap)
    metrics.write(str(prom), "imgstor_refresh_timestamp_seconds 1\n")
    assert victim.stat().st_mode & 0o777 == 0o600
    assert victim.read_text() == "secret\n"


def test_a_metrics_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    from imgstor import metrics
    for mode, owner in ((0o777, os.geteuid()), (0o1777, os.geteuid()), (0o775, os.geteuid()),
                        (0o755, 65534)):
        d = tmp_path / f"d{mode:o}-{owner}"
        d.mkdir()
        d.chmod(mode)
        if owner != os.geteuid():
            if os.geteuid() != 0:
                continue
            os.chown(d, owner, -1)
        with pytest.raises(ConfigError, match="another account could swap") as ei:
            metrics.write(str(d / "imgstor.prom"), "x 1\n")
        assert str(d) in ei.value.message
        assert os.listdir(d) == []
    ok = tmp_path / "ok"
    ok.mkdir(mode=0o755)
    metrics.write(str(ok / "imgstor.prom"), "x 1\n")
    assert (ok / "imgstor.prom").stat().st_mode & 0o777 == 0o644


def test_metrics_path_must_end_in_prom(tmp_path: Path) -> None:
    p = tmp_path / "imgstor.toml"
    for path, ok in (("/var/lib/node_exporter/imgstor.txt", False), ("imgstor.prom.tmp", False),
                     ("", True), ("/var/lib/node_exporter/imgstor.prom", True)):
        p.write_text(f'[state]\nmetrics_path = "{path}"\n')
        if ok:
            assert load_config(str(p)).metrics_path.endswith(path)
        else:
            with pytest.raises(ConfigError, match=r"state\.metrics_path: must end in \.prom"):
                load_config(str(p))


# ------------------------------------------------------------ 5. refresh's exit status
@pytest.fixture
def rctx(imgstor, config_path, state_path, monkeypatch):
    """refresh with no hosts' restore (tests/unit/test_reconcile*) and no real monitors."""
    from imgstor.workflows import refresh as rf
    from imgstor.workflows.storagemap import sync as syncmod
    monkeypatch.setattr(syncmod, "start_jobs", lambda c, jobs: True)
    monkeypatch.setattr(rf, "_restore", lambda c: [])
    state_path.write_text('{"schema": 2}\n')
    return config_path


def _metrics_at(config_path: Path, prom: Path) -> None:
    config_path.write_text(config_path.read_text().replace(
        "lock_timeout = 5", f'lock_timeout = 5\nmetrics_path = "{prom}"'))


def test_refresh_quiet_fails_loudly_when_it_cannot_write_the_metrics(
        rctx, tmp_path: Path, imgstor) -> None:
    """cron runs `refresh --quiet` and mails what it prints: a metrics file it cannot
    write is stderr and exit 1 (it was silence and exit 0); the plain run prints its table
    and the same line, exit 1."""
    prom = tmp_path / "no-such-dir" / "imgstor.prom"
    _metrics_at(rctx, prom)
    r = imgstor("refresh", "--quiet")
    assert r.rc == 1 and r.out == "", r
    assert f"imgstor refresh: metrics: {prom} could not write:" in r.err
    assert "No such file or directory" in r.err and "failed" in r.err
    r = imgstor("refresh")
    assert r.rc == 1 and "host" in r.out and f"{prom} could not write" in r.out, r
    assert f"imgstor refresh: metrics: {prom} could not write:" in r.err
    (tmp_path / "no-such-dir").mkdir(mode=0o700)
    r = imgstor("refresh", "--quiet")
    assert (r.rc, r.out, r.err) == (0, "", ""), r
    assert prom.exists()


def test_refresh_fails_when_a_monitor_or_a_restore_it_started_fails(
        rctx, imgstor, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgstor import jobpool, reconcile
    from imgstor.config import load_config
    from imgstor.state.model import Job
    from imgstor.state.store import Store
    from imgstor.workflows import check
    from imgstor.workflows import refresh as rf
    store = Store(load_config(str(rctx)).state_path)
    with store.transaction() as st:
        st.jobs["pull-0123456789ab"] = Job(id="pull-0123456789ab", kind="pull",
                                           volume="nas-0-0/v", phase="trust", created=0,
                                           updated=0)

    def no_fork(*a, **kw):
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(jobpool, "_spawn", no_fork)
    r = imgstor("refresh", "--quiet")
    assert r.rc == 1 and r.out == "", r
    assert ("imgstor refresh: job nas-0-0/v pull-0123456789ab: could not start a monitor: "
            "[Errno 11] Resource temporarily unavailable") in r.err
    with store.transaction() as st:
        st.jobs.clear()
    # a restore whose action failed (the NAS refused the target)
    monkeypatch.undo()
    f = reconcile.Finding("target", "nas-0-0/v", "target missing",
                          (reconcile.Action("nas-0-0", "nas.ensure_target"),))
    monkeypatch.setattr(check, "plan", lambda ctx, restore_only: [f])
    monkeypatch.setattr(check, "run_finding", lambda ctx, f: ("failed: tgtadm: refused", False))
    monkeypatch.setattr(rf, "_restore", rf.__dict__["_restore"])
    r = imgstor("refresh", "--quiet")
    assert r.rc == 1 and "target nas-0-0/v: target missing: failed: tgtadm: refused" in r.err, r


def test_a_host_going_down_is_one_stderr_line_not_a_failure_every_minute(
        rctx, imgstor, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgstor.workflows import probe
    down = {"compute-0-0"}

    def one(cluster, host, role, timeout):
        if host in down:
            return probe.HostProbe(host, role, False, 2.0, error="cannot connect: refused")
        return probe.HostProbe(host, role, True, 0.001, boot_id="b")
    monkeypatch.setattr(probe, "probe_one", one)
    line = "imgstor refresh: host compute-0-0 (compute) is down: cannot connect: refused\n"
    r = imgstor("refresh", "--quiet")
    assert (r.rc, r.out, r.err) == (0, "", line), r         # never seen before: down
    for _ in range(2):                                      # still down: nothing more
        r = imgstor("refresh", "--quiet")
        assert (r.rc, r.out, r.err) == (0, "", ""), r
    down.clear()
    assert imgstor("refresh", "--quiet").err == ""          # up again: the rows say it
    down.add("compute-0-0")
    r = imgstor("refresh")
    assert r.rc == 0 and r.err == line and "DOWN since" in r.out, r


def test_a_refresh_lock_held_too_long_is_reported_by_the_next_run(rctx, imgstor) -> None:
    import fcntl
    import json
    import time

    from imgstor.workflows import refresh as rf
    lock = str(rctx.parent / "state.json") + ".refresh.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"pid": 4242, "since": time.time() - 60,
                                 "cmd": "imgstor refresh --quiet"}).encode())
        r = imgstor("refresh", "--quiet")
        assert (r.rc, r.out, r.err) == (0, "", ""), r          # a minute: it is working
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": 4242, "since": time.time() - rf.STALE_LOCK - 60,
                                  "cmd": "imgstor refresh --quiet"}).encode(), 0)
        r = imgstor("refresh", "--quiet")
        assert r.rc == 5 and r.out == "", r
        assert "pid 4242" in r.err and lock in r.err and "hung" in r.err
    finally:
        os.close(fd)
    r = imgstor("refresh", "--quiet")
    assert (r.rc, r.err) == (0, ""), r
    with open(lock) as f:                 # the run that held it named itself
        assert json.load(f)["pid"] == os.getpid()


# ------------------------------------------------------------ 7. the state file
def test_a_missing_state_file_is_said_on_stderr_with_its_path(imgstor, state_path) -> None:
    """A typo in [state] path looked like an empty cluster: an empty table, exit 0."""
    from imgstor.state import store
    store._said_missing.discard(str(state_path))
    r = imgstor("list", "host", "vm")
    assert r.rc == 0
    assert r.err.startswith(f"imgstor: no state file {state_path}: nothing is recorded yet"), r
    assert "[state] path" in r.err and r.err.count("\n") == 1
    r = imgstor("refresh", "--quiet")          # cron on a new install: no mail every minute
    assert (r.rc, r.out, r.err) == (0, "", ""), r


@pytest.mark.parametrize("content,what", [
    (b'{"schema": 2, "volumes": {"nas-0-0/v": {"nas": "nas-0-0", "vol": "v",'
     b' "state": "mapped", "mode": "direct", "host": "compute-0-0"}}}',
     "volumes['nas-0-0/v']: missing field(s) zpool"),
    (b'{"schema": 2, "jobs": {"j": {"id": "j", "kind": "pull", "volume": "n/v"}}}',
     "jobs['j']: missing field(s) phase, created, updated"),
    (b'{"schema": 2, "vms": {"a": {"name": "a"}}}', "vms['a']: missing field(s) container"),
    (b'[]', "a JSON list, not an object"),
    (b'{"vms": {}}', "schema None, not one of 1, 2"),
    (b'{"schema": 2, "vms": {', "not valid JSON"),
])
def test_a_damaged_state_file_is_one_clear_error_that_names_rebuild(
        imgstor, state_path, content: bytes, what: str) -> None:
    state_path.write_bytes(content)
    r = imgstor("list", "host", "vm")
    assert r.rc == 4 and r.out == "", r
    assert r.err.startswith(f"error: state file {state_path} is damaged: {what}"), r.err
    assert "`imgstor rebuild`" in r.err and "backup" in r.err
    assert "__init__" not in r.err and "positional" not in r.err
    assert r.err.count("\n") == 1
    assert state_path.read_bytes() == content


def test_a_state_file_of_a_newer_imgstor_says_so(imgstor, state_path) -> None:
    state_path.write_text('{"schema": 99}')
    r = imgstor("list", "host", "vm")
    assert r.rc == 4 and "schema 99, written by a newer imgstor" in r.err, r
