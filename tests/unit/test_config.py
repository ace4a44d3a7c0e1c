"""config.py: schema, defaults, per-host overrides; every error names the file and key."""
from __future__ import annotations

import pytest

from imgstor.config import load_config
from imgstor.errors import ConfigError, NotFound

BASE = """
[hosts.nas-0-0]
role = "nas"
[hosts.compute-0-0]
role = "compute"
"""


def write(tmp_path, text):
    p = tmp_path / "imgstor.toml"
    p.write_text(text)
    return str(p)


def test_defaults(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.state_path == "/var/lib/imgstor/state.json"
    assert cfg.lock_timeout == 30
    assert cfg.ssh.user == "root" and cfg.ssh.port == 22
    assert cfg.ssh.accept_unknown_host_keys is False
    nas = cfg.host("nas-0-0")
    assert (nas.role, nas.address, nas.port, nas.data_address) == ("nas", "nas-0-0", 22, "nas-0-0")
    assert nas.img_zpools == ("tank",) and nas.vm_container_zpool == "tank"
    assert (nas.volume_kind, nas.target_driver, nas.initiator, nas.overlay) == ("zvol", "lio", "iscsiadm", "dm")
    assert nas.img_sync is False and nas.chap is False and nas.sync_frequency == 3600
    assert {n: h.role for n, h in cfg.hosts.items()} == {"nas-0-0": "nas",
                                                         "compute-0-0": "compute"}


def test_overrides_and_addresses(tmp_path):
    cfg = load_config(write(tmp_path, """
[state]
path = "st/state.json"
lock_timeout = 2.5
[ssh]
port = 2222
identity = "id_ed25519"
[defaults]
ib_net = "ibnet"
target_driver = "tgt"
img_zpools = ["a", "b"]
[hosts.nas-0-0]
role = "nas"
address = "10.1.1.1"
[hosts.nas-0-1]
role = "nas"
data_address = "10.2.2.2"
port = 22
img_zpools = ["c"]
[hosts.compute-0-0]
role = "compute"
img_sync = true
target_driver = "lio"
"""))
    assert cfg.state_path == str(tmp_path / "st" / "state.json")
    assert cfg.ssh.identity == str(tmp_path / "id_ed25519")
    assert cfg.lock_timeout == 2.5
    n0, n1, c0 = cfg.host("nas-0-0"), cfg.host("nas-0-1"), cfg.host("compute-0-0")
    assert (n0.address, n0.port, n0.data_address) == ("10.1.1.1", 2222, "nas-0-0.ibnet")
    assert (n1.address, n1.port, n1.data_address) == ("nas-0-1", 22, "10.2.2.2")
    assert n0.img_zpools == ("a", "b") and n1.img_zpools == ("c",)
    assert n0.target_driver == "tgt" and c0.target_driver == "lio" and c0.img_sync is True


def test_env_var_and_flag(tmp_path, monkeypatch):
    p = write(tmp_path, BASE)
    monkeypatch.setenv("IMGSTOR_CONFIG", p)
    assert load_config().path == p
    with pytest.raises(ConfigError, match="/nonexistent.toml"):
        load_config("/nonexistent.toml")


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.delenv("IMGSTOR_CONFIG", raising=False)
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as e:
        load_config(missing)
    assert missing in e.value.message and "--config" in e.value.message
    assert "IMGSTOR_CONFIG" in e.value.message and e.value.exit_code == 3


def test_unknown_host_names_config(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(NotFound) as e:
        load_config(p).host("nas-9-9")
    assert "'nas-9-9'" in e.value.message and p in e.value.message
    assert "compute-0-0, nas-0-0" in e.value.message


@pytest.mark.parametrize("text,key", [
    ("[foo]\nx = 1\n", "foo"),
    ("[state]\npaht = 'x'\n", "state.paht"),
    ("[ssh]\nport = '22'\n", "ssh.port"),
    ("[ssh]\nport = 70000\n", "ssh.port"),
    ("[ssh]\naccept_unknown_host_keys = 'yes'\n", "ssh.accept_unknown_host_keys"),
    ("[state]\nlock_timeout = -1\n", "state.lock_timeout"),
    ("[defaults]\nimg_sync = 1\n", "defaults.img_sync"),
    ("[defaults]\ntarget = 'iet'\n", "defaults.target"),
    ("[defaults]\nvolume_kind = 'lvm'\n", "defaults.volume_kind"),
    ("[defaults]\noverlay = 'lvm'\n", "defaults.overlay"),
    ("[defaults]\ninitiator = 'x'\n", "defaults.initiator"),
    ("[defaults]\nimg_zpools = 'tank'\n", "defaults.img_zpools"),
    ("[defaults]\nimg_zpools = ['mirror']\n", "defaults.img_zpools"),
    ("[defaults]\nvm_container_zpool = 'a;b'\n", "defaults.vm_container_zpool"),
    ("[defaults]\nsync_frequency = 0\n", "defaults.sync_frequency"),
    ("[defaults]\nbogus = 0\n", "defaults.bogus"),
    ("[hosts.nas-0-0]\nrole = 'storage'\n", "hosts.nas-0-0.role"),
    ("[hosts.nas-0-0]\naddress = '10.0.0.1'\n", "hosts.nas-0-0.role"),
    ("[hosts.nas-0-0]\nrole = 'nas'\nzpool = 'x'\n", "hosts.nas-0-0.zpool"),
    ("[hosts.nas-0-0]\nrole = 'nas'\nchap = 'no'\n", "hosts.nas-0-0.chap"),
    ("[hosts.nas-0-0]\nrole = 'nas'\ntarget = 'scst'\n", "hosts.nas-0-0.target"),
    ("[hosts.nas-0-0]\nrole = 'nas'\naddress = '-oProxyCommand=x'\n", "hosts.nas-0-0.address"),
    ("[hosts.'Bad;Host']\nrole = 'nas'\n", "hosts.Bad;Host"),
    ("[hosts]\nnas-0-0 = 1\n", "hosts.nas-0-0"),
    ("state = 1\n", "state"),
])
def test_errors_name_file_and_key(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert p in e.value.message
    assert f": {key}:" in e.value.message, e.value.message
    assert e.value.exit_code == 3


def test_bad_toml(tmp_path):
    p = write(tmp_path, "[state\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_cli_reports_config_error(tmp_path, capsys):
    from imgstor.cli import main
    p = write(tmp_path, "[defaults]\ntarget = 'iet'\n")
    assert main(["--config", p, "list", "host", "vm"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: config file " + p) and "defaults.target" in err


def test_with_overrides_and_sources(tmp_path):
    """The store's `set host attr` values over the file, and where each value comes from."""
    from imgstor.config import SOURCES
    p = tmp_path / "c.toml"
    p.write_text('[defaults]\nimg_zpools = ["tank"]\n'
                 '[hosts.nas-0-0]\nrole = "nas"\nib_net = "ib"\n'
                 '[hosts.nas-0-1]\nrole = "nas"\ndata_address = "10.9.9.9"\n'
                 '[hosts.compute-0-0]\nrole = "compute"\n')
    cfg = load_config(str(p))
    assert cfg.with_overrides({}) is cfg
    assert [cfg.source("nas-0-0", a) for a in ("img_zpools", "ib_net", "img_sync")] == \
        ["config default", "config host", "built-in default"]
    over = cfg.with_overrides({"nas-0-0": {"img_zpools": ["t1", "t2"], "ib_net": "ibnet"},
                               "nas-0-1": {"ib_net": "ibnet"},
                               "compute-0-0": {"img_sync": True},
                               "gone-0-0": {"img_sync": True}})
    assert over.hosts["nas-0-0"].img_zpools == ("t1", "t2")
    assert over.hosts["nas-0-0"].data_address == "nas-0-0.ibnet"       # follows ib_net
    assert over.hosts["nas-0-1"].data_address == "10.9.9.9"            # the file's stays
    assert over.hosts["compute-0-0"].img_sync is True
    assert over.source("nas-0-0", "img_zpools") == SOURCES[3] == "set by command"
    assert "gone-0-0" not in over.hosts and "gone-0-0" not in over.overrides
    assert cfg.hosts["nas-0-0"].img_zpools == ("tank",)                  # unchanged


def test_renamed_key_target_reads_as_target_driver_with_a_warning(tmp_path, capsys):
    from imgstor.config import load_config
    p = tmp_path / "old.toml"
    p.write_text("[defaults]\ntarget = 'tgt'\n[hosts.nas-0-0]\nrole = 'nas'\n"
                 "[hosts.nas-0-1]\nrole = 'nas'\ntarget_driver = 'lio'\n")
    cfg = load_config(str(p))
    assert cfg.hosts["nas-0-0"].target_driver == "tgt"
    assert cfg.hosts["nas-0-1"].target_driver == "lio"
    err = capsys.readouterr().err
    assert "defaults.target is now called defaults.target_driver" in err
    load_config(str(p))
    assert capsys.readouterr().err == ""                  # once per file and key
    p.write_text("[hosts.nas-0-0]\nrole = 'nas'\ntarget = 'tgt'\ntarget_driver = 'lio'\n")
    with pytest.raises(ConfigError, match="hosts.nas-0-0.target: renamed target_driver"):
        load_config(str(p))
