"""Scenarios: nas.inventory, compute.inventory, node.sync_facts
(imgstor/remote/steps/inventory.py): the read-only round trips of ``imgstor rebuild`` and
``imgstor clean host storagemap``.

tgtadm, dmsetup and iscsiadm answers are captures (userspace tgt_show_nexus as in
scn_nas_target.py; the kernel lab's dmsetup_* and iscsiadm_session as in scn_overlay.py).
``zfs list -H`` and ``zfs get -H -p`` answers are written inline in their tab-separated
formats (zfs_list / zfs_get captures); ``/proc/net/unix`` in the kernel's format (header,
then ``Num RefCount Protocol Flags Type St Inode Path``).
"""
from __future__ import annotations

from scn_common import (
    INIT0,
    IQN1,
    IQN2,
    ISCSIADM_SESSIONS,
    NO_SESSIONS,
    PATH1,
    TGT_SHOW,
    cmd,
)
from scn_nas_target import LAB_SUB
from scn_overlay import DM_SNAP_FACTS, MAPPER, S_SNAP, T_SNAP, TABLE, kcap

# ------------------------------------------------------------------ nas.inventory
NAS_PROPS = ("type,imgstor:role,imgstor:size,imgstor:host,imgstor:target,imgstor:mode,"
             "imgstor:initiator,imgstor:portal,imgstor:vm,imgstor:vm_container")
NAMES = ("role", "size", "host", "target", "mode", "initiator", "portal", "vm", "vm_container")


def nas_list(pool: str) -> list[str]:
    return ["zfs", "get", "-H", "-p", "-o", "name,property,value,source", "-r", "-d", "1",
            NAS_PROPS, pool]


def row(name: str, kind: str, *values: str, source: str = "local") -> str:
    """``zfs get -r`` lines of one dataset: its type, then each imgstor: property
    (``-`` = unset, source ``-``); SOURCE for the set ones, or a {name: source} dict."""
    out = f"{name}\ttype\t{kind}\t-\n"
    for k, v in zip(NAMES, values):
        src = "-" if v == "-" else (source.get(k, "local") if isinstance(source, dict)
                                    else source)
        out += f"{name}\timgstor:{k}\t{v}\t{src}\n"
    return out


# the pool itself, a mapped file volume (every imgstor: property the map writes), an
# unmapped one (host & co. cleared: "-"), a dataset imgstor did not make, and one whose
# mapping came with a received stream / an inherited value (not imgstor's: "foreign")
NAS_LIST_OUT = (row("tank", "filesystem", *["-"] * 9)
                + row("tank@auto", "snapshot", *["-"] * 9)
                + row("tank/vm1-vol", "filesystem", "volume", "1073741824", "compute-0-0",
                      IQN1, "sync", INIT0, "127.0.0.1:3261", "vm1", "-")
                + row("tank/vm2-vol", "filesystem", "volume", "67108864", *["-"] * 7)
                + row("tank/backups", "filesystem", *["-"] * 9)
                + row("tank/planted", "filesystem", "volume", "1", "compute-0-0", "-", "-",
                      "-", "10.9.9.9:3260", "-", "-",
                      source={"host": "received", "portal": "inherited from tank"}))
VOL1 = {"pool": "tank", "vol": "vm1-vol", "type": "filesystem", "role": "volume",
        "props": {"size": "1073741824", "host": "compute-0-0", "target": IQN1,
                  "mode": "sync", "initiator": INIT0, "portal": "127.0.0.1:3261",
                  "vm": "vm1", "vm_container": None}, "foreign": {}}
VOL2 = {"pool": "tank", "vol": "vm2-vol", "type": "filesystem", "role": "volume",
        "props": {"size": "67108864", "host": None, "target": None, "mode": None,
                  "initiator": None, "portal": None, "vm": None, "vm_container": None},
        "foreign": {}}
OTHER = {"pool": "tank", "vol": "backups", "type": "filesystem", "role": None,
         "props": dict.fromkeys(VOL2["props"]), "foreign": {}}
PLANTED = {"pool": "tank", "vol": "planted", "type": "filesystem", "role": "volume",
           "props": {**dict.fromkeys(VOL2["props"]), "size": "1"},
           "foreign": {"host": "compute-0-0 (received)",
                       "portal": "10.9.9.9:3260 (inherited from tank)"}}
