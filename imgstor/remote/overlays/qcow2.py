"""The ``qcow2`` overlay: qemu-storage-daemon (qsd) holds a qcow2 overlay over the iSCSI
origin and exports it over NBD on a unix socket (drivers/qsd.py has the graph and the facts
it relies on).  The one resident process imgstor keeps on a node, and only with this driver.

* create: a filesystem dataset ``<pool>/<vol>-temp-write`` (``imgstor:role=temp-write``)
  holding ``overlay.qcow2`` (``qemu-img create -f qcow2 -F raw -b ORIGIN``: its header
  names the origin, so the file alone still says where its writes belong); then
  ``qemu-storage-daemon --daemonize --pidfile /run/imgstor/qsd/VOL.pid`` with the origin
  (read-only, under the node's own initiator name), the overlay, an NBD export ``VOL`` on
  ``/run/imgstor/nbd/VOL.sock`` and QMP on ``/run/imgstor/qsd/VOL.qmp``.  A daemon is found
  again by its pid file (the pid's cmdline must be qsd with that pid file) and QMP socket:
  create twice = one daemon.  An overlay file that exists is reused, never recreated (it
  holds the VM's writes).
* merge(local): ``blockdev-add`` the local copy (node ``local``; its size must equal the
  overlay's), ``blockdev-reopen`` ovl with ``backing: local``, ``block-commit`` job
  ``commit-local`` (device ovl, base-node local): an active commit.
* merge_into_origin (cancel): ``blockdev-reopen`` ovl with ``backing: origin``, then
  ``block-commit`` job ``commit-origin`` into the origin (reopened read-write by qemu).
* status: ``query-block-exports`` (which node the export serves), ``query-jobs`` (the
  commit's status and offset/len): no job -> snapshot; running -> merging; ready -> merged;
  the export on local/origin -> pivoted.
* pivot: ``job-complete``, wait for ``concluded``, ``job-dismiss``; ``blockdev-del`` of the
  nodes no longer used (ovl, ovl-file, and origin -- which ends the iSCSI session -- or
  local); destroy the temp-write dataset.
* remove: QMP ``quit``, wait for the pid to go, else ``kill -TERM`` then ``-KILL``; remove
  the sockets and the pid file.

QMP commands that change something are logged like commands (``qmp SOCKET CMD ARGS``) and a
dry run skips them (``SKIP> qmp …``); queries run.
"""
from __future__ import annotations

import json
import shlex
from typing import Any

from imgstor.errors import Conflict, NotFound, StepError, UsageError
from imgstor.remote.drivers import qcow2 as qimg
from imgstor.remote.drivers import qsd, zfs
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
from imgstor.remote.util import require_initiator_name, run_mapped

__all__ = ["Qcow2Overlay", "OVERLAY_FILE", "QUIT_WAIT", "JOB_WAIT"]

OVERLAY_FILE = "overlay.qcow2"
QUIT_WAIT = 10.0            # seconds for qsd to exit after `quit` (then TERM, then KILL)
JOB_WAIT = 120.0            # seconds for a completed commit to conclude
_JOB = {"local": "commit-local", "origin": "commit-origin"}
_BASE = {"local": qsd.NODE_LOCAL, "origin": qsd.NODE_ORIGIN}
_LIVE = ("created", "running", "paused", "standby")           # still copying
_DONE = ("ready", "waiting", "pending")                       # nothing left to copy


