"""Scenarios for the overlay steps, both drivers (see test_step_scenarios.py for the keys).

dm answers are the kernel lab's captures (tests/fixtures/kernel/dmsetup_*: vm1-vol-snap,
origin /dev/sda = 8:0, COW zvol 230:0, local zvol 230:16, 131072 sectors).  qcow2: the
commands are real argv; QMP replies are written in QEMU 7.2's shapes (seen in the lab:
query-block-exports names ``#block044`` while a commit runs, the base once completed).
"""
from __future__ import annotations

import json
from pathlib import Path

from scn_common import INIT0, INIT1, IQN1, PORTAL, cmd

KERNEL = Path(__file__).resolve().parents[2] / "fixtures" / "kernel"

POOL, VOL = "tank", "vm1-vol"
SNAP = "vm1-vol-snap"
TW = "tank/vm1-vol-temp-write"
COW = "/dev/zvol/tank/vm1-vol-temp-write"
LOCALZ = "/dev/zvol/tank/vm1-vol"
MAPPER = "/dev/mapper/vm1-vol-snap"
DM = {"driver": "dm", "pool": POOL, "vol": VOL}
QC = {"driver": "qcow2", "pool": POOL, "vol": VOL}
RDEV = {"rdev": {LOCALZ: "230:16"}}


def kcap(argv: list[str], name: str) -> dict:
    """A kernel-lab capture (NAME.out/.err, rc from NAME.cmd)."""
    rc = next(int(ln[4:]) for ln in (KERNEL / f"{name}.cmd").read_text().splitlines()
              if ln.startswith("rc: "))
    return cmd(argv, rc=rc, stdout=(KERNEL / f"{name}.out").read_text(),
               stderr=(KERNEL / f"{name}.err").read_text())


TABLE, STATUS = ["dmsetup", "table", SNAP], ["dmsetup", "status", SNAP]
T_NONE = kcap(TABLE, "dmsetup_status_missing")          # same text for table and status
T_SNAP, T_MERGE, T_LINEAR = (kcap(TABLE, "dmsetup_table_snapshot"),
                             kcap(TABLE, "dmsetup_table_merge"),
                             kcap(TABLE, "dmsetup_table_linear"))
S_SNAP, S_MERGING, S_MERGED = (kcap(STATUS, "dmsetup_status_snapshot"),
                               kcap(STATUS, "dmsetup_status_merging"),
                               kcap(STATUS, "dmsetup_status_merged"))
GETSZ = cmd(["blockdev", "--getsz", "/dev/sda"], stdout="131072\n")
SETTLE = ["udevadm", "settle", "--timeout=30"]
ZGET_TW = ["zfs", "get", "-H", "-p", "-o", "name,property,value,source", "type,imgstor:role", TW]
TW_NONE = cmd(ZGET_TW, rc=1, stderr=f"cannot open '{TW}': dataset does not exist\n")


def tw(kind: str, role: str = "temp-write") -> dict:
    return cmd(ZGET_TW, stdout=f"{TW}\ttype\t{kind}\t-\n{TW}\timgstor:role\t{role}\tlocal\n")


# 64 MiB + 1/64 for the exception store, a multiple of 128K
CREATE_COW = ["zfs", "create", "-s", "-o", "volblocksize=128K", "-o", "imgstor:role=temp-write",
              "-V", "68157440", TW]
DM_CREATE = ["dmsetup", "create", SNAP, "--table", f"0 131072 snapshot /dev/sda {COW} P 16"]
SUSPEND, RESUME = ["dmsetup", "suspend", SNAP], ["dmsetup", "resume", SNAP]
RELOAD_LOCAL = ["dmsetup", "reload", SNAP, "--table",
                f"0 131072 snapshot-merge {LOCALZ} 230:0 P 16"]
RELOAD_ORIGIN = ["dmsetup", "reload", SNAP, "--table", "0 131072 snapshot-merge 8:0 230:0 P 16"]
RELOAD_LINEAR = ["dmsetup", "reload", SNAP, "--table", "0 131072 linear 230:16 0"]
DESTROY_TW = ["zfs", "destroy", TW]
DM_REMOVE = ["dmsetup", "remove", "--retry", SNAP]
GETSZ_LOCAL = cmd(["blockdev", "--getsz", LOCALZ], stdout="131072\n")
DM_LINEAR = ["dmsetup", "create", SNAP, "--table", f"0 131072 linear {LOCALZ} 0"]

DM_SNAP_FACTS = {"driver": "dm", "exists": True, "device": MAPPER, "phase": "snapshot",
                 "into": None, "done": None, "total": None, "status": "snapshot",
                 "synced": "16448/131072 64", "table": "snapshot", "sectors": 131072,
                 "allocated": 16448, "cow_sectors": 131072, "metadata": 64, "origin": "8:0",
                 "remaining": (16448 - 64) * 512}

