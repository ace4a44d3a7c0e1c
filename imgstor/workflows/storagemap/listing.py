"""``list host storagemap [NAS] [--verify]`` and ``list host storagedev HOST``."""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from imgstor import chap as chapstore
from imgstor import jobs as jobmod
from imgstor import validate
from imgstor.errors import ImgstorError
from imgstor.names import target_iqn
from imgstor.output import Output, When, duration_cell, format_duration, when_cell
from imgstor.workflows import syncattrs
from imgstor.workflows.context import Ctx
from imgstor.workflows.storagemap.common import TRANSITIONAL, portal_of, state_path
from imgstor.workflows.syncattrs import due

__all__ = ["list_maps", "list_devs"]


# TIME: how long a volume has been in a transitional state; NEXTSYNC: the roll's time of
# day of the next periodic pull; PROGRESS: the job's (rows hold seconds, times and numbers:
# --json has them so).
_MAP_COLUMNS = [("zvol", "ZVOL"), ("host", "HOST"), ("zpool", "ZPOOL"), ("target", "TARGET"),
                ("state", "STATE"), ("time", "TIME", duration_cell("time"))]
_PROGRESS = ("progress", "PROGRESS", lambda r: (r["progress"] or {}).get("text"))
_NEXTSYNC = ("nextsync", "NEXTSYNC", when_cell("nextsync"))


def list_maps(ctx: Ctx, nas: str | None = None, verify: bool = False) -> Output:
    if nas is not None:
        nas = validate.host(nas, "NAS")
        ctx.config.host(nas, role="nas")
    st = ctx.store.read()
    vols = sorted((v for v in st.volumes.values() if nas is None or v.nas == nas),
                  key=lambda v: (v.nas, v.vol))
    now = time.time()
    rows = []
    jobs_of: dict[str, list] = {}
    for j in st.jobs.values():
        jobs_of.setdefault(j.volume, []).append(j)
    for v in vols:
        state = v.state
        if v.busy:
            state += f" (busy: {v.busy.op})"
        js = sorted(jobs_of.get(v.key, ()), key=lambda j: j.created)
        if v.state == "mapped" and any(j.kind == "pull" for j in js):
            state = "NAS<-VM sched" + state[len(v.state):]     # the periodic pull runs
        if any(j.state == "failed" for j in js):
            state += " (job failed)"
        nextsync = None
        if v.mode == "sync" and not js:
            left = due(v, syncattrs.frequency(st, ctx.config, v.nas, v.vol)
                       if v.nas in ctx.config.hosts else 3600, now)
            if left is not None:        # the roll's format: `Tue 14:05.33` (local time)
                nextsync = When(now + left)
        rows.append({"nas": v.nas, "zvol": v.vol, "host": v.host, "zpool": v.zpool,
                     "target": v.target, "state": state, "raw_state": v.state,
                     "time": round(max(0.0, now - v.since)) if v.state in TRANSITIONAL
                     and v.since else None,
                     "since": When(v.since) if v.since else None, "size": v.size,
                     "busy": None if v.busy is None else
                     {"op": v.busy.op, "pid": v.busy.pid, "host": v.busy.host,
                      "since": When(v.busy.since)},
                     "device": v.device, "error": v.error, "mode": v.mode,
                     "initiator": v.extra.get("initiator"),
                     "job": js[0].id if js else None,
                     "job_state": jobmod.shown_state(ctx.store, js[0]) if js else None,
                     "job_error": js[0].last_error if js else None,
                     "progress": _progress(ctx, js[0], now) if js else None,
                     "nextsync": nextsync})
    columns: list = list(_MAP_COLUMNS)
    if any(r["progress"] for r in rows):
        columns.append(_PROGRESS)
    if any(v.mode == "sync" for v in vols):
        columns.append(_NEXTSYNC)
    if nas is None:
        columns.insert(0, ("nas", "NAS"))
    footer = [f"{r['nas']}:{r['zvol']}: last error: {r['error']}" for r in rows if r["error"]]
    footer += [f"{r['nas']}:{r['zvol']}: job {r['job']} {r['job_state']}: {r['job_error']}"
               for r in rows if r["job_error"] and r["job_state"] in ("retry", "failed")]
    exit_code = 0
    if verify:
        columns.append(("live", "LIVE"))
        exit_code = _verify(ctx, rows, vols)
    return Output(rows, columns, footer=footer, exit_code=exit_code)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def _progress(ctx: Ctx, job, now: float) -> dict:
    """The job's progress: ``kind``, ``phase``, ``failed``, and from its progress file
    ``percent``, ``done_bytes``, ``total_bytes``, ``rate`` (bytes/s), ``eta_seconds``,
    ``synced``; ``text`` is the PROGRESS cell: ``41% 1.3/3.2 GiB, ETA 0:00:09`` (a merge
    without byte counters: its SYNCED text; a job that failed: its phase and what starts
    it again; a try that failed: when the next one is)."""
    out: dict = {"kind": job.kind, "phase": job.phase, "failed": False, "percent": None,
                 "done_bytes": None, "total_bytes": None, "rate": None,
                 "eta_seconds": None, "synced": None, "error": job.last_error}
    if job.state == "failed":
        out.update(failed=True, text=f"{job.kind} {job.phase}: failed after {job.attempts} "
                   "tries, `imgstor monitor --resume` or `imgstor repair` starts it again")
        return out
    if job.state == "retry" and job.next_try:
        out["text"] = (f"{job.kind} {job.phase}: try {job.attempts + 1} at "
                       f"{time.strftime('%H:%M:%S', time.localtime(job.next_try))}")
        return out
    p = jobmod.read_progress(ctx.store, job.id)
    done, total, rate = p.get("done"), p.get("total"), p.get("rate")
    if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
        pct = min(100.0, 100 * done / total)
        out.update(percent=round(pct, 1), done_bytes=done, total_bytes=total,
                   text=f"{pct:.0f}% {_gib(done)}/{_gib(total)} GiB")
        if isinstance(rate, (int, float)) and rate > 0:
            out["rate"] = rate
            if total > done:
                eta = (total - done) / rate
                out["eta_seconds"] = round(eta)
                out["text"] += f", ETA {format_duration(eta)}"
        return out
    if p.get("synced"):
        out.update(phase=p.get("phase", job.phase), synced=p["synced"],
                   text=f"{p.get('phase', job.phase)} {p['synced']}")
        return out
    out["text"] = f"{job.kind} {job.phase}"
    return out


