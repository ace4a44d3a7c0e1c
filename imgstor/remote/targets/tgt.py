"""The tgt target driver (tgtadm): ensure, remove and read targets on a NAS.

Picked through imgstor.remote.targets (the registry the ``nas.*_target`` steps use); LIO's
is targets/lio.py.  Every change here runs under the node's targets lock, taken by the step.
"""
from __future__ import annotations

from typing import Iterable

from imgstor.errors import AlreadyExists, Conflict, NotFound
from imgstor.remote.drivers import tgt
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import Portal, StepResult
from imgstor.remote.util import run_mapped, run_secret

__all__ = ["ensure", "remove", "facts", "OUR_ACCOUNT"]

OUR_ACCOUNT = "imgstor-"          # tgt accounts imgstor made (imgstor.chap); others are kept
# ------------------------------------------------------------------ targets


def _tgt_run(ex: Executor, argv: list[str]) -> None:
    run_mapped(ex, argv, tgt.classify)


def _incoming(accounts: Iterable[str]) -> list[str]:
    """Incoming CHAP users of a target (``tgtadm … show`` prints outgoing ones as
    ``USER (outgoing)``; imgstor never sets those)."""
    return [a for a in accounts if not a.endswith("(outgoing)")]


def _tgt_chap(ex: Executor, tid: int, bound: list[str], pair: tuple[str, str] | None) -> bool:
    """With CHAP: ensure exactly the wanted incoming account is bound to tid.  Without:
    ensure none of ours (``imgstor-``) is; an account someone else bound is left alone.
    tgt asks for CHAP from every initiator of a target that has an incoming account."""
    want = pair[0] if pair else None
    changed = False
    for user in bound:
        if user == want or (want is None and not user.startswith(OUR_ACCOUNT)):
            continue
        _tgt_run(ex, tgt.unbind_account(tid, user))
        if user.startswith(OUR_ACCOUNT):   # a stale one of ours (regenerated credentials)
            try:
                _tgt_run(ex, tgt.delete_account(user))
            except NotFound:
                pass
        changed = True
    if pair and want not in bound:
        if want not in tgt.accounts(ex):
            try:
                run_secret(ex, tgt.new_account(pair[0], pair[1]), [pair[1]], tgt.classify)
            except AlreadyExists:       # made between `show` and `new`: same user, ours
                pass
        _tgt_run(ex, tgt.bind_account(tid, pair[0]))
        changed = True
    return changed


def _tgt_portal(ex: Executor, portal: Portal, chap: bool) -> tuple[bool, list[str]]:
    """Ensure tgtd listens on the NAS's storage address (audit M4).  Portals are global
    to tgtd, so a wildcard one (tgt's default: every address of the NAS) is never removed
    -- other targets on a shared NAS may use it; while it is there a target without CHAP
    is refused (its only guard would be the initiator name, on every network of the NAS),
    one with CHAP gets a warning."""
    addr, port = portal
    have = tgt.portals(ex)
    if (addr, port) in have:
        return False, []
    wild = [f"{a}:{p}" for a, p in have if a in tgt.WILDCARDS and p == port]
    if wild:
        text = (f"tgtd on {ex.host} listens on {', '.join(wild)} (every address of the NAS), "
                f"not only on the storage address {portal}")
        if not chap:
            raise Conflict(f"{ex.host}: refusing a target without CHAP: {text}; start tgtd "
                           f"with '--iscsi portal={portal}' (or use chap = true for this NAS)",
                           reason="wildcard-portal")
        return False, [text]
    _tgt_run(ex, tgt.new_portal(addr, port))
    return True, []


def _foreign(t: tgt.Target | None, initiator: str) -> list[tuple[tgt.Nexus, int]]:
    """(nexus, cid) of every connection of an initiator other than ``initiator`` (iSCSI
    names compare case-insensitively, RFC 3720 3.2.6.1)."""
    if t is None:
        return []
    want = initiator.lower()
    return [(n, c.cid) for n in t.nexuses if n.initiator.lower() != want
            for c in (n.connections or (tgt.Connection(0),))]


