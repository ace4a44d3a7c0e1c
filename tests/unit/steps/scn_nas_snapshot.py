"""Scenarios: nas.snapshot (both backends), nas.prune_snapshots, nas.hold_base,
nas.release_base, and nas.ensure_volume
through libzfs_core.

``env["lzc"]`` gives the node a fake pyzfs (tests/unit/fake_lzc.py) and /dev/zfs: the zfs
driver then makes its changes in-process (``lzc_calls``); reads take the CLI until a change
has imported pyzfs (its import costs more than a command), and ``zfs get`` always.
Without it the node has the CLI only.  zfs-fuse texts below were seen in the userspace
lab (zfs-fuse 0.7): ``zfs holds`` needs a Python helper it does not ship (it says so on
stdout, rc 255); ``zfs hold``/``release`` say "tag already exists on this dataset" / "no
such tag on this dataset".
"""
from __future__ import annotations

import json

from scn_common import NAME, POOL, VOL, ZGET_VOL, ZVOL1, GiB, cmd, zfs_get
from scn_nas_volume import MISSING, POOL_OK, UDEV, ZVOL

SNAPNAME = "imgstor-s1"
SNAP = f"{NAME}@{SNAPNAME}"
ARGS = dict(pool=POOL, vol=VOL, snapshot=SNAPNAME)
LIST = ["zfs", "list", "-H", "-o", "name", SNAP]
LISTED = cmd(LIST, stdout=SNAP + "\n")
NO_SNAP = cmd(LIST, rc=1, stderr=f"cannot open '{SNAP}': dataset does not exist\n")
TAKE = ["zfs", "snapshot", "-o", "imgstor:role=snapshot", SNAP]
ROLE = zfs_get("imgstor:role", SNAP)
OURS = cmd(ROLE, stdout=f"{SNAP}\timgstor:role\tsnapshot\tlocal\n")
INHERITED = cmd(ROLE, stdout=f"{SNAP}\timgstor:role\tvolume\tinherited from {NAME}\n")
HOLDS = ["zfs", "holds", "-H", SNAP]
HOLD = ["zfs", "hold", "imgstor", SNAP]
FUSE_HOLDS = cmd(HOLDS, rc=255, stdout="internal error: /usr/lib/zfs/pyzfs.py not found\n")


def holds_out(*tags: str) -> str:            # `zfs holds -H`: NAME TAB TAG TAB TIMESTAMP
    return "".join(f"{SNAP}\t{t}\tTue Dec  1 12:00 2026\n" for t in tags)


CLI = {"snapshot": SNAP, "zfs_backend": "cli"}
LZC = {"snapshot": SNAP, "zfs_backend": "lzc"}
KEPT = {"snapshot": SNAP, "zfs_backend": None}        # no zfs change made
LZC_VOL = {"datasets": [POOL, NAME]}
LZC_SNAP = {"datasets": [POOL, NAME, SNAP]}
LZC_TAKE = f'lzc_snapshot {SNAP} {json.dumps({"imgstor:role": "snapshot"})}'

