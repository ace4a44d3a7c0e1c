"""The copy-job and sync-trust steps (scn_copy.py), with the same rules as
test_step_scenarios.py: exact commands in order, "already done" cases that change nothing,
dry runs that run only reads, errors; every registered step of these modules is covered."""
from __future__ import annotations

import fcntl
import json
import os
import pkgutil
import shlex

import pytest
import scn_copy

from imgstor import errors
from imgstor.remote import jobs, syncgate
from imgstor.remote.executor import HostFS
from imgstor.remote.steps import copy as copy_steps
from imgstor.remote.steps import load_all, syncexpect, synckeys
from imgstor.remote.steps import watch as watch_steps
from tests.scripted import Expect, ScriptedExecutor

WRITE_STEPS = ("copy.start", "copy.cancel", "sync.install_key", "sync.authorize",
               "copy.prepare", "sync.expect", "sync.revoke")
READ_STEPS = ("copy.status", "sync.audit", "jobs.watch")


class RecordingExecutor(ScriptedExecutor):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.modes: list[tuple[list[str], bool]] = []

    def run(self, argv, *, read_only=False, **kw):
        self.modes.append(([str(a) for a in argv], read_only))
        return super().run(argv, read_only=read_only, **kw)


def _subset(want: dict, got: dict) -> None:
    """WANT's keys are in GOT with those values (dicts compared the same way, nested)."""
    for k, v in want.items():
        assert k in got, (k, got)
        if isinstance(v, dict) and v:
            assert isinstance(got[k], dict), (k, got[k])
            _subset(v, got[k])
        else:
            assert got[k] == v, (k, got[k], v)


def _sub(value, tmp: str):
    if isinstance(value, str):
        return value.replace("{tmp}", tmp)
    if isinstance(value, list):
        return [_sub(v, tmp) for v in value]
    if isinstance(value, tuple):
        return tuple(_sub(v, tmp) for v in value)
    if isinstance(value, dict):
        return {_sub(k, tmp): _sub(v, tmp) for k, v in value.items()}
    return value


