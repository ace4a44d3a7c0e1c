"""Scenarios of the VM guest steps (imgstor/remote/steps/vm.py) with the qemu runner.

The node's files and processes are FakeFS (``fs``), qemu's monitor the fake QMP
(fake_node.py).  The qemu command line is written out literally: it is what runs."""
from __future__ import annotations

from scn_common import cmd

D = "/run/imgstor/vm/vm1"
PID, QMP, CON = f"{D}/qemu.pid", f"{D}/qmp.sock", f"{D}/console.log"
NBD = "nbd+unix:///vm1-vol?socket=/run/imgstor/nbd/vm1-vol.sock"
QEMU_PROC = ["S", ["qemu-system-x86_64", "-name", "guest=vm1", "-pidfile", PID]]
SPEC = {"mem": 96, "cpus": 1, "mac": "52:54:00:12:34:56", "kernel": "/boot/vmlinux",
        "initrd": "/boot/initrd", "append": "console=ttyS0 quiet", "network": "none",
        "accel": "tcg"}
ARGS = {"runner": "qemu", "vm": "vm1", "spec": SPEC, "disk": {"device": NBD}}
ARGV = ["qemu-system-x86_64", "-name", "guest=vm1", "-machine", "pc", "-accel", "tcg",
        "-cpu", "max", "-m", "96", "-smp", "1", "-nodefaults", "-no-user-config",
        "-display", "none", "-daemonize", "-pidfile", PID,
        "-qmp", f"unix:{QMP},server=on,wait=off",
        "-chardev", f"file,id=console,path={CON}", "-serial", "chardev:console",
        "-blockdev", '{"driver":"raw","file":{"driver":"nbd","export":"vm1-vol",'
                     '"node-name":"disk0-file","server":{"path":"/run/imgstor/nbd/vm1-vol.sock",'
                     '"type":"unix"}},"node-name":"disk0"}',
        "-device", "virtio-blk-pci,drive=disk0,bootindex=1",
        "-kernel", "/boot/vmlinux", "-initrd", "/boot/initrd", "-append", "console=ttyS0 quiet"]
RUNNING = {"procs": {4242: QEMU_PROC}, "files": {PID: "4242\n", CON: "labguest: up\n"},
           "exists": [PID, QMP, CON, "/run/imgstor/vm", D]}
STATUS = [{"execute": "query-status", "return": {"status": "running"}}]

