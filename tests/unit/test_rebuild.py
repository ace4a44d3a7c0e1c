"""``imgstor rebuild``'s pure part: the hosts' facts -> the state records (no I/O)."""
from __future__ import annotations

import pytest

from imgstor.errors import Conflict
from imgstor.remote.protocol import Portal
from imgstor.workflows.rebuild import records_from_facts

NAS, NODE = "nas-0-0", "compute-0-0"
INFO = {NAS: {"driver": "tgt", "portal": "10.1.0.1:3260",
              "portals": [Portal("10.1.0.1", 3260), Portal("10.9.0.1", 3260)]}}
NODES = {NODE: {"pool": "tank", "overlay": "qcow2", "initiator": "userspace"}}
INIT = "iqn.1994-05.com.debian:node0"


def iqn(vol: str) -> str:
    return f"iqn.2001-04.com.{NAS}-{vol}"


def nasvol(vol: str, **props) -> dict:
    full = {"size": "33554432", "host": None, "target": None, "mode": None,
            "initiator": None, "portal": None, "vm": None, "vm_container": None}
    full.update(props)
    return {"pool": "tank", "vol": vol, "type": "filesystem", "role": "volume",
            "props": full}


def target(vol: str, acl: str = INIT) -> dict:
    return {"iqn": iqn(vol), "tid": 1, "paths": [f"/tank/{vol}/disk.raw"], "acls": [acl],
            "sessions": []}


def node(datasets=(), overlays=None) -> dict:
    return {"pool_missing": False, "sessions": [], "overlays": overlays or {},
            "datasets": [{"name": n, "type": "filesystem", "role": r} for n, r in datasets]}


def run(vols, targets=(), nodef=None, **kw):
    return records_from_facts({NAS: {"volumes": vols, "targets": list(targets),
                                     "missing_pools": []}},
                              {NODE: node() if nodef is None else nodef},
                              nas_info=INFO, node_info=NODES, now=100.0, **kw)


def test_unmapped_direct_and_pivoted_sync() -> None:
    out = run([nasvol("free"),
               nasvol("d", host=NODE, target=iqn("d"), mode="direct", initiator=INIT,
                      portal="10.9.0.1:3260", vm="d", vm_container=NODE),
               nasvol("s", host=NODE, mode="sync", initiator=INIT)],
              targets=[target("d")],
              nodef={**node([("tank/s", "local-copy")],
                            {"s": {"exists": True, "phase": "pivoted",
                                   "device": "nbd+unix:///s?socket=/run/imgstor/nbd/s.sock"}}),
                     "direct": {iqn("d"): {"session": None, "device": "iscsi://x/d/1",
                                           "qemu_json": "json:{}"}}},
              chap_users={f"{NAS}/d": "imgstor-abc"})
    vols = out.state.volumes
    assert vols[f"{NAS}/free"].state == "unmapped" and vols[f"{NAS}/free"].host is None
    assert vols[f"{NAS}/free"].size == 33554432
    d = vols[f"{NAS}/d"]
    assert (d.state, d.host, d.target, d.mode) == ("mapped", NODE, iqn("d"), "direct")
    assert d.extra["portal"] == "10.9.0.1:3260" and d.extra["initiator"] == INIT
    assert d.extra["chap_user"] == "imgstor-abc" and d.extra["lun"] == 1
    assert d.device == "iscsi://x/d/1" and d.extra["qemu_json"] == "json:{}"
    s = vols[f"{NAS}/s"]
    assert (s.state, s.host, s.target, s.mode) == ("mapped", NODE, None, "sync")
    assert s.device.startswith("nbd+unix://") and s.extra["local_pool"] == "tank"
    assert list(out.state.vms) == ["d"] and out.state.vms["d"].container == NODE
    assert not out.partial and not out.state.jobs
    assert all(v.since == 100.0 for v in vols.values())


def test_not_imgstors_dataset_is_not_recorded() -> None:
    row = nasvol("home")
    row["role"] = None
    assert run([row]).state.volumes == {}


