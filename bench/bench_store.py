#!/usr/bin/env python3
"""The state store at scale (issue 25), ratios measured in one run, medians of paired runs.

S1  a batch of N `add host vm CONTAINER name=…` lines / one `imgstor add host vm` (goal
    <= 100x at 10,000), and 10,000 lines / 1,000 lines (goal <= 11x: linear); then the
    batch killed (SIGKILL) halfway and run again: every VM present, once.  Needs no lab.
S2  (`--s2`, the lab up) a direct map with 10,000 VMs and 2,000 volumes in the store / the
    same map with an empty store (goal <= 1.3x): two configs for the same lab hosts, one
    state file each; each round maps and unmaps with both, interleaved.

Each round runs every command once, in turn, each on a store of its own made for that
round (S1), so load hits all alike.  Prints the load average before and after.

    python3 bench/bench_store.py [--rounds 3] [--lines 1000,10000] [--s2 --map-rounds 7]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

CONFIG = """[state]
path = "state.json"
lock_timeout = 60
[defaults]
img_zpools = ["tank"]
"""


def _config(d: str, computes: int = 100) -> str:
    os.makedirs(d, mode=0o700, exist_ok=True)
    p = os.path.join(d, "imgstor.toml")
    with open(p, "w") as f:
        f.write(CONFIG)
        for i in range(4):
            f.write(f'[hosts.nas-0-{i}]\nrole = "nas"\n')
        for i in range(computes):
            f.write(f'[hosts.compute-0-{i}]\nrole = "compute"\n')
    os.utime(p, (time.time() - 60, time.time() - 60))      # its parse may be cached
    return p


def _imgstor(cfg: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "imgstor", "--config", cfg, *args]


def _run(argv: list[str], env: dict) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env=env)
    if p.returncode:
        raise SystemExit(f"bench: {' '.join(argv[3:])} -> {p.returncode}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t


def _lines(n: int) -> str:
    return "".join(f"add host vm compute-0-{i % 100} name=vm{i}\n" for i in range(n))


def s1(a, env: dict, work: str) -> None:
    sizes = [int(x) for x in a.lines.split(",")]
    files = {}
    for n in sizes:
        files[n] = os.path.join(work, f"batch-{n}.txt")
        with open(files[n], "w") as f:
            f.write(_lines(n))
    times: dict[str, list[float]] = {"one": [], **{str(n): [] for n in sizes}}
    for r in range(a.rounds):
        d = os.path.join(work, f"one-{r}")
        times["one"].append(_run(_imgstor(_config(d), "add", "host", "vm", "compute-0-0",
                                          "name=single"), env))
        for n in sizes:
            d = os.path.join(work, f"b{n}-{r}")
            times[str(n)].append(_run(_imgstor(_config(d), "batch", files[n]), env))
            shutil.rmtree(d)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"one `imgstor add host vm`            {med['one'] * 1000:9.1f} ms  (baseline; "
          f"median of {a.rounds})")
    for n in sizes:
        print(f"batch of {n:>6} add host vm lines  {med[str(n)] * 1000:9.1f} ms  = "
              f"{med[str(n)] / med['one']:6.1f}x one add"
              + ("  (S1 goal <= 100x)" if n == 10000 else ""))
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        print(f"S1 {hi} lines / {lo} lines = {med[str(hi)] / med[str(lo)]:.2f}x "
              f"(goal <= {1.1 * hi / lo:.0f}x: linear)")
    killed(sizes[-1], files[sizes[-1]], env, work, after=med[str(sizes[-1])] / 2)


def killed(n: int, file: str, env: dict, work: str, *, after: float) -> None:
    from imgstor.state import Store
    d = os.path.join(work, "killed")
    cfg = _config(d)
    p = subprocess.Popen(_imgstor(cfg, "batch", file), cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env)
    try:
        p.wait(after)                                             # about halfway
        raise SystemExit("bench: the batch ended before it could be killed")
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = len(Store(os.path.join(d, "state.json")).read().vms)
    out = subprocess.run(_imgstor(cfg, "batch", file), cwd=ROOT, capture_output=True,
                         text=True, env=env)
    vms = Store(os.path.join(d, "state.json")).read().vms
    with open(os.path.join(d, "state.json")) as f:
        once = sum(1 for ln in f if ln.startswith('  "vm'))
    ok = out.returncode == 0 and sorted(vms) == sorted(f"vm{i}" for i in range(n)) \
        and once == n
    print(f"kill -9 after {before} of {n} items, the same batch again: exit "
          f"{out.returncode}, {len(vms)} VMs, {once} records in the file -> "
          f"{'all present, once' if ok else 'FAILED'}")


def make_big(path: str, vms: int, volumes: int) -> None:
    """A state file with VMS VMs (on compute-0-0..99, assigned over nas-0-0..3) and
    VOLUMES mapped volumes, none of them on the lab's hosts' pools."""
    from imgstor.state import State, Store, Vm, Volume
    st = State()
    if True:
        for i in range(vms):
            c = f"compute-0-{i % 100}"
            name = f"{c}-{i // 100}"
            st.vms[name] = Vm(name=name, container=c, nas=f"nas-0-{i % 4}", zpool="tank")
        for i in range(volumes):
            c = f"compute-0-{i % 100}"
            vol = f"{c}-{i // 100}-vol"
            nas = f"nas-0-{i % 4}"
            st.volumes[f"{nas}/{vol}"] = Volume(
                nas=nas, zpool="tank", vol=vol, size=10 << 30, host=c,
                target=f"iqn.2001-04.com.{nas}-{vol}", state="mapped", mode="direct",
                device="/dev/sdc", since=time.time(),
                extra={"initiator": f"iqn.2005-03.org.open-iscsi:{c}", "lun": 1,
                       "marked": True, "portal": "10.1.255.254:3260", "chap_user": None})
    Store(path).replace_all(st, force=True)


def per_transaction(a, work: str) -> None:
    """In this process: the cost of one transaction that records a volume's new state
    (as a map's ``record`` does), on an empty store and on 10,000 VMs + 2,000 volumes;
    and the state file's size per VM and per volume."""
    from imgstor.state import Store, Volume
    rows = []
    for name, (vms, vols) in (("empty", (0, 0)), ("10,000 VMs + 2,000 volumes", (10_000, 2_000))):
        d = os.path.join(work, f"txn-{vms}")
        os.makedirs(d, mode=0o700)
        path = os.path.join(d, "state.json")
        make_big(path, vms, vols)
        size = os.path.getsize(path)
        s = Store(path)
        key = "nas-0-0/txn-vol"
        with s.transaction() as st:
            st.volumes[key] = Volume(nas="nas-0-0", zpool="tank", vol="txn-vol")
        s.stats.clear()
        n = a.txns
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):
            with s.transaction() as st:
                v = st.volumes[key]
                v.state = "mapped" if i % 2 == 0 else "unmapped"
                v.since = time.time()
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        st_ = s.stats
        rows.append((name, size, cpu / n, wall / n, (st_["journal_bytes"] + st_["state_bytes"]) / n,
                     st_["fsyncs"] / n, st_["folds"]))
    print(f"state file: {rows[1][1]} bytes for 10,000 VMs + 2,000 mapped volumes (a VM "
          f"{_per_record(work)}")
    for name, size, cpu, wall, b, f, folds in rows:
        print(f"one transaction ({name:27s}, file {size:8d} B): cpu {cpu * 1e3:6.3f} ms, wall "
              f"{wall * 1e3:6.2f} ms, {b:7.0f} bytes written, {f:.2f} fsyncs ({folds} folds)")


