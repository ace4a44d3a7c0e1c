"""``imgstor check`` (read-only; exit 9 when anything differs) and ``imgstor repair``
(fixes it, says what it did; ``--dry-run`` shows the plan; a second run finds nothing).

Both read the store and every NAS's live targets (``nas.target_facts``, in parallel) and
compute the plan with the pure functions of ``imgstor.reconcile``:

- ``target``: a volume whose record wants a target the NAS lacks (re-ensured, with its
  initiator as the only ACL and its CHAP account), a wrong ACL (put right), or a target the
  record does not want (removed; refused by the step while initiators are logged in);
- ``orphan-target``: a target named like imgstor's (``iqn.2001-04.com.<nas>-…``) that no
  volume in the store has: removed (left, and said, while initiators are logged in);
- ``busy``: a busy marker of this frontend whose process is gone: cleared;
- ``monitor``: a job no monitor runs (its lock is free): handed to a detached monitor;
- ``job``: a job that failed (its retry policy gave up): started again, from its phase;
- ``sync-key`` / ``sync-gate``: imgstor's sync keys no job needs (revoked), lines tagged
  like them that imgstor did not write, gates older than this code (workflows/synccheck.py).

Volumes that a live user command holds (busy) or that have a job running are not judged:
their work is in flight.  Repair never destroys a volume or a snapshot; an unreachable
NAS is reported (exit 9) and nothing is done there.
"""
from __future__ import annotations

from typing import Any

from imgstor import jobpool, reconcile
from imgstor import jobs as jobmod
from imgstor.errors import BusyError, ImgstorError
from imgstor.names import target_iqn
from imgstor.output import Output
from imgstor.state.store import pid_alive, this_host
from imgstor.workflows.context import Ctx
from imgstor.workflows.storagemap.common import portal_of

__all__ = ["check", "repair", "plan", "EXIT_DIFFERS"]

EXIT_DIFFERS = 9
_COLUMNS = [("what", "WHAT"), ("subject", "SUBJECT"), ("found", "FOUND"),
            ("action", "ACTION")]


def _in_flight(ctx, st, v) -> bool:
    b = v.busy
    if b is not None and (b.host != this_host() or pid_alive(b.pid, b.starttime)):
        return True
    return any(jobmod.running(ctx.store, j.id) for j in st.jobs_of(v.key))


