"""tgt (the SCSI target framework, ``tgtd``/``tgtadm``): read targets, build change argv.

Facts from running tgt 1.0.85 here (tests/fixtures/userspace/tgt_*, capture.sh):

* ``--mode target --op show`` lists every target with LUNs, accounts, ACLs and connected
  I_T nexuses.  ``--op show --tid N`` does *not*: it prints the target's iSCSI parameters
  (``MaxRecvDataSegmentLength=…``, tgt_show_tid), so readers always use the full show.
* LUN 0 is the controller (``Backing store type: null``); the data LUN is LUN 1.
* An ACL entry admits an initiator if either its address or its name matches, so an address
  ACL would admit anyone from that host: bind initiator **names** only (``-Q``).
  A target whose ACL does not admit an initiator is invisible to it: discovery omits it and a
  login fails with "Target not found" (iscsi_ls_other, iscsi_inq_refused).
* Every tgtadm error exits 22 with a text on stderr ("tgtadm: can't find the target", "this
  target already exists", …); tgtadm exits 107 when no tgtd listens on the control port.
* ``-C N`` selects the control socket of the tgtd started with ``-C N`` (one per lab host).
* ``Size: 1074 MB`` is in units of 10^6 bytes (1 GiB LUN, tgt_show).
* tgt checks the ACL only at login (tgt usr/iscsi/iscsid.c): unbinding an initiator leaves
  its established connections working.  ``--mode conn --op delete --tid T --sid S --cid C``
  closes one; S is the ``I_T nexus`` number of the show and C its ``Connection`` number
  (lab captures tgt_show_nexus, tgt_conn_show ("Session: 8 / Connection: 0"),
  tgt_conn_delete; a second delete: "can't find the session", tgt_conn_delete_missing).
  An initiator whose connection is closed logs in again at once (libiscsi/qemu does), so
  the ACL must not admit it any more when its connections are closed.
* tgtadm puts ``--targetname``, ``-b``, ``-Q``, ``--user``/``--password`` and ``--param``
  values into one comma-separated parameter string that tgtd splits on ``,`` (tgt
  usr/tgtadm.c, usr/target.c): a value with ``,`` could add parameters, so ``_param``
  refuses it (audit L10).
* Portals are global to one tgtd: ``--mode portal --op show`` prints ``Portal:
  ADDR:PORT,TPGT`` (tgt_portal_show; tgt's own default, no ``portal=`` option, listens on
  every address and shows ``0.0.0.0:3260`` and ``:::3260``, per usr/iscsi/iscsi_tcp.c);
  ``--op new --param portal=A:P`` answers "invalid request" when it cannot listen there
  (tgt_portal_new_inuse).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from imgstor.errors import (
    AlreadyExists,
    Conflict,
    ImgstorError,
    NotFound,
    RemoteCommandError,
    UsageError,
)
from imgstor.remote.drivers._common import classify_by_text, positional, run_mapped

__all__ = [
    "Lun", "Nexus", "Target", "TGTADM_RC_ERROR", "TGTADM_RC_NO_DAEMON", "parse_show",
    "targets", "find_target", "next_free_tid", "show", "new_target", "add_lun",
    "bind_initiator", "unbind_initiator", "delete_target", "new_account", "bind_account",
    "unbind_account", "delete_account", "show_accounts", "parse_accounts", "accounts",
    "classify", "Connection", "delete_connection", "show_portals",
    "parse_portals", "portals", "new_portal", "WILDCARDS",
]

# tgtadm exit codes observed here (tests/fixtures/userspace/tgt_*.cmd; tgtadm(8) documents
# none): every refused request is 22 (EINVAL) with the reason on stderr -- "already exists"
# is told apart by text, not code; 107 (ENOTCONN) means no tgtd on that control port.
TGTADM_RC_ERROR = 22
TGTADM_RC_NO_DAEMON = 107


@dataclass(frozen=True)
class Lun:
    lun: int
    type: str                       # controller | disk | …
    size_mb: int                    # 10^6 bytes, as tgtadm prints it
    block_size: int
    backing_store_type: str         # null | rdwr | aio | …
    backing_store_path: str | None  # None for the controller LUN
    online: bool = True
    readonly: bool = False


@dataclass(frozen=True)
class Connection:
    cid: int
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Nexus:
    nexus: int                      # the session id tgtadm's --sid takes
    initiator: str
    alias: str | None
    addresses: tuple[str, ...] = ()
    connections: tuple[Connection, ...] = ()


@dataclass(frozen=True)
class Target:
    tid: int
    iqn: str
    state: str
    luns: tuple[Lun, ...] = ()
    acls: tuple[str, ...] = ()       # as printed: initiator names and/or addresses
    accounts: tuple[str, ...] = ()   # CHAP users bound, as printed ("U (outgoing)")
    nexuses: tuple[Nexus, ...] = ()  # connected initiators

    @property
    def connected_initiators(self) -> tuple[str, ...]:
        return tuple(n.initiator for n in self.nexuses)

    def lun(self, n: int) -> Lun | None:
        return next((x for x in self.luns if x.lun == n), None)


# ---------------------------------------------------------------------------- parser
_TARGET = re.compile(r"^Target (\d+): (\S+)\s*$")


def parse_show(text: str) -> list[Target]:
    """Parse ``tgtadm --lld iscsi --mode target --op show`` (empty output: no targets)."""
    out: list[Target] = []
    cur: dict | None = None
    section = None
    lun: dict | None = None
    nexus: dict | None = None

    def flush_lun():
        nonlocal lun
        if lun is not None and cur is not None:
            cur["luns"].append(_mk_lun(lun))
        lun = None

    def flush_nexus():
        nonlocal nexus
        if nexus is not None and cur is not None:
            conns = tuple(Connection(c, tuple(a)) for c, a in nexus["conns"])
            cur["nexuses"].append(Nexus(nexus["id"], nexus.get("initiator", ""),
                                        nexus.get("alias"), tuple(nexus["addrs"]), conns))
        nexus = None

    def flush_target():
        if cur is not None:
            flush_lun()
            flush_nexus()
            out.append(Target(cur["tid"], cur["iqn"], cur.get("state", ""),
                              tuple(cur["luns"]), tuple(cur["acls"]), tuple(cur["accounts"]),
                              tuple(cur["nexuses"])))

    for raw in text.splitlines():
        if not raw.strip():
            continue
        m = _TARGET.match(raw)
        if m:
            flush_target()
            cur = {"tid": int(m.group(1)), "iqn": m.group(2), "luns": [], "acls": [],
                   "accounts": [], "nexuses": []}
            section = None
            continue
        if cur is None:
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        line = raw.strip()
        if indent == 4:
            flush_lun()
            flush_nexus()
            section = line.rstrip(":")
            continue
        if section == "System information":
            k, _, v = line.partition(":")
            if k.strip() == "State":
                cur["state"] = v.strip()
        elif section == "LUN information":
            k, _, v = line.partition(":")
            if k.strip() == "LUN" and indent == 8:
                flush_lun()
                lun = {"LUN": v.strip()}
            elif lun is not None:
                lun[k.strip()] = v.strip()
        elif section == "I_T nexus information":
            k, _, v = line.partition(":")
            k = k.strip()
            if k == "I_T nexus":
                flush_nexus()
                nexus = {"id": int(v), "addrs": [], "conns": []}
            elif nexus is not None and k == "Initiator":
                m2 = re.match(r"(\S+)(?: alias: (\S+))?", v.strip())
                nexus["initiator"] = m2.group(1) if m2 else v.strip()
                alias = m2.group(2) if m2 else None
                nexus["alias"] = None if alias in (None, "none") else alias
            elif nexus is not None and k == "Connection":
                nexus["conns"].append((int(v), []))
            elif nexus is not None and k == "IP Address":
                nexus["addrs"].append(v.strip())
                if nexus["conns"]:
                    nexus["conns"][-1][1].append(v.strip())
        elif section == "Account information":
            cur["accounts"].append(line)
        elif section == "ACL information":
            cur["acls"].append(line)
    flush_target()
    return out


def _mk_lun(d: dict) -> Lun:
    m = re.match(r"(\d+) MB, Block size: (\d+)", d.get("Size", "0 MB, Block size: 0"))
    path = d.get("Backing store path", "None")
    return Lun(lun=int(d["LUN"]), type=d.get("Type", ""),
               size_mb=int(m.group(1)) if m else 0, block_size=int(m.group(2)) if m else 0,
               backing_store_type=d.get("Backing store type", ""),
               backing_store_path=None if path in ("None", "") else path,
               online=d.get("Online", "Yes") == "Yes", readonly=d.get("Readonly", "No") == "Yes")


# ---------------------------------------------------------------------------- readers
def targets(ex, *, control_port: int | None = None) -> list[Target]:
    """All targets of one tgtd.  Runs ``tgtadm --lld iscsi [-C N] --mode target --op show``."""
    return parse_show(run_mapped(ex, show(control_port=control_port), classify,
                                 read_only=True).stdout)


def accounts(ex, *, control_port: int | None = None) -> list[str]:
    """tgtd's CHAP account names.  Runs ``tgtadm --lld iscsi --mode account --op show``."""
    return parse_accounts(run_mapped(ex, show_accounts(control_port=control_port), classify,
                                     read_only=True).stdout)


