"""imgstor sync gate: the one program imgstor's sync key may run on a receiving host.

Installed by the node step ``sync.authorize`` as a stand-alone file (default
/var/lib/imgstor/sync-gate.py, 0700) and named as the forced command of the sending
host's key in the receiver's authorized_keys::

    restrict,from="10.1.1.1",command="/usr/bin/python3 -I /var/lib/imgstor/sync-gate.py
    --pool tank" ssh-ed25519 AAAA… imgstor-sync:nas-0-0

sshd runs it whatever the client asked for and passes the request in
``SSH_ORIGINAL_COMMAND``, which must be one of (dataset names under a ``--pool`` only)::

    imgstor-sync-gate state DATASET            JSON: resume support, exists, token, snapshots
    imgstor-sync-gate receive [-s] [--zstd] [--incremental [--rollback=SNAP]] DATASET
                                               [zstd -dc |] zfs receive [-s] DATASET,
                                               then (ok) the same JSON as state
    imgstor-sync-gate abort DATASET            zfs receive -A DATASET (drop a partial receive)

Options of the forced command: ``--pool P`` (repeatable: the only pools it touches) and
``--incremental-from HOST`` (the receiver is a NAS and the key is HOST's, a compute node
that sends its snapshots back): without it incremental streams and rollbacks are refused,
so a NAS key can only create datasets on a node (a full stream into a name that does not
exist); with it they are allowed only into datasets whose ``imgstor:host`` property is
HOST.

Never ``receive -F`` (audit L15): a full stream is refused when DATASET exists and is not a
partial (resumable) receive, an incremental one needs DATASET to exist.  An incremental
into a dataset touched since its last snapshot (a mounted filesystem's atime is enough)
fails "destination has been modified"; ``--rollback=SNAP`` (asked for by the pull back,
whose destination is the NAS copy nobody writes while the VM runs on the node) first runs
``zfs rollback DATASET@SNAP`` — only if SNAP is the newest snapshot there, and without
``-r``, so no snapshot is ever destroyed.  One receive per
dataset at a time: an ``flock`` on /run/imgstor/recv/<dataset>.lock held by the gate and
its children for the life of the receive (its pid is written in the file).

Exit status: 0 ok, 2 refused, 3 busy, else the status of the stage that failed.
Standard library only and no imgstor imports: this file is copied as it is.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import subprocess
import sys

NAME = "imgstor-sync-gate"
LOCK_DIR = "/run/imgstor/recv"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_COMPONENT = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}"
DATASET = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})+$", re.ASCII)


class Refused(Exception):
    code = 2


class Busy(Refused):
    code = 3


def zfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["zfs", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


def resume_supported(pool: str) -> bool:
    """OpenZFS knows the receive_resume_token property; zfs-fuse says "invalid property"."""
    return zfs("get", "-H", "-o", "value", "receive_resume_token", pool).returncode == 0


def state(ds: str) -> dict:
    pool = ds.split("/", 1)[0]
    out: dict = {"resume": resume_supported(pool), "exists": False, "token": None,
                 "snapshots": {}, "receiving": _lock_held(ds)}
    if zfs("list", "-H", "-o", "name", ds).returncode != 0:
        return out
    out["exists"] = True
    if out["resume"]:
        t = zfs("get", "-H", "-o", "value", "receive_resume_token", ds).stdout.strip()
        out["token"] = None if t in ("", "-") else t
    snaps = [n for n in zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", ds)
             .stdout.split() if n.startswith(ds + "@")]
    if snaps:
        r = zfs("get", "-H", "-p", "-o", "name,value", "guid", *snaps)
        for line in r.stdout.splitlines():
            f = line.split("\t")
            if len(f) == 2:
                out["snapshots"][f[0].split("@", 1)[1]] = f[1]
    return out


def _lock_path(ds: str) -> str:
    return os.path.join(LOCK_DIR, ds.replace("/", "%") + ".lock")


def _lock_held(ds: str) -> bool:
    try:
        fd = os.open(_lock_path(ds), os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _take_lock(ds: str) -> int:
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    fd = os.open(_lock_path(ds), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Busy(f"a receive into {ds} is running already") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def receive(ds: str, *, resumable: bool, zstd: bool, incremental: bool,
            rollback: str | None = None) -> int:
    fd = _take_lock(ds)
    # the few checks a receive needs (a full `state` costs more zfs calls on the stream's path)
    exists = zfs("list", "-H", "-o", "name", ds).returncode == 0
    token = None
    if resumable:
        r = zfs("get", "-H", "-o", "value", "receive_resume_token", ds.split("/", 1)[0])
        if r.returncode != 0:
            raise Refused(f"{ds}: this pool has no resumable receive (receive -s)")
        if exists:
            t = zfs("get", "-H", "-o", "value", "receive_resume_token", ds).stdout.strip()
            token = None if t in ("", "-") else t
    if incremental and not exists:
        raise Refused(f"{ds} does not exist: an incremental stream needs it")
    if not incremental and exists and not token:
        raise Refused(f"{ds} exists and is not a partial receive: imgstor never overwrites "
                      "a dataset (no receive -F); remove it or receive elsewhere")
    if rollback:
        newest = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-s", "creation", "-r", ds)
        mine = [n for n in newest.stdout.split() if n.startswith(ds + "@")]
        if not mine or mine[-1] != f"{ds}@{rollback}":
            raise Refused(f"{ds}@{rollback} is not the newest snapshot of {ds}; not rolling back")
        r = zfs("rollback", f"{ds}@{rollback}")
        if r.returncode:
            raise RuntimeError(f"zfs rollback {ds}@{rollback}: {r.stderr.strip()}")
    recv = ["zfs", "receive"] + (["-s"] if resumable else []) + [ds]
    procs = []
    zstd_out = None                  # the decompressor's stdout, zfs receive's stdin
    if zstd:
        dec = subprocess.Popen(["zstd", "-dcq"], stdin=0, stdout=subprocess.PIPE,
                               pass_fds=(fd,))
        procs.append(dec)
        zstd_out = dec.stdout
    # zfs receive prints nothing on stdout; stderr (its errors) goes back to the sender
    procs.append(subprocess.Popen(recv, stdin=0 if zstd_out is None else zstd_out,
                                  stdout=subprocess.DEVNULL, pass_fds=(fd,)))
    if zstd_out is not None:
        zstd_out.close()
    rcs = [p.wait() for p in procs]
    names = ([["zstd", "-dcq"]] if zstd else []) + [recv]
    for argv, rc in zip(names, rcs):
        if rc:
            print(f"{NAME}: {shlex.join(argv)} exited {rc}", file=sys.stderr)
    rc = next((rc for rc in rcs if rc), 0)
    if rc == 0:                      # the sender verifies from this, no second connection
        print(json.dumps(state(ds)), flush=True)
    return rc


def abort(ds: str) -> dict:
    if _lock_held(ds):
        raise Busy(f"a receive into {ds} is running; stop its sender first")
    st = state(ds)
    if not st["token"]:
        return {"aborted": False, "exists": st["exists"]}
    r = zfs("receive", "-A", ds)
    if r.returncode:
        raise RuntimeError(r.stderr.strip())
    return {"aborted": True, "exists": zfs("list", "-H", "-o", "name", ds).returncode == 0}


def parse(words: list[str], pools: list[str]) -> tuple[str, dict, str]:
    if len(words) < 3 or words[0] != NAME:
        raise Refused(f"not an {NAME} request: {shlex.join(words)[:200]!r}")
    verb, args, ds = words[1], words[2:-1], words[-1]
    if not DATASET.fullmatch(ds) or ".." in ds:
        raise Refused(f"bad dataset name {ds!r}")
    if ds.split("/", 1)[0] not in pools:
        raise Refused(f"{ds} is not in an allowed pool ({', '.join(pools) or 'none'})")
    allowed = {"state": set(), "abort": set(),
               "receive": {"-s", "--zstd", "--incremental", "--rollback"}}.get(verb)
    rollback = None
    for a in args:
        if a.startswith("--rollback="):
            rollback = a.split("=", 1)[1]
            if not re.fullmatch(_COMPONENT, rollback, re.ASCII) or "--incremental" not in args:
                raise Refused(f"refused request: {shlex.join(words)[:200]!r}")
    keys = [a.split("=", 1)[0] for a in args]
    if allowed is None or not set(keys) <= allowed or len(set(keys)) != len(keys):
        raise Refused(f"refused request: {shlex.join(words)[:200]!r}")
    return verb, {"-s": "-s" in args, "zstd": "--zstd" in args,
                  "incremental": "--incremental" in args, "rollback": rollback}, ds


HOST_PROP = "imgstor:host"


def check_incremental(ds: str, peer: str | None) -> None:
    """An incremental (and its rollback) may only go into a dataset recorded as mapped to
    the sending host (the ``imgstor:host`` property the NAS keeps on each volume): a
    compromised node cannot roll back or overwrite another VM's volume."""
    if not peer:
        raise Refused("incremental streams are not allowed for this key")
    r = zfs("get", "-H", "-o", "value", HOST_PROP, ds)
    if r.returncode != 0 or r.stdout.strip() != peer:
        raise Refused(f"{ds} is not mapped to {peer} ({HOST_PROP} is "
                      f"{r.stdout.strip() or 'unset'}); refusing an incremental into it")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ["PATH"] = PATH
    pools: list[str] = []
    peer: str | None = None            # --incremental-from HOST: pull backs from HOST
    rest = list(argv)
    while len(rest) >= 2 and rest[0] in ("--pool", "--incremental-from"):
        if rest[0] == "--pool":
            pools.append(rest[1])
        else:
            peer = rest[1]
        rest = rest[2:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    orig = os.environ.get("SSH_ORIGINAL_COMMAND")
    try:
        words = shlex.split(orig) if orig is not None else rest
        verb, opts, ds = parse(words, pools)
        if verb == "receive" and opts["incremental"]:
            check_incremental(ds, peer)
        if verb == "state":
            print(json.dumps(state(ds)))
            return 0
        if verb == "abort":
            print(json.dumps(abort(ds)))
            return 0
        return receive(ds, resumable=opts["-s"], zstd=opts["zstd"],
                       incremental=opts["incremental"], rollback=opts["rollback"])
    except Refused as e:
        print(f"{NAME}: {e}", file=sys.stderr)
        return e.code
    except (ValueError, RuntimeError, OSError) as e:
        print(f"{NAME}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
