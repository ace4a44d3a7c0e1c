"""How one SSH connection is made: a ``fabric.Connection`` that cannot connect unsafely.

* ``fabric_config(ssh)``: the Fabric config from imgstor's ``[ssh]`` section only
  (``lazy=True``: no /etc/fabric.yml, ~/.fabric.*, ~/.invoke.*, no environment; an explicit
  empty ``SSHConfig``: no ~/.ssh/config nor /etc/ssh/ssh_config).
* ``connection(config, host)``: a not yet opened Connection whose AutoAddPolicy (installed
  by ``Connection.__init__``) is already replaced by ``hostkeys.Policy`` and whose only host
  keys are the configured known_hosts; its ``open()`` refuses to run otherwise.
* ``keepalive(transport)``: SSH and TCP keepalives on an open connection.
* ``identities(ssh)``: the key files to log in with: ``[ssh] identity``, or without it
  OpenSSH's default keys of this user (``default_identities``), never an agent.

Fabric is imported inside these functions, so importing this module costs nothing.
"""
from __future__ import annotations

import os
import socket
from typing import Any, TextIO

from imgstor.errors import ConfigError, HostKeyError

__all__ = ["KEEPALIVE", "DEFAULT_KEYS", "fabric_config", "connection", "keepalive",
           "identities", "default_identities"]

IDLE_WAKEUP = 1.0       # seconds: how often an idle transport thread looks up
KEEPALIVE = 15          # seconds: a dead host is noticed long before command_timeout
# ssh(1) -i: the identities OpenSSH tries when none is given, in its order, less those
# paramiko cannot load (the FIDO -sk keys, XMSS; DSA is gone from paramiko and OpenSSH).
DEFAULT_KEYS = ("id_rsa", "id_ecdsa", "id_ed25519")


def _home() -> str:
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_dir


def default_identities(home: str | None = None) -> list[str]:
    """OpenSSH's default key files that exist for this user: ``~/.ssh/id_rsa``,
    ``id_ecdsa``, ``id_ed25519``, where ``~`` is the home directory of the passwd entry
    (as ssh(1) takes it, not ``$HOME``: root's cron and systemd give different ones)."""
    keys = [os.path.join(home or _home(), ".ssh", name) for name in DEFAULT_KEYS]
    return [k for k in keys if os.path.isfile(k)]


def identities(ssh: Any, *, path: str = "the config") -> list[str]:
    """The key files a connection offers: ``[ssh] identity`` when set, else OpenSSH's
    default keys of this user (``ConfigError`` when there is none: nothing to log in
    with).  The agent is never asked (``allow_agent=False``)."""
    if ssh.identity:
        return [ssh.identity]
    keys = default_identities()
    if not keys:
        home = _home()
        raise ConfigError(f"{path}: [ssh] identity is not set and there is no default SSH "
                          f"key ({', '.join(os.path.join(home, '.ssh', k) for k in DEFAULT_KEYS)}"
                          "): set ssh.identity to a key file, or make one with "
                          "ssh-keygen -t ed25519", key="ssh.identity")
    return keys


def fabric_config(ssh: Any) -> Any:
    """A ``fabric.Config`` from imgstor's [ssh] section and nothing else: no Fabric/Invoke
    config file (system, user, project, runtime), no environment, no ssh_config file."""
    import fabric
    import paramiko
    return fabric.Config(
        lazy=True,                          # invoke: load no system/user config files
        ssh_config=paramiko.SSHConfig(),    # explicit and empty: no ssh_config is read
        runtime_ssh_path=None,
        overrides={"load_ssh_configs": False, "user": ssh.user, "port": ssh.port,
                   "forward_agent": False, "gateway": None, "connect_kwargs": {},
                   "timeouts": {"connect": None}, "authentication": {
                       "identities": [], "strategy_class": None}})


def connection(config: Any, host: str, *, err: TextIO, fabric_cfg: Any = None) -> Any:
    """A not yet opened ``fabric.Connection`` to configured ``host``, with imgstor's host
    key policy and known_hosts in place (raises ``HostKeyError`` if the file is unusable).
    ``fabric_cfg``: a ``fabric_config(config.ssh)`` to share (Fabric's groups share one)."""
    from imgstor import hostkeys
    hc = config.host(host)
    ssh = config.ssh
    port = hc.port or ssh.port
    conn = _safe_connection_class()(
        hc.address, user=ssh.user, port=port, config=fabric_cfg or fabric_config(ssh),
        # The key files are named here, never searched (look_for_keys would take $HOME's
        # ~/.ssh): Fabric iterates key_filename, so it is always a list (None crashed it).
        connect_kwargs={
            "key_filename": identities(ssh, path=f"config file {config.path}"),
            "look_for_keys": False, "allow_agent": False,
            "timeout": ssh.connect_timeout, "banner_timeout": ssh.connect_timeout,
            "auth_timeout": ssh.connect_timeout})
    # Connection.__init__ installed AutoAddPolicy; nothing has connected yet.  Only the
    # configured file goes into the client (Fabric loads no system host keys).
    kh = hostkeys.load_known_hosts(ssh.known_hosts, missing_ok=ssh.accept_unknown_host_keys,
                                   into=conn.client.get_host_keys())
    for w in kh.warnings:
        _warn_once(err, f"imgstor: warning: {w}")
    conn.client.set_missing_host_key_policy(hostkeys.Policy(
        kh, pin=ssh.accept_unknown_host_keys, host=host, address=hc.address, port=port,
        err=err))
    conn._imgstor_ready = True
    return conn


_warned: set[str] = set()


def _warn_once(err: TextIO, text: str) -> None:
    if text not in _warned:
        _warned.add(text)
        print(text, file=err, flush=True)


_cls: list[type] = []


def _safe_connection_class() -> type:
    """``fabric.Connection`` that will not open unless imgstor's policy is in place
    (built on first use so that importing this module does not import Fabric)."""
    if _cls:
        return _cls[0]
    import fabric

    from imgstor.hostkeys import Policy

    class SafeConnection(fabric.Connection):
        def open(self):
            policy = getattr(self.client, "_policy", None)
            if not getattr(self, "_imgstor_ready", False) or not isinstance(policy, Policy):
                raise HostKeyError(f"{self.host}: refusing to connect without imgstor's "
                                   "host key policy", stage="connect")
            return super().open()

    _cls.append(SafeConnection)
    return SafeConnection


def keepalive(transport: Any) -> None:
    """SSH keepalives every KEEPALIVE idle seconds; TCP keepalives and a TCP user
    timeout (unacknowledged data, e.g. those keepalives) so that the kernel closes a
    connection whose peer is gone within ~KEEPALIVE + 15 s / 45 s, instead of the command
    waiting for its timeout: a dead NAS then fails the command with "connection lost".
    And the transport thread wakes once a second, not ten times, while nothing arrives
    (paramiko's ``_active_check_timeout`` is 0.1 s: ~1.1 ms of CPU per second per idle
    connection measured on the lab, against 0.17 ms; data wakes it at once either way,
    and a close does not wait for it): what a monitor holding a connection to every host
    of a storm costs while its copies run."""
    transport.set_keepalive(KEEPALIVE)
    sock = transport.sock
    try:
        sock.settimeout(IDLE_WAKEUP)
    except (AttributeError, OSError):
        pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 3 * KEEPALIVE * 1000)
    except (AttributeError, OSError):     # not a TCP socket, or an OS without these
        pass