DM_SCENARIOS = [
    # ------------------------------------------------------------------ overlay.create
    dict(id="dm-new", step="overlay.create", tags=["changes"],
         args={**DM, "origin": "/dev/sda"}, env={"paths": [COW, MAPPER]},
         script=[T_NONE, GETSZ, TW_NONE, cmd(CREATE_COW), cmd(SETTLE),
                 kcap(DM_CREATE, "dmsetup_create_snapshot"), cmd(SETTLE)],
         changed=True, mutating=[CREATE_COW, DM_CREATE],
         facts={"driver": "dm", "exists": True, "device": MAPPER, "phase": "snapshot",
                "status": "snapshot", "sectors": 131072, "cow": COW, "temp_write": TW,
                "temp_write_created": True},
         message=f"created overlay {SNAP} over /dev/sda"),
    dict(id="dm-exists", step="overlay.create", tags=["done"],
         args={**DM, "origin": "/dev/sda"}, script=[T_SNAP, S_SNAP],
         changed=False, mutating=[], facts=DM_SNAP_FACTS,
         message=f"{SNAP} exists (snapshot)"),
    dict(id="dm-cow-left-by-a-crash", step="overlay.create", tags=["changes"],
         note="a COW zvol of ours survives (reboot, kill): reused, its exceptions kept (P)",
         args={**DM, "origin": "/dev/sda"}, env={"paths": [COW, MAPPER]},
         script=[T_NONE, GETSZ, tw("volume"), cmd(SETTLE), cmd(DM_CREATE), cmd(SETTLE)],
         changed=True, mutating=[DM_CREATE], facts_include={"temp_write_created": False}),
    dict(id="dm-dry-run", step="overlay.create", tags=["dry-run"], dry_run=True,
         args={**DM, "origin": "/dev/sda"}, script=[T_NONE, GETSZ, TW_NONE],
         skipped=[CREATE_COW, DM_CREATE], changed=True),
    dict(id="dm-create-fails-cleans-up", step="overlay.create", tags=["error"],
         note="create-then-configure: the COW zvol made here is destroyed again",
         args={**DM, "origin": "/dev/sda"}, env={"paths": [COW]},
         script=[T_NONE, GETSZ, TW_NONE, cmd(CREATE_COW), cmd(SETTLE),
                 kcap(DM_CREATE, "dmsetup_create_exists"), cmd(DESTROY_TW)],
         raises=("AlreadyExists", "dm device exists")),
    dict(id="dm-foreign-cow", step="overlay.create", tags=["error"],
         note="a dataset of that name without our mark is never used as a COW",
         args={**DM, "origin": "/dev/sda"},
         script=[T_NONE, GETSZ, tw("volume", "volume")],
         raises=("Conflict", "not imgstor's temp-write volume")),
    dict(id="dm-foreign-table", step="overlay.create", tags=["error"],
         args={**DM, "origin": "/dev/sda"},
         script=[cmd(TABLE, stdout="0 131072 striped 2 128 8:0 0 8:16 0\n")],
         raises=("Conflict", "not an imgstor overlay")),
    dict(id="dm-bad-driver", step="overlay.create", tags=["error"],
         args={**DM, "driver": "lvm", "origin": "/dev/sda"}, script=[],
         raises=("UsageError", "unknown overlay driver 'lvm'; known: dm, qcow2")),
    dict(id="dm-bad-volume-name", step="overlay.create", tags=["error"],
         args={**DM, "vol": "../etc", "origin": "/dev/sda"}, script=[],
         raises=("UsageError", "bad volume name")),
    dict(id="dm-restore-no-cow", step="overlay.create", tags=["error"],
         note="a restore (existing=True) never makes a fresh COW: the VM would read its "
              "disk as it was at the map (audit H1)",
         args={**DM, "origin": "/dev/sda", "existing": True}, script=[T_NONE, GETSZ, TW_NONE],
         raises=("NotFound", "no overlay is made afresh")),
    dict(id="dm-restore-over-its-cow", step="overlay.create", tags=["changes"],
         args={**DM, "origin": "/dev/sda", "existing": True}, env={"paths": [COW, MAPPER]},
         script=[T_NONE, GETSZ, tw("volume"), cmd(SETTLE), cmd(DM_CREATE), cmd(SETTLE)],
         changed=True, mutating=[DM_CREATE], facts_include={"temp_write_created": False}),
    # ------------------------------------------------------------------ overlay.restore_local
    dict(id="dm-restore-local-new", step="overlay.restore_local", tags=["changes"],
         note="a pivoted overlay lost in a reboot: linear on the local copy again",
         args={**DM, "local": LOCALZ}, env={"paths": [LOCALZ, MAPPER]},
         script=[T_NONE, cmd(SETTLE), GETSZ_LOCAL, cmd(DM_LINEAR), cmd(SETTLE)],
         changed=True, mutating=[DM_LINEAR],
         facts={"driver": "dm", "exists": True, "device": MAPPER, "phase": "pivoted",
                "into": "local", "status": "linear", "sectors": 131072},
         message=f"created {SNAP} linear on the local copy {LOCALZ}"),
    dict(id="dm-restore-local-exists", step="overlay.restore_local", tags=["done"],
         note="any overlay there (even one still in snapshot) is left as it is",
         args={**DM, "local": LOCALZ}, script=[T_SNAP, S_SNAP],
         changed=False, mutating=[], facts=DM_SNAP_FACTS,
         message=f"{SNAP} exists (snapshot)"),
    dict(id="dm-restore-local-dry-run", step="overlay.restore_local", tags=["dry-run"],
         dry_run=True, args={**DM, "local": LOCALZ}, script=[T_NONE, GETSZ_LOCAL],
         skipped=[DM_LINEAR], changed=True),
    dict(id="dm-restore-local-no-copy", step="overlay.restore_local", tags=["error"],
         args={**DM, "local": LOCALZ}, env={"paths": [LOCALZ]},
         script=[T_NONE, cmd(SETTLE),
                 cmd(["blockdev", "--getsz", LOCALZ], rc=1,
                     stderr=f"blockdev: cannot open {LOCALZ}: No such device\n")],
         raises=("RemoteCommandError", "No such device")),
    # ------------------------------------------------------------------ overlay.merge
    dict(id="dm-into-local", step="overlay.merge", tags=["changes"], args=DM,
         script=[T_SNAP, cmd(SUSPEND), cmd(RELOAD_LOCAL), cmd(RESUME)],
         changed=True, mutating=[SUSPEND, RELOAD_LOCAL, RESUME],
         facts={"driver": "dm", "exists": True, "device": MAPPER, "phase": "merging",
                "into": "local", "status": "snapshot-merge"},
         message=f"{SNAP} merging into {LOCALZ}"),
    dict(id="dm-into-origin", step="overlay.merge", tags=["changes"],
         note="cancel: snapshot-merge with the snapshot's own origin (the iSCSI disk)",
         args={**DM, "into": "origin"},
         script=[T_SNAP, cmd(SUSPEND), cmd(RELOAD_ORIGIN), cmd(RESUME)],
         changed=True, mutating=[SUSPEND, RELOAD_ORIGIN, RESUME],
         facts_include={"into": "origin", "phase": "merging"}),
    dict(id="dm-merging-already", step="overlay.merge", tags=["done"], args=DM, fs=RDEV,
         script=[T_MERGE, T_MERGE, S_MERGING], changed=False, mutating=[],
         facts_include={"phase": "merging", "into": "local", "status": "snapshot-merge"},
         message=f"{SNAP} is snapshot-merge into the local already"),
    dict(id="dm-dry-run", step="overlay.merge", tags=["dry-run"], dry_run=True, args=DM,
         script=[T_SNAP], skipped=[SUSPEND, RELOAD_LOCAL, RESUME], changed=True),
    dict(id="dm-merging-into-the-other", step="overlay.merge", tags=["error"],
         args={**DM, "into": "origin"}, fs=RDEV, script=[T_MERGE],
         raises=("Conflict", "snapshot-merge into the local; it cannot merge into the origin")),
    dict(id="dm-no-device", step="overlay.merge", tags=["error"], args=DM, script=[T_NONE],
         raises=("NotFound", f"no dm device {SNAP}")),
    dict(id="dm-bad-into", step="overlay.merge", tags=["error"], args={**DM, "into": "nas"},
         script=[], raises=("UsageError", "into must be one of local, origin")),
    # ------------------------------------------------------------------ overlay.status
    dict(id="dm-snapshot", step="overlay.status", tags=["read"], args=DM,
         script=[T_SNAP, S_SNAP], changed=False, facts=DM_SNAP_FACTS),
    dict(id="dm-merging", step="overlay.status", tags=["read"], args=DM, fs=RDEV,
         script=[T_MERGE, S_MERGING], changed=False,
         facts_include={"phase": "merging", "into": "local", "status": "snapshot-merge",
                        "synced": "16448/131072 48", "remaining": 16400 * 512,
                        "origin": "230:16"}),
    dict(id="dm-merged", step="overlay.status", tags=["read"], args=DM, fs=RDEV,
         script=[T_MERGE, S_MERGED], changed=False,
         facts_include={"phase": "merged", "into": "local", "remaining": 0}),
    dict(id="dm-linear", step="overlay.status", tags=["read"], args=DM, fs=RDEV,
         script=[T_LINEAR], changed=False,
         facts_include={"phase": "pivoted", "into": "local", "status": "linear"}),
    dict(id="dm-none", step="overlay.status", tags=["read"], args=DM, script=[T_NONE],
         changed=False, facts_include={"exists": False, "phase": None},
         message="vm1-vol: no overlay"),
    dict(id="dm-dry-run", step="overlay.status", tags=["read", "dry-run"], dry_run=True,
         args=DM, script=[T_SNAP, S_SNAP], skipped=[], changed=False, facts=DM_SNAP_FACTS),
    # ------------------------------------------------------------------ overlay.linear
    dict(id="dm-pivot", step="overlay.linear", tags=["changes"], args=DM, fs=RDEV,
         script=[T_MERGE, S_MERGED, cmd(SUSPEND), cmd(RELOAD_LINEAR), cmd(RESUME),
                 tw("volume"), cmd(DESTROY_TW)],
         changed=True, mutating=[SUSPEND, RELOAD_LINEAR, RESUME, DESTROY_TW],
         facts={"driver": "dm", "exists": True, "device": MAPPER, "phase": "pivoted",
                "into": "local", "status": "linear", "temp_write_destroyed": True},
         message=f"{SNAP} is linear on the local"),
    dict(id="dm-linear-already", step="overlay.linear", tags=["done"], args=DM, fs=RDEV,
         script=[T_LINEAR, TW_NONE], changed=False, mutating=[],
         facts_include={"phase": "pivoted", "temp_write_destroyed": False},
         message=f"{SNAP} is linear already"),
    dict(id="dm-linear-cow-left", step="overlay.linear", tags=["changes"],
         note="killed after the reload: the re-run destroys the COW zvol it left",
         args=DM, fs=RDEV, script=[T_LINEAR, tw("volume"), cmd(DESTROY_TW)],
         changed=True, mutating=[DESTROY_TW], facts_include={"temp_write_destroyed": True}),
    dict(id="dm-dry-run", step="overlay.linear", tags=["dry-run"], dry_run=True, args=DM,
         fs=RDEV, script=[T_MERGE, S_MERGED, tw("volume")],
         skipped=[SUSPEND, RELOAD_LINEAR, RESUME, DESTROY_TW], changed=True),
    dict(id="dm-not-merged", step="overlay.linear", tags=["error"], args=DM, fs=RDEV,
         script=[T_MERGE, S_MERGING], raises=("Conflict", "merging and not merged yet")),
    # ------------------------------------------------------------------ overlay.remove
    dict(id="dm-remove", step="overlay.remove", tags=["changes"], args=DM,
         script=[T_SNAP, tw("volume"), kcap(DM_REMOVE, "dmsetup_remove")],
         changed=True, mutating=[DM_REMOVE],
         facts={"driver": "dm", "exists": False, "temp_write_kept": True},
         message=f"removed {SNAP}; {TW} kept (unmerged writes)"),
    dict(id="dm-gone", step="overlay.remove", tags=["done"], args=DM,
         script=[T_NONE, TW_NONE], changed=False, mutating=[],
         facts={"driver": "dm", "exists": False, "temp_write_kept": False}),
    dict(id="dm-dry-run", step="overlay.remove", tags=["dry-run"], dry_run=True, args=DM,
         script=[T_LINEAR, TW_NONE], skipped=[DM_REMOVE], changed=True),
    dict(id="dm-busy", step="overlay.remove", tags=["error"], args=DM,
         script=[T_LINEAR, TW_NONE,
                 cmd(DM_REMOVE, rc=1, stderr="device-mapper: remove ioctl on vm1-vol-snap  "
                                             "failed: Device or resource busy\n")],
         raises=("Conflict", "Device or resource busy")),
    # ------------------------------------------------------------------ remove --force, users
    dict(id="dm-remove-forced-while-held", step="overlay.remove", tags=["changes"],
         note="--force: dmsetup loads a table that fails every I/O; the holder keeps the "
              "device open, so it stays with that table (nothing lands after the snapshot)",
         args={**DM, "force": True},
         script=[T_LINEAR, TW_NONE,
                 cmd(["dmsetup", "remove", "--force", "--retry", SNAP], rc=1,
                     stderr=f"device-mapper: remove ioctl on {SNAP}  failed: Device or "
                            "resource busy\nCommand failed.\n"),
                 cmd(TABLE, stdout="0 131072 error \n")],
         changed=True, mutating=[["dmsetup", "remove", "--force", "--retry", SNAP]],
         facts={"driver": "dm", "exists": False, "temp_write_kept": False, "forced": True},
         message=f"{SNAP} is still held open: its table now fails every I/O (--force)"),
    dict(id="dm-remove-forced-free", step="overlay.remove", tags=["changes"],
         args={**DM, "force": True},
         script=[T_LINEAR, TW_NONE, cmd(["dmsetup", "remove", "--force", "--retry", SNAP])],
         changed=True, facts={"driver": "dm", "exists": False, "temp_write_kept": False},
         message=f"removed {SNAP}"),
    dict(id="dm-remove-forced-leftover", step="overlay.remove", tags=["done"],
         note="the error table a forced remove left is no overlay any more",
         args={**DM, "force": True}, script=[cmd(TABLE, stdout="0 131072 error \n"), TW_NONE],
         changed=False, mutating=[], message=f"no dm device {SNAP}"),
    dict(id="dm-users-held", step="overlay.users", tags=["read"],
         args=DM, env={"links": {MAPPER: "/dev/dm-3"},
                       "users": {"/dev/dm-3": ["pid 77 (qemu-system-x86) has /dev/dm-3 open"]}},
         script=[], changed=False,
         facts={"users": ["pid 77 (qemu-system-x86) has /dev/dm-3 open"]},
         message="vm1-vol: in use: pid 77 (qemu-system-x86) has /dev/dm-3 open"),
    dict(id="dm-users-none", step="overlay.users", tags=["read", "dry-run"], dry_run=True,
         args=DM, script=[], skipped=[], changed=False, facts={"users": []},
         message="vm1-vol: not in use"),
]


