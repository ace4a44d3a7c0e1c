"""The audit trail (issue 26): one syslog line per command that changes something (who,
what, target, result, job), received here by a syslog listener of the test's own (a Unix
datagram socket, or UDP), never for a read or a dry run; job logs pruned by age."""
from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest

from imgstor import audit, cli, jobs
from imgstor.state import Store


class Listener:
    """A syslog server in miniature: the datagrams it received, as text."""
    def __init__(self, sock: socket.socket, where: str) -> None:
        self.sock, self.where = sock, where
        sock.settimeout(5)

    def lines(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            out.append(self.sock.recv(65536).decode().rstrip("\0"))
        return out

    def none(self) -> bool:
        self.sock.settimeout(0.3)
        try:
            self.sock.recv(65536)
        except (TimeoutError, socket.timeout):
            return True
        finally:
            self.sock.settimeout(5)
        return False


@pytest.fixture(params=["unix", "udp"])
def syslog(request, tmp_path, config_path):
    if request.param == "unix":
        path = str(tmp_path / "log.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        where = path
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        where = f"udp://127.0.0.1:{s.getsockname()[1]}"
    text = config_path.read_text()
    config_path.write_text(f'[log]\nsyslog = "{where}"\nfacility = "local3"\n' + text)
    yield Listener(s, where)
    s.close()


FIELDS = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def fields(line: str) -> dict[str, str]:
    head, _, rest = line.partition(": ")
    assert re.fullmatch(r"<(\d+)>imgstor\[\d+\]", head), line
    pri = int(re.match(r"<(\d+)>", head).group(1))
    assert pri >> 3 == 19 and pri & 7 == 6, pri          # local3, info
    return {k: v.strip('"') for k, v in FIELDS.findall(rest)}


def test_changes_log_one_line_reads_and_dry_runs_none(syslog, imgstor, monkeypatch):
    monkeypatch.setenv("SUDO_USER", "alice")
    assert imgstor("add", "host", "vm", "compute-0-0", "name=web1").rc == 0
    (line,) = syslog.lines(1)
    f = fields(line)
    assert f["sudo_user"] == "alice" and f["user"] and f["what"] == "add host vm"
    assert (f["target"], f["result"], f["exit"], f["job"]) == (
        "compute-0-0 name=web1", "ok", "0", "-")
    assert f["message"] == "added VM web1 on physical node compute-0-0"
    assert imgstor("list", "host", "vm").rc == 0
    assert imgstor("-n", "add", "host", "vm", "compute-0-0", "name=web2").rc == 0
    assert imgstor("--help").rc == 0
    assert syslog.none()
    r = imgstor("set", "host", "vm", "nas", "nope", "nas=nas-0-0")   # a failure is logged
    assert r.rc == 6
    f = fields(syslog.lines(1)[0])
    assert (f["what"], f["target"], f["result"], f["exit"]) == (
        "set host vm nas", "nope nas=nas-0-0", "failed", "6")
    assert "unknown VM 'nope'" in f["message"]


def test_move_and_ping_trust_are_changes_ping_is_not(syslog, imgstor, monkeypatch):
    """`move host vm` changes where a VM runs; `ping --trust` confirms pinned host keys."""
    assert imgstor("add", "host", "vm", "compute-0-0", "name=web1").rc == 0
    syslog.lines(1)
    assert imgstor("move", "host", "vm", "web1", "compute-0-1").rc == 0
    f = fields(syslog.lines(1)[0])
    assert (f["what"], f["target"], f["result"]) == ("move host vm", "web1 compute-0-1", "ok")
    monkeypatch.setattr("imgstor.workflows.hosts.ping",
                        lambda ctx, hosts=None, trust=False: f"trusted {hosts}" if trust
                        else "reached")
    assert imgstor("ping", "nas-0-0").rc == 0
    assert syslog.none()
    assert imgstor("ping", "--trust", "nas-0-0").rc == 0
    f = fields(syslog.lines(1)[0])
    assert (f["what"], f["target"], f["result"]) == ("ping", "nas-0-0 --trust", "ok")


def started(ctx, vol: str) -> str:
    audit.job_started("sync-in-0123456789ab")          # what jobpool.launch notes
    return f"{vol} mapped"


def test_the_line_names_the_jobs_a_command_started(syslog, imgstor, monkeypatch):
    table = [*cli.COMMANDS, cli.Cmd(("add", "thing"), f"{__name__}:started",
                                    [cli.Arg("vol")], help="test")]
    monkeypatch.setattr(cli, "COMMANDS", table)
    assert imgstor("add", "thing", "v1").rc == 0
    f = fields(syslog.lines(1)[0])
    assert (f["what"], f["target"], f["job"]) == ("add thing", "v1", "sync-in-0123456789ab")


def test_batch_items_log_each(syslog, imgstor, tmp_path):
    b = tmp_path / "b.txt"
    b.write_text("add host vm compute-0-0 name=a\nlist host vm\nadd host vm compute-0-1 "
                 "name=b\nremove host vm zzz\n")
    assert imgstor("batch", str(b)).rc == 0
    got = sorted(fields(x)["target"] for x in syslog.lines(3))
    assert got == ["compute-0-0 name=a", "compute-0-1 name=b", "zzz"]
    assert syslog.none()


def test_a_missing_socket_logs_nothing_and_says_so_once(tmp_path, config_path, imgstor):
    text = config_path.read_text()
    config_path.write_text(f'[log]\nsyslog = "{tmp_path}/none.sock"\n' + text)
    r = imgstor("add", "host", "vm", "compute-0-0", "name=a")
    assert r.rc == 0 and "audit log" in r.err and "nothing is logged" in r.err
    config_path.write_text('[log]\nsyslog = "tcp://x"\n' + text)
    r = imgstor("list", "host", "vm")
    assert r.rc == 3 and "log.syslog" in r.err


def test_the_default_dev_log_absent_is_silent(imgstor, monkeypatch):
    monkeypatch.setattr(audit, "DEFAULT_SYSLOG", "/nonexistent/dev-log")
    monkeypatch.setattr(audit, "_settings", lambda ctx: ("/nonexistent/dev-log", "user"))
    r = imgstor("add", "host", "vm", "compute-0-0", "name=a")
    assert (r.rc, r.err) == (0, "")


def test_line_quoting():
    assert audit.line({"a": "x y", "b": 'q"', "c": None, "d": ["j1", "j2"],
                       "e": "\x1b[2J"}) == 'a="x y" b="q\\"" c=- d=j1,j2 e="\\x1b[2J"'


def test_job_logs_pruned_by_age(tmp_path):
    store = Store(str(tmp_path / "state.json"))
    d = Path(jobs.job_dir(store))
    d.mkdir()
    old, live, new = "pull-000000000001", "pull-000000000002", "pull-000000000003"
    for j in (old, live, new):
        for ext in ("log", "progress"):
            (d / f"{j}.{ext}").write_text("x")
    (d / "notes.txt").write_text("not ours")
    then = time.time() - 40 * 86400
    for j in (old, live):
        for ext in ("log", "progress"):
            os.utime(d / f"{j}.{ext}", (then, then))
    gone = jobs.prune_logs(store, 30, {live})
    assert gone == [f"{old}.log", f"{old}.progress"]
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [f"{live}.log", f"{live}.progress", f"{new}.log", f"{new}.progress", "notes.txt"])


def test_refresh_prunes_and_logs_what_it_did(syslog, imgstor, config_path, state_path):
    store = Store(str(state_path))
    d = Path(jobs.job_dir(store))
    d.mkdir(parents=True)
    (d / "pull-00000000000a.log").write_text("x")
    then = time.time() - 31 * 86400
    os.utime(d / "pull-00000000000a.log", (then, then))
    r = imgstor("refresh")
    assert r.rc == 0 and "removed 1 job files older than 30 days" in r.out, r
    f = fields(syslog.lines(1)[0])
    assert f["what"] == "refresh jobs" and f["result"] == "ok"
    assert imgstor("refresh").rc == 0 and syslog.none()      # nothing done: nothing said


def test_monitors_log_each_phase_and_a_failure(syslog, imgstor, state_path, monkeypatch):
    """Each phase done is a line; a failed try is one (result retry), the last one failed."""
    from imgstor.config import JobPolicy
    from imgstor.errors import RemoteCommandError
    from imgstor.workflows import jobkinds
    from imgstor.workflows import monitor as mon

    def fail(ctx, job, rt):
        raise RemoteCommandError("nas-0-0", ["zfs", "send"], 1, "broken pipe")
    monkeypatch.setitem(jobkinds.KINDS, "pull", [("trust", lambda c, j, rt: None),
                                                 ("send", lambda c, j, rt: None)])
    store = Store(str(state_path))
    with store.transaction() as st:
        j = jobs.new_job(st, "pull", "nas-0-0/v1", "trust")
    assert imgstor("monitor", j.id).rc == 0
    got = [fields(x) for x in syslog.lines(2)]
    assert [(f["what"], f["target"], f["job"], f["result"]) for f in got] == [
        ("monitor pull", "nas-0-0/v1", j.id, "ok")] * 2
    assert [f["message"] for f in got] == ["phase trust done, next send",
                                           "phase send done; job done"]
    monkeypatch.setitem(jobkinds.KINDS, "pull", [("trust", lambda c, j, rt: None),
                                                 ("send", fail)])
    monkeypatch.setattr(mon, "Runner", _one_try(mon, JobPolicy(attempts=1)))
    with store.transaction() as st:
        j = jobs.new_job(st, "pull", "nas-0-0/v2", "trust")
    assert imgstor("monitor", j.id).rc != 0
    f = fields(syslog.lines(2)[1])
    assert (f["result"], f["exit"], f["job"]) == ("failed", "10", j.id)
    assert f["message"].startswith("phase send (try 1 of 1): nas-0-0: command failed")
    assert syslog.none()                       # the monitor command itself: no extra line


def _one_try(mon, policy):
    """A Runner whose policy gives up after one try (no backoff to wait out)."""
    class Runner(mon.Runner):
        def __init__(self, ctx, **kw):
            super().__init__(ctx, **kw)
            self.rt.policy = policy
    return Runner


def test_imgstorageadmin_dialogue_logs_each_action(syslog, imgstor, state_path, monkeypatch):
    from test_cli_guide import FakeCluster

    from imgstor import admin
    from imgstor.state import Busy, Volume
    monkeypatch.setattr("imgstor.transport.Cluster", FakeCluster)
    with Store(str(state_path)).transaction() as st:
        v = Volume("nas-0-0", "tank", "v1", busy=Busy(op="map", pid=4242, host="fe",
                                                      since=time.time()))
        st.volumes[v.key] = v
    r = imgstor("--host", "nas-0-0", "--unbusy-zvol", "v1", "--yes", main=admin.main)
    assert r.rc == 0, r
    f = fields(syslog.lines(1)[0])
    assert (f["what"], f["result"]) == ("imgstorageadmin unbusy-zvol", "ok"), f
    assert f["target"].startswith("nas-0-0: v1 map pid 4242@fe"), f
