"""Shared vocabulary of the step scenario files (scn_*.py).

A scenario is a dict (see test_step_scenarios.py for the keys the runner reads).  Its
``script`` is the exact list of commands the step must run, in order, each with a canned
answer.  Where a parser reads the answer, the answer is REAL output captured from zfs-fuse,
tgt and libiscsi (tests/fixtures/userspace, capture.sh); ``cmd(..., capture=NAME)`` loads
NAME.out/.err and the rc from NAME.cmd, and ``sub`` renames the captured objects (the
capture says ``tank/nope``, the scenario is about ``tank/vm1-vol``).  Answers no capture
exists for (open-iscsi, a few zfs texts) are written inline and say where their format
comes from.

The argv lists below are written out literally, not built with the driver functions: the
scenarios pin what runs on a node.
"""
from __future__ import annotations

from pathlib import Path

USERSPACE = Path(__file__).resolve().parents[2] / "fixtures" / "userspace"

GiB = 1 << 30

POOL, VOL, NAME = "tank", "vm1-vol", "tank/vm1-vol"
PATH1 = "/mnt/tank/vm1-vol/disk.raw"          # a `file` volume's LUN (as in tgt_show)
PATH2 = "/mnt/tank/vm2-vol/disk.raw"
PATH3 = "/mnt/tank/vm3-vol/disk.raw"
ZVOL1 = "/dev/zvol/tank/vm1-vol"

IQN1 = "iqn.2001-04.com.nas-0-0-vm1-vol"      # tid 1 in tgt_show, ACL = INIT0
IQN2 = "iqn.2001-04.com.nas-0-0-vm2-vol"      # tid 2 in tgt_show, ACL = 127.0.0.1 + INIT1
IQN3 = "iqn.2001-04.com.nas-0-0-vm3-vol"      # not in any capture
INIT0 = "iqn.1994-05.com.redhat:compute-0-0"
INIT1 = "iqn.1994-05.com.redhat:compute-0-1"
PORTAL = "127.0.0.1:3261"                     # the userspace lab's tgtd portal


def fixture_text(name: str, part: str = "out") -> str:
    return (USERSPACE / f"{name}.{part}").read_text()


def capture_rc(name: str) -> int:
    for line in fixture_text(name, "cmd").splitlines():
        if line.startswith("rc: "):
            return int(line[4:])
    raise AssertionError(f"no rc in {name}.cmd")


def _sub(text: str, sub: dict[str, str] | None) -> str:
    for old, new in (sub or {}).items():
        text = text.replace(old, new)
    return text


def cmd(argv: list[str], *, capture: str | None = None, sub: dict[str, str] | None = None,
        rc: int | None = None, stdout: str | None = None, stderr: str | None = None) -> dict:
    """One expected command and its answer (rc 0 and no output unless told)."""
    out = {"argv": list(argv), "rc": 0, "stdout": "", "stderr": ""}
    if capture is not None:
        out.update(rc=capture_rc(capture), stdout=_sub(fixture_text(capture), sub),
                   stderr=_sub(fixture_text(capture, "err"), sub))
    for key, val in (("rc", rc), ("stdout", stdout), ("stderr", stderr)):
        if val is not None:
            out[key] = val
    return out


# ------------------------------------------------------------------------------ zfs
def zfs_get(props: str, name: str = NAME) -> list[str]:
    return ["zfs", "get", "-H", "-p", "-o", "name,property,value,source", props, name]


ZGET_VOL = zfs_get("type,volsize,mountpoint,imgstor:role")
ZPOOL_CHECK = ["zpool", "list", "-H", "-o", "name", POOL]

NO_DATASET = {"tank/nope": NAME}              # sub for the *_missing captures


def zget_lines(*props: str, rename: dict[str, str] | None = None) -> str:
    """Lines of the captured ``zfs get`` (zfs_get.out: tank/vm1-vol, a filesystem with
    mountpoint /mnt/tank/vm1-vol and imgstor:host/target/mode set, imgstor:unset unset)."""
    rows = {ln.split("\t")[1]: ln for ln in fixture_text("zfs_get").splitlines() if ln.strip()}
    return "".join(_sub(rows[p], rename) + "\n" for p in props)


