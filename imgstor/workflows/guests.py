"""VM runners on the frontend, and what imgstor knows of each VM's guest (issue 27).

``RUNNERS``: the runners by name with what the workflows need to know of them (os-brick's
connector factory: a capability, never a name comparison).  ``none`` runs no guest: start
and stop host vm map and unmap the disk only (imgstor before issue 27).  The node side of
a runner is imgstor/remote/vmrunners (``vm.*`` steps).

``Vm.guest`` (``GuestRun``) is what a command or refresh last saw: ``record`` sets it;
``observe`` is refresh's part -- one read-only ``vm.list`` per node and runner that has a
guest recorded running, so ``list host vm`` never asks a node.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from imgstor.errors import ImgstorError, UsageError
from imgstor.state.model import GuestRun
from imgstor.workflows.context import Ctx

__all__ = ["RunnerEntry", "RUNNERS", "entry", "record", "observe"]


@dataclass(frozen=True)
class RunnerEntry:
    name: str
    runs_guest: bool           # False: the disk only, nothing started on the node


RUNNERS = {"none": RunnerEntry("none", False), "qemu": RunnerEntry("qemu", True)}


def entry(name: str) -> RunnerEntry:
    try:
        return RUNNERS[name]
    except KeyError:
        raise UsageError(f"unknown vm_runner {name!r}; known: {', '.join(RUNNERS)}",
                         field="vm_runner") from None


def record(ctx: Ctx, vm: str, state: str, *, host: str, runner: str, pid: int | None = None,
           error: str | None = None) -> None:
    """Set VM's guest record (its ``since`` kept while the state stays the same)."""
    if ctx.dry_run:
        return
    now = time.time()
    with ctx.store.transaction() as st:
        v = st.vms.get(vm)
        if v is None:
            return
        g = v.guest
        since = g.since if g is not None and (g.state, g.host) == (state, host) else now
        v.guest = GuestRun(state=state, host=host, runner=runner, since=since, seen=now,
                           pid=pid, error=error)


def observe(ctx: Ctx) -> list[dict]:
    """Refresh: ask each node with a guest recorded running which guests run there; a
    guest gone is recorded ``exited`` (it shut itself down or died), one seen again
    ``running``.  Rows ``guest NODE VM - ACTION``; the store is written only on change."""
    st = ctx.store.read()
    want: dict[tuple[str, str], list[str]] = {}
    for v in st.vms.values():
        g = v.guest
        if g is not None and g.state in ("running", "exited") and entry(g.runner).runs_guest:
            want.setdefault((g.host, g.runner), []).append(v.name)
    if not want:
        return []
    hosts = sorted({h for h, _ in want})

    def ask(host: str) -> dict:
        out = {}
        for (h, runner), _ in want.items():
            if h == host:
                r = ctx.cluster.step(host, "vm.list", runner=runner)
                out.update({g["vm"]: g for g in r.facts.get("guests", [])})
        return out

    answers = ctx.cluster.parallel(hosts, ask)
    rows, changes = [], {}
    for (host, runner), names in sorted(want.items()):
        seen = answers[host]
        for name in sorted(names):
            if isinstance(seen, ImgstorError):
                rows.append({"what": "guest", "host": host, "volume": name, "job": None,
                             "action": f"not known: {seen.message.splitlines()[0]}"})
                continue
            g = seen.get(name)
            now_running = bool(g and g["running"])
            was = st.vms[name].guest
            state = "running" if now_running else "exited"
            if was is not None and was.state != state:
                changes[name] = (state, host, runner, g["pid"] if g else None)
                rows.append({"what": "guest", "host": host, "volume": name, "job": None,
                             "action": f"{was.state} -> {state}"})
            else:
                rows.append({"what": "guest", "host": host, "volume": name, "job": None,
                             "action": state + (f" (pid {g['pid']})" if now_running else "")})
    for name, (state, host, runner, pid) in changes.items():
        record(ctx, name, state, host=host, runner=runner, pid=pid)
    return rows
