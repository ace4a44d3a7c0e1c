#!/usr/bin/env python3
"""10 maps in one `imgstor batch` / 10 sequential `imgstor add host storagemap` commands,
measured in the same run (goal <= 0.5x).  Also 10 unmaps the same two ways.

The 10 volumes exist before timing (made by a first map and unmap); they are spread over
the lab's NAS and compute nodes (two NAS with `lab/lab up --hosts
nas-0-0,nas-0-1,compute-0-0,compute-0-1`; one NAS works too).  Each round: the sequential
maps, the sequential unmaps, the batch of maps, the batch of unmaps; medians reported.
`--spread one` puts all 10 on nas-0-0 and compute-0-0 (how much one host serializes).

    python3 bench/bench_batch.py [--rounds 3] [--jobs 8] [--spread all|one]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import uuid

from labbench import ROOT, imgstor, require_lab


def run(argv: list[str]) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[3:])} -> {p.returncode}\n{p.stdout}{p.stderr}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--spread", choices=("all", "one"), default="all")
    a = ap.parse_args()
    st = require_lab()
    nases = [h["host"] for h in st["hosts"] if h["role"] == "nas"] if a.spread == "all" else ["nas-0-0"]
    comps = [h["host"] for h in st["hosts"] if h["role"] == "compute"][:2] if a.spread == "all" \
        else ["compute-0-0"]
    tag = uuid.uuid4().hex[:5]
    items = [(nases[i % len(nases)], f"bb{tag}-{i}", comps[(i // len(nases)) % len(comps)])
             for i in range(10)]
    maps = [imgstor("add", "host", "storagemap", n, "tank", v, h, "8M") for n, v, h in items]
    unmaps = [imgstor("remove", "host", "storagemap", n, v) for n, v, _ in items]
    d = tempfile.mkdtemp(prefix="bench-batch-")
    mapfile, unmapfile = f"{d}/maps.txt", f"{d}/unmaps.txt"
    with open(mapfile, "w") as f:
        f.writelines(f"add host storagemap {n} tank {v} {h} 8M\n" for n, v, h in items)
    with open(unmapfile, "w") as f:
        f.writelines(f"remove host storagemap {n} {v}\n" for n, v, _ in items)
    bmap = imgstor("batch", mapfile, "--jobs", str(a.jobs))
    bunmap = imgstor("batch", unmapfile, "--jobs", str(a.jobs))
    run(bmap)                       # creates the volumes (and warms caches)
    run(bunmap)
    seq_m, seq_u, bat_m, bat_u = [], [], [], []
    try:
        for _ in range(a.rounds):
            seq_m.append(sum(run(c) for c in maps))
            seq_u.append(sum(run(c) for c in unmaps))
            bat_m.append(run(bmap))
            bat_u.append(run(bunmap))
    finally:
        subprocess.run(bunmap, cwd=ROOT, capture_output=True)
        with open(f"{d}/rm.txt", "w") as f:
            f.writelines(f"remove host storageimg {n} tank {v}\n" for n, v, _ in items)
        subprocess.run(imgstor("batch", f"{d}/rm.txt"), cwd=ROOT, capture_output=True)
    sm, su, bm, bu = (statistics.median(x) for x in (seq_m, seq_u, bat_m, bat_u))
    print(f"10 volumes over {','.join(nases)} -> {','.join(comps)}; --jobs {a.jobs}; "
          f"median of {a.rounds} rounds")
    print(f"10 sequential maps     {sm:7.2f} s  (baseline)")
    print(f"batch of 10 maps       {bm:7.2f} s  = {bm / sm:.2f}x sequential  (goal <= 0.5x)")
    print(f"10 sequential unmaps   {su:7.2f} s  (baseline)")
    print(f"batch of 10 unmaps     {bu:7.2f} s  = {bu / su:.2f}x sequential")


if __name__ == "__main__":
    main()
