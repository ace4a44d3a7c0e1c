"""refresh (its flock, due pulls, the records it makes) and the metrics textfile, parsed
by the Prometheus text exposition format's rules."""
from __future__ import annotations

import fcntl
import json
import os
import re
import time

import pytest

from imgstor import metrics
from imgstor.state.model import Busy, Volume
from imgstor.workflows import refresh as rf
from imgstor.workflows.storagemap import sync as syncmod
from imgstor.workflows.syncattrs import due

# ------------------------------------------------------------- a strict text-format parser
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"'
_SAMPLE = re.compile(rf"({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? (\S+)(?: -?\d+)?")


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], s)


def parse_prom(text: str) -> dict[str, dict]:
    """family -> {"type", "help", "samples": [(labels, value)]}; raises on anything the
    text format (0.0.4) does not allow."""
    assert text.endswith("\n"), "the last line must end with a line feed"
    fams: dict[str, dict] = {}
    seen_samples: set[str] = set()
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            kind, name, rest = line[2:6], *line[7:].split(" ", 1)
            assert re.fullmatch(_NAME, name), line
            f = fams.setdefault(name, {"samples": []})
            assert name not in seen_samples, f"{kind} of {name} after its samples"
            key = "help" if kind == "HELP" else "type"
            assert key not in f, f"second {kind} for {name}"
            if key == "type":
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), line
            f[key] = rest
            continue
        if line.startswith("#"):
            continue                       # a comment
        m = _SAMPLE.fullmatch(line)
        assert m, f"not a sample line: {line!r}"
        name, labels_text, value = m.group(1), m.group(2) or "", m.group(7)
        float(value)                       # Go's ParseFloat accepts what float() does here
        labels = {k: _unescape(v) for k, v in re.findall(_LABEL, labels_text)}
        assert name in fams and "type" in fams[name], f"{name} has no TYPE"
        seen_samples.add(name)
        fams[name]["samples"].append((labels, float(value)))
    for name, f in fams.items():           # each label set once per family
        keys = [tuple(sorted(ls.items())) for ls, _ in f["samples"]]
        assert len(keys) == len(set(keys)), f"duplicate series in {name}"
    return fams


def _vol(vol, **kw) -> Volume:
    return Volume(nas="nas-0-0", zpool="tank", vol=vol, **kw)


