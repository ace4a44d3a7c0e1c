#!/usr/bin/env python3
"""How imgstor runs a command on an open Fabric connection, against Fabric's own ways,
on the lab: `true` on one host N times, and `true` on every host at once N times.

  channel   Cluster.exec: one paramiko channel on the Connection's transport
  run       fabric Connection.run(hide=True, warn=True) (invoke's Runner)
  parallel  Cluster.parallel(hosts, exec)
  group     fabric ThreadingGroup.from_connections(...).run(...)

Ratios against `channel` / `parallel` from the same run (these machines are noisy).

    sudo lab/lab up && python3 bench/bench_transport.py [--rounds 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from labbench import CONFIG, ROOT, require_lab

sys.path.insert(0, str(ROOT))

from imgstor.config import load_config  # noqa: E402
from imgstor.transport import Cluster  # noqa: E402


def med(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    require_lab()
    from fabric import ThreadingGroup
    cfg = load_config(str(CONFIG))
    hosts = list(cfg.hosts)
    with Cluster(cfg) as c:
        conns = [c.connection(h) for h in hosts]
        one, conn = hosts[0], conns[0]
        ch = med(lambda: c.exec(one, ["true"]), a.rounds)
        run = med(lambda: conn.run("true", hide=True, warn=True, in_stream=False), a.rounds)
        par = med(lambda: c.parallel(hosts, lambda h: c.exec(h, ["true"])), a.rounds)
        group = ThreadingGroup.from_connections(conns)
        grp = med(lambda: group.run("true", hide=True, warn=True, in_stream=False), a.rounds)
    print(f"channel   {ch * 1000:7.1f} ms  (Cluster.exec, median of {a.rounds})")
    print(f"run       {run * 1000:7.1f} ms  = {run / ch:.2f}x channel  (Connection.run)")
    print(f"parallel  {par * 1000:7.1f} ms  ({len(hosts)} hosts, Cluster.parallel)")
    print(f"group     {grp * 1000:7.1f} ms  = {grp / par:.2f}x parallel  (ThreadingGroup.run)")


if __name__ == "__main__":
    main()
