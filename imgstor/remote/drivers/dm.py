"""device-mapper (``dmsetup``): the sync-mode overlay on compute nodes.

Life of an overlay (DESIGN.md, sync mode):
1. ``snapshot``: origin = the iSCSI disk, COW = the local ``<vol>-temp-write`` zvol.
2. When the local copy is complete: suspend, reload the table as ``snapshot-merge`` with
   origin = the local copy, resume; the kernel merges the COW into the origin.
3. When ``merge_done`` (allocated == metadata sectors): suspend, reload as ``linear`` on
   the local copy, resume; the COW and the iSCSI session can go.

Formats: kernel Documentation/admin-guide/device-mapper/snapshot.rst --
table ``<start> <len> snapshot <origin> <COW> <P|N> <chunksize>``; status
``<sectors_allocated>/<total_sectors> <metadata_sectors>`` or ``Invalid`` (COW full or
broken), ``Merge failed``, ``Overflow``, ``Unknown``.  ``snapshot-merge`` reports the same;
the merge is done when ``sectors_allocated == metadata_sectors``.
All sizes are 512-byte sectors.
"""
from __future__ import annotations

from dataclasses import dataclass

from imgstor.errors import AlreadyExists, Conflict, ImgstorError, NotFound, RemoteCommandError
from imgstor.remote.drivers._common import classify_by_text, positional, run_mapped, token

__all__ = [
    "Segment", "Device", "SnapshotStatus", "SECTOR", "CHUNK_SECTORS",
    "parse_table", "parse_status", "parse_snapshot_status",
    "table", "status", "merge_done", "snapshot_table", "merge_table", "linear_table",
    "create", "create_snapshot", "reload", "suspend", "resume", "start_merge", "switch_to_linear",
    "remove", "classify",
]

SECTOR = 512
CHUNK_SECTORS = 16                  # 8 KiB chunks, as LVM's default
@dataclass(frozen=True)
class Segment:
    start: int
    length: int
    target: str                     # linear | snapshot | snapshot-merge | snapshot-origin …
    args: tuple[str, ...]           # the rest of the line, split on blanks


@dataclass(frozen=True)
class Device:
    name: str | None                # None when dmsetup was given one device name
    segments: tuple[Segment, ...]

    @property
    def target(self) -> str | None:
        return self.segments[0].target if self.segments else None

    @property
    def sectors(self) -> int:
        return sum(s.length for s in self.segments)


@dataclass(frozen=True)
class SnapshotStatus:
    allocated: int | None           # sectors in use in the COW (data + metadata)
    total: int | None               # COW size in sectors
    metadata: int | None            # sectors of that used by metadata
    invalid: bool = False
    merge_failed: bool = False
    overflow: bool = False

    @property
    def ok(self) -> bool:
        return not (self.invalid or self.merge_failed or self.overflow) and self.allocated is not None


# ---------------------------------------------------------------------------- parsers
def _devices(text: str) -> list[tuple[str | None, str]]:
    """Lines as (name, rest).  ``dmsetup table|status`` without a name prefixes each line
    with ``NAME: ``; with a name it doesn't.  "No devices found" -> []."""
    out: list[tuple[str | None, str]] = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line or line.strip() == "No devices found":
            continue
        first = line.split(None, 1)[0]
        if first.endswith(":"):
            out.append((first[:-1], line[len(first):].strip()))
        else:
            out.append((None, line.strip()))
    return out


def _segments(text: str) -> list[Device]:
    devs: dict = {}
    order: list = []
    for name, rest in _devices(text):
        f = rest.split()
        if len(f) < 3:
            # a device without a table prints just "NAME: " -- keep it, no segments
            devs.setdefault(name, [])
            if name not in order:
                order.append(name)
            continue
        seg = Segment(int(f[0]), int(f[1]), f[2], tuple(f[3:]))
        if name not in devs:
            devs[name] = []
            order.append(name)
        devs[name].append(seg)
    return [Device(n, tuple(devs[n])) for n in order]


def parse_table(text: str) -> list[Device]:
    """``dmsetup table [NAME]``."""
    return _segments(text)


def parse_status(text: str) -> list[Device]:
    """``dmsetup status [NAME]``; see ``parse_snapshot_status`` for the snapshot args."""
    return _segments(text)


def parse_snapshot_status(seg: Segment | str) -> SnapshotStatus:
    """Status args of a ``snapshot``/``snapshot-merge`` segment (or a whole status line)."""
    if isinstance(seg, str):
        devs = parse_status(seg)
        if not devs or not devs[0].segments:
            raise ValueError(f"no status line in {seg!r}")
        seg = devs[0].segments[0]
    if seg.target not in ("snapshot", "snapshot-merge"):
        raise ValueError(f"not a snapshot status: {seg.target}")
    text = " ".join(seg.args)
    if text == "Invalid":
        return SnapshotStatus(None, None, None, invalid=True)
    if text == "Merge failed":
        return SnapshotStatus(None, None, None, merge_failed=True)
    if text == "Overflow":
        return SnapshotStatus(None, None, None, overflow=True)
    if text == "Unknown" or not seg.args:
        return SnapshotStatus(None, None, None)
    used, _, total = seg.args[0].partition("/")
    meta = int(seg.args[1]) if len(seg.args) > 1 else None
    return SnapshotStatus(int(used), int(total), meta)


# ``dmsetup info -c`` column headings (default columns) -> our field names.
_INFO_HEADINGS = {"Name": "name", "Maj": "major", "Min": "minor", "Stat": "attr",
                  "Open": "open", "Targ": "segments", "Event": "events", "UUID": "uuid"}


