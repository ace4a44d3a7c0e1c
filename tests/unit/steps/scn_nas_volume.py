"""Scenarios: nas.ensure_volume, nas.set_props, nas.destroy_volume.

Tags: ``changes`` (something to do), ``done`` (the facts say it is there: only read-only
commands run, changed is False), ``dry-run``, ``error``.
"""
from __future__ import annotations

from scn_common import (
    FILE_VOL_GET,
    FILE_VOL_GET_UNMARKED,
    IQN1,
    NAME,
    NO_DATASET,
    PATH1,
    POOL,
    TGT_SHOW,
    VOL,
    ZGET_VOL,
    ZPOOL_CHECK,
    ZVOL1,
    GiB,
    cmd,
    zfs_get,
    zget_lines,
    zvol_get,
)

FILE = dict(pool=POOL, vol=VOL, size=GiB, kind="file")
ZVOL = dict(pool=POOL, vol=VOL, size=GiB, kind="zvol")

MISSING = cmd(ZGET_VOL, capture="zfs_get_missing", sub=NO_DATASET)
POOL_OK = cmd(ZPOOL_CHECK, stdout="tank\n")
MARKS = ["-o", "imgstor:role=volume", "-o", f"imgstor:size={GiB}"]
CREATE_FS = ["zfs", "create"] + MARKS + [NAME]
CREATE_ZVOL = ["zfs", "create", "-s", "-o", "volblocksize=128K"] + MARKS + ["-V", str(GiB), NAME]
SET_MARK = ["zfs", "set", "imgstor:role=volume", NAME]
SET_SIZE = ["zfs", "set", f"imgstor:size={GiB}", NAME]
# the capacity check: the pool's size, then what imgstor's volumes there are promised
ZPOOL_LIST = ["zpool", "list", "-H", "-o", "name,size,allocated,free,health"]
ZFS_VERSION = ["zfs", "version"]
ZPOOL_UPGRADE = ["zpool", "upgrade", "-v"]
PROMISED = ["zfs", "list", "-H", "-o", "name,imgstor:role,imgstor:size,volsize",
            "-t", "filesystem,volume", "-r", POOL]
CAPACITY = [cmd(ZFS_VERSION, capture="zfs_version"), cmd(ZPOOL_UPGRADE, capture="zpool_upgrade_v"),
            cmd(ZPOOL_LIST, stdout="tank\t3.97G\t612K\t3.97G\tONLINE\n"),
            cmd(PROMISED, stdout=f"tank\t-\t-\t-\ntank/a-vol\tvolume\t{2 * GiB}\t-\n"
                                 "tank/home\t-\t-\t-\n")]
TRUNCATE = ["truncate", "-s", str(GiB), PATH1]
UDEV = ["udevadm", "settle", "--timeout=30"]
NO_MOUNTPOINT = FILE_VOL_GET.replace("/mnt/tank/vm1-vol\tinherited from tank", "none\tlocal")

