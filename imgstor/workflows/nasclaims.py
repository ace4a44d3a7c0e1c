"""What a NAS volume's ``imgstor:`` properties claim, checked before anything takes them
(audit M3).  Pure functions; ``imgstor rebuild`` and ``imgstor check`` (the re-adopt of
volumes the store lost) both call them, so nothing read from a NAS reaches the store
unchecked.

The properties are what the map wrote on the volume (``imgstor:host``, ``target``,
``mode``, ``initiator``, ``portal``, ``vm``, ``vm_container``); a NAS admin, or a stream a
node sent, could write others.  A claim is taken only when:

- every property was set on the volume itself (source ``local``: not received with a
  stream, not inherited from a parent; issue 18's rule for the mark);
- ``host`` is a compute host of the config, and ``mode`` is ``direct`` or ``sync``;
- ``target`` is the volume's own IQN (``names.target_iqn(nas, vol)``): a record pointing
  at another volume's target would make a pivot or an unmap log that one out;
- ``portal`` is one of that NAS's own portals (its storage address or its address, on
  the iSCSI port): refresh and repair would otherwise log a node in wherever it says;
- ``initiator`` is an IQN, and the node's own initiator name when the node was read;
- ``vm_container`` is a compute host too;
- no two claims collide (``names.check_collisions``: the same target, LIO backstore or
  node names; two volumes naming the same VM).

A claim that fails any of these is a *conflict*: reported with every reason, and
nothing of it is recorded (not even as unmapped: the operator looks, fixes the
properties with ``zfs set``/``zfs inherit`` on the NAS, and runs the command again).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from imgstor import validate
from imgstor.errors import Conflict, UsageError
from imgstor.names import check_collisions, target_iqn
from imgstor.remote.protocol import Portal

__all__ = ["Claim", "claim", "collisions", "nas_portals"]

MODES = ("direct", "sync")


@dataclass
class Claim:
    """One NAS volume as its checked properties describe it (``conflicts`` empty: taken)."""
    nas: str
    pool: str
    vol: str
    props: dict[str, Any]
    conflicts: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.nas}/{self.vol}"

    @property
    def host(self) -> str | None:
        return self.props.get("host")

    def says(self) -> str:
        """The claim in words (check's rows)."""
        p = self.props
        if not p.get("host"):
            return "unmapped"
        out = f"{p.get('mode') or '?'} mapped to {p['host']}"
        if p.get("target"):
            out += f", target {p['target']}"
        elif p.get("mode") == "sync":
            out += ", on its local copy (no target)"
        if p.get("vm"):
            out += f", disk of VM {p['vm']}"
        return out

    # what names.check_collisions reads of a record
    @property
    def extra(self) -> dict:
        return {}

    @property
    def state(self) -> str:
        return "mapped" if self.host else "unmapped"


def nas_portals(nas_cfg) -> list[Portal]:
    """The portals a NAS's targets may be reached at: its storage address and its
    address, on the iSCSI port."""
    from imgstor.remote import protocol
    out = [Portal(nas_cfg.data_address, protocol.ISCSI_PORT)]
    if nas_cfg.address != nas_cfg.data_address:
        out.append(Portal(nas_cfg.address, protocol.ISCSI_PORT))
    return out


def claim(nas: str, row: dict, *, computes: Iterable[str], portals: Iterable[Portal],
          node_initiator: str | None = None) -> Claim:
    """Check one ``nas.inventory`` row (a dataset marked ``imgstor:role=volume`` set
    locally).  ``computes``: the config's compute hosts; ``portals``: the NAS's
    (``nas_portals``); ``node_initiator``: the initiator name of the host it claims,
    when that node was read."""
    p = dict(row.get("props") or {})
    c = Claim(nas, row["pool"], row["vol"], p)
    why = c.conflicts
    for k, v in sorted((row.get("foreign") or {}).items()):
        why.append(f"imgstor:{k}={v}: not set by imgstor on this volume")
    host, mode, iqn = p.get("host"), p.get("mode"), p.get("target")
    computes = set(computes)
    if host is None:
        extra = [k for k in ("target", "mode", "initiator", "portal") if p.get(k)]
        if extra:
            why.append("no imgstor:host, yet " + ", ".join(f"imgstor:{k}={p[k]}"
                                                         for k in extra))
    else:
        if host not in computes:
            why.append(f"imgstor:host={host}: not a compute host of the config")
        if mode not in MODES:
            why.append(f"imgstor:mode={mode}: neither direct nor sync")
        if mode == "direct" and not iqn:
            why.append("direct mode without imgstor:target")
    if iqn is not None:
        try:
            own = target_iqn(nas, c.vol)
        except UsageError:
            own = None
        if own is None or str(iqn).lower() != own:
            why.append(f"imgstor:target={iqn}: not this volume's target ({own})")
    if p.get("portal") is not None:
        try:
            portal = Portal.parse(p["portal"])
        except UsageError:
            portal = None
        if portal not in list(portals):
            why.append(f"imgstor:portal={p['portal']}: not a portal of {nas} ("
                       + ", ".join(str(x) for x in portals) + ")")
    ini = p.get("initiator")
    if ini is not None:
        try:
            validate.iqn(ini, "initiator")
        except UsageError:
            why.append(f"imgstor:initiator={ini}: not an iSCSI name")
        else:
            if node_initiator and ini.lower() != node_initiator.lower():
                why.append(f"imgstor:initiator={ini}: {host}'s initiator is "
                           f"{node_initiator}")
    vm, container = p.get("vm"), p.get("vm_container")
    if vm is not None:
        try:
            validate.vm(vm)
        except UsageError:
            why.append(f"imgstor:vm={vm}: not a VM name")
    if container is not None and container not in computes:
        why.append(f"imgstor:vm_container={container}: not a compute host of the config")
    return c


def collisions(claims: list[Claim], known: Iterable = ()) -> None:
    """Mark claims whose derived names collide with another claim's, or with a volume of
    ``known`` (the store's records), and claims naming the same VM: every party gets the
    conflict (which one is genuine cannot be told from the NAS)."""
    ok = [c for c in claims if not c.conflicts]
    known = list(known)
    for c in ok:
        others = [o for o in ok if o is not c] + known
        try:
            check_collisions(others, c.nas, c.vol, host=c.host)
        except (Conflict, UsageError) as e:
            c.conflicts.append(f"name collision: {e}")
    by_vm: dict[str, list[Claim]] = {}
    for c in ok:
        if c.props.get("vm") and c.host:
            by_vm.setdefault(c.props["vm"], []).append(c)
    for vm, cs in by_vm.items():
        if len(cs) > 1:
            for c in cs:
                c.conflicts.append(f"imgstor:vm={vm} is claimed by "
                                   + ", ".join(o.key for o in cs if o is not c) + " too")
