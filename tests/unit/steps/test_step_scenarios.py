"""Node steps, driven by the scenario files scn_nas_volume.py, scn_nas_target.py,
scn_compute.py, scn_overlay.py, scn_nas_snapshot.py, scn_nodefacts.py and scn_inventory.py.

Each scenario runs one registered step on a ``ScriptedExecutor``: the step must run exactly
the scripted commands, in order (``assert_done``), and its ``StepResult`` (or error) must be
the expected one.  Keys a scenario may have:

  id, step, args, tags    what runs; tags: changes | done | read | dry-run | error
  dry_run                 run on ScriptedExecutor(dry_run=True): the script holds only the
                          read-only commands; ``skipped`` lists the argv of the others,
                          which must show up as "SKIP> …" and never be executed (a str is
                          the text of a skipped in-process call: "lzc_create tank/x …")
  env                     the node around the step (see NodeEnv); ``env["lzc"]`` (kwargs
                          of fake_lzc.FakeLzc) gives it pyzfs and /dev/zfs, else the zfs
                          driver uses the CLI
  lzc_calls               [(function, first argument)] the fake libzfs_core saw, in order
  script                  [{"argv", "rc", "stdout", "stderr"}, …] (scn_common.cmd)
  changed, facts, facts_include, message
  raises, details         (error class name, regex on the message), detail subset
  mutating                argv of every command that ran *without* read_only=True; a
                          ``done`` scenario must have it (usually [])
  sleeps                  how many times the step slept (retries)
  note                    why the scenario exists
  fs, qmp                 the overlay drivers' node files/processes and QMP exchanges
                          (fake_node.py); qmp_mutating: QMP commands other than query-*
                          that must have run (a ``done`` scenario: usually [])
"""
from __future__ import annotations

import json
import shlex

import fake_lzc
import fake_node
import pytest
import scn_compute
import scn_inventory
import scn_nas_snapshot
import scn_nas_target
import scn_nas_volume
import scn_nodefacts
import scn_overlay
import scn_vm

from imgstor import errors
from imgstor.remote import protocol
from imgstor.remote.drivers import blockdev
from imgstor.remote.steps import (
    compute,
    inventory,
    load_all,
    nas,
    nodefacts,
    overlay,
    probe,
    snapshot,
    vm,
)
from tests.scripted import Expect, FakeFS, ScriptedExecutor

SCENARIOS = (scn_nas_volume.SCENARIOS + scn_nas_target.SCENARIOS + scn_compute.SCENARIOS
             + scn_overlay.SCENARIOS + scn_nas_snapshot.SCENARIOS + scn_nodefacts.SCENARIOS
             + scn_inventory.SCENARIOS + scn_vm.SCENARIOS)

WRITE_STEPS = ("nas.ensure_volume", "nas.set_props", "nas.ensure_target", "nas.remove_target",
               "nas.destroy_volume", "compute.attach", "compute.detach",
               "overlay.create", "overlay.merge", "overlay.linear", "overlay.restore_local",
               "overlay.remove",
               "nas.snapshot", "nas.prune_snapshots",
               "nas.hold_base", "nas.release_base", "host.destroy_marked",
               "vm.start", "vm.stop")
READ_STEPS = ("nas.target_facts", "nas.get_props", "compute.devices",
              "probe", "overlay.status", "host.facts",
              "nas.inventory", "compute.inventory", "node.sync_facts",
              "vm.status", "vm.list")
KNOWN_KEYS = {"id", "step", "args", "tags", "dry_run", "env", "script", "changed", "facts",
              "facts_include", "message", "raises", "details", "mutating", "skipped",
              "sleeps", "note", "fs", "qmp", "qmp_mutating", "lzc_calls"}


