"""The ``dm`` overlay (production): a device-mapper snapshot named ``<vol>-snap``.

* create: the COW is a sparse zvol ``<pool>/<vol>-temp-write`` (``imgstor:role=temp-write``,
  the origin's size plus 1/64 for the exception store's metadata), then ``dmsetup create
  VOL-snap`` with table ``snapshot ORIGIN COW P 16``; origin = the iSCSI disk (/dev/sdX).
* merge(local): suspend, reload as ``snapshot-merge LOCAL COW P 16``, resume: the kernel
  merges the COW into the local copy (which equals the origin: nobody writes the origin).
* merge_into_origin (cancel): the same with the snapshot's own origin (the iSCSI disk).
* status: ``dmsetup table``/``status``: snapshot -> snapshot; snapshot-merge -> merging
  until allocated == metadata sectors, then merged; linear -> pivoted.
* pivot: suspend, reload as ``linear`` on the merge target, resume; destroy the COW zvol.
* remove: ``dmsetup remove --retry VOL-snap``.

dmsetup tables name devices ``MAJOR:MINOR``; the merge target is told apart (local or
origin) by the local zvol's device number.
"""
from __future__ import annotations

from imgstor.errors import Conflict, NotFound, UsageError
from imgstor.remote.drivers import dm, zfs
from imgstor.remote.overlays import base
from imgstor.remote.overlays.base import (
    MERGED,
    MERGING,
    PIVOTED,
    ROLE_PROP,
    ROLE_TEMP_WRITE,
    SNAPSHOT,
    STATUS_OF_PHASE,
    Outcome,
    Overlay,
    Status,
    register,
)
from imgstor.remote.util import run_mapped, wait_path

__all__ = ["DmOverlay"]

_PHASE = {"snapshot": SNAPSHOT, "snapshot-merge": MERGING, "linear": PIVOTED}


