"""Scenarios: compute.attach, compute.detach, compute.devices; and probe.

``env`` stands in for the node: ``initiator`` (what /etc/iscsi/initiatorname.iscsi says),
``links`` (udev by-path links -> device), ``devices`` (block device -> size in bytes).
libiscsi answers are the captures (iscsi_readcap16*, iscsi_inq_*); open-iscsi has no
capture yet (the kernel lab will make them), its answers are written in the formats of
iscsiadm(8) and tests/unit/drivers/samples.py.
"""
from __future__ import annotations

import json
from pathlib import Path

from scn_common import (
                        IA_DISCOVERY,
                        INIT0,
                        INIT1,
                        IQN1,
                        IQN2,
                        IQN3,
                        ISCSIADM_SESSIONS,
                        NO_SESSIONS,
                        PORTAL,
                        UDEV_SETTLE,
                        GiB,
                        by_path,
                        cmd,
                        ia_node,
                        ia_session_line,
                        readcap16,
)

URL1 = f"iscsi://{PORTAL}/{IQN1}/1"
LINK1 = by_path(IQN1)
NODE = dict(initiator=INIT0, links={LINK1: "/dev/sdb"}, devices={"/dev/sdb": GiB})
US = dict(kind="userspace", portal=PORTAL, iqn=IQN1)
IA = dict(kind="iscsiadm", portal=PORTAL, iqn=IQN1)
LOGIN, LOGOUT, NODE_DELETE = (ia_node(IQN1, "--login"), ia_node(IQN1, "--logout"),
                              ia_node(IQN1, "-o delete"))
SESSION1 = cmd(ISCSIADM_SESSIONS, stdout=ia_session_line(1, IQN1))
NONE = cmd(ISCSIADM_SESSIONS, **NO_SESSIONS)
# `iscsiadm -m session -P 3`: the kernel-lab capture (session 1 to IQN1, disk sda), moved
# to this file's portal
_P3 = (Path(__file__).resolve().parents[2] / "fixtures" / "kernel" / "iscsiadm_session_P3.out")
DETAILS1 = cmd(ISCSIADM_SESSIONS + ["-P", "3"],
               stdout=_P3.read_text().replace("127.43.0.10:3260", PORTAL))
IN_USE = {"/dev/sda": ["dm-0 (dm vm1-overlay) is stacked on /dev/sda",
                       "pid 4242 (qemu-system-x86) has /dev/dm-0 open"]}
# open-iscsi's texts (iscsiadm(8) EXIT STATUS: 15 session exists, 21 nothing found, 24 auth)
LOGIN_OUT = (f"Logging in to [iface: default, target: {IQN1}, portal: 127.0.0.1,3261]\n"
             f"Login to [iface: default, target: {IQN1}, portal: 127.0.0.1,3261] successful.\n")
ALREADY_PRESENT = ("iscsiadm: default: 1 session requested, but 1 already present.\n"
                   "iscsiadm: Could not log into all portals\n")
AUTH_FAILED = ("iscsiadm: Could not login to [iface: default, target: "
               f"{IQN1}, portal: 127.0.0.1,3261].\n"
               "iscsiadm: initiator reported error (24 - iSCSI login failed due to "
               "authorization failure)\n")
NO_RECORDS = "iscsiadm: No records found\n"
USERSPACE_FACTS = {
    "device": URL1, "size": GiB, "initiator": INIT0,
    "image_opts": f"driver=iscsi,transport=tcp,portal={PORTAL},target={IQN1},lun=1,"
                  f"initiator-name={INIT0}",
    "qemu_json": "json:" + json.dumps({"driver": "raw", "file": {
        "driver": "iscsi", "transport": "tcp", "portal": PORTAL, "target": IQN1, "lun": 1,
        "initiator-name": INIT0}}, separators=(",", ":")),
}

