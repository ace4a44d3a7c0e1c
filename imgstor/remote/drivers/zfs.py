"""ZFS datasets, volumes and pools: read facts with ``zfs``/``zpool``, build change argv.

Two flavours are met in practice and both are handled:

* OpenZFS (production NAS and compute nodes, the kernel lab): ``zfs list -p`` gives exact
  byte counts, zvols exist, ``receive -s`` resume tokens, ``send -P/-c``.
* zfs-fuse 0.7, pool version 23 (the userspace lab).  Captured here, see
  tests/fixtures/userspace/*.cmd:
  - ``zfs list -p`` / ``zpool list -p``: rc 2, "invalid option 'p'" (zfs_list_p);
    ``zfs get -p`` *is* supported and prints exact bytes (zfs_get_p).
  - ``zfs create -V``: SIGABRT, rc 134, "internal error: Function not implemented"
    (zfs_create_zvol) -- no zvols, so the lab uses the ``file`` volume kind.
  - ``zfs send -P`` and ``zfs receive -s``: rc 2, "invalid option" (zfs_send_P,
    zfs_receive_s).
  - ``zfs version`` does not exist: rc 2 "unrecognized command 'version'" (zfs_version);
    ``zpool upgrade -v`` says "currently running ZFS pool version 23" (zpool_upgrade_v),
    where OpenZFS says "supports ZFS pool feature flags".
  - ``zfs set`` takes one ``property=value`` per call (usage in zfs_version.err).

Readers therefore take an optional ``caps`` (probe once per step with
``capabilities(ex)``) and use ``-p`` only where it works.  Sizes without ``-p`` are
human numbers (``3.12M``); they are parsed to approximate bytes and flagged ``exact=False``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterator, Mapping

from imgstor.errors import AlreadyExists, Conflict, ImgstorError, NotFound, RemoteCommandError
from imgstor.remote.drivers import _lzc
from imgstor.remote.drivers._common import classify_by_text, positional, run_mapped

__all__ = [
    "Capabilities", "Pool", "Property", "ZVOL_BLOCKSIZE", "ZFS_FUSE_ABORT_RC",
    "POOL_FIELDS", "POOL_DEFAULT_FIELDS",
    "capabilities", "parse_capabilities", "parse_size",
    "parse_get", "parse_pools", "get_props", "pools", "mountpoint",
    "exists", "zvol_device", "create_zvol", "create_dataset", "destroy", "set_props",
    "snapshot", "inherit", "classify", "list_columns", "holds", "release", "user_refs",
]

ZVOL_BLOCKSIZE = 128 * 1024
# zfs-fuse aborts (SIGABRT -> 128+6) on features it lacks, e.g. `zfs create -V`
# (captured: tests/fixtures/userspace/zfs_create_zvol.cmd).
ZFS_FUSE_ABORT_RC = 134

POOL_FIELDS = ("name", "size", "allocated", "free", "health")


# ---------------------------------------------------------------------------- facts
@dataclass(frozen=True)
class Capabilities:
    flavor: str                    # "openzfs" | "zfs-fuse"
    version: str | None            # `zfs version` first line, OpenZFS >= 0.8 only
    pool_version: int | None       # legacy pool version (zfs-fuse: 23); None = feature flags
    parsable: bool                 # `zfs list -p`, `zpool list -p`
    zvols: bool                    # `zfs create -V`
    resume: bool                   # `zfs receive -s` and resume tokens
    send_flags: bool               # `zfs send -P` / `-c`


@dataclass(frozen=True)
class Pool:
    name: str
    size: int | None
    allocated: int | None
    free: int | None
    health: str
    exact: bool = True


@dataclass(frozen=True)
class Property:
    name: str
    value: str | None              # None when unset ("-" with source "-")
    source: str | None             # local | default | inherited from X | received | None

    def as_int(self) -> int | None:
        return parse_size(self.value) if self.value is not None else None


# ---------------------------------------------------------------------------- parsers
_HUMAN = re.compile(r"([0-9]+(?:\.[0-9]+)?)([BKMGTPEZ]?)", re.ASCII)
_UNIT = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
         "P": 1 << 50, "E": 1 << 60, "Z": 1 << 70}


def parse_size(text: str | None) -> int | None:
    """``"1073741824"`` -> 1073741824; ``"1.5G"`` -> 1610612736; ``"-"``/``none`` -> None.

    Human numbers (no ``-p``) are rounded by zfs to 3 significant digits, so the result is
    approximate; callers that need bytes use ``-p`` (OpenZFS) or ``zfs get -p``."""
    if text is None:
        return None
    text = text.strip()
    if text in ("-", "", "none"):
        return None
    m = _HUMAN.fullmatch(text.upper())
    if not m:
        raise ValueError(f"not a ZFS size: {text!r}")
    if "." not in m.group(1):
        # exact (``-p``) numbers stay exact: through a float, values above 2**53 are
        # rounded -- OpenZFS prints snapshot_limit "none" as 18446744073709551615 with -p
        # (kernel-lab capture zfs_get_all), which came back as ...616.
        return int(m.group(1)) * _UNIT[m.group(2)]
    return int(round(float(m.group(1)) * _UNIT[m.group(2)]))


def _opt(text: str) -> str | None:
    return None if text in ("-", "none", "legacy", "") else text


def _rows(text: str, fields: tuple[str, ...], what: str) -> Iterator[dict[str, str]]:
    """The lines of ``-H`` output (tab-separated, one column per field) as dicts."""
    for line in text.splitlines():
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) != len(fields):
            raise ValueError(f"unexpected {what} line: {line!r}")
        yield dict(zip(fields, f))


def parse_get(text: str) -> dict[str, Property]:
    """Parse ``zfs get -H -p -o name,property,value,source PROPS NAME`` (one dataset)."""
    props: dict[str, Property] = {}
    for row in _rows(text, ("name", "property", "value", "source"), "zfs get"):
        prop, value, source = row["property"], row["value"], row["source"]
        unset = value == "-" and source == "-"
        props[prop] = Property(prop, None if unset else value, None if source == "-" else source)
    return props


# ``zpool list -H`` without ``-o`` (OpenZFS 2.1: tests/fixtures/kernel/zpool_list).
POOL_DEFAULT_FIELDS = ("name", "size", "allocated", "free", "checkpoint", "expandsize",
                       "fragmentation", "capacity", "dedupratio", "health", "altroot")


def parse_pools(text: str, *, exact: bool,
                fields: tuple[str, ...] | list[str] = POOL_FIELDS) -> list[Pool]:
    """Parse ``zpool list -H [-p] -o FIELDS`` (default: ``POOL_FIELDS``, what ``pools``
    asks for; ``POOL_DEFAULT_FIELDS`` for a plain ``zpool list -H``)."""
    out = []
    for row in _rows(text, tuple(fields), "zpool list"):
        out.append(Pool(row["name"], parse_size(row.get("size")),
                        parse_size(row.get("allocated")), parse_size(row.get("free")),
                        row.get("health", ""), exact=exact))
    return out


def parse_capabilities(version_rc: int, version_out: str, upgrade_out: str) -> Capabilities:
    """Decide the flavour from ``zfs version`` (rc, stdout) and ``zpool upgrade -v``."""
    if version_rc == 0 and version_out.strip():
        return _openzfs(version_out.strip().splitlines()[0], None)
    if re.search(r"feature flags", upgrade_out, re.IGNORECASE):
        return _openzfs(None, None)          # OpenZFS before 0.8 (no `zfs version`)
    m = re.search(r"running ZFS pool version (\d+)", upgrade_out)
    return Capabilities("zfs-fuse", None, int(m.group(1)) if m else None, parsable=False,
                        zvols=False, resume=False, send_flags=False)


def _openzfs(version: str | None, pool_version: int | None) -> Capabilities:
    return Capabilities("openzfs", version, pool_version, parsable=True, zvols=True,
                        resume=True, send_flags=True)


# ---------------------------------------------------------------------------- readers
def capabilities(ex) -> Capabilities:
    """Probe the ZFS flavour.  Runs ``zfs version`` and, if that fails, ``zpool upgrade -v``."""
    v = ex.run(["zfs", "version"], read_only=True, check=False)
    if v.rc == 0:
        return parse_capabilities(0, v.stdout, "")
    u = ex.run(["zpool", "upgrade", "-v"], read_only=True)
    return parse_capabilities(v.rc, v.stdout, u.stdout)


def get_props(ex, name: str, props: list[str] | tuple[str, ...]) -> dict[str, Property]:
    """Properties of one dataset, user properties (``imgstor:host``…) included.

    Runs ``zfs get -H -p -o name,property,value,source PROPS NAME`` (``get -p`` works on
    zfs-fuse too: tests/fixtures/userspace/zfs_get_p).  Missing dataset: ``NotFound``."""
    if not props:
        return {}
    argv = ["zfs", "get", "-H", "-p", "-o", "name,property,value,source",
            ",".join(props), positional(name, "dataset")]
    return parse_get(_run(ex, argv).stdout)


def pools(ex, *, caps: Capabilities | None = None) -> list[Pool]:
    """Imported pools.  Runs ``zpool list -H [-p] -o name,size,allocated,free,health``."""
    caps = caps or capabilities(ex)
    argv = ["zpool", "list", "-H"] + (["-p"] if caps.parsable else [])
    argv += ["-o", ",".join(POOL_FIELDS)]
    return parse_pools(_run(ex, argv).stdout, exact=caps.parsable)


def mountpoint(ex, name: str) -> str | None:
    """Where a filesystem dataset is mounted (the ``file`` volume kind keeps ``disk.raw``
    there).  Runs ``zfs get -H -o value mountpoint NAME``; None for none/legacy/-."""
    res = _run(ex, ["zfs", "get", "-H", "-o", "value", "mountpoint",
                    positional(name, "dataset")])
    return _opt(res.stdout.strip())


def list_columns(ex, root: str, columns: tuple[str, ...], *,
                 types: str = "all") -> list[dict[str, str | None]]:
    """Rows of ``zfs list -H -o COLUMNS -t TYPES -r ROOT`` (user properties allowed as
    columns; "-" becomes None).  No ``-p`` (zfs-fuse lacks it): sizes come human-readable.
    A missing root raises ``NotFound``."""
    argv = ["zfs", "list", "-H", "-o", ",".join(_prop_name(c) for c in columns),
            "-t", types, "-r", positional(root, "dataset")]
    return [{k: _opt(v) for k, v in r.items()}
            for r in _rows(_run(ex, argv).stdout, columns, "zfs list")]


def snapshots_by_age(ex, name: str) -> list[str]:
    """The snapshots of dataset NAME (not its children's), oldest first:
    ``zfs list -H -o name -t snapshot -s createtxg -d 1 NAME``.  Sorted by zfs itself:
    without ``-p`` (zfs-fuse lacks it) createtxg prints as ``1.02K``, useless to sort on.
    A missing dataset raises ``NotFound``."""
    argv = ["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-s", "createtxg",
            "-d", "1", positional(name, "dataset")]
    return [ln for ln in _run(ex, argv).stdout.splitlines()
            if ln.startswith(name + "@")]


def exists(ex, name: str) -> bool:
    """``lzc_exists`` if libzfs_core is loaded already (``_lzc.loaded``: a read never
    imports it), else runs ``zfs list -H -o name NAME``; False on "dataset does not exist"."""
    lib = _lzc.loaded()
    if lib is not None:
        return bool(_lzc_call(ex, lib, "lzc_exists", positional(name, "dataset"),
                              _lzc.b(name), read_only=True))
    res = ex.run(["zfs", "list", "-H", "-o", "name", positional(name, "dataset")],
                 read_only=True, check=False)
    if res.rc == 0:
        return True
    err = classify(RemoteCommandError(ex.host, res.argv, res.rc, res.stderr, res.stdout))
    if isinstance(err, NotFound):
        return False
    raise err


def _run(ex, argv: list[str]):
    return run_mapped(ex, argv, classify, read_only=True)


# ---------------------------------------------------------------------------- changes
def zvol_device(pool: str, vol: str) -> str:
    return f"/dev/zvol/{pool}/{vol}"


def _size_arg(size: int | str, *, round_to: int = 1) -> str:
    if isinstance(size, bool):
        raise TypeError("size must be bytes (int) or a zfs size string")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive: {size}")
        return str(-(-size // round_to) * round_to)
    if not re.fullmatch(r"[0-9]+(?:\.[0-9]+)?[KMGTP]?", size, re.ASCII):
        raise ValueError(f"not a zfs size: {size!r}")
    return size


def create_zvol(pool: str, vol: str, size: int | str,
                props: Mapping[str, str] | None = None) -> list[str]:
    """``zfs create -s -o volblocksize=128K [-o K=V]… -V SIZE POOL/VOL`` (sparse).

    An int size in bytes is rounded up to a multiple of 128K: zfs refuses a volsize that is
    not a multiple of volblocksize.  (zfs-fuse has no zvols: rc 134.)"""
    argv = ["zfs", "create", "-s", "-o", "volblocksize=128K"]
    for k, v in (props or {}).items():
        argv += ["-o", f"{_prop_name(k)}={v}"]
    return argv + ["-V", _size_arg(size, round_to=ZVOL_BLOCKSIZE),
                   positional(f"{pool}/{vol}", "dataset")]


def create_dataset(name: str, props: Mapping[str, str] | None = None, *,
                   parents: bool = False) -> list[str]:
    """``zfs create [-p] [-o K=V]… NAME``."""
    argv = ["zfs", "create"] + (["-p"] if parents else [])
    for k, v in (props or {}).items():
        argv += ["-o", f"{_prop_name(k)}={v}"]
    return argv + [positional(name, "dataset")]


def destroy(name: str, recursive: bool = False) -> list[str]:
    """``zfs destroy [-r] NAME``."""
    return ["zfs", "destroy"] + (["-r"] if recursive else []) + [positional(name, "dataset")]


def set_props(name: str, props: Mapping[str, str]) -> list[list[str]]:
    """One ``zfs set K=V NAME`` per property: zfs-fuse's ``set`` takes a single
    ``property=value`` (its usage: ``set <property=value> <filesystem|volume|snapshot> ...``)."""
    target = positional(name, "dataset")
    return [["zfs", "set", f"{_prop_name(k)}={v}", target] for k, v in props.items()]


def inherit(prop: str, name: str) -> list[str]:
    """``zfs inherit PROP NAME`` (clears a user property such as ``imgstor:host``)."""
    return ["zfs", "inherit", _prop_name(prop), positional(name, "dataset")]


def snapshot(name: str, props: Mapping[str, str] | None = None) -> list[str]:
    """``zfs snapshot [-o K=V]… POOL/DS@SNAP``."""
    if "@" not in name:
        raise ValueError(f"not a snapshot name: {name!r}")
    argv = ["zfs", "snapshot"]
    for k, v in (props or {}).items():
        argv += ["-o", f"{_prop_name(k)}={v}"]
    return argv + [positional(name, "snapshot")]


def _prop_name(k: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_.:-]*", k, re.ASCII):
        raise ValueError(f"not a zfs property name: {k!r}")
    return k


# ---------------------------------------------------------------------------- errors
REASON_BUSY = "busy"         # Conflict details["reason"]: in use right now, may pass

# stderr texts captured from zfs-fuse (tests/fixtures/userspace/zfs_*.err); the same texts
# come from OpenZFS's libzfs (lib/libzfs/libzfs_util.c zfs_standard_error).
_RULES = [
    (r"dataset does not exist|no such pool|parent does not exist|could not find any snapshots",
     NotFound, None),
    (r"dataset already exists|destination '[^']*' exists", AlreadyExists, None),
    (r"has children|has dependent clones", Conflict, None),
    (r"dataset is busy|pool or dataset is busy", Conflict, REASON_BUSY),
    (r"internal error: Function not implemented",
     RemoteCommandError, "zfs-fuse aborts (rc 134) on features it lacks, e.g. zvols"),
    (r"invalid option", RemoteCommandError,
     "this zfs lacks that option (zfs-fuse: no list -p, send -P/-c, receive -s)"),
]


def classify(err: RemoteCommandError) -> ImgstorError:
    """Map zfs/zpool stderr to ``NotFound``/``AlreadyExists``/``Conflict``; else ``err``."""
    return classify_by_text(err, _RULES)


# ---------------------------------------------------------------------------- backends
# Changes run here, on the node, through libzfs_core (pyzfs) in-process when
# ``_lzc.module()`` says it is usable (pyzfs imports and /dev/zfs exists: the kernel's
# OpenZFS), else through the ``zfs`` CLI as argv lists; each returns the backend it used.
# Both paths do the same thing and raise the same NotFound / AlreadyExists / Conflict; in a
# dry run a change is logged as ``SKIP> lzc_… NAME …`` (``Executor.call``) or ``SKIP> zfs
# …`` and not made.  Reads (``exists``, ``holds``) use libzfs_core only once a change (or
# the probe) has loaded it in this process (``_lzc.loaded``: its import is dearer than a
# command).  Reads that parse output (list, get, pools) stay on the CLI.
__all__ += ["backend", "create", "create_snapshot", "destroy_snapshots", "hold",
            "HOLD_TAG"]

HOLD_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", re.ASCII)

# libzfs texts for holds (lib/libzfs/libzfs_dataset.c zfs_hold_nvl / zfs_release)
_RULES += [
    (r"tag already exists on this dataset", AlreadyExists, None),
    (r"no such tag on this dataset", NotFound, None),
]


def backend(ex=None) -> str:
    """``"lzc"`` (libzfs_core in this process) or ``"cli"`` (the zfs command): what a
    change would use here.  Imports pyzfs to find out (see ``_lzc.loaded`` for the cost)."""
    return "lzc" if _lzc.module() is not None else "cli"


def _lzc_call(ex, lib, fn: str, target: str, *args, read_only: bool = False,
              text: str | None = None):
    """``lib.fn(*args)`` through ``ex.call`` (logged; skipped on a dry run unless
    read-only), its pyzfs errors mapped by ``_lzc.classify``."""
    zfs_error = getattr(getattr(lib, "exceptions", None), "ZFSError", ())
    try:
        return ex.call(text or f"{fn} {target}", getattr(lib, fn), *args, read_only=read_only)
    except Exception as e:
        if zfs_error and isinstance(e, zfs_error):
            raise _lzc.classify(ex.host, fn, target, e) from e
        raise


def _cli(ex, argv: list[str], **kw):
    return run_mapped(ex, argv, classify, **kw)


def _snap_name(name: str) -> str:
    if "@" not in name:
        raise ValueError(f"not a snapshot name: {name!r}")
    return positional(name, "snapshot")


def _user_props(props: Mapping[str, str] | None) -> dict[str, str]:
    """User properties only (``module:name``, e.g. ``imgstor:role``): a caller's props must
    never override what the driver sets (volsize, volblocksize, no refreservation)."""
    out = {}
    for k, v in (props or {}).items():
        if ":" not in _prop_name(k):
            raise ValueError(f"not a user property (module:name): {k!r}")
        v = str(v)
        if any(c in v for c in "\0\n\r"):
            raise ValueError(f"bad value for {k}: {v!r}")
        out[k] = v
    return out


def _create_argv(name: str, kind: str, size, props: dict[str, str]) -> list[str]:
    opts = [a for k, v in props.items() for a in ("-o", f"{k}={v}")]
    if kind == "volume":
        return (["zfs", "create", "-s", "-o", "volblocksize=128K"] + opts
                + ["-V", _size_arg(size, round_to=ZVOL_BLOCKSIZE), name])
    return ["zfs", "create"] + opts + [name]


def create(ex, name: str, *, kind: str, size: int | str | None = None,
           props: Mapping[str, str] | None = None) -> str:
    """Create a zvol (``kind="volume"``, sparse, volblocksize 128K) or a filesystem, with
    the caller's user properties (``{"imgstor:role": "volume"}``) set at creation.
    Returns the backend used.

    lzc: ``lzc_create(NAME, "zvol", {volsize, volblocksize, props})`` -- no refreservation,
    as ``zfs create -s`` (the CLI adds one only without ``-s``); a filesystem is then
    mounted as ``zfs create`` does (``zfs mount NAME`` when canmount=on and it has a
    mountpoint: lzc_create mounts nothing).  cli: ``zfs create -s -o volblocksize=128K
    [-o K=V]… -V SIZE NAME`` / ``zfs create [-o K=V]… NAME``.  Exists: ``AlreadyExists``;
    no parent: ``NotFound``."""
    if kind not in ("volume", "filesystem"):
        raise ValueError(f"kind must be volume or filesystem, not {kind!r}")
    if kind == "volume" and size is None:
        raise ValueError("a volume needs a size")
    name = positional(name, "dataset")
    user = _user_props(props)
    lib = _lzc.module()
    if lib is None:
        _cli(ex, _create_argv(name, kind, size, user))
        return "cli"
    lprops: dict = {}
    if kind == "volume" and size is not None:          # a volume has one (checked above)
        lprops = {"volsize": parse_size(_size_arg(size, round_to=ZVOL_BLOCKSIZE)),
                  "volblocksize": ZVOL_BLOCKSIZE}
    lprops.update(user)
    ds_type = "zvol" if kind == "volume" else "zfs"
    text = f"lzc_create {name} {ds_type} {json.dumps(lprops)}"
    _lzc_call(ex, lib, "lzc_create", name, _lzc.b(name), ds_type, _lzc.encode_props(lprops),
              text=text)
    if kind == "filesystem":
        _mount_new(ex, name)
    return "lzc"


def _mount_new(ex, name: str) -> None:
    if not ex.dry_run:
        got = get_props(ex, name, ["canmount", "mountpoint"])
        can, mp = got.get("canmount"), got.get("mountpoint")
        if (can is None or can.value != "on" or mp is None or mp.value is None
                or not mp.value.startswith("/")):
            return
    _cli(ex, ["zfs", "mount", name])


def create_snapshot(ex, snap: str, *, props: Mapping[str, str] | None = None) -> str:
    """Snapshot ``POOL/DS@SNAP`` with user properties.  ``lzc_snapshot([SNAP], PROPS)`` or
    ``zfs snapshot [-o K=V]… SNAP``.  Exists: ``AlreadyExists``; no dataset: ``NotFound``."""
    snap = _snap_name(snap)
    user = _user_props(props)
    lib = _lzc.module()
    if lib is None:
        _cli(ex, snapshot(snap, user))
        return "cli"
    _lzc_call(ex, lib, "lzc_snapshot", snap, [_lzc.b(snap)], _lzc.encode_props(user),
              text=f"lzc_snapshot {snap} {json.dumps(user)}")
    return "lzc"


def destroy_snapshots(ex, snaps: list[str]) -> str:
    """Destroy snapshots (never a dataset: every name must have ``@``); one that does not
    exist is skipped.  ``lzc_destroy_snaps(SNAPS, defer=False)`` (one pool) or one
    ``zfs destroy SNAP`` each.  A held or cloned snapshot: ``Conflict``."""
    snaps = [_snap_name(s) for s in snaps]
    lib = _lzc.module()
    if lib is None:
        for s in snaps:
            try:
                _cli(ex, destroy(s))
            except NotFound:            # "could not find any snapshots to destroy"
                pass
        return "cli"
    if snaps:
        _lzc_call(ex, lib, "lzc_destroy_snaps", ",".join(snaps), [_lzc.b(s) for s in snaps],
                  False)
    return "lzc"


def _tag(tag: str, *, strict: bool = True) -> str:
    """A tag imgstor puts on (``strict``: ``HOLD_TAG``), or one found on a snapshot that it
    releases (any that is safe as an argument)."""
    if strict and not HOLD_TAG.fullmatch(tag):
        raise ValueError(f"not a hold tag: {tag!r}")
    return positional(tag, "hold tag")


def hold(ex, snap: str, tag: str) -> str:
    """Put user hold TAG on SNAP (it cannot be destroyed until released).  ``lzc_hold``
    or ``zfs hold TAG SNAP``.  No snapshot: ``NotFound``; held already: ``AlreadyExists``."""
    snap, tag = _snap_name(snap), _tag(tag)
    lib = _lzc.module()
    if lib is None:
        _cli(ex, ["zfs", "hold", tag, snap])
        return "cli"
    missing = _lzc_call(ex, lib, "lzc_hold", snap, {_lzc.b(snap): _lzc.b(tag)},
                        text=f"lzc_hold {snap} {tag}")
    if missing:                 # lzc_hold skips missing snapshots and lists them
        raise NotFound(f"{ex.host}: lzc_hold {snap}: snapshot not found")
    return "lzc"


def release(ex, snap: str, tag: str) -> str:
    """Release hold TAG on SNAP.  ``lzc_release`` or ``zfs release TAG SNAP``.  No such
    snapshot or hold: ``NotFound``."""
    snap, tag = _snap_name(snap), _tag(tag, strict=False)
    lib = _lzc.module()
    if lib is None:
        _cli(ex, ["zfs", "release", tag, snap])
        return "cli"
    missing = _lzc_call(ex, lib, "lzc_release", snap, {_lzc.b(snap): [_lzc.b(tag)]},
                        text=f"lzc_release {snap} {tag}")
    if missing:                 # missing snapshots and SNAP#TAG for missing holds
        raise NotFound(f"{ex.host}: lzc_release {snap}: no hold {tag}")
    return "lzc"


# zfs-fuse's `zfs holds` runs a Python helper it does not ship (seen in the lab):
# rc 255, "internal error: /usr/lib/zfs/pyzfs.py not found" on stdout.  Holds work there.
# A zfs without `holds` (or its -H) says "invalid"/"unrecognized".
_HOLDS_UNAVAILABLE = ("pyzfs.py", "invalid", "unrecognized")


def holds(ex, snap: str) -> list[str] | None:
    """Tags of the user holds on SNAP, or None where this zfs cannot list them (zfs-fuse).
    ``lzc_get_holds`` if libzfs_core is loaded already (a read never imports it), else
    ``zfs holds -H SNAP`` (lines: NAME TAB TAG TAB TIMESTAMP).  No snapshot: ``NotFound``."""
    snap = _snap_name(snap)
    lib = _lzc.loaded()
    if lib is None:
        res = ex.run(["zfs", "holds", "-H", snap], read_only=True, check=False)
        if res.rc != 0:
            if any(t in res.stdout + res.stderr for t in _HOLDS_UNAVAILABLE):
                return None
            raise classify(RemoteCommandError(ex.host, res.argv, res.rc, res.stderr,
                                              res.stdout))
        return sorted(ln.split("\t")[1] for ln in res.stdout.splitlines()
                      if ln.count("\t") >= 2)
    got = _lzc_call(ex, lib, "lzc_get_holds", snap, _lzc.b(snap), read_only=True)
    return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in (got or {}))


def user_refs(ex, snap: str) -> int | None:
    """How many user holds SNAP has (its ``userrefs`` property), None if unknown.
    zfs-fuse reports it although it cannot list the holds' tags (seen in the lab: 0, then
    1 after ``zfs hold``), so "held by nobody" is known there without trying."""
    p = get_props(ex, _snap_name(snap), ["userrefs"]).get("userrefs")
    return None if p is None else p.as_int()


