"""open-iscsi (``iscsiadm``), the kernel initiator on compute nodes.

Read: sessions (``-m session``), session details with attached disks (``-m session -P 3``),
node records (``-m node``).  Change: discovery, login, logout, node delete, CHAP settings.

Exit codes below are iscsiadm(8), section EXIT STATUS.  "Already done" outcomes are
success for an idempotent step: logging in when logged in (15), logging out / deleting when
nothing is there (21).  A login the target refuses -- wrong initiator name (LIO answers an
initiator missing from the ACL with "authorization failure") or wrong CHAP -- is 24.

Samples used by the unit tests until the kernel lab's captures land are in
tests/unit/drivers/samples.py (from documentation).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from imgstor.errors import AlreadyExists, Conflict, ImgstorError, NotFound, RemoteCommandError
from imgstor.remote.drivers._common import ISCSI_PORT, classify_by_text, portal

__all__ = [
    "ISCSI_ERR_SESS_EXISTS", "ISCSI_ERR_NO_OBJS_FOUND", "ISCSI_ERR_LOGIN_AUTH_FAILED",
    "ISCSI_ERR_TRANS", "ISCSI_ERR_TRANS_TIMEOUT", "Session", "ScsiDisk", "SessionDetail",
    "NodeRecord", "parse_sessions", "parse_session_details", "parse_nodes", "parse_discovery",
    "read_initiator_name", "sessions", "session_details", "nodes", "discover", "discovery",
    "login", "logout", "node_delete", "chap_settings", "by_path_name", "by_path",
    "find_disk", "classify",
]

# iscsiadm(8) EXIT STATUS:
ISCSI_ERR_TRANS = 4                # "connect problem caused operation to fail"
ISCSI_ERR_TRANS_TIMEOUT = 8        # "connection timer exired while trying to connect"
ISCSI_ERR_SESS_EXISTS = 15         # "session is logged in"  -> login already done
ISCSI_ERR_NO_OBJS_FOUND = 21       # "no records/targets/sessions/portals found to execute
                                   #  operation on" -> logout/delete already done, or no sessions
ISCSI_ERR_LOGIN_AUTH_FAILED = 24   # "login failed due to authorization failure"

LOGIN_OK = (0, ISCSI_ERR_SESS_EXISTS)
LOGOUT_OK = (0, ISCSI_ERR_NO_OBJS_FOUND)


@dataclass(frozen=True)
class Session:
    transport: str        # tcp | iser
    sid: int
    address: str
    port: int
    tpgt: int
    iqn: str
    flash: bool = False


@dataclass(frozen=True)
class ScsiDisk:
    host: int
    channel: int
    id: int
    lun: int
    device: str           # "sdb"
    state: str            # running | …


@dataclass(frozen=True)
class SessionDetail:
    iqn: str
    address: str
    port: int
    tpgt: int
    sid: int | None
    initiator_name: str | None
    connection_state: str | None    # "LOGGED IN"
    session_state: str | None       # "LOGGED_IN"
    disks: tuple[ScsiDisk, ...] = ()


@dataclass(frozen=True)
class NodeRecord:
    address: str
    port: int
    tpgt: int
    iqn: str


# ---------------------------------------------------------------------------- parsers
_SESSION = re.compile(r"^(\w+): \[(\d+)\] (\[?[^\s\]]+\]?):(\d+),(-?\d+) (\S+)(?: \((non-flash|flash)\))?\s*$")
_NODE = re.compile(r"^(\[?[^\s\]]+\]?):(\d+),(-?\d+) (\S+)\s*$")


def _addr(text: str) -> str:
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def parse_sessions(text: str) -> list[Session]:
    """``iscsiadm -m session``: ``tcp: [1] 127.43.0.10:3260,1 iqn.… (non-flash)``."""
    out = []
    for line in text.splitlines():
        m = _SESSION.match(line.strip())
        if m:
            out.append(Session(m.group(1), int(m.group(2)), _addr(m.group(3)), int(m.group(4)),
                               int(m.group(5)), m.group(6), m.group(7) == "flash"))
    return out


def parse_nodes(text: str) -> list[NodeRecord]:
    """``iscsiadm -m node`` and ``-m discovery -t sendtargets``: ``ADDR:PORT,TPGT IQN``."""
    out = []
    for line in text.splitlines():
        m = _NODE.match(line.strip())
        if m:
            out.append(NodeRecord(_addr(m.group(1)), int(m.group(2)), int(m.group(3)),
                                  m.group(4)))
    return out


parse_discovery = parse_nodes

_DISK = re.compile(r"Attached scsi disk (\S+)\s+State: (\S+)")
_HCTL = re.compile(r"scsi(\d+) Channel (\d+) Id (\d+) Lun: (\d+)")


def parse_session_details(text: str) -> list[SessionDetail]:
    """``iscsiadm -m session -P 3``: one entry per session with its attached disks."""
    out: list[SessionDetail] = []
    cur: dict | None = None
    hctl = None

    def flush():
        if cur is not None:
            out.append(SessionDetail(cur["iqn"], cur.get("address", ""), cur.get("port", 0),
                                     cur.get("tpgt", 0), cur.get("sid"), cur.get("init"),
                                     cur.get("conn"), cur.get("sess"), tuple(cur["disks"])))

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Target: "):
            flush()
            cur = {"iqn": line.split()[1], "disks": []}
            hctl = None
            continue
        if cur is None:
            continue
        key, _, val = line.partition(":")
        val = val.strip()
        if key == "Current Portal":
            m = re.match(r"(\[?[^\s\]]+\]?):(\d+),(-?\d+)", val)
            if m:
                cur["address"], cur["port"], cur["tpgt"] = _addr(m.group(1)), int(m.group(2)), int(m.group(3))
        elif key == "SID":
            cur["sid"] = int(val)
        elif key == "Iface Initiatorname":
            cur["init"] = None if val in ("<empty>", "") else val
        elif key == "iSCSI Connection State":
            cur["conn"] = val
        elif key == "iSCSI Session State":
            cur["sess"] = val
        m = _HCTL.search(line)
        if m:
            hctl = tuple(int(x) for x in m.groups())
            continue
        m = _DISK.search(line)
        if m and hctl:
            cur["disks"].append(ScsiDisk(*hctl, m.group(1), m.group(2)))
    flush()
    return out


def read_initiator_name(text: str) -> str:
    """The ``InitiatorName=`` of /etc/iscsi/initiatorname.iscsi (comments ignored)."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if key.strip() == "InitiatorName" and value.strip():
            return value.strip()
    raise NotFound("no InitiatorName= line in the initiator name file")


