"""The sync-mode overlay steps on a compute node.

``overlay.create/merge/status/linear/remove`` take ``driver`` ("dm" | "qcow2", the node's
``overlay`` setting), ``pool`` (the node's vm_container_zpool) and ``vol``, and dispatch
through the overlay driver registry (imgstor/remote/overlays): no driver names here.

The life of an overlay (the kernel lab proves dm, the userspace lab qcow2):

1. ``overlay.create``  origin = the direct map of the NAS volume; writes go to the local
                       ``POOL/VOL-temp-write``; the VM runs on ``facts.device`` at once;
2. (the copy)          ``POOL/VOL`` on the node = the origin (which nobody writes): a copy
                       job (steps/copy.py);
3. ``overlay.merge``   the writes merge into the local copy (``into="origin"``: cancel,
                       back into the NAS volume) while the VM goes on writing;
4. ``overlay.status``  poll until ``phase`` is ``merged`` (``done``/``total``);
5. ``overlay.linear``  pivot: the device is the merge target alone; temp-write destroyed;
                       the iSCSI disk is no longer used (unmap it);
6. ``overlay.remove``  when the VM is gone.
Each step reads what is there first and does only what is missing.
"""
from __future__ import annotations

from imgstor.errors import UsageError
from imgstor.remote import overlays
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import StepResult
from imgstor.remote.steps.registry import step

__all__ = ["create", "merge", "status", "linear", "restore_local", "remove"]


def _ovl(ex: Executor, driver: str, pool: str, vol: str) -> overlays.Overlay:
    return overlays.get(driver, ex, pool=pool, vol=vol)


def _result(out: overlays.Outcome) -> StepResult:
    return StepResult(out.changed, out.facts, out.message)


@step("overlay.create")
def create(ex: Executor, *, driver: str, pool: str, vol: str, origin: str) -> StepResult:
    """Ensure VOL's overlay over ORIGIN runs, its writes in ``POOL/VOL-temp-write``
    (``imgstor:role=temp-write``; POOL = the node's vm_container_zpool).

    dm: ORIGIN = the iSCSI disk (/dev/sdX); a sparse COW zvol, ``dmsetup create VOL-snap``
    (``snapshot``).  qcow2: ORIGIN = the direct map's ``qemu_json`` spec; a filesystem
    dataset with ``overlay.qcow2`` (``qemu-img create``), and ``qemu-storage-daemon
    --daemonize`` exporting it over NBD.  facts: device (what the VM opens), phase …"""
    return _result(_ovl(ex, driver, pool, vol).create(origin))


@step("overlay.merge")
def merge(ex: Executor, *, driver: str, pool: str, vol: str, into: str = "local",
          local: str | None = None) -> StepResult:
    """Ensure VOL's overlay merges its writes ``into`` the local copy (LOCAL: a zvol
    device, default /dev/zvol/POOL/VOL for dm; the file volume's disk.raw on the lab) or
    ``into="origin"`` (cancel: back into the NAS volume over iSCSI).

    dm: suspend, reload ``snapshot-merge``, resume.  qcow2: QMP ``blockdev-add`` of the
    local copy, ``blockdev-reopen`` of the overlay onto it, active ``block-commit``.
    Merging into the other target already is a Conflict."""
    if into not in overlays.INTO:
        raise UsageError(f"into must be one of {', '.join(overlays.INTO)}, not {into!r}",
                         field="into")
    ovl = _ovl(ex, driver, pool, vol)
    return _result(ovl.merge(local) if into == "local" else ovl.merge_into_origin())


@step("overlay.status", read_only=True)
def status(ex: Executor, *, driver: str, pool: str, vol: str) -> StepResult:
    """Read-only: exists, phase (snapshot|merging|merged|pivoted), into (local|origin),
    done/total (qcow2: the commit's offset/len), status (snapshot|snapshot-merge|linear)
    and synced (the SYNCED column), device, and the driver's own details."""
    st = _ovl(ex, driver, pool, vol).status()
    return StepResult(False, st.facts(), f"{vol}: {st.phase or 'no overlay'}")


@step("overlay.linear")
def linear(ex: Executor, *, driver: str, pool: str, vol: str) -> StepResult:
    """Pivot, only once merged: the VM's device becomes the merge target alone (dm:
    ``linear``; qcow2: ``job-complete``, the overlay and the unused origin or local node
    deleted -- deleting the origin ends the iSCSI session); then ``POOL/VOL-temp-write``
    is destroyed.  Not merged yet is a Conflict."""
    return _result(_ovl(ex, driver, pool, vol).pivot())


@step("overlay.restore_local")
def restore_local(ex: Executor, *, driver: str, pool: str, vol: str, local: str) -> StepResult:
    """A pivoted overlay whose device is gone after a reboot or a killed daemon: ensure
    the VM's device runs again on LOCAL (the local copy) alone.  dm: ``dmsetup create
    VOL-snap`` with a ``linear`` table over LOCAL; qcow2: ``qemu-storage-daemon`` exporting
    LOCAL as node ``local``.  An overlay that exists is left as it is."""
    return _result(_ovl(ex, driver, pool, vol).restore_local(local))


@step("overlay.remove")
def remove(ex: Executor, *, driver: str, pool: str, vol: str) -> StepResult:
    """Ensure VOL's overlay device is gone (dm: ``dmsetup remove``; qcow2: QMP ``quit``,
    then TERM/KILL by pid, sockets and pid file removed).  The temp-write store is kept
    when it still exists (it holds writes not merged): facts ``temp_write_kept``."""
    return _result(_ovl(ex, driver, pool, vol).remove())


