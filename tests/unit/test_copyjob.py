"""The copy engine's pure parts (argv, parsers, plan, relay/throttle), the sync gate's
request grammar, and detached jobs (a real double fork in a temp dir)."""
from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from imgstor.errors import UsageError
from imgstor.remote import copyjob, jobs, procfs, syncgate
from imgstor.remote.copyjob import CopyFailed, Peer

PEER = Peer("10.1.1.14", "compute-0-14", "tank/vm1-vol")

# OpenZFS 2.1 `zfs send -nP tank/vm1-vol@s1` (kernel lab guests: the format of
# cmd/zfs/zfs_main.c and libzfs_sendrecv.c send_print_verbose, "full\t<snap>\t<size>"
# then "size\t<size>")
SEND_NP = "full\ttank/vm1-vol@s1\t1076494072\nsize\t1076494072\n"
SEND_NP_INCR = "incremental\ts0\ttank/vm1-vol@s1\t5402112\nsize\t5402112\n"
# `zfs send -nvt TOKEN` (libzfs zfs_send_resume_token_to_nvlist, dumped with nvlist_print)
TOKEN_INFO = """resume token contents:
nvlist version: 0
\tobject = 0x83
\toffset = 0x3ac0000
\tbytes = 0x3ada128
\ttoguid = 0x80b20bba2fca0f3e
\ttoname = tank/vm1-vol@s1
full send of tank/vm1-vol@s1 estimated size is 962M
"""


def test_ssh_argv_uses_only_imgstors_key_and_pin() -> None:
    a = copyjob.ssh_argv(PEER, key_dir="/k", connect_timeout=7)
    assert a[:3] == ["ssh", "-F", "/dev/null"]
    for opt in ("BatchMode=yes", "ConnectTimeout=7", "StrictHostKeyChecking=yes",
                "UserKnownHostsFile=/k/known_hosts", "GlobalKnownHostsFile=/dev/null",
                "HostKeyAlias=imgstor-compute-0-14", "IdentitiesOnly=yes"):
        assert opt in a
    assert a[a.index("-i") + 1] == "/k/id_ed25519"
    assert a[-2:] == ["--", "10.1.1.14"]


def test_gate_argv_is_one_quoted_word() -> None:
    a = copyjob.gate_argv(PEER, "receive", "-s", "--zstd")
    assert a[-1] == "imgstor-sync-gate receive -s --zstd tank/vm1-vol"


def test_send_and_size_argv() -> None:
    assert copyjob.send_argv("tank/v@s1") == ["zfs", "send", "tank/v@s1"]
    assert copyjob.send_argv("tank/v@s1", base="tank/v@s0") == \
        ["zfs", "send", "-i", "tank/v@s0", "tank/v@s1"]
    assert copyjob.send_argv("tank/v@s1", token="1-ab-cd") == ["zfs", "send", "-t", "1-ab-cd"]
    assert copyjob.size_argv("tank/v@s1", base="tank/v@s0") == \
        ["zfs", "send", "-nP", "-i", "tank/v@s0", "tank/v@s1"]
    with pytest.raises(UsageError):
        copyjob.send_argv("tank/v@s1", token="-x")


@pytest.mark.parametrize("bad", ["tank", "tank/x y", "-tank/x", "tank/../x", "tank/x\n",
                                 "tank/x\n-F",
                                 "tank/x;id", "tänk/x"])
def test_hostile_dataset_names(bad: str) -> None:
    with pytest.raises(UsageError):
        Peer("10.1.1.14", "compute-0-14", bad)


@pytest.mark.parametrize("bad", ["-oProxyCommand=x", "a b", "a;b", "a'b", ""])
def test_hostile_addresses(bad: str) -> None:
    with pytest.raises(UsageError):
        Peer(bad, "compute-0-14", "tank/x")