# ---------------------------------------------------------------------------- readers
def sessions(ex) -> list[Session]:
    """Runs ``iscsiadm -m session``; no sessions (rc 21) is an empty list."""
    res = _read(ex, ["iscsiadm", "-m", "session"])
    return parse_sessions(res.stdout)


def session_details(ex) -> list[SessionDetail]:
    """Runs ``iscsiadm -m session -P 3``; no sessions (rc 21) is an empty list."""
    return parse_session_details(_read(ex, ["iscsiadm", "-m", "session", "-P", "3"]).stdout)


def nodes(ex) -> list[NodeRecord]:
    """Runs ``iscsiadm -m node``; no records (rc 21) is an empty list."""
    return parse_nodes(_read(ex, ["iscsiadm", "-m", "node"]).stdout)


def discover(ex, address: str, port: int = ISCSI_PORT) -> list[NodeRecord]:
    """SendTargets discovery; runs ``iscsiadm -m discovery -t sendtargets -p ADDR:PORT``.

    Not read-only: discovery (re)writes the node records of that portal, so a dry run
    skips it and returns []."""
    try:
        res = ex.run(discovery(address, port))
    except RemoteCommandError as e:
        raise classify(e) from e
    return parse_nodes(res.stdout)


def _read(ex, argv: list[str]):
    try:
        return ex.run(argv, read_only=True, ok_codes=(0, ISCSI_ERR_NO_OBJS_FOUND))
    except RemoteCommandError as e:
        raise classify(e) from e


def find_disk(details: list[SessionDetail], iqn: str, lun: int) -> str | None:
    """``/dev/sdX`` of LUN ``lun`` of the session to ``iqn``, if attached."""
    for s in details:
        if s.iqn == iqn:
            for d in s.disks:
                if d.lun == lun:
                    return "/dev/" + d.device
    return None