SCENARIOS: list[dict] = [
    # ------------------------------------------------------------------ vm.start
    {"id": "boots", "step": "vm.start", "tags": {"changes"}, "args": ARGS,
     "fs": {"exists": ["/run/imgstor/vm"], "procs": {4242: QEMU_PROC},
            "files_after": {PID: [1, "4242\n"]}},
     "qmp": STATUS,
     "script": [cmd(["mkdir", "-p", "-m", "0700", D]), cmd(ARGV)],
     "changed": True, "facts_include": {"running": True, "pid": 4242, "status": "running",
                                        "console": CON},
     "mutating": [["mkdir", "-p", "-m", "0700", D], ARGV]},
    {"id": "runs-already", "step": "vm.start", "tags": {"done"}, "args": ARGS,
     "fs": RUNNING, "qmp": STATUS, "qmp_mutating": [], "script": [], "mutating": [],
     "changed": False, "facts_include": {"running": True, "pid": 4242,
                                         "console_tail": ["labguest: up"]}},
    {"id": "dry-run", "step": "vm.start", "tags": {"dry-run"}, "args": ARGS, "dry_run": True,
     "fs": {"exists": ["/run/imgstor/vm", D, CON]}, "script": [],
     "skipped": [["mv", "-f", "--", CON, CON + ".1"], ARGV],
     "changed": True, "facts_include": {"running": False}},
    {"id": "qemu-fails", "step": "vm.start", "tags": {"error"}, "args": ARGS,
     "fs": {"exists": ["/run/imgstor/vm", D]},
     "script": [cmd(ARGV, rc=1, stderr="qemu-system-x86_64: -kernel /boot/vmlinux: could not "
                                       "open kernel file\n")],
     "raises": ("StepError", r"qemu did not start guest vm1 \(exit 1\):\n.*could not open kernel")},
    {"id": "bad-spec", "step": "vm.start", "tags": {"error"},
     "args": {**ARGS, "spec": {**SPEC, "mac": "53:54:00:12:34:56"}}, "script": [],
     "raises": ("UsageError", r"invalid mac '53:54:00:12:34:56': must be a unicast")},
    {"id": "iscsi-other-initiator", "step": "vm.start", "tags": {"error"},
     "env": {"initiator": "iqn.2005-03.org.open-iscsi:compute-0-0"},
     "args": {**ARGS, "disk": {"device": "iscsi://127.0.0.1:3260/iqn.x/1", "qemu_json":
                               'json:{"driver":"raw","file":{"driver":"iscsi","portal":'
                               '"127.0.0.1:3260","target":"iqn.x","lun":1,'
                               '"initiator-name":"iqn.2005-03.org.open-iscsi:other"}}'}},
     "script": [], "raises": ("UsageError", r"logs in as iqn.2005-03.org.open-iscsi:other")},
    # ------------------------------------------------------------------ vm.stop
    {"id": "powerdown", "step": "vm.stop", "tags": {"changes"},
     "args": {"runner": "qemu", "vm": "vm1", "timeout": 60},
     "fs": {**RUNNING, "exit_after": {4242: 3}},
     "qmp": [{"execute": "system_powerdown"}], "qmp_mutating": [["system_powerdown"]],
     "script": [cmd(["rm", "-f", "--", PID, QMP])],
     "changed": True, "facts_include": {"running": False, "stopped": "powerdown"}},
    {"id": "not-running", "step": "vm.stop", "tags": {"done"},
     "args": {"runner": "qemu", "vm": "vm1", "timeout": 60}, "fs": {"exists": [D]},
     "script": [], "mutating": [], "changed": False, "facts_include": {"running": False}},
    {"id": "dry-run", "step": "vm.stop", "tags": {"dry-run"}, "dry_run": True,
     "args": {"runner": "qemu", "vm": "vm1", "timeout": 60}, "fs": RUNNING,
     "qmp": [], "script": [], "skipped": [f"qmp {QMP} system_powerdown"],
     "changed": True, "facts_include": {"stopped": "powerdown"}},
    {"id": "ignores-powerdown", "step": "vm.stop", "tags": {"error"},
     "args": {"runner": "qemu", "vm": "vm1", "timeout": 5}, "fs": RUNNING,
     "qmp": [{"execute": "system_powerdown"}], "script": [],
     "raises": ("Conflict", r"guest vm1 \(qemu pid 4242\) did not shut down within 5s"),
     "details": {"pid": 4242, "reason": "still-running"}},
    {"id": "force-after-timeout", "step": "vm.stop", "tags": {"changes"},
     "args": {"runner": "qemu", "vm": "vm1", "timeout": 5, "force": True},
     "fs": {**RUNNING, "exit_after": {4242: 8}},
     "qmp": [{"execute": "system_powerdown"}, {"execute": "quit"}],
     "qmp_mutating": [["system_powerdown"], ["quit"]],
     "script": [cmd(["rm", "-f", "--", PID, QMP])],
     "changed": True, "facts_include": {"running": False, "stopped": "hard"}},
    # ------------------------------------------------------------------ vm.status / list
    {"id": "running", "step": "vm.status", "tags": {"read"},
     "args": {"runner": "qemu", "vm": "vm1"}, "fs": RUNNING, "qmp": STATUS, "script": [],
     "facts_include": {"running": True, "pid": 4242, "status": "running"}},
    {"id": "dry-run", "step": "vm.status", "tags": {"read", "dry-run"}, "dry_run": True,
     "args": {"runner": "qemu", "vm": "vm1"}, "fs": {"files": {PID: "4242\n"}}, "script": [],
     "skipped": [], "facts_include": {"running": False, "pid": None}},
    {"id": "two-guests", "step": "vm.list", "tags": {"read"}, "args": {"runner": "qemu"},
     "fs": {"procs": {4242: QEMU_PROC},
            "files": {PID: "4242\n", "/run/imgstor/vm/vm2/qemu.pid": "4343\n"}},
     "script": [], "facts": {"guests": [{"vm": "vm1", "running": True, "pid": 4242},
                                        {"vm": "vm2", "running": False, "pid": None}]}},
    {"id": "dry-run", "step": "vm.list", "tags": {"read", "dry-run"}, "dry_run": True,
     "args": {"runner": "qemu"}, "script": [], "skipped": [], "facts": {"guests": []}},
]