def test_parsers() -> None:
    assert copyjob.parse_send_size(SEND_NP) == 1076494072
    assert copyjob.parse_send_size(SEND_NP_INCR) == 5402112
    assert copyjob.parse_send_size("nothing") is None
    info = copyjob.parse_token_info(TOKEN_INFO)
    assert info["toname"] == "tank/vm1-vol@s1" and info["bytes"] == 0x3ada128
    assert copyjob.parse_rate("12M") == 12 << 20 and copyjob.parse_rate(1000) == 1000
    assert copyjob.parse_rate("") == 0 and copyjob.parse_rate("1.5K") == 1536
    for bad in ("12 M", "-1", "fast", True, -5):
        with pytest.raises(UsageError):
            copyjob.parse_rate(bad)


def test_job_names_one_per_destination() -> None:
    assert copyjob.job_name("compute-0-14", "tank/vm1-vol") == "copy@compute-0-14:tank%vm1-vol"
    jobs.job_dir(copyjob.job_name("compute-0-14", "tank/vm1-vol"))
    with pytest.raises(UsageError):
        jobs.job_dir("../etc")


SPEC = {"snapshot": "tank/v@s1", "to": PEER.to_dict(), "guid": "11"}


def test_plan_full_resume_incremental_and_refusals() -> None:
    fresh = {"resume": True, "exists": False, "token": None, "snapshots": {}}
    assert copyjob.plan(SPEC, fresh, openzfs=True)["send"] == ["zfs", "send", "tank/v@s1"]
    assert copyjob.plan(SPEC, {**fresh, "exists": True, "snapshots": {"s1": "11"}},
                        openzfs=True) == {"done": True}
    p = copyjob.plan(SPEC, {**fresh, "exists": True, "token": "1-a-b"}, openzfs=True)
    assert p["send"] == ["zfs", "send", "-t", "1-a-b"] and p["resumable"]
    with pytest.raises(CopyFailed, match="never overwrites"):
        copyjob.plan(SPEC, {**fresh, "exists": True}, openzfs=True)
    with pytest.raises(CopyFailed, match="guid differs"):
        copyjob.plan(SPEC, {**fresh, "exists": True, "snapshots": {"s1": "12"}}, openzfs=True)
    incr = {**SPEC, "base": "tank/v@s0", "base_guid": "10"}
    p = copyjob.plan(incr, {**fresh, "exists": True, "snapshots": {"s0": "10"}}, openzfs=False)
    assert p["send"] == ["zfs", "send", "-i", "tank/v@s0", "tank/v@s1"]
    assert not p["resumable"] and p["incremental"]
    with pytest.raises(CopyFailed, match="no common snapshot"):
        copyjob.plan(incr, {**fresh, "exists": True, "snapshots": {"s0": "99"}}, openzfs=True)