@register
class DmOverlay(Overlay):
    driver = "dm"

    def __init__(self, ex, *, pool: str, vol: str) -> None:
        super().__init__(ex, pool=pool, vol=vol)
        self.name = f"{self.vol}-snap"
        self.cow = zfs.zvol_device(self.pool, self.temp_write.split("/", 1)[1])
        self.local = zfs.zvol_device(self.pool, self.vol)

    @property
    def device(self) -> str:
        return f"/dev/mapper/{self.name}"

    # -------------------------------------------------------------- reading
    def _table(self) -> dm.Device | None:
        try:
            found = dm.table(self.ex, self.name)
        except NotFound:        # dm.classify: "Device does not exist", "No such device or address"
            return None
        if not found:
            return None
        t = found[0]
        if not t.segments or t.target not in _PHASE:
            raise Conflict(f"{self.ex.host}: dm device {self.name} exists with table "
                           f"{t.target or 'empty'}; not an imgstor overlay")
        return t

    def _into(self, dev: str) -> str:
        return "local" if dev == self.ex.fs.rdev(self.local) or dev == self.local else "origin"

    def status(self) -> Status:
        t = self._table()
        if t is None:
            return Status(self.driver, False, self.device)
        seg = t.segments[0]
        phase = _PHASE[seg.target]
        detail: dict = {"table": seg.target, "sectors": t.sectors}
        into = synced = None
        if seg.target in ("snapshot", "snapshot-merge"):
            st = dm.parse_snapshot_status(dm.status(self.ex, self.name)[0].segments[0])
            detail.update(allocated=st.allocated, cow_sectors=st.total, metadata=st.metadata,
                          origin=seg.args[0])
            if st.allocated is not None:
                synced = f"{st.allocated}/{st.total} {st.metadata}"
                detail["remaining"] = (st.allocated - (st.metadata or 0)) * dm.SECTOR
            if seg.target == "snapshot-merge":
                into = self._into(seg.args[0])
                if dm.merge_done(st):          # Conflict when invalid / merge failed
                    phase = MERGED
        else:
            into = self._into(seg.args[0])
            detail["origin"] = seg.args[0]
        return Status(self.driver, True, self.device, phase, into, None, None,
                      STATUS_OF_PHASE[phase], synced, detail)

    # -------------------------------------------------------------- changes
    def _run(self, argvs: list[list[str]]) -> None:
        for argv in argvs:
            run_mapped(self.ex, argv, dm.classify)

    def create(self, origin: str) -> Outcome:
        st = self.status()
        if st.exists:
            return Outcome(False, st.facts(), f"{self.name} exists ({st.status})")
        sectors = int(self.ex.run(["blockdev", "--getsz", origin], read_only=True).stdout.strip())
        made = False
        if base.temp_write_props(self.ex, self.temp_write, "volume") is None:
            size = sectors * dm.SECTOR
            run_mapped(self.ex, zfs.create_zvol(self.pool, self.temp_write.split("/", 1)[1],
                                                size + size // 64,
                                                {ROLE_PROP: ROLE_TEMP_WRITE}), zfs.classify)
            made = True
        try:
            wait_path(self.ex, self.cow)
            self._run([dm.create_snapshot(self.name, origin, self.cow, sectors)])
            wait_path(self.ex, self.device)
        except Exception:
            if made and not self.ex.dry_run:    # create-then-configure undoes itself
                self.ex.run(zfs.destroy(self.temp_write), check=False)
            raise
        facts = {"driver": self.driver, "exists": True, "device": self.device,
                 "phase": SNAPSHOT, "status": "snapshot", "sectors": sectors,
                 "cow": self.cow, "temp_write": self.temp_write, "temp_write_created": made}
        return Outcome(True, facts, f"created overlay {self.name} over {origin}")

    def restore_local(self, local: str) -> Outcome:
        st = self.status()
        if st.exists:
            return Outcome(False, st.facts(), f"{self.name} exists ({st.status})")
        local = local or self.local
        wait_path(self.ex, local)
        sectors = int(self.ex.run(["blockdev", "--getsz", local], read_only=True).stdout.strip())
        self._run([dm.create(self.name, dm.linear_table(local, sectors))])
        wait_path(self.ex, self.device)
        return Outcome(True, {"driver": self.driver, "exists": True, "device": self.device,
                              "phase": PIVOTED, "into": "local", "status": "linear",
                              "sectors": sectors},
                       f"created {self.name} linear on the local copy {local}")

    def _merge(self, into: str, local: str | None) -> Outcome:
        t = self._table()
        if t is None:
            raise NotFound(f"{self.ex.host}: no dm device {self.name}")
        seg = t.segments[0]
        if seg.target != "snapshot":
            now = self._into(seg.args[0])
            if now != into:
                raise Conflict(f"{self.ex.host}: {self.name} is {seg.target} into the {now}; "
                               f"it cannot merge into the {into} too")
            return Outcome(False, self.status().facts(),
                           f"{self.name} is {seg.target} into the {into} already")
        target = seg.args[0] if local is None else local      # None: into the origin
        self._run(dm.start_merge(self.name, target, seg.args[1], t.sectors))
        return Outcome(True, {"driver": self.driver, "exists": True, "device": self.device,
                              "phase": MERGING, "into": into, "status": "snapshot-merge"},
                       f"{self.name} merging into {target}")

    def merge(self, local: str | None) -> Outcome:
        local = local or self.local
        if not local.startswith("/dev/"):
            raise UsageError(f"dm overlay: the local copy must be a block device, got {local!r}")
        self.local = local
        return self._merge("local", local)

    def merge_into_origin(self) -> Outcome:
        return self._merge("origin", None)

    def pivot(self) -> Outcome:
        st = self.status()
        if not st.exists:
            raise NotFound(f"{self.ex.host}: no dm device {self.name}")
        changed = False
        if st.phase != PIVOTED:
            if st.phase != MERGED:
                raise Conflict(f"{self.ex.host}: {self.name} is {st.phase} and not merged yet; "
                               "wait for the merge (overlay.status) first", phase=st.phase)
            self._run(dm.switch_to_linear(self.name, st.detail["origin"], st.detail["sectors"]))
            changed = True
        gone = base.destroy_temp_write(self.ex, self.temp_write, "volume")
        facts = {"driver": self.driver, "exists": True, "device": self.device,
                 "phase": PIVOTED, "into": st.into, "status": "linear",
                 "temp_write_destroyed": gone}
        return Outcome(changed or gone, facts,
                       f"{self.name} is linear on the {st.into}" if changed
                       else f"{self.name} is linear already")

    def remove(self) -> Outcome:
        t = self._table()
        kept = base.temp_write_props(self.ex, self.temp_write, "volume") is not None
        facts = {"driver": self.driver, "exists": False, "temp_write_kept": kept}
        if t is None:
            return Outcome(False, facts, f"no dm device {self.name}")
        self._run([dm.remove(self.name, retry=True)])
        return Outcome(True, facts, f"removed {self.name}"
                       + (f"; {self.temp_write} kept (unmerged writes)" if kept else ""))
