#!/usr/bin/env python3
"""The copy engine against raw `zfs send | ssh | zfs receive`, NAS -> compute node, in the
same run (ratios only: these machines are noisy).

0. the relay alone (this machine): 2 GiB from `head -c` to `cat`, through the job's
   splice relay vs a plain pipe.
1. throughput: the same snapshot of random data, copied raw (root's ssh, as bench_lab.py)
   and by the engine (copy.start ... until copy.status says done: a detached job, the
   gate's state probe, the in-process counter, the gate's receive).  Goal: engine/raw >=
   0.95.  Reported twice: end to end (the start step's call to the job's "finished"
   stamp) and the stream alone (the job's own "seconds": zfs send to zfs receive's exit).
2. compression: with sync_bwlimit 20M, compressible data (a tar of /usr: binaries,
   libraries, text, like a VM's root disk) copied with sync_compress=zstd and without.
   Goal: zstd/plain >= 1.5.

    sudo LAB_DIR=… lab/lab up && python3 bench/bench_copy.py [--mib 256] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid

from labbench import CONFIG, LAB_DIR, ROOT, require_lab, ssh

sys.path.insert(0, str(ROOT))
from imgstor import synctrust  # noqa: E402
from imgstor.config import load_config  # noqa: E402
from imgstor.transport import Cluster  # noqa: E402

NAS, NODE = "nas-0-0", "compute-0-0"
KD = f"/root/.ssh/imgstor-sync.{NAS}"      # the lab shares /root/.ssh between its hosts
EXPECT_SECONDS: list[float] = []


def run(host: str, cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(ssh(host, cmd), check=True, capture_output=True)


def destroy(host: str, ds: str) -> None:
    for _ in range(40):
        p = subprocess.run(ssh(host, f"zfs umount -f {ds} 2>/dev/null; zfs destroy -r {ds}"),
                           capture_output=True)
        if p.returncode == 0 or b"does not exist" in p.stderr:
            return
        time.sleep(0.5)
    raise SystemExit(f"bench: cannot destroy {host}:{ds}")


def raw(src: str, dst: str) -> float:
    t0 = time.perf_counter()
    run(NAS, f"set -o pipefail; zfs send {src}@b | ssh {NODE} zfs receive {dst}")
    return time.perf_counter() - t0


def engine(c: Cluster, src: str, dst: str, **kw) -> tuple[float, float, dict]:
    args = synctrust.copy_args(c.config, NAS, NODE, snapshot=f"{src}@b", to_dataset=dst,
                               key_dir=KD, **kw)
    # the announcement to the receiver's gate (issue 18: two steps, ~0.3 s here) comes
    # first, outside the timing: a monitor makes it once per copy, like the start step
    t = time.time()
    synctrust.expect(c, NAS, NODE, snapshot=f"{src}@b", to_dataset=dst, objtype="filesystem")
    EXPECT_SECONDS.append(time.time() - t)
    # end to end = from the start step to the job's own "finished" stamp (the lab's hosts
    # share this machine's clock): polling only to learn the result, once a second like a
    # monitor would (a status step is a python start on the NAS: polling it 10x a second
    # would eat the CPU the copy needs on these 2 cores)
    t0 = time.time()
    c.step(NAS, "copy.start", **args)
    while True:
        time.sleep(1)
        st = c.step(NAS, "copy.status", to_alias=NODE, to_dataset=dst).facts
        if st["state"] != "running":
            break
    wall = st["finished"] - t0
    if st["state"] != "done":
        raise SystemExit(f"bench: copy failed: {st.get('error')}")
    return wall, float(st["seconds"]), st


def relay_alone(n: int = 2 << 30) -> tuple[float, float]:
    """MiB/s of a plain pipe and of the same pipe through copypipe.relay."""
    import os
    import threading

    from imgstor.remote import copypipe
    t0 = time.perf_counter()
    subprocess.run(f"head -c {n} /dev/zero | cat > /dev/null", shell=True, check=True)
    plain = n / (time.perf_counter() - t0) / 2**20
    src = subprocess.Popen(["head", "-c", str(n), "/dev/zero"], stdout=subprocess.PIPE)
    dst = subprocess.Popen(["sh", "-c", "cat > /dev/null"], stdin=subprocess.PIPE)
    a, b = os.dup(src.stdout.fileno()), os.dup(dst.stdin.fileno())
    src.stdout.close()
    dst.stdin.close()
    t0 = time.perf_counter()
    m = copypipe.Meter()
    copypipe.relay(a, b, count=m, limit=m, stop=threading.Event())
    dst.wait()
    src.wait()
    return plain, n / (time.perf_counter() - t0) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--zmib", type=int, default=192, help="compressible data, MiB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", default="0,1,2", help="which parts to run (0,1,2)")
    a = ap.parse_args()
    require_lab()
    parts = set(a.parts.split(","))
    if "0" in parts:
        plain, rel = relay_alone()
        print(f"relay alone: plain pipe {plain:7.0f} MiB/s, through the job's relay "
              f"{rel:7.0f} MiB/s (ratio {rel / plain:.2f})")
    cfg = load_config(str(CONFIG))
    tag = uuid.uuid4().hex[:6]
    src, zsrc = f"tank/bc-{tag}", f"tank/bz-{tag}"
    made: list[str] = []
    ak = LAB_DIR / "authorized_keys"          # shared by the lab's sshds: put back after
    ak_before = ak.read_text()
    with Cluster(cfg) as c:
        synctrust.ensure(c, NAS, NODE, key_dir=KD, authorized_keys=str(ak),
                         gate_path=str(LAB_DIR / "hosts" / NODE / "sync-gate.py"))
        try:
            if "1" in parts:
                made.append(src)
                run(NAS, f"zfs create {src} && head -c {a.mib << 20} /dev/urandom > "
                         f"$(zfs get -H -o value mountpoint {src})/data && zfs snapshot {src}@b")
                throughput(c, a, src, tag)
            if "2" in parts:
                # compressible like a VM's root disk: a tar of this machine's /usr
                # (binaries, libraries, text), not a repeated line that compresses 1000:1
                made.append(zsrc)
                run(NAS, f"zfs create {zsrc} && (tar cf - /usr/lib /usr/share 2>/dev/null | "
                         f"head -c {a.zmib << 20} > $(zfs get -H -o value mountpoint {zsrc})/data)"
                         f" && zfs snapshot {zsrc}@b")
                compression(c, a, zsrc, tag)
        finally:
            ak.write_text(ak_before)
            for ds in made:
                destroy(NAS, ds)


def throughput(c: Cluster, a, src: str, tag: str) -> None:
    r_raw, r_wall, r_pump = [], [], []
    for i in range(a.rounds):
        d = f"tank/bd-{tag}-{i}"
        r_raw.append(raw(src, d))
        destroy(NODE, d)
        w, p, _ = engine(c, src, d)
        r_wall.append(w)
        r_pump.append(p)
        destroy(NODE, d)
    raw_t, wall_t, pump_t = (statistics.median(x) for x in (r_raw, r_wall, r_pump))
    print(f"random data {a.mib} MiB, median of {a.rounds} interleaved rounds")
    print(f"  raw zfs send | ssh | zfs receive   {raw_t:6.2f} s  {a.mib / raw_t:6.1f} MiB/s")
    print(f"  engine, end to end                 {wall_t:6.2f} s  {a.mib / wall_t:6.1f} MiB/s"
          f"   ratio engine/raw {raw_t / wall_t:.2f}  (goal >= 0.95)")
    print(f"  engine, stream only                {pump_t:6.2f} s  {a.mib / pump_t:6.1f} MiB/s"
          f"   ratio engine/raw {raw_t / pump_t:.2f}")
    print(f"  (each job also pays ~{wall_t - pump_t:.1f} s outside the stream: the start "
          "step, the probe of the destination)")
    if EXPECT_SECONDS:
        e = statistics.median(EXPECT_SECONDS)
        print(f"  announcing the copy to the gate (copy.prepare + sync.expect, before the "
              f"start step) {e:.2f} s; end to end with it: ratio {raw_t / (wall_t + e):.2f}")


def compression(c: Cluster, a, zsrc: str, tag: str) -> None:
    z_plain, z_zstd, wires = [], [], []
    for i in range(a.rounds):
        d = f"tank/bz-{tag}-{i}"
        z_plain.append(engine(c, zsrc, d, bwlimit="20M")[0])
        destroy(NODE, d)
        w, _, st = engine(c, zsrc, d, bwlimit="20M", compress="zstd")
        z_zstd.append(w)
        wires.append(st["wire_bytes"] / max(1, st["bytes_done"]))
        destroy(NODE, d)
    zp, zz = statistics.median(z_plain), statistics.median(z_zstd)
    print(f"compressible data {a.zmib} MiB, sync_bwlimit 20M, median of {a.rounds}")
    print(f"  plain   {zp:6.2f} s  {a.zmib / zp:6.1f} MiB/s")
    print(f"  zstd    {zz:6.2f} s  {a.zmib / zz:6.1f} MiB/s   wire/logical "
          f"{statistics.median(wires):.3f}   ratio zstd/plain {zp / zz:.2f}  (goal >= 1.5)")


if __name__ == "__main__":
    main()