def _verify(ctx: Ctx, rows: list[dict], vols: list) -> int:
    """Compare each volume with its NAS's live targets (``reconcile.target_plan``: what
    would make them agree); mark rows that differ."""
    from imgstor import reconcile
    cl = ctx.cluster
    by_nas: dict[str, list[tuple[dict, Any]]] = {}
    for r, v in zip(rows, vols):
        by_nas.setdefault(r["nas"], []).append((r, v))

    def live(nas: str):
        return cl.step(nas, "nas.target_facts", driver=ctx.config.host(nas).target_driver).facts["targets"]

    found = cl.parallel(list(by_nas), live)
    bad = 0
    for nas, pairs in by_nas.items():
        res = found[nas]
        for r, v in pairs:
            if isinstance(res, ImgstorError):
                r["live"] = f"unknown: {res}"
                bad += 1
                continue
            iqn = v.target or target_iqn(nas, v.vol)
            t = next((t for t in res if t["iqn"] == iqn), None)
            plan = reconcile.target_plan(v, t, driver=ctx.config.host(nas).target_driver)
            r["live"] = "ok" if not plan else "DIFFERS: " + "; ".join(a.why for a in plan)
            bad += bool(plan)
    return 9 if bad else 0


def list_devs(ctx: Ctx, host: str) -> Output:
    host = validate.host(host, "host")
    host_cfg = ctx.config.host(host, role="compute")
    st = ctx.store.read()
    vols = sorted((v for v in st.volumes.values() if v.host == host), key=lambda v: v.vol)
    targets = []
    for v in vols:
        if not v.target:
            continue
        t = {"iqn": v.target, "portal": v.extra.get("portal") or portal_of(ctx.config.host(v.nas)),
             "lun": int(v.extra.get("lun", 1))}
        creds = chapstore.load(state_path(ctx), v.nas, v.vol) if v.extra.get("chap_user") else None
        if creds:
            t["chap"] = creds.wire()
        targets.append(t)
    seen = {}
    if targets:
        facts = ctx.cluster.step(host, "compute.devices", kind=host_cfg.initiator,
                                 targets=targets).facts
        seen = {d["iqn"]: d for d in facts["devices"]}
    # sync mode: each overlay read live, in one round trip
    syncs = [v for v in vols if v.mode == "sync" and v.state != "NAS<-VM"]
    ovl: dict[str, Mapping[str, Any]] = {}
    if syncs:
        res = ctx.cluster.steps(host, [("overlay.status", {
            "driver": v.extra.get("overlay") or host_cfg.overlay,
            "pool": v.extra.get("local_pool") or host_cfg.vm_container_zpool,
            "vol": v.vol}) for v in syncs])
        ovl = {v.key: r.facts for v, r in zip(syncs, res)}
    now = time.time()
    rows = []
    for v in vols:
        d = seen.get(v.target, {})
        o = ovl.get(v.key)
        size = d.get("size") or v.size
        status = d.get("status", "absent") if v.target else v.state
        if o is not None:
            status = o.get("status") or ("absent" if not o.get("exists") else status)
        rows.append({"zvol": v.vol, "device": (o or {}).get("device") or d.get("device")
                     or v.device,
                     "status": status,
                     "size_gb": round(size / 2**30, 2) if size else None,
                     "block_dev": d.get("device") if host_cfg.initiator == "iscsiadm" else None,
                     "nas": v.nas, "target": v.target, "state": v.state,
                     # sync mode's overlay: its device, merge started, SYNCED, time
                     "lvm": (o or {}).get("device"),
                     "is_started": (1 if o.get("phase") in ("merging", "merged", "pivoted")
                                    else 0) if o else None,
                     "synced": (o or {}).get("synced"),
                     "size": size,
                     "time": round(max(0.0, now - v.since)) if o and v.since
                     and v.state in TRANSITIONAL else None})
    # The guide's columns (ZVOL LVM STATUS SIZE (GB) BLOCK DEV IS STARTED SYNCED TIME),
    # then what direct mode adds: the device a VM opens, the NAS, the mapping's state.
    return Output(rows, [("zvol", "ZVOL"), ("lvm", "LVM"), ("status", "STATUS"),
                         ("size_gb", "SIZE (GB)"), ("block_dev", "BLOCK DEV"),
                         ("is_started", "IS STARTED"), ("synced", "SYNCED"),
                         ("time", "TIME", duration_cell("time")),
                         ("device", "DEVICE"), ("nas", "NAS"), ("state", "STATE")])
