"""Per-volume CHAP credentials, kept on the frontend (NAS config ``chap = true``).

One file per volume: ``<state dir>/chap/<nas>/<vol>.json``, mode 0600, in directories of
mode 0700.  The password is never written to the state file, never put in an argv on the
frontend (it reaches node steps in the JSON on stdin) and never printed: node steps mask
it as ``***`` in their command log, their ``SKIP>`` lines and their errors.

* password: 16 characters from ``secrets`` over [A-Za-z0-9].  16 is inside every range
  the tools accept: open-iscsi and LIO take up to 256 bytes but RFC 3720 initiators such as
  Microsoft's demand 12-16, so 12-16 is the common safe range; alphanumerics need no
  quoting in targetcli's re-parsed command line, tgtadm's options or a URL.
* user: ``imgstor-<12 hex>``, a hash of NAS, volume and password.  A regenerated password
  (the file was lost) therefore has a new user name, and a step that finds the old user
  bound knows the NAS holds stale credentials (tgt cannot show an account's password).

Written by ``ensure`` at the first map, reused by later maps (idempotent), removed by
``remove`` with the volume's image.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import string
from dataclasses import dataclass

from imgstor import atomicfile, validate
from imgstor.errors import StateError

__all__ = ["Credentials", "PASSWORD_LEN", "path_for", "load", "ensure", "remove", "generate"]

PASSWORD_LEN = 16
ALPHABET = string.ascii_letters + string.digits
USER_RE = re.compile(r"^imgstor-[0-9a-f]{12}$")
PASSWORD_RE = re.compile(r"^[A-Za-z0-9]{12,64}$")


@dataclass(frozen=True)
class Credentials:
    """One volume's CHAP account (a docstring: dataclasses then needs no inspect)."""
    user: str
    password: str

    def __repr__(self) -> str:              # never in a traceback or a debug print
        return f"Credentials(user={self.user!r}, password='***')"

    __str__ = __repr__

    def wire(self) -> dict:
        """What a node step takes as ``chap=`` (sent in the JSON on stdin only)."""
        return {"user": self.user, "password": self.password}


def path_for(state_path: str, nas: str, vol: str) -> str:
    nas, vol = validate.host(nas, "NAS"), validate.volume(vol)
    return os.path.join(os.path.dirname(os.path.abspath(state_path)), "chap", nas,
                        f"{vol}.json")


def generate(nas: str, vol: str) -> Credentials:
    password = "".join(secrets.choice(ALPHABET) for _ in range(PASSWORD_LEN))
    digest = hashlib.sha256(f"{nas}/{vol}/{password}".encode()).hexdigest()[:12]
    return Credentials(f"imgstor-{digest}", password)


def load(state_path: str, nas: str, vol: str) -> Credentials | None:
    """The stored credentials, or None if there are none."""
    path = path_for(state_path, nas, vol)
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StateError(f"CHAP credentials file {path} is unreadable "
                         f"({type(e).__name__}); remove it to generate new ones") from None
    user, password = d.get("user"), d.get("password")
    if not (isinstance(user, str) and USER_RE.fullmatch(user) and isinstance(password, str)
            and PASSWORD_RE.fullmatch(password)):
        raise StateError(f"CHAP credentials file {path} is malformed; remove it to "
                         "generate new ones")
    return Credentials(user, password)


def _mkdirs(path: str) -> None:
    """Make the chap/ and chap/<nas>/ directories 0700 (and tighten existing ones)."""
    nas_dir = os.path.dirname(path)
    for d in (os.path.dirname(nas_dir), nas_dir):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        os.chmod(d, 0o700)


def ensure(state_path: str, nas: str, vol: str, *, write: bool = True) -> Credentials:
    """The volume's credentials: the stored ones, else new ones, written 0600 (temp file,
    fsync, ``os.replace``) unless ``write`` is false (a dry run: nothing is kept)."""
    have = load(state_path, nas, vol)
    if have is not None:
        path = path_for(state_path, nas, vol)
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
        return have
    creds = generate(nas, vol)
    if not write:
        return creds
    path = path_for(state_path, nas, vol)
    _mkdirs(path)
    atomicfile.replace(path, json.dumps({"user": creds.user,
                                         "password": creds.password}).encode())
    return creds


def remove(state_path: str, nas: str, vol: str) -> bool:
    """Remove the volume's credentials file; True if there was one."""
    try:
        os.unlink(path_for(state_path, nas, vol))
    except FileNotFoundError:
        return False
    return True
