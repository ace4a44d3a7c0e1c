"""``clean host storagemap``'s pure part: what the node holds beyond the NAS's last copy."""
from __future__ import annotations

from imgstor.workflows.storagemap.clean import loss

S = [{"name": "imgstor-in-1", "guid": "11"}, {"name": "imgstor-pull-2", "guid": "22"}]


def node(snaps=S, written=None, tw=None, exists=True) -> dict:
    return {"exists": exists, "snapshots": list(snaps), "written": written,
            "temp_write": tw, "referenced": 5 << 20}


def test_nothing_newer_when_written_is_zero() -> None:
    out = loss(S, node(written=0))
    assert out["common"] == "imgstor-pull-2" and not out["newer"] and out["lines"] == []


def test_written_after_the_common_snapshot_is_newer() -> None:
    out = loss(S, node(written=3 << 20))
    assert out["newer"] and "3.0 MiB written" in out["lines"][0]


def test_unknown_written_counts_as_newer() -> None:        # zfs-fuse: no written@
    out = loss(S, node(written=None))
    assert out["newer"] and "cannot tell" in out["lines"][0]


def test_common_is_by_guid_and_later_node_snapshots_are_named() -> None:
    nsn = [{"name": "imgstor-in-1", "guid": "11"}, {"name": "imgstor-pull-2", "guid": "99"},
           {"name": "imgstor-back-3", "guid": "33"}]
    out = loss(S, node(nsn, written=0))
    assert out["common"] == "imgstor-in-1"
    assert out["after"] == ["imgstor-pull-2", "imgstor-back-3"] and out["newer"]


def test_temp_write_is_newer_and_no_local_copy_is_fine() -> None:
    out = loss(S, node([], exists=False, tw={"used": 1 << 20, "role": "temp-write"}))
    assert out["newer"] and out["common"] is None and "temp-write" in out["lines"][0]
    out = loss(S, node([], exists=False))
    assert not out["newer"] and out["lines"] == []


def test_local_copy_sharing_no_snapshot_is_newer() -> None:
    out = loss(S, node([{"name": "x", "guid": "7"}], written=0))
    assert out["newer"] and "shares no snapshot" in out["lines"][0]


def _st(state: str, mode: str | None = "sync", jobs=()):
    from imgstor.state.model import Job, State, Volume
    v = Volume(nas="nas-0-0", zpool="tank", vol="v", host="compute-0-0" if mode else None,
               state=state, mode=mode)
    st = State(volumes={v.key: v})
    for kind, err in jobs:
        j = Job(id=f"{kind}-000000000001", kind=kind, volume=v.key, phase="send",
                created=1.0, updated=1.0, last_error=err, attempts=5 if err else 0,
                state="failed" if err else "ready")
        st.jobs[j.id] = j
    return st, v


def test_which_states_clean_applies_to(tmp_path) -> None:
    import pytest

    from imgstor.errors import Conflict
    from imgstor.state.store import Store
    from imgstor.workflows.storagemap.clean import _check
    store = Store(str(tmp_path / "state.json"))
    for state in ("mapped", "error"):
        st, v = _st(state)
        _check(store, st, v, v.key)                           # accepted
    st, v = _st("NAS<-VM", jobs=[("sync-back", "copy failed")])
    _check(store, st, v, v.key)                               # a failed sync back
    st, v = _st("NAS<-VM")
    _check(store, st, v, v.key)                               # its job lost
    for st, v, why in [(*_st("mapped", mode="direct"), "not a sync volume"),
                       (*_st("unmapped", mode=None), "not a sync volume"),
                       (*_st("NAS->VM"), "cancels a copy"),
                       (*_st("merging"), "cancels a copy"),
                       (*_st("NAS<-VM", jobs=[("sync-back", None)]), "monitor --resume")]:
        with pytest.raises(Conflict) as e:
            _check(store, st, v, v.key)
        assert why in e.value.message, e.value.message