# ============================================================================ qcow2
PID_FILE, QMP_SOCK, NBD_SOCK = ("/run/imgstor/qsd/vm1-vol.pid", "/run/imgstor/qsd/vm1-vol.qmp",
                                "/run/imgstor/nbd/vm1-vol.sock")
URL = f"nbd+unix:///vm1-vol?socket={NBD_SOCK}"
MNT = "/mnt/tank/vm1-vol-temp-write"
OVERLAY = f"{MNT}/overlay.qcow2"
LOCALF = "/mnt/tank/vm1-vol/disk.raw"
SPEC = "json:" + json.dumps({"driver": "raw", "file": {
    "driver": "iscsi", "transport": "tcp", "portal": PORTAL, "target": IQN1, "lun": 1,
    "initiator-name": INIT0}}, separators=(",", ":"))
ORIGIN_NODE = ('{"driver":"raw","file":{"driver":"iscsi","initiator-name":"' + INIT0 + '",'
               '"lun":1,"node-name":"origin-file","portal":"' + PORTAL + '","target":"' + IQN1
               + '","transport":"tcp"},"node-name":"origin","read-only":true}')
QSD = ["qemu-storage-daemon", "--daemonize", "--pidfile", PID_FILE,
       "--blockdev", ORIGIN_NODE,
       "--blockdev", '{"driver":"file","filename":"' + OVERLAY + '","node-name":"ovl-file"}',
       "--blockdev", '{"backing":"origin","driver":"qcow2","file":"ovl-file","node-name":"ovl"}',
       "--nbd-server", f"addr.type=unix,addr.path={NBD_SOCK},max-connections=1",
       "--export", "type=nbd,id=vm1-vol,node-name=ovl,name=vm1-vol,writable=on",
       "--chardev", f"socket,id=qmp,path={QMP_SOCK},server=on,wait=off",
       "--monitor", "chardev=qmp"]
