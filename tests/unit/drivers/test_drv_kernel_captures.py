"""Driver parsers and classifiers on REAL kernel-lab output (tests/fixtures/kernel/).

QEMU guests with Debian 12's kernel: OpenZFS 2.1.11, targetcli 2.1.53 / rtslib-fb,
open-iscsi 2.1.8, dmsetup.  Hosts: nas-0-0 127.43.0.10 (target
iqn.2001-04.com.nas-0-0-vm1-vol on zvol tank/vm1-vol), compute-0-0 127.43.0.11 (in the
ACL), compute-0-1 127.43.0.12 (the intruder).  Every value asserted below is the one the
real tool printed in the named capture; the documentation samples keep their own tests
(test_drv_*.py with samples.py).
"""
from __future__ import annotations

import json
import re
import shlex
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgstor.errors import AlreadyExists, Conflict, NotFound, RemoteCommandError
from imgstor.remote.drivers import dm, lio, zfs
from imgstor.remote.drivers import iscsiadm as ia
from imgstor.remote.protocol import parse_initiator_name
from tests.scripted import Expect, ScriptedExecutor

KERNEL = Path(__file__).resolve().parents[2] / "fixtures" / "kernel"

NAS, COMPUTE = "127.43.0.10", "127.43.0.11"
IQN = "iqn.2001-04.com.nas-0-0-vm1-vol"
INIT = "iqn.2005-03.org.open-iscsi:compute-0-0"
ZVOL_DEV = "/dev/zvol/tank/vm1-vol"
SECTORS = 131072                       # 64 MiB zvol in 512-byte sectors
VOLSIZE = 64 * 1024 * 1024


# ------------------------------------------------------------------ fixture loader
@dataclass(frozen=True)
class Capture:
    name: str
    host: str
    command: str                       # as run by the remote shell
    rc: int
    out: str
    err: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command)

    def error(self) -> RemoteCommandError:
        """The RemoteCommandError an executor raises for this capture."""
        assert self.rc != 0, f"{self.name} did not fail"
        return RemoteCommandError(self.host, self.argv, self.rc, self.err, self.out)

    def expect(self) -> Expect:
        return Expect(self.argv, rc=self.rc, stdout=self.out, stderr=self.err)


def cap(name: str) -> Capture:
    meta = (KERNEL / f"{name}.cmd").read_text()
    host = re.search(r"^host: (.*)$", meta, re.M).group(1).strip()
    rc = int(re.search(r"^rc: (-?\d+)$", meta, re.M).group(1))
    command = meta[meta.index("command: ") + len("command: "):re.search(r"^rc: ", meta, re.M).start()]
    return Capture(name, host, command.strip(), rc,
                   (KERNEL / f"{name}.out").read_text(), (KERNEL / f"{name}.err").read_text())


def test_loader_reads_cmd_files():
    c = cap("iscsiadm_login_refused")
    assert (c.host, c.rc) == ("compute-0-1", 24)
    assert c.argv == ["iscsiadm", "-m", "node", "-T", IQN, "-p", f"{NAS}:3260", "--login"]
    poll = cap("dmsetup_merge_poll")                  # multi-line command
    assert poll.rc == 0 and poll.argv[:2] == ["bash", "-c"] and poll.argv[-1] == "vm1-vol-snap"


# ================================================================== iscsiadm
def test_iscsiadm_exit_codes_match_real_runs():
    # iscsiadm(8) EXIT STATUS, confirmed by the real exit codes:
    assert cap("iscsiadm_login_again").rc == ia.ISCSI_ERR_SESS_EXISTS == 15
    assert cap("iscsiadm_logout_nosession").rc == ia.ISCSI_ERR_NO_OBJS_FOUND == 21
    assert cap("iscsiadm_session_none").rc == ia.ISCSI_ERR_NO_OBJS_FOUND
    assert cap("iscsiadm_login_refused").rc == ia.ISCSI_ERR_LOGIN_AUTH_FAILED == 24
    assert cap("iscsiadm_login_again").rc in ia.LOGIN_OK
    assert cap("iscsiadm_logout_nosession").rc in ia.LOGOUT_OK
    assert cap("iscsiadm_login_refused").rc not in ia.LOGIN_OK


