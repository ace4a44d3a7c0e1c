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
