"""CHAP per target (issue 4): the node steps (the frontend's credential store:
tests/unit/test_chap_store.py).

Step cases run on a ScriptedExecutor like the scenario files (the argv are written out);
every one of them also checks that the password never shows in the executor's log, its
``SKIP>`` lines, the result or an error."""
from __future__ import annotations

import json
import shlex
import stat

import pytest
from scn_common import (
    INIT0,
    IQN1,
    PATH1,
    PORTAL,
    PORTALS,
    TGT,
    TGT_SHOW,
    by_path,
    cmd,
    fixture_text,
    tgt_bind,
    tgt_delete,
    tgt_lun,
    tgt_new,
)

from imgstor import chap as chapstore
from imgstor.errors import Conflict, ImgstorError, RemoteCommandError, UsageError
from imgstor.remote.drivers import lio, tgt
from imgstor.remote.protocol import INITIATOR_NAME_FILE
from imgstor.remote.steps import compute, nas
from imgstor.remote.targets import lio as lio_target
from tests.scripted import Expect, FakeFS, ScriptedExecutor

USER, PW = "imgstor-0123456789ab", "Abcdefgh12345678"
CHAP = {"user": USER, "password": PW}
OLD = "imgstor-ffffffffffff"


# ------------------------------------------------------------------ step helpers
def run(fn, script, *, dry_run=False, **args):
    if fn is nas.ensure_target and args.get("driver") == "tgt":
        script = [PORTALS] + list(script)     # tgtd's portals are read first (M4)
    ex = ScriptedExecutor([Expect(**c) for c in script], dry_run=dry_run,
                          fs=FakeFS(files={INITIATOR_NAME_FILE: f"InitiatorName={INIT0}\n"}))
    try:
        out = fn(ex, **args)
    except ImgstorError as e:
        assert_no_secret(ex, e)
        raise
    ex.assert_done()
    assert_no_secret(ex, out)
    return ex, out


def assert_no_secret(ex, out) -> None:
    text = "\n".join(ex.log + ex.skipped)
    if isinstance(out, ImgstorError):
        text += str(out) + json.dumps(out.to_wire())
    else:
        text += json.dumps(out.to_dict())
    assert PW not in text, text


def show_with(accounts: list[str] = (), acl: str = INIT0) -> str:
    """tgt_show (tid 1 = IQN1 on PATH1, ACL INIT0) with these accounts bound to tid 1."""
    text = fixture_text("tgt_show")
    head, tail = text.split("    Account information:\n", 1)
    lines = "".join(f"        {a}\n" for a in accounts)
    return head + "    Account information:\n" + lines + tail


ACCT_SHOW = TGT + ["--mode", "account", "--op", "show"]
NEW_ACCT = TGT + ["--mode", "account", "--op", "new", "--user", USER, "--password", PW]
NEW_ACCT_MASKED = shlex.join(NEW_ACCT).replace(PW, "***")     # masked after shlex.join
BIND_ACCT = TGT + ["--mode", "account", "--op", "bind", "--tid", "1", "--user", USER]


def unbind_acct(user: str, tid: int = 1) -> list[str]:
    return TGT + ["--mode", "account", "--op", "unbind", "--tid", str(tid), "--user", user]


def delete_acct(user: str) -> list[str]:
    return TGT + ["--mode", "account", "--op", "delete", "--user", user]


def tgt_args(**kw):
    return dict(driver="tgt", iqn=IQN1, initiator=INIT0, portal=PORTAL, path=PATH1, **kw)


# ------------------------------------------------------------------ nas.ensure_target, tgt
def test_tgt_new_target_with_chap_account_before_acl():
    ex, out = run(nas.ensure_target, [
        cmd(TGT_SHOW, capture="tgt_show_empty"), cmd(tgt_new(1, IQN1)), cmd(tgt_lun(1, PATH1)),
        cmd(ACCT_SHOW), cmd(NEW_ACCT), cmd(BIND_ACCT), cmd(tgt_bind(1, INIT0))],
        **tgt_args(chap=CHAP))
    assert out.changed and out.facts["chap_user"] == USER
    assert NEW_ACCT_MASKED in ex.log


def test_tgt_account_exists_is_bound_not_recreated():
    ex, out = run(nas.ensure_target, [
        cmd(TGT_SHOW, stdout=show_with([])), cmd(ACCT_SHOW, stdout=f"Account list:\n    {USER}\n"),
        cmd(BIND_ACCT)], **tgt_args(chap=CHAP))
    assert out.changed


def test_tgt_chap_as_wanted_is_a_no_op():
    ex, out = run(nas.ensure_target, [cmd(TGT_SHOW, stdout=show_with([USER]))],
                  **tgt_args(chap=CHAP))
    assert not out.changed and "with CHAP user" in out.message


