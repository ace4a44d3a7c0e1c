"""VM definitions, guest records, hooks and the start/stop workflow with a VM runner
(issue 27), without hosts: the store, the CLI, a scripted cluster."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imgstor.errors import ConfigError, Conflict, StateError, UsageError
from imgstor.remote.protocol import GuestSpec, StepResult
from imgstor.state import Store
from imgstor.state.model import GuestRun, Machine, State, Vm
from imgstor.workflows import guests, vmctl, vmspec
from imgstor.workflows.context import Ctx
from imgstor.workflows.vmhooks import HookCall, run_hook

KERNEL = "/var/cache/imgstor-lab-guest/k/vmlinux"


# ------------------------------------------------------------------ the model
def test_old_records_read_and_new_fields_are_written_only_when_set():
    old = {"schema": 2, "vms": {"a": {"name": "a", "container": "c"},
                                "b": {"name": "b", "container": "c", "nas": "n", "zpool": "t"}}}
    st = State.from_dict(json.loads(json.dumps(old)))
    assert st.vms["a"].machine is None and st.vms["a"].guest is None
    assert st.to_dict()["vms"]["a"] == {"name": "a", "container": "c", "nas": None,
                                        "zpool": None}
    st.vms["a"].machine = Machine(mem=96, mac="52:54:00:00:00:01", kernel=KERNEL)
    st.vms["a"].guest = GuestRun("running", "c", "qemu", 1.0, 2.0, pid=7)
    back = State.from_dict(json.loads(json.dumps(st.to_dict())))
    assert back.vms["a"].machine == st.vms["a"].machine        # the fast path, typed
    assert back.vms["a"].guest == st.vms["a"].guest
    assert st.to_dict()["vms"]["a"]["machine"] == {"mem": 96, "cpus": 1,
                                                   "mac": "52:54:00:00:00:01", "kernel": KERNEL}


@pytest.mark.parametrize("bad,msg", [
    ({"machine": {"mem": "96"}}, "bad field types"),
    ({"machine": {"ram": 96}}, "unknown field"),
    ({"guest": {"state": "zombie", "host": "c", "runner": "qemu", "since": 0, "seen": 0}},
     "unknown guest state"),
])
def test_bad_machine_or_guest_is_a_state_error(bad, msg):
    with pytest.raises(StateError, match=msg):
        State.from_dict({"vms": {"a": {"name": "a", "container": "c", **bad}}})


# ------------------------------------------------------------------ definitions
def test_machine_keys_are_converted_and_checked():
    assert vmspec.machine_changes(mem="2G", cpus="2", mac="52:54:00:AB:CD:EF",
                                  network="bridge:br0") == {
        "mem": 2048, "cpus": 2, "mac": "52:54:00:ab:cd:ef", "network": "bridge:br0"}
    assert vmspec.machine_changes(mem="512", kernel=None) == {"mem": 512}
    for kw, msg in [({"mem": "lots"}, "mem: expected MiB"), ({"cpus": "two"}, "cpus"),
                    ({"mac": "53:54:00:00:00:01"}, "unicast"),
                    ({"network": "tap0"}, "none, user or bridge:NAME"),
                    ({"kernel": "vmlinux"}, "absolute path"),
                    ({"kernel": "/a/../b"}, "absolute path"),
                    ({"append": "a\nb"}, "printable"), ({"hook": "hook.sh"}, "absolute")]:
        with pytest.raises(UsageError, match=msg):
            vmspec.machine_changes(**kw)


def test_apply_gives_a_unique_mac_and_checks_the_whole():
    st = State()
    a, b = Vm("a", "c"), Vm("b", "c")
    st.vms.update(a=a, b=b)
    ma = vmspec.apply(st, a, {})
    assert ma.mac.startswith("52:54:00:") and a.machine is ma
    b.machine = Machine(mac=ma.mac)                # taken: the next one up
    assert vmspec.alloc_mac(st, "a") != ma.mac
    with pytest.raises(Conflict, match="VM a's already"):
        vmspec.apply(st, b, {"mac": ma.mac, "mem": 64})
    with pytest.raises(UsageError, match="need kernel="):
        vmspec.apply(st, b, {"append": "quiet"})
    spec = vmspec.guest_spec(vmspec.apply(st, b, {"kernel": KERNEL, "append": "quiet"}), "tcg")
    assert isinstance(spec, GuestSpec) and spec.accel == "tcg" and spec.kernel == KERNEL


def test_add_set_move_and_list(imgstor, state_path):
    r = imgstor("add", "host", "vm", "compute-0-0", "name=g1", "mem=96", "cpus=2",
                f"kernel={KERNEL}", "append=console=ttyS0 quiet")
    assert r.rc == 0, r
    assert imgstor("add", "host", "vm", "compute-0-0", "name=plain").rc == 0
    r = imgstor("list", "host", "vm")
    assert r.out.splitlines()[0].split() == ["VM", "CONTAINER", "NAS", "ZPOOL", "MODE", "MEM",
                                             "CPUS", "GUEST"]
    row = json.loads(imgstor("list", "host", "vm", "g1", "--json").out)["rows"][0]
    assert (row["mem"], row["cpus"], row["boot"], row["runner"], row["guest"]) == \
        (96, 2, "kernel", "none", None)
    assert row["mac"].startswith("52:54:00:")
    r = imgstor("set", "host", "vm", "g1", "mem=128", "kernel=")
    assert r.rc == 2 and "need kernel=" in r.err, r
    r = imgstor("set", "host", "vm", "g1", "mem=128", "kernel=", "append=")
    assert r.rc == 0 and "mem=128 kernel= append= (from its next start)" in r.out, r
    r = imgstor("set", "host", "vm", "g1", "mem=128", "append=x")
    assert r.rc == 2 and "need kernel=" in r.err, r
    assert imgstor("set", "host", "vm", "g1").rc == 2
    r = imgstor("move", "host", "vm", "g1", "compute-0-1")
    assert (r.rc, r.out) == (0, "moved VM g1 from compute-0-0 to compute-0-1 (from its next "
                                "start)\n")
    assert imgstor("move", "host", "vm", "g1", "nas-0-0").rc == 2
    st = Store(str(state_path))
    with st.transaction() as s:
        s.vms["g1"].guest = GuestRun("running", "compute-0-1", "qemu", 1.0, 1.0, pid=5)
    r = imgstor("move", "host", "vm", "g1", "compute-0-0")
    assert r.rc == 8 and "its guest runs on compute-0-1" in r.err, r
    assert json.loads(imgstor("list", "host", "vm", "g1",
                                 "--json").out)["rows"][0]["guest"] == "running"
    # vm_runner is a compute host's attribute, checked by name
    assert imgstor("set", "host", "attr", "compute-0-0", "vm_runner", "qemu").rc == 0
    assert imgstor("set", "host", "attr", "compute-0-0", "vm_runner", "xen").rc == 2
    assert imgstor("set", "host", "attr", "nas-0-0", "vm_runner", "qemu").rc == 2


def test_a_file_without_definitions_lists_as_before(imgstor):
    imgstor("add", "host", "vm", "compute-0-0", "name=plain")
    assert imgstor("list", "host", "vm").out.split("\n")[0].split() == [
        "VM", "CONTAINER", "NAS", "ZPOOL", "MODE"]


# ------------------------------------------------------------------ hooks
def _hook(tmp_path: Path, body: str, mode: int = 0o755) -> str:
    p = tmp_path / "hook"
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(mode)
    return str(p)


def _call(hook: str, phase: str) -> HookCall:
    return HookCall(hook, "g1", phase, "compute-0-0", "/dev/sdb", "direct", "qemu")


def test_hooks(tmp_path):
    ctx = Ctx()
    log = tmp_path / "log"
    ok = _hook(tmp_path, f'echo "$1 $2 $IMGSTOR_NODE $IMGSTOR_DEVICE $IMGSTOR_MODE" >> {log}\n')
    assert run_hook(ctx, _call(ok, "pre-start")) is None
    assert log.read_text() == "g1 pre-start compute-0-0 /dev/sdb direct\n"
    bad = _hook(tmp_path, "echo closed >&2; exit 4\n")
    with pytest.raises(Conflict, match=r"(?s)pre-stop hook .* exited 4.*closed.*nothing was done"):
        run_hook(ctx, _call(bad, "pre-stop"))
    assert "exited 4" in run_hook(ctx, _call(bad, "post-stop"))
    assert run_hook(ctx, _call("", "pre-start")) is None
    open_to_all = _hook(tmp_path, "exit 0\n", 0o777)
    with pytest.raises(ConfigError, match="not be writable by group or others"):
        run_hook(ctx, _call(open_to_all, "pre-start"))
    assert run_hook(Ctx(dry_run=True), _call(bad, "pre-start")) is None


# ------------------------------------------------------------------ the workflow
class FakeCluster:
    def __init__(self, answers: dict) -> None:
        self.answers, self.calls = answers, []

    def step(self, host: str, name: str, **args):
        self.calls.append((host, name, args))
        a = self.answers[name]
        if isinstance(a, Exception):
            raise a
        return StepResult(a[0], a[1], "", host, name)

    def parallel(self, hosts, fn):
        return {h: fn(h) for h in hosts}


@pytest.fixture
def ctx(config_path, state_path, monkeypatch):
    c = Ctx(config_path=str(config_path))
    with c.store.transaction() as st:
        st.vms["g1"] = Vm("g1", "compute-0-0", "nas-0-0", "tank",
                          machine=Machine(mem=96, mac="52:54:00:00:00:01", kernel=KERNEL))
        st.attrs.clear()
    from imgstor.state.model import HostAttrs
    with c.store.transaction() as st:
        st.attrs["compute-0-0"] = HostAttrs(vm_runner="qemu")
    return Ctx(config_path=str(config_path))


def test_failing_pre_start_hook_maps_nothing(ctx, tmp_path, monkeypatch):
    mapped = []
    monkeypatch.setattr(vmctl, "map_volume", lambda *a, **k: mapped.append(a))
    with ctx.store.transaction() as st:
        st.vms["g1"].machine.hook = _hook(tmp_path, "exit 3\n")
    with pytest.raises(Conflict, match="pre-start hook"):
        vmctl.start_vm(ctx, "g1")
    assert mapped == [] and ctx.store.read().vms["g1"].guest is None


def test_start_boots_after_the_map_and_a_failed_boot_keeps_the_disk(ctx, monkeypatch):
    from imgstor.errors import StepError
    from imgstor.state.model import Volume

    def fake_map(c, nas, zpool, vol, host, size, **kw):
        with c.store.transaction() as st:
            st.volumes[f"{nas}/{vol}"] = Volume(nas, zpool, vol, host=host, state="mapped",
                                                mode="direct", device="/dev/sdc")
        return f"{nas}:{vol} mapped to {host}:/dev/sdc"
    monkeypatch.setattr(vmctl, "map_volume", fake_map)
    cl = FakeCluster({"vm.start": (True, {"pid": 42, "running": True})})
    ctx.__dict__["cluster"] = cl
    out = vmctl.start_vm(ctx, "g1")
    assert out == ("nas-0-0:g1-vol mapped to compute-0-0:/dev/sdc; guest started on "
                   "compute-0-0 (qemu, pid 42)")
    host, step, args = cl.calls[0]
    assert (host, step, args["runner"], args["disk"]) == (
        "compute-0-0", "vm.start", "qemu", {"device": "/dev/sdc", "qemu_json": None})
    assert args["spec"]["accel"] == "kvm" and args["spec"]["kernel"] == KERNEL
    g = ctx.store.read().vms["g1"].guest
    assert (g.state, g.host, g.pid) == ("running", "compute-0-0", 42)
    cl.answers["vm.start"] = StepError("qemu did not start guest g1 (exit 1)")
    with pytest.raises(StepError, match=r"(?s)did not start.*its disk stays mapped"):
        vmctl.start_vm(ctx, "g1")
    assert ctx.store.read().vms["g1"].guest.state == "failed"
    assert ctx.store.read().volumes["nas-0-0/g1-vol"].state == "mapped"


def test_stop_still_running_is_exit_8_and_unmaps_nothing(ctx, monkeypatch):
    unmapped = []
    monkeypatch.setattr(vmctl, "unmap_volume", lambda *a, **k: unmapped.append(a) or "ok")
    with ctx.store.transaction() as st:
        st.vms["g1"].guest = GuestRun("running", "compute-0-0", "qemu", 1.0, 1.0, pid=42)
    cl = FakeCluster({"vm.stop": Conflict("compute-0-0: guest g1 (qemu pid 42) did not shut "
                                          "down within 5s", pid=42)})
    ctx.__dict__["cluster"] = cl
    with pytest.raises(Conflict, match="stays mapped.*--force") as ei:
        vmctl.stop_vm(ctx, "g1", timeout=5)
    assert ei.value.exit_code == 8 and unmapped == []
    assert cl.calls[0][2] == {"runner": "qemu", "vm": "g1", "timeout": 5, "force": False}
    cl.answers["vm.stop"] = (True, {"stopped": "hard", "running": False})
    out = vmctl.stop_vm(ctx, "g1", force=True)
    assert out.startswith("guest g1 stopped hard on compute-0-0; ok") and len(unmapped) == 1
    assert cl.calls[1][2]["timeout"] == 120 and cl.calls[1][2]["force"] is True
    assert ctx.store.read().vms["g1"].guest.state == "stopped"


def test_refresh_records_a_guest_that_went_away(ctx):
    with ctx.store.transaction() as st:
        st.vms["g1"].guest = GuestRun("running", "compute-0-0", "qemu", 1.0, 1.0, pid=42)
    ctx.__dict__["cluster"] = FakeCluster({"vm.list": (False, {"guests": [
        {"vm": "g1", "running": False, "pid": None}]})})
    rows = guests.observe(ctx)
    assert rows == [{"what": "guest", "host": "compute-0-0", "volume": "g1", "job": None,
                     "action": "running -> exited"}]
    assert ctx.store.read().vms["g1"].guest.state == "exited"
    ctx.__dict__["cluster"] = FakeCluster({"vm.list": (False, {"guests": [
        {"vm": "g1", "running": True, "pid": 50}]})})
    assert guests.observe(ctx)[0]["action"] == "exited -> running"
    assert ctx.store.read().vms["g1"].guest.pid == 50


def test_stop_timeout_must_not_be_negative(ctx):
    with pytest.raises(UsageError):
        vmctl.stop_vm(ctx, "g1", timeout=-1)
    assert os.path.exists(ctx.store.path)


def test_qemu_argv_firmware_boot_network_and_disks():
    from imgstor.remote.protocol import GuestDisk
    from imgstor.remote.vmrunners.qemu import disk_blockdev, qemu_argv
    spec = GuestSpec.parse({"mem": 2048, "cpus": 4, "mac": "52:54:00:00:00:09",
                            "network": "bridge:br0", "accel": "kvm:tcg"})
    dev = disk_blockdev(GuestDisk("/dev/mapper/g1-vol-snap"), None)
    assert dev["file"] == {"driver": "host_device", "node-name": "disk0-file",
                           "filename": "/dev/mapper/g1-vol-snap"}
    argv = qemu_argv("g1", spec, dev, "/run/imgstor/vm/g1")
    assert "-kernel" not in argv and argv[argv.index("-m") + 1] == "2048"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-accel"] == ["kvm", "tcg"]
    assert "virtio-blk-pci,drive=disk0,bootindex=1" in argv         # the firmware boots it
    assert argv[-4:] == ["-netdev", "bridge,id=net0,br=br0", "-device",
                         "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:09"]
    for bad in ("/tmp/disk.raw", "iscsi://1.2.3.4/iqn.x/1", "/dev/../etc/passwd",
                "nbd+unix:///v?socket=/tmp/x.sock"):
        with pytest.raises(UsageError, match="cannot open disk"):
            disk_blockdev(GuestDisk(bad), None)


def test_rocks_forwards_the_vm_commands(imgstor):
    from imgstor import cli
    imgstor("add", "host", "vm", "compute-0-0", "name=g1")
    r = imgstor("move", "host", "vm", "g1", "compute-0-1", main=cli.rocks_main)
    assert r.rc == 0 and "moved VM g1" in r.out, r
    r = imgstor("set", "host", "vm", "g1", "cpus=2", main=cli.rocks_main)
    assert r.rc == 0 and "cpus=2" in r.out, r
    assert imgstor("stop", "host", "vm", "nope", main=cli.rocks_main).rc == 6
