"""qemu-storage-daemon (qsd) and its QMP monitor: the qcow2 overlay of sync mode.

The daemon holds one block graph per volume and exports its top over NBD on a unix socket:

    export VOL (nbd, writable)  ->  ovl (qcow2, OVERLAY file in POOL/VOL-temp-write)
                                      '-- backing: origin (raw over the iSCSI LUN)
                                                   or, once merging, local (the local copy)

Facts this module relies on, seen with this machine's QEMU 7.2 (qemu-storage-daemon
7.2.22; tests/lab/test_overlay.py proves them end to end):

* ``--daemonize`` returns once the graph, the NBD server and the QMP socket exist;
  ``--pidfile`` is written then and removed by the daemon when it quits.  The NBD socket
  file is *left behind* after ``quit`` (the QMP one is removed): remove it before a
  restart.  A quit daemon may stay a zombie for a while (its parent is PID 1): a pid whose
  /proc/PID/stat state is Z counts as gone.
* ``block-commit`` with ``device`` = the active layer (ovl) and ``base-node`` = ovl's
  backing is an *active* commit: it copies ovl's clusters into the base, mirrors new
  writes, goes ``ready`` (``BLOCK_JOB_READY``, offset == len), and ``job-complete`` swaps
  the base in for ovl under every parent: ``query-block-exports`` then names the base as
  the export's node.  Writes made before, during and after the commit all land in the
  base (sha256-checked).
* While the commit runs the export serves the job's implicit filter node (named like
  ``#block044`` in ``query-block-exports``), the base itself once completed.
* A base opened ``read-only`` is reopened read-write by the commit itself (the cancel
  path commits into the iSCSI origin, which is opened read-only until then).
* ``blockdev-reopen`` (7.2: ``{"options": [...]}``, the node's full options) swaps ovl's
  backing from origin to local while the export runs.
* A *writable FUSE* export takes the resize permission on its node, and then commit and
  mirror cannot take theirs: use NBD.
* ``qmp_capabilities`` must be the first command; asynchronous events (``JOB_STATUS_CHANGE``
  …) may arrive between a command and its reply and are skipped here.

Standard library only: shipped to nodes in the zipapp.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from imgstor.errors import Conflict, NotFound, StepError, UsageError
from imgstor.remote.drivers._common import positional

__all__ = ["RUN_DIR", "QSD_DIR", "NBD_DIR", "NODE_OVL", "NODE_OVL_FILE", "NODE_ORIGIN",
           "NODE_LOCAL", "ONE_CLIENT", "Paths", "local_daemon_argv", "Job", "QMP", "connect", "paths", "nbd_url",
           "origin_blockdev", "local_blockdev", "overlay_node", "overlay_blockdevs", "daemon_argv",
           "parse_jobs", "parse_exports", "parse_nodes"]

RUN_DIR = "/run/imgstor"               # root-only, per boot (zipapp.REMOTE_DIR)
QSD_DIR = RUN_DIR + "/qsd"             # pid files and QMP sockets, 0700
NBD_DIR = RUN_DIR + "/nbd"             # the NBD sockets VMs open, 0700
NODE_OVL, NODE_OVL_FILE = "ovl", "ovl-file"
NODE_ORIGIN, NODE_LOCAL = "origin", "local"
_SUN_PATH_MAX = 107                    # sockaddr_un.sun_path is 108 bytes with the NUL


@dataclass(frozen=True)
class Paths:
    pidfile: str
    qmp: str
    nbd: str


def paths(vol: str) -> Paths:
    p = Paths(f"{QSD_DIR}/{vol}.pid", f"{QSD_DIR}/{vol}.qmp", f"{NBD_DIR}/{vol}.sock")
    if max(len(p.qmp), len(p.nbd)) > _SUN_PATH_MAX:
        raise UsageError(f"volume name {vol!r} is too long for a unix socket path "
                         f"({p.nbd}: more than {_SUN_PATH_MAX} bytes)")
    return p


def nbd_url(vol: str, sock: str) -> str:
    """What a VM (or qemu-io) opens: ``nbd+unix:///VOL?socket=SOCK``."""
    return f"nbd+unix:///{vol}?socket={sock}"


