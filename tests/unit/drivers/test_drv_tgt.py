"""tgt driver: parser fed real tgtadm output captured here (tests/fixtures/userspace)."""
from __future__ import annotations

import pytest
import samples

from imgstor.errors import AlreadyExists, NotFound, RemoteCommandError
from imgstor.remote.drivers import tgt
from tests.scripted import Expect, ScriptedExecutor

U = samples.userspace
IQN = "iqn.2001-04.com.nas-0-0-vm1-vol"
INIT = "iqn.1994-05.com.redhat:compute-0-0"


def test_show_empty():
    assert tgt.parse_show(U("tgt_show_empty")) == []


def test_show_two_targets():
    t1, t2 = tgt.parse_show(U("tgt_show"))
    assert (t1.tid, t1.iqn, t1.state) == (1, IQN, "ready")
    assert [it.lun for it in t1.luns] == [0, 1]
    ctl, disk = t1.luns
    assert ctl.type == "controller" and ctl.backing_store_path is None
    assert disk == tgt.Lun(1, "disk", 1074, 512, "rdwr", "/mnt/tank/vm1-vol/disk.raw")
    assert t1.acls == (INIT,)
    assert t1.accounts == () and t1.nexuses == ()
    assert t2.acls == ("127.0.0.1", "iqn.1994-05.com.redhat:compute-0-1")
    assert t2.accounts == ("chapuser",)
    assert t2.lun(1).size_mb == 67


def test_show_target_without_lun_or_acl():
    (t,) = tgt.parse_show(U("tgt_show_nolun"))
    assert t.lun(1) is None and t.acls == ()


def test_show_connected_initiator():
    (t,) = [x for x in tgt.parse_show(U("tgt_show_connected")) if x.tid == 1]
    (n,) = t.nexuses
    assert (n.initiator, n.alias, n.addresses) == (INIT, None, ("127.0.0.1",))
    assert isinstance(n.nexus, int) and n.nexus > 0   # varies between captures
    assert t.connected_initiators == (INIT,)


def test_show_after_unbind_has_no_acl():
    (t,) = [x for x in tgt.parse_show(U("tgt_show_unbound")) if x.tid == 1]
    assert t.acls == ()


def test_show_tid_prints_parameters_not_targets():
    # the quirk that makes readers use the full show
    assert tgt.parse_show(U("tgt_show_tid")) == []


def test_targets_reader_and_helpers():
    ex = ScriptedExecutor([Expect(["tgtadm", "--lld", "iscsi", "-C", "7", "--mode", "target",
                                   "--op", "show"], stdout=U("tgt_show"))])
    found = tgt.targets(ex, control_port=7)
    assert tgt.find_target(found, IQN).tid == 1
    assert tgt.find_target(found, "iqn.x") is None
    assert tgt.next_free_tid(found) == 3
    assert tgt.next_free_tid([]) == 1
    assert tgt.next_free_tid([found[1]]) == 1


def test_targets_reader_no_daemon():
    ex = ScriptedExecutor([Expect(tgt.show(control_port=8), rc=107,
                                  stderr=U("tgt_noserver", "err"))])
    with pytest.raises(RemoteCommandError, match="tgtd is not running"):
        tgt.targets(ex, control_port=8)


@pytest.mark.parametrize("name,cls", [
    ("tgt_new_exists", AlreadyExists), ("tgt_new_samename", AlreadyExists),
    ("tgt_lun_exists", AlreadyExists), ("tgt_bind_exists", AlreadyExists),
    ("tgt_lun_notarget", NotFound), ("tgt_unbind_missing", NotFound),
    ("tgt_show_missing", NotFound), ("tgt_delete_missing", NotFound),
])
def test_classify_captured(name, cls):
    assert samples.userspace_rc(name) == tgt.TGTADM_RC_ERROR
    e = RemoteCommandError("nas-0-0", ["tgtadm"], tgt.TGTADM_RC_ERROR, U(name, "err"))
    assert type(tgt.classify(e)) is cls


def test_classify_invalid_request_hint():
    e = RemoteCommandError("nas-0-0", ["tgtadm"], 22, U("tgt_lun_nofile", "err"))
    out = tgt.classify(e)
    assert type(out) is RemoteCommandError and "backing file" in out.message


