"""The copy engine of sync mode: ``zfs send`` on this (sending) host straight into the
receiving host's sync gate, run as a detached job (imgstor.remote.jobs).

The pipeline, every stage's exit status kept::

    zfs send [-i BASE | -t TOKEN] SNAP  ->  [count]  ->  [zstd -qc]  ->  [throttle]
        ->  ssh -F /dev/null -o BatchMode=yes … -i KEY_DIR/id_ed25519 ADDRESS
                imgstor-sync-gate receive [-s] [--zstd] [--incremental] DATASET

``count`` and ``throttle`` are not programs: the job process itself moves the bytes between
the stages' pipes (``os.splice``, no copy through Python), counts them (logical bytes
before zstd, wire bytes after) and sleeps when it is ahead of ``bwlimit`` (bytes per second
on the wire).  No ``pv`` needed.

Resume: the job first asks the gate for the destination's state.  A partial receive
(OpenZFS ``receive -s`` left a ``receive_resume_token``) is resumed with ``zfs send -t``
after checking that the token's ``toname`` is this job's snapshot; zfs-fuse has no tokens
and leaves nothing behind when a full receive breaks (seen in the userspace lab), so a
restart there sends again from byte 0 ("resume" = the job's phase).  A destination that
exists and is not this job's partial receive is refused (audit L15): imgstor never uses
``receive -F``.

One connection: the job opens its master connection to the receiver first (``ssh -M``,
``copypipe.mux_argv``), while it reads its own snapshot's facts, and runs the gate's
``state`` and the stream on it as two sessions: one key exchange, not two (a second cost
~0.35 s of each job, bench/bench_copy.py).  Should the master fail, each ssh connects by
itself and says why.

Progress: ``bytes_done`` (logical, this attempt plus what a resumed receive already had)
against ``bytes_total`` (``zfs send -nP`` on OpenZFS; on zfs-fuse, which lacks it, the
snapshot's ``referenced``: approximate, ``total_exact`` false).

Standard library only: shipped to nodes in the zipapp.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
from typing import IO, Any

from imgstor.remote.copypipe import (  # noqa: F401 - the engine's public face, re-exported
    ALIAS,
    DATASET,
    GATE,
    KEY_DIR,
    SNAPSHOT,
    ZSTD,
    Meter,
    Peer,
    check_dataset,
    check_snapshot,
    gate_argv,
    job_name,
    mux_argv,
    mux_exit_argv,
    parse_rate,
    parse_send_size,
    parse_token_info,
    relay,
    send_argv,
    size_argv,
    ssh_argv,
    token_info_argv,
)

__all__ = ["CopyFailed", "plan", "common_base", "parse_snapshot_guids", "gate_state", "run"]


# ------------------------------------------------------------------ the job body
class CopyFailed(Exception):
    pass


def _zfs(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout)


def _tail(text: str, n: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= n else "…" + text[-n:]


def gate_state(peer: Peer, *, key_dir: str, connect_timeout: int,
               control: str | None = None) -> dict:
    argv = gate_argv(peer, "state", key_dir=key_dir, connect_timeout=connect_timeout,
                     control=control)
    r = _zfs(argv, timeout=connect_timeout + 120)
    if r.returncode != 0:
        raise CopyFailed(f"asking {peer.alias} for {peer.dataset}'s state failed "
                         f"(rc {r.returncode}): {_tail(r.stderr, 600)}")
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise CopyFailed(f"{peer.alias}: unreadable answer from the sync gate: "
                         f"{_tail(r.stdout, 300)!r}") from None


def _guid(snap: str) -> str:
    r = _zfs(["zfs", "get", "-H", "-p", "-o", "value", "guid", snap])
    if r.returncode != 0:
        raise CopyFailed(f"{snap}: {_tail(r.stderr, 300)}")
    return r.stdout.strip()


def _flavor_openzfs() -> bool:
    return _zfs(["zfs", "version"]).returncode == 0 or \
        "feature flags" in _zfs(["zpool", "upgrade", "-v"]).stdout


def plan(spec: dict, st: dict, *, openzfs: bool) -> dict:
    """Decide what to send from the destination's state ``st`` (the gate's answer):
    ``{"done": True}`` when the snapshot is there already, else send argv, resume token
    and flags.  Raises CopyFailed when the destination is not ours to write."""
    snap, base = spec["snapshot"], spec.get("base")
    peer = Peer.from_dict(spec["to"])
    short = snap.split("@", 1)[1]
    guid = spec["guid"]
    have = st.get("snapshots") or {}
    if have.get(short) == guid:
        return {"done": True}
    if short in have:
        raise CopyFailed(f"{peer.alias}:{peer.dataset}@{short} exists but is another "
                         "snapshot (guid differs); refusing")
    token = st.get("token")
    out: dict[str, Any] = {"done": False, "resumable": bool(st.get("resume")) and openzfs,
           "incremental": bool(base), "token": None}
    if token:
        if not openzfs:
            raise CopyFailed("the destination holds a resumable receive but this zfs "
                             "cannot resume (zfs send -t)")
        out["token"] = token
        out["send"] = send_argv(snap, token=token)
    elif st.get("exists") and not base:
        raise CopyFailed(f"{peer.alias}:{peer.dataset} exists and is not a partial receive "
                         "of this job: imgstor never overwrites a dataset (no receive -F)")
    elif base:
        bshort = base.split("@", 1)[1]
        if not st.get("exists"):
            raise CopyFailed(f"{peer.alias}:{peer.dataset} does not exist: an incremental "
                             f"from {base} needs it")
        if have.get(bshort) != spec.get("base_guid"):
            raise CopyFailed(f"{peer.alias}:{peer.dataset} lacks @{bshort} (or it is "
                             "another snapshot): no common snapshot to send from")
        out["send"] = send_argv(snap, base=base, intermediate=bool(spec.get("intermediate")))
    else:
        out["send"] = send_argv(snap)
    return out


def parse_snapshot_guids(text: str, dataset: str) -> list[tuple[str, str]]:
    """``zfs get -H -p -o name,value guid -r DATASET`` (taken in creation order from
    ``zfs list -s creation``) -> [(short name, guid)] of DATASET's own snapshots."""
    out = []
    for line in text.splitlines():
        f = line.split("\t")
        if len(f) == 2 and f[0].startswith(dataset + "@"):
            out.append((f[0].split("@", 1)[1], f[1]))
    return out


