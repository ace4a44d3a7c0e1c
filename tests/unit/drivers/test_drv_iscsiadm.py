"""iscsiadm driver.  Parser input: samples.py (FROM DOCUMENTATION); the kernel lab's real
output is asserted in test_drv_kernel_captures.py."""
from __future__ import annotations

import pytest
import samples

from imgstor.errors import AlreadyExists, Conflict, NotFound, RemoteCommandError
from imgstor.remote.drivers import iscsiadm as ia
from imgstor.remote.protocol import parse_initiator_name
from tests.scripted import Expect, ScriptedExecutor

IQN = "iqn.2001-04.com.nas-0-0-vm1-vol"


def test_exit_codes_per_man_page():
    assert (ia.ISCSI_ERR_SESS_EXISTS, ia.ISCSI_ERR_NO_OBJS_FOUND,
            ia.ISCSI_ERR_LOGIN_AUTH_FAILED) == (15, 21, 24)
    assert ia.LOGIN_OK == (0, 15) and ia.LOGOUT_OK == (0, 21)


def test_parse_sessions():
    found = ia.parse_sessions(samples.ISCSIADM_SESSION)
    assert found[0] == ia.Session("tcp", 1, "192.168.4.4", 3260, 1,
                                  "iqn.2018-02.com.example:randomnumber", False)
    assert found[1].address == "127.43.0.10" and found[1].iqn == IQN


def test_parse_sessions_ipv6_and_empty():
    (s,) = ia.parse_sessions("tcp: [3] [fd00::10]:3260,1 iqn.2001-04.com.x (non-flash)\n")
    assert s.address == "fd00::10" and s.sid == 3
    assert ia.parse_sessions("") == []


def test_parse_session_details_disk():
    (s,) = ia.parse_session_details(samples.ISCSIADM_SESSION_P3)
    assert s.iqn.startswith("iqn.2016-09.com.openebs.jiva:pvc-")
    assert (s.address, s.port, s.tpgt, s.sid) == ("10.106.254.221", 3260, 1, 1)
    assert s.initiator_name == "iqn.1993-08.org.debian:01:c6385a9091e6"
    assert s.connection_state == "LOGGED IN" and s.session_state == "LOGGED_IN"
    assert s.disks == (ia.ScsiDisk(3, 0, 0, 0, "sdb", "running"),)


def test_read_initiator_name():
    assert parse_initiator_name(samples.INITIATORNAME_ISCSI) == \
        "iqn.1993-08.org.debian:01:c6385a9091e6"
    assert parse_initiator_name("## nothing\n") is None


def test_sessions_none_is_empty_list():
    ex = ScriptedExecutor([Expect(["iscsiadm", "-m", "session"], rc=21,
                                  stderr=samples.ISCSIADM_NO_SESSIONS_ERR)])
    assert ia.sessions(ex) == []


def test_session_details_reader():
    ex = ScriptedExecutor([Expect(["iscsiadm", "-m", "session", "-P", "3"],
                                  stdout=samples.ISCSIADM_SESSION_P3)])
    assert ia.session_details(ex)[0].disks[0].device == "sdb"


def test_builders():
    p = "127.43.0.10:3260"
    assert ia.discovery("127.43.0.10") == ["iscsiadm", "-m", "discovery", "-t", "sendtargets",
                                           "-p", p]
    assert ia.login(IQN, "127.43.0.10") == ["iscsiadm", "-m", "node", "-T", IQN, "-p", p,
                                            "--login"]
    assert ia.logout(IQN, "127.43.0.10") == ["iscsiadm", "-m", "node", "-T", IQN, "-p", p,
                                             "--logout"]
    assert ia.node_delete(IQN, "127.43.0.10") == ["iscsiadm", "-m", "node", "-T", IQN, "-p", p,
                                                  "-o", "delete"]
    chap = ia.chap_settings(IQN, "127.43.0.10", "u")
    assert chap[0][-4:] == ["-n", "node.session.auth.authmethod", "-v", "CHAP"]
    assert chap[1][-4:] == ["-n", "node.session.auth.username", "-v", "u"]
    assert len(chap) == 2       # the password goes into the record file (M5), not argv
    assert ia.login(IQN, "fd00::1")[-2] == "[fd00::1]:3260"


def test_by_path():
    assert ia.by_path_name("127.43.0.10", IQN, 1) == f"ip-127.43.0.10:3260-iscsi-{IQN}-lun-1"
    assert ia.by_path("127.43.0.10", IQN, 0) == \
        f"/dev/disk/by-path/ip-127.43.0.10:3260-iscsi-{IQN}-lun-0"


def test_login_already_done_is_success_with_ok_codes():
    ex = ScriptedExecutor([Expect(ia.login(IQN, "127.43.0.10"), rc=15,
                                  stderr="iscsiadm: default: 1 session requested, but 1 already present.\n")])
    assert ex.run(ia.login(IQN, "127.43.0.10"), ok_codes=ia.LOGIN_OK).rc == 15


@pytest.mark.parametrize("rc,stderr,cls,reason", [
    (15, "iscsiadm: default: 1 session requested, but 1 already present.", AlreadyExists, None),
    (21, "iscsiadm: No matching sessions found", NotFound, None),
    (24, "iscsiadm: Could not login to [iface: default, target: x, portal: 1.2.3.4,3260].\n"
         "iscsiadm: initiator reported error (24 - iSCSI login failed due to authorization "
         "failure)", Conflict, "access-denied"),
])
def test_classify_by_rc(rc, stderr, cls, reason):
    out = ia.classify(RemoteCommandError("compute-0-0", ["iscsiadm"], rc, stderr))
    assert type(out) is cls
    assert out.details.get("reason") == reason


def test_classify_unknown_stays():
    e = RemoteCommandError("c", ["iscsiadm"], 8, "iscsiadm: connection timed out")
    assert ia.classify(e) is e
