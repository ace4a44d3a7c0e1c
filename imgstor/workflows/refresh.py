"""``imgstor refresh [--quiet]``: what cron runs every minute (contrib/imgstor.cron, or the
systemd timer in contrib/).  It only starts things and returns; it never waits on a copy.

1. One refresh at a time: an ``flock`` on ``<state file>.refresh.lock``, which names the
   holder (pid, since).  A second run while one holds it exits 0 at once and prints
   nothing (cron must not pile up) -- unless the holder has held it longer than
   ``STALE_LOCK`` seconds: then it is hung, and the run says so (``BusyError``, exit 5).
   Then every configured host is probed at once, in the background, over the run's one
   bounded connection pool (imgstor/workflows/probe.py); the answers (up/down, since
   when, rebooted) are rows, the record ``<state file>.hosts.json`` and metrics.
2. Dead monitors: every job that no monitor runs (its lock is free) and that has not
   failed goes to a detached monitor (``monitor.resume_all``: one for all of them; each
   job continues from its recorded phase, after its backoff if a try failed).  A failed
   job is reported and left (``imgstor monitor --resume`` or ``imgstor repair``).
3. Periodic pulls: every sync volume that is ``mapped`` on its local copy (no target), not
   busy (a user command holds it) and without a job, whose last pull (``extra.last_pull``,
   else the time it became mapped) is at least its frequency old -- the volume's
   ``frequency`` (zvolattr), else its NAS's (storageattr), else the NAS's
   ``sync_frequency`` in the config (imgstor/workflows/syncattrs.py) -- gets a ``pull``
   job and its monitor
   (imgstor/workflows/storagemap/pull.py).  The check and the job's record are one
   transaction, so two refreshes (or a refresh and an unmap) cannot both start work.
4. Restore (``check.restore``): a mapped volume whose target or ACL is missing on its
   NAS (tgtd restarted, a NAS rebooted), whose iSCSI session or sync overlay is missing on
   its node (a node rebooted, a killed qemu-storage-daemon) gets it back; a sync overlay
   is rebuilt over its temp-write store (before the pivot) or its local copy (after).
5. The guests of VM runners (issue 27; imgstor/workflows/guests.py): each node with a
   guest recorded running is asked (read-only ``vm.list``) which still run; one gone is
   recorded ``exited`` -- what ``list host vm`` shows as GUEST.
6. With ``[state] metrics_path``: the node_exporter textfile (imgstor/metrics.py).
7. Job logs and progress files of jobs that are gone, older than ``[log] job_log_days``,
   are removed (``jobs.prune_logs``).
8. The store's journal is folded into its file (``Store.fold``): whole again at least once
   a minute.

It prints one row per thing it found and what it did (``--json``: the same rows;
``--quiet``: nothing when all went well).  What went wrong goes to stderr whatever the
flags, so that cron mails it: a line per failure of its own work -- a monitor, restore or
pull it could not start, the metrics file it could not write -- and then exit 1
(``EXIT_FAILED``); a line when a host goes down (up or unknown before, down now; not
again while it stays down, which the metrics and the rows show), exit 0.  A state file it
cannot read is the store's ``StateError`` (exit 4).  Each thing it did is a line of the
audit trail (imgstor/audit.py): a host that went down, came back or rebooted, a monitor or
a pull it started, what it restored, a failure, the job logs it removed; a run that did
nothing logs nothing.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time

from imgstor import jobs as jobmod
from imgstor import metrics
from imgstor.errors import BusyError, ImgstorError
from imgstor.faults import fault
from imgstor.output import Output, printable
from imgstor.state.store import pid_alive, this_host
from imgstor.workflows import syncattrs
from imgstor.workflows.context import Ctx
from imgstor.workflows.syncattrs import due

__all__ = ["refresh", "lock_path", "STALE_LOCK", "EXIT_FAILED", "RefreshFailed"]

# A refresh only starts things: seconds, or a few minutes on hundreds of hosts that do not
# answer (connect timeouts, max_connections at a time).  Held longer, it is hung; the
# systemd unit's TimeoutStartSec (contrib/imgstor-refresh.service) is the same bound.
STALE_LOCK = 900
EXIT_FAILED = 1


class RefreshFailed(ImgstorError):
    """Part of refresh's own work failed (each failure was said on stderr)."""

    exit_code = EXIT_FAILED

_COLUMNS = [("what", "WHAT"), ("host", "HOST"), ("volume", "VOLUME"), ("job", "JOB"),
            ("action", "ACTION")]
