"""qcow2 driver: qemu-img output captured here (tests/fixtures/userspace/qemu_img_*)."""
from __future__ import annotations

import pytest
import samples

from imgstor.errors import NotFound, RemoteCommandError, UsageError
from imgstor.remote.drivers import qcow2, userspace
from tests.scripted import Expect, ScriptedExecutor

U = samples.userspace
IQN = "iqn.2001-04.com.nas-0-0-vm1-vol"
INIT = "iqn.1994-05.com.redhat:compute-0-0"
OVL = "/tmp/imgstor-drivers-capture/overlay.qcow2"


def test_parse_info_overlay():
    i = qcow2.parse_info(U("qemu_img_info_overlay"))
    assert (i.filename, i.format, i.virtual_size) == (OVL, "qcow2", 1073741824)
    assert i.backing_format == "raw" and i.cluster_size == 65536 and i.actual_size == 1314816
    assert i.backing_filename == userspace.json_spec("127.0.0.1", IQN, INIT, 1, 3261)
    assert not i.dirty and not i.corrupt


def test_builders_match_captured_commands():
    spec = userspace.json_spec("127.0.0.1", IQN, INIT, 1, 3261)
    argv = qcow2.create_overlay(OVL, spec)
    assert argv == ["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", spec, OVL]
    assert qcow2.commit(OVL, progress=True) == ["qemu-img", "commit", "-p", OVL]
    assert qcow2.commit(OVL) == ["qemu-img", "commit", OVL]
    opts = userspace.image_opts("127.0.0.1", IQN, INIT, 1, 3261)
    assert qcow2.convert(opts, "/tmp/imgstor-drivers-capture/copy.raw", image_opts=True,
                         progress=True) == [
        "qemu-img", "convert", "-p", "-O", "raw", "--image-opts", opts,
        "/tmp/imgstor-drivers-capture/copy.raw"]
    assert qcow2.convert("/a.qcow2", "/b.raw", source_format="qcow2") == [
        "qemu-img", "convert", "-f", "qcow2", "-O", "raw", "/a.qcow2", "/b.raw"]
    assert qcow2.create_overlay("/o.qcow2", "/base.raw", size=1 << 30)[-1] == str(1 << 30)


def test_builders_refuse_option_like_paths():
    with pytest.raises(UsageError):
        qcow2.commit("-p")
    with pytest.raises(UsageError):
        qcow2.create_overlay("--help", "/b")


def test_info_reader_and_missing_file():
    ex = ScriptedExecutor([
        Expect(["qemu-img", "info", "--output=json", OVL], stdout=U("qemu_img_info_overlay")),
        Expect(["qemu-img", "info", "--output=json", "/tmp/imgstor-drivers-capture/nope.qcow2"],
               rc=1, stderr=U("qemu_img_info_missing", "err")),
    ])
    assert qcow2.info(ex, OVL).format == "qcow2"
    with pytest.raises(NotFound):
        qcow2.info(ex, "/tmp/imgstor-drivers-capture/nope.qcow2")


def test_info_image_opts_refused_initiator():
    opts = userspace.image_opts("127.0.0.1", IQN, "iqn.1994-05.com.redhat:compute-0-1", 1, 3261)
    ex = ScriptedExecutor([Expect(["qemu-img", "info", "--output=json", "--image-opts", opts],
                                  rc=1, stderr=U("qemu_img_info_refused", "err"))])
    with pytest.raises(NotFound) as ei:
        qcow2.info(ex, opts, image_opts=True)
    assert ei.value.details["reason"] == userspace.REASON_TARGET_OR_ACL


def test_classify_unknown_stays():
    e = RemoteCommandError("h", ["qemu-img"], 1, "qemu-img: something else")
    assert qcow2.classify(e) is e
