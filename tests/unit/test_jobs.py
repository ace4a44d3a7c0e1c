"""The job runtime (imgstor/jobs.py, imgstor/jobrun.py, workflows/monitor.py) on a real
store in a temp dir, a fake cluster (tests/unit/fake_cluster.py) and a fake clock: the
retry policy, the phases' bounds (audit M1), stop flags, liveness by flock, the
batched status reads, the hand-over to one pool monitor."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time

import pytest
from fake_cluster import Clock, FakeCluster

from imgstor import jobpool, jobs
from imgstor.config import JobPolicy
from imgstor.errors import BusyError, NotFound, RemoteCommandError, StateError, UsageError
from imgstor.jobrun import Runtime, Watch
from imgstor.state.model import JOB_KINDS, Job, Lease, Volume
from imgstor.workflows import jobkinds
from imgstor.workflows import monitor as mon
from imgstor.workflows.storagemap import sync

KEY = "nas-0-0/v"


@pytest.fixture
def ctx(config_path, monkeypatch):
    """A real Ctx on the unit config (2 NAS, 2 nodes; dm overlays, zvols), a FakeCluster."""
    from imgstor.workflows.context import Ctx
    for k in jobpool.HOOK_ENV:
        monkeypatch.delenv(k, raising=False)
    c = Ctx(config_path=str(config_path))
    c.__dict__["cluster"] = FakeCluster()
    return c


def runner(ctx, clock: Clock, *, kinds=None, **policy) -> mon.Runner:
    pol = JobPolicy(**{"attempts": 3, "backoff": 10, "backoff_max": 300, "stall": 60,
                       "poll": 1, "poll_max": 10, **policy})
    rt = Runtime(ctx.store, pol, Watch(ctx.cluster, threaded=False, clock=clock.now,
                                       sleep=clock.sleep), clock=clock.now, sleep=clock.sleep)
    return mon.Runner(ctx, rt=rt, kinds=kinds)


def new(ctx, kind="pull", phase="a", volume: Volume | None = None, **extra) -> Job:
    with ctx.store.transaction() as st:
        if volume is not None:
            st.volumes[volume.key] = volume
        return jobs.new_job(st, kind, volume.key if volume else KEY, phase, **extra)


def run_one(r: mon.Runner, job_id: str) -> str:
    (taken,) = r.take([job_id])
    r.join()
    return r.results[taken]


# ------------------------------------------------------------------ phases and the table
def test_phases_run_in_order_and_the_job_is_removed(ctx) -> None:
    seen = []
    kinds = {"pull": [(n, lambda c, j, rt, n=n: seen.append((n, j.phase)))
                      for n in ("a", "b", "c")]}
    j = new(ctx)
    assert run_one(runner(ctx, Clock(), kinds=kinds), j.id) == "done"
    assert seen == [("a", "a"), ("b", "b"), ("c", "c")]
    assert ctx.store.read().jobs == {}
    assert not os.path.exists(jobs.lock_path(ctx.store, j.id))       # its files go too


def test_one_kind_table_no_registration_by_import() -> None:
    assert set(jobkinds.KINDS) == set(JOB_KINDS)
    # the job modules import nothing of the monitor (the table imports them, not back)
    code = ("import sys, imgstor.workflows.storagemap.sync, imgstor.workflows.storagemap.pull;"
            "assert 'imgstor.workflows.monitor' not in sys.modules, 'monitor imported';"
            "assert 'imgstor.workflows.jobkinds' not in sys.modules, 'table imported'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    with pytest.raises(UsageError, match="no monitor for job kind"):
        jobkinds.phases("nope")


# ------------------------------------------------------------------ the retry policy
def test_runtime_error_is_recorded_on_the_job_backed_off_then_failed(ctx, monkeypatch) -> None:
    """A node bug (Cluster.step raises RuntimeError) is a failed try like any other:
    last_error and attempts on the job, never on the volume; the tries wait 10 s, then
    20 s; after the policy's 3 attempts the job is failed and its monitor lets it go."""
    def bug(host, **kw):
        raise RuntimeError(f"{host}: bug in node step nas.set_props: KeyError('x')\n"
                           "Traceback (most recent call last): ...")
    ctx.cluster.handlers["nas.set_props"] = bug
    kinds = {"pull": [("a", lambda c, j, rt: c.cluster.step("nas-0-0", "nas.set_props"))]}
    v = Volume(nas="nas-0-0", zpool="tank", vol="v", host="compute-0-0", state="mapped",
               mode="sync")
    j = new(ctx, volume=v)
    clock = Clock()
    seen: list[tuple] = []
    real = jobs.failure_in

    def spy(st, job_id, error, **kw):
        rec = real(st, job_id, error, **kw)
        seen.append((rec.attempts, rec.state, rec.next_try and round(rec.next_try - rec.updated)))
        return rec
    monkeypatch.setattr(jobs, "failure_in", spy)
    out = run_one(runner(ctx, clock, kinds=kinds), j.id)
    assert out.startswith("failed in phase a: RuntimeError: nas-0-0: bug in node step")
    assert seen == [(1, "retry", 10), (2, "retry", 20), (3, "failed", None)]
    assert round(sum(clock.slept)) == 30                 # the backoff, waited out
    rec = ctx.store.read().jobs[j.id]
    assert (rec.state, rec.attempts, rec.phase, rec.owner) == ("failed", 3, "a", None)
    assert rec.last_error.startswith("RuntimeError: nas-0-0: bug in node step")
    assert "\n" not in rec.last_error                    # the traceback is in the log
    assert "Traceback" in open(jobs.log_path(ctx.store, j.id)).read()
    assert ctx.store.read().volumes[KEY].error is None   # the volume is not marked
    assert not jobs.running(ctx.store, j.id)
    # a failed job is not taken again ... unless restarted (monitor --resume, repair)
    assert runner(ctx, clock, kinds=kinds).take([j.id]) == []
    ctx.cluster.handlers["nas.set_props"] = lambda host, **kw: {}
    r = runner(ctx, clock, kinds=kinds)
    assert r.take([j.id], restart_failed=True) == [j.id]
    r.join()
    assert r.results[j.id] == "done" and ctx.store.read().jobs == {}


