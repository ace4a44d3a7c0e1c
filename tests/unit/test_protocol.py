"""The frontend <-> node contract (imgstor/remote/protocol.py)."""
from __future__ import annotations

import json

import pytest

from imgstor.errors import NotFound, StepError, UsageError
from imgstor.remote import protocol
from imgstor.remote.protocol import Facts, Portal, StepResult
from imgstor.remote.steps import load_all


def test_portal_wire_and_older_records():
    p = Portal("10.1.0.1", 3260)
    assert json.loads(json.dumps({"portal": p})) == {"portal": ["10.1.0.1", 3260]}
    assert Portal.parse(["10.1.0.1", 3260]) == p
    assert Portal.parse("10.1.0.1:3260") == p            # recorded by earlier maps
    assert Portal.parse("nas-0-0.ib") == Portal("nas-0-0.ib", 3260)
    assert Portal.parse("fd00::1:3261") == Portal("fd00::1", 3261)
    assert Portal.parse("[fd00::1]:3261") == Portal("fd00::1", 3261)
    assert str(Portal("fd00::1", 3261)) == "[fd00::1]:3261"
    assert str(p) == "10.1.0.1:3260"
    for bad in ("", ":3260", "a:b", ["a", 0], ["a", 70000], 5, None, ["a"]):
        with pytest.raises(UsageError):
            Portal.parse(bad)


def test_initiator_name_one_parser():
    text = "## comment\n#InitiatorName=iqn.not-this\n\nInitiatorName=iqn.1993-08.org.debian:01:x\n"
    assert protocol.parse_initiator_name(text) == "iqn.1993-08.org.debian:01:x"
    assert protocol.parse_initiator_name("InitiatorName=\n") is None
    assert protocol.parse_initiator_name("") is None
    e = protocol.no_initiator_name("compute-0-0")
    assert isinstance(e, NotFound) and protocol.INITIATOR_NAME_FILE in str(e)


def test_a_misspelt_fact_is_an_error_not_none():
    f = Facts("compute.attach", {"device": "/dev/sdb", "size": 1 << 30})
    assert f["device"] == "/dev/sdb" and f.get("qemu_json") is None
    assert "qemu_json" not in f and json.loads(json.dumps(f))["size"] == 1 << 30
    for misspelt in (lambda: f["devcie"], lambda: f.get("devcie"), lambda: "devcie" in f):
        with pytest.raises(StepError, match="has no fact 'devcie'"):
            misspelt()
    # a step without a facts class yet answers a plain mapping
    assert Facts("sync.authorize", {"line": "x"}).get("anything") is None


def test_typed_facts_and_one_result_type():
    r = StepResult.received("nas-0-0", "nas.ensure_target",
                            {"changed": True, "facts": {"iqn": "iqn.x", "lun": 0,
                                                        "portal": ["10.1.0.1", 3260]},
                             "message": "made"}, ["tgtadm …"])
    t = r.typed()
    assert isinstance(t, protocol.TargetFacts) and (t.iqn, t.lun) == ("iqn.x", 0)
    assert Portal.parse(t.portal) == Portal("10.1.0.1", 3260)
    assert (r.host, r.step, r.changed, r.commands) == ("nas-0-0", "nas.ensure_target", True,
                                                       ["tgtadm …"])
    assert r.to_dict() == {"changed": True, "facts": dict(r.facts), "message": "made"}


def test_the_node_refuses_undeclared_facts():
    protocol.check_facts("compute.attach", {"device": "x"})
    protocol.check_facts("sync.authorize", {"whatever": 1})   # no class yet: not checked
    # a copy job's progress file may carry more than the frontend reads: open on the node,
    # checked on the frontend
    protocol.check_facts("copy.status", {"state": "done", "new_counter": 1})
    f = Facts("copy.status", {"state": "done", "new_counter": 1})
    assert f["state"] == "done" and f.get("bytes_done") is None
    with pytest.raises(StepError):
        f.get("bytes_don")
    assert StepResult(False, f, "", step="copy.status").typed().state == "done"
    with pytest.raises(StepError, match="undeclared facts devcie"):
        protocol.check_facts("compute.attach", {"devcie": "x"})


def test_every_facts_class_names_a_registered_step():
    assert set(protocol.FACTS) <= set(load_all())


def test_a_node_app_given_no_request_runs_nothing(monkeypatch, capsys):
    """A step started ahead (Cluster.prepare) and then cancelled gets an empty stdin: the
    node must not run the step with no arguments (a step whose arguments all have
    defaults would run)."""
    import io
    import json

    from imgstor.remote import node
    ran = []
    monkeypatch.setattr(node, "run_locked", lambda *a, **k: ran.append(a) or {"ok": True})
    for data in ("", "\n  \n"):
        monkeypatch.setattr("sys.stdin", io.StringIO(data))
        assert node.main(["node", "probe"]) == 1
        out = json.loads(capsys.readouterr().out)
        assert out["ok"] is False and "no request on stdin" in out["error"]["message"]
    assert ran == []
