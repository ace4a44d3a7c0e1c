"""Copy jobs: the node steps the sync workflow and its monitor call on the SENDING host
(the NAS for NAS->VM, the compute node for the pull back).

* ``copy.start``   ensure a copy of SNAPSHOT to TO_ADDRESS:TO_DATASET runs or has run:
                   starts a detached job (imgstor.remote.jobs + copyjob) unless one for
                   that destination runs already (then its status comes back, nothing
                   starts).  A job whose snapshot is on the destination already (same
                   guid) ends at once as ``done`` with ``already: true``: a finished
                   progress file alone is not trusted (the destination may be gone).
* ``copy.status``  read-only: the job's progress (state running|done|failed|cancelled|
                   died|none, phase, bytes_done/bytes_total, stages with rc, error tail).
* ``copy.cancel``  stop the job's process group and, unless ``keep_partial``, drop the
                   destination's partial receive through the sync gate (``zfs receive -A``).

One job per destination (receiving host alias + dataset): ``copy@ALIAS:POOL%VOL``.
The receiving side runs nothing of imgstor but the sync gate (imgstor.remote.syncgate),
reached with imgstor's own key (steps ``sync.install_key`` / ``sync.authorize``).
"""
from __future__ import annotations

import json
import shlex

from imgstor.errors import Conflict, NotFound, RemoteCommandError, UsageError
from imgstor.remote import copyjob, jobs
from imgstor.remote.copyjob import Peer
from imgstor.remote.drivers import zfs
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import StepResult
from imgstor.remote.steps.registry import step
from imgstor.remote.util import run_mapped

__all__ = ["prepare", "start", "status", "status_facts", "cancel"]

# the launcher and the killer; unit tests replace them (a scenario must not fork a real
# job nor signal a process group)
_launch = jobs.start
_cancel = jobs.cancel
JOBS_BASE: str | None = None          # None: jobs.JOBS_DIR
RECEIVER_WAIT = 30                    # seconds copy.cancel waits for the receiver's end


def _peer(to_address: str, to_alias: str, to_dataset: str, port: int, user: str) -> Peer:
    return Peer(to_address, to_alias, to_dataset, int(port), user)


