"""``check``/``repair``'s view of the sync keys (issue 18): every host's imgstor-tagged
authorized_keys lines and installed sync gate (``sync.audit``, read-only).

- ``sync-key`` stale: a line for a sender no job needs now (no sync-in copy from that NAS
  to that node, no sync volume of that node on that NAS): repair revokes it
  (``sync.revoke``); the next copy's trust step makes it again when needed.
- ``sync-key`` of a host no longer in the config (removed): repair revokes it too.
- ``sync-key`` foreign: a line carrying imgstor's tag that is not restricted to the gate:
  left (imgstor did not write it; remove it by hand).
- ``sync-gate``: an installed gate older than the running code: left, the next trust step
  replaces it (``sync.authorize``).
"""
from __future__ import annotations

from typing import Any, Callable

from imgstor import jobs as jobmod
from imgstor import reconcile
from imgstor.errors import ImgstorError

__all__ = ["findings", "needed"]

_INBOUND = ("trust", "copy", "stop")        # sync-in / cancel phases that use NAS -> node


def needed(st: Any, config: Any, sender: str, receiver: str, *,
           running: Callable[[Any], bool] = lambda j: False) -> bool:
    """Does any job or sync volume need SENDER's key on RECEIVER now?  ``running(job)``:
    a monitor runs the job (its lock is held: imgstor/jobs.py)."""
    for v in st.volumes.values():
        if v.mode != "sync" and not st.jobs_of(v.key):
            continue
        js = st.jobs_of(v.key)
        if any(running(j) for j in js) and {sender, receiver} == {v.nas, v.host}:
            return True                           # in flight: not judged
        if v.nas == sender and v.host == receiver and any(
                j.kind in ("sync-in", "cancel") and j.phase in _INBOUND for j in js):
            return True
        if v.host == sender and v.nas == receiver and \
                v.state in ("mapped", "NAS->VM", "merging", "NAS<-VM"):
            return True
    return False


def findings(ctx: Any, st: Any, hosts: list[str]) -> list[reconcile.Finding]:
    cl = ctx.cluster
    audits = cl.parallel(hosts, lambda h: cl.step(h, "sync.audit")) if hosts else {}
    out: list[reconcile.Finding] = []
    for host in hosts:
        a = audits[host]
        if isinstance(a, ImgstorError):
            continue                              # the host's own finding says unreachable
        f = a.facts
        for ln in f.get("lines") or ():
            sender = ln.get("sender")
            subject = f"{host}:authorized_keys:{ln.get('line')}"
            if not ln.get("restricted"):
                out.append(reconcile.Finding(
                    "sync-key", subject, f"a line tagged imgstor-sync:{sender} that imgstor "
                    "did not write (not restricted to the sync gate)",
                    left="remove it by hand after checking whose key it is"))
            elif sender not in ctx.config.hosts:      # a host removed from the config
                out.append(reconcile.Finding(
                    "sync-key", subject, f"{sender}'s sync key is let in and {sender} is "
                    "no longer in the config",
                    actions=(reconcile.Action(host, "sync.revoke", {"sender": sender}),)))
            elif not needed(st, ctx.config, sender, host,
                            running=lambda j: jobmod.running(ctx.store, j.id)):
                out.append(reconcile.Finding(
                    "sync-key", subject, f"{sender}'s sync key is let in and no job needs it",
                    actions=(reconcile.Action(host, "sync.revoke", {"sender": sender}),)))
        if f.get("gate") and not f.get("gate_current"):
            out.append(reconcile.Finding(
                "sync-gate", f"{host}:{f['gate']}", "installed sync gate is older than "
                "this imgstor", left="the next copy's trust step replaces it"))
    return out