ENSURE_VOLUME = [
    # ------------------------------------------------------------------ kind file
    dict(id="file/fresh", tags={"changes"}, args=FILE,
         script=[MISSING, POOL_OK, cmd(CREATE_FS),
                 cmd(ZGET_VOL, stdout=FILE_VOL_GET),       # re-read: where is it mounted?
                 cmd(TRUNCATE)],
         changed=True, facts={"path": PATH1, "size": GiB, "created": True},
         message=f"created volume {NAME} ({GiB} bytes)",
         mutating=[CREATE_FS, TRUNCATE]),
    dict(id="file/exists", tags={"done"}, args=FILE, env={"files": {PATH1: GiB}},
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET)],
         changed=False, facts={"path": PATH1, "size": GiB, "created": False},
         message=f"volume {NAME} exists", mutating=[]),
    dict(id="file/exists-other-size-kept", tags={"done"}, args=FILE,
         env={"files": {PATH1: 2 * GiB}},
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET)],
         changed=False, facts={"path": PATH1, "size": 2 * GiB, "created": False,
                               "size_differs": True},
         message=f"volume {NAME} exists with size {2 * GiB} (requested {GiB}; kept as it is)",
         mutating=[]),
    dict(id="file/dataset-without-disk-file", tags={"changes"}, args=FILE,
         note="a crash between `zfs create` and `truncate`: the re-run makes the file",
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), cmd(TRUNCATE)],
         changed=True, facts={"path": PATH1, "size": GiB, "created": False},
         mutating=[TRUNCATE]),
    dict(id="file/dry-run-fresh", tags={"dry-run"}, args=FILE, dry_run=True,
         script=[MISSING, POOL_OK],
         skipped=[CREATE_FS,
                  ["truncate", "-s", str(GiB), f"<mountpoint of {NAME}>/disk.raw"]],
         changed=True,
         facts={"path": f"<mountpoint of {NAME}>/disk.raw", "size": GiB, "created": True}),
    dict(id="file/dry-run-exists", tags={"dry-run", "done"}, args=FILE, dry_run=True,
         env={"files": {PATH1: GiB}},
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET)], skipped=[], mutating=[],
         changed=False, facts={"path": PATH1, "size": GiB, "created": False}),
    dict(id="file/no-such-pool", tags={"error"}, args=FILE,
         script=[MISSING, cmd(ZPOOL_CHECK, rc=1,
                              stderr="cannot open 'tank': no such pool\n")],
         raises=("NotFound", "zpool 'tank' not found")),
    dict(id="file/no-mountpoint", tags={"error"}, args=FILE,
         script=[cmd(ZGET_VOL, stdout=NO_MOUNTPOINT), cmd(ZGET_VOL, stdout=NO_MOUNTPOINT)],
         raises=("Conflict", "has no mountpoint")),
    dict(id="file/dry-run-no-mountpoint", tags={"dry-run", "error"}, args=FILE, dry_run=True,
         note="the facts of an existing dataset are real: the dry run fails as the real run",
         script=[cmd(ZGET_VOL, stdout=NO_MOUNTPOINT), cmd(ZGET_VOL, stdout=NO_MOUNTPOINT)],
         skipped=[], raises=("Conflict", "has no mountpoint")),
    dict(id="file/create-races-another", tags={"error"}, args=FILE,
         script=[MISSING, POOL_OK, cmd(CREATE_FS, capture="zfs_create_exists")],
         raises=("AlreadyExists", "dataset already exists")),
    # ------------------------------------------------------------------ ownership
    dict(id="file/not-imgstors-refused", tags={"error"}, args=FILE,
         note="a dataset made by hand (no imgstor:role) is never exported or changed",
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET_UNMARKED)],
         raises=("Conflict", "is not imgstor's"), mutating=[]),
    dict(id="file/received-mark-is-not-imgstors", tags={"error"}, args=FILE,
         note="issue 18: a mark that came in a stream (source received) proves nothing",
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET.replace("volume\tlocal",
                                                            "volume\treceived"))],
         raises=("Conflict", "is not imgstor's"), mutating=[]),
    dict(id="file/adopted", tags={"changes"}, args={**FILE, "adopt": True},
         env={"files": {PATH1: GiB}},
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET_UNMARKED), cmd(SET_MARK), cmd(SET_SIZE)],
         changed=True, facts={"path": PATH1, "size": GiB, "created": False, "marked": True},
         message=f"volume {NAME} exists; marked as imgstor's (adopted)",
         mutating=[SET_MARK, SET_SIZE]),
    dict(id="file/known-to-the-store-gets-mark", tags={"changes"}, args={**FILE, "owned": True},
         env={"files": {PATH1: GiB}},
         note="a volume made before the mark existed: the store knows it, it is marked now",
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET_UNMARKED), cmd(SET_MARK), cmd(SET_SIZE)],
         changed=True, message=f"volume {NAME} exists; marked as imgstor's (known to the store)"),
    dict(id="zvol/filesystem-is-not-a-zvol", tags={"error"}, args={**ZVOL, "adopt": True},
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET)],
         raises=("Conflict", "is a filesystem, not a zvol")),
    dict(id="file/capacity-ok", tags={"changes"}, args={**FILE, "overcommit": 1.0},
         script=[MISSING, POOL_OK] + CAPACITY + [cmd(CREATE_FS),
                 cmd(ZGET_VOL, stdout=FILE_VOL_GET), cmd(TRUNCATE)],
         changed=True, facts={"path": PATH1, "size": GiB, "created": True}),
    dict(id="file/capacity-refused", tags={"error"}, args={**FILE, "size": 2 * GiB,
                                                           "overcommit": 1.0},
         note="2 GiB promised + 2 GiB asked > 3.97 GiB x 1.0: refused, nothing made",
         script=[MISSING, POOL_OK] + CAPACITY,
         raises=("Conflict", r"promised 2.0 GiB, the pool is 4.0 GiB \(4.0 GiB free\) and "
                             "overcommit is 1"), mutating=[]),
    dict(id="bad-kind", tags={"error"}, args={**FILE, "kind": "lvm"}, script=[],
         raises=("UsageError", "unknown volume kind 'lvm'")),
    # ------------------------------------------------------------------ kind zvol
    dict(id="zvol/fresh", tags={"changes"}, args=ZVOL, env={"paths": [ZVOL1]},
         script=[MISSING, POOL_OK, cmd(CREATE_ZVOL), cmd(UDEV)],
         changed=True, facts={"path": ZVOL1, "size": GiB, "created": True},
         message=f"created volume {NAME} ({GiB} bytes)", mutating=[CREATE_ZVOL]),
    dict(id="zvol/size-rounded-up-to-volblocksize", tags={"changes"},
         args={**ZVOL, "size": 1000000}, env={"paths": [ZVOL1]},
         note="zfs refuses a volsize that is not a multiple of volblocksize (128K)",
         script=[MISSING, POOL_OK,
                 cmd([a.replace(str(GiB), "1048576") for a in CREATE_ZVOL]), cmd(UDEV)],
         changed=True),
    dict(id="zvol/exists", tags={"done"}, args=ZVOL, env={"paths": [ZVOL1]},
         script=[cmd(ZGET_VOL, stdout=zvol_get(GiB)), cmd(UDEV)],
         changed=False, facts={"path": ZVOL1, "size": GiB, "created": False},
         message=f"volume {NAME} exists", mutating=[]),
    dict(id="zvol/exists-other-size-kept", tags={"done"}, args=ZVOL, env={"paths": [ZVOL1]},
         script=[cmd(ZGET_VOL, stdout=zvol_get(4 * GiB)), cmd(UDEV)],
         changed=False, facts={"path": ZVOL1, "size": 4 * GiB, "created": False,
                               "size_differs": True},
         message=f"volume {NAME} exists with size {4 * GiB} (requested {GiB}; kept as it is)",
         mutating=[]),
    dict(id="zvol/dry-run-fresh", tags={"dry-run"}, args=ZVOL, dry_run=True,
         note="no udevadm, no wait for a device the dry run did not make",
         script=[MISSING, POOL_OK], skipped=[CREATE_ZVOL],
         changed=True, facts={"path": ZVOL1, "size": GiB, "created": True}),
    dict(id="zvol/zfs-fuse-has-no-zvols", tags={"error"}, args=ZVOL,
         script=[MISSING, POOL_OK, cmd(CREATE_ZVOL, capture="zfs_create_zvol")],
         raises=("RemoteCommandError", "zfs-fuse aborts"), details={"rc": 134}),
    dict(id="zvol/device-never-appears", tags={"error"}, args=ZVOL,
         script=[cmd(ZGET_VOL, stdout=zvol_get(GiB)), cmd(UDEV)],
         raises=("NotFound", f"{ZVOL1} did not appear within 30s")),
]