@step("copy.start")
def start(ex: Executor, *, snapshot: str, to_address: str, to_alias: str, to_dataset: str,
          base: str | None = None, port: int = 22, user: str = "root", bwlimit: int | str = 0,
          compress: str = "", create_snapshot: bool = False, key_dir: str = copyjob.KEY_DIR,
          connect_timeout: int = 10, stall_timeout: int = 600,
          rollback: bool = False, intermediate: bool = False) -> StepResult:
    """Ensure SNAPSHOT (POOL/DS@SNAP on this host) is being, or has been, copied to
    TO_DATASET on TO_ALIAS (reached at TO_ADDRESS) — incrementally from BASE if given
    (``-I`` with INTERMEDIATE; ``base="auto"``: from the newest snapshot both sides have,
    same guid, or a full copy when the destination does not exist).
    Runs ``zfs list`` (and ``zfs snapshot`` with CREATE_SNAPSHOT) here, then starts the
    job; the job does the rest (see imgstor.remote.copyjob).  ROLLBACK (incremental only,
    for the pull back): the receiver first rolls the destination back to BASE, its newest
    snapshot, discarding changes made there since (a NAS copy's atime)."""
    copyjob.check_snapshot(snapshot)
    if base is not None and base != "auto":
        copyjob.check_snapshot(base)
        if base.split("@")[0] != snapshot.split("@")[0]:
            raise UsageError(f"base {base} is not a snapshot of {snapshot.split('@')[0]}")
    if rollback and not base:
        raise UsageError("rollback needs base (it is for incremental streams only)")
    if intermediate:
        # zfs send -I writes a compound stream (seen on zfs-fuse and OpenZFS), which the
        # sync gate refuses (it may carry properties): one incremental, -i, instead
        raise UsageError("intermediate (zfs send -I) sends a compound stream, which the "
                         "sync gate refuses; send one incremental (-i) from the base")
    if compress not in ("", "zstd"):
        raise UsageError(f"bad compress {compress!r}: \"\" or \"zstd\"")
    peer = _peer(to_address, to_alias, to_dataset, port, user)
    rate = copyjob.parse_rate(bwlimit)
    name = copyjob.job_name(to_alias, to_dataset)
    st = jobs.status(name, base=JOBS_BASE)
    if st["state"] == "running":
        return StepResult(False, {**st, "started": False},
                          f"copy to {to_alias}:{to_dataset} is running already")
    made = False
    for snap in ([base] if base and base != "auto" else []) + [snapshot]:
        if not zfs.exists(ex, snap):
            if snap == snapshot and create_snapshot:
                run_mapped(ex, zfs.snapshot(snap), zfs.classify)
                made = True
            else:
                raise NotFound(f"{ex.host}: snapshot {snap} does not exist")
    spec = {"snapshot": snapshot, "base": base, "to": peer.to_dict(), "bwlimit": rate,
            "compress": compress, "key_dir": key_dir, "connect_timeout": int(connect_timeout),
            "stall_timeout": int(stall_timeout), "rollback": bool(rollback),
            "intermediate": bool(intermediate)}
    shown_base = None if base == "auto" else base       # decided by the job
    plan = [copyjob.send_argv(snapshot, base=shown_base, intermediate=intermediate)] + \
        ([copyjob.ZSTD] if compress else []) + \
        [copyjob.gate_argv(peer, "receive", *(["--zstd"] if compress else []),
                           *(["--incremental"] if base else []),
                           *([f"--rollback={shown_base.split('@', 1)[1]}"]
                             if rollback and shown_base else []),
                           key_dir=key_dir,
                           connect_timeout=int(connect_timeout))]
    # the pipeline the job runs, as one command: logged, or `SKIP> zfs send … | … | ssh …`
    launched = ex.call(" | ".join(shlex.join(a) for a in plan), _launch, name, spec,
                       copyjob.run, base=JOBS_BASE)
    if launched is None:                # a dry run
        return StepResult(True, {"job": name, "state": "none", "started": False,
                                 "snapshot_created": made}, f"would start job {name}")
    started, st = launched
    facts = {**st, "started": started, "snapshot_created": made}
    if started:
        return StepResult(True, facts, f"started copy job {name} (pid {st.get('pid')})")
    return StepResult(made, facts, f"copy job {name} is {st.get('state')}")


@step("copy.prepare")
def prepare(ex: Executor, *, snapshot: str, create_snapshot: bool = False) -> StepResult:
    """Ensure SNAPSHOT exists here (made with CREATE_SNAPSHOT) and tell its guid and the
    guids of its dataset's older snapshots, oldest first: what the frontend announces to
    the receiver (``sync.expect``) before ``copy.start``.  Runs ``zfs list``, ``zfs get
    guid`` (and ``zfs snapshot``)."""
    copyjob.check_snapshot(snapshot)
    ds, short = snapshot.split("@", 1)
    made = False
    if not zfs.exists(ex, snapshot):
        if not create_snapshot:
            raise NotFound(f"{ex.host}: snapshot {snapshot} does not exist")
        run_mapped(ex, zfs.snapshot(snapshot), zfs.classify)
        made = True
    if ex.dry_run and made:
        return StepResult(True, {"guid": "", "older": [], "snapshot_created": True},
                          f"would snapshot {snapshot}")
    snaps = zfs.snapshots_by_age(ex, ds)
    r = ex.run(["zfs", "get", "-H", "-p", "-o", "name,value", "guid", *snaps],
               read_only=True) if snaps else None
    guids = dict(copyjob.parse_snapshot_guids(r.stdout if r else "", ds))
    names = [s.split("@", 1)[1] for s in snaps]
    older = [[n, guids.get(n, "")] for n in names[:names.index(short)]] \
        if short in names else []
    return StepResult(made, {"guid": guids.get(short, ""), "older": older,
                             "snapshot_created": made},
                      f"{snapshot}: guid {guids.get(short, '?')}")