def test_parse_sessions_real():
    assert ia.parse_sessions(cap("iscsiadm_session").out) == [
        ia.Session("tcp", 1, NAS, 3260, 1, IQN, False)]
    assert ia.parse_sessions(cap("iscsiadm_session_none").out) == []


def test_parse_session_details_real():
    (s,) = ia.parse_session_details(cap("iscsiadm_session_P3").out)
    assert s == ia.SessionDetail(IQN, NAS, 3260, 1, 1, INIT, "LOGGED IN", "LOGGED_IN",
                                 (ia.ScsiDisk(0, 0, 0, 0, "sda", "running"),))


def test_read_initiator_name_real():
    assert parse_initiator_name(cap("initiatorname").out) == INIT


def test_by_path_matches_the_udev_link():
    links = {m.group(1): m.group(2)
             for m in re.finditer(r"(\S+) -> \.\./\.\./(\S+)$", cap("ls_disk_by_path").out, re.M)}
    assert links[ia.by_path_name(NAS, IQN, 0)] == "sda"
    (s,) = ia.parse_session_details(cap("iscsiadm_session_P3").out)
    (disk,) = s.disks
    assert disk.lun == 0 and disk.device == links[ia.by_path_name(NAS, IQN, 0)]


def test_iscsiadm_builders_match_real_commands():
    assert cap("iscsiadm_login").argv == ia.login(IQN, NAS)
    assert cap("iscsiadm_logout").argv == ia.logout(IQN, NAS)
    assert cap("iscsiadm_login_refused").argv == ia.login(IQN, NAS)


def test_iscsiadm_readers_on_real_output():
    ex = ScriptedExecutor([cap("iscsiadm_session").expect(),
                           cap("iscsiadm_session_P3").expect(),
                           cap("iscsiadm_session_none").expect()])
    assert ia.sessions(ex)[0].iqn == IQN
    (s,) = ia.session_details(ex)
    assert (s.iqn, [(d.lun, d.device) for d in s.disks]) == (IQN, [(0, "sda")])
    assert ia.sessions(ex) == []          # rc 21 "No active sessions." is no sessions
    ex.assert_done()


def test_classify_login_refused_real():
    e = ia.classify(cap("iscsiadm_login_refused").error())
    assert type(e) is Conflict and e.details["reason"] == "access-denied"
    assert e.details["rc"] == 24 and e.details["host"] == "compute-0-1"
    # the message says why, not just "Could not log into all portals"
    assert "authorization failure" in e.message


def test_classify_login_refused_by_text_is_not_session_exists():
    # The refused login's stderr also reports "(15 - session exists)" (iscsiadm retried);
    # classified by text alone (rc not one of iscsiadm's), it must still be access-denied.
    c = cap("iscsiadm_login_refused")
    e = ia.classify(RemoteCommandError(c.host, c.argv, 1, c.err))
    assert type(e) is Conflict and e.details["reason"] == "access-denied"


def test_classify_login_again_real():
    e = ia.classify(cap("iscsiadm_login_again").error())
    assert type(e) is AlreadyExists and e.details["rc"] == 15
    # and with the documented ok_codes it is no error at all
    ex = ScriptedExecutor([cap("iscsiadm_login_again").expect()])
    assert ex.run(ia.login(IQN, NAS), ok_codes=ia.LOGIN_OK).rc == 15


@pytest.mark.parametrize("name", ["iscsiadm_logout_nosession", "iscsiadm_session_none"])
def test_classify_nothing_there_real(name):
    e = ia.classify(cap(name).error())
    assert type(e) is NotFound and e.details["rc"] == 21


