"""userspace initiator (libiscsi tools, qemu specs): real output captured against tgtd."""
from __future__ import annotations

import json

import pytest
import samples

from imgstor.errors import Conflict, NotFound, RemoteCommandError
from imgstor.remote.drivers import userspace as us
from tests.scripted import Expect, ScriptedExecutor

U = samples.userspace
IQN = "iqn.2001-04.com.nas-0-0-vm1-vol"
INIT = "iqn.1994-05.com.redhat:compute-0-0"
BAD = "iqn.1994-05.com.redhat:compute-0-1"


def err(name: str) -> RemoteCommandError:
    return RemoteCommandError("compute-0-0", ["iscsi-inq"], samples.userspace_rc(name),
                              U(name, "err"), U(name, "out"))


def test_url_and_argv():
    assert us.url("127.0.0.1", IQN, 1, 3261) == f"iscsi://127.0.0.1:3261/{IQN}/1"
    assert us.url("fd00::1", IQN) == f"iscsi://[fd00::1]:3260/{IQN}/1"
    assert us.url("10.1.0.1", IQN, chap_user="u") == f"iscsi://u@10.1.0.1:3260/{IQN}/1"
    assert us.readcapacity16("127.0.0.1", IQN, INIT, 1, 3261) == [
        "iscsi-readcapacity16", "-i", INIT, f"iscsi://127.0.0.1:3261/{IQN}/1"]


def test_argv_equal_the_captured_commands():
    assert U("iscsi_readcap16", "cmd").splitlines()[0] == "command: " + " ".join(
        us.readcapacity16("127.0.0.1", IQN, INIT, 1, 3261))


def test_parse_readcapacity16():
    c = us.parse_readcapacity16(U("iscsi_readcap16"))
    assert c == us.Capacity(512, 2097152, 1073741824)


def test_refused_initiator_looks_like_missing_target():
    for name in ("iscsi_inq_refused", "iscsi_inq_notarget", "iscsi_readcap16_refused"):
        assert samples.userspace_rc(name) == us.LIBISCSI_RC_FAILED
        out = us.classify(err(name))
        assert type(out) is NotFound and out.details["reason"] == us.REASON_TARGET_OR_ACL


def test_chap_failure_is_access_denied():
    for name in ("iscsi_inq_chap_missing", "iscsi_inq_chap_wrong", "iscsi_ls_s"):
        out = us.classify(err(name))
        assert type(out) is Conflict and out.details["reason"] == us.REASON_ACCESS_DENIED


def test_missing_lun_and_no_portal():
    out = us.classify(err("iscsi_inq_nolun"))
    assert type(out) is NotFound and out.details["reason"] == us.REASON_NO_LUN
    out = us.classify(err("iscsi_inq_noportal"))
    assert type(out) is RemoteCommandError and "no iSCSI portal" in out.message


def test_qemu_refusal_text_classified_the_same():
    e = RemoteCommandError("compute-0-0", ["qemu-img"], 1, U("qemu_img_info_refused", "err"))
    assert type(us.classify(e)) is NotFound
    e = RemoteCommandError("compute-0-0", ["qemu-img"], 1, U("qemu_img_info_default_iqn", "err"))
    assert type(us.classify(e)) is NotFound


def test_read_capacity_reader_refused_raises_not_found():
    argv = us.readcapacity16("127.0.0.1", IQN, BAD, 1, 3261)
    ex = ScriptedExecutor([Expect(argv, rc=10, stderr=U("iscsi_readcap16_refused", "err"))])
    with pytest.raises(NotFound, match="Target not found"):
        us.read_capacity(ex, "127.0.0.1", IQN, BAD, 1, 3261)


def test_image_opts_matches_captured_command():
    opts = us.image_opts("127.0.0.1", IQN, INIT, 1, 3261)
    assert opts == ("driver=iscsi,transport=tcp,portal=127.0.0.1:3261,"
                    f"target={IQN},lun=1,initiator-name={INIT}")
    assert U("qemu_img_info_iscsi", "cmd").splitlines()[0].replace("\\,", ",").endswith(opts)


def test_image_opts_doubles_commas():
    assert "target=a,,b" in us.image_opts("h", "a,b", INIT)


def test_json_spec_matches_captured_backing():
    spec = us.json_spec("127.0.0.1", IQN, INIT, 1, 3261)
    info = json.loads(U("qemu_img_info_overlay"))
    assert info["full-backing-filename"] == spec
    assert json.loads(spec[5:]) == {"driver": "raw", "file": {
        "driver": "iscsi", "transport": "tcp", "portal": "127.0.0.1:3261", "target": IQN,
        "lun": 1, "initiator-name": INIT}}
