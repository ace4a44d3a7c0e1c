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


@step("probe", read_only=True)
def probe(ex: Executor) -> StepResult:
    """Facts only; runs `zpool list` (read-only).  ``rtslib``: importable; ``pyzfs``:
    its version when the zfs driver will use it, else "no" or "no /dev/zfs"."""
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
    return StepResult(False, facts, "")
