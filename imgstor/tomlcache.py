"""The config file's parsed TOML, kept between commands like Python keeps bytecode.

Every command reads the config; ``import tomllib`` (typing, datetime, string and the
regular expressions it compiles) and the parse are ~7 ms of a fresh process, a tenth of
``imgstor list host vm nas`` on 10,000 VMs (bench/bench_list_vm_nas.py).  ``load(path)``
returns what ``tomllib.load`` would, from ``CACHE_DIR`` (``/var/lib/imgstor/cache``: the
default state directory's, beside the node app cache) when the file is unchanged, as
``marshal`` data.  Never under ``$HOME``: root's cron and systemd give it different ones,
or none.  This module never makes the directory: the transport makes ``<state dir>/cache``
(0700) for the node app, so with the default ``[state] path`` the cache appears after the
first command that reached a host; with the state elsewhere there is simply no cache.

- Unchanged means the same device, inode, size, mtime and ctime (nanoseconds; ctime cannot
  be set by hand).  A file modified less than ``RACY`` seconds before it is read is not
  kept: timestamps are coarse (a kernel tick), and a second write within the same tick
  would otherwise look unchanged (git's "racy clean" rule).
- Only a directory owned by this user with mode 0700 and a file of this user's that no one
  else may write are read (``marshal`` must only ever load our own data); anything else,
  or any error, is a miss: the file is parsed as without a cache.
- Values ``marshal`` cannot keep (TOML dates) are simply not kept.
"""
from __future__ import annotations

import contextlib
import marshal
import os
import stat
import time

TYPE_CHECKING = False            # typing's import is ~2 ms of a command's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = ["load", "cache_dir", "RACY", "CACHE_DIR"]

RACY = 2.0
_VERSION = 1
CACHE_DIR = "/var/lib/imgstor/cache"     # the default [state] path's directory + /cache


def cache_dir() -> str:
    return CACHE_DIR


def _key(path: str, st: os.stat_result) -> tuple:
    return (_VERSION, path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _entry(d: str, path: str) -> str:
    """The cache file of ``path``: its name escaped (no hashlib: its import costs what
    the cache saves), or a digest for a very long one."""
    name = path.replace("%", "%25").replace("/", "%2F")
    if len(name) > 200:
        import hashlib
        name = hashlib.sha256(path.encode()).hexdigest()
    return os.path.join(d, name + ".marshal")


def _ours(st: os.stat_result, *, mode: int) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & mode


def load(path: str) -> dict[str, Any]:
    """``tomllib.load`` of ``path``, through the cache.  Raises what open() and tomllib
    raise (FileNotFoundError, OSError, tomllib.TOMLDecodeError)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        d, key = cache_dir(), _key(os.path.abspath(path), st)
        entry = _entry(d, key[1])
        raw = _read(d, entry, key)
        if raw is not None:
            return raw
        import tomllib
        raw = tomllib.load(f)
    if time.time() - st.st_mtime > RACY:
        _write(d, entry, key, raw)
    return raw


def _read(d: str, entry: str, key: tuple) -> dict | None:
    try:
        dst = os.lstat(d)
        if not (stat.S_ISDIR(dst.st_mode) and _ours(dst, mode=0o077)):
            return None
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not (stat.S_ISREG(os.fstat(fd).st_mode) and _ours(os.fstat(fd), mode=0o022)):
                return None
            got, raw = marshal.loads(f.read())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    return raw if got == key and type(raw) is dict else None


def _write(d: str, entry: str, key: tuple, raw: dict) -> None:
    tmp = f"{entry}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        data = marshal.dumps((key, raw))
        dst = os.lstat(d)                 # not there: no cache (never made here)
        if not (stat.S_ISDIR(dst.st_mode) and _ours(dst, mode=0o077)):
            return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, entry)
    except (OSError, ValueError):           # a cache we cannot write is no cache
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return
    _prune(d)


def _prune(d: str) -> None:
    """Drop the entries of config files that are gone (a write is rare: after an edit)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(d):
            if name.startswith("%2F") and name.endswith(".marshal"):
                path = name[:-len(".marshal")].replace("%2F", "/").replace("%25", "%")
                if not os.path.exists(path):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(d, name))
