"""``imgstor.remote.node.main`` in-process: JSON request on stdin, exactly one JSON line out.

The executors main() builds are replaced by ScriptedExecutors (one for a normal run, one
for a dry run), so the wire format is checked with the same scripted commands as the step
scenarios; one test keeps the real LocalExecutor for a step that runs nothing.
"""
from __future__ import annotations

import io
import json
import sys

import pytest
from scn_common import INIT0, IQN1, IQN2, NAME, NO_DATASET, TGT_SHOW, cmd, tgt_delete, zfs_get

from imgstor.remote import node
from imgstor.remote.executor import HostFS
from imgstor.remote.protocol import INITIATOR_NAME_FILE, StepResult
from imgstor.remote.steps import compute
from imgstor.remote.steps.registry import STEPS
from tests.scripted import Expect, ScriptedExecutor

SHOW = cmd(TGT_SHOW, capture="tgt_show")
SHOW_TEXT = "tgtadm --lld iscsi --mode target --op show"


class Node:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
        self.mp, self.capsys = monkeypatch, capsys
        self.live = ScriptedExecutor()
        self.dry = ScriptedExecutor(dry_run=True)
        monkeypatch.setattr(node, "LocalExecutor", lambda: self.live)
        monkeypatch.setattr(node, "DryRunExecutor", lambda: self.dry)

    def __call__(self, step: str, request: dict | str, script: list[dict] = (),
                 *, argv: list[str] | None = None) -> tuple[int, dict]:
        ex = self.dry if isinstance(request, dict) and request.get("dry_run") else self.live
        ex.script = [Expect(**c) for c in script]
        text = request if isinstance(request, str) else json.dumps(request)
        self.mp.setattr(sys, "stdin", io.StringIO(text))
        self.capsys.readouterr()
        rc = node.main(["node", step] if argv is None else argv)
        out = self.capsys.readouterr().out
        assert out.endswith("\n") and out.count("\n") == 1, out    # one JSON line
        ex.assert_done()
        return rc, json.loads(out)


@pytest.fixture
def run(monkeypatch, capsys) -> Node:
    return Node(monkeypatch, capsys)


def test_good_step(run):
    rc, out = run("nas.target_facts", {"args": {"driver": "tgt", "iqn": IQN1}}, [SHOW])
    assert rc == 0
    assert out["ok"] is True and out["changed"] is False and out["message"] == ""
    (t,) = out["facts"]["targets"]
    assert (t["iqn"], t["tid"], t["acls"]) == (IQN1, 1, [INIT0])
    assert out["commands"] == [SHOW_TEXT]


def test_dry_run_lists_skipped_commands(run):
    rc, out = run("nas.remove_target", {"args": {"driver": "tgt", "iqn": IQN2},
                                        "dry_run": True}, [SHOW])
    assert rc == 0 and out["ok"] and out["changed"] is True
    assert out["commands"] == [SHOW_TEXT, "SKIP> " + " ".join(tgt_delete(2))]
    assert run.live.calls == [] and run.dry.calls == [TGT_SHOW]


def test_imgstor_error_is_ok_false_with_code(run):
    get = zfs_get("imgstor:host")
    rc, out = run("nas.set_props", {"args": {"pool": "tank", "vol": "vm1-vol",
                                             "props": {"host": "compute-0-1"}}},
                  [cmd(get, capture="zfs_get_missing", sub=NO_DATASET)])
    assert rc == 1 and out["ok"] is False
    assert out["error"]["code"] == "NotFound"
    assert out["error"]["message"] == f"scripted: volume {NAME} does not exist"
    assert out["commands"] == [" ".join(get)]


def test_remote_command_error_keeps_host_argv_rc(run):
    rc, out = run("nas.target_facts", {"args": {"driver": "tgt"}},
                  [cmd(TGT_SHOW, capture="tgt_noserver")])
    assert rc == 1 and out["error"]["code"] == "RemoteCommandError"
    d = out["error"]["details"]
    assert (d["host"], d["argv"], d["rc"]) == ("scripted", TGT_SHOW, 107)
    assert "Transport endpoint is not connected" in d["stderr"]


def test_unknown_step_is_usage_error(run):
    rc, out = run("nas.make_coffee", {"args": {}})
    assert rc == 1 and out["ok"] is False
    assert out["error"]["code"] == "UsageError"
    assert "unknown node step 'nas.make_coffee'" in out["error"]["message"]
    assert "nas.ensure_volume" in out["error"]["message"]       # lists the known ones
    assert out["commands"] == []


def test_bad_command_line(run):
    rc, out = run("x", {}, argv=["node"])
    assert rc == 2 and out["error"]["code"] == "UsageError"


def test_bad_step_arguments_are_a_usage_error(run):
    rc, out = run("compute.detach", {"args": {"kind": "userspace", "portal": "a:3260",
                                              "iqn": "iqn.2001-04.com.x", "bogus": 1}})
    assert rc == 1 and out["ok"] is False
    assert out["error"]["code"] == "UsageError" and "bogus" in out["error"]["message"]


