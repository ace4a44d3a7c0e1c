"""The ``qemu`` VM runner: one detached ``qemu-system-x86_64`` per guest.

* start: ``qemu-system-x86_64 -daemonize -pidfile /run/imgstor/vm/VM/qemu.pid -qmp
  unix:/run/imgstor/vm/VM/qmp.sock,…`` with the disk as ``-blockdev`` (``disk_blockdev``:
  a block device, qemu's own iSCSI initiator under the node's initiator name, or the NBD
  export of a qcow2 overlay), ``virtio-blk`` with boot index 1 (the firmware boots it), or
  ``-kernel/-initrd/-append`` for direct boot; the serial console goes to
  ``console.log`` beside them (the previous one kept as ``console.log.1``).
  ``-daemonize`` returns once qemu has opened everything, so a disk or kernel qemu cannot
  open is this command's error, with qemu's stderr.
* powerdown: QMP ``system_powerdown`` (the ACPI power button: a guest without an ACPI
  daemon ignores it), then wait for the process to exit (qemu exits when the guest powers
  off), up to the timeout.
* kill: QMP ``quit`` (qemu flushes its block layer and exits: the guest's unflushed
  writes are lost, as at a power cut), then TERM, then KILL by pid.
* A guest is found by its pid file: the pid must be alive (not a zombie: PID 1 here reaps
  slowly) and its command line qemu's with that pid file (a reused pid is not ours).

QMP commands that change something are logged like commands (``qmp SOCKET CMD``) and a
dry run skips them.  Standard library only: shipped to nodes in the zipapp.
"""
from __future__ import annotations

import json
import re
import shlex
from typing import Any

from imgstor.errors import Conflict, NotFound, RemoteCommandError, StepError, UsageError
from imgstor.remote.drivers import qsd
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import GuestDisk, GuestFacts, GuestSpec
from imgstor.remote.util import require_initiator_name
from imgstor.remote.vmrunners.base import RUN_DIR, Outcome, Runner, guest_dir, register, tail

__all__ = ["QemuRunner", "QEMU", "qemu_argv", "disk_blockdev", "KILL_WAIT", "START_WAIT"]

QEMU = "qemu-system-x86_64"
KILL_WAIT = 10.0            # seconds for qemu to exit after `quit` (then TERM, then KILL)
START_WAIT = 5.0            # seconds for a daemonized qemu's pid file to name a live guest
DISK_NODE = "disk0"
_NBD = re.compile(r"nbd\+unix:///([A-Za-z0-9][A-Za-z0-9_.:-]{0,127})\?socket=(/run/imgstor/"
                  r"nbd/[A-Za-z0-9_.:-]+\.sock)", re.ASCII)


def _opt(v: str) -> str:
    if "," in v or "=" in v:
        raise UsageError(f"refusing {v!r} in a qemu option string (',' or '=')")
    return v


def disk_blockdev(disk: GuestDisk, initiator: str | None) -> dict:
    """The guest's disk as a ``-blockdev`` (node ``disk0``, raw): a block device
    (``/dev/…``), qemu's iSCSI initiator from the map's ``json:`` spec (it must log in as
    this node, ``initiator``), or an overlay's ``nbd+unix://`` export."""
    if disk.qemu_json:
        spec = qsd.origin_blockdev(disk.qemu_json)          # checks the json: shape
        f = dict(spec["file"], **{"node-name": DISK_NODE + "-file"})
        if f.get("driver") == "iscsi" and f.get("initiator-name") != initiator:
            raise UsageError(f"the disk's spec logs in as {f.get('initiator-name')}, not as "
                             f"this node ({initiator})", field="disk")
        return {"driver": spec["driver"], "node-name": DISK_NODE, "file": f}
    dev = disk.device
    m = _NBD.fullmatch(dev)
    if m:
        return {"driver": "raw", "node-name": DISK_NODE,
                "file": {"driver": "nbd", "node-name": DISK_NODE + "-file",
                         "server": {"type": "unix", "path": m.group(2)},
                         "export": m.group(1)}}
    if dev.startswith("/dev/") and ".." not in dev.split("/") and "\0" not in dev:
        return {"driver": "raw", "node-name": DISK_NODE,
                "file": {"driver": "host_device", "node-name": DISK_NODE + "-file",
                         "filename": dev}}
    raise UsageError(f"the qemu runner cannot open disk {dev!r:.80}: a /dev path, an "
                     "nbd+unix:// export or the userspace initiator's json: spec",
                     field="disk")