for _sc in ENSURE_VOLUME:       # facts every answer carries, unless a scenario says otherwise
    if "facts" in _sc:
        # zfs_backend: these nodes have no pyzfs, the CLI creates; None when nothing was
        # created (scn_nas_snapshot has the libzfs_core ones)
        _sc["facts"] = {"size_differs": False, "marked": False,
                        "zfs_backend": "cli" if _sc["facts"].get("created") else None,
                        **_sc["facts"]}

# ------------------------------------------------------------------------- set_props
PROPS3 = zfs_get("imgstor:host,imgstor:target,imgstor:mode")
PROPS4 = zfs_get("imgstor:host,imgstor:target,imgstor:mode,imgstor:state")
# captured: host=compute-0-0, target=IQN1, mode=direct (all local); imgstor:state is unset,
# written like the captured unset imgstor:unset line
GOT3 = zget_lines("imgstor:host", "imgstor:target", "imgstor:mode")
GOT4 = GOT3 + zget_lines("imgstor:unset", rename={"imgstor:unset": "imgstor:state"})
SET_HOST1 = ["zfs", "set", "imgstor:host=compute-0-1", NAME]
SET_STATE = ["zfs", "set", "imgstor:state=mapped", NAME]
WANT = dict(host="compute-0-1", target=IQN1, mode="direct", state="mapped")

