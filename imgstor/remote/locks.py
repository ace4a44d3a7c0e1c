"""Node-side locks: one writer per volume and per tgt/LIO configuration on a node.

The frontend's busy marker only knows the frontend's process.  A node step orphaned by a
killed frontend, a timeout or a lost connection keeps running to its end (the node process
reads its whole request first and answers last), so "run it again" could run the same
steps twice at once on the node (audit M3).  And steps of *different* volumes on one NAS
race on shared configuration: tgt tids, rtslib's fixed ``saveconfig.json.temp`` (M11).

So the node process itself holds ``fcntl.flock`` locks in ``/run/imgstor/lock`` (0700,
root's; per boot, like the zipapp):

* one per volume, ``vol%POOL%VOL`` (or ``iqn%IQN`` for a step that names only a target),
  taken by ``imgstor.remote.node`` for the whole step or batch from the step arguments;
* ``targets``, taken by ``nas.ensure_target`` / ``nas.remove_target`` around their
  read-modify-save of the target configuration;
* ``sync-keys``, taken by ``sync.install_key`` / ``sync.authorize`` / ``sync.revoke``
  (``sync_keys()``) around their
  read-modify-write of imgstor's known_hosts and of root's authorized_keys: a batch's
  first trusts at once lost lines without it (audit L2; seen as "Permission denied" in a
  20-VM storm on the lab);
* ``initiator``, taken by ``compute.attach`` / ``compute.detach`` (iscsiadm) around their
  changes of open-iscsi's node database: two discoveries at once on one node fail with
  exit 11 (ISCSI_ERR_IDBM; seen on the kernel lab with concurrent maps of two volumes to
  one node), and a discovery rewrites the records of every target of that portal.

Order is always volume locks (sorted) before ``targets`` / ``initiator`` / ``sync-keys``, so two
processes never wait on
each other in a cycle.  The kernel drops a flock when its process dies, so a killed step
leaves no stale lock.  Waiting is normal (bounded); a wait that runs out is a
``BusyError`` naming the holder's pid and command line (written into the lock file).

Standard library only: shipped to nodes in the zipapp.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import time
from typing import Iterable, Iterator

from imgstor.errors import BusyError, UsageError

__all__ = ["LOCK_DIR", "LOCK_DIR_ENV", "TARGETS", "INITIATOR", "SYNC_KEYS", "VOLUME_WAIT",
           "TARGETS_WAIT", "hold", "sync_keys",
           "volume_lock_names", "lock_dir", "holder"]

LOCK_DIR = "/run/imgstor/lock"
LOCK_DIR_ENV = "IMGSTOR_LOCK_DIR"      # tests point this at a temp dir
TARGETS = "targets"
INITIATOR = "initiator"
SYNC_KEYS = "sync-keys"
VOLUME_WAIT = 300.0     # an orphaned step may still be waiting for a device (30 s) or a
                        # zfs-fuse destroy retry (10 s); a batch is a few of those
TARGETS_WAIT = 120.0    # one target change: tgtadm calls or rtslib + saveconfig (TCG: ~10 s)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:%-]{0,250}")


def lock_dir() -> str:
    return os.environ.get(LOCK_DIR_ENV) or LOCK_DIR


def volume_lock_names(args: dict) -> list[str]:
    """The volume lock a step with these arguments needs: ``vm%VM`` for a VM's guest
    (``runner`` and ``vm``), ``vol%POOL%VOL`` when it names a
    volume, else ``iqn%IQN`` when it names a target, else none.  (``%`` is in no valid
    pool, volume or IQN, so the encoding is injective.)"""
    pool, vol, iqn = args.get("pool"), args.get("vol"), args.get("iqn")
    vm = args.get("vm")
    if isinstance(vm, str) and vm and "runner" in args:      # a VM's guest (steps/vm.py)
        return [_check(f"vm%{vm}")]
    if isinstance(pool, str) and isinstance(vol, str) and pool and vol:
        return [_check(f"vol%{pool}%{vol}")]
    if isinstance(iqn, str) and iqn:
        return [_check(f"iqn%{iqn.lower()}")]
    return []


def _check(name: str) -> str:
    if not _NAME.fullmatch(name) or ".." in name:
        raise UsageError(f"refusing lock name {name!r}", field="lock")
    return name


def _ensure_dir(path: str) -> None:
    """Make the lock directory (0700); refuse one that is a symlink, not ours, or open to
    others (a local user must not be able to plant or hold our locks)."""
    parent = os.path.dirname(path)
    for d in (parent, path):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
    st = os.lstat(path)
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
            or st.st_mode & 0o077):
        raise BusyError(f"{path}: lock directory is not a 0700 directory owned by uid "
                        f"{os.geteuid()}; refusing to use it", path=path)


def holder(path: str) -> str:
    """Who wrote the lock file last (the holder while it is locked): 'pid N (cmdline)'."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            pid = f.read(32).strip()
    except OSError:
        return "unknown"
    if not pid.isdigit():
        return "unknown"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read(300).replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "gone"
    return f"pid {pid} ({cmd})"


def _take(path: str, timeout: float, what: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise BusyError(f"{os.uname().nodename}: {what} is locked by {holder(path)} "
                                f"for more than {timeout:.0f}s (a step still running there, "
                                "maybe of a killed command; it ends by itself)",
                                lock=os.path.basename(path), holder=holder(path))
            time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def hold(names: Iterable[str], *, timeout: float | None = None,
         what: str | None = None) -> Iterator[None]:
    """Hold the named locks (sorted, so every process takes them in the same order),
    waiting up to ``timeout`` seconds (default ``VOLUME_WAIT``) for each."""
    timeout = VOLUME_WAIT if timeout is None else timeout
    names = sorted({_check(n) for n in names})
    if not names:
        yield
        return
    d = lock_dir()
    _ensure_dir(d)
    fds: list[int] = []
    try:
        for n in names:
            fds.append(_take(os.path.join(d, n), timeout, what or f"lock {n}"))
        yield
    finally:
        for fd in reversed(fds):
            os.close(fd)          # closing the last fd drops the flock


@contextlib.contextmanager
def sync_keys(*, dry_run: bool) -> Iterator[None]:
    """The ``sync-keys`` lock around a read-modify-write of imgstor's sync known_hosts or
    of root's authorized_keys (audit L2: two first trusts at once each wrote back what it
    had read, losing the other's line).  A dry run writes nothing and takes no lock."""
    if dry_run:
        yield
        return
    with hold([SYNC_KEYS], timeout=TARGETS_WAIT, what="the sync keys"):
        yield
