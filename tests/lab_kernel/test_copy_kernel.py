"""The copy engine on OpenZFS 2.1 (kernel lab): a zvol copied NAS -> node with resumable
receive (``-s``), the receive killed mid-stream, the restart resuming from the token
(``zfs send -t``), sha256 equal.  Prints how many bytes were sent twice.

Trust goes through imgstor's own path with the production defaults
(/root/.ssh/imgstor-sync on the NAS, /root/.ssh/authorized_keys and
/var/lib/imgstor/sync-gate.py on the node)."""
from __future__ import annotations

import time

import pytest

from imgstor import synctrust
from imgstor.config import load_config
from imgstor.transport import Cluster

pytestmark = pytest.mark.kernel_lab
NAS, NODE = "nas-0-0", "compute-0-0"
MiB = 1 << 20
SIZE = 48


def _wait(c, ds, pred, timeout=600):
    deadline = time.monotonic() + timeout
    while True:
        st = c.step(NAS, "copy.status", to_alias=NODE, to_dataset=ds).facts
        if pred(st):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.5)


def test_resume_from_token_after_the_receive_is_killed(kernel_lab, capsys) -> None:
    k = kernel_lab
    ds = "tank/kcopy1"
    for h in (NAS, NODE):
        k.ssh(h, f"zfs destroy -r {ds}")
    k.out(NAS, f"zfs create -V {SIZE}M -o volblocksize=128K {ds} && udevadm settle && "
               f"head -c {SIZE * MiB} /dev/urandom > /tmp/kc.bin && "
               f"dd if=/tmp/kc.bin of=/dev/zvol/{ds} bs=1M oflag=direct status=none && "
               f"rm /tmp/kc.bin && zfs snapshot {ds}@s1")
    sha = k.out(NAS, f"head -c {SIZE * MiB} /dev/zvol/{ds} | sha256sum").split()[0]
    cfg = load_config(str(k.config_path))
    with Cluster(cfg) as c:
        synctrust.ensure(c, NAS, NODE)
        args = synctrust.copy_args(cfg, NAS, NODE, snapshot=f"{ds}@s1", to_dataset=ds)
        first = synctrust.start_copy(c, NAS, NODE, {**args, "bwlimit": "2M"})  # announced
        assert first.facts["started"]
        st = _wait(c, ds, lambda s: (s.get("bytes_done") or 0) >= 12 * MiB
                   or s["state"] != "running")
        assert st["state"] == "running", st
        assert st["bytes_total"] and st["total_exact"] is True      # zfs send -nP
        gate = k.out(NODE, "cat /run/imgstor/recv/tank%kcopy1.lock")
        k.ssh(NODE, f"pkill -9 -P {int(gate)} -x zfs", check=True)
        failed = _wait(c, ds, lambda s: s["state"] != "running")
        assert failed["state"] == "failed", failed
        token = k.out(NODE, f"zfs get -H -o value receive_resume_token {ds}")
        assert token not in ("", "-"), "receive -s left no resume token"
        synctrust.start_copy(c, NAS, NODE, args)                     # the monitor's restart
        done = _wait(c, ds, lambda s: s["state"] != "running")
    assert done["state"] == "done", done
    assert done["resumed"] is True and done["resume_offset"] > 0
    assert done["stages"][0]["argv"][:3] == ["zfs", "send", "-t"]
    assert " receive -s " in done["stages"][-1]["argv"][-1]
    twice = failed["bytes_done"] - done["resume_offset"]
    k.out(NODE, f"udevadm settle; for i in $(seq 50); do [ -e /dev/zvol/{ds} ] && break; "
                "sleep 0.2; done")
    assert k.out(NODE, f"head -c {SIZE * MiB} /dev/zvol/{ds} | sha256sum").split()[0] == sha
    with capsys.disabled():
        print(f"\n[copy resume] stream {done['bytes_total']} B; first attempt pushed "
              f"{failed['bytes_done']} B, the receiver had {done['resume_offset']} B "
              f"(token); sent twice: {twice} B ({twice / MiB:.2f} MiB)")
    assert 0 <= twice < failed["bytes_done"]
    for h in (NAS, NODE):
        k.ssh(h, f"zfs destroy -r {ds}")