def test_a_phase_that_succeeds_resets_the_attempts(ctx) -> None:
    tries = {"b": 0}

    def b(c, j, rt):
        tries["b"] += 1
        if tries["b"] < 3:
            raise RemoteCommandError("nas-0-0", ["zfs", "send"], 1, "broken pipe")
    kinds = {"pull": [("a", lambda c, j, rt: None), ("b", b), ("c", lambda c, j, rt: None)]}
    j = new(ctx)
    clock = Clock()
    assert run_one(runner(ctx, clock, kinds=kinds), j.id) == "done"
    assert tries["b"] == 3 and round(sum(clock.slept)) == 30
    assert "phase b failed (try 2 of 3): nas-0-0: command failed" in \
        open(jobs.log_path(ctx.store, j.id)).read()


def test_a_monitor_that_died_in_a_phase_counts_as_a_failed_try(ctx) -> None:
    """A crash loop is bounded too: the next monitor finds the owner of a job that was
    never let go, counts it, and after the policy's attempts the job is failed."""
    j = new(ctx)
    pol = JobPolicy(attempts=2)
    for n in (1, 2):
        with ctx.store.transaction() as st:
            st.jobs[j.id].owner = Lease(pid=999999, host="fe", since=0)
        taken = jobs.acquire(ctx.store, [j.id], policy=pol)
        rec = ctx.store.read().jobs[j.id]
        assert rec.attempts == n and "ended in phase a without a result" in rec.last_error
        for _, fd in taken:
            os.close(fd)
    assert taken == [] and rec.state == "failed"


# ------------------------------------------------------------------ bounds (audit M1)
def _sync_volume(state: str) -> Volume:
    return Volume(nas="nas-0-0", zpool="tank", vol="v", host="compute-0-0", state=state,
                  mode="sync", target="iqn.2001-04.com.nas-0-0-v",
                  extra={"local_pool": "tank", "overlay": "dm", "initiator": "iqn.x",
                         "portal": "10.0.0.1:3260"})


def _overlay_script(ctx, phases: list[str]):
    """overlay.status answers PHASES in turn (the last one forever); overlay.merge and
    nas.get_props (the local copy's path) recorded."""
    left = list(phases)

    def status(host, **kw):
        ph = left.pop(0) if len(left) > 1 else left[0]
        return {"exists": True, "phase": ph, "done": None, "total": None,
                "synced": "16/128 8" if ph == "merging" else None}
    ctx.cluster.handlers.update({
        "overlay.status": status,
        "overlay.merge": lambda host, **kw: {"phase": "merging"},
        "nas.get_props": lambda host, **kw: {"exists": True, "path": "/dev/zvol/tank/v"}})


