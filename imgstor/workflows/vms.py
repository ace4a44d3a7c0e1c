"""VMs and their NAS assignment (``add/list/remove host vm``, ``set/list/remove/dump host
vm nas``).  Store only: nothing here reaches a host.

Every name is validated before the store is opened for writing; an error leaves the store
unchanged.  An assignment cannot change while the VM's volume (``<vm>-vol`` on its NAS)
is mapped or busy.
"""
from __future__ import annotations

import shlex

from imgstor import validate
from imgstor.errors import BusyError, Conflict, NotFound, UsageError
from imgstor.output import Output
from imgstor.state.model import State, Vm, natural_key
from imgstor.workflows.context import Ctx

__all__ = ["add_vm", "list_vms", "remove_vm", "set_vm_nas", "list_vm_nas",
           "remove_vm_nas", "dump_vm_nas", "natural_key", "pick_zpool"]

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


def add_vm(ctx: Ctx, container: str, name: str | None = None) -> str:
    """Record a VM on compute node ``container``; default name ``<container>-<n>``."""
    validate.host(container, "container")
    if name is not None:
        validate.vm(name)
    ctx.config.host(container, role="compute", what="container")
    if name is not None and name in ctx.config.hosts:
        raise Conflict(f"VM name {name!r} is already a host in {ctx.config.path}")
    with ctx.transaction() as st:
        if name is None:
            n = 0
            while f"{container}-{n}" in st.vms or f"{container}-{n}" in ctx.config.hosts:
                n += 1
            name = validate.vm(f"{container}-{n}")
        elif name in st.vms:
            raise Conflict(f"VM {name!r} exists already (on {st.vms[name].container})")
        st.vms[name] = Vm(name=name, container=container)
    return _saved(ctx, f"added VM {name} on physical node {container}")


def list_vms(ctx: Ctx, vms: list[str] | None = None) -> Output:
    """Columns VM CONTAINER NAS ZPOOL MODE (sync if the container has img_sync)."""
    st = ctx.store.read()
    rows = []
    for v in _vms(st, vms):
        host = ctx.config.hosts.get(v.container)
        mode = None if host is None else ("sync" if host.img_sync else "direct")
        rows.append({"vm": v.name, "container": v.container, "nas": v.nas,
                     "zpool": v.zpool, "mode": mode})
    return Output(rows, [("vm", "VM"), ("container", "CONTAINER"), ("nas", "NAS"),
                         ("zpool", "ZPOOL"), ("mode", "MODE")])


def remove_vm(ctx: Ctx, vm: str) -> str:
    """Forget a VM; refused while its volume is mapped or busy.  The volume stays."""
    validate.vm(vm)
    with ctx.transaction() as st:
        v = _get_vm(st, vm)
        _check_unmapped(st, v, f"remove VM {vm}")
        del st.vms[vm]
    return _saved(ctx, f"removed VM {vm}")


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


def dump_vm_nas(ctx: Ctx, vm: str | None = None) -> str | None:
    """``imgstor set host vm nas ...`` lines that recreate the assignments."""
    st = ctx.store.read()
    lines = [shlex.join(["imgstor", "set", "host", "vm", "nas", v.name, f"nas={v.nas}",
                         f"zpool={v.zpool}"])
             for v in _vms(st, [vm] if vm else None) if v.nas]
    return "\n".join(lines) or None
