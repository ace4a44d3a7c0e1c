"""The target drivers of a NAS, by name: os-brick's connector factory for targets.

``get("tgt")`` is targets/tgt.py (tgtadm), ``get("lio")`` targets/lio.py (rtslib-fb or
targetcli), each imported when first asked for; each has ``ensure``, ``remove`` and
``facts`` with the signatures of ``TargetDriver``.  The ``nas.*_target`` steps never compare driver names.  ``lock`` is the
node's lock around every read-modify-save of the target configuration (tgt tids, LIO's
saveconfig; audit M11).
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Protocol

from imgstor.errors import UsageError
from imgstor.remote import locks
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import Portal, StepResult

__all__ = ["TargetDriver", "DRIVERS", "get", "lock"]


class TargetDriver(Protocol):
    def ensure(self, ex: Executor, *, iqn: str, path: str, initiator: str, portal: Portal,
               chap: tuple[str, str] | None = None) -> StepResult: ...

    def remove(self, ex: Executor, *, iqn: str, chap_user: str | None = None,
               force: bool = False) -> StepResult: ...

    def facts(self, ex: Executor) -> list[dict]: ...


DRIVERS = {"tgt": "imgstor.remote.targets.tgt", "lio": "imgstor.remote.targets.lio"}


def get(name: str) -> TargetDriver:
    try:
        return importlib.import_module(DRIVERS[name])
    except KeyError:
        raise UsageError(f"unknown target driver {name!r}; known: "
                         f"{', '.join(sorted(DRIVERS))}", field="driver") from None


def lock(ex: Executor):
    """The node's lock around a read-modify-save of the target configuration (tgt tids,
    LIO's saveconfig; audit M11).  A dry run changes nothing and takes none."""
    if ex.dry_run:
        return contextlib.nullcontext()
    return locks.hold([locks.TARGETS], timeout=locks.TARGETS_WAIT,
                      what="the target configuration lock")


