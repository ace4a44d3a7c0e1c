"""`start host vm VM...` / `stop host vm VM...`: a VM's whole life on imgstor's disk.

The VM runs on its container (from `add host vm`, `move host vm`); its disk `<vm>-vol`
lives on the NAS and zpool of its `set host vm nas` assignment.  A VM without an
assignment keeps its own local disks.  The mode is the container's img_sync (config, or
`set host attr CONTAINER img_sync`) at start; the runner its ``vm_runner`` (issue 27):

* ``none`` (the default): start maps the disk and prints the device, stop unmaps it --
  the guide's ``rocks start host vm`` line, for sites that run their VMs another way.
* ``qemu`` (imgstor/workflows/guests.py): start maps (either mode), then boots the guest
  on the device the map gave (``vm.start``); if it does not start, the error says why
  (qemu's stderr, the console's tail) and the disk stays mapped.  Stop asks the guest to
  power down (ACPI), waits up to ``--timeout`` (the container's ``vm_stop_timeout``),
  and only once the guest is gone unmaps -- so the sync back starts from a disk no one
  writes.  A guest still running then is exit 8, the disk still mapped, unless
  ``--force``: a hard stop, then the unmap.

Hook scripts (imgstor/workflows/vmhooks.py) run at pre-start (before anything is mapped),
post-start, pre-stop and post-stop.
"""
from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Callable

from imgstor import sched, validate
from imgstor.errors import Conflict, ImgstorError, NotFound, StepError
from imgstor.output import Message, Output
from imgstor.workflows import guests
from imgstor.workflows.context import Ctx
from imgstor.workflows.storagemap import map_volume, unmap_volume
from imgstor.workflows.vmhooks import HookCall, run_hook

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from imgstor.config import HostConfig
    from imgstor.remote.protocol import GuestSpec
    from imgstor.state.model import Vm, Volume

__all__ = ["start_vm", "stop_vm", "DEFAULT_DISK_SIZE"]

DEFAULT_DISK_SIZE = "10G"     # only used when the volume does not exist yet


def _vm(ctx: Ctx, name: str) -> Vm:
    name = validate.vm(name)
    vm = ctx.store.read().vms.get(name)
    if vm is None:
        raise NotFound(f"no VM {name!r}; add it with `imgstor add host vm CONTAINER name={name}`")
    return vm


def start_vm(ctx: Ctx, vms: list[str] | str, size: str | None = None,
             wait: bool = False) -> str | Output:
    """Map the disk of each VM and start its guest (several: at once, one line each)."""
    return _each(ctx, vms, lambda vm: _start(ctx, vm, size, wait))


def stop_vm(ctx: Ctx, vms: list[str] | str, force: bool = False,
            wait: bool = False, timeout: float | None = None) -> str | Output:
    """Stop the guest of each VM, then unmap its disk (several: at once, one line each)."""
    if timeout is not None and timeout < 0:
        from imgstor.errors import UsageError
        raise UsageError(f"--timeout must be 0 or more seconds, not {timeout:g}")
    return _each(ctx, vms, lambda vm: _stop(ctx, vm, force, wait, timeout))


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


def _hook(ctx: Ctx, v: Vm, hc: HostConfig, phase: str, runner: str, device: str | None,
          mode: str) -> str | None:
    path = (v.machine.hook if v.machine is not None and v.machine.hook else "") or hc.vm_hook
    return run_hook(ctx, HookCall(path, v.name, phase, hc.name, device or "", mode, runner))


def _start(ctx: Ctx, vm: str, size: str | None, wait: bool) -> str:
    v = _vm(ctx, vm)
    hc = ctx.config.host(v.container, role="compute", what="container")
    run = guests.entry(hc.vm_runner)
    if not v.nas:
        return (f"{v.name} has no NAS assignment: it keeps its own local disks on "
                f"{v.container}; nothing to map")
    validate.parse_size(size or DEFAULT_DISK_SIZE)
    vol = ctx.store.read().vm_volume(v)
    mode = vol.mode if vol is not None and vol.mode else ("sync" if hc.img_sync else "direct")
    if run.runs_guest:
        _spec(ctx, v, hc, save=False)                 # a bad definition: before the hook
    _hook(ctx, v, hc, "pre-start", run.name, vol.device if vol else None, mode)
    line = _one_line(map_volume(ctx, v.nas, v.zpool or "", f"{v.name}-vol", v.container,
                                size or DEFAULT_DISK_SIZE, wait=wait,
                                note_size=size is not None))
    vol = ctx.store.read().vm_volume(v)
    device = vol.device if vol is not None else None
    if run.runs_guest and not ctx.dry_run and vol is not None:
        spec = _spec(ctx, v, hc, save=True)           # its MAC, given once
        line += "; " + _boot(ctx, v, hc, run, spec, vol)
    elif run.runs_guest and ctx.dry_run:
        line += f"; dry run: would start its guest on {v.container} ({run.name})"
    problem = _hook(ctx, v, hc, "post-start", run.name, device,
                    (vol.mode if vol is not None else None) or mode)
    return line + (f"\nwarning: {problem}" if problem else "")


