"""imgstorageadmin's dialogue with scripted input: the guide's prompts and defaults, numbers
(several), re-asking on bad input, EOF/Ctrl-C, the scripted flags resolved before anything
runs, and the NAS and container lists built from the store and (fake) node steps."""
from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest

from imgstor import admin
from imgstor.errors import Conflict, UsageError
from imgstor.state.model import Busy, Volume
from imgstor.workflows import admin_dialogue as dlg
from imgstor.workflows.context import Ctx

IQN = "iqn.2001-04.com.nas-0-0-"


def term(answers: str) -> tuple[dlg.Term, io.StringIO]:
    out = io.StringIO()
    return dlg.Term(io.StringIO(answers), out), out


def q(key: str, names: list[str], ran: list[str], **kw) -> dlg.Question:
    def items():
        return [dlg.Item(n, (n,), lambda n=n: ran.append(n) or f"did {n}") for n in names]
    return dlg.Question(key, f"{key}?", "Which? (number) ", items, **kw)


# ------------------------------------------------------------------ prompts
@pytest.mark.parametrize("text,want", [("2", [2]), ("1 3", [1, 3]), ("3,1", [3, 1]),
                                        ("1 1", [1]), ("all", [0, 1, 2, 3]), ("", [])])
def test_parse_choices(text, want) -> None:
    assert dlg.parse_choices(text, 4, 0) == want


@pytest.mark.parametrize("text", ["x", "4", "-1", "1;2", "1.5"])
def test_parse_choices_refuses(text) -> None:
    with pytest.raises(UsageError, match="not a number of the list"):
        dlg.parse_choices(text, 4, 0)


def test_yes_no_default_is_yes_and_bad_input_reasks() -> None:
    t, out = term("\nmaybe\nN\n")
    assert t.yes_no("Unmap iSCSI target?") is True
    assert t.yes_no("Unmap iSCSI target?") is False
    assert out.getvalue().count("Unmap iSCSI target? [y]|n: ") == 3
    assert "please answer y or n" in out.getvalue()


def test_interactive_asks_in_order_with_several_numbers_and_reasks() -> None:
    ran: list[str] = []
    qs = [q("unmap-target", ["t-a", "t-b", "t-c"], ran, first=1, fmt="Target {n}: {label}"),
          q("remove-mapping", ["m-a", "m-b"], ran),
          q("unbusy-zvol", ["b-a"], ran, separator=True)]
    t, out = term("y\n9\n3 1\n\nzzz\n1\nn\n")
    done = dlg.run_dialogue(qs, t, None)
    assert ran == ["t-c", "t-a", "m-b"]
    assert [d.item for d in done] == ["t-c", "t-a", "m-b"]
    text = out.getvalue()
    assert "Target 1: t-a\nTarget 2: t-b\nTarget 3: t-c\n" in text      # the guide's NAS list
    assert "0 m-a\n1 m-b\n" in text                                    # 0-based as the guide
    assert "'9' is not a number of the list (1..3)" in text
    assert "'zzz' is not a number" in text
    assert text.rstrip().endswith(dlg.SEPARATOR)


def test_eof_at_a_prompt_aborts_after_what_was_done() -> None:
    ran: list[str] = []
    qs = [q("a", ["x"], ran), q("b", ["y"], ran)]
    t, _ = term("y\n0\ny\n")                                  # EOF at "Which?" of b
    with pytest.raises(dlg.Aborted) as e:
        dlg.run_dialogue(qs, t, None)
    assert ran == ["x"]
    assert e.value.exit_code == 130 and [d["item"] for d in e.value.details["done"]] == ["x"]


def test_ctrl_c_during_an_action_finishes_it_then_stops() -> None:
    ran: list[str] = []

    def interrupted():
        os.kill(os.getpid(), signal.SIGINT)
        ran.append("whole")
        return "done"
    qs = [dlg.Question("a", "a?", "Which? ", lambda: [dlg.Item("x", ("x",), interrupted),
                                                      dlg.Item("y", ("y",), lambda: "y")])]
    t, _ = term("y\n0 1\n")
    with pytest.raises(dlg.Aborted, match="finished"):
        dlg.run_dialogue(qs, t, None)
    assert ran == ["whole"]                                 # y never started


def test_a_failed_action_is_reported_and_the_dialogue_goes_on() -> None:
    def fails():
        raise Conflict("the disk is in use")
    ran: list[str] = []
    qs = [dlg.Question("a", "a?", "Which? ", lambda: [dlg.Item("x", ("x",), fails)]),
          q("b", ["y"], ran)]
    t, out = term("y\n0\ny\n0\n")
    done = dlg.run_dialogue(qs, t, None)
    assert [(d.item, d.ok) for d in done] == [("x", False), ("y", True)]
    assert "failed: the disk is in use" in out.getvalue()


