"""Handing jobs to a monitor: ``launch`` (imgstor/jobs.py has the jobs themselves).

A monitor process runs many jobs (workflows/monitor.py).  ``launch`` hands jobs to the
running *pool* monitor of this config: it writes ``jobs/queue-KEY/ID`` and tries the
pool's lock ``jobs/monitor-KEY.lock``; a pool holding it takes the queued jobs within half
a second; if none does, launch starts one (``imgstor monitor --pool KEY``, detached) and
passes it the pool lock it has just taken (an inherited descriptor), so two launches at
once never start two pools.  KEY is the config file and the IMGSTOR_* environment: a job
runs under the config of the command that started it.  A job started with a test hook
(HOOK_ENV) gets a monitor of its own, started with it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
from typing import Sequence

from imgstor.jobs import JOB_ID_RE, check_id, ensure_dir, job_dir
from imgstor.state.store import Store

__all__ = ["HOOK_ENV", "pool_key", "queue_dir", "pool_lock_path", "take_queued", "launch"]

# Test hooks (IMGSTOR_FAULT kills, IMGSTOR_PAUSE sleeps at a point): a job started with one
# of them gets a monitor of its own, started with them, never the pool's.
HOOK_ENV = ("IMGSTOR_FAULT", "IMGSTOR_PAUSE")


def pool_key(config_path: str) -> str:
    """The pool a job goes to: one per config file (as it is now) and IMGSTOR_* settings,
    so that a job never runs under another config than the command that started it."""
    path = os.path.abspath(config_path)
    try:
        st = os.stat(path)
        stamp = f"{st.st_mtime_ns}:{st.st_size}"
    except OSError:
        stamp = "-"
    env = sorted((k, v) for k, v in os.environ.items()
                 if k.startswith("IMGSTOR_") and not k.startswith("IMGSTOR_MONITOR"))
    return hashlib.sha256(json.dumps([path, stamp, env]).encode()).hexdigest()[:12]


def queue_dir(store: Store, key: str) -> str:
    return os.path.join(job_dir(store), f"queue-{key}")


def pool_lock_path(store: Store, key: str) -> str:
    return os.path.join(job_dir(store), f"monitor-{key}.lock")


def take_queued(store: Store, key: str) -> list[str]:
    """The job ids queued for pool KEY (their queue files removed)."""
    d = queue_dir(store, key)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(d, name))
        if JOB_ID_RE.fullmatch(name):
            out.append(name)
    return sorted(out)


def launch(store: Store, config_path: str, ids: list[str], *,
           self_argv: Sequence[str]) -> str:
    """Make sure a monitor runs each of ``ids`` soon: queued for this config's pool
    monitor if one runs (it takes them within a second), else a new one is started,
    detached (new session, stdin /dev/null, output appended to ``jobs/monitor.log``).
    With a test hook set (HOOK_ENV) the jobs get a monitor of their own.  ``self_argv``
    starts this imgstor again (``Ctx.self_argv``: ``python -m imgstor``, or the one-file
    build).  Says what it did."""
    ids = [check_id(i) for i in ids]
    if not ids:
        return "nothing to start"
    from imgstor import audit
    for job_id in ids:
        audit.job_started(job_id)            # the audit line of the command names the job
    d = ensure_dir(store)
    if any(os.environ.get(k) for k in HOOK_ENV):
        return f"started monitor pid {_spawn(d, config_path, ids, self_argv=self_argv)}"
    key = pool_key(config_path)
    q = queue_dir(store, key)
    os.makedirs(q, mode=0o700, exist_ok=True)
    for job_id in ids:
        os.close(os.open(os.path.join(q, job_id), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW,
                         0o600))
    fd = os.open(pool_lock_path(store, key), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            return f"handed to monitor pid {pid}"
        pid_ = _spawn(d, config_path, [], self_argv=self_argv, pool=key, lock_fd=fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{pid_}\n".encode(), 0)
        return f"started monitor pid {pid_}"
    finally:
        os.close(fd)          # the new monitor holds the lock now (inherited)


def _spawn(d: str, config_path: str, ids: list[str], *, self_argv: Sequence[str],
           pool: str | None = None, lock_fd: int | None = None) -> int:
    log_fd = os.open(os.path.join(d, "monitor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND
                     | os.O_NOFOLLOW, 0o600)
    env = {**os.environ, "IMGSTOR_MONITOR": pool or " ".join(ids)}
    if lock_fd is not None:
        os.set_inheritable(lock_fd, True)
        env["IMGSTOR_MONITOR_LOCK_FD"] = str(lock_fd)
    try:
        p = subprocess.Popen([*self_argv, "--config", os.path.abspath(config_path), "monitor",
                              *(["--pool", pool] if pool else []), *ids],
                             stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                             start_new_session=True, close_fds=True,
                             pass_fds=(lock_fd,) if lock_fd is not None else (),
                             cwd="/", env=env)
    finally:
        os.close(log_fd)
    return p.pid
