"""Direct mode on the lab's real daemons: zfs-fuse volumes, tgtd targets, libiscsi/qemu
initiators.  Data is written through the initiator and checked by sha256 on the NAS."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from imgstor.workflows.storagemap import MAP_POINTS, UNMAP_POINTS, target_iqn
from tests.conftest import Lab

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
NAS = "nas-0-0"
MiB = 1 << 20


def cli(lab: Lab, *args: str, env: dict | None = None, config: Path | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "imgstor", "--config", str(config or lab.config_path),
                        *args], capture_output=True, text=True, cwd=ROOT, timeout=180,
                       env={**os.environ, **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"imgstor {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def maps(lab: Lab) -> dict[str, dict]:
    return {r["zvol"]: r for r in json.loads(cli(lab, "list", "host", "storagemap", NAS,
                                                  "--json").stdout)["rows"]}


def opts(lab: Lab, vol: str, host: str) -> str:
    return (f"driver=iscsi,transport=tcp,portal={lab.host(NAS)['address']}:3260,"
            f"target={target_iqn(NAS, vol)},lun=1,initiator-name={lab.host(host)['initiator']}")


def write_through(lab: Lab, host: str, vol: str, data_mib: int, seed: str) -> str:
    """Write data_mib MiB of random data at offset 0 through host's initiator; return the
    sha256 the whole volume must then have (given its size from the NAS)."""
    lab.ssh(host, f"head -c {data_mib * MiB} /dev/urandom > /tmp/{seed}.bin && "
                  f"qemu-img convert -n -f raw /tmp/{seed}.bin --target-image-opts '{opts(lab, vol, host)}'")
    return lab.out(host, f"sha256sum < /tmp/{seed}.bin; rm -f /tmp/{seed}.bin").split()[0]


def read_through(lab: Lab, host: str, vol: str, nbytes: int, *, check: bool = True):
    p = lab.ssh(host, f"qemu-img convert -O raw --image-opts '{opts(lab, vol, host)}' /tmp/r-{vol}.raw"
                      f" && head -c {nbytes} /tmp/r-{vol}.raw | sha256sum; rc=$?; "
                      f"rm -f /tmp/r-{vol}.raw; exit $rc", check=check)
    return p.stdout.decode().split()[0] if p.returncode == 0 else p


def nas_file(lab: Lab, vol: str) -> str:
    return f"{lab.mountpoint(NAS, f'tank/{vol}')}/disk.raw"


def nas_sha(lab: Lab, vol: str, nbytes: int) -> str:
    return lab.out(NAS, f"head -c {nbytes} {nas_file(lab, vol)} | sha256sum").split()[0]


def targets(lab: Lab) -> str:
    return lab.out(NAS, "tgtadm --lld iscsi --mode target --op show")


def new_vm(lab: Lab, container: str) -> str:
    out = cli(lab, "add", "host", "vm", container).stdout
    m = re.match(r"added VM (\S+) on physical node (\S+)", out)
    assert m and m.group(2) == container, out
    return m.group(1)


# ------------------------------------------------------------------ the walkthrough
def test_direct_mode_walkthrough(lab: Lab) -> None:
    """The Rocks guide's direct-mode walkthrough, end to end, data checked by sha256."""
    vm = new_vm(lab, "compute-0-0")
    vol = f"{vm}-vol"
    assert "nas nas-0-0 zpool tank" in cli(lab, "set", "host", "vm", "nas", vm,
                                           f"nas={NAS}", "zpool=tank").stdout
    out = cli(lab, "start", "host", "vm", vm, "size=64M").stdout
    assert out.startswith(f"{NAS}:{vol} mapped to compute-0-0:iscsi://"), out
    row = maps(lab)[vol]
    assert (row["host"], row["zpool"], row["state"]) == ("compute-0-0", "tank", "mapped")
    assert row["target"] == f"iqn.2001-04.com.{NAS}-{vol}"
    table = cli(lab, "list", "host", "storagemap", NAS).stdout.splitlines()
    assert table[0].split() == ["ZVOL", "HOST", "ZPOOL", "TARGET", "STATE", "TIME"]
    dev = json.loads(cli(lab, "list", "host", "storagedev", "compute-0-0",
                         "--json").stdout)["rows"]
    assert any(d["zvol"] == vol and d["status"] == "ok" and d["size_gb"] == 0.06 for d in dev)

    # data written through compute-0-0's initiator is on the NAS volume after stop
    want = write_through(lab, "compute-0-0", vol, 5, "walk")
    assert "unmapped from compute-0-0" in cli(lab, "stop", "host", "vm", vm).stdout
    assert nas_sha(lab, vol, 5 * MiB) == want
    assert maps(lab)[vol]["state"] == "unmapped"
    # no target and no session remain
    iqn = target_iqn(NAS, vol)
    assert iqn not in targets(lab)
    assert "I_T nexus: " not in targets(lab)
    assert lab.out(NAS, f"zfs get -H -o value imgstor:host tank/{vol}") == "-"
    # and the initiator that had it can no longer log in
    assert not isinstance(read_through(lab, "compute-0-0", vol, MiB, check=False), str)

    # the same volume maps to compute-0-1 and shows the same data
    out = cli(lab, "add", "host", "storagemap", NAS, "tank", vol, "compute-0-1", "64M").stdout
    assert re.fullmatch(rf"mapping  {NAS} : tank / {vol}  on  compute-0-1\niscsi://\S+\n", out), out
    assert read_through(lab, "compute-0-1", vol, 5 * MiB) == want
    # ... and only compute-0-1: compute-0-0's initiator is refused now
    assert not isinstance(read_through(lab, "compute-0-0", vol, MiB, check=False), str)
    assert lab.out(NAS, f"zfs get -H -o value imgstor:host tank/{vol}") == "compute-0-1"

    # a volume mapped elsewhere is refused for a third host, and can't be destroyed
    p = cli(lab, "add", "host", "storagemap", NAS, "tank", vol, "compute-0-0", "64M", check=False)
    assert p.returncode == 8 and "mapped to compute-0-1" in p.stderr
    p = cli(lab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)
    assert p.returncode == 8 and "unmap it first" in p.stderr

    cli(lab, "remove", "host", "storagemap", NAS, vol)
    assert cli(lab, "remove", "host", "storagemap", NAS, vol).stdout.strip().endswith("is not mapped")
    assert cli(lab, "remove", "host", "storageimg", NAS, "tank", vol).stdout == \
        f"removing   {NAS} : tank / {vol}\nSuccess\n"
    assert lab.ssh(NAS, f"zfs list tank/{vol}", check=False).returncode != 0
    assert vol not in maps(lab)