SET_PROPS = [
    dict(id="set", tags={"changes"}, args=dict(pool=POOL, vol=VOL, props=WANT),
         note="one `zfs set` per property (zfs-fuse takes a single property=value)",
         script=[cmd(PROPS4, stdout=GOT4), cmd(SET_HOST1), cmd(SET_STATE)],
         changed=True, facts={}, message=f"properties of {NAME} updated",
         mutating=[SET_HOST1, SET_STATE]),
    dict(id="clear-via-inherit", tags={"changes"},
         args=dict(pool=POOL, vol=VOL, props=dict(host=None, target=None, mode="direct")),
         script=[cmd(PROPS3, stdout=GOT3),
                 cmd(["zfs", "inherit", "imgstor:host", NAME]),
                 cmd(["zfs", "inherit", "imgstor:target", NAME], capture="zfs_inherit")],
         changed=True, message=f"properties of {NAME} updated"),
    dict(id="inherited-value-is-not-ours", tags={"changes"},
         args=dict(pool=POOL, vol=VOL, props=dict(host="compute-0-0")),
         script=[cmd(zfs_get("imgstor:host"),
                     stdout=f"{NAME}\timgstor:host\tcompute-0-0\tinherited from tank\n"),
                 cmd(["zfs", "set", "imgstor:host=compute-0-0", NAME])],
         changed=True),
    dict(id="as-wanted", tags={"done"},
         args=dict(pool=POOL, vol=VOL,
                   props=dict(host="compute-0-0", target=IQN1, mode="direct", state=None)),
         script=[cmd(PROPS4, stdout=GOT4)],
         changed=False, facts={}, message=f"properties of {NAME} as wanted", mutating=[]),
    dict(id="dry-run", tags={"dry-run"}, args=dict(pool=POOL, vol=VOL, props=WANT),
         dry_run=True, script=[cmd(PROPS4, stdout=GOT4)], skipped=[SET_HOST1, SET_STATE],
         changed=True, message=f"properties of {NAME} updated"),
    dict(id="dry-run-volume-not-made-yet", tags={"dry-run"},
         args=dict(pool=POOL, vol=VOL, props=dict(host="compute-0-1")), dry_run=True,
         note="in a dry run of a map the volume the plan creates does not exist",
         script=[cmd(zfs_get("imgstor:host"), capture="zfs_get_missing", sub=NO_DATASET)],
         skipped=[], changed=True, facts={}, message=f"would set imgstor:host on {NAME}"),
    dict(id="volume-missing", tags={"error"},
         args=dict(pool=POOL, vol=VOL, props=dict(host="compute-0-1")),
         script=[cmd(zfs_get("imgstor:host"), capture="zfs_get_missing", sub=NO_DATASET)],
         raises=("NotFound", f"volume {NAME} does not exist")),
    dict(id="bad-property-name", tags={"error"},
         args=dict(pool=POOL, vol=VOL, props={"host;rm": "x"}), script=[],
         raises=("UsageError", "bad property names")),
]