@pytest.mark.parametrize("sc", scn_copy.SCENARIOS, ids=lambda s: f"{s['step']}:{s['id']}")
def test_scenario(sc: dict, tmp_path, monkeypatch) -> None:
    sc = _sub(sc, str(tmp_path))
    env = sc.get("env", {})
    base = str(tmp_path / "jobs")
    monkeypatch.setattr(copy_steps, "JOBS_BASE", base)
    monkeypatch.setattr(syncgate, "EXPECT_DIR", str(tmp_path / "expect"))
    held: list[int] = []
    for name, j in env.get("jobs", {}).items():
        d = jobs.job_dir(name, base)
        os.makedirs(d, mode=0o700)
        for part in ("progress", "spec"):
            if part in j:
                jobs.write_json(os.path.join(d, part), j[part])
        jobs.write_json(os.path.join(d, "pid"), {"pid": 999999, "pgid": 999999})
        fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        if j.get("running"):
            fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)
    for d, mode in env.get("dirs", {}).items():
        os.makedirs(d, exist_ok=True)
        os.chmod(d, mode)
    for path, (text, mode) in env.get("files", {}).items():
        if text == "@gate":
            data = pkgutil.get_data("imgstor.remote", "syncgate.py")
        else:
            data = text.encode()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)

    launched: list[dict] = []

    def fake_launch(name, spec, body, *, base=None):
        launched.append(spec)
        return True, {"job": name, "state": "running", "pid": 4242}

    def fake_cancel(name, *, base=None):
        for fd in held:
            os.close(fd)                  # the job is gone: its lock is free
        held.clear()
        d = jobs.job_dir(name, base)
        prog = jobs.read_json(os.path.join(d, "progress")) or {}
        jobs.write_json(os.path.join(d, "progress"), {**prog, "state": "cancelled"})
        return jobs.status(name, base=base)

    sleeps: list[float] = []
    monkeypatch.setattr(copy_steps, "_launch", fake_launch)
    monkeypatch.setattr(copy_steps, "_cancel", fake_cancel)
    ex = RecordingExecutor([Expect(**e) for e in sc["script"]], dry_run=sc.get("dry_run", False),
                           fs=HostFS())          # the scenario's files are real, in tmp_path
    ex.fs.sleep = sleeps.append                      # type: ignore[method-assign]
    fn = load_all()[sc["step"]]
    try:
        if "raises" in sc:
            name, pattern = sc["raises"]
            with pytest.raises(getattr(errors, name), match=pattern) as ei:
                fn(ex, **sc["args"])
            assert type(ei.value).__name__ == name
            json.dumps(ei.value.to_wire())
        else:
            out = fn(ex, **sc["args"])
            if "changed" in sc:
                assert out.changed is sc["changed"], out
            for k, v in sc.get("facts_include", {}).items():
                assert out.facts.get(k) == v, (k, out.facts)
            _subset(sc.get("facts_sub", {}), out.facts)
            assert json.loads(json.dumps(out.to_dict())) == out.to_dict()
        ex.assert_done()
    finally:
        for fd in held:
            os.close(fd)
    assert ex.skipped == sc.get("skipped", [])
    for t in ex.skipped:
        assert "SKIP> " + t in " ".join(ex.log) or any(x.startswith("SKIP> " + t)
                                                       for x in ex.log)
    if not sc.get("dry_run"):
        assert not any(line.startswith("SKIP> ") for line in ex.log)
    else:
        assert not launched, "a dry run started a job"
    if "mutating" in sc:
        assert [a for a, ro in ex.modes if not ro] == sc["mutating"]
    if "sleeps" in sc:
        assert len(sleeps) == sc["sleeps"]
    if "launched" in sc:
        if sc["launched"] is None:
            assert not launched
        else:
            assert len(launched) == 1
            for k, v in sc["launched"].items():
                assert launched[0].get(k) == v, (k, launched[0])
    for path, text in sc.get("written", {}).items():
        got = ex.files[path].decode()
        assert (got == text) if text.endswith("\n") else (text in got), (path, got)
    for path, data in ex.files.items():          # secrets never reach the command log
        assert "PRIVATE KEY" not in " ".join(ex.log)


def test_every_step_has_the_required_cases() -> None:
    scs = scn_copy.SCENARIOS
    for step in WRITE_STEPS + READ_STEPS:
        mine = [s for s in scs if s["step"] == step]
        tags = set().union(*(s["tags"] for s in mine))
        need = {"changes", "done", "dry-run", "error"} if step in WRITE_STEPS \
            else {"read", "dry-run"}
        assert need <= tags, f"{step} lacks {need - tags}"
        for s in mine:
            if "done" in s["tags"]:
                assert "mutating" in s and s.get("changed") is False, s["id"]
            if s.get("dry_run") and "raises" not in s:
                assert "skipped" in s, s["id"]
        if step in WRITE_STEPS:
            assert any(s.get("skipped") for s in mine), f"{step}: no dry run skipping a change"
    ids = [(s["step"], s["id"]) for s in scs]
    assert len(ids) == len(set(ids))


def test_every_step_of_these_modules_has_scenarios() -> None:
    mods = {copy_steps.__name__, synckeys.__name__, syncexpect.__name__, watch_steps.__name__}
    mine = {name for name, fn in load_all().items() if fn.__module__ in mods}
    assert mine == set(WRITE_STEPS + READ_STEPS)


def test_scripted_write_file_keeps_the_data() -> None:
    ex = ScriptedExecutor([Expect(["write-file", "/x/y", "0600"])])
    ex.write_file("/x/y", b"data")
    assert ex.files == {"/x/y": b"data"} and ex.log == [shlex.join(["write-file", "/x/y",
                                                                    "0600"])]