def test_intruder_initiator_is_refused(lab: Lab) -> None:
    vol = f"intr-{uuid.uuid4().hex[:6]}"
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, "compute-0-0", "16M")
    try:
        portal = lab.host(NAS)["address"]
        iqn = target_iqn(NAS, vol)
        ok = lab.ssh("compute-0-0", f"iscsi-readcapacity16 -i {lab.host('compute-0-0')['initiator']} "
                                    f"iscsi://{portal}:3260/{iqn}/1")
        assert b"Total size" in ok.stdout or ok.returncode == 0
        for bad in ("iqn.1999-01.org.example:intruder", lab.host("compute-0-1")["initiator"]):
            p = lab.ssh("compute-0-0", f"iscsi-readcapacity16 -i {bad} iscsi://{portal}:3260/{iqn}/1",
                        check=False)
            assert p.returncode != 0, bad
        # qemu's default initiator name (no initiator-name=) is refused too
        o = opts(lab, vol, "compute-0-0").rsplit(",initiator-name=", 1)[0]
        p = lab.ssh("compute-0-0", f"qemu-img info --image-opts '{o}'", check=False)
        assert p.returncode != 0 and b"Failed to log in" in p.stderr
        # the ACL holds exactly one name and no address
        acl = targets(lab).split(iqn, 1)[1].split("ACL information:", 1)[1].split("Target ", 1)[0]
        assert acl.split() == [lab.host("compute-0-0")["initiator"]]
    finally:
        cli(lab, "remove", "host", "storagemap", NAS, vol)
        cli(lab, "remove", "host", "storageimg", NAS, "tank", vol)


