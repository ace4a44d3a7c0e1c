"""SSH transport: Fabric connections, pooled per host for the life of one command.

* Host keys are verified: the config's known_hosts is loaded and unknown keys are rejected
  (paramiko ``RejectPolicy``; Fabric's default would be ``AutoAddPolicy``), unless the
  config says ``accept_unknown_host_keys = true``.
* A command is an argv list; it becomes text exactly once, here, with ``shlex.join``.
* ``step(host, name, **args)`` runs a node step through the node zipapp (uploaded when the
  node lacks this version, keyed by content hash) and returns its result, or raises the
  node's error as the same ``ImgstorError`` class.
* ``parallel(hosts, fn)`` runs ``fn(host)`` on a thread pool, one thread per host.
* Failures: ``TransportError`` / ``HostKeyError`` (cannot reach or trust the host),
  ``RemoteCommandError`` (host, argv, rc, stderr tail).
"""
from __future__ import annotations

import json
import select
import shlex
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TextIO

from imgstor.errors import (HostKeyError, ImgstorError, RemoteCommandError, TransportError,
                            from_wire)
from imgstor.remote.executor import Result

__all__ = ["Cluster", "StepOutcome"]

PYTHON = "python3"


@dataclass
class StepOutcome:
    host: str
    step: str
    changed: bool
    facts: dict = field(default_factory=dict)
    message: str = ""
    commands: list[str] = field(default_factory=list)


