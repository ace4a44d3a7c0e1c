"""The contract between the frontend and the node steps, imported by both sides.

* ``Result``: what a command answers (argv, rc, stdout, stderr), on a node or over SSH.
* ``StepResult``: what a step answers -- ``changed``, ``facts``, ``message`` -- on the node,
  and on the frontend the same class with the ``host``, ``step`` and ``commands`` of the
  exchange filled in.
* ``Portal``: an iSCSI portal as (address, port).  It travels as ``[address, port]``; a
  record made before (``"ADDR:PORT"``, ``"[v6]:PORT"``) still reads.
* The initiator name file and its one parser (the node reads it through its executor, the
  frontend with a plain ``cat``), and the one error when it has no name.
* ``parse_rate``: a bandwidth limit as both sides read it (the config's ``sync_bwlimit``,
  the ``uploadspeed``/``downloadspeed`` attributes, a copy job's ``bwlimit``).
* The facts of the steps the frontend reads, as dataclasses (``FACTS``).  The node checks
  before answering that a step listed there answers only the facts its class names (an
  undeclared fact is a bug); the frontend gets them as a read-only ``Facts`` mapping in
  which a name outside the class raises ``StepError`` (a misspelt fact is an error, not a
  silent None), and ``result.typed()`` gives the dataclass.  Steps not listed answer a plain
  dict; they are migrated one by one.

Standard library only: shipped to nodes inside the zipapp.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from imgstor.errors import NotFound, StepError, UsageError
from imgstor.remote.naming import VM_ACCELS, VM_RUNNERS

__all__ = ["ISCSI_PORT", "INITIATOR_NAME_FILE", "dry_run_gate", "parse_initiator_name", "no_initiator_name",
           "parse_rate",
           "Portal", "Result", "StepResult", "Facts", "FACTS", "check_facts", "VolumeFacts",
           "TargetFacts", "AttachFacts", "TargetListFacts", "DevicesFacts", "ProbeFacts",
           "OverlayStatus", "OverlayFacts", "OverlayUsersFacts", "PruneFacts", "CopyFacts",
           "OPEN_FACTS", "VolumePropsFacts",
           "VM_RUNNERS", "VM_ACCELS", "GuestSpec", "GuestDisk", "GuestFacts", "GuestListFacts",
           "WatchFacts"]

ISCSI_PORT = 3260
INITIATOR_NAME_FILE = "/etc/iscsi/initiatorname.iscsi"


# ------------------------------------------------------------------ initiator name
def parse_initiator_name(text: str) -> str | None:
    """``InitiatorName=`` of open-iscsi's file (comments and other lines skipped)."""
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "InitiatorName" and value.strip():
            return value.strip()
    return None


def no_initiator_name(host: str) -> NotFound:
    return NotFound(f"{host}: no initiator name in {INITIATOR_NAME_FILE} (install "
                    "open-iscsi or write InitiatorName=iqn.… there)", host=host)


# ------------------------------------------------------------------ rates
_RATE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGT]?)$", re.ASCII)


def parse_rate(value: int | str | None) -> int:
    """``sync_bwlimit``: bytes per second, an int or written like sizes (``12M`` =
    12 MiB/s); 0, "" or None = unlimited."""
    if value in (None, "", 0):
        return 0
    if isinstance(value, bool):
        raise UsageError(f"bad bandwidth limit {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise UsageError(f"bad bandwidth limit {value!r}")
        return value
    m = _RATE.fullmatch(str(value).strip().upper())
    if not m:
        raise UsageError(f"bad bandwidth limit {value!r} (bytes per second, e.g. 12M)")
    return int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
                                     "T": 1 << 40}[m.group(2)])


