"""The sync gate's stream check and expectations (issue 18): DRR_BEGIN parsed from real
stream heads (zfs-fuse, tests/fixtures/userspace/streams: captured with ``zfs send [-p|-R|
-i] … | head -c 1024``), refusals, and one announced receive through a fake ``zfs``."""
from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from imgstor.remote import syncgate

STREAMS = Path(__file__).resolve().parents[1] / "fixtures" / "userspace" / "streams"
KSTREAMS = Path(__file__).resolve().parents[1] / "fixtures" / "kernel" / "streams"


def head(name: str, where: Path = STREAMS) -> bytes:
    return (where / f"{name}.head").read_bytes()


def test_begin_of_openzfs_streams() -> None:
    """OpenZFS 2.1 (kernel lab, ``zfs send … | head -c 1024``): a zvol is DMU_OST_ZVOL,
    a filesystem DMU_OST_ZFS; -p and -I are compound."""
    full = syncgate.parse_begin(head("zvol_full", KSTREAMS))
    assert (full["header"], full["type"], full["fromguid"]) == (syncgate.SUBSTREAM, 3, "0")
    syncgate.check_begin(full, {"type": "volume"})
    incr = syncgate.parse_begin(head("zvol_incr", KSTREAMS))
    assert incr["fromguid"] == full["toguid"] and incr["type"] == 3
    fs = syncgate.parse_begin(head("fs_full", KSTREAMS))
    with pytest.raises(syncgate.Refused, match="of a filesystem, tank/v is expected to be a "
                                               "volume"):
        syncgate.check_begin(fs, {"type": "volume", "dataset": "tank/v"})
    for compound in ("zvol_props", "zvol_interm"):
        b = syncgate.parse_begin(head(compound, KSTREAMS))
        with pytest.raises(syncgate.Refused, match="compound stream"):
            syncgate.check_begin(b, {"type": "volume"})


def test_begin_of_real_streams() -> None:
    full = syncgate.parse_begin(head("fs_full"))
    assert (full["header"], full["type"], full["fromguid"]) == (syncgate.SUBSTREAM, 2, "0")
    assert full["toguid"] == "12828954798317565750" and full["toname"] == "tank/hs@a"
    incr = syncgate.parse_begin(head("fs_incr"))
    assert incr["fromguid"] == full["toguid"] and incr["header"] == syncgate.SUBSTREAM
    for compound in ("fs_props", "fs_repl"):        # send -p, send -R (and -I: the same)
        b = syncgate.parse_begin(head(compound))
        assert b["header"] == syncgate.COMPOUND and b["payload"] > 0
        with pytest.raises(syncgate.Refused, match="compound stream"):
            syncgate.check_begin(b, {"type": "filesystem"})


def test_begin_of_the_other_byte_order_and_garbage() -> None:
    rec = bytearray(syncgate.RECORD)
    struct.pack_into(">" + syncgate._BEGIN, rec, 0, 0, 0, syncgate.MAGIC, 1, 0, 3, 0, 7, 5)
    b = syncgate.parse_begin(bytes(rec))
    assert (b["type"], b["toguid"], b["fromguid"]) == (3, "7", "5")
    with pytest.raises(syncgate.Refused, match="no DRR_BEGIN magic"):
        syncgate.parse_begin(b"x" * syncgate.RECORD)
    with pytest.raises(syncgate.Refused, match="before its first record"):
        syncgate.parse_begin(head("fs_full")[:100])


def test_the_wrong_object_set_type_is_refused() -> None:
    b = syncgate.parse_begin(head("fs_full"))
    syncgate.check_begin(b, {"type": "filesystem"})
    with pytest.raises(syncgate.Refused, match="of a filesystem, tank/v is expected to be a"):
        syncgate.check_begin(b, {"type": "volume", "dataset": "tank/v"})


@pytest.fixture
def gate(tmp_path, monkeypatch):
    monkeypatch.setattr(syncgate, "EXPECT_DIR", str(tmp_path / "run" / "expect"))
    monkeypatch.setattr(syncgate, "LOCK_DIR", str(tmp_path / "run" / "recv"))
    return tmp_path


def announce(**kw) -> str:
    exp = {"dataset": "tank/v", "sender": "nas-0-0", "kind": "local-copy",
           "type": "filesystem", "fromguid": "0", "toguid": "12828954798317565750",
           "expires": time.time() + 60, **kw}
    return syncgate.write_expectation(exp)


def test_expectations_expire_and_state_answers_only_for_them(gate) -> None:
    with pytest.raises(syncgate.Refused, match="no copy into tank/v is expected from nas-0-0"):
        syncgate._expected("tank/v", "nas-0-0")
    p = announce()
    assert oct(os.stat(p).st_mode & 0o777) == "0o600"
    assert list(syncgate._expected("tank/v", "nas-0-0")) == \
        ["nas-0-0@0@12828954798317565750"]
    with pytest.raises(syncgate.Refused):                  # another sender's key
        syncgate._expected("tank/v", "compute-0-1")
    announce(toguid="1", expires=time.time() - 1)         # expired: removed on sight
    assert len(syncgate.expectations("tank/v")) == 1
    with pytest.raises(ValueError):
        announce(dataset="tank/a/b")