def common_base(snap: str, local: list[tuple[str, str]], st: dict) -> tuple[str, str] | None:
    """``base="auto"``: the newest of SNAP's older local snapshots (creation order) that
    the destination has with the same guid, as (full name, guid); None if none."""
    ds, short = snap.split("@", 1)
    have = st.get("snapshots") or {}
    names = [n for n, _ in local]
    older = local[:names.index(short)] if short in names else local
    for name, guid in reversed(older):
        if have.get(name) == guid:
            return f"{ds}@{name}", guid
    return None


def _resolve_auto(spec: dict, st: dict) -> dict:
    snap = spec["snapshot"]
    ds = snap.split("@", 1)[0]
    order = _zfs(["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-s", "creation",
                  "-r", ds]).stdout.split()
    mine = [n for n in order if n.startswith(ds + "@")]
    guids = dict(parse_snapshot_guids(
        _zfs(["zfs", "get", "-H", "-p", "-o", "name,value", "guid", *mine]).stdout
        if mine else "", ds))
    local = [(n.split("@", 1)[1], guids.get(n.split("@", 1)[1], "")) for n in mine]
    found = common_base(snap, local, st)
    if found is None:
        if st.get("exists") and not st.get("token"):
            raise CopyFailed(f"no common snapshot of {ds} on the destination: "
                             "nothing to send an incremental from")
        return dict(spec, base=None, base_guid=None)       # a fresh (or resumed) full copy
    return dict(spec, base=found[0], base_guid=found[1])


