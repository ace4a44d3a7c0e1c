"""Steps that run on a NAS: volumes, their imgstor properties, and iSCSI targets.

Each step reads the facts first and runs only what is missing; a re-run after a crash at
any point finishes the job.  Volume kinds: ``zvol`` (OpenZFS) and ``file`` (a dataset
holding a sparse ``disk.raw``, for ZFS without zvols such as zfs-fuse).  Target drivers:
``tgt`` (tgtadm) and ``lio`` (rtslib-fb when importable, else targetcli).
"""
from __future__ import annotations

import os
from typing import Any

from imgstor.errors import Conflict, NotFound, RemoteCommandError, UsageError
from imgstor.remote import targets
from imgstor.remote.drivers import zfs
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import Portal, StepResult
from imgstor.remote.steps.registry import step
from imgstor.remote.util import (
    CHAP_USER,
    MASK,
    chap_pair,
    destroy_dataset,
    mask_error,
    run_mapped,
    run_secret,
    wait_path,
)

__all__ = ["ensure_volume", "set_props", "ensure_target", "remove_target", "destroy_volume",
           "volume_facts", "FILE_NAME", "PROP_PREFIX", "MASK", "chap_pair", "run_secret",
           "mask_error"]

FILE_NAME = "disk.raw"            # the LUN's backing file in a `file` volume's dataset
PROP_PREFIX = "imgstor:"
DEVICE_WAIT = 30.0                # seconds for /dev/zvol/… to appear after create
# Ownership.  imgstor's datasets carry MARK, set at creation (``zfs create -o``) or when a
# volume is adopted on purpose (adopt=yes) or known from the frontend's store (volumes
# made before the mark existed).  A dataset without it is never exported, changed or
# destroyed.  Values: "volume" on a NAS; sync mode's node datasets use their own roles.
MARK = PROP_PREFIX + "role"
ROLE_VOLUME = "volume"
SIZE_PROP = PROP_PREFIX + "size"  # bytes promised at creation (the capacity check)
SNAP_PREFIX = "imgstor-"          # imgstor's own snapshots: POOL/VOL@imgstor-…
HOLD_PREFIX = "imgstor"           # imgstor's own `zfs hold` tags
BASE_TAG = "imgstor-base"         # the hold on a sync volume's last common snapshot
_TYPES = {"zvol": "volume", "file": "filesystem"}


def _check_pool(ex: Executor, pool: str) -> None:
    r = ex.run(["zpool", "list", "-H", "-o", "name", pool], read_only=True, check=False)
    if r.rc != 0:
        raise NotFound(f"{ex.host}: zpool {pool!r} not found ({r.stderr.strip() or r.rc})")


def _zfs(ex: Executor, argv: list[str]) -> None:
    run_mapped(ex, argv, zfs.classify)


def _wait_device(ex: Executor, path: str) -> None:
    wait_path(ex, path, timeout=DEVICE_WAIT)


_VOL_PROPS = ("type", "volsize", "mountpoint", MARK)


def _read_volume(ex: Executor, name: str, extra: tuple[str, ...] = ()) -> dict | None:
    """One `zfs get` for existence, type, size, mountpoint (and ``extra`` properties)."""
    try:
        props = zfs.get_props(ex, name, list(_VOL_PROPS + extra))
    except NotFound:
        return None
    return props


def volume_facts(ex: Executor, pool: str, vol: str, kind: str,
                 props: dict | None = None) -> dict | None:
    """What is there: {"path", "size"} or None when the volume does not exist."""
    name = f"{pool}/{vol}"
    props = props if props is not None else _read_volume(ex, name)
    if props is None:
        return None
    if kind == "zvol":
        p = props.get("volsize")
        return {"path": zfs.zvol_device(pool, vol), "size": p.as_int() if p else None}
    mp = props.get("mountpoint")
    if mp is None or not mp.value or mp.value in ("none", "legacy", "-"):
        return {"path": None, "size": None}
    path = os.path.join(mp.value, FILE_NAME)
    return {"path": path, "size": ex.fs.size(path) if ex.fs.exists(path) else None}