def test_relay_counts_and_throttles() -> None:
    src = subprocess.Popen(["head", "-c", str(3 << 20), "/dev/zero"], stdout=subprocess.PIPE)
    dst = subprocess.Popen(["wc", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    a, b = os.dup(src.stdout.fileno()), os.dup(dst.stdin.fileno())
    src.stdout.close()
    dst.stdin.close()
    m = copyjob.Meter(2 << 20)                  # 2 MiB/s: 3 MiB take >= ~1 s
    t0 = time.monotonic()
    copyjob.relay(a, b, count=m, limit=m)
    took = time.monotonic() - t0
    assert m.bytes == 3 << 20
    assert int(dst.stdout.read()) == 3 << 20
    dst.wait()
    assert took > 0.8, took                     # loose: throttled, not instantaneous


def test_relay_stops_when_the_reader_goes() -> None:
    src = subprocess.Popen(["cat", "/dev/zero"], stdout=subprocess.PIPE)
    dst = subprocess.Popen(["head", "-c", "1000"], stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL)
    a, b = os.dup(src.stdout.fileno()), os.dup(dst.stdin.fileno())
    src.stdout.close()
    dst.stdin.close()
    copyjob.relay(a, b, count=copyjob.Meter())
    assert dst.wait(5) == 0
    assert src.wait(5) != 0                     # SIGPIPE: the writer is not left hanging


# ------------------------------------------------------------------------ the sync gate
@pytest.mark.parametrize("words,verb", [
    ("imgstor-sync-gate state tank/v", "state"),
    ("imgstor-sync-gate receive -s --zstd tank/v", "receive"),
    ("imgstor-sync-gate receive --incremental --rollback=s0 tank/v", "receive"),
    ("imgstor-sync-gate abort tank/v", "abort"),
])
def test_gate_accepts(words: str, verb: str) -> None:
    assert syncgate.parse(words.split(), ["tank"])[0] == verb


@pytest.mark.parametrize("words", [
    "id", "imgstor-sync-gate", "imgstor-sync-gate destroy tank/v",
    "imgstor-sync-gate receive -F tank/v", "imgstor-sync-gate receive -s -s tank/v",
    "imgstor-sync-gate state other/v", "imgstor-sync-gate state tank",
    "imgstor-sync-gate state tank/../x", "imgstor-sync-gate receive --rollback=s0 tank/v",
    "imgstor-sync-gate receive --incremental --rollback=-r tank/v",
    "imgstor-sync-gate state -o tank/v", "zfs receive -F tank/v",
])
def test_gate_refuses(words: str) -> None:
    with pytest.raises(syncgate.Refused):
        syncgate.parse(words.split(), ["tank"])


def test_gate_refuses_a_newline_in_the_name() -> None:
    with pytest.raises(syncgate.Refused):
        syncgate.parse(["imgstor-sync-gate", "state", "tank/v\n"], ["tank"])


def test_gate_main_refuses_with_exit_2(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "sh -c id")
    assert syncgate.main(["--pool", "tank"]) == 2
    assert "not an imgstor-sync-gate request" in capsys.readouterr().err


# ------------------------------------------------------------------------ detached jobs
def _body(job):
    p = subprocess.Popen(["sleep", str(job.spec["sleep"])], pass_fds=(job.lock_fd,))
    job.update(phase="work", force=True)
    p.wait()
    return {"state": "done", "slept": job.spec["sleep"]}


def test_job_start_status_second_start_cancel(tmp_path) -> None:
    base = str(tmp_path)
    started, st = jobs.start("j", {"sleep": 30}, _body, base=base)
    assert started and st["state"] == "running"
    again, st2 = jobs.start("j", {"sleep": 30}, _body, base=base)
    assert again is False and st2["pid"] == st["pid"]
    assert oct(os.stat(jobs.job_dir("j", base)).st_mode & 0o777) == "0o700"
    st3 = jobs.cancel("j", base=base)
    assert st3["state"] == "cancelled"
    assert procfs.start_time(st["pid"]) is None or \
        open(f"/proc/{st['pid']}/stat").read().split()[2] == "Z"


def test_job_done_and_died(tmp_path) -> None:
    base = str(tmp_path)
    jobs.start("k", {"sleep": 0}, _body, base=base)
    deadline = time.monotonic() + 10
    while jobs.status("k", base=base)["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    st = jobs.status("k", base=base)
    assert st["state"] == "done" and st["slept"] == 0 and st["attempt"] == 1
    # a job killed without a chance to record anything: "died"
    prog = jobs.read_json(os.path.join(jobs.job_dir("k", base), "progress"))
    jobs.write_json(os.path.join(jobs.job_dir("k", base), "progress"),
                    {**prog, "state": "running"})
    assert jobs.status("k", base=base)["state"] == "died"


def test_two_racing_starts_run_one_job(tmp_path) -> None:
    base = str(tmp_path)
    out: list = []
    ts = [threading.Thread(target=lambda: out.append(
        jobs.start("r", {"sleep": 30}, _body, base=base))) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(s for s, _ in out) == [False, True]
    jobs.cancel("r", base=base)


def test_intermediate_and_auto_base() -> None:
    assert copyjob.send_argv("tank/v@s2", base="tank/v@s0", intermediate=True) == \
        ["zfs", "send", "-I", "tank/v@s0", "tank/v@s2"]
    got = copyjob.parse_snapshot_guids(
        "tank/v@a\t1\ntank/v/child@a\t9\ntank/v@b\t2\ntank/v@c\t3\n", "tank/v")
    assert got == [("a", "1"), ("b", "2"), ("c", "3")]
    st = {"exists": True, "snapshots": {"a": "1", "b": "2"}}
    assert copyjob.common_base("tank/v@c", got, st) == ("tank/v@b", "2")
    assert copyjob.common_base("tank/v@c", got, {"snapshots": {"a": "1", "b": "x"}}) == \
        ("tank/v@a", "1")
    assert copyjob.common_base("tank/v@b", got, st) == ("tank/v@a", "1")   # older only
    assert copyjob.common_base("tank/v@c", got, {"snapshots": {}}) is None


class _FakeJob:
    def __init__(self) -> None:
        self.lock_fd = os.open(os.devnull, os.O_RDONLY)
        self.progress: dict = {}

    def update(self, *, force: bool = False, **kw) -> None:
        self.progress.update(kw)


@pytest.mark.parametrize("zstd", [False, True])
def test_pump_kills_a_stalled_pipeline_and_keeps_every_status(zstd: bool) -> None:
    from imgstor.remote.copyjob import _pump
    stages = [["sh", "-c", "head -c 100000 /dev/zero; sleep 30"]] + \
        ([copyjob.ZSTD] if zstd else []) + [["sh", "-c", "cat > /dev/null"]]
    t0 = time.monotonic()
    out = _pump(_FakeJob(), stages, zstd=zstd, rate=0, offset=0, stall=1, peer=PEER,
                kd="/k", cto=1, snap="tank/v@s1", guid="1")
    assert time.monotonic() - t0 < 15
    assert out["state"] == "failed" and "no progress for 1s" in out["error"]
    assert out["bytes_done"] == 100000
    assert out["stages"][0]["rc"] == -9 and len(out["stages"]) == len(stages)


def test_pump_reports_the_failing_stage() -> None:
    from imgstor.remote.copyjob import _pump
    out = _pump(_FakeJob(), [["sh", "-c", "head -c 5000 /dev/zero"],
                             ["sh", "-c", "cat >/dev/null; echo 'cannot receive: boom' >&2; "
                                          "exit 1"]],
                zstd=False, rate=0, offset=10, stall=30, peer=PEER, kd="/k", cto=1,
                snap="tank/v@s1", guid="1")
    assert out["state"] == "failed" and "boom" in out["error"]
    assert [s["rc"] for s in out["stages"]] == [0, 1] and out["bytes_done"] == 5010


def test_gate_incremental_only_from_the_mapped_host(monkeypatch) -> None:
    answers = {"tank/v": "compute-0-14\tlocal\n", "tank/w": "compute-0-1\tlocal\n",
               "tank/x": "-\t-\n", "tank/r": "compute-0-14\treceived\n"}

    def fake_zfs(*args):
        return subprocess.CompletedProcess(args, 0, answers[args[-1]], "")
    monkeypatch.setattr(syncgate, "zfs", fake_zfs)
    syncgate.check_incremental("tank/v", "compute-0-14")
    for ds in ("tank/w", "tank/x", "tank/r"):      # a received imgstor:host does not count
        with pytest.raises(syncgate.Refused, match="not mapped to compute-0-14"):
            syncgate.check_incremental(ds, "compute-0-14")
    with pytest.raises(syncgate.Refused, match="not allowed for this key"):
        syncgate.check_incremental("tank/v", None)


def test_cancel_never_signals_a_group_that_reused_the_jobs_number(tmp_path) -> None:
    """Audit L1: the lock is held (a new job starting, its pid file not written yet) and
    the pid file is an older job's, whose group id now belongs to another process group
    (a reused pid: another start time).  cancel must not signal it."""
    import fcntl
    import signal
    base = str(tmp_path)
    d = jobs.job_dir("l1", base)
    os.makedirs(d, mode=0o700)
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)   # its own group
    holder = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)           # "the new job" (this process) holds it
    try:
        from imgstor.remote import procfs
        real = procfs.start_time(victim.pid)
        assert real is not None
        jobs.write_json(os.path.join(d, "pid"), {"pid": victim.pid, "pgid": victim.pid,
                                                 "start_time": real - 1, "started": 0})
        jobs.cancel("l1", base=base, timeout=1.0)
        assert victim.poll() is None, "cancel signalled a process group that is not the job's"
        assert not jobs.ours(victim.pid, real - 1) and jobs.ours(victim.pid, real)
    finally:
        os.close(holder)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