def test_direct_without_target_is_mapped_and_said() -> None:
    out = run([nasvol("d", host=NODE, target=iqn("d"), mode="direct", initiator=INIT)])
    assert out.state.volumes[f"{NAS}/d"].state == "mapped"
    assert out.partial and "repair" in out.notes[0][1]


def test_direct_without_a_kernel_session_is_said() -> None:
    out = run([nasvol("d", host=NODE, target=iqn("d"), mode="direct", initiator=INIT)],
              targets=[target("d")],
              nodef={**node(), "direct": {iqn("d"): {"session": False, "device": None}}})
    assert out.state.volumes[f"{NAS}/d"].state == "mapped"
    assert "no iSCSI session" in out.notes[0][1] and not out.partial


def test_sync_mid_copy_is_nas_to_vm_without_a_job() -> None:
    out = run([nasvol("s", host=NODE, target=iqn("s"), mode="sync", initiator=INIT)],
              targets=[target("s")],
              nodef=node([("tank/s-temp-write", "temp-write")],
                         {"s": {"exists": True, "phase": "snapshot", "device": "nbd"}}))
    v = out.state.volumes[f"{NAS}/s"]
    assert v.state == "NAS->VM" and not out.state.jobs and out.partial
    assert "cancels it" in out.notes[0][1]


def test_sync_merging_gets_its_sync_in_job_again() -> None:
    out = run([nasvol("s", host=NODE, target=iqn("s"), mode="sync", initiator=INIT)],
              targets=[target("s")],
              nodef=node([("tank/s-temp-write", "temp-write"), ("tank/s", "local-copy")],
                         {"s": {"exists": True, "phase": "merging", "into": "local",
                                "device": "nbd"}}))
    assert out.state.volumes[f"{NAS}/s"].state == "merging"
    (job,) = out.state.jobs.values()
    assert (job.kind, job.phase, job.volume, job.owner) == ("sync-in", "merged",
                                                            f"{NAS}/s", None)
    assert not out.partial


def test_sync_mapped_without_local_copy_is_an_error() -> None:
    out = run([nasvol("s", host=NODE, mode="sync")])
    v = out.state.volumes[f"{NAS}/s"]
    assert v.state == "error" and "no local copy" in v.error and out.partial


def test_unreachable_hosts_are_said() -> None:
    out = records_from_facts({NAS: None}, {NODE: None}, nas_info=INFO, node_info=NODES)
    assert out.partial and not out.state.volumes
    assert [s for s, _ in out.notes] == [NAS, NODE]
    out = records_from_facts(
        {NAS: {"volumes": [nasvol("s", host=NODE, mode="sync")], "targets": []}},
        {NODE: None}, nas_info=INFO, node_info=NODES)
    assert out.state.volumes[f"{NAS}/s"].state == "mapped" and out.partial


def test_orphans_on_nas_and_node_are_said_not_recorded() -> None:
    out = run([nasvol("free")], targets=[target("ghost")],
              nodef=node([("tank/old", "local-copy")]))
    subjects = [s for s, _ in out.notes]
    assert f"{NAS}:{iqn('ghost')}" in subjects and f"{NODE}:tank/old" in subjects
    assert list(out.state.volumes) == [f"{NAS}/free"] and out.partial


def test_rebuild_refuses_an_existing_state_file(tmp_path) -> None:
    from imgstor.state.store import Store
    from imgstor.workflows.rebuild import rebuild

    class Ctx:
        store = Store(str(tmp_path / "state.json"))
        dry_run = False
    (tmp_path / "state.json").write_text('{"schema": 2}')
    with pytest.raises(Conflict) as e:
        rebuild(Ctx())
    assert e.value.exit_code == 8 and "--force" in e.value.message


def test_replace_all_refuses_then_keeps_the_old_file(tmp_path) -> None:
    import json
    import os

    from imgstor.state.model import State, Volume
    from imgstor.state.store import Store
    path = tmp_path / "state.json"
    store = Store(str(path))
    assert store.replace_all(State()) is None                 # no file: written
    with pytest.raises(Conflict):
        store.replace_all(State())
    st = State(volumes={f"{NAS}/v": Volume(nas=NAS, zpool="tank", vol="v")})
    kept = store.replace_all(st, force=True)
    assert kept and json.loads(open(kept).read())["volumes"] == {}
    assert os.stat(kept).st_mode & 0o777 == 0o600
    assert list(store.read().volumes) == [f"{NAS}/v"]