def test_logout_nosession_is_success_with_ok_codes():
    ex = ScriptedExecutor([cap("iscsiadm_logout_nosession").expect()])
    assert ex.run(ia.logout(IQN, NAS), ok_codes=ia.LOGOUT_OK).rc == 21


# ================================================================== LIO
EXPECTED_TARGET = lio.LioTarget(IQN, (lio.LioTpg(
    tag=1, enabled=True, generate_node_acls=False, authentication=False,
    luns=(lio.LioLun(0, "block", "vm1-vol", ZVOL_DEV),),
    acls=(lio.LioAcl(INIT, (0,), None),),
    portals=(lio.Portal(NAS, 3260),)),))


def test_parse_targetcli_ls_real():
    (t,) = lio.parse_targetcli_ls(cap("targetcli_ls_iscsi").out)
    assert t == EXPECTED_TARGET
    assert tuple(a.initiator for g in t.tpgs for a in g.acls) == (INIT,)
    assert tuple(p for g in t.tpgs for p in g.portals) == (lio.Portal(NAS, 3260),)
    # the NAS's storage address, never targetcli's default 0.0.0.0 portal
    assert all(p.ip not in ("0.0.0.0", "::") for g in t.tpgs for p in g.portals)
    assert lio.find_target([t], IQN) is t


def test_parse_targetcli_ls_empty_real():
    assert lio.parse_targetcli_ls(cap("targetcli_ls_iscsi_empty").out) == []


@pytest.mark.parametrize("name", ["targetcli_ls_acls", "targetcli_ls_acls_session",
                                  "targetcli_ls_backstores"])
def test_parse_targetcli_ls_other_subtrees_have_no_targets(name):
    # `ls` of a subtree without the /iscsi node: nothing to mistake for a target
    assert lio.parse_targetcli_ls(cap(name).out) == []


def test_nas_listens_on_storage_address_only():
    listen = re.findall(r"^LISTEN\s+\d+\s+\d+\s+(\S+)\s", cap("ss_listen_nas").out, re.M)
    assert f"{NAS}:3260" in listen
    assert not any(a.endswith(":3260") and not a.startswith(NAS) for a in listen)


class _FakeTPG(types.SimpleNamespace):
    def get_attribute(self, name):
        return self.attributes[name]          # rtslib-fb raises on an unknown attribute


def fake_root(dump: dict):
    """An object shaped like rtslib-fb's RTSRoot, built from the lab's rtslib_dump JSON
    (same attribute names: targets, wwn, fabric_module.name, tpgs, tag, enable, luns,
    storage_object.plugin/name/udev_path, node_acls, node_wwn, mapped_luns, mapped_lun,
    chap_userid, network_portals, ip_address, port, get_attribute)."""
    ns = types.SimpleNamespace
    sos = {b["name"]: ns(name=b["name"], plugin=b["plugin"], udev_path=b["udev_path"])
           for b in dump["backstores"]}
    targets = []
    for t in dump["targets"]:
        tpgs = []
        for g in t["tpgs"]:
            luns = [ns(lun=it["lun"], storage_object=sos[it["storage_object"]]) for it in g["luns"]]
            acls = [ns(node_wwn=a["node_wwn"], chap_userid="",   # rtslib: "" when unset
                       mapped_luns=[ns(mapped_lun=m["mapped_lun"]) for m in a["mapped_luns"]])
                    for a in g["acls"]]
            portals = [ns(ip_address=p["ip_address"], port=p["port"]) for p in g["portals"]]
            tpgs.append(_FakeTPG(tag=g["tag"], enable=g["enable"], attributes=g["attributes"],
                                 luns=luns, node_acls=acls, network_portals=portals))
        targets.append(ns(wwn=t["wwn"], fabric_module=ns(name=t["fabric"]), tpgs=tpgs))
    return ns(targets=targets, storage_objects=list(sos.values()))