# lab capture tgt_show_nexus: one target (tid 1), LUN 1 on PATH1, ACL INIT0, INIT0 logged in
SHOW_ONE = cmd(TGT_SHOW, capture="tgt_show_nexus",
               sub={**LAB_SUB, "/var/lib/imgstor-lab-w/hosts/nas-0-0/mnt/tank/cap1/disk.raw":
                    PATH1})
TARGET1 = {"iqn": IQN1, "tid": 1, "paths": [PATH1], "acls": [INIT0], "sessions": [INIT0]}
GONE = "gone"
NO_POOL = cmd(nas_list(GONE), rc=1, stderr=f"cannot open '{GONE}': dataset does not exist\n")

NAS_INVENTORY = [
    dict(id="volume-with-props-and-target", tags={"read"},
         args=dict(pools=["tank"], driver="tgt"),
         note="rebuild reads the mapping back from the NAS: imgstor: properties as the map "
              "wrote them, unset ones None; the live target with its ACL and session",
         script=[cmd(nas_list("tank"), stdout=NAS_LIST_OUT), SHOW_ONE],
         changed=False, mutating=[],
         facts={"volumes": [VOL1, VOL2, OTHER, PLANTED], "targets": [TARGET1],
                "missing_pools": []},
         message="4 datasets, 1 targets"),
    dict(id="missing-pool-reported", tags={"read"},
         args=dict(pools=[GONE, "tank"], driver="tgt"),
         note="a configured pool that is not there is a fact, not an error; the next pool "
              "is still read",
         script=[NO_POOL, cmd(nas_list("tank"), stdout=row("tank", "filesystem", *["-"] * 9)),
                 cmd(TGT_SHOW, capture="tgt_show_empty")],
         changed=False, mutating=[],
         facts={"volumes": [], "targets": [], "missing_pools": [GONE]},
         message="0 datasets, 0 targets"),
    dict(id="dry-run", tags={"read", "dry-run"}, dry_run=True,
         args=dict(pools=["tank"], driver="tgt"), note="read-only: a dry run reads the same",
         script=[cmd(nas_list("tank"), stdout=NAS_LIST_OUT), SHOW_ONE], skipped=[],
         changed=False,
         facts={"volumes": [VOL1, VOL2, OTHER, PLANTED], "targets": [TARGET1],
                "missing_pools": []}),
    dict(id="tgtd-not-running", tags={"error"}, args=dict(pools=["tank"], driver="tgt"),
         script=[cmd(nas_list("tank"), stdout=NAS_LIST_OUT),
                 cmd(TGT_SHOW, capture="tgt_noserver")],
         raises=("RemoteCommandError", "tgtd is not running")),
    dict(id="unknown-driver", tags={"error"}, args=dict(pools=["tank"], driver="iet"),
         script=[cmd(nas_list("tank"), stdout=NAS_LIST_OUT)],
         raises=("UsageError", "unknown target driver 'iet'")),
]

# ------------------------------------------------------------------ compute.inventory
COMPUTE_LIST = ["zfs", "list", "-H", "-o", "name,type,imgstor:role", "-t", "filesystem,volume",
                "-r", "tank"]
# the kernel lab's node (zfs_list_compute): the local copy and its temp-write, both marked;
# an unmarked zvol of someone else's is no imgstor dataset
COMPUTE_LIST_OUT = ("tank\tfilesystem\t-\n"
                    "tank/vm1-vol\tvolume\tlocal-copy\n"
                    "tank/vm1-vol-temp-write\tvolume\ttemp-write\n"
                    "tank/scratch\tvolume\t-\n")
MARKED = [{"name": "tank/vm1-vol", "type": "volume", "role": "local-copy"},
          {"name": "tank/vm1-vol-temp-write", "type": "volume", "role": "temp-write"}]
# kernel-lab capture iscsiadm_session: one session, IQN1 on 127.43.0.10:3260
LAB_PORTAL = ["127.43.0.10", 3260]
SESSION = kcap(ISCSIADM_SESSIONS, "iscsiadm_session")
LAB_BY_PATH = f"/dev/disk/by-path/ip-127.43.0.10:3260-iscsi-{IQN1}-lun-1"
DIRECT = [{"iqn": IQN1, "lun": 1, "portal": LAB_PORTAL},
          {"iqn": IQN2, "lun": 1, "portal": LAB_PORTAL}]
