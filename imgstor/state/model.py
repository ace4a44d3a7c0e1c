"""What the state store holds: VMs, volumes (with their mapping and busy marker), jobs,
and the storage attributes set per host by ``set host attr`` (``attrs``).

Dataclasses with ``to_dict()`` / ``from_dict()``.  ``from_dict`` is strict: a missing
field, an unknown field or a bad value is a ``StateError`` (the store never rewrites a file
it could not read completely).  Free-form facts go in ``extra``.
"""
from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields

from imgstor import validate
from imgstor.errors import StateError, UsageError
from imgstor.remote.naming import VM_RUNNERS

TYPE_CHECKING = False            # typing's import is ~2 ms of a command's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = ["SCHEMA", "READS_SCHEMAS", "VOLUME_STATES", "VOLUME_MODES", "JOB_KINDS", "JOB_STATES",
           "HOST_ATTR_NAMES", "SYNC_ATTR_NAMES", "Busy", "Lease", "Job", "Vm", "Volume",
           "HostAttrs", "SyncAttrs", "State", "Machine", "GuestRun", "GUEST_STATES",
           "volume_key", "split_key", "natural_key", "migrate"]

# Schema 2 adds jobs (sync mode's long work, finished by monitors).  A schema 1 file is
# read and written back as 2 at the next change; a newer one is refused.
SCHEMA = 2
READS_SCHEMAS = (1, 2)
VOLUME_STATES = ("unmapped", "mapped", "NAS->VM", "merging", "NAS<-VM", "error")
VOLUME_MODES = ("direct", "sync", None)
# sync-in: copy NAS->node, merge, pivot; sync-back: final pull node->NAS then tear down;
# cancel: merge the overlay into the origin (unmap during NAS->VM); pull: periodic pull.
# (imgstor/workflows/jobkinds.py holds each kind's phases; a unit test keeps the two equal.)
JOB_KINDS = ("sync-in", "sync-back", "cancel", "pull")
# What a job waits for (docs/DESIGN.md "The job model"): ready -- a monitor to run it (or
# one runs it: its lock is held); retry -- its next try at ``next_try`` after a failure;
# failed -- nothing: the retry policy gave up, `imgstor monitor --resume` or `repair`
# starts it again.  Not a schema change: a file without the field reads as "ready".
JOB_STATES = ("ready", "retry", "failed")


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


def _missing(cls: type, d: dict, what: str) -> StateError:
    """What ``cls(**d)``'s TypeError means, in the file's words: the fields it lacks
    (``_from`` has refused unknown ones already)."""
    need = [f.name for f in fields(cls)
            if f.default is MISSING and f.default_factory is MISSING and f.name not in d]
    return _err(what, f"missing field(s) {', '.join(need)}" if need else
                "fields do not fit together")


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


def _make(cls: Any, d: Any, what: str) -> Any:
    """``cls(**d)`` checked against its fields, any mismatch a StateError."""
    try:
        return cls(**_from(cls, d, what))
    except TypeError:
        raise _missing(cls, d, what) from None


@dataclass
class Busy:
    """A volume's busy marker: which process works on it, since when."""
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
        except TypeError:
            raise _missing(cls, d, what) from None


