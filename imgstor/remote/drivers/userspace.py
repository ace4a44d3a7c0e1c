"""The userspace iSCSI initiator (libiscsi tools and qemu's iscsi driver), used in the lab.

Checks a LUN under the node's initiator name with ``iscsi-readcapacity16``
and describes the disk the way a VM opens it: the ``iscsi://`` URL, qemu's
``--image-opts`` string and a ``json:`` backing spec for qcow2 overlays.

Facts captured here against tgtd (tests/fixtures/userspace/iscsi_*, qemu_img_info_*):

* Every failed login exits 10 with ``Login Failed. … Status: <text>(<code>)`` on stderr
  (qemu-img: exit 1, "iSCSI: Failed to connect to LUN : Failed to log in to target.
  Status: …").
* An initiator that the target's ACL does not admit gets **"Target not found(515)"**, the
  very text of a target that does not exist: tgt hides such targets (discovery with that
  name omits them too, iscsi_ls_other).  The tool cannot tell the two apart, so
  ``classify`` gives ``NotFound`` with ``reason="target-not-found-or-acl"``; a caller that
  has just seen the target on the NAS knows it is a refusal.
* Bad or missing CHAP: "Authentication failure(513)" -> ``Conflict`` with
  ``reason="access-denied"`` (iscsi_inq_chap_*).
* A LUN that does not exist: "LOGICAL_UNIT_NOT_SUPPORTED" -> ``NotFound``, reason "no-such-lun".
* Nothing listening: "iscsi_service_reconnect_if_loggedin. Can not reconnect right now."
  -> stays a ``RemoteCommandError`` with a hint.
* The CHAP password can stay off the command line: with a user-only URL
  (``iscsi://user@host/…``) libiscsi reads ``LIBISCSI_CHAP_PASSWORD`` (iscsi_inq_chap_env).
* qemu's default initiator name is ``iqn.2008-11.org.linux-kvm``; always pass ours.
* A bare ``json:{"driver":"iscsi",…}`` backing fails; wrap it in ``raw``
  (``json:{"driver":"raw","file":{"driver":"iscsi",…}}``), as ``json_spec`` does.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from imgstor.errors import Conflict, ImgstorError, NotFound, RemoteCommandError
from imgstor.remote.drivers._common import ISCSI_PORT, classify_by_text, portal, run_mapped

__all__ = [
    "Capacity", "LIBISCSI_RC_FAILED", "CHAP_PASSWORD_ENV",
    "REASON_TARGET_OR_ACL", "REASON_ACCESS_DENIED", "REASON_NO_LUN", "url",
    "readcapacity16", "parse_readcapacity16",
    "read_capacity", "image_opts", "backing_dict", "json_spec", "classify",
]

# libiscsi's utils exit 10 on any failed login or command (captured: iscsi_inq_refused.cmd,
# iscsi_inq_notarget.cmd, iscsi_inq_nolun.cmd, iscsi_inq_noportal.cmd); the reason is text.
LIBISCSI_RC_FAILED = 10
CHAP_PASSWORD_ENV = "LIBISCSI_CHAP_PASSWORD"

REASON_TARGET_OR_ACL = "target-not-found-or-acl"
REASON_ACCESS_DENIED = "access-denied"
REASON_NO_LUN = "no-such-lun"


@dataclass(frozen=True)
class Capacity:
    block_size: int
    blocks: int           # last LBA + 1
    size: int             # bytes


# ---------------------------------------------------------------------------- argv
def url(address: str, iqn: str, lun: int = 1, port: int = ISCSI_PORT, *,
        chap_user: str | None = None) -> str:
    """``iscsi://[USER@]ADDR:PORT/IQN/LUN`` (password via ``CHAP_PASSWORD_ENV``, never here)."""
    user = f"{chap_user}@" if chap_user else ""
    return f"iscsi://{user}{portal(address, port)}/{iqn}/{int(lun)}"


def readcapacity16(address: str, iqn: str, initiator: str, lun: int = 1,
                   port: int = ISCSI_PORT, *, chap_user: str | None = None) -> list[str]:
    """``iscsi-readcapacity16 -i INITIATOR iscsi://ADDR:PORT/IQN/LUN``."""
    return ["iscsi-readcapacity16", "-i", initiator,
            url(address, iqn, lun, port, chap_user=chap_user)]


