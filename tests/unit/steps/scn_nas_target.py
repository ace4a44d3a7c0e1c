"""Scenarios: nas.ensure_target, nas.remove_target, nas.target_facts (driver tgt).

Canned ``tgtadm --op show`` answers are the captures: tgt_show (tid 1 = IQN1 exporting
PATH1 to INIT0; tid 2 = IQN2 exporting PATH2 to the address 127.0.0.1 and INIT1),
tgt_show_empty, tgt_show_nolun (tid 1 = IQN1 without LUN 1 or ACL), tgt_show_unbound
(tid 1 without ACL), tgt_show_connected (INIT0 logged in to tid 1).
"""
from __future__ import annotations

from scn_common import (FILE_VOL_GET, GiB, INIT0, INIT1, IQN1, IQN2, IQN3, NAME, NO_DATASET,
                        PATH1, PATH2, PATH3, POOL, PORTAL, TGT_SHOW, VOL, ZGET_VOL, ZVOL1, cmd,
                        tgt_bind, tgt_delete, tgt_lun, tgt_new, tgt_unbind, tgt_unbind_address,
                        zvol_get)


def target(iqn: str = IQN1, path: str | None = PATH1, initiator: str = INIT0, **kw) -> dict:
    args = dict(driver="tgt", iqn=iqn, initiator=initiator, portal=PORTAL)
    if path is not None:
        args["path"] = path
    return {**args, **kw}


def facts(tid: int, iqn: str = IQN1) -> dict:
    return {"iqn": iqn, "tid": tid, "lun": 1, "portal": PORTAL}


SHOW = cmd(TGT_SHOW, capture="tgt_show")
EMPTY = cmd(TGT_SHOW, capture="tgt_show_empty")
NEW1 = [tgt_new(1, IQN1), tgt_lun(1, PATH1), tgt_bind(1, INIT0)]
DAEMON_DOWN = cmd(TGT_SHOW, capture="tgt_noserver")        # rc 107, captured with -C 8

