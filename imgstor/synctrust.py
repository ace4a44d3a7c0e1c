"""Trust for the copy hop between a NAS and a compute node, made by imgstor itself.

The frontend keeps one ed25519 key per SENDING host (a NAS sends volumes to nodes; a node
sends its snapshots back to its NAS):
``<state dir>/sync-keys/<sender>`` (0600) and ``.pub``, directory 0700, written like the
CHAP credentials (temp file, O_NOFOLLOW, fsync, rename), made under an flock on
``sync-keys/.lock``: a monitor running many jobs (or several commands) that first trusts a
sender from several threads at once made several keys, and a reader could pair one's
private half with another's public one (seen in a 20-VM storm on the lab: the key
installed on the NAS was not the one authorized on the node).  ``ensure(cluster, sender,
receiver)`` then runs two idempotent node steps:

1. on the sender, ``sync.install_key``: the private key as /root/.ssh/imgstor-sync/id_ed25519
   and a known_hosts of its own holding the receiver's host key(s) under the alias
   ``imgstor-<receiver>`` — the keys this frontend has in its own (verified)
   ``ssh.known_hosts`` for the receiver's address.  The copy's ssh uses only these files
   (``-F /dev/null``, ``IdentitiesOnly``, ``HostKeyAlias``, ``StrictHostKeyChecking=yes``).
2. on the receiver, ``sync.authorize``: the sync gate and one authorized_keys line
   ``restrict,from="<sender's addresses>",command="python3 -I <gate> --pool <pool>…"``.

No key is distributed by hand, the key opens nothing but the gate, only from the sender,
only for the receiver's sync pools, and a compromised NAS gains "receive a stream into a
fresh dataset of tank" on the nodes, not a root shell.

``copy_args(config, sender, receiver, …)`` builds the ``copy.start`` arguments the way
``ensure`` set the trust up (data address, alias, port, bwlimit, compression).

``expect(cluster, sender, receiver, …)`` announces one copy to the receiver's gate before
it starts (issue 18: the gate takes nothing else): ``copy.prepare`` on the sender (the
snapshot, made if asked, and its guids), then ``sync.expect`` on the receiver, both over
the frontend's own verified SSH.  ``start_copy`` is that plus ``copy.start``.
``revoke(cluster, sender, receiver)`` undoes ``ensure`` when no job needs the hop.

Host keys pinned on first use without a person (cron's refresh: see imgstor/hostkeys.py)
are not handed to the sync hop until ``imgstor ping --trust HOST`` confirmed them.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from typing import Any

from imgstor import atomicfile, validate
from imgstor.errors import HostKeyError, StateError

__all__ = ["key_paths", "ensure_key", "host_keys", "from_addresses", "receiver_pools",
           "ensure", "copy_args", "expect", "start_copy", "revoke", "objset_type"]


def _keys_dir(state_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(state_path)), "sync-keys")


def key_paths(state_path: str, sender: str) -> tuple[str, str]:
    sender = validate.host(sender)
    d = _keys_dir(state_path)
    return os.path.join(d, sender), os.path.join(d, sender + ".pub")


def _write(path: str, data: bytes) -> None:
    atomicfile.replace(path, data)


def ensure_key(state_path: str, sender: str, *, write: bool = True) -> tuple[str, str]:
    """(OpenSSH private key text, ``ssh-ed25519 AAAA…`` public key) of SENDER's sync key:
    the stored one, else a new one (kept unless ``write`` is false: a dry run), made once
    however many threads and processes ask at the same time."""
    got = _read_key(state_path, sender)
    if got is not None:
        return got
    if not write:
        return _new_key()
    with _keys_lock(state_path):
        got = _read_key(state_path, sender)        # made meanwhile by another
        if got is not None:
            return got
        priv, pub = _new_key()
        priv_path, pub_path = key_paths(state_path, sender)
        # the public half last: a reader finding both finds a pair
        _write(priv_path, priv.encode())
        _write(pub_path, (pub + f" imgstor-sync:{sender}\n").encode())
        return priv, pub


@contextlib.contextmanager
def _keys_lock(state_path: str) -> Iterator[None]:
    d = _keys_dir(state_path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    fd = os.open(os.path.join(d, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_key(state_path: str, sender: str) -> tuple[str, str] | None:
    priv_path, pub_path = key_paths(state_path, sender)
    try:
        with open(priv_path, encoding="ascii") as f:
            priv = f.read()
        with open(pub_path, encoding="ascii") as f:
            pub = " ".join(f.read().split()[:2])
        if os.stat(priv_path).st_mode & 0o077:
            os.chmod(priv_path, 0o600)
        return priv, pub
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StateError(f"sync key {priv_path} is unreadable ({type(e).__name__}); remove "
                         "it and its .pub to make a new one") from None


def _new_key() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode()
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH).decode()
    return priv, pub


def host_keys(config: Any, host: str) -> list[str]:
    """``["ssh-ed25519 AAAA…", …]``: what this frontend's known_hosts holds for HOST's
    address (``[address]:port`` off port 22).  None known: ``HostKeyError``."""
    from imgstor.hostkeys import load_known_hosts  # the transport's own reader:
    hc = config.host(host)                            # @revoked keys never pinned
    port = hc.port or config.ssh.port
    lookup = hc.address if port == 22 else f"[{hc.address}]:{port}"
    kh = load_known_hosts(config.ssh.known_hosts, missing_ok=False)
    found = kh.keys.lookup(lookup) or {}
    keys = sorted(f"{k.get_name()} {k.get_base64()}" for k in found.values()
                  if (lookup, k.asbytes()) not in kh.unconfirmed)
    if not keys and found:
        raise HostKeyError(f"{host}: its host key in {config.ssh.known_hosts} was pinned on "
                           "first use by an unattended run and is not confirmed: imgstor "
                           "does not hand it to the sync hop; check its fingerprint and run "
                           f"`imgstor ping --trust {host}`", host=host)
    if not keys:
        raise HostKeyError(f"{host}: no host key for {lookup} in {config.ssh.known_hosts}; "
                           "imgstor pins only keys it has verified itself")
    return keys


def from_addresses(config: Any, sender: str) -> list[str]:
    """Where SENDER's copies come from: its address and, on a storage network, what its
    data address resolves to (on this frontend)."""
    hc = config.host(sender)
    out = [hc.address]
    if hc.data_address and hc.data_address != hc.address:
        try:
            for info in socket.getaddrinfo(hc.data_address, None, proto=socket.IPPROTO_TCP):
                if info[4][0] not in out:
                    out.append(info[4][0])
        except socket.gaierror:
            out.append(hc.data_address)
    return out


def receiver_pools(config: Any, receiver: str) -> list[str]:
    hc = config.host(receiver)
    return [hc.vm_container_zpool] if hc.role == "compute" else list(hc.img_zpools)


def ensure(cluster: Any, sender: str, receiver: str, *, pools: list[str] | None = None,
           key_dir: str = "/root/.ssh/imgstor-sync",
           authorized_keys: str | None = None, gate_path: str | None = None) -> dict:
    """Make SENDER able to run the sync gate on RECEIVER (both steps idempotent)."""
    config = cluster.config
    priv, pub = ensure_key(config.state_path, sender, write=not cluster.dry_run)
    pins = [{"alias": receiver, "keys": host_keys(config, receiver)}]
    a = cluster.step(sender, "sync.install_key", private_key=priv, pins=pins, key_dir=key_dir)
    extra = {k: v for k, v in (("authorized_keys", authorized_keys),
                                ("gate_path", gate_path)) if v}
    # a NAS takes incrementals (the pull back) from a node, only into that node's volumes;
    # a node takes only new datasets from a NAS
    b = cluster.step(receiver, "sync.authorize", public_key=pub, sender=sender,
                     from_addresses=from_addresses(config, sender),
                     pools=pools or receiver_pools(config, receiver),
                     incremental=config.host(receiver).role == "nas", **extra)
    return {"changed": a.changed or b.changed, "sender": a.facts, "receiver": b.facts}


def copy_args(config: Any, sender: str, receiver: str, *, snapshot: str, to_dataset: str,
              base: str | None = None, key_dir: str = "/root/.ssh/imgstor-sync",
              **extra: Any) -> dict:
    """Arguments for the ``copy.start`` step on SENDER (see imgstor/remote/steps/copy.py)."""
    hs, hr = config.host(sender), config.host(receiver)
    args = {"snapshot": snapshot, "to_address": hr.data_address or hr.address,
            "to_alias": receiver, "to_dataset": to_dataset, "base": base,
            "port": hr.port or config.ssh.port, "user": config.ssh.user,
            "bwlimit": getattr(hs, "sync_bwlimit", 0),
            "compress": getattr(hs, "sync_compress", ""), "key_dir": key_dir}
    args.update(extra)
    return args


def objset_type(config: Any, sender: str, receiver: str) -> str:
    """What a copy between SENDER and RECEIVER carries: a zvol (``volume``) or a file
    volume's dataset (``filesystem``), from the NAS's ``volume_kind`` (the config's word,
    not the sender's)."""
    nas = sender if config.host(sender).role == "nas" else receiver
    return "volume" if config.host(nas).volume_kind == "zvol" else "filesystem"


def expect(cluster: Any, sender: str, receiver: str, *, snapshot: str, to_dataset: str,
           base: str | None = None, rollback: bool = False, create_snapshot: bool = False,
           objtype: str | None = None, kind: str | None = None) -> dict:
    """Announce SENDER's copy of SNAPSHOT into TO_DATASET to RECEIVER's gate (see the module
    docstring); BASE as ``copy.start`` takes it (None, ``"auto"`` or a snapshot).  Facts
    of ``sync.expect`` (``fromguid``…)."""
    config = cluster.config
    src = cluster.step(sender, "copy.prepare", snapshot=snapshot,
                       create_snapshot=create_snapshot).facts
    kw: dict[str, Any] = {}
    if base == "auto":
        kw["candidates"] = src["older"]
    elif base:
        bshort = base.split("@", 1)[1]
        found = [g for n, g in src["older"] if n == bshort]
        if not found:
            raise StateError(f"{sender}: {base} is not an older snapshot of {snapshot}")
        kw["fromguid"] = found[0]
    role = config.host(receiver).role
    return cluster.step(receiver, "sync.expect", dataset=to_dataset, sender=sender,
                        kind=kind or ("volume" if role == "nas" else "local-copy"),
                        type=objtype or objset_type(config, sender, receiver),
                        toguid=src["guid"], rollback=rollback, **kw).facts


def start_copy(cluster: Any, sender: str, receiver: str, args: dict, *,
               objtype: str | None = None) -> Any:
    """``expect`` then ``copy.start`` with ARGS (``copy_args``'s): the step's result."""
    expect(cluster, sender, receiver, snapshot=args["snapshot"],
           to_dataset=args.get("to_dataset", ""), base=args.get("base"),
           rollback=bool(args.get("rollback")),
           create_snapshot=bool(args.get("create_snapshot")), objtype=objtype)
    return cluster.step(sender, "copy.start", **args)


def revoke(cluster: Any, sender: str, receiver: str, *,
           key_dir: str = "/root/.ssh/imgstor-sync",
           authorized_keys: str | None = None) -> dict:
    """Undo ``ensure``: RECEIVER no longer lets SENDER's key in (``sync.revoke`` there),
    SENDER forgets RECEIVER's pin (and its key once it pins nothing)."""
    extra = {"authorized_keys": authorized_keys} if authorized_keys else {}
    a = cluster.step(receiver, "sync.revoke", sender=sender, **extra)
    b = cluster.step(sender, "sync.revoke", receiver=receiver, key_dir=key_dir)
    return {"changed": a.changed or b.changed, "receiver": a.facts, "sender": b.facts}
