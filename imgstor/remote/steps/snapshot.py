"""Snapshots of an imgstor volume on the NAS (the base of sync mode's copies):
``nas.snapshot``; ``nas.prune_snapshots`` keeps the newest (and destroys the others);
``nas.hold_base`` / ``nas.release_base`` move the hold ``imgstor-base`` that marks a sync
volume's last common snapshot (the base of the next incremental: never destroyed while
held, by imgstor or by a stray ``zfs destroy``).

Only imgstor's own snapshots are touched.  The name must be ``imgstor-…``
(``SNAPSHOT_NAME``; anything else is a ``UsageError`` before anything runs) and a snapshot
is made with the user property ``imgstor:role=snapshot`` set on it.  A snapshot with an
imgstor name that lacks that local property was made by someone else: ``nas.snapshot``
refuses it (``Conflict``).  ``hold=True`` puts the user hold ``imgstor`` on the snapshot (a
stray ``zfs destroy`` cannot remove the base of the next incremental); the prune releases
that hold and leaves a snapshot someone else holds.

The zfs driver runs the changes through libzfs_core in this process where it can (pyzfs and
/dev/zfs) and the zfs CLI otherwise; ``facts["zfs_backend"]`` says which ran the step's
changes (``lzc``/``cli``; None when it changed nothing: reads that find everything done
never load pyzfs, see ``_lzc.loaded``).
"""
from __future__ import annotations

import re

from imgstor.errors import AlreadyExists, Conflict, NotFound, UsageError
from imgstor.remote.drivers import zfs
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import StepResult
from imgstor.remote.steps.nas import BASE_TAG, HOLD_PREFIX, SNAP_PREFIX
from imgstor.remote.steps.registry import step

__all__ = ["snapshot", "hold_base", "release_base", "prune_snapshots",
           "SNAPSHOT_NAME", "ROLE_PROP", "SNAP_ROLE", "HOLD_TAG", "BASE_TAG"]

