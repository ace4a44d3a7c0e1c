#!/usr/bin/env python3
"""`imgstor refresh` over N lab hosts / the same N hosts each running `ssh host true` in
parallel (the machine's handshake capacity), at N = 1, 8, 16, 32 (issue 11; goal <= 1.5x).

    sudo LAB_DIR=… python3 bench/bench_refresh.py [--rounds 5] [--max-connections 16]

Brings up a lab of 2 NAS and 30 compute nodes (`lab/lab up --hosts 2+30`, printing its
`up` time and memory) unless a healthy lab of 32 hosts or more is up already; takes it
down at the end unless it was up before or LAB_KEEP=1.  Each N gets its own config (the
lab's, with the first N hosts, NAS first, and a state file in a temp directory), so the
lab's own state is not touched.  Refresh has nothing to do there but probe every host:
what is measured is the connection pool and the probe, plus the command's start.
Baseline: one `sh` starting N `ssh -F lab/ssh_config HOST true` at once and waiting for all.
A second, stricter baseline does the same with `-o KexAlgorithms=curve25519-sha256`, the
key exchange paramiko (imgstor's client) negotiates: OpenSSH 9.2 picks
sntrup761x25519-sha512 by default, which costs both ends more CPU per connection (here
~60 ms of client CPU against ~5 ms), so the first ratio flatters imgstor.
Medians of interleaved rounds (labbench.interleaved).  imgstor runs with its .pyc files
(PYTHONDONTWRITEBYTECODE is dropped for the bench), as an installed copy would.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labbench import LAB_DIR, ROOT, interleaved, timed

LAB = str(ROOT / "lab" / "lab")
SIZES = (1, 8, 16, 32)


def lab_status() -> dict:
    p = subprocess.run([LAB, "status", "--json"], capture_output=True, text=True)
    return json.loads(p.stdout or "{}")


def bring_up() -> tuple[dict, bool]:
    """The lab's status, and whether this script started it."""
    st = lab_status()
    if st.get("up") and len(st.get("hosts", [])) >= max(SIZES):
        print(f"lab: up already, {len(st['hosts'])} hosts, {st.get('memory_mib')} MiB "
              f"in {st.get('processes')} processes (PSS)")
        return st, False
    t = time.perf_counter()
    p = subprocess.run([LAB, "up", "--hosts", "2+30"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench: lab/lab up failed:\n{p.stderr}")
    print(f"lab: {p.stderr.strip().splitlines()[-3].strip()}  (wall {time.perf_counter() - t:.1f}s)")
    return lab_status(), True


def config_for(hosts: list[str], d: Path, limit: int | None) -> Path:
    """The lab's imgstor.toml with only ``hosts`` and its own state file in ``d``."""
    text = (LAB_DIR / "imgstor.toml").read_text()
    head, _, tail = text.partition("\n[hosts.")
    tables = {m.group(1): m.group(0) for m in
              re.finditer(r"^\[hosts\.([^\]]+)\]\n(?:(?!\[).*\n?)*", "[hosts." + tail, re.M)}
    head = re.sub(r'(?m)^path = ".*"$', f'path = "{d / "state.json"}"', head, count=1)
    if limit:
        head = head.replace("[ssh]\n", f"[ssh]\nmax_connections = {limit}\n", 1)
    p = d / f"imgstor-{len(hosts)}.toml"
    p.write_text(head + "\n" + "".join(tables[h].rstrip("\n") + "\n\n" for h in hosts))
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-connections", type=int, default=None,
                    help="[ssh] max_connections in the bench configs (default: imgstor's)")
    a = ap.parse_args()
    # Measure imgstor as installed, with its modules' .pyc files: with
    # PYTHONDONTWRITEBYTECODE set (as in this machine's sessions) every run compiles
    # imgstor's ~30 modules from source again, ~65 ms of the command's fixed start.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    st, started = bring_up()
    names = [h["host"] for h in st["hosts"]]
    names = [n for n in names if n.startswith("nas")] + \
            [n for n in names if not n.startswith("nas")]
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-refresh-") as tmp:
            d = Path(tmp)
            rows = []
            for n in SIZES:
                hosts = names[:n]
                cfg = config_for(hosts, d, a.max_connections)
                refresh = [sys.executable, "-m", "imgstor", "--config", str(cfg), "refresh"]
                # once, checked: every host up, nothing else done
                p = subprocess.run(refresh + ["--json"], cwd=ROOT, capture_output=True,
                                   text=True, check=True)
                got = json.loads(p.stdout)["rows"]
                up = [r["host"] for r in got if r["what"] == "host" and r["up"]]
                if sorted(up) != sorted(hosts):
                    sys.exit(f"bench: refresh did not reach every host: {p.stdout}")
                def base(opts: str) -> list[str]:
                    sshs = " ".join(f"ssh {opts}-F {LAB_DIR / 'ssh_config'} {h} true & "
                                    "p=\"$p $!\";" for h in hosts)
                    return ["sh", "-c", f"p=; {sshs} rc=0; for x in $p; do wait $x || rc=1; "
                            "done; exit $rc"]
                cmds = {"ssh": base(""), "x25519": base("-o KexAlgorithms=curve25519-sha256 "),
                        "refresh": refresh + ["--quiet"]}
                for argv in cmds.values():
                    timed(argv)                                # warm each once
                t = interleaved(cmds, a.rounds)
                rows.append((n, t["ssh"], t["x25519"], t["refresh"]))
                print(f"{n:3d} hosts: parallel `ssh host true` {t['ssh'] * 1000:6.0f} ms, same "
                      f"with curve25519 {t['x25519'] * 1000:6.0f} ms, imgstor refresh "
                      f"{t['refresh'] * 1000:6.0f} ms: {t['refresh'] / t['ssh']:.2f}x, "
                      f"{t['refresh'] / t['x25519']:.2f}x", flush=True)
    finally:
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        if started and not os.environ.get("LAB_KEEP"):
            subprocess.run([LAB, "down"], check=False)
    print(f"\nrefresh / N parallel `ssh host true`, medians of {a.rounds} interleaved rounds "
          "(goal <= 1.5x); last column: against ssh with paramiko's key exchange")
    for n, s, x, r in rows:
        print(f"  {n:3d} hosts  {r / s:.2f}x  ({r * 1000:.0f} ms / {s * 1000:.0f} ms)   "
              f"{r / x:.2f}x  (/ {x * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