_JSON_EXTRA = ["role", "up", "seconds", "boot_id", "since", "rebooted", "error"]


def lock_path(ctx: Ctx) -> str:
    return ctx.store.path + ".refresh.lock"


def _busy_live(v) -> bool:
    b = v.busy
    return b is not None and (b.host != this_host() or pid_alive(b.pid, b.starttime))


def refresh(ctx: Ctx, quiet: bool = False) -> Output | None:
    # cron's run on a new install, before anything is recorded, must not mail every minute:
    # the missing file is said by every other command (and refresh without --quiet)
    ctx.store.quiet_missing = quiet
    os.makedirs(os.path.dirname(os.path.abspath(ctx.store.path)), mode=0o700, exist_ok=True)
    fd = os.open(lock_path(ctx), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _check_holder(ctx, fd)          # raises when the holder is hung
            return None                     # another refresh runs: nothing to say
        _name_holder(fd)
        rows, hosts = _refresh(ctx)
    finally:
        os.close(fd)                        # releases the flock
    for h in hosts:
        if h.went_down:
            _say(f"host {h.host} ({h.role}) is down: {h.error}")
    failed = [r for r in rows if r.pop("failed", False)]
    for r in failed:                        # "job nas-0-0/v pull-…: could not start …"
        subject = [r[k] for k in ("what", "host", "volume", "job") if r.get(k)]
        _say(f"{' '.join(subject)}: {r['action']}")
    if not ctx.dry_run:
        _audit(ctx, rows, hosts, failed)
    if quiet:
        if failed:
            raise RefreshFailed(f"refresh: {len(failed)} of its actions failed (above)")
        return None
    return Output(rows, _COLUMNS, json_extra=_JSON_EXTRA,
                  exit_code=EXIT_FAILED if failed else 0)


def _say(text: str) -> None:
    print(f"imgstor refresh: {printable(text)}", file=sys.stderr, flush=True)


def _name_holder(fd: int) -> None:
    """Write who holds the refresh lock into the lock file (the flock is the lock; this
    is what the next run reads when it cannot get it)."""
    data = json.dumps({"pid": os.getpid(), "since": time.time(),
                       "cmd": " ".join(sys.argv)[:300]}).encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass                                # the lock still works without its name


def _check_holder(ctx: Ctx, fd: int) -> None:
    try:
        h = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since, pid = float(h["since"]), int(h["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return                              # an older imgstor's lock: nothing to judge
    age = time.time() - since
    if age > STALE_LOCK:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        raise BusyError(f"refresh: another refresh (pid {pid}: {printable(str(h.get('cmd')))}) "
                        f"has held {lock_path(ctx)} since {when}, {age / 60:.0f} minutes, "
                        f"longer than the {STALE_LOCK // 60} minutes a refresh may take: it "
                        f"is hung, and no refresh runs until it ends (look at it, then "
                        f"kill {pid})", pid=pid)


def _refresh(ctx: Ctx) -> tuple[list[dict], list]:
    from imgstor.workflows import probe
    from imgstor.workflows.monitor import resume_all
    fault("refresh")            # IMGSTOR_PAUSE=refresh:S holds the lock a while (tests)
    probing = probe.start(ctx)  # every host at once, in the background, over the pool
    rows: list[dict] = []
    # 1. monitors whose owner is gone
    for r in resume_all(ctx).rows:
        rows.append({"what": "job", "volume": r["volume"], "job": r["job"],
                     "action": r["action"], "failed": r.get("failed", False)})
    # 2. what a reboot or a daemon restart lost: targets, sessions, overlays
    rows += _restore(ctx)
    # 3. periodic pulls
    rows += _pulls(ctx)
    # 4. the guests of VM runners: which still run (list host vm's GUEST)
    rows += _guests(ctx)
    hosts = probing.wait()
    probe.record(ctx, hosts)
    rows = probe.rows(hosts) + rows
    # 5. metrics
    if ctx.config.metrics_path:
        rows.append(_metrics(ctx, hosts))
    # 6. old job logs
    rows += _prune(ctx)
    # 7. the store's journal folded into its file: whole again at least once a minute
    if not ctx.dry_run:
        ctx.store.fold()
    return rows, hosts


def _prune(ctx: Ctx) -> list[dict]:
    if ctx.dry_run:
        return []
    days = ctx.config.log.job_log_days
    gone = jobmod.prune_logs(ctx.store, days, set(ctx.store.read().jobs))
    if not gone:
        return []
    return [{"what": "jobs", "host": None, "volume": None, "job": None,
             "action": f"removed {len(gone)} job files older than {days:g} days"}]


def _audit(ctx: Ctx, rows: list[dict], hosts: list, failed: list[dict]) -> None:
    """One audit line per row that did something, failed, or found something new: not
    the hosts that are up as before, the pulls not yet due, the monitors that run."""
    from imgstor import audit
    news = {h.host for h in hosts if h.went_down or h.rebooted or (h.up and h.changed)}
    bad = {id(r) for r in failed}
    for r in rows:
        what, action = r["what"], r["action"]
        if what == "host":
            if r["host"] not in news:
                continue
        elif what in ("pull", "job"):
            if id(r) not in bad and not action.startswith("started"):
                continue
        elif what in ("metrics", "guest") and id(r) not in bad:
            continue
        failure = id(r) in bad or action.startswith(("DOWN", "left"))
        audit.record(ctx, what=f"refresh {what}", target=r.get("host") or r.get("volume"),
                     result="failed" if failure else "ok", job=r.get("job"), message=action)


def _restore(ctx: Ctx) -> list[dict]:
    """workflows/check.py's ``restore``: put back what mapped volumes lost (only starts
    things: a target, a login, an overlay daemon; never a copy)."""
    from imgstor.workflows.check import restore
    return [{"what": r["what"], "volume": r["subject"], "job": None,
             "action": f"{r['found']}: {r['action']}", "failed": r.get("failed", False)}
            for r in restore(ctx)]


def _guests(ctx: Ctx) -> list[dict]:
    from imgstor.workflows.guests import observe
    try:
        return observe(ctx)
    except ImgstorError as e:
        return [{"what": "guest", "volume": None, "job": None,
                 "action": f"not observed: {e.message.splitlines()[0]}"}]


def _pulls(ctx: Ctx) -> list[dict]:
    from imgstor.workflows.storagemap.pull import start_pull
    from imgstor.workflows.storagemap.sync import start_jobs
    now = time.time()
    rows: list[dict] = []
    started: list[tuple] = []
    st = ctx.store.read()
    for v in sorted(st.volumes.values(), key=lambda v: v.key):
        try:        # the volume's frequency, else its NAS's, else sync_frequency
            freq = syncattrs.frequency(st, ctx.config, v.nas, v.vol)
        except ImgstorError:
            continue
        left = due(v, freq, now)
        if left is None:
            continue
        if st.jobs_of(v.key):
            continue                        # its job (a pull, an unmap) is reported above
        if v.busy is not None and _busy_live(v):
            rows.append({"what": "pull", "volume": v.key, "job": None,
                         "action": f"due, skipped: busy ({v.busy.op}, pid {v.busy.pid})"})
            continue
        if left > 0:
            rows.append({"what": "pull", "volume": v.key, "job": None,
                         "action": f"next in {int(left)}s"})
            continue
        if ctx.dry_run:
            rows.append({"what": "pull", "volume": v.key, "job": None,
                         "action": "due: would start a pull"})
            continue
        job = None
        with ctx.store.transaction() as tx:       # check again under the lock
            vv = tx.volumes.get(v.key)
            if vv is not None and not tx.jobs_of(v.key) and not _busy_live(vv) \
                    and (d := due(vv, freq, time.time())) is not None and d <= 0:
                job = start_pull(tx, v.key)
        if job is None:
            rows.append({"what": "pull", "volume": v.key, "job": None,
                         "action": "changed meanwhile, not started"})
            continue
        row = {"what": "pull", "volume": v.key, "job": job.id,
               "action": "started (NAS<-VM sched)"}
        started.append((job, row))
        rows.append(row)
    if started and not start_jobs(ctx, [j for j, _ in started]):   # one monitor for all
        for _, row in started:
            row.update(failed=True, action="recorded, but its monitor could not start")
    return rows


def _metrics(ctx: Ctx, hosts: list) -> dict:
    st = ctx.store.read()
    progress = {j: jobmod.read_progress(ctx.store, j) for j in st.jobs}
    states = {j.id: jobmod.shown_state(ctx.store, j) for j in st.jobs.values()}
    path = ctx.config.metrics_path
    if ctx.dry_run:
        return {"what": "metrics", "volume": None, "job": None, "action": f"{path} would be "
                "written"}
    failed = False
    try:
        metrics.write(path, metrics.render(st.volumes.values(), st.jobs.values(), progress,
                                          hosts=hosts, job_states=states))
        action = "written"
    except (OSError, ImgstorError) as e:
        action, failed = f"could not write: {e}", True
    return {"what": "metrics", "volume": None, "job": None, "action": f"{path} {action}",
            "failed": failed}