class Cluster:
    """The hosts of one config, reached over SSH."""

    def __init__(self, config: Any, *, dry_run: bool = False, debug: bool = False,
                 err: TextIO | None = None) -> None:
        self.config = config
        self.dry_run = dry_run
        self.debug = debug
        self.err = err or sys.stderr
        self._conns: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._glock = threading.Lock()
        self._uploaded: set[str] = set()
        self._print_lock = threading.Lock()

    # ------------------------------------------------------------ connections
    def _lock(self, host: str) -> threading.Lock:
        with self._glock:
            return self._locks.setdefault(host, threading.Lock())

    def connection(self, host: str):
        """The pooled, open Fabric connection to ``host`` (a configured host name)."""
        with self._lock(host):
            conn = self._conns.get(host)
            if conn is not None and conn.is_connected:
                return conn
            conn = self._open(host)
            self._conns[host] = conn
            return conn

    def _open(self, host: str):
        import paramiko
        from fabric import Config, Connection
        hc = self.config.host(host)
        ssh = self.config.ssh
        kwargs: dict[str, Any] = {"allow_agent": False, "look_for_keys": not ssh.identity,
                                  "banner_timeout": ssh.connect_timeout,
                                  "auth_timeout": ssh.connect_timeout}
        if ssh.identity:
            kwargs["key_filename"] = [ssh.identity]
        conn = Connection(host=hc.address, user=ssh.user, port=hc.port or ssh.port,
                          connect_timeout=ssh.connect_timeout, connect_kwargs=kwargs,
                          config=Config(overrides={"load_ssh_configs": False}))
        # Our own client: only the configured known_hosts, unknown keys rejected.
        client = paramiko.SSHClient()
        if ssh.known_hosts:
            try:
                client.load_host_keys(ssh.known_hosts)
            except FileNotFoundError:
                if not ssh.accept_unknown_host_keys:
                    raise HostKeyError(f"{host}: known_hosts file {ssh.known_hosts} does not "
                                       "exist; add the hosts' keys (ssh-keyscan, then verify "
                                       "them) or set accept_unknown_host_keys")
            except (OSError, paramiko.SSHException) as e:
                raise HostKeyError(f"{host}: cannot read known_hosts {ssh.known_hosts}: {e}")
        client.set_missing_host_key_policy(
            paramiko.WarningPolicy() if ssh.accept_unknown_host_keys else paramiko.RejectPolicy())
        conn.client = client
        where = f"{host} ({hc.address}:{hc.port or ssh.port})"
        try:
            conn.open()
        except paramiko.BadHostKeyException as e:
            raise HostKeyError(f"{where}: host key does not match known_hosts "
                               f"{ssh.known_hosts} (got {e.key.get_name()} "
                               f"{e.key.get_fingerprint().hex()}); refusing to connect")
        except paramiko.AuthenticationException as e:
            raise TransportError(f"{where}: SSH authentication failed as {ssh.user}: {e}")
        except paramiko.SSHException as e:
            if "known_hosts" in str(e):
                raise HostKeyError(f"{where}: host key is not in {ssh.known_hosts}; "
                                   "refusing to connect (verify the host's key and add it)")
            raise TransportError(f"{where}: SSH failed: {e}")
        except (socket.timeout, TimeoutError):
            raise TransportError(f"{where}: connection timed out after {ssh.connect_timeout}s")
        except OSError as e:
            raise TransportError(f"{where}: cannot connect: {e.strerror or e}")
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            try:
                conn.close()
            except Exception:  # closing is best effort
                pass
        self._conns.clear()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ raw commands
    def echo(self, host: str, text: str) -> None:
        with self._print_lock:
            print(f"[{host}] {text}", file=self.err, flush=True)

    def exec(self, host: str, argv: list[str], *, stdin: bytes | None = None,
             timeout: float | None = None) -> Result:
        """Run argv on host; return its Result (never raises for a non-zero rc)."""
        conn = self.connection(host)
        cmd = shlex.join(str(a) for a in argv)
        if self.debug:
            self.echo(host, "$ " + cmd)
        timeout = timeout or self.config.ssh.command_timeout
        try:
            chan = conn.client.get_transport().open_session(timeout=self.config.ssh.connect_timeout)
            chan.exec_command(cmd)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                    continue
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    continue
                if chan.exit_status_ready() and not chan.recv_ready() \
                        and not chan.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    chan.close()
                    raise TransportError(f"{host}: command timed out after {timeout}s: {cmd}")
                select.select([chan], [], [], 0.2)
            rc = chan.recv_exit_status()
            chan.close()
        except ImgstorError:
            raise
        except (OSError, EOFError) as e:
            self._conns.pop(host, None)
            raise TransportError(f"{host}: connection lost running {cmd}: {e}")
        except Exception as e:
            import paramiko
            if isinstance(e, paramiko.SSHException):
                self._conns.pop(host, None)
                raise TransportError(f"{host}: SSH error running {cmd}: {e}")
            raise
        return Result(list(argv), rc, out.decode(errors="replace"), err.decode(errors="replace"))

    def run(self, host: str, argv: list[str], *, read_only: bool = False, check: bool = True,
            timeout: float | None = None) -> Result:
        """Run a plain command (not a node step); a dry run skips non-read-only ones."""
        if self.dry_run and not read_only:
            self.echo(host, "SKIP> " + shlex.join(argv))
            return Result(list(argv), 0, skipped=True)
        r = self.exec(host, argv, timeout=timeout)
        if check and r.rc != 0:
            raise RemoteCommandError(host, argv, r.rc, r.stderr, r.stdout)
        return r

    # ------------------------------------------------------------ node steps
    def upload_node_app(self, host: str) -> bool:
        """Put this version's zipapp on host unless it is there; True if it was sent."""
        from imgstor.zipapp import REMOTE_DIR, node_app
        app = node_app()
        if host in self._uploaded:
            return False
        conn = self.connection(host)
        sftp = conn.client.open_sftp()
        try:
            try:
                st = sftp.stat(app.remote_path)
                if st.st_size == len(app.data):
                    self._uploaded.add(host)
                    return False
            except FileNotFoundError:
                pass
            try:
                sftp.mkdir(REMOTE_DIR, 0o700)
            except OSError:
                pass                              # exists
            tmp = f"{app.remote_path}.tmp-{id(self)}"
            with sftp.open(tmp, "wb") as f:
                f.write(app.data)
            sftp.chmod(tmp, 0o600)
            sftp.posix_rename(tmp, app.remote_path)
        finally:
            sftp.close()
        if self.debug:
            self.echo(host, f"uploaded {app.remote_path} ({len(app.data)} bytes)")
        self._uploaded.add(host)
        return True

    def step(self, host: str, name: str, **args: Any) -> StepOutcome:
        """Run node step ``name`` on host with JSON args; raise its error if it failed."""
        from imgstor.zipapp import node_app
        app = node_app()
        argv = [PYTHON, app.remote_path, "node", name]
        req = json.dumps({"args": args, "dry_run": self.dry_run}).encode()
        r = self.exec(host, argv, stdin=req)
        if r.rc == 2 and "can't open file" in r.stderr:
            self.upload_node_app(host)
            r = self.exec(host, argv, stdin=req)
        else:
            self._uploaded.add(host)
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        try:
            out = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            raise RemoteCommandError(host, argv, r.rc, r.stderr or r.stdout)
        cmds = out.get("commands") or []
        for c in cmds:
            if self.debug or c.startswith("SKIP> "):
                self.echo(host, c if c.startswith("SKIP> ") else "  " + c)
        if out.get("ok"):
            return StepOutcome(host, name, bool(out.get("changed")), out.get("facts") or {},
                               out.get("message") or "", cmds)
        err = out.get("error") or {}
        if err.get("bug"):
            raise RuntimeError(f"{host}: {err.get('message')}\n{err.get('traceback', '')}")
        raise from_wire(err, host=host)

    # ------------------------------------------------------------ parallel
    def parallel(self, hosts: Iterable[str], fn: Callable[[str], Any]) -> dict[str, Any]:
        """fn(host) for every host at once; values are results or the exception raised."""
        hosts = list(hosts)
        out: dict[str, Any] = {}
        if not hosts:
            return out

        def one(h: str) -> tuple[str, Any]:
            try:
                return h, fn(h)
            except ImgstorError as e:
                return h, e

        with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
            for h, v in pool.map(one, hosts):
                out[h] = v
        return out
