#!/usr/bin/env python3
"""The lab's baselines: one `ssh host true`, and a raw `zfs send | ssh | zfs receive` of
256 MiB from the NAS to a compute node.  Later benchmarks are ratios against these.

    sudo lab/lab up && python3 bench/bench_lab.py [--mib 256] [--rounds 7]
"""
from __future__ import annotations

import argparse
import subprocess
import time
import uuid

from labbench import interleaved, require_lab, ssh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    require_lab()
    t = interleaved({"ssh nas-0-0 true": ssh("nas-0-0", "true"),
                     "ssh compute-0-0 true": ssh("compute-0-0", "true")}, a.rounds)
    for k, v in t.items():
        print(f"{k:28s} {v * 1000:8.1f} ms  (median of {a.rounds})")

    ds = f"tank/bench-{uuid.uuid4().hex[:6]}"
    def run(host, cmd):
        return subprocess.run(ssh(host, cmd), check=True, capture_output=True)
    run("nas-0-0", f"zfs create {ds} && head -c {a.mib << 20} /dev/urandom > "
                   f"$(zfs get -H -o value mountpoint {ds})/data && zfs snapshot {ds}@b")
    try:
        t0 = time.perf_counter()
        run("nas-0-0", f"set -o pipefail; zfs send {ds}@b | ssh compute-0-0 zfs receive -F {ds}")
        dt = time.perf_counter() - t0
        print(f"zfs send | ssh | zfs receive  {a.mib} MiB in {dt:.2f} s = {a.mib / dt:.1f} MiB/s")
    finally:
        for host in ("compute-0-0", "nas-0-0"):
            for _ in range(20):
                p = subprocess.run(ssh(host, f"zfs umount -f {ds} 2>/dev/null; zfs destroy -r {ds}"),
                                   capture_output=True)
                if p.returncode == 0 or b"does not exist" in p.stderr:
                    break
                time.sleep(0.5)


if __name__ == "__main__":
    main()