@pytest.mark.parametrize("name", ["rtslib_dump", "rtslib_dump_session"])
def test_rts_targets_real_structure(name):
    dump = json.loads(cap(name).out)
    assert dump["backstores"][0]["size"] == VOLSIZE
    assert lio.rts_targets(fake_root(dump)) == [EXPECTED_TARGET]


def test_rts_targets_empty_real():
    assert lio.rts_targets(fake_root(json.loads(cap("rtslib_dump_empty").out))) == []


def test_both_lio_backends_describe_the_target_alike():
    # the same target, read through rtslib and through `targetcli ls /iscsi`
    assert (lio.rts_targets(fake_root(json.loads(cap("rtslib_dump").out)))
            == lio.parse_targetcli_ls(cap("targetcli_ls_iscsi").out))


def test_targetcli_reader_on_real_output():
    ex = ScriptedExecutor([cap("targetcli_ls_iscsi").expect()])
    assert lio.targetcli_targets(ex) == [EXPECTED_TARGET]
    ex.assert_done()


def test_classify_targetcli_create_exists_real():
    c = cap("targetcli_create_exists")
    assert c.argv == lio.targetcli_create_target(
        iqn=IQN, device=ZVOL_DEV, backstore="vm1-vol", portal_ip=NAS, initiator=INIT)[2]
    e = lio.classify(c.error())
    assert type(e) is AlreadyExists and e.details["rc"] == 1
    assert "This Target already exists in configFS" in e.message


def test_targetcli_delete_commands_match_real_runs():
    plan = lio.targetcli_delete_target(IQN, backstore="vm1-vol")
    assert plan[0] == cap("targetcli_delete_target").argv
    assert plan[1] == cap("targetcli_delete_backstore").argv
    assert cap("targetcli_delete_target").out.strip() == f"Deleted Target {IQN}."
    assert cap("targetcli_delete_backstore").out.strip() == "Deleted storage object vm1-vol."


def test_targetcli_create_plan_against_real_batch():
    plan = lio.targetcli_create_target(iqn=IQN, device=ZVOL_DEV, backstore="vm1-vol",
                                       portal_ip=NAS, initiator=INIT)
    # the global the plan sets first, read back on the NAS
    assert plan[0][-1] == cap("targetcli_get_global").out.strip() == \
        "auto_add_default_portal=false"
    assert lio.parse_targetcli_get(cap("targetcli_get_global").out,
                                   "auto_add_default_portal") == "false"
    out = cap("targetcli_export_batch").out
    assert f"Created network portal {NAS}:3260." in out and "0.0.0.0" not in out
    assert f"Created block storage object vm1-vol using {ZVOL_DEV}." in out
    assert f"Created Node ACL for {INIT}" in out


# ================================================================== device-mapper
SNAP_ARGS = ("8:0", "230:0", "P", "16")       # origin sda (8:0), COW zd0 (230:0)


def test_parse_table_all_devices_real():
    assert dm.parse_table(cap("dmsetup_table_all_snapshot").out) == [
        dm.Device("vm1-vol-snap", (dm.Segment(0, SECTORS, "snapshot", SNAP_ARGS),))]


@pytest.mark.parametrize("name,target,args", [
    ("dmsetup_table_snapshot", "snapshot", SNAP_ARGS),
    ("dmsetup_table_merge", "snapshot-merge", ("230:16", "230:0", "P", "16")),
    ("dmsetup_table_linear", "linear", ("230:16", "0")),
])
def test_parse_table_one_device_real(name, target, args):
    (d,) = dm.parse_table(cap(name).out)
    assert d == dm.Device(None, (dm.Segment(0, SECTORS, target, args),))
    assert d.target == target and d.sectors == SECTORS


def test_dm_builders_match_real_commands():
    assert cap("dmsetup_create_snapshot").argv == dm.create_snapshot(
        "vm1-vol-snap", "/dev/sda", "/dev/zvol/tank/vm1-vol-temp-write", SECTORS)
    assert cap("dmsetup_remove").argv == dm.remove("vm1-vol-snap")


