"""VMs and their NAS assignment (``add/set/move/list/remove host vm``, ``set/list/remove/dump
host vm nas``; a VM's definition's rules: workflows/vmspec.py).  Store only: nothing here reaches a host.

Every name is validated before the store is opened for writing; an error leaves the store
unchanged.  An assignment cannot change while the VM's volume (``<vm>-vol`` on its NAS)
is mapped or busy.
"""
from __future__ import annotations

import re
import shlex

from imgstor import validate
from imgstor.errors import BusyError, Conflict, NotFound, UsageError
from imgstor.output import Lines, Output, When
from imgstor.state.model import State, Vm, natural_key
from imgstor.workflows.context import Ctx

__all__ = ["add_vm", "set_vm", "move_vm", "list_vms", "remove_vm", "set_vm_nas", "list_vm_nas",
           "remove_vm_nas", "dump_vms", "dump_vm_nas", "natural_key", "pick_zpool", "vm_base",
           "format_size"]

def _saved(ctx: Ctx, msg: str) -> str:
    return f"dry run, nothing saved: {msg}" if ctx.dry_run else msg


def _get_vm(st: State, name: str) -> Vm:
    try:
        return st.vms[name]
    except KeyError:
        raise NotFound(f"unknown VM {name!r}; `imgstor list host vm` shows the VMs") from None


def _check_unmapped(st: State, vm: Vm, doing: str) -> None:
    vol = st.vm_volume(vm)
    if vol is None:
        return
    if vol.busy is not None:
        from imgstor.state.store import Store
        raise BusyError(f"cannot {doing}: " + Store.busy_message(vol.key, vol.busy))
    if vol.state != "unmapped":
        where = f" to {vol.host}" if vol.host else ""
        raise Conflict(f"cannot {doing}: volume {vol.key} is {vol.state}{where}; "
                       f"unmap it first (imgstor remove host storagemap {vol.nas} {vol.vol})")


def _vms(st: State, names: list[str] | None) -> list[Vm]:
    """The named VMs, or all in natural name order (the order the store writes them)."""
    if names:
        return [_get_vm(st, validate.vm(n)) for n in names]
    return list(st.vms.values())


_RACK_RANK = re.compile(r".*?-([0-9]+)-([0-9]+)", re.ASCII)


def vm_base(container: str, membership: str | None) -> str:
    """The name a new VM gets before its ``-<n>``.  As Rocks names VMs: the membership's
    base name, then the container's rack and rank (``compute`` on ``vm-container-0-14``
    -> ``compute-0-14``); without a membership, the container's own name."""
    if membership is None:
        return container
    m = _RACK_RANK.fullmatch(container)
    if m is None:
        raise UsageError(f"add host vm: container {container!r} has no rack and rank in its "
                         f"name (NAME-RACK-RANK, as vm-container-0-14) to name a "
                         f"{membership} VM after; give name=VM")
    return f"{membership}-{m.group(1)}-{m.group(2)}"


def add_vm(ctx: Ctx, container: str, membership: str | None = None,
           name: str | None = None, **machine: str | None) -> str:
    """Record a VM on compute node ``container``; default name ``<base>-<n>`` (see
    ``vm_base``: ``compute-0-14-0`` for membership compute on vm-container-0-14, else
    ``<container>-<n>``).  ``machine``: its definition's keys (mem=, cpus=, mac=, kernel=,
    initrd=, append=, network=, hook=; imgstor/workflows/vmspec.py), checked first."""
    from imgstor.workflows import vmspec
    changes = vmspec.machine_changes(**machine)
    validate.host(container, "container")
    if membership is not None:
        validate.host(membership.lower(), "membership")
        membership = membership.lower()            # Rocks memberships: Compute, compute
    if name is not None:
        validate.vm(name)
    ctx.config.host(container, role="compute", what="container")
    if name is not None and name in ctx.config.hosts:
        raise Conflict(f"VM name {name!r} is already a host in {ctx.config.path}")
    base = vm_base(container, membership) if name is None else ""
    with ctx.transaction() as st:
        if name is None:
            n = 0
            while f"{base}-{n}" in st.vms or f"{base}-{n}" in ctx.config.hosts:
                n += 1
            name = validate.vm(f"{base}-{n}")
        elif name in st.vms:
            have = st.vms[name]
            if have.container == container and \
                    have.extra.get("membership") == (membership or None):
                # "already done" (a batch re-run): the same VM on the same container
                return f"VM {name} exists already on physical node {container}"
            raise Conflict(f"VM {name!r} exists already (on {st.vms[name].container})")
        st.vms[name] = Vm(name=name, container=container,
                          extra={"membership": membership} if membership else {})
        if changes:
            vmspec.apply(st, st.vms[name], changes)
    return _saved(ctx, f"added VM {name} on physical node {container}")