def _spec(ctx: Ctx, v: Vm, hc: HostConfig, *, save: bool) -> GuestSpec:
    """The guest's machine (``protocol.GuestSpec``): its definition with the container's
    accelerator; a VM without one gets the defaults and a MAC (saved at the first start)."""
    from imgstor.state.model import Machine
    from imgstor.workflows import vmspec
    if not save or ctx.dry_run:
        m = v.machine or Machine(mac="52:54:00:00:00:00")
        return vmspec.guest_spec(m, hc.vm_accel)
    with ctx.store.transaction() as st:
        vv = st.vms[v.name]
        m = vv.machine if vv.machine is not None and vv.machine.mac else \
            vmspec.apply(st, vv, {})
    return vmspec.guest_spec(m, hc.vm_accel)


def _boot(ctx: Ctx, v: Vm, hc: HostConfig, run: guests.RunnerEntry, spec: GuestSpec,
          vol: Volume) -> str:
    from imgstor.remote.protocol import GuestDisk
    disk = GuestDisk(vol.device or "", vol.extra.get("qemu_json") if vol.mode == "direct" else None)
    try:
        r = ctx.cluster.step(v.container, "vm.start", runner=run.name, vm=v.name,
                             spec=asdict(spec), disk=asdict(disk))
    except ImgstorError as e:
        guests.record(ctx, v.name, "failed", host=v.container, runner=run.name,
                      error=e.message)
        raise StepError(f"{v.name}: its guest did not start on {v.container}: {e.message}\n"
                        f"its disk stays mapped ({vol.nas}:{vol.vol} on {v.container}:"
                        f"{vol.device}): `imgstor stop host vm {v.name}` unmaps it",
                        vm=v.name) from None
    pid = r.facts.get("pid")
    guests.record(ctx, v.name, "running", host=v.container, runner=run.name, pid=pid)
    if not r.changed:
        return f"its guest runs already on {v.container} ({run.name}, pid {pid})"
    return f"guest started on {v.container} ({run.name}, pid {pid})"


def _stop(ctx: Ctx, vm: str, force: bool, wait: bool, timeout: float | None) -> str:
    v = _vm(ctx, vm)
    g = v.guest
    # the runner and node the guest was started with, whatever the container says now
    host = g.host if g is not None and g.state == "running" else v.container
    hc = ctx.config.host(host, role="compute", what="container")
    run = guests.entry(g.runner if g is not None and g.state == "running" else hc.vm_runner)
    vol = ctx.store.read().vm_volume(v)
    mode = vol.mode if vol is not None and vol.mode else ("sync" if hc.img_sync else "direct")
    device = vol.device if vol is not None else None
    _hook(ctx, v, hc, "pre-stop", run.name, device, mode)
    said = []
    if run.runs_guest:
        said.append(_shutdown(ctx, v, host, run, hc, force,
                              hc.vm_stop_timeout if timeout is None else timeout))
    if not v.nas:
        said.append(f"{v.name} has no NAS assignment: nothing to unmap")
    else:
        said.append(_one_line(unmap_volume(ctx, v.nas, f"{v.name}-vol", force=force,
                                           wait=wait)))
    problem = _hook(ctx, v, hc, "post-stop", run.name, device, mode)
    return "; ".join(s for s in said if s) + (f"\nwarning: {problem}" if problem else "")


def _shutdown(ctx: Ctx, v: Vm, host: str, run: guests.RunnerEntry, hc: HostConfig, force: bool,
              timeout: float) -> str:
    """The guest gone (ACPI powerdown, up to ``timeout``; ``force``: then hard), or
    Conflict (exit 8) with the disk left mapped."""
    try:
        r = ctx.cluster.step(host, "vm.stop", runner=run.name, vm=v.name, timeout=timeout,
                             force=force)
    except Conflict as e:
        guests.record(ctx, v.name, "running", host=host, runner=run.name,
                      pid=e.details.get("pid"))
        raise Conflict(f"{e.message}; its disk stays mapped: `imgstor stop host vm "
                       f"{v.name} --force` stops it hard, then unmaps", vm=v.name,
                       reason="still-running") from None
    if ctx.dry_run:
        return f"dry run: would stop its guest on {host}"
    guests.record(ctx, v.name, "stopped", host=host, runner=run.name)
    if not r.changed:
        return ""
    how = r.facts.get("stopped")
    secs = r.facts.get("seconds")
    return (f"guest {v.name} shut down on {host} ({secs:g}s after the powerdown)"
            if how == "powerdown" and secs is not None
            else f"guest {v.name} stopped hard on {host}")


def _one_line(result: Message | str) -> str:
    return result.message if isinstance(result, Message) else result
