"""Who uses a block device on this node: read-only checks before a disk is taken away.

A VM's qemu opens its disk (``/dev/sdX`` of an iSCSI session, or a dm device stacked on
it) without ``O_EXCL``, so no single kernel counter says "in use" for a plain sd device.
``users`` puts together what Linux shows:

* ``/sys/block/<dev>/holders/``: kernel holders stacked on the device (device-mapper:
  the dm overlay or linear device of sync mode, LVM, md), and on its partitions;
  a dm holder is named by ``/sys/block/dm-N/dm/name``;
* processes with the device (or one of its holders) open: ``/proc/<pid>/fd/*`` whose
  ``st_rdev`` is the device's (what ``fuser``/``lsof`` do), named by pid and ``comm``;
* an exclusive open (``O_EXCL``) failing with EBUSY: the kernel has it claimed (a mounted
  filesystem, swap, a holder) even when none of the above names it.

Standard library only: shipped to nodes in the zipapp.
"""
from __future__ import annotations

import errno
import os
import stat

__all__ = ["users", "holders", "openers", "claimed"]

SYS_BLOCK = "/sys/block"
PROC = "/proc"


def _name(dev: str) -> str:
    return os.path.basename(os.path.realpath(dev))


def _dm_name(kname: str) -> str | None:
    try:
        with open(os.path.join(SYS_BLOCK, kname, "dm", "name")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def holders(dev: str) -> list[str]:
    """Kernel names of the devices stacked on ``dev`` or its partitions (``dm-3``)."""
    kname = _name(dev)
    out: list[str] = []
    base = os.path.join(SYS_BLOCK, kname)
    dirs = [base] + [os.path.join(base, p) for p in _listdir(base) if p.startswith(kname)]
    for d in dirs:
        out += [h for h in _listdir(os.path.join(d, "holders")) if h not in out]
    return out


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _rdev(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def openers(devs: list[str]) -> list[str]:
    """'pid N (comm) has DEV open' for every process with one of ``devs`` open."""
    want = {r: d for d in devs if (r := _rdev(d)) is not None}
    if not want:
        return []
    me = os.getpid()
    out = []
    for pid in _listdir(PROC):
        if not pid.isdigit() or int(pid) == me:
            continue
        fddir = os.path.join(PROC, pid, "fd")
        for fd in _listdir(fddir):
            r = _rdev(os.path.join(fddir, fd))
            if r in want:
                try:
                    with open(os.path.join(PROC, pid, "comm")) as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                text = f"pid {pid} ({comm}) has {want[r]} open"
                if text not in out:
                    out.append(text)
    return out


def claimed(dev: str) -> bool:
    """True when an ``O_EXCL`` open fails with EBUSY (mounted, swap, a holder...)."""
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        return e.errno == errno.EBUSY
    os.close(fd)
    return False


def users(dev: str) -> list[str]:
    """Everything that holds ``dev`` now, in words for an error message; [] = unused."""
    out = []
    hs = holders(dev)
    for h in hs:
        dm = _dm_name(h)
        out.append(f"{h}{f' (dm {dm})' if dm else ''} is stacked on {dev}")
    out += openers([dev] + [f"/dev/{h}" for h in hs])
    if not out and claimed(dev):
        out.append(f"{dev} is claimed exclusively (mounted, swap or in use by the kernel)")
    return out