def test_a_merge_found_in_snapshot_is_issued_again(ctx) -> None:
    """After a restore (a reboot, a killed daemon) the overlay comes back unmerged: the
    merged phase merges it again instead of waiting forever (M1)."""
    _overlay_script(ctx, ["snapshot", "merging", "merging", "merged"])
    j = new(ctx, "sync-in", "merged", volume=_sync_volume("merging"))
    kinds = {"sync-in": [("merged", sync._in_merged)]}
    assert run_one(runner(ctx, Clock(), kinds=kinds), j.id) == "done"
    merges = [a for _, n, a in ctx.cluster.calls if n == "overlay.merge"]
    assert merges == [{"driver": "dm", "pool": "tank", "vol": "v", "into": "local",
                       "local": "/dev/zvol/tank/v"}]
    assert "merging into the local again (1/3)" in open(jobs.log_path(ctx.store, j.id)).read()


def test_the_pivot_after_a_restore_merges_again_first(ctx) -> None:
    """A job in pivot whose overlay a restore made again (snapshot): linear would be a
    Conflict each time; the pivot merges again, waits, then pivots."""
    _overlay_script(ctx, ["snapshot", "merging", "merged"])
    order = []
    ctx.cluster.handlers.update({
        "overlay.linear": lambda host, **kw: order.append("linear") or {},
        "compute.detach": lambda host, **kw: {},
        "nas.set_props": lambda host, **kw: {},
        "nas.remove_target": lambda host, **kw: order.append("untarget") or {}})
    j = new(ctx, "sync-in", "pivot", volume=_sync_volume("merging"))
    kinds = {"sync-in": [("pivot", sync._in_pivot)]}
    assert run_one(runner(ctx, Clock(), kinds=kinds), j.id) == "done"
    names = ctx.cluster.names()
    assert names.index("overlay.merge") < names.index("overlay.linear")
    assert order == ["linear", "untarget"]
    v = ctx.store.read().volumes[KEY]
    assert (v.state, v.target) == ("mapped", None)


def test_a_merge_without_progress_fails_within_its_bound(ctx) -> None:
    _overlay_script(ctx, ["merging"])                       # the same counters forever
    j = new(ctx, "sync-in", "merged", volume=_sync_volume("merging"))
    kinds = {"sync-in": [("merged", sync._in_merged)]}
    clock = Clock()
    out = run_one(runner(ctx, clock, kinds=kinds, attempts=1, stall=60), j.id)
    assert "no progress for 6" in out and "stall_timeout" in out
    assert 60 < clock.now() - 1000 <= 60 + 2              # within its bound (+ one poll)
    rec = ctx.store.read().jobs[j.id]
    assert rec.state == "failed" and "merge of nas-0-0/v's overlay" in rec.last_error


def test_an_overlay_back_in_snapshot_again_and_again_fails(ctx) -> None:
    _overlay_script(ctx, ["snapshot"])
    j = new(ctx, "sync-in", "merged", volume=_sync_volume("merging"))
    kinds = {"sync-in": [("merged", sync._in_merged)]}
    out = run_one(runner(ctx, Clock(), kinds=kinds, attempts=1), j.id)
    assert f"back in snapshot after {sync.REMERGES} merges" in out


def test_a_stuck_copy_is_cancelled_and_fails_within_its_bound(ctx, monkeypatch) -> None:
    from imgstor import synctrust
    monkeypatch.setattr(synctrust, "copy_args", lambda *a, **kw: {"snapshot": kw["snapshot"]})
    monkeypatch.setattr(synctrust, "expect", lambda *a, **kw: {})   # the gate's announcement
    facts = {"state": "running", "snapshot": "tank/v@imgstor-in-1", "bytes_done": 5,
             "bytes_total": 10}
    ctx.cluster.handlers.update({"copy.start": lambda h, **kw: facts,
                                 "copy.status": lambda h, **kw: facts,
                                 "copy.cancel": lambda h, **kw: {"state": "cancelled"}})
    j = new(ctx, "sync-in", "copy", volume=_sync_volume("NAS->VM"))
    kinds = {"sync-in": [("copy", lambda c, job, rt: sync._copy(
        c, job, rt, "nas-0-0", "compute-0-0", snapshot="tank/v@imgstor-in-1",
        to_dataset="tank/v", what="NAS->VM"))]}
    clock = Clock()
    out = run_one(runner(ctx, clock, kinds=kinds, attempts=1, stall=30), j.id)
    assert "copy of tank/v@imgstor-in-1 to compute-0-0:tank/v: no progress" in out
    cancel = [a for _, n, a in ctx.cluster.calls if n == "copy.cancel"]
    assert cancel == [{"to_alias": "compute-0-0", "to_dataset": "tank/v", "keep_partial": True}]
    assert clock.now() - 1000 <= 30 + 10