@dataclass
class Lease:
    """The monitor process that owns a job: only one can (pid + /proc start time, so a
    reused pid is not mistaken for it)."""
    pid: int
    host: str
    since: float
    starttime: int | None = None

    def to_dict(self) -> dict:
        return {"pid": self.pid, "host": self.host, "since": self.since,
                "starttime": self.starttime}

    @classmethod
    def from_dict(cls, d: Any, what: str = "") -> "Lease":
        try:
            lease = cls(**_from(cls, d, what))
        except TypeError:
            raise _missing(cls, d, what) from None
        if not _is_int(lease.pid) or not isinstance(lease.host, str):
            raise _err(what, "pid must be an integer and host a string")
        return lease


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class Job:
    """Long work on one volume, done by a detached monitor (``imgstor monitor``).
    ``phase`` is the kind's current phase (imgstor/workflows/jobkinds.py names them); a
    restarted monitor continues from it.  ``attempts`` counts the tries of the current
    phase that failed (an error, or a monitor that died in it; 0 again once a phase is
    done), ``last_error`` the last one's reason, ``state``/``next_try`` what the job waits
    for (``JOB_STATES``).  ``owner``: the monitor that took it (who, not whether it lives:
    its lock file says that, imgstor/jobs.py).  Progress lives in a side file, not here
    (no store rewrite per update)."""
    id: str
    kind: str
    volume: str                      # the volume's store key NAS/VOL
    phase: str
    created: float
    updated: float
    attempts: int = 0
    last_error: str | None = None
    owner: Lease | None = None
    extra: dict = field(default_factory=dict)
    state: str = "ready"             # JOB_STATES; written only when not "ready"
    next_try: float | None = None    # state "retry": when; written only when set

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "volume": self.volume, "phase": self.phase,
                "created": self.created, "updated": self.updated, "attempts": self.attempts,
                "last_error": self.last_error,
                "owner": self.owner.to_dict() if self.owner else None,
                **({"extra": self.extra} if self.extra else {}),
                **({"state": self.state} if self.state != "ready" else {}),
                **({"next_try": self.next_try} if self.next_try is not None else {})}

    @classmethod
    def from_dict(cls, d: Any, what: str = "") -> "Job":
        kw = dict(_from(cls, d, what))
        if kw.get("owner") is not None:
            kw["owner"] = Lease.from_dict(kw["owner"], f"{what}.owner" if what else "owner")
        try:
            job = cls(**kw)
        except TypeError:
            raise _missing(cls, d, what) from None
        if job.kind not in JOB_KINDS:
            raise _err(what, f"unknown job kind {job.kind!r}")
        if job.state not in JOB_STATES:
            raise _err(what, f"unknown job state {job.state!r}")
        if not all(isinstance(x, str) for x in (job.id, job.volume, job.phase)) \
                or not _is_int(job.attempts) or not isinstance(job.extra, dict) \
                or not (job.next_try is None or isinstance(job.next_try, (int, float))):
            raise _err(what, "bad field types")
        return job


@dataclass
class Machine:
    """A VM's definition (issue 27), what a VM runner boots: ``mem`` MiB, ``cpus``, its
    ``mac``; without ``kernel`` the firmware boots the disk, with it qemu boots the kernel
    (``initrd``, ``append``: the kernel command line) directly; ``network`` none | user |
    bridge:NAME; ``hook``: this VM's hook script on the frontend ("" = the container's
    ``vm_hook``).  Checked as ``protocol.GuestSpec`` checks what reaches the node."""
    mem: int = 1024
    cpus: int = 1
    mac: str = ""
    kernel: str = ""
    initrd: str = ""
    append: str = ""
    network: str = "none"
    hook: str = ""

    def to_dict(self) -> dict:
        d = {"mem": self.mem, "cpus": self.cpus, "mac": self.mac}
        d.update({k: getattr(self, k) for k in ("kernel", "initrd", "append", "hook")
                  if getattr(self, k)})
        if self.network != "none":
            d["network"] = self.network
        return d

    @classmethod
    def from_dict(cls, d: Any, what: str = "") -> "Machine":
        m = _make(cls, d, what)
        if not (_is_int(m.mem) and _is_int(m.cpus)) or not all(
                isinstance(getattr(m, k), str)
                for k in ("mac", "kernel", "initrd", "append", "network", "hook")):
            raise _err(what, "bad field types")
        return m


GUEST_STATES = ("running", "stopped", "exited", "failed")


@dataclass
class GuestRun:
    """What imgstor last knew of a VM's guest: ``state`` running (started, or seen running
    by refresh), stopped (by ``stop host vm``), exited (refresh found it gone: it shut
    itself down or died) or failed (its start failed: ``error``); on ``host`` with
    ``runner`` (what the stop uses, whatever the container's runner is now), ``pid``,
    ``since`` (the state's start) and ``seen`` (when a command or refresh last looked)."""
    state: str
    host: str
    runner: str
    since: float
    seen: float
    pid: int | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {"state": self.state, "host": self.host, "runner": self.runner,
                "since": self.since, "seen": self.seen, "pid": self.pid, "error": self.error}

    @classmethod
    def from_dict(cls, d: Any, what: str = "") -> "GuestRun":
        g = _make(cls, d, what)
        if g.state not in GUEST_STATES:
            raise _err(what, f"unknown guest state {g.state!r}")
        return g