# ------------------------------------------------------------------ dry runs
def dry_run_gate(text: str, *, dry_run: bool, read_only: bool, log: list[str],
                 skipped: list[str] | None = None) -> bool:
    """The one dry-run rule, for the node's executor and the frontend's transport alike:
    a dry run runs only what is read-only; anything else is logged as ``SKIP> text`` (and
    kept in ``skipped``) and not run.  What runs is logged as ``text``.  True: run it."""
    if dry_run and not read_only:
        log.append("SKIP> " + text)
        if skipped is not None:
            skipped.append(text)
        return False
    log.append(text)
    return True


# ------------------------------------------------------------------ portal
class Portal(NamedTuple):
    """An iSCSI portal.  A tuple, so JSON carries it as ``[address, port]``."""

    address: str
    port: int = ISCSI_PORT

    def __str__(self) -> str:
        """``ADDR:PORT``; IPv6 literals in brackets (``[fd00::1]:3260``)."""
        a = self.address
        return f"[{a}]:{self.port}" if ":" in a and not a.startswith("[") else f"{a}:{self.port}"

    @classmethod
    def parse(cls, value: Any) -> Portal:
        """``[address, port]`` (the wire), or the text ``ADDR[:PORT]`` of older records."""
        if isinstance(value, (list, tuple)) and len(value) == 2:
            addr, port = value
        elif isinstance(value, str) and value:
            # records made before: f"{address}:{port}" (an IPv6 address without brackets)
            addr, sep, port = value.rpartition(":")
            if not sep:
                addr, port = value, ISCSI_PORT
            addr = addr[1:-1] if addr.startswith("[") and addr.endswith("]") else addr
        else:
            raise UsageError(f"bad portal {value!r}: [address, port]", field="portal")
        try:
            p = int(port)
        except (TypeError, ValueError):
            raise UsageError(f"bad portal {value!r}: port {port!r}", field="portal") from None
        if not isinstance(addr, str) or not addr or not 0 < p < 65536:
            raise UsageError(f"bad portal {value!r}", field="portal")
        return cls(addr, p)


# ------------------------------------------------------------------ facts
@dataclass(frozen=True)
class VolumeFacts:
    """``nas.ensure_volume``."""
    path: str | None = None
    size: int | None = None
    created: bool = False
    marked: bool = False
    size_differs: bool = False
    zfs_backend: str | None = None       # "lzc" | "cli" when it made a zfs change


@dataclass(frozen=True)
class VolumePropsFacts:
    """``nas.get_props``."""
    exists: bool = False
    path: str | None = None
    size: int | None = None
    props: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TargetFacts:
    """``nas.ensure_target`` (tgt's LUN is 1, 0 being its controller; LIO's is 0)."""
    iqn: str = ""
    lun: int = 1
    portal: Any = None                   # as sent: [address, port] (Portal.parse reads it)
    tid: int | None = None               # tgt
    chap_user: str | None = None
    ended: list = field(default_factory=list)       # tgt: connections of others closed
    warnings: list = field(default_factory=list)


@dataclass(frozen=True)
class TargetListFacts:
    """``nas.target_facts``: one dict per target (iqn, paths, acls, sessions …)."""
    targets: list = field(default_factory=list)


@dataclass(frozen=True)
class AttachFacts:
    """``compute.attach``: ``device`` is /dev/sdX (iscsiadm) or the iscsi:// URL
    (userspace, with the qemu ``json:`` spec and ``--image-opts`` string)."""
    device: str | None = None
    size: int | None = None
    initiator: str | None = None
    by_path: str | None = None
    qemu_json: str | None = None
    image_opts: str | None = None
    chap_user: str | None = None


@dataclass(frozen=True)
class DevicesFacts:
    """``compute.devices``."""
    devices: list = field(default_factory=list)
    initiator: str | None = None


@dataclass(frozen=True)
class ProbeFacts:
    """``probe``."""
    hostname: str = ""
    python: str = ""
    kernel: str = ""
    tools: dict = field(default_factory=dict)
    rtslib: bool = False
    pyzfs: str = ""
    pools: list = field(default_factory=list)
    initiator: str | None = None
    versions: dict = field(default_factory=dict)     # probe(versions=True): tool -> line


