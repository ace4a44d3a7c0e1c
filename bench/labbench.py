"""Shared helpers for the lab benchmarks: the lab's paths and interleaved timing.

Every figure is a ratio against a baseline measured in the same run: these machines are
noisy, so absolute seconds mean little.  Commands alternate within each round so load
hits the baseline and the measured command alike; the median of the rounds is reported.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAB_DIR = Path(os.environ.get("LAB_DIR", "/var/lib/imgstor-lab"))
CONFIG = LAB_DIR / "imgstor.toml"


def require_lab() -> dict:
    p = subprocess.run([str(ROOT / "lab" / "lab"), "status", "--json"], capture_output=True,
                       text=True)
    st = json.loads(p.stdout or "{}")
    if not st.get("up"):
        sys.exit("bench: the lab is not up; run `sudo lab/lab up` first")
    return st


def ssh(host: str, command: str) -> list[str]:
    return ["ssh", "-F", str(LAB_DIR / "ssh_config"), host, command]


def imgstor(*args: str) -> list[str]:
    return [sys.executable, "-m", "imgstor", "--config", str(CONFIG), *args]


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - t


def interleaved(commands: dict[str, list[str]], rounds: int) -> dict[str, float]:
    """Median wall time of each command over ``rounds`` interleaved rounds."""
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(rounds):
        for k, argv in commands.items():
            times[k].append(timed(argv))
    return {k: statistics.median(v) for k, v in times.items()}


# ------------------------------------------------------------------ frontend accounting
class Frontend:
    """The CPU and memory of every imgstor process this bench starts, the detached
    monitors included.

    The bench makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so a monitor
    whose starting command exits is re-parented to the bench, not to init: every imgstor
    process is a descendant.  ``sample()`` (a thread calls it every ``every`` seconds)
    sums the PSS of all of them (/proc/PID/smaps_rollup) and keeps the peak;
    ``reap()`` collects those that ended with ``wait4`` -- their exact CPU (user + system,
    their own children included).  Only processes whose command line runs imgstor count;
    the bench's own ssh and lab commands are waited for by subprocess as usual."""

    def __init__(self, every: float = 0.5) -> None:
        import ctypes
        import threading
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(36, 1, 0, 0, 0) != 0:        # PR_SET_CHILD_SUBREAPER
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        self.me = os.getpid()
        self.every = every
        self.peak_pss = 0                    # bytes
        self.peak_procs = 0
        self.cpu = 0.0                       # seconds, of the reaped ones
        self.reaped: dict[int, tuple[str, float]] = {}
        self.live_cpu: dict[int, float] = {}
        self._mine: set[int] = set()          # reaped by run(), not by the sampler
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @staticmethod
    def _stat(pid: int) -> tuple[int, float] | None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                rest = f.read().decode(errors="replace").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        return int(rest[1]), (int(rest[11]) + int(rest[12])) / tick

    def _imgstor(self) -> list[int]:
        """The bench's descendants that run imgstor."""
        kids: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                st = self._stat(int(name))
                if st is not None:
                    kids.setdefault(st[0], []).append(int(name))
        out, todo = [], list(kids.get(self.me, []))
        while todo:
            pid = todo.pop()
            todo += kids.get(pid, [])
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"imgstor" in cmd and b"ssh\x00" not in cmd[:8]:
                out.append(pid)
        return out

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def sample(self) -> None:
        pids = self._imgstor()
        total = sum(self._pss(p) for p in pids)
        with self._lock:
            self.peak_pss = max(self.peak_pss, total)
            self.peak_procs = max(self.peak_procs, len(pids))
            for p in pids:
                st = self._stat(p)
                if st is not None:
                    self.live_cpu[p] = st[1]
        self.reap()

    def reap(self) -> None:
        """wait4 every imgstor descendant that ended and is ours to reap (re-parented
        monitors; commands started with ``run`` are reaped there)."""
        for pid in list(self.live_cpu):
            if pid in self._mine:
                continue
            try:
                got, status, ru = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                continue                     # not our child (yet), or reaped elsewhere
            if got == pid:
                with self._lock:
                    self.cpu += ru.ru_utime + ru.ru_stime
                    self.reaped[pid] = ("monitor", ru.ru_utime + ru.ru_stime)
                    self.live_cpu.pop(pid, None)

    def run(self, argv: list[str], what: str = "command",
            env: dict | None = None) -> subprocess.CompletedProcess:
        """Run an imgstor command to its end, counting its CPU (wait4 on it)."""
        import tempfile
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            with self._lock:
                p = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, env=env)
                self._mine.add(p.pid)
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            with self._lock:
                self._mine.discard(p.pid)
                self.live_cpu.pop(p.pid, None)
                self.cpu += ru.ru_utime + ru.ru_stime
                self.reaped[p.pid] = (what, ru.ru_utime + ru.ru_stime)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(argv, p.returncode, out.read().decode(),
                                               err.read().decode())

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.sample()
            except Exception as e:           # noqa: BLE001 - the bench goes on
                print(f"bench: sampling: {e}", file=sys.stderr)

    def settle(self, timeout: float = 120) -> None:
        """Wait until no imgstor descendant runs (idle monitors exit), reaping them."""
        deadline = time.monotonic() + timeout
        while self._imgstor() and time.monotonic() < deadline:
            self.sample()
            time.sleep(0.5)
        self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