ATTACH = [
    # ------------------------------------------------------------------ userspace
    dict(id="userspace/readable", tags={"done"}, args=US, env=NODE,
         note="nothing persists on the node: a login that reads the capacity is the check",
         script=[cmd(readcap16(), capture="iscsi_readcap16")],
         changed=False, facts=USERSPACE_FACTS, message=f"LUN 1 of {IQN1} readable as {INIT0}",
         mutating=[]),
    dict(id="userspace/dry-run", tags={"dry-run"}, args=US, env=NODE, dry_run=True,
         note="the target a dry run 'made' does not exist: the login is shown, not done",
         script=[], skipped=[readcap16()], changed=True,
         facts={"device": URL1, "size": None, "initiator": INIT0},
         message=f"would check LUN 1 of {IQN1} as {INIT0}"),
    dict(id="userspace/not-in-acl", tags={"error"}, args=US, env={**NODE, "initiator": INIT1},
         note="tgt hides a target from an initiator its ACL does not admit",
         script=[cmd(readcap16(initiator=INIT1), capture="iscsi_readcap16_refused")],
         raises=("NotFound", r"Target not found\(515\)"),
         details={"reason": "target-not-found-or-acl", "rc": 10}),
    dict(id="userspace/no-such-lun", tags={"error"}, args={**US, "lun": 5}, env=NODE,
         note="the sense libiscsi reports for LUN 5 (captured with iscsi-inq)",
         script=[cmd(readcap16(lun=5), capture="iscsi_inq_nolun")],
         raises=("NotFound", "LOGICAL_UNIT_NOT_SUPPORTED"), details={"reason": "no-such-lun"}),
    dict(id="userspace/no-portal", tags={"error"}, args=US, env=NODE,
         script=[cmd(readcap16(), capture="iscsi_inq_noportal")],
         raises=("RemoteCommandError",
                 r"Can not reconnect right now\.\n  hint: no iSCSI portal answers at that "
                 r"address:port$")),
    dict(id="userspace/no-initiator-name", tags={"error"}, args=US, env={}, script=[],
         raises=("NotFound", "no initiator name in /etc/iscsi/initiatorname.iscsi")),
    # ------------------------------------------------------------------ iscsiadm
    dict(id="iscsiadm/fresh", tags={"changes"}, args=IA, env=NODE,
         script=[NONE, cmd(IA_DISCOVERY, stdout=f"{PORTAL},1 {IQN1}\n"),
                 cmd(LOGIN, stdout=LOGIN_OUT), cmd(UDEV_SETTLE)],
         changed=True,
         facts={"device": "/dev/sdb", "by_path": LINK1, "size": GiB, "initiator": INIT0},
         message=f"{IQN1} lun 1 is /dev/sdb", mutating=[IA_DISCOVERY, LOGIN]),
    dict(id="iscsiadm/login-rc15-session-exists-is-success", tags={"changes"}, args=IA,
         env=NODE,
         script=[NONE, cmd(IA_DISCOVERY, stdout=f"{PORTAL},1 {IQN1}\n"),
                 cmd(LOGIN, rc=15, stderr=ALREADY_PRESENT), cmd(UDEV_SETTLE)],
         changed=True, facts={"device": "/dev/sdb", "by_path": LINK1, "size": GiB,
                              "initiator": INIT0}),
    dict(id="iscsiadm/logged-in", tags={"done"}, args=IA, env=NODE,
         script=[cmd(ISCSIADM_SESSIONS,
                     stdout=ia_session_line(1, IQN2) + ia_session_line(2, IQN1)),
                 cmd(UDEV_SETTLE)],
         changed=False,
         facts={"device": "/dev/sdb", "by_path": LINK1, "size": GiB, "initiator": INIT0},
         mutating=[]),
    dict(id="iscsiadm/dry-run", tags={"dry-run"}, args=IA, env={"initiator": INIT0},
         dry_run=True, script=[NONE], skipped=[IA_DISCOVERY, LOGIN], changed=True,
         facts={"device": LINK1, "by_path": LINK1, "size": None, "initiator": INIT0}),
    dict(id="iscsiadm/dry-run-logged-in", tags={"dry-run", "done"}, args=IA, env=NODE,
         dry_run=True, script=[SESSION1], skipped=[], changed=False,
         facts={"device": "/dev/sdb", "by_path": LINK1, "size": GiB, "initiator": INIT0}),
    dict(id="iscsiadm/login-refused-rc24", tags={"error"}, args=IA, env=NODE,
         script=[NONE, cmd(IA_DISCOVERY, stdout=f"{PORTAL},1 {IQN1}\n"),
                 cmd(LOGIN, rc=24, stderr=AUTH_FAILED)],
         raises=("Conflict", "authorization failure"),
         details={"reason": "access-denied", "rc": 24}),
    dict(id="iscsiadm/device-never-appears", tags={"error"}, args=IA,
         env={"initiator": INIT0}, script=[SESSION1, cmd(UDEV_SETTLE)],
         raises=("NotFound", f"logged in to {IQN1} but {LINK1} did not appear within 30s")),
    dict(id="unknown-kind", tags={"error"}, args={**IA, "kind": "nvme"}, env=NODE, script=[],
         raises=("UsageError", "unknown initiator kind 'nvme'")),
]