@dataclass
class Vm:
    """A VM: its compute node (container) and the NAS and zpool of its volume; its
    definition (``machine``, None until one is given or its first start with a runner)
    and what imgstor last knew of its guest (``guest``, None: never started by a
    runner).  Both fields are written only when set: a file without them reads as before
    (no schema change)."""
    name: str
    container: str
    nas: str | None = None
    zpool: str | None = None
    extra: dict = field(default_factory=dict)
    machine: Machine | None = None
    guest: GuestRun | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "container": self.container,
                             "nas": self.nas, "zpool": self.zpool}
        if self.extra:
            d["extra"] = self.extra
        if self.machine is not None:
            d["machine"] = self.machine.to_dict()
        if self.guest is not None:
            d["guest"] = self.guest.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any, what: str = "") -> "Vm":
        """The record for ``d``, which it keeps as its own: pass a dict nothing else uses."""
        if type(d) is dict and _VM_NEEDS <= d.keys() <= _VM_KEYS:
            # The hot path of `list` (10,000 VMs): ``d`` (freshly decoded JSON, the store's
            # own) becomes the record's __dict__, with __init__'s defaults filled in and
            # without calling it: no second dict per VM (on a cold process every new
            # object costs page faults; this halves the model's share).
            if len(d) != 7:
                if "nas" not in d:
                    d["nas"] = None
                if "zpool" not in d:
                    d["zpool"] = None
                if "extra" not in d:
                    d["extra"] = {}
                if "machine" not in d:
                    d["machine"] = None
                if "guest" not in d:
                    d["guest"] = None
            if d["machine"] is not None or d["guest"] is not None:
                _typed(d, what or d.get("name", ""))
            v = _new(cls)
            v.__dict__ = d
            return v
        try:
            kw = dict(_from(cls, d, what))
            _typed(kw, what)
            return cls(**kw)
        except TypeError:
            raise _missing(cls, d, what) from None

    @property
    def vol(self) -> str:
        """The name of this VM's volume on its NAS: ``<vm>-vol``."""
        return f"{self.name}-vol"


def _typed(d: dict, what: str) -> None:
    """A VM record's ``machine`` and ``guest`` dicts as their dataclasses (in place)."""
    if d.get("machine") is not None and not isinstance(d["machine"], Machine):
        d["machine"] = Machine.from_dict(d["machine"], f"{what}.machine")
    if d.get("guest") is not None and not isinstance(d["guest"], GuestRun):
        d["guest"] = GuestRun.from_dict(d["guest"], f"{what}.guest")


_VM_KEYS = frozenset(f.name for f in fields(Vm))
_VM_NEEDS = frozenset(f.name for f in fields(Vm) if f.default is MISSING
                      and f.default_factory is MISSING)
_new = object.__new__


@dataclass
class Volume:
    """A volume on a NAS, and where and how it is mapped."""
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
        except TypeError:
            raise _missing(cls, d, what) from None
        if v.state not in VOLUME_STATES:
            raise _err(what, f"unknown state {v.state!r}")
        if v.mode not in VOLUME_MODES:
            raise _err(what, f"unknown mode {v.mode!r}")
        return v


HOST_ATTR_NAMES = ("img_sync", "vm_container_zpool", "img_zpools", "ib_net", "vm_runner")