def test_builders_exact_argv():
    base = ["tgtadm", "--lld", "iscsi"]
    assert tgt.new_target(1, IQN) == base + ["--mode", "target", "--op", "new", "--tid", "1",
                                             "--targetname", IQN]
    assert tgt.add_lun(1, "/dev/zvol/tank/v") == base + [
        "--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "-b", "/dev/zvol/tank/v"]
    assert tgt.bind_initiator(1, INIT, control_port=7) == base + [
        "-C", "7", "--mode", "target", "--op", "bind", "--tid", "1", "-Q", INIT]
    assert tgt.unbind_initiator(1, INIT) == base + ["--mode", "target", "--op", "unbind",
                                                    "--tid", "1", "-Q", INIT]
    assert tgt.delete_target(4) == base + ["--mode", "target", "--op", "delete", "--force",
                                           "--tid", "4"]
    assert tgt.new_account("u", "p") == base + ["--mode", "account", "--op", "new", "--user",
                                                "u", "--password", "p"]
    assert tgt.bind_account(2, "u") == base + ["--mode", "account", "--op", "bind", "--tid", "2",
                                               "--user", "u"]


def test_builders_match_the_captured_commands():
    # the capture script ran exactly these (with -C 7); their .cmd files hold the argv
    cmd = U("tgt_bind_name", "cmd").splitlines()[0]
    assert cmd == "command: " + " ".join(tgt.bind_initiator(1, INIT, control_port=7))
    cmd = U("tgt_delete", "cmd").splitlines()[0]
    assert cmd == "command: " + " ".join(tgt.delete_target(1, control_port=7))


def test_no_address_acl_builder_and_tid_zero_refused():
    assert not hasattr(tgt, "bind_address")
    with pytest.raises(ValueError):
        tgt.new_target(0, IQN)


# ---------------------------------------------------------------- connections (M2), portals (M4)
def test_show_nexus_with_connection_lab_capture():
    """Lab capture: a qemu-storage-daemon on compute-0-0 holds the LUN through libiscsi."""
    (t,) = tgt.parse_show(U("tgt_show_nexus"))
    (n,) = t.nexuses
    assert (n.nexus, n.initiator, n.alias) == (8, "iqn.2005-03.org.open-iscsi:compute-0-0", None)
    assert n.connections == (tgt.Connection(0, ("127.42.3.11",)),)
    assert n.addresses == ("127.42.3.11",)
    # the conn-mode listing of the same moment names the same session and connection
    assert "Session: 8\n    Connection: 0\n" in U("tgt_conn_show")


def test_delete_connection_argv_and_missing_session_is_notfound():
    assert tgt.delete_connection(1, 8, 0) == ["tgtadm", "--lld", "iscsi", "--mode", "conn",
                                              "--op", "delete", "--tid", "1", "--sid", "8",
                                              "--cid", "0"]
    assert samples.userspace_rc("tgt_conn_delete") == 0
    rc = samples.userspace_rc("tgt_conn_delete_missing")
    err = RemoteCommandError("nas", tgt.delete_connection(1, 8, 0), rc,
                             U("tgt_conn_delete_missing", "err"))
    assert rc == 22 and isinstance(tgt.classify(err), NotFound)


def test_portals_lab_capture_and_wildcards():
    assert tgt.parse_portals(U("tgt_portal_show")) == [("127.42.3.10", 3260)]
    # tgt's default listeners (usr/iscsi/iscsi_tcp.c: getnameinfo, no brackets)
    assert tgt.parse_portals("Portal: 0.0.0.0:3260,1\nPortal: :::3260,1\n") == [
        ("0.0.0.0", 3260), ("::", 3260)]
    assert tgt.new_portal("fd00::1", 3260)[-1] == "portal=[fd00::1]:3260"


@pytest.mark.parametrize("build", [
    lambda: tgt.add_lun(1, "/mnt/a,bstype=aio/disk.raw"),
    lambda: tgt.new_target(1, "iqn.2001-04.com.x,y"),
    lambda: tgt.bind_initiator(1, "iqn.x:a,initiator-address=1.2.3.4"),
    lambda: tgt.new_account("u,x", "p" * 12),
    lambda: tgt.new_portal("1.2.3.4,tpgt=2"),
])
def test_comma_refused_in_tgtadm_parameter_values(build):
    """L10: tgtadm folds these values into a ','-separated string that tgtd splits."""
    from imgstor.errors import UsageError
    with pytest.raises(UsageError, match="','"):
        build()
