"""contrib/imgstor.toml.example against the config's schema: every key imgstor reads is
there, with its default value and a comment saying what it means, and nothing else, so
the example cannot drift from the code (a new key fails here until it is documented)."""
from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from imgstor import config as cfgmod
from imgstor.config import Config, HostConfig, JobPolicy, LogConfig, SshConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "contrib" / "imgstor.toml.example"
HOSTS_MARK = "# ---- hosts"


def _active_and_hosts() -> tuple[str, str]:
    text = EXAMPLE.read_text()
    active, mark, rest = text.partition(HOSTS_MARK)
    assert mark, f"{EXAMPLE} has no {HOSTS_MARK!r} line"
    toml = re.compile(r"# (\[hosts\.[a-z0-9-]+\]|[a-z_]+ = .*)$")
    hosts = "\n".join(m.group(1) for line in rest.splitlines()
                      if (m := toml.match(line)))
    return active, hosts


def test_the_example_has_every_key_with_its_default() -> None:
    active, _ = _active_and_hosts()
    raw = tomllib.loads(active)
    assert set(raw) == {"state", "ssh", "jobs", "log", "defaults"}
    assert set(raw["state"]) == set(cfgmod._STATE_KEYS)
    assert set(raw["ssh"]) == set(cfgmod._SSH_KEYS)
    assert set(raw["jobs"]) == set(cfgmod._JOBS_KEYS)
    assert set(raw["log"]) == set(cfgmod._LOG_KEYS)
    assert set(raw["defaults"]) == set(cfgmod.HOST_ATTRS)
    cfg = load_config(str(EXAMPLE))             # loads as it is: the installed config
    assert cfg.hosts == {}
    assert (cfg.state_path, cfg.lock_timeout, cfg.metrics_path) == (
        Config.state_path, Config.lock_timeout, Config.metrics_path)
    assert cfg.ssh == SshConfig() and cfg.log == LogConfig()
    assert cfg.jobs == JobPolicy()
    host_defaults = {f.name: f.default for f in dataclasses.fields(HostConfig)
                     if f.name in cfgmod.HOST_ATTRS}
    assert cfg.defaults == host_defaults


def test_every_key_says_what_it_means() -> None:
    active, _ = _active_and_hosts()
    lines = active.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"[a-z_]+ = ", line):
            assert lines[i - 1].startswith("# "), f"{EXAMPLE.name}: {line!r} has no comment"


def test_the_commented_hosts_are_valid_and_show_every_host_key(tmp_path: Path) -> None:
    active, hosts = _active_and_hosts()
    raw = tomllib.loads(hosts)
    shown = set().union(*(set(h) for h in raw["hosts"].values()))
    assert set(cfgmod._HOST_KEYS) - set(cfgmod.HOST_ATTRS) <= shown
    p = tmp_path / "imgstor.toml"
    p.write_text(active + hosts)
    cfg = load_config(str(p))
    assert {h.role for h in cfg.hosts.values()} == {"nas", "compute"}