@dataclass
class HostAttrs:
    """The storage attributes ``set host attr`` set on one host: overrides of the config's
    values (None: not set, the config's value applies).  Checked as strictly as the config
    checks them: a bad value in the file is a StateError, never a command argument."""
    img_sync: bool | None = None
    vm_container_zpool: str | None = None
    img_zpools: list[str] | None = None
    ib_net: str | None = None
    vm_runner: str | None = None

    def values(self) -> dict[str, Any]:
        """The attributes that are set, by name."""
        return {k: getattr(self, k) for k in HOST_ATTR_NAMES if getattr(self, k) is not None}

    def to_dict(self) -> dict:
        return {k: list(v) if k == "img_zpools" else v for k, v in self.values().items()}

    @classmethod
    def from_dict(cls, d: Any, what: str = "") -> "HostAttrs":
        try:
            a = cls(**_from(cls, d, what))
        except TypeError:
            raise _missing(cls, d, what) from None
        try:
            if a.img_sync is not None and type(a.img_sync) is not bool:
                raise _err(what, "img_sync must be true or false")
            if a.vm_container_zpool is not None:
                validate.zpool(a.vm_container_zpool, "vm_container_zpool")
            if a.img_zpools is not None:
                if type(a.img_zpools) is not list or not a.img_zpools:
                    raise _err(what, "img_zpools must be a non-empty list of zpool names")
                for z in a.img_zpools:
                    validate.zpool(z, "img_zpools entry")
            if a.ib_net is not None:
                validate.host(a.ib_net, "ib_net")
            if a.vm_runner is not None and a.vm_runner not in VM_RUNNERS:
                raise _err(what, f"vm_runner must be one of {', '.join(VM_RUNNERS)}")
        except UsageError as e:
            raise _err(what, e.message) from None
        if not a.values():
            raise _err(what, "no attribute set (an empty entry is removed, not kept)")
        return a


# The roll's zvolattr / storageattr names (`set host zvolattr NAS VOL ATTR VALUE`).
SYNC_ATTR_NAMES = ("frequency", "uploadspeed", "downloadspeed")


@dataclass
class SyncAttrs:
    """The roll's sync attributes of one volume (``zvolattrs``, keyed NAS/VOL) or of one NAS
    (``storageattrs``, keyed by host): ``frequency`` seconds between periodic pulls (>= 1),
    ``uploadspeed`` the NAS->node copy's limit and ``downloadspeed`` the node->NAS one, in
    bytes per second (0: no limit).  None: not set (the NAS's, then the config's value
    applies)."""
    frequency: int | None = None
    uploadspeed: int | None = None
    downloadspeed: int | None = None

    def values(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in SYNC_ATTR_NAMES if getattr(self, k) is not None}

    def to_dict(self) -> dict:
        return self.values()

    @classmethod
    def from_dict(cls, d: Any, what: str = "") -> "SyncAttrs":
        try:
            a = cls(**_from(cls, d, what))
        except TypeError:
            raise _missing(cls, d, what) from None
        for k, v in a.values().items():
            if not _is_int(v) or v < (1 if k == "frequency" else 0):
                raise _err(what, f"{k} must be an integer >= {1 if k == 'frequency' else 0}")
        if not a.values():
            raise _err(what, "no attribute set (an empty entry is removed, not kept)")
        return a


def _load_all(cls: Any, items: dict, section: str) -> dict:
    # One try around the loop, no f-string per entry: 10,000 VMs load in milliseconds.
    out: dict = {}
    k = None
    load = cls.from_dict
    try:
        for k, v in items.items():
            out[k] = load(v)
    except StateError as e:
        raise StateError(f"{section}[{k!r}]: {e.message}") from None
    return out