def plan(ctx: Ctx, *, destroy_orphans: bool = False, restore_only: bool = False,
         adopt: bool = False) -> list[reconcile.Finding]:
    """The findings of ``check``/``repair``; ``restore_only`` (refresh): what a reboot or
    a daemon restart lost of mapped volumes only -- targets and ACLs to put back, sessions
    and overlays to start again -- and nothing of the store's own or of orphans.
    ``adopt`` (``repair --adopt``): the marked NAS volumes the store lacks whose claims
    hold are taken back first, and the rest is judged as if they were in the store."""
    st = ctx.store.read()
    findings = [] if restore_only else reconcile.store_plan(
        st.volumes.values(), st.jobs.values(), here=this_host(), alive=pid_alive,
        running=lambda j: jobmod.running(ctx.store, j.id))
    nases = sorted({n for n, h in ctx.config.hosts.items() if h.role == "nas"}
                   | {v.nas for v in st.volumes.values() if v.nas in ctx.config.hosts})
    nodes = sorted({n for n, h in ctx.config.hosts.items() if h.role == "compute"}
                   | {v.host for v in st.volumes.values()
                      if v.host and v.host in ctx.config.hosts})
    nodes = [n for n in nodes if n not in nases]
    if restore_only:        # only hosts with a mapped volume: refresh stays cheap
        busy = {v.nas for v in st.volumes.values() if reconcile.wants_target(v)}
        nases = [n for n in nases if n in busy]
        nodes = [n for n in nodes if any(reconcile.on_host(v, n) for v in st.volumes.values())]
    cl = ctx.cluster

    def live(host: str):
        cfg = ctx.config.host(host)
        if host in nases:
            if restore_only:
                return cl.step(host, "nas.target_facts",
                               driver=cfg.target_driver).facts["targets"], {}
            # the marked volumes with their imgstor: properties (and sources) and the live
            # targets, in one read
            inv = cl.step(host, "nas.inventory", pools=list(cfg.img_zpools),
                          driver=cfg.target_driver).facts
            return inv["targets"], inv
        return None, cl.step(host, "host.facts", pools=[cfg.vm_container_zpool],
                             initiator=cfg.initiator, overlay=cfg.overlay).facts

    hosts = nases + nodes
    found = cl.parallel(hosts, live) if hosts else {}
    in_flight = (lambda v: _restore_skip(ctx, st, v)) if restore_only else \
        (lambda v: _in_flight(ctx, st, v))
    lost: list[reconcile.Lost] = [] if restore_only else _lost(
        ctx, st, {n: found[n][1] for n in nases if not isinstance(found[n], ImgstorError)})
    findings += [reconcile.lost_volume(x, adopt=adopt) for x in lost]
    from imgstor.state.model import Volume
    taken = [Volume.from_dict(x.record) for x in lost
             if adopt and x.record is not None and not x.conflicts and not x.doubts]
    volumes = list(st.volumes.values()) + taken
    # what the lost volumes (not taken back now) hold on the hosts is theirs: not orphans
    keep_iqns = {n: {target_iqn(n, x.vol) for x in lost if x.nas == n} for n in nases}
    keep_vols: dict[str, set[str]] = {}
    for x in lost:
        h = (x.record or {}).get("host") or _claimed_host(x)
        if h:
            keep_vols.setdefault(h, set()).add(x.vol)
    for host in hosts:
        res = found[host]
        if isinstance(res, ImgstorError):
            findings.append(reconcile.Finding("host" if host in nodes else "nas", host,
                                              f"unreachable: {res}",
                                              left="nothing checked or done there"))
            continue
        cfg = ctx.config.host(host)
        targets, facts = res
        if host in nases:
            nf = reconcile.nas_plan(host, volumes, targets, driver=cfg.target_driver,
                                    kind=cfg.volume_kind, portal=portal_of(cfg),
                                    skip=in_flight, keep=keep_iqns.get(host, ()))
            if restore_only:    # put back what is missing; removing waits for repair
                nf = [f for f in nf if f.what == "target"
                      and all(a.step == "nas.ensure_target" for a in f.actions)]
            findings += nf
            continue
        vols = [_with_portal(ctx, v) for v in volumes]
        nf = reconcile.node_plan(host, vols, facts, kind=cfg.initiator,
                                 driver=cfg.overlay, pool=cfg.vm_container_zpool,
                                 volume_kind=_kind(ctx, host, st),
                                 skip=(lambda v: _restore_skip(ctx, st, v)),
                                 pivoting=(lambda v: _pivoting(ctx, st, v)),
                                 destroy_orphans=destroy_orphans,
                                 keep=keep_vols.get(host, ()))
        if restore_only:
            nf = [f for f in nf if f.what in ("session", "overlay")]
        findings += nf
    if not restore_only:
        findings += reconcile.snapshot_plan(st.volumes.values())
        from imgstor.workflows import synccheck
        findings += synccheck.findings(ctx, st, [h for h in hosts
                                                 if not isinstance(found[h], ImgstorError)])
    return findings


def _claimed_host(x: reconcile.Lost) -> str | None:
    """The host a lost volume's claim names (``says``: "… mapped to HOST, …")."""
    _, sep, rest = x.says.partition(" mapped to ")
    return rest.split(",", 1)[0].strip() or None if sep else None


