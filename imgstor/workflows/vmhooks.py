"""Hook scripts around a VM's start and stop (issue 27), in the style of Proxmox's
hookscripts: an executable on the frontend -- the VM's ``hook=`` (``set host vm``), else
its container's ``vm_hook`` -- run as ``HOOK VM PHASE`` with the environment

    IMGSTOR_VM, IMGSTOR_PHASE (pre-start | post-start | pre-stop | post-stop),
    IMGSTOR_NODE (the container), IMGSTOR_DEVICE (the disk's device; "" before the map),
    IMGSTOR_MODE (direct | sync), IMGSTOR_RUNNER

A non-zero exit at a pre- phase stops the command before anything changes (exit 8, with
the hook's last lines); at a post- phase it is reported and the command's result stands.
The file must be a regular file of root's (or this user's), not writable by group or
others: imgstor runs it as the user it runs as.  It gets ``HOOK_TIMEOUT`` seconds.  A dry
run does not run it.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass

from imgstor.errors import ConfigError, Conflict
from imgstor.workflows.context import Ctx

__all__ = ["PHASES", "HOOK_TIMEOUT", "HookCall", "run_hook"]

PHASES = ("pre-start", "post-start", "pre-stop", "post-stop")
HOOK_TIMEOUT = 300.0


@dataclass(frozen=True)
class HookCall:
    """One call of a VM's hook."""
    hook: str
    vm: str
    phase: str
    node: str
    device: str
    mode: str
    runner: str


def _check(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"hook {path}: {e.strerror}", path=path) from None
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IXUSR:
        raise ConfigError(f"hook {path}: not an executable file", path=path)
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"hook {path}: must belong to root (or this user) and not be "
                          "writable by group or others: imgstor runs it", path=path)


def run_hook(ctx: Ctx, call: HookCall) -> str | None:
    """Run the hook for one phase; None when there is none.  A pre- phase that fails
    raises Conflict (nothing was changed); a post- phase's failure is returned as text."""
    if not call.hook:
        return None
    if ctx.dry_run:
        print(f"dry run: would run hook {call.hook} {call.vm} {call.phase}", file=sys.stderr)
        return None
    _check(call.hook)
    env = {**os.environ, "IMGSTOR_VM": call.vm, "IMGSTOR_PHASE": call.phase,
           "IMGSTOR_NODE": call.node, "IMGSTOR_DEVICE": call.device,
           "IMGSTOR_MODE": call.mode, "IMGSTOR_RUNNER": call.runner}
    try:
        p = subprocess.run([call.hook, call.vm, call.phase], env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=HOOK_TIMEOUT)
        rc, out = p.returncode, (p.stdout + p.stderr)
    except subprocess.TimeoutExpired:
        rc, out = -1, f"timed out after {HOOK_TIMEOUT:g}s"
    except OSError as e:
        rc, out = -1, str(e)
    if rc == 0:
        return None
    lines = [ln for ln in out.splitlines() if ln.strip()][-5:]
    why = f"{call.phase} hook {call.hook} exited {rc}" + "".join(f"\n  | {ln}" for ln in lines)
    if call.phase.startswith("pre-"):
        raise Conflict(f"{why}\nnothing was done", vm=call.vm, phase=call.phase, rc=rc)
    return why
