"""Scenarios: nas.ensure_target, nas.remove_target, nas.target_facts (driver tgt).

Canned ``tgtadm --op show`` answers are the captures: tgt_show (tid 1 = IQN1 exporting
PATH1 to INIT0; tid 2 = IQN2 exporting PATH2 to the address 127.0.0.1 and INIT1),
tgt_show_empty, tgt_show_nolun (tid 1 = IQN1 without LUN 1 or ACL), tgt_show_unbound
(tid 1 without ACL), tgt_show_connected (INIT0 logged in to tid 1).
"""
from __future__ import annotations

from scn_common import (
    FILE_VOL_GET,
    INIT0,
    INIT1,
    IQN1,
    IQN2,
    IQN3,
    NAME,
    NO_DATASET,
    PATH1,
    PATH2,
    PATH3,
    POOL,
    PORTAL,
    PORTALS,
    TGT,
    TGT_PORTALS,
    TGT_SHOW,
    VOL,
    ZGET_VOL,
    ZVOL1,
    GiB,
    cmd,
    tgt_bind,
    tgt_conn_delete,
    tgt_delete,
    tgt_lun,
    tgt_new,
    tgt_unbind,
    tgt_unbind_address,
    zvol_get,
)


def target(iqn: str = IQN1, path: str | None = PATH1, initiator: str = INIT0, **kw) -> dict:
    args = dict(driver="tgt", iqn=iqn, initiator=initiator, portal=PORTAL)
    if path is not None:
        args["path"] = path
    return {**args, **kw}


def facts(tid: int, iqn: str = IQN1) -> dict:
    return {"iqn": iqn, "tid": tid, "lun": 1, "portal": ["127.0.0.1", 3261]}   # PORTAL as the wire carries it


SHOW = cmd(TGT_SHOW, capture="tgt_show")
# lab capture tgt_show_nexus: one target, ACL INIT0, INIT0 connected (I_T nexus 8, conn 0)
LAB_PATH = "/mnt/tank/cap1/disk.raw"
LAB_SUB = {"iqn.2001-04.com.nas-0-0-cap1": IQN1, "iqn.2005-03.org.open-iscsi:compute-0-0": INIT0,
           "/var/lib/imgstor-lab-w/hosts/nas-0-0/mnt/tank/cap1/disk.raw": LAB_PATH,
           "127.42.3.11": "127.0.0.1"}
