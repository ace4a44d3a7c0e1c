#!/usr/bin/env python3
"""A boot storm (issue 22): N VMs started in sync mode by one `imgstor batch`, on the
userspace lab with 2 NAS and 30 compute nodes (`lab/lab up --hosts 2+30`).

1. Prefill (not measured): N volumes of SIZE MiB of distinct random data, spread over the
   NAS (made by a batch of direct maps and unmaps, then written on the NAS), their
   sha256 taken there.
2. One VM for scale: a sync map of one more such volume with `--wait` (copy, merge,
   pivot), then its unmap with `--wait`, alone on the lab: wall times.
3. The storm: one `imgstor batch` of N sync maps (`--jobs 8`), spread over every NAS and
   node; wait until N are `mapped` with no job left; every node's local copy
   sha256-checked against its prefill.  Then one batch of N unmaps; wait until N are
   `unmapped`; `imgstor check` must exit 0; nothing of the storm may be left on any host
   (datasets, qemu-storage-daemons, targets).
4. It prints, sampling /proc every half second (labbench.Frontend: the bench is the
   subreaper of every imgstor process it starts, detached monitors included): the peak PSS
   of all frontend imgstor processes together, their CPU seconds (exact, from wait4) per
   VM, the storm's wall times, and the single VM's.  Goals: peak <= 1 GiB PSS, <= 1 CPU
   second per VM.

    sudo LAB_DIR=… lab/lab up --hosts 2+30
    sudo LAB_DIR=… python3 bench/bench_storm.py [--vms 100] [--mib 64] [--jobs 8]

The state file is the lab's (the storm's volumes are removed at the end).  imgstor runs
with its .pyc files (PYTHONDONTWRITEBYTECODE dropped), as an installed copy would.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import labbench
from labbench import LAB_DIR, ROOT, Frontend, require_lab, ssh

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
CONFIG: Path = labbench.CONFIG        # the lab's, with a longer lock_timeout (main)


def imgstor(*args: str) -> list[str]:
    return [sys.executable, "-m", "imgstor", "--config", str(CONFIG), *args]


class FsyncProbe:
    """How long an fsync of a state-sized file takes in the lab's directory (the state
    file's filesystem, which the lab's 32 zfs-fuse pools and the other labs share), once
    a second: what the store's transactions wait for under the storm."""

    def __init__(self, size: int = 130_000) -> None:
        import threading
        self.path, self.data, self.lat = LAB_DIR / ".fsync-probe", b"x" * size, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, self.data)
                t = time.monotonic()
                os.fsync(fd)
                self.lat.append(time.monotonic() - t)
            finally:
                os.close(fd)

    def stop(self) -> str:
        self._stop.set()
        self._t.join()
        self.path.unlink(missing_ok=True)
        x = sorted(self.lat) or [0.0]
        return (f"median {x[len(x) // 2] * 1000:.0f} ms, p99 {x[int(len(x) * .99)] * 1000:.0f} "
                f"ms, max {x[-1] * 1000:.0f} ms ({len(x)} probes)")


def sh(argv: list[str], *, check: bool = True, timeout: float = 1800) -> str:
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[-3:])} -> {p.returncode}\n{p.stdout}{p.stderr}")
    return p.stdout


def batch(lines: list[str], name: str, d: Path, *, jobs: int,
          fe: Frontend | None = None) -> subprocess.CompletedProcess:
    path = d / name
    path.write_text("".join(ln + "\n" for ln in lines))
    argv = imgstor("batch", str(path), "--jobs", str(jobs))
    if fe is not None:
        p = fe.run(argv, what=f"batch {name}")
    else:
        p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        bad = [ln for ln in p.stdout.splitlines() if not re.search(r"\s0\s", ln)][:10]
        raise SystemExit(f"bench: batch {name} -> {p.returncode}\n" + "\n".join(bad)
                         + p.stderr[-2000:])
    return p


def state() -> dict:
    from imgstor.state import Store  # the state file and its journal (issue 25)
    return Store(str(LAB_DIR / "state.json")).read().to_dict()


