"""Steps that run on a compute node: attaching, detaching and listing LUNs.

Initiators: ``iscsiadm`` (the kernel's open-iscsi: a session and a /dev/sdX) and
``userspace`` (libiscsi/qemu: no kernel session; the "device" is the qemu spec a VM opens,
checked by logging in with the node's initiator name).
"""
from __future__ import annotations

import contextlib
from typing import Any

from imgstor.errors import Conflict, ImgstorError, UsageError
from imgstor.remote import locks
from imgstor.remote.drivers import iscsiadm, userspace
from imgstor.remote.drivers.blockdev import users as device_users
from imgstor.remote.drivers.iscsiadm import write_node_password
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import Portal, StepResult, no_initiator_name
from imgstor.remote.steps.registry import step
from imgstor.remote.util import (
    MASK,
    chap_pair,
    initiator_name,
    require_initiator_name,
    run_mapped,
    wait_path,
)

__all__ = ["attach", "detach", "devices"]

DEVICE_WAIT = 30.0


def _initiator(ex: Executor) -> str:
    return require_initiator_name(ex)


@step("compute.attach")
def attach(ex: Executor, *, kind: str, portal: Any, iqn: str, lun: int = 1,
           chap: dict | None = None) -> StepResult:
    """Ensure this node reaches LUN ``lun`` of target IQN at PORTAL, with ``chap``
    ({"user", "password"}) when the target asks for it.

    iscsiadm: discovery, CHAP on the node record (``-o update`` of authmethod and username;
    the password written into the 0600 record file, never in an argv), login (15 = session
    exists is success), wait for the by-path link; device = /dev/sdX.  userspace: iscsi-readcapacity16
    under the node's IQN (CHAP user in the URL, password in LIBISCSI_CHAP_PASSWORD);
    device = the iscsi:// URL, with the qemu json: spec and --image-opts string in facts
    (these carry no CHAP: a VM's qemu needs ``user=`` and a ``password-secret`` object)."""
    drv = _get(kind)
    addr, port = Portal.parse(portal)
    return drv.attach(ex, addr=addr, port=port, iqn=iqn, lun=lun, pair=chap_pair(chap),
                      me=_initiator(ex))


class Userspace:
    """libiscsi/qemu: no kernel session; the "device" is the qemu spec a VM opens."""

    name = "userspace"
    logs_in_by_name = True       # each read logs in under the node's initiator name

    def attach(self, ex: Executor, *, addr: str, port: int, iqn: str, lun: int,
               pair: tuple[str, str] | None, me: str) -> StepResult:
        user, password = pair if pair else (None, None)
        extra = {"chap_user": user} if user else {}
        if ex.dry_run:
            # the target a dry run "made" does not exist: show the login instead of doing it
            ex.run(userspace.readcapacity16(addr, iqn, me, lun, port, chap_user=user))
            return StepResult(True, {"device": userspace.url(addr, iqn, lun, port),
                                     "size": None, "initiator": me, **extra},
                              f"would check LUN {lun} of {iqn} as {me}")
        # one login that reads the capacity proves the ACL (and CHAP) admits us and the
        # LUN; read_capacity maps libiscsi's failures itself (userspace.classify)
        cap = userspace.read_capacity(ex, addr, iqn, me, lun, port, chap_user=user,
                                      chap_password=password)
        facts = {"device": userspace.url(addr, iqn, lun, port), "size": _cap_bytes(cap),
                 "qemu_json": userspace.json_spec(addr, iqn, me, lun, port),
                 "image_opts": userspace.image_opts(addr, iqn, me, lun, port),
                 "initiator": me, **extra}
        return StepResult(False, facts, f"LUN {lun} of {iqn} readable as {me}"
                          + (f" with CHAP user {user}" if user else ""))

    def detach(self, ex: Executor, *, addr: str, port: int, iqn: str,
               force: bool) -> StepResult:
        return StepResult(False, {}, "userspace initiator keeps no session")

    def device(self, ex: Executor, t: dict, addr: str, port: int, me: str | None,
               sessions: set[str]) -> dict:
        row = {"iqn": t["iqn"], "device": None, "status": "absent", "size": None}
        pair = chap_pair(t.get("chap"))
        try:
            cap = userspace.read_capacity(ex, addr, t["iqn"], me or "", t.get("lun", 1), port,
                                          chap_user=pair[0] if pair else None,
                                          chap_password=pair[1] if pair else None)
            row.update(device=userspace.url(addr, t["iqn"], t.get("lun", 1), port),
                       status="ok", size=_cap_bytes(cap))
        except ImgstorError as e:   # already mapped by userspace.classify (NotFound…)
            row.update(status=f"error: {e}")
        return row

    def sessions(self, ex: Executor) -> set[str]:
        return set()