def test_copy_waits_for_another_snapshots_copy_to_the_same_dataset(ctx, monkeypatch) -> None:
    """The copy job is keyed by destination: a pull's copy still running (or done) is not
    the sync back's; _copy waits for it to end and starts its own."""
    from imgstor import synctrust
    monkeypatch.setattr(synctrust, "copy_args", lambda *a, **kw: {"snapshot": kw["snapshot"]})
    monkeypatch.setattr(synctrust, "expect", lambda *a, **kw: {})   # the gate's announcement
    mine, pulls = "tank/v@imgstor-back-2", "tank/v@imgstor-pull-1"
    answers = iter([
        ("copy.start", {"state": "running", "snapshot": pulls}),     # the pull's, running
        ("copy.status", {"state": "running", "snapshot": pulls}),
        ("copy.status", {"state": "done", "snapshot": pulls}),       # done: not ours
        ("copy.start", {"state": "running", "snapshot": mine}),      # ours starts
        ("copy.status", {"state": "done", "snapshot": mine}),
    ])

    def answer(want):
        def fn(host, **kw):
            name, facts = next(answers)
            assert name == want, (name, want)
            return facts
        return fn
    ctx.cluster.handlers.update({"copy.start": answer("copy.start"),
                                 "copy.status": answer("copy.status")})
    j = new(ctx, "sync-back", "send", volume=_sync_volume("NAS<-VM"))
    rt = runner(ctx, Clock()).rt
    out = sync._copy(ctx, j, rt, "compute-0-0", "nas-0-0", snapshot=mine,
                     to_dataset="tank/v", what="NAS<-VM")
    assert out["snapshot"] == mine
    assert [n for n in ctx.cluster.names() if n != "jobs.watch"] == [
        "copy.start", "copy.status", "copy.status", "copy.start", "copy.status"]


def test_poll_delay_grows_with_what_is_left() -> None:
    rt = Runtime(None, JobPolicy(poll=1, poll_max=10), None)
    assert rt.next_delay({}) == 1
    assert rt.next_delay({"bytes_done": 0, "bytes_total": 600, "rate": 1}) == 10
    assert rt.next_delay({"bytes_done": 550, "bytes_total": 600, "rate": 1}) == 5
    assert rt.next_delay({"bytes_done": 599, "bytes_total": 600, "rate": 1}) == 1
    # running: the rate so far, from bytes and seconds
    assert rt.next_delay({"bytes_done": 100, "bytes_total": 600, "seconds": 100}) == 10
    assert rt.next_delay({"bytes_done": 100, "bytes_total": None, "seconds": 100}) == 1


# ------------------------------------------------------------------ stop flags, liveness
def test_a_stop_flag_lets_a_waiting_job_go(ctx) -> None:
    _overlay_script(ctx, ["merging"])
    j = new(ctx, "sync-in", "merged", volume=_sync_volume("merging"))
    kinds = {"sync-in": [("merged", sync._in_merged)]}
    clock = Clock()
    r = runner(ctx, clock, kinds=kinds, stall=10_000)
    real_sleep = clock.sleep

    def sleep(s):
        real_sleep(s)
        if clock.now() > 1005:
            jobs.request_stop(ctx.store, j.id)
    r.rt.sleep = r.rt.watch.sleep = sleep
    assert run_one(r, j.id) == "stopped"
    assert not jobs.running(ctx.store, j.id)
    assert ctx.store.read().jobs[j.id].owner is None       # let go, not dead