def wait_all(vols: dict[str, str], want: str, timeout: float) -> float:
    """Until every NAS/VOL of VOLS is WANT and has no job; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        st = state()
        states = collections.Counter(st["volumes"].get(k, {}).get("state") for k in vols)
        busy = [j for j in st["jobs"].values() if j["volume"] in vols]
        failed = [j for j in busy if j.get("state") == "failed"]
        if failed:
            raise SystemExit(f"bench: {len(failed)} jobs failed, e.g. {failed[0]}")
        line = f"{dict(states)}, {len(busy)} jobs"
        if line != last:
            print(f"  {time.strftime('%H:%M:%S')} {line}", flush=True)
            last = line
        if states[want] == len(vols) and not busy:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: not all {want} after {timeout:g}s: {line}")
        time.sleep(1)


def prefill(items: list[tuple[str, str, str]], mib: int, d: Path, jobs: int) -> dict:
    """The volumes, full of distinct random data; {NAS/VOL: sha256}."""
    batch([f"add host storagemap {n} tank {v} {h} {mib}M" for n, v, h in items], "mk", d,
          jobs=jobs)
    batch([f"remove host storagemap {n} {v}" for n, v, _ in items], "mk-unmap", d, jobs=jobs)
    shas: dict[str, str] = {}
    by_nas: dict[str, list[str]] = collections.defaultdict(list)
    for n, v, _ in items:
        by_nas[n].append(v)
    for nas, vols in by_nas.items():
        script = "; ".join(
            f"f=$(zfs get -H -o value mountpoint tank/{v})/disk.raw && head -c {mib << 20} "
            f"/dev/urandom | dd of=$f bs=1M conv=notrunc status=none && "
            f"echo {v} $(sha256sum < $f)" for v in vols)
        for line in sh(ssh(nas, script)).splitlines():
            v, sha = line.split()[:2]
            shas[f"{nas}/{v}"] = sha
    return shas


def node_shas(items: list[tuple[str, str, str]]) -> dict[str, str]:
    """{NAS/VOL: sha256 of the node's local copy}, one ssh per node."""
    by_node: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for n, v, h in items:
        by_node[h].append((n, v))
    out = {}
    for node, vols in by_node.items():
        script = "; ".join(f"echo {n}/{v} $(sha256sum < $(zfs get -H -o value mountpoint "
                           f"tank/{v})/disk.raw)" for n, v in vols)
        for line in sh(ssh(node, script)).splitlines():
            k, sha = line.split()[:2]
            out[k] = sha
    return out


def leftovers(hosts: list[dict], tag: str) -> list[str]:
    """What the storm left of its mappings: on a node any dataset (local copy,
    temp-write), a qemu-storage-daemon, an iSCSI session; on a NAS a target.  (The NAS
    volumes and their snapshots are the VMs' data: they stay until `remove host
    storageimg`.)"""
    out = []
    for h in hosts:
        name = h.get("host") or h.get("name")
        if h["role"] == "nas":
            cmd = "tgtadm --lld iscsi --mode target --op show | grep '^Target' || true"
        else:
            cmd = ("zfs list -H -o name -t all; ps -eo args | grep [q]emu-storage-daemon; "
                   "iscsiadm -m session 2>/dev/null || true")
        out += [f"{name}: {ln}" for ln in sh(ssh(name, cmd), check=False).splitlines()
                if tag in ln]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vms", type=int, default=100)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=8)
    a = ap.parse_args()
    st = require_lab()
    hosts = st["hosts"]
    nases = [h["host"] for h in hosts if h["role"] == "nas"]
    nodes = [h["host"] for h in hosts if h["role"] == "compute"]
    tag = f"bs{uuid.uuid4().hex[:4]}"
    items = [(nases[i % len(nases)], f"{tag}-{i}", nodes[i % len(nodes)])
             for i in range(a.vms)]
    solo = (nases[0], f"{tag}-solo", nodes[-1])
    d = Path(tempfile.mkdtemp(prefix="bench-storm-", dir="/var/tmp"))
    global CONFIG
    # The lab's config, state file included, with a store lock that may wait 300 s: the
    # lab's disk holds the state file, 32 zfs-fuse pools and the other labs' (an fsync
    # waited up to tens of seconds there under the storm; the FsyncProbe line says how long)
    CONFIG = d / "imgstor.toml"
    CONFIG.write_text(labbench.CONFIG.read_text().replace("[state]\n",
                                                          "[state]\nlock_timeout = 300\n", 1))
    print(f"lab: {len(nases)} NAS, {len(nodes)} compute nodes; {a.vms} VMs of {a.mib} MiB; "
          f"batch --jobs {a.jobs}", flush=True)
    keys = {f"{n}/{v}": n for n, v, _ in items}
    try:
        t = time.monotonic()
        shas = prefill(items + [solo], a.mib, d, a.jobs)
        print(f"prefill: {len(shas)} volumes of distinct data in {time.monotonic() - t:.0f}s",
              flush=True)
        # one VM, alone, for scale
        n, v, h = solo
        t = time.monotonic()
        sh(imgstor("add", "host", "storagemap", n, "tank", v, h, f"{a.mib}M",
                   "img_sync=yes", "--wait"))
        one_map = time.monotonic() - t
        ok_one = node_shas([solo])[f"{n}/{v}"] == shas[f"{n}/{v}"]
        t = time.monotonic()
        sh(imgstor("remove", "host", "storagemap", n, v, "--wait"))
        one_unmap = time.monotonic() - t
        print(f"one VM: map to mapped {one_map:.1f}s (copy verified: {ok_one}), unmap to "
              f"unmapped {one_unmap:.1f}s", flush=True)
        time.sleep(8)                     # its monitor idles out: the storm starts clean

        fe = Frontend()
        probe = FsyncProbe()
        t0 = time.monotonic()
        p = batch([f"add host storagemap {n} tank {v} {h} {a.mib}M img_sync=yes"
                   for n, v, h in items], "maps", d, jobs=a.jobs, fe=fe)
        t_batch = time.monotonic() - t0
        print(f"storm: the batch of {a.vms} sync maps returned in {t_batch:.1f}s: "
              f"{p.stdout.strip().splitlines()[-1]}", flush=True)
        t_mapped = wait_all(keys, "mapped", 7200) - t0
        got = node_shas(items)
        verified = sum(got.get(k) == shas[k] for k in keys)
        print(f"storm: {a.vms}/{a.vms} mapped after {t_mapped:.0f}s; node copies "
              f"sha256-verified: {verified}/{a.vms}", flush=True)
        t1 = time.monotonic()
        p = batch([f"remove host storagemap {n} {v}" for n, v, _ in items], "unmaps", d,
                  jobs=a.jobs, fe=fe)
        t_unmapped = wait_all(keys, "unmapped", 7200) - t1
        fe.settle()
        fe.stop()
        fsync = probe.stop()
        unmapped = sum(state()["volumes"][k]["state"] == "unmapped" for k in keys)
        check = subprocess.run(imgstor("check"), cwd=ROOT, capture_output=True, text=True)
        left = leftovers(hosts, tag)
        cpu = fe.cpu
        print()
        print(f"VMs mapped            {a.vms}/{a.vms} (copies verified {verified}/{a.vms})")
        print(f"VMs unmapped          {unmapped}/{a.vms}")
        print(f"imgstor check         exit {check.returncode}"
              + ("" if check.returncode == 0 else f"\n{check.stdout}"))
        print(f"left on the hosts     {len(left)}" + "".join(f"\n  {x}" for x in left[:20]))
        print(f"wall: maps            {t_mapped:7.0f} s (the batch itself {t_batch:.0f} s)")
        print(f"wall: unmaps          {t_unmapped:7.0f} s")
        print(f"wall: one VM          {one_map:7.1f} s map, {one_unmap:.1f} s unmap "
              f"(alone on the lab)")
        print(f"frontend peak PSS     {fe.peak_pss / 2**20:7.1f} MiB in at most "
              f"{fe.peak_procs} imgstor processes (goal <= 1024 MiB)")
        print(f"frontend CPU          {cpu:7.1f} s = {cpu / a.vms:.2f} s per VM "
              f"(goal <= 1 s per VM)")
        print(f"fsync in the lab dir  {fsync}")
        for pid, (what, secs) in sorted(fe.reaped.items(), key=lambda x: -x[1][1]):
            print(f"  pid {pid:<8} {what:<18} {secs:7.1f} s")
        ok = (verified == unmapped == a.vms and check.returncode == 0 and not left)
        if not ok:
            sys.exit("bench: the storm did not end clean (above)")
    finally:                              # whatever happened: the storm's volumes go
        (d / "cleanup").write_text("".join(f"remove host storagemap {n} {v} --wait\n"
                                           for n, v, _ in items + [solo]))
        (d / "rm").write_text("".join(f"remove host storageimg {n} tank {v}\n"
                                      for n, v, _ in items + [solo]))
        for f in ("cleanup", "rm"):
            subprocess.run(imgstor("batch", str(d / f), "--jobs", str(a.jobs)), cwd=ROOT,
                           capture_output=True)


if __name__ == "__main__":
    main()
