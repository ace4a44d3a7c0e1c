"""The one /proc/PID/stat reader (imgstor.remote.procfs)."""
from __future__ import annotations

import os
import subprocess
import sys

from imgstor.remote import procfs

# a comm with spaces and a ')' (proc(5): split after the last ')')
STAT = ("4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 "
        "123456 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0")


def test_parse_stat_splits_after_the_last_paren() -> None:
    st = procfs.parse_stat(STAT)
    assert st == procfs.Stat(state="S", ppid=1, pgrp=4242, utime=7, stime=3,
                             starttime=123456)
    assert procfs.parse_stat(STAT.encode()) == st
    assert procfs.parse_stat("") is None and procfs.parse_stat("1 (x) S 1") is None


def test_this_process_and_a_gone_one() -> None:
    me = procfs.stat(os.getpid())
    assert me is not None and me.state in "RS" and me.ppid == os.getppid()
    assert procfs.alive(os.getpid(), me.starttime)
    assert not procfs.alive(os.getpid(), me.starttime + 1)      # a recycled pid
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert procfs.stat(p.pid) is None and procfs.start_time(p.pid) is None
    assert not procfs.alive(p.pid)
