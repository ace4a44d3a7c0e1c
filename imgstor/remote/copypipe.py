"""The copy pipeline's parts: the destination (``Peer``), name checks, argv builders for
``zfs send`` / ``ssh`` / the sync gate, parsers of ``zfs send -nP`` and ``-nvt`` output,
and the in-process relay that counts and throttles (``Meter``, ``relay``).
imgstor.remote.copyjob runs them as a job.

Standard library only: shipped to nodes in the zipapp.
"""
from __future__ import annotations

import os
import re
import select
import shlex
import threading
import time
from dataclasses import dataclass

from imgstor.errors import UsageError
from imgstor.remote.drivers._common import positional
from imgstor.remote.protocol import parse_rate

__all__ = ["KEY_DIR", "GATE", "ZSTD", "DATASET", "SNAPSHOT", "ALIAS", "Peer", "check_dataset",
           "check_snapshot", "job_name", "parse_rate", "ssh_argv", "gate_argv", "mux_argv",
           "mux_exit_argv", "MUX_PERSIST", "send_argv",
           "size_argv", "token_info_argv", "parse_send_size", "parse_token_info", "Meter",
           "relay"]

KEY_DIR = "/root/.ssh/imgstor-sync"
GATE = "imgstor-sync-gate"
ZSTD = ["zstd", "-qc"]
_COMPONENT = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}"
DATASET = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})+$", re.ASCII)
SNAPSHOT = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*@{_COMPONENT}$", re.ASCII)
ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$", re.ASCII)


@dataclass(frozen=True)
class Peer:
    """The receiving host as the sending host reaches it."""
    address: str                   # data address (``<name>.<ib_net>`` when set)
    alias: str                     # host name; known_hosts entry ``imgstor-<alias>``
    dataset: str                   # where the stream goes
    port: int = 22
    user: str = "root"

    def __post_init__(self) -> None:
        positional(self.address, "address")
        if any(c.isspace() or c in "@;'\"`$\\" for c in self.address):
            raise UsageError(f"bad address {self.address!r}")
        if not ALIAS.fullmatch(self.alias):
            raise UsageError(f"bad host name {self.alias!r}")
        check_dataset(self.dataset)
        if not ALIAS.fullmatch(self.user):
            raise UsageError(f"bad user {self.user!r}")
        if not (isinstance(self.port, int) and 0 < self.port < 65536):
            raise UsageError(f"bad port {self.port!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "Peer":
        return cls(d["address"], d["alias"], d["dataset"], int(d.get("port", 22)),
                   d.get("user", "root"))

    def to_dict(self) -> dict:
        return {"address": self.address, "alias": self.alias, "dataset": self.dataset,
                "port": self.port, "user": self.user}


def check_dataset(ds: str) -> str:
    if not isinstance(ds, str) or not DATASET.fullmatch(ds) or ".." in ds:
        raise UsageError(f"bad dataset name {ds!r} (want POOL/NAME)")
    return ds


def check_snapshot(snap: str) -> str:
    if not isinstance(snap, str) or not SNAPSHOT.fullmatch(snap) or ".." in snap:
        raise UsageError(f"bad snapshot name {snap!r} (want POOL/NAME@SNAP)")
    return snap


def job_name(alias: str, dataset: str) -> str:
    """One job (and one lock) per destination: host alias + dataset."""
    if not ALIAS.fullmatch(alias):
        raise UsageError(f"bad host name {alias!r}")
    return f"copy@{alias}:{check_dataset(dataset).replace('/', '%')}"


# ------------------------------------------------------------------ argv builders
def ssh_argv(peer: Peer, *, key_dir: str = KEY_DIR, connect_timeout: int = 10,
             control: str | None = None) -> list[str]:
    """ssh with imgstor's own key and pinned host key only: no user ssh_config (``-F
    /dev/null``), no agent, no other identities, the receiver's key looked up under the
    alias ``imgstor-<name>`` (so the storage network address verifies too), a connect
    timeout and keepalives (a dead peer ends the stream within a minute).  ``control``:
    the socket of the job's master connection (``mux_argv``) to run the session on; ssh
    connects by itself if it is gone."""
    positional(key_dir, "key directory")
    mux = ["-o", f"ControlPath={positional(control, 'control socket')}",
           "-o", "ControlMaster=no"] if control else []
    return ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", *mux,
            "-o", f"ConnectTimeout={int(connect_timeout)}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={key_dir}/known_hosts",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"HostKeyAlias=imgstor-{peer.alias}",
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-i", f"{key_dir}/id_ed25519",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
            "-o", "Compression=no", "-p", str(peer.port), "-l", peer.user,
            "--", peer.address]