DIRECT_FACTS = {IQN1: {"session": True, "device": "/dev/sdb"},
                IQN2: {"session": False, "device": None}}
CI = dict(pool="tank", overlay="dm", initiator="iscsiadm")

COMPUTE_INVENTORY = [
    dict(id="dm-overlay-and-iscsiadm-session", tags={"read"}, args={**CI, "direct": DIRECT},
         env={"links": {LAB_BY_PATH: "/dev/sdb"}},
         note="the marked datasets name the volume (temp-write suffix dropped) whose overlay "
              "is read; a direct mapping with a session has its by-path device, one "
              "without a session none (no login made)",
         script=[cmd(COMPUTE_LIST, stdout=COMPUTE_LIST_OUT), SESSION, T_SNAP, S_SNAP],
         changed=False, mutating=[],
         facts={"pool_missing": False, "datasets": MARKED, "overlays": {"vm1-vol": DM_SNAP_FACTS},
                "sessions": [IQN1], "direct": DIRECT_FACTS, "initiator": None},
         message="2 marked datasets, 1 sessions"),
    dict(id="overlay-not-imgstors", tags={"read"}, args=CI,
         note="an overlay the driver cannot read is reported on its volume, not raised: "
              "rebuild says what it could not restore",
         script=[cmd(COMPUTE_LIST, stdout=COMPUTE_LIST_OUT), cmd(ISCSIADM_SESSIONS, **NO_SESSIONS),
                 cmd(TABLE, stdout="0 131072 striped 2 128 8:0 0 8:16 0\n")],
         changed=False,
         facts={"pool_missing": False, "datasets": MARKED,
                "overlays": {"vm1-vol": {
                    "exists": False,
                    "error": "scripted: dm device vm1-vol-snap exists with table striped; "
                             "not an imgstor overlay"}},
                "sessions": [], "direct": {}, "initiator": None}),
    dict(id="no-marked-datasets", tags={"read"}, args={**CI, "overlay": "qcow2"},
         script=[cmd(COMPUTE_LIST, stdout="tank\tfilesystem\t-\ntank/scratch\tvolume\t-\n"),
                 cmd(ISCSIADM_SESSIONS, **NO_SESSIONS)],
         changed=False,
         facts={"pool_missing": False, "datasets": [], "overlays": {}, "sessions": [],
                "direct": {}, "initiator": None},
         message="0 marked datasets, 0 sessions"),
    dict(id="missing-pool", tags={"read"}, args={**CI, "direct": DIRECT[:1]},
         env={"links": {LAB_BY_PATH: "/dev/sdb"}},
         note="no zpool: still the sessions and direct devices (a node without local "
              "storage can hold direct mappings)",
         script=[cmd(COMPUTE_LIST, rc=1, stderr="cannot open 'tank': dataset does not exist\n"),
                 SESSION],
         changed=False, mutating=[],
         facts={"pool_missing": True, "datasets": [], "overlays": {}, "sessions": [IQN1],
                "direct": {IQN1: {"session": True, "device": "/dev/sdb"}}, "initiator": None},
         message="no zpool tank"),
    dict(id="userspace-no-sessions", tags={"read"},
         args={**CI, "initiator": "userspace",
               "direct": [{"iqn": IQN1, "lun": 1, "portal": ["127.0.0.1", 3261]}]},
         env={"initiator": INIT0},
         note="userspace: no kernel session to list (a VM's qemu logs in itself); the "
              "direct mapping's device is the iscsi:// URL under this node's name",
         script=[cmd(COMPUTE_LIST, stdout="tank\tfilesystem\t-\n")],
         changed=False,
         facts={"pool_missing": False, "datasets": [], "overlays": {}, "sessions": [],
                "direct": {IQN1: {
                    "session": None, "device": f"iscsi://127.0.0.1:3261/{IQN1}/1",
                    "qemu_json": ('json:{"driver":"raw","file":{"driver":"iscsi",'
                                  '"transport":"tcp","portal":"127.0.0.1:3261",'
                                  f'"target":"{IQN1}","lun":1,"initiator-name":"{INIT0}"}}}}'),
                    "image_opts": ("driver=iscsi,transport=tcp,portal=127.0.0.1:3261,"
                                   f"target={IQN1},lun=1,initiator-name={INIT0}")}},
                "initiator": INIT0}),
    dict(id="dry-run", tags={"read", "dry-run"}, dry_run=True, args={**CI, "direct": DIRECT},
         env={"links": {LAB_BY_PATH: "/dev/sdb"}}, note="read-only: a dry run reads the same",
         script=[cmd(COMPUTE_LIST, stdout=COMPUTE_LIST_OUT), SESSION, T_SNAP, S_SNAP],
         skipped=[], changed=False,
         facts={"pool_missing": False, "datasets": MARKED, "overlays": {"vm1-vol": DM_SNAP_FACTS},
                "sessions": [IQN1], "direct": DIRECT_FACTS, "initiator": None}),
    dict(id="bad-portal", tags={"error"},
         args={**CI, "direct": [{"iqn": IQN1, "lun": 1, "portal": ""}]},
         script=[cmd(COMPUTE_LIST, stdout=COMPUTE_LIST_OUT), SESSION],
         raises=("UsageError", "bad portal")),
]

