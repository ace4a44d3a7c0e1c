"""`start host vm VM` / `stop host vm VM`: map or unmap the VM's disk `<vm>-vol`.

The VM runs on its container (from `add host vm`); its disk lives on the NAS and zpool of
its `set host vm nas` assignment.  A VM without an assignment keeps its own local disks.
The mode is the container's img_sync (config, or `set host attr CONTAINER img_sync`) at
start.  Both print one line, as the guide's `rocks start host vm` does
(``nas-0-0:compute-0-14-0-vol mapped to compute-0-14:/dev/…``).
"""
from __future__ import annotations

from imgstor import validate
from imgstor.errors import NotFound
from imgstor.output import Message
from imgstor.workflows.storagemap import map_volume, unmap_volume

__all__ = ["start_vm", "stop_vm", "DEFAULT_DISK_SIZE"]

DEFAULT_DISK_SIZE = "10G"     # only used when the volume does not exist yet


def _vm(ctx, name: str):
    name = validate.vm(name)
    vm = ctx.store.read().vms.get(name)
    if vm is None:
        raise NotFound(f"no VM {name!r}; add it with `imgstor add host vm CONTAINER name={name}`")
    return vm


def start_vm(ctx, vm: str, size: str | None = None, wait: bool = False) -> str:
    v = _vm(ctx, vm)
    if not v.nas:
        return (f"{v.name} has no NAS assignment: it keeps its own local disks on "
                f"{v.container}; nothing to map")
    validate.parse_size(size or DEFAULT_DISK_SIZE)
    return _one_line(map_volume(ctx, v.nas, v.zpool, f"{v.name}-vol", v.container,
                                size or DEFAULT_DISK_SIZE, wait=wait,
                                note_size=size is not None))


def stop_vm(ctx, vm: str, force: bool = False, wait: bool = False) -> str:
    v = _vm(ctx, vm)
    if not v.nas:
        return f"{v.name} has no NAS assignment: nothing to unmap"
    return _one_line(unmap_volume(ctx, v.nas, f"{v.name}-vol", force=force, wait=wait))


def _one_line(result: Message | str) -> str:
    return result.message if isinstance(result, Message) else result
