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
