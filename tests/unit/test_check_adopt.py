"""``check`` names the marked NAS volumes the store lost with what their checked
properties say, and ``repair --adopt`` takes back those whose claims hold and whose hosts
back them (a state file restored from an older backup).  A scripted cluster answers the
read steps; the lab test (tests/lab/test_trust2.py) runs the real thing."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from imgstor import jobpool
from imgstor.reconcile import Lost, lost_volume
from imgstor.state import Store

NAS, NODE = "nas-0-0", "compute-0-0"
INIT = "iqn.1994-05.com.debian:node0"


def iqn(vol: str) -> str:
    return f"iqn.2001-04.com.{NAS}-{vol}"


def row(vol: str, **props) -> dict:
    full = dict.fromkeys(("size", "host", "target", "mode", "initiator", "portal", "vm",
                          "vm_container"))
    full.update(size="8388608", **props)
    return {"pool": "tank", "vol": vol, "type": "volume", "role": "volume", "props": full,
            "foreign": {}}


class Cl:
    """The read steps check asks for, answered from ``answers``; anything else fails."""
    answers: dict = {}
    calls: list = []

    def __init__(self, config, *, dry_run=False, debug=False):
        pass

    def warm(self, hosts):
        pass

    def close(self):
        pass

    def step(self, host, name, /, **args):
        Cl.calls.append((host, name))
        facts = self.answers.get((host, name), self.answers.get(name))
        if facts is None:
            raise AssertionError(f"unexpected step {name} on {host}")
        return SimpleNamespace(host=host, step=name, changed=False, facts=facts, message="")

    def parallel(self, hosts, fn):
        return {h: fn(h) for h in hosts}


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setattr("imgstor.transport.Cluster", Cl)
    monkeypatch.setattr(jobpool, "launch", lambda *a, **kw: "started monitor pid 4242")
    Cl.calls = []
    live = {"iqn": iqn("a"), "tid": 1, "paths": ["/dev/zvol/tank/a"], "acls": [INIT],
            "sessions": []}
    Cl.answers = {
        (NAS, "nas.inventory"): {"volumes": [
            row("a", host=NODE, target=iqn("a"), mode="direct", initiator=INIT,
                portal="nas-0-0:3260"),
            row("b"),
            row("f", host=NODE, target=iqn("f"), mode="direct", initiator=INIT,
                portal="10.9.9.9:3260")],
            "targets": [live], "missing_pools": []},
        ("nas-0-1", "nas.inventory"): {"volumes": [], "targets": [], "missing_pools": []},
        (NODE, "compute.inventory"): {
            "pool_missing": False, "datasets": [], "overlays": {}, "sessions": [iqn("a")],
            "initiator": INIT, "direct": {iqn("a"): {"session": True, "device": "/dev/sdc"}}},
        (NODE, "host.facts"): {"sessions": [{"iqn": iqn("a"), "address": "nas-0-0",
                                             "port": 3260}], "overlays": [], "datasets": []},
        ("compute-0-1", "host.facts"): {"sessions": [], "overlays": [], "datasets": []},
        "sync.audit": {"lines": [], "gate": None, "gate_current": False},
    }
    return Cl


def test_check_names_each_lost_volume_and_repair_adopt_takes_back_what_holds(
        cluster, imgstor, config_path) -> None:
    r = imgstor("check", "--json")
    rows = {x["subject"]: x for x in json.loads(r.out)["rows"]}
    assert r.rc == 9, r
    a, b, f = (rows[f"{NAS}:tank/{v}"] for v in "abf")
    assert f"direct mapped to {NODE}, target {iqn('a')}" in a["found"]
    assert "repair --adopt" in a["action"] and "never destroys" in a["action"]
    assert "it says: unmapped" in b["found"]
    assert "10.9.9.9:3260: not a portal of nas-0-0" in f["action"]
    # the lost volume's live target and session are not orphans meanwhile
    assert not [x for x in rows.values() if x["what"] in ("orphan-target", "orphan-session")]
    # plain repair takes nothing back and removes nothing of theirs
    r = imgstor("repair", "--json")
    assert r.rc == 9 and Store(str(config_path.parent / "state.json")).read().volumes == {}
    r = imgstor("repair", "--adopt", "--json")
    assert r.rc == 9, r                        # f is left: its claim does not hold
    done = {x["subject"]: x["action"] for x in json.loads(r.out)["rows"]}
    assert done[f"{NAS}:tank/a"] == f"taken back: mapped on {NODE}"
    assert done[f"{NAS}:tank/b"] == "taken back: unmapped"
    st = Store(str(config_path.parent / "state.json")).read()
    assert set(st.volumes) == {f"{NAS}/a", f"{NAS}/b"}
    va = st.volumes[f"{NAS}/a"]
    assert (va.state, va.host, va.target, va.mode, va.device) == \
        ("mapped", NODE, iqn("a"), "direct", "/dev/sdc")
    assert va.extra["initiator"] == INIT and va.extra["portal"] == "nas-0-0:3260"
    # once taken back they are no findings; f still is
    rows = {x["subject"] for x in json.loads(imgstor("check", "--json").out)["rows"]}
    assert rows == {f"{NAS}:tank/f"}


def test_a_lost_volume_whose_hosts_disagree_is_left(cluster, imgstor, config_path) -> None:
    """No session on the node / an ACL admitting someone else: not taken back."""
    cluster.answers[(NODE, "compute.inventory")]["direct"][iqn("a")]["session"] = False
    cluster.answers[(NAS, "nas.inventory")]["targets"][0]["acls"] = ["iqn.x:intruder"]
    r = imgstor("repair", "--adopt", "--json")
    done = {x["subject"]: x["action"] for x in json.loads(r.out)["rows"]}
    assert "the hosts do not back it" in done[f"{NAS}:tank/a"]
    assert "no iSCSI session" in done[f"{NAS}:tank/a"] and "admits" in done[f"{NAS}:tank/a"]
    assert set(Store(str(config_path.parent / "state.json")).read().volumes) == {f"{NAS}/b"}


def test_lost_volume_finding() -> None:
    base = Lost(NAS, "tank", "v", "unmapped", record={"nas": NAS})
    assert lost_volume(base, adopt=False).actions == ()
    f = lost_volume(base, adopt=True)
    assert [a.step for a in f.actions] == ["store.adopt"] and f.left is None
    for lost in (Lost(NAS, "tank", "v", "x", conflicts=("forged",), record={"nas": NAS}),
                 Lost(NAS, "tank", "v", "x", doubts=("no session",), record={"nas": NAS}),
                 Lost(NAS, "tank", "v", "x")):
        f = lost_volume(lost, adopt=True)
        assert f.actions == () and "never destroys" in (f.left or "")