@dataclass(frozen=True)
class OverlayStatus:
    """One read of an overlay (overlays.base.Status adds the driver's detail).
    ``done``/``total``: bytes of the merge (qcow2: the commit job's offset/len);
    ``status``/``synced``: the STATUS and SYNCED columns of ``list host storagedev``."""
    driver: str = ""
    exists: bool = False
    device: str | None = None
    phase: str | None = None            # snapshot | merging | merged | pivoted
    into: str | None = None             # local | origin
    done: int | None = None
    total: int | None = None
    status: str | None = None
    synced: str | None = None


@dataclass(frozen=True)
class OverlayFacts(OverlayStatus):
    """``overlay.*``: the status, the driver's detail, and what the step did."""
    # dm
    origin: str | None = None
    cow: str | None = None
    table: str | None = None
    allocated: int | None = None
    metadata: int | None = None
    sectors: int | None = None
    cow_sectors: int | None = None
    remaining: int | None = None
    # qcow2
    overlay: str | None = None
    pid: int | None = None
    qmp: str | None = None
    nbd: str | None = None
    nodes: list | None = None
    export_node: str | None = None
    job: str | None = None
    job_status: str | None = None
    # what create / linear / remove did
    temp_write: str | None = None
    overlay_created: bool | None = None
    temp_write_created: bool | None = None
    temp_write_destroyed: bool | None = None
    temp_write_kept: bool | None = None
    forced: bool | None = None          # remove --force left a held device failing all I/O


@dataclass(frozen=True)
class OverlayUsersFacts:
    """``overlay.users``: who uses the overlay's device, in words ([] = nobody)."""
    users: list = field(default_factory=list)


@dataclass(frozen=True)
class PruneFacts:
    """``nas.prune_snapshots``."""
    destroyed: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    left: list = field(default_factory=list)


@dataclass(frozen=True)
class CopyFacts:
    """``copy.start`` / ``copy.status`` / ``copy.cancel``: the copy job's progress file
    (remote/jobs.py, written by the job as it goes) plus the step's own.  Open: the job
    may write more than these (the node does not check), but the frontend reads only
    these names."""
    job: str | None = None
    state: str | None = None            # running | done | failed | cancelled | died | none
    phase: str | None = None
    snapshot: str | None = None
    base: str | None = None             # the incremental's base (``auto`` resolved)
    bytes_done: int | None = None
    bytes_total: int | None = None
    total_exact: bool = True
    wire_bytes: int | None = None
    percent: float | None = None
    rate: float | None = None
    seconds: float | None = None
    error: str | None = None
    attempt: int | None = None
    previous: dict | None = None
    resumed: bool | None = None
    resume_offset: int | None = None
    already: bool | None = None
    stages: list | None = None
    pid: int | None = None
    started: Any = None                 # copy.start: bool (did it start one); job: time
    updated: float | None = None
    finished: float | None = None
    snapshot_created: bool | None = None
    aborted_partial: bool | None = None


@dataclass(frozen=True)
class WatchFacts:
    """``jobs.watch``: per copy (``ALIAS:DATASET``) what ``copy.status`` answers, per
    overlay (``DRIVER/POOL/VOL``) what ``overlay.status`` answers, or ``{"error": …}``."""
    copies: dict = field(default_factory=dict)
    overlays: dict = field(default_factory=dict)


# ------------------------------------------------------------------ VM guests (issue 27)
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}", re.ASCII)
_PATH = re.compile(r"/[A-Za-z0-9._+@/-]{1,1023}", re.ASCII)
_BRIDGE = re.compile(r"bridge:[A-Za-z0-9_.-]{1,15}", re.ASCII)
MAX_APPEND = 2048                           # x86's kernel command line (COMMAND_LINE_SIZE)


def _bad(field: str, value: Any, why: str) -> UsageError:
    return UsageError(f"invalid {field} {value!r:.60}: {why}", field=field)