# ---------------------------------------------------------------------- destroy_volume
DESTROY = ["zfs", "destroy", NAME]
UMOUNT = ["zfs", "umount", NAME]
D_FILE = dict(pool=POOL, vol=VOL, kind="file", driver="tgt")
D_ZVOL = dict(pool=POOL, vol=VOL, kind="zvol", driver="tgt")
BUSY = cmd(DESTROY, rc=1, stderr=f"cannot destroy '{NAME}': dataset is busy\n")
# tgt_show exports vm1-vol and vm2-vol: make it vm8/vm9 so tank/vm1-vol is not exported
OTHER_TARGETS = cmd(TGT_SHOW, capture="tgt_show",
                    sub={"vm1-vol": "vm8-vol", "vm2-vol": "vm9-vol"})
BELOW = ["zfs", "list", "-H", "-o", "name,type", "-t", "all", "-r", NAME]
ALONE = cmd(BELOW, stdout=f"{NAME}\tfilesystem\n")
SNAP = f"{NAME}@imgstor-1"
WITH_SNAP = cmd(BELOW, stdout=f"{NAME}\tfilesystem\n{SNAP}\tsnapshot\n")
HOLDS = ["zfs", "holds", "-H", SNAP]
# zfs-fuse cannot list holds (seen in the lab: rc 255 and this text, on stdout)
NO_HOLDS_CMD = dict(rc=255, stdout="internal error: /usr/lib/zfs/pyzfs.py not found\n")
# ... but it counts them (lab: `zfs get userrefs` 0, then 1 after `zfs hold`)
USERREFS_1 = cmd(zfs_get("userrefs", SNAP), stdout=f"{SNAP}\tuserrefs\t1\t-\n")


def no_tag(tag: str) -> dict:                  # zfs-fuse/libzfs text, seen in the lab
    return cmd(["zfs", "release", tag, SNAP], rc=1,
               stderr=f"cannot release '{tag}' from '{SNAP}': no such tag on this dataset\n")

