#!/usr/bin/env python3
"""Map latency in direct mode (the volume exists; tgt target; userspace initiator) as a
ratio to one `ssh host true` measured in the same run.  Goal: <= 3.3x (with Fabric).

Each round: `ssh nas-0-0 true`, `imgstor add host storagemap …` (a full map: initiator
name, volume + properties + target on the NAS, attach on the node), then
`imgstor remove host storagemap …` (unmap), interleaved; medians reported.

    sudo lab/lab up && python3 bench/bench_map.py [--rounds 7]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import uuid

from labbench import ROOT, imgstor, require_lab, ssh, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    require_lab()
    vol = f"bench-{uuid.uuid4().hex[:6]}"
    mapcmd = imgstor("add", "host", "storagemap", "nas-0-0", "tank", vol, "compute-0-0", "64M")
    unmapcmd = imgstor("remove", "host", "storagemap", "nas-0-0", vol)
    subprocess.run(mapcmd, check=True, capture_output=True, cwd=ROOT)      # creates the volume
    subprocess.run(unmapcmd, check=True, capture_output=True, cwd=ROOT)
    base, maps, unmaps = [], [], []
    try:
        for _ in range(a.rounds):
            base.append(timed(ssh("nas-0-0", "true")))
            maps.append(timed(mapcmd))
            unmaps.append(timed(unmapcmd))
    finally:
        subprocess.run(unmapcmd, capture_output=True, cwd=ROOT)
        subprocess.run(imgstor("remove", "host", "storageimg", "nas-0-0", "tank", vol),
                       capture_output=True, cwd=ROOT)
    b, m, u = (statistics.median(x) for x in (base, maps, unmaps))
    print(f"ssh nas-0-0 true      {b * 1000:7.1f} ms  (baseline, median of {a.rounds})")
    print(f"map (volume exists)   {m * 1000:7.1f} ms  = {m / b:.2f}x ssh true  (goal <= 3.3x)")
    print(f"unmap                 {u * 1000:7.1f} ms  = {u / b:.2f}x ssh true")


if __name__ == "__main__":
    main()
