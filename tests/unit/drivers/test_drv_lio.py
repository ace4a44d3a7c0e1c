"""lio driver: the rtslib backend against a fake rtslib module (same names and attributes
as rtslib-fb's RTSRoot/Target/TPG/LUN/NodeACL/MappedLUN/NetworkPortal/BlockStorageObject);
the targetcli parser against samples.py (FROM DOCUMENTATION; the real output is asserted in
test_drv_kernel_captures.py)."""
from __future__ import annotations

import types

import pytest
import samples

from imgstor.errors import AlreadyExists, NotFound, RemoteCommandError, UsageError
from imgstor.remote.drivers import lio
from tests.scripted import Expect, ScriptedExecutor

IQN = "iqn.2001-04.com.nas-0-0-vm1-vol"
INIT = "iqn.1994-05.com.redhat:compute-0-0"
DEV = "/dev/zvol/tank/vm1-vol"


# ------------------------------------------------------------------ a fake rtslib-fb
def make_fake(fail_on: str | None = None):
    state = types.SimpleNamespace(targets=[], sos=[], saved=0)

    def maybe_fail(what):
        if fail_on == what:
            raise RuntimeError(f"configfs refused {what}")

    class Obj:
        def delete(self):
            self._list.remove(self)

    class BlockStorageObject(Obj):
        plugin = "block"

        def __init__(self, name, dev=None):
            maybe_fail("so")
            self.name, self.udev_path, self._list = name, dev, state.sos
            state.sos.append(self)

    class FabricModule:
        def __init__(self, name):
            self.name = name

    class Target(Obj):
        def __init__(self, fabric, wwn, mode="any"):
            self.fabric_module, self.wwn, self.tpgs, self._list = fabric, wwn, [], state.targets
            state.targets.append(self)

    class TPG:
        def __init__(self, target, tag, mode="any"):
            self.tag, self.enable, self.luns, self.node_acls = tag, False, [], []
            self.network_portals, self.attrs = [], {}
            target.tpgs.append(self)

        def set_attribute(self, k, v):
            maybe_fail("attr")
            self.attrs[k] = v

        def get_attribute(self, k):
            return self.attrs[k]

    class LUN:
        def __init__(self, tpg, lun, storage_object=None):
            self.lun, self.storage_object = lun, storage_object
            tpg.luns.append(self)

    class NetworkPortal:
        def __init__(self, tpg, ip, port, mode="any"):
            maybe_fail("portal")
            self.ip_address, self.port = ip, port
            tpg.network_portals.append(self)

    class NodeACL:
        def __init__(self, tpg, wwn, mode="any"):
            self.node_wwn, self.mapped_luns, self.chap_userid, self.chap_password = wwn, [], "", ""
            tpg.node_acls.append(self)

    class MappedLUN:
        def __init__(self, acl, mapped_lun, tpg_lun):
            self.mapped_lun, self.tpg_lun = mapped_lun, tpg_lun
            acl.mapped_luns.append(self)

    class RTSRoot:
        @property
        def targets(self):
            return list(state.targets)

        @property
        def storage_objects(self):
            return list(state.sos)

        def save_to_file(self):
            state.saved += 1

    lib = types.SimpleNamespace(RTSRoot=RTSRoot, FabricModule=FabricModule, Target=Target,
                                TPG=TPG, LUN=LUN, NetworkPortal=NetworkPortal, NodeACL=NodeACL,
                                MappedLUN=MappedLUN, BlockStorageObject=BlockStorageObject)
    return lib, state


def create(lib, **kw):
    args = dict(iqn=IQN, device=DEV, backstore="vm1-vol", portal_ip="127.43.0.10",
                initiator=INIT)
    args.update(kw)
    return lio.rts_create_target(lib, **args)


def test_rts_create_target_shape():
    lib, state = make_fake()
    t = create(lib)
    (tpg,) = t.tpgs
    assert tpg.tag == 1 and tpg.enabled is True
    assert tpg.generate_node_acls is False and tpg.authentication is False
    assert tpg.luns == (lio.LioLun(0, "block", "vm1-vol", DEV),)
    assert tpg.portals == (lio.Portal("127.43.0.10", 3260),)
    assert tpg.acls == (lio.LioAcl(INIT, (0,), None),)
    assert tuple(a.initiator for g in t.tpgs for a in g.acls) == (INIT,)


def test_rts_create_with_chap():
    lib, state = make_fake()
    t = create(lib, chap=lio.Chap("u1", "s3cret"))
    assert t.tpgs[0].authentication is True
    assert t.tpgs[0].acls[0].chap_userid == "u1"
    assert state.targets[0].tpgs[0].node_acls[0].chap_password == "s3cret"


@pytest.mark.parametrize("ip", ["0.0.0.0", "::", ""])
def test_rts_refuses_wildcard_portal(ip):
    lib, state = make_fake()
    with pytest.raises(UsageError):
        create(lib, portal_ip=ip)
    assert state.targets == [] and state.sos == []


def test_rts_existing_target_is_already_exists():
    lib, state = make_fake()
    create(lib)
    with pytest.raises(AlreadyExists):
        create(lib)


