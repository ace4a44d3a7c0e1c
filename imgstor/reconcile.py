"""Reconcile as a pure function: from what the store says of a volume and what its NAS
shows live, the node steps that would make the NAS agree (review item 4; pyinfra's facts ->
operations).  No I/O: ``list host storagemap --verify`` reports the plan's reasons, and
``imgstor check`` / ``imgstor repair`` (workflows/check.py) run the same plan, plus what
``nas_plan`` and ``store_plan`` add: orphan targets on a NAS (named like imgstor's, no
volume in the store wants them), stale busy markers and jobs without a live monitor.

A volume wants a target (IQN, exactly its initiator in the ACL) while it is mapped in
direct mode or its sync overlay still reads the NAS over iSCSI (NAS->VM, merging); it wants
none when unmapped or when a sync volume runs on its local copy (mapped, NAS<-VM, no
target recorded).  A map that did not finish (its intent recorded) wants what it was
about to make.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from imgstor.names import target_iqn
from imgstor.remote.protocol import Portal
from imgstor.state.model import Job, Volume

__all__ = ["Action", "Finding", "FRONTEND", "wants_target", "target_plan", "nas_plan",
           "store_plan", "imgstor_iqn_prefix"]

FRONTEND = "frontend"          # Action.host of the store's own repairs (no remote step)


@dataclass(frozen=True)
class Action:
    host: str
    step: str
    args: dict = field(default_factory=dict)
    why: str = ""


def wants_target(v: Volume) -> bool:
    if v.state in ("NAS->VM", "merging"):
        return True
    if v.state == "mapped":
        return v.mode != "sync" or bool(v.target)
    if v.state == "unmapped":
        return bool(v.host and v.extra.get("intent"))     # an interrupted map's target
    return False                                         # NAS<-VM, error: leave it


@dataclass(frozen=True)
class Finding:
    """One thing that differs: ``what`` (target, orphan-target, busy, monitor), its
    ``subject`` (a volume key, an IQN, a job id), ``why``, the ``actions`` repair runs and,
    when repair leaves it, ``left``: why and how to do it by hand."""
    what: str
    subject: str
    why: str
    actions: tuple[Action, ...] = ()
    left: str | None = None


def target_plan(v: Volume, live: dict | None, *, driver: str, kind: str | None = None,
                portal: Portal | str | None = None) -> list[Action]:
    """The steps on v's NAS that would make its live target (``nas.target_facts`` row for
    v's IQN, or None) what the store says.  Empty: they agree.  ``kind`` and ``portal``
    (the NAS's volume_kind, the recorded portal) complete ``nas.ensure_target``'s
    arguments; CHAP credentials are added by whoever runs it (never in a plan)."""
    iqn = v.target or target_iqn(v.nas, v.vol)
    want = wants_target(v)
    ini = v.extra.get("initiator")
    if not want:
        if live is None or v.state == "error":
            return []
        return [Action(v.nas, "nas.remove_target", {"driver": driver, "iqn": iqn},
                       f"target {iqn} exists")]
    if live is None:
        if v.state == "unmapped":          # an interrupted map: nothing made yet is fine
            return []
        return [Action(v.nas, "nas.ensure_target", _ensure_args(v, iqn, driver, kind, portal),
                       "no target on the NAS")]
    acls = [a.lower() for a in live.get("acls") or []]
    if ini and acls != [ini.lower()]:
        return [Action(v.nas, "nas.ensure_target", _ensure_args(v, iqn, driver, kind, portal),
                       f"ACL is {','.join(live.get('acls') or []) or 'empty'}")]
    return []


def _ensure_args(v: Volume, iqn: str, driver: str, kind: str | None,
                 portal: Portal | str | None) -> dict:
    args = {"driver": driver, "iqn": iqn, "pool": v.zpool, "vol": v.vol,
            "initiator": v.extra.get("initiator")}
    if kind is not None:
        args["kind"] = kind
    if portal is not None:
        args["portal"] = v.extra.get("portal") or portal
    return args


def imgstor_iqn_prefix(nas: str) -> str:
    """Targets imgstor makes on NAS are named ``iqn.2001-04.com.<nas>-<vol>``."""
    return f"iqn.2001-04.com.{nas}-".lower()


def nas_plan(nas: str, volumes: Iterable[Volume], live: list[dict], *, driver: str,
             kind: str | None = None, portal: Portal | str | None = None,
             skip: Callable[[Volume], bool] = lambda v: False) -> list[Finding]:
    """Everything that differs between the store's volumes of NAS and its live targets
    (``nas.target_facts`` rows): each volume's ``target_plan`` (a record whose target is
    gone gets it back; a wrong ACL is put right; a target the record does not want goes),
    and orphans: targets named like imgstor's whose volume the store does not have.
    ``skip(v)``: volumes a user command or a job is working on (not judged now).
    An orphan with initiators logged in is left (removing it would cut a live disk)."""
    vols = [v for v in volumes if v.nas == nas]
    by_iqn = {t["iqn"]: t for t in live}
    out: list[Finding] = []
    known: set[str] = set()
    for v in sorted(vols, key=lambda v: v.vol):
        iqn = v.target or target_iqn(nas, v.vol)
        known.update({iqn, target_iqn(nas, v.vol)})
        if skip(v):
            continue
        plan = target_plan(v, by_iqn.get(iqn), driver=driver, kind=kind, portal=portal)
        if plan:
            out.append(Finding("target", v.key, "; ".join(a.why for a in plan), tuple(plan)))
    prefix = imgstor_iqn_prefix(nas)
    for t in sorted(live, key=lambda t: t["iqn"]):
        iqn = t["iqn"]
        if iqn in known or not iqn.lower().startswith(prefix):
            continue
        why = "orphan target: no volume in the store has it"
        if t.get("sessions"):
            out.append(Finding("orphan-target", iqn, why, left=(
                f"initiators logged in ({', '.join(map(str, t['sessions']))}); log them "
                f"out, then `imgstor repair` removes it")))
            continue
        out.append(Finding("orphan-target", iqn, why, (
            Action(nas, "nas.remove_target", {"driver": driver, "iqn": iqn}, why),)))
    return out


def store_plan(volumes: Iterable[Volume], jobs: Iterable[Job], *, here: str,
               alive: Callable[[int, int | None], bool]) -> list[Finding]:
    """What the store alone shows: busy markers of this frontend whose process is gone,
    and jobs whose monitor is gone (owner None or dead here).  ``alive(pid, starttime)``
    (a process of another frontend cannot be checked: it counts as alive)."""
    out: list[Finding] = []
    for v in sorted(volumes, key=lambda v: v.key):
        b = v.busy
        if b is not None and b.host == here and not alive(b.pid, b.starttime):
            out.append(Finding("busy", v.key, f"stale busy marker: {b.op} by pid {b.pid}, "
                               "no longer running",
                               (Action(FRONTEND, "store.unbusy", {"key": v.key},
                                       "stale busy marker"),)))
    for j in sorted(jobs, key=lambda j: j.id):
        o = j.owner
        if o is not None and (o.host != here or alive(o.pid, o.starttime)):
            continue
        why = "no monitor" if o is None else f"its monitor (pid {o.pid}) is gone"
        if j.last_error:
            why += f"; last error: {j.last_error}"
        out.append(Finding("monitor", j.id, f"job {j.kind} of {j.volume} in phase "
                           f"{j.phase}: {why}",
                           (Action(FRONTEND, "monitor.start", {"job": j.id}, why),)))
    return out