DETACH = [
    dict(id="userspace", tags={"done"}, args=US, env=NODE, script=[], changed=False,
         facts={}, message="userspace initiator keeps no session", mutating=[]),
    dict(id="iscsiadm/logged-in", tags={"changes"}, args=IA, script=[SESSION1, DETAILS1, cmd(LOGOUT),
         cmd(NODE_DELETE)], changed=True, facts={}, message=f"no session to {IQN1}",
         mutating=[LOGOUT, NODE_DELETE]),
    dict(id="iscsiadm/logout-rc21-nothing-found-is-success", tags={"changes"}, args=IA,
         note="the session went away between the read and the logout",
         script=[SESSION1, DETAILS1, cmd(LOGOUT, rc=21, stderr="iscsiadm: No matching sessions found\n"),
                 cmd(NODE_DELETE, rc=21, stderr=NO_RECORDS)],
         changed=True, message=f"no session to {IQN1}"),
    dict(id="iscsiadm/nothing-there", tags={"done"}, args=IA,
         note="`-o delete` is the check for a node record: it runs and finds nothing (21)",
         script=[NONE, cmd(NODE_DELETE, rc=21, stderr=NO_RECORDS)],
         changed=False, facts={}, mutating=[NODE_DELETE]),
    dict(id="iscsiadm/stale-node-record", tags={"changes"}, args=IA,
         script=[NONE, cmd(NODE_DELETE)], changed=True),
    dict(id="iscsiadm/dry-run", tags={"dry-run"}, args=IA, dry_run=True, script=[SESSION1, DETAILS1],
         skipped=[LOGOUT, NODE_DELETE], changed=True, message=f"no session to {IQN1}"),
    dict(id="iscsiadm/dry-run-nothing-there", tags={"dry-run", "done"}, args=IA,
         dry_run=True, script=[NONE], skipped=[NODE_DELETE], changed=False),
    dict(id="iscsiadm/in-use-refused", tags={"error"}, args=IA, env={"users": IN_USE},
         note="M9: a dm device on the session's disk and a VM's qemu holding it: nothing "
              "is logged out",
         script=[SESSION1, DETAILS1],
         raises=("Conflict", "the disk of .* is in use: dm-0 \\(dm vm1-overlay\\) is "
                             "stacked on /dev/sda; pid 4242 .*--force"),
         details={"reason": "in-use"}, mutating=[]),
    dict(id="iscsiadm/in-use-forced", tags={"changes"}, args={**IA, "force": True},
         env={"users": IN_USE},
         script=[SESSION1, DETAILS1, cmd(LOGOUT), cmd(NODE_DELETE)], changed=True,
         facts={"forced_users": IN_USE["/dev/sda"]},
         message=f"no session to {IQN1} (--force: it was in use: {'; '.join(IN_USE['/dev/sda'])})"),
    dict(id="iscsiadm/iscsid-down", tags={"error"}, args=IA,
         script=[cmd(ISCSIADM_SESSIONS, rc=20,
                     stderr="iscsiadm: can not connect to iSCSI daemon (111)!\n")],
         raises=("RemoteCommandError", "iscsid is not running on the node")),
    dict(id="iscsiadm/logout-fails", tags={"error"}, args=IA,
         script=[SESSION1, DETAILS1, cmd(LOGOUT, rc=8, stderr="iscsiadm: Could not logout of all "
                               "requested sessions\n")],
         raises=("RemoteCommandError", "exit code 8")),
    dict(id="unknown-kind", tags={"error"}, args={**IA, "kind": "nvme"}, script=[],
         raises=("UsageError", "unknown initiator kind 'nvme'")),
]

T1, T2, T3 = ({"iqn": q, "portal": PORTAL, "lun": 1} for q in (IQN1, IQN2, IQN3))
IA_ROWS = [
    {"iqn": IQN1, "device": "/dev/sdb", "status": "ok", "size": GiB},
    {"iqn": IQN2, "device": None, "status": "session, no device", "size": None},
    {"iqn": IQN3, "device": None, "status": "absent", "size": None},
]
IA_SESSIONS = cmd(ISCSIADM_SESSIONS, stdout=ia_session_line(1, IQN1) + ia_session_line(2, IQN2))
US_SCRIPT = [cmd(readcap16(IQN1), capture="iscsi_readcap16"),
             cmd(readcap16(IQN2), capture="iscsi_readcap16_refused", sub={INIT1: INIT0})]
