"""reconcile.py: the pure plan that makes a NAS's target agree with the store."""
from __future__ import annotations

import pytest

from imgstor.reconcile import target_plan, wants_target
from imgstor.state.model import Volume

INI = "iqn.2005-03.org.open-iscsi:compute-0-0"
IQN = "iqn.2001-04.com.nas-0-0-v"


def vol(state="mapped", mode="direct", target=IQN, host="compute-0-0", **extra) -> Volume:
    return Volume(nas="nas-0-0", zpool="tank", vol="v", state=state, mode=mode,
                  target=target, host=host, extra={"initiator": INI, **extra})


def live(*acls: str) -> dict:
    return {"iqn": IQN, "acls": list(acls), "paths": [], "sessions": []}


@pytest.mark.parametrize("v,want", [
    (vol(), True), (vol(state="NAS->VM", mode="sync"), True),
    (vol(state="merging", mode="sync"), True),
    (vol(mode="sync", target=None), False),                       # running on its local copy
    (vol(state="NAS<-VM", mode="sync", target=None), False),
    (vol(state="unmapped", mode=None, target=None, host=None), False),
    (vol(state="unmapped", mode=None, intent="map"), True),      # an interrupted map
])
def test_wants_target(v, want) -> None:
    assert wants_target(v) is want


def test_agreeing_volumes_need_nothing() -> None:
    assert target_plan(vol(), live(INI), driver="tgt") == []
    assert target_plan(vol(), live(INI.upper()), driver="lio") == []    # LIO lower-cases
    assert target_plan(vol(state="unmapped", mode=None, target=None, host=None), None,
                       driver="tgt") == []
    assert target_plan(vol(state="unmapped", mode=None, intent="map"), None,
                       driver="tgt") == []


def test_missing_target_and_wrong_acl_are_ensured() -> None:
    (a,) = target_plan(vol(), None, driver="tgt")
    assert (a.host, a.step, a.why) == ("nas-0-0", "nas.ensure_target", "no target on the NAS")
    assert a.args["initiator"] == INI and a.args["iqn"] == IQN
    (a,) = target_plan(vol(), live(INI, "iqn.1999-01.org.example:intruder"), driver="tgt")
    assert a.step == "nas.ensure_target" and a.why.startswith("ACL is ")


def test_a_target_nothing_wants_is_removed() -> None:
    (a,) = target_plan(vol(mode="sync", target=None), live(INI), driver="lio")
    assert (a.step, a.args) == ("nas.remove_target", {"driver": "lio", "iqn": IQN})
    assert target_plan(vol(state="error"), live(INI), driver="tgt") == []


# ------------------------------------------------------------- nas_plan / store_plan
from imgstor.reconcile import FRONTEND, Action, nas_plan, store_plan  # noqa: E402
from imgstor.state.model import Busy, Job, Lease  # noqa: E402


def _t(iqn: str, *acls: str, sessions=()) -> dict:
    return {"iqn": iqn, "acls": list(acls), "paths": [], "sessions": list(sessions)}


def test_nas_plan_re_ensures_a_lost_target_with_what_the_step_needs() -> None:
    (f,) = nas_plan("nas-0-0", [vol(portal="10.0.0.1:3260")], [], driver="tgt",
                    kind="file", portal="10.9.9.9:3260")
    assert (f.what, f.subject, f.why) == ("target", "nas-0-0/v", "no target on the NAS")
    assert f.actions == (Action("nas-0-0", "nas.ensure_target", {
        "driver": "tgt", "iqn": IQN, "pool": "tank", "vol": "v", "initiator": INI,
        "kind": "file", "portal": "10.0.0.1:3260"}, "no target on the NAS"),)


def test_nas_plan_orphans_named_like_imgstors_only() -> None:
    live = [_t(IQN, INI), _t("iqn.2001-04.com.nas-0-0-ghost", INI),
            _t("iqn.2001-04.com.nas-0-0-busy", INI, sessions=["ini"]),
            _t("iqn.2001-04.com.nas-0-1-other"), _t("iqn.2010-01.org.site:mine")]
    fs = nas_plan("nas-0-0", [vol()], live, driver="lio")
    assert [(f.what, f.subject) for f in fs] == [
        ("orphan-target", "iqn.2001-04.com.nas-0-0-busy"),
        ("orphan-target", "iqn.2001-04.com.nas-0-0-ghost")]
    busy, ghost = fs
    assert busy.actions == () and "logged in" in busy.left
    assert ghost.actions == (Action("nas-0-0", "nas.remove_target",
                                    {"driver": "lio", "iqn": "iqn.2001-04.com.nas-0-0-ghost"},
                                    ghost.why),)


def test_nas_plan_skips_volumes_in_flight_and_agrees_when_all_is_there() -> None:
    assert nas_plan("nas-0-0", [vol()], [_t(IQN, INI)], driver="tgt") == []
    assert nas_plan("nas-0-0", [vol()], [], driver="tgt", skip=lambda v: True) == []
    # an unmapped volume's target is known: not an orphan, but one to remove
    (f,) = nas_plan("nas-0-0", [vol(state="unmapped", mode=None, target=None, host=None)],
                    [_t(IQN)], driver="tgt")
    assert (f.what, f.actions[0].step) == ("target", "nas.remove_target")


def test_store_plan_stale_busy_and_dead_monitors() -> None:
    dead = {111}
    alive = lambda pid, st: pid not in dead      # noqa: E731
    v1 = vol()
    v1.busy = Busy(op="map", pid=111, host="fe", since=0)
    v2 = Volume(nas="nas-0-0", zpool="tank", vol="w", busy=Busy(op="map", pid=222,
                                                                 host="fe", since=0))
    v3 = Volume(nas="nas-0-0", zpool="tank", vol="x", busy=Busy(op="map", pid=111,
                                                                 host="other", since=0))
    j1 = Job(id="pull-000000000001", kind="pull", volume="nas-0-0/v", phase="send",
             created=0, updated=0, owner=Lease(pid=111, host="fe", since=0))
    j2 = Job(id="pull-000000000002", kind="pull", volume="nas-0-0/w", phase="send",
             created=0, updated=0, owner=Lease(pid=222, host="fe", since=0))
    j3 = Job(id="pull-000000000003", kind="pull", volume="nas-0-0/x", phase="trust",
             created=0, updated=0, last_error="boom")
    j4 = Job(id="pull-000000000004", kind="pull", volume="nas-0-0/x", phase="send",
             created=0, updated=0, last_error="no route", attempts=5, state="failed")
    fs = store_plan([v1, v2, v3], [j1, j2, j3, j4], here="fe", alive=alive,
                    running=lambda j: j.id == "pull-000000000002")    # its lock is held
    assert [(f.what, f.subject) for f in fs] == [
        ("busy", "nas-0-0/v"), ("monitor", "pull-000000000001"),
        ("monitor", "pull-000000000003"), ("job", "pull-000000000004")]
    assert "failed after 5 tries: no route" in fs[3].why
    assert fs[3].actions[0].step == "monitor.start"
    assert fs[0].actions[0] == Action(FRONTEND, "store.unbusy", {"key": "nas-0-0/v"},
                                      "stale busy marker")
    assert "last error: boom" in fs[2].why and fs[2].actions[0].step == "monitor.start"