def qemu_argv(vm: str, spec: GuestSpec, blockdev: dict, d: str) -> list[str]:
    """The whole qemu command line (a list: it never meets a shell)."""
    js = json.dumps(blockdev, separators=(",", ":"), sort_keys=True)
    argv = [QEMU, "-name", f"guest={_opt(vm)}", "-machine", "pc"]
    for a in spec.accel.split(":"):
        argv += ["-accel", a]
    argv += ["-cpu", "max", "-m", str(spec.mem), "-smp", str(spec.cpus),
             "-nodefaults", "-no-user-config", "-display", "none",
             "-daemonize", "-pidfile", f"{d}/qemu.pid",
             "-qmp", f"unix:{_opt(d)}/qmp.sock,server=on,wait=off",
             "-chardev", f"file,id=console,path={_opt(d)}/console.log",
             "-serial", "chardev:console",
             "-blockdev", js, "-device", f"virtio-blk-pci,drive={DISK_NODE},bootindex=1"]
    if spec.kernel:
        argv += ["-kernel", spec.kernel]
        if spec.initrd:
            argv += ["-initrd", spec.initrd]
        if spec.append:
            argv += ["-append", spec.append]
    if spec.network != "none":
        net = "user,id=net0" if spec.network == "user" else \
            f"bridge,id=net0,br={_opt(spec.network.split(':', 1)[1])}"
        argv += ["-netdev", net, "-device", f"virtio-net-pci,netdev=net0,mac={spec.mac}"]
    return argv


