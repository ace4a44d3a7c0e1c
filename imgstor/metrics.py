"""The node_exporter textfile ``imgstor refresh`` writes (``[state] metrics_path``).

Pure text building (``render``) plus one atomic write (``write``: temp file beside the
target, fsync, ``os.replace``, mode 0644 set on the open file), so node_exporter's textfile
collector never reads half a file.  The directory must be root's (this user's) and not
writable by group or others (``check_dir``): another account that may rename files there
could swap the file root writes (audit M2).  The format is Prometheus' text exposition
format 0.0.4: ``# HELP`` and ``# TYPE`` once per metric family, label values escaped
(``\\`` ``\\"`` ``\\n``).

Families (all gauges):
    imgstor_volume_state{nas,zpool,vol,host,mode,state}   1 for the volume's state, 0 for
                                                          each other state
    imgstor_sync_lag_seconds{nas,zpool,vol,host}          sync volumes: age of the last pull
                                                          (or of the copy that made it mapped)
    imgstor_job_progress_ratio{nas,vol,job,kind,phase}    0..1 where a copy reports bytes
    imgstor_jobs{state}                                   jobs by state: running, ready
                                                          (no monitor), retry, failed
    imgstor_job_attempts{nas,vol,job,kind,phase}          failed tries of the job's phase
    imgstor_volume_last_error{nas,zpool,vol}              1 when the volume or its job has an
                                                          error recorded, else 0
    imgstor_volume_last_error_info{nas,zpool,vol,message} 1, only while there is an error
    imgstor_foreign_snapshot{nas,zpool,vol,snapshot}     1 per NAS snapshot made after the
                                                          last common one: sends back stop
    imgstor_host_up{host,role}                            1 when refresh reached the host over
                                                          SSH, else 0 (every configured host)
    imgstor_host_probe_seconds{host,role}                 how long that probe took (to the
                                                          answer, or to the failure)
    imgstor_refresh_timestamp_seconds                     when this file was written
"""
from __future__ import annotations

import os
import time
from typing import Iterable

from imgstor import atomicfile
from imgstor.errors import ConfigError
from imgstor.state.model import JOB_STATES, VOLUME_STATES

__all__ = ["escape_label", "render", "write", "sync_lag", "check_dir"]


def escape_label(value: object) -> str:
    """A label value as the text format wants it: backslash, double quote and line feed
    escaped."""
    return (str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))


def _labels(d: dict) -> str:
    return "{" + ",".join(f'{k}="{escape_label("" if v is None else v)}"'
                          for k, v in d.items()) + "}"


