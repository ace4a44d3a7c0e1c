"""`start host vm VM...` / `stop host vm VM...`: map or unmap each VM's disk `<vm>-vol`.

The VM runs on its container (from `add host vm`); its disk lives on the NAS and zpool of
its `set host vm nas` assignment.  A VM without an assignment keeps its own local disks.
The mode is the container's img_sync (config, or `set host attr CONTAINER img_sync`) at
start.  Both print one line, as the guide's `rocks start host vm` does
(``nas-0-0:compute-0-14-0-vol mapped to compute-0-14:/dev/…``).
"""
from __future__ import annotations

import functools
from typing import Callable

from imgstor import sched, validate
from imgstor.errors import ImgstorError, NotFound
from imgstor.output import Message, Output
from imgstor.workflows.context import Ctx
from imgstor.workflows.storagemap import map_volume, unmap_volume

__all__ = ["start_vm", "stop_vm", "DEFAULT_DISK_SIZE"]

DEFAULT_DISK_SIZE = "10G"     # only used when the volume does not exist yet


def _vm(ctx: Ctx, name: str):
    name = validate.vm(name)
    vm = ctx.store.read().vms.get(name)
    if vm is None:
        raise NotFound(f"no VM {name!r}; add it with `imgstor add host vm CONTAINER name={name}`")
    return vm


def start_vm(ctx: Ctx, vms: list[str] | str, size: str | None = None,
             wait: bool = False) -> str | Output:
    """Map the disk of each VM (several: at once, one line each)."""
    return _each(ctx, vms, lambda vm: _start(ctx, vm, size, wait))


def stop_vm(ctx: Ctx, vms: list[str] | str, force: bool = False,
            wait: bool = False) -> str | Output:
    """Unmap the disk of each VM (several: at once, one line each)."""
    return _each(ctx, vms, lambda vm: _stop(ctx, vm, force, wait))


def _each(ctx: Ctx, vms: list[str] | str, fn: Callable[[str], str]) -> str | Output:
    """One VM: its line, or its error raised.  Several: a VM/RC/MESSAGE table in the
    order given, run in parallel (distinct volumes, one Cluster), exit code 1 if any
    failed.  Every name is checked before any VM is touched."""
    names = [vms] if isinstance(vms, str) else list(dict.fromkeys(vms))
    for n in names:
        validate.vm(n)
    if len(names) == 1:
        return fn(names[0])
    ctx.config, ctx.store, ctx.cluster             # noqa: B018 - built before the threads
    results = sched.run([sched.Job([n], functools.partial(fn, n)) for n in names])
    rows = []
    for n, r in zip(names, results):
        if isinstance(r, ImgstorError):
            rows.append({"vm": n, "exit_code": r.exit_code, "message": r.message})
        elif isinstance(r, Exception):
            raise r
        else:
            rows.append({"vm": n, "exit_code": 0, "message": r})
    return Output(rows, [("vm", "VM"), ("exit_code", "RC"), ("message", "MESSAGE")],
                  exit_code=1 if any(r["exit_code"] for r in rows) else 0)


def _start(ctx: Ctx, vm: str, size: str | None, wait: bool) -> str:
    v = _vm(ctx, vm)
    if not v.nas:
        return (f"{v.name} has no NAS assignment: it keeps its own local disks on "
                f"{v.container}; nothing to map")
    validate.parse_size(size or DEFAULT_DISK_SIZE)
    return _one_line(map_volume(ctx, v.nas, v.zpool, f"{v.name}-vol", v.container,
                                size or DEFAULT_DISK_SIZE, wait=wait,
                                note_size=size is not None))


def _stop(ctx: Ctx, vm: str, force: bool, wait: bool) -> str:
    v = _vm(ctx, vm)
    if not v.nas:
        return f"{v.name} has no NAS assignment: nothing to unmap"
    return _one_line(unmap_volume(ctx, v.nas, f"{v.name}-vol", force=force, wait=wait))


def _one_line(result: Message | str) -> str:
    return result.message if isinstance(result, Message) else result