US_ROWS = [
    {"iqn": IQN1, "device": URL1, "status": "ok", "size": GiB},
    {"iqn": IQN2, "device": None, "size": None,
     "status": "error: scripted: Login Failed. Failed to log in to target. "
               "Status: Target not found(515)"},
]

DEVICES = [
    dict(id="iscsiadm", tags={"read"}, args=dict(kind="iscsiadm", targets=[T1, T2, T3]),
         env=NODE, script=[IA_SESSIONS], changed=False,
         facts={"devices": IA_ROWS, "initiator": INIT0}, message="", mutating=[]),
    dict(id="iscsiadm/no-sessions", tags={"read"}, args=dict(kind="iscsiadm", targets=[T1]),
         env=NODE, script=[NONE],
         facts={"devices": [{"iqn": IQN1, "device": None, "status": "absent", "size": None}],
                "initiator": INIT0}),
    dict(id="userspace", tags={"read"}, args=dict(kind="userspace", targets=[T1, T2]),
         env=NODE, note="one target refusing us is a row's status, not the step's failure",
         script=US_SCRIPT, changed=False, facts={"devices": US_ROWS, "initiator": INIT0},
         mutating=[]),
    dict(id="iscsiadm/dry-run", tags={"dry-run", "read"},
         args=dict(kind="iscsiadm", targets=[T1, T2, T3]), env=NODE, dry_run=True,
         script=[IA_SESSIONS], skipped=[], facts={"devices": IA_ROWS, "initiator": INIT0}),
    dict(id="userspace/dry-run", tags={"dry-run", "read"},
         args=dict(kind="userspace", targets=[T1, T2]), env=NODE, dry_run=True,
         script=US_SCRIPT, skipped=[], facts={"devices": US_ROWS, "initiator": INIT0}),
    dict(id="unknown-kind", tags={"error"}, args=dict(kind="nvme", targets=[T1]), env=NODE,
         script=[], raises=("UsageError", "unknown initiator kind 'nvme'")),
]

ZPOOL_LIST = ["zpool", "list", "-H", "-o", "name,size,free,health"]
NAS_TOOLS = {"zfs": "/usr/sbin/zfs", "zpool": "/usr/sbin/zpool", "tgtadm": "/usr/sbin/tgtadm",
             "zfs-fuse": "/usr/sbin/zfs-fuse"}
# zpool_list.out (captured) has name,size,allocated,free,health; probe asks for 4 columns
POOLS_OUT = "tank\t504M\t500M\tONLINE\n"
TANK = {"name": "tank", "size": "504M", "free": "500M", "health": "ONLINE"}

PROBE = [
    dict(id="nas", tags={"read"}, args={}, env={"node": "nas-0-0", "tools": NAS_TOOLS},
         script=[cmd(ZPOOL_LIST, stdout=POOLS_OUT)], changed=False, message="",
         facts_include={"hostname": "nas-0-0", "tools": NAS_TOOLS, "pools": [TANK],
                        "initiator": None},
         mutating=[]),
    dict(id="compute-without-zpool", tags={"read"}, args={},
         env={"node": "compute-0-0", "initiator": INIT0,
              "tools": {"iscsiadm": "/usr/sbin/iscsiadm"}},
         script=[], changed=False,
         facts_include={"hostname": "compute-0-0", "pools": [], "initiator": INIT0,
                        "tools": {"iscsiadm": "/usr/sbin/iscsiadm"}}),
    dict(id="zpool-fails", tags={"read"}, args={}, env={"node": "nas-0-0", "tools": NAS_TOOLS},
         note="no pools imported / zfs-fuse not running: no pools, not an error",
         script=[cmd(ZPOOL_LIST, rc=1, stderr="connect: Connection refused\n"
                     "Please make sure that the zfs-fuse daemon is running.\n")],
         facts_include={"pools": []}),
    dict(id="dry-run", tags={"dry-run", "read"}, args={}, dry_run=True,
         env={"node": "nas-0-0", "tools": NAS_TOOLS},
         script=[cmd(ZPOOL_LIST, stdout=POOLS_OUT)], skipped=[],
         facts_include={"pools": [TANK]}),
]

SCENARIOS = ([dict(s, step="compute.attach") for s in ATTACH]
             + [dict(s, step="compute.detach") for s in DETACH]
             + [dict(s, step="compute.devices") for s in DEVICES]
             + [dict(s, step="probe") for s in PROBE])