def _ours(ex: Executor, name: str, kind: str, props: dict, *, owned: bool,
          adopt: bool, role_wanted: str = ROLE_VOLUME) -> bool:
    """Check that existing dataset NAME may be used (or destroyed) as an imgstor dataset of
    KIND and role ROLE_WANTED (a NAS volume; a node's local copy); return True when the
    mark must still be set.  Conflict otherwise: the wrong type, another role, or no mark
    and neither known to the store (``owned``) nor adopted on purpose."""
    t = props.get("type")
    have = t.value if t is not None else None
    if have != _TYPES[kind]:
        what = "a zvol" if kind == "zvol" else "a filesystem dataset (file volume)"
        raise Conflict(f"{ex.host}: {name} is a {have or 'dataset of unknown type'}, not "
                       f"{what}: imgstor will not use or destroy it", dataset=name)
    m = props.get(MARK)
    role = m.value if m is not None and m.source == "local" else None
    if role == role_wanted:
        return False
    if role is not None:
        raise Conflict(f"{ex.host}: {name} is imgstor's {role}, not a {role_wanted}",
                       dataset=name)
    if owned or adopt:
        return True
    raise Conflict(f"{ex.host}: {name} exists and is not imgstor's (no {MARK} property, "
                   "not in imgstor's state store): imgstor will not export, change or "
                   "destroy it; to export it anyway, map it with adopt=yes", dataset=name)


def _promised(ex: Executor, pool: str) -> int:
    """Bytes promised to imgstor's volumes on POOL: their ``imgstor:size`` (set at
    creation), else their volsize.  One ``zfs list -r`` of the pool."""
    total = 0
    for r in zfs.list_columns(ex, pool, ("name", MARK, SIZE_PROP, "volsize"),
                              types="filesystem,volume"):
        if r[MARK] == ROLE_VOLUME:
            total += zfs.parse_size(r[SIZE_PROP]) or zfs.parse_size(r["volsize"]) or 0
    return total


