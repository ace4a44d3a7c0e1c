"""reconcile.py's node side: what a reboot or a killed daemon lost of mapped volumes
(restore_plan), and orphans on nodes and NASes (node_plan, nas_volume_plan)."""
from __future__ import annotations

from imgstor.reconcile import (
    ORIGIN_FROM_ATTACH,
    ORIGIN_LOCAL,
    nas_volume_plan,
    node_plan,
    restore_finding,
    restore_plan,
)
from imgstor.state.model import Volume

INI = "iqn.2005-03.org.open-iscsi:compute-0-0"
IQN = "iqn.2001-04.com.nas-0-0-v"
NODE = "compute-0-0"


def vol(state="mapped", mode="direct", target=IQN, host=NODE, name="v", **extra) -> Volume:
    return Volume(nas="nas-0-0", zpool="tank", vol=name, state=state, mode=mode,
                  target=target, host=host,
                  extra={"initiator": INI, "portal": "10.0.0.1:3260", **extra})


def facts(sessions=(), overlays=(), datasets=()) -> dict:
    return {"sessions": [{"iqn": i, "address": "10.0.0.1", "port": 3260} for i in sessions],
            "overlays": [{"vol": o, "driver": "dm"} for o in overlays],
            "datasets": list(datasets)}


def steps(plan) -> list[str]:
    return [a.step for a in plan]


def rp(v, f, kind="iscsiadm", driver="dm"):
    return restore_plan(v, f, kind=kind, driver=driver, pool="tank", volume_kind="zvol")


def test_direct_volume_gets_its_session_back_on_iscsiadm_only() -> None:
    assert steps(rp(vol(), facts())) == ["compute.attach"]
    assert rp(vol(), facts(sessions=[IQN])) == []
    assert rp(vol(), facts(), kind="userspace") == []       # no session to keep


TW = {"name": "tank/v-temp-write", "role": "temp-write", "writes": True}
TW_QCOW2 = {**TW, "type": "filesystem", "overlay_file": True}
LOCAL = {"name": "tank/v", "role": "local-copy", "writes": None, "snapshots": 1}


def test_sync_overlay_rebuilt_from_attach_before_pivot_and_on_local_after() -> None:
    p = rp(vol(state="NAS->VM", mode="sync"), facts(datasets=[TW]))
    assert steps(p) == ["compute.attach", "overlay.create"]
    assert p[1].args["origin"] == ORIGIN_FROM_ATTACH and p[1].args["existing"] is True
    # dm caught merging: part of the writes are in the local copy already
    p = rp(vol(state="merging", mode="sync"), facts(datasets=[TW, LOCAL]))
    assert steps(p) == ["overlay.create", "compute.attach"]
    assert p[0].args["origin"] == ORIGIN_LOCAL
    p = rp(vol(state="merging", mode="sync", overlay="qcow2"),
           facts(datasets=[TW_QCOW2, LOCAL]))
    assert p[1].args["origin"] == ORIGIN_FROM_ATTACH
    assert steps(rp(vol(mode="sync", target=None), facts())) == ["overlay.restore_local"]
    assert rp(vol(mode="sync", target=None), facts(overlays=["v"])) == []
    assert rp(vol(state="NAS->VM", mode="sync"), facts(sessions=[IQN], overlays=["v"])) == []


def test_the_node_not_the_store_chooses_the_origin() -> None:
    """Audit H1: the store lags the node.  dm: a complete local copy is the base even
    while the store still says NAS->VM (a merge may have begun before it was recorded);
    qcow2: a temp-write without its overlay file means the pivot had begun (job-complete,
    the file unlinked): the local copy alone, never a fresh overlay over the origin."""
    p = rp(vol(state="NAS->VM", mode="sync"), facts(datasets=[TW, LOCAL]))
    assert p[0].step == "overlay.create" and p[0].args["origin"] == ORIGIN_LOCAL
    gone = {**TW_QCOW2, "overlay_file": False, "writes": False}
    for st in ("merging", "NAS->VM"):
        assert steps(rp(vol(state=st, mode="sync", overlay="qcow2"),
                        facts(datasets=[gone, LOCAL]))) == ["overlay.restore_local"]
        assert steps(rp(vol(state=st, mode="sync", overlay="qcow2"),
                        facts(datasets=[LOCAL]))) == ["overlay.restore_local"]
    # a local copy without its snapshot is not complete: not taken for the base
    partial = {**LOCAL, "snapshots": 0}
    p = rp(vol(state="NAS->VM", mode="sync"), facts(datasets=[TW, partial]))
    assert p[1].args["origin"] == ORIGIN_FROM_ATTACH


def test_no_fresh_temp_write_for_a_merging_record() -> None:
    """Neither the temp-write nor a complete local copy: left, said, never a new overlay."""
    for st in ("merging", "NAS->VM"):
        plan, left = restore_finding(vol(state=st, mode="sync"), facts(), kind="iscsiadm",
                                     driver="dm", pool="tank", volume_kind="zvol")
        assert plan == [] and "not rebuilt" in left
    f = _np([vol(state="merging", mode="sync")], facts())
    assert [(x.what, x.actions) for x in f] == [("overlay", ())] and "map" in f[0].left


