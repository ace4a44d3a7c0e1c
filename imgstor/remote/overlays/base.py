"""The overlay driver interface (sync mode), its registry and what the drivers share.

An overlay lets a VM run at once on a volume that lives on the NAS: reads come from the
*origin* (the NAS volume over iSCSI, a direct map to this node), writes go to a local sparse
*temp-write* store ``<pool>/<vol>-temp-write``.  Once the volume has been copied to this node
(``<pool>/<vol>``, "local"), the overlay merges its writes into the local copy and *pivots*:
the VM's device then reads and writes the local copy alone.  Cancel (unmap during the
copy) merges the writes into the origin instead.  The VM sees no I/O error at any point.

Phases (``Status.phase``): ``snapshot`` (writes go to temp-write) -> ``merging`` (writes
being merged ``into`` local or origin) -> ``merged`` (nothing left to merge; the device
still goes through the overlay) -> ``pivoted`` (the device is the merge target alone; the
temp-write store is gone).

Every method ensures a state and is idempotent; each returns an ``Outcome``.  Drivers are
picked by name through ``get()`` (os-brick's connector factory): the steps never compare
driver names.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from imgstor.errors import Conflict, NotFound, UsageError
from imgstor.remote.drivers import zfs
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import OverlayStatus
from imgstor.remote.util import destroy_dataset

__all__ = ["SNAPSHOT", "MERGING", "MERGED", "PIVOTED", "PHASES", "INTO", "ROLE_PROP",
           "ROLE_TEMP_WRITE", "Outcome", "Status", "Overlay", "register",
           "get", "drivers", "temp_write_props", "destroy_temp_write"]

SNAPSHOT, MERGING, MERGED, PIVOTED = "snapshot", "merging", "merged", "pivoted"
PHASES = (SNAPSHOT, MERGING, MERGED, PIVOTED)
INTO = ("local", "origin")
# What ``list host storagedev`` shows as STATUS, in dm's words for both drivers.
STATUS_OF_PHASE = {SNAPSHOT: "snapshot", MERGING: "snapshot-merge", MERGED: "snapshot-merge",
                   PIVOTED: "linear"}
# Ownership of the node's sync-mode datasets (the NAS's volumes carry role "volume").
ROLE_PROP = "imgstor:role"
ROLE_TEMP_WRITE = "temp-write"
TEMP_WRITE_SUFFIX = "-temp-write"


@dataclass
class Outcome:
    changed: bool
    facts: dict = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class Status(OverlayStatus):
    """One read of an overlay (protocol.OverlayStatus) with the driver's own ``detail``
    (dm: origin, table, sectors …; qcow2: pid, qmp, nodes …), flattened into the facts."""
    detail: dict = field(default_factory=dict)

    def facts(self) -> dict:
        d = asdict(self)
        d.update(d.pop("detail"))
        return d


class Overlay(ABC):
    """One volume's overlay on this node (``pool``: the node's vm_container_zpool)."""

    driver: ClassVar[str]

    def __init__(self, ex: Executor, *, pool: str, vol: str) -> None:
        self.ex, self.pool, self.vol = ex, _name(pool, "pool"), _name(vol, "volume")
        self.temp_write = f"{self.pool}/{self.vol}{TEMP_WRITE_SUFFIX}"

    @property
    @abstractmethod
    def device(self) -> str:
        """What the VM opens (dm: /dev/mapper/VOL-snap; qcow2: an nbd+unix:// URL)."""

    @abstractmethod
    def create(self, origin: str) -> Outcome:
        """Ensure the overlay over ORIGIN exists, writes going to the temp-write store."""

    @abstractmethod
    def merge(self, local: str | None) -> Outcome:
        """Ensure the writes are being merged into LOCAL (the complete local copy)."""

    @abstractmethod
    def merge_into_origin(self) -> Outcome:
        """Cancel: ensure the writes are being merged into the origin (the NAS volume)."""

    @abstractmethod
    def status(self) -> Status:
        """Read-only: phase, merge target and progress."""

    @abstractmethod
    def pivot(self) -> Outcome:
        """Once merged: the device becomes the merge target alone; temp-write goes."""

    @abstractmethod
    def restore_local(self, local: str) -> Outcome:
        """A pivoted overlay whose device is gone (reboot, killed daemon): ensure the
        device runs again on LOCAL (the local copy) alone.  An overlay still there, in
        whatever phase, is left as it is."""

    @abstractmethod
    def remove(self) -> Outcome:
        """Ensure the device (and, for qcow2, its daemon) is gone.  The temp-write store
        is kept unless the overlay had pivoted: before that it holds the VM's writes."""


_REGISTRY: dict[str, type[Overlay]] = {}


def register(cls: type[Overlay]) -> type[Overlay]:
    _REGISTRY[cls.driver] = cls
    return cls


def drivers() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get(driver: str, ex: Executor, *, pool: str, vol: str) -> Overlay:
    """The overlay driver named DRIVER ("dm" | "qcow2") for POOL/VOL."""
    cls = _REGISTRY.get(driver)
    if cls is None:
        raise UsageError(f"unknown overlay driver {driver!r}; known: {', '.join(drivers())}",
                         field="driver")
    return cls(ex, pool=pool, vol=vol)


# ------------------------------------------------------------------ temp-write datasets
def _name(value: str, what: str) -> str:
    """Pool and volume names become dataset, device, file and socket names: letters,
    digits and ``._:-`` only (no ``/``, no leading ``-`` or ``.``)."""
    import re
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}",
                                                       value, re.ASCII):
        raise UsageError(f"bad {what} name {value!r}", field=what)
    return value


def temp_write_props(ex: Executor, name: str, want_type: str) -> dict | None:
    """None when NAME does not exist; its props when it is imgstor's temp-write store of
    the wanted type (``volume`` for dm, ``filesystem`` for qcow2); Conflict otherwise."""
    try:
        props = zfs.get_props(ex, name, ["type", ROLE_PROP])
    except NotFound:
        return None
    t = props.get("type")
    role = props.get(ROLE_PROP)
    have = t.value if t is not None else None
    mark = role.value if role is not None and role.source == "local" else None
    if have != want_type or mark != ROLE_TEMP_WRITE:
        raise Conflict(f"{ex.host}: {name} exists as a {have or '?'} with {ROLE_PROP}="
                       f"{mark or '(unset)'}, not imgstor's temp-write {want_type}: imgstor "
                       "will not use or destroy it", dataset=name)
    return props


def destroy_temp_write(ex: Executor, name: str, want_type: str) -> bool:
    """Destroy imgstor's temp-write store NAME (only with its mark; never ``-r``;
    retried while zfs says busy: remote/util.py destroy_dataset)."""
    if temp_write_props(ex, name, want_type) is None:
        return False
    destroy_dataset(ex, name)
    return True