ENSURE_TARGET = [
    dict(id="new-target", tags={"changes"}, args=target(),
         script=[EMPTY] + [cmd(a) for a in NEW1],
         changed=True, facts=facts(1), message=f"target {IQN1} configured for {INIT0}",
         mutating=NEW1),
    dict(id="new-target-takes-next-free-tid", tags={"changes"}, args=target(IQN3, PATH3),
         script=[SHOW, cmd(tgt_new(3, IQN3)), cmd(tgt_lun(3, PATH3)), cmd(tgt_bind(3, INIT0))],
         changed=True, facts=facts(3, IQN3)),
    dict(id="exists-as-wanted", tags={"done"}, args=target(), script=[SHOW],
         changed=False, facts=facts(1), message=f"target {IQN1} as wanted for {INIT0}",
         mutating=[]),
    dict(id="extra-acls-unbound", tags={"changes"}, args=target(IQN2, PATH2, INIT0),
         note="one initiator, by name: the address ACL and the other IQN both go",
         script=[SHOW, cmd(tgt_unbind_address(2, "127.0.0.1")), cmd(tgt_unbind(2, INIT1)),
                 cmd(tgt_bind(2, INIT0))],
         changed=True, facts=facts(2, IQN2), message=f"target {IQN2} configured for {INIT0}"),
    dict(id="address-acl-unbound-name-kept", tags={"changes"}, args=target(IQN2, PATH2, INIT1),
         script=[SHOW, cmd(tgt_unbind_address(2, "127.0.0.1"))],
         changed=True, facts=facts(2, IQN2)),
    dict(id="acl-missing", tags={"changes"}, args=target(),
         script=[cmd(TGT_SHOW, capture="tgt_show_unbound"), cmd(tgt_bind(1, INIT0))],
         changed=True, facts=facts(1), mutating=[tgt_bind(1, INIT0)]),
    dict(id="lun-missing", tags={"changes"}, args=target(),
         note="a crash after --op new: the re-run adds LUN 1 and the ACL",
         script=[cmd(TGT_SHOW, capture="tgt_show_nolun"), cmd(tgt_lun(1, PATH1)),
                 cmd(tgt_bind(1, INIT0))],
         changed=True, facts=facts(1)),
    dict(id="path-from-file-volume", tags={"done"},
         args=target(path=None, pool=POOL, vol=VOL, kind="file"),
         env={"files": {PATH1: GiB}},
         script=[cmd(ZGET_VOL, stdout=FILE_VOL_GET), SHOW],
         changed=False, facts=facts(1), mutating=[]),
    dict(id="path-from-zvol", tags={"changes"},
         args=target(path=None, pool=POOL, vol=VOL, kind="zvol"),
         script=[cmd(ZGET_VOL, stdout=zvol_get(GiB)), EMPTY, cmd(tgt_new(1, IQN1)),
                 cmd(tgt_lun(1, ZVOL1)), cmd(tgt_bind(1, INIT0))],
         changed=True, facts=facts(1)),
    dict(id="dry-run-new-target", tags={"dry-run"}, args=target(), dry_run=True,
         script=[EMPTY], skipped=NEW1, changed=True, facts=facts(1)),
    dict(id="dry-run-extra-acls", tags={"dry-run"}, args=target(IQN2, PATH2, INIT0),
         dry_run=True, script=[SHOW],
         skipped=[tgt_unbind_address(2, "127.0.0.1"), tgt_unbind(2, INIT1), tgt_bind(2, INIT0)],
         changed=True, facts=facts(2, IQN2)),
    dict(id="dry-run-as-wanted", tags={"dry-run", "done"}, args=target(), dry_run=True,
         script=[SHOW], skipped=[], changed=False, facts=facts(1)),
    dict(id="dry-run-volume-not-made-yet", tags={"dry-run"},
         args=target(path=None, pool=POOL, vol=VOL, kind="file"), dry_run=True,
         script=[cmd(ZGET_VOL, capture="zfs_get_missing", sub=NO_DATASET), EMPTY],
         skipped=[tgt_new(1, IQN1), tgt_lun(1, f"<path of {NAME}>"), tgt_bind(1, INIT0)],
         changed=True, facts=facts(1)),
    dict(id="path-exported-by-another-iqn", tags={"error"}, args=target(IQN3, PATH1),
         script=[SHOW], raises=("Conflict", f"{PATH1} is already exported by target {IQN1}")),
    dict(id="iqn-exports-another-path", tags={"error"}, args=target(IQN1, PATH3),
         script=[SHOW], raises=("Conflict", f"target {IQN1} exports {PATH1}, not {PATH3}")),
    dict(id="bind-fails-after-new-deletes-target", tags={"error"}, args=target(),
         note="create-then-configure: the target just made is deleted, the error re-raised "
              "(even if the delete fails too)",
         script=[EMPTY, cmd(tgt_new(1, IQN1)), cmd(tgt_lun(1, PATH1)),
                 cmd(tgt_bind(1, INIT0), capture="tgt_noserver"),
                 cmd(tgt_delete(1), capture="tgt_noserver")],
         raises=("RemoteCommandError", "tgtd is not running"), details={"rc": 107}),
    dict(id="lun-fails-after-new-deletes-target", tags={"error"}, args=target(),
         script=[EMPTY, cmd(tgt_new(1, IQN1)),
                 cmd(tgt_lun(1, PATH1), capture="tgt_lun_nofile"), cmd(tgt_delete(1))],
         raises=("RemoteCommandError", "check that the backing file exists"),
         mutating=[tgt_new(1, IQN1), tgt_lun(1, PATH1), tgt_delete(1)]),
    dict(id="lun-fails-on-existing-target-kept", tags={"error"}, args=target(),
         note="nothing was created by this run: nothing is deleted",
         script=[cmd(TGT_SHOW, capture="tgt_show_nolun"),
                 cmd(tgt_lun(1, PATH1), capture="tgt_lun_nofile")],
         raises=("RemoteCommandError", "invalid request")),
    dict(id="new-races-same-name", tags={"error"}, args=target(),
         script=[EMPTY, cmd(tgt_new(1, IQN1), capture="tgt_new_exists")],
         raises=("AlreadyExists", "this target already exists")),
    dict(id="volume-missing", tags={"error"},
         args=target(path=None, pool=POOL, vol=VOL, kind="file"),
         script=[cmd(ZGET_VOL, capture="zfs_get_missing", sub=NO_DATASET)],
         raises=("NotFound", f"volume {NAME} does not exist")),
    dict(id="tgtd-not-running", tags={"error"}, args=target(), script=[DAEMON_DOWN],
         raises=("RemoteCommandError", "tgtd is not running on that control port")),
    dict(id="unknown-driver", tags={"error"}, args={**target(), "driver": "iet"}, script=[],
         raises=("UsageError", "unknown target driver 'iet'")),
]

