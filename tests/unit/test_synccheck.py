"""check's view of the sync keys (issue 18): which hop a job needs, and the findings for
stale, foreign and unrestricted imgstor-tagged lines and old gates."""
from __future__ import annotations

from types import SimpleNamespace

from imgstor.state.model import Job, State, Volume
from imgstor.workflows import synccheck

HOSTS = {"nas-0-0": "nas", "compute-0-0": "compute", "compute-0-1": "compute"}


def _state(*vols: Volume, jobs: tuple[Job, ...] = ()) -> State:
    st = State()
    for v in vols:
        st.volumes[v.key] = v
    for j in jobs:
        st.jobs[j.id] = j
    return st


def test_which_hop_a_volume_needs() -> None:
    cfg = SimpleNamespace(hosts=HOSTS)
    mapped = Volume("nas-0-0", "tank", "a", host="compute-0-0", state="mapped", mode="sync")
    st = _state(mapped)
    assert synccheck.needed(st, cfg, "compute-0-0", "nas-0-0")       # its pulls
    assert not synccheck.needed(st, cfg, "nas-0-0", "compute-0-0")   # copied already
    assert not synccheck.needed(st, cfg, "compute-0-1", "nas-0-0")
    copying = Volume("nas-0-0", "tank", "b", host="compute-0-1", state="NAS->VM", mode="sync")
    st = _state(mapped, copying, jobs=(Job("sync-in-1", "sync-in", copying.key, "copy", 0, 0),))
    assert synccheck.needed(st, cfg, "nas-0-0", "compute-0-1")
    direct = Volume("nas-0-0", "tank", "c", host="compute-0-1", state="mapped", mode="direct")
    assert not synccheck.needed(_state(direct), cfg, "compute-0-1", "nas-0-0")


def test_findings_stale_foreign_and_old_gate() -> None:
    audits = {
        "nas-0-0": {"lines": [
            {"line": 3, "sender": "compute-0-0", "restricted": True},     # needed: pulls
            {"line": 4, "sender": "compute-0-1", "restricted": True},     # stale
            {"line": 5, "sender": "compute-0-9", "restricted": True},     # removed host
            {"line": 6, "sender": "compute-0-0", "restricted": False}],   # not the gate
            "gate": "/var/lib/imgstor/sync-gate.py", "gate_current": False},
        "compute-0-0": {"lines": [], "gate": None, "gate_current": False},
    }
    steps = []

    def step(host, name, **kw):
        steps.append((host, name))
        return SimpleNamespace(facts=audits[host])
    cl = SimpleNamespace(step=step,
                         parallel=lambda hosts, fn: {h: fn(h) for h in hosts})
    ctx = SimpleNamespace(cluster=cl, config=SimpleNamespace(hosts=HOSTS))
    st = _state(Volume("nas-0-0", "tank", "a", host="compute-0-0", state="mapped",
                       mode="sync"))
    out = synccheck.findings(ctx, st, ["nas-0-0", "compute-0-0"])
    assert {h for h, n in steps if n == "sync.audit"} == {"nas-0-0", "compute-0-0"}
    by = {f.subject: f for f in out}
    assert set(by) == {"nas-0-0:authorized_keys:4", "nas-0-0:authorized_keys:5",
                       "nas-0-0:authorized_keys:6", "nas-0-0:/var/lib/imgstor/sync-gate.py"}
    stale = by["nas-0-0:authorized_keys:4"]
    assert [(a.host, a.step, a.args) for a in stale.actions] == \
        [("nas-0-0", "sync.revoke", {"sender": "compute-0-1"})]
    gone = by["nas-0-0:authorized_keys:5"]                  # a host removed from the config
    assert "no longer in the config" in gone.why and gone.actions[0].step == "sync.revoke"
    assert "not restricted" in by["nas-0-0:authorized_keys:6"].why
    assert not by["nas-0-0:authorized_keys:6"].actions
    assert by["nas-0-0:/var/lib/imgstor/sync-gate.py"].what == "sync-gate"