# ------------------------------------------------------------------ crash at every step
@pytest.fixture(scope="module")
def crashvol(lab: Lab):
    """A 32 MiB volume with 4 MiB of known data, unmapped."""
    vol = f"crash-{uuid.uuid4().hex[:6]}"
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, "compute-0-0", "32M")
    sha = write_through(lab, "compute-0-0", vol, 4, "crash")
    cli(lab, "remove", "host", "storagemap", NAS, vol)
    yield vol, sha
    cli(lab, "remove", "host", "storagemap", NAS, vol, check=False)
    cli(lab, "remove", "host", "storageimg", NAS, "tank", vol, check=False)


@pytest.mark.parametrize("point", MAP_POINTS)
def test_map_killed_at_each_step_then_rerun(lab: Lab, crashvol, point: str) -> None:
    vol, sha = crashvol
    args = ("add", "host", "storagemap", NAS, "tank", vol, "compute-0-1", "32M")
    p = cli(lab, *args, env={"IMGSTOR_FAULT": point}, check=False)
    assert p.returncode == -9, (point, p.stdout, p.stderr)
    p = cli(lab, *args)
    assert p.stdout.startswith(f"mapping  {NAS} : tank / {vol}  on  compute-0-1\niscsi://"), p.stdout
    row = maps(lab)[vol]
    assert (row["state"], row["host"]) == ("mapped", "compute-0-1")
    assert read_through(lab, "compute-0-1", vol, 4 * MiB) == sha
    assert cli(lab, "list", "host", "storagemap", NAS, "--verify").returncode == 0
    cli(lab, "remove", "host", "storagemap", NAS, vol)


@pytest.mark.parametrize("point", UNMAP_POINTS)
def test_unmap_killed_at_each_step_then_rerun(lab: Lab, crashvol, point: str) -> None:
    vol, sha = crashvol
    cli(lab, "add", "host", "storagemap", NAS, "tank", vol, "compute-0-0", "32M")
    p = cli(lab, "remove", "host", "storagemap", NAS, vol, env={"IMGSTOR_FAULT": point},
            check=False)
    assert p.returncode == -9, (point, p.stdout, p.stderr)
    p = cli(lab, "remove", "host", "storagemap", NAS, vol)
    # killed after recording: the unmap was done, the re-run says so
    assert p.stdout == (f"{NAS}:{vol} is not mapped\n" if point == "recorded" else
                        f"unmapping   {NAS} : {vol}\nSuccess\n"), p.stdout
    row = maps(lab)[vol]
    assert (row["state"], row["host"], row["target"]) == ("unmapped", None, None)
    assert target_iqn(NAS, vol) not in targets(lab)
    assert nas_sha(lab, vol, 4 * MiB) == sha
    assert cli(lab, "list", "host", "storagemap", NAS, "--verify").returncode == 0


# ------------------------------------------------------------------ concurrency, bad input
def test_two_concurrent_maps_one_gets_busy(lab: Lab) -> None:
    vol = f"busy-{uuid.uuid4().hex[:6]}"
    base = [sys.executable, "-m", "imgstor", "--config", str(lab.config_path),
            "add", "host", "storagemap", NAS, "tank", vol]
    first = subprocess.Popen(base + ["compute-0-0", "16M"], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "IMGSTOR_PAUSE": "busy:4"})
    time.sleep(1.5)
    second = subprocess.run(base + ["compute-0-1", "16M"], cwd=ROOT, text=True,
                            capture_output=True, timeout=60)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 5, second.stderr
    assert "busy" in second.stderr and "map by pid" in second.stderr
    assert maps(lab)[vol]["host"] == "compute-0-0"
    cli(lab, "remove", "host", "storagemap", NAS, vol)
    cli(lab, "remove", "host", "storageimg", NAS, "tank", vol)


def _snapshot(lab: Lab) -> tuple:
    from imgstor.state.store import Store
    state = Store(str(lab.config_path.parent / "state.json")).read().to_dict()
    return (state,
            lab.out(NAS, "zfs list -H -o name -t all"), targets(lab),
            lab.out(NAS, "zfs get -H -o name,property,value -s local all"),
            lab.out("compute-0-0", "zfs list -H -o name -t all"))


