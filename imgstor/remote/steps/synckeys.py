"""Trust for the NAS <-> node copy hop, set up by imgstor itself (imgstor/synctrust.py is
the frontend half; docs/DESIGN.md "Copy jobs" the whole story).

* ``sync.install_key``  on the SENDING host: imgstor's sync key (made on the frontend) as
                        KEY_DIR/id_ed25519 (0600, KEY_DIR 0700) and KEY_DIR/known_hosts with
                        the receivers' host keys pinned under ``imgstor-<name>`` (the keys
                        the frontend itself verified).  Root's own keys and known_hosts are
                        not used or touched.
* ``sync.authorize``    on the RECEIVING host: the sync gate (imgstor.remote.syncgate) as
                        GATE_PATH (0700) and one line in AUTHORIZED_KEYS for the sender's key:
                        ``restrict,from="ADDR…",command="python3 -I GATE --pool P… --sender
                        S"``, so the key can only run the gate, only from the sender's
                        addresses, only on datasets of the listed pools, only for copies the
                        frontend announced (``sync.expect``).  An older gate is replaced by
                        this code's (the upgrade of installed gates).  Other lines are kept; a line
                        for the same sender (comment ``imgstor-sync:SENDER``) is replaced.
"""
from __future__ import annotations

import os
import pkgutil
import re

from imgstor.errors import StepError, UsageError
from imgstor.remote import locks
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import StepResult
from imgstor.remote.steps.registry import step

__all__ = ["install_key", "authorize", "GATE_PATH", "AUTHORIZED_KEYS", "authorized_line",
           "TAG"]

GATE_PATH = "/var/lib/imgstor/sync-gate.py"
AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"
_PUBKEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) "
                     r"[A-Za-z0-9+/]+={0,3}$", re.ASCII)
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$", re.ASCII)
_ADDR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:*?-]{0,252}$", re.ASCII)
_POOL = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,127}$", re.ASCII)
_PRIV_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
TAG = "imgstor-sync:"                  # the comment that marks imgstor's lines



def _abs(path: str, what: str) -> str:
    if not isinstance(path, str) or not os.path.isabs(path) or "\n" in path or ".." in path:
        raise UsageError(f"bad {what} {path!r}: an absolute path")
    return path


def _ensure_file(ex: Executor, path: str, data: bytes, mode: int) -> bool:
    """Write ``path`` if its content or mode differs; True if it did (or would)."""
    if ex.fs.read_bytes(path) == data and ex.fs.mode(path) == mode:
        return False
    ex.write_file(path, data, mode=mode)
    return True


@step("sync.install_key")
def install_key(ex: Executor, *, private_key: str, pins: list[dict],
                key_dir: str = "/root/.ssh/imgstor-sync") -> StepResult:
    """Ensure KEY_DIR/id_ed25519 is PRIVATE_KEY and KEY_DIR/known_hosts pins each
    ``{"alias": NAME, "keys": ["ssh-ed25519 AAAA…", …]}`` as ``imgstor-NAME``."""
    key_dir = _abs(key_dir, "key directory")
    if not isinstance(private_key, str) or not private_key.startswith(_PRIV_BEGIN):
        raise UsageError("private_key is not an OpenSSH private key (not shown)")
    kh_path = os.path.join(key_dir, "known_hosts")
    with locks.sync_keys(dry_run=ex.dry_run):
        return _install_key(ex, private_key, pins, key_dir, kh_path)


def _install_key(ex: Executor, private_key: str, pins: list[dict], key_dir: str,
                 kh_path: str) -> StepResult:
    keep = []
    for line in (ex.fs.read_bytes(kh_path) or b"").decode(errors="replace").splitlines():
        first = line.split(" ", 1)[0]
        if line.strip() and first not in {f"imgstor-{p.get('alias')}" for p in pins}:
            keep.append(line)
    new = []
    for p in pins:
        alias, keys = p.get("alias"), p.get("keys") or []
        if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
            raise UsageError(f"bad host name {alias!r}")
        if not keys:
            raise UsageError(f"no host key to pin for {alias}")
        for k in keys:
            if not isinstance(k, str) or not _PUBKEY.fullmatch(k):
                raise UsageError(f"bad host key for {alias}: {str(k)[:60]!r}")
            new.append(f"imgstor-{alias} {k}")
    kh = ("\n".join(keep + new) + "\n").encode()
    changed = False
    if ex.fs.is_dir(key_dir) and (ex.fs.mode(key_dir) or 0) & 0o777 != 0o700:
        ex.run(["chmod", "0700", key_dir])
        changed = True
    key = private_key.encode() if private_key.endswith("\n") else (private_key + "\n").encode()
    changed |= _ensure_file(ex, os.path.join(key_dir, "id_ed25519"), key, 0o600)
    changed |= _ensure_file(ex, kh_path, kh, 0o600)
    return StepResult(changed, {"key_dir": key_dir, "pinned": sorted(p["alias"] for p in pins)},
                      f"sync key in {key_dir} " + ("installed" if changed else "is current"))