def check_path(value: Any, field: str) -> str:
    """An absolute path a runner hands to qemu (kernel, initrd): plain characters, no
    ``..`` (it never becomes a shell word or a qemu option string)."""
    if not isinstance(value, str) or not _PATH.fullmatch(value) or ".." in value.split("/"):
        raise _bad(field, value, "must be an absolute path of letters, digits and ._+@-/")
    return value


def check_mac(value: Any) -> str:
    if not isinstance(value, str) or not _MAC.fullmatch(value) or int(value[:2], 16) & 1:
        raise _bad("mac", value, "must be a unicast MAC address like 52:54:00:12:34:56 "
                                 "(lower case)")
    return value


def check_network(value: Any) -> str:
    if value not in ("none", "user") and not (isinstance(value, str)
                                              and _BRIDGE.fullmatch(value)):
        raise _bad("network", value, "must be none, user or bridge:NAME")
    return value


def check_append(value: Any) -> str:
    if not isinstance(value, str) or len(value) >= MAX_APPEND \
            or any(not " " <= c <= "~" for c in value):
        raise _bad("append", value, f"must be printable ASCII, under {MAX_APPEND} characters")
    return value


@dataclass(frozen=True)
class GuestSpec:
    """What a runner needs to start a VM's guest (``vm.start``'s ``spec``): the VM's
    definition in the store, plus its container's ``vm_accel``.  No kernel: the firmware
    boots the disk; a kernel (and initrd, append): qemu boots it directly."""
    mem: int                             # MiB
    cpus: int
    mac: str
    kernel: str = ""
    initrd: str = ""
    append: str = ""
    network: str = "none"                # none | user | bridge:NAME
    accel: str = "kvm"                   # one of VM_ACCELS

    @classmethod
    def parse(cls, d: Any) -> GuestSpec:
        """Checked both where it is made and on the node (a bad one is a UsageError)."""
        if not isinstance(d, Mapping) or not set(d) <= {f.name for f in fields(cls)}:
            raise UsageError(f"bad guest spec {d!r:.80}", field="spec")
        try:
            g = cls(**d)
        except TypeError as e:
            raise UsageError(f"bad guest spec: {e}", field="spec") from None
        for k, lo, hi in (("mem", 16, 1 << 22), ("cpus", 1, 512)):
            v = getattr(g, k)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise _bad(k, v, f"must be an integer {lo}..{hi}")
        check_mac(g.mac)
        for k in ("kernel", "initrd"):
            if getattr(g, k):
                check_path(getattr(g, k), k)
        if (g.initrd or g.append) and not g.kernel:
            raise UsageError("initrd= and append= need kernel= (direct boot); without a "
                             "kernel the firmware boots the disk", field="kernel")
        check_append(g.append)
        check_network(g.network)
        if g.accel not in VM_ACCELS:
            raise _bad("accel", g.accel, f"must be one of {', '.join(VM_ACCELS)}")
        return g


@dataclass(frozen=True)
class GuestDisk:
    """The disk a guest boots from: what the map recorded (``device``: /dev/sdX,
    /dev/mapper/VOL-snap, an ``iscsi://`` URL or an ``nbd+unix://`` URL) and, for the
    userspace initiator, qemu's ``json:`` spec of it."""
    device: str
    qemu_json: str | None = None


@dataclass(frozen=True)
class GuestFacts:
    """``vm.start`` / ``vm.stop`` / ``vm.status``: one guest on the node."""
    runner: str = ""
    vm: str = ""
    running: bool = False
    pid: int | None = None
    status: str | None = None            # qemu's query-status (running, paused …)
    qmp: str | None = None
    console: str | None = None           # the guest's serial console, a file on the node
    console_tail: list = field(default_factory=list)
    stopped: str | None = None           # vm.stop: "powerdown" | "hard"
    seconds: float | None = None         # vm.stop: how long it waited


