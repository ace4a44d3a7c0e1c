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
    assert us.inq("127.0.0.1", IQN, INIT, 1, 3261) == [
        "iscsi-inq", "-i", INIT, f"iscsi://127.0.0.1:3261/{IQN}/1"]
    assert us.readcapacity16("127.0.0.1", IQN, INIT, 1, 3261) == [
        "iscsi-readcapacity16", "-i", INIT, f"iscsi://127.0.0.1:3261/{IQN}/1"]
    assert us.ls("127.0.0.1", INIT, 3261) == ["iscsi-ls", "-i", INIT, "iscsi://127.0.0.1:3261"]


def test_argv_equal_the_captured_commands():
    assert U("iscsi_inq", "cmd").splitlines()[0] == "command: " + " ".join(
        us.inq("127.0.0.1", IQN, INIT, 1, 3261))
    assert U("iscsi_readcap16", "cmd").splitlines()[0] == "command: " + " ".join(
        us.readcapacity16("127.0.0.1", IQN, INIT, 1, 3261))


def test_parse_inq_disk_and_controller():
    i = us.parse_inq(U("iscsi_inq"))
    assert i == us.Inquiry("CONNECTED", "DIRECT_ACCESS", "IET", "VIRTUAL-DISK", "0001")
    assert us.parse_inq(U("iscsi_inq_lun0")).device_type == "STORAGE_ARRAY_CONTROLLER"
    with pytest.raises(ValueError):
        us.parse_inq("")


def test_parse_readcapacity16():
    c = us.parse_readcapacity16(U("iscsi_readcap16"))
    assert c == us.Capacity(512, 2097152, 1073741824)


def test_parse_ls_shows_only_admitted_targets():
    assert [t.iqn for t in us.parse_ls(U("iscsi_ls"))] == [
        "iqn.2001-04.com.nas-0-0-vm2-vol", IQN]
    # the other initiator is not in vm1's ACL: tgt hides the target from it
    (t,) = us.parse_ls(U("iscsi_ls_other"))
    assert t == us.LsTarget("iqn.2001-04.com.nas-0-0-vm2-vol", "127.0.0.1", 3261, 1)


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


def test_inquiry_reader_passes_chap_password_by_env_not_argv():
    seen = {}

    class Ex(ScriptedExecutor):
        def _run(self, argv, *, input, timeout, env):
            seen["env"] = env
            return super()._run(argv, input=input, timeout=timeout, env=env)

    argv = us.inq("127.0.0.1", "iqn.2001-04.com.nas-0-0-vm2-vol", INIT, 1, 3261, chap_user="chapuser")
    ex = Ex([Expect(argv, stdout=U("iscsi_inq_chap_env"))])
    i = us.inquiry(ex, "127.0.0.1", "iqn.2001-04.com.nas-0-0-vm2-vol", INIT, 1, 3261,
                   chap_user="chapuser", chap_password="chapsecret12")
    assert i.device_type == "DIRECT_ACCESS"
    assert seen["env"] == {"LIBISCSI_CHAP_PASSWORD": "chapsecret12"}
    assert not any("chapsecret12" in a for a in argv)
    # the capture proves libiscsi reads that variable
    assert "LIBISCSI_CHAP_PASSWORD=" in U("iscsi_inq_chap_env", "cmd")
    assert samples.userspace_rc("iscsi_inq_chap_env") == 0


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
