#!/usr/bin/env python3
"""Time `imgstor list host vm nas` on a store of 10,000 assigned VMs against the cost of
starting Python at all (`python3 -c pass`), both measured in this run with the same
interpreter, in paired rounds: the median of the paired ratios (wall and CPU time) and
the best of each.  Goal (P5): the median ratio <= 3, with the system Python 3.11
(/usr/bin/python3, what the one-file build runs) as well as the venv's.

Measured as installed (pip writes .pyc files): the bench lets Python write bytecode for
the imgstor package (``__pycache__``, git-ignored) during a warm-up run even where
PYTHONDONTWRITEBYTECODE is set.  ``--no-bytecode`` measures a checkout that never caches
bytecode (every imgstor module compiled on every run).

    python3 bench/bench_list_vm_nas.py [--vms N] [--runs 15] [--python PATH ...]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from imgstor.state import Store, Vm  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def paired(commands: list[list[str]], runs: int, env: dict) -> list[list[tuple[float, float]]]:
    """(wall, CPU) of each command in each of ``runs`` rounds; the commands alternate
    within a round so that a busy machine slows both alike.  CPU time (user + system) is
    what other processes on a shared machine disturb least."""
    out: list[list[tuple[float, float]]] = [[] for _ in commands]
    for _ in range(runs):
        for i, argv in enumerate(commands):
            c, t = _cpu(), time.perf_counter()
            subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, check=True, env=env)
            out[i].append((time.perf_counter() - t, _cpu() - c))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--vms", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--python", action="append",
                    help="interpreter(s) to run both with (default: this one and "
                         "/usr/bin/python3)")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="keep PYTHONDONTWRITEBYTECODE (compile imgstor on every run)")
    a = ap.parse_args()
    pythons = a.python or [sys.executable] + (
        ["/usr/bin/python3"] if os.path.exists("/usr/bin/python3") else [])
    env = dict(os.environ)
    if not a.no_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as d:
        nas = [f"nas-0-{i}" for i in range(4)]
        computes = [f"compute-0-{i}" for i in range(100)]
        cfg = os.path.join(d, "imgstor.toml")
        with open(cfg, "w") as f:
            f.write('[state]\npath = "state.json"\n[defaults]\nimg_zpools = ["tank", "tank2"]\n')
            for h in nas:
                f.write(f'[hosts.{h}]\nrole = "nas"\n')
            for h in computes:
                f.write(f'[hosts.{h}]\nrole = "compute"\n')
        with Store(os.path.join(d, "state.json")).transaction() as st:
            for i in range(a.vms):
                c = computes[i % len(computes)]
                name = f"{c}-{i // len(computes)}"
                st.vms[name] = Vm(name=name, container=c, nas=nas[i % len(nas)],
                                  zpool=("tank", "tank2")[i // len(nas) % 2])
        # an installed config is not one written this second: its parse is kept between
        # commands (imgstor/tomlcache.py; here in this run's own cache directory)
        os.utime(cfg, (time.time() - 60, time.time() - 60))
        env["XDG_CACHE_HOME"] = os.path.join(d, "cache")
        mode = "no bytecode cache" if a.no_bytecode else "bytecode cached, as installed"
        for py in pythons:
            cmd = [py, "-m", "imgstor", "--config", cfg, "list", "host", "vm", "nas"]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True,
                                 env=env).stdout          # warm-up (writes bytecode)
            assert out.count("\n") == a.vms + 1, "unexpected output"
            base, lst = paired([[py, "-c", "pass"], cmd], a.runs, env)
            ver = subprocess.run([py, "-c", "import sys; print(sys.version.split()[0])"],
                                 capture_output=True, text=True).stdout.strip()
            wr = statistics.median(x[0] / b[0] for x, b in zip(lst, base))
            cr = statistics.median(x[1] / b[1] for x, b in zip(lst, base) if b[1] > 0)
            print(f"{py} (Python {ver}), {a.runs} paired runs, {mode}:")
            print(f"  python3 -c pass:                      median {statistics.median(b[0] for b in base) * 1000:7.1f} ms"
                  f"  best {min(b[0] for b in base) * 1000:6.1f} ms  (cpu best {min(b[1] for b in base) * 1000:.1f} ms)")
            print(f"  imgstor list host vm nas ({a.vms} VMs): median {statistics.median(x[0] for x in lst) * 1000:7.1f} ms"
                  f"  best {min(x[0] for x in lst) * 1000:6.1f} ms  (cpu best {min(x[1] for x in lst) * 1000:.1f} ms)")
            print(f"  P5 ratio, median of paired runs: {wr:.2f}x wall (goal <= 3x), "
                  f"{cr:.2f}x cpu; best/best {min(x[0] for x in lst) / min(b[0] for b in base):.2f}x wall")
    print(f"load average after:  {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
