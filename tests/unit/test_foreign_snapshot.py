"""Audit L4: a snapshot made on the NAS after the last common one (zfs-auto-snapshot,
sanoid) stops every send back for good -- ``zfs receive`` takes an incremental only onto
the newest snapshot.  Designed outcome: the pull (or sync back) stops before it snapshots
anything, with a Conflict naming the snapshot; the volume records it, ``check`` names it,
the metrics carry it, and the next try after it is gone sends."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from imgstor import metrics, reconcile
from imgstor.errors import Conflict
from imgstor.state import Store
from imgstor.state.model import Job, Volume
from imgstor.workflows.storagemap import sync
from tests.unit.test_refresh import parse_prom


def _rt(store):
    """The monitor's runtime as the phases use it here: commit and log."""
    def commit(fn):
        with store.transaction() as st:
            return fn(st)
    return SimpleNamespace(commit=commit, log=lambda *a: None, read=store.read)


NODE_SNAPS = [{"name": "imgstor-in-1", "guid": "11"}, {"name": "imgstor-pull-2", "guid": "22"}]


def _run(tmp_path, nas_snaps, node_snaps=NODE_SNAPS):
    store = Store(str(tmp_path / "state.json"))
    v = Volume(nas="nas-0-0", zpool="tank", vol="v", host="compute-0-0", state="mapped",
               mode="sync")
    job = Job(id="pull-0123456789ab", kind="pull", volume=v.key, phase="send", created=3,
              updated=3)
    with store.transaction() as st:
        st.volumes[v.key], st.jobs[job.id] = v, job

    def step(host, name, **kw):
        assert name == "node.sync_facts"
        return SimpleNamespace(facts={"snapshots": nas_snaps if host == "nas-0-0"
                                      else node_snaps})
    ctx = SimpleNamespace(store=store, cluster=SimpleNamespace(step=step))
    n = {"pool": "tank"}
    try:
        sync.check_nas_snapshots(ctx, job, _rt(store), store.read().volumes[v.key], n)
        err = None
    except Conflict as e:
        err = e
    return err, store.read().volumes[v.key]


def test_a_snapshot_made_on_the_nas_stops_the_send_and_is_recorded(tmp_path) -> None:
    nas = NODE_SNAPS + [{"name": "zfs-auto-snap_hourly-2024", "guid": "99"}]
    err, v = _run(tmp_path, nas)
    assert err is not None and "tank/v@zfs-auto-snap_hourly-2024" in err.message
    assert "never destroys a snapshot it did not make" in err.message
    assert "@imgstor-pull-2" in err.message and err.exit_code == 8
    assert v.extra["foreign_snapshots"] == ["tank/v@zfs-auto-snap_hourly-2024"]
    f = reconcile.snapshot_plan([v])
    assert [(x.what, x.subject) for x in f] == [("foreign-snapshot", "nas-0-0/v")]
    assert "tank/v@zfs-auto-snap_hourly-2024" in f[0].why and f[0].actions == ()
    fams = parse_prom(metrics.render([v], [], {}, now=10.0))
    assert fams["imgstor_foreign_snapshot"]["samples"] == [
        ({"nas": "nas-0-0", "zpool": "tank", "vol": "v",
          "snapshot": "tank/v@zfs-auto-snap_hourly-2024"}, 1)]


def test_once_it_is_gone_the_send_goes_and_the_record_is_cleared(tmp_path) -> None:
    err, v = _run(tmp_path, NODE_SNAPS + [{"name": "auto", "guid": "9"}])
    assert err is not None
    store = Store(str(tmp_path / "state.json"))

    def step(host, name, **kw):
        return SimpleNamespace(facts={"snapshots": NODE_SNAPS})
    ctx = SimpleNamespace(store=store, cluster=SimpleNamespace(step=step))
    job = store.read().jobs["pull-0123456789ab"]
    sync.check_nas_snapshots(ctx, job, _rt(store), store.read().volumes["nas-0-0/v"],
                            {"pool": "tank"})
    assert "foreign_snapshots" not in store.read().volumes["nas-0-0/v"].extra
    assert reconcile.snapshot_plan(store.read().volumes.values()) == []


@pytest.mark.parametrize("nas", [
    NODE_SNAPS,                                                   # in step
    NODE_SNAPS[:1] + [{"name": "older-by-hand", "guid": "5"}] + NODE_SNAPS[1:],  # older
    [],                                                           # nothing common: the
])                                                                # copy says so itself
def test_older_snapshots_and_no_common_one_do_not_stop_it_here(tmp_path, nas) -> None:
    err, v = _run(tmp_path, nas)
    assert err is None and "foreign_snapshots" not in v.extra