def test_tgt_other_accounts_bound_are_fixed():
    """A stale account of ours is unbound and deleted, a foreign one unbound only."""
    ex, out = run(nas.ensure_target, [
        cmd(TGT_SHOW, stdout=show_with([OLD, "someone"])),
        cmd(unbind_acct(OLD)), cmd(delete_acct(OLD)), cmd(unbind_acct("someone")),
        cmd(ACCT_SHOW, stdout="Account list:\n    someone\n"), cmd(NEW_ACCT), cmd(BIND_ACCT)],
        **tgt_args(chap=CHAP))
    assert out.changed


def test_tgt_chap_turned_off_unbinds_ours_only():
    ex, out = run(nas.ensure_target, [
        cmd(TGT_SHOW, stdout=show_with([USER, "someone"])), cmd(unbind_acct(USER)),
        cmd(delete_acct(USER))], **tgt_args())
    assert out.changed


def test_tgt_dry_run_masks_the_password_in_skip_lines():
    ex, out = run(nas.ensure_target, [cmd(TGT_SHOW, capture="tgt_show_empty"), cmd(ACCT_SHOW)],
                  dry_run=True, **tgt_args(chap=CHAP))
    assert ex.skipped == [shlex.join(tgt_new(1, IQN1)), shlex.join(tgt_lun(1, PATH1)),
                          NEW_ACCT_MASKED, shlex.join(BIND_ACCT), shlex.join(tgt_bind(1, INIT0))]
    assert "SKIP> " + NEW_ACCT_MASKED in ex.log


def test_tgt_account_error_is_masked_and_new_target_undone():
    with pytest.raises(RemoteCommandError) as ei:
        run(nas.ensure_target, [
            cmd(TGT_SHOW, capture="tgt_show_empty"), cmd(tgt_new(1, IQN1)),
            cmd(tgt_lun(1, PATH1)), cmd(ACCT_SHOW),
            cmd(NEW_ACCT, rc=22, stderr=f"tgtadm: bad password {PW}\n"),
            cmd(tgt_delete(1))], **tgt_args(chap=CHAP))
    assert "***" in str(ei.value) and PW not in repr(ei.value.details)
    assert PW not in " ".join(ei.value.argv)


@pytest.mark.parametrize("bad", [{"user": USER, "password": "short"},
                                 {"user": USER, "password": "has space 123456"},
                                 {"user": "-rf", "password": PW}])
def test_bad_chap_refused_before_any_command_and_not_quoted(bad):
    with pytest.raises(UsageError) as ei:
        run(nas.ensure_target, [], **tgt_args(chap=bad))
    assert bad["password"] not in str(ei.value)


# ------------------------------------------------------------------ nas.remove_target, tgt
def test_remove_target_deletes_our_accounts_with_it():
    ex, out = run(nas.remove_target, [
        cmd(TGT_SHOW, stdout=show_with([USER, "someone"])), cmd(tgt_delete(1)),
        cmd(ACCT_SHOW, stdout=f"Account list:\n    someone\n    {USER}\n"),
        cmd(delete_acct(USER))], driver="tgt", iqn=IQN1, chap_user=USER)
    assert out.changed and USER in out.message


def test_remove_target_after_a_crash_still_removes_the_account():
    ex, out = run(nas.remove_target, [
        cmd(TGT_SHOW, capture="tgt_show_empty"),
        cmd(ACCT_SHOW, stdout=f"Account list:\n    {USER}\n"), cmd(delete_acct(USER))],
        driver="tgt", iqn=IQN1, chap_user=USER)
    assert out.changed


def test_remove_target_done():
    ex, out = run(nas.remove_target, [cmd(TGT_SHOW, capture="tgt_show_empty"), cmd(ACCT_SHOW)],
                  driver="tgt", iqn=IQN1, chap_user=USER)
    assert not out.changed


def test_parse_accounts():
    assert tgt.parse_accounts("Account list:\n    a\n    imgstor-1\n") == ["a", "imgstor-1"]
    assert tgt.parse_accounts("") == []


# ------------------------------------------------------------------ compute.attach
@pytest.fixture
def node(monkeypatch):
    seen = {}

    class Rec(ScriptedExecutor):
        def __post_init__(self) -> None:       # a node whose initiator name is INIT0
            if self.fs is None:
                self.fs = FakeFS(files={INITIATOR_NAME_FILE: f"InitiatorName={INIT0}\n"})
            super().__post_init__()

        def _run(self, argv, *, input, timeout, env):
            seen.setdefault("env", []).append(env)
            return super()._run(argv, input=input, timeout=timeout, env=env)
    return Rec, seen