def _lost(ctx, st, inventories: dict[str, dict]) -> list[reconcile.Lost]:
    """The marked NAS volumes (``imgstor:role=volume`` set on the NAS) the store lacks,
    each with what its checked properties claim (``nasclaims``, as rebuild checks them)
    and the records rebuild's rules would make of it from the live targets and the
    claimed nodes' facts (``compute.inventory``, read only when there is such a volume).
    Nothing is changed."""
    import time

    from imgstor.state.model import volume_key
    from imgstor.workflows import rebuild
    unknown = {volume_key(n, r["vol"]) for n, f in inventories.items()
               for r in f.get("volumes", ()) if r.get("role") == "volume"
               and volume_key(n, r["vol"]) not in st.volumes}
    if not unknown:
        return []
    nas_info, node_info = rebuild.host_info(ctx.config)
    nas_facts: dict[str, dict | None] = {
        n: {**f, "volumes": [r for r in f.get("volumes", ())
                             if volume_key(n, r["vol"]) in unknown]}
        for n, f in inventories.items() if n in nas_info}
    hosts = sorted({r["props"]["host"] for f in nas_facts.values() for r in (f or {})["volumes"]
                    if r["props"].get("host") in node_info})
    got = rebuild.node_round(ctx, nas_facts, nas_info, node_info, hosts)
    node_facts = {h: (None if isinstance(r, ImgstorError) else r) for h, r in got.items()}
    known = list(st.volumes.values())
    out = rebuild.records_from_facts(nas_facts, node_facts, nas_info=nas_info,
                                     node_info=node_info, known=known, now=time.time(),
                                     chap_users=rebuild.chap_users(ctx, nas_facts))
    claims = {c.key: c for c in rebuild.claims(nas_facts, node_facts, nas_info=nas_info,
                                               node_info=node_info, known=known)}
    notes: dict[str, list[str]] = {}
    for subject, what in out.notes:
        notes.setdefault(subject, []).append(what)
    lost = []
    for key in sorted(unknown):
        c = claims.get(key)
        if c is None:            # its NAS is not in the config's NASes any more
            continue
        v = out.state.volumes.get(key)
        doubts = tuple(notes.get(key, ())) if key in out.unsure else ()
        if c.host and c.host in node_facts and node_facts[c.host] is None:
            doubts += (f"{c.host} unreachable",)
        jobs = tuple(j.to_dict() for j in out.state.jobs.values() if j.volume == key)
        vms = tuple(vm.to_dict() for n, vm in out.state.vms.items()
                    if n == c.props.get("vm") and n not in st.vms)
        lost.append(reconcile.Lost(c.nas, c.pool, c.vol, c.says(), tuple(c.conflicts),
                                   doubts, v.to_dict() if v is not None else None, jobs, vms))
    return lost


def _busy_live(v) -> bool:
    """A live user command holds v (a job alone does not stop a restore: its overlay is
    what the VM runs on)."""
    b = v.busy
    return b is not None and (b.host != this_host() or pid_alive(b.pid, b.starttime))


# a sync-in job in this phase is itself switching the overlay to the local copy and
# removing the target and the session: what looks missing is on its way out.  (In
# `merged` it only waits: an overlay lost meanwhile is restored, and the job merges it
# again -- audit M1.)
_PIVOTING = ("pivot",)
# phases in which a live monitor is switching the VM to the local copy (qcow2: after
# job-complete its temp-write is unlinked) or a cancel's teardown takes the overlay to
# nothing: an overlay lost then is put back only on the local copy (H1).  In `merged` the
# temp-write is still whole: the overlay comes back over it and the job merges again (M1).
_SWITCHING = ("pivot", "teardown")


def _pivoting(ctx: Ctx, st, v) -> bool:
    """v's monitor is pivoting it: only an overlay on the local copy is put back."""
    return any(j.phase in _SWITCHING and jobmod.running(ctx.store, j.id)
               for j in st.jobs_of(v.key))


def _restore_skip(ctx: Ctx, st, v) -> bool:
    """Not restored now: a live user command holds v, or its monitor is pivoting it (a
    try in progress, not one waiting out its backoff)."""
    return _busy_live(v) or any(j.phase in _PIVOTING and j.state == "ready"
                                and jobmod.running(ctx.store, j.id)
                                for j in st.jobs_of(v.key))


def _with_portal(ctx: Ctx, v):
    if v.extra.get("portal") or v.nas not in ctx.config.hosts:
        return v
    import copy
    v = copy.deepcopy(v)
    v.extra["portal"] = portal_of(ctx.config.host(v.nas))
    return v