def parse_accounts(text: str) -> list[str]:
    """``Account list:`` then one indented user per line (tgt 1.0.85 in the lab; no
    accounts: empty output)."""
    return [ln.strip() for ln in text.splitlines()
            if ln.strip() and ln.startswith(" ") and not ln.strip().endswith(":")]


def find_target(found: list[Target], iqn: str) -> Target | None:
    return next((t for t in found if t.iqn == iqn), None)


def next_free_tid(found: list[Target]) -> int:
    """Smallest tid >= 1 not in use (tid 0 is invalid for tgtadm)."""
    used = {t.tid for t in found}
    tid = 1
    while tid in used:
        tid += 1
    return tid


# ---------------------------------------------------------------------------- changes
def _base(control_port: int | None) -> list[str]:
    argv = ["tgtadm", "--lld", "iscsi"]
    if control_port is not None:
        argv += ["-C", str(int(control_port))]
    return argv


def show(*, control_port: int | None = None) -> list[str]:
    return _base(control_port) + ["--mode", "target", "--op", "show"]


def new_target(tid: int, iqn: str, *, control_port: int | None = None) -> list[str]:
    """``tgtadm --lld iscsi --mode target --op new --tid N --targetname IQN``."""
    return _base(control_port) + ["--mode", "target", "--op", "new", "--tid", _tid(tid),
                                  "--targetname", _param(iqn, "iqn")]


