"""LIO targets for the NAS steps: rtslib-fb in this process when the node has it (one
process, no per-command cost: under TCG each targetcli call costs ~2 s), else targetcli.

A target is right when it has LUN 0 backed by the volume's device, one portal on the NAS's
storage address (never 0.0.0.0), ``generate_node_acls=0`` and exactly one node ACL: the
compute node's initiator; with CHAP, ``authentication=1`` and that ACL's chap_userid /
chap_password set (without, ``authentication=0``).  The ACL's CHAP user stands for its
password (imgstor.chap derives the user from it; neither backend shows a password), so a
different user means stale credentials.  A target that exists but is not right is deleted and made again
(that also drops a session of an initiator that must no longer be admitted).  Changes are
saved (`saveconfig`) so they survive a reboot of the NAS.
"""
from __future__ import annotations

from imgstor.errors import Conflict, ImgstorError, RemoteCommandError
from imgstor.remote.drivers import lio
from imgstor.remote.executor import Executor
from imgstor.remote.naming import backstore_name
from imgstor.remote.protocol import Portal, StepResult
from imgstor.remote.util import run_mapped, run_secret

__all__ = ["ensure", "remove", "facts", "backstore_name"]

LUN = 0




def _read(ex: Executor, lib) -> list[lio.LioTarget]:
    if lib is not None:
        return lio.rts_targets(lib.RTSRoot())
    try:
        return lio.targetcli_targets(ex)
    except RemoteCommandError as e:
        raise lio.classify(e) from e


def _right(t: lio.LioTarget, path: str, initiator: str, ip: str, port: int,
           chap_user: str | None = None) -> bool:
    """Shape, portal, ACL and authentication as wanted.  The ACL's CHAP user is compared
    only where the backend shows it (rtslib); targetcli's is read by ``_acl_userid``."""
    if len(t.tpgs) != 1:
        return False
    g = t.tpgs[0]
    auth_ok = g.authentication is True if chap_user else g.authentication in (False, None)
    # rtslib lower-cases every WWN (rtslib/utils.py normalize_wwn) and iSCSI names are
    # case-insensitive (RFC 3720 3.2.6.1): compare lower-cased (audit M7).  A TPG that is
    # not enabled (a create killed before `tpg.enable = True`) serves nothing, and
    # generate_node_acls=1 would admit every initiator: neither is right (audit L8).
    return ([it.udev_path for it in g.luns] == [path]
            and [a.initiator.lower() for a in g.acls] == [initiator.lower()]
            and [(p.ip, p.port) for p in g.portals] == [(ip, port)]
            and g.enabled is True
            and g.generate_node_acls is not True and auth_ok)


def _acl_userid(ex: Executor, lib, t: lio.LioTarget, iqn: str, initiator: str) -> str | None:
    if lib is not None:
        return t.tpgs[0].acls[0].chap_userid
    r = run_mapped(ex, lio.targetcli_acl_userid(iqn, initiator), lio.classify, read_only=True)
    return lio.parse_targetcli_get(r.stdout, "userid")


def _delete(ex: Executor, lib, iqn: str) -> None:
    bs = backstore_name(iqn)
    if lib is not None:         # in-process: logged, and skipped in a dry run (ex.call)
        ex.call(f"rtslib: delete target {iqn} and backstore {bs}", lio.rts_delete_target,
                lib, iqn, backstore=bs)
        return
    for argv in lio.targetcli_delete_target(iqn, backstore=bs):
        ex.run(argv, check=False)   # a part already gone is fine


def _save(ex: Executor, lib) -> None:
    if lib is not None:
        ex.call("rtslib: saveconfig", lio.rts_save_config, lib)
        return
    ex.run(lio.targetcli_saveconfig())