class _Master:
    """The job's master connection to the receiver (``copypipe.mux_argv``), connecting in
    the background from the job's start; ``ready()`` is its control socket, or None when
    it could not be made (the sessions then connect by themselves)."""

    def __init__(self, peer: Peer, *, key_dir: str, connect_timeout: int, where: str):
        self.peer, self.key_dir, self.cto = peer, key_dir, connect_timeout
        self.path: str | None = None
        self._path = os.path.join(where, f".mux-{os.getpid()}")
        self.p: subprocess.Popen | None = None
        if len(self._path) > 100:               # a unix socket's path: 108 bytes at most
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)               # a killed job's, this pid's before
        try:
            self.p = subprocess.Popen(mux_argv(peer, self._path, key_dir=key_dir,
                                               connect_timeout=connect_timeout),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        except OSError:
            self.p = None

    def ready(self) -> str | None:
        if self.p is None:
            return None
        try:
            rc = self.p.wait(timeout=self.cto + 60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return None
        if rc == 0 and os.path.exists(self._path):
            self.path = self._path
        return self.path

    def close(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        if self.path is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(mux_exit_argv(self.peer, self.path, key_dir=self.key_dir),
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)


def run(job) -> dict:
    """The job body (runs detached, see imgstor.remote.jobs)."""
    spec = job.spec
    peer = Peer.from_dict(spec["to"])
    kd, cto = spec.get("key_dir", KEY_DIR), int(spec.get("connect_timeout", 10))
    master = _Master(peer, key_dir=kd, connect_timeout=cto,
                     where=os.path.dirname(os.path.abspath(job.dir)))
    try:
        return _run(job, spec, peer, kd, cto, master)
    finally:
        master.close()


def _run(job, spec, peer, kd, cto, master):
    snap, base = spec["snapshot"], spec.get("base")
    stall = float(spec.get("stall_timeout", 600))
    t_start = time.monotonic()
    job.update(phase="probe", snapshot=snap, force=True)
    openzfs = _flavor_openzfs()               # while the master connects
    spec = dict(spec, guid=_guid(snap),
                base_guid=_guid(base) if base and base != "auto" else None)
    ctl = master.ready()
    st = gate_state(peer, key_dir=kd, connect_timeout=cto, control=ctl)
    if base == "auto":
        spec = _resolve_auto(spec, st)
        base = spec["base"]
        job.update(base=base)
    p = plan(spec, st, openzfs=openzfs)
    if p["done"]:
        return {"state": "done", "phase": "done", "already": True}
    resume_offset, total, exact = 0, None, False
    if p["token"]:
        r = _zfs(token_info_argv(p["token"]))
        # OpenZFS prints the token's nvlist to stdout with -n (stderr without it)
        info = parse_token_info(r.stdout + "\n" + r.stderr)
        if info.get("toname") != snap:
            raise CopyFailed(f"the partial receive on {peer.alias}:{peer.dataset} is of "
                             f"{info.get('toname')!r}, not {snap}; cancel it (copy.cancel) "
                             "to drop it")
        resume_offset = int(info.get("bytes") or 0)
    if openzfs:
        r = _zfs(size_argv(snap, base=base, token=p["token"],
                           intermediate=bool(spec.get("intermediate"))))
        size = parse_send_size(r.stdout + "\n" + r.stderr)
        total, exact = (resume_offset + size, True) if size is not None else (None, False)
    else:
        r = _zfs(["zfs", "get", "-H", "-p", "-o", "value", "referenced", snap])
        total = int(r.stdout.strip()) if r.stdout.strip().isdigit() else None
        if base and total is not None:
            rb = _zfs(["zfs", "get", "-H", "-p", "-o", "value", "referenced", base])
            total = max(0, total - int(rb.stdout.strip() or 0))
    zstd = spec.get("compress") == "zstd"
    opts = (["-s"] if p["resumable"] else []) + (["--zstd"] if zstd else []) + \
        (["--incremental"] if p["incremental"] else [])
    if p["incremental"] and spec.get("rollback"):
        opts.append(f"--rollback={base.split('@', 1)[1]}")
    stages = [p["send"]] + ([ZSTD] if zstd else []) + \
        [gate_argv(peer, "receive", *opts, key_dir=kd, connect_timeout=cto, control=ctl)]
    job.update(phase="send", bytes_total=total, total_exact=exact, resumed=bool(p["token"]),
               probe_seconds=round(time.monotonic() - t_start, 3),
               resume_offset=resume_offset, bytes_done=resume_offset,
               stages=[{"argv": a, "rc": None} for a in stages], force=True)
    return _pump(job, stages, zstd=zstd, rate=int(spec.get("bwlimit") or 0),
                 offset=resume_offset, stall=stall, peer=peer, kd=kd, cto=cto, snap=snap,
                 guid=spec["guid"], ctl=ctl)


def _take(stream: IO[bytes] | None) -> int:
    """A duplicate of a Popen pipe end (made with PIPE, so never None); ours is closed,
    which lets EOF and SIGPIPE flow once the relay closes its copy."""
    if stream is None:
        raise RuntimeError("a pipeline stage has no pipe")
    fd = os.dup(stream.fileno())
    stream.close()
    return fd


def _pump(job, stages, *, zstd, rate, offset, stall, peer, kd, cto, snap, guid,
          ctl=None) -> dict:
    keep = (job.lock_fd,)
    errs = [tempfile.TemporaryFile() for _ in stages]
    procs: list[subprocess.Popen] = []
    t0 = time.monotonic()
    logical, wire = Meter(), Meter(rate)
    stop = threading.Event()
    try:
        send = subprocess.Popen(stages[0], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=errs[0], pass_fds=keep)
        procs.append(send)
        if zstd:
            z = subprocess.Popen(stages[1], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=errs[1], pass_fds=keep)
            procs.append(z)
        answer = tempfile.TemporaryFile()       # the gate's state after the receive
        ssh = subprocess.Popen(stages[-1], stdin=subprocess.PIPE, stdout=answer,
                               stderr=errs[-1], pass_fds=keep)
        procs.append(ssh)
        # the job keeps only the relay ends; closing our copies lets EOF and SIGPIPE flow
        src = _take(send.stdout)
        threads = []
        if zstd:
            zin, zout, sin = _take(z.stdin), _take(z.stdout), _take(ssh.stdin)
            threads.append(threading.Thread(target=relay, args=(src, zin),
                                            kwargs={"count": logical, "stop": stop}, daemon=True))
            threads.append(threading.Thread(target=relay, args=(zout, sin),
                                            kwargs={"count": wire, "limit": wire,
                                                    "stop": stop}, daemon=True))
        else:
            sin = _take(ssh.stdin)
            wire = logical
            logical.rate = rate
            threads.append(threading.Thread(target=relay, args=(src, sin),
                                            kwargs={"count": logical, "limit": logical,
                                                    "stop": stop}, daemon=True))
        for t in threads:
            t.start()
        last, last_change, stalled = (-1, -1), time.monotonic(), False
        while any(t.is_alive() for t in threads) or any(p.poll() is None for p in procs):
            try:                                # wakes as soon as ssh (the last) exits
                procs[-1].wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if (logical.bytes, wire.bytes) != last:
                last, last_change = (logical.bytes, wire.bytes), now
            elif now - last_change > stall:
                stalled = True
                stop.set()                      # the relays let go of their pipes
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            job.update(bytes_done=offset + logical.bytes, wire_bytes=wire.bytes,
                       seconds=round(now - t0, 2))
        rcs = [p.wait() for p in procs]
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    tails = []
    for f in errs:
        f.seek(0)
        tails.append(f.read().decode(errors="replace"))
        f.close()
    secs = time.monotonic() - t0
    result = {"bytes_done": offset + logical.bytes, "wire_bytes": wire.bytes,
              "seconds": round(secs, 2),
              "rate": round(logical.bytes / secs) if secs > 0 else None,
              "stages": [{"argv": a, "rc": rc, "stderr": _tail(t, 400)}
                         for a, rc, t in zip(stages, rcs, tails)]}
    bad = [(a, rc, t) for a, rc, t in zip(stages, rcs, tails) if rc]
    if stalled or bad:
        why = f"no progress for {stall:.0f}s; killed. " if stalled else ""
        why += "; ".join(f"{a[0]} exited {rc}: {_tail(t, 500)}" for a, rc, t in bad)
        return {**result, "state": "failed", "phase": "send", "error": _tail(why, 1500)}
    job.update(phase="verify", force=True, **result)
    # the gate answers a receive with the dataset's state (one JSON line): no second
    # connection to verify; an older gate that does not, or an unreadable answer, is asked
    answer.seek(0)
    try:
        st = json.loads(answer.read().decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        st = gate_state(peer, key_dir=kd, connect_timeout=cto, control=ctl)
    finally:
        answer.close()
    short = snap.split("@", 1)[1]
    result["verify_seconds"] = round(time.monotonic() - t0 - secs, 3)
    if (st.get("snapshots") or {}).get(short) != guid:
        return {**result, "state": "failed", "phase": "verify",
                "error": f"the stream ended but {peer.dataset}@{short} is not on "
                         f"{peer.alias}"}
    return {**result, "state": "done", "phase": "done"}
