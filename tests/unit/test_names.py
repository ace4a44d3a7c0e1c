"""imgstor.names: derived names and the refusal of colliding ones (pure)."""
from __future__ import annotations

import pytest

from imgstor import names
from imgstor.errors import Conflict, UsageError
from imgstor.remote.naming import backstore_name
from imgstor.state.model import Volume


def vols(*specs: tuple[str, str] | tuple[str, str, str]) -> list[Volume]:
    out = []
    for s in specs:
        v = Volume(nas=s[0], zpool="tank", vol=s[1])
        if len(s) > 2:
            v.host, v.state = s[2], "mapped"
        out.append(v)
    return out


def test_iqn_is_the_guides_form_lower_cased() -> None:
    assert names.target_iqn("nas-0-0", "Compute-0-3-0-vol") == \
        "iqn.2001-04.com.nas-0-0-compute-0-3-0-vol"
    with pytest.raises(UsageError, match="cannot form an iSCSI target name"):
        names.target_iqn("nas-0-0", "a_b")


@pytest.mark.parametrize("have,new,kind", [
    ("Vol1", "vol1", "target"),                       # case
    ("a.b", "a:b", "LIO backstore"),                  # '.'/':' both become '_'
    ("x" * 56 + "-disk1", "x" * 56 + "-disk2", "LIO backstore"),   # cut at 64 characters
])
def test_collisions_on_one_nas_are_refused_naming_the_other(have, new, kind) -> None:
    with pytest.raises(Conflict, match=f"{kind} .* which volume nas-0-0:{have}"):
        names.check_collisions(vols(("nas-0-0", have)), "nas-0-0", new)


def test_cross_nas_iqn_collision_is_refused() -> None:
    # nas-0 + "0-x" and nas-0-0 + "x" give the same IQN
    with pytest.raises(Conflict, match="nas-0:0-x"):
        names.check_collisions(vols(("nas-0", "0-x")), "nas-0-0", "x")


def test_same_volume_and_unrelated_names_pass() -> None:
    names.check_collisions(vols(("nas-0-0", "vol1"), ("nas-0-0", "vol2")), "nas-0-0", "vol1")
    names.check_collisions(vols(("nas-0-0", "vol1")), "nas-0-0", "vol3", "compute-0-0")


def test_same_name_from_another_nas_on_one_node_is_refused() -> None:
    v = vols(("nas-0-1", "vm-vol", "compute-0-3"))
    with pytest.raises(Conflict, match="compute-0-3 already holds volume vm-vol from nas-0-1"):
        names.check_collisions(v, "nas-0-0", "vm-vol", "compute-0-3")
    names.check_collisions(v, "nas-0-0", "vm-vol", "compute-0-4")     # another node: fine


@pytest.mark.parametrize("bad", ["x-temp-write", "vm1-vol-snap"])
def test_imgstors_derived_node_names_are_refused(bad) -> None:
    with pytest.raises(UsageError, match="imgstor's own"):
        names.check_collisions([], "nas-0-0", bad)


def test_chap_account_collision() -> None:
    v = vols(("nas-0-0", "vol1"))
    v[0].extra["chap_user"] = "imgstor-0123456789ab"
    with pytest.raises(Conflict, match="CHAP account"):
        names.check_collisions(v, "nas-0-0", "vol2", chap_user="imgstor-0123456789ab")


def test_backstore_name_is_the_node_steps() -> None:
    from imgstor.remote.targets import lio as lio_target
    assert lio_target.backstore_name is backstore_name
    assert backstore_name("iqn.2001-04.com.nas-0-0-a.b") == "nas-0-0-a_b"
