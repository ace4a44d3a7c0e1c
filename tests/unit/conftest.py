"""Shared unit fixtures: a small cluster config in a temp dir and a CLI runner."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from imgstor import cli

CLUSTER_TOML = """\
[state]
path = "state.json"
lock_timeout = 5

[defaults]
img_zpools = ["tank", "tank2"]

[hosts.nas-0-0]
role = "nas"

[hosts.nas-0-1]
role = "nas"
img_zpools = ["data"]

[hosts.compute-0-0]
role = "compute"

[hosts.compute-0-1]
role = "compute"
img_sync = true
"""


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cluster config (2 NAS, 2 compute nodes) whose state file is tmp_path/state.json."""
    p = tmp_path / "imgstor.toml"
    p.write_text(CLUSTER_TOML)
    monkeypatch.delenv("IMGSTOR_CONFIG", raising=False)
    return p


@pytest.fixture
def state_path(config_path: Path) -> Path:
    return config_path.parent / "state.json"


class CliResult:
    def __init__(self, rc: int, out: str, err: str) -> None:
        self.rc, self.out, self.err = rc, out, err

    def __repr__(self) -> str:
        return f"CliResult(rc={self.rc}, out={self.out!r}, err={self.err!r})"


@pytest.fixture
def imgstor(config_path: Path, capsys: pytest.CaptureFixture) -> Callable[..., CliResult]:
    """``imgstor("list", "host", "vm")`` -> CliResult(rc, out, err) with the temp config."""
    def run(*argv: str, main: Callable[[list[str]], int] = cli.main) -> CliResult:
        capsys.readouterr()
        rc = main(["--config", str(config_path), *argv])
        out, err = capsys.readouterr()
        return CliResult(rc, out, err)
    return run


@pytest.fixture(autouse=True)
def _node_lock_dir(tmp_path_factory, monkeypatch) -> None:
    """Node steps run in-process take their locks (imgstor.remote.locks) in a temp dir,
    never in this machine's /run/imgstor/lock."""
    d = tmp_path_factory.mktemp("locks") / "lock"
    monkeypatch.setenv("IMGSTOR_LOCK_DIR", str(d))


@pytest.fixture(autouse=True)
def _zfs_cli_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """The zfs driver uses libzfs_core where pyzfs imports and /dev/zfs exists: on a
    machine with OpenZFS that would be this one.  Unit tests see the CLI unless a test
    installs a fake pyzfs (fake_lzc.install)."""
    import fake_lzc
    fake_lzc.install(monkeypatch, None)


@pytest.fixture(autouse=True)
def _probe_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """refresh probes every configured host; the unit configs' hosts do not exist, so each
    answers "up" here.  tests/unit/test_probe.py drives the real probe over fake
    connections."""
    from imgstor.workflows import probe
    monkeypatch.setattr(probe, "probe_one", lambda cluster, host, role, timeout:
                        probe.HostProbe(host, role, True, 0.001, boot_id="unit-boot"))