def add_lun(tid: int, path: str, *, lun: int = 1, control_port: int | None = None) -> list[str]:
    """``tgtadm --lld iscsi --mode logicalunit --op new --tid N --lun 1 -b PATH``."""
    return _base(control_port) + ["--mode", "logicalunit", "--op", "new", "--tid", _tid(tid),
                                  "--lun", str(int(lun)), "-b", _param(path, "backing path")]


def bind_initiator(tid: int, initiator_iqn: str, *,
                   control_port: int | None = None) -> list[str]:
    """``tgtadm --lld iscsi --mode target --op bind --tid N -Q IQN`` (``-Q`` is
    ``--initiator-name``).  There is deliberately no address variant (``-I``)."""
    return _base(control_port) + ["--mode", "target", "--op", "bind", "--tid", _tid(tid),
                                  "-Q", _param(initiator_iqn, "initiator")]


def unbind_initiator(tid: int, initiator_iqn: str, *,
                     control_port: int | None = None) -> list[str]:
    return _base(control_port) + ["--mode", "target", "--op", "unbind", "--tid", _tid(tid),
                                  "-Q", initiator_iqn]


def delete_target(tid: int, *, force: bool = True, control_port: int | None = None) -> list[str]:
    """``tgtadm --lld iscsi --mode target --op delete --force --tid N`` (``--force`` drops
    connected sessions; without it tgtadm refuses while an initiator is logged in)."""
    return (_base(control_port) + ["--mode", "target", "--op", "delete"]
            + (["--force"] if force else []) + ["--tid", _tid(tid)])


def new_account(user: str, password: str, *, control_port: int | None = None) -> list[str]:
    """CHAP account.  Note: tgtadm takes the password on its command line (visible in
    ``ps`` on the NAS for the command's lifetime); there is no file or stdin form."""
    return _base(control_port) + ["--mode", "account", "--op", "new",
                                  "--user", _param(user, "CHAP user"),
                                  "--password", _param(password, "CHAP password")]