def list_vms(ctx: Ctx, vms: list[str] | None = None, showdisks: bool = False) -> Output:
    """Columns VM CONTAINER NAS ZPOOL MODE; ``showdisks``: DISK (``NAS:pool/volume``, or
    ``local`` for a VM without a NAS, which keeps its own disks) and DISKSIZE.  MODE is the
    mode of the VM's mapping while it has one, else the one its next start would use
    (sync if its container has img_sync).  When some VM has a definition or a guest
    (issue 27): MEM (MiB), CPUS, and GUEST -- running, stopped, exited or failed, as a
    command or ``imgstor refresh`` last saw it (no node is asked); ``--json`` adds mac,
    boot, runner, guest_host, guest_since, guest_error."""
    st = ctx.store.read()
    rows = []
    machines = any(v.machine is not None or v.guest is not None for v in st.vms.values())
    for v in _vms(st, vms):
        host = ctx.config.hosts.get(v.container)
        mode = None if host is None else ("sync" if host.img_sync else "direct")
        vol = st.vm_volume(v)
        if vol is not None and vol.mode:
            mode = vol.mode                       # a live mapping keeps what it recorded
        row: dict = {"vm": v.name, "container": v.container, "nas": v.nas, "zpool": v.zpool,
               "mode": mode}
        if showdisks:
            row["disk"] = f"{v.nas}:{v.zpool}/{v.vol}" if v.nas else "local"
            row["disksize"] = vol.size if vol is not None and vol.size else None   # bytes
        if machines:
            _machine_cols(row, v, host)
        rows.append(row)
    cols: list = [("vm", "VM"), ("container", "CONTAINER"), ("nas", "NAS"), ("zpool", "ZPOOL"),
                  ("mode", "MODE")]
    if showdisks:
        cols += [("disk", "DISK"), ("disksize", "DISKSIZE",
                                    lambda r: r["disksize"] and format_size(r["disksize"]))]
    if machines:
        cols += [("mem", "MEM"), ("cpus", "CPUS"), ("guest", "GUEST")]
    return Output(rows, cols)


def _machine_cols(row: dict, v: Vm, host) -> None:
    m, g = v.machine, v.guest
    row.update(mem=m.mem if m else None, cpus=m.cpus if m else None,
               mac=m.mac if m else None,
               boot=("kernel" if m.kernel else "disk") if m else None,
               runner=host.vm_runner if host is not None else None,
               guest=g.state if g else None, guest_host=g.host if g else None,
               guest_pid=g.pid if g else None,
               guest_since=When(g.since) if g and g.since else None,
               guest_error=g.error if g else None)


def format_size(nbytes: int) -> str:
    """``10737418240`` -> ``10G`` (the largest unit that divides it, as sizes are given)."""
    for unit, n in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes % n == 0:
            return f"{nbytes // n}{unit}"
    return f"{nbytes}B"


def remove_vm(ctx: Ctx, vm: str) -> str:
    """Forget a VM; refused while its volume is mapped or busy.  The volume stays."""
    validate.vm(vm)
    with ctx.transaction() as st:
        if vm not in st.vms and vm not in ctx.config.hosts:
            return f"no VM {vm}: removed already"        # "already done" (a batch re-run)
        v = _get_vm(st, vm)
        _check_unmapped(st, v, f"remove VM {vm}")
        del st.vms[vm]
    return _saved(ctx, f"removed VM {vm}")


def set_vm(ctx: Ctx, vm: str, **keys: str | None) -> str:
    """``set host vm VM key=value…``: change VM's definition; applies at its next start
    (a running guest keeps what it was started with)."""
    from imgstor.workflows import vmspec
    validate.vm(vm)
    changes = vmspec.machine_changes(**keys)
    if not changes:
        raise UsageError("set host vm: give one or more of " +
                         ", ".join(f"{k}=" for k in vmspec.MACHINE_KEYS))
    with ctx.transaction() as st:
        m = vmspec.apply(st, _get_vm(st, vm), changes)
    shown = " ".join(f"{k}={getattr(m, k)}" for k in changes)
    return _saved(ctx, f"VM {vm}: {shown} (from its next start)")