def gate_argv(peer: Peer, verb: str, *opts: str, key_dir: str = KEY_DIR,
              connect_timeout: int = 10, control: str | None = None) -> list[str]:
    """``ssh … ADDRESS 'imgstor-sync-gate VERB [OPTS] DATASET'``: the remote command becomes
    text exactly once, here (ssh would join the words with spaces anyway)."""
    return ssh_argv(peer, key_dir=key_dir, connect_timeout=connect_timeout,
                    control=control) + [shlex.join([GATE, verb, *opts, peer.dataset])]


MUX_PERSIST = 30      # seconds a master connection outlives its last session (a killed job)


def mux_argv(peer: Peer, control: str, *, key_dir: str = KEY_DIR,
             connect_timeout: int = 10) -> list[str]:
    """``ssh -M -N``: the one connection (one key exchange) a job's probe and stream run
    on as sessions.  It returns once connected, the master going on in the background
    (``ControlPersist``); ``mux_exit_argv`` ends it, else it leaves by itself
    ``MUX_PERSIST`` seconds after its last session."""
    argv = ssh_argv(peer, key_dir=key_dir, connect_timeout=connect_timeout)
    at = argv.index("--")
    return argv[:at] + ["-M", "-N", "-o", f"ControlPath={positional(control, 'control socket')}",
                        "-o", f"ControlPersist={MUX_PERSIST}"] + argv[at:]


def mux_exit_argv(peer: Peer, control: str, *, key_dir: str = KEY_DIR) -> list[str]:
    """``ssh -O exit``: the master connection at ``control`` closed now."""
    argv = ssh_argv(peer, key_dir=key_dir, control=control)
    at = argv.index("--")
    return argv[:at] + ["-O", "exit"] + argv[at:]


def send_argv(snapshot: str, *, base: str | None = None, token: str | None = None,
              intermediate: bool = False) -> list[str]:
    """``zfs send [-i|-I BASE | -t TOKEN] SNAP`` (``-I``: the snapshots between too)."""
    if token:
        return ["zfs", "send", "-t", positional(token, "resume token")]
    argv = ["zfs", "send"]
    if base:
        argv += ["-I" if intermediate else "-i", check_snapshot(base)]
    return argv + [check_snapshot(snapshot)]


def size_argv(snapshot: str, *, base: str | None = None, token: str | None = None,
              intermediate: bool = False) -> list[str]:
    """``zfs send -nP …``: the stream size, without sending (OpenZFS only)."""
    argv = send_argv(snapshot, base=base, token=token, intermediate=intermediate)
    return argv[:2] + ["-nP"] + argv[2:]


def token_info_argv(token: str) -> list[str]:
    return ["zfs", "send", "-nvt", positional(token, "resume token")]


def parse_send_size(text: str) -> int | None:
    """The ``size`` line of ``zfs send -nP`` (OpenZFS: ``size\\t12345``; the last one wins
    when several snapshots are listed)."""
    size = None
    for line in text.splitlines():
        f = line.split()
        if len(f) == 2 and f[0] == "size" and f[1].isdigit():
            size = int(f[1])
    return size