def test_metrics_textfile_parses_and_says_each_state_lag_progress_and_error(tmp_path):
    from imgstor.state.model import Job
    now = 1_000_000.0
    vols = [_vol("a", host="compute-0-1", state="mapped", mode="sync", since=now - 500,
                 extra={"last_pull": now - 30}),
            _vol("b", host="compute-0-0", state="mapped", mode="direct", since=now - 10,
                 error='tgtadm said "no such target"\nand a back\\slash'),
            _vol("c", host="compute-0-1", state="NAS->VM", mode="sync", since=now - 60)]
    jobs = [Job(id="sync-in-0123456789ab", kind="sync-in", volume="nas-0-0/c", phase="copy",
                created=now, updated=now),
            Job(id="pull-0123456789ab", kind="pull", volume="nas-0-0/a", phase="send",
                created=now, updated=now, attempts=5, state="failed", last_error="no route")]
    from imgstor.workflows.probe import HostProbe
    hosts = [HostProbe("nas-0-0", "nas", True, 0.042), HostProbe("compute-0-1", "compute",
                                                                 False, 2.5, error="refused")]
    text = metrics.render(vols, jobs, {"sync-in-0123456789ab": {"done": 25, "total": 100}},
                          hosts=hosts, now=now, job_states={"sync-in-0123456789ab": "running"})
    path = tmp_path / "imgstor.prom"
    metrics.write(str(path), text)
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["imgstor.prom"]   # no temp file left
    fams = parse_prom(path.read_text())
    st = fams["imgstor_volume_state"]
    assert st["type"] == "gauge"
    ones = {(ls["vol"], ls["state"]) for ls, v in st["samples"] if v == 1}
    assert ones == {("a", "mapped"), ("b", "mapped"), ("c", "NAS->VM")}
    assert len(st["samples"]) == 3 * 6
    lag = {ls["vol"]: v for ls, v in fams["imgstor_sync_lag_seconds"]["samples"]}
    assert lag == {"a": 30, "c": 60}
    prog = fams["imgstor_job_progress_ratio"]["samples"]
    assert prog == [({"nas": "nas-0-0", "vol": "c", "job": "sync-in-0123456789ab",
                      "kind": "sync-in", "phase": "copy"}, 0.25)]
    err = {ls["vol"]: v for ls, v in fams["imgstor_volume_last_error"]["samples"]}
    assert err == {"a": 1, "b": 1, "c": 0}          # a: its failed job's error
    assert {ls["state"]: v for ls, v in fams["imgstor_jobs"]["samples"]} == {
        "running": 1, "ready": 0, "retry": 0, "failed": 1}
    assert {ls["job"]: v for ls, v in fams["imgstor_job_attempts"]["samples"]} == {
        "pull-0123456789ab": 5, "sync-in-0123456789ab": 0}
    info = fams["imgstor_volume_last_error_info"]["samples"]
    assert info == [({"nas": "nas-0-0", "zpool": "tank", "vol": "a",
                      "message": "job pull-0123456789ab (pull send): no route"}, 1),
                    ({"nas": "nas-0-0", "zpool": "tank", "vol": "b",
                      "message": 'tgtadm said "no such target"\nand a back\\slash'}, 1)]
    assert fams["imgstor_refresh_timestamp_seconds"]["samples"] == [({}, now)]
    up = fams["imgstor_host_up"]
    assert up["type"] == "gauge"
    assert up["samples"] == [({"host": "nas-0-0", "role": "nas"}, 1),
                             ({"host": "compute-0-1", "role": "compute"}, 0)]
    assert fams["imgstor_host_probe_seconds"]["samples"] == [
        ({"host": "nas-0-0", "role": "nas"}, 0.042),
        ({"host": "compute-0-1", "role": "compute"}, 2.5)]


def test_label_escaping() -> None:
    assert metrics.escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


# ------------------------------------------------------------- due
def test_due_only_for_mapped_sync_volumes_on_their_local_copy() -> None:
    now = 10_000.0
    assert due(_vol("a", state="mapped", mode="sync", since=now - 100), 60, now) == -40
    v = _vol("a", state="mapped", mode="sync", since=now - 100, extra={"last_pull": now - 10})
    assert due(v, 60, now) == 50
    assert due(_vol("a", state="mapped", mode="direct", since=0), 60, now) is None
    assert due(_vol("a", state="merging", mode="sync", since=0), 60, now) is None
    assert due(_vol("a", state="mapped", mode="sync", target="iqn.x", since=0), 60,
                  now) is None


# ------------------------------------------------------------- refresh itself
@pytest.fixture
def ctx(imgstor, config_path, state_path, monkeypatch):
    from imgstor.workflows.context import Ctx
    spawned = []
    monkeypatch.setattr(syncmod, "start_jobs",
                        lambda c, jobs: spawned.extend(j.id for j in jobs) or True)
    monkeypatch.setattr(rf, "_restore", lambda c: [])     # no hosts here (test_reconcile)
    c = Ctx(config_path=str(config_path))
    c.spawned = spawned
    return c


def _put(ctx, *vols) -> None:
    with ctx.store.transaction() as st:
        for v in vols:
            st.volumes[v.key] = v