def bind_account(tid: int, user: str, *, control_port: int | None = None) -> list[str]:
    return _base(control_port) + ["--mode", "account", "--op", "bind", "--tid", _tid(tid),
                                  "--user", _param(user, "CHAP user")]


def unbind_account(tid: int, user: str, *, control_port: int | None = None) -> list[str]:
    return _base(control_port) + ["--mode", "account", "--op", "unbind", "--tid", _tid(tid),
                                  "--user", user]


def show_accounts(*, control_port: int | None = None) -> list[str]:
    return _base(control_port) + ["--mode", "account", "--op", "show"]


def delete_account(user: str, *, control_port: int | None = None) -> list[str]:
    """Deleting an account also unbinds it from every target (seen in the lab, tgt 1.0.85);
    a second delete says "can't find the account" (NotFound)."""
    return _base(control_port) + ["--mode", "account", "--op", "delete", "--user", user]


def delete_connection(tid: int, sid: int, cid: int, *,
                      control_port: int | None = None) -> list[str]:
    """``tgtadm --lld iscsi --mode conn --op delete --tid T --sid S --cid C``: close one
    connection of I_T nexus S (module doc); "can't find the session" -> NotFound."""
    return _base(control_port) + ["--mode", "conn", "--op", "delete", "--tid", _tid(tid),
                                  "--sid", str(int(sid)), "--cid", str(int(cid))]


def show_portals(*, control_port: int | None = None) -> list[str]:
    return _base(control_port) + ["--mode", "portal", "--op", "show"]


def new_portal(address: str, port: int = 3260, *, control_port: int | None = None) -> list[str]:
    """``tgtadm --lld iscsi --mode portal --op new --param portal=ADDR:PORT`` (tgtd-wide)."""
    addr = _param(address, "portal address")
    if ":" in addr and not addr.startswith("["):
        addr = f"[{addr}]"
    return _base(control_port) + ["--mode", "portal", "--op", "new",
                                  "--param", f"portal={addr}:{int(port)}"]


WILDCARDS = ("0.0.0.0", "::", "[::]")


def parse_portals(text: str) -> list[tuple[str, int]]:
    """``Portal: ADDR:PORT,TPGT`` lines -> [(ADDR, PORT)] (IPv6 without brackets)."""
    out = []
    for line in text.splitlines():
        k, sep, v = line.strip().partition(":")
        if not sep or k != "Portal":
            continue
        addr, _, port = v.strip().split(",", 1)[0].rpartition(":")
        if addr and port.isdigit():
            out.append((addr.strip("[]") if addr.startswith("[") else addr, int(port)))
    return out


def portals(ex, *, control_port: int | None = None) -> list[tuple[str, int]]:
    """tgtd's listening portals.  Runs ``tgtadm --lld iscsi --mode portal --op show``."""
    return parse_portals(run_mapped(ex, show_portals(control_port=control_port), classify,
                                    read_only=True).stdout)


def _param(value: object, what: str) -> str:
    """A value tgtadm folds into its comma-separated parameter string (module doc)."""
    text = positional(value, what)
    if "," in text:
        raise UsageError(f"refusing {what} {text!r} for tgtadm: contains ','", field=what)
    return text


def _tid(tid: int) -> str:
    tid = int(tid)
    if tid < 1:
        raise ValueError(f"tgt tid must be >= 1: {tid}")
    return str(tid)


# ---------------------------------------------------------------------------- errors
# Texts captured in tests/fixtures/userspace/tgt_*.err (tgt 1.0.85).
_RULES = [
    (r"already exists", AlreadyExists, None),
    (r"can't find|does not exist", NotFound, None),
    (r"still active", Conflict, None),
    (r"Transport endpoint is not connected|failed to send request hdr",
     RemoteCommandError, "tgtd is not running on that control port (-C)"),
    (r"invalid request", RemoteCommandError,
     "tgtd refused the request; for a new LUN check that the backing file exists"),
]


def classify(err: RemoteCommandError) -> ImgstorError:
    """Map tgtadm stderr to ``AlreadyExists``/``NotFound``/``Conflict``; else ``err``."""
    return classify_by_text(err, _RULES)
