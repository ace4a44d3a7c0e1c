#!/usr/bin/env python3
"""Sync-mode map latency on the userspace lab, as ratios measured in the same run.

- sync map of a 1 GiB volume full of random data / sync map of a 64 MiB one (goal <= 1.2x:
  the map returns once the VM can boot on the overlay; the copy runs behind it);
- sync map / direct map of the same volume (goal <= 2x).

Each sample is taken after the previous job finished (the sync map's copy, merge and the
unmap's sync back run to the end, `--wait`, outside the timed part).  The copy's own
throughput against raw `zfs send | ssh | zfs receive` and the bwlimit/zstd ratio are in
bench/bench_copy.py.

    sudo lab/lab up && python3 bench/bench_sync.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import uuid

from labbench import ROOT, imgstor, require_lab, ssh, timed

NAS, NODE, OTHER = "nas-0-0", "compute-0-0", "compute-0-1"


def run(argv: list[str]) -> None:
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)


def prefill(vol: str, mib: int) -> None:
    """Create VOL with MIB MiB of random data (written on the NAS into the file volume)."""
    run(imgstor("add", "host", "storagemap", NAS, "tank", vol, OTHER, f"{mib}M"))
    run(imgstor("remove", "host", "storagemap", NAS, vol))
    run(ssh(NAS, f"head -c {mib << 20} /dev/urandom | dd of=$(zfs get -H -o value mountpoint "
                 f"tank/{vol})/disk.raw bs=1M conv=notrunc status=none"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-big", action="store_true",
                    help="only the sync map / direct map ratio (P8), not the 1 GiB volume")
    a = ap.parse_args()
    require_lab()
    import os
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    tag = uuid.uuid4().hex[:6]
    big, small = f"bsync-big-{tag}", f"bsync-small-{tag}"
    if not a.no_big:
        prefill(big, 1024)
    prefill(small, 64)
    t: dict[str, list[float]] = {"big": [], "small": [], "direct": []}
    kinds = (() if a.no_big else (("big", big, "yes"),)) + \
        (("small", small, "yes"), ("direct", small, "no"))
    try:
        for _ in range(a.rounds):
            for name, vol, sync in kinds:
                t[name].append(timed(imgstor("add", "host", "storagemap", NAS, "tank", vol,
                                             NODE, "1G", f"img_sync={sync}")))
                # the copy, merge and sync back run to their end between samples
                run(imgstor("add", "host", "storagemap", NAS, "tank", vol, NODE, "1G",
                            f"img_sync={sync}", "--wait"))
                run(imgstor("remove", "host", "storagemap", NAS, vol, "--wait"))
    finally:
        for vol in (big, small):
            subprocess.run(imgstor("remove", "host", "storagemap", NAS, vol, "--wait"),
                           cwd=ROOT, capture_output=True)
            subprocess.run(imgstor("remove", "host", "storageimg", NAS, "tank", vol),
                           cwd=ROOT, capture_output=True)
    small_s, direct_s = (statistics.median(t[k]) for k in ("small", "direct"))
    paired = statistics.median(s / d for s, d in zip(t["small"], t["direct"]))
    if not a.no_big:
        big_s = statistics.median(t["big"])
        print(f"sync map, 1 GiB random   {big_s * 1000:7.1f} ms  (median of {a.rounds})")
    print(f"sync map, 64 MiB random  {small_s * 1000:7.1f} ms  (median of {a.rounds})")
    print(f"direct map, same volume  {direct_s * 1000:7.1f} ms")
    if not a.no_big:
        print(f"1 GiB / 64 MiB sync map  {big_s / small_s:.2f}x  (goal <= 1.2x)")
    print(f"sync map / direct map    {small_s / direct_s:.2f}x; median of paired ratios "
          f"{paired:.2f}x  (P8 goal <= 1.25x)")
    print(f"load average after:  {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