QEMU_IMG_CREATE = ["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", SPEC, OVERLAY]
ZCREATE_TW = ["zfs", "create", "-o", "imgstor:role=temp-write", TW]
ZMOUNT = cmd(["zfs", "get", "-H", "-o", "value", "mountpoint", TW], stdout=MNT + "\n")
MKDIRS = [["mkdir", "-p", "-m", "0700", "/run/imgstor/qsd"],
          ["mkdir", "-p", "-m", "0700", "/run/imgstor/nbd"]]
INFO_OVERLAY = cmd(["qemu-img", "info", "--output=json", OVERLAY],
                   capture="qemu_img_info_overlay",
                   sub={"/tmp/imgstor-drivers-capture/overlay.qcow2": OVERLAY})
RM_ALL = ["rm", "-f", "--", PID_FILE, QMP_SOCK, NBD_SOCK]
QSD_ARGV = ["/usr/bin/qemu-storage-daemon", "--daemonize", "--pidfile", PID_FILE]
UNIX = ("Num       RefCount Protocol Flags    Type St Inode Path\n"
        f"00000000320b7fe9: 00000002 00000000 00010000 0001 01 5707859 {NBD_SOCK}\n"
        f"00000000b18cfc85: 00000003 00000000 00000000 0001 03 5707860 {NBD_SOCK}\n"
        "0000000011112222: 00000003 00000000 00000000 0001 03 5705143\n")
