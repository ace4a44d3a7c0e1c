"""imgstor sync gate: the one program imgstor's sync key may run on a receiving host.

Installed by the node step ``sync.authorize`` as a stand-alone file (default
/var/lib/imgstor/sync-gate.py, 0700) and named as the forced command of the sending
host's key in the receiver's authorized_keys::

    restrict,from="10.1.1.1",command="/usr/bin/python3 -I /var/lib/imgstor/sync-gate.py
    --pool tank --sender nas-0-0" ssh-ed25519 AAAA… imgstor-sync:nas-0-0

sshd runs it whatever the client asked for and passes the request in
``SSH_ORIGINAL_COMMAND``, which must be one of (DATASET exactly ``POOL/NAME``, POOL one of
the ``--pool`` options)::

    imgstor-sync-gate state DATASET            JSON: resume support, exists, token, snapshots
    imgstor-sync-gate receive [-s] [--zstd] [--incremental [--rollback=SNAP]] DATASET
                                               [zstd -dc |] header check | zfs receive,
                                               then (ok) the same JSON as state
    imgstor-sync-gate abort DATASET            zfs receive -A DATASET (drop a partial receive)

Expectations (issue 18, audit C1).  The gate does nothing for a dataset the frontend did
not announce: before a copy the frontend, over its own verified SSH, writes
``EXPECT_DIR/<pool>%<name>/<sender>@<fromguid>@<toguid>`` on the receiver (the node step
``sync.expect``): the kind (``local-copy`` on a node, ``volume`` on a NAS), the object-set
type (``volume`` | ``filesystem``), the guids (fromguid 0: a full stream), whether a
rollback is allowed, and an expiry on this host's clock.  ``state`` and ``abort`` answer
only for a dataset with an expectation from this sender; ``receive`` reads the stream's
first record (DRR_BEGIN, after zstd when compressed) before ``zfs receive`` sees a byte and
refuses: a compound stream (``send -p``, ``-R``, ``-I``: the header type
DMU_COMPOUNDSTREAM, which carries properties), another object-set type than expected, and
any (fromguid, toguid) without an expectation.  The expectation is keyed by the guids, not
a nonce, so a restarted copy and a resumed receive (OpenZFS token: the same BEGIN guids)
still match; it is removed when the receive completes, or expires.  On OpenZFS the receive
also runs with ``-u`` and ``-x`` for what mounts, shares, execs or marks (zfs-fuse's
receive has only ``-vnF -d``: the header check is what protects it).

No byte of the stream passes through the gate: the first record is read with ``tee(2)``
(copied, not consumed, from the pipe sshd or zstd gives), and ``zfs receive`` then reads
that pipe itself.  Where stdin is not a pipe the gate reads the record and relays the rest
with ``os.splice`` (kernel-side).

Never ``receive -F`` (audit L15): a full stream is refused when DATASET exists and is not a
partial (resumable) receive, an incremental one needs DATASET to exist.  An incremental
into a dataset touched since its last snapshot (a mounted filesystem's atime is enough)
fails "destination has been modified"; ``--rollback=SNAP`` (asked for by the pull back,
allowed by its expectation) first runs ``zfs rollback DATASET@SNAP`` — only if SNAP is the
newest snapshot there, and without ``-r``, so no snapshot is ever destroyed.
``--incremental-from HOST`` (a NAS's gate for a node's key) also requires an incremental's
dataset to carry ``imgstor:host`` = HOST set locally.  One receive per dataset at a time:
an ``flock`` on /run/imgstor/recv/<dataset>.lock held by the gate and its children for the
life of the receive (its pid is written in the file).

Exit status: 0 ok, 2 refused, 3 busy, else the status of the stage that failed.
Standard library only and no imgstor imports: this file is copied as it is.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import struct
import subprocess
import sys
import time

NAME = "imgstor-sync-gate"
VERSION = 2                      # `check` compares installed gates with the running code's
LOCK_DIR = "/run/imgstor/recv"
EXPECT_DIR = "/run/imgstor/expect"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_COMPONENT = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}"
DATASET = re.compile(rf"^{_COMPONENT}/{_COMPONENT}$", re.ASCII)
HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$", re.ASCII)
GUID = re.compile(r"^[0-9]{1,20}$", re.ASCII)
KINDS = ("local-copy", "volume", "cancel")
TYPES = {"filesystem": 2, "volume": 3}      # dmu_objset_type_t: DMU_OST_ZFS, DMU_OST_ZVOL

# The send stream's first record (OpenZFS include/sys/zfs_ioctl.h, the same in zfs-fuse's
# older copy, checked against streams of both): dmu_replay_record_t is 312 bytes;
# drr_type (u32, DRR_BEGIN = 0), drr_payloadlen (u32), then drr_begin: drr_magic (u64),
# drr_versioninfo (u64: bits 0-1 the header type, DMU_SUBSTREAM 1 / DMU_COMPOUNDSTREAM 2,
# bits 2-31 the DMU_BACKUP_FEATURE flags), drr_creation_time (u64), drr_type (u32,
# dmu_objset_type_t), drr_flags (u32), drr_toguid (u64), drr_fromguid (u64),
# drr_toname[256].  A compound stream (send -p, -R, -I) starts with a BEGIN whose payload
# is an nvlist of the datasets' properties.
RECORD = 312
DRR_BEGIN = 0
MAGIC = 0x2F5BACBAC
SUBSTREAM, COMPOUND = 1, 2
FEATURE_RESUMING = 1 << 20
_BEGIN = "IIQQQIIQQ"
# OpenZFS receive -x: what would mount, share, exec or mark if a stream carried it (a
# checked stream carries no properties; this is the second wall)
EXCLUDE_FS = ("mountpoint", "canmount", "overlay", "sharenfs", "sharesmb", "setuid", "exec",
              "devices")
EXCLUDE_ALL = ("imgstor:role", "imgstor:host", "imgstor:size", "imgstor:target",
               "imgstor:mode")


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


# ------------------------------------------------------------------ the stream header
def parse_begin(rec: bytes) -> dict:
    """The DRR_BEGIN record (RECORD bytes) as a dict; Refused if it is not one."""
    if len(rec) < RECORD:
        raise Refused(f"the stream ended after {len(rec)} bytes, before its first record")
    for order in "<>":                      # the sender's byte order: the magic tells
        f = struct.unpack_from(order + _BEGIN, rec, 0)
        if f[2] == MAGIC:
            break
    else:
        raise Refused("not a zfs send stream (no DRR_BEGIN magic)")
    rtype, payload, _magic, vi, _ctime, ost, flags, toguid, fromguid = f
    if rtype != DRR_BEGIN:
        raise Refused(f"the stream does not start with DRR_BEGIN (record type {rtype})")
    return {"header": vi & 3, "features": (vi >> 2) & 0x3FFFFFFF, "type": ost,
            "flags": flags, "toguid": str(toguid), "fromguid": str(fromguid),
            "payload": payload,
            "toname": rec[56:RECORD].split(b"\0", 1)[0].decode("ascii", "replace")}


def peek(fd: int, n: int, *, timeout: float = 120.0) -> bytes | None:
    """The first N bytes waiting in pipe FD, left in it: ``tee(2)`` copies them into a pipe
    of ours without consuming, so ``zfs receive`` then reads FD itself and no byte of the
    stream passes through this process.  None when FD is not a pipe (``tee`` says EINVAL)
    or libc has no ``tee``: the caller reads and relays instead.  Refused when the stream
    ends (or stalls for TIMEOUT) before N bytes."""
    import ctypes
    import errno
    import select
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        tee = libc.tee
    except (OSError, AttributeError):
        return None
    tee.restype = ctypes.c_ssize_t
    tee.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint)
    r, w = os.pipe()
    deadline = time.monotonic() + timeout
    try:
        while True:
            got = tee(fd, w, n, 0)               # blocks until FD holds something
            if got < 0:
                if ctypes.get_errno() == errno.EINTR:
                    continue
                return None                       # not a pipe
            if got >= n:
                return _read_exact(r, n)
            if got:
                os.read(r, got)                   # ours to drop; FD keeps them
            ev = select.poll()
            ev.register(fd, select.POLLHUP)
            if got == 0 or any(e & select.POLLHUP for _, e in ev.poll(0)):
                raise Refused(f"the stream ended after {got} bytes, before its first "
                              "record")
            if time.monotonic() > deadline:
                raise Refused("the stream stalled before its first record")
            time.sleep(0.01)                      # the rest of the record is on its way
    finally:
        os.close(r)
        os.close(w)


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def check_begin(begin: dict, exp: dict) -> None:
    """Refuse a stream its expectation does not describe (the guids were matched by the
    expectation's name)."""
    if begin["header"] != SUBSTREAM:
        raise Refused("a compound stream (zfs send -p, -R or -I: it carries properties) is "
                      "refused; imgstor sends single snapshots without properties")
    want = TYPES.get(exp.get("type", ""))
    if begin["type"] != want:
        have = {v: k for k, v in TYPES.items()}.get(begin["type"], f"type {begin['type']}")
        raise Refused(f"the stream is of a {have}, {exp.get('dataset')} is expected to be a "
                      f"{exp.get('type')}")


# ------------------------------------------------------------------ expectations
def _ds_dir(ds: str) -> str:
    return os.path.join(EXPECT_DIR, ds.replace("/", "%"))


def expect_name(sender: str, fromguid: str, toguid: str) -> str:
    return f"{sender}@{fromguid}@{toguid}"


def expectations(ds: str, sender: str | None = None, *, now: float | None = None) -> dict:
    """{file name: expectation} of DS's live expectations (of SENDER only, if given);
    expired ones are removed on the way."""
    d = _ds_dir(ds)
    now = time.time() if now is None else now
    out: dict = {}
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return out
    for n in names:
        path = os.path.join(d, n)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                exp = json.loads(f.read(65536).decode())
        except (OSError, ValueError):
            continue
        if not isinstance(exp, dict) or float(exp.get("expires") or 0) < now:
            _unlink(path)
            continue
        if sender is None or n.split("@", 1)[0] == sender:
            out[n] = exp
    return out


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_expectation(exp: dict) -> str:
    """Write EXP (checked) as its file, 0600 under 0700 directories; its path."""
    ds, sender = exp["dataset"], exp["sender"]
    if not DATASET.fullmatch(ds) or ".." in ds or not HOST.fullmatch(sender) \
            or exp["kind"] not in KINDS or (exp["kind"] != "cancel" and (
                exp["type"] not in TYPES or not GUID.fullmatch(exp["fromguid"])
                or not GUID.fullmatch(exp["toguid"]))):
        raise ValueError(f"bad expectation {exp!r}")
    d = _ds_dir(ds)
    for p in (os.path.dirname(EXPECT_DIR), EXPECT_DIR, d):
        os.makedirs(p, mode=0o700, exist_ok=True)
    name = expect_name(sender, exp.get("fromguid", "-"), exp.get("toguid", "-"))
    path = os.path.join(d, name)
    tmp = path + ".tmp"
    _unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(exp, f, sort_keys=True)
    os.replace(tmp, path)
    return path


def _expected(ds: str, sender: str | None) -> dict:
    """Refused unless SENDER has a live expectation for DS (any guids): state and abort."""
    if not sender:
        raise Refused("this key names no sender (an old authorized_keys line): the next "
                      "copy's trust step rewrites it")
    found = expectations(ds, sender)
    if not found:
        raise Refused(f"no copy into {ds} is expected from {sender}")
    return found


# ------------------------------------------------------------------ state, abort
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


# ------------------------------------------------------------------ receive
def _bigger_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (OSError, AttributeError):
        pass


def splice_all(src: int, dst: int) -> None:
    """Move everything from SRC to pipe DST in the kernel (``os.splice``; a read/write loop
    where there is none), until EOF or DST's reader is gone."""
    splice = getattr(os, "splice", None)
    try:
        while True:
            if splice is not None:
                try:
                    n = splice(src, dst, 1 << 20)
                except OSError as e:
                    if e.errno != 22:           # EINVAL: SRC cannot splice (a tty, a file)
                        raise
                    splice = None
                    continue
            else:
                data = os.read(src, 1 << 20)
                n = len(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(dst, view):]
            if not n:
                return
    except (BrokenPipeError, ConnectionResetError):
        return


def receive_argv(ds: str, exp: dict, *, resumable: bool, openzfs: bool) -> list[str]:
    argv = ["zfs", "receive"] + (["-s"] if resumable else [])
    if openzfs:
        argv.append("-u")
        for prop in (EXCLUDE_FS if exp.get("type") == "filesystem" else ()) + EXCLUDE_ALL:
            argv += ["-x", prop]
    return argv + [ds]


def receive(ds: str, *, sender: str | None, resumable: bool, zstd: bool, incremental: bool,
            rollback: str | None = None) -> int:
    if not sender:
        raise Refused("this key names no sender (an old authorized_keys line): the next "
                      "copy's trust step rewrites it")
    fd = _take_lock(ds)
    pool = ds.split("/", 1)[0]
    openzfs = resume_supported(pool)
    exists = zfs("list", "-H", "-o", "name", ds).returncode == 0
    token = None
    if resumable:
        if not openzfs:
            raise Refused(f"{ds}: this pool has no resumable receive (receive -s)")
        if exists:
            t = zfs("get", "-H", "-o", "value", "receive_resume_token", ds).stdout.strip()
            token = None if t in ("", "-") else t
    if incremental and not exists:
        raise Refused(f"{ds} does not exist: an incremental stream needs it")
    if not incremental and exists and not token:
        raise Refused(f"{ds} exists and is not a partial receive: imgstor never overwrites "
                      "a dataset (no receive -F); remove it or receive elsewhere")
    procs: list[subprocess.Popen] = []
    names: list[list[str]] = []
    src = 0
    if zstd:
        dec = subprocess.Popen(["zstd", "-dcq"], stdin=0, stdout=subprocess.PIPE,
                               pass_fds=(fd,))
        procs.append(dec)
        names.append(["zstd", "-dcq"])
        assert dec.stdout is not None
        src = os.dup(dec.stdout.fileno())      # ours to close: EOF flows when we do
        dec.stdout.close()
    try:
        rec = peek(src, RECORD)
        relay = rec is None                    # not a pipe: read it, relay the rest
        if relay:
            rec = _read_exact(src, RECORD)
        assert rec is not None
        begin = parse_begin(rec)
        if begin["header"] != SUBSTREAM:
            check_begin(begin, {})                  # says why: a compound stream
        key = expect_name(sender, begin["fromguid"], begin["toguid"])
        exp = expectations(ds, sender).get(key)
        if exp is None:
            raise Refused(f"no copy of snapshot guid {begin['toguid']} (from "
                          f"{begin['fromguid']}) into {ds} is expected from {sender}")
        check_begin(begin, exp)
        if (begin["fromguid"] != "0") != incremental:
            raise Refused("the stream's header and the request disagree on incremental")
        if rollback:
            if not exp.get("rollback"):
                raise Refused(f"no rollback of {ds} is expected")
            newest = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-s", "creation",
                         "-r", ds)
            mine = [n for n in newest.stdout.split() if n.startswith(ds + "@")]
            if not mine or mine[-1] != f"{ds}@{rollback}":
                raise Refused(f"{ds}@{rollback} is not the newest snapshot of {ds}; not "
                              "rolling back")
            r = zfs("rollback", f"{ds}@{rollback}")
            if r.returncode:
                raise RuntimeError(f"zfs rollback {ds}@{rollback}: {r.stderr.strip()}")
        recv = receive_argv(ds, exp, resumable=resumable, openzfs=openzfs)
        # zfs receive prints nothing on stdout; stderr (its errors) goes back to the sender
        if not relay:              # the checked record is still first in SRC: it reads SRC
            procs.append(subprocess.Popen(recv, stdin=src, stdout=subprocess.DEVNULL,
                                          pass_fds=(fd,)))
            names.append(recv)
            if src != 0:
                os.close(src)
        else:
            rpipe, wpipe = os.pipe()
            _bigger_pipe(wpipe)
            procs.append(subprocess.Popen(recv, stdin=rpipe, stdout=subprocess.DEVNULL,
                                          pass_fds=(fd,)))
            names.append(recv)
            os.close(rpipe)
            try:
                view = memoryview(rec)
                while view:
                    view = view[os.write(wpipe, view):]
                splice_all(src, wpipe)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                os.close(wpipe)
                if src != 0:
                    os.close(src)
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        raise
    rcs = [p.wait() for p in procs]
    for argv, rc in zip(names, rcs):
        if rc:
            print(f"{NAME}: {shlex.join(argv)} exited {rc}", file=sys.stderr)
    rc = next((rc for rc in rcs if rc), 0)
    if rc == 0 and exp.get("type") == "filesystem" and \
            zfs("get", "-H", "-o", "value", "mounted", ds).stdout.strip() == "no":
        # receive -u (OpenZFS), or a receive that ended before its mount (zfs-fuse): the
        # dataset mounts where its parent says (no property came with the stream)
        zfs("mount", ds)
    if rc == 0:                      # the sender verifies from this, no second connection
        st = state(ds)
        if begin["toguid"] in st["snapshots"].values():   # done: the expectation goes
            _unlink(os.path.join(_ds_dir(ds), key))
        print(json.dumps(st), flush=True)
    return rc


