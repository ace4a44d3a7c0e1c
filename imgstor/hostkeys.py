"""Host keys for the SSH transport: the configured known_hosts, and what to do with a
host whose key is not in it (refuse, or trust on first use and pin it).

* Only the configured file is read (never ~/.ssh/known_hosts nor /etc/ssh/ssh_known_hosts
  unless the config names one).  It is parsed here, line by line, instead of by paramiko's
  ``HostKeys.load``, which raises ``InvalidHostKey`` (a traceback) on OpenSSH marker lines:
  ``@revoked`` keys are honoured (a host presenting one is refused, whatever else the
  file or the config says), ``@cert-authority`` lines are skipped with a warning (host
  certificates are not supported), malformed lines are skipped with a warning naming them.
* ``Policy`` is the paramiko missing-host-key policy (paramiko calls it only for a host
  with no key at all in the file; a host with a different key is ``BadHostKeyException``,
  always refused).  Without ``accept_unknown_host_keys`` it refuses.  With it, it pins: the
  key is appended to the known_hosts file (created 0600), as ``ADDRESS`` or
  ``[ADDRESS]:PORT`` like OpenSSH, and its fingerprint is printed on stderr; the next run
  finds it there and a changed key is refused like any other.
* A pin made that way carries the comment ``imgstor-unconfirmed`` (UNCONFIRMED): nobody
  compared its fingerprint (cron's refresh pins a new host unattended, audit L5).  The
  transport uses it (it is pinned), but the sync hop does not (imgstor/synctrust.py) until
  ``imgstor ping --trust HOST`` (``confirm``) removed the comment.
"""
from __future__ import annotations

import base64
import hashlib
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, TextIO

import paramiko

from imgstor.errors import HostKeyError

__all__ = ["KnownHosts", "Policy", "fingerprint", "load_known_hosts", "confirm",
           "UNCONFIRMED"]

UNCONFIRMED = "imgstor-unconfirmed"

_pin_lock = threading.Lock()