def merge_done(st: SnapshotStatus) -> bool:
    """True when a ``snapshot-merge`` has nothing left to merge (allocated == metadata).

    Raises ``Conflict`` if the snapshot is invalid or the merge failed: waiting longer
    won't help."""
    if st.invalid or st.merge_failed or st.overflow:
        what = "invalid" if st.invalid else "merge failed" if st.merge_failed else "overflowed"
        raise Conflict(f"snapshot {what}: the merge cannot finish", reason=what)
    return st.allocated is not None and st.allocated == st.metadata


# ---------------------------------------------------------------------------- readers
def table(ex, name: str | None = None) -> list[Device]:
    """Runs ``dmsetup table [NAME]``."""
    return parse_table(_read(ex, ["dmsetup", "table"] + _name(name)).stdout)


def status(ex, name: str | None = None) -> list[Device]:
    """Runs ``dmsetup status [NAME]``."""
    return parse_status(_read(ex, ["dmsetup", "status"] + _name(name)).stdout)


def _name(name: str | None) -> list[str]:
    return [] if name is None else [positional(name, "dm device")]


def _read(ex, argv):
    return run_mapped(ex, argv, classify, read_only=True)


# ---------------------------------------------------------------------------- changes
def snapshot_table(origin: str, cow: str, sectors: int, *, chunk: int = CHUNK_SECTORS) -> str:
    """``0 N snapshot ORIGIN COW P 16`` (persistent COW)."""
    return f"0 {_sectors(sectors)} snapshot {token(origin, 'origin')} {token(cow, 'cow')} P {int(chunk)}"


def merge_table(origin: str, cow: str, sectors: int, *, chunk: int = CHUNK_SECTORS) -> str:
    """``0 N snapshot-merge ORIGIN COW P 16``."""
    return (f"0 {_sectors(sectors)} snapshot-merge {token(origin, 'origin')} "
            f"{token(cow, 'cow')} P {int(chunk)}")


def linear_table(device: str, sectors: int, offset: int = 0) -> str:
    """``0 N linear DEVICE OFFSET``."""
    return f"0 {_sectors(sectors)} linear {token(device, 'device')} {int(offset)}"


def create(name: str, table_line: str) -> list[str]:
    """``dmsetup create NAME --table TABLE``."""
    return ["dmsetup", "create", positional(name, "dm device"), "--table", table_line]


def create_snapshot(name: str, origin: str, cow: str, sectors: int, *,
                    chunk: int = CHUNK_SECTORS) -> list[str]:
    """``dmsetup create NAME --table '0 N snapshot ORIGIN COW P 16'``."""
    return create(name, snapshot_table(origin, cow, sectors, chunk=chunk))


def suspend(name: str) -> list[str]:
    return ["dmsetup", "suspend", positional(name, "dm device")]


def resume(name: str) -> list[str]:
    return ["dmsetup", "resume", positional(name, "dm device")]


def reload(name: str, table_line: str) -> list[str]:
    """``dmsetup reload NAME --table TABLE`` (loads the inactive table; resume swaps it in)."""
    return ["dmsetup", "reload", positional(name, "dm device"), "--table", table_line]


def start_merge(name: str, origin: str, cow: str, sectors: int, *,
                chunk: int = CHUNK_SECTORS) -> list[list[str]]:
    """suspend, reload as ``snapshot-merge`` (origin = the local copy), resume."""
    return [suspend(name), reload(name, merge_table(origin, cow, sectors, chunk=chunk)),
            resume(name)]


def switch_to_linear(name: str, device: str, sectors: int) -> list[list[str]]:
    """suspend, reload as ``linear`` on DEVICE, resume (after ``merge_done``)."""
    return [suspend(name), reload(name, linear_table(device, sectors)), resume(name)]


def remove(name: str, *, retry: bool = False, force: bool = False) -> list[str]:
    """``dmsetup remove [--force] [--retry] NAME`` (``--retry``: retry while udev holds it
    open; ``--force``: first replace the table with one that fails every I/O, so a device
    still open stays but nothing reads or writes through it -- dmsetup(8))."""
    return (["dmsetup", "remove"] + (["--force"] if force else [])
            + (["--retry"] if retry else []) + [positional(name, "dm device")])


def _sectors(n: int) -> str:
    n = int(n)
    if n <= 0:
        raise ValueError(f"sector count must be positive: {n}")
    return str(n)


# ---------------------------------------------------------------------------- errors
_RULES = [
    (r"Device does not exist|No such device or address", NotFound, None),
    (r"already exists", AlreadyExists, None),
    (r"Device or resource busy", Conflict, None),
    (r"/dev/mapper/control: open failed|Failure to communicate with kernel device-mapper",
     RemoteCommandError, "this kernel has no device-mapper (dm_mod not loaded?)"),
]


def classify(err: RemoteCommandError) -> ImgstorError:
    """dmsetup stderr -> ``NotFound``/``AlreadyExists``/``Conflict``.

    ``dmsetup create`` of a name that exists fails with "create ioctl … failed: Device or
    resource busy": for ``create`` that text means ``AlreadyExists``."""
    if (len(err.argv) > 1 and err.argv[1] == "create"
            and "Device or resource busy" in (err.stderr or "")):
        return AlreadyExists(f"{err.host}: dm device exists: {err.argv[2] if len(err.argv) > 2 else '?'}",
                             host=err.host, argv=list(err.argv), rc=err.rc)
    return classify_by_text(err, _RULES)