def test_userspace_attach_logs_in_with_user_in_url_password_in_env(node):
    Rec, seen = node
    argv = ["iscsi-readcapacity16", "-i", INIT0, f"iscsi://{USER}@{PORTAL}/{IQN1}/1"]
    ex = Rec([Expect(argv, stdout=fixture_text("iscsi_readcap16"))])
    out = compute.attach(ex, kind="userspace", portal=PORTAL, iqn=IQN1, chap=CHAP)
    ex.assert_done()
    assert seen["env"] == [{"LIBISCSI_CHAP_PASSWORD": PW}]
    assert out.facts["chap_user"] == USER and PW not in json.dumps(out.to_dict())
    assert PW not in "\n".join(ex.log)


def test_userspace_attach_refused_by_chap_is_conflict(node):
    Rec, _ = node
    argv = ["iscsi-readcapacity16", "-i", INIT0, f"iscsi://{USER}@{PORTAL}/{IQN1}/1"]
    ex = Rec([Expect(argv, rc=10, stderr=fixture_text("iscsi_inq_chap_wrong", "err"))])
    with pytest.raises(Conflict) as ei:
        compute.attach(ex, kind="userspace", portal=PORTAL, iqn=IQN1, chap=CHAP)
    assert ei.value.details["reason"] == "access-denied"


def test_userspace_attach_dry_run(node):
    Rec, _ = node
    argv = ["iscsi-readcapacity16", "-i", INIT0, f"iscsi://{USER}@{PORTAL}/{IQN1}/1"]
    ex = Rec([], dry_run=True)
    out = compute.attach(ex, kind="userspace", portal=PORTAL, iqn=IQN1, chap=CHAP)
    assert ex.skipped == [shlex.join(argv)] and out.changed


def _ia_update(name: str, value: str) -> list[str]:
    return ["iscsiadm", "-m", "node", "-T", IQN1, "-p", PORTAL, "-o", "update", "-n", name,
            "-v", value]


def test_iscsiadm_attach_sets_chap_before_login_masked(node, monkeypatch):
    monkeypatch.setattr(compute, "wait_path", lambda *a, **k: None)
    script = [cmd(["iscsiadm", "-m", "session"], rc=21,
                  stderr="iscsiadm: No active sessions.\n"),
              cmd(["iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", PORTAL]),
              cmd(_ia_update("node.session.auth.authmethod", "CHAP")),
              cmd(_ia_update("node.session.auth.username", USER)),
              cmd(["iscsiadm", "-m", "node", "-T", IQN1, "-p", PORTAL, "--login"])]
    written = []
    monkeypatch.setattr(compute, "write_node_password",
                        lambda *a: written.append(a) or ["/etc/iscsi/nodes/x"])
    ex, out = run(compute.attach, script, kind="iscsiadm", portal=PORTAL, iqn=IQN1, chap=CHAP)
    assert out.changed and out.facts["by_path"] == by_path()
    # M5: the password is in no argv; it goes into the node record file (before login)
    assert all(PW not in a for argv in ex.calls for a in argv)
    assert written == [(IQN1, "127.0.0.1", PW, 3261)]
    assert any("node.session.auth.password = ***" in it for it in ex.log)


NODE_RECORD = """# BEGIN RECORD 2.1.8
node.name = iqn.2001-04.com.nas-0-0-vm1-vol
node.session.auth.authmethod = CHAP
node.session.auth.username = imgstor-0123456789ab
node.session.auth.password = old
node.conn[0].address = 127.0.0.1
# END RECORD
"""


def test_write_node_password_into_the_record_file(tmp_path):
    from imgstor.remote.drivers import iscsiadm
    d = tmp_path / IQN1 / "127.0.0.1,3261,1"
    d.mkdir(parents=True)
    (d / "default").write_text(NODE_RECORD)
    (tmp_path / IQN1 / "127.0.0.2,3261,1").mkdir()
    assert iscsiadm.write_node_password(IQN1, "127.0.0.1", PW, 3261, str(tmp_path)) == [
        str(d / "default")]
    lines = (d / "default").read_text().splitlines()
    assert lines[-2:] == [f"node.session.auth.password = {PW}", "# END RECORD"]
    assert "node.session.auth.password = old" not in lines and len(lines) == 7
    assert stat.S_IMODE((d / "default").stat().st_mode) == 0o600
    with pytest.raises(Exception, match="no node record"):
        iscsiadm.write_node_password(IQN1, "127.0.0.9", PW, 3261, str(tmp_path))