# `type` and imgstor:role are not in the capture; same format (zfs get -H: name TAB property
# TAB value TAB source); an unset user property as the captured imgstor:unset line.
MARKED = f"{NAME}\timgstor:role\tvolume\tlocal\n"
UNMARKED = zget_lines("imgstor:unset", rename={"imgstor:unset": "imgstor:role"})
FILE_VOL_GET_UNMARKED = (f"{NAME}\ttype\tfilesystem\t-\n" + zget_lines("volsize", "mountpoint")
                         + UNMARKED)
FILE_VOL_GET = FILE_VOL_GET_UNMARKED.replace(UNMARKED, MARKED)


def zvol_get(size: int, *, marked: bool = True) -> str:
    """OpenZFS ``zfs get -H -p`` of a zvol (no capture: zfs-fuse has no zvols)."""
    return (f"{NAME}\ttype\tvolume\t-\n{NAME}\tvolsize\t{size}\tlocal\n"
            f"{NAME}\tmountpoint\t-\t-\n" + (MARKED if marked else UNMARKED))


# ------------------------------------------------------------------------------ tgt
TGT = ["tgtadm", "--lld", "iscsi"]
TGT_SHOW = TGT + ["--mode", "target", "--op", "show"]


TGT_PORTALS = TGT + ["--mode", "portal", "--op", "show"]
# tgtd listening on the target's portal only (format: lab capture tgt_portal_show)
PORTALS = {"argv": TGT_PORTALS, "rc": 0, "stdout": f"Portal: {PORTAL},1\n", "stderr": ""}


def tgt_conn_delete(tid: int, sid: int, cid: int = 0) -> list[str]:
    return TGT + ["--mode", "conn", "--op", "delete", "--tid", str(tid), "--sid", str(sid),
                  "--cid", str(cid)]


def tgt_new(tid: int, iqn: str) -> list[str]:
    return TGT + ["--mode", "target", "--op", "new", "--tid", str(tid), "--targetname", iqn]


def tgt_lun(tid: int, path: str) -> list[str]:
    return TGT + ["--mode", "logicalunit", "--op", "new", "--tid", str(tid), "--lun", "1",
                  "-b", path]


def tgt_bind(tid: int, initiator: str) -> list[str]:
    return TGT + ["--mode", "target", "--op", "bind", "--tid", str(tid), "-Q", initiator]


def tgt_unbind(tid: int, initiator: str) -> list[str]:
    return TGT + ["--mode", "target", "--op", "unbind", "--tid", str(tid), "-Q", initiator]


def tgt_unbind_address(tid: int, address: str) -> list[str]:
    return TGT + ["--mode", "target", "--op", "unbind", "--tid", str(tid), "-I", address]


def tgt_delete(tid: int) -> list[str]:
    return TGT + ["--mode", "target", "--op", "delete", "--force", "--tid", str(tid)]


# ------------------------------------------------------------------------ initiators
def readcap16(iqn: str = IQN1, initiator: str = INIT0, lun: int = 1,
              portal: str = PORTAL) -> list[str]:
    return ["iscsi-readcapacity16", "-i", initiator, f"iscsi://{portal}/{iqn}/{lun}"]


def by_path(iqn: str = IQN1, lun: int = 1, portal: str = PORTAL) -> str:
    return f"/dev/disk/by-path/ip-{portal}-iscsi-{iqn}-lun-{lun}"


ISCSIADM_SESSIONS = ["iscsiadm", "-m", "session"]
UDEV_SETTLE = ["udevadm", "settle", "--timeout=30"]


def ia_node(iqn: str, op: str, portal: str = PORTAL) -> list[str]:
    """``iscsiadm -m node -T IQN -p PORTAL --login|--logout|-o delete``."""
    return ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal] + op.split()


IA_DISCOVERY = ["iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", PORTAL]


def ia_session_line(sid: int, iqn: str, portal: str = PORTAL) -> str:
    """``iscsiadm -m session`` format, iscsiadm(8) and samples.ISCSIADM_SESSION."""
    return f"tcp: [{sid}] {portal},1 {iqn} (non-flash)\n"


# iscsiadm(8) exit 21 and the text open-iscsi prints with it (samples.ISCSIADM_NO_SESSIONS_ERR)
NO_SESSIONS = {"rc": 21, "stderr": "iscsiadm: No active sessions.\n"}