def _who(nexuses: Iterable[tgt.Nexus]) -> str:
    return "; ".join(f"{n.initiator} from {','.join(n.addresses) or '?'} (I_T nexus {n.nexus})"
                     for n in nexuses)


END_TRIES = 3


def _tgt_end_foreign(ex: Executor, iqn: str, initiator: str) -> list[str]:
    """One writer: close the connections of every initiator but ``initiator`` (tgt checks
    the ACL only at login; one whose connection is closed logs in again and is refused
    now).  Re-reads after closing until none is left (bounded); Conflict if one stays."""
    ended: list[str] = []
    for _ in range(END_TRIES):
        t = tgt.find_target(tgt.targets(ex), iqn)
        conns = _foreign(t, initiator)
        if t is None or not conns or ex.dry_run and ended:
            return ended
        for n, cid in conns:
            try:
                _tgt_run(ex, tgt.delete_connection(t.tid, n.nexus, cid))
            except NotFound:            # closed already
                pass
            ended.append(f"{n.initiator} (I_T nexus {n.nexus}, connection {cid})")
    raise Conflict(f"{ex.host}: target {iqn}: {_who(n for n, _ in conns)} still connected "
                   f"after closing its connections {END_TRIES} times")


def ensure(ex: Executor, *, iqn: str, path: str, initiator: str, portal: Portal,
           chap: tuple[str, str] | None = None) -> StepResult:
    """tgt: ``tgtadm`` target new / logicalunit new / account new+bind (the password is in
    that argv on the NAS, masked in logs) / account unbind (+ delete of a stale
    ``imgstor-`` account) / bind -Q, then the connections of any other initiator end.
    The caller holds the node's targets lock."""
    return _tgt_ensure_locked(ex, iqn, path, initiator, Portal.parse(portal), chap)


NEW_TARGET_TRIES = 5


def _tgt_new(ex: Executor, found: list[tgt.Target], iqn: str) -> int:
    """``--op new`` at the next free tid; on a tid clash (another tgtadm user between our
    show and new: tgtd says "this target already exists" for a tid as for a name) read
    again and take the next free tid; the IQN itself appearing is an AlreadyExists."""
    for _ in range(NEW_TARGET_TRIES):
        tid = tgt.next_free_tid(found)
        try:
            _tgt_run(ex, tgt.new_target(tid, iqn))
            return tid
        except AlreadyExists:
            found = tgt.targets(ex)
            if tgt.find_target(found, iqn) is not None:
                raise
    raise AlreadyExists(f"{ex.host}: no free tgt tid for {iqn} after {NEW_TARGET_TRIES} tries")