REMOVE_TARGET = [
    dict(id="present", tags={"changes"}, args=dict(driver="tgt", iqn=IQN2),
         script=[SHOW, cmd(tgt_delete(2), capture="tgt_delete")],
         changed=True, facts={"tid": 2}, message=f"removed target {IQN2}",
         mutating=[tgt_delete(2)]),
    dict(id="absent", tags={"done"}, args=dict(driver="tgt", iqn=IQN3), script=[SHOW],
         changed=False, facts={}, message=f"no target {IQN3}", mutating=[]),
    dict(id="absent-no-targets", tags={"done"}, args=dict(driver="tgt", iqn=IQN1),
         script=[EMPTY], changed=False, mutating=[]),
    dict(id="present-with-session", tags={"changes"}, args=dict(driver="tgt", iqn=IQN1),
         note="--force drops INIT0's session with the target",
         script=[cmd(TGT_SHOW, capture="tgt_show_connected"), cmd(tgt_delete(1))],
         changed=True, facts={"tid": 1}),
    dict(id="dry-run", tags={"dry-run"}, args=dict(driver="tgt", iqn=IQN1), dry_run=True,
         script=[SHOW], skipped=[tgt_delete(1)], changed=True, facts={"tid": 1}),
    dict(id="tgtd-not-running", tags={"error"}, args=dict(driver="tgt", iqn=IQN1),
         script=[DAEMON_DOWN], raises=("RemoteCommandError", "tgtd is not running")),
    dict(id="unknown-driver", tags={"error"}, args=dict(driver="iet", iqn=IQN1), script=[],
         raises=("UsageError", "unknown target driver 'iet'")),
]

ROW1 = {"iqn": IQN1, "tid": 1, "paths": [PATH1], "acls": [INIT0], "sessions": []}
ROW2 = {"iqn": IQN2, "tid": 2, "paths": [PATH2], "acls": ["127.0.0.1", INIT1], "sessions": []}

TARGET_FACTS = [
    dict(id="all", tags={"read"}, args=dict(driver="tgt"), script=[SHOW],
         changed=False, facts={"targets": [ROW1, ROW2]}, message="", mutating=[]),
    dict(id="one-iqn-with-session", tags={"read"}, args=dict(driver="tgt", iqn=IQN1),
         script=[cmd(TGT_SHOW, capture="tgt_show_connected")],
         changed=False, facts={"targets": [{**ROW1, "sessions": [INIT0]}]}),
    dict(id="target-without-lun", tags={"read"}, args=dict(driver="tgt"),
         script=[cmd(TGT_SHOW, capture="tgt_show_nolun")],
         facts={"targets": [{"iqn": IQN1, "tid": 1, "paths": [], "acls": [],
                             "sessions": []}]}),
    dict(id="unknown-iqn", tags={"read"}, args=dict(driver="tgt", iqn=IQN3), script=[SHOW],
         facts={"targets": []}),
    dict(id="none", tags={"read"}, args=dict(driver="tgt"), script=[EMPTY],
         facts={"targets": []}),
    dict(id="dry-run", tags={"dry-run", "read"}, args=dict(driver="tgt"), dry_run=True,
         note="read-only: a dry run runs it", script=[SHOW], skipped=[],
         changed=False, facts={"targets": [ROW1, ROW2]}),
    dict(id="tgtd-not-running", tags={"error"}, args=dict(driver="tgt"),
         script=[DAEMON_DOWN], raises=("RemoteCommandError", "tgtd is not running")),
]

SCENARIOS = ([dict(s, step="nas.ensure_target") for s in ENSURE_TARGET]
             + [dict(s, step="nas.remove_target") for s in REMOVE_TARGET]
             + [dict(s, step="nas.target_facts") for s in TARGET_FACTS])