# ---------------------------------------------------------------- forged properties (M3)
def _conflicts(out) -> dict[str, str]:
    return {s: w for s, w in out.notes if w.startswith("conflict")}


@pytest.mark.parametrize("forged,why", [
    ({"portal": "10.9.9.9:3260"}, "not a portal of nas-0-0"),
    ({"target": "iqn.2001-04.com.nas-0-0-other"}, "not this volume's target"),
    ({"host": "nas-0-0"}, "not a compute host"),
    ({"host": "compute-9-9"}, "not a compute host"),
    ({"mode": "raw"}, "neither direct nor sync"),
    ({"initiator": "iqn.1994-05.com.debian:intruder"}, "initiator is " + INIT),
    ({"vm_container": "elsewhere"}, "vm_container=elsewhere"),
])
def test_a_forged_property_is_a_conflict_and_nothing_is_recorded(forged, why) -> None:
    props = {"host": NODE, "target": iqn("d"), "mode": "direct", "initiator": INIT,
             "portal": "10.1.0.1:3260", "vm": "web1", "vm_container": NODE, **forged}
    out = run([nasvol("d", **props), nasvol("free")], targets=[target("d")],
              nodef={**node(), "initiator": INIT})
    assert list(out.state.volumes) == [f"{NAS}/free"] and not out.state.vms
    c = _conflicts(out)
    assert list(c) == [f"{NAS}/d"] and why in c[f"{NAS}/d"], out.notes
    assert out.partial


def test_received_or_inherited_properties_are_not_imgstors() -> None:
    row = nasvol("d", host=NODE, target=iqn("d"), mode="direct", initiator=INIT)
    row["foreign"] = {"portal": "10.9.9.9:3260 (received)"}
    out = run([row])
    assert out.state.volumes == {}
    assert "imgstor:portal=10.9.9.9:3260 (received): not set by imgstor" in \
        _conflicts(out)[f"{NAS}/d"]
    # a mark that came with a stream: not imgstor's volume at all (said, not a conflict)
    row = nasvol("planted")
    row["role"], row["foreign"] = None, {"role": "volume (received)"}
    out = run([row])
    assert out.state.volumes == {} and not _conflicts(out)
    assert any("not set by imgstor" in w for _, w in out.notes)


def test_colliding_claims_are_both_conflicts() -> None:
    """Two NASes' volumes of one name on one node, two volumes naming one VM: which is
    genuine cannot be told from the NASes, so neither is recorded."""
    nas2 = "nas-0-1"
    info = {**INFO, nas2: {"driver": "tgt", "portal": "10.1.0.2:3260",
                           "portals": [Portal("10.1.0.2", 3260)]}}
    a = nasvol("v", host=NODE, mode="sync", initiator=INIT)
    b = nasvol("v", host=NODE, mode="sync", initiator=INIT)
    c = nasvol("c", host=NODE, target=iqn("c"), mode="direct", initiator=INIT, vm="web1",
               vm_container=NODE)
    d = {**nasvol("d", host=NODE, mode="sync", initiator=INIT, vm="web1",
                  vm_container=NODE)}
    out = records_from_facts(
        {NAS: {"volumes": [a, c], "targets": [target("c")], "missing_pools": []},
         nas2: {"volumes": [b, d], "targets": [], "missing_pools": []}},
        {NODE: node([("tank/v", "local-copy"), ("tank/d", "local-copy")])},
        nas_info=info, node_info=NODES, now=100.0)
    assert out.state.volumes == {} and not out.state.vms
    assert set(_conflicts(out)) == {f"{NAS}/v", f"{nas2}/v", f"{NAS}/c", f"{nas2}/d"}
    assert "already holds volume v" in _conflicts(out)[f"{NAS}/v"]
    assert "imgstor:vm=web1 is claimed by nas-0-1/d too" in _conflicts(out)[f"{NAS}/c"]