def _gib(n: int | float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _check_capacity(ex: Executor, pool: str, size: int, overcommit: float) -> None:
    """Refuse a new volume when imgstor's volumes on POOL plus SIZE would exceed the pool's
    size times ``overcommit`` (volumes stay sparse; this bounds the promise)."""
    p = next((p for p in zfs.pools(ex) if p.name == pool), None)
    if p is None or p.size is None:
        raise NotFound(f"{ex.host}: zpool {pool!r} not found")
    promised = _promised(ex, pool)
    limit = p.size * overcommit
    if promised + size > limit:
        raise Conflict(
            f"{ex.host}: zpool {pool} cannot take a {_gib(size)} volume: imgstor's volumes "
            f"there are promised {_gib(promised)}, the pool is {_gib(p.size)} "
            f"({_gib(p.free or 0)} free) and overcommit is {overcommit:g} (limit "
            f"{_gib(limit)}); raise `overcommit` for this NAS in the config, or use another "
            "pool", pool=pool, promised=promised, free=p.free)


@step("nas.ensure_volume")
def ensure_volume(ex: Executor, *, pool: str, vol: str, size: int, kind: str,
                  owned: bool = False, adopt: bool = False,
                  overcommit: float | None = None) -> StepResult:
    """Ensure imgstor volume POOL/VOL exists; an existing one is kept as it is.

    A new one carries imgstor's mark (``imgstor:role=volume``) and its promised size
    (``imgstor:size``), after the capacity check when ``overcommit`` is given.  An existing
    dataset is used only if it is of KIND's type and carries the mark, or is known to the
    store (``owned``) or adopted on purpose (``adopt``): then the mark is set now.
    zvol: ``zfs create -s -o volblocksize=128K -o imgstor:…=… -V SIZE POOL/VOL`` (or
    libzfs_core's ``lzc_create``, see ``zfs.create``), then waits for /dev/zvol/POOL/VOL.
    file: ``zfs create -o imgstor:…=… POOL/VOL`` (or ``lzc_create`` + ``zfs mount``) and
    ``truncate -s SIZE disk.raw``.  ``facts["zfs_backend"]``: ``lzc`` or ``cli`` when it
    created the volume, else None."""
    if kind not in _TYPES:
        raise UsageError(f"unknown volume kind {kind!r}")
    name = f"{pool}/{vol}"
    props = _read_volume(ex, name)
    mark_now = props is not None and _ours(ex, name, kind, props, owned=owned, adopt=adopt)
    have = volume_facts(ex, pool, vol, kind, props) if props is not None else None
    if have is None:
        _check_pool(ex, pool)
        if overcommit is not None:
            _check_capacity(ex, pool, size, overcommit)
    if kind == "zvol":            # zfs rounds a volsize up to the volblocksize
        size = -(-int(size) // zfs.ZVOL_BLOCKSIZE) * zfs.ZVOL_BLOCKSIZE
    marks = {MARK: ROLE_VOLUME, SIZE_PROP: str(int(size))}
    changed = False
    backend = None
    path: str | None
    if kind == "zvol":
        if have is None:
            backend = zfs.create(ex, name, kind="volume", size=size, props=marks)
            changed = True
        path = zfs.zvol_device(pool, vol)
        _wait_device(ex, path)
        actual = have["size"] if have else size
    else:
        if have is None:
            backend = zfs.create(ex, name, kind="filesystem", props=marks)
            changed = True
        path = have["path"] if have else None
        if path is None and not (ex.dry_run and have is None):
            path = (volume_facts(ex, pool, vol, kind) or {}).get("path")
        # an existing dataset's facts are real: a dry run refuses it as the real run does
        if path is None and not (ex.dry_run and have is None):
            raise Conflict(f"{ex.host}: dataset {name} has no mountpoint; a file volume needs one")
        path = path or f"<mountpoint of {name}>/{FILE_NAME}"
        if have is None or have["size"] is None:
            if ex.fs.is_link(path):        # never follow a link planted in the dataset
                raise Conflict(f"{ex.host}: {path} is a symbolic link; refusing to use it")
            ex.run(["truncate", "-s", str(int(size)), path])
            changed = True
            actual = size
        else:
            actual = have["size"]
    if mark_now:
        for argv in zfs.set_props(name, {MARK: ROLE_VOLUME, SIZE_PROP: str(int(actual))}):
            _zfs(ex, argv)
        changed = True
    if have is not None and have["size"] is not None and have["size"] != size:
        msg = (f"volume {name} exists with size {have['size']} "
               f"(requested {size}; kept as it is)")
    elif have is None and changed:
        msg = f"created volume {name} ({size} bytes)"
    else:
        msg = f"volume {name} exists"
    if mark_now:
        msg += f"; marked as imgstor's ({'adopted' if adopt and not owned else 'known to the store'})"
    return StepResult(changed, {"path": path, "size": actual, "created": have is None,
                                "size_differs": bool(have and have["size"] is not None
                                                     and have["size"] != size),
                                "marked": mark_now, "zfs_backend": backend}, msg)


@step("nas.set_props")
def set_props(ex: Executor, *, pool: str, vol: str, props: dict) -> StepResult:
    """Ensure the volume's ``imgstor:*`` user properties: a value sets, None clears
    (``zfs set`` / ``zfs inherit``), so the store can be rebuilt from the NAS alone."""
    name = f"{pool}/{vol}"
    keys = [PROP_PREFIX + k for k in props]
    if any(not k[len(PROP_PREFIX):].replace("_", "").isalnum() for k in keys):
        raise UsageError(f"bad property names: {sorted(props)}")
    try:
        have = zfs.get_props(ex, name, keys)
    except NotFound:
        if all(v is None for v in props.values()):      # nothing to clear on no volume
            return StepResult(False, {}, f"no volume {name}: nothing to clear")
        if ex.dry_run:
            return StepResult(True, {}, f"would set {', '.join(keys)} on {name}")
        raise NotFound(f"{ex.host}: volume {name} does not exist") from None
    changed = False
    for k, v in props.items():
        full = PROP_PREFIX + k
        cur = have.get(full)
        # a received value is not imgstor's: setting it here makes it local (issue 18)
        cur_val = cur.value if cur is not None and cur.source == "local" else None
        if v is None and cur_val is not None:
            _zfs(ex, zfs.inherit(full, name))
            changed = True
        elif v is not None and cur_val != str(v):
            for argv in zfs.set_props(name, {full: str(v)}):
                _zfs(ex, argv)
            changed = True
    return StepResult(changed, {}, f"properties of {name} {'updated' if changed else 'as wanted'}")


@step("nas.get_props", read_only=True)
def get_props(ex: Executor, *, pool: str, vol: str, kind: str) -> StepResult:
    """Read-only: the volume's imgstor properties and size (None facts if it is missing)."""
    name = f"{pool}/{vol}"
    keys = tuple(PROP_PREFIX + k for k in ("host", "target", "mode", "state"))
    props = _read_volume(ex, name, keys)
    if props is None:
        return StepResult(False, {"exists": False}, f"no volume {name}")
    have = volume_facts(ex, pool, vol, kind, props)
    out = {k[len(PROP_PREFIX):]: (props[k].value if k in props and props[k].source
                                  == "local" else None) for k in keys}
    return StepResult(False, {"exists": True, **(have or {}), "props": out}, "")


@step("nas.ensure_target")
def ensure_target(ex: Executor, *, driver: str, iqn: str, initiator: str, portal: Any,
                  path: str | None = None, pool: str | None = None, vol: str | None = None,
                  kind: str | None = None, chap: dict | None = None) -> StepResult:
    """Ensure target IQN exports PATH (or volume POOL/VOL of KIND) as LUN 1 to exactly one
    initiator, by name; with ``chap`` ({"user", "password"}) that initiator must also log
    in with that CHAP account, without it no account is required.

    The driver (tgt: targets/tgt.py, LIO: targets/lio.py) comes from
    imgstor.remote.targets, and runs under the node's targets lock."""
    pair = chap_pair(chap)
    if path is None:
        if not (pool and vol and kind):
            raise UsageError("nas.ensure_target needs path, or pool, vol and kind")
        have = volume_facts(ex, pool, vol, kind)
        if have is None or not have["path"]:
            if not ex.dry_run:
                raise NotFound(f"{ex.host}: volume {pool}/{vol} does not exist")
            path = f"<path of {pool}/{vol}>"
        else:
            path = have["path"]
    with targets.lock(ex):
        return targets.get(driver).ensure(ex, iqn=iqn, path=path, initiator=initiator,
                                          portal=Portal.parse(portal), chap=pair)


@step("nas.remove_target")
def remove_target(ex: Executor, *, driver: str, iqn: str, chap_user: str | None = None,
                  force: bool = False) -> StepResult:
    """Ensure target IQN is gone (its sessions are dropped with it), and with tgt the
    ``imgstor-`` CHAP accounts bound to it and ``chap_user`` (accounts are global in tgtd;
    LIO keeps CHAP in the ACL, which goes with the target).

    Refused (Conflict, naming the initiators) while an initiator is logged in to the
    target -- with the userspace initiator that is how a VM's qemu holding the disk shows
    (audit M9) -- unless ``force``: then their sessions end with the target."""
    if chap_user is not None and not CHAP_USER.fullmatch(str(chap_user)):
        raise UsageError(f"bad CHAP user {chap_user!r}", field="chap_user")
    drv = targets.get(driver)
    with targets.lock(ex):
        return drv.remove(ex, iqn=iqn, chap_user=chap_user, force=force)


@step("nas.target_facts", read_only=True)
def target_facts(ex: Executor, *, driver: str, iqn: str | None = None) -> StepResult:
    """Read-only: the targets (or the one IQN) with their LUN paths, ACLs and sessions."""
    rows = targets.get(driver).facts(ex)
    if iqn is not None:
        rows = [r for r in rows if r["iqn"] == iqn]
    return StepResult(False, {"targets": rows}, "")


@step("nas.destroy_volume")
def destroy_volume(ex: Executor, *, pool: str, vol: str, kind: str, driver: str | None,
                   owned: bool = False, role: str = ROLE_VOLUME) -> StepResult:
    """Ensure imgstor volume POOL/VOL is gone, with imgstor's own snapshots
    (``@imgstor-…``) and holds (``imgstor…`` tags), and nothing else.  ``role``: what the
    dataset must be (``volume`` on a NAS; ``local-copy``: a sync volume's copy on its node,
    where there is no target driver to ask, ``driver`` None; ``temp-write``: its overlay's
    write store, destroyed only by ``clean host storagemap``).

    Refused (Conflict, nothing destroyed) when the dataset is not imgstor's (see
    ``ensure_volume``; ``owned``: the frontend's store knows it), is exported by a target,
    or has children, snapshots or holds that imgstor did not make, or clones.  Never
    ``zfs destroy -r``: each snapshot of ours, then the volume, by name."""
    if role not in (ROLE_VOLUME, "local-copy", "temp-write"):
        raise UsageError(f"bad role {role!r}", field="role")
    name = f"{pool}/{vol}"
    props = _read_volume(ex, name)
    if props is None:
        return StepResult(False, {}, f"no volume {name}")
    _ours(ex, name, kind, props, owned=owned, adopt=False, role_wanted=role)
    have = volume_facts(ex, pool, vol, kind, props) or {}
    for t in (target_facts(ex, driver=driver).facts["targets"] if driver else ()):
        if have.get("path") and have["path"] in t["paths"]:
            raise Conflict(f"{ex.host}: {name} is exported by target {t['iqn']}; "
                           "unmap it first (remove host storagemap)")
    below = zfs.list_columns(ex, name, ("name", "type"), types="all")
    children = [str(r["name"]) for r in below
                if r["name"] != name and "@" not in str(r["name"])]
    snaps = [str(r["name"]) for r in below if str(r["name"]).startswith(name + "@")]
    foreign = [sn for sn in snaps if not sn.split("@", 1)[1].startswith(SNAP_PREFIX)]
    held: list[str] = []
    ours_held: list[tuple[str, str]] = []
    unlisted: list[str] = []
    for sn in snaps:
        if sn in foreign:
            continue
        tags = zfs.holds(ex, sn)
        if tags is None:
            unlisted.append(sn)
        for tag in tags or ():
            (ours_held.append((tag, sn)) if tag.startswith(HOLD_PREFIX)
             else held.append(f"{sn} (hold {tag})"))
    in_way = children + foreign + held
    if in_way:
        raise Conflict(f"{ex.host}: refusing to destroy {name}: "
                       f"{', '.join(in_way[:10])}{' …' if len(in_way) > 10 else ''} "
                       "not made by imgstor; move or destroy them yourself first",
                       dataset=name, in_the_way=in_way)
    for tag, sn in ours_held:
        zfs.release(ex, sn, tag)
    for sn in unlisted:
        # zfs-fuse lists no holds (None above) but counts them: a held snapshot of ours
        # gets imgstor's tags released by trying; a hold left is someone else's (busy below)
        if zfs.user_refs(ex, sn):
            for tag in (HOLD_PREFIX, BASE_TAG):
                try:
                    zfs.release(ex, sn, tag)
                except NotFound:
                    pass
    for sn in snaps:
        try:
            ex.run(zfs.destroy(sn))
        except RemoteCommandError as e:
            err = zfs.classify(e)
            if isinstance(err, NotFound):
                continue
            raise Conflict(f"{ex.host}: cannot destroy snapshot {sn} ({e.stderr.strip()}): "
                           f"clones or holds that imgstor did not make?; {name} is kept",
                           dataset=name) from e
    # zfs-fuse quirk (seen in the lab): `zfs destroy` right after use says "dataset is
    # busy" for a second or two, and may still complete a moment later.  Unmount first,
    # then retry a bounded number of times; "does not exist" means it is done.
    if kind == "file":
        ex.run(["zfs", "umount", name], check=False)
    destroy_dataset(ex, name)
    return StepResult(True, {"snapshots": snaps}, f"destroyed {name}")