def authorized_line(*, public_key: str, sender: str, from_addresses: list[str],
                    pools: list[str], python: str, gate_path: str,
                    incremental: bool = False) -> str:
    """The authorized_keys line for SENDER's sync key (see the module docstring)."""
    if not _PUBKEY.fullmatch(public_key or ""):
        raise UsageError(f"bad public key {str(public_key)[:60]!r}")
    if not isinstance(sender, str) or not _ALIAS.fullmatch(sender):
        raise UsageError(f"bad sender name {sender!r}")
    if not from_addresses or not all(isinstance(a, str) and _ADDR.fullmatch(a)
                                     for a in from_addresses):
        raise UsageError(f"bad from addresses {from_addresses!r}")
    if not pools or not all(isinstance(p, str) and _POOL.fullmatch(p) for p in pools):
        raise UsageError(f"bad pools {pools!r}")
    _abs(python, "python path")
    _abs(gate_path, "gate path")
    command = " ".join([python, "-I", gate_path] + [w for p in pools for w in ("--pool", p)]
                       + ["--sender", sender]
                       + (["--incremental-from", sender] if incremental else []))
    if any(c in command for c in '"\\'):
        raise UsageError(f"refusing a forced command with quotes: {command!r}")
    return (f'restrict,from="{",".join(from_addresses)}",command="{command}" '
            f"{public_key} {TAG}{sender}")


@step("sync.authorize")
def authorize(ex: Executor, *, public_key: str, sender: str, from_addresses: list[str],
              pools: list[str], authorized_keys: str = AUTHORIZED_KEYS,
              gate_path: str = GATE_PATH, python: str | None = None,
              incremental: bool = False) -> StepResult:
    """Ensure the sync gate is GATE_PATH and AUTHORIZED_KEYS lets SENDER's sync key run
    it (and nothing else) from FROM_ADDRESSES on datasets of POOLS.  INCREMENTAL (this
    host is a NAS, SENDER a node sending its snapshots back): the gate also takes
    incremental streams, only into datasets whose ``imgstor:host`` is SENDER."""
    authorized_keys = _abs(authorized_keys, "authorized_keys path")
    python = python or ex.fs.which("python3") or "/usr/bin/python3"
    line = authorized_line(public_key=public_key, sender=sender,
                           from_addresses=from_addresses, pools=pools, python=python,
                           gate_path=gate_path, incremental=incremental)
    gate = pkgutil.get_data("imgstor.remote", "syncgate.py")
    if gate is None:                 # the app's loader cannot read its own files
        raise StepError("sync.authorize: imgstor/remote/syncgate.py is not readable "
                        "from the node app")
    with locks.sync_keys(dry_run=ex.dry_run):
        changed = _ensure_file(ex, gate_path, gate, 0o700)
        changed |= _authorize_line(ex, authorized_keys, sender, line)
    return StepResult(changed, {"gate": gate_path, "authorized_keys": authorized_keys,
                                "line": line},
                      f"{sender} may run the sync gate here" + ("" if changed else " already"))


def _authorize_line(ex: Executor, authorized_keys: str, sender: str, line: str) -> bool:
    """AUTHORIZED_KEYS with SENDER's LINE (replaced where it stands); True if written."""
    have = (ex.fs.read_bytes(authorized_keys) or b"").decode(errors="replace").splitlines()
    tag = f" {TAG}{sender}"
    lines: list[str] = []
    for ln in have:                       # the sender's line is replaced where it stands
        if not ln.rstrip().endswith(tag):
            lines.append(ln)
        elif line not in lines:
            lines.append(line)
    if line not in lines:
        lines.append(line)
    data = ("\n".join(lines) + "\n").encode()
    if (ex.fs.read_bytes(authorized_keys) or b"") != data:
        # authorized_keys keeps its mode if it exists (sshd wants it not group-writable)
        have_mode = ex.fs.mode(authorized_keys)
        mode = 0o600 if have_mode is None else have_mode & ~0o022
        ex.write_file(authorized_keys, data, mode=mode)
        return True
    return False