SNAPSHOT = [
    # ------------------------------------------------------------------ CLI
    dict(id="cli/fresh", tags={"changes"}, args=ARGS, script=[NO_SNAP, cmd(TAKE)],
         changed=True, facts={**CLI, "created": True, "held": False},
         message=f"snapshot {SNAP} created", mutating=[TAKE]),
    dict(id="cli/exists", tags={"done"}, args=ARGS, script=[LISTED, OURS],
         changed=False, facts={**KEPT, "created": False, "held": False},
         message=f"snapshot {SNAP} exists", mutating=[]),
    dict(id="cli/fresh-held-openzfs", tags={"changes"}, args={**ARGS, "hold": True},
         script=[NO_SNAP, cmd(TAKE), cmd(HOLDS), cmd(HOLD)],
         changed=True, facts={**CLI, "created": True, "held": True}, mutating=[TAKE, HOLD]),
    dict(id="cli/held-already-openzfs", tags={"done"}, args={**ARGS, "hold": True},
         script=[LISTED, OURS, cmd(HOLDS, stdout=holds_out("imgstor"))],
         changed=False, facts={**KEPT, "created": False, "held": True}, mutating=[]),
    dict(id="cli/held-already-zfs-fuse", tags={"done"}, args={**ARGS, "hold": True},
         note="zfs-fuse cannot list holds: the hold is tried, 'already exists' means done",
         script=[LISTED, OURS, FUSE_HOLDS,
                 cmd(HOLD, rc=1, stderr=f"cannot hold '{SNAP}': tag already exists on "
                     "this dataset\n")],
         changed=False, facts={**KEPT, "created": False, "held": True}, mutating=[HOLD]),
    dict(id="cli/dry-run-fresh", tags={"dry-run"}, args={**ARGS, "hold": True}, dry_run=True,
         note="nothing to list holds of: the dry run made no snapshot",
         script=[NO_SNAP], skipped=[TAKE, HOLD],
         changed=True, facts={**CLI, "created": True, "held": True}),
    dict(id="cli/exists-not-ours", tags={"error"}, args=ARGS, script=[LISTED, INHERITED],
         note="imgstor:role inherited from the volume is not imgstor's mark on the snapshot",
         raises=("Conflict", r"was not made by imgstor \(imgstor:role is 'volume' "
                             rf"\(inherited from {NAME}\)\)")),
    dict(id="cli/no-volume", tags={"error"}, args=ARGS,
         script=[NO_SNAP, cmd(TAKE, rc=1, stderr=f"cannot open '{NAME}': dataset does not "
                              "exist\n")],
         raises=("NotFound", f"volume {NAME} does not exist")),
    dict(id="bad-name", tags={"error"}, args={**ARGS, "snapshot": "daily-1"}, script=[],
         raises=("UsageError", r"bad snapshot 'daily-1' \(imgstor's snapshots are named")),
    dict(id="bad-volume", tags={"error"}, args={**ARGS, "vol": "vm1-vol@x"}, script=[],
         raises=("UsageError", "bad vol")),
    # ------------------------------------------------------------------ libzfs_core
    # a fresh step process: reads take the CLI until a change has imported pyzfs
    dict(id="lzc/fresh", tags={"changes"}, args=ARGS, env={"lzc": LZC_VOL}, script=[NO_SNAP],
         changed=True, facts={**LZC, "created": True, "held": False}, mutating=[],
         lzc_calls=[("lzc_snapshot", [SNAP])]),
    dict(id="lzc/fresh-held", tags={"changes"}, args={**ARGS, "hold": True},
         env={"lzc": LZC_VOL}, script=[NO_SNAP],
         note="once loaded, libzfs_core also serves the reads (lzc_get_holds)",
         changed=True, facts={**LZC, "created": True, "held": True},
         lzc_calls=[("lzc_snapshot", [SNAP]), ("lzc_get_holds", SNAP),
                    ("lzc_hold", {SNAP: "imgstor"})]),
    dict(id="lzc/held-already", tags={"done"}, args={**ARGS, "hold": True},
         env={"lzc": {**LZC_SNAP, "holds": {SNAP: ["imgstor"]}}},
         note="all done: pyzfs is never imported (the runner checks)",
         script=[LISTED, OURS, cmd(HOLDS, stdout=holds_out("imgstor"))],
         changed=False, facts={**KEPT, "created": False, "held": True}, mutating=[],
         lzc_calls=[]),
    dict(id="lzc/dry-run-fresh", tags={"dry-run"}, args={**ARGS, "hold": True},
         dry_run=True, env={"lzc": LZC_VOL}, script=[NO_SNAP],
         skipped=[LZC_TAKE, f"lzc_hold {SNAP} imgstor"],
         changed=True, facts={**LZC, "created": True, "held": True}, lzc_calls=[]),
    dict(id="lzc/no-volume", tags={"error"}, args=ARGS, env={"lzc": {"datasets": [POOL]}},
         script=[NO_SNAP], raises=("NotFound", f"volume {NAME} does not exist"),
         lzc_calls=[("lzc_snapshot", [SNAP])]),
]

# ------------------------------------------------------------- ensure_volume through lzc
GET_MOUNT = zfs_get("canmount,mountpoint")
FS_MOUNT = (f"{NAME}\tcanmount\ton\tdefault\n"
            f"{NAME}\tmountpoint\t/mnt/tank/vm1-vol\tinherited from tank\n")
# sparse (no refreservation), 128K blocks, imgstor's mark and promised size set at creation
LZC_CREATE_ZVOL = (f"lzc_create {NAME} zvol "
                   + json.dumps({"volsize": GiB, "volblocksize": 128 * 1024,
                                 "imgstor:role": "volume", "imgstor:size": str(GiB)}))