def test_liveness_is_the_lock_not_a_pid(ctx) -> None:
    j = new(ctx)
    assert not jobs.running(ctx.store, j.id)
    (job, fd), = jobs.acquire(ctx.store, [j.id], policy=JobPolicy())
    try:
        assert jobs.running(ctx.store, j.id)
        assert jobs.shown_state(ctx.store, ctx.store.read().jobs[j.id]) == "running"
        assert jobs.acquire(ctx.store, [j.id], policy=JobPolicy()) == []    # one runner
        with pytest.raises(BusyError, match="run by another monitor"):
            mon.monitor(ctx, [j.id])
    finally:
        jobs.release(ctx.store, j.id, fd)
    assert not jobs.running(ctx.store, j.id) and ctx.store.read().jobs[j.id].owner is None
    with pytest.raises(NotFound):
        mon.monitor(ctx, ["pull-0123456789ab"])


def test_monitor_of_a_failed_job_says_how_to_restart_it(ctx) -> None:
    j = new(ctx)
    with ctx.store.transaction() as st:
        st.jobs[j.id].state, st.jobs[j.id].last_error = "failed", "boom"
    with pytest.raises(StateError, match="monitor --resume"):
        mon.monitor(ctx, [j.id])


def test_refresh_leaves_a_failed_job_and_resume_starts_it_again(ctx, monkeypatch) -> None:
    """cron's refresh (resume_all) hands a job no monitor runs to a monitor, says a failed
    one is not restarted and leaves one that runs; `monitor --resume` restarts the failed
    one too, with no attempts."""
    handed: list[list[str]] = []
    monkeypatch.setattr(jobpool, "launch",
                        lambda store, path, ids, **kw: handed.append(list(ids)) or "handed")
    idle, bad, busy = new(ctx), new(ctx), new(ctx)
    with ctx.store.transaction() as st:
        st.jobs[bad.id].state, st.jobs[bad.id].attempts = "failed", 5
        st.jobs[bad.id].last_error = "no route"
    (_, fd), = jobs.acquire(ctx.store, [busy.id], policy=JobPolicy())
    try:
        rows = {r["job"]: r["action"] for r in mon.resume_all(ctx).rows}
        assert handed == [[idle.id]] and rows[idle.id] == "handed"
        assert rows[bad.id].startswith("failed after 5 tries: no route; not restarted")
        assert rows[busy.id].startswith("running")
        assert ctx.store.read().jobs[bad.id].state == "failed"
        rows = {r["job"]: r["action"] for r in mon.monitor(ctx, resume=True).rows}
        assert sorted(handed[1]) == sorted([idle.id, bad.id]) and rows[bad.id] == "handed"
        rec = ctx.store.read().jobs[bad.id]
        assert (rec.state, rec.attempts) == ("ready", 0)
    finally:
        jobs.release(ctx.store, busy.id, fd)


def test_progress_side_file_and_ids(ctx) -> None:
    j = new(ctx)
    jobs.write_progress(ctx.store, j.id, done=5, total=10)
    assert jobs.read_progress(ctx.store, j.id)["done"] == 5
    assert oct(os.stat(jobs.progress_path(ctx.store, j.id)).st_mode & 0o777) == "0o600"
    for bad in ("../x", "pull-XYZ", "pull-0123456789ab\n", None):
        with pytest.raises(UsageError):
            jobs.check_id(bad)


