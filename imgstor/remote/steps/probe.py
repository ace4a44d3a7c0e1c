"""Read-only probe of a node: what it is, which storage tools it has, its pools."""
from __future__ import annotations

import os
import platform

from imgstor.remote.executor import Executor, host_name
from imgstor.remote.protocol import StepResult
from imgstor.remote.steps.registry import step
from imgstor.remote.util import initiator_name

TOOLS = ("zfs", "zpool", "tgtadm", "targetcli", "iscsiadm", "dmsetup", "qemu-img",
         "iscsi-inq", "iscsi-readcapacity16", "zfs-fuse")
# How each tool says its version (`imgstor doctor`): the first line that is not empty.
VERSION_ARGV = {"zfs": ["zfs", "version"], "tgtadm": ["tgtadm", "--version"],
                "targetcli": ["targetcli", "--version"], "iscsiadm": ["iscsiadm", "--version"],
                "dmsetup": ["dmsetup", "--version"], "qemu-img": ["qemu-img", "--version"]}


@step("probe", read_only=True)
def probe(ex: Executor, versions: bool = False) -> StepResult:
    """Facts only; runs `zpool list` (read-only).  ``rtslib``: importable; ``pyzfs``:
    its version when the zfs driver will use it, else "no" or "no /dev/zfs".  With
    ``versions``: each tool's version line (``VERSION_ARGV``; read-only)."""
    tools = {t: ex.fs.which(t) for t in TOOLS}
    pools = []
    if tools["zpool"]:
        r = ex.run(["zpool", "list", "-H", "-o", "name,size,free,health"], read_only=True,
                   check=False, timeout=60)
        if r.rc == 0:
            for line in r.stdout.splitlines():
                f = line.split("\t")
                if len(f) == 4:
                    pools.append({"name": f[0], "size": f[1], "free": f[2], "health": f[3]})
    try:
        import rtslib_fb  # noqa: F401
        rtslib = True
    except ImportError:
        rtslib = False
    from imgstor.remote.drivers import _lzc
    facts = {"hostname": host_name(), "python": platform.python_version(),
             "kernel": os.uname().release, "tools": {k: v for k, v in tools.items() if v},
             "rtslib": rtslib, "pyzfs": _lzc.status(), "pools": pools, "initiator": initiator_name(ex)}
    if versions:
        facts["versions"] = {t: _version(ex, argv) for t, argv in VERSION_ARGV.items()
                             if tools.get(t)}
    return StepResult(False, facts, "")


def _version(ex: Executor, argv: list[str]) -> str:
    """The first non-empty line a tool prints for its version (zfs-fuse's zfs has no
    ``version`` subcommand: its usage text says so, and "?" is shown)."""
    r = ex.run(argv, read_only=True, check=False, timeout=20)
    lines = [ln.strip() for ln in (r.stdout + "\n" + r.stderr).splitlines() if ln.strip()]
    return lines[0][:120] if r.rc == 0 and lines else "?"