def test_refresh_starts_a_due_pull_once_and_skips_busy_and_fresh(ctx) -> None:
    now = time.time()
    _put(ctx, _vol("due", host="compute-0-1", state="mapped", mode="sync", since=now - 7200),
         _vol("fresh", host="compute-0-1", state="mapped", mode="sync", since=now - 10),
         _vol("busy", host="compute-0-1", state="mapped", mode="sync", since=now - 7200,
              busy=Busy(op="unmap", pid=os.getpid(), host=__import__("socket").gethostname(),
                        since=now)),
         _vol("direct", host="compute-0-0", state="mapped", mode="direct", since=0))
    out = rf.refresh(ctx)
    rows = {r["volume"]: r for r in out.rows}
    assert rows["nas-0-0/due"]["action"] == "started (NAS<-VM sched)"
    assert rows["nas-0-0/fresh"]["action"].startswith("next in 35")
    assert rows["nas-0-0/busy"]["action"].startswith("due, skipped: busy (unmap")
    assert "nas-0-0/direct" not in rows
    st = ctx.store.read()
    (job,) = st.jobs.values()
    assert (job.kind, job.volume, job.phase) == ("pull", "nas-0-0/due", "trust")
    assert ctx.spawned == [job.id]
    assert st.volumes["nas-0-0/due"].state == "mapped"
    # the list shows the pull; a second refresh starts nothing more (the job is there)
    from imgstor.workflows.storagemap.listing import list_maps
    lm = {r["zvol"]: r for r in list_maps(ctx).rows}
    assert lm["due"]["state"] == "NAS<-VM sched"
    assert lm["fresh"]["nextsync"] not in (None, "due") and lm["due"]["nextsync"] is None
    assert "NEXTSYNC" in [c[1] for c in list_maps(ctx).columns]
    rf.refresh(ctx)
    assert len(ctx.store.read().jobs) == 1


def test_a_second_refresh_exits_quietly_while_one_runs(ctx, imgstor) -> None:
    fd = os.open(rf.lock_path(ctx), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = imgstor("refresh")
        assert (r.rc, r.out, r.err) == (0, "", "")
    finally:
        os.close(fd)
    r = imgstor("refresh", "--json")
    assert r.rc == 0
    out = json.loads(r.out)["rows"]
    assert [(x["what"], x["host"], x["role"], x["up"]) for x in out] == [
        ("host", "nas-0-0", "nas", True), ("host", "nas-0-1", "nas", True),
        ("host", "compute-0-0", "compute", True), ("host", "compute-0-1", "compute", True)]


def test_refresh_reports_and_records_a_host_it_cannot_reach(ctx, imgstor,
                                                           monkeypatch) -> None:
    from imgstor.workflows import probe
    real = probe.probe_one

    def one(cluster, host, role, timeout):
        if host == "compute-0-0":
            return probe.HostProbe(host, role, False, 2.0, error="cannot connect: refused")
        return real(cluster, host, role, timeout)
    monkeypatch.setattr(probe, "probe_one", one)
    r = imgstor("refresh")
    assert r.rc == 0                      # cron's run: a down host is news, not a failure
    line = next(ln for ln in r.out.splitlines() if "compute-0-0" in ln)
    assert line.split()[:2] == ["host", "compute-0-0"] and "DOWN since" in line, r.out
    rec = json.loads(open(probe.record_path(ctx)).read())
    assert rec["compute-0-0"]["up"] is False and rec["nas-0-0"]["up"] is True


def test_refresh_writes_the_metrics_file(tmp_path, config_path, imgstor) -> None:
    prom = tmp_path / "imgstor.prom"
    config_path.write_text(config_path.read_text().replace(
        "lock_timeout = 5", f'lock_timeout = 5\nmetrics_path = "{prom}"'))
    r = imgstor("refresh", "--json")
    assert r.rc == 0, r
    assert json.loads(r.out)["rows"][-1]["what"] == "metrics"
    fams = parse_prom(prom.read_text())
    assert {ls["host"]: v for ls, v in fams["imgstor_host_up"]["samples"]} == {
        "nas-0-0": 1, "nas-0-1": 1, "compute-0-0": 1, "compute-0-1": 1}


def test_config_sync_keep(tmp_path, config_path) -> None:
    from imgstor.config import load_config
    from imgstor.errors import ConfigError
    assert load_config(str(config_path)).host("nas-0-0").sync_keep == 3
    config_path.write_text(config_path.read_text().replace("[defaults]",
                                                           "[defaults]\nsync_keep = 0"))
    with pytest.raises(ConfigError, match="sync_keep"):
        load_config(str(config_path))
