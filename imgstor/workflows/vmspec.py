"""A VM's definition (issue 27): what a VM runner boots, kept in the store as Rocks kept
it (``Vm.machine``).  Store only: nothing here reaches a host.

    add host vm CONTAINER [MEMBERSHIP] [name=VM] [mem=MiB|512M|2G] [cpus=N] [mac=MAC]
        [kernel=PATH initrd=PATH append="ARGS"] [network=none|user|bridge:NAME] [hook=PATH]
    set host vm VM key=value...      change the definition (applies at the next start)
    move host vm VM CONTAINER        a stopped VM's next start runs on CONTAINER

(the handlers of ``set host vm`` and ``move host vm`` are in workflows/vms.py, beside the
VMs' other handlers; this module holds the definition's rules and imports no handler)

Without ``kernel`` the firmware boots the disk; with it qemu boots that kernel directly
(paths on the container).  A MAC is given once, unique among the store's VMs
(``52:54:00:…``, from the VM's name, the next free one if taken), at the first definition
or the first start with a runner.  Every value is checked (``protocol.GuestSpec``'s
rules) before the store changes.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace

from imgstor import validate
from imgstor.errors import Conflict, UsageError
from imgstor.state.model import Machine, State, Vm

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from imgstor.remote.protocol import GuestSpec

__all__ = ["MACHINE_KEYS", "machine_changes", "apply", "alloc_mac", "guest_spec", "check_hook"]

MACHINE_KEYS = ("mem", "cpus", "mac", "kernel", "initrd", "append", "network", "hook")


def _mem(text: str) -> int:
    """``mem=``: MiB as Rocks takes it (``512``), or a size (``512M``, ``2G``)."""
    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        nbytes = validate.parse_size(t)
    except UsageError:
        raise UsageError(f"mem: expected MiB (512) or a size (512M, 2G), got {text!r:.40}",
                         field="mem") from None
    if nbytes % (1 << 20):
        raise UsageError(f"mem: {text!r} is not a whole number of MiB", field="mem")
    return nbytes >> 20


def machine_changes(**given: str | None) -> dict:
    """The definition's fields given on the command line, converted and checked one by
    one (a full check follows in ``apply``).  None: not given."""
    from imgstor.remote import protocol
    out: dict = {}
    for k, v in given.items():
        if v is None:
            continue
        if k == "mem":
            out[k] = _mem(v)
        elif k == "cpus":
            if not v.strip().isdigit():
                raise UsageError(f"cpus: expected a number, got {v!r:.40}", field="cpus")
            out[k] = int(v)
        elif k == "mac":
            out[k] = protocol.check_mac(v.strip().lower())
        elif k in ("kernel", "initrd"):
            out[k] = protocol.check_path(v, k) if v else ""
        elif k == "append":
            out[k] = protocol.check_append(v)
        elif k == "network":
            out[k] = protocol.check_network(v)
        elif k == "hook":
            out[k] = check_hook(v) if v else ""
        else:
            raise UsageError(f"unknown VM key {k!r}", field=k)
    return out


def check_hook(path: str) -> str:
    """A hook path as configured: absolute (it is checked again, on the frontend's disk,
    each time it runs)."""
    if not path.startswith("/") or "\0" in path or "\n" in path:
        raise UsageError(f"hook: must be an absolute path on the frontend, got {path!r:.60}",
                         field="hook")
    return path


def alloc_mac(st: State, vm: str) -> str:
    """A MAC for ``vm`` no other VM of the store has: ``52:54:00`` (QEMU's prefix) and
    three bytes of sha256(name), the next one up when taken."""
    used = {v.machine.mac for v in st.vms.values() if v.machine and v.name != vm}
    n = int.from_bytes(hashlib.sha256(vm.encode()).digest()[:3], "big")
    for i in range(1 << 24):
        x = (n + i) % (1 << 24)
        mac = "52:54:00:" + ":".join(f"{(x >> s) & 0xff:02x}" for s in (16, 8, 0))
        if mac not in used:
            return mac
    raise Conflict("no free MAC address left under 52:54:00")


def apply(st: State, v: Vm, changes: dict) -> Machine:
    """``v``'s definition with ``changes``, checked whole (a MAC given if it has none, a
    MAC another VM has refused); set on ``v`` and returned."""
    m = replace(v.machine or Machine(), **changes)
    if not m.mac:
        m.mac = alloc_mac(st, v.name)
    elif "mac" in changes:
        other = next((o.name for o in st.vms.values()
                      if o.machine and o.machine.mac == m.mac and o.name != v.name), None)
        if other:
            raise Conflict(f"mac {m.mac} is VM {other}'s already")
    guest_spec(m, "kvm")                       # the node's own check, before saving
    v.machine = m
    return m


def guest_spec(m: Machine, accel: str) -> GuestSpec:
    """What ``vm.start`` sends (``protocol.GuestSpec``, checked)."""
    from imgstor.remote.protocol import GuestSpec
    return GuestSpec.parse({"mem": m.mem, "cpus": m.cpus, "mac": m.mac, "kernel": m.kernel,
                            "initrd": m.initrd, "append": m.append, "network": m.network,
                            "accel": accel})