def move_vm(ctx: Ctx, vm: str, container: str) -> str:
    """``move host vm VM CONTAINER``: VM's next start runs on CONTAINER.  Refused while its
    disk is mapped or busy, or its guest runs (stop it first)."""
    validate.vm(vm)
    validate.host(container, "container")
    ctx.config.host(container, role="compute", what="container")
    with ctx.transaction() as st:
        v = _get_vm(st, vm)
        if v.container == container:
            return f"VM {vm} is on {container} already"
        _check_unmapped(st, v, f"move VM {vm}")
        if v.guest is not None and v.guest.state == "running":
            raise Conflict(f"cannot move VM {vm}: its guest runs on {v.guest.host} (as last "
                           f"seen); stop it first (imgstor stop host vm {vm})")
        old, v.container = v.container, container
    return _saved(ctx, f"moved VM {vm} from {old} to {container} (from its next start)")


def pick_zpool(st: State, nas: str, pools: tuple[str, ...] | list[str],
               exclude: str | None = None) -> str:
    """The pool of ``pools`` on ``nas`` with the fewest assigned VMs (ties: list order)."""
    count = dict.fromkeys(pools, 0)
    for v in st.vms.values():
        if v.nas == nas and v.zpool in count and v.name != exclude:
            count[v.zpool] += 1
    return min(pools, key=lambda p: count[p])


def set_vm_nas(ctx: Ctx, vm: str, nas: str | None = None, zpool: str | None = None) -> str:
    """Assign ``vm``'s volume to ``nas`` (and ``zpool``, default: least used of the NAS's
    img_zpools); ``nas=none`` clears the assignment."""
    validate.vm(vm)
    if nas is None:
        raise UsageError("set host vm nas: nas=NAS is required (nas=none clears)")
    if nas == "none":
        if zpool is not None:
            raise UsageError("set host vm nas: zpool= makes no sense with nas=none")
        return remove_vm_nas(ctx, vm)
    validate.host(nas, "nas")
    if zpool is not None:
        validate.zpool(zpool)
    host = ctx.config.host(nas, role="nas", what="nas")
    if zpool is not None and zpool not in host.img_zpools:
        raise UsageError(f"zpool {zpool!r} is not in the img_zpools of {nas} "
                         f"({', '.join(host.img_zpools)})")
    with ctx.transaction() as st:
        v = _get_vm(st, vm)
        pool = zpool or pick_zpool(st, nas, host.img_zpools, exclude=vm)
        if (v.nas, v.zpool) != (nas, pool):
            _check_unmapped(st, v, f"move VM {vm} to {nas}/{pool}")
            v.nas, v.zpool = nas, pool
    return _saved(ctx, f"VM {vm}: nas {nas} zpool {pool}")


def list_vm_nas(ctx: Ctx, vms: list[str] | None = None) -> Output:
    """Columns VM-HOST NAS ZPOOL."""
    st = ctx.store.read()
    rows = [{"vm": v.name, "nas": v.nas, "zpool": v.zpool} for v in _vms(st, vms)]
    return Output(rows, [("vm", "VM-HOST"), ("nas", "NAS"), ("zpool", "ZPOOL")])


def remove_vm_nas(ctx: Ctx, vm: str) -> str:
    """Clear ``vm``'s NAS assignment; refused while its volume is mapped or busy."""
    validate.vm(vm)
    with ctx.transaction() as st:
        v = _get_vm(st, vm)
        if v.nas is not None:
            _check_unmapped(st, v, f"clear the NAS of VM {vm}")
        v.nas = v.zpool = None
    return _saved(ctx, f"VM {vm}: no NAS")


def dump_vm_nas(ctx: Ctx, vm: str | None = None) -> Lines:
    """``imgstor set host vm nas ...`` lines that recreate the assignments (``imgstor
    batch`` reads them back)."""
    st = ctx.store.read()
    return Lines([shlex.join(["imgstor", "set", "host", "vm", "nas", v.name, f"nas={v.nas}",
                              f"zpool={v.zpool}"])
                  for v in _vms(st, [vm] if vm else None) if v.nas])


def dump_vms(ctx: Ctx, vms: list[str] | None = None) -> Lines:
    """``imgstor add host vm CONTAINER name=VM [membership=M] [mem=… cpus=… mac=…]`` lines
    that recreate the VMs and their definitions (``imgstor batch`` reads them back; an existing VM on the same container is
    "already done")."""
    st = ctx.store.read()
    lines = []
    for v in _vms(st, vms):
        argv = ["imgstor", "add", "host", "vm", v.container, f"name={v.name}"]
        if v.extra.get("membership"):
            argv.append(f"membership={v.extra['membership']}")
        if v.machine is not None:              # its definition (mem=, cpus=, mac=…)
            argv += [f"{k}={val}" for k, val in v.machine.to_dict().items()]
        lines.append(shlex.join(argv))
    return Lines(lines)
