"""``jobs.watch``: what the frontend's monitors read of their jobs on one host, in one
exchange (imgstor/jobrun.py's ``Watch``): the status of every copy job this host sends
and of every overlay merging on it that a monitor waits for.  A monitor that runs a
hundred jobs reads each host once per tick, not each job once per second.

Standard library only: shipped to nodes in the zipapp.
"""
from __future__ import annotations

from imgstor.errors import ImgstorError, UsageError
from imgstor.remote import overlays as overlay_drivers
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import StepResult
from imgstor.remote.steps.copy import status_facts
from imgstor.remote.steps.registry import step

__all__ = ["watch"]

MAX_ITEMS = 1000


def _items(value: object, n: int, what: str) -> list[list[str]]:
    if not isinstance(value, list) or len(value) > MAX_ITEMS or not all(
            isinstance(i, list) and len(i) == n and all(isinstance(x, str) for x in i)
            for i in value):
        raise UsageError(f"jobs.watch: {what} must be a list of up to {MAX_ITEMS} "
                         f"[{n} strings] lists")
    return value


@step("jobs.watch", read_only=True)
def watch(ex: Executor, *, copies: list | None = None,
          overlays: list | None = None) -> StepResult:
    """Read-only.  COPIES: ``[[to_alias, to_dataset], …]``, answered in ``copies`` keyed
    ``ALIAS:DATASET`` with what ``copy.status`` answers; OVERLAYS: ``[[driver, pool,
    vol], …]``, in ``overlays`` keyed ``DRIVER/POOL/VOL`` with what ``overlay.status``
    answers.  One item's error is its answer (``{"error": …}``), never the whole read's."""
    out_c: dict[str, dict] = {}
    for alias, dataset in _items(copies or [], 2, "copies"):
        try:
            out_c[f"{alias}:{dataset}"] = status_facts(alias, dataset)
        except ImgstorError as e:
            out_c[f"{alias}:{dataset}"] = {"error": e.to_wire()}
    out_o: dict[str, dict] = {}
    for driver, pool, vol in _items(overlays or [], 3, "overlays"):
        try:
            out_o[f"{driver}/{pool}/{vol}"] = overlay_drivers.get(
                driver, ex, pool=pool, vol=vol).status().facts()
        except ImgstorError as e:
            out_o[f"{driver}/{pool}/{vol}"] = {"error": e.to_wire()}
    return StepResult(False, {"copies": out_c, "overlays": out_o},
                      f"{len(out_c)} copies, {len(out_o)} overlays")
