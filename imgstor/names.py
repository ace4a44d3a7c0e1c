"""The names imgstor derives from a volume, and the refusal of names that would collide.

A volume ``NAS:POOL/VOL`` gives rise to several names on hosts, each folded by the tool
that uses it:

- the target IQN ``iqn.2001-04.com.<nas>-<vol>`` (the Rocks guide's form), lower-cased
  (RFC 3720 names are case-insensitive; tgt and LIO lower-case them), and the tgt target
  of the same name;
- the LIO block backstore: the IQN's tail with every character but ``[A-Za-z0-9_-]``
  turned into ``_`` and cut at 64 characters (``remote.naming.backstore_name``, as the
  node's LIO driver names it);
- on the compute node it is mapped to: the volume name itself (the local copy of a sync
  volume, dm names) and the derived ``<vol>-temp-write`` / ``<vol>-snap``;
- the CHAP account (random per volume, kept beside the state).

imgstor refuses, before any host is touched, a volume whose derived names equal another
volume's, and names the other volume: it never encodes names to make them unique (the
guide's IQN form stays readable).  Pure functions over the store's records.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable

from imgstor import validate
from imgstor.errors import Conflict, UsageError
from imgstor.remote.naming import backstore_name

__all__ = ["target_iqn", "backstore_name", "NODE_SUFFIXES", "check_name", "check_collisions"]

# Names imgstor derives on a compute node from a volume's name (sync mode).
NODE_SUFFIXES = ("-temp-write", "-snap")


def target_iqn(nas: str, vol: str) -> str:
    """``iqn.2001-04.com.<nas>-<vol>``, lower-cased, as the Rocks img-storage guide names
    targets."""
    try:
        return validate.iqn(f"iqn.2001-04.com.{nas}-{vol}".lower())
    except UsageError:
        raise UsageError(f"volume name {vol!r} cannot form an iSCSI target name "
                         "(use letters, digits, '.', ':', '-')", field="volume") from None


def check_name(vol: str) -> None:
    """Refuse a volume name that is one of imgstor's derived node names
    (``x-temp-write``, ``x-snap``: the overlay and temp-write of volume ``x``)."""
    for suffix in NODE_SUFFIXES:
        if vol.endswith(suffix):
            raise UsageError(f"invalid volume {vol!r}: names ending in {suffix!r} are "
                             f"imgstor's own (the {suffix[1:]} of volume "
                             f"{vol[:-len(suffix)]!r} on a compute node)", field="volume")


@lru_cache(maxsize=65536)
def _derived(nas: str, vol: str) -> dict[str, str]:
    # cached: a map checks every volume of the store twice (before and under the lock)
    iqn = target_iqn(nas, vol)
    return {"target": iqn, "LIO backstore": backstore_name(iqn)}


def check_collisions(volumes: Iterable, nas: str, vol: str, host: str | None = None,
                     chap_user: str | None = None) -> None:
    """Conflict (exit 8) if NAS:VOL's derived names equal another volume's in
    ``volumes`` (the store's ``Volume`` records), or if HOST already holds a volume of the
    same name from another NAS (its local copy, overlay and dm names would be the same).
    The volume's own record is skipped."""
    check_name(vol)
    mine = _derived(nas, vol)
    wanted = {v: k for k, v in mine.items()}
    for other in volumes:
        if other.nas == nas and other.vol == vol:
            continue
        try:
            theirs = _derived(other.nas, other.vol)
        except UsageError:                   # a record no map could have made: not ours
            continue
        for kind, name in theirs.items():
            if wanted.get(name) == kind:
                raise Conflict(
                    f"{nas}:{vol} would use {kind} {name}, which volume "
                    f"{other.nas}:{other.vol} already uses (names that differ only in case, "
                    f"in '.'/':' or after the 64th character of a LIO backstore collide); "
                    f"choose another volume name", other=f"{other.nas}/{other.vol}")
        if chap_user and other.extra.get("chap_user") == chap_user:
            raise Conflict(f"{nas}:{vol}: CHAP account {chap_user} is already used by "
                           f"{other.nas}:{other.vol}; remove its credentials file to get new ones")
        if host and other.host == host and other.vol == vol:
            raise Conflict(f"{host} already holds volume {vol} from {other.nas} "
                           f"({other.state}); a node holds one volume of a name (its local "
                           f"copy and overlay are named after it): unmap "
                           f"{other.nas}:{vol} first")
