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
           "store_plan", "imgstor_iqn_prefix", "restore_plan", "node_plan",
           "nas_volume_plan", "on_host", "ORIGIN_FROM_ATTACH", "ORIGIN_LOCAL"]

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
               alive: Callable[[int, int | None], bool],
               running: Callable[[Job], bool]) -> list[Finding]:
    """What the store alone shows: busy markers of this frontend whose process is gone
    (``alive(pid, starttime)``; a process of another frontend cannot be checked: it
    counts as alive), jobs that no monitor runs (``running(job)``: its lock is held) and
    jobs that failed (their retry policy gave up)."""
    out: list[Finding] = []
    for v in sorted(volumes, key=lambda v: v.key):
        b = v.busy
        if b is not None and b.host == here and not alive(b.pid, b.starttime):
            out.append(Finding("busy", v.key, f"stale busy marker: {b.op} by pid {b.pid}, "
                               "no longer running",
                               (Action(FRONTEND, "store.unbusy", {"key": v.key},
                                       "stale busy marker"),)))
    for j in sorted(jobs, key=lambda j: j.id):
        if j.state == "failed":
            why = f"failed after {j.attempts} tries: {j.last_error}"
            out.append(Finding("job", j.id, f"job {j.kind} of {j.volume} in phase "
                               f"{j.phase}: {why}",
                               (Action(FRONTEND, "monitor.start", {"job": j.id},
                                       "start it again from its phase"),)))
            continue
        if running(j):
            continue
        o = j.owner
        why = "no monitor" if o is None else f"its monitor (pid {o.pid}) is gone"
        if j.last_error:
            why += f"; last error: {j.last_error}"
        out.append(Finding("monitor", j.id, f"job {j.kind} of {j.volume} in phase "
                           f"{j.phase}: {why}",
                           (Action(FRONTEND, "monitor.start", {"job": j.id}, why),)))
    return out


# ------------------------------------------------------------------ a host's own facts
ORIGIN_FROM_ATTACH = "@attach"      # overlay.create's origin: what compute.attach returns
ORIGIN_LOCAL = "@local"             # … or the local copy (a dm overlay caught merging)


def on_host(v: Volume, host: str) -> bool:
    """v has (or is getting) something on compute node HOST."""
    return v.host == host and (v.state != "unmapped" or bool(v.extra.get("intent")))


def restore_plan(v: Volume, facts: dict, *, kind: str, driver: str, pool: str,
                 volume_kind: str) -> list[Action]:
    """What node v.host lost of mapped volume v (a reboot, a killed daemon): its iSCSI
    session (iscsiadm: ``compute.attach``), its sync overlay (before the pivot:
    ``compute.attach`` for the origin, then ``overlay.create`` over it -- the temp-write
    store that holds the VM's writes is reused; a dm overlay caught ``merging`` is made over
    the local copy, into which part of its writes have merged already; after the pivot:
    ``overlay.restore_local``).  Empty: nothing missing."""
    if v.state not in ("mapped", "NAS->VM", "merging") or not v.host:
        return []
    host = v.host
    iqn = v.target
    sessions = {s["iqn"] for s in facts.get("sessions") or []}
    running = {o["vol"] for o in facts.get("overlays") or []}
    portal = v.extra.get("portal")
    attach = Action(host, "compute.attach", {"kind": kind, "portal": portal, "iqn": iqn,
                                             "lun": v.extra.get("lun", 1), "key": v.key},
                    f"no iSCSI session to {iqn}")
    if v.mode != "sync":
        if kind == "iscsiadm" and iqn and iqn not in sessions:
            return [attach]
        return []
    pool = v.extra.get("local_pool") or pool
    driver = v.extra.get("overlay") or driver
    ovl = {"driver": driver, "pool": pool, "vol": v.vol}
    if v.vol in running:
        if kind == "iscsiadm" and iqn and v.state != "mapped" and iqn not in sessions:
            return [attach]
        return []
    if v.state == "mapped":
        return [Action(host, "overlay.restore_local", {**ovl, "kind": volume_kind},
                       "no overlay (pivoted): its device on the local copy is gone")]
    origin = ORIGIN_LOCAL if (v.state == "merging" and driver == "dm") else ORIGIN_FROM_ATTACH
    why = f"no overlay ({v.state}): rebuilt from {pool}/{v.vol}-temp-write"
    return [attach, Action(host, "overlay.create", {**ovl, "origin": origin,
                                                    "kind": volume_kind}, why)]