def _kind(ctx: Ctx, host: str, st) -> str:
    """The volume kind of the NAS whose volumes host's local copies mirror (the lab: file)."""
    for v in st.volumes.values():
        if v.host == host and v.nas in ctx.config.hosts:
            return ctx.config.host(v.nas).volume_kind
    return "zvol"


def _row(f: reconcile.Finding, action: str) -> dict[str, Any]:
    return {"what": f.what, "subject": f.subject, "found": f.why, "action": action}


def check(ctx: Ctx) -> Output:
    rows = []
    for f in plan(ctx):
        if f.actions:
            todo = "; ".join(f"{a.host}: {a.step} {_brief(a)}" for a in f.actions)
            rows.append(_row(f, f"repair would: {todo}"))
        else:
            rows.append(_row(f, f"left: {f.left}"))
    footer = [] if rows else ["everything agrees"]
    return Output(rows, _COLUMNS, footer=footer, exit_code=EXIT_DIFFERS if rows else 0)


def _brief(a: reconcile.Action) -> str:
    return " ".join(f"{k}={v}" for k, v in a.args.items()
                    if k in ("iqn", "job", "key", "vol", "name"))


def repair(ctx: Ctx, *, destroy_orphans: bool = False, adopt: bool = False) -> Output:
    rows = []
    failed = False
    for f in plan(ctx, destroy_orphans=destroy_orphans, adopt=adopt):
        if not f.actions:
            rows.append(_row(f, f"left: {f.left}"))
            failed = True
            continue
        action, ok = run_finding(ctx, f)
        rows.append(_row(f, action))
        failed = failed or not ok
    footer = [] if rows else ["everything agrees: nothing to repair"]
    return Output(rows, _COLUMNS, footer=footer,
                  exit_code=EXIT_DIFFERS if failed else 0)


def restore(ctx: Ctx) -> list[dict]:
    """``refresh``'s restore: targets, ACLs, sessions and overlays that mapped volumes
    lost (a reboot, a daemon restart) are put back; rows like ``repair``'s, with
    ``failed`` when an action failed."""
    rows = []
    for f in plan(ctx, restore_only=True):
        if f.actions:
            action, ok = run_finding(ctx, f)
            rows.append({**_row(f, action), "failed": not ok})
        else:       # an unreachable host: refresh's probe reports it
            rows.append({**_row(f, f"left: {f.left}"), "failed": False})
    return rows


def run_finding(ctx: Ctx, f: reconcile.Finding) -> tuple[str, bool]:
    """Run one finding's actions in order: (what was done, True) or (why not, False)."""
    if ctx.dry_run:
        return "would: " + "; ".join(f"{a.host}: {a.step} {_brief(a)}"
                                     for a in f.actions), True
    try:
        if f.what in ("target", "session", "overlay"):
            # the volume's own repair holds its busy marker: no user command meets it midway
            with ctx.store.busy(f.subject, "repair") as v:
                memo: dict = {}
                return "; ".join(_run(ctx, f, a, v, memo) for a in f.actions), True
        return "; ".join(_run(ctx, f, a, None, {}) for a in f.actions), True
    except ImgstorError as e:
        return f"failed: {e}", False


def _chap(ctx: Ctx, v) -> dict | None:
    if not v.extra.get("chap_user"):
        return None
    from imgstor import chap as chapstore
    from imgstor.workflows.storagemap.common import state_path
    creds = chapstore.load(state_path(ctx), v.nas, v.vol)
    return creds.wire() if creds else None


def _local_path(ctx: Ctx, host: str, pool: str, vol: str, kind: str) -> str:
    from imgstor.errors import NotFound
    f = ctx.cluster.step(host, "nas.get_props", pool=pool, vol=vol, kind=kind).facts
    if not f.get("exists") or not f.get("path"):
        raise NotFound(f"{host}: the local copy {pool}/{vol} is not there")
    return f["path"]