ENSURE_VOLUME_LZC = [
    dict(id="lzc/zvol-fresh", tags={"changes"}, args=ZVOL,
         env={"lzc": {"datasets": [POOL]}, "paths": [ZVOL1]},
         note="lzc_create sets volsize and volblocksize only: sparse, as `zfs create -s`",
         script=[MISSING, POOL_OK, cmd(UDEV)], mutating=[],
         changed=True, facts={"path": ZVOL1, "size": GiB, "created": True,
                              "size_differs": False, "marked": False, "zfs_backend": "lzc"},
         lzc_calls=[("lzc_create", NAME)]),
    dict(id="lzc/zvol-dry-run", tags={"dry-run"}, args=ZVOL, dry_run=True,
         env={"lzc": {"datasets": [POOL]}}, script=[MISSING, POOL_OK],
         skipped=[LZC_CREATE_ZVOL], changed=True, lzc_calls=[],
         facts={"path": ZVOL1, "size": GiB, "created": True, "size_differs": False,
                "marked": False, "zfs_backend": "lzc"}),
    dict(id="lzc/zvol-create-races-another", tags={"error"}, args=ZVOL,
         env={"lzc": {"datasets": [POOL, NAME]}}, script=[MISSING, POOL_OK],
         raises=("AlreadyExists", f"lzc_create {NAME}: FilesystemExists"),
         details={"errno": 17}),
    dict(id="lzc/file-fresh-mounted-like-the-cli", tags={"changes"},
         args=dict(pool=POOL, vol=VOL, size=GiB, kind="file"),
         env={"lzc": {"datasets": [POOL]}},
         note="lzc_create mounts nothing; `zfs create` mounts a canmount=on filesystem",
         script=[MISSING, POOL_OK, cmd(GET_MOUNT, stdout=FS_MOUNT),
                 cmd(["zfs", "mount", NAME]),
                 cmd(ZGET_VOL, stdout=f"{NAME}\ttype\tfilesystem\t-\n{NAME}\tvolsize\t-\t-\n"
                     f"{NAME}\tmountpoint\t/mnt/tank/vm1-vol\tinherited from tank\n"),
                 cmd(["truncate", "-s", str(GiB), "/mnt/tank/vm1-vol/disk.raw"])],
         changed=True, facts_include={"zfs_backend": "lzc", "created": True},
         lzc_calls=[("lzc_create", NAME)]),
]


def _fail(env: dict) -> dict:
    """``fail`` names an exception class of the fake; the runner gets an instance."""
    import fake_lzc
    lzc = env.get("lzc")
    if lzc and isinstance(next(iter(lzc.get("fail", {}).values()), None), str):
        lzc = dict(lzc, fail={fn: getattr(fake_lzc, cls)(SNAP)
                             for fn, cls in lzc["fail"].items()})
        return dict(env, lzc=lzc)
    return env


# ------------------------------------------------------------- prune_snapshots (CLI)
PLIST = ["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-s", "createtxg", "-d", "1",
         NAME]


def _sn(i: int) -> str:
    return f"{NAME}@imgstor-pull-{i}"


def plist(*rows: tuple[str, int]) -> str:       # zfs sorts them (by createtxg)
    return "".join(f"{n}\n" for n, _ in sorted(rows, key=lambda r: r[1]))


def _holds(sn: str, *tags: str):
    return cmd(["zfs", "holds", "-H", sn],
               stdout="".join(f"{sn}\t{t}\tTue Dec  1 12:00 2026\n" for t in tags))