def node_plan(host: str, volumes: Iterable[Volume], facts: dict, *, kind: str, driver: str,
              pool: str, volume_kind: str, skip: Callable[[Volume], bool] = lambda v: False,
              destroy_orphans: bool = False) -> list[Finding]:
    """Everything that differs between the store and compute node HOST's ``host.facts``:
    each mapped volume's ``restore_plan`` (``session`` / ``overlay`` findings), and orphans
    -- sessions to an imgstor-named target no volume here has (logged out), overlays no
    record has (removed, unless their temp-write holds writes), temp-write stores and
    local copies no record has (a temp-write without writes is destroyed; one with writes
    and a local copy -- it may be newer than the NAS -- are left unless
    ``destroy_orphans``)."""
    mine = [v for v in volumes if on_host(v, host)]
    out: list[Finding] = []
    for v in sorted(mine, key=lambda v: v.key):
        if skip(v):
            continue
        plan = restore_plan(v, facts, kind=kind, driver=driver, pool=pool,
                            volume_kind=volume_kind)
        if plan:
            what = "overlay" if any(a.step.startswith("overlay.") for a in plan) else "session"
            out.append(Finding(what, v.key, "; ".join(a.why for a in plan if a.why),
                               tuple(plan)))
    # a map in flight (its intent recorded) may not have recorded its target yet
    iqns = {v.target for v in mine if v.target} | {target_iqn(v.nas, v.vol) for v in mine}
    for s in sorted(facts.get("sessions") or [], key=lambda s: s["iqn"]):
        iqn = s["iqn"]
        if iqn in iqns or not iqn.lower().startswith("iqn.2001-04.com."):
            continue
        why = "orphan session: no volume mapped here has this target"
        portal = f"{s['address']}:{s['port']}"
        out.append(Finding("orphan-session", f"{host}:{iqn}", why, (
            Action(host, "compute.detach", {"kind": kind, "portal": portal, "iqn": iqn},
                   why),)))
    names = {v.vol for v in mine}       # … nor its mode: any volume there owns its overlay
    writes = {d["name"]: d.get("writes") for d in facts.get("datasets") or []
              if d["role"] == "temp-write"}
    for o in sorted(facts.get("overlays") or [], key=lambda o: o["vol"]):
        vol = o["vol"]
        if vol in names:
            continue
        tw = f"{pool}/{vol}-temp-write"
        why = "orphan overlay: no volume mapped here is this one"
        if writes.get(tw) is not False and tw in writes and not destroy_orphans:
            out.append(Finding("orphan-overlay", f"{host}:{vol}", why, left=(
                f"its temp-write {tw} holds writes not merged anywhere: copy them out, then "
                f"`imgstor repair --destroy-orphans`")))
            continue
        out.append(Finding("orphan-overlay", f"{host}:{vol}", why, (
            Action(host, "overlay.remove", {"driver": o["driver"], "pool": pool, "vol": vol},
                   why),)))
    known = {f"{v.extra.get('local_pool') or pool}/{v.vol}" for v in mine}
    for d in sorted(facts.get("datasets") or [], key=lambda d: d["name"]):
        name, role = d["name"], d["role"]
        if role == "volume":
            continue
        base = name[:-len("-temp-write")] if role == "temp-write" and \
            name.endswith("-temp-write") else name
        if base in known:
            continue
        why = f"orphan {role}: no volume mapped here has {name}"
        destroy = Action(host, "host.destroy_marked", {"name": name, "role": role,
                                                       "force": destroy_orphans}, why)
        if role == "temp-write" and d.get("writes") is False:
            out.append(Finding("orphan-" + role, f"{host}:{name}", why + " (no writes)",
                               (destroy,)))
        elif destroy_orphans:
            out.append(Finding("orphan-" + role, f"{host}:{name}", why, (destroy,)))
        else:
            held = ("holds writes not merged anywhere" if role == "temp-write"
                    else "may be newer than the NAS's copy")
            out.append(Finding("orphan-" + role, f"{host}:{name}", why, left=(
                f"it {held}: check it, then `imgstor repair --destroy-orphans` (or "
                f"`zfs destroy {name}` on {host})")))
    return out


def nas_volume_plan(nas: str, volumes: Iterable[Volume], facts: dict) -> list[Finding]:
    """NAS volumes carrying imgstor's mark (``imgstor:role=volume``) the store does not
    know: always left -- they may hold a VM's only copy; never destroyed by repair, not even
    with ``--destroy-orphans``."""
    known = {f"{v.zpool}/{v.vol}" for v in volumes if v.nas == nas}
    out = []
    for d in sorted(facts.get("datasets") or [], key=lambda d: d["name"]):
        if d["role"] != "volume" or d["name"] in known:
            continue
        out.append(Finding("orphan-volume", f"{nas}:{d['name']}",
                           "marked imgstor:role=volume, not in the store", left=(
                               f"it may hold a VM's only copy: imgstor never destroys it; "
                               f"once you know it holds nothing needed, `zfs destroy "
                               f"{d['name']}` on {nas} by hand")))
    return out