@dataclass(frozen=True)
class GuestListFacts:
    """``vm.list``: the guests of a runner on the node, ``{vm, running, pid}`` each."""
    guests: list = field(default_factory=list)


FACTS: dict[str, type] = {
    "nas.ensure_volume": VolumeFacts, "nas.get_props": VolumePropsFacts,
    "nas.ensure_target": TargetFacts, "nas.target_facts": TargetListFacts,
    "compute.attach": AttachFacts, "compute.devices": DevicesFacts, "probe": ProbeFacts,
    "overlay.create": OverlayFacts, "overlay.merge": OverlayFacts,
    "overlay.status": OverlayFacts, "overlay.linear": OverlayFacts,
    "overlay.remove": OverlayFacts, "overlay.users": OverlayUsersFacts,
    "nas.prune_snapshots": PruneFacts,
    "copy.start": CopyFacts, "copy.status": CopyFacts, "copy.cancel": CopyFacts,
    "jobs.watch": WatchFacts,
    "vm.start": GuestFacts, "vm.stop": GuestFacts, "vm.status": GuestFacts,
    "vm.list": GuestListFacts,
}
# Facts the node cannot list ahead (a job's progress file): checked on the frontend only.
OPEN_FACTS = frozenset({"copy.start", "copy.status", "copy.cancel"})
_NAMES: dict[str, frozenset[str]] = {s: frozenset(f.name for f in fields(c))
                                     for s, c in FACTS.items()}


def check_facts(step: str, facts: Mapping[str, Any]) -> None:
    """The node's check before it answers: a step with a facts class answers only the
    facts that class names."""
    names = None if step in OPEN_FACTS else _NAMES.get(step)
    extra = sorted(set(facts) - names) if names is not None else []
    if extra:
        raise StepError(f"node step {step} answered undeclared facts {', '.join(extra)} "
                        "(add them to imgstor/remote/protocol.py)", step=step)


class Facts(dict):
    """The facts of one step (a dict, so JSON and ``dict(f)`` work as before).  With a
    facts class, a name it does not declare raises StepError -- on ``f[k]``, ``f.get(k)``
    and ``k in f`` alike -- and a declared fact the node did not send reads as absent
    (``get`` gives the default, ``f[k]`` KeyError)."""

    def __init__(self, step: str, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(data or {})
        self.step = step
        self.names = _NAMES.get(step)

    def _known(self, key: object) -> None:
        if self.names is not None and key not in self.names:
            raise StepError(f"node step {self.step} has no fact {key!r} (its facts: "
                            f"{', '.join(sorted(self.names))})", step=self.step, fact=str(key))

    def __getitem__(self, key: str) -> Any:
        self._known(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._known(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._known(key)
        return super().__contains__(key)


@dataclass
class Result:
    """One command's outcome, on a node (executor) or over SSH (transport)."""
    argv: list[str]
    rc: int
    stdout: str = ""
    stderr: str = ""
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.rc == 0


@dataclass
class StepResult:
    """A step's answer.  On the node ``changed, facts, message``; the frontend adds the
    host and step it came from and the commands the node ran (``SKIP> …`` in a dry run)."""

    changed: bool = False
    facts: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""
    host: str = ""
    step: str = ""
    commands: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"changed": self.changed, "facts": dict(self.facts), "message": self.message}

    @classmethod
    def received(cls, host: str, step: str, answer: Mapping[str, Any],
                 commands: list[str] | None = None) -> StepResult:
        """The frontend's side: one step's answer from the node's JSON."""
        return cls(bool(answer.get("changed")), Facts(step, answer.get("facts") or {}),
                   str(answer.get("message") or ""), host, step, list(commands or []))

    def typed(self) -> Any:
        """The facts as the step's dataclass (FACTS), every declared fact present."""
        cls = FACTS.get(self.step)
        if cls is None:
            raise StepError(f"node step {self.step} has no facts class yet", step=self.step)
        names = _NAMES[self.step]
        return cls(**{k: v for k, v in self.facts.items() if k in names})