# ------------------------------------------------------------------ block graph specs
def origin_blockdev(spec: str) -> dict:
    """The origin node from the direct map's ``json:{"driver":"raw","file":{…}}`` spec
    (compute.attach's ``qemu_json``), read-only (the commit into it reopens it)."""
    if not spec.startswith("json:"):
        raise UsageError(f"qcow2 overlay origin must be a qemu json: spec, got {spec[:40]!r}")
    try:
        d = json.loads(spec[5:])
    except ValueError as e:
        raise UsageError(f"bad json: origin spec: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("file"), dict):
        raise UsageError("json: origin spec must be {\"driver\": …, \"file\": {…}}")
    out = dict(d)
    out["file"] = {**d["file"], "node-name": NODE_ORIGIN + "-file"}
    out.update({"node-name": NODE_ORIGIN, "read-only": True})
    return out


def local_blockdev(path: str) -> dict:
    """The local copy: raw over a block device (a zvol) or a file (the lab's disk.raw)."""
    if not path.startswith("/") or ".." in path.split("/"):
        raise UsageError(f"local copy must be an absolute path, got {path!r}")
    drv = "host_device" if path.startswith("/dev/") else "file"
    return {"driver": "raw", "node-name": NODE_LOCAL,
            "file": {"driver": drv, "node-name": NODE_LOCAL + "-file", "filename": path}}


def overlay_node(backing: str = NODE_ORIGIN) -> dict:
    """The qcow2 node over the file node, ``backing`` = a node name (also the full option
    set ``blockdev-reopen`` needs to swap the backing)."""
    return {"driver": "qcow2", "node-name": NODE_OVL, "file": NODE_OVL_FILE, "backing": backing}


def overlay_blockdevs(overlay: str, backing: str = NODE_ORIGIN) -> tuple[dict, dict]:
    """The qcow2 file node and the qcow2 node over it."""
    return ({"driver": "file", "node-name": NODE_OVL_FILE, "filename": overlay},
            overlay_node(backing))


# One NBD client at a time (audit L3: two writers on one disk).  qsd's ``--nbd-server
# max-connections=1`` (QEMU >= 5.2): with one client connected the daemon stops accepting,
# so a second one waits in the socket's backlog and is served nothing (seen with QEMU 7.2:
# ``timeout 3 qemu-io … nbd+unix://…`` exits 124 while a first client is connected, and is
# served at once when it has gone).
ONE_CLIENT = "max-connections=1"


def daemon_argv(vol: str, origin: dict, overlay: str, p: Paths) -> list[str]:
    """``qemu-storage-daemon --daemonize --pidfile … --blockdev …×3 --nbd-server …
    --export type=nbd,… --chardev socket,… --monitor chardev=qmp``."""
    positional(vol, "volume")
    f, q = overlay_blockdevs(overlay)
    js = lambda d: json.dumps(d, separators=(",", ":"), sort_keys=True)  # noqa: E731
    return ["qemu-storage-daemon", "--daemonize", "--pidfile", p.pidfile,
            "--blockdev", js(origin), "--blockdev", js(f), "--blockdev", js(q),
            "--nbd-server", f"addr.type=unix,addr.path={_opt(p.nbd)},{ONE_CLIENT}",
            "--export", f"type=nbd,id={_opt(vol)},node-name={NODE_OVL},name={_opt(vol)},"
                        "writable=on",
            "--chardev", f"socket,id=qmp,path={_opt(p.qmp)},server=on,wait=off",
            "--monitor", "chardev=qmp"]


def local_daemon_argv(vol: str, local: str, p: Paths) -> list[str]:
    """A pivoted overlay started again (after a reboot or a killed daemon): the daemon
    exports the local copy alone (node ``local``), as it did after ``job-complete``."""
    positional(vol, "volume")
    js = lambda d: json.dumps(d, separators=(",", ":"), sort_keys=True)  # noqa: E731
    return ["qemu-storage-daemon", "--daemonize", "--pidfile", p.pidfile,
            "--blockdev", js(local_blockdev(local)),
            "--nbd-server", f"addr.type=unix,addr.path={_opt(p.nbd)},{ONE_CLIENT}",
            "--export", f"type=nbd,id={_opt(vol)},node-name={NODE_LOCAL},name={_opt(vol)},"
                        "writable=on",
            "--chardev", f"socket,id=qmp,path={_opt(p.qmp)},server=on,wait=off",
            "--monitor", "chardev=qmp"]


def _opt(v: str) -> str:
    if "," in v or "=" in v:
        raise UsageError(f"refusing {v!r} in a qemu option string (',' or '=')")
    return v


# ------------------------------------------------------------------ parsers
@dataclass(frozen=True)
class Job:
    id: str
    type: str
    status: str           # created|running|paused|ready|standby|waiting|pending|aborting|
    done: int             # concluded|null   (qapi/job.json JobStatus)
    total: int
    error: str | None = None


def parse_jobs(ret: list[dict]) -> dict[str, Job]:
    """``query-jobs`` return value -> {id: Job}."""
    return {j["id"]: Job(j["id"], j.get("type", ""), j["status"],
                         int(j.get("current-progress", 0)), int(j.get("total-progress", 0)),
                         j.get("error"))
            for j in ret}


def parse_exports(ret: list[dict]) -> dict[str, str]:
    """``query-block-exports`` -> {export id: the node it exports now}."""
    return {e["id"]: e["node-name"] for e in ret if not e.get("shutting-down")}


def parse_nodes(ret: list[dict]) -> dict[str, dict]:
    """``query-named-block-nodes`` (``flat``) -> {node-name: info}."""
    return {n["node-name"]: n for n in ret}


# ------------------------------------------------------------------ QMP client
class QMP:
    """A minimal synchronous QMP client on a unix socket (one command at a time)."""

    def __init__(self, path: str, *, timeout: float = 30.0) -> None:
        self.path = path
        try:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(path)
        except OSError as e:
            raise NotFound(f"no QMP monitor answers at {path}: {e.strerror or e}",
                           path=path) from None
        self._f = self.sock.makefile("rwb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise Conflict(f"{path} is not a QMP monitor", path=path)
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            line = self._f.readline()
            if not line:
                raise NotFound(f"QMP monitor {self.path} closed the connection", path=self.path)
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, cmd: str, args: dict | None = None) -> Any:
        req: dict = {"execute": cmd}
        if args:
            req["arguments"] = args
        self._f.write((json.dumps(req) + "\n").encode())
        self._f.flush()
        reply = self._read()
        if "error" in reply:
            err = reply["error"]
            raise StepError(f"QMP {cmd} on {self.path}: {err.get('desc')}",
                            qmp_class=err.get("class"), command=cmd)
        return reply.get("return")

    def close(self) -> None:
        try:
            self._f.close()
            self.sock.close()
        except OSError:
            pass


def connect(path: str) -> QMP:
    """The seam tests replace (tests/unit/steps/fake_qmp.py)."""
    if not os.path.exists(path):
        raise NotFound(f"no QMP socket {path}", path=path)
    return QMP(path)