# ------------------------------------------------------------------ scripted
def test_scripted_resolves_every_choice_before_anything_runs() -> None:
    ran: list[str] = []
    qs = [q("unmap-target", ["iqn-a", "iqn-b"], ran, first=1), q("unbusy-zvol", ["v1"], ran)]
    t, _ = term("")
    with pytest.raises(UsageError, match="nothing named 'v2'"):
        dlg.run_dialogue(qs, t, {"unmap-target": ["2"], "unbusy-zvol": ["v2"]})
    assert ran == []
    with pytest.raises(UsageError, match="3 is not a number of the list"):
        dlg.run_dialogue(qs, t, {"unmap-target": ["3"]})
    done = dlg.run_dialogue(qs, t, {"unmap-target": ["iqn-a", "2"], "unbusy-zvol": ["all"]})
    assert ran == ["iqn-a", "iqn-b", "v1"] and all(d.ok for d in done)


def test_scripted_on_a_terminal_shows_the_plan_and_asks_once() -> None:
    ran: list[str] = []
    qs = [q("remove-zvol", ["tank/v1"], ran, warning=dlg.LOCAL_DATA_WARNING)]
    t, out = term("n\n")
    assert dlg.run_dialogue(qs, t, {"remove-zvol": ["tank/v1"]}, confirm=True) == []
    assert ran == [] and "WARNING: the data" in out.getvalue()
    assert "nothing done" in out.getvalue()
    t, _ = term("\n")
    dlg.run_dialogue(qs, t, {"remove-zvol": ["tank/v1"]}, confirm=True)
    assert ran == ["tank/v1"]


@pytest.mark.parametrize("text", ["", "a;b", "$(x)", "-rf"])
def test_parse_selectors_refuses(text) -> None:
    with pytest.raises(UsageError):
        dlg.parse_selectors(text, "unmap-target")


# ------------------------------------------------------------------ the command line
@pytest.mark.parametrize("argv,msg", [
    ([], "stdin is not a terminal"),
    (["--host", "nas-0-0"], "stdin is not a terminal"),
    (["--host", "nas-0-0", "--yes"], "none was given"),
    (["--yes", "--unbusy-zvol", "1"], "need --host"),
    (["--host", "nas-0-0", "--yes", "--destroy-lvm", "1"], "no question answers --destroy-lvm"),
    (["--host", "nas-0-0", "--yes", "--unmap-target", "a;b"], "bad choice"),
    (["--host", "nas-0-0", "--yes", "--bogus"], "unrecognized arguments"),
    (["--host", "compute-0-0", "--yes", "--nas", "nas-9", "--unmap-target", "1"],
     "not a NAS"),
])
def test_refused_before_anything_runs(config_path: Path, monkeypatch, capsys, argv,
                                      msg) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert admin.main(["--config", str(config_path), *argv]) == 2
    assert msg in capsys.readouterr().err
    assert not (config_path.parent / "state.json").exists()


def test_help_documents_the_flags_and_the_commands(capsys) -> None:
    assert admin.main(["--help"]) == 0
    out = capsys.readouterr().out
    for f in ("--host", "--yes", "--unmap-target", "--remove-mapping", "--unbusy-zvol",
              "--destroy-lvm", "--remove-zvol", "set-state", "unbusy"):
        assert f in out


# ------------------------------------------------------------------ the lists
class FakeCluster:
    def __init__(self, facts: dict[str, dict]):
        self.facts, self.calls = facts, []

    def step(self, host, name, **args):
        self.calls.append((host, name, args))
        return _Out(self.facts.get(name, {}), f"{name} ok")

    def steps(self, host, steps, stop_after=None):
        return [self.step(host, n, **a) for n, a in steps]

    def close(self):
        pass


class _Out:
    def __init__(self, facts, message):
        self.facts, self.message = facts, message


def _ctx(config_path: Path, facts: dict, vols: list[Volume]) -> Ctx:
    ctx = Ctx(config_path=str(config_path))
    with ctx.store.transaction() as st:
        for v in vols:
            st.volumes[v.key] = v
    ctx.__dict__["cluster"] = FakeCluster(facts)
    return ctx


def test_nas_lists_and_actions(config_path: Path, monkeypatch) -> None:
    vols = [Volume("nas-0-0", "tank", "vol1", host="compute-0-1", target=IQN + "vol1",
                   state="mapped", mode="direct"),
            Volume("nas-0-0", "tank", "vm-2-vol"),
            Volume("nas-0-0", "tank", "stuck", state="unmapped",
                   busy=Busy("unmap", 999999, "elsewhere", 1409872201.94))]
    live = [{"iqn": IQN + "vol1", "tid": 2}, {"iqn": IQN + "orphan", "tid": 1},
            {"iqn": "iqn.2003-01.org.other:keep", "tid": 3}]
    ctx = _ctx(config_path, {"nas.target_facts": {"targets": live}}, vols)
    unmapped: list[str] = []
    monkeypatch.setattr("imgstor.workflows.storagemap.unmap_volume",
                        lambda ctx, nas, vol, force=False: unmapped.append(vol) or "unmapped")
    targets, mappings, busy = dlg.questions_for(ctx, "nas-0-0")
    t = targets.items()
    assert [i.label for i in t] == [IQN + "orphan", IQN + "vol1"]   # not imgstor's: hidden
    assert [i.run() for i in t] == ["nas.remove_target ok", "unmapped"]
    assert unmapped == ["vol1"]
    assert ctx.cluster.calls[-1][1:] == ("nas.remove_target",
                                         {"driver": "lio", "iqn": IQN + "orphan",
                                          "force": False})
    # the mapping list keeps ZPOOL (the roll nulled it) and shows what is recorded
    assert [i.label for i in mappings.items()] == [
        "stuck tank", "vm-2-vol tank", f"vol1 tank {IQN}vol1 compute-0-1"]
    b = busy.items()
    assert [i.label for i in b] == ["stuck unmap pid 999999@elsewhere 1409872201.94"]
    b[0].run()
    assert ctx.store.read().volumes["nas-0-0/stuck"].busy is None