PARGS = dict(pool=POOL, vol=VOL, keep=2)
FOUR = plist((_sn(1), 10), (f"{NAME}@daily", 11), (_sn(2), 12), (_sn(3), 13), (_sn(4), 14))
PRUNE = [
    dict(id="cli/two-old-go", tags={"changes"}, args=PARGS,
         note="the newest 2 kept (zfs's createtxg order); another name is never touched",
         script=[cmd(PLIST, stdout=FOUR), _holds(_sn(1), "imgstor"),
                 cmd(["zfs", "release", "imgstor", _sn(1)]), cmd(["zfs", "destroy", _sn(1)]),
                 _holds(_sn(2)), cmd(["zfs", "destroy", _sn(2)])],
         changed=True, facts={"destroyed": [_sn(1), _sn(2)], "kept": [_sn(3), _sn(4)],
                              "left": []},
         mutating=[["zfs", "release", "imgstor", _sn(1)], ["zfs", "destroy", _sn(1)],
                   ["zfs", "destroy", _sn(2)]]),
    dict(id="cli/within-keep", tags={"done"}, args=PARGS,
         script=[cmd(PLIST, stdout=plist((_sn(3), 13), (_sn(4), 14)))],
         changed=False, facts={"destroyed": [], "kept": [_sn(3), _sn(4)], "left": []},
         mutating=[]),
    dict(id="cli/protected-and-foreign-hold-left", tags={"changes"},
         args={**PARGS, "keep": 1, "protect": ["imgstor-pull-1"]},
         note="the last common snapshot and one someone else holds stay",
         script=[cmd(PLIST, stdout=plist((_sn(1), 10), (_sn(2), 12), (_sn(3), 13))),
                 _holds(_sn(2), "backup")],
         changed=False, facts={"destroyed": [], "kept": [_sn(1), _sn(2), _sn(3)],
                               "left": [f"{_sn(1)} (the last common snapshot)",
                                        f"{_sn(2)} (held by backup)"]}),
    dict(id="cli/held-base-left", tags={"changes"}, args={**PARGS, "keep": 1},
         note="a base still held (a crash between hold and release) is never pruned",
         script=[cmd(PLIST, stdout=plist((_sn(1), 10), (_sn(2), 12))),
                 _holds(_sn(1), "imgstor-base")],
         changed=False, facts={"destroyed": [], "kept": [_sn(1), _sn(2)],
                               "left": [f"{_sn(1)} (held as the last common snapshot)"]}),
    dict(id="cli/dry-run", tags={"dry-run"}, args={**PARGS, "keep": 1}, dry_run=True,
         script=[cmd(PLIST, stdout=plist((_sn(1), 10), (_sn(2), 12))), _holds(_sn(1))],
         skipped=[["zfs", "destroy", _sn(1)]], changed=True,
         facts={"destroyed": [_sn(1)], "kept": [_sn(2)], "left": []}),
    dict(id="bad-keep", tags={"error"}, args={**PARGS, "keep": 0}, script=[],
         raises=("UsageError", "bad keep 0")),
]

# ------------------------------------------------------------- hold_base / release_base
OLD = _sn(1)                                    # the previous base
BASE_HOLD = ["zfs", "hold", "imgstor-base", SNAP]
BASE_RELEASE_OLD = ["zfs", "release", "imgstor-base", OLD]
BLIST = plist((OLD, 10), (f"{NAME}@daily", 11), (SNAP, 12))


def _refs(sn: str, n: int) -> dict:
    return cmd(zfs_get("userrefs", sn), stdout=f"{sn}\tuserrefs\t{n}\t-\n")


def _fuse_holds(sn: str) -> dict:
    return cmd(["zfs", "holds", "-H", sn], rc=255,
               stdout="internal error: /usr/lib/zfs/pyzfs.py not found\n")