# ---------------------------------------------------------------------------- parsers
def _kv(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep and k.strip() not in out:
            out[k.strip()] = v.strip()
    return out


def parse_readcapacity16(text: str) -> Capacity:
    """``iscsi-readcapacity16``: ``RETURNED LOGICAL BLOCK ADDRESS``, ``LOGICAL BLOCK
    LENGTH IN BYTES``, ``Total size``."""
    d = _kv(text)
    try:
        lba = int(d["RETURNED LOGICAL BLOCK ADDRESS"])
        bs = int(d["LOGICAL BLOCK LENGTH IN BYTES"])
    except KeyError as e:
        raise ValueError(f"not iscsi-readcapacity16 output (no {e})") from None
    size = int(d["Total size"]) if "Total size" in d else (lba + 1) * bs
    return Capacity(bs, lba + 1, size)


_LS = re.compile(r"^Target:(\S+) Portal:(\[?[^\s\]]+\]?):(\d+),(-?\d+)\s*$")


# ---------------------------------------------------------------------------- readers
def _env(chap_password: str | None) -> dict | None:
    return {CHAP_PASSWORD_ENV: chap_password} if chap_password else None


def read_capacity(ex, address: str, iqn: str, initiator: str, lun: int = 1,
                  port: int = ISCSI_PORT, *, chap_user: str | None = None,
                  chap_password: str | None = None) -> Capacity:
    """Size of the LUN as ``initiator`` sees it.  Runs ``iscsi-readcapacity16``."""
    argv = readcapacity16(address, iqn, initiator, lun, port, chap_user=chap_user)
    return parse_readcapacity16(_run(ex, argv, chap_password).stdout)


def _run(ex, argv, chap_password):
    return run_mapped(ex, argv, classify, read_only=True, env=_env(chap_password))


# ---------------------------------------------------------------------------- qemu specs
def backing_dict(address: str, iqn: str, initiator: str, lun: int = 1,
                 port: int = ISCSI_PORT) -> dict:
    """qemu's iscsi block driver options (keys in qemu's spelling)."""
    return {"driver": "iscsi", "transport": "tcp", "portal": portal(address, port),
            "target": iqn, "lun": int(lun), "initiator-name": initiator}


def image_opts(address: str, iqn: str, initiator: str, lun: int = 1,
               port: int = ISCSI_PORT) -> str:
    """``driver=iscsi,transport=tcp,portal=ADDR:PORT,target=IQN,lun=1,initiator-name=IQN``
    for ``qemu-img … --image-opts``; a comma inside a value is doubled (qemu's escaping)."""
    d = backing_dict(address, iqn, initiator, lun, port)
    return ",".join(f"{k}={str(v).replace(',', ',,')}" for k, v in d.items())


def json_spec(address: str, iqn: str, initiator: str, lun: int = 1,
              port: int = ISCSI_PORT) -> str:
    """``json:{"driver":"raw","file":{"driver":"iscsi",…}}`` -- a backing file name for
    ``qemu-img create -F raw -b SPEC`` (captured working: qemu_img_create_overlay)."""
    spec = {"driver": "raw", "file": backing_dict(address, iqn, initiator, lun, port)}
    return "json:" + json.dumps(spec, separators=(",", ":"))


# ---------------------------------------------------------------------------- errors
_RULES = [
    (r"Target not found\(515\)", NotFound, REASON_TARGET_OR_ACL),
    (r"Authentication failure\(513\)|Authorization failure\(514\)", Conflict, REASON_ACCESS_DENIED),
    (r"LOGICAL_UNIT_NOT_SUPPORTED", NotFound, REASON_NO_LUN),
    (r"Can not reconnect right now|Connection refused|iscsi_connect failed",
     RemoteCommandError, "no iSCSI portal answers at that address:port"),
]


def classify(err: RemoteCommandError) -> ImgstorError:
    """libiscsi / qemu iscsi login failures -> ``NotFound`` / ``Conflict`` (see module doc)."""
    return classify_by_text(err, _RULES)