def test_container_lists_and_actions(config_path: Path, monkeypatch) -> None:
    vols = [Volume("nas-0-0", "tank", "vol1", host="compute-0-0", target=IQN + "vol1",
                   state="mapped", mode="direct", extra={"portal": "10.2.20.250:3260"}),
            Volume("nas-0-0", "tank", "vm-4-vol", host="compute-0-0", state="error",
                   mode="sync", extra={"overlay": "dm", "local_pool": "tank"}),
            Volume("nas-0-1", "data", "elsewhere", host="compute-0-1", target=IQN + "x",
                   state="mapped", mode="direct")]
    facts = {"compute.devices": {"devices": [{"iqn": IQN + "vol1", "status": "ok"}]},
             "overlay.status": {"exists": True, "device": "vm-4-vol-snap",
                                "status": "snapshot", "phase": "snapshot"},
             "nas.get_props": {"exists": True}}
    ctx = _ctx(config_path, facts, vols)
    unmapped: list[str] = []
    monkeypatch.setattr("imgstor.workflows.storagemap.unmap_volume",
                        lambda ctx, nas, vol, force=False: unmapped.append(vol) or "unmapped")
    sessions, lvm, zvols = dlg.questions_for(ctx, "compute-0-0")
    s = sessions.items()
    assert [i.label for i in s] == [f"10.2.20.250:3260,1 {IQN}vol1 (vol1: ok)"]
    s[0].run()
    assert unmapped == ["vol1"]
    o = lvm.items()
    assert [i.label for i in o] == ["vm-4-vol-snap: dm snapshot snapshot"]
    o[0].run()
    assert ("compute-0-0", "overlay.remove", {"driver": "dm", "pool": "tank",
                                              "vol": "vm-4-vol"}) in ctx.cluster.calls
    z = zvols.items()
    assert zvols.warning == dlg.LOCAL_DATA_WARNING
    assert [i.label for i in z] == ["tank/vm-4-vol"]
    z[0].run()
    assert ctx.cluster.calls[-1] == ("compute-0-0", "nas.destroy_volume", {
        "pool": "tank", "vol": "vm-4-vol", "kind": "zvol", "driver": None,
        "role": "local-copy"})
    v = ctx.store.read().volumes["nas-0-0/vm-4-vol"]
    assert v.state == "error" and "destroyed its local copy tank/vm-4-vol" in v.error
    # From which NAS? narrows the lists
    only = dlg.questions_for(ctx, "compute-0-0", nas_filter=lambda n: n == "nas-0-1")
    assert only[0].items() == []


def test_a_failed_sync_mapping_goes_only_once_its_node_holds_nothing(config_path: Path) -> None:
    """The sync unmap refuses a volume in error; the NAS dialogue tears it down like the
    unmap workflow only when its overlay and local copy are gone from the node."""
    v = Volume("nas-0-0", "tank", "vm-4-vol", host="compute-0-0", target=IQN + "vm-4-vol",
               state="error", mode="sync", error="imgstorageadmin removed its overlay",
               extra={"overlay": "dm", "local_pool": "tank", "origin": "/dev/sdb"})
    facts = {"overlay.status": {"exists": False}, "nas.get_props": {"exists": True}}
    ctx = _ctx(config_path, facts, [v])
    mapping = dlg.questions_for(ctx, "nas-0-0")[1].items()[0]
    with pytest.raises(Conflict, match="still holds its local copy tank/vm-4-vol"):
        mapping.run()
    assert [c[1] for c in ctx.cluster.calls] == ["overlay.status", "nas.get_props"]
    assert ctx.store.read().volumes[v.key].state == "error"
    facts["nas.get_props"] = {"exists": False}
    assert mapping.run() == "nas-0-0:vm-4-vol unmapped from compute-0-0"
    steps = [c[1] for c in ctx.cluster.calls[2:]]
    assert steps == ["overlay.status", "nas.get_props", "compute.detach",
                     "nas.remove_target", "nas.set_props"]
    r = ctx.store.read().volumes[v.key]
    assert (r.state, r.host, r.target, r.busy, r.extra) == ("unmapped", None, None, None, {})