def ensure(ex: Executor, *, iqn: str, path: str, initiator: str, portal: Portal,
           chap: tuple[str, str] | None = None) -> StepResult:
    """Ensure the target (module doc); ``chap`` is (user, password), already checked."""
    portal = Portal.parse(portal)
    lib = lio.rtslib_module()
    chap_user = chap[0] if chap else None
    secrets = [chap[1]] if chap else []
    facts = {"iqn": iqn, "lun": LUN, "portal": list(portal), **({"chap_user": chap_user} if chap else {})}
    how = f" with CHAP user {chap_user}" if chap else ""
    ip, port = portal
    found = _read(ex, lib)
    for other in found:
        if other.iqn != iqn and any(it.udev_path == path for g in other.tpgs for it in g.luns):
            raise Conflict(f"{ex.host}: {path} is already exported by target {other.iqn}")
    t = lio.find_target(found, iqn)
    if (t is not None and _right(t, path, initiator, ip, port, chap_user)
            and (not chap or _acl_userid(ex, lib, t, iqn, initiator) == chap_user)):
        return StepResult(False, facts, f"target {iqn} as wanted for {initiator}{how}")
    if t is not None:
        _delete(ex, lib, iqn)
    bs = backstore_name(iqn)
    if lib is not None:
        text = (f"rtslib: create target {iqn}: block backstore {bs} on {path}, LUN {LUN}, "
                f"portal {ip}:{port}, ACL {initiator}"
                + (f", CHAP user {chap_user} (authentication=1)" if chap else ""))
        ex.call(text, lio.rts_create_target, lib, iqn=iqn, device=path, backstore=bs,
                portal_ip=ip, portal_port=port, initiator=initiator, lun=LUN,
                chap=lio.Chap(*chap) if chap else None)
    else:
        for argv in lio.targetcli_create_target(iqn=iqn, device=path, backstore=bs,
                                                portal_ip=ip, portal_port=port,
                                                initiator=initiator, lun=LUN,
                                                chap=lio.Chap(*chap) if chap else None):
            try:
                # the CHAP password is in targetcli's argv on the NAS; masked in logs
                run_secret(ex, argv, secrets, lio.classify)
            except ImgstorError:
                if not ex.dry_run:
                    _delete(ex, None, iqn)      # create-then-configure: undo, re-raise
                raise
    _save(ex, lib)
    return StepResult(True, facts,
                      f"target {iqn} {'re' if t is not None else ''}made for {initiator}{how}")


def _sessions(t: lio.LioTarget) -> list[str]:
    return [f"{a.initiator} ({a.session})" for g in t.tpgs for a in g.acls if a.session]


def remove(ex: Executor, *, iqn: str, chap_user: str | None = None,
           force: bool = False) -> StepResult:
    """Delete the target and its backstore (LIO keeps CHAP in the ACL, which goes with
    it: ``chap_user`` is not needed); refused while an initiator is logged in (rtslib shows
    sessions; targetcli's ls does not) unless ``force``."""
    lib = lio.rtslib_module()
    t = lio.find_target(_read(ex, lib), iqn)
    if t is None:
        return StepResult(False, {}, f"no target {iqn}")
    held = _sessions(t)
    if held and not force:
        from imgstor.errors import Conflict
        raise Conflict(f"{ex.host}: target {iqn} is in use by {', '.join(held)}; stop what "
                       "uses the disk (its VM) first, or unmap with --force",
                       reason="in-use", initiators=[a.split(" ")[0] for a in held])
    _delete(ex, lib, iqn)
    _save(ex, lib)
    return StepResult(True, {}, f"removed target {iqn}"
                      + (f" (--force: ended the sessions of {', '.join(held)})" if held else ""))


def facts(ex: Executor) -> list[dict]:
    lib = lio.rtslib_module()
    rows = []
    for t in _read(ex, lib):
        rows.append({"iqn": t.iqn,
                     "paths": [it.udev_path for g in t.tpgs for it in g.luns if it.udev_path],
                     "acls": [a.initiator for g in t.tpgs for a in g.acls],
                     "portals": [f"{p.ip}:{p.port}" for g in t.tpgs for p in g.portals],
                     "sessions": [a.initiator for g in t.tpgs for a in g.acls if a.session]})
    return rows