class Iscsiadm:
    """The kernel's open-iscsi: a session and a /dev/sdX."""

    name = "iscsiadm"
    logs_in_by_name = False      # the sessions exist already; reads look at them

    def attach(self, ex: Executor, *, addr: str, port: int, iqn: str, lun: int,
               pair: tuple[str, str] | None, me: str) -> StepResult:
        user = pair[0] if pair else None
        extra = {"chap_user": user} if user else {}
        changed = False
        with _db_lock(ex):
            if not any(s.iqn == iqn for s in iscsiadm.sessions(ex)):
                run_mapped(ex, iscsiadm.discovery(addr, port), iscsiadm.classify)
                if pair:
                    for argv in iscsiadm.chap_settings(iqn, addr, pair[0], port):
                        run_mapped(ex, argv, iscsiadm.classify)
                    _node_password(ex, iqn, addr, port, pair[1])
                run_mapped(ex, iscsiadm.login(iqn, addr, port), iscsiadm.classify,
                           ok_codes=iscsiadm.LOGIN_OK)
                changed = True
        link = iscsiadm.by_path(addr, iqn, lun, port)
        wait_path(ex, link, timeout=DEVICE_WAIT, why=f"logged in to {iqn} but ")
        dev = ex.fs.realpath(link) if ex.fs.exists(link) else link
        size = ex.fs.size(dev)
        return StepResult(changed, {"device": dev, "by_path": link, "size": size,
                                    "initiator": me, **extra},
                          f"{iqn} lun {lun} is {dev}")

    def detach(self, ex: Executor, *, addr: str, port: int, iqn: str,
               force: bool) -> StepResult:
        with _db_lock(ex):
            return _detach(ex, addr, port, iqn, force)

    def device(self, ex: Executor, t: dict, addr: str, port: int, me: str | None,
               sessions: set[str]) -> dict:
        row = {"iqn": t["iqn"], "device": None, "status": "absent", "size": None}
        if t["iqn"] in sessions:
            link = iscsiadm.by_path(addr, t["iqn"], t.get("lun", 1), port)
            if ex.fs.exists(link):
                dev = ex.fs.realpath(link)
                row.update(device=dev, status="ok", size=ex.fs.size(dev))
            else:
                row.update(status="session, no device")
        return row

    def sessions(self, ex: Executor) -> set[str]:
        return {s.iqn for s in iscsiadm.sessions(ex)}


# The initiators by name (os-brick's connector factory): the steps never compare names.
INITIATORS = {d.name: d for d in (Iscsiadm(), Userspace())}


def _get(kind: str):
    try:
        return INITIATORS[kind]
    except KeyError:
        raise UsageError(f"unknown initiator kind {kind!r}; known: "
                         f"{', '.join(sorted(INITIATORS))}", field="kind") from None


def _db_lock(ex: Executor):
    """The node's lock around changes of open-iscsi's node database (imgstor.remote.locks:
    concurrent discoveries fail with exit 11).  A dry run changes nothing and takes none."""
    if ex.dry_run:
        return contextlib.nullcontext()
    return locks.hold([locks.INITIATOR], timeout=locks.VOLUME_WAIT,
                      what="the initiator database lock")


def _node_password(ex: Executor, iqn: str, addr: str, port: int, password: str) -> None:
    """The CHAP password into the node record file, never into an argv (audit M5)."""
    ex.call(f"write {iscsiadm.PASSWORD_KEY} = {MASK} into the node record of {iqn} "
            f"at {addr}:{port}", write_node_password, iqn, addr, password, port)


def _cap_bytes(cap: userspace.Capacity) -> int:
    return cap.size


def _in_use(ex: Executor, iqn: str, addr: str, port: int) -> list[str]:
    """What holds the disks of the session to IQN at ADDR:PORT (blockdev.users)."""
    held = []
    for s in iscsiadm.session_details(ex):
        if s.iqn != iqn or (s.address, s.port) != (addr, port):
            continue
        for d in s.disks:
            held += device_users("/dev/" + d.device)
    return held


@step("compute.detach")
def detach(ex: Executor, *, kind: str, portal: Any, iqn: str, force: bool = False) -> StepResult:
    """Ensure no session to target IQN remains (iscsiadm: logout, 21 = none is success;
    then delete the node record).  userspace: nothing persists on the node (a VM's qemu
    logs in itself; the NAS sees that login, nas.remove_target checks it).

    Refused (Conflict, saying who holds it) while a disk of that session is in use on this
    node -- a dm device stacked on it, a process (a VM's qemu) with it open, or an
    exclusive claim (``iscsiadm -m session -P 3`` names the disks; drivers.blockdev) --
    unless ``force``: then the VM loses its disk."""
    drv = _get(kind)
    addr, port = Portal.parse(portal)
    return drv.detach(ex, addr=addr, port=port, iqn=iqn, force=force)


def _detach(ex: Executor, addr: str, port: int, iqn: str, force: bool) -> StepResult:
    changed = False
    held: list[str] = []
    if any(s.iqn == iqn for s in iscsiadm.sessions(ex)):
        held = _in_use(ex, iqn, addr, port)
        if held and not force:
            raise Conflict(f"{ex.host}: the disk of {iqn} is in use: {'; '.join(held)}; "
                           "stop its VM first, or unmap with --force", reason="in-use",
                           users=held)
        run_mapped(ex, iscsiadm.logout(iqn, addr, port), iscsiadm.classify,
                   ok_codes=iscsiadm.LOGOUT_OK)
        changed = True
    r = ex.run(iscsiadm.node_delete(iqn, addr, port), check=False,
               ok_codes=iscsiadm.LOGOUT_OK)
    changed = changed or r.rc == 0 and not r.skipped
    msg = f"no session to {iqn}"
    if held:
        msg += f" (--force: it was in use: {'; '.join(held)})"
    return StepResult(changed, {"forced_users": held} if held else {}, msg)


@step("compute.devices", read_only=True)
def devices(ex: Executor, *, kind: str, targets: list[dict]) -> StepResult:
    """Read-only: for each {"iqn", "portal", "lun"[, "chap"]} what this node sees now."""
    drv = _get(kind)
    me = initiator_name(ex)
    if drv.logs_in_by_name and not me:
        raise no_initiator_name(ex.host)
    sessions = drv.sessions(ex)
    rows = []
    for t in targets:
        addr, port = Portal.parse(t["portal"])
        rows.append(drv.device(ex, t, addr, port, me, sessions))
    return StepResult(False, {"devices": rows, "initiator": me}, "")