# nas.destroy_volume takes snapshots named SNAP_PREFIX… and holds tagged HOLD_PREFIX… for
# imgstor's own: the names made here must match
SNAPSHOT_NAME = re.compile(re.escape(SNAP_PREFIX) + r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", re.ASCII)
# the same patterns as imgstor.validate (not shipped to nodes) for zpool and volume names
_POOL = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", re.ASCII)
_VOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", re.ASCII)
ROLE_PROP = "imgstor:role"
SNAP_ROLE = "snapshot"
HOLD_TAG = HOLD_PREFIX


def _name(pool: object, vol: object, snapshot: object) -> str:
    for field, value, pat in (("pool", pool, _POOL), ("vol", vol, _VOL),
                              ("snapshot", snapshot, SNAPSHOT_NAME)):
        if not isinstance(value, str) or not pat.fullmatch(value):
            why = " (imgstor's snapshots are named imgstor-…)" if field == "snapshot" else ""
            raise UsageError(f"bad {field} {value!r}{why}", field=field)
    return f"{pool}/{vol}@{snapshot}"


def _check_ours(ex: Executor, snap: str) -> None:
    """An existing snapshot must carry imgstor:role=snapshot set on itself (a value
    inherited from the volume does not count)."""
    p = zfs.get_props(ex, snap, [ROLE_PROP]).get(ROLE_PROP)
    if p is None or p.value != SNAP_ROLE or p.source != "local":
        have = "unset" if p is None or p.value is None else f"{p.value!r} ({p.source})"
        raise Conflict(f"{ex.host}: snapshot {snap} was not made by imgstor "
                       f"({ROLE_PROP} is {have}); leaving it alone")


@step("nas.snapshot")
def snapshot(ex: Executor, *, pool: str, vol: str, snapshot: str,
             hold: bool = False) -> StepResult:
    """Ensure snapshot POOL/VOL@SNAPSHOT (``imgstor-…``) exists with
    ``imgstor:role=snapshot``, and with ``hold`` the user hold ``imgstor`` on it.

    lzc: ``lzc_exists``, ``lzc_snapshot``, ``lzc_get_holds``, ``lzc_hold``; cli: ``zfs list
    -H -o name``, ``zfs snapshot -o imgstor:role=snapshot``, ``zfs holds -H``, ``zfs hold``.
    ``zfs get`` reads the mark of an existing snapshot."""
    snap = _name(pool, vol, snapshot)
    be = None
    changed = created = False
    if zfs.exists(ex, snap):
        _check_ours(ex, snap)
    else:
        try:
            be = zfs.create_snapshot(ex, snap, props={ROLE_PROP: SNAP_ROLE})
        except NotFound:
            raise NotFound(f"{ex.host}: volume {pool}/{vol} does not exist") from None
        changed = created = True
    if hold:
        # a dry run made nothing to list holds of; zfs-fuse cannot list them (None)
        tags = [] if created and ex.dry_run else zfs.holds(ex, snap)
        if tags is None or HOLD_TAG not in tags:
            try:
                be = zfs.hold(ex, snap, HOLD_TAG)
                changed = True
            except AlreadyExists:       # zfs-fuse: held already, found by trying
                pass
    facts = {"snapshot": snap, "created": created, "held": bool(hold), "zfs_backend": be}
    what = "created" if created else "exists"
    return StepResult(changed, facts, f"snapshot {snap} {what}" + (", held" if hold else ""))


@step("nas.prune_snapshots")
def prune_snapshots(ex: Executor, *, pool: str, vol: str, keep: int,
                    protect: list[str] | tuple[str, ...] = ()) -> StepResult:
    """Ensure POOL/VOL keeps at most KEEP (>= 1) of imgstor's snapshots (``@imgstor-…``),
    the newest by creation; older ones go (their ``imgstor`` hold released first).  Never
    touched: PROTECT (short names: the last common snapshot of a pull), snapshots with
    other names, and one held by someone else or cloned (left, named in the facts).

    A snapshot holding ``imgstor-base`` (the last common one) is left too: where the holds
    can be listed it is not tried, on zfs-fuse its destroy fails (busy) and it is left.

    Runs ``zfs list -H -o name -t snapshot -s createtxg -d 1``, ``zfs holds -H``,
    ``zfs release``, ``zfs destroy SNAP`` (or their lzc calls)."""
    name = _name(pool, vol, "imgstor-x").split("@", 1)[0]
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise UsageError(f"bad keep {keep!r}: at least 1", field="keep")
    protected = {p for p in protect if isinstance(p, str)}
    ours = []
    for sn in zfs.snapshots_by_age(ex, name):
        short = sn.split("@", 1)[1]
        if SNAPSHOT_NAME.fullmatch(short):
            ours.append((sn, short))
    old = ours[:-keep] if len(ours) > keep else []
    gone: list[str] = []
    left: list[str] = []
    for sn, short in old:
        if short in protected:
            left.append(f"{sn} (the last common snapshot)")
            continue
        tags = zfs.holds(ex, sn)
        if tags is not None and BASE_TAG in tags:
            left.append(f"{sn} (held as the last common snapshot)")
            continue
        others = sorted(set(tags or ()) - {HOLD_TAG})
        if others:
            left.append(f"{sn} (held by {', '.join(others)})")
            continue
        if tags is None or HOLD_TAG in tags:
            try:
                zfs.release(ex, sn, HOLD_TAG)
            except NotFound:                # zfs-fuse: not held by us, found by trying
                pass
        try:
            zfs.destroy_snapshots(ex, [sn])
        except Conflict as e:
            left.append(f"{sn} ({e.message})")
            continue
        gone.append(sn)
    kept = [sn for sn, _ in ours if sn not in gone]
    msg = (f"destroyed {len(gone)} old snapshot(s) of {name}" if gone
           else f"{name} has {len(ours)} imgstor snapshot(s), keep {keep}")
    return StepResult(bool(gone), {"destroyed": gone, "kept": kept, "left": left}, msg)


def _base_held(ex: Executor, snap: str) -> bool | None:
    """Whether SNAP holds ``imgstor-base``; None where this zfs cannot tell (zfs-fuse lists
    no tags, but its ``userrefs`` 0 says "no hold at all")."""
    tags = zfs.holds(ex, snap)
    if tags is not None:
        return BASE_TAG in tags
    return False if zfs.user_refs(ex, snap) == 0 else None


def _release_bases(ex: Executor, name: str, keep: str | None) -> tuple[list[str], str | None]:
    """Release ``imgstor-base`` from every imgstor snapshot of NAME but KEEP (short name)."""
    released: list[str] = []
    be = None
    for sn in zfs.snapshots_by_age(ex, name):
        short = sn.split("@", 1)[1]
        if not SNAPSHOT_NAME.fullmatch(short) or short == keep:
            continue
        if _base_held(ex, sn) is False:
            continue
        try:
            be = zfs.release(ex, sn, BASE_TAG)
            released.append(sn)
        except NotFound:                # zfs-fuse: not held by this tag, found by trying
            pass
    return released, be


@step("nas.hold_base")
def hold_base(ex: Executor, *, pool: str, vol: str, snapshot: str,
              release_others: bool = False) -> StepResult:
    """Ensure POOL/VOL@SNAPSHOT (``imgstor-…``; made or received by imgstor's copy) holds
    ``imgstor-base``, the mark of the last common snapshot of a sync volume; with
    RELEASE_OTHERS, also that no other imgstor snapshot of POOL/VOL holds it.  Callers hold
    the new base on both sides first and release the old one after (a crash in between
    leaves two bases held, never none).  No such snapshot: ``NotFound``.

    Runs ``zfs list -H -o name``, ``zfs holds -H`` (zfs-fuse: ``zfs get userrefs``),
    ``zfs hold imgstor-base SNAP``; with RELEASE_OTHERS ``zfs list -t snapshot`` and
    ``zfs release imgstor-base OLD`` (or their lzc calls)."""
    snap = _name(pool, vol, snapshot)
    if not zfs.exists(ex, snap):
        raise NotFound(f"{ex.host}: no snapshot {snap} to hold")
    be = None
    changed = False
    if not _base_held(ex, snap):
        try:
            be = zfs.hold(ex, snap, BASE_TAG)
            changed = True
        except AlreadyExists:           # zfs-fuse: held already, found by trying
            pass
    released: list[str] = []
    if release_others:
        released, be2 = _release_bases(ex, snap.split("@", 1)[0], snapshot)
        be = be or be2
    changed = changed or bool(released)
    msg = f"{snap} holds {BASE_TAG}" + (f"; released it from {', '.join(released)}"
                                        if released else "")
    return StepResult(changed, {"snapshot": snap, "released": released, "zfs_backend": be},
                      msg)


@step("nas.release_base")
def release_base(ex: Executor, *, pool: str, vol: str) -> StepResult:
    """Ensure no imgstor snapshot of POOL/VOL holds ``imgstor-base`` (a sync volume that
    is back on its NAS for good: no next incremental).  Nothing else is touched; no
    volume: nothing to do.

    Runs ``zfs list``, ``zfs holds -H`` (zfs-fuse: ``zfs get userrefs``), ``zfs release
    imgstor-base SNAP`` (or their lzc calls)."""
    name = _name(pool, vol, "imgstor-x").split("@", 1)[0]
    if not zfs.exists(ex, name):
        return StepResult(False, {"released": [], "zfs_backend": None}, f"no volume {name}")
    released, be = _release_bases(ex, name, None)
    msg = (f"released {BASE_TAG} from {', '.join(released)}" if released
           else f"no snapshot of {name} holds {BASE_TAG}")
    return StepResult(bool(released), {"released": released, "zfs_backend": be}, msg)