SS = ("Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n"
      f"u_str ESTAB 0 0 {NBD_SOCK} 5707860 * 5705143 "
      'users:(("qemu-storage-da",pid=4242,fd=12))\n'
      'u_str ESTAB 0 0 * 5705143 * 5707860 users:(("qemu-io",pid=31337,fd=4))\n'
      'u_str ESTAB 0 0 * 11 * 12 users:(("sshd",pid=9,fd=3))\n')
RUNNING = {"files": {PID_FILE: "4242\n"}, "procs": {4242: ["S", QSD_ARGV]},
           "exists": [QMP_SOCK, NBD_SOCK, "/run/imgstor/qsd", "/run/imgstor/nbd"]}


def q(execute: str, ret=None, args: dict | None = None, **kw) -> dict:
    out = {"execute": execute, "return": {} if ret is None else ret}
    if args is not None:
        out["arguments"] = args
    out.update(kw)
    return out


def nodes(*names: str, size: int = 1 << 30) -> list[dict]:
    return [{"node-name": n, "drv": "raw", "image": {"virtual-size": size},
             **({"file": LOCALF} if n == "local-file" else {})} for n in names]


GRAPH = ("origin", "origin-file", "ovl", "ovl-file")


def graph(export: str = "ovl", jobs: list | None = None, names=GRAPH) -> list[dict]:
    """The three queries a status makes."""
    return [q("query-block-exports", [{"id": VOL, "node-name": export, "type": "nbd",
                                       "shutting-down": False}]),
            q("query-jobs", jobs or []),
            q("query-named-block-nodes", nodes(*names), {"flat": True})]


def job(into: str, status: str, done: int = 5 << 20, total: int = 5 << 20, **kw) -> dict:
    return {"id": f"commit-{into}", "type": "commit", "status": status,
            "current-progress": done, "total-progress": total, **kw}


def qmp_argv(cmd_: str, args: dict | None = None) -> list[str]:
    return ["qmp", QMP_SOCK, cmd_] + ([json.dumps(args, sort_keys=True, separators=(",", ":"))]
                                      if args else [])


LOCAL_NODE = {"driver": "raw", "node-name": "local",
              "file": {"driver": "file", "node-name": "local-file", "filename": LOCALF}}
REOPEN_LOCAL = {"options": [{"driver": "qcow2", "node-name": "ovl", "file": "ovl-file",
                             "backing": "local"}]}
REOPEN_ORIGIN = {"options": [{"driver": "qcow2", "node-name": "ovl", "file": "ovl-file",
                              "backing": "origin"}]}
COMMIT_LOCAL = {"job-id": "commit-local", "device": "ovl", "base-node": "local",
                "auto-dismiss": False, "auto-finalize": False}
COMMIT_ORIGIN = {"job-id": "commit-origin", "device": "ovl", "base-node": "origin",
                 "auto-dismiss": False, "auto-finalize": False}
RM_OVERLAY = ["rm", "-f", "--", OVERLAY]
SNAP_FACTS = {"driver": "qcow2", "exists": True, "device": URL, "phase": "snapshot",
              "into": None, "done": None, "total": None, "status": "snapshot", "synced": None,
              "pid": 4242, "nbd": NBD_SOCK, "qmp": QMP_SOCK, "export_node": "ovl",
              "nodes": sorted(GRAPH)}

