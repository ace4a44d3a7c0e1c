"""What the state store holds: VMs, volumes (with their mapping and busy marker), jobs.

Dataclasses with ``to_dict()`` / ``from_dict()``.  ``from_dict`` is strict: a missing
field, an unknown field or a bad value is a ``StateError`` (the store never rewrites a file
it could not read completely).  Free-form facts go in ``extra``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from imgstor.errors import StateError

__all__ = ["SCHEMA", "VOLUME_STATES", "VOLUME_MODES", "Busy", "Vm", "Volume", "State",
           "volume_key", "split_key", "natural_key"]

SCHEMA = 1
VOLUME_STATES = ("unmapped", "mapped", "NAS->VM", "merging", "NAS<-VM", "error")
VOLUME_MODES = ("direct", "sync", None)


_DIGITS = re.compile(r"[0-9]+")


def _pad(m: re.Match) -> str:
    return m.group().zfill(20)


def natural_key(name: str) -> str:
    """Sort key putting compute-0-2 before compute-0-10 (digit runs zero-padded)."""
    return _DIGITS.sub(_pad, name)


def volume_key(nas: str, vol: str) -> str:
    """The store key of a volume: ``"NAS/VOL"``."""
    return f"{nas}/{vol}"


def split_key(key: str) -> tuple[str, str]:
    nas, sep, vol = key.partition("/")
    if not sep or not nas or not vol:
        raise StateError(f"bad volume key {key!r}: expected NAS/VOL")
    return nas, vol


_FIELDS: dict[type, frozenset[str]] = {}
_NONE: frozenset[str] = frozenset()


def _err(what: str, msg: str) -> StateError:
    return StateError(f"{what}: {msg}" if what else msg)


def _from(cls: type, d: Any, what: str) -> dict:
    """Check ``d`` against ``cls``'s fields: returns kwargs or raises StateError."""
    if type(d) is dict and d.keys() <= _FIELDS.get(cls, _NONE):
        return d                                       # the fast, usual case
    if type(d) is not dict:
        raise _err(what, f"expected an object, got {type(d).__name__}")
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(f.name for f in fields(cls))
    if not d.keys() <= names:
        unknown = set(d) - names
        raise _err(what, f"unknown field(s) {', '.join(sorted(unknown))}")
    return d


@dataclass
class Busy:
    op: str
    pid: int
    host: str
    since: float
    starttime: int | None = None

    def to_dict(self) -> dict:
        return {"op": self.op, "pid": self.pid, "host": self.host, "since": self.since,
                "starttime": self.starttime}

    @classmethod
    def from_dict(cls, d: Any, what: str = "") -> "Busy":
        try:
            return cls(**_from(cls, d, what))
        except TypeError as e:
            raise _err(what, str(e)) from None


@dataclass
class Vm:
    name: str
    container: str
    nas: str | None = None
    zpool: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"name": self.name, "container": self.container, "nas": self.nas,
             "zpool": self.zpool}
        if self.extra:
            d["extra"] = self.extra
        return d

    @classmethod
    def from_dict(cls, d: Any, what: str = "") -> "Vm":
        try:
            if type(d) is dict and d.keys() <= _VM_KEYS:   # inlined: the hot path of `list`
                return cls(**d)
            return cls(**_from(cls, d, what))
        except TypeError as e:
            raise _err(what, str(e)) from None

    @property
    def vol(self) -> str:
        """The name of this VM's volume on its NAS: ``<vm>-vol``."""
        return f"{self.name}-vol"


_VM_KEYS = frozenset(f.name for f in fields(Vm))


@dataclass
class Volume:
    nas: str
    zpool: str
    vol: str
    size: int | None = None
    host: str | None = None          # compute node it is mapped to
    target: str | None = None        # IQN
    state: str = "unmapped"
    mode: str | None = None          # "direct" | "sync" | None
    device: str | None = None
    since: float = 0.0               # epoch of the last state change
    error: str | None = None
    busy: Busy | None = None
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return volume_key(self.nas, self.vol)

    def to_dict(self) -> dict:
        return {"nas": self.nas, "zpool": self.zpool, "vol": self.vol, "size": self.size,
                "host": self.host, "target": self.target, "state": self.state,
                "mode": self.mode, "device": self.device, "since": self.since,
                "error": self.error, "busy": self.busy.to_dict() if self.busy else None,
                **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_dict(cls, d: Any, what: str = "") -> "Volume":
        kw = dict(_from(cls, d, what))
        if kw.get("busy") is not None:
            kw["busy"] = Busy.from_dict(kw["busy"], f"{what}.busy" if what else "busy")
        try:
            v = cls(**kw)
        except TypeError as e:
            raise _err(what, str(e)) from None
        if v.state not in VOLUME_STATES:
            raise _err(what, f"unknown state {v.state!r}")
        if v.mode not in VOLUME_MODES:
            raise _err(what, f"unknown mode {v.mode!r}")
        return v


def _load_all(cls: Any, items: dict, section: str) -> dict:
    # One try around the loop, no f-string per entry: 10,000 VMs load in milliseconds.
    out: dict = {}
    k = None
    try:
        for k, v in items.items():
            out[k] = cls.from_dict(v)
    except StateError as e:
        raise StateError(f"{section}[{k!r}]: {e.message}") from None
    return out


@dataclass
class State:
    vms: dict[str, Vm] = field(default_factory=dict)
    volumes: dict[str, Volume] = field(default_factory=dict)
    jobs: dict[str, dict] = field(default_factory=dict)   # reserved for monitors
    schema: int = SCHEMA

    def to_dict(self) -> dict:
        """vms and volumes come out in natural key order, so a reader can list them in
        file order without sorting (``State.from_dict`` keeps the order)."""
        return {"schema": self.schema,
                "vms": {k: self.vms[k].to_dict() for k in sorted(self.vms, key=natural_key)},
                "volumes": {k: self.volumes[k].to_dict()
                            for k in sorted(self.volumes, key=natural_key)},
                "jobs": self.jobs}

    @classmethod
    def from_dict(cls, d: Any) -> "State":
        if not isinstance(d, dict):
            raise StateError("top level: expected an object")
        unknown = set(d) - {"schema", "vms", "volumes", "jobs"}
        if unknown:
            raise StateError(f"top level: unknown field(s) {', '.join(sorted(unknown))}")
        for name in ("vms", "volumes", "jobs"):
            if not isinstance(d.get(name, {}), dict):
                raise StateError(f"{name}: expected an object")
        vms = _load_all(Vm, d.get("vms", {}), "vms")
        vols = _load_all(Volume, d.get("volumes", {}), "volumes")
        for k, v in vols.items():
            if k != v.key:
                raise StateError(f"volumes[{k!r}]: key does not match {v.key!r}")
        return cls(vms=vms, volumes=vols, jobs=dict(d.get("jobs", {})),
                   schema=d.get("schema", SCHEMA))

    def vm_volume(self, vm: Vm) -> Volume | None:
        """The volume record of ``vm`` on its assigned NAS, if any."""
        if not vm.nas:
            return None
        return self.volumes.get(volume_key(vm.nas, vm.vol))