NEXUS = cmd(TGT_SHOW, capture="tgt_show_nexus", sub=LAB_SUB)
NEXUS_TEXT = NEXUS["stdout"]
# the same after the ACL moved to INIT1 and the connection was closed
UNBOUND_LAB = cmd(TGT_SHOW, stdout=NEXUS_TEXT.split("    I_T nexus information:\n")[0]
                  + "    I_T nexus information:\n    LUN information:\n"
                  + NEXUS_TEXT.split("    LUN information:\n")[1].replace(
                      "ACL information:\n        " + INIT0, "ACL information:\n        " + INIT1))
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
                 cmd(tgt_bind(2, INIT0)), SHOW],
         changed=True, facts=facts(2, IQN2), message=f"target {IQN2} configured for {INIT0}"),
    dict(id="address-acl-unbound-name-kept", tags={"changes"}, args=target(IQN2, PATH2, INIT1),
         note="an ACL entry went: read again for sessions the old ACL let in (none here)",
         script=[SHOW, cmd(tgt_unbind_address(2, "127.0.0.1")), SHOW],
         changed=True, facts=facts(2, IQN2)),
    dict(id="acl-moved-ends-old-sessions", tags={"changes"}, args=target(path=LAB_PATH,
                                                                      initiator=INIT1),
         note="one writer (M2): tgt checks the ACL at login only, so after the ACL moves to "
              "INIT1 the connection INIT0 still has (I_T nexus 8, connection 0) is closed; "
              "read again: gone",
         script=[NEXUS, cmd(tgt_unbind(1, INIT0)), cmd(tgt_bind(1, INIT1)), NEXUS,
                 cmd(tgt_conn_delete(1, 8, 0), capture="tgt_conn_delete"), UNBOUND_LAB],
         changed=True, facts={**facts(1), "ended": [f"{INIT0} (I_T nexus 8, connection 0)"]},
         mutating=[tgt_unbind(1, INIT0), tgt_bind(1, INIT1), tgt_conn_delete(1, 8, 0)]),
    dict(id="stale-session-ended-acl-right", tags={"changes"}, args=target(path=LAB_PATH,
                                                                        initiator=INIT1),
         note="the ACL is already INIT1's but INIT0 is still connected (an older imgstor "
              "moved the ACL without this): its connection is closed; 'can't find the "
              "session' (closed meanwhile) is fine",
         script=[cmd(TGT_SHOW, stdout=NEXUS_TEXT.replace(
                     "ACL information:\n        " + INIT0, "ACL information:\n        " + INIT1)),
                 cmd(TGT_SHOW, stdout=NEXUS_TEXT),
                 cmd(tgt_conn_delete(1, 8, 0), capture="tgt_conn_delete_missing"), UNBOUND_LAB],
         changed=True, facts_include={"ended": [f"{INIT0} (I_T nexus 8, connection 0)"]}),
    dict(id="session-survives-closing", tags={"error"}, args=target(path=LAB_PATH,
                                                                  initiator=INIT1),
         script=[NEXUS, cmd(tgt_unbind(1, INIT0)), cmd(tgt_bind(1, INIT1))]
                + [NEXUS, cmd(tgt_conn_delete(1, 8, 0))] * 3,
         raises=("Conflict", f"{INIT0} from 127.0.0.1 \\(I_T nexus 8\\) still connected")),
    dict(id="portal-added-on-storage-address", tags={"changes"}, args=target(),
         note="tgtd listens elsewhere only: a portal on the storage address is added (M4)",
         script=[cmd(TGT_PORTALS, stdout="Portal: 127.0.0.9:3260,1\n"),
                 cmd(TGT + ["--mode", "portal", "--op", "new", "--param",
                            f"portal={PORTAL}"]), SHOW],
         changed=True, facts=facts(1)),
    dict(id="wildcard-portal-refused-without-chap", tags={"error"}, args=target(),
         note="tgt's default portals (every address, usr/iscsi/iscsi_tcp.c): never removed "
              "(shared NAS), but a target guarded by the initiator name only is refused",
         script=[cmd(TGT_PORTALS, stdout="Portal: 0.0.0.0:3261,1\nPortal: :::3261,1\n")],
         raises=("Conflict", "refusing a target without CHAP: tgtd on .* listens on "
                             "0.0.0.0:3261, :::3261"), details={"reason": "wildcard-portal"}),
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
         dry_run=True, script=[SHOW, SHOW],
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
         note="'already exists' and our IQN is there now: someone else made it",
         script=[EMPTY, cmd(tgt_new(1, IQN1), capture="tgt_new_exists"), SHOW],
         raises=("AlreadyExists", "this target already exists")),
    dict(id="tid-clash-retried", tags={"changes"}, args=target(IQN3, PATH3),
         note="M11: another tgtadm user took tid 1 between our show and new (tgtd says "
              "'already exists' for a tid as for a name): read again, take the next free tid",
         script=[EMPTY, cmd(tgt_new(1, IQN3), capture="tgt_new_exists"), SHOW,
                 cmd(tgt_new(3, IQN3)), cmd(tgt_lun(3, PATH3)), cmd(tgt_bind(3, INIT0))],
         changed=True, facts=facts(3, IQN3)),
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
    dict(id="present-with-session-forced", tags={"changes"},
         args=dict(driver="tgt", iqn=IQN1, force=True),
         note="--force drops INIT0's session with the target",
         script=[cmd(TGT_SHOW, capture="tgt_show_connected"), cmd(tgt_delete(1))],
         changed=True, facts={"tid": 1},
         message=f"removed target {IQN1} (--force: ended the sessions of {INIT0} from "
                 "127.0.0.1 (I_T nexus 7))"),
    dict(id="in-use-refused", tags={"error"}, args=dict(driver="tgt", iqn=IQN1),
         note="M9, userspace initiator: a VM's qemu logged in to the target holds the disk",
         script=[cmd(TGT_SHOW, capture="tgt_show_connected")],
         raises=("Conflict", f"target {IQN1} is in use by {INIT0} from 127.0.0.1 "
                             "\\(I_T nexus 7\\).*--force"),
         details={"reason": "in-use", "initiators": [INIT0]}, mutating=[]),
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

def _with_portals(sc: dict) -> dict:
    """nas.ensure_target with tgt reads tgtd's portals first (M4): scenarios that reach
    tgtd and do not script the portals themselves get the usual answer (tgtd listens on
    PORTAL) in front."""
    script = sc["script"]
    if (sc["args"].get("driver") == "tgt" and script
            and not any(c["argv"] == TGT_PORTALS for c in script)):
        i = next((i for i, c in enumerate(script) if c["argv"] == TGT_SHOW), None)
        if i is not None:
            script = script[:i] + [PORTALS] + script[i:]
    return dict(sc, script=script)


SCENARIOS = ([_with_portals(dict(s, step="nas.ensure_target")) for s in ENSURE_TARGET]
             + [dict(s, step="nas.remove_target") for s in REMOVE_TARGET]
             + [dict(s, step="nas.target_facts") for s in TARGET_FACTS])