QCOW2_SCENARIOS = [
    # ------------------------------------------------------------------ overlay.create
    dict(id="qcow2-new", step="overlay.create", tags=["changes"],
         args={**QC, "origin": SPEC}, env={"initiator": INIT0},
         fs={"files_after": {PID_FILE: [1, "4242\n"]}, "procs": {4242: ["S", QSD_ARGV]}},
         script=[TW_NONE, cmd(ZCREATE_TW), ZMOUNT, cmd(QEMU_IMG_CREATE), cmd(MKDIRS[0]),
                 cmd(MKDIRS[1]), cmd(QSD)],
         qmp=graph(), qmp_mutating=[],
         changed=True, mutating=[ZCREATE_TW, QEMU_IMG_CREATE, *MKDIRS, QSD],
         facts={"driver": "qcow2", "exists": True, "device": URL, "phase": "snapshot",
                "status": "snapshot", "overlay": OVERLAY, "temp_write": TW,
                "temp_write_created": True, "overlay_created": True, "nbd": NBD_SOCK,
                "qmp": QMP_SOCK, "pid": 4242},
         message=f"overlay vm1-vol over the origin: {URL}"),
    dict(id="qcow2-runs", step="overlay.create", tags=["done"],
         note="create twice = one daemon: found again by pid file (+cmdline) and QMP socket",
         args={**QC, "origin": SPEC}, env={"initiator": INIT0}, fs=RUNNING, script=[],
         qmp=graph(), changed=False, mutating=[], qmp_mutating=[], facts=SNAP_FACTS,
         message="overlay vm1-vol runs (pid 4242, snapshot)"),
    dict(id="qcow2-daemon-died", step="overlay.create", tags=["changes"],
         note="reboot or kill: the overlay file (the VM's writes) is reused, never remade; "
              "the stale pid file and sockets go; a reused pid is not taken for ours",
         args={**QC, "origin": SPEC}, env={"initiator": INIT0},
         fs={"files": {PID_FILE: "4242\n"}, "files_after": {PID_FILE: [1, "4343\n"]},
             "procs": {4242: ["S", ["/usr/bin/sleep", "9"]], 4343: ["S", QSD_ARGV]},
             "exists": [QMP_SOCK, NBD_SOCK, OVERLAY, "/run/imgstor/qsd", "/run/imgstor/nbd"]},
         script=[tw("filesystem"), ZMOUNT, INFO_OVERLAY, cmd(RM_ALL), cmd(QSD)],
         qmp=graph(), changed=True, mutating=[RM_ALL, QSD],
         facts_include={"temp_write_created": False, "overlay_created": False, "pid": 4343}),
    dict(id="qcow2-daemon-does-not-stay", step="overlay.create", tags=["error"],
         args={**QC, "origin": SPEC}, env={"initiator": INIT0},
         fs={"exists": [OVERLAY, "/run/imgstor/qsd", "/run/imgstor/nbd"]},
         script=[tw("filesystem"), ZMOUNT, INFO_OVERLAY, cmd(QSD)],
         raises=("StepError", "names no live daemon")),
    dict(id="qcow2-dry-run", step="overlay.create", tags=["dry-run"], dry_run=True,
         args={**QC, "origin": SPEC}, env={"initiator": INIT0}, script=[TW_NONE],
         skipped=[ZCREATE_TW,
                  ["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", SPEC,
                   f"<mountpoint of {TW}>/overlay.qcow2"], *MKDIRS,
                  [a.replace(OVERLAY, f"<mountpoint of {TW}>/overlay.qcow2") for a in QSD]],
         changed=True),
    dict(id="qcow2-overlay-over-another-origin", step="overlay.create", tags=["error"],
         note="an overlay file that names another origin may hold writes: never replaced",
         args={**QC, "origin": SPEC.replace(IQN1, IQN1 + "x")}, env={"initiator": INIT0},
         fs={"exists": [OVERLAY]}, script=[tw("filesystem"), ZMOUNT, INFO_OVERLAY],
         raises=("Conflict", "exists over another origin")),
    dict(id="qcow2-restore-without-its-file", step="overlay.create", tags=["error"],
         note="the pivot unlinked the file: the local copy holds every write; a restore "
              "never makes a fresh overlay over the origin (audit H1)",
         args={**QC, "origin": SPEC, "existing": True}, env={"initiator": INIT0},
         script=[tw("filesystem"), ZMOUNT], raises=("NotFound", "is not there")),
    dict(id="qcow2-restore-without-temp-write", step="overlay.create", tags=["error"],
         args={**QC, "origin": SPEC, "existing": True}, env={"initiator": INIT0},
         script=[TW_NONE], raises=("NotFound", "no overlay is made afresh")),
    dict(id="qcow2-other-initiator", step="overlay.create", tags=["error"],
         args={**QC, "origin": SPEC}, env={"initiator": INIT1}, script=[],
         raises=("UsageError", f"logs in as {INIT0}, not as this node")),
    dict(id="qcow2-origin-not-json", step="overlay.create", tags=["error"],
         args={**QC, "origin": "/dev/sda"}, env={"initiator": INIT0}, script=[],
         raises=("UsageError", "must be a qemu json: spec")),
    dict(id="qcow2-foreign-dataset", step="overlay.create", tags=["error"],
         args={**QC, "origin": SPEC}, env={"initiator": INIT0},
         script=[cmd(ZGET_TW, stdout=f"{TW}\ttype\tfilesystem\t-\n{TW}\timgstor:role\t-\t-\n")],
         raises=("Conflict", "with imgstor:role=\\(unset\\), not imgstor's temp-write")),
    # ------------------------------------------------------------------ overlay.merge
    dict(id="qcow2-into-local", step="overlay.merge", tags=["changes"],
         args={**QC, "local": LOCALF}, fs=RUNNING, script=[],
         qmp=[*graph(), *graph(), q("blockdev-add", args=LOCAL_NODE),
              q("query-named-block-nodes", nodes(*GRAPH, "local", "local-file"),
                {"flat": True}),
              q("blockdev-reopen", args=REOPEN_LOCAL), q("block-commit", args=COMMIT_LOCAL)],
         changed=True,
         facts={"driver": "qcow2", "exists": True, "device": URL, "phase": "merging",
                "into": "local", "status": "snapshot-merge", "job": "commit-local"},
         message="overlay vm1-vol merging into the local"),
    dict(id="qcow2-into-origin", step="overlay.merge", tags=["changes"],
         note="cancel: an active commit into the iSCSI origin",
         args={**QC, "into": "origin"}, fs=RUNNING, script=[],
         qmp=[*graph(), *graph(), q("blockdev-reopen", args=REOPEN_ORIGIN),
              q("block-commit", args=COMMIT_ORIGIN)],
         changed=True, facts_include={"into": "origin", "job": "commit-origin"}),
    dict(id="qcow2-failed-commit-restarts", step="overlay.merge", tags=["changes"],
         note="a commit that ended in an error leaves the overlay whole: dismiss, start again",
         args={**QC, "local": LOCALF}, fs=RUNNING, script=[],
         qmp=[*graph(jobs=[job("local", "concluded", error="Input/output error")]),
              *graph(jobs=[job("local", "concluded", error="Input/output error")],
                     names=GRAPH + ("local", "local-file")),
              q("job-dismiss", args={"id": "commit-local"}),
              q("blockdev-reopen", args=REOPEN_LOCAL), q("block-commit", args=COMMIT_LOCAL)],
         changed=True, facts_include={"phase": "merging"}),
    dict(id="qcow2-merging-already", step="overlay.merge", tags=["done"],
         args={**QC, "local": LOCALF}, fs=RUNNING, script=[],
         qmp=graph("#block044", [job("local", "running", 1 << 20)]),
         changed=False, mutating=[], qmp_mutating=[],
         facts_include={"phase": "merging", "into": "local", "done": 1 << 20,
                        "total": 5 << 20, "synced": f"{1 << 20}/{5 << 20}"},
         message="overlay vm1-vol is merging into the local already"),
    dict(id="qcow2-dry-run", step="overlay.merge", tags=["dry-run"], dry_run=True,
         args={**QC, "local": LOCALF}, fs=RUNNING, script=[], qmp=[*graph(), *graph()],
         skipped=[qmp_argv("blockdev-add", LOCAL_NODE), qmp_argv("blockdev-reopen", REOPEN_LOCAL),
                  qmp_argv("block-commit", COMMIT_LOCAL)], changed=True),
    dict(id="qcow2-local-of-another-size", step="overlay.merge", tags=["error"],
         args={**QC, "local": LOCALF}, fs=RUNNING, script=[],
         qmp=[*graph(), *graph(), q("blockdev-add", args=LOCAL_NODE),
              q("query-named-block-nodes", nodes(*GRAPH) + nodes("local", size=1 << 20),
                {"flat": True}),
              q("blockdev-del", args={"node-name": "local"})],
         raises=("Conflict", "has 1048576 bytes, the overlay 1073741824")),
    dict(id="qcow2-merging-into-the-other", step="overlay.merge", tags=["error"],
         args={**QC, "into": "origin"}, fs=RUNNING, script=[],
         qmp=graph("#block044", [job("local", "ready")]),
         raises=("Conflict", "merged into the local; it cannot merge into the origin")),
    dict(id="qcow2-no-daemon", step="overlay.merge", tags=["error"],
         args={**QC, "local": LOCALF}, script=[],
         raises=("NotFound", "no qemu-storage-daemon runs overlay vm1-vol")),
    dict(id="qcow2-no-local", step="overlay.merge", tags=["error"], args=QC, fs=RUNNING,
         script=[], qmp=[*graph(), *graph()], raises=("UsageError", "needs local=PATH")),
    # ------------------------------------------------------------------ overlay.status
    dict(id="qcow2-snapshot", step="overlay.status", tags=["read"], args=QC, fs=RUNNING,
         script=[], qmp=graph(), changed=False, facts=SNAP_FACTS,
         message="vm1-vol: snapshot"),
    dict(id="qcow2-merging", step="overlay.status", tags=["read"], args=QC, fs=RUNNING,
         script=[], qmp=graph("#block044", [job("origin", "running", 3 << 20)]),
         changed=False,
         facts_include={"phase": "merging", "into": "origin", "status": "snapshot-merge",
                        "done": 3 << 20, "total": 5 << 20, "job_status": "running",
                        "export_node": "#block044"}),
    dict(id="qcow2-merged", step="overlay.status", tags=["read"], args=QC, fs=RUNNING,
         script=[], qmp=graph("#block044", [job("local", "ready")]), changed=False,
         facts_include={"phase": "merged", "into": "local", "status": "snapshot-merge",
                        "synced": f"{5 << 20}/{5 << 20}"}),
    dict(id="qcow2-pivoted", step="overlay.status", tags=["read"], args=QC, fs=RUNNING,
         script=[], qmp=graph("local", names=("local", "local-file")), changed=False,
         facts_include={"phase": "pivoted", "into": "local", "status": "linear",
                        "synced": None}),
    dict(id="qcow2-none", step="overlay.status", tags=["read"], args=QC, script=[],
         changed=False, facts_include={"exists": False, "phase": None, "pid": None},
         message="vm1-vol: no overlay"),
    dict(id="qcow2-zombie", step="overlay.status", tags=["read"], args=QC,
         note="a quit daemon may stay a zombie (its parent is PID 1): gone",
         fs={**RUNNING, "procs": {4242: ["Z", QSD_ARGV]}}, script=[],
         changed=False, facts_include={"exists": False}),
    dict(id="qcow2-dry-run", step="overlay.status", tags=["read", "dry-run"], dry_run=True,
         args=QC, fs=RUNNING, script=[], qmp=graph(), skipped=[], changed=False,
         facts=SNAP_FACTS),
    # ------------------------------------------------------------------ overlay.linear
    dict(id="qcow2-pivot", step="overlay.linear", tags=["changes"],
         note="job-complete, then (pending: the guest's I/O held, the local copy holds every "
              "write) the overlay file is unlinked before job-finalize: a daemon dying from "
              "then on is restored on the local copy, never over the origin (audit H1)",
         args=QC, fs={**RUNNING, "exists": RUNNING["exists"] + [OVERLAY]},
         script=[tw("filesystem"), ZMOUNT, cmd(RM_OVERLAY), tw("filesystem"), cmd(DESTROY_TW)],
         qmp=[*graph("#block044", [job("local", "ready")]),
              q("job-complete", args={"id": "commit-local"}),
              q("query-jobs", [job("local", "waiting")]),
              q("query-jobs", [job("local", "pending")]),
              q("job-finalize", args={"id": "commit-local"}),
              q("query-jobs", [job("local", "concluded")]),
              *graph("local", [job("local", "concluded")], GRAPH + ("local", "local-file")),
              q("job-dismiss", args={"id": "commit-local"}),
              q("blockdev-del", args={"node-name": "ovl"}),
              q("blockdev-del", args={"node-name": "ovl-file"}),
              q("blockdev-del", args={"node-name": "origin"})],
         changed=True, mutating=[RM_OVERLAY, DESTROY_TW], sleeps=1,
         facts={"driver": "qcow2", "exists": True, "device": URL, "phase": "pivoted",
                "into": "local", "status": "linear", "temp_write_destroyed": True},
         message="overlay vm1-vol pivoted onto the local"),
    dict(id="qcow2-pivot-pending", step="overlay.linear", tags=["changes"],
         note="a pivot killed while the job was pending (guest I/O held): no second "
              "job-complete; the file goes (again: rm -f), then job-finalize",
         args=QC, fs=RUNNING,
         script=[tw("filesystem"), ZMOUNT, tw("filesystem"), cmd(DESTROY_TW)],
         qmp=[*graph("#block044", [job("local", "pending")]),
              q("query-jobs", [job("local", "pending")]),
              q("job-finalize", args={"id": "commit-local"}),
              q("query-jobs", [job("local", "concluded")]),
              *graph("local", [job("local", "concluded")], GRAPH + ("local", "local-file")),
              q("job-dismiss", args={"id": "commit-local"}),
              q("blockdev-del", args={"node-name": "ovl"}),
              q("blockdev-del", args={"node-name": "ovl-file"}),
              q("blockdev-del", args={"node-name": "origin"})],
         changed=True, mutating=[DESTROY_TW], facts_include={"phase": "pivoted"}),
    dict(id="qcow2-pivot-cancel", step="overlay.linear", tags=["changes"],
         note="after a commit into the origin the VM runs on the iSCSI origin alone (a "
              "commit started with auto-finalize on just concludes)",
         args=QC, fs=RUNNING, script=[tw("filesystem"), ZMOUNT, tw("filesystem"),
                                      cmd(DESTROY_TW)],
         qmp=[*graph("#block044", [job("origin", "ready")]),
              q("job-complete", args={"id": "commit-origin"}),
              q("query-jobs", [job("origin", "concluded")]),
              *graph("origin", [job("origin", "concluded")]),
              q("job-dismiss", args={"id": "commit-origin"}),
              q("blockdev-del", args={"node-name": "ovl"}),
              q("blockdev-del", args={"node-name": "ovl-file"})],
         changed=True, facts_include={"into": "origin", "phase": "pivoted"}),
    dict(id="qcow2-pivoted-already", step="overlay.linear", tags=["done"], args=QC,
         fs=RUNNING, script=[TW_NONE],
         qmp=[*graph("local", names=("local", "local-file")),
              *graph("local", names=("local", "local-file"))],
         changed=False, mutating=[], qmp_mutating=[],
         facts_include={"phase": "pivoted", "temp_write_destroyed": False},
         message="overlay vm1-vol pivoted already"),
    dict(id="qcow2-dry-run", step="overlay.linear", tags=["dry-run"], dry_run=True, args=QC,
         fs=RUNNING, script=[], qmp=graph("#block044", [job("local", "ready")]),
         skipped=[qmp_argv("job-complete", {"id": "commit-local"})], changed=True),
    dict(id="qcow2-not-merged", step="overlay.linear", tags=["error"], args=QC, fs=RUNNING,
         script=[], qmp=graph("#block044", [job("local", "running", 1)]),
         raises=("Conflict", "is merging and not merged yet")),
    dict(id="qcow2-commit-failed", step="overlay.linear", tags=["error"], args=QC,
         fs=RUNNING, script=[],
         qmp=[*graph("#block044", [job("local", "ready")]),
              q("job-complete", args={"id": "commit-local"}),
              q("query-jobs", [job("local", "concluded", error="No space left on device")])],
         raises=("StepError", "commit commit-local failed: No space left on device")),
    # ------------------------------------------------------------------ overlay.remove
    dict(id="qcow2-quit", step="overlay.remove", tags=["changes"], args=QC,
         fs={**RUNNING, "exit_after": {4242: 1}}, script=[cmd(RM_ALL), TW_NONE],
         qmp=[q("quit")], qmp_mutating=[["quit"]], changed=True, mutating=[RM_ALL],
         facts={"driver": "qcow2", "exists": False, "temp_write_kept": False},
         message="stopped qemu-storage-daemon 4242"),
    dict(id="qcow2-term", step="overlay.remove", tags=["changes"], args=QC,
         note="a daemon that does not quit in time gets SIGTERM",
         fs={**RUNNING, "exit_after": {4242: 12}},
         script=[cmd(["kill", "-TERM", "4242"]), cmd(RM_ALL), tw("filesystem")],
         qmp=[q("quit")], changed=True,
         facts={"driver": "qcow2", "exists": False, "temp_write_kept": True},
         message=f"stopped qemu-storage-daemon 4242; {TW} kept (unmerged writes)"),
    dict(id="qcow2-gone", step="overlay.remove", tags=["done"], args=QC, script=[TW_NONE],
         changed=False, mutating=[],
         facts={"driver": "qcow2", "exists": False, "temp_write_kept": False},
         message="no qemu-storage-daemon for vm1-vol"),
    dict(id="qcow2-dry-run", step="overlay.remove", tags=["dry-run"], dry_run=True, args=QC,
         fs=RUNNING, script=[tw("filesystem")], qmp=[],
         skipped=[qmp_argv("quit"), RM_ALL], changed=True),
    dict(id="qcow2-will-not-die", step="overlay.remove", tags=["error"], args=QC,
         fs=RUNNING, script=[cmd(["kill", "-TERM", "4242"]), cmd(["kill", "-KILL", "4242"])],
         qmp=[q("quit")], raises=("StepError", "qemu-storage-daemon 4242 did not exit")),
    # ------------------------------------------------------------------ overlay.users
    dict(id="qcow2-users-named", step="overlay.users", tags=["read"],
         note="the export's connected sockets (/proc/net/unix state 03), their peers named "
              "by ss -xpn; a client waiting in the backlog (state 02) is not served yet",
         args=QC, env={"tools": {"ss": "/usr/bin/ss"}},
         fs={"files": {"/proc/net/unix": UNIX}},
         script=[cmd(["ss", "-x", "-p", "-n"], stdout=SS)], changed=False,
         facts={"users": [f"pid 31337 (qemu-io), an NBD client of {NBD_SOCK}"]},
         message=f"vm1-vol: in use: pid 31337 (qemu-io), an NBD client of "
                 f"{NBD_SOCK}"),
    dict(id="qcow2-users-counted", step="overlay.users", tags=["read"],
         note="no ss: counted only", args=QC, fs={"files": {"/proc/net/unix": UNIX}},
         script=[], changed=False,
         facts={"users": [f"1 NBD client(s) connected to {NBD_SOCK} (a VM?)"]}),
    dict(id="qcow2-users-none", step="overlay.users", tags=["read", "dry-run"], dry_run=True,
         args=QC, fs={"files": {"/proc/net/unix": UNIX.replace(" 03 5707860", " 02 0")}},
         script=[], skipped=[], changed=False, facts={"users": []}),
]

SCENARIOS = DM_SCENARIOS + QCOW2_SCENARIOS
