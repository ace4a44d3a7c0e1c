"""LIO, the Linux kernel target: rtslib-fb in-process when importable, else ``targetcli``.

Both backends describe targets with the same dataclasses (``LioTarget`` → ``LioTpg`` →
luns / acls / portals) and build the same shape of target:

* a ``block`` storage object on the volume's device (``/dev/zvol/POOL/VOL``),
* target IQN, TPG 1 with one LUN,
* one portal on the NAS's storage address -- never ``0.0.0.0`` (targetcli creates
  ``0.0.0.0:3260`` with every new target unless ``set global auto_add_default_portal=false``;
  rtslib creates no portal by itself),
* one node ACL for the compute node's IQN, ``generate_node_acls=0`` (no demo mode: only
  that IQN may log in), ``authentication`` 1 with per-ACL CHAP, else 0,
* ``saveconfig`` so the target survives a reboot.

rtslib functions run on the node in-process (no executor); they take the imported module
(``rtslib_module()``) so tests pass a fake with the same names.  Create-then-configure
cleans up: if configuring fails, what was just created is deleted and the error re-raised.

targetcli quirks: it needs the system D-Bus (its "dbus … Failed to connect to socket
/run/dbus/system_bus_socket" is classified with a hint); it joins its arguments into one
command line and re-parses it, so no value may contain white space (``token``); each call
is one command, so a plan is a list of argv lists ending with ``saveconfig``.
The kernel lab's real ``targetcli`` output is in tests/fixtures/kernel/ (asserted in
tests/unit/drivers/test_drv_kernel_captures.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from imgstor.errors import AlreadyExists, ImgstorError, NotFound, RemoteCommandError, UsageError
from imgstor.remote.drivers._common import ISCSI_PORT, classify_by_text, run_mapped, token

__all__ = [
    "Portal", "LioLun", "LioAcl", "LioTpg", "LioTarget", "Chap", "rtslib_module",
    "targetcli_acl_userid", "parse_targetcli_get",
    "rts_targets", "rts_create_target", "rts_delete_target", "rts_save_config",
    "parse_targetcli_ls", "targetcli_targets", "targetcli_ls", "targetcli_create_target",
    "targetcli_delete_target", "targetcli_saveconfig", "find_target", "classify",
]


@dataclass(frozen=True)
class Portal:
    ip: str
    port: int


@dataclass(frozen=True)
class LioLun:
    lun: int
    plugin: str | None          # block | fileio | …
    storage_object: str | None
    udev_path: str | None       # /dev/zvol/tank/vm1-vol


@dataclass(frozen=True)
class LioAcl:
    initiator: str
    mapped_luns: tuple[int, ...] = ()
    chap_userid: str | None = None
    session: str | None = None  # rtslib NodeACL.session["state"] ("LOGGED_IN"), None: none
                                # or unknown (targetcli's ls does not show sessions)


@dataclass(frozen=True)
class LioTpg:
    tag: int
    enabled: bool | None
    generate_node_acls: bool | None
    authentication: bool | None
    luns: tuple[LioLun, ...] = ()
    acls: tuple[LioAcl, ...] = ()
    portals: tuple[Portal, ...] = ()


@dataclass(frozen=True)
class LioTarget:
    iqn: str
    tpgs: tuple[LioTpg, ...] = ()

@dataclass(frozen=True)
class Chap:
    userid: str
    password: str

    def __repr__(self) -> str:          # never in a log or a traceback
        return f"Chap(userid={self.userid!r}, password='***')"


def find_target(found: list[LioTarget], iqn: str) -> LioTarget | None:
    return next((t for t in found if t.iqn == iqn), None)


def _check_portal(ip: str) -> str:
    if ip in ("0.0.0.0", "::", "[::]", ""):
        raise UsageError(f"refusing portal address {ip!r}: a target listens on the NAS's "
                         "storage address only", field="portal")
    return ip


# ---------------------------------------------------------------------------- rtslib-fb
def rtslib_module():
    """The rtslib-fb module if importable on this node (``rtslib_fb``, or the older
    ``rtslib`` name of the same package), else None."""
    for name in ("rtslib_fb", "rtslib"):
        try:
            return __import__(name)
        except ImportError:
            continue
    return None


def rts_targets(root) -> list[LioTarget]:
    """iSCSI targets of an ``RTSRoot`` (or a fake with ``targets``)."""
    out = []
    for t in root.targets:
        if getattr(getattr(t, "fabric_module", None), "name", "iscsi") != "iscsi":
            continue
        tpgs = []
        for tpg in t.tpgs:
            luns = tuple(_rts_lun(it) for it in tpg.luns)
            acls = tuple(LioAcl(a.node_wwn,
                                tuple(sorted(m.mapped_lun for m in a.mapped_luns)),
                                getattr(a, "chap_userid", None) or None, _rts_session(a))
                         for a in tpg.node_acls)
            portals = tuple(Portal(p.ip_address, int(p.port)) for p in tpg.network_portals)
            tpgs.append(LioTpg(int(tpg.tag), bool(tpg.enable),
                               _bool_attr(tpg, "generate_node_acls"),
                               _bool_attr(tpg, "authentication"), luns, acls, portals))
        out.append(LioTarget(t.wwn, tuple(tpgs)))
    return out


def _rts_session(acl) -> str | None:
    """rtslib's ``NodeACL.session`` (parsed from configfs ``info``; None when "No active
    iSCSI Session") -> its state, e.g. "LOGGED_IN" (kernel-lab capture rtslib_dump_session)."""
    try:
        sess = getattr(acl, "session", None)
    except Exception:       # configfs read failed: unknown
        return None
    if isinstance(sess, dict):
        return str(sess.get("state") or "UNKNOWN")
    return None