def test_a_cancel_after_a_reboot_gets_its_overlay_back_over_the_origin() -> None:
    """Audit L4: NAS<-VM with a target is a cancel merging into the NAS volume: its
    overlay comes back over the origin (never the local copy), from its temp-write."""
    v = vol(state="NAS<-VM", mode="sync")
    p = rp(v, facts(datasets=[TW, LOCAL]))
    assert steps(p) == ["compute.attach", "overlay.create"]
    assert p[1].args["origin"] == ORIGIN_FROM_ATTACH
    assert rp(v, facts(datasets=[LOCAL])) == []          # it had pivoted into the NAS
    assert rp(vol(state="NAS<-VM", mode="sync", target=None), facts(datasets=[TW])) == []


def test_a_pivoting_monitor_gets_only_local_restores() -> None:
    pivoting = lambda v: True        # noqa: E731
    qc = vol(state="merging", mode="sync", overlay="qcow2")
    out = _np([qc], facts(datasets=[LOCAL]), pivoting=pivoting)
    assert [steps(f.actions) for f in out] == [["overlay.restore_local"]]
    out = _np([qc], facts(datasets=[TW_QCOW2, LOCAL]), pivoting=pivoting)
    assert out == []                 # over the origin: left to the monitor


def test_nothing_restored_for_volumes_not_mapped() -> None:
    for st in ("unmapped", "error"):
        assert rp(vol(state=st, mode="sync"), facts()) == []


def _np(vols, f, **kw):
    return node_plan(NODE, vols, f, kind="iscsiadm", driver="qcow2", pool="tank",
                     volume_kind="file", **kw)


def test_orphans_on_a_node() -> None:
    tw_empty = {"name": "tank/a-temp-write", "role": "temp-write", "writes": False}
    tw_full = {"name": "tank/b-temp-write", "role": "temp-write", "writes": True}
    lc = {"name": "tank/c", "role": "local-copy", "writes": None}
    mine = {"name": "tank/v-temp-write", "role": "temp-write", "writes": True}
    f = facts(sessions=[IQN, "iqn.2001-04.com.nas-0-0-gone", "iqn.2010-01.other:x"],
              overlays=["v", "b", "a"], datasets=[tw_empty, tw_full, lc, mine])
    out = {x.subject: x for x in _np([vol(state="NAS->VM", mode="sync")], f)}
    assert set(out) == {f"{NODE}:iqn.2001-04.com.nas-0-0-gone", f"{NODE}:a", f"{NODE}:b",
                        f"{NODE}:tank/a-temp-write", f"{NODE}:tank/b-temp-write",
                        f"{NODE}:tank/c"}
    assert steps(out[f"{NODE}:iqn.2001-04.com.nas-0-0-gone"].actions) == ["compute.detach"]
    assert steps(out[f"{NODE}:a"].actions) == ["overlay.remove"]       # no writes of its own
    assert out[f"{NODE}:b"].actions == () and "writes" in out[f"{NODE}:b"].left
    assert steps(out[f"{NODE}:tank/a-temp-write"].actions) == ["host.destroy_marked"]
    assert out[f"{NODE}:tank/b-temp-write"].actions == ()
    assert out[f"{NODE}:tank/c"].actions == () and "newer" in out[f"{NODE}:tank/c"].left
    # --destroy-orphans goes further, still only marked datasets
    out = {x.subject: x for x in _np([vol(state="NAS->VM", mode="sync")], f,
                                     destroy_orphans=True)}
    assert steps(out[f"{NODE}:tank/b-temp-write"].actions) == ["host.destroy_marked"]
    assert out[f"{NODE}:tank/c"].actions[0].args == {"name": "tank/c", "role": "local-copy",
                                                     "force": True}


def test_a_busy_volume_is_not_judged_and_its_datasets_are_not_orphans() -> None:
    v = vol(mode="sync", target=None)
    f = facts(datasets=[{"name": "tank/v", "role": "local-copy", "writes": None}])
    assert _np([v], f, skip=lambda v: True) == []


def test_unknown_marked_nas_volume_is_always_left() -> None:
    f = facts(datasets=[{"name": "tank/v", "role": "volume"},
                        {"name": "tank/lost", "role": "volume"}])
    out = nas_volume_plan("nas-0-0", [vol()], f)
    assert [x.subject for x in out] == ["nas-0-0:tank/lost"]
    assert out[0].actions == () and "never destroys" in out[0].left


def test_a_map_in_flight_owns_its_session_and_overlay_before_its_record_says_so() -> None:
    v = vol(state="unmapped", mode=None, target=None, intent="map")
    f = facts(sessions=[IQN], overlays=["v"],
              datasets=[{"name": "tank/v-temp-write", "role": "temp-write", "writes": False}])
    assert _np([v], f) == []