def _run(ctx: Ctx, f: reconcile.Finding, a: reconcile.Action, v, memo: dict) -> str:
    if a.step == "store.unbusy":
        ctx.store.unbusy(a.args["key"])
        return "busy marker cleared"
    if a.step == "store.adopt":
        return _adopt(ctx, a.args)
    if a.step == "monitor.start":
        try:
            jobmod.restart(ctx.store, [a.args["job"]])      # a failed job: from its phase
            return jobpool.launch(ctx.store, ctx.config.path, [a.args["job"]],
                                  self_argv=ctx.self_argv)
        except OSError as e:
            raise BusyError(f"could not start a monitor: {e}") from None
    args = dict(a.args)
    if v is not None and a.step in ("nas.ensure_target", "compute.attach"):
        if (creds := _chap(ctx, v)) is not None:
            args["chap"] = creds
    if a.step == "compute.attach":
        args.pop("key", None)
        args["portal"] = args.get("portal") or portal_of(ctx.config.host(v.nas))
        r = ctx.cluster.step(a.host, a.step, **args)
        memo["attach"] = r.facts
        if v.mode != "sync" and r.facts.get("device"):
            _record(ctx, v.key, device=r.facts["device"])
        return r.message or "attached"
    if a.step in ("overlay.create", "overlay.restore_local"):
        kind = ctx.config.host(v.nas).volume_kind if v.nas in ctx.config.hosts \
            else args.get("kind", "zvol")
        args.pop("kind", None)
        if a.step == "overlay.restore_local" or args.get("origin") == reconcile.ORIGIN_LOCAL:
            local = _local_path(ctx, a.host, args["pool"], args["vol"], kind)
            if a.step == "overlay.restore_local":
                args["local"] = local
            else:
                args["origin"] = local
        elif args.get("origin") == reconcile.ORIGIN_FROM_ATTACH:
            att = memo.get("attach") or {}
            args["origin"] = att.get("qemu_json") or att.get("device")
        r = ctx.cluster.step(a.host, a.step, **args)
        if a.step == "overlay.create" and args["origin"] != v.extra.get("origin") \
                and args["origin"] == (memo.get("attach") or {}).get("device"):
            _record(ctx, v.key, origin=args["origin"])
        return r.message or f"{a.step} done"
    r = ctx.cluster.step(a.host, a.step, **args)
    return r.message or f"{a.step} done"


def _adopt(ctx: Ctx, args: dict) -> str:
    """``repair --adopt``: the record (and its job, its VM) of a marked NAS volume the
    store lacks, written as check found it; refused if the store has it meanwhile or its
    names now collide with a record.  A job gets its monitor at once."""
    from imgstor.errors import Conflict
    from imgstor.names import check_collisions
    from imgstor.state.model import Job, Vm, Volume
    v = Volume.from_dict(args["record"])
    jobs = [Job.from_dict(j) for j in args.get("jobs", ())]
    with ctx.store.transaction() as st:
        if v.key in st.volumes:
            raise Conflict(f"{v.key} is in the store already (recorded meanwhile)")
        check_collisions(st.volumes.values(), v.nas, v.vol, host=v.host,
                         chap_user=v.extra.get("chap_user"))
        st.volumes[v.key] = v
        for j in jobs:
            st.jobs[j.id] = j
        for d in args.get("vms", ()):
            vm = Vm.from_dict(d)
            st.vms.setdefault(vm.name, vm)
    started = []
    if jobs:
        try:
            started.append(jobpool.launch(ctx.store, ctx.config.path, [j.id for j in jobs],
                                          self_argv=ctx.self_argv))
        except OSError as e:
            started.append(f"monitor of {', '.join(j.id for j in jobs)} not started ({e}): "
                           "`imgstor monitor --resume`")
    where = f" on {v.host}" if v.host else ""
    return f"taken back: {v.state}{where}" + ("; " + "; ".join(started) if started else "")


def _record(ctx: Ctx, key: str, **changes) -> None:
    """A restored session's new device (dm: the new /dev/sdX is the overlay's origin)."""
    with ctx.store.transaction() as st:
        v = st.volumes.get(key)
        if v is None:
            return
        if "device" in changes:
            v.device = changes["device"]
        if "origin" in changes:
            v.extra["origin"] = changes["origin"]