def _rts_lun(lun) -> LioLun:
    so = getattr(lun, "storage_object", None)
    return LioLun(int(lun.lun), getattr(so, "plugin", None), getattr(so, "name", None),
                  getattr(so, "udev_path", None) or None)


def _bool_attr(tpg, name: str) -> bool | None:
    try:
        return str(tpg.get_attribute(name)).strip() == "1"
    except Exception:  # attribute missing on this kernel: unknown, not false
        return None


def rts_create_target(lib, *, iqn: str, device: str, backstore: str, portal_ip: str,
                      initiator: str, portal_port: int = ISCSI_PORT, lun: int = 0,
                      chap: Chap | None = None) -> LioTarget:
    """Create the whole target in-process (see module doc).  Raises ``AlreadyExists`` if
    the IQN exists (the caller reads first and decides); cleans up on failure."""
    _check_portal(portal_ip)
    root = lib.RTSRoot()
    if find_target(rts_targets(root), iqn):
        raise AlreadyExists(f"LIO target {iqn} exists", iqn=iqn)
    created = []
    try:
        so = lib.BlockStorageObject(backstore, dev=device)
        created.append(so)
        fabric = lib.FabricModule("iscsi")
        target = lib.Target(fabric, iqn, mode="create")
        created.append(target)
        tpg = lib.TPG(target, 1, mode="create")
        tpg_lun = lib.LUN(tpg, lun, storage_object=so)
        lib.NetworkPortal(tpg, portal_ip, portal_port, mode="create")
        tpg.set_attribute("generate_node_acls", "0")
        tpg.set_attribute("authentication", "1" if chap else "0")
        acl = lib.NodeACL(tpg, initiator, mode="create")
        lib.MappedLUN(acl, lun, tpg_lun)
        if chap:
            acl.chap_userid = chap.userid
            acl.chap_password = chap.password
        tpg.enable = True
    except BaseException:
        for obj in reversed(created):   # target first (it holds the LUN), then the backstore
            try:
                obj.delete()
            except Exception:
                pass
        raise
    return find_target(rts_targets(lib.RTSRoot()), iqn) or LioTarget(iqn)


def rts_delete_target(lib, iqn: str, *, backstore: str | None = None) -> bool:
    """Delete the target (with its TPGs, LUNs, ACLs, portals) and the block backstore.
    Returns whether anything was there."""
    root = lib.RTSRoot()
    changed = False
    for t in list(root.targets):
        if t.wwn == iqn:
            t.delete()
            changed = True
    if backstore:
        for so in list(root.storage_objects):
            if so.name == backstore and getattr(so, "plugin", "block") == "block":
                so.delete()
                changed = True
    return changed


