"""The job-kind table: every kind of job and its phases, in order.

The one place a monitor learns what a kind does (workflows/monitor.py imports this table;
the job modules import nothing of the monitor).  ``state.model.JOB_KINDS`` names the same
kinds for the store's checks (tests/unit/test_jobs.py keeps the two equal).

    sync-in    trust -> copy -> merge -> merged -> pivot          (storagemap/sync.py)
    sync-back  quiesce -> trust -> send -> cleanup                (storagemap/sync.py)
    cancel     stop -> merge -> merged -> teardown                (storagemap/sync.py)
    pull       trust -> send -> prune                             (storagemap/pull.py)
"""
from __future__ import annotations

from imgstor.errors import UsageError
from imgstor.jobrun import Phase
from imgstor.workflows.storagemap import pull, sync

__all__ = ["KINDS", "phases"]

KINDS: dict[str, list[tuple[str, Phase]]] = {
    "sync-in": sync.SYNC_IN,
    "sync-back": sync.SYNC_BACK,
    "cancel": sync.CANCEL,
    "pull": pull.PULL,
}


def phases(kind: str) -> list[tuple[str, Phase]]:
    try:
        return KINDS[kind]
    except KeyError:
        raise UsageError(f"no monitor for job kind {kind!r}") from None
