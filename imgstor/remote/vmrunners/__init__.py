"""VM runners (issue 27): what starts and stops a VM's guest on its node, picked by name
through a registry like the overlays' (``get(runner, ex, vm=)``): ``qemu`` (a detached
qemu-system process, QMP socket and pid under /run/imgstor/vm/VM/).  A ``libvirt`` runner
or a site's own is one more ``@register``ed class; the steps (steps/vm.py) never compare
runner names.  ``none`` (the default) is the frontend's: it runs no guest and reaches no
node."""
from __future__ import annotations

from imgstor.remote.vmrunners import qemu as _qemu  # noqa: F401  (register)
from imgstor.remote.vmrunners.base import (
    RUN_DIR,
    Outcome,
    Runner,
    get,
    register,
    runner_class,
    runners,
)

__all__ = ["get", "runners", "runner_class", "register", "Runner", "Outcome", "RUN_DIR"]