# ------------------------------------------------------------------ node.sync_facts
NAME = "tank/vm1-vol"
EXISTS = ["zfs", "list", "-H", "-o", "name", NAME]
SNAPS = ["zfs", "list", "-H", "-o", "name,guid", "-t", "snapshot", "-s", "createtxg", "-d",
         "1", NAME]
S1, S2 = "imgstor-sync-1", "imgstor-sync-2"
SNAPS_OUT = (f"{NAME}@{S1}\t4116576154431416862\n"
             f"{NAME}@{S2}\t11872430120916744218\n")
SNAP_FACTS = [{"name": S1, "guid": "4116576154431416862"},
              {"name": S2, "guid": "11872430120916744218"}]
WRITTEN = ["zfs", "get", "-H", "-p", "-o", "value", f"written@{S2}", NAME]
ZGET = ["zfs", "get", "-H", "-p", "-o", "name,property,value,source"]
REFERENCED = cmd(ZGET + ["referenced", NAME], stdout=f"{NAME}\treferenced\t21191680\t-\n")
TW = "tank/vm1-vol-temp-write"
TW_GET = ZGET + ["used,imgstor:role", TW]
TW_OUT = cmd(TW_GET, stdout=f"{TW}\tused\t8518656\t-\n{TW}\timgstor:role\ttemp-write\tlocal\n")
TW_NONE = cmd(TW_GET, rc=1, stderr=f"cannot open '{TW}': dataset does not exist\n")
NO_VOL = cmd(EXISTS, rc=1, stderr=f"cannot open '{NAME}': dataset does not exist\n")
SF = dict(pool="tank", vol="vm1-vol")
SOCK = "/run/imgstor/nbd/vm1-vol.sock"
# the listener (state 01), the server's side of one accepted connection (03, the
# listener's path), its client side (03, no path), someone else's connected socket
PROC_NET_UNIX = (
    "Num       RefCount Protocol Flags    Type St Inode Path\n"
    f"0000000000000000: 00000002 00000000 00010000 0001 01 31337 {SOCK}\n"
    f"0000000000000000: 00000003 00000000 00000000 0001 03 31342 {SOCK}\n"
    "0000000000000000: 00000003 00000000 00000000 0001 03 31341\n"
    "0000000000000000: 00000003 00000000 00000000 0001 03 20480 /run/systemd/journal/stdout\n")