# ------------------------------------------------------------------ batched reads
def test_the_watch_reads_each_host_once_for_all_its_jobs() -> None:
    cl = FakeCluster({"copy.status": lambda h, **kw: {"state": "running", "bytes_done": 1},
                      "overlay.status": lambda h, **kw: {"exists": True, "phase": "merging"}})
    w = Watch(cl, slack=1.0)
    out: dict = {}

    def ask(i):
        host = "nas-0-0" if i < 20 else "compute-0-0"
        if host == "nas-0-0":
            out[i] = w.copy(host, f"compute-0-{i}", f"tank/v{i}", delay=0.2)
        else:
            out[i] = w.overlay(host, "dm", "tank", f"v{i}", delay=0.2)
    ts = [threading.Thread(target=ask, args=(i,)) for i in range(30)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert len(out) == 30 and out[3]["state"] == "running" and out[25]["phase"] == "merging"
    watches = [(h, a) for h, n, a in cl.calls if n == "jobs.watch"]
    assert sorted(h for h, _ in watches) == ["compute-0-0", "nas-0-0"], watches
    nas = next(a for h, a in watches if h == "nas-0-0")
    assert len(nas["copies"]) == 20 and nas["overlays"] == []
    with pytest.raises(Exception, match="no fact"):      # typed: a misspelt fact raises
        out[3].get("byts_done")


def test_a_watch_error_is_the_askers(ctx) -> None:
    from imgstor.errors import NotFound as NF

    def gone(h, **kw):
        raise NF(f"{h}: no dm device v-snap")
    w = Watch(FakeCluster({"overlay.status": gone}), threaded=False)
    with pytest.raises(NF, match="compute-0-0: .*no dm device"):
        w.overlay("compute-0-0", "dm", "tank", "v", delay=0)


# ------------------------------------------------------------------ handing over
SLEEPER = ("import os, sys, time; fd = int(os.environ.get('IMGSTOR_MONITOR_LOCK_FD', '-1'));"
           "print('args', sys.argv[1:], 'fd', fd, 'sid', os.getsid(0) == os.getpid(),"
           " flush=True); time.sleep(float(os.environ.get('SLEEP', '3')))")


def test_launches_share_one_pool_monitor(ctx, monkeypatch) -> None:
    """Two launches: the first starts the pool monitor (which inherits the pool lock the
    launch took, so no second one can start), the second only queues its job."""
    monkeypatch.setenv("SLEEP", "3")
    a, b = new(ctx), new(ctx)
    argv0 = [sys.executable, "-c", SLEEPER]
    first = jobpool.launch(ctx.store, ctx.config.path, [a.id], self_argv=argv0)
    pid = int(first.split()[-1])
    assert first == f"started monitor pid {pid}"
    second = jobpool.launch(ctx.store, ctx.config.path, [b.id], self_argv=argv0)
    assert second == f"handed to monitor pid {pid}"
    key = jobpool.pool_key(ctx.config.path)
    assert jobpool.take_queued(ctx.store, key) == sorted([a.id, b.id])
    log = os.path.join(jobs.job_dir(ctx.store), "monitor.log")
    for _ in range(100):
        if "args" in (open(log).read() if os.path.exists(log) else ""):
            break
        time.sleep(0.05)
    text = open(log).read()
    assert f"'monitor', '--pool', '{key}']" in text and "sid True" in text
    assert oct(os.stat(log).st_mode & 0o777) == "0o600"
    os.waitpid(pid, 0)                          # the sleeper ends: its lock with it
    third = jobpool.launch(ctx.store, ctx.config.path, [a.id], self_argv=argv0)
    assert third.startswith("started monitor pid") and third != first
    os.waitpid(int(third.split()[-1]), 0)


def test_a_test_hook_gets_a_monitor_of_its_own(ctx, monkeypatch) -> None:
    monkeypatch.setenv("IMGSTOR_PAUSE", "job:copy:1")
    monkeypatch.setenv("SLEEP", "0")
    a = new(ctx)
    out = jobpool.launch(ctx.store, ctx.config.path, [a.id],
                         self_argv=[sys.executable, "-c", SLEEPER])
    os.waitpid(int(out.split()[-1]), 0)
    text = open(os.path.join(jobs.job_dir(ctx.store), "monitor.log")).read()
    assert f"'monitor', '{a.id}']" in text and "fd -1" in text


def test_the_pool_runs_queued_jobs_and_exits_when_idle(ctx, monkeypatch) -> None:
    monkeypatch.setattr(mon, "POOL_IDLE", 0.3)
    monkeypatch.setattr(mon, "TICK", 0.05)
    seen = []
    monkeypatch.setitem(jobkinds.KINDS, "pull", [("a", lambda c, j, rt: seen.append(j.id))])
    a, b = new(ctx), new(ctx)
    key = jobpool.pool_key(ctx.config.path)
    q = jobpool.queue_dir(ctx.store, key)
    os.makedirs(q)
    for j in (a, b):
        open(os.path.join(q, j.id), "w").close()
    assert mon.monitor(ctx, pool=key) == f"monitor pool {key}: 2 jobs run"
    assert sorted(seen) == sorted([a.id, b.id]) and ctx.store.read().jobs == {}
    fd = os.open(jobpool.pool_lock_path(ctx.store, key), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)          # it let its pool lock go
    os.close(fd)


# ------------------------------------------------------------------ the record
def test_job_state_fields_read_from_old_files_and_round_trip() -> None:
    old = {"id": "pull-0123456789ab", "kind": "pull", "volume": KEY, "phase": "send",
           "created": 1.0, "updated": 1.0, "attempts": 0, "last_error": None, "owner": None}
    j = Job.from_dict(dict(old))
    assert (j.state, j.next_try) == ("ready", None)
    assert j.to_dict() == old                                   # unchanged for ready jobs
    j.state, j.next_try, j.attempts = "retry", 12.5, 2
    assert Job.from_dict(j.to_dict()) == j
    with pytest.raises(Exception, match="unknown job state"):
        Job.from_dict({**old, "state": "sleeping"})
    assert JobPolicy().backoff_after(1) == 10 and JobPolicy().backoff_after(4) == 80
    assert JobPolicy().backoff_after(20) == 300


# ------------------------------------------------------------------ the store, shared
def _slow_writes(ctx, monkeypatch) -> None:
    import contextlib
    real = ctx.store.transaction

    @contextlib.contextmanager
    def slow():                          # a transaction that takes a while, as fsync does
        with real() as st:
            yield st
            time.sleep(0.05)
    monkeypatch.setattr(ctx.store, "transaction", slow)


def _all_at_once(n: int, fn) -> None:
    ts = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def test_group_commit_runs_many_jobs_changes_in_few_transactions(ctx, monkeypatch) -> None:
    from imgstor.jobrun import Committer
    ids = [new(ctx).id for _ in range(20)]
    _slow_writes(ctx, monkeypatch)
    c = Committer(ctx.store)
    _all_at_once(20, lambda i: c(lambda st: jobs.advance_in(st, ids[i], "b")))
    assert [j.phase for j in ctx.store.read().jobs.values()] == ["b"] * 20
    assert c.commits == 20 and c.transactions <= 5, c.transactions


def test_a_change_that_fails_in_a_group_fails_alone(ctx, monkeypatch) -> None:
    from imgstor.jobrun import Committer
    ids = [new(ctx).id for _ in range(8)]
    _slow_writes(ctx, monkeypatch)
    c = Committer(ctx.store)
    errors: list[Exception] = []

    def bad(st):
        st.jobs[ids[3]].phase = "half-done"
        raise StateError("no")

    def one(i: int) -> None:
        try:
            c(bad if i == 3 else (lambda st: jobs.advance_in(st, ids[i], "b")))
        except StateError as e:
            errors.append(e)
    _all_at_once(8, one)
    st = ctx.store.read()
    assert [st.jobs[i].phase for i in ids] == ["b"] * 3 + ["a"] + ["b"] * 4
    assert len(errors) == 1 and c.commits == 7


def test_the_jobs_reads_share_one_parse(ctx) -> None:
    """rt.read(): the process's one in-memory state (Store.read), not a parse per read."""
    new(ctx)
    rt = runner(ctx, Clock()).rt
    loads = ctx.store.stats["loads"]
    a, b = rt.read(), rt.read()
    assert a.jobs == b.jobs and len(a.jobs) == 1
    new(ctx)
    assert len(rt.read().jobs) == 2 and ctx.store.stats["loads"] == loads


def test_the_pool_survives_a_busy_store(ctx, monkeypatch) -> None:
    """The store's lock held past its timeout while the pool takes its queue: the jobs
    wait for the next tick (the pool used to die, and its jobs with it)."""
    monkeypatch.setattr(mon, "POOL_IDLE", 0.3)
    monkeypatch.setattr(mon, "TICK", 0.05)
    seen = []
    monkeypatch.setitem(jobkinds.KINDS, "pull", [("a", lambda c, j, rt: seen.append(j.id))])
    a = new(ctx)
    key = jobpool.pool_key(ctx.config.path)
    os.makedirs(jobpool.queue_dir(ctx.store, key))
    open(os.path.join(jobpool.queue_dir(ctx.store, key), a.id), "w").close()
    real = jobs.acquire
    calls = []

    def busy_once(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            from imgstor.errors import LockTimeout
            raise LockTimeout("state store is locked by pid 1; waited 30s")
        return real(*args, **kw)
    monkeypatch.setattr(jobs, "acquire", busy_once)
    assert mon.monitor(ctx, pool=key) == f"monitor pool {key}: 1 jobs run"
    assert seen == [a.id] and len(calls) == 2
