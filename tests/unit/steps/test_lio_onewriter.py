"""LIO target checks of issue 8: initiator names compared case-insensitively (M7), a
disabled TPG or generate_node_acls=1 is not right (L8), remove refuses while an initiator
is logged in unless force (M9)."""
from __future__ import annotations

import pytest

from imgstor.errors import Conflict
from imgstor.remote.drivers import lio
from imgstor.remote.targets import lio as lio_target
from tests.scripted import Expect, ScriptedExecutor

IQN = "iqn.2001-04.com.nas-0-0-vm1-vol"
DEV = "/dev/zvol/tank/vm1-vol"
INIT = "iqn.1991-05.com.microsoft:Compute-0-1"


def tgt(*, enabled=True, gen=False, acl=INIT.lower(), session=None) -> lio.LioTarget:
    tpg = lio.LioTpg(1, enabled, gen, False, (lio.LioLun(0, "block", "bs", DEV),),
                     (lio.LioAcl(acl, (0,), None, session),), (lio.Portal("10.0.0.1", 3260),))
    return lio.LioTarget(IQN, (tpg,))


def test_right_compares_initiator_names_case_insensitively():
    # rtslib stores the name lower-cased; the node's file may have upper case
    assert lio_target._right(tgt(), DEV, INIT, "10.0.0.1", 3260)
    assert not lio_target._right(tgt(acl="iqn.x:other"), DEV, INIT, "10.0.0.1", 3260)


@pytest.mark.parametrize("kw", [dict(enabled=False), dict(enabled=None), dict(gen=True)])
def test_disabled_or_demo_mode_tpg_is_not_right(kw):
    assert not lio_target._right(tgt(**kw), DEV, INIT, "10.0.0.1", 3260)


def test_unknown_generate_node_acls_still_accepted():
    assert lio_target._right(tgt(gen=None), DEV, INIT, "10.0.0.1", 3260)


def _targetcli(monkeypatch, found):
    monkeypatch.setattr(lio, "rtslib_module", lambda: None)
    monkeypatch.setattr(lio_target, "_read", lambda ex, lib: found)


def test_remove_refused_while_logged_in(monkeypatch):
    _targetcli(monkeypatch, [tgt(session="LOGGED_IN")])
    ex = ScriptedExecutor([])
    with pytest.raises(Conflict, match=r"in use by iqn.1991-05.com.microsoft:compute-0-1 "
                                       r"\(LOGGED_IN\).*--force") as ei:
        lio_target.remove(ex, iqn=IQN)
    assert ei.value.details["reason"] == "in-use"
    ex.assert_done()                        # nothing ran


def test_remove_forced_deletes_and_says_whose_session_ended(monkeypatch):
    _targetcli(monkeypatch, [tgt(session="LOGGED_IN")])
    bs = lio_target.backstore_name(IQN)
    ex = ScriptedExecutor([Expect(a) for a in lio.targetcli_delete_target(IQN, backstore=bs)]
                          + [Expect(lio.targetcli_saveconfig())])
    out = lio_target.remove(ex, iqn=IQN, force=True)
    ex.assert_done()
    assert out.changed and "--force: ended the sessions of" in out.message


def test_rtslib_session_state_is_read():
    class Acl:
        node_wwn, mapped_luns, chap_userid = INIT.lower(), [], ""
        session = {"state": "LOGGED_IN", "connections": []}
    assert lio._rts_session(Acl()) == "LOGGED_IN"
    Acl.session = None
    assert lio._rts_session(Acl()) is None