@pytest.fixture
def whoami(monkeypatch):
    """A read-only step of the test's own: this node's initiator name (it runs nothing)."""
    def whoami(ex):
        return StepResult(False, {"initiator": compute._initiator(ex)}, "")
    whoami.read_only = True
    monkeypatch.setitem(STEPS, "test.whoami", whoami)


def test_bug_in_a_step_keeps_traceback(run, monkeypatch, whoami):
    def broken(*a):
        raise ZeroDivisionError("boom")
    monkeypatch.setattr(compute, "require_initiator_name", broken)
    rc, out = run("test.whoami", {"args": {}})
    assert rc == 70 and out["ok"] is False
    err = out["error"]
    assert err["code"] == "StepError" and err["bug"] is True
    assert "ZeroDivisionError" in err["traceback"] and "boom" in err["message"]


def test_real_local_executor_for_a_step_that_runs_nothing(monkeypatch, capsys, whoami):
    monkeypatch.setattr(HostFS, "read_text", lambda self, p: f"InitiatorName={INIT0}\n"
                        if p == INITIATOR_NAME_FILE else None)
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"args": {}}'))
    assert node.main(["node", "test.whoami"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"ok": True, "changed": False, "facts": {"initiator": INIT0},
                   "message": "", "commands": []}


def test_empty_stdin_is_an_empty_request(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert node.main(["node", "compute.attach_typo"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "UsageError"


# ------------------------------------------------------------------------------ batch
def _batch(stop_after=None) -> dict:
    steps = [{"step": "nas.target_facts", "args": {"driver": "tgt", "iqn": IQN1}},
             {"step": "nas.remove_target", "args": {"driver": "tgt", "iqn": IQN2}},
             {"step": "nas.remove_target", "args": {"driver": "tgt", "iqn": IQN1}}]
    return {"args": {"steps": steps, **({} if stop_after is None else
                                         {"stop_after": stop_after})}}


def test_batch_runs_every_step(run):
    rc, out = run("batch", _batch(), [SHOW, SHOW, cmd(tgt_delete(2)), SHOW,
                                      cmd(tgt_delete(1))])
    assert rc == 0 and out["ok"] and out["changed"] is True
    res = out["facts"]["results"]
    assert [r["changed"] for r in res] == [False, True, True]
    assert [r["facts"].get("tid") for r in res[1:]] == [2, 1]
    assert len(out["commands"]) == 5


def test_batch_stop_after(run):
    """stop_after = index of the last step to run (fault injection at a step boundary)."""
    rc, out = run("batch", _batch(stop_after=1), [SHOW, SHOW, cmd(tgt_delete(2))])
    assert rc == 0 and out["ok"]
    res = out["facts"]["results"]
    assert len(res) == 2 and res[1]["message"] == f"removed target {IQN2}"
    assert out["commands"] == [SHOW_TEXT, SHOW_TEXT, " ".join(tgt_delete(2))]


def test_batch_stop_after_first(run):
    rc, out = run("batch", _batch(stop_after=0), [SHOW])
    assert rc == 0 and len(out["facts"]["results"]) == 1 and out["changed"] is False


def test_batch_dry_run(run):
    rc, out = run("batch", {**_batch(), "dry_run": True}, [SHOW, SHOW, SHOW])
    assert rc == 0 and out["changed"] is True
    assert [c for c in out["commands"] if c.startswith("SKIP> ")] == [
        "SKIP> " + " ".join(tgt_delete(2)), "SKIP> " + " ".join(tgt_delete(1))]


def test_batch_first_error_stops_it(run):
    req = _batch()
    req["args"]["steps"].insert(1, {"step": "nas.remove_target",
                                    "args": {"driver": "iet", "iqn": IQN2}})
    rc, out = run("batch", req, [SHOW])
    assert rc == 1 and out["ok"] is False and out["error"]["code"] == "UsageError"
    assert out["commands"] == [SHOW_TEXT]        # the steps after the error never ran


def test_dry_run_lists_skipped_libzfs_core_calls(run, monkeypatch):
    """A node with pyzfs and /dev/zfs: the in-process changes a dry run skips are in
    "commands" as SKIP> lines, and the fake libzfs_core saw only reads."""
    import fake_lzc
    lzc = fake_lzc.FakeLzc(datasets=["tank", NAME])
    fake_lzc.install(monkeypatch, lzc)
    snap = f"{NAME}@imgstor-1"
    listing = ["zfs", "list", "-H", "-o", "name", snap]
    rc, out = run("nas.snapshot", {"args": {"pool": "tank", "vol": "vm1-vol",
                                            "snapshot": "imgstor-1", "hold": True},
                                   "dry_run": True},
                  [cmd(listing, rc=1, stderr=f"cannot open '{snap}': dataset does not exist\n")])
    assert rc == 0 and out["changed"] is True
    assert out["facts"]["zfs_backend"] == "lzc"
    assert out["commands"] == [" ".join(listing),
                               f'SKIP> lzc_snapshot {snap} {{"imgstor:role": "snapshot"}}',
                               f"SKIP> lzc_hold {snap} imgstor"]
    assert lzc.calls == [] and lzc.datasets == {"tank", NAME}
