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