HOSTILE = [
    ("add", "host", "storagemap", NAS, "tank", "v;rm -rf /", "compute-0-0", "10G"),
    ("add", "host", "storagemap", NAS, "tank", "$(reboot)", "compute-0-0", "10G"),
    ("add", "host", "storagemap", NAS, "tank", "`id`", "compute-0-0", "10G"),
    ("add", "host", "storagemap", NAS, "tank", "../../etc", "compute-0-0", "10G"),
    ("add", "host", "storagemap", NAS, "tank", "a b", "compute-0-0", "10G"),
    ("add", "host", "storagemap", NAS, "tank", "v\nx", "compute-0-0", "10G"),
    ("add", "host", "storagemap", NAS, "tank", "v" * 300, "compute-0-0", "10G"),
    ("add", "host", "storagemap", NAS, "tank", "vоl", "compute-0-0", "10G"),   # Cyrillic o
    ("add", "host", "storagemap", NAS, "tank", "-rf", "compute-0-0", "10G"),
    ("add", "host", "storagemap", NAS, "ta;nk", "okvol", "compute-0-0", "10G"),
    ("add", "host", "storagemap", "nas;0", "tank", "okvol", "compute-0-0", "10G"),
    ("add", "host", "storagemap", NAS, "tank", "okvol", "compute-0-0;id", "10G"),
    ("add", "host", "storagemap", NAS, "tank", "okvol", "compute-0-0", "-1"),
    ("add", "host", "storagemap", NAS, "tank", "okvol", "compute-0-0", "0"),
    ("add", "host", "storagemap", NAS, "tank", "okvol", "compute-0-0", "10X"),
    ("add", "host", "storagemap", NAS, "tank", "okvol", "compute-0-0", "$(id)"),
    ("remove", "host", "storagemap", NAS, "v;id"),
    ("remove", "host", "storageimg", NAS, "tank", "$(id)"),
    ("list", "host", "storagedev", "compute;id"),
]


@pytest.mark.parametrize("args", HOSTILE, ids=[repr(a[-3:])[:40] for a in HOSTILE])
def test_hostile_input_changes_nothing(lab: Lab, args) -> None:
    before = _snapshot(lab)
    p = cli(lab, *args, env={"IMGSTOR_FAULT": "busy"}, check=False)
    assert p.returncode == 2, (args, p.returncode, p.stderr)
    assert p.stderr.startswith("error: ") and "Traceback" not in p.stderr
    assert _snapshot(lab) == before


def test_unknown_and_unreachable_hosts_change_nothing(lab: Lab, tmp_path: Path) -> None:
    before = _snapshot(lab)
    p = cli(lab, "add", "host", "storagemap", "nas-7-7", "tank", "okvol", "compute-0-0", "1G",
            check=False)
    assert p.returncode == 6 and "unknown host 'nas-7-7'" in p.stderr
    p = cli(lab, "add", "host", "storagemap", "compute-0-1", "tank", "okvol", "compute-0-0", "1G",
            check=False)
    assert p.returncode == 2 and "not a nas" in p.stderr
    # a configured NAS that does not answer
    cfg = tmp_path / "imgstor.toml"
    cfg.write_text(lab.config_path.read_text().replace("connect_timeout = 10", "connect_timeout = 2")
                   + '\n[hosts.nas-9-9]\nrole = "nas"\naddress = "127.42.0.250"\n')
    p = cli(lab, "add", "host", "storagemap", "nas-9-9", "tank", "okvol", "compute-0-0", "1G",
            config=cfg, check=False)
    assert p.returncode == 11 and "nas-9-9" in p.stderr and "Traceback" not in p.stderr
    assert _snapshot(lab) == before


def test_dry_run_shows_the_plan_and_changes_nothing(lab: Lab) -> None:
    before = _snapshot(lab)
    vol = f"dry-{uuid.uuid4().hex[:6]}"
    p = cli(lab, "-n", "add", "host", "storagemap", NAS, "tank", vol, "compute-0-0", "1G")
    assert re.search(rf"SKIP> zfs create (-o imgstor:\S+ )+tank/{vol}\n", p.stderr), p.stderr
    assert "SKIP> tgtadm" in p.stderr
    assert "would be mapped" in p.stdout
    assert _snapshot(lab) == before