# ---------------------------------------------------------------------------- changes
def discovery(address: str, port: int = ISCSI_PORT) -> list[str]:
    """``iscsiadm -m discovery -t sendtargets -p ADDR:PORT``."""
    return ["iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", portal(address, port)]


def login(iqn: str, address: str, port: int = ISCSI_PORT) -> list[str]:
    """``iscsiadm -m node -T IQN -p ADDR:PORT --login``; run with ``ok_codes=LOGIN_OK``."""
    return ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal(address, port), "--login"]


def logout(iqn: str, address: str, port: int = ISCSI_PORT) -> list[str]:
    """``iscsiadm -m node -T IQN -p ADDR:PORT --logout``; run with ``ok_codes=LOGOUT_OK``."""
    return ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal(address, port), "--logout"]


def node_delete(iqn: str, address: str, port: int = ISCSI_PORT) -> list[str]:
    """``iscsiadm -m node -T IQN -p ADDR:PORT -o delete``; run with ``ok_codes=LOGOUT_OK``."""
    return ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal(address, port), "-o", "delete"]


def chap_settings(iqn: str, address: str, user: str, password: str,
                  port: int = ISCSI_PORT) -> list[list[str]]:
    """Three ``-o update`` commands setting CHAP on the node record (before login).

    The password is an argv element here (iscsiadm has no other way); it is visible in
    ``ps`` on the node while the command runs and lands in the node record (0600)."""
    base = ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal(address, port), "-o", "update"]
    return [base + ["-n", "node.session.auth.authmethod", "-v", "CHAP"],
            base + ["-n", "node.session.auth.username", "-v", user],
            base + ["-n", "node.session.auth.password", "-v", password]]


def by_path_name(address: str, iqn: str, lun: int, port: int = ISCSI_PORT) -> str:
    """udev's by-path link name: ``ip-ADDR:PORT-iscsi-IQN-lun-N``."""
    return f"ip-{portal(address, port)}-iscsi-{iqn}-lun-{int(lun)}"


def by_path(address: str, iqn: str, lun: int, port: int = ISCSI_PORT) -> str:
    return "/dev/disk/by-path/" + by_path_name(address, iqn, lun, port)


# ---------------------------------------------------------------------------- errors
# Order matters: a refused login's stderr also says "(15 - session exists)" -- two login
# attempts, two errors, rc 24 (kernel-lab capture iscsiadm_login_refused) -- so the
# authorization rule comes first.
_RULES = [
    (r"authorization failure|authentication failure", Conflict, "access-denied"),
    (r"session exists|already present", AlreadyExists, None),
    (r"No records found|No active sessions|No matching sessions|no record found|"
     r"No portals found|Could not find session", NotFound, None),
    (r"iscsid.*not running|can not connect to iSCSI daemon|Could not connect to iscsid",
     RemoteCommandError, "iscsid is not running on the node"),
]
_BY_RC = {
    ISCSI_ERR_SESS_EXISTS: (AlreadyExists, None),
    ISCSI_ERR_NO_OBJS_FOUND: (NotFound, None),
    ISCSI_ERR_LOGIN_AUTH_FAILED: (Conflict, "access-denied"),
}


def classify(err: RemoteCommandError) -> ImgstorError:
    """iscsiadm errors by exit code (iscsiadm(8)) first, then by stderr text.

    A refused login (initiator not in the target's ACL, or bad CHAP) becomes ``Conflict``
    with ``details["reason"] == "access-denied"``."""
    if err.rc in _BY_RC:
        cls, reason = _BY_RC[err.rc]
        tail = (err.details.get("stderr") or "").strip().splitlines()
        # The line naming the rc says why ("initiator reported error (24 - iSCSI login
        # failed due to authorization failure)"); the last line is often only "Could not
        # log into all portals" (iscsiadm_login_refused).
        why = [l for l in tail if f"({err.rc} - " in l]
        line = why[-1] if why else tail[-1] if tail else f"iscsiadm exit {err.rc}"
        msg = f"{err.host}: {line}"
        details = {"host": err.host, "argv": list(err.argv), "rc": err.rc,
                   "stderr": err.details.get("stderr", "")}
        if reason:
            details["reason"] = reason
        return cls(msg, **details)
    return classify_by_text(err, _RULES)
