"""The frontend half of the copy trust: the per-sender key, the pins taken from the
frontend's known_hosts, the steps ensure() runs, and copy.start's arguments."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgstor import synctrust
from imgstor.config import load_config
from imgstor.errors import HostKeyError

HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAjcb7rsKiKWdB9fmPoz+DTkpqHVXOxGJ4Lyt8lOZPDX"
TOML = """\
[state]
path = "state.json"
[ssh]
known_hosts = "known_hosts"
[defaults]
sync_bwlimit = "12M"
sync_compress = "zstd"
[hosts.nas-0-0]
role = "nas"
address = "10.1.1.1"
ib_net = "ib"
data_address = "127.0.0.1"
[hosts.compute-0-14]
role = "compute"
address = "10.1.1.14"
vm_container_zpool = "vmpool"
ib_net = "ib"
data_address = "10.2.1.14"
"""


@pytest.fixture
def cfg(tmp_path: Path):
    (tmp_path / "imgstor.toml").write_text(TOML)
    (tmp_path / "known_hosts").write_text(f"10.1.1.14 {HOSTKEY}\n10.1.1.1 {HOSTKEY}\n")
    return load_config(str(tmp_path / "imgstor.toml"))


def test_key_made_once_0600_in_0700(cfg, tmp_path: Path) -> None:
    os.umask(0o022)
    priv, pub = synctrust.ensure_key(cfg.state_path, "nas-0-0")
    assert priv.startswith("-----BEGIN OPENSSH PRIVATE KEY-----") and pub.startswith("ssh-ed25519 ")
    d = tmp_path / "sync-keys"
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    assert oct((d / "nas-0-0").stat().st_mode & 0o777) == "0o600"
    assert synctrust.ensure_key(cfg.state_path, "nas-0-0") == (priv, pub)
    assert synctrust.ensure_key(cfg.state_path, "compute-0-14")[1] != pub
    # a dry run makes none
    synctrust.ensure_key(cfg.state_path, "nas-0-1", write=False)
    assert not (d / "nas-0-1").exists()


def test_a_key_asked_for_by_many_at_once_is_made_once(cfg, tmp_path: Path) -> None:
    """A monitor's threads (or several commands) trusting a sender for the first time at
    once get one key, whose halves match (they used to make several, and one could pair
    one's private half with another's public one: a 20-VM storm's copies were refused)."""
    import subprocess
    import threading
    got: list = []
    go = threading.Barrier(12)

    def one() -> None:
        go.wait()
        got.append(synctrust.ensure_key(cfg.state_path, "nas-0-0"))
    ts = [threading.Thread(target=one) for _ in range(12)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(set(got)) == 1, len(set(got))
    priv_path, pub_path = synctrust.key_paths(cfg.state_path, "nas-0-0")
    derived = subprocess.run(["ssh-keygen", "-y", "-f", priv_path], capture_output=True,
                             text=True, check=True).stdout.split()[:2]
    assert " ".join(derived) == got[0][1] == " ".join(open(pub_path).read().split()[:2])


def test_pins_come_from_the_frontends_known_hosts(cfg) -> None:
    assert synctrust.host_keys(cfg, "compute-0-14") == [HOSTKEY]
    # an empty known_hosts (the config's ssh section is a frozen dataclass)
    empty = Path(cfg.state_path).parent / "empty_known_hosts"
    empty.write_text("")
    import dataclasses
    cfg.ssh = dataclasses.replace(cfg.ssh, known_hosts=str(empty))
    with pytest.raises(HostKeyError, match="no host key"):
        synctrust.host_keys(cfg, "nas-0-0")


def test_from_addresses_and_pools_and_copy_args(cfg) -> None:
    assert synctrust.from_addresses(cfg, "nas-0-0") == ["10.1.1.1", "127.0.0.1"]
    assert synctrust.receiver_pools(cfg, "compute-0-14") == ["vmpool"]
    a = synctrust.copy_args(cfg, "nas-0-0", "compute-0-14", snapshot="tank/v@s",
                            to_dataset="vmpool/v")
    assert a["to_address"] == "10.2.1.14"              # the storage network
    assert a["to_alias"] == "compute-0-14" and a["bwlimit"] == 12 << 20
    assert a["compress"] == "zstd" and a["user"] == "root" and a["port"] == 22


class FakeCluster:
    def __init__(self, config, dry_run=False):
        self.config, self.dry_run, self.calls = config, dry_run, []

    def step(self, host, name, **args):
        self.calls.append((host, name, args))
        return type("O", (), {"changed": True, "facts": {}})()


def test_ensure_runs_the_two_steps(cfg) -> None:
    c = FakeCluster(cfg)
    synctrust.ensure(c, "nas-0-0", "compute-0-14")
    (h1, s1, a1), (h2, s2, a2) = c.calls
    assert (h1, s1) == ("nas-0-0", "sync.install_key")
    assert a1["pins"] == [{"alias": "compute-0-14", "keys": [HOSTKEY]}]
    assert (h2, s2) == ("compute-0-14", "sync.authorize")
    assert a2["pools"] == ["vmpool"] and a2["from_addresses"] == ["10.1.1.1", "127.0.0.1"]
    assert a2["incremental"] is False                  # a NAS key only creates datasets
    c2 = FakeCluster(cfg)
    synctrust.ensure(c2, "compute-0-14", "nas-0-0")
    assert c2.calls[1][2]["incremental"] is True       # the pull back
    assert a2["public_key"] == synctrust.ensure_key(cfg.state_path, "nas-0-0")[1]
    assert "PRIVATE" not in repr(a2)


def test_an_unconfirmed_pin_is_not_handed_to_the_sync_hop(cfg) -> None:
    """Audit L5: a key cron's refresh pinned on first use waits for `ping --trust`."""
    from imgstor import hostkeys
    kh = Path(cfg.ssh.known_hosts)
    kh.write_text(f"10.1.1.14 {HOSTKEY} {hostkeys.UNCONFIRMED}\n10.1.1.1 {HOSTKEY}\n")
    with pytest.raises(HostKeyError, match="ping --trust compute-0-14"):
        synctrust.host_keys(cfg, "compute-0-14")
    assert synctrust.host_keys(cfg, "nas-0-0") == [HOSTKEY]
    hostkeys.confirm(str(kh), ["10.1.1.14"])
    assert synctrust.host_keys(cfg, "compute-0-14") == [HOSTKEY]


class GuidCluster(FakeCluster):
    def step(self, host, name, **args):
        self.calls.append((host, name, args))
        facts = {"guid": "12", "older": [["s0", "10"], ["s1", "11"]]} \
            if name == "copy.prepare" else {}
        return type("O", (), {"changed": True, "facts": facts})()


def test_expect_announces_the_copy_to_the_receiver(cfg) -> None:
    c = GuidCluster(cfg)
    synctrust.start_copy(c, "nas-0-0", "compute-0-14",
                         {"snapshot": "tank/v@s2", "to_dataset": "vmpool/v",
                          "create_snapshot": True})
    (h1, s1, a1), (h2, s2, a2), (h3, s3, _) = c.calls
    assert (h1, s1, a1["create_snapshot"]) == ("nas-0-0", "copy.prepare", True)
    assert (h2, s2) == ("compute-0-14", "sync.expect")
    assert a2 == {"dataset": "vmpool/v", "sender": "nas-0-0", "kind": "local-copy",
                  "type": "volume", "toguid": "12", "rollback": False}
    assert (h3, s3) == ("nas-0-0", "copy.start")
    c = GuidCluster(cfg)                    # the pull back: auto base, rollback, a volume
    synctrust.expect(c, "compute-0-14", "nas-0-0", snapshot="vmpool/v@s2",
                     to_dataset="tank/v", base="auto", rollback=True)
    a = c.calls[1][2]
    assert a["kind"] == "volume" and a["candidates"] == [["s0", "10"], ["s1", "11"]]
    c = GuidCluster(cfg)
    synctrust.expect(c, "compute-0-14", "nas-0-0", snapshot="vmpool/v@s2",
                     to_dataset="tank/v", base="vmpool/v@s0")
    assert c.calls[1][2]["fromguid"] == "10"
