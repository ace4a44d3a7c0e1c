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
           "nas_volume_plan", "on_host", "ORIGIN_FROM_ATTACH", "ORIGIN_LOCAL", "sync_view",
           "restore_finding", "Lost", "lost_volume", "snapshot_plan"]

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
    if v.state == "NAS<-VM":
        return v.mode == "sync" and bool(v.target)  # a cancel merges into it (sync back: none)
    if v.state == "mapped":
        return v.mode != "sync" or bool(v.target)
    if v.state == "unmapped":
        return bool(v.host and v.extra.get("intent"))     # an interrupted map's target
    return False                                         # error: leave it


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
             skip: Callable[[Volume], bool] = lambda v: False,
             keep: Iterable[str] = ()) -> list[Finding]:
    """Everything that differs between the store's volumes of NAS and its live targets
    (``nas.target_facts`` rows): each volume's ``target_plan`` (a record whose target is
    gone gets it back; a wrong ACL is put right; a target the record does not want goes),
    and orphans: targets named like imgstor's whose volume the store does not have.
    ``skip(v)``: volumes a user command or a job is working on (not judged now).
    ``keep``: IQNs of marked NAS volumes the store lost (a re-adopt takes them back with
    their targets: not orphans).
    An orphan with initiators logged in is left (removing it would cut a live disk)."""
    vols = [v for v in volumes if v.nas == nas]
    by_iqn = {t["iqn"]: t for t in live}
    out: list[Finding] = []
    known: set[str] = {str(i).lower() for i in keep}
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
        if iqn in known or iqn.lower() in known or not iqn.lower().startswith(prefix):
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


def sync_view(facts: dict, pool: str, vol: str) -> dict[str, bool]:
    """What a node's ``host.facts`` say of sync volume VOL -- the node decides which overlay
    to rebuild, never the store alone, which lags it (audit H1).  ``temp_write``: the
    store of the VM's unmerged writes is there (qcow2: with its overlay file, which the
    pivot unlinks once the merge target holds every write; dm: the COW zvol, destroyed
    by the pivot); ``local``: a complete local copy (imgstor's mark set on the node, which
    the copy phase sets once the copy is there, and an ``@imgstor-…`` snapshot of it)."""
    ds = {d["name"]: d for d in facts.get("datasets") or []}
    tw = ds.get(f"{pool}/{vol}-temp-write")
    lc = ds.get(f"{pool}/{vol}")
    return {"temp_write": bool(tw and tw.get("role") == "temp-write"
                               and tw.get("overlay_file") is not False),
            "local": bool(lc and lc.get("role") == "local-copy"
                          and (lc.get("snapshots") or 0) > 0)}


def restore_finding(v: Volume, facts: dict, *, kind: str, driver: str, pool: str,
                    volume_kind: str) -> tuple[list[Action], str | None]:
    """What node v.host lost of mapped volume v (a reboot, a killed daemon) and the steps
    that put it back, or why it cannot be: (actions, left).

    Direct: its iSCSI session (iscsiadm: ``compute.attach``).  Sync, chosen from the
    node's facts (``sync_view``; audit H1):
    - the temp-write is there: ``overlay.create`` over it (``existing``: never a fresh
      one) -- dm with a complete local copy over the *local copy* (merged chunks leave
      the COW for it, and before a merge it equals the origin), otherwise over the origin
      (``compute.attach`` first: qemu's json spec or the new /dev/sdX); a cancel (NAS<-VM
      with a target) always over the origin, into which it merges;
    - no temp-write, a complete local copy: the node had pivoted (qcow2: ``job-complete``
      done, whatever the store says): ``overlay.restore_local``;
    - a cancel without its temp-write: it had pivoted into the NAS volume: nothing;
    - neither: left -- a fresh overlay over the origin would show the VM its disk as it
      was at the map.
    ``(restore_local`` for a volume recorded ``mapped``, as the pivot left it.)"""
    if v.state not in ("mapped", "NAS->VM", "merging", "NAS<-VM") or not v.host:
        return [], None
    host = v.host
    iqn = v.target
    sessions = {s["iqn"] for s in facts.get("sessions") or []}
    running = {o["vol"] for o in facts.get("overlays") or []}
    portal = v.extra.get("portal")
    attach = Action(host, "compute.attach", {"kind": kind, "portal": portal, "iqn": iqn,
                                             "lun": v.extra.get("lun", 1), "key": v.key},
                    f"no iSCSI session to {iqn}")
    no_session = kind == "iscsiadm" and bool(iqn) and iqn not in sessions
    if v.mode != "sync":
        return ([attach] if no_session and v.state == "mapped" else []), None
    cancel = v.state == "NAS<-VM"
    if cancel and not iqn:
        return [], None                  # a sync back: its first phase removes the overlay
    pool = v.extra.get("local_pool") or pool
    driver = v.extra.get("overlay") or driver
    ovl = {"driver": driver, "pool": pool, "vol": v.vol}
    if v.vol in running:
        return ([attach] if no_session and v.state != "mapped" else []), None
    restore_local = Action(host, "overlay.restore_local", {**ovl, "kind": volume_kind},
                           "no overlay (pivoted): its device on the local copy is gone")
    if v.state == "mapped":
        return [restore_local], None
    view = sync_view(facts, pool, v.vol)
    tw = f"{pool}/{v.vol}-temp-write"
    if view["temp_write"]:
        create = {**ovl, "kind": volume_kind, "existing": True}
        if driver == "dm" and view["local"] and not cancel:
            why = f"no overlay ({v.state}): rebuilt from {tw} over the local copy"
            acts = [Action(host, "overlay.create", {**create, "origin": ORIGIN_LOCAL}, why)]
            return acts + ([attach] if no_session else []), None
        why = f"no overlay ({v.state}): rebuilt from {tw}"
        return [attach, Action(host, "overlay.create", {**create, "origin": ORIGIN_FROM_ATTACH},
                               why)], None
    if cancel:
        return [], None                  # merged into the NAS volume and pivoted there
    if view["local"]:
        return [Action(host, "overlay.restore_local", {**ovl, "kind": volume_kind},
                       f"no overlay ({v.state}), no temp-write: the node had pivoted onto "
                       f"its local copy")], None
    return [], (f"no overlay ({v.state}) and neither its temp-write {tw} nor a complete "
                f"local copy {pool}/{v.vol} on {host}: not rebuilt (a fresh overlay would "
                f"show the VM its disk as it was at the map); look at the node")


