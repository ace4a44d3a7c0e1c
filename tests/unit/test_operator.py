"""What broke or misled an administrator on the first day (issue 19), one section per item:
SSH without ``[ssh] identity``, the metrics file's mode and directory, the state file's
messages, the config cache's place, refresh's exit status, the example config."""
from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest

from imgstor import connections
from imgstor.config import load_config
from imgstor.errors import ConfigError, TransportError
from imgstor.transport import Cluster


# ------------------------------------------------------------ 1. no [ssh] identity
def _config_without_identity(tmp_path: Path) -> Path:
    key = paramiko.RSAKey.generate(1024)
    (tmp_path / "known_hosts").write_text(f"192.0.2.10 {key.get_name()} {key.get_base64()}\n")
    p = tmp_path / "imgstor.toml"
    p.write_text(textwrap.dedent("""\
        [state]
        path = "state.json"
        [ssh]
        known_hosts = "known_hosts"
        connect_timeout = 2
        [hosts.nas-0-0]
        role = "nas"
        address = "192.0.2.10"
        """))
    return p


def _home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """This user's passwd entry says ``home``; $HOME says somewhere else (ssh(1) takes
    the passwd entry's)."""
    monkeypatch.setattr(connections, "_home", lambda: str(home), raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")


def test_without_identity_the_default_keys_are_offered_as_openssh_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config has no [ssh] identity (its documented default): the connection offers
    ~/.ssh/id_rsa, id_ecdsa, id_ed25519 of the passwd home that exist, in OpenSSH's order,
    and never the agent.  Before: key_filename=None, Fabric's TypeError."""
    cfg = load_config(str(_config_without_identity(tmp_path)))
    assert cfg.ssh.identity == ""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    for name in ("id_ed25519", "id_rsa", "id_dsa", "id_ed25519.pub"):
        (home / ".ssh" / name).write_text("a key\n")
    _home(monkeypatch, home)
    seen: dict = {}

    def connect(self, hostname, **kw):
        seen.update(kw)
        raise TimeoutError("timed out")
    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    with Cluster(cfg) as c:
        with pytest.raises(TransportError, match="timed out"):
            c.connection("nas-0-0")
    assert seen["key_filename"] == [str(home / ".ssh" / "id_rsa"),
                                    str(home / ".ssh" / "id_ed25519")]
    assert seen["look_for_keys"] is False and seen["allow_agent"] is False


def test_without_identity_and_without_default_keys_the_error_says_what_to_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfgfile = _config_without_identity(tmp_path)
    (tmp_path / "home").mkdir()
    _home(monkeypatch, tmp_path / "home")
    monkeypatch.setattr(paramiko.SSHClient, "connect",
                        lambda *a, **k: pytest.fail("must not connect"))
    with Cluster(load_config(str(cfgfile))) as c:
        with pytest.raises(ConfigError) as ei:
            c.connection("nas-0-0")
    msg = ei.value.message
    assert str(cfgfile) in msg and "ssh.identity" in msg
    assert str(tmp_path / "home" / ".ssh" / "id_ed25519") in msg
    assert connections.default_identities(str(tmp_path / "home")) == []


def test_identity_when_set_is_the_only_key(tmp_path: Path) -> None:
    ssh = SimpleNamespace(identity="/etc/imgstor/id_ed25519")
    assert connections.identities(ssh) == ["/etc/imgstor/id_ed25519"]
    assert sys.modules["imgstor.connections"] is connections
    assert os.path.basename(connections.DEFAULT_KEYS[-1]) == "id_ed25519"