def _per_record(work: str) -> str:
    from imgstor.state import State, Vm, Volume
    from imgstor.state.journal import dump
    vm = Vm(name="compute-0-14-0", container="compute-0-14", nas="nas-0-0", zpool="tank")
    one = len(dump(State(vms={vm.name: vm}))) - len(dump(State()))
    vol = Volume(nas="nas-0-0", zpool="tank", vol="compute-0-14-0-vol", size=10 << 30,
                 host="compute-0-14", target="iqn.2001-04.com.nas-0-0-compute-0-14-0-vol",
                 state="mapped", mode="direct", device="/dev/sdc", since=time.time(),
                 extra={"initiator": "iqn.2005-03.org.open-iscsi:compute-0-14", "lun": 1,
                        "marked": True, "portal": "10.1.255.254:3260", "chap_user": None})
    two = len(dump(State(volumes={vol.key: vol}))) - len(dump(State()))
    return f"{one} bytes, a mapped volume ~{two} bytes)"


def s2(a, env: dict, work: str) -> None:
    from labbench import CONFIG as LABCFG
    from labbench import require_lab
    require_lab()
    text = open(LABCFG).read()
    cfgs = {}
    for name in ("empty", "big"):
        d = os.path.join(work, f"s2-{name}")
        os.makedirs(d, mode=0o700)
        cfgs[name] = os.path.join(d, "imgstor.toml")
        with open(cfgs[name], "w") as f:
            f.write(text.replace(f'path = "{os.path.dirname(LABCFG)}/state.json"',
                                 f'path = "{d}/state.json"'))
    make_big(os.path.join(work, "s2-big", "state.json"), 10_000, 2_000)
    vol = f"s2-{os.getpid()}"
    maps = {k: _imgstor(c, "add", "host", "storagemap", "nas-0-0", "tank", vol,
                        "compute-0-0", "64M") for k, c in cfgs.items()}
    unmaps = {k: _imgstor(c, "remove", "host", "storagemap", "nas-0-0", vol)
              for k, c in cfgs.items()}
    _run(maps["empty"], env)                      # makes the volume (and the node app)
    _run(unmaps["empty"], env)
    _run(_imgstor(cfgs["big"], "add", "host", "storagemap", "nas-0-0", "tank", vol,
                  "compute-0-0", "64M", "adopt=yes"), env)
    _run(unmaps["big"], env)
    t: dict[str, list[float]] = {"empty": [], "big": []}
    try:
        for r in range(a.map_rounds):
            order = ("empty", "big") if r % 2 == 0 else ("big", "empty")
            for k in order:
                t[k].append(_run(maps[k], env))
                _run(unmaps[k], env)
    finally:
        subprocess.run(unmaps["empty"], cwd=ROOT, capture_output=True, env=env)
        subprocess.run(unmaps["big"], cwd=ROOT, capture_output=True, env=env)
        subprocess.run(_imgstor(cfgs["empty"], "remove", "host", "storageimg", "nas-0-0",
                                "tank", vol), cwd=ROOT, capture_output=True, env=env)
    ratios = [b / e for e, b in zip(t["empty"], t["big"])]
    e, b = statistics.median(t["empty"]), statistics.median(t["big"])
    print(f"map, empty store                     {e * 1000:9.1f} ms  (median of "
          f"{a.map_rounds})")
    print(f"map, 10,000 VMs + 2,000 volumes      {b * 1000:9.1f} ms  = {b / e:.2f}x; median "
          f"of paired ratios {statistics.median(ratios):.2f}x  (S2 goal <= 1.3x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lines", default="1000,10000")
    ap.add_argument("--s2", action="store_true", help="also S2 (needs the lab up)")
    ap.add_argument("--no-s1", action="store_true")
    ap.add_argument("--map-rounds", type=int, default=7)
    ap.add_argument("--txns", type=int, default=1000,
                    help="transactions timed per store (in-process, no lab); 0: none")
    a = ap.parse_args()
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)       # as installed: .pyc files kept
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    work = tempfile.mkdtemp(prefix="bench-store-", dir="/var/tmp")
    try:
        if a.txns:
            per_transaction(a, work)
        if not a.no_s1:
            s1(a, env, work)
        if a.s2:
            s2(a, env, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after:  {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
