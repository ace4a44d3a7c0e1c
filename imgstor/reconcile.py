"""Reconcile as a pure function: from what the store says of a volume and what its NAS
shows live, the node steps that would make the NAS agree (review item 4; pyinfra's facts ->
operations).  No I/O: ``list host storagemap --verify`` reports the plan's reasons, and
`repair` / `refresh` (the operations issue) will run the same plan.

A volume wants a target (IQN, exactly its initiator in the ACL) while it is mapped in
direct mode or its sync overlay still reads the NAS over iSCSI (NAS->VM, merging); it wants
none when unmapped or when a sync volume runs on its local copy (mapped, NAS<-VM, no
target recorded).  A map that did not finish (its intent recorded) wants what it was
about to make.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from imgstor.names import target_iqn
from imgstor.state.model import Volume

__all__ = ["Action", "wants_target", "target_plan"]


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


def target_plan(v: Volume, live: dict | None, *, driver: str) -> list[Action]:
    """The steps on v's NAS that would make its live target (``nas.target_facts`` row for
    v's IQN, or None) what the store says.  Empty: they agree."""
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
        return [Action(v.nas, "nas.ensure_target", {"driver": driver, "iqn": iqn,
                                                   "pool": v.zpool, "vol": v.vol,
                                                   "initiator": ini},
                       "no target on the NAS")]
    acls = [a.lower() for a in live.get("acls") or []]
    if ini and acls != [ini.lower()]:
        return [Action(v.nas, "nas.ensure_target", {"driver": driver, "iqn": iqn,
                                                   "pool": v.zpool, "vol": v.vol,
                                                   "initiator": ini},
                       f"ACL is {','.join(live.get('acls') or []) or 'empty'}")]
    return []