def rts_save_config(lib) -> None:
    """Persist the running config (rtslib's default saveconfig.json path)."""
    lib.RTSRoot().save_to_file()


# ---------------------------------------------------------------------------- targetcli
def targetcli_ls() -> list[str]:
    return ["targetcli", "ls", "/iscsi"]


def targetcli_targets(ex) -> list[LioTarget]:
    """Runs ``targetcli ls /iscsi`` and parses the tree."""
    return parse_targetcli_ls(run_mapped(ex, targetcli_ls(), classify, read_only=True).stdout)


def targetcli_create_target(*, iqn: str, device: str, backstore: str, portal_ip: str,
                            initiator: str, portal_port: int = ISCSI_PORT, lun: int = 0,
                            chap: Chap | None = None) -> list[list[str]]:
    """The targetcli commands that build the target, in order, ending with saveconfig."""
    iqn, initiator = token(iqn, "iqn"), token(initiator, "initiator")
    bs = token(backstore, "backstore")
    tpg = f"/iscsi/{iqn}/tpg1"
    plan = [
        ["targetcli", "set", "global", "auto_add_default_portal=false"],
        ["targetcli", "/backstores/block", "create", f"name={bs}", f"dev={token(device, 'device')}"],
        ["targetcli", "/iscsi", "create", iqn],
        ["targetcli", f"{tpg}/luns", "create", f"/backstores/block/{bs}", f"lun={int(lun)}"],
        ["targetcli", f"{tpg}/portals", "create", token(_check_portal(portal_ip), "portal"),
         str(int(portal_port))],
        ["targetcli", f"{tpg}/acls", "create", initiator],
        ["targetcli", tpg, "set", "attribute", "generate_node_acls=0",
         f"authentication={1 if chap else 0}"],
    ]
    if chap:
        plan.append(["targetcli", f"{tpg}/acls/{initiator}", "set", "auth",
                     f"userid={token(chap.userid, 'chap user')}",
                     f"password={token(chap.password, 'chap password')}"])
    plan.append(targetcli_saveconfig())
    return plan


def targetcli_acl_userid(iqn: str, initiator: str) -> list[str]:
    """``targetcli /iscsi/IQN/tpg1/acls/INITIATOR get auth userid`` (``ls`` does not show
    CHAP users).  Read-only; parse with ``parse_targetcli_get``."""
    return ["targetcli", f"/iscsi/{token(iqn, 'iqn')}/tpg1/acls/{token(initiator, 'initiator')}",
            "get", "auth", "userid"]


def parse_targetcli_get(text: str, key: str) -> str | None:
    """targetcli's ``get GROUP KEY`` prints ``KEY=VALUE`` (configshell's ui_command_get;
    an unset value prints nothing after ``=``; captured: targetcli_get_global)."""
    for line in text.splitlines():
        k, sep, v = line.strip().partition("=")
        if sep and k.strip() == key:
            return v.strip() or None
    return None


def targetcli_delete_target(iqn: str, *, backstore: str | None = None) -> list[list[str]]:
    """``targetcli /iscsi delete IQN`` [+ ``/backstores/block delete NAME``] + saveconfig."""
    plan = [["targetcli", "/iscsi", "delete", token(iqn, "iqn")]]
    if backstore:
        plan.append(["targetcli", "/backstores/block", "delete", token(backstore, "backstore")])
    return plan + [targetcli_saveconfig()]


def targetcli_saveconfig() -> list[str]:
    return ["targetcli", "saveconfig"]


_NODE = re.compile(r"^(?P<lead>[ |]*)o- (?P<name>\S+)(?:\s+\.*\s*\[(?P<info>.*)\])?\s*$")