@pytest.mark.parametrize("name,target,st,done", [
    ("dmsetup_status_snapshot", "snapshot", dm.SnapshotStatus(16448, SECTORS, 64), False),
    ("dmsetup_status_merging", "snapshot-merge", dm.SnapshotStatus(16448, SECTORS, 48), False),
    ("dmsetup_status_merged", "snapshot-merge", dm.SnapshotStatus(32, SECTORS, 32), True),
    ("dmsetup_status_merged_again", "snapshot-merge", dm.SnapshotStatus(32, SECTORS, 32), True),
])
def test_snapshot_status_real(name, target, st, done):
    (d,) = dm.parse_status(cap(name).out)
    assert d.name is None and d.target == target and d.sectors == SECTORS
    got = dm.parse_snapshot_status(d.segments[0])
    assert got == st and got.ok
    assert dm.parse_snapshot_status(cap(name).out) == st
    assert dm.merge_done(got) is done


def test_merge_poll_lines_real():
    # the lab's poll loop printed the first status while merging and the final one
    lines = dict(it.split("=", 1) for it in cap("dmsetup_merge_poll").out.splitlines())
    assert int(lines["polls"]) == 3
    mid, done = (dm.parse_snapshot_status(lines[k]) for k in ("mid", "done"))
    assert not dm.merge_done(mid) and dm.merge_done(done)
    assert lines["mid"].strip() == cap("dmsetup_status_merging").out.strip()
    assert lines["done"].strip() == cap("dmsetup_status_merged").out.strip()


def test_status_linear_real():
    (d,) = dm.parse_status(cap("dmsetup_status_linear").out)   # "0 131072 linear " (trailing blank)
    assert d.segments == (dm.Segment(0, SECTORS, "linear", ()),)
    with pytest.raises(ValueError, match="not a snapshot status"):
        dm.parse_snapshot_status(d.segments[0])


def test_dm_readers_on_real_output():
    ex = ScriptedExecutor([cap("dmsetup_status_merged").expect(),
                           cap("dmsetup_table_merge").expect(),
                           cap("dmsetup_table_all_snapshot").expect()])
    (d,) = dm.status(ex, "vm1-vol-snap")
    assert dm.merge_done(dm.parse_snapshot_status(d.segments[0]))
    assert dm.table(ex, "vm1-vol-snap")[0].target == "snapshot-merge"
    assert dm.table(ex)[0].name == "vm1-vol-snap"
    ex.assert_done()


def test_classify_dm_create_exists_real():
    c = cap("dmsetup_create_exists")
    e = dm.classify(c.error())
    assert type(e) is AlreadyExists and "vm1-vol-snap" in e.message


@pytest.mark.parametrize("name", ["dmsetup_remove_missing", "dmsetup_status_missing"])
def test_classify_dm_missing_real(name):
    e = dm.classify(cap(name).error())
    assert type(e) is NotFound and e.details["rc"] == 1


def test_dm_status_reader_missing_real():
    ex = ScriptedExecutor([cap("dmsetup_status_missing").expect()])
    with pytest.raises(NotFound):
        dm.status(ex, "nope")


# ================================================================== ZFS (OpenZFS 2.1.11)
@pytest.mark.parametrize("name,available", [("zfs_get_all", 872292352),
                                            ("zfs_get_all_userprops", 872270848)])
def test_parse_get_all_real(name, available):
    p = zfs.parse_get(cap(name).out)
    assert p["type"] == zfs.Property("type", "volume", None)
    assert p["volsize"] == zfs.Property("volsize", "67108864", "local")
    assert p["volsize"].as_int() == VOLSIZE
    assert p["used"].as_int() == 12288 and p["referenced"].as_int() == 12288
    assert p["available"].as_int() == available
    assert p["volblocksize"] == zfs.Property("volblocksize", "8192", "default")
    assert p["creation"].as_int() == 1795376953
    assert p["guid"].value == "6496117677027715509"
    assert p["snapshot_limit"].as_int() == 18446744073709551615      # "none", with -p
    assert p["compression"] == zfs.Property("compression", "off", "default")
    assert p["pbkdf2iters"].value == "0"


