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
- ``monitor``: a job without a live monitor: a new detached monitor is started.

Volumes that a live user command holds (busy) or that have a job running are not judged:
their work is in flight.  Repair never destroys a volume or a snapshot; an unreachable
NAS is reported (exit 9) and nothing is done there.
"""
from __future__ import annotations

from typing import Any

from imgstor import jobs as jobmod
from imgstor import reconcile
from imgstor.errors import BusyError, ImgstorError
from imgstor.output import Output
from imgstor.state.store import pid_alive, this_host
from imgstor.workflows.storagemap.common import portal_of

__all__ = ["check", "repair", "plan", "EXIT_DIFFERS"]

EXIT_DIFFERS = 9
_COLUMNS = [("what", "WHAT"), ("subject", "SUBJECT"), ("found", "FOUND"),
            ("action", "ACTION")]


def _in_flight(st, v) -> bool:
    b = v.busy
    if b is not None and (b.host != this_host() or pid_alive(b.pid, b.starttime)):
        return True
    return any(jobmod.owner_alive(j) for j in st.jobs_of(v.key))


def plan(ctx) -> list[reconcile.Finding]:
    st = ctx.store.read()
    findings = reconcile.store_plan(st.volumes.values(), st.jobs.values(), here=this_host(),
                                    alive=pid_alive)
    nases = sorted({n for n, h in ctx.config.hosts.items() if h.role == "nas"}
                   | {v.nas for v in st.volumes.values() if v.nas in ctx.config.hosts})
    cl = ctx.cluster

    def live(nas: str):
        return cl.step(nas, "nas.target_facts",
                       driver=ctx.config.host(nas).target_driver).facts["targets"]

    found = cl.parallel(nases, live) if nases else {}
    for nas in nases:
        res = found[nas]
        if isinstance(res, ImgstorError):
            findings.append(reconcile.Finding("nas", nas, f"unreachable: {res}",
                                              left="nothing checked or done there"))
            continue
        cfg = ctx.config.host(nas)
        findings += reconcile.nas_plan(nas, st.volumes.values(), res, driver=cfg.target_driver,
                                       kind=cfg.volume_kind, portal=portal_of(cfg),
                                       skip=lambda v: _in_flight(st, v))
    return findings


def _row(f: reconcile.Finding, action: str) -> dict[str, Any]:
    return {"what": f.what, "subject": f.subject, "found": f.why, "action": action}


def check(ctx) -> Output:
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
    return " ".join(f"{k}={v}" for k, v in a.args.items() if k in ("iqn", "job", "key"))


def repair(ctx) -> Output:
    rows = []
    failed = False
    for f in plan(ctx):
        if not f.actions:
            rows.append(_row(f, f"left: {f.left}"))
            failed = True
            continue
        if ctx.dry_run:
            rows.append(_row(f, "would: " + "; ".join(f"{a.host}: {a.step} {_brief(a)}"
                                                      for a in f.actions)))
            continue
        try:
            rows.append(_row(f, "; ".join(_run(ctx, f, a) for a in f.actions)))
        except ImgstorError as e:
            rows.append(_row(f, f"failed: {e}"))
            failed = True
    footer = [] if rows else ["everything agrees: nothing to repair"]
    return Output(rows, _COLUMNS, footer=footer,
                  exit_code=EXIT_DIFFERS if failed else 0)


def _run(ctx, f: reconcile.Finding, a: reconcile.Action) -> str:
    if a.step == "store.unbusy":
        ctx.store.unbusy(a.args["key"])
        return "busy marker cleared"
    if a.step == "monitor.start":
        try:
            return f"started monitor pid {jobmod.spawn(ctx.store, ctx.config.path, a.args['job'])}"
        except OSError as e:
            raise BusyError(f"could not start a monitor: {e}") from None
    args = dict(a.args)
    if f.what == "target":
        # the volume's own repair holds its busy marker: no user command meets it midway
        with ctx.store.busy(f.subject, "repair") as v:
            if a.step == "nas.ensure_target" and v.extra.get("chap_user"):
                from imgstor import chap as chapstore
                from imgstor.workflows.storagemap.common import state_path
                creds = chapstore.load(state_path(ctx), v.nas, v.vol)
                if creds:
                    args["chap"] = creds.wire()
            r = ctx.cluster.step(a.host, a.step, **args)
    else:
        r = ctx.cluster.step(a.host, a.step, **args)
    return r.message or f"{a.step} done"