class RecordingExecutor(ScriptedExecutor):
    """ScriptedExecutor that also notes whether each command was declared read-only."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.modes: list[tuple[list[str], bool]] = []

    def run(self, argv, *, read_only=False, **kw):
        self.modes.append(([str(a) for a in argv], read_only))
        return super().run(argv, read_only=read_only, **kw)


class NodeEnv:
    """The node a scenario describes: its executor's ``fs`` (tests/scripted.FakeFS) and the
    seams that are not files (pyzfs, blockdev.users, IMGSTOR_NODE).

    ``env`` keys: ``files`` {path: size}, ``paths`` [path] (exist), ``links`` {link: target}
    (exist, realpath), ``devices`` {dev: size}, ``initiator`` (written as the initiator
    name file), ``tools`` {name: path} (which), ``node`` (IMGSTOR_NODE), ``users`` {dev:
    [what holds it]} (drivers.blockdev.users), ``lzc``.  ``fs`` keys (fake_node.py):
    ``exists``, ``files`` {path: text}, ``procs``, ``rdev``, ``exit_after``,
    ``files_after``.  Everything else does not exist."""

    def __init__(self, env: dict, fs: dict) -> None:
        texts = dict(fs.get("files", {}))
        if env.get("initiator"):
            texts[protocol.INITIATOR_NAME_FILE] = f"InitiatorName={env['initiator']}\n"
        self.fs = FakeFS(files=texts, sizes={**env.get("files", {}), **env.get("devices", {})},
                         paths=set(env.get("paths", ())) | set(fs.get("exists", ())),
                         links=env.get("links"), procs=fs.get("procs"), rdev=fs.get("rdev"),
                         tools=env.get("tools"), exit_after=fs.get("exit_after"),
                         files_after=fs.get("files_after"))
        self.sleeps = self.fs.sleeps
        self.node = env.get("node")
        self.lzc = fake_lzc.FakeLzc(**env["lzc"]) if "lzc" in env else None
        self.users = dict(env.get("users", {}))

    def install(self, mp: pytest.MonkeyPatch) -> None:
        def users(dev: str) -> list[str]:
            return list(self.users.get(dev, []))
        mp.setattr(compute, "device_users", users)
        mp.setattr(blockdev, "users", users)       # inventory.overlay_users
        if self.node:
            mp.setenv("IMGSTOR_NODE", self.node)
        fake_lzc.install(mp, self.lzc)


def _run(sc: dict, mp: pytest.MonkeyPatch) -> tuple[RecordingExecutor, NodeEnv, object]:
    node = NodeEnv(sc.get("env", {}), sc.get("fs", {}))
    node.install(mp)
    qmp = fake_node.install(mp, sc)
    ex = RecordingExecutor([Expect(**e) for e in sc["script"]], dry_run=sc.get("dry_run", False),
                           fs=node.fs)
    fn = load_all()[sc["step"]]
    if "raises" in sc:
        name, pattern = sc["raises"]
        with pytest.raises(getattr(errors, name), match=pattern) as ei:
            fn(ex, **sc["args"])
        assert type(ei.value).__name__ == name, "a subclass is not the error wanted"
        out: object = ei.value
    else:
        out = fn(ex, **sc["args"])
    ex.assert_done()
    if qmp is not None:
        qmp.assert_done()
        if "qmp_mutating" in sc:
            assert qmp.mutating == sc["qmp_mutating"], qmp.mutating
    return ex, node, out


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: f"{s['step']}:{s['id']}")
def test_scenario(sc: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    ex, node, out = _run(sc, monkeypatch)

    if "raises" in sc:
        for k, v in sc.get("details", {}).items():
            assert out.details.get(k) == v, (k, out.details)
        json.dumps(out.to_wire())                       # goes back to the frontend
    else:
        if "changed" in sc:
            assert out.changed is sc["changed"]
        if "facts" in sc:
            assert out.facts == sc["facts"]
        for k, v in sc.get("facts_include", {}).items():
            assert out.facts.get(k) == v, k
        if "message" in sc:
            assert out.message == sc["message"]
        protocol.check_facts(sc["step"], out.facts)        # only facts the contract names
        assert json.loads(json.dumps(out.to_dict())) == out.to_dict()

    texts = [a if isinstance(a, str) else shlex.join(a) for a in sc.get("skipped", [])]
    assert ex.skipped == texts
    for t in texts:
        assert "SKIP> " + t in ex.log
    for argv in sc.get("skipped", []):
        assert argv not in ex.calls, f"a dry run executed {argv}"
    if "lzc_calls" in sc:
        assert node.lzc is not None, "lzc_calls needs env['lzc']"
        assert node.lzc.calls == [tuple(c) for c in sc["lzc_calls"]]
    if node.lzc is not None and "done" in sc["tags"]:
        # reads never import pyzfs (its import is dearer than a zfs command): a step that
        # finds everything done does not pay it
        assert not node.lzc.imported, "a done step imported libzfs_core"
    if not sc.get("dry_run"):
        assert not any(line.startswith("SKIP> ") for line in ex.log)
    if "mutating" in sc:
        ran = [argv for argv, ro in ex.modes if not ro and not ex.dry_run]
        assert ran == sc["mutating"]
    if "sleeps" in sc:
        assert len(node.sleeps) == sc["sleeps"]


# ------------------------------------------------------------------- the scenario files
def test_scenario_ids_unique_and_keys_known():
    seen = set()
    for sc in SCENARIOS:
        key = (sc["step"], sc["id"])
        assert key not in seen, key
        seen.add(key)
        assert set(sc) <= KNOWN_KEYS, (key, set(sc) - KNOWN_KEYS)
        assert ("raises" in sc) != ("changed" in sc or "facts" in sc
                                    or "facts_include" in sc), key
        assert "skipped" not in sc or sc.get("dry_run"), key


@pytest.mark.parametrize("step", WRITE_STEPS + READ_STEPS)
def test_every_step_has_the_required_cases(step: str):
    scs = [s for s in SCENARIOS if s["step"] == step]
    tags = set().union(*(s["tags"] for s in scs))
    need = {"changes", "done", "dry-run", "error"} if step in WRITE_STEPS else {"read", "dry-run"}
    assert need <= tags, f"{step} lacks {need - tags}"
    for s in scs:
        if "done" in s["tags"]:
            assert "mutating" in s or s.get("dry_run"), f"{step}:{s['id']} must say mutating"
            assert "qmp" not in s or "qmp_mutating" in s, f"{step}:{s['id']}: qmp_mutating"
            assert s.get("changed") is False, s["id"]
        if s.get("dry_run"):
            assert "skipped" in s or "raises" in s, f"{step}:{s['id']} must say skipped"
    if step in WRITE_STEPS:
        assert any(s.get("skipped") for s in scs), f"{step}: no dry run skipping a change"


def test_every_step_of_these_modules_has_scenarios():
    mods = {m.__name__ for m in (nas, compute, probe, overlay, snapshot, nodefacts,
                                 inventory, vm)}
    mine = {name for name, fn in load_all().items() if fn.__module__ in mods}
    assert mine == set(WRITE_STEPS + READ_STEPS)


def test_the_gates_cover_every_registered_step():
    """This file's gate and test_copy_steps.py's together name every step the node has:
    a new step module or step is not covered until it is added to one of them."""
    import test_copy_steps
    gated = set(WRITE_STEPS + READ_STEPS + test_copy_steps.WRITE_STEPS
                + test_copy_steps.READ_STEPS)
    assert set(load_all()) == gated