def _num(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


def sync_lag(v, now: float) -> float | None:
    """Age of the NAS's copy of a sync volume's data: since the last pull, else since it
    became mapped (the copy); None for other volumes."""
    if v.mode != "sync" or v.state not in ("mapped", "NAS->VM", "merging"):
        return None
    last = v.extra.get("last_pull") or v.since
    return max(0.0, now - float(last)) if last else None


def render(volumes: Iterable, jobs: Iterable, progress: dict[str, dict], *,
           hosts: Iterable = (), now: float | None = None,
           job_states: dict[str, str] | None = None) -> str:
    """The textfile.  ``hosts``: refresh's probes (``probe.HostProbe``: host, role, up,
    seconds); ``job_states``: job id -> running | ready | retry | failed (jobs.shown_state;
    default: each job's recorded state)."""
    now = time.time() if now is None else now
    vols = sorted(volumes, key=lambda v: (v.nas, v.vol))
    jobs = sorted(jobs, key=lambda j: j.id)
    out: list[str] = []

    def family(name: str, help_: str, samples: list[tuple[dict, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            out.append(f"{name}{_labels(labels) if labels else ''} {_num(value)}")

    family("imgstor_volume_state", "1 for the state the volume is in, 0 for the others.",
           [({"nas": v.nas, "zpool": v.zpool, "vol": v.vol, "host": v.host or "",
              "mode": v.mode or "", "state": s}, 1 if v.state == s else 0)
            for v in vols for s in VOLUME_STATES])
    family("imgstor_sync_lag_seconds", "Age of the NAS's copy of a sync volume (last pull "
           "or copy).", [({"nas": v.nas, "zpool": v.zpool, "vol": v.vol, "host": v.host or ""},
                          lag) for v in vols if (lag := sync_lag(v, now)) is not None])
    by_key = {v.key: v for v in vols}
    prog = []
    for j in jobs:
        p = progress.get(j.id) or {}
        done, total = p.get("done"), p.get("total")
        if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
            v = by_key.get(j.volume)
            prog.append(({"nas": v.nas if v else "", "vol": v.vol if v else j.volume,
                          "job": j.id, "kind": j.kind, "phase": j.phase},
                         min(1.0, max(0.0, done / total))))
    family("imgstor_job_progress_ratio", "Progress of a job's copy, 0 to 1.", prog)
    shown = {j.id: (job_states or {}).get(j.id, j.state) for j in jobs}
    family("imgstor_jobs", "Jobs by state: running (a monitor runs it), ready (waiting for "
           "a monitor), retry (a try failed; the next is scheduled), failed (the retry "
           "policy gave up).", [({"state": s}, sum(1 for x in shown.values() if x == s))
                                 for s in ("running", *JOB_STATES)])
    family("imgstor_job_attempts", "Failed tries of the job's current phase.",
           [({"nas": by_key[j.volume].nas if j.volume in by_key else "",
              "vol": by_key[j.volume].vol if j.volume in by_key else j.volume,
              "job": j.id, "kind": j.kind, "phase": j.phase}, j.attempts) for j in jobs])
    errs: dict[str, str | None] = {}
    for v in vols:
        errs[v.key] = v.error
    for j in jobs:
        if j.last_error and j.volume in errs and not errs[j.volume]:
            errs[j.volume] = f"job {j.id} ({j.kind} {j.phase}): {j.last_error}"
    family("imgstor_volume_last_error", "1 when the volume or its job has an error "
           "recorded.", [({"nas": v.nas, "zpool": v.zpool, "vol": v.vol},
                          1 if errs[v.key] else 0) for v in vols])
    family("imgstor_volume_last_error_info", "The recorded error, in label message.",
           [({"nas": v.nas, "zpool": v.zpool, "vol": v.vol, "message": (errs[v.key] or "")[:500]}, 1)
            for v in vols if errs[v.key]])
    family("imgstor_foreign_snapshot", "1 for each NAS snapshot, made after the last "
           "common one, that stops a sync volume's sends back (imgstor never destroys it).",
           [({"nas": v.nas, "zpool": v.zpool, "vol": v.vol, "snapshot": snap}, 1)
            for v in vols for snap in v.extra.get("foreign_snapshots") or ()])
    hosts = list(hosts)
    family("imgstor_host_up", "1 when imgstor refresh reached the host over SSH, else 0.",
           [({"host": h.host, "role": h.role}, 1 if h.up else 0) for h in hosts])
    family("imgstor_host_probe_seconds", "How long refresh's probe of the host took (to "
           "its answer, or to the failure).",
           [({"host": h.host, "role": h.role}, round(h.seconds, 6)) for h in hosts])
    family("imgstor_refresh_timestamp_seconds", "When imgstor refresh wrote this file.",
           [({}, round(now, 3))])
    return "\n".join(out) + "\n"


def check_dir(d: str) -> None:
    """Refuse (``ConfigError``) a metrics directory another account could write in: not
    owned by this user (root), or writable by its group or others.  A missing one is
    the ``OSError`` of ``os.stat``."""
    st = os.stat(d)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigError(
            f"metrics directory {d} is owned by uid {st.st_uid} with mode "
            f"{st.st_mode & 0o7777:o}: another account could swap the file imgstor writes "
            f"there; it must be owned by uid {os.geteuid()} and not writable by group or "
            f"others (chown {os.geteuid()} {d}; chmod go-w {d}), e.g. node_exporter's "
            "textfile directory made by root", key="state.metrics_path")


def write(path: str, text: str) -> None:
    """Replace ``path`` atomically (a hidden temp file in its directory, which
    node_exporter's textfile collector ignores; fsync, rename; 0644) in a directory
    ``check_dir`` accepts."""
    d = os.path.dirname(os.path.abspath(path))
    check_dir(d)
    atomicfile.replace(path, text.encode(), mode=0o644,
                       tmp=os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}"))