DESTROY_VOLUME = [
    dict(id="absent", tags={"done"}, args=D_FILE, script=[MISSING],
         changed=False, facts={}, message=f"no volume {NAME}", mutating=[]),
    dict(id="file/not-exported", tags={"changes"}, args=D_FILE, env={"files": {PATH1: GiB}},
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), OTHER_TARGETS, ALONE, cmd(UMOUNT),
                 cmd(DESTROY)],
         changed=True, facts={"snapshots": []}, message=f"destroyed {NAME}",
         mutating=[UMOUNT, DESTROY]),
    dict(id="file/not-imgstors-refused", tags={"error"}, args=D_FILE,
         note="`remove host storageimg nas-0-0 tank home` on a dataset made by hand",
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET_UNMARKED)],
         raises=("Conflict", "is not imgstor's"), mutating=[]),
    dict(id="file/known-to-the-store", tags={"changes"}, args={**D_FILE, "owned": True},
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET_UNMARKED), OTHER_TARGETS, ALONE,
                 cmd(UMOUNT), cmd(DESTROY)],
         changed=True, message=f"destroyed {NAME}"),
    dict(id="zvol/filesystem-refused", tags={"error"}, args={**D_ZVOL, "owned": True},
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET)],
         raises=("Conflict", "is a filesystem, not a zvol")),
    dict(id="file/child-dataset-refused", tags={"error"}, args=D_FILE,
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), OTHER_TARGETS,
                 cmd(BELOW, stdout=f"{NAME}\tfilesystem\n{NAME}/child\tfilesystem\n")],
         raises=("Conflict", f"refusing to destroy {NAME}: {NAME}/child not made by imgstor"),
         mutating=[]),
    dict(id="file/foreign-snapshot-refused", tags={"error"}, args=D_FILE,
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), OTHER_TARGETS,
                 cmd(BELOW, stdout=f"{NAME}\tfilesystem\n{NAME}@backup\tsnapshot\n")],
         raises=("Conflict", f"{NAME}@backup not made by imgstor"), mutating=[]),
    dict(id="file/foreign-hold-refused", tags={"error"}, args=D_FILE,
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), OTHER_TARGETS, WITH_SNAP,
                 cmd(HOLDS, stdout=f"{SNAP}\tbackup\tTue Dec  1 12:00 2026\n")],
         raises=("Conflict", "hold backup. not made by imgstor"), mutating=[]),
    dict(id="file/own-snapshot-and-hold", tags={"changes"}, args=D_FILE,
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), OTHER_TARGETS, WITH_SNAP,
                 cmd(HOLDS, stdout=f"{SNAP}\timgstor-sync\tTue Dec  1 12:00 2026\n"),
                 cmd(["zfs", "release", "imgstor-sync", SNAP]), cmd(["zfs", "destroy", SNAP]),
                 cmd(UMOUNT), cmd(DESTROY)],
         changed=True, facts={"snapshots": [SNAP]}, message=f"destroyed {NAME}"),
    dict(id="file/snapshot-held-zfs-fuse", tags={"error"}, args=D_FILE,
         note="zfs-fuse cannot list holds, but counts them (userrefs): imgstor's tags are "
              "released by trying; a hold left is someone else's: busy, it stops",
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), OTHER_TARGETS, WITH_SNAP,
                 cmd(HOLDS, **NO_HOLDS_CMD), USERREFS_1, no_tag("imgstor"),
                 no_tag("imgstor-base"),
                 cmd(["zfs", "destroy", SNAP], rc=1,
                     stderr=f"cannot destroy '{SNAP}': dataset is busy\n")],
         raises=("Conflict", f"cannot destroy snapshot {SNAP}")),
    dict(id="file/base-held-zfs-fuse", tags={"changes"}, args=D_FILE,
         note="zfs-fuse: the sync base hold (imgstor-base) released by trying, then gone",
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), OTHER_TARGETS, WITH_SNAP,
                 cmd(HOLDS, **NO_HOLDS_CMD), USERREFS_1, no_tag("imgstor"),
                 cmd(["zfs", "release", "imgstor-base", SNAP]), cmd(["zfs", "destroy", SNAP]),
                 cmd(UMOUNT), cmd(DESTROY)],
         changed=True, facts={"snapshots": [SNAP]}, message=f"destroyed {NAME}"),
    dict(id="file/unheld-zfs-fuse", tags={"changes"}, args=D_FILE,
         note="zfs-fuse: userrefs 0, nothing to release",
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), OTHER_TARGETS, WITH_SNAP,
                 cmd(HOLDS, **NO_HOLDS_CMD),
                 cmd(zfs_get("userrefs", SNAP), stdout=f"{SNAP}\tuserrefs\t0\t-\n"),
                 cmd(["zfs", "destroy", SNAP]), cmd(UMOUNT), cmd(DESTROY)],
         changed=True, facts={"snapshots": [SNAP]}, message=f"destroyed {NAME}"),
    dict(id="file/exported", tags={"error"}, args=D_FILE, env={"files": {PATH1: GiB}},
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), cmd(TGT_SHOW, capture="tgt_show")],
         raises=("Conflict", f"{NAME} is exported by target {IQN1}")),
    dict(id="file/busy-then-destroyed", tags={"changes"}, args=D_FILE,
         note="zfs-fuse says 'dataset is busy' for a second or two after use (lab)",
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), cmd(TGT_SHOW, capture="tgt_show_empty"),
                 ALONE, cmd(UMOUNT), BUSY, BUSY, cmd(DESTROY)],
         changed=True, message=f"destroyed {NAME}", sleeps=2),
    dict(id="file/busy-then-gone", tags={"changes"}, args=D_FILE,
         note="a destroy that said busy may still complete: 'does not exist' is done",
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), cmd(TGT_SHOW, capture="tgt_show_empty"),
                 ALONE, cmd(UMOUNT), BUSY,
                 cmd(DESTROY, capture="zfs_destroy_missing", sub=NO_DATASET)],
         changed=True, message=f"destroyed {NAME}", sleeps=1),
    dict(id="file/busy-for-ever", tags={"error"}, args=D_FILE,
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), cmd(TGT_SHOW, capture="tgt_show_empty"),
                 ALONE, cmd(UMOUNT)] + [BUSY] * 20,
         raises=("Conflict", "dataset is busy"), sleeps=19),       # none after the last try
    dict(id="file/dependent-clone-no-retry", tags={"error"}, args=D_FILE,
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), cmd(TGT_SHOW, capture="tgt_show_empty"),
                 ALONE, cmd(UMOUNT),
                 cmd(DESTROY, rc=1, stderr=f"cannot destroy '{NAME}': filesystem has "
                     "dependent clones\nuse '-R' to destroy the following datasets:\n"
                     "tank/vm1-clone\n")],
         raises=("Conflict", "dependent clones"), sleeps=0),
    dict(id="file/dry-run", tags={"dry-run"}, args=D_FILE, dry_run=True,
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), OTHER_TARGETS, ALONE],
         skipped=[UMOUNT, DESTROY], changed=True, message=f"destroyed {NAME}"),
    dict(id="dry-run-absent", tags={"dry-run", "done"}, args=D_FILE, dry_run=True,
         script=[MISSING], skipped=[], changed=False, message=f"no volume {NAME}"),
    dict(id="zvol/not-exported", tags={"changes"}, args=D_ZVOL,
         note="no umount for a zvol",
         script=[cmd(ZGET_VOL, stdout=zvol_get(GiB)), cmd(TGT_SHOW, capture="tgt_show"),
                 cmd(BELOW, stdout=f"{NAME}\tvolume\n"), cmd(DESTROY)],
         changed=True, message=f"destroyed {NAME}", mutating=[DESTROY]),
    dict(id="zvol/exported", tags={"error"}, args=D_ZVOL,
         script=[cmd(ZGET_VOL, stdout=zvol_get(GiB)),
                 cmd(TGT_SHOW, capture="tgt_show", sub={PATH1: ZVOL1})],
         raises=("Conflict", f"{NAME} is exported by target {IQN1}")),
]