# ------------------------------------------------------------------ LIO (unit only)
def test_lio_rtslib_create_with_chap(monkeypatch):
    made = {}
    monkeypatch.setattr(lio, "rtslib_module", lambda: object())
    monkeypatch.setattr(lio, "rts_targets", lambda root: [])
    monkeypatch.setattr(lio, "rts_create_target", lambda lib, **kw: made.update(kw))
    monkeypatch.setattr(lio, "rts_save_config", lambda lib: None)
    lib = type("L", (), {"RTSRoot": staticmethod(lambda: None)})
    monkeypatch.setattr(lio, "rtslib_module", lambda: lib)
    ex = ScriptedExecutor([])
    out = lio_target.ensure(ex, iqn=IQN1, path="/dev/zvol/tank/vm1-vol", initiator=INIT0,
                           portal="10.0.0.1:3260", chap=(USER, PW))
    assert made["chap"] == lio.Chap(USER, PW) and out.facts["chap_user"] == USER
    assert PW not in "\n".join(ex.log) and PW not in repr(made["chap"])


def _lio_target(auth: bool | None, userid: str | None) -> lio.LioTarget:
    acl = lio.LioAcl(INIT0, (0,), userid)
    lun = lio.LioLun(0, "block", "bs", "/dev/zvol/tank/vm1-vol")
    tpg = lio.LioTpg(1, True, False, auth, (lun,), (acl,), (lio.Portal("10.0.0.1", 3260),))
    return lio.LioTarget(IQN1, (tpg,))


@pytest.mark.parametrize("auth,userid,chap,right", [
    (True, USER, (USER, PW), True),
    (False, None, (USER, PW), False),            # CHAP turned on: remade
    (True, OLD, (USER, PW), False),              # stale credentials: remade
    (True, USER, None, False),                   # CHAP turned off: remade
    (False, None, None, True)])
def test_lio_rtslib_right_or_remade(monkeypatch, auth, userid, chap, right):
    lib = type("L", (), {"RTSRoot": staticmethod(lambda: None)})
    monkeypatch.setattr(lio, "rtslib_module", lambda: lib)
    monkeypatch.setattr(lio, "rts_targets", lambda root: [_lio_target(auth, userid)])
    calls = []
    monkeypatch.setattr(lio, "rts_delete_target", lambda *a, **k: calls.append("delete"))
    monkeypatch.setattr(lio, "rts_create_target", lambda lib, **kw: calls.append(kw["chap"]))
    monkeypatch.setattr(lio, "rts_save_config", lambda lib: None)
    out = lio_target.ensure(ScriptedExecutor([]), iqn=IQN1, path="/dev/zvol/tank/vm1-vol",
                           initiator=INIT0, portal="10.0.0.1:3260", chap=chap)
    assert out.changed is (not right)
    assert calls == ([] if right else ["delete", lio.Chap(*chap) if chap else None])


def test_lio_targetcli_plan_masks_password(monkeypatch):
    monkeypatch.setattr(lio, "rtslib_module", lambda: None)
    plan = lio.targetcli_create_target(iqn=IQN1, device="/dev/zvol/tank/vm1-vol",
                                       backstore=lio_target.backstore_name(IQN1),
                                       portal_ip="10.0.0.1", initiator=INIT0,
                                       chap=lio.Chap(USER, PW))
    script = [cmd(["targetcli", "ls", "/iscsi"], stdout="o- iscsi ... [Targets: 0]\n")]
    ex, out = run(lio_target.ensure, script, dry_run=True, iqn=IQN1,
                  path="/dev/zvol/tank/vm1-vol", initiator=INIT0, portal="10.0.0.1:3260",
                  chap=(USER, PW))
    auth = [a for a in plan if "auth" in a and "set" in a][0]
    assert shlex.join(auth).replace(PW, "***") in ex.skipped
    assert any("authentication=1" in s for s in ex.skipped)


def test_lio_targetcli_as_wanted_reads_the_acl_userid(monkeypatch):
    monkeypatch.setattr(lio, "rtslib_module", lambda: None)
    monkeypatch.setattr(lio, "parse_targetcli_ls", lambda text: [_lio_target(True, None)])
    script = [cmd(["targetcli", "ls", "/iscsi"]),
              cmd(lio.targetcli_acl_userid(IQN1, INIT0), stdout=f"userid={USER}\n")]
    ex, out = run(lio_target.ensure, script, iqn=IQN1, path="/dev/zvol/tank/vm1-vol",
                  initiator=INIT0, portal="10.0.0.1:3260", chap=(USER, PW))
    assert not out.changed


@pytest.mark.parametrize("chap", [{"user": USER + "\n", "password": PW},
                                  {"user": USER, "password": PW + "\n"}])
def test_trailing_newline_refused_on_the_node(chap):
    """L5: ``re.match`` with ``$`` accepted a trailing newline."""
    from imgstor.remote.util import chap_pair
    with pytest.raises(UsageError):
        chap_pair(chap)


def test_trailing_newline_refused_on_the_frontend():
    assert not chapstore.USER_RE.fullmatch("imgstor-0123456789ab\n")
    assert chapstore.USER_RE.fullmatch("imgstor-0123456789ab")
