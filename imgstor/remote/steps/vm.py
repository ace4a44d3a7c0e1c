"""A VM's guest on its node (issue 27): ``vm.start``, ``vm.stop``, ``vm.status``,
``vm.list``.  Each takes ``runner`` (the container's ``vm_runner``) and dispatches through
the runner registry (imgstor/remote/vmrunners): no runner names here.  The mutating ones
hold the node's lock ``vm%VM`` (imgstor.remote.locks), so a stop and a start of one VM
never run at once on its node."""
from __future__ import annotations

from dataclasses import asdict

from imgstor.errors import Conflict, UsageError
from imgstor.remote import vmrunners
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import GuestDisk, GuestSpec, StepResult
from imgstor.remote.steps.registry import step

__all__ = ["start", "stop", "status", "list_guests"]


def _result(out: vmrunners.Outcome) -> StepResult:
    return StepResult(out.changed, out.fact_dict(), out.message)


@step("vm.start")
def start(ex: Executor, *, runner: str, vm: str, spec: dict, disk: dict) -> StepResult:
    """Ensure VM's guest runs on this node, booting from ``disk`` (``GuestDisk``: the
    device the map gave) with machine ``spec`` (``GuestSpec``, checked here again).  qemu:
    ``qemu-system-x86_64 -daemonize …``; a guest that runs already is left alone.  A qemu
    that cannot start is a StepError with its stderr."""
    g = GuestSpec.parse(spec)
    if not isinstance(disk, dict) or not isinstance(disk.get("device"), str):
        raise UsageError(f"bad guest disk {disk!r:.80}", field="disk")
    return _result(vmrunners.get(runner, ex, vm=vm).start(g, GuestDisk(**disk)))


@step("vm.stop")
def stop(ex: Executor, *, runner: str, vm: str, timeout: float, force: bool = False
         ) -> StepResult:
    """Ensure VM's guest is gone: the ACPI powerdown (qemu: QMP ``system_powerdown``), then
    up to ``timeout`` seconds for it to go.  Still running then: a Conflict (exit 8) and
    the guest is left running -- unless ``force``: then a hard stop (qemu: QMP ``quit``,
    TERM, KILL).  A guest that is not running: nothing to do."""
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0:
        raise UsageError(f"bad timeout {timeout!r}", field="timeout")
    r = vmrunners.get(runner, ex, vm=vm)
    try:
        return _result(r.powerdown(float(timeout)))
    except Conflict as e:
        if not force:
            raise
        out = r.kill()
        out.message = f"{e.message}; stopped hard"
        return _result(out)


@step("vm.status", read_only=True)
def status(ex: Executor, *, runner: str, vm: str) -> StepResult:
    """Read-only: whether VM's guest runs here, its pid, qemu's status and the last lines
    of its console."""
    f = vmrunners.get(runner, ex, vm=vm).status()
    return StepResult(False, asdict(f), f"guest {vm}: {'running' if f.running else 'not running'}")


@step("vm.list", read_only=True)
def list_guests(ex: Executor, *, runner: str) -> StepResult:
    """Read-only: every guest ``runner`` knows on this node (``{vm, running, pid}``):
    what ``imgstor refresh`` records as the VMs' GUEST state."""
    gs = vmrunners.runner_class(runner).guests(ex)
    return StepResult(False, {"guests": gs},
                      f"{sum(g['running'] for g in gs)} of {len(gs)} guests running")