def parse_token_info(text: str) -> dict:
    """``zfs send -nvt TOKEN``: the token's nvlist (``\\ttoname = pool/fs@snap``,
    ``\\tbytes = 0x1e4a18``) as a dict; numbers as ints."""
    out: dict = {}
    for line in text.splitlines():
        m = re.match(r"^\s+(\w+) = (.+)$", line)
        if not m:
            continue
        key, val = m.group(1), m.group(2).strip()
        try:
            out[key] = int(val, 0)
        except ValueError:
            out[key] = val
    return out


# ------------------------------------------------------------------ moving bytes
class Meter:
    """Bytes through a relay; with ``rate`` > 0, ``throttle()`` sleeps while the relay is
    ahead of ``rate`` bytes per second since it started (a token bucket of ~0.1 s)."""

    def __init__(self, rate: int = 0) -> None:
        self.rate = rate
        self.bytes = 0
        self.t0 = time.monotonic()

    def chunk(self) -> int:
        return max(16384, min(1 << 20, self.rate // 10)) if self.rate else 1 << 20

    def throttle(self) -> None:
        if self.rate:
            ahead = self.bytes / self.rate - (time.monotonic() - self.t0)
            if ahead > 0:
                time.sleep(ahead)


def _bigger_pipe(fd: int) -> int:
    """Grow the pipe to 1 MiB (fewer wake-ups); return its capacity."""
    try:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except (OSError, AttributeError):
        return 65536                           # the default works too


def _queued(fd: int) -> int:
    """Bytes waiting in pipe ``fd`` (FIONREAD works on either end of a Linux pipe)."""
    import fcntl
    import struct
    import termios
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    except OSError:
        return 0


def _wait_drained(fd: int, target: int, stop) -> None:
    """Wait (up to 50 ms) until the reader has drained pipe ``fd`` to ``target`` bytes:
    moving a few KiB each time the reader (ssh, in 16-32 KiB reads) makes room would wake
    this thread thousands of times a second; half a pipe at a time costs little."""
    deadline = time.monotonic() + 0.05
    while _queued(fd) > target and time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            return
        time.sleep(0.001)


def relay(src: int, dst: int, *, count: Meter, limit: Meter | None = None,
          stop: "threading.Event | None" = None) -> None:
    """Move bytes from pipe ``src`` to pipe ``dst`` until EOF (or a closed ``dst``, or
    ``stop``), counting them in ``count`` and throttling with ``limit``.  Closes both ends
    when done, so the writer before gets SIGPIPE and the reader after gets EOF.

    ``os.splice`` moves the bytes kernel-side; it runs non-blocking and waits in
    ``select`` so that ``stop`` (a stalled pipeline) is seen within half a second even
    when a stage neither writes nor reads."""
    _bigger_pipe(src)
    cap = _bigger_pipe(dst)
    splice = getattr(os, "splice", None)
    nonblock = getattr(os, "SPLICE_F_NONBLOCK", 0)
    try:
        while not (stop is not None and stop.is_set()):
            n = (limit or count).chunk()
            if splice is not None:
                try:
                    moved = splice(src, dst, n, flags=nonblock)
                except BlockingIOError:
                    # nothing to read, or no room to write: wait for the one that blocks
                    readable = select.select([src], [], [], 0)[0]
                    if readable:
                        select.select([], [dst], [], 0.5)
                        _wait_drained(dst, cap // 2, stop)
                    else:
                        select.select([src], [], [], 0.5)
                    continue
            else:                                  # no splice (not Linux / old Python)
                if not select.select([src], [], [], 0.5)[0]:
                    continue
                data = os.read(src, n)
                moved = len(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(dst, view):]
            if not moved:
                break
            count.bytes += moved
            if limit is not None:
                if limit is not count:
                    limit.bytes += moved
                limit.throttle()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        for fd in (src, dst):
            try:
                os.close(fd)
            except OSError:
                pass