def test_parse_get_all_userprops_real():
    p = zfs.parse_get(cap("zfs_get_all_userprops").out)
    assert p["imgstor:mode"] == zfs.Property("imgstor:mode", "direct", "local")
    assert p["imgstor:host"] == zfs.Property("imgstor:host", "compute-0-0", "local")
    assert p["imgstor:target"] == zfs.Property("imgstor:target", IQN, "local")
    assert "imgstor:mode" not in zfs.parse_get(cap("zfs_get_all").out)


def test_parse_get_userprops_real():
    p = zfs.parse_get(cap("zfs_get_userprops").out)
    assert p == {
        "imgstor:host": zfs.Property("imgstor:host", "compute-0-0", "local"),
        "imgstor:target": zfs.Property("imgstor:target", IQN, "local"),
        "imgstor:mode": zfs.Property("imgstor:mode", "direct", "local"),
        "imgstor:unset": zfs.Property("imgstor:unset", None, None),    # "-" / "-"
    }


def test_get_props_reader_matches_real_command():
    c = cap("zfs_get_userprops")
    ex = ScriptedExecutor([c.expect()])
    p = zfs.get_props(ex, "tank/vm1-vol",
                      ["imgstor:host", "imgstor:target", "imgstor:mode", "imgstor:unset"])
    assert p["imgstor:target"].value == IQN and p["imgstor:unset"].value is None
    ex.assert_done()


def test_parse_pools_real():
    assert zfs.parse_pools(cap("zpool_list_o").out, exact=True) == [
        zfs.Pool("tank", 1006632960, 17142272, 989490688, "ONLINE")]
    assert zfs.parse_pools(cap("zpool_list").out, exact=True,
                           fields=zfs.POOL_DEFAULT_FIELDS) == [
        zfs.Pool("tank", 1006632960, 17142272, 989490688, "ONLINE")]
    with pytest.raises(ValueError, match="unexpected zpool list line"):
        zfs.parse_pools(cap("zpool_list").out, exact=True)


def test_parse_capabilities_real():
    c = cap("zfs_version")
    caps = zfs.parse_capabilities(c.rc, c.out, "")
    assert caps == zfs.Capabilities("openzfs", "zfs-2.1.11-1+deb12u1", None, parsable=True,
                                    zvols=True, resume=True, send_flags=True)


def test_zfs_readers_on_real_output():
    ex = ScriptedExecutor([cap("zfs_version").expect(), cap("zpool_list_o").expect()])
    caps = zfs.capabilities(ex)
    assert caps.flavor == "openzfs"
    assert zfs.pools(ex, caps=caps)[0].size == 1006632960
    ex.assert_done()


@pytest.mark.parametrize("name", ["zfs_get_missing", "zfs_list_missing"])
def test_classify_zfs_missing_real(name):
    e = zfs.classify(cap(name).error())
    assert type(e) is NotFound
    assert e.message == "nas-0-0: cannot open 'tank/nope': dataset does not exist"


def test_classify_zfs_create_exists_real():
    e = zfs.classify(cap("zfs_create_exists").error())
    assert type(e) is AlreadyExists
    assert e.message == "nas-0-0: cannot create 'tank/vm1-vol': dataset already exists"


def test_classify_zfs_destroy_busy_snapshots_real():
    c = cap("zfs_destroy_busy_snapshots")
    assert c.argv == zfs.destroy("tank/vm1-vol")
    e = zfs.classify(c.error())
    assert type(e) is Conflict
    assert e.message == "nas-0-0: cannot destroy 'tank/vm1-vol': volume has children"
    assert "tank/vm1-vol@imgstor-sync1" in e.details["stderr"]