def _receive(gate: Path, monkeypatch, stream: bytes, **kw) -> tuple[int, Path]:
    """syncgate.receive with STREAM on fd 0 and a fake `zfs receive` that keeps its input."""
    out = gate / "received"
    bindir = gate / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "zfs").write_text(f"#!/bin/sh\ncat > {out}\n")
    (bindir / "zfs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    snaps = {"a": "12828954798317565750"} if kw.pop("lands", True) else {}

    def fake_zfs(*args):
        if args[0] == "list" and "snapshot" in args:
            return subprocess.CompletedProcess(args, 0, "tank/v@a\n" if snaps else "", "")
        if args[:2] == ("get", "-H") and "guid" in args:
            return subprocess.CompletedProcess(args, 0, f"tank/v@a\t{snaps['a']}\n", "")
        if args[0] == "list":                      # tank/v: created by the receive
            return subprocess.CompletedProcess(args, 1 if not out.exists() else 0, "", "")
        return subprocess.CompletedProcess(args, 1, "", "invalid property")
    monkeypatch.setattr(syncgate, "zfs", fake_zfs)
    saved = os.dup(0)
    writer = None
    if kw.pop("pipe", False):                  # as sshd gives it: the gate tees the head
        fd, w = os.pipe()
        writer = threading.Thread(target=_feed, args=(w, stream), daemon=True)
        writer.start()
    else:                                      # a file: the gate reads and relays
        src = gate / "stream"
        src.write_bytes(stream)
        fd = os.open(src, os.O_RDONLY)
    os.dup2(fd, 0)
    try:
        rc = syncgate.receive("tank/v", sender="nas-0-0", resumable=False, zstd=False,
                              incremental=False, **kw)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(fd)
        if writer is not None:
            writer.join(10)
    return rc, out


def _feed(w: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(w, view[:65536]):]
    except BrokenPipeError:
        pass
    finally:
        os.close(w)


@pytest.mark.parametrize("pipe", [True, False])
def test_an_announced_stream_goes_through_whole_and_its_expectation_goes(
        gate, monkeypatch, capsys, pipe) -> None:
    announce()
    stream = head("fs_full") + os.urandom(3 << 20)
    rc, out = _receive(gate, monkeypatch, stream, pipe=pipe)
    assert rc == 0
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(stream).digest()
    assert json.loads(capsys.readouterr().out)["snapshots"] == {"a": "12828954798317565750"}
    assert syncgate.expectations("tank/v") == {}            # the receive completed


@pytest.mark.parametrize("name,announced,match", [
    ("fs_full", False, "is expected from nas-0-0"),
    ("fs_props", True, "compound stream"),
    ("fs_incr", True, "is expected from nas-0-0"),          # other guids than announced
])
def test_a_refused_stream_never_reaches_zfs_receive(gate, monkeypatch, name, announced,
                                                     match) -> None:
    if announced:
        announce()
    for pipe in (True, False):
        # the gate's lock lives as long as its process: a new lock dir for the second try
        monkeypatch.setattr(syncgate, "LOCK_DIR", str(gate / f"recv-{pipe}"))
        with pytest.raises(syncgate.Refused, match=match):
            _receive(gate, monkeypatch, head(name) + b"\0" * 4096, pipe=pipe)
        assert not (gate / "received").exists()


def test_peek_leaves_the_head_in_the_pipe_and_sees_a_short_stream() -> None:
    r, w = os.pipe()
    os.write(w, b"x" * 400)
    assert syncgate.peek(r, 312) == b"x" * 312
    assert os.read(r, 1000) == b"x" * 400                  # nothing consumed
    os.write(w, b"y" * 100)
    os.close(w)
    with pytest.raises(syncgate.Refused, match="ended after 100 bytes"):
        syncgate.peek(r, 312)
    os.close(r)
    with open(__file__, "rb") as f:                         # not a pipe: the caller reads
        assert syncgate.peek(f.fileno(), 312) is None


def test_receive_argv_on_openzfs_excludes_what_mounts_shares_execs_or_marks() -> None:
    fs = syncgate.receive_argv("tank/v", {"type": "filesystem"}, resumable=True, openzfs=True)
    assert fs[:4] == ["zfs", "receive", "-s", "-u"] and fs[-1] == "tank/v"
    assert {"mountpoint", "canmount", "sharenfs", "setuid", "exec", "imgstor:role"} <= \
        {fs[i + 1] for i, a in enumerate(fs) if a == "-x"}
    vol = syncgate.receive_argv("tank/v", {"type": "volume"}, resumable=False, openzfs=True)
    assert "mountpoint" not in vol and "imgstor:role" in vol     # -x of a filesystem prop
    assert syncgate.receive_argv("tank/v", {"type": "filesystem"}, resumable=False,
                                 openzfs=False) == ["zfs", "receive", "tank/v"]  # zfs-fuse