@pytest.mark.parametrize("where", ["portal", "attr"])
def test_rts_create_cleans_up_on_failure(where):
    lib, state = make_fake(fail_on=where)
    with pytest.raises(RuntimeError):
        create(lib)
    assert state.targets == [] and state.sos == []


def test_rts_delete_and_save():
    lib, state = make_fake()
    create(lib)
    assert lio.rts_delete_target(lib, IQN, backstore="vm1-vol") is True
    assert state.targets == [] and state.sos == []
    assert lio.rts_delete_target(lib, IQN, backstore="vm1-vol") is False
    lio.rts_save_config(lib)
    assert state.saved == 1


def test_rts_targets_skips_other_fabrics():
    lib, state = make_fake()
    create(lib)
    state.targets[0].fabric_module.name = "loopback"
    assert lio.rts_targets(lib.RTSRoot()) == []


# ------------------------------------------------------------------ targetcli
def test_parse_targetcli_ls():
    found = lio.parse_targetcli_ls(samples.TARGETCLI_LS_ISCSI)
    a, b = found
    assert a.iqn == "iqn.2003-01.org.alpine.05"
    (tpg,) = a.tpgs
    assert tpg.tag == 50 and tpg.generate_node_acls is True and tpg.authentication is False
    assert [it.udev_path for it in tpg.luns] == ["/target/05/00", "/target/05/01"]
    assert tpg.luns[0].plugin == "fileio" and tpg.luns[0].storage_object == "05-00"
    assert tpg.portals == (lio.Portal("192.168.122.34", 3260), lio.Portal("192.168.122.35", 3260))
    (tpg,) = b.tpgs
    assert tpg.generate_node_acls is False
    assert tpg.acls == (lio.LioAcl("iqn.2017-05.com.master:ip149", (0,)),)
    assert tpg.luns == (lio.LioLun(0, "block", "sdb1_iscsi", "/dev/vg_iscsi/lv_iscsi"),)
    assert tpg.portals == (lio.Portal("0.0.0.0", 3260),)   # what we never create
    assert lio.find_target(found, b.iqn) is b


def test_parse_targetcli_ls_empty():
    assert lio.parse_targetcli_ls("o- iscsi ........ [Targets: 0]\n") == []
    assert lio.parse_targetcli_ls("") == []


def test_targetcli_targets_reader():
    ex = ScriptedExecutor([Expect(["targetcli", "ls", "/iscsi"], stdout=samples.TARGETCLI_LS_ISCSI)])
    assert lio.targetcli_targets(ex)


def test_targetcli_plan_exact():
    plan = lio.targetcli_create_target(iqn=IQN, device=DEV, backstore="vm1-vol",
                                       portal_ip="127.43.0.10", initiator=INIT)
    tpg = f"/iscsi/{IQN}/tpg1"
    assert plan == [
        ["targetcli", "set", "global", "auto_add_default_portal=false"],
        ["targetcli", "/backstores/block", "create", "name=vm1-vol", f"dev={DEV}"],
        ["targetcli", "/iscsi", "create", IQN],
        ["targetcli", f"{tpg}/luns", "create", "/backstores/block/vm1-vol", "lun=0"],
        ["targetcli", f"{tpg}/portals", "create", "127.43.0.10", "3260"],
        ["targetcli", f"{tpg}/acls", "create", INIT],
        ["targetcli", tpg, "set", "attribute", "generate_node_acls=0", "authentication=0"],
        ["targetcli", "saveconfig"],
    ]


def test_targetcli_plan_chap_and_delete():
    plan = lio.targetcli_create_target(iqn=IQN, device=DEV, backstore="vm1-vol",
                                       portal_ip="127.43.0.10", initiator=INIT,
                                       chap=lio.Chap("u1", "s3cret"))
    assert plan[6][-1] == "authentication=1"
    assert plan[7] == ["targetcli", f"/iscsi/{IQN}/tpg1/acls/{INIT}", "set", "auth",
                       "userid=u1", "password=s3cret"]
    assert lio.targetcli_delete_target(IQN, backstore="vm1-vol") == [
        ["targetcli", "/iscsi", "delete", IQN],
        ["targetcli", "/backstores/block", "delete", "vm1-vol"],
        ["targetcli", "saveconfig"]]


@pytest.mark.parametrize("kw", [{"portal_ip": "0.0.0.0"}, {"initiator": "iqn.x y"},
                                {"backstore": "a b"}, {"device": "-x"}])
def test_targetcli_plan_refuses(kw):
    args = dict(iqn=IQN, device=DEV, backstore="vm1-vol", portal_ip="127.43.0.10", initiator=INIT)
    args.update(kw)
    with pytest.raises(UsageError):
        lio.targetcli_create_target(**args)


def test_classify():
    e = RemoteCommandError("nas", ["targetcli"], 1, samples.TARGETCLI_NO_DBUS_ERR)
    out = lio.classify(e)
    assert type(out) is RemoteCommandError and "D-Bus" in out.message
    e = RemoteCommandError("nas", ["targetcli"], 1, "This Target already exists in configFS")
    assert type(lio.classify(e)) is AlreadyExists
    e = RemoteCommandError("nas", ["targetcli"], 1, "No such path /iscsi/iqn.x")
    assert type(lio.classify(e)) is NotFound
