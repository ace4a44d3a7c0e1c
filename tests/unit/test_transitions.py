"""state/transitions.py: the one table of volume state moves."""
from __future__ import annotations

import pytest

from imgstor.errors import StateError
from imgstor.state.model import VOLUME_STATES, Volume
from imgstor.state.transitions import ALLOWED, allowed, move

SYNC_LIFE = ["unmapped", "NAS->VM", "merging", "mapped", "NAS<-VM", "unmapped"]
CANCEL = ["unmapped", "NAS->VM", "NAS<-VM", "unmapped"]
DIRECT = ["unmapped", "mapped", "unmapped"]


@pytest.mark.parametrize("path", [SYNC_LIFE, CANCEL, DIRECT])
def test_the_lives_of_a_volume_are_allowed(path) -> None:
    v = Volume(nas="n", zpool="t", vol="v")
    for i, s in enumerate(path[1:]):
        assert move(v, s, now=float(i)) is True
        assert v.state == s and v.since == float(i)


@pytest.mark.parametrize("old,new", [("unmapped", "merging"), ("NAS->VM", "mapped"),
                                     ("merging", "unmapped"), ("NAS<-VM", "mapped"),
                                     ("mapped", "NAS->VM")])
def test_illegal_moves_are_refused_unless_forced(old, new) -> None:
    v = Volume(nas="n", zpool="t", vol="v", state=old, since=5.0)
    with pytest.raises(StateError, match=f"cannot go from {old} to {new}"):
        move(v, new)
    assert (v.state, v.since) == (old, 5.0)
    assert move(v, new, force=True) and v.state == new


def test_same_state_and_error_always_allowed() -> None:
    for s in VOLUME_STATES:
        assert allowed(s, s) and allowed(s, "error") and allowed("error", s)
        v = Volume(nas="n", zpool="t", vol="v", state=s, since=1.0)
        assert move(v, s) is False and v.since == 1.0
    assert set(ALLOWED) == set(VOLUME_STATES)
    with pytest.raises(StateError, match="unknown state"):
        move(Volume(nas="n", zpool="t", vol="v"), "flying")
