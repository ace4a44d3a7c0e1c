"""Names both sides derive the same way (shipped to the nodes; standard library only)."""
from __future__ import annotations

import re

__all__ = ["backstore_name", "BACKSTORE_LEN", "VM_RUNNERS", "VM_ACCELS"]

BACKSTORE_LEN = 64                 # LIO's limit on a storage object's name
# The VM runners both sides know by name (issue 27: the config and `set host attr` check
# ``vm_runner`` against these; the node's registry, imgstor/remote/vmrunners, has the
# classes; "none" runs no guest) and qemu's accelerators a container may name.
VM_RUNNERS = ("none", "qemu")
VM_ACCELS = ("kvm", "tcg", "kvm:tcg")


def backstore_name(iqn: str) -> str:
    """The LIO block backstore name of target IQN (``nas-0-0-vm1-vol``): the IQN's tail
    with every character but ``[A-Za-z0-9_-]`` turned into ``_``, cut at 64 characters.
    Not injective: imgstor.names refuses a volume whose name collides with another's."""
    tail = iqn.split("com.", 1)[-1] if iqn.startswith("iqn.2001-04.com.") else iqn
    return re.sub(r"[^A-Za-z0-9_-]", "_", tail)[:BACKSTORE_LEN]