def status_facts(to_alias: str, to_dataset: str) -> dict:
    """The copy job's progress file and whether its process lives (``died``: ended
    without a result; the caller starts it again), with ``percent``."""
    name = copyjob.job_name(to_alias, to_dataset)
    st = jobs.status(name, base=JOBS_BASE)
    total, done = st.get("bytes_total"), st.get("bytes_done") or 0
    if total:
        st["percent"] = min(100.0, round(100.0 * done / total, 1))
    return st


@step("copy.status", read_only=True)
def status(ex: Executor, *, to_alias: str, to_dataset: str) -> StepResult:
    """Read-only: the copy job's progress (``status_facts``)."""
    st = status_facts(to_alias, to_dataset)
    return StepResult(False, st, f"{st['job']}: {st['state']}")


@step("copy.cancel")
def cancel(ex: Executor, *, to_alias: str, to_dataset: str,
           keep_partial: bool = False) -> StepResult:
    """Ensure no copy job to TO_ALIAS:TO_DATASET runs (SIGTERM, then SIGKILL, to its
    process group) and, unless KEEP_PARTIAL, that the destination holds no partial
    receive: asks the gate for the destination's state and, if it holds a resume token,
    runs ``imgstor-sync-gate abort`` (``zfs receive -A``).  A complete dataset is never
    touched; zfs-fuse leaves no partial dataset when a receive breaks."""
    name = copyjob.job_name(to_alias, to_dataset)
    st = jobs.status(name, base=JOBS_BASE)
    spec = jobs.read_json(jobs.job_dir(name, JOBS_BASE) + "/spec")
    changed = False
    if st["state"] == "running":
        # stopped=None in a dry run: nothing was called
        stopped = ex.call(f"kill job {name}", _cancel, name, base=JOBS_BASE)
        st = stopped if stopped is not None else st
        changed = True
    facts = {**st, "aborted_partial": False}
    if not keep_partial and spec:
        peer = Peer.from_dict(spec["to"])
        kw = {"key_dir": spec.get("key_dir", copyjob.KEY_DIR),
              "connect_timeout": int(spec.get("connect_timeout", 10))}
        argv = copyjob.gate_argv(peer, "state", **kw)
        # the receiver notices the broken stream a moment after our side is gone: wait
        # (bounded) until its receive has ended, so a partial it leaves is seen and dropped
        for _ in range(RECEIVER_WAIT):
            r = ex.run(argv, read_only=True, check=False, timeout=120)
            if r.rc != 0:
                raise RemoteCommandError(ex.host, argv, r.rc, r.stderr, r.stdout)
            try:
                dest = json.loads(r.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise RemoteCommandError(ex.host, argv, r.rc, "unreadable sync gate answer",
                                         r.stdout) from None
            if not dest.get("receiving") or ex.dry_run:
                break
            ex.fs.sleep(1)
        else:
            raise Conflict(f"{peer.alias}: a receive into {peer.dataset} still runs "
                           f"{RECEIVER_WAIT}s after the job stopped; try again")
        if dest.get("token"):            # a partial, resumable receive: drop it
            argv = copyjob.gate_argv(peer, "abort", **kw)
            r = ex.run(argv, check=False, timeout=120)
            if r.rc != 0 and not r.skipped:
                raise RemoteCommandError(ex.host, argv, r.rc, r.stderr, r.stdout)
            facts["aborted_partial"] = True
            changed = True
    return StepResult(changed, facts, f"{name}: {facts['state']}"
                      + ("; partial receive dropped" if facts["aborted_partial"] else ""))