def restore_plan(v: Volume, facts: dict, *, kind: str, driver: str, pool: str,
                 volume_kind: str) -> list[Action]:
    """The steps of ``restore_finding`` (empty: nothing missing, or nothing to do)."""
    return restore_finding(v, facts, kind=kind, driver=driver, pool=pool,
                           volume_kind=volume_kind)[0]


LOCAL_ONLY = ("overlay.restore_local",)


def _local_only(a: Action) -> bool:
    """A restore that touches neither the origin nor the session (safe beside a pivot)."""
    return a.step in LOCAL_ONLY or (a.step == "overlay.create"
                                    and a.args.get("origin") == ORIGIN_LOCAL)


def node_plan(host: str, volumes: Iterable[Volume], facts: dict, *, kind: str, driver: str,
              pool: str, volume_kind: str, skip: Callable[[Volume], bool] = lambda v: False,
              pivoting: Callable[[Volume], bool] = lambda v: False,
              destroy_orphans: bool = False, keep: Iterable[str] = ()) -> list[Finding]:
    """Everything that differs between the store and compute node HOST's ``host.facts``:
    each mapped volume's ``restore_plan`` (``session`` / ``overlay`` findings), and orphans
    -- sessions to an imgstor-named target no volume here has (logged out), overlays no
    record has (removed, unless their temp-write holds writes), temp-write stores and
    local copies no record has (a temp-write without writes is destroyed; one with writes
    and a local copy -- it may be newer than the NAS -- are left unless
    ``destroy_orphans``).  ``keep``: names of volumes that marked NAS volumes the store
    lost say are mapped here: their sessions, overlays and datasets are not orphans (a
    re-adopt takes them back)."""
    mine = [v for v in volumes if on_host(v, host)]
    kept = set(keep)
    out: list[Finding] = []
    for v in sorted(mine, key=lambda v: v.key):
        if skip(v):
            continue
        plan, left = restore_finding(v, facts, kind=kind, driver=driver, pool=pool,
                                     volume_kind=volume_kind)
        if pivoting(v):
            # its live monitor removes the session and the target itself; an overlay it
            # lost (a killed daemon, a reboot) comes back on the local copy only
            plan, left = [a for a in plan if _local_only(a)], None
        if left:
            out.append(Finding("overlay", v.key, left.split(":", 1)[0], left=left))
        if plan:
            what = "overlay" if any(a.step.startswith("overlay.") for a in plan) else "session"
            out.append(Finding(what, v.key, "; ".join(a.why for a in plan if a.why),
                               tuple(plan)))
    # a map in flight (its intent recorded) may not have recorded its target yet
    iqns = {v.target for v in mine if v.target} | {target_iqn(v.nas, v.vol) for v in mine}
    for s in sorted(facts.get("sessions") or [], key=lambda s: s["iqn"]):
        iqn = s["iqn"]
        if iqn in iqns or not iqn.lower().startswith("iqn.2001-04.com.") \
                or any(iqn.lower().endswith("-" + k.lower()) for k in kept):
            continue
        why = "orphan session: no volume mapped here has this target"
        portal = f"{s['address']}:{s['port']}"
        out.append(Finding("orphan-session", f"{host}:{iqn}", why, (
            Action(host, "compute.detach", {"kind": kind, "portal": portal, "iqn": iqn},
                   why),)))
    names = {v.vol for v in mine} | kept   # … nor its mode: any volume owns its overlay
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
    known = {f"{v.extra.get('local_pool') or pool}/{v.vol}" for v in mine} | \
        {f"{pool}/{k}" for k in kept}
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
    with ``--destroy-orphans``.  (check's own rows say more: ``lost_volume``.)"""
    known = {f"{v.zpool}/{v.vol}" for v in volumes if v.nas == nas}
    out = []
    for d in sorted(facts.get("datasets") or [], key=lambda d: d["name"]):
        if d["role"] != "volume" or d["name"] in known:
            continue
        out.append(Finding("orphan-volume", f"{nas}:{d['name']}",
                           "marked imgstor:role=volume, not in the store", left=_NEVER))
    return out


_NEVER = ("imgstor never destroys it (it may hold a VM's only copy); once you know it holds "
          "nothing needed, `zfs destroy` it on the NAS by hand")


@dataclass(frozen=True)
class Lost:
    """A marked NAS volume the store lacks, as check found it: what its checked
    properties claim (``says``), why they cannot be taken (``conflicts``), what the hosts
    do not back (``doubts``: rebuild's notes), and the records a re-adopt would write
    (``record``: Volume.to_dict(); ``jobs``/``vms``: to_dict() too)."""
    nas: str
    pool: str
    vol: str
    says: str
    conflicts: tuple[str, ...] = ()
    doubts: tuple[str, ...] = ()
    record: dict | None = None
    jobs: tuple[dict, ...] = ()
    vms: tuple[dict, ...] = ()


def lost_volume(lost: Lost, *, adopt: bool) -> Finding:
    """check's row for a marked NAS volume the store lacks (a state file restored from an
    older backup, a record removed by hand): what it claims, and ``repair --adopt``'s
    ``store.adopt`` when its claim holds and the live target, session and node facts
    back it; else left, with why.  Never destroyed."""
    subject = f"{lost.nas}:{lost.pool}/{lost.vol}"
    why = f"marked imgstor:role=volume, not in the store; it says: {lost.says}"
    if lost.conflicts:
        return Finding("orphan-volume", subject, why, left=(
            "its properties cannot be taken: " + "; ".join(lost.conflicts) + "; fix them on "
            f"{lost.nas} (zfs inherit/zfs set imgstor:…), then `imgstor repair --adopt`; "
            + _NEVER))
    if lost.doubts or lost.record is None:
        return Finding("orphan-volume", subject, why, left=(
            "the hosts do not back it: " + ("; ".join(lost.doubts) or "no record")
            + "; once they agree, `imgstor repair --adopt`; " + _NEVER))
    if not adopt:
        return Finding("orphan-volume", subject, why, left=(
            "`imgstor repair --adopt` takes it back as it says; " + _NEVER))
    args = {"key": f"{lost.nas}/{lost.vol}", "record": lost.record,
            "jobs": list(lost.jobs), "vms": list(lost.vms)}
    return Finding("orphan-volume", subject, why,
                   (Action(FRONTEND, "store.adopt", args, "taken back as it says"),))


def snapshot_plan(volumes: Iterable[Volume]) -> list[Finding]:
    """Sync volumes whose sends back stop on snapshots made on the NAS after the last
    common one (``extra.foreign_snapshots``, recorded by the pull or sync back that met
    them; audit L4): left, named -- imgstor never destroys a snapshot it did not make."""
    out = []
    for v in sorted(volumes, key=lambda v: v.key):
        snaps = v.extra.get("foreign_snapshots") or []
        if not snaps:
            continue
        out.append(Finding("foreign-snapshot", v.key, "sends back to the NAS stop on "
                           + ", ".join(snaps) + " (made on the NAS after the last common "
                           "snapshot)", left=(
                               f"destroy or rename {'it' if len(snaps) == 1 else 'them'} on "
                               f"{v.nas} by hand (imgstor never destroys a snapshot it did "
                               "not make; keep snapshot tools off imgstor's volumes); the "
                               "next pull or sync back then sends")))
    return out
