"""open-iscsi (``iscsiadm``), the kernel initiator on compute nodes.

Read: sessions (``-m session``), session details with attached disks (``-m session -P 3``),
node records (``-m node``).  Change: discovery, login, logout, node delete, CHAP settings.

Exit codes below are iscsiadm(8), section EXIT STATUS.  "Already done" outcomes are
success for an idempotent step: logging in when logged in (15), logging out / deleting when
nothing is there (21).  A login the target refuses -- wrong initiator name (LIO answers an
initiator missing from the ACL with "authorization failure") or wrong CHAP -- is 24.

The kernel lab's real output is in tests/fixtures/kernel/ (test_drv_kernel_captures.py);
tests/unit/drivers/samples.py adds shapes from documentation the lab never printed.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from imgstor.errors import AlreadyExists, Conflict, ImgstorError, NotFound, RemoteCommandError
from imgstor.remote import atomicfile
from imgstor.remote.drivers._common import ISCSI_PORT, classify_by_text, portal, run_mapped

__all__ = [
    "ISCSI_ERR_SESS_EXISTS", "ISCSI_ERR_NO_OBJS_FOUND", "ISCSI_ERR_LOGIN_AUTH_FAILED",
    "ISCSI_ERR_TRANS", "ISCSI_ERR_TRANS_TIMEOUT", "LOGIN_OK", "LOGOUT_OK", "Session", "ScsiDisk",
    "SessionDetail",
    "parse_sessions", "parse_session_details",
    "sessions", "session_details", "discovery",
    "login", "logout", "node_delete", "chap_settings", "by_path_name", "by_path",
    "node_record_files", "write_node_password", "NODES_DIR",
    "classify",
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


_DISK = re.compile(r"Attached scsi disk (\S+)\s+State: (\S+)")
_HCTL = re.compile(r"scsi(\d+) Channel (\d+) Id (\d+) Lun: (\d+)")


def parse_session_details(text: str) -> list[SessionDetail]:
    """``iscsiadm -m session -P 3``: one entry per session with its attached disks."""
    out: list[SessionDetail] = []
    cur: dict | None = None
    hctl: tuple[int, int, int, int] | None = None

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
            h, c, i, n = (int(x) for x in m.groups())
            hctl = (h, c, i, n)
            continue
        m = _DISK.search(line)
        if m and hctl:
            cur["disks"].append(ScsiDisk(*hctl, m.group(1), m.group(2)))
    flush()
    return out


# ---------------------------------------------------------------------------- readers
def sessions(ex) -> list[Session]:
    """Runs ``iscsiadm -m session``; no sessions (rc 21) is an empty list."""
    res = _read(ex, ["iscsiadm", "-m", "session"])
    return parse_sessions(res.stdout)


def session_details(ex) -> list[SessionDetail]:
    """Runs ``iscsiadm -m session -P 3``; no sessions (rc 21) is an empty list."""
    return parse_session_details(_read(ex, ["iscsiadm", "-m", "session", "-P", "3"]).stdout)


def _read(ex, argv: list[str]):
    return run_mapped(ex, argv, classify, read_only=True, ok_codes=LOGOUT_OK)


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


def chap_settings(iqn: str, address: str, user: str, port: int = ISCSI_PORT) -> list[list[str]]:
    """The ``-o update`` commands for the non-secret CHAP settings of the node record
    (authmethod, username), before login.  The password is written into the record file
    by ``write_node_password``: through ``-o update -v`` it would be in argv, readable by
    every local user in /proc/PID/cmdline while iscsiadm runs (audit M5)."""
    base = ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal(address, port), "-o", "update"]
    return [base + ["-n", "node.session.auth.authmethod", "-v", "CHAP"],
            base + ["-n", "node.session.auth.username", "-v", user]]


NODES_DIR = "/etc/iscsi/nodes"
PASSWORD_KEY = "node.session.auth.password"


def node_record_files(iqn: str, address: str, port: int = ISCSI_PORT,
                      nodes_dir: str = NODES_DIR) -> list[str]:
    """The node record files of IQN at ADDR:PORT: ``NODES_DIR/IQN/ADDR,PORT,TPGT/IFACE``
    (open-iscsi's layout since 2.0-870; 2.1.8 on the kernel lab) or the older
    ``NODES_DIR/IQN/ADDR,PORT,TPGT`` file."""
    d = os.path.join(nodes_dir, iqn)
    if "/" in iqn or iqn in (".", "..") or not os.path.isdir(d):
        return []
    out = []
    for e in sorted(os.listdir(d)):
        if not e.startswith(f"{address},{int(port)},"):
            continue
        p = os.path.join(d, e)
        if os.path.isdir(p):
            out += [os.path.join(p, f) for f in sorted(os.listdir(p))
                    if os.path.isfile(os.path.join(p, f)) and not f.startswith(".")]
        elif os.path.isfile(p):
            out.append(p)
    return out


def write_node_password(iqn: str, address: str, password: str, port: int = ISCSI_PORT,
                        nodes_dir: str = NODES_DIR) -> list[str]:
    """Set ``node.session.auth.password`` in the node record files of IQN at ADDR:PORT
    (made by discovery): the line is replaced or put before ``# END RECORD``; the file
    is rewritten 0600 through a temp file and ``os.replace`` (iscsiadm's own records are
    0600 root).  iscsiadm reads the record at login.  Returns the files written."""
    if not password or any(c in password for c in "\0\r\n"):
        raise ValueError("bad password for a node record")
    files = node_record_files(iqn, address, port, nodes_dir)
    if not files:
        raise NotFound(f"no node record of {iqn} at {portal(address, port)} in {nodes_dir} "
                       "(discovery makes it)")
    for path in files:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        lines = [it for it in lines if it.split("=", 1)[0].strip() != PASSWORD_KEY]
        new = f"{PASSWORD_KEY} = {password}"
        end = next((i for i, it in enumerate(lines) if it.strip() == "# END RECORD"), len(lines))
        lines.insert(end, new)
        atomicfile.replace(path, ("\n".join(lines) + "\n").encode(), mode=0o600,
                           tmp=f"{path}.imgstor-tmp")
    return files


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
        why = [it for it in tail if f"({err.rc} - " in it]
        line = why[-1] if why else tail[-1] if tail else f"iscsiadm exit {err.rc}"
        msg = f"{err.host}: {line}"
        details = {"host": err.host, "argv": list(err.argv), "rc": err.rc,
                   "stderr": err.details.get("stderr", "")}
        if reason:
            details["reason"] = reason
        return cls(msg, **details)
    return classify_by_text(err, _RULES)