HOLD_BASE = [
    dict(id="cli/hold-new-release-old", tags={"changes"},
         args={**ARGS, "release_others": True},
         note="the new base held first, then the old one released; another name untouched",
         script=[LISTED, cmd(HOLDS), cmd(BASE_HOLD), cmd(PLIST, stdout=BLIST),
                 _holds(OLD, "imgstor-base"), cmd(BASE_RELEASE_OLD)],
         changed=True, facts={"snapshot": SNAP, "released": [OLD], "zfs_backend": "cli"},
         mutating=[BASE_HOLD, BASE_RELEASE_OLD]),
    dict(id="cli/hold-only", tags={"changes"}, args=ARGS,
         script=[LISTED, cmd(HOLDS, stdout=holds_out("backup")), cmd(BASE_HOLD)],
         changed=True, facts_include={"snapshot": SNAP, "released": []},
         mutating=[BASE_HOLD]),
    dict(id="cli/held-already", tags={"done"}, args={**ARGS, "release_others": True},
         script=[LISTED, cmd(HOLDS, stdout=holds_out("imgstor-base")),
                 cmd(PLIST, stdout=BLIST), _holds(OLD)],
         changed=False, facts={"snapshot": SNAP, "released": [], "zfs_backend": None},
         mutating=[]),
    dict(id="zfs-fuse/hold-and-release-by-trying", tags={"changes"},
         args={**ARGS, "release_others": True},
         note="zfs-fuse lists no holds: userrefs 0 means none; else tried",
         script=[LISTED, FUSE_HOLDS, _refs(SNAP, 0), cmd(BASE_HOLD),
                 cmd(PLIST, stdout=plist((OLD, 10), (_sn(2), 11), (SNAP, 12))),
                 _fuse_holds(OLD), _refs(OLD, 1), cmd(BASE_RELEASE_OLD),
                 _fuse_holds(_sn(2)), _refs(_sn(2), 0)],
         changed=True, facts_include={"snapshot": SNAP, "released": [OLD]},
         mutating=[BASE_HOLD, BASE_RELEASE_OLD]),
    dict(id="zfs-fuse/held-already", tags={"done"}, args=ARGS,
         script=[LISTED, FUSE_HOLDS, _refs(SNAP, 1),
                 cmd(BASE_HOLD, rc=1, stderr=f"cannot hold '{SNAP}': tag already exists on "
                                             "this dataset\n")],
         changed=False, facts_include={"snapshot": SNAP, "released": []},
         mutating=[BASE_HOLD]),
    dict(id="cli/dry-run", tags={"dry-run"}, args={**ARGS, "release_others": True},
         dry_run=True,
         script=[LISTED, cmd(HOLDS), cmd(PLIST, stdout=BLIST), _holds(OLD, "imgstor-base")],
         skipped=[BASE_HOLD, BASE_RELEASE_OLD], changed=True,
         facts_include={"snapshot": SNAP, "released": [OLD]}),
    dict(id="no-snapshot", tags={"error"}, args=ARGS, script=[NO_SNAP],
         raises=("NotFound", f"no snapshot {SNAP} to hold")),
    dict(id="not-imgstors-name", tags={"error"}, args={**ARGS, "snapshot": "daily"},
         script=[], raises=("UsageError", "imgstor's snapshots are named")),
]

VLIST = ["zfs", "list", "-H", "-o", "name", NAME]
RELEASE_BASE = [
    dict(id="cli/released", tags={"changes"}, args=dict(pool=POOL, vol=VOL),
         script=[cmd(VLIST, stdout=NAME + "\n"), cmd(PLIST, stdout=BLIST),
                 _holds(OLD), _holds(SNAP, "imgstor-base", "backup"),
                 cmd(["zfs", "release", "imgstor-base", SNAP])],
         changed=True, facts_include={"released": [SNAP]},
         mutating=[["zfs", "release", "imgstor-base", SNAP]]),
    dict(id="cli/none-held", tags={"done"}, args=dict(pool=POOL, vol=VOL),
         script=[cmd(VLIST, stdout=NAME + "\n"), cmd(PLIST, stdout=BLIST),
                 _holds(OLD), _holds(SNAP)],
         changed=False, facts_include={"released": []}, mutating=[]),
    dict(id="no-volume", tags={"done"}, args=dict(pool=POOL, vol=VOL),
         script=[cmd(VLIST, rc=1, stderr=f"cannot open '{NAME}': dataset does not exist\n")],
         changed=False, facts_include={"released": []}, mutating=[]),
    dict(id="cli/dry-run", tags={"dry-run"}, args=dict(pool=POOL, vol=VOL), dry_run=True,
         script=[cmd(VLIST, stdout=NAME + "\n"), cmd(PLIST, stdout=BLIST),
                 _holds(OLD, "imgstor-base"), _holds(SNAP)],
         skipped=[BASE_RELEASE_OLD], changed=True, facts_include={"released": [OLD]}),
    dict(id="bad-pool", tags={"error"}, args=dict(pool="-x", vol=VOL), script=[],
         raises=("UsageError", "bad pool")),
]

SCENARIOS = ([dict(s, step="nas.snapshot", env=_fail(s.get("env", {}))) for s in SNAPSHOT]
             + [dict(s, step="nas.ensure_volume") for s in ENSURE_VOLUME_LZC]
             + [dict(s, step="nas.prune_snapshots") for s in PRUNE]
             + [dict(s, step="nas.hold_base") for s in HOLD_BASE]
             + [dict(s, step="nas.release_base") for s in RELEASE_BASE])