@register
class Qcow2Overlay(Overlay):
    driver = "qcow2"

    def __init__(self, ex, *, pool: str, vol: str) -> None:
        super().__init__(ex, pool=pool, vol=vol)
        self.paths = qsd.paths(self.vol)

    @property
    def device(self) -> str:
        return qsd.nbd_url(self.vol, self.paths.nbd)

    # -------------------------------------------------------------- the daemon
    def _pid(self) -> int | None:
        """The running daemon's pid: pid file, a live (not zombie) process whose cmdline
        is qemu-storage-daemon with this pid file (a reused pid is not ours)."""
        text = self.ex.fs.read_text(self.paths.pidfile)
        try:
            pid = int((text or "").strip())
        except ValueError:
            return None
        state = self.ex.fs.pid_state(pid)
        if state is None or state == "Z":
            return None
        argv = self.ex.fs.pid_cmdline(pid)
        if not argv or not argv[0].endswith("qemu-storage-daemon") \
                or self.paths.pidfile not in argv:
            return None
        return pid

    def _qmp(self) -> qsd.QMP | None:
        return qsd.connect(self.paths.qmp) if self._pid() is not None else None

    def _call(self, q: qsd.QMP, cmd: str, args: dict | None = None, *,
              read_only: bool = False) -> Any:
        text = shlex.join(["qmp", self.paths.qmp, cmd] + (
            [json.dumps(args, sort_keys=True, separators=(",", ":"))] if args else []))
        if read_only:               # queries run in a dry run too; not logged (polled often)
            return q.execute(cmd, args)
        return self.ex.call(text, q.execute, cmd, args)     # SKIP> qmp … in a dry run

    def _graph(self, q: qsd.QMP) -> tuple[str | None, dict[str, qsd.Job], dict[str, dict]]:
        exports = qsd.parse_exports(self._call(q, "query-block-exports", read_only=True))
        jobs = qsd.parse_jobs(self._call(q, "query-jobs", read_only=True))
        nodes = qsd.parse_nodes(self._call(q, "query-named-block-nodes", {"flat": True},
                                           read_only=True))
        return exports.get(self.vol), jobs, nodes

    # -------------------------------------------------------------- status
    def _status(self, q: qsd.QMP | None) -> Status:
        if q is None:
            return Status(self.driver, False, self.device,
                          detail={"pid": None, "nbd": self.paths.nbd, "qmp": self.paths.qmp})
        exported, jobs, nodes = self._graph(q)
        detail: dict = {"pid": self._pid(), "nbd": self.paths.nbd, "qmp": self.paths.qmp,
                        "export_node": exported, "nodes": sorted(nodes)}
        into = next((k for k, j in _JOB.items() if j in jobs), None)
        job = jobs.get(_JOB[into]) if into else None
        done = total = None
        if job is not None:
            done, total = job.done, job.total
            detail.update(job=job.id, job_status=job.status)
            if job.error:
                detail["job_error"] = job.error
        # while a commit runs, the export serves the job's implicit filter node
        # ("#block044", seen in the lab): that is still the overlay
        on_ovl = exported == qsd.NODE_OVL or (job is not None and (exported or "").startswith("#"))
        if on_ovl:
            if job is None or job.error or job.status not in _LIVE + _DONE:
                phase = SNAPSHOT
                into = None if job is None or job.error else into
            else:
                phase = MERGING if job.status in _LIVE else MERGED
        elif exported in (qsd.NODE_LOCAL, qsd.NODE_ORIGIN):
            phase, into = PIVOTED, ("local" if exported == qsd.NODE_LOCAL else "origin")
        else:
            raise StepError(f"{self.ex.host}: qsd for {self.vol} exports "
                            f"{exported or 'nothing'}; not an imgstor overlay graph")
        synced = f"{done}/{total}" if total is not None else None
        return Status(self.driver, True, self.device, phase, into, done, total,
                      STATUS_OF_PHASE[phase], synced, detail)

    def status(self) -> Status:
        q = self._qmp()
        try:
            return self._status(q)
        finally:
            if q is not None:
                q.close()

    # -------------------------------------------------------------- create
    def _origin(self, origin: str) -> dict:
        """The origin node; an iSCSI origin is opened under this node's own initiator name."""
        spec = qsd.origin_blockdev(origin)
        f = spec["file"]
        if f.get("driver") == "iscsi":
            me = require_initiator_name(self.ex)
            if f.get("initiator-name", me) != me:
                raise UsageError(f"origin spec logs in as {f['initiator-name']}, not as this "
                                 f"node ({me})", field="origin")
            f["initiator-name"] = me
        return spec

    def _overlay_file(self, origin: str, mountpoint: str) -> tuple[str, bool]:
        path = f"{mountpoint}/{OVERLAY_FILE}"
        if self.ex.fs.exists(path):
            info = qimg.info(self.ex, path)       # the header only: the origin isn't opened
            if info.format != "qcow2" or not _same_spec(info.backing_filename, origin):
                raise Conflict(f"{self.ex.host}: {path} exists over another origin "
                               f"({info.backing_filename}); it may hold a VM's writes: "
                               "imgstor will not replace it", path=path)
            return path, False
        run_mapped(self.ex, qimg.create_overlay(path, origin), qimg.classify)
        return path, True

    def create(self, origin: str) -> Outcome:
        st = self.status()
        if st.exists:
            return Outcome(False, st.facts(), f"overlay {self.vol} runs (pid {st.detail['pid']}, "
                                              f"{st.phase})")
        spec = self._origin(origin)
        made_ds = False
        if base.temp_write_props(self.ex, self.temp_write, "filesystem") is None:
            run_mapped(self.ex, zfs.create_dataset(self.temp_write, {ROLE_PROP: ROLE_TEMP_WRITE}),
                       zfs.classify)
            made_ds = True
        mountpoint: str | None
        if made_ds and self.ex.dry_run:
            mountpoint = f"<mountpoint of {self.temp_write}>"
        else:
            mountpoint = zfs.mountpoint(self.ex, self.temp_write)
            if not mountpoint:
                raise Conflict(f"{self.ex.host}: {self.temp_write} is not mounted")
        path, made_file = self._overlay_file(origin, mountpoint)
        for d in (qsd.QSD_DIR, qsd.NBD_DIR):
            if not self.ex.fs.exists(d):
                self.ex.run(["mkdir", "-p", "-m", "0700", d])
        stale = [p for p in (self.paths.pidfile, self.paths.qmp, self.paths.nbd)
                 if self.ex.fs.exists(p)]
        if stale:                       # a daemon that died (qsd leaves its NBD socket)
            self.ex.run(["rm", "-f", "--"] + stale)
        run_mapped(self.ex, qsd.daemon_argv(self.vol, spec, path, self.paths), qimg.classify)
        facts = {"driver": self.driver, "exists": True, "device": self.device,
                 "phase": SNAPSHOT, "status": "snapshot", "overlay": path,
                 "temp_write": self.temp_write, "temp_write_created": made_ds,
                 "overlay_created": made_file, "nbd": self.paths.nbd, "qmp": self.paths.qmp}
        if not self.ex.dry_run:
            st = self.status()
            if not st.exists:
                raise StepError(f"{self.ex.host}: qemu-storage-daemon for {self.vol} started "
                                f"but {self.paths.pidfile} names no live daemon")
            facts.update(pid=st.detail["pid"])
        return Outcome(True, facts, f"overlay {self.vol} over the origin: {self.device}")

    def restore_local(self, local: str) -> Outcome:
        st = self.status()
        if st.exists:
            return Outcome(False, st.facts(), f"overlay {self.vol} runs (pid "
                                              f"{st.detail['pid']}, {st.phase})")
        if not self.ex.fs.exists(local):
            raise NotFound(f"{self.ex.host}: the local copy {local} is not there")
        for d in (qsd.QSD_DIR, qsd.NBD_DIR):
            if not self.ex.fs.exists(d):
                self.ex.run(["mkdir", "-p", "-m", "0700", d])
        stale = [p for p in (self.paths.pidfile, self.paths.qmp, self.paths.nbd)
                 if self.ex.fs.exists(p)]
        if stale:                       # the dead daemon's sockets and pid file
            self.ex.run(["rm", "-f", "--"] + stale)
        run_mapped(self.ex, qsd.local_daemon_argv(self.vol, local, self.paths), qimg.classify)
        facts = {"driver": self.driver, "exists": True, "device": self.device,
                 "phase": PIVOTED, "into": "local", "status": "linear", "local": local}
        if not self.ex.dry_run:
            st = self.status()
            if not st.exists or st.phase != PIVOTED:
                raise StepError(f"{self.ex.host}: qemu-storage-daemon for {self.vol} on "
                                f"{local} did not start as expected")
            facts.update(pid=st.detail["pid"])
        return Outcome(True, facts, f"overlay {self.vol} on its local copy again: "
                                    f"{self.device}")

    # -------------------------------------------------------------- merge
    def _commit(self, into: str, local: str | None) -> Outcome:
        q = self._qmp()
        if q is None:
            raise NotFound(f"{self.ex.host}: no qemu-storage-daemon runs overlay {self.vol}")
        try:
            st = self._status(q)
            if st.phase != SNAPSHOT:
                if st.into != into:
                    raise Conflict(f"{self.ex.host}: overlay {self.vol} is {st.phase} into the "
                                   f"{st.into}; it cannot merge into the {into} too",
                                   phase=st.phase, into=st.into)
                return Outcome(False, st.facts(), f"overlay {self.vol} is {st.phase} into "
                                                  f"the {into} already")
            _, jobs, nodes = self._graph(q)
            for jid in _JOB.values():           # a commit that failed: clear it, start again
                if jid in jobs:
                    self._call(q, "job-dismiss", {"id": jid})
            if into == "local":
                self._ensure_local(q, nodes, local)
            self._call(q, "blockdev-reopen", {"options": [qsd.overlay_node(_BASE[into])]})
            self._call(q, "block-commit", {"job-id": _JOB[into], "device": qsd.NODE_OVL,
                                           "base-node": _BASE[into], "auto-dismiss": False})
        finally:
            q.close()
        return Outcome(True, {"driver": self.driver, "exists": True, "device": self.device,
                              "phase": MERGING, "into": into, "status": "snapshot-merge",
                              "job": _JOB[into]},
                       f"overlay {self.vol} merging into the {into}")

    def _ensure_local(self, q: qsd.QMP, nodes: dict[str, dict], local: str | None) -> None:
        if not local:
            raise UsageError("qcow2 overlay: merge into the local copy needs local=PATH "
                             "(a zvol device, or the file volume's disk.raw)", field="local")
        spec = qsd.local_blockdev(local)
        have = nodes.get(qsd.NODE_LOCAL + "-file")
        if have is not None:
            if have.get("file") != local:
                raise Conflict(f"{self.ex.host}: overlay {self.vol} has local node "
                               f"{have.get('file')}, not {local}")
            return
        self._call(q, "blockdev-add", spec)
        if self.ex.dry_run:
            return
        sizes = qsd.parse_nodes(self._call(q, "query-named-block-nodes", {"flat": True},
                                           read_only=True))
        want = sizes[qsd.NODE_OVL]["image"]["virtual-size"]
        got = sizes[qsd.NODE_LOCAL]["image"]["virtual-size"]
        if want != got:
            self._call(q, "blockdev-del", {"node-name": qsd.NODE_LOCAL})
            raise Conflict(f"{self.ex.host}: local copy {local} has {got} bytes, the overlay "
                           f"{want}: not a copy of the origin", local=local)

    def merge(self, local: str | None) -> Outcome:
        return self._commit("local", local)

    def merge_into_origin(self) -> Outcome:
        return self._commit("origin", None)

    # -------------------------------------------------------------- pivot
    def pivot(self) -> Outcome:
        q = self._qmp()
        if q is None:
            raise NotFound(f"{self.ex.host}: no qemu-storage-daemon runs overlay {self.vol}")
        changed = False
        try:
            st = self._status(q)
            if st.phase in (SNAPSHOT, MERGING):
                raise Conflict(f"{self.ex.host}: overlay {self.vol} is {st.phase} and not "
                               "merged yet; wait for the merge (overlay.status) first",
                               phase=st.phase)
            into = st.into
            if into is None:                     # merged or pivoted: the job names it
                raise StepError(f"{self.ex.host}: overlay {self.vol} is {st.phase} into "
                                "neither the local copy nor the origin")
            if st.phase == MERGED:
                self._call(q, "job-complete", {"id": _JOB[into]})
                changed = True
                if self.ex.dry_run:
                    return Outcome(True, {"driver": self.driver, "phase": PIVOTED,
                                          "into": into}, f"would pivot {self.vol}")
                self._wait_concluded(q, _JOB[into])
            exported, jobs, nodes = self._graph(q)
            if exported != _BASE[into]:
                raise StepError(f"{self.ex.host}: after the commit qsd exports {exported}, "
                                f"not {_BASE[into]}")
            if _JOB[into] in jobs:
                self._call(q, "job-dismiss", {"id": _JOB[into]})
            unused = (qsd.NODE_OVL, qsd.NODE_OVL_FILE,
                      qsd.NODE_ORIGIN if into == "local" else qsd.NODE_LOCAL)
            for n in unused:
                if n in nodes:
                    self._call(q, "blockdev-del", {"node-name": n})
                    changed = True
        finally:
            q.close()
        gone = base.destroy_temp_write(self.ex, self.temp_write, "filesystem")
        return Outcome(changed or gone, {"driver": self.driver, "exists": True,
                                         "device": self.device, "phase": PIVOTED,
                                         "into": into, "status": "linear",
                                         "temp_write_destroyed": gone},
                       f"overlay {self.vol} pivoted onto the {into}" if changed
                       else f"overlay {self.vol} pivoted already")

    def _wait_concluded(self, q: qsd.QMP, jid: str) -> None:
        deadline = self.ex.fs.monotonic() + JOB_WAIT
        while True:
            job = qsd.parse_jobs(self._call(q, "query-jobs", read_only=True)).get(jid)
            if job is None or job.status in ("concluded", "null"):
                if job is not None and job.error:
                    raise StepError(f"{self.ex.host}: commit {jid} failed: {job.error}")
                return
            if self.ex.fs.monotonic() > deadline:
                raise StepError(f"{self.ex.host}: commit {jid} did not conclude within "
                                f"{JOB_WAIT:.0f}s (status {job.status})")
            self.ex.fs.sleep(0.2)

    # -------------------------------------------------------------- remove
    def remove(self) -> Outcome:
        pid = self._pid()
        changed = False
        if pid is not None:
            try:
                q = qsd.connect(self.paths.qmp)
                try:
                    self._call(q, "quit")
                finally:
                    q.close()
            except NotFound:
                pass                     # no monitor: signals below
            changed = True
            if not self.ex.dry_run:
                for sig in (None, "-TERM", "-KILL"):
                    if sig:
                        self.ex.run(["kill", sig, str(pid)], check=False)
                    if self._gone(pid):
                        break
                else:
                    raise StepError(f"{self.ex.host}: qemu-storage-daemon {pid} did not exit")
        left = [p for p in (self.paths.pidfile, self.paths.qmp, self.paths.nbd)
                if self.ex.fs.exists(p)]
        if left:
            self.ex.run(["rm", "-f", "--"] + left)
            changed = True
        kept = base.temp_write_props(self.ex, self.temp_write, "filesystem") is not None
        return Outcome(changed, {"driver": self.driver, "exists": False,
                                 "temp_write_kept": kept},
                       (f"stopped qemu-storage-daemon {pid}" if pid else
                        f"no qemu-storage-daemon for {self.vol}")
                       + (f"; {self.temp_write} kept (unmerged writes)" if kept else ""))

    def _gone(self, pid: int) -> bool:
        deadline = self.ex.fs.monotonic() + QUIT_WAIT
        while True:
            state = self.ex.fs.pid_state(pid)
            if state is None or state == "Z":
                return True
            if self.ex.fs.monotonic() > deadline:
                return False
            self.ex.fs.sleep(0.1)


def _same_spec(a: str | None, b: str) -> bool:
    if a == b:
        return True
    if not a or not a.startswith("json:") or not b.startswith("json:"):
        return False
    try:
        return json.loads(a[5:]) == json.loads(b[5:])
    except ValueError:
        return False