def parse(words: list[str], pools: list[str]) -> tuple[str, dict, str]:
    if len(words) < 3 or words[0] != NAME:
        raise Refused(f"not an {NAME} request: {shlex.join(words)[:200]!r}")
    verb, args, ds = words[1], words[2:-1], words[-1]
    if not DATASET.fullmatch(ds) or ".." in ds:
        raise Refused(f"bad dataset name {ds!r} (exactly POOL/NAME)")
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
    the sending host (the ``imgstor:host`` property the NAS keeps on each volume, set there
    by imgstor: a received value does not count): a compromised node cannot roll back or
    overwrite another VM's volume."""
    if not peer:
        raise Refused("incremental streams are not allowed for this key")
    r = zfs("get", "-H", "-o", "value,source", HOST_PROP, ds)
    f = r.stdout.strip().split("\t")
    if r.returncode != 0 or len(f) != 2 or f[0] != peer or f[1] != "local":
        raise Refused(f"{ds} is not mapped to {peer} ({HOST_PROP} is "
                      f"{' '.join(f) or 'unset'}); refusing an incremental into it")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ["PATH"] = PATH
    pools: list[str] = []
    peer: str | None = None            # --incremental-from HOST: pull backs from HOST
    sender: str | None = None          # --sender HOST: whose key this is
    rest = list(argv)
    while len(rest) >= 2 and rest[0] in ("--pool", "--incremental-from", "--sender"):
        if rest[0] == "--pool":
            pools.append(rest[1])
        elif rest[0] == "--sender":
            sender = rest[1] if HOST.fullmatch(rest[1]) else None
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
            _expected(ds, sender)
            print(json.dumps(state(ds)))
            return 0
        if verb == "abort":
            _expected(ds, sender)
            print(json.dumps(abort(ds)))
            return 0
        return receive(ds, sender=sender, resumable=opts["-s"], zstd=opts["zstd"],
                       incremental=opts["incremental"], rollback=opts["rollback"])
    except Refused as e:
        print(f"{NAME}: {e}", file=sys.stderr)
        return e.code
    except (ValueError, RuntimeError, OSError) as e:
        print(f"{NAME}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
