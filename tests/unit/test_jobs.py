"""jobs.py and the monitor's phase runner, on a real store in a temp dir."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from imgstor import jobs
from imgstor.errors import BusyError, NotFound, RemoteCommandError, UsageError
from imgstor.state.model import Lease
from imgstor.state.store import Store
from imgstor.workflows import monitor as mon


class FakeCtx:
    def __init__(self, store: Store) -> None:
        self.store, self.dry_run = store, False


@pytest.fixture
def ctx(tmp_path):
    return FakeCtx(Store(str(tmp_path / "state.json")))


def _job(ctx, phase="a"):
    with ctx.store.transaction() as st:
        return jobs.new_job(st, "pull", "nas-0-0/v", phase, snap="imgstor-1")


def test_phases_run_in_order_and_the_job_is_removed(ctx, monkeypatch) -> None:
    seen = []
    monkeypatch.setitem(mon.PHASES, "pull", [(n, lambda c, j, n=n: seen.append((n, j.phase)))
                                             for n in ("a", "b", "c")])
    j = _job(ctx)
    assert mon.monitor(ctx, j.id) == f"job {j.id} done"
    assert seen == [("a", "a"), ("b", "b"), ("c", "c")]
    assert ctx.store.read().jobs == {}


def test_a_failure_keeps_the_phase_and_the_next_monitor_continues(ctx, monkeypatch) -> None:
    calls = []

    def b(c, j):
        calls.append("b")
        if calls.count("b") == 1:
            raise RemoteCommandError("nas-0-0", ["zfs", "send"], 1, "broken pipe")
    monkeypatch.setitem(mon.PHASES, "pull", [("a", lambda c, j: calls.append("a")), ("b", b)])
    j = _job(ctx)
    with pytest.raises(RemoteCommandError):
        mon.monitor(ctx, j.id)
    rec = ctx.store.read().jobs[j.id]
    assert (rec.phase, rec.attempts, rec.owner) == ("b", 1, None)
    assert "broken pipe" in rec.last_error
    mon.monitor(ctx, j.id)
    assert calls == ["a", "b", "b"] and ctx.store.read().jobs == {}


def test_only_one_live_owner(ctx) -> None:
    j = _job(ctx)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        from imgstor.state.store import proc_starttime, this_host
        with ctx.store.transaction() as st:
            st.jobs[j.id].owner = Lease(pid=sleeper.pid, host=this_host(), since=time.time(),
                                        starttime=proc_starttime(sleeper.pid))
        with pytest.raises(BusyError, match=f"run by pid {sleeper.pid}"):
            jobs.acquire(ctx.store, j.id)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert jobs.acquire(ctx.store, j.id).owner.pid == os.getpid()   # a dead owner: taken


def test_progress_side_file_and_ids(ctx) -> None:
    j = _job(ctx)
    jobs.write_progress(ctx.store, j.id, done=5, total=10)
    assert jobs.read_progress(ctx.store, j.id)["done"] == 5
    assert oct(os.stat(jobs.progress_path(ctx.store, j.id)).st_mode & 0o777) == "0o600"
    for bad in ("../x", "pull-XYZ", "pull-0123456789ab\n", None):
        with pytest.raises(UsageError):
            jobs.check_id(bad)
    with pytest.raises(NotFound):
        jobs.acquire(ctx.store, "pull-0123456789ab")


def test_spawn_is_detached_and_logs(ctx) -> None:
    j = _job(ctx)
    probe = [sys.executable, "-c", "import os, sys; print('session leader', "
             "os.getsid(0) == os.getpid(), 'stdin empty', sys.stdin.read() == '', "
             "'args', sys.argv[1:])"]
    jobs.spawn(ctx.store, "/etc/imgstor.toml", j.id, self_argv=probe)
    log = jobs.log_path(ctx.store, j.id)
    for _ in range(100):
        if os.path.exists(log) and os.path.getsize(log) > 0:
            break
        time.sleep(0.1)
    text = open(log).read()
    assert "session leader True stdin empty True" in text
    assert f"'monitor', '{j.id}'" in text
    assert oct(os.stat(log).st_mode & 0o777) == "0o600"
