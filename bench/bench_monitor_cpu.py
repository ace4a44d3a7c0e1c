#!/usr/bin/env python3
"""A monitor's CPU over one bandwidth-limited copy, this imgstor against another (issue
22: "before and after", on the same lab, one after the other).

For each imgstor source tree (``--baseline-src DIR``, e.g. an export of 6f4fae1, then this
checkout): a config of its own (the lab's, with its own state file in a temp directory and
``sync_bwlimit = RATE``), a volume of RATE x SECONDS of random data, one sync map; while
the job's recorded phase is ``copy``, the CPU (user + system, /proc/PID/stat) of the
monitor that owns the job is sampled; the figure is the CPU it used from the first sample
in ``copy`` to the first after.  Then the unmap (--wait) and the volume's removal.

    git archive 6f4fae1 | tar -x -C /var/tmp/imgstor-6f4fae1
    sudo LAB_DIR=… python3 bench/bench_monitor_cpu.py --baseline-src /var/tmp/imgstor-6f4fae1
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from labbench import CONFIG, ROOT, require_lab, ssh


def _state(d: Path) -> dict:
    """The store (its file and, with this code, its journal: issue 25)."""
    from imgstor.state import Store
    return Store(str(d / "state.json")).read().to_dict()

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
NAS, NODE = "nas-0-0", "compute-0-0"


def cpu_of(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().decode().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def one(src: Path, rate: str, seconds: int, mib: int) -> dict:
    d = Path(tempfile.mkdtemp(prefix="bench-moncpu-", dir="/var/tmp"))
    cfg = d / "imgstor.toml"
    text = re.sub(r'(?m)^path = ".*"$', f'path = "{d / "state.json"}"',
                  CONFIG.read_text(), count=1)
    cfg.write_text(text.replace("[defaults]\n", f'[defaults]\nsync_bwlimit = "{rate}"\n', 1))
    env = {**os.environ, "PYTHONPATH": str(src)}
    vol = f"moncpu-{uuid.uuid4().hex[:6]}"

    def cli(*args: str) -> str:
        p = subprocess.run([sys.executable, "-m", "imgstor", "--config", str(cfg), *args],
                           cwd=src, env=env, capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"bench: {' '.join(args)} -> {p.returncode}\n{p.stdout}{p.stderr}")
        return p.stdout
    cli("add", "host", "storagemap", NAS, "tank", vol, NODE, f"{mib}M")
    cli("remove", "host", "storagemap", NAS, vol)
    subprocess.run(ssh(NAS, f"head -c {mib << 20} /dev/urandom | dd of=$(zfs get -H -o value "
                            f"mountpoint tank/{vol})/disk.raw bs=1M conv=notrunc status=none"),
                   check=True)
    try:
        cli("add", "host", "storagemap", NAS, "tank", vol, NODE, f"{mib}M", "img_sync=yes")
        first = last = None
        pid = None
        t_in = t_out = None
        deadline = time.monotonic() + 30 * seconds + 300
        while time.monotonic() < deadline:
            st = _state(d)
            js = [j for j in st["jobs"].values() if j["volume"] == f"{NAS}/{vol}"]
            if js and js[0]["phase"] == "copy" and js[0].get("owner"):
                pid = js[0]["owner"]["pid"]
                c = cpu_of(pid)
                if first is None and c is not None:
                    first, t_in = c, time.monotonic()
                last = c if c is not None else last
            elif first is not None:
                c = cpu_of(pid) if pid else None
                last, t_out = (c if c is not None else last), time.monotonic()
                break
            time.sleep(0.2)
        if first is None or t_out is None or last is None:
            raise SystemExit("bench: never saw the copy phase start and end")
        while _state(d)["jobs"]:
            time.sleep(0.5)
        cli("remove", "host", "storagemap", NAS, vol, "--wait")
        return {"copy": t_out - t_in, "cpu": last - first, "pid": pid}
    finally:
        subprocess.run([sys.executable, "-m", "imgstor", "--config", str(cfg), "remove", "host",
                        "storagemap", NAS, vol, "--wait"], cwd=src, env=env,
                       capture_output=True)
        subprocess.run([sys.executable, "-m", "imgstor", "--config", str(cfg), "remove", "host",
                        "storageimg", NAS, "tank", vol], cwd=src, env=env, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-src", type=Path, required=True)
    ap.add_argument("--rate", default="1M", help="sync_bwlimit of the copy (default 1M)")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    require_lab()
    mib = max(1, int(a.seconds * (int(a.rate.rstrip("MmKk")) * (1 if a.rate[-1] in "Mm"
                                                                 else 1 / 1024))))
    out: dict[str, list[dict]] = {"baseline": [], "this": []}
    for _ in range(a.rounds):
        for name, src in (("baseline", a.baseline_src), ("this", ROOT)):
            r = one(src, a.rate, a.seconds, mib)
            out[name].append(r)
            print(f"{name:9} copy {r['copy']:5.1f} s, monitor (pid {r['pid']}) CPU "
                  f"{r['cpu']:5.2f} s = {r['cpu'] / r['copy'] * 1000:5.1f} ms per s of copy",
                  flush=True)
    b = sum(r["cpu"] / r["copy"] for r in out["baseline"]) / len(out["baseline"])
    t = sum(r["cpu"] / r["copy"] for r in out["this"]) / len(out["this"])
    print(f"monitor CPU per second of a {a.rate}/s copy of {mib} MiB: baseline "
          f"{b * 1000:.1f} ms, this {t * 1000:.1f} ms: {t / b:.2f}x")


if __name__ == "__main__":
    main()