# ---------------------------------------------------------------------------- get_props
GET_ALL = zfs_get("type,volsize,mountpoint,imgstor:role,imgstor:host,imgstor:target,"
                  "imgstor:mode,imgstor:state")
MAPPED = {"host": "compute-0-0", "target": IQN1, "mode": "direct", "state": None}

GET_PROPS = [
    dict(id="file-volume", tags={"read"}, args=dict(pool=POOL, vol=VOL, kind="file"),
         env={"files": {PATH1: GiB}}, script=[cmd(GET_ALL, stdout=FILE_VOL_GET + GOT4)],
         changed=False, facts={"exists": True, "path": PATH1, "size": GiB, "props": MAPPED},
         mutating=[]),
    dict(id="missing", tags={"read"}, args=dict(pool=POOL, vol=VOL, kind="file"),
         script=[cmd(GET_ALL, capture="zfs_get_missing", sub=NO_DATASET)],
         changed=False, facts={"exists": False}, message=f"no volume {NAME}"),
    dict(id="dry-run-zvol", tags={"read", "dry-run"}, args=dict(pool=POOL, vol=VOL, kind="zvol"),
         dry_run=True, script=[cmd(GET_ALL, stdout=zvol_get(GiB) + GOT4)], skipped=[],
         facts={"exists": True, "path": ZVOL1, "size": GiB, "props": MAPPED}),
]

SCENARIOS = ([dict(s, step="nas.ensure_volume") for s in ENSURE_VOLUME]
             + [dict(s, step="nas.set_props") for s in SET_PROPS]
             + [dict(s, step="nas.get_props") for s in GET_PROPS]
             + [dict(s, step="nas.destroy_volume") for s in DESTROY_VOLUME])
