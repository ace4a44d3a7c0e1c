"""Cluster config: one TOML file naming the hosts and their storage attributes.

Path: ``--config PATH``, else ``$IMGSTOR_CONFIG``, else ``/etc/imgstor/imgstor.toml``.
Every command needs it; unknown keys and bad values are ``ConfigError`` naming the file
and the dotted key.  Relative paths inside the file (``state.path``, ``ssh.known_hosts``,
``ssh.identity``) are taken relative to the directory of the config file.

```toml
[state]
path = "/var/lib/imgstor/state.json"
lock_timeout = 30
metrics_path = ""     # refresh writes a node_exporter textfile here ("": none); *.prom
[ssh]
user = "root"
port = 22
known_hosts = "/root/.ssh/known_hosts"
identity = ""         # "": OpenSSH's default keys (~/.ssh/id_rsa, id_ecdsa, id_ed25519)
connect_timeout = 10
command_timeout = 3600
accept_unknown_host_keys = false   # true: trust on first use (pinned in known_hosts)
max_connections = 16  # SSH connections one imgstor process keeps open at once (its pool)
[jobs]                # the frontend's monitors (docs/DESIGN.md "The job model")
retry_attempts = 5    # failed tries of one phase before its job is `failed`
retry_backoff = 10    # seconds before the second try; doubled for each next one
retry_backoff_max = 300
stall_timeout = 900   # a waiting phase (copy, merge) that sees no progress this long fails
poll = 1              # seconds between two reads of a job's status, at least ...
poll_max = 10         # ... and at most (longer while a copy has long to go)
[log]
syslog = "/dev/log"   # the audit trail (imgstor/audit.py): a Unix socket, udp://HOST:PORT,
                      # or "" (none)
facility = "user"     # syslog facility: user, daemon, local0 … local7, authpriv …
job_log_days = 30     # refresh removes job logs (<state dir>/jobs/) older than this
[defaults]            # host attributes; each may be overridden in [hosts.NAME]
img_sync = false
vm_container_zpool = "tank"
img_zpools = ["tank"]
ib_net = ""           # host h is reached for data as "h.<ib_net>"
volume_kind = "zvol"  # zvol|file
target_driver = "lio"  # lio|tgt (the NAS's iSCSI target; the old key ``target`` still
                       # reads, with a warning)
initiator = "iscsiadm"  # iscsiadm|userspace
overlay = "dm"        # dm|qcow2
chap = false
sync_frequency = 3600  # seconds between the periodic pulls of a sync volume (refresh)
sync_keep = 3         # imgstor snapshots kept on each side of a sync volume (>= 1)
overcommit = 1.0      # NAS: imgstor's volumes on a pool may promise pool size x this
sync_bwlimit = 0      # copy throttle, bytes/s on the wire: 0 = none, or like a size: "12M"
sync_compress = ""    # "" | "zstd": compress the copy stream in transit
vm_runner = "none"    # compute: what runs a VM's guest at start host vm: none | qemu
vm_accel = "kvm"      # compute: qemu's -accel: kvm | tcg | kvm:tcg
vm_stop_timeout = 120 # compute: seconds stop host vm waits for the guest's powerdown
vm_hook = ""          # compute: hook script (on the frontend) run around start/stop
[hosts.nas-0-0]
role = "nas"          # nas|compute (required)
address = "10.1.1.1"  # SSH address; default: the host name
port = 22
data_address = ""     # default: "<name>.<ib_net>" if ib_net, else address
```

Storage attributes set with ``set host attr HOST ATTR value=…`` (img_sync,
vm_container_zpool, img_zpools, ib_net) are kept in the state store and override the file
for that host: ``Config.with_overrides`` makes the Config every command sees (``ctx.config``),
and ``Config.source(host, attr)`` says where a value comes from.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from imgstor import tomlcache, validate
from imgstor.errors import ConfigError, NotFound, UsageError
from imgstor.remote.naming import VM_ACCELS, VM_RUNNERS

TYPE_CHECKING = False            # typing's import is ~2 ms of a command's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = ["DEFAULT_PATH", "ENV_VAR", "Config", "SshConfig", "JobPolicy", "LogConfig",
           "HostConfig", "load_config",
           "config_path", "HOST_ATTRS", "SOURCES", "RENAMED_KEYS"]

DEFAULT_PATH = "/etc/imgstor/imgstor.toml"
ENV_VAR = "IMGSTOR_CONFIG"


@dataclass(frozen=True)
class SshConfig:
    """How imgstor logs in to a host over SSH (the config's [ssh] and per-host values)."""
    user: str = "root"
    port: int = 22
    known_hosts: str = "/root/.ssh/known_hosts"
    identity: str = ""
    connect_timeout: float = 10
    command_timeout: float = 3600
    accept_unknown_host_keys: bool = False
    max_connections: int = 16      # the bound of transport.Cluster's connection pool


@dataclass(frozen=True)
class JobPolicy:
    """How the frontend's monitors run jobs (the config's [jobs]): the retry policy of a
    failing phase, the bound on a phase that sees no progress, how often status is read."""
    attempts: int = 5              # failed tries of one phase, then the job is "failed"
    backoff: float = 10            # seconds before the 2nd try; doubled for each next one
    backoff_max: float = 300
    stall: float = 900             # a waiting phase without progress this long fails
    poll: float = 1                # seconds between two status reads of one job, at least
    poll_max: float = 10           # and at most

    def backoff_after(self, attempts: int) -> float:
        """Seconds to wait after the ATTEMPTS-th failed try (1: ``backoff``)."""
        return float(min(self.backoff_max, self.backoff * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class LogConfig:
    """Where the audit trail goes (the config's [log]; imgstor/audit.py) and how long job
    logs are kept."""
    syslog: str = "/dev/log"
    facility: str = "user"
    job_log_days: float = 30


@dataclass(frozen=True)
class HostConfig:
    """One host of the config: its role, address and storage settings."""
    name: str
    role: str                      # "nas" | "compute"
    address: str
    port: int
    data_address: str
    img_sync: bool = False
    vm_container_zpool: str = "tank"
    img_zpools: tuple[str, ...] = ("tank",)
    ib_net: str = ""
    volume_kind: str = "zvol"
    target_driver: str = "lio"     # the NAS's iSCSI target: "lio" | "tgt" (TOML target_driver)
    initiator: str = "iscsiadm"
    overlay: str = "dm"
    chap: bool = False
    sync_frequency: int = 3600
    sync_keep: int = 3
    overcommit: float = 1.0
    sync_bwlimit: int = 0          # bytes per second, 0 = unlimited
    sync_compress: str = ""        # "" | "zstd"
    vm_runner: str = "none"        # compute: what runs a VM's guest (none: the disk only)
    vm_accel: str = "kvm"          # compute: qemu's accelerators, "kvm", "tcg", "kvm:tcg"
    vm_stop_timeout: float = 120   # compute: seconds stop host vm waits for a powerdown
    vm_hook: str = ""              # compute: hook script on the frontend for its VMs


@dataclass
class Config:
    """The config file, checked: state path, hosts, defaults."""
    path: str
    state_path: str = "/var/lib/imgstor/state.json"
    lock_timeout: float = 30
    metrics_path: str = ""
    ssh: SshConfig = field(default_factory=SshConfig)
    jobs: JobPolicy = field(default_factory=JobPolicy)
    log: LogConfig = field(default_factory=LogConfig)
    hosts: dict[str, HostConfig] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    # host -> the keys its [hosts.NAME] table sets; host -> the attributes set by command
    host_keys: dict[str, frozenset[str]] = field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def source(self, host: str, attr: str) -> str:
        """Where ``host``'s value of ``attr`` comes from: one of ``SOURCES``."""
        if attr in self.overrides.get(host, {}):
            return SOURCES[3]
        if attr in self.host_keys.get(host, ()):
            return SOURCES[2]
        return SOURCES[1] if attr in self.defaults else SOURCES[0]

    def with_overrides(self, overrides: dict[str, dict[str, Any]]) -> "Config":
        """This config with the store's per-host attributes applied (``set host attr``):
        host -> {attr: value}, values as the store keeps them.  Hosts not in the file are
        ignored (a host removed from the config keeps its entry in the store until
        ``remove host attr``).  ``data_address`` follows an overridden ``ib_net`` unless
        the file sets it."""
        if not overrides:
            return self
        hosts = dict(self.hosts)
        kept: dict[str, dict[str, Any]] = {}
        for name, attrs in overrides.items():
            hc = hosts.get(name)
            if hc is None or not attrs:
                continue
            kept[name] = dict(attrs)
            change: dict[str, Any] = {k: tuple(v) if k == "img_zpools" else v for k, v in attrs.items()}
            if "ib_net" in change and "data_address" not in self.host_keys.get(name, ()):
                ib = change["ib_net"]
                change["data_address"] = f"{name}.{ib}" if ib else hc.address
            hosts[name] = replace(hc, **change)
        return replace(self, hosts=hosts, overrides=kept)

    def host(self, name: str, role: str | None = None, what: str = "host") -> HostConfig:
        """The configured host ``name`` (``NotFound`` if unknown); with ``role``, a
        ``UsageError`` unless it has that role (``what`` names it in the message)."""
        try:
            hc = self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise NotFound(f"unknown host {name!r}: not in {self.path}; known: {known}",
                           host=name) from None
        if role is not None and hc.role != role:
            raise UsageError(f"{what} {name!r} is a {hc.role} host in {self.path}, "
                             f"not a {role} host")
        return hc

# ---- checkers: each returns the converted value or raises ValueError(why) ----

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a string")
    return v


def _port(v: Any) -> int:
    if not _is_int(v) or not 1 <= v <= 65535:
        raise ValueError("must be an integer port 1..65535")
    return v


def _positive(v: Any) -> float:
    if not (_is_int(v) or isinstance(v, float)) or isinstance(v, bool) or v <= 0:
        raise ValueError("must be a number greater than zero")
    return v


def _nonnegative(v: Any) -> float:
    if not (_is_int(v) or isinstance(v, float)) or isinstance(v, bool) or v < 0:
        raise ValueError("must be a number of seconds, 0 or more")
    return v


def _abspath(v: Any) -> str:
    s = _str(v)
    if s and not os.path.isabs(s):
        raise ValueError("must be an absolute path (or \"\": none)")
    return s


def _positive_int(v: Any) -> int:
    if not _is_int(v) or v <= 0:
        raise ValueError("must be an integer greater than zero")
    return v


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return v
    return check


def _validated(fn: Callable[[Any], str]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        try:
            return fn(_str(v))
        except UsageError as e:
            raise ValueError(e.message) from None
    return check


def _zpools(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise ValueError("must be a non-empty list of zpool names")
    return tuple(_validated(validate.zpool)(p) for p in v)


def _bwlimit(v: Any) -> int:
    """``sync_bwlimit``: bytes per second, an int or written like a size (``"12M"``)."""
    from imgstor.remote.protocol import parse_rate
    try:
        return parse_rate(v)
    except UsageError as e:
        raise ValueError(e.message) from None


def _opt_host(v: Any) -> str:
    s = _str(v)
    return _validated(validate.host)(s) if s else s


def _address(v: Any) -> str:
    s = _str(v)
    if not s or s.startswith("-") or any(c.isspace() or c in "@;'\"`$\\" for c in s):
        raise ValueError("must be a host name or IP address")
    return s


HOST_ATTRS: dict[str, Callable[[Any], Any]] = {
    "img_sync": _bool,
    "vm_container_zpool": _validated(validate.zpool),
    "img_zpools": _zpools,
    "ib_net": _opt_host,
    "volume_kind": _choice("zvol", "file"),
    "target_driver": _choice("lio", "tgt"),
    "initiator": _choice("iscsiadm", "userspace"),
    "overlay": _choice("dm", "qcow2"),
    "chap": _bool,
    "sync_frequency": _positive_int,
    "sync_keep": _positive_int,
    "overcommit": lambda v: float(_positive(v)),
    "sync_bwlimit": lambda v: _bwlimit(v),
    "sync_compress": _choice("", "zstd"),
    "vm_runner": _choice(*VM_RUNNERS),
    "vm_accel": _choice(*VM_ACCELS),
    "vm_stop_timeout": lambda v: float(_nonnegative(v)),
    "vm_hook": lambda v: _abspath(v),
}
# Where a host attribute's value comes from (``list host attr``, column SOURCE).
SOURCES = ("built-in default", "config default", "config host", "set by command")


def _metrics_path(v: Any) -> str:
    s = _str(v)
    if s and not s.endswith(".prom"):
        raise ValueError("must end in .prom (node_exporter's textfile collector reads only "
                         "*.prom files), or be \"\" for none")
    return s


_STATE_KEYS: dict[str, Callable[[Any], Any]] = {"path": _str, "lock_timeout": _positive,
                                                  "metrics_path": _metrics_path}
_SSH_KEYS: dict[str, Callable[[Any], Any]] = {
    "user": _str, "port": _port, "known_hosts": _str, "identity": _str,
    "connect_timeout": _positive, "command_timeout": _positive,
    "accept_unknown_host_keys": _bool, "max_connections": _positive_int,
}
_JOBS_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "retry_attempts": ("attempts", _positive_int), "retry_backoff": ("backoff", _positive),
    "retry_backoff_max": ("backoff_max", _positive), "stall_timeout": ("stall", _positive),
    "poll": ("poll", _positive), "poll_max": ("poll_max", _positive),
}
_FACILITIES = ("auth", "authpriv", "cron", "daemon", "kern", "local0", "local1", "local2",
               "local3", "local4", "local5", "local6", "local7", "lpr", "mail", "news",
               "syslog", "user", "uucp")


def _syslog(v: Any) -> str:
    from imgstor.audit import syslog_address
    syslog_address(_str(v))          # ValueError says what it must be
    return v


_LOG_KEYS: dict[str, Callable[[Any], Any]] = {
    "syslog": _syslog, "facility": _choice(*_FACILITIES), "job_log_days": _positive,
}
_HOST_KEYS: dict[str, Callable[[Any], Any]] = {
    "role": _choice("nas", "compute"), "address": _address, "port": _port,
    "data_address": lambda v: _address(v) if _str(v) else v, **HOST_ATTRS,
}
_TOP = ("state", "ssh", "jobs", "log", "defaults", "hosts")


def config_path(path: str | None = None) -> str:
    return path or os.environ.get(ENV_VAR) or DEFAULT_PATH


def load_config(path: str | None = None) -> Config:
    """Read and check the config file; see the module docstring for the schema."""
    path = config_path(path)
    try:
        raw = tomlcache.load(path)          # tomllib.load, kept while the file is unchanged
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; create it or point to one with "
                          f"--config PATH or ${ENV_VAR}", path=path) from None
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read: {e.strerror}", path=path) from None
    except ValueError as e:                 # tomllib.TOMLDecodeError
        raise ConfigError(f"config file {path}: not valid TOML: {e}", path=path) from None
    return _build(path, raw)


def _err(path: str, key: str, why: str) -> ConfigError:
    return ConfigError(f"config file {path}: {key}: {why}", path=path, key=key)


def _section(path: str, raw: dict, name: str) -> dict:
    sec = raw.get(name, {})
    if not isinstance(sec, dict):
        raise _err(path, name, "must be a table")
    return sec


# Keys renamed to say what they are: the old name still reads, with a warning.
RENAMED_KEYS = {"target": "target_driver"}
_warned: set[tuple[str, str]] = set()


def _check(path: str, prefix: str, sec: dict, schema: dict[str, Callable]) -> dict:
    out = {}
    for key, value in sec.items():
        dotted = f"{prefix}.{key}"
        new = RENAMED_KEYS.get(key)
        old = None
        if new is not None and new in schema:
            if new in sec:
                raise _err(path, dotted, f"renamed {new}, which is set too; keep {new}")
            old, key = key, new      # errors still name the key as written
        if key not in schema:
            raise _err(path, dotted, f"unknown key; known keys: {', '.join(schema)}")
        try:
            out[key] = schema[key](value)
        except ValueError as e:
            raise _err(path, dotted, f"{e} (got {value!r:.60})") from None
        if old is not None and (path, dotted) not in _warned:
            _warned.add((path, dotted))
            print(f"imgstor: warning: config file {path}: {dotted} is now called "
                  f"{prefix}.{key} (the old name still works)", file=sys.stderr)
    return out


def _build(path: str, raw: dict) -> Config:
    base = os.path.dirname(os.path.abspath(path))

    def rel(p: str) -> str:
        return os.path.join(base, p) if p and not os.path.isabs(p) else p

    for key in raw:
        if key not in _TOP:
            raise _err(path, key, f"unknown key; known sections: {', '.join(_TOP)}")
    state = _check(path, "state", _section(path, raw, "state"), _STATE_KEYS)
    ssh = _check(path, "ssh", _section(path, raw, "ssh"), _SSH_KEYS)
    for k in ("known_hosts", "identity"):
        if k in ssh:
            ssh[k] = rel(ssh[k])
    jobs = _check(path, "jobs", _section(path, raw, "jobs"),
                  {k: f for k, (_, f) in _JOBS_KEYS.items()})
    policy = JobPolicy(**{_JOBS_KEYS[k][0]: v for k, v in jobs.items()})
    if policy.poll_max < policy.poll:
        raise _err(path, "jobs.poll_max", f"must be >= jobs.poll ({policy.poll:g})")
    log = _check(path, "log", _section(path, raw, "log"), _LOG_KEYS)
    defaults = _check(path, "defaults", _section(path, raw, "defaults"), HOST_ATTRS)
    cfg = Config(path=path, state_path=rel(state.get("path", Config.state_path)),
                 lock_timeout=state.get("lock_timeout", Config.lock_timeout),
                 metrics_path=rel(state.get("metrics_path", "")),
                 ssh=SshConfig(**ssh), jobs=policy, log=LogConfig(**log),
                 defaults=defaults)
    for name, sec in _section(path, raw, "hosts").items():
        prefix = f"hosts.{name}"
        try:
            validate.host(name)
        except UsageError as e:
            raise _err(path, prefix, e.message) from None
        if not isinstance(sec, dict):
            raise _err(path, prefix, "must be a table")
        own = _check(path, prefix, sec, _HOST_KEYS)
        cfg.host_keys[name] = frozenset(own)
        attrs = {**defaults, **own}
        if "role" not in attrs:
            raise _err(path, prefix + ".role", "missing; must be one of nas, compute")
        attrs.setdefault("address", name)
        attrs.setdefault("port", cfg.ssh.port)
        if not attrs.get("data_address"):
            ib = attrs.get("ib_net", "")
            attrs["data_address"] = f"{name}.{ib}" if ib else attrs["address"]
        cfg.hosts[name] = HostConfig(name=name, **attrs)
    return cfg