def fingerprint(key: Any) -> str:
    """``SHA256:…`` as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def verify_hint(address: str, port: int) -> str:
    p = f"-p {port} " if port != 22 else ""
    return (f"verify the host's key out of band (`ssh-keyscan {p}{address} | ssh-keygen -lf -` "
            "and compare the fingerprint with the one on the host's console, "
            "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`)")


@dataclass
class KnownHosts:
    """What was read from one known_hosts file."""

    path: str
    keys: Any                                        # paramiko.HostKeys
    revoked: set[bytes] = field(default_factory=set)  # key blobs of @revoked lines
    # (host name, key blob) of pins made on first use and not confirmed yet
    unconfirmed: set[tuple[str, bytes]] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


def load_known_hosts(path: str, *, missing_ok: bool, into: Any = None) -> KnownHosts:
    """Parse ``path`` into ``into`` (a ``paramiko.HostKeys``, e.g. an SSHClient's, or a
    new one).  A missing file is empty if ``missing_ok`` (pinning will create it), else a
    ``HostKeyError``.  Revoked keys are never among the keys."""
    if not path:
        raise HostKeyError("[ssh] known_hosts is empty: name the file that holds the hosts' "
                           "keys (imgstor trusts no other)", stage="connect")
    kh = KnownHosts(path, paramiko.HostKeys() if into is None else into)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        if missing_ok:
            return kh
        raise HostKeyError(f"known_hosts file {path} does not exist: add the hosts' keys "
                           "to it (ssh-keyscan, then verify each fingerprint)",
                           stage="connect") from None
    except OSError as e:
        raise HostKeyError(f"cannot read known_hosts {path}: {e.strerror or e}",
                           stage="connect") from None
    entries: list[Any] = []             # paramiko HostKeyEntry (paramiko has no types)
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        if line.startswith("@"):
            marker, _, rest = line.partition(" ")
            if marker == "@revoked":
                blob = _key_blob(rest.strip())
                if blob is None:
                    # A revocation we cannot read must not be silently dropped.
                    raise HostKeyError(f"{where}: unreadable @revoked line; fix it "
                                       "(imgstor will not guess which key it revokes)",
                                       stage="connect")
                kh.revoked.add(blob)
            elif marker == "@cert-authority":
                kh.warnings.append(f"{where}: @cert-authority ignored (SSH host "
                                   "certificates are not supported; list the hosts' keys)")
            else:
                kh.warnings.append(f"{where}: unknown marker {marker!r}; line ignored")
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, n)
        except paramiko.hostkeys.InvalidHostKey:
            entry = None
        if entry is None:
            kh.warnings.append(f"{where}: not a known_hosts line this client can read "
                               "(bad key data or key type); ignored")
            continue
        entries.append(entry)
        if line.split()[3:4] == [UNCONFIRMED]:
            kh.unconfirmed |= {(n, entry.key.asbytes()) for n in entry.hostnames}
    for entry in entries:
        if entry.key.asbytes() in kh.revoked:
            continue                       # revoked: as if unknown; the policy refuses it
        for name in entry.hostnames:
            kh.keys.add(name, entry.key.get_name(), entry.key)
    return kh


def _key_blob(rest: str) -> bytes | None:
    """The key blob of ``HOSTS TYPE BASE64 [comment]`` (the part after a marker)."""
    fields = rest.split()
    if len(fields) < 3:
        return None
    try:
        return base64.b64decode(fields[2], validate=True)
    except ValueError:
        return None


class Policy(paramiko.MissingHostKeyPolicy):
    """Refuse an unknown host key, or with ``pin`` trust it on first use: append it to
    the known_hosts file and say so on stderr.  A revoked key is refused either way."""

    def __init__(self, kh: KnownHosts, *, pin: bool, host: str, address: str, port: int,
                 err: TextIO | None = None) -> None:
        self.kh, self.pin, self.host, self.address, self.port = kh, pin, host, address, port
        self.err = err or sys.stderr

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        where = f"{self.host} ({self.address}:{self.port})"
        fp = f"{key.get_name()} {fingerprint(key)}"
        if key.asbytes() in self.kh.revoked:
            raise HostKeyError(f"{where}: host key {fp} is marked @revoked in "
                               f"{self.kh.path}; refusing to connect", stage="connect",
                               host=self.host)
        if not self.pin:
            raise HostKeyError(f"{where}: host key {fp} is not in {self.kh.path}; refusing "
                               f"to connect: {verify_hint(self.address, self.port)}, then "
                               f"add it to {self.kh.path}", stage="connect", host=self.host)
        line = f"{hostname} {key.get_name()} {key.get_base64()} {UNCONFIRMED}\n"
        with _pin_lock:
            try:
                _append(self.kh.path, line)
            except OSError as e:
                raise HostKeyError(f"{where}: cannot pin host key {fp} in {self.kh.path}: "
                                   f"{e.strerror or e}", stage="connect",
                                   host=self.host) from None
        client.get_host_keys().add(hostname, key.get_name(), key)
        print(f"imgstor: {where}: new host key {fp} trusted on first use and pinned in "
              f"{self.kh.path} (accept_unknown_host_keys = true); a changed key will be "
              f"refused; {verify_hint(self.address, self.port)}; the sync hop uses it "
              f"only once `imgstor ping --trust {self.host}` confirmed it", file=self.err, flush=True)


def _append(path: str, line: str) -> None:
    """Append one line; the file is created 0600 (its directory 0700) if missing, never
    through a symlink.  One write(2) with O_APPEND, so concurrent pins do not interleave."""
    d = os.path.dirname(path) or "."
    if not os.path.isdir(d):
        os.makedirs(d, 0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        size = os.fstat(fd).st_size
        if size:
            # the file may not end with a newline: never glue our line onto another
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = "\n" + line
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def fingerprint_of(line: str) -> str:
    """``SHA256:…`` of a known_hosts line's key."""
    blob = _key_blob(line)
    if blob is None:
        return "?"
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def confirm(path: str, names: list[str]) -> list[str]:
    """Drop the UNCONFIRMED comment from the lines of NAMES (``ADDRESS`` or
    ``[ADDRESS]:PORT``) in known_hosts PATH, rewriting it atomically; the lines changed."""
    from imgstor import atomicfile
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    done, out = [], []
    for line in lines:
        w = line.split()
        if len(w) >= 4 and w[3] == UNCONFIRMED and set(w[0].split(",")) & set(names):
            line = " ".join(w[:3] + w[4:])
            done.append(line)
        out.append(line)
    if done:
        with _pin_lock:
            atomicfile.replace(path, ("\n".join(out) + "\n").encode())
    return done