SYNC_FACTS = [
    dict(id="openzfs-snapshots-and-written", tags={"read"}, args={**SF, "since": S2},
         note="OpenZFS: the bytes written after the last common snapshot are known",
         script=[cmd(EXISTS, stdout=NAME + "\n"), cmd(SNAPS, stdout=SNAPS_OUT),
                 cmd(WRITTEN, stdout="2097152\n"), REFERENCED, TW_OUT],
         changed=False, mutating=[],
         facts={"exists": True, "snapshots": SNAP_FACTS, "written": 2097152,
                "referenced": 21191680, "temp_write": {"used": 8518656, "role": "temp-write"},
                "users": []},
         message=f"{NAME}: 2 snapshots"),
    dict(id="zfs-fuse-written-unknown", tags={"read"}, args={**SF, "since": S2},
         note="zfs-fuse has no written@ property (zfs get's usage error, rc 2): None, "
              "'cannot tell', never 0",
         script=[cmd(EXISTS, stdout=NAME + "\n"), cmd(SNAPS, stdout=SNAPS_OUT),
                 cmd(WRITTEN, rc=2,
                     stderr=f"bad property list: invalid property 'written@{S2}'\n"),
                 REFERENCED, TW_NONE],
         changed=False,
         facts={"exists": True, "snapshots": SNAP_FACTS, "written": None,
                "referenced": 21191680, "temp_write": None, "users": []}),
    dict(id="since-not-a-snapshot-here", tags={"read"}, args={**SF, "since": "imgstor-sync-9"},
         note="written@ is asked only of a snapshot the dataset has",
         script=[cmd(EXISTS, stdout=NAME + "\n"), cmd(SNAPS, stdout=SNAPS_OUT), REFERENCED,
                 TW_NONE],
         changed=False, facts_include={"written": None, "snapshots": SNAP_FACTS}),
    dict(id="no-dataset", tags={"read"}, args={**SF, "since": S2, "overlay": "dm"},
         note="no local copy: exists False, nothing else asked of it; the temp-write is "
              "still looked for, and no dm device means no users",
         script=[NO_VOL, TW_NONE],
         changed=False, mutating=[],
         facts={"exists": False, "snapshots": [], "written": None, "temp_write": None,
                "users": []},
         message=f"{NAME}: 0 snapshots"),
    dict(id="dm-overlay-in-use", tags={"read"}, args={**SF, "overlay": "dm"},
         env={"links": {MAPPER: "/dev/dm-3"},
              "users": {"/dev/dm-3": ["pid 4242 (qemu-system-x86) has /dev/dm-3 open"]}},
         note="the one-writer check of clean: who holds the overlay's device, through "
              "ex.fs (the link resolved) and drivers/blockdev",
         script=[cmd(EXISTS, stdout=NAME + "\n"), cmd(SNAPS, stdout=SNAPS_OUT), REFERENCED,
                 TW_OUT],
         changed=False,
         facts_include={"users": ["pid 4242 (qemu-system-x86) has /dev/dm-3 open"]}),
    dict(id="qcow2-nbd-client-connected", tags={"read"}, args={**SF, "overlay": "qcow2"},
         fs={"files": {"/proc/net/unix": PROC_NET_UNIX}},
         note="qcow2: connected sockets carrying the export's path in /proc/net/unix "
              "(read through ex.fs); the listener and others' sockets are not counted",
         script=[cmd(EXISTS, stdout=NAME + "\n"), cmd(SNAPS, stdout=SNAPS_OUT), REFERENCED,
                 TW_NONE],
         changed=False,
         facts_include={"users": [f"1 NBD client(s) connected to {SOCK} (a VM?)"]}),
    dict(id="qcow2-nobody", tags={"read"}, args={**SF, "overlay": "qcow2"},
         fs={"files": {"/proc/net/unix": PROC_NET_UNIX.splitlines(keepends=True)[0]
                       + PROC_NET_UNIX.splitlines(keepends=True)[1]}},
         script=[cmd(EXISTS, stdout=NAME + "\n"), cmd(SNAPS, stdout=SNAPS_OUT), REFERENCED,
                 TW_NONE],
         changed=False, facts_include={"users": []}),
    dict(id="dry-run", tags={"read", "dry-run"}, dry_run=True, args={**SF, "since": S2},
         note="read-only: a dry run reads the same",
         script=[cmd(EXISTS, stdout=NAME + "\n"), cmd(SNAPS, stdout=SNAPS_OUT),
                 cmd(WRITTEN, stdout="2097152\n"), REFERENCED, TW_OUT],
         skipped=[], changed=False,
         facts_include={"written": 2097152, "snapshots": SNAP_FACTS}),
    dict(id="zfs-fails", tags={"error"}, args=SF,
         script=[cmd(EXISTS, rc=1, stderr="internal error: Bad file descriptor\n")],
         raises=("RemoteCommandError", "Bad file descriptor")),
]

SCENARIOS = ([dict(s, step="nas.inventory") for s in NAS_INVENTORY]
             + [dict(s, step="compute.inventory") for s in COMPUTE_INVENTORY]
             + [dict(s, step="node.sync_facts") for s in SYNC_FACTS])