def _tree(text: str) -> list[tuple[int, str, str]]:
    nodes = []
    for line in text.splitlines():
        m = _NODE.match(line.rstrip())
        if m:
            nodes.append((len(m.group("lead")) // 2, m.group("name"), m.group("info") or ""))
    return nodes


def parse_targetcli_ls(text: str) -> list[LioTarget]:
    """Parse ``targetcli ls /iscsi`` (also works on a full ``targetcli ls``)."""
    nodes = _tree(text)
    # find the "iscsi" node; targets are its children
    base = next((d for d, n, _ in nodes if n == "iscsi"), None)
    if base is None:
        return []
    targets: list[dict] = []
    tpg: dict[str, Any] | None = None
    acl: dict[str, Any] | None = None
    section: str | None = None
    in_iscsi = False
    for depth, name, info in nodes:
        if name == "iscsi" and depth == base:
            in_iscsi = True
            continue
        if not in_iscsi:
            continue
        rel = depth - base
        if rel <= 0:
            break
        if rel == 1:
            targets.append({"iqn": name, "tpgs": []})
            tpg = section = acl = None
        elif rel == 2 and targets and name.startswith("tpg"):
            tpg = {"tag": int(name[3:]), "info": info, "luns": [], "acls": [], "portals": []}
            targets[-1]["tpgs"].append(tpg)
            section = acl = None
        elif rel == 3 and tpg is not None:
            section = name
            acl = None
        elif rel == 4 and tpg is not None:
            if section == "luns":
                tpg["luns"].append(_lun_from_ls(name, info))
            elif section == "acls":
                acl = {"initiator": name, "mapped": []}
                tpg["acls"].append(acl)
            elif section == "portals":
                ip, _, port = name.rpartition(":")
                tpg["portals"].append(Portal(ip.strip("[]"), int(port)))
        elif rel == 5 and section == "acls" and acl is not None and name.startswith("mapped_lun"):
            acl["mapped"].append(int(name[len("mapped_lun"):]))
    return [LioTarget(t["iqn"], tuple(_tpg_from_ls(g) for g in t["tpgs"])) for t in targets]


def _tpg_from_ls(g: dict) -> LioTpg:
    tokens = [t.strip() for t in g["info"].split(",") if t.strip()]
    gen = True if "gen-acls" in tokens else False if "no-gen-acls" in tokens else None
    auth = False if "no-auth" in tokens else True if any("auth" in t for t in tokens) else None
    # targetcli's UITPG.summary prints just "disabled" for a disabled TPG and the ACL/auth
    # tokens only for an enabled one, so "[no-gen-acls, no-auth]" means enabled -- as
    # rtslib says for the same target (kernel-lab captures targetcli_ls_iscsi and
    # rtslib_dump: "enable": true), so both backends give the same LioTpg.
    enabled = False if "disabled" in tokens else True if tokens else None
    acls = tuple(LioAcl(a["initiator"], tuple(sorted(a["mapped"]))) for a in g["acls"])
    return LioTpg(g["tag"], enabled, gen, auth, tuple(g["luns"]), acls, tuple(g["portals"]))


_LS_LUN = re.compile(r"^(?P<plugin>[\w:]+)/(?P<so>\S+)(?: \((?P<path>[^)]*)\))?")


def _lun_from_ls(name: str, info: str) -> LioLun:
    n = int(name[3:]) if name.startswith("lun") and name[3:].isdigit() else -1
    m = _LS_LUN.match(info)
    if not m:
        return LioLun(n, None, None, None)
    path = m.group("path")
    return LioLun(n, m.group("plugin"), m.group("so"),
                  path if path and path.startswith("/") else None)


# ---------------------------------------------------------------------------- errors
_RULES = [
    (r"already exists|exists in configFS|Storage object \S+ exists", AlreadyExists, None),
    (r"No such path|No storage object named|does not exist|No such Target|not found in configFS",
     NotFound, None),
    (r"system_bus_socket|DBusException|org\.freedesktop\.DBus",
     RemoteCommandError, "targetcli needs the system D-Bus (start dbus on the NAS)"),
]


def classify(err: RemoteCommandError) -> ImgstorError:
    """targetcli messages -> ``AlreadyExists`` / ``NotFound``; D-Bus trouble gets a hint."""
    return classify_by_text(err, _RULES)