@dataclass
class State:
    """Everything the store holds."""
    vms: dict[str, Vm] = field(default_factory=dict)
    volumes: dict[str, Volume] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    attrs: dict[str, HostAttrs] = field(default_factory=dict)     # host -> its overrides
    storageattrs: dict[str, SyncAttrs] = field(default_factory=dict)   # NAS -> its own
    zvolattrs: dict[str, SyncAttrs] = field(default_factory=dict)      # NAS/VOL -> its own
    schema: int = SCHEMA

    def to_dict(self) -> dict:
        """vms and volumes come out in natural key order, so a reader can list them in
        file order without sorting (``State.from_dict`` keeps the order).  ``attrs`` is
        written only when some host has one (a file without any reads as before), and
        right after ``schema``, where ``Store.read_attrs`` finds it without parsing the
        rest of the file (every command reads it to build its config).  ``storageattrs``
        and ``zvolattrs`` (the roll's sync attributes) come last, also only when set: a
        file without them reads as before."""
        attrs = ({"attrs": {k: self.attrs[k].to_dict()
                            for k in sorted(self.attrs, key=natural_key)}}
                 if self.attrs else {})
        return {"schema": self.schema, **attrs,
                "vms": {k: self.vms[k].to_dict() for k in sorted(self.vms, key=natural_key)},
                "volumes": {k: self.volumes[k].to_dict()
                            for k in sorted(self.volumes, key=natural_key)},
                "jobs": {k: self.jobs[k].to_dict() for k in sorted(self.jobs)},
                **{name: {k: sect[k].to_dict() for k in sorted(sect, key=natural_key)}
                   for name, sect in (("storageattrs", self.storageattrs),
                                      ("zvolattrs", self.zvolattrs)) if sect}}

    @classmethod
    def from_dict(cls, d: Any) -> "State":
        if not isinstance(d, dict):
            raise StateError("top level: expected an object")
        unknown = set(d) - {"schema", "vms", "volumes", "jobs", "attrs", "storageattrs",
                            "zvolattrs"}
        if unknown:
            raise StateError(f"top level: unknown field(s) {', '.join(sorted(unknown))}")
        for name in ("vms", "volumes", "jobs", "attrs", "storageattrs", "zvolattrs"):
            if not isinstance(d.get(name, {}), dict):
                raise StateError(f"{name}: expected an object")
        vms = _load_all(Vm, d.get("vms", {}), "vms")
        vols = _load_all(Volume, d.get("volumes", {}), "volumes")
        for k, v in vols.items():
            if k != v.key:
                raise StateError(f"volumes[{k!r}]: key does not match {v.key!r}")
        jobs = _load_all(Job, d.get("jobs", {}), "jobs")
        for k, j in jobs.items():
            if k != j.id:
                raise StateError(f"jobs[{k!r}]: key does not match id {j.id!r}")
        storage = _load_all(SyncAttrs, d.get("storageattrs", {}), "storageattrs")
        zvol = _load_all(SyncAttrs, d.get("zvolattrs", {}), "zvolattrs")
        try:
            for k in storage:
                validate.host(k)
            for k in zvol:
                nas, vol = split_key(k)
                validate.host(nas)
                validate.volume(vol)
        except (UsageError, StateError) as e:
            raise StateError(f"storageattrs/zvolattrs[{k!r}]: {e.message}") from None
        return cls(vms=vms, volumes=vols, jobs=jobs, attrs=attrs_from_dict(d.get("attrs", {})),
                   storageattrs=storage, zvolattrs=zvol, schema=d.get("schema", SCHEMA))

    def jobs_of(self, key: str) -> list[Job]:
        """The jobs of volume ``key`` (NAS/VOL), oldest first."""
        return sorted((j for j in self.jobs.values() if j.volume == key),
                      key=lambda j: j.created)

    def vm_volume(self, vm: Vm) -> Volume | None:
        """The volume record of ``vm`` on its assigned NAS, if any."""
        if not vm.nas:
            return None
        return self.volumes.get(volume_key(vm.nas, vm.vol))


def attrs_from_dict(d: Any) -> dict[str, HostAttrs]:
    """The ``attrs`` section: host name -> HostAttrs, strictly checked."""
    if not isinstance(d, dict):
        raise StateError("attrs: expected an object")
    for k in d:
        try:
            validate.host(k)
        except UsageError as e:
            raise StateError(f"attrs[{k!r}]: {e.message}") from None
    return _load_all(HostAttrs, d, "attrs")


def migrate(raw: dict) -> dict:
    """A parsed state file of an older schema, brought to ``SCHEMA`` (pure).
    1 -> 2: "jobs" was reserved and always empty; it now holds Job records."""
    if raw.get("schema") == 1:
        jobs = raw.get("jobs") or {}
        if jobs:
            raise StateError("schema 1 file with jobs: imgstor never wrote those")
        raw = {**raw, "schema": 2, "jobs": {}}
    return raw