def _tgt_ensure_locked(ex: Executor, iqn: str, path: str, initiator: str, portal: Portal,
                       pair: tuple[str, str] | None = None) -> StepResult:
    changed, warnings = _tgt_portal(ex, portal, pair is not None)
    found = tgt.targets(ex)
    for other in found:
        if other.iqn != iqn and any(it.backing_store_path == path for it in other.luns):
            raise Conflict(f"{ex.host}: {path} is already exported by target {other.iqn}")
    t = tgt.find_target(found, iqn)
    created = False
    moved = False               # an initiator lost its place in the ACL
    if t is None:
        tid = _tgt_new(ex, found, iqn)
        changed = created = True
        lun = None
        acls: tuple[str, ...] = ()
        bound: list[str] = []
    else:
        tid = t.tid
        lun = t.lun(1)
        acls = t.acls
        bound = _incoming(t.accounts)
    try:
        if lun is None:
            _tgt_run(ex, tgt.add_lun(tid, path, lun=1))
            changed = True
        elif lun.backing_store_path != path:
            raise Conflict(f"{ex.host}: target {iqn} exports {lun.backing_store_path}, "
                           f"not {path}; remove it first")
        # CHAP before the ACL, so a new target never admits the initiator without it
        changed = _tgt_chap(ex, tid, bound, pair) or changed
        # One initiator, by name.  An address ACL would admit anyone from that address
        # (tgt admits when either matches), so every other entry goes.
        for acl in acls:
            if acl != initiator:
                if acl.startswith("iqn.") or acl.startswith("eui.") or acl.startswith("naa."):
                    _tgt_run(ex, tgt.unbind_initiator(tid, acl))
                else:
                    _tgt_run(ex, ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op",
                                  "unbind", "--tid", str(tid), "-I", acl])
                changed = moved = True
        if initiator not in acls:
            _tgt_run(ex, tgt.bind_initiator(tid, initiator))
            changed = True
    except Exception:
        if created and not ex.dry_run:       # create-then-configure: undo what we made
            ex.run(tgt.delete_target(tid, force=True), check=False)
        raise
    # one writer per disk (audit M2): after the ACL admits only `initiator`, end the
    # connections of everyone else (a re-run finds none: nothing to do)
    ended = (_tgt_end_foreign(ex, iqn, initiator)
             if not created and (moved or _foreign(t, initiator)) else [])
    changed = changed or bool(ended)
    facts = {"iqn": iqn, "tid": tid, "lun": 1, "portal": list(portal)}
    if pair:
        facts["chap_user"] = pair[0]
    if ended:
        facts["ended"] = ended
    if warnings:
        facts["warnings"] = warnings
    return StepResult(changed, facts,
                      f"target {iqn} {'configured' if changed else 'as wanted'} for {initiator}"
                      + (f" with CHAP user {pair[0]}" if pair else "")
                      + (f"; ended the connections of {', '.join(ended)}" if ended else "")
                      + "".join(f"; warning: {w}" for w in warnings))


def remove(ex: Executor, *, iqn: str, chap_user: str | None = None,
           force: bool = False) -> StepResult:
    """tgt: delete the target and the ``imgstor-`` CHAP accounts bound to it and
    ``chap_user`` (accounts are global in tgtd).  The caller holds the targets lock."""
    t = tgt.find_target(tgt.targets(ex), iqn)
    if t is not None and t.nexuses and not force:
        raise Conflict(f"{ex.host}: target {iqn} is in use by {_who(t.nexuses)}; stop what "
                       "uses the disk (its VM) first, or unmap with --force",
                       reason="in-use", initiators=list(t.connected_initiators))
    users = [u for u in _incoming(t.accounts) if u.startswith(OUR_ACCOUNT)] if t else []
    if chap_user and chap_user not in users:
        users.append(chap_user)
    changed = False
    if t is not None:
        try:
            _tgt_run(ex, tgt.delete_target(t.tid, force=True))
            changed = True
        except NotFound:        # gone between `show` and `delete`: that is what we want
            pass
    gone = []
    if users:
        have = set(tgt.accounts(ex))
        for u in users:
            if u in have:
                try:
                    _tgt_run(ex, tgt.delete_account(u))
                except NotFound:
                    continue
                gone.append(u)
                changed = True
    msg = f"removed target {iqn}" if changed and t is not None else f"no target {iqn}"
    if changed and t is not None and t.nexuses:
        msg += f" (--force: ended the sessions of {_who(t.nexuses)})"
    if gone:
        msg += f"; removed CHAP account {', '.join(gone)}"
    return StepResult(changed, {"tid": t.tid} if t is not None and changed else {}, msg)


def facts(ex: Executor) -> list[dict]:
    """The targets with their LUN paths, ACLs and sessions."""
    return [{"iqn": t.iqn, "tid": t.tid,
             "paths": [it.backing_store_path for it in t.luns if it.backing_store_path],
             "acls": list(t.acls), "sessions": list(t.connected_initiators)}
            for t in tgt.targets(ex)]