@register
class QemuRunner(Runner):
    name = "qemu"

    @property
    def pidfile(self) -> str:
        return f"{self.dir}/qemu.pid"

    @property
    def qmp(self) -> str:
        return f"{self.dir}/qmp.sock"

    @property
    def console(self) -> str:
        return f"{self.dir}/console.log"

    # -------------------------------------------------------------- finding it
    @staticmethod
    def _live(ex: Executor, pidfile: str) -> int | None:
        try:
            pid = int((ex.fs.read_text(pidfile) or "").strip())
        except ValueError:
            return None
        state = ex.fs.pid_state(pid)
        if state is None or state == "Z":
            return None
        argv = ex.fs.pid_cmdline(pid)
        if not argv or not argv[0].endswith(QEMU) or pidfile not in argv:
            return None
        return pid

    def _pid(self) -> int | None:
        return self._live(self.ex, self.pidfile)

    def _facts(self, pid: int | None, **kw: Any) -> GuestFacts:
        return GuestFacts(runner=self.name, vm=self.vm, running=pid is not None, pid=pid,
                          qmp=self.qmp, console=self.console,
                          console_tail=tail(self.ex.fs.read_text(self.console)), **kw)

    def _qmp_status(self) -> str | None:
        try:
            q = qsd.connect(self.qmp)
        except NotFound:
            return None
        try:
            ret = q.execute("query-status")
            return ret.get("status") if isinstance(ret, dict) else None
        finally:
            q.close()

    def _qmp(self, cmd: str) -> None:
        """A QMP command that changes something: logged, skipped in a dry run."""
        def call() -> None:
            q = qsd.connect(self.qmp)
            try:
                q.execute(cmd)
            finally:
                q.close()
        self.ex.call(shlex.join(["qmp", self.qmp, cmd]), call)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = self.ex.fs.monotonic() + timeout
        while True:
            state = self.ex.fs.pid_state(pid)
            if state is None or state == "Z":
                return True
            if self.ex.fs.monotonic() >= deadline:
                return False
            self.ex.fs.sleep(0.2)

    def _clean(self) -> None:
        left = [p for p in (self.pidfile, self.qmp) if self.ex.fs.exists(p)]
        if left:
            self.ex.run(["rm", "-f", "--"] + left)

    # -------------------------------------------------------------- the interface
    def status(self) -> GuestFacts:
        pid = self._pid()
        return self._facts(pid, status=self._qmp_status() if pid else None)

    def start(self, spec: GuestSpec, disk: GuestDisk) -> Outcome:
        pid = self._pid()
        if pid is not None:
            return Outcome(False, self._facts(pid, status=self._qmp_status()),
                           f"guest {self.vm} runs already (qemu pid {pid})")
        initiator = require_initiator_name(self.ex) if disk.qemu_json else None
        argv = qemu_argv(self.vm, spec, disk_blockdev(disk, initiator), self.dir)
        for d in (RUN_DIR, self.dir):
            if not self.ex.fs.exists(d):
                self.ex.run(["mkdir", "-p", "-m", "0700", d])
        self._clean()
        if self.ex.fs.exists(self.console):
            self.ex.run(["mv", "-f", "--", self.console, self.console + ".1"])
        try:
            self.ex.run(argv)
        except RemoteCommandError as e:
            raise StepError(f"{self.ex.host}: qemu did not start guest {self.vm} "
                            f"(exit {e.rc}):\n" + "\n".join(
                                "  | " + ln for ln in tail(e.stderr, 10)),
                            vm=self.vm, rc=e.rc, stderr=e.stderr) from None
        if self.ex.dry_run:
            return Outcome(True, self._facts(None), f"would start guest {self.vm}")
        pid = self._wait_started()
        return Outcome(True, self._facts(pid, status=self._qmp_status()),
                       f"guest {self.vm} started (qemu pid {pid})")

    def _wait_started(self) -> int:
        deadline = self.ex.fs.monotonic() + START_WAIT
        while True:
            pid = self._pid()
            if pid is not None:
                return pid
            if self.ex.fs.monotonic() >= deadline:
                lines = tail(self.ex.fs.read_text(self.console), 10)
                raise StepError(f"{self.ex.host}: qemu daemonized but {self.pidfile} names "
                                f"no live guest {self.vm}; its console:\n" + "\n".join(
                                    "  | " + ln for ln in lines), vm=self.vm)
            self.ex.fs.sleep(0.1)

    def powerdown(self, timeout: float) -> Outcome:
        pid = self._pid()
        if pid is None:
            self._clean()
            return Outcome(False, self._facts(None), f"guest {self.vm} is not running")
        t0 = self.ex.fs.monotonic()
        self._qmp("system_powerdown")
        if self.ex.dry_run:
            return Outcome(True, self._facts(pid, stopped="powerdown"),
                           f"would ask guest {self.vm} to power down")
        if not self._wait_gone(pid, timeout):
            raise Conflict(f"{self.ex.host}: guest {self.vm} (qemu pid {pid}) did not shut "
                           f"down within {timeout:g}s of the ACPI powerdown; it still runs "
                           "(does it run an ACPI daemon?)", vm=self.vm, pid=pid,
                           reason="still-running")
        self._clean()
        secs = round(self.ex.fs.monotonic() - t0, 1)
        return Outcome(True, self._facts(None, stopped="powerdown", seconds=secs),
                       f"guest {self.vm} shut down ({secs:g}s after the powerdown)")

    def kill(self) -> Outcome:
        pid = self._pid()
        if pid is None:
            self._clean()
            return Outcome(False, self._facts(None), f"guest {self.vm} is not running")
        try:
            self._qmp("quit")
        except (NotFound, StepError):
            pass                                # no monitor: the signals below
        if not self.ex.dry_run:
            for sig in (None, "-TERM", "-KILL"):
                if sig:
                    self.ex.run(["kill", sig, str(pid)], check=False)
                if self._wait_gone(pid, KILL_WAIT):
                    break
            else:
                raise StepError(f"{self.ex.host}: qemu {pid} of guest {self.vm} did not exit")
        self._clean()
        return Outcome(True, self._facts(None, stopped="hard"),
                       f"guest {self.vm} stopped hard (qemu pid {pid})")

    @classmethod
    def guests(cls, ex: Executor) -> list[dict]:
        out = []
        for vm in sorted(ex.fs.listdir(RUN_DIR)):
            try:
                d = guest_dir(vm)
            except UsageError:
                continue
            pid = cls._live(ex, f"{d}/qemu.pid")
            out.append({"vm": vm, "running": pid is not None, "pid": pid})
        return out
